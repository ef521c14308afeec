//! A spool that fails loudly: its identity, damage found at start-up (the real binary), owner-only
//! files, bounded dead letters, the `spool` commands, and the size of the database file against
//! `--spool-max-bytes`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rc_kafka_bridge::in_flight::Reservation;
use rc_kafka_bridge::metrics::Metrics;
use rc_kafka_bridge::routing::{OutboundMessage, RoutePlan};
use rc_kafka_bridge::sink::{Sink, SinkError};
use rc_kafka_bridge::spool::{self, Spool, SpoolError, SpoolOptions};
use serde_json::Value;

use crate::common::app::{TestApp, http};
use crate::common::kafka::{missing_after_delivery, read_until};
use crate::common::metrics::sample;
use crate::common::mock_kafka::MockKafka;
use crate::common::payloads::{extension_update, unique};
use crate::common::process::{BridgeProcess, Serve, bridge_command};

/// Nothing listens there: notifications stay in the spool.
const NO_KAFKA: &str = "127.0.0.1:1";
const TOKEN: &str = "spool-tests-verification-token";
const FEATURES: &str = "ringcentral.account.extension.features";

fn database(dir: &Path) -> PathBuf {
    dir.join(spool::DATABASE_FILE)
}

fn spool_id(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join(spool::IDENTITY_FILE)).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    table["id"].as_str().unwrap().to_string()
}

fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
    Spool::open(
        dir,
        SpoolOptions {
            max_bytes,
            dedup_window: Duration::from_secs(3600),
            dedup_capacity: 100_000,
            cache_bytes: 1 << 20,
            linger: std::time::Duration::ZERO,
            linger_max: std::time::Duration::ZERO,
        },
        Metrics::new(),
    )
}

/// Copies the spool in `from` (its database, identity and journal) into `to`.
fn copy_spool(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A spool left by a bridge that answered `count` notifications while Kafka was unreachable.
async fn spool_holding(count: usize) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_in(NO_KAFKA, dir.path().to_path_buf(), |a| {
        a.shutdown_grace = Duration::from_millis(100);
    })
    .await;
    let mut uuids = Vec::new();
    for i in 0..count {
        let uuid = format!("held-{}-{i}", unique());
        let response = app
            .post_webhook(extension_update(&uuid, "1", &["Limits"]).to_string())
            .await;
        assert_eq!(response.status(), 200);
        uuids.push(uuid);
    }
    app.shutdown().await;
    (dir, uuids)
}

/// `serve` on `dir` against `brokers`, with a verification token.
fn serve(dir: &Path, brokers: &str, extra: &[&str]) -> Serve {
    Serve::new(dir)
        .brokers(brokers)
        .args(&["--verification-token", TOKEN])
        .args(extra)
}

/// The bridge on `dir`, running, and every log event of its start-up.
async fn serve_until_listening(
    dir: &Path,
    brokers: &str,
    extra: &[&str],
) -> (BridgeProcess, Vec<Value>) {
    let bridge = serve(dir, brokers, extra).start().await;
    let events = bridge.start_up_events();
    (bridge, events)
}

/// Runs `serve` on `dir` and expects it to refuse to start: it exits by itself, non-zero, without a
/// panic. Returns its stderr.
async fn serve_refuses(dir: &Path) -> String {
    serve(dir, NO_KAFKA, &[]).refuses().await
}

/// Runs a `spool` command; returns its exit success, stdout and stderr.
fn spool_command(args: &[&str], dir: &Path) -> (bool, String, String) {
    let out = bridge_command()
        .arg("spool")
        .args(args)
        .arg("--spool-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(101));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn inspect(dir: &Path) -> Value {
    let (ok, stdout, stderr) = spool_command(&["inspect", "--json"], dir);
    assert!(ok, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

/// Overwrites `range` of `file` with bytes no database holds by chance.
fn scribble(file: &Path, range: std::ops::Range<u64>) {
    use std::io::{Seek, SeekFrom, Write};
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ range.start;
    let bytes: Vec<u8> = (range.start..range.end)
        .map(|_| {
            // xorshift: deterministic noise.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(range.start)).unwrap();
    f.write_all(&bytes).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_database_stops_start_up_naming_the_file() {
    let (dir, _) = spool_holding(5).await;
    let file = database(dir.path());
    std::fs::File::create(&file).unwrap();
    let id_before = spool_id(dir.path());

    let stderr = serve_refuses(dir.path()).await;
    assert!(
        stderr.contains(&format!("{} is empty", file.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "to start an empty spool knowingly, move spool.redb, spool.id and the journal-* files \
             out of"
        ),
        "{stderr}"
    );
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "left as it was");
    assert_eq!(spool_id(dir.path()), id_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_stops_start_up_when_the_identity_says_a_spool_was_here() {
    let (dir, _) = spool_holding(5).await;
    let file = database(dir.path());
    std::fs::remove_file(&file).unwrap();

    let stderr = serve_refuses(dir.path()).await;
    assert!(
        stderr.contains(&format!("{} is missing", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains(&spool_id(dir.path())), "{stderr}");
    assert!(!file.exists(), "no new empty spool was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_spools_database_stops_start_up() {
    let (dir, _) = spool_holding(3).await;
    let other = tempfile::tempdir().unwrap();
    drop(open(other.path(), 1 << 20).unwrap());
    std::fs::copy(database(other.path()), database(dir.path())).unwrap();

    let stderr = serve_refuses(dir.path()).await;
    let file = database(dir.path());
    assert!(
        stderr.contains(&format!("{} is not this spool's database", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains(&spool_id(dir.path())), "{stderr}");
    assert!(stderr.contains(&spool_id(other.path())), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_journal_file_stops_start_up_naming_it() {
    let (dir, _) = spool_holding(3).await;
    let journal = dir.path().join("journal-0000");
    std::fs::remove_file(&journal).unwrap();

    let stderr = serve_refuses(dir.path()).await;
    assert!(
        stderr.contains(&format!("{} is missing", journal.display())),
        "{stderr}"
    );
    assert!(stderr.contains("journal-* files"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_files_are_readable_by_their_owner_only() {
    let (dir, _) = spool_holding(1).await;
    let mode = std::fs::metadata(dir.path().join("journal-0000"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scribbled_pages_stop_start_up_with_a_clear_error_never_a_panic() {
    let (dir, _) = spool_holding(40).await;
    let file = database(dir.path());
    let len = std::fs::metadata(&file).unwrap().len();
    scribble(&file, len / 4..len * 3 / 4);

    let stderr = serve_refuses(dir.path()).await;
    assert!(
        stderr.contains(&format!("{} is damaged", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("move it away"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_scribbled_page_panics_or_silently_loses_a_notification() {
    let (dir, uuids) = spool_holding(20).await;
    let pages = std::fs::metadata(database(dir.path())).unwrap().len() / 4096;
    let mut refused = 0;
    for page in 0..pages {
        let copy = tempfile::tempdir().unwrap();
        copy_spool(dir.path(), copy.path());
        scribble(&database(copy.path()), page * 4096..(page + 1) * 4096);
        match open(copy.path(), 1 << 30) {
            // An unused page: everything is still there.
            Ok(spool) => {
                let held: Vec<String> = spool
                    .oldest(100, usize::MAX)
                    .unwrap()
                    .into_iter()
                    .map(|e| e.plan.uuid)
                    .collect();
                assert_eq!(held, uuids, "page {page} scribbled");
            }
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.contains(&database(copy.path()).display().to_string()),
                    "page {page}: {message}"
                );
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "some of the {pages} pages hold the notifications"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_of_an_earlier_release_is_adopted_and_delivered() {
    // What an earlier release left: no identity file, no identity inside the database (the
    // format-3 fixture's, with both taken out).
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-format-3");
    std::fs::copy(
        fixture.join(spool::DATABASE_FILE),
        dir.path().join(spool::DATABASE_FILE),
    )
    .unwrap();
    let uuids: Vec<String> = (1..=3).map(|n| format!("fixture-{n}")).collect();
    {
        let db = redb::Database::open(database(dir.path())).unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(redb::TableDefinition::<&str, &str>::new("meta"))
            .unwrap();
        txn.commit().unwrap();
    }

    let kafka = MockKafka::start();
    let (bridge, events) = serve_until_listening(dir.path(), &kafka.bootstrap, &[]).await;
    let adopted = events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("adopted")
        })
        .unwrap_or_else(|| panic!("no adoption log line in {events:#?}"));
    let id = spool_id(dir.path());
    assert_eq!(adopted["id"], id.as_str());
    let missing = missing_after_delivery(&kafka.bootstrap, &uuids, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "not delivered: {missing:?}");
    drop(bridge);

    // Adopted for good: the next start finds the same spool.
    let (bridge, _) = serve_until_listening(dir.path(), &kafka.bootstrap, &[]).await;
    assert_eq!(spool_id(dir.path()), id);
    drop(bridge);
}

/// The identity file's `format`.
fn spool_format(dir: &Path) -> i64 {
    let text = std::fs::read_to_string(dir.join(spool::IDENTITY_FILE)).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    table["format"].as_integer().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_written_by_the_json_entry_release_is_delivered_and_its_format_upgraded() {
    // `tests/fixtures/spool-format-1`: three notifications (ExtensionInfo and Features hints)
    // answered by the release that stored entries as JSON, while Kafka was unreachable.
    an_earlier_release_s_spool_is_delivered_and_its_format_upgraded("spool-format-1", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_written_by_the_uncompressed_record_release_is_delivered_and_its_format_upgraded() {
    // `tests/fixtures/spool-format-2`: the same three notifications answered by the release that
    // stored entries as uncompressed binary records, while Kafka was unreachable.
    an_earlier_release_s_spool_is_delivered_and_its_format_upgraded("spool-format-2", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_written_by_the_uuid_table_release_is_delivered_and_its_format_upgraded() {
    // `tests/fixtures/spool-format-3`: the same three notifications answered by the release that
    // kept a table of uuids beside the deduplication record, while Kafka was unreachable.
    an_earlier_release_s_spool_is_delivered_and_its_format_upgraded("spool-format-3", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_written_by_the_release_before_the_journal_is_delivered_and_its_format_upgraded() {
    // `tests/fixtures/spool-format-4`: the same three notifications answered by the release that
    // kept pending entries in the database, while Kafka was unreachable.
    an_earlier_release_s_spool_is_delivered_and_its_format_upgraded("spool-format-4", 4).await;
}

async fn an_earlier_release_s_spool_is_delivered_and_its_format_upgraded(
    fixture: &str,
    format: i64,
) {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    for name in [spool::DATABASE_FILE, spool::IDENTITY_FILE] {
        std::fs::copy(fixture.join(name), dir.path().join(name)).unwrap();
    }
    assert_eq!(spool_format(dir.path()), format);
    let id = spool_id(dir.path());

    let kafka = MockKafka::start();
    // Long enough to remember the fixture's uuids, however old it is.
    let window = ["--dedup-window", "36500days"];
    let (bridge, events) = serve_until_listening(dir.path(), &kafka.bootstrap, &window).await;
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("spool format upgraded"))),
        "{events:#?}"
    );
    let uuids: Vec<String> = (1..=3).map(|n| format!("fixture-{n}")).collect();
    let missing = missing_after_delivery(&kafka.bootstrap, &uuids, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "not delivered: {missing:?}");
    // The earlier release's deduplication record still holds: a redelivery is a duplicate.
    let again = http()
        .post(format!("{}/webhook", bridge.address()))
        .header("content-type", "application/json")
        .header("verification-token", TOKEN)
        .body(extension_update("fixture-2", "102", &["ExtensionInfo"]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "duplicate");
    drop(bridge);
    // The same spool, now saying that earlier releases cannot read it, without the uuid table.
    assert_eq!(spool_id(dir.path()), id);
    assert_eq!(spool_format(dir.path()), 5);
    use redb::{ReadableDatabase, TableHandle};
    let db = redb::Database::open(database(dir.path())).unwrap();
    let tables: Vec<String> = db
        .begin_read()
        .unwrap()
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_string())
        .collect();
    assert!(tables.contains(&"seen_order".to_string()), "{tables:?}");
    assert!(!tables.contains(&"seen".to_string()), "{tables:?}");
}

#[test]
fn a_lost_identity_file_is_written_again_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), 1 << 20).unwrap());
    let id = spool_id(dir.path());
    std::fs::remove_file(dir.path().join(spool::IDENTITY_FILE)).unwrap();
    drop(open(dir.path(), 1 << 20).unwrap());
    assert_eq!(spool_id(dir.path()), id);
}

#[test]
fn spool_files_are_readable_by_their_owner_only() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("new").join("spool");
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    drop(open(&dir, 1 << 20).unwrap());
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&parent.path().join("new")), 0o700);
    for name in [spool::DATABASE_FILE, spool::IDENTITY_FILE] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }

    // Earlier releases created the database readable by everyone: tightened on the next start.
    let file = database(&dir);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(open(&dir, 1 << 20).unwrap());
    assert_eq!(mode(&file), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_warns_when_the_filesystem_cannot_hold_a_full_spool() {
    let warning = |events: &[Value]| -> Option<Value> {
        events.iter().find(|e| e["free_bytes"].is_u64()).cloned()
    };
    let dir = tempfile::tempdir().unwrap();
    let huge = (1u64 << 62).to_string();
    let (bridge, events) =
        serve_until_listening(dir.path(), NO_KAFKA, &["--spool-max-bytes", &huge]).await;
    drop(bridge);
    let warned = warning(&events).unwrap_or_else(|| panic!("no warning in {events:#?}"));
    assert_eq!(warned["level"], "WARN");
    assert_eq!(
        warned["spool_max_bytes"].as_u64(),
        Some(1u64 << 62),
        "{warned}"
    );
    let free = warned["free_bytes"].as_u64().unwrap();
    let message = warned["message"].as_str().unwrap();
    assert!(message.contains(&free.to_string()), "{message}");
    assert!(message.contains(&huge), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let (bridge, events) =
        serve_until_listening(dir.path(), NO_KAFKA, &["--spool-max-bytes", "1048576"]).await;
    drop(bridge);
    assert_eq!(warning(&events), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_share_the_spool_and_the_oldest_makes_room() {
    let kafka = MockKafka::start();
    let long_hint = "H".repeat(4000);
    let huge = |uuid: &str| extension_update(uuid, "5", &[&long_hint]).to_string();

    // Measure one dead letter first, so the area holds one and a half of them.
    let app = TestApp::spawn(&kafka.bootstrap, |a| {
        a.kafka_property
            .push(("message.max.bytes".into(), "3000".into()));
    })
    .await;
    assert_eq!(
        app.post_webhook(huge(&format!("dl-{}", unique())))
            .await
            .status(),
        200
    );
    let scrape = app
        .metrics_until("a dead letter in the spool", |s| {
            sample(s, "rckb_spool_dead_letters", &[]) == 1.0
        })
        .await;
    let letter = sample(&scrape, "rckb_spool_dead_letter_bytes", &[]) as u64;
    assert!(letter > 4000, "{letter}");
    app.shutdown().await;

    let max_bytes = letter * 3 / 2 * spool::DEAD_LETTER_SHARE;
    let app = TestApp::spawn(&kafka.bootstrap, |a| {
        a.kafka_property
            .push(("message.max.bytes".into(), "3000".into()));
        a.spool_max_bytes = max_bytes.try_into().unwrap();
    })
    .await;
    let uuids: Vec<String> = (0..3).map(|i| format!("dl-{}-{i}", unique())).collect();
    for uuid in &uuids {
        assert_eq!(app.post_webhook(huge(uuid)).await.status(), 200);
    }
    let scrape = app
        .metrics_until("three dead letters", |s| {
            sample(s, "rckb_dead_letters_total", &[("destination", "spool")]) == 3.0
                && sample(s, "rckb_spool_entries", &[]) == 0.0
        })
        .await;
    assert_eq!(sample(&scrape, "rckb_spool_dead_letters", &[]), 1.0);
    assert_eq!(sample(&scrape, "rckb_dead_letters_dropped_total", &[]), 2.0);
    let held = sample(&scrape, "rckb_spool_dead_letter_bytes", &[]) as u64;
    assert!(
        held > 0 && held <= max_bytes / spool::DEAD_LETTER_SHARE,
        "{held}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_export_and_replay_show_and_recover_what_the_spool_holds() {
    let kafka = MockKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_in(&kafka.bootstrap, dir.path().to_path_buf(), |a| {
        // Too small for the first notification's message, on its topic and on the dead-letter topic.
        a.kafka_property
            .push(("message.max.bytes".into(), "3000".into()));
        a.shutdown_grace = Duration::from_millis(100);
    })
    .await;
    let dead = format!("dead-{}", unique());
    let response = app
        .post_webhook(extension_update(&dead, "5", &[&"H".repeat(4000)]).to_string())
        .await;
    assert_eq!(response.status(), 200);
    app.metrics_until("the dead letter kept in the spool", |s| {
        sample(s, "rckb_spool_dead_letters", &[]) == 1.0
    })
    .await;
    kafka.down();
    let pending: Vec<String> = (0..3)
        .map(|i| format!("pending-{}-{i}", unique()))
        .collect();
    for uuid in &pending {
        let response = app
            .post_webhook(extension_update(uuid, "7", &["Limits"]).to_string())
            .await;
        assert_eq!(response.status(), 200);
    }
    app.shutdown().await;

    let summary = inspect(dir.path());
    assert_eq!(summary["pendingEntries"], 3, "{summary}");
    assert!(summary["pendingBytes"].as_u64().unwrap() > 0);
    assert!(summary["oldestAgeSeconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(summary["deadLetters"], 1);
    assert!(summary["deadLetterBytes"].as_u64().unwrap() > 4000);
    assert_eq!(summary["id"], spool_id(dir.path()).as_str());
    let (ok, text, stderr) = spool_command(&["inspect"], dir.path());
    assert!(ok, "{stderr}");
    assert!(text.contains("3 notifications"), "{text}");
    assert!(text.contains("dead letters  1 messages"), "{text}");

    let (ok, export, stderr) = spool_command(&["export"], dir.path());
    assert!(ok, "{stderr}");
    let lines: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{export}");
    for (line, uuid) in lines[..3].iter().zip(&pending) {
        assert_eq!(line["kind"], "pending");
        assert_eq!(line["uuid"], uuid.as_str());
        assert_eq!(line["topic"], FEATURES);
        assert_eq!(line["key"], "7");
        assert!(
            line["headers"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(["rc-notification-uuid", uuid])),
            "{line}"
        );
        let value: Value = serde_json::from_str(line["value"].as_str().unwrap()).unwrap();
        assert_eq!(value["uuid"], uuid.as_str());
        assert_eq!(value["hint"], "Limits");
    }
    let letter = &lines[3];
    assert_eq!(letter["kind"], "deadLetter");
    assert_eq!(letter["error"], "too_large");
    assert_eq!(letter["key"], "5");
    let original_topic = letter["topic"].as_str().unwrap().to_string();
    let value: Value = serde_json::from_str(letter["value"].as_str().unwrap()).unwrap();
    assert_eq!(value["uuid"], dead.as_str());

    // Back to its original topic, now that messages of its size are allowed.
    kafka.up();
    let out = bridge_command()
        .args([
            "spool",
            "replay-dead-letters",
            "--brokers",
            &kafka.bootstrap,
        ])
        .arg("--spool-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("replayed 1 dead letters"), "{stdout}");
    let replayed = {
        let dead = dead.clone();
        read_until(
            &kafka.bootstrap,
            &[original_topic],
            Duration::from_secs(30),
            move |got| got.iter().any(|m| m.uuid() == dead),
        )
        .await
    };
    let message = replayed
        .iter()
        .find(|m| m.uuid() == dead)
        .expect("the dead letter is on its original topic");
    assert_eq!(message.key, "5");
    assert_eq!(message.raw, letter["value"].as_str().unwrap());

    let summary = inspect(dir.path());
    assert_eq!(summary["deadLetters"], 0, "{summary}");
    assert_eq!(summary["deadLetterBytes"], 0);
    assert_eq!(
        summary["pendingEntries"], 3,
        "pending entries are left to the relay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_commands_refuse_politely_while_a_bridge_holds_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_in(NO_KAFKA, dir.path().to_path_buf(), |a| {
        a.shutdown_grace = Duration::from_millis(100);
    })
    .await;
    for command in [
        &["inspect"][..],
        &["export"],
        &["replay-dead-letters", "--brokers", NO_KAFKA],
    ] {
        let (ok, _, stderr) = spool_command(command, dir.path());
        assert!(!ok, "{command:?}");
        assert!(
            stderr.contains("the spool is in use by a running bridge"),
            "{command:?}: {stderr}"
        );
    }
    app.shutdown().await;

    // Where there is no spool, the commands say so and create nothing.
    let nowhere = dir.path().join("nothing-here");
    let (ok, _, stderr) = spool_command(&["inspect"], &nowhere);
    assert!(!ok);
    assert!(stderr.contains("no spool in"), "{stderr}");
    assert!(!nowhere.exists());
}

/// A plan of `messages` messages of about `value_bytes` each.
fn plan(uuid: String, messages: usize, value_bytes: usize) -> RoutePlan {
    RoutePlan {
        unrouted_reason: None,
        uuid: uuid.clone(),
        kind: "extension_info".into(),
        messages: (0..messages)
            .map(|i| OutboundMessage {
                topic: FEATURES.into(),
                key: "1".into(),
                headers: vec![("rc-notification-uuid".into(), uuid.clone())],
                value: format!(
                    "{{\"uuid\":\"{uuid}\",\"i\":{i},\"pad\":\"{}\"}}",
                    "x".repeat(value_bytes)
                ),
                hint_label: "Limits".into(),
                tombstone: false,
            })
            .collect(),
    }
}

/// The measurement behind `spool::FILE_SIZE_FACTOR`, which sizes the shipped volume: a spool filled
/// to refusal with a mix of small and large notifications, drained in part and filled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_files_stay_within_their_sizing_factor_under_churn() {
    let dir = tempfile::tempdir().unwrap();
    let max_bytes: u64 = 16 << 20;
    let spool = Arc::new(open(dir.path(), max_bytes).unwrap());
    // The database and the journal's files together.
    let on_disk = || -> u64 {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let mut largest = 0u64;
    let mut n = 0usize;
    for round in 0..3 {
        // Many requests at a time, as under load: they share commits.
        let mut full = false;
        while !full {
            let mut tasks = Vec::new();
            for _ in 0..64 {
                n += 1;
                let (messages, bytes) = match n % 20 {
                    0 => (40, 1500),
                    1..=5 => (5, 900),
                    _ => (1, 900),
                };
                let spool = spool.clone();
                let plan = plan(format!("churn-{n}"), messages, bytes);
                tasks.push(tokio::spawn(async move {
                    spool.accept(plan, Reservation::unbudgeted()).await
                }));
            }
            for task in tasks {
                match task.await.unwrap() {
                    Ok(_) => {}
                    Err(SinkError::SpoolFull) => full = true,
                    Err(e) => panic!("{e}"),
                }
            }
            largest = largest.max(on_disk());
        }
        // Drain to a half or a quarter, in releases the size of a relay round.
        let target = max_bytes / if round % 2 == 0 { 2 } else { 4 };
        while spool.bytes() > target {
            let seqs: Vec<u64> = spool
                .oldest(500, usize::MAX)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect();
            spool.release(seqs, vec![]).await.unwrap();
            largest = largest.max(on_disk());
        }
    }
    let ratio = largest as f64 / max_bytes as f64;
    eprintln!("largest spool on disk: {largest} bytes, {ratio:.2} x --spool-max-bytes");
    assert!(
        largest <= spool::worst_case_file_bytes(max_bytes),
        "the files reached {ratio:.2} x --spool-max-bytes, over {}",
        spool::FILE_SIZE_FACTOR
    );
}
