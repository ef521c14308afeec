//! State topics end to end: hints in, RingCentral's current representation of each changed
//! resource out, fetched from the fake RingCentral and read back from Kafka.

use std::time::Duration;

use rc_kafka_bridge::config::Settings;
use serde_json::json;

use crate::common::app::TestApp;
use crate::common::fake_ringcentral::FakeRingCentral;
use crate::common::kafka::{Received, read_until};
use crate::common::metrics::sample;
use crate::common::mock_kafka::MockKafka;
use crate::common::payloads::{extension_update, unique};
use crate::common::process::bridge_command;

const EXTENSION: &str = "101";
const EXTENSION_TOPIC: &str = "ringcentral.state.account.extension";
const FEATURES_TOPIC: &str = "ringcentral.state.account.extension.features";
const NUMBERS_TOPIC: &str = "ringcentral.state.account.extension.phone-number";

fn with_state(fake: &FakeRingCentral) -> impl FnOnce(&mut Settings) {
    move |a| {
        a.state.enabled = true;
        fake.credentials(a);
    }
}

/// A mock cluster with the state topics too, and the fake with one extension.
async fn setup() -> (MockKafka, FakeRingCentral) {
    let kafka = MockKafka::start();
    let fake = FakeRingCentral::start().await;
    let mut settings = Settings::default();
    with_state(&fake)(&mut settings);
    for topic in settings.resolve().unwrap().routing.published_topics() {
        // Topics the default settings have exist already.
        let _ = kafka.cluster.create_topic(topic.as_str(), 1, 1);
    }
    fake.state.lock().unwrap().extensions.insert(
        EXTENSION.into(),
        json!({"id": 101, "extensionNumber": "101", "name": "Alice", "status": "Enabled"}),
    );
    (kafka, fake)
}

fn latest<'a>(read: &'a [Received], topic: &str) -> Option<&'a Received> {
    read.iter()
        .rev()
        .find(|m| m.topic == topic && m.key == EXTENSION)
}

fn topics() -> Vec<String> {
    [EXTENSION_TOPIC, FEATURES_TOPIC, NUMBERS_TOPIC]
        .map(String::from)
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_changed_resource_is_fetched_and_published_keyed_by_extension() {
    let (kafka, fake) = setup().await;
    let app = TestApp::spawn(&kafka.bootstrap, with_state(&fake)).await;
    let uuid = format!("state-{}", unique());
    let hints = ["ExtensionInfo", "Features", "CompanyNumbers"];
    let response = app
        .post_webhook(extension_update(&uuid, EXTENSION, &hints).to_string())
        .await;
    assert_eq!(response.status(), 200);

    let read = read_until(
        &kafka.bootstrap,
        &topics(),
        Duration::from_secs(30),
        |read| topics().iter().all(|t| latest(read, t).is_some()),
    )
    .await;
    let record = latest(&read, EXTENSION_TOPIC).expect("the extension's state");
    assert_eq!(record.value()["name"], "Alice");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_extension_leaves_tombstones_on_every_per_extension_state_topic() {
    let (kafka, fake) = setup().await;
    let app = TestApp::spawn(&kafka.bootstrap, with_state(&fake)).await;
    let mut delete = extension_update(&format!("delete-{}", unique()), EXTENSION, &[]);
    delete["body"]["eventType"] = json!("Delete");
    assert_eq!(app.post_webhook(delete.to_string()).await.status(), 200);

    let read = read_until(
        &kafka.bootstrap,
        &topics(),
        Duration::from_secs(30),
        |read| {
            topics()
                .iter()
                .all(|t| latest(read, t).is_some_and(|m| m.tombstone))
        },
    )
    .await;
    for topic in topics() {
        let last = latest(&read, &topic).unwrap_or_else(|| panic!("a tombstone on {topic}"));
        assert!(last.tombstone, "{topic}: {last:?}");
    }
    assert_eq!(
        fake.state.lock().unwrap().state_gets,
        0,
        "a deletion fetches nothing"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_hints_for_one_extension_is_fetched_at_most_twice() {
    let (kafka, fake) = setup().await;
    let app = TestApp::spawn(&kafka.bootstrap, with_state(&fake)).await;
    for n in 0..100 {
        let body = extension_update(
            &format!("burst-{n}-{}", unique()),
            EXTENSION,
            &["ExtensionInfo"],
        );
        assert_eq!(app.post_webhook(body.to_string()).await.status(), 200);
    }
    let topic = vec![EXTENSION_TOPIC.to_string()];
    let read = read_until(&kafka.bootstrap, &topic, Duration::from_secs(30), |read| {
        read.iter().any(|m| {
            m.header("rc-cause")
                .is_some_and(|c| c.starts_with("burst-99-"))
        })
    })
    .await;
    assert!(
        read.iter().any(|m| m
            .header("rc-cause")
            .is_some_and(|c| c.starts_with("burst-99-"))),
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
