//! Micro-benchmarks of the per-request pure work: parsing one notification and planning its messages,
//! then storing the plan as the spool does (encoding and compressing the record) and reading it back
//! as the relay does (decompressing it and reading it in place).
//!
//! `cargo bench --bench parse_route`; see BENCHMARKS.md.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rc_kafka_bridge::config::Settings;
use rc_kafka_bridge::notification::Notification;
use rc_kafka_bridge::routing::{BUILT_IN_HINTS, Outbound};
use rc_kafka_bridge::spool::{StoredEntry, StoredRecord};

// The bridge's allocator (see `src/main.rs`): what planning and storing cost is mostly allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn body(hints: usize) -> Vec<u8> {
    let hints: Vec<String> = BUILT_IN_HINTS[..hints]
        .iter()
        .map(|(h, _)| format!("\"{h}\""))
        .collect();
    format!(
        r#"{{"uuid":"ed1cf00c-0420-4bf5-a0ae-e659cc9f77e0","event":"/restapi/v1.0/account/~/extension/8475874957","timestamp":"2013-06-14T12:00:00.000Z","subscriptionId":"9d38419f-645f-4ee3-a053-8cf1368c21c4","ownerId":"8475874957","body":{{"extensionId":"8475874957","eventType":"Update","hints":[{}]}}}}"#,
        hints.join(",")
    )
    .into_bytes()
}

fn benches(c: &mut Criterion) {
    let table = Settings::default().routing;
    let received_at = "2026-11-27T21:16:08.672227592Z";
    for hints in [1usize, 12] {
        let raw = body(hints);
        let notification = Notification::parse(&raw).expect("valid notification");
        let messages = table.plan(&notification, &raw, received_at).messages.len();
        assert!(
            messages >= hints,
            "{hints} hints planned {messages} messages"
        );

        let mut group = c.benchmark_group("notification");
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("parse", hints), &raw, |b, raw| {
            b.iter(|| Notification::parse(black_box(raw)).expect("parses"))
        });
        group.bench_with_input(
            BenchmarkId::new("plan", hints),
            &notification,
            |b, notification| {
                b.iter(|| table.plan(black_box(notification), black_box(&raw), received_at))
            },
        );
        group.bench_with_input(BenchmarkId::new("parse_and_plan", hints), &raw, |b, raw| {
            b.iter(|| {
                let n = Notification::parse(black_box(raw)).expect("parses");
                table.plan(&n, raw, received_at)
            })
        });
        group.finish();

        let plan = table.plan(&notification, &raw, received_at);
        let mut group = c.benchmark_group("record");
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("store", hints), &plan, |b, plan| {
            b.iter(|| StoredRecord::new(0, black_box(plan)).expect("stores"))
        });
        let entry = StoredEntry::new(0, StoredRecord::new(0, &plan).expect("stores"));
        let mut scratch = Vec::new();
        group.bench_with_input(BenchmarkId::new("read", hints), &entry, |b, entry| {
            b.iter(|| {
                let record = entry.read(&mut scratch).expect("reads");
                record
                    .messages
                    .iter()
                    .map(|m| m.value().len())
                    .sum::<usize>()
            })
        });
        group.finish();
    }
}

criterion_group!(parse_route, benches);
criterion_main!(parse_route);
