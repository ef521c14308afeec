//! Kafka as downstream consumers see it: an independent reader of what the bridge published, and
//! the topics a bridge with the default settings publishes to.

use std::collections::HashSet;
use std::time::Duration;

use rc_kafka_bridge::config::Settings;
use rc_kafka_bridge::routing::Topic;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;

/// Every topic of the default settings: the routed topics and the dead-letter topic.
pub fn default_topics() -> Vec<Topic> {
    Settings::default().routing.published_topics()
}

/// A message as an independent consumer sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub key: String,
    pub headers: Vec<(String, String)>,
    pub raw: String,
    /// No value at all: a tombstone.
    pub tombstone: bool,
}

impl Received {
    /// The record, once it passed its schemas' checks.
    fn from_kafka(m: &BorrowedMessage<'_>) -> Received {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let received = Received {
            topic: m.topic().to_string(),
            key: m.key().map(text).unwrap_or_default(),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), text(h.value.unwrap_or_default())))
                        .collect()
                })
                .unwrap_or_default(),
            raw: m.payload().map(text).unwrap_or_default(),
            tombstone: m.payload().is_none(),
        };
        super::schemas::check(&received);
        received
    }

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

/// Reads `topics` from the beginning (partition 0 of each: test topics have one partition) until
/// `done` says the messages read so far are complete, or `timeout` passes; returns what was read
/// either way, so that the caller's assertion can say what is missing.
pub async fn read_until(
    bootstrap: &str,
    topics: &[String],
    timeout: Duration,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "rckb-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        assignment
            .add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut received = Vec::new();
    // Messages arrive as events: no polling, one deadline for the whole read.
    let _ = tokio::time::timeout(timeout, async {
        while !done(&received) {
            // Errors (a broker coming back) are transient here: reading goes on until the deadline.
            if let Ok(m) = consumer.recv().await {
                received.push(Received::from_kafka(&m));
            }
        }
    })
    .await;
    // Closing a consumer blocks while it leaves its group.
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    received
}

/// Reads the features topic until every uuid of `expected` was seen; returns the uuids missing.
pub async fn missing_after_delivery(
    bootstrap: &str,
    expected: &[String],
    timeout: Duration,
) -> Vec<String> {
    let got = read_until(
        bootstrap,
        &["ringcentral.account.extension.features".to_string()],
        timeout,
        |got| {
            let seen: HashSet<&str> = got.iter().map(Received::uuid).collect();
            expected.iter().all(|u| seen.contains(u.as_str()))
        },
    )
    .await;
    let seen: HashSet<&str> = got.iter().map(Received::uuid).collect();
    let mut missing: Vec<String> = expected
        .iter()
        .filter(|u| !seen.contains(u.as_str()))
        .cloned()
        .collect();
    missing.sort();
    missing
}
