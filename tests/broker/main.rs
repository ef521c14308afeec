//! The end-to-end contract and the fault cases against a real Kafka-compatible broker process,
//! Tansu. Run by `scripts/broker-tests.sh`, which installs Tansu; these tests are ignored by a plain
//! `cargo test` because they need that binary (`TANSU_BIN`, or `tansu` on the PATH).

/// The helpers of `tests/common` this suite uses, and no other: a helper no test of this suite
/// calls would be dead code in its binary, which the lints refuse. The mock-cluster suite
/// (`tests/api/main.rs`) declares more of them.
#[path = "../common"]
mod common {
    pub mod app;
    pub mod cloudevents;
    pub mod contract;
    pub mod fake_extensions;
    // The fake serves all the RingCentral the mock-cluster suite needs; this suite needs its
    // extensions alone.
    #[allow(dead_code)]
    pub mod fake_ringcentral;
    pub mod kafka;
    pub mod payloads;
    pub mod polling;
    pub mod process;
    pub mod scenarios;
    pub mod schemas;
}

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rc_kafka_bridge::kafka::{self, ProducerFactory};
use rc_kafka_bridge::metrics::Metrics;
use serde_json::Value;

use common::app::TestApp;
use common::contract::check_contract;
use common::fake_ringcentral::FakeRingCentral;
use common::kafka::{Received, default_topics, missing_after_delivery, read_until};
use common::payloads::{extension_update, unique};
use common::polling::eventually;
use common::process::{BridgeProcess, bridge_command};
use common::scenarios::{
    Outage, an_outage_costs_no_notification_and_no_slow_answer, kill_repeatedly_under_load,
};

/// A Tansu broker on a free loopback port, in memory; killed when dropped.
struct Tansu {
    port: u16,
    child: Child,
}

impl Tansu {
    fn binary() -> String {
        std::env::var("TANSU_BIN").unwrap_or_else(|_| "tansu".to_string())
    }

    async fn start() -> Tansu {
        // Tansu takes its port as an argument, so the port is chosen here; a collision with another
        // process in between is retried.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if let Some(child) = Self::spawn_on(port).await {
                return Tansu { port, child };
            }
        }
        panic!("Tansu did not start");
    }

    /// Starts Tansu on `port` and waits until it accepts connections; `None` if it exits first (the
    /// port was taken).
    async fn spawn_on(port: u16) -> Option<Child> {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut child = Command::new(Self::binary())
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu binary (set TANSU_BIN or put tansu on the PATH)");
        let what = format!("Tansu to accept connections on port {port}");
        let accepting = eventually(what, Duration::from_secs(20), async || {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(false);
            }
            std::net::TcpStream::connect(("127.0.0.1", port))
                .is_ok()
                .then_some(true)
        })
        .await;
        accepting.then_some(child)
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGSTOP: a hung broker that keeps its state.
    fn hang(&self) {
        self.signal("STOP");
    }

    fn resume(&self) {
        self.signal("CONT");
    }

    /// Kill and start again on the same port: the broker lost its topics and producer ids.
    async fn restart_losing_state(&mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
        let port = self.port;
        let what = format!("Tansu to restart on port {port}");
        self.child = eventually(what, Duration::from_secs(20), async || {
            Self::spawn_on(port).await
        })
        .await;
    }
}

/// An outage of Tansu: hung (SIGSTOP), then resumed with its state.
impl Outage for Tansu {
    fn begin(&self) {
        self.hang();
    }

    fn end(&self) {
        self.resume();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        // A stopped process must be continued to die promptly on some systems.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn tansu_with_topics() -> Tansu {
    let tansu = Tansu::start().await;
    create_default_topics(&tansu).await;
    tansu
}

/// The producer side of the bridge's own Kafka code, for the topic checks.
fn factory(tansu: &Tansu) -> ProducerFactory {
    ProducerFactory::new(&tansu.bootstrap(), &Default::default(), Metrics::new())
}

/// Creates the default topics with one partition each, so every topic is totally ordered: Tansu
/// does not create topics on produce.
async fn create_default_topics(tansu: &Tansu) {
    kafka::create_topics(
        &factory(tansu),
        &default_topics(),
        &Default::default(),
        1,
        1,
    )
    .await
    .expect("topics created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Tansu broker: run scripts/broker-tests.sh"]
async fn every_documented_variant_is_published_as_the_contract_says() {
    let tansu = tansu_with_topics().await;
    let app = TestApp::spawn(&tansu.bootstrap(), |_| {}).await;
    check_contract(&app).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Tansu broker: run scripts/broker-tests.sh"]
async fn a_hung_broker_costs_no_notification_and_no_slow_answer() {
    let tansu = tansu_with_topics().await;
    let app = TestApp::spawn(&tansu.bootstrap(), |_| {}).await;
    an_outage_costs_no_notification_and_no_slow_answer(&app, &tansu).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Tansu broker: run scripts/broker-tests.sh"]
async fn a_broker_that_lost_its_state_gets_every_spooled_notification() {
    let mut tansu = tansu_with_topics().await;
    let app = TestApp::spawn(&tansu.bootstrap(), |_| {}).await;
    // Delivered before the restart: proves the producer was running idempotently on the old broker.
    let before = format!("before-{}", unique());
    let response = app
        .post_webhook(extension_update(&before, "12", &["Limits"]).to_string())
        .await;
    assert_eq!(response.status(), 200);
    let missing = missing_after_delivery(&app.bootstrap, &[before], Duration::from_secs(30)).await;
    assert!(missing.is_empty());

    // Spooled while the broker hangs, then the broker dies and comes back empty.
    tansu.hang();
    let mut spooled = Vec::new();
    for i in 0..30 {
        let uuid = format!("lost-state-{}-{i}", unique());
        let response = app
            .post_webhook(extension_update(&uuid, "12", &["Limits"]).to_string())
            .await;
        assert_eq!(response.status(), 200);
        spooled.push(uuid);
    }
    tansu.restart_losing_state().await;
    create_default_topics(&tansu).await;
    for i in 0..10 {
        let uuid = format!("after-restart-{}-{i}", unique());
        let response = app
            .post_webhook(extension_update(&uuid, "12", &["Limits"]).to_string())
            .await;
        assert_eq!(response.status(), 200);
        spooled.push(uuid);
    }
    let missing = missing_after_delivery(&app.bootstrap, &spooled, Duration::from_secs(120)).await;
    assert!(missing.is_empty(), "lost {missing:?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Tansu broker: run scripts/broker-tests.sh"]
async fn nothing_answered_200_is_lost_when_the_bridge_is_killed_repeatedly() {
    let tansu = tansu_with_topics().await;
    let dir = tempfile::tempdir().unwrap();
    let (accepted, bridge) =
        kill_repeatedly_under_load(&tansu.bootstrap(), dir.path(), &tansu).await;
    let missing =
        missing_after_delivery(&tansu.bootstrap(), &accepted, Duration::from_secs(120)).await;
    drop(bridge);
    assert!(
        missing.is_empty(),
        "{} of {} lost: {:?}",
        missing.len(),
        accepted.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Tansu broker: run scripts/broker-tests.sh"]
async fn missing_topics_are_reported_and_topics_ensure_creates_them() {
    let tansu = Tansu::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = BridgeProcess::start(&tansu.bootstrap(), dir.path(), &[]).await;
    let report = bridge
        .wait_for_log("topics missing", Duration::from_secs(30))
        .await;
    let listed = report["topics"].as_str().unwrap_or_default().to_string();
    for topic in [
        "ringcentral.account",
        "ringcentral.unrouted",
        "ringcentral.dead-letter",
    ] {
        assert!(
            listed.contains(topic),
            "{topic} reported missing in {listed}"
        );
    }
    drop(bridge);

    let output = bridge_command()
        .args(["topics", "ensure", "--brokers", &tansu.bootstrap()])
        .args(["--partitions", "2", "--replication-factor", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("created ringcentral.account.extension.features"),
        "{stdout}"
    );

    let missing =
        kafka::missing_topics(&factory(&tansu), &default_topics(), Duration::from_secs(10))
            .unwrap();
    assert!(missing.is_empty(), "still missing {missing:?}");

    // A second run finds nothing to do.
    let again = bridge_command()
        .args(["topics", "ensure", "--brokers", &tansu.bootstrap()])
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("exist"));

    // And the bridge starts without a report.
    let mut bridge = BridgeProcess::start(&tansu.bootstrap(), dir.path(), &[]).await;
    bridge
        .wait_for_log("every routed topic exists", Duration::from_secs(30))
        .await;
}

/// ExtensionInfo's state topic and hint topic.
const EXTENSION_STATE: &str = "ringcentral.state.account.extension";
const HINTS: &str = "ringcentral.account.extension";

/// Settings for `--state` that never reach RingCentral: credentials are required, not used.
const STATE_ARGS: [&str; 7] = [
    "--state",
    "--rc-client-id",
    "id",
    "--rc-client-secret",
    "secret",
    "--rc-jwt",
    "jwt",
];

fn state_topics() -> Vec<rc_kafka_bridge::routing::Topic> {
    let mut settings = rc_kafka_bridge::config::Settings::default();
    settings.state.enabled = true;
    let rc = &mut settings.ringcentral;
    rc.client_id = Some("id".into());
    rc.client_secret = Some(rc_kafka_bridge::config::Secret::new("secret"));
    rc.jwt = Some(rc_kafka_bridge::config::Secret::new("jwt"));
    settings.resolve().unwrap().routing.state_topics()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Tansu broker: run scripts/broker-tests.sh"]
async fn state_topics_are_created_compacted_and_an_uncompacted_one_is_reported() {
    let tansu = Tansu::start().await;
    let output = bridge_command()
        .args(["topics", "ensure", "--brokers", &tansu.bootstrap()])
        .args(STATE_ARGS)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let state = state_topics();
    assert!(!state.is_empty());
    let uncompacted = kafka::not_compacted(&factory(&tansu), &state)
        .await
        .unwrap();
    assert!(uncompacted.is_empty(), "{uncompacted:?}");
    drop(tansu);

    // A cluster where someone created a state topic by hand, with the default policy.
    let tansu = tansu_with_topics().await;
    let by_hand = &state[..1];
    kafka::create_topics(&factory(&tansu), by_hand, &Default::default(), 1, 1)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--ensure-topics"];
    args.extend(STATE_ARGS);
    let mut bridge = BridgeProcess::start(&tansu.bootstrap(), dir.path(), &args).await;
    let report = bridge
        .wait_for_log("without cleanup.policy=compact", Duration::from_secs(30))
        .await;
    let listed = report["topics"].as_str().unwrap_or_default().to_string();
    assert!(listed.contains(by_hand[0].as_str()), "{listed}");
    assert!(
        !listed.contains(state[1].as_str()),
        "created compacted: {listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Tansu broker: run scripts/broker-tests.sh"]
async fn serve_with_ensure_topics_creates_them_and_delivers() {
    let tansu = Tansu::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = BridgeProcess::start(
        &tansu.bootstrap(),
        dir.path(),
        &[
            "--ensure-topics",
            "--partitions",
            "1",
            "--replication-factor",
            "1",
        ],
    )
    .await;
    bridge
        .wait_for_log("created missing topics", Duration::from_secs(30))
        .await;
    let uuid = format!("ensured-{}", unique());
    let body = extension_update(&uuid, "3", &["Limits"]).to_string();
    assert_eq!(bridge.post_webhook(body, &[]).await, 200);
    let missing =
        missing_after_delivery(&tansu.bootstrap(), &[uuid], Duration::from_secs(60)).await;
    assert!(missing.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Tansu broker: run scripts/broker-tests.sh"]
async fn a_snapshot_then_a_sweep_repair_the_state_topics() {
    let tansu = Tansu::start().await;
    let fake = FakeRingCentral::start().await;
    let ids: Vec<String> = (701..711).map(|n: u32| n.to_string()).collect();
    for id in &ids {
        fake.add_extension(id);
    }
    let mut args: Vec<String> = ["--state", "--ensure-topics", "--partitions", "1"]
        .map(String::from)
        .to_vec();
    args.extend(fake.cli_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = BridgeProcess::start(&tansu.bootstrap(), dir.path(), &args).await;
    let done = bridge
        .wait_for_log("reconciliation sweep done", Duration::from_secs(60))
        .await;
    assert_eq!(done["cause"], "snapshot", "{done}");
    assert_eq!(done["new"], 10, "{done}");
    let topics = [EXTENSION_STATE, HINTS].map(String::from);
    let state_of = |read: &[Received], id: &str| {
        read.iter()
            .rev()
            .find(|m| m.topic == EXTENSION_STATE && m.key == id)
            .cloned()
    };
    let read = read_until(
        &tansu.bootstrap(),
        &topics,
        Duration::from_secs(60),
        |read| ids.iter().all(|id| state_of(read, id).is_some()),
    )
    .await;
    for id in &ids {
        let state = state_of(&read, id).unwrap_or_else(|| panic!("no state for {id}"));
        assert_eq!(state.value()["name"], format!("User {id}"));
    }

    // RingCentral renames one extension and deletes another, and sends nothing.
    {
        let mut state = fake.state.lock().unwrap();
        state.extensions.get_mut("703").unwrap()["name"] = serde_json::json!("Renamed 703");
        state.extensions.remove("709");
    }
    bridge.signal("USR1");
    let done = bridge
        .wait_for_log("reconciliation sweep done", Duration::from_secs(60))
        .await;
    assert_eq!(done["cause"], "requested", "{done}");
    assert_eq!(
        (&done["changed"], &done["gone"]),
        (&1.into(), &1.into()),
        "{done}"
    );
    let read = read_until(
        &tansu.bootstrap(),
        &topics,
        Duration::from_secs(60),
        |read| {
            state_of(read, "703").is_some_and(|m| m.value()["name"] == "Renamed 703")
                && state_of(read, "709").is_some_and(|m| m.tombstone)
                && read
                    .iter()
                    .filter(|m| m.header("rc-reconciled").is_some())
                    .count()
                    >= 2
        },
    )
    .await;
    assert!(state_of(&read, "703").is_some_and(|m| m.value()["name"] == "Renamed 703"));
    assert!(state_of(&read, "709").is_some_and(|m| m.tombstone));
    let reconciled: Vec<(String, String)> = read
        .iter()
        .filter(|m| m.topic == HINTS && m.header("rc-reconciled").is_some())
        .map(|m| {
            (
                m.key.clone(),
                m.header("rc-event-type").unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        reconciled,
        [
            ("703".into(), "Reconciled".into()),
            ("709".into(), "Delete".into())
        ],
        "what the sweep tells hint consumers"
    );
}

/// A small tmpfs, so the spool's disk can really fill up. Needs root (CI runs as root).
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallDisk { path, _dir: dir }
    }

    /// Fills the disk; returns the filler file.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Tansu broker and root: run scripts/broker-tests.sh"]
async fn a_full_disk_answers_503_keeps_nothing_half_and_recovers_when_space_returns() {
    let tansu = tansu_with_topics().await;
    let disk = SmallDisk::mount("8m");
    let app = TestApp::spawn_in(&tansu.bootstrap(), disk.path.join("spool"), |_| {}).await;
    let mut accepted = Vec::new();
    let post = |uuid: String| {
        let body = extension_update(&uuid, "21", &["Limits"]).to_string();
        let app = &app;
        async move { app.post_webhook(body).await }
    };
    let uuid = format!("disk-{}", unique());
    assert_eq!(post(uuid.clone()).await.status(), 200);
    accepted.push(uuid);

    let filler = disk.fill();
    let mut refused = None;
    for i in 0..500 {
        let uuid = format!("disk-full-{}-{i}", unique());
        let response = post(uuid.clone()).await;
        if response.status() == 200 {
            accepted.push(uuid);
        } else {
            refused = Some((uuid, response));
            break;
        }
    }
    let (refused_uuid, refused) = refused.expect("a full disk refuses notifications");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    let ready: Value = app.get_admin("/readyz").await.json().await.unwrap();
    assert_eq!(ready["spool"], "unwritable", "{ready}");

    std::fs::remove_file(filler).unwrap();
    let recovered = eventually(
        "the bridge to accept again once space returns",
        Duration::from_secs(10),
        async || {
            let uuid = format!("disk-back-{}", unique());
            (post(uuid.clone()).await.status() == 200).then_some(uuid)
        },
    )
    .await;
    accepted.push(recovered);
    let ready: Value = app.get_admin("/readyz").await.json().await.unwrap();
    assert_eq!(ready["spool"], "ok", "{ready}");
    // RingCentral's retry of the refused notification: the failed commit kept nothing of it, not
    // even in the deduplication record.
    let retried = post(refused_uuid.clone()).await;
    assert_eq!(retried.status(), 200);
    assert_eq!(retried.json::<Value>().await.unwrap()["status"], "accepted");
    accepted.push(refused_uuid);
    let missing = missing_after_delivery(&app.bootstrap, &accepted, Duration::from_secs(60)).await;
    assert!(missing.is_empty(), "lost {missing:?}");
    app.shutdown().await;
}
