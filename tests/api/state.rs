//! State topics end to end: hints in, RingCentral's current representation of each changed
//! resource out, fetched from the fake RingCentral and read back from Kafka.

use std::time::Duration;

use cloudevents::AttributesReader;
use rc_kafka_bridge::config::{Secret, Settings};
use serde_json::{Value, json};

use crate::common::app::TestApp;
use crate::common::fake_ringcentral::FakeRingCentral;
use crate::common::kafka::{Received, read_until};
use crate::common::metrics::sample;
use crate::common::mock_kafka::MockKafka;
use crate::common::payloads::{extension_update, unique};
use crate::common::process::bridge_command;

pub(crate) const EXTENSION: &str = "101";
pub(crate) const EXTENSION_TOPIC: &str = "ringcentral.state.account.extension";
const FEATURES_TOPIC: &str = "ringcentral.state.account.extension.features";
const NUMBERS_TOPIC: &str = "ringcentral.state.account.extension.phone-number";

pub(crate) fn with_state(fake: &FakeRingCentral) -> impl FnOnce(&mut Settings) {
    move |a| {
        a.state.enabled = true;
        fake.credentials(a);
    }
}

/// A mock cluster with the state topics too, and the fake with one extension. A sweep ran before,
/// so no initial snapshot fetches anything behind the test's back.
pub(crate) async fn setup() -> (MockKafka, FakeRingCentral) {
    setup_with_request_partitions(1).await
}

/// As [`setup`], with the requests topic split into `partitions`.
pub(crate) async fn setup_with_request_partitions(partitions: i32) -> (MockKafka, FakeRingCentral) {
    let (kafka, fake) = setup_without_index(partitions).await;
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .create()
        .unwrap();
    // An earlier sweep that finished, and indexed an extension RingCentral no longer has.
    let digest = "0".repeat(32);
    let entry = format!(r#"{{"digest":"{digest}","sweep":"sweep-1-00000000"}}"#);
    let mark = r#"{"sweep":"sweep-1-00000000","cause":"interval","finished":true}"#;
    let json = rdkafka::message::Header {
        key: "content-type",
        value: Some("application/json"),
    };
    for (key, payload) in [("1", entry.as_str()), ("~sweep", mark)] {
        let record = rdkafka::producer::FutureRecord::to("ringcentral.state-index")
            .key(key)
            .headers(rdkafka::message::OwnedHeaders::new().insert(json.clone()))
            .payload(payload);
        producer.send(record, Duration::from_secs(5)).await.unwrap();
    }
    (kafka, fake)
}

/// A mock cluster with every topic, an empty sweeps' index (no sweep ran), and the fake with one
/// extension.
pub(crate) async fn setup_without_index(partitions: i32) -> (MockKafka, FakeRingCentral) {
    let kafka = MockKafka::start();
    let fake = FakeRingCentral::start().await;
    let mut settings = Settings::default();
    with_state(&fake)(&mut settings);
    let settings = settings.resolve().unwrap();
    let requests = settings.routing.state().unwrap().requests_topic.clone();
    kafka
        .cluster
        .create_topic(requests.as_str(), partitions, 1)
        .unwrap();
    for topic in settings.routing.published_topics() {
        // Topics the default settings have exist already.
        let _ = kafka.cluster.create_topic(topic.as_str(), 1, 1);
    }
    fake.add_extension(EXTENSION);
    (kafka, fake)
}

pub(crate) fn latest<'a>(read: &'a [Received], topic: &str) -> Option<&'a Received> {
    latest_for(read, topic, EXTENSION)
}

pub(crate) fn latest_for<'a>(read: &'a [Received], topic: &str, key: &str) -> Option<&'a Received> {
    read.iter().rev().find(|m| m.topic == topic && m.key == key)
}

/// Every per-extension state topic of the default settings.
fn topics() -> Vec<String> {
    let mut settings = Settings::default();
    settings.state.enabled = true;
    // Credentials are required for `--state`; these are never used.
    settings.ringcentral.client_id = Some("id".into());
    settings.ringcentral.client_secret = Some(Secret::new("secret"));
    settings.ringcentral.jwt = Some(Secret::new("jwt"));
    let settings = settings.resolve().unwrap();
    let state = settings.routing.state().unwrap();
    let topics: Vec<String> = state
        .fetches
        .per_extension_topics()
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert!(topics.contains(&NUMBERS_TOPIC.to_string()), "{topics:?}");
    topics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_changed_resource_is_fetched_and_published_keyed_by_extension() {
    let (kafka, fake) = setup().await;
    let app = TestApp::spawn(&kafka.bootstrap, with_state(&fake)).await;
    let uuid = format!("state-{}", unique());
    let hints = ["ExtensionInfo", "Features", "CompanyNumbers"];
    let fetched = [EXTENSION_TOPIC, FEATURES_TOPIC, NUMBERS_TOPIC].map(String::from);
    let response = app
        .post_webhook(extension_update(&uuid, EXTENSION, &hints).to_string())
        .await;
    assert_eq!(response.status(), 200);

    let read = read_until(
        &kafka.bootstrap,
        &fetched,
        Duration::from_secs(30),
        |read| fetched.iter().all(|t| latest(read, t).is_some()),
    )
    .await;
    let record = latest(&read, EXTENSION_TOPIC).expect("the extension's state");
    assert_eq!(record.value()["name"], "User 101");
    assert_eq!(
        record.header("rc-resource-path"),
        Some("/restapi/v1.0/account/37439510/extension/101")
    );
    assert_eq!(
        record.header("rc-cause"),
        Some(format!("{uuid}:101:ExtensionInfo:ringcentral.account.extension").as_str())
    );
    assert!(record.header("rc-fetched-at").is_some());
    let features = latest(&read, FEATURES_TOPIC).expect("the features' state");
    assert_eq!(features.value()["records"][0]["id"], "SMS");
    // Both pages of the paged list, merged into one record.
    let numbers = latest(&read, NUMBERS_TOPIC).expect("the numbers' state");
    let value = numbers.value();
    let ids: Vec<&str> = value["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["10101", "10102"]);
    app.shutdown().await;
}

/// Reads every per-extension state topic until each ends with a tombstone for `key`.
async fn assert_tombstoned(bootstrap: &str, key: &str) {
    let topics = topics();
    let tombstoned =
        |read: &[Received], topic: &str| latest_for(read, topic, key).is_some_and(|m| m.tombstone);
    let read = read_until(bootstrap, &topics, Duration::from_secs(30), |read| {
        topics.iter().all(|t| tombstoned(read, t))
    })
    .await;
    for topic in &topics {
        let last = latest_for(&read, topic, key);
        assert!(tombstoned(&read, topic), "{topic}: {last:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_extension_leaves_tombstones_on_every_per_extension_state_topic() {
    let (kafka, fake) = setup().await;
    let app = TestApp::spawn(&kafka.bootstrap, with_state(&fake)).await;
    let mut delete = extension_update(&format!("delete-{}", unique()), EXTENSION, &[]);
    delete["body"]["eventType"] = json!("Delete");
    assert_eq!(app.post_webhook(delete.to_string()).await.status(), 200);

    assert_tombstoned(&kafka.bootstrap, EXTENSION).await;
    assert_eq!(
        fake.state.lock().unwrap().state_gets,
        0,
        "a deletion fetches nothing"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_for_an_extension_leaves_tombstones_on_every_per_extension_state_topic() {
    let (kafka, fake) = setup().await;
    let app = TestApp::spawn(&kafka.bootstrap, with_state(&fake)).await;
    // Extension 999 is not in the fake: RingCentral answers 404 CMN-102.
    let gone = "999";
    let body = extension_update(&format!("gone-{}", unique()), gone, &["Features"]);
    assert_eq!(app.post_webhook(body.to_string()).await.status(), 200);
    assert_tombstoned(&kafka.bootstrap, gone).await;
    let scrape = app.metrics().await;
    assert_eq!(
        sample(
            &scrape,
            "rckb_state_fetches_total",
            &[("group", "medium"), ("outcome", "gone")]
        ),
        1.0
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fetchable_hint_publishes_the_state_of_its_resource() {
    let (kafka, fake) = setup().await;
    let app = TestApp::spawn(&kafka.bootstrap, with_state(&fake)).await;
    // Every hint of the fetch table but DialingPlan, which has no GET.
    let hints = [
        "AccountSettings",
        "AccountStatus",
        "AnsweringRules",
        "CallQueueMembersChange",
        "CompanyNumbers",
        "ExtensionInfo",
        "Features",
        "Limits",
        "Permissions",
        "ProfileImage",
        "VideoConfiguration",
    ];
    let uuid = format!("every-{}", unique());
    let body = extension_update(&uuid, EXTENSION, &hints);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let posted = app
        .post_with(body.to_string(), &[("traceparent", &traceparent)])
        .await;
    assert_eq!(posted.status(), 200);

    // Each state topic, its key, and what its record holds.
    let account = "37439510";
    let expected: [(&str, &str, &str, Value); 7] = [
        (
            "ringcentral.state.account",
            account,
            "/restapi/v1.0/account/~",
            json!({"id": 37439510}),
        ),
        (
            EXTENSION_TOPIC,
            EXTENSION,
            "/restapi/v1.0/account/~/extension/101",
            json!({"name": "User 101"}),
        ),
        (
            NUMBERS_TOPIC,
            EXTENSION,
            "/restapi/v1.0/account/~/extension/101/phone-number",
            json!({"records": [{"id": "10101"}, {"id": "10102"}]}),
        ),
        (
            FEATURES_TOPIC,
            EXTENSION,
            "/restapi/v1.0/account/~/extension/101/features",
            json!({"records": [{"id": "SMS"}]}),
        ),
        (
            "ringcentral.state.account.extension.answering-rule",
            EXTENSION,
            "/restapi/v1.0/account/~/extension/101/answering-rule",
            json!({"records": [{"id": "business-hours-rule"}]}),
        ),
        (
            "ringcentral.state.account.extension.video-configuration",
            EXTENSION,
            "/restapi/v1.0/account/~/extension/101/video-configuration",
            json!({"provider": "RCVideo"}),
        ),
        (
            "ringcentral.state.account.extension.call-queues",
            EXTENSION,
            "/restapi/v1.0/account/~/call-queues?memberExtensionId=101",
            json!({"records": [{"id": "q1"}]}),
        ),
    ];
    let topics: Vec<String> = expected.iter().map(|e| e.0.to_string()).collect();
    let read = read_until(&kafka.bootstrap, &topics, Duration::from_secs(30), |read| {
        expected
            .iter()
            .all(|(topic, key, ..)| latest_for(read, topic, key).is_some())
    })
    .await;
    for (topic, key, path, holds) in &expected {
        let record = latest_for(&read, topic, key).unwrap_or_else(|| panic!("no state on {topic}"));
        let value = record.value();
        assert!(contains(&value, holds), "{topic}: {value} holds {holds}");
        let resource_path = record.header("rc-resource-path").unwrap_or_default();
        assert_eq!(resource_path.replace(account, "~"), *path, "{topic}");
        assert_eq!(record.header("content-type"), Some("application/json"));
        assert!(
            record
                .header("rc-cause")
                .is_some_and(|c| c.starts_with(&uuid)),
            "{topic}: {:?}",
            record.headers
        );
        // A CloudEvent of the state topic's resource, from the account, about the extension.
        let event = crate::common::cloudevents::event(record).unwrap();
        let resource = topic.strip_prefix("ringcentral.state.").unwrap();
        assert_eq!(event.ty(), format!("com.ringcentral.state.{resource}"));
        let source = format!("{}/restapi/v1.0/account/{account}", fake.url);
        assert_eq!(event.source().to_string(), source, "{topic}");
        let subject = (*key == EXTENSION).then_some(EXTENSION);
        assert_eq!(event.subject(), subject, "{topic}");
        assert_eq!(
            event.time().is_some(),
            record.header("rc-fetched-at").is_some()
        );
        // The notification's trace, continued by the fetch.
        let parent = record.header("traceparent").unwrap_or_default();
        assert!(
            parent.starts_with(&format!("00-{trace}-")),
            "{topic}: {parent}"
        );
        assert_ne!(parent, traceparent);
    }
    // Features, Limits and Permissions share one GET, as do ExtensionInfo and ProfileImage, and
    // the two account hints: one fetch each (the phone numbers take two pages).
    assert_eq!(fake.state.lock().unwrap().state_gets, 7);
    app.shutdown().await;
}

/// Whether `value` has everything `part` has (objects by key, arrays element by element).
fn contains(value: &Value, part: &Value) -> bool {
    match (value, part) {
        (Value::Object(v), Value::Object(p)) => p
            .iter()
            .all(|(k, pv)| v.get(k).is_some_and(|vv| contains(vv, pv))),
        (Value::Array(v), Value::Array(p)) => {
            v.len() == p.len() && v.iter().zip(p).all(|(vv, pv)| contains(vv, pv))
        }
        _ => value == part,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_hints_for_one_extension_is_fetched_at_most_twice() {
    let (kafka, fake) = setup().await;
    let app = TestApp::spawn(&kafka.bootstrap, with_state(&fake)).await;
    // RingCentral holds its answers: the first fetch starts and waits while the burst arrives.
    let gate = fake.state.lock().unwrap().gate.clone();
    let closed = gate.write().await;
    let burst = |n: usize| {
        let uuid = format!("burst-{n}-{}", unique());
        extension_update(&uuid, EXTENSION, &["ExtensionInfo"]).to_string()
    };
    assert_eq!(app.post_webhook(burst(0)).await.status(), 200);
    fake.until("the first fetch to start", |s| {
        s.requests.iter().any(|r| r.ends_with("/extension/101"))
    })
    .await;
    for n in 1..100 {
        assert_eq!(app.post_webhook(burst(n)).await.status(), 200);
    }
    app.metrics_until("every request to be queued in Kafka", |m| {
        sample(
            m,
            "rckb_messages_published_total",
            &[("topic", "ringcentral.state-requests")],
        ) >= 100.0
    })
    .await;
    drop(closed);

    let topic = vec![EXTENSION_TOPIC.to_string()];
    let latest_cause = |m: &Received| {
        m.header("rc-cause")
            .is_some_and(|c| c.starts_with("burst-99-"))
    };
    let read = read_until(&kafka.bootstrap, &topic, Duration::from_secs(30), |read| {
        read.iter().any(latest_cause)
    })
    .await;
    assert!(
        read.iter().any(latest_cause),
        "the latest hint's state was published"
    );
    let gets = fake.state.lock().unwrap().state_gets;
    assert!(gets <= 2, "{gets} fetches for 100 hints");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_state_refuses_to_start_naming_them() {
    let mut settings = Settings::default();
    settings.state.enabled = true;
    let err = settings.resolve().unwrap_err().to_string();
    assert!(err.contains("ringcentral.client_id"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_the_group_for_retry_after_and_the_state_still_arrives() {
    let (kafka, fake) = setup().await;
    let app = TestApp::spawn(&kafka.bootstrap, with_state(&fake)).await;
    // The fake answers its next API call 429 with `Retry-After: 1`.
    fake.state.lock().unwrap().rate_limit_next = 1;
    let uuid = format!("limited-{}", unique());
    let body = extension_update(&uuid, EXTENSION, &["ExtensionInfo"]);
    assert_eq!(app.post_webhook(body.to_string()).await.status(), 200);
    let topic = vec![EXTENSION_TOPIC.to_string()];
    let read = read_until(&kafka.bootstrap, &topic, Duration::from_secs(30), |read| {
        latest(read, EXTENSION_TOPIC).is_some()
    })
    .await;
    assert!(
        latest(&read, EXTENSION_TOPIC).is_some(),
        "the state after the pause"
    );
    let scrape = app
        .metrics_until("the pause to be counted", |m| {
            sample(
                m,
                "rckb_state_rate_limit_pauses_total",
                &[("group", "light")],
            ) >= 1.0
        })
        .await;
    assert_eq!(
        sample(
            &scrape,
            "rckb_state_fetches_total",
            &[("group", "light"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        fake.state.lock().unwrap().rate_limit_next,
        0,
        "the 429 was answered"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_status_prints_the_fetch_queue() {
    let (kafka, fake) = setup().await;
    // Two requests queued, and no fetcher running.
    let mut settings = Settings::default();
    with_state(&fake)(&mut settings);
    let state = settings.resolve().unwrap();
    let requests = state.routing.state().unwrap().requests_topic.to_string();
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .create()
        .unwrap();
    for key in ["101", "102"] {
        let record = rdkafka::producer::FutureRecord::to(&requests)
            .key(key)
            .payload("{}");
        producer.send(record, Duration::from_secs(5)).await.unwrap();
    }
    let output = bridge_command()
        .args(["state", "status", "--state", "--brokers", &kafka.bootstrap])
        .args(fake.cli_args())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("ringcentral.state-requests (consumer group ringcentral.state-fetchers)"),
        "{stdout}"
    );
    assert!(stdout.contains("2 requests queued"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_the_fetcher_only_with_state() {
    let (kafka, fake) = setup().await;
    let app = TestApp::spawn(&kafka.bootstrap, with_state(&fake)).await;
    // Once the fetcher has joined its group, it owns the requests topic's one partition.
    app.metrics_until("the fetcher to own its partition", |m| {
        sample(m, "rckb_state_fetcher_partitions", &[]) == 1.0
    })
    .await;
    let body: Value = app.get_admin("/readyz").await.json().await.unwrap();
    assert_eq!(body["ready"], true, "{body}");
    let fetcher = &body["stateFetcher"];
    assert_eq!(fetcher["running"], true, "{body}");
    assert_eq!(fetcher["partitions"], 1, "{body}");
    assert_eq!(fetcher["queued"], 0, "{body}");
    app.shutdown().await;

    let without = TestApp::spawn(&kafka.bootstrap, |_| {}).await;
    let body: Value = without.get_admin("/readyz").await.json().await.unwrap();
    assert!(body.get("stateFetcher").is_none(), "{body}");
    without.shutdown().await;
}
