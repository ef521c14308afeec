//! Test harness shared by the mock-cluster suite (`tests/api`) and the real-broker suite
//! (`tests/broker`): the real application on port 0, real HTTP, and an independent Kafka reader.
#![allow(dead_code)]

pub mod fake_ringcentral;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rc_kafka_bridge::app::Application;
use rc_kafka_bridge::config::Settings;
use rc_kafka_bridge::kafka::{self, ProducerFactory};
use rc_kafka_bridge::metrics::Metrics;
use rc_kafka_bridge::routing::Topic;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An HTTP client for tests. The crate compiles rustls with the `ring` provider only, which must be
/// installed once per process before any client is built.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The bridge running in this process on ephemeral ports.
pub struct TestApp {
    pub address: String,
    pub admin_address: String,
    pub bootstrap: String,
    pub spool_dir: PathBuf,
    pub settings: Settings,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _spool_guard: Option<tempfile::TempDir>,
}

/// Settings for a test: loopback listeners on port 0, a fresh spool directory, the given brokers.
pub fn test_args(brokers: &str, spool_dir: &std::path::Path) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        brokers: Some(brokers.to_string()),
        spool_dir: spool_dir.to_path_buf(),
        // Short timeouts keep outage tests quick; the relay retries whatever times out.
        kafka_property: vec![
            ("message.timeout.ms".into(), "5000".into()),
            ("statistics.interval.ms".into(), "500".into()),
        ],
        shutdown_grace: Duration::from_secs(5),
        // Tests that check verification set a token; the others post without one.
        allow_unverified_webhooks: true,
        ..Default::default()
    }
}

impl TestApp {
    /// Starts the bridge against `brokers` with a fresh spool; `tweak` adjusts the settings.
    pub async fn spawn(brokers: &str, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut app = Self::spawn_in(brokers, dir.path().to_path_buf(), tweak).await;
        app._spool_guard = Some(dir);
        app
    }

    /// Starts the bridge on an existing spool directory (a restart).
    pub async fn spawn_in(
        brokers: &str,
        spool_dir: PathBuf,
        tweak: impl FnOnce(&mut Settings),
    ) -> TestApp {
        rc_kafka_bridge::telemetry::init_for_tests();
        let mut args = test_args(brokers, &spool_dir);
        tweak(&mut args);
        let settings = args.resolve().expect("valid test settings");
        let app = Application::build(settings.clone())
            .await
            .expect("app builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let admin_address = format!("http://127.0.0.1:{}", app.admin_port());
        let bootstrap = app.bootstrap_servers().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        TestApp {
            address,
            admin_address,
            bootstrap,
            spool_dir,
            settings,
            client: http(),
            stop: Some(stop),
            task: Some(task),
            _spool_guard: None,
        }
    }

    pub async fn post_webhook(&self, body: impl Into<String>) -> reqwest::Response {
        self.post_with(body, &[]).await
    }

    pub async fn post_with(
        &self,
        body: impl Into<String>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/webhook", self.address))
            .header("content-type", "application/json; charset=UTF-8")
            .header("user-agent", "RingCentral-Webhook/8.3")
            .body(body.into());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("bridge answers")
    }

    pub async fn get_admin(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.admin_address))
            .send()
            .await
            .expect("admin answers")
    }

    pub async fn metrics(&self) -> prometheus_parse::Scrape {
        scrape(&self.admin_address).await
    }

    /// Scrapes `/metrics` until `condition` holds (bounded), and returns that scrape.
    pub async fn metrics_until(
        &self,
        what: &str,
        condition: impl Fn(&prometheus_parse::Scrape) -> bool,
    ) -> prometheus_parse::Scrape {
        scrape_until(&self.admin_address, what, condition).await
    }

    /// Stops the bridge gracefully and waits for it.
    pub async fn shutdown(mut self) {
        self.stop_and_wait().await;
    }

    async fn stop_and_wait(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Every routed topic plus the dead-letter topic.
    pub fn topics(&self) -> Vec<Topic> {
        self.settings.routing.published_topics()
    }
}

/// The value of a metric sample with exactly these labels (0 when absent).
pub fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Creates `topics` with one partition each, so every topic is totally ordered.
pub async fn create_topics(bootstrap: &str, topics: &[Topic]) {
    let factory = ProducerFactory::new(bootstrap, &Default::default(), Metrics::new());
    kafka::create_topics(&factory, topics, 1, 1)
        .await
        .expect("topics created");
}

/// A message as an independent consumer sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub key: String,
    pub headers: Vec<(String, String)>,
    pub raw: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn value(&self) -> Value {
        serde_json::from_str(&self.raw).expect("value is JSON")
    }

    pub fn uuid(&self) -> &str {
        self.header("rc-notification-uuid").unwrap_or_default()
    }
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "rckb-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer")
}

/// One scrape of the `/metrics` of the bridge whose admin listener is `admin_address`.
pub async fn scrape(admin_address: &str) -> prometheus_parse::Scrape {
    let text = http()
        .get(format!("{admin_address}/metrics"))
        .send()
        .await
        .expect("admin answers")
        .text()
        .await
        .unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// Scrapes the `/metrics` of a bridge (in process or a child process) until `condition` holds, at
/// most 30 s, and returns that scrape: the one wait on metrics every test uses.
pub async fn scrape_until(
    admin_address: &str,
    what: &str,
    condition: impl Fn(&prometheus_parse::Scrape) -> bool,
) -> prometheus_parse::Scrape {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scrape = scrape(admin_address).await;
        if condition(&scrape) {
            return scrape;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `topics` from the beginning (partition 0 of each: test topics have one partition) until
/// `done` says the messages read so far are complete, or `timeout` passes.
pub async fn read_until(
    bootstrap: &str,
    topics: &[String],
    timeout: Duration,
    done: impl Fn(&[Received]) -> bool + Send + 'static,
) -> Vec<Received> {
    let bootstrap = bootstrap.to_string();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let consumer = consumer(&bootstrap);
        let mut assignment = TopicPartitionList::new();
        for topic in &topics {
            assignment
                .add_partition_offset(topic, 0, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while !done(&out) && Instant::now() < deadline {
            // Errors (a broker coming back) are transient here: polling goes on until the deadline.
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                out.push(Received {
                    topic: m.topic().to_string(),
                    key: m
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_string(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    raw: m
                        .payload()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .unwrap_or_default(),
                });
            }
        }
        out
    })
    .await
    .unwrap()
}

/// Reads until `count` messages arrived on `topics`.
pub async fn read_n(
    bootstrap: &str,
    topics: &[String],
    count: usize,
    timeout: Duration,
) -> Vec<Received> {
    read_until(bootstrap, topics, timeout, move |got| got.len() >= count).await
}

/// Posts a marker notification that lands on every given topic and reads each topic up to its marker:
/// what comes before the marker is everything the bridge published there. Needs spool mode (the
/// relay publishes in acceptance order) and single-partition topics.
pub async fn read_all_before_marker(
    app: &TestApp,
    timeout: Duration,
) -> HashMap<String, Vec<Received>> {
    let marker = format!("marker-{}", unique());
    let hints = [
        "AccountSettings",
        "AnsweringRules",
        "CompanyNumbers",
        "DialingPlan",
        "Features",
        "ProfileImage",
        "CallQueueMembersChange",
        "MarkerUnknownHint",
    ];
    let token = app
        .settings
        .verification_token
        .as_ref()
        .map(|t| t.expose().to_string());
    let headers: Vec<(&str, &str)> = token
        .as_deref()
        .map(|t| vec![("Verification-Token", t)])
        .unwrap_or_default();
    let response = app
        .post_with(extension_update(&marker, "1", &hints).to_string(), &headers)
        .await;
    assert_eq!(response.status(), 200, "marker accepted");
    let reminder = format!("{marker}-reminder");
    let response = app
        .post_with(
            reminder_notification(&reminder, "sub-marker").to_string(),
            &headers,
        )
        .await;
    assert_eq!(response.status(), 200, "reminder marker accepted");
    let topics: Vec<String> = app
        .settings
        .routing
        .topics()
        .iter()
        .map(|t| t.to_string())
        .collect();
    let expected = topics.len();
    let all = read_until(&app.bootstrap, &topics, timeout, move |got| {
        got.iter()
            .filter(|m| m.uuid().starts_with("marker-"))
            .map(|m| m.topic.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= expected
    })
    .await;
    let mut by_topic: HashMap<String, Vec<Received>> = HashMap::new();
    let mut closed = std::collections::HashSet::new();
    for m in all {
        if m.uuid().starts_with("marker-") {
            closed.insert(m.topic.clone());
            continue;
        }
        if !closed.contains(&m.topic) {
            by_topic.entry(m.topic.clone()).or_default().push(m);
        }
    }
    assert_eq!(closed.len(), expected, "every topic's marker arrived");
    by_topic
}

/// A process-unique number for uuids.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id() as u64;
    pid * 1_000_000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// An Extension Info Update for extension `ext` of account 37439510.
pub fn extension_update(uuid: &str, ext: &str, hints: &[&str]) -> Value {
    json!({
        "uuid": uuid,
        "event": format!("/restapi/v1.0/account/37439510/extension/{ext}"),
        "timestamp": "2013-06-14T12:00:00.000Z",
        "subscriptionId": "9d38419f-645f-4ee3-a053-8cf1368c21c4",
        "ownerId": ext,
        "body": {"extensionId": ext, "eventType": "Update", "hints": hints}
    })
}

pub fn reminder_notification(uuid: &str, subscription: &str) -> Value {
    json!({
        "uuid": uuid,
        "event": "/restapi/v1.0/subscription/~?threshold=86400&interval=3600",
        "timestamp": "2014-04-29T14:29:27.408+0000",
        "subscriptionId": subscription,
        "ownerId": "1",
        "body": {"id": subscription, "expiresIn": 86000}
    })
}

/// The example of RingCentral's Extension Info Event page, verbatim.
pub const DOCUMENTED_EXAMPLE: &str = r#"{
"uuid": "ed1cf00c-0420-4bf5-a0ae-e659cc9f77e0",
"event": "/restapi/v1.0/account/~/extension/8475874957",
"timestamp": "2013-06-14T12:00:00.000Z",
"subscriptionId": "9d38419f-645f-4ee3-a053-8cf1368c21c4",
"ownerId": "8475874957",
"body": {
"extensionId": "8475874957",
"eventType": "Update",
"hints": ["ExtensionInfo", "CompanyNumbers"]
}
}"#;

/// The end-to-end contract cases, shared by both suites: each request and the exact messages it must
/// produce, as (topic, key, rc-message-id).
/// An expected message: (topic, key, rc-message-id).
pub type Expected = (&'static str, &'static str, String);
/// A contract case: what it shows, the request body, the messages it must produce.
pub type ContractCase = (&'static str, Value, Vec<Expected>);

pub fn contract_cases() -> Vec<ContractCase> {
    let u = |name: &str| format!("case-{name}-{}", unique());
    let mut cases = Vec::new();
    let ext = "ringcentral.account.extension";

    let id = u("video");
    cases.push((
        "VideoConfiguration: both targets derive one topic, one message",
        extension_update(&id, "101", &["VideoConfiguration"]),
        vec![(ext, "101", format!("{id}:101:VideoConfiguration:{ext}"))],
    ));
    let id = u("queue");
    cases.push((
        "CallQueueMembersChange: two topics, two messages",
        extension_update(&id, "102", &["CallQueueMembersChange"]),
        vec![
            (
                "ringcentral.account.extension.call-queues",
                "102",
                format!(
                    "{id}:102:CallQueueMembersChange:ringcentral.account.extension.call-queues"
                ),
            ),
            (
                "ringcentral.account.call-queues.bulk-assign",
                "102",
                format!(
                    "{id}:102:CallQueueMembersChange:ringcentral.account.call-queues.bulk-assign"
                ),
            ),
        ],
    ));
    let id = u("features");
    let features = "ringcentral.account.extension.features";
    cases.push((
        "Features, Limits, Permissions: three messages on one topic",
        extension_update(&id, "103", &["Features", "Limits", "Permissions"]),
        vec![
            (features, "103", format!("{id}:103:Features:{features}")),
            (features, "103", format!("{id}:103:Limits:{features}")),
            (features, "103", format!("{id}:103:Permissions:{features}")),
        ],
    ));
    let id = u("numeric");
    cases.push((
        "numeric ids and a non-UUID uuid",
        json!({"uuid": id, "event": "/restapi/v1.0/account/233676004/extension/233676004",
               "timestamp": "2014-04-29T14:29:27.408+0000", "subscriptionId": "s-num", "ownerId": 233676004,
               "body": {"extensionId": 233676004, "eventType": "Update", "hints": ["DialingPlan", "AccountStatus"]}}),
        vec![
            (
                "ringcentral.account.dialing-plan",
                "233676004",
                format!("{id}:233676004:DialingPlan:ringcentral.account.dialing-plan"),
            ),
            (
                "ringcentral.account",
                "233676004",
                format!("{id}:233676004:AccountStatus:ringcentral.account"),
            ),
        ],
    ));
    let id = u("unknown");
    cases.push((
        "an unknown hint is carried on unrouted",
        extension_update(&id, "104", &["Teleport", "ProfileImage"]),
        vec![
            (
                "ringcentral.unrouted",
                "104",
                format!("{id}:104:Teleport:ringcentral.unrouted"),
            ),
            (
                "ringcentral.account.extension.profile-image",
                "104",
                format!("{id}:104:ProfileImage:ringcentral.account.extension.profile-image"),
            ),
        ],
    ));
    let id = u("delete");
    cases.push((
        "Delete: one message on the extension topic",
        json!({"uuid": id, "event": "/restapi/v1.0/account/~/extension/105", "subscriptionId": "s",
               "body": {"extensionId": "105", "eventType": "Delete"}}),
        vec![(ext, "105", format!("{id}:105:Delete:{ext}"))],
    ));
    let id = u("create");
    cases.push((
        "flat Extension List Create",
        json!({"uuid": id, "event": "/restapi/v1.0/account/~/extension", "subscriptionId": "s",
               "body": {"extensionId": 106, "eventType": "Create"}}),
        vec![(ext, "106", format!("{id}:106:Create:{ext}"))],
    ));
    let id = u("batch");
    cases.push((
        "batched Extension List",
        json!({"uuid": id, "event": "/restapi/v1.0/account/~/extension", "subscriptionId": "s",
               "body": {"extensions": [
                   {"extensionId": "107", "eventType": "Create"},
                   {"extensionId": 108, "eventType": "Update", "hints": ["AnsweringRules"]}]}}),
        vec![
            (ext, "107", format!("{id}:107:Create:{ext}")),
            (ext, "108", format!("{id}:108:AnsweringRules:{ext}")),
        ],
    ));
    let id = u("reminder");
    cases.push((
        "subscription reminder",
        reminder_notification(&id, "sub-7"),
        vec![(
            "ringcentral.subscription",
            "sub-7",
            format!("{id}::SubscriptionReminder:ringcentral.subscription"),
        )],
    ));
    let id = u("other");
    cases.push((
        "another event filter is carried raw",
        json!({"uuid": id, "event": "/restapi/v1.0/account/~/extension/~/presence", "subscriptionId": "sub-8",
               "body": {"presenceStatus": "Available"}}),
        vec![("ringcentral.unrouted", "sub-8", format!("{id}::Unrouted:ringcentral.unrouted"))],
    ));
    cases
}

/// Posts every contract case, then checks every topic holds exactly the expected messages.
pub async fn check_contract(app: &TestApp) {
    let response = app.post_webhook(DOCUMENTED_EXAMPLE).await;
    assert_eq!(response.status(), 200);
    let cases = contract_cases();
    for (what, body, _) in &cases {
        let response = app.post_webhook(body.to_string()).await;
        assert_eq!(response.status(), 200, "{what}");
    }
    let published = read_all_before_marker(app, Duration::from_secs(60)).await;

    // The documented example, field by field.
    let uuid = "ed1cf00c-0420-4bf5-a0ae-e659cc9f77e0";
    let numbers = &published["ringcentral.account.extension.phone-number"];
    let m = numbers
        .iter()
        .find(|m| m.uuid() == uuid)
        .expect("CompanyNumbers message");
    assert_eq!(m.key, "8475874957");
    assert_eq!(
        m.headers,
        vec![
            (
                "rc-message-id".to_string(),
                format!(
                    "{uuid}:8475874957:CompanyNumbers:ringcentral.account.extension.phone-number"
                )
            ),
            ("rc-notification-uuid".into(), uuid.into()),
            ("rc-event-type".into(), "Update".into()),
            ("rc-hint".into(), "CompanyNumbers".into()),
            (
                "rc-subscription-id".into(),
                "9d38419f-645f-4ee3-a053-8cf1368c21c4".into()
            ),
            ("content-type".into(), "application/json".into()),
        ]
    );
    let mut value = m.value();
    let received_at = value["receivedAt"].take();
    assert!(
        time::OffsetDateTime::parse(
            received_at.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok(),
        "receivedAt is RFC 3339: {received_at}"
    );
    assert_eq!(
        value,
        json!({
            "uuid": uuid,
            "event": "/restapi/v1.0/account/~/extension/8475874957",
            "timestamp": "2013-06-14T12:00:00.000Z",
            "subscriptionId": "9d38419f-645f-4ee3-a053-8cf1368c21c4",
            "ownerId": "8475874957",
            "accountId": "~",
            "extensionId": "8475874957",
            "eventType": "Update",
            "hint": "CompanyNumbers",
            "targetApi": "account/~/extension/~/phone-number",
            "resourcePath": "/restapi/v1.0/account/~/extension/8475874957/phone-number",
            "hints": ["ExtensionInfo", "CompanyNumbers"],
            "receivedAt": null
        })
    );
    let info = published["ringcentral.account.extension"]
        .iter()
        .find(|m| m.uuid() == uuid)
        .expect("ExtensionInfo message");
    assert_eq!(info.header("rc-hint"), Some("ExtensionInfo"));

    // Every case: exactly its messages, in order, with the right key and id.
    for (what, body, expected) in &cases {
        let uuid = body["uuid"].as_str().unwrap();
        let mut got: Vec<(String, String, String)> = published
            .values()
            .flatten()
            .filter(|m| m.uuid() == uuid)
            .map(|m| {
                (
                    m.topic.clone(),
                    m.key.clone(),
                    m.header("rc-message-id").unwrap_or_default().to_string(),
                )
            })
            .collect();
        let mut want: Vec<(String, String, String)> = expected
            .iter()
            .map(|(t, k, id)| (t.to_string(), k.to_string(), id.clone()))
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{what}");
        for m in published.values().flatten().filter(|m| m.uuid() == uuid) {
            assert_eq!(m.header("content-type"), Some("application/json"), "{what}");
            let value = m.value();
            assert_eq!(value["uuid"], json!(uuid), "{what}");
            if m.header("rc-message-id").unwrap().contains("::Unrouted:") {
                assert_eq!(value, *body, "{what}: the raw notification");
            } else {
                assert_eq!(value["hint"].as_str(), m.header("rc-hint"), "{what}");
            }
        }
    }

    // Nothing else was published anywhere.
    let total: usize = published.values().map(Vec::len).sum();
    let expected_total: usize = 2 + cases.iter().map(|(_, _, e)| e.len()).sum::<usize>();
    assert_eq!(total, expected_total, "no message beyond the planned ones");
}

/// The real binary as a child process, for crash and signal tests.
pub struct BridgeProcess {
    pub child: std::process::Child,
    pub address: String,
    pub admin_address: String,
    /// Every log line after "listening", as JSON.
    pub logs: std::sync::mpsc::Receiver<Value>,
}

impl BridgeProcess {
    /// Starts `rc-kafka-bridge serve` on ephemeral ports and waits for its "listening" log line.
    pub fn start(brokers: &str, spool_dir: &std::path::Path, extra: &[&str]) -> BridgeProcess {
        Self::start_with_env(brokers, spool_dir, extra, &[])
    }

    pub fn start_with_env(
        brokers: &str,
        spool_dir: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> BridgeProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rc-kafka-bridge"))
            .envs(env.iter().copied())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(["--brokers", brokers, "--log-format", "json"])
            .arg("--allow-unverified-webhooks")
            .arg("--spool-dir")
            .arg(spool_dir)
            .args(["--kafka-property", "message.timeout.ms=5000"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("bridge binary starts");
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr).lines();
        let (port, admin_port) = loop {
            let line = lines
                .next()
                .expect("bridge exited before listening")
                .expect("stderr readable");
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if event["message"] == "listening" {
                break (
                    event["port"].as_u64().unwrap(),
                    event["admin_port"].as_u64().unwrap(),
                );
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe; echo it when asked.
        let (tx, logs) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("bridge: {line}");
                }
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(event);
                }
            }
        });
        BridgeProcess {
            child,
            address: format!("http://127.0.0.1:{port}"),
            admin_address: format!("http://127.0.0.1:{admin_port}"),
            logs,
        }
    }

    /// The next log event whose message contains `text`, waiting at most `timeout`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(event) if event["message"].as_str().is_some_and(|m| m.contains(text)) => {
                    return event;
                }
                Ok(_) => {}
                Err(_) => panic!("no log line containing {text:?} within {timeout:?}"),
            }
        }
    }

    /// Waits for the process to exit by itself, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the bridge did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// SIGKILL: no chance to flush or clean up anything.
    pub fn kill_hard(mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Concurrent load against a bridge: fresh uuids, five extensions, from several clients.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<Vec<String>>,
}

impl Load {
    /// Starts `workers` clients and returns once `at_least` notifications were answered 200.
    pub async fn until_accepted(address: &str, workers: usize, at_least: usize) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let progress = std::sync::Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(load(
            address.to_string(),
            workers,
            stop.clone(),
            progress.clone(),
            |i| (i % 5).to_string(),
        ));
        eventually("load to be accepted", Duration::from_secs(30), || {
            progress.load(Ordering::Relaxed) >= at_least
        })
        .await;
        Load { stop, task }
    }

    /// Stops the clients (a killed bridge stops them too); every uuid answered 200.
    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Runs the real binary on `spool_dir` under load and SIGKILLs it three times in a row, then starts
/// it once more on the same spool. `outage(true)` starts a broker outage in the second round, so a
/// backlog is in the spool when the kill comes; `outage(false)` ends it. Returns every uuid answered
/// 200 and the last bridge, still running.
pub async fn kill_repeatedly_under_load(
    bootstrap: &str,
    spool_dir: &std::path::Path,
    outage: impl Fn(bool),
) -> (Vec<String>, BridgeProcess) {
    let mut accepted = Vec::new();
    for round in 0..3 {
        let bridge = BridgeProcess::start(bootstrap, spool_dir, &[]);
        if round == 1 {
            outage(true);
        }
        let load = Load::until_accepted(&bridge.address, 4, 150).await;
        bridge.kill_hard();
        accepted.extend(load.finish().await);
        if round == 1 {
            outage(false);
        }
    }
    assert!(accepted.len() >= 450);
    (accepted, BridgeProcess::start(bootstrap, spool_dir, &[]))
}

/// Posts notifications with fresh uuids from `workers` concurrent clients until `stop` is set or
/// the bridge stops answering; returns every uuid answered 200.
async fn load(
    address: String,
    workers: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    progress: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    extension_of: fn(usize) -> String,
) -> Vec<String> {
    use std::sync::atomic::Ordering;
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let address = address.to_string();
        let stop = stop.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let client = http();
            let mut accepted = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let uuid = format!("load-{}-{worker}-{i}", unique());
                let ext = extension_of(i);
                let body = extension_update(&uuid, &ext, &["Limits"]).to_string();
                match client
                    .post(format!("{address}/webhook"))
                    .header("content-type", "application/json")
                    .body(body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        accepted.push(uuid);
                        progress.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
                i += 1;
            }
            accepted
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Waits (bounded) until `condition` holds, checking every few milliseconds.
pub async fn eventually(what: &str, timeout: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads the features topic until every uuid of `expected` was seen; returns the uuids missing.
pub async fn missing_after_delivery(
    bootstrap: &str,
    expected: &[String],
    timeout: Duration,
) -> Vec<String> {
    let wanted: std::collections::HashSet<String> = expected.iter().cloned().collect();
    let wanted2 = wanted.clone();
    let got = read_until(
        bootstrap,
        &["ringcentral.account.extension.features".to_string()],
        timeout,
        move |got| {
            let seen: std::collections::HashSet<&str> = got.iter().map(|m| m.uuid()).collect();
            wanted2.iter().all(|u| seen.contains(u.as_str()))
        },
    )
    .await;
    let seen: std::collections::HashSet<&str> = got.iter().map(|m| m.uuid()).collect();
    let mut missing: Vec<String> = wanted
        .into_iter()
        .filter(|u| !seen.contains(u.as_str()))
        .collect();
    missing.sort();
    missing
}
