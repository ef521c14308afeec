//! Operating the bridge: metrics, graceful shutdown, configuration reload, secrets in logs.

use std::time::{Duration, Instant};

use crate::common::app::{TestApp, http};
use crate::common::kafka::{missing_after_delivery, read_until};
use crate::common::metrics::sample;
use crate::common::mock_kafka::MockKafka;
use crate::common::payloads::{DOCUMENTED_EXAMPLE, extension_update, unique};
use crate::common::process::{BridgeProcess, Serve, bridge_command};
use crate::common::scenarios::Load;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_tell_what_was_received_delivered_and_rejected() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |_| {}).await;
    let unknown = extension_update(&format!("m-{}", unique()), "77", &["Teleport", "Limits"]);
    assert_eq!(
        app.post_with("", &[("Validation-Token", "x")])
            .await
            .status(),
        200
    );
    assert_eq!(app.post_webhook(DOCUMENTED_EXAMPLE).await.status(), 200);
    assert_eq!(app.post_webhook(unknown.to_string()).await.status(), 200);
    assert_eq!(app.post_webhook(DOCUMENTED_EXAMPLE).await.status(), 200);
    assert_eq!(app.post_webhook("{oops").await.status(), 400);

    let scrape = app
        .metrics_until("both notifications delivered", |s| {
            sample(s, "rckb_accept_to_ack_seconds_count", &[]) == 2.0
                && sample(s, "rckb_spool_entries", &[]) == 0.0
        })
        .await;
    let webhook = [("route", "/webhook")];
    type Expectation<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);
    let expectations: Vec<Expectation> = vec![
        (
            "rckb_http_requests_total",
            vec![webhook[0], ("status", "2xx")],
            4.0,
        ),
        (
            "rckb_http_requests_total",
            vec![webhook[0], ("status", "4xx")],
            1.0,
        ),
        (
            "rckb_http_request_duration_seconds_count",
            webhook.to_vec(),
            5.0,
        ),
        ("rckb_validation_handshakes_total", vec![], 1.0),
        (
            "rckb_notifications_total",
            vec![("kind", "extension_info"), ("outcome", "accepted")],
            2.0,
        ),
        (
            "rckb_notifications_total",
            vec![("kind", "extension_info"), ("outcome", "duplicate")],
            1.0,
        ),
        (
            "rckb_notifications_total",
            vec![("kind", "unknown"), ("outcome", "rejected_malformed_json")],
            1.0,
        ),
        ("rckb_unknown_hints_total", vec![], 1.0),
        (
            "rckb_messages_published_total",
            vec![
                ("topic", "ringcentral.account.extension.phone-number"),
                ("hint", "CompanyNumbers"),
            ],
            1.0,
        ),
        (
            "rckb_messages_published_total",
            vec![
                ("topic", "ringcentral.account.extension"),
                ("hint", "ExtensionInfo"),
            ],
            1.0,
        ),
        (
            "rckb_messages_published_total",
            vec![("topic", "ringcentral.unrouted"), ("hint", "unknown")],
            1.0,
        ),
        (
            "rckb_messages_published_total",
            vec![
                ("topic", "ringcentral.account.extension.features"),
                ("hint", "Limits"),
            ],
            1.0,
        ),
        ("rckb_messages_published_total", vec![], 4.0),
        ("rckb_publish_errors_total", vec![], 0.0),
        ("rckb_spool_bytes", vec![], 0.0),
        ("rckb_spool_oldest_entry_age_seconds", vec![], 0.0),
        (
            "rckb_build_info",
            vec![("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        ),
    ];
    for (name, labels, value) in expectations {
        assert_eq!(sample(&scrape, name, &labels), value, "{name} {labels:?}");
    }
    for s in &scrape.samples {
        assert!(s.metric.starts_with("rckb_"), "{}", s.metric);
        if let prometheus_parse::Value::Counter(_) = s.value {
            assert!(
                s.metric.ends_with("_total"),
                "counter {} ends with _total",
                s.metric
            );
        }
        for (label, value) in s.labels.iter() {
            assert!(value.len() < 80, "bounded label {label}={value}");
        }
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_delivers_every_answered_notification_and_exits_zero() {
    let kafka = MockKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let bridge =
        BridgeProcess::start(&kafka.bootstrap, dir.path(), &["--shutdown-grace", "10s"]).await;
    let exit = sigterm_under_load_delivers_everything(bridge, &kafka.bootstrap).await;
    assert!(
        exit < Duration::from_secs(12),
        "exited within the grace period"
    );
}

/// Puts `bridge` under load until 300 notifications are answered, sends SIGTERM, checks that it
/// exits zero and that every answered notification reached Kafka before the exit (no restart);
/// returns how long the exit took.
async fn sigterm_under_load_delivers_everything(
    mut bridge: BridgeProcess,
    bootstrap: &str,
) -> Duration {
    let load = Load::until_accepted(&bridge.address(), 4, 300).await;
    let signalled = Instant::now();
    bridge.signal("TERM");
    let status = bridge.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status:?}");
    let exit = signalled.elapsed();
    let accepted = load.finish().await;
    drop(bridge);
    let missing = missing_after_delivery(bootstrap, &accepted, Duration::from_secs(30)).await;
    assert!(
        missing.is_empty(),
        "{} of {} not delivered",
        missing.len(),
        accepted.len()
    );
    exit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_sizes_the_runtime_and_one_worker_delivers_everything_under_load() {
    let kafka = MockKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let default = BridgeProcess::start(&kafka.bootstrap, dir.path(), &[]).await;
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(default.listening("worker_threads"), (cpus - 1).max(1));
    drop(default);
    let three =
        BridgeProcess::start(&kafka.bootstrap, dir.path(), &["--worker-threads", "3"]).await;
    assert_eq!(three.listening("worker_threads"), 3);
    drop(three);

    let one = BridgeProcess::start(
        &kafka.bootstrap,
        dir.path(),
        &["--worker-threads", "1", "--shutdown-grace", "10s"],
    )
    .await;
    assert_eq!(one.listening("worker_threads"), 1);
    sigterm_under_load_delivers_everything(one, &kafka.bootstrap).await;
}

/// A supervisor may act on the "listening" line at once: a stop or a reload sent right then is
/// caught (a stop drains and exits zero, a reload reloads), never the default action that ends the
/// process. Several starts, since a handler installed late loses only a narrow race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_sent_the_moment_it_is_listening_is_handled() {
    use rustix::process::Signal;
    let kafka = MockKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let serve = |name: String| {
        Serve::new(dir.path().join(name))
            .brokers(&kafka.bootstrap)
            .args(&["--allow-unverified-webhooks"])
    };
    for round in 0..5 {
        let mut stopped = serve(format!("term-{round}"))
            .signal_at_listening(Signal::TERM)
            .start()
            .await;
        let status = stopped.wait_exit(Duration::from_secs(20)).await;
        assert!(status.success(), "round {round}: exit status {status:?}");
        let logs = stopped.all_logs().await;
        assert!(
            logs.iter().any(|l| l.contains("SIGTERM received")),
            "round {round}: {logs:#?}"
        );

        let mut reloaded = serve(format!("hup-{round}"))
            .signal_at_listening(Signal::HUP)
            .start()
            .await;
        reloaded
            .wait_for_log("routing reloaded", Duration::from_secs(10))
            .await;
        reloaded.signal("TERM");
        let status = reloaded.wait_exit(Duration::from_secs(20)).await;
        assert!(status.success(), "round {round}: exit status {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_valid_routing_and_keeps_the_old_one_on_an_invalid_one() {
    let kafka = MockKafka::start();
    kafka
        .cluster
        .create_topic("ringcentral.account.holidays", 1, 1)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(&config, "[hints]\n").unwrap();
    let spool = dir.path().join("spool");
    let mut bridge = BridgeProcess::start(
        &kafka.bootstrap,
        &spool,
        &["--config", config.to_str().unwrap()],
    )
    .await;
    let client = http();
    let url = format!("{}/webhook", bridge.address());
    let post = |uuid: String| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let body = extension_update(&uuid, "31", &["Holidays"]).to_string();
            let r = client.post(url).body(body).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    let before = format!("hup-before-{}", unique());
    post(before.clone()).await;

    std::fs::write(&config, "[hints]\nHolidays = [\"account/~/holidays\"]\n").unwrap();
    bridge.signal("HUP");
    bridge
        .wait_for_log("routing reloaded", Duration::from_secs(10))
        .await;
    let after = format!("hup-after-{}", unique());
    post(after.clone()).await;

    std::fs::write(
        &config,
        "[hints]\nHolidays = [\"account/~/no such topic!\"]\n",
    )
    .unwrap();
    bridge.signal("HUP");
    let rejected = bridge
        .wait_for_log("rejected", Duration::from_secs(10))
        .await;
    assert!(
        rejected["error"].as_str().unwrap().contains("Holidays"),
        "{rejected}"
    );
    let still = format!("hup-still-{}", unique());
    post(still.clone()).await;

    let unrouted = read_until(
        &kafka.bootstrap,
        &["ringcentral.unrouted".into()],
        Duration::from_secs(30),
        {
            let before = before.clone();
            move |got| got.iter().any(|m| m.uuid() == before)
        },
    )
    .await;
    assert!(
        unrouted.iter().any(|m| m.uuid() == before),
        "unknown before the reload"
    );
    let holidays = read_until(
        &kafka.bootstrap,
        &["ringcentral.account.holidays".into()],
        Duration::from_secs(30),
        |got| got.len() >= 2,
    )
    .await;
    let uuids: Vec<&str> = holidays.iter().map(|m| m.uuid()).collect();
    assert_eq!(uuids, [after.as_str(), still.as_str()]);
    assert!(
        unrouted
            .iter()
            .all(|m| m.uuid() != after && m.uuid() != still)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let kafka = MockKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let token = "token-hunter2-never-logged";
    let password = "password-swordfish-never-logged";
    let property = format!("sasl.password={password}");
    let mut bridge = Serve::new(dir.path())
        .brokers(&kafka.bootstrap)
        .args(&["--kafka-property", "message.timeout.ms=5000"])
        .args(&["--verification-token", token, "--kafka-property", &property])
        .env("RUST_LOG", "trace")
        .start()
        .await;
    let client = http();
    let url = format!("{}/webhook", bridge.address());
    let body = extension_update(&format!("secret-{}", unique()), "1", &["Limits"]).to_string();
    for (headers, status) in [
        (vec![("Verification-Token", token)], 200),
        (vec![("Verification-Token", "wrong")], 401),
        (vec![], 401),
    ] {
        let mut request = client.post(&url).body(body.clone());
        for (k, v) in &headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{headers:?}");
    }
    let handshake = client
        .post(&url)
        .header("Validation-Token", "v")
        .header("Verification-Token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(handshake.status(), 200);
    bridge.signal("TERM");
    let status = bridge.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status:?}");
    let logs = bridge.all_logs().await;
    assert!(logs.len() > 3, "trace logging produced lines");
    for line in logs {
        assert!(!line.contains(token), "token logged: {line}");
        assert!(!line.contains(password), "password logged: {line}");
    }
}

#[test]
fn check_config_validates_the_file_and_the_kafka_properties() {
    let run = |args: &[&str]| {
        bridge_command()
            .arg("check-config")
            .args(args)
            .output()
            .unwrap()
    };
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let ok = run(&["--config", example]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = run(&["--config", example, "--kafka-property", "linger.ms=soon"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("linger.ms"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "topic_prefix = \"ok.\"\nlisten = \"not an address\"\n",
    )
    .unwrap();
    let bad = run(&["--config", file.to_str().unwrap()]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("listen"), "{stderr}");
}

#[test]
fn routes_prints_every_hint_with_its_topics() {
    let out = bridge_command()
        .args(["routes", "--topic-prefix", "rc."])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    for line in [
        "CallQueueMembersChange",
        "rc.account.extension.call-queues",
        "rc.account.call-queues.bulk-assign",
        "rc.account.extension.phone-number",
        "rc.unrouted",
        "rc.dead-letter",
    ] {
        assert!(table.contains(line), "{line} in\n{table}");
    }
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("CallQueueMembersChange"))
            .count(),
        2
    );
}

/// Huge pages would keep the heap resident 2 MiB at a time: the process opts out before any thread
/// starts, which the kernel reports for the whole process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_opts_out_of_transparent_huge_pages() {
    let kafka = MockKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let bridge = BridgeProcess::start(&kafka.bootstrap, dir.path(), &[]).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", bridge.child.id())).unwrap();
    let thp = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled in {status}"));
    assert_eq!(thp.trim(), "0", "{status}");
}
