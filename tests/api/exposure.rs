//! The public endpoint under hostile input: bounded fan-out, untrusted ids, authentication by
//! default. Hostile bodies and the subscription allow-list, which the router alone decides, are in
//! `rejections.rs`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::app::{TestApp, http};
use crate::common::contract::read_all_before_marker;
use crate::common::kafka::read_until;
use crate::common::metrics::{sample, scrape_until};
use crate::common::mock_kafka::MockKafka;
use crate::common::payloads::unique;
use crate::common::process::{BridgeProcess, Serve};

/// One change with as many distinct hints as fit in 64 KiB.
fn hint_bomb(uuid: &str) -> String {
    let hints: Vec<String> = (0..6000).map(|i| format!("H{i}")).collect();
    let mut body = json!({
        "uuid": uuid, "event": "/restapi/v1.0/account/~/extension/1", "subscriptionId": "sub-1",
        "body": {"extensionId": "1", "eventType": "Update", "hints": hints}
    })
    .to_string();
    while body.len() > 64 * 1024 {
        let hints: Vec<String> = (0..(6000 * 64 * 1024 / body.len()) - 10)
            .map(|i| format!("H{i}"))
            .collect();
        body = json!({
            "uuid": uuid, "event": "/restapi/v1.0/account/~/extension/1", "subscriptionId": "sub-1",
            "body": {"extensionId": "1", "eventType": "Update", "hints": hints}
        })
        .to_string();
    }
    body
}

/// A batched Extension List of ordinary entries (every hint of the table) filling 64 KiB.
fn full_batch(uuid: &str) -> (String, usize) {
    let hints: Vec<&str> = rc_kafka_bridge::routing::BUILT_IN_HINTS
        .iter()
        .map(|(h, _)| *h)
        .collect();
    let entry = |i: usize| json!({"extensionId": (100_000 + i).to_string(), "eventType": "Update", "hints": hints});
    let build = |n: usize| {
        json!({"uuid": uuid, "event": "/restapi/v1.0/account/~/extension", "subscriptionId": "sub-1",
               "body": {"extensions": (0..n).map(entry).collect::<Vec<_>>()}})
        .to_string()
    };
    let one = build(1).len();
    let per_entry = build(2).len() - one;
    let n = (64 * 1024 - one) / per_entry + 1;
    let body = build(n);
    assert!(body.len() <= 64 * 1024);
    (body, n)
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hint_bombs_and_full_size_batches_cost_what_they_weigh() {
    let kafka = MockKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let bridge = BridgeProcess::start(&kafka.bootstrap, dir.path(), &[]).await;
    let client = http();
    let at_rest = peak_rss_kib(bridge.child.id());
    let run = unique();
    let mut bodies = Vec::new();
    let mut batch_entries = 0;
    for i in 0..10 {
        bodies.push(hint_bomb(&format!("bomb-{run}-{i}")));
        let (batch, entries) = full_batch(&format!("batch-{run}-{i}"));
        batch_entries = entries;
        bodies.push(batch);
    }
    // Twenty notifications, four at a time. How fast they are answered is measured by the benchmark
    // (a release build); here: every one accepted, bounded memory, bounded messages.
    for group in bodies.chunks(4) {
        let answers = futures_join(group.iter().map(|body| {
            let client = client.clone();
            let url = format!("{}/webhook", bridge.address());
            let body = body.clone();
            async move { client.post(url).body(body).send().await.unwrap().status() }
        }))
        .await;
        assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    }

    let scrape = scrape_until(&bridge.admin_address(), "everything relayed", |s| {
        sample(s, "rckb_spool_entries", &[]) == 0.0
            && sample(s, "rckb_notifications_total", &[("outcome", "accepted")]) >= 20.0
    })
    .await;
    assert_eq!(
        sample(
            &scrape,
            "rckb_notifications_unrouted_total",
            &[("reason", "too_many_hints")]
        ),
        10.0
    );
    // Every entry of each full batch was routed: 13 messages per entry (CallQueueMembersChange has
    // two topics).
    let routed = sample(&scrape, "rckb_messages_published_total", &[]);
    assert!(
        routed >= (10 * batch_entries * 13 + 10) as f64,
        "{routed} messages published"
    );
    // What the load may add to the bridge at rest is fixed by its configuration, not by the input: the
    // spool's page cache (64 MiB), a relay round (4 MiB of entries) and its messages in the producer,
    // and the allocator's per-thread arenas, which vary with how busy the machine is. A debug build
    // under a parallel test run measured up to 120 MiB above rest.
    let peak = peak_rss_kib(bridge.child.id());
    let grown = peak.saturating_sub(at_rest) / 1024;
    eprintln!("peak RSS {} MiB, {grown} MiB above rest", peak / 1024);
    assert!(grown < 160, "peak RSS {grown} MiB above rest");

    let bombs = read_until(
        &kafka.bootstrap,
        &["ringcentral.unrouted".to_string()],
        Duration::from_secs(20),
        |got| got.len() >= 10,
    )
    .await;
    let bombs: Vec<_> = bombs
        .iter()
        .filter(|m| m.uuid().starts_with("bomb-"))
        .collect();
    assert_eq!(bombs.len(), 10, "each hint bomb carried once");
    for m in bombs {
        assert_eq!(m.header("rc-unrouted-reason"), Some("too_many_hints"));
    }
}

/// What requests in flight hold together is bounded (`--max-plan-bytes-in-flight`): a plan beyond
/// what is left is answered 503 at once, and the bytes of a plan come back once its work is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_in_flight_are_bounded_together_and_their_bytes_come_back() {
    let run = unique();
    let batches: Vec<String> = (0..5)
        .map(|i| full_batch(&format!("held-{run}-{i}")).0)
        .collect();
    // The plan of one full batch, as the bridge makes it (less the trace headers it stamps).
    let settings = rc_kafka_bridge::config::Settings::default()
        .resolve()
        .unwrap();
    let notification =
        rc_kafka_bridge::notification::Notification::parse(batches[0].as_bytes()).unwrap();
    let planned = settings
        .routing
        .plan(&notification, batches[0].as_bytes(), "2026-01-01T00:00:00Z")
        .payload_bytes();
    // The smallest budget allowed, one notification's cap: room for four such plans, not five.
    let budget = settings.max_plan_bytes.get();
    assert!(
        4 * planned < budget && 5 * planned > budget,
        "{planned} bytes planned"
    );
    let kafka = MockKafka::start();
    kafka.down();
    let app = TestApp::spawn(&kafka.bootstrap, |a| {
        a.delivery = rc_kafka_bridge::config::DeliveryMode::Direct;
        // The requests wait for Kafka for as long as the test needs, and so do their messages.
        a.direct_timeout = Duration::from_secs(60);
        a.kafka_property
            .retain(|(key, _)| key != "message.timeout.ms");
        a.kafka_property
            .push(("message.timeout.ms".into(), "60000".into()));
        a.max_plan_bytes_in_flight = std::num::NonZeroUsize::new(budget).unwrap();
    })
    .await;
    let waiting: Vec<_> = batches[..4]
        .iter()
        .map(|body| {
            let client = http();
            let url = format!("{}/webhook", app.address);
            let body = body.clone();
            tokio::spawn(async move { client.post(url).body(body).send().await.unwrap() })
        })
        .collect();
    let held = |m: &_| sample(m, "rckb_plan_bytes_in_flight", &[]);
    app.metrics_until("four plans held while Kafka is down", |m| {
        held(m) >= (4 * planned) as f64
    })
    .await;

    let refused = app.post_webhook(batches[4].clone()).await;
    let metrics = app.assert_unavailable(&refused, 1.0).await;
    assert!(
        held(&metrics) <= budget as f64,
        "{} bytes held",
        held(&metrics)
    );

    kafka.up();
    for answer in waiting {
        assert_eq!(answer.await.unwrap().status(), 200);
    }
    assert_eq!(held(&app.metrics().await), 0.0, "released with their work");
    // The refused notification was not recorded as seen: its redelivery is accepted now.
    let again = app.post_webhook(batches[4].clone()).await;
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.json::<Value>().await.unwrap()["status"],
        json!("accepted")
    );
    app.shutdown().await;
}

async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_with_path_tricks_never_reach_a_key_or_a_resource_path() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |_| {}).await;
    let uuid = format!("trick-{}", unique());
    let body = json!({
        "uuid": uuid, "event": "/restapi/v1.0/account/~/extension/1", "subscriptionId": "sub-1",
        "body": {"extensionId": "../../../../oauth/revoke?token=x&", "eventType": "Update",
                 "hints": ["CompanyNumbers", "Features"]}
    });
    assert_eq!(app.post_webhook(body.to_string()).await.status(), 200);
    let by_topic = read_all_before_marker(&app, Duration::from_secs(20)).await;
    let mine: Vec<_> = by_topic
        .values()
        .flatten()
        .filter(|m| m.uuid() == uuid)
        .collect();
    assert_eq!(mine.len(), 1, "carried once: {mine:?}");
    let m = mine[0];
    assert_eq!(m.topic, "ringcentral.unrouted");
    assert_eq!(m.header("rc-unrouted-reason"), Some("invalid_extension_id"));
    assert_eq!(m.key, "sub-1");
    assert_eq!(serde_json::from_str::<Value>(&m.raw).unwrap(), body);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_big_numeric_uuids_are_not_duplicates() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |_| {}).await;
    for uuid in [
        "123456789012345678901234567890",
        "123456789012345678901234567891",
    ] {
        let body = format!(
            r#"{{"uuid": {uuid}, "event": "/restapi/v1.0/account/~/extension/1",
                "body": {{"extensionId": 1, "eventType": "Update", "hints": ["Features"]}}}}"#
        );
        let response = app.post_webhook(body).await;
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["status"], "accepted", "uuid {uuid}");
    }
    app.shutdown().await;
}

/// Runs `serve ARGS` (no brokers and no webhook authentication but what ARGS say), which must
/// refuse to start; returns its stderr.
async fn serve_refuses(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    Serve::new(dir.path()).args(args).refuses().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_broker_needs_a_verification_token_or_an_explicit_opt_out() {
    let stderr = serve_refuses(&["--brokers", "127.0.0.1:1"]).await;
    assert!(stderr.contains("verification_token"), "{stderr}");
    assert!(stderr.contains("--allow-unverified-webhooks"), "{stderr}");
    let stderr = serve_refuses(&[
        "--brokers",
        "127.0.0.1:1",
        "--verification-token",
        "REPLACE-WITH-THE-SUBSCRIPTION-VERIFICATION-TOKEN",
    ])
    .await;
    assert!(stderr.contains("placeholder"), "{stderr}");
}

/// The log lines of `serve ARGS` up to "listening" (the process is stopped then).
async fn startup_log(args: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let bridge = Serve::new(dir.path()).args(args).start().await;
    bridge.start_up_lines().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opting_out_and_short_tokens_start_with_a_warning() {
    let kafka = MockKafka::start();
    let log = startup_log(&["--brokers", &kafka.bootstrap, "--allow-unverified-webhooks"]).await;
    assert!(
        log.iter()
            .any(|l| l.contains("WARN") && l.contains("without a verification token")),
        "{log:?}"
    );
    let log = startup_log(&[
        "--brokers",
        &kafka.bootstrap,
        "--verification-token",
        "short",
    ])
    .await;
    assert!(
        log.iter()
            .any(|l| l.contains("WARN") && l.contains("shorter than 16")),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_needs_no_token() {
    let log = startup_log(&[]).await;
    assert!(!log.iter().any(|l| l.contains("verification")), "{log:?}");
}
