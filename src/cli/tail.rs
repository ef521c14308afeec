//! `tail`: prints the messages of topics, with partition, offset, key, headers and the value
//! pretty-printed (or one JSON object per message). It reads by partition assignment, so it leaves no
//! consumer group behind, and without `--follow` it stops at the end each partition had when it
//! started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

use super::CommandError;
use crate::config::Settings;
use crate::kafka::ProducerFactory;
use crate::metrics::Metrics;

/// Where `serve` without `--brokers` writes its embedded broker's address, in its spool directory,
/// so that `tail` finds it without being told.
const EMBEDDED_BROKER_FILE: &str = "embedded-broker";
/// How long Kafka may take to answer a metadata or watermark request.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// What to print and from where.
pub struct Tail {
    pub topics: Vec<String>,
    /// Every message each partition holds, not only its last ones.
    pub from_beginning: bool,
    /// Messages per partition before its end, without `from_beginning`.
    pub lines: i64,
    /// Keep printing messages as they arrive, until interrupted.
    pub follow: bool,
    /// One JSON object per message, per line.
    pub json: bool,
}

/// Records the embedded broker's address for `tail`; a failure costs only that convenience.
pub(super) fn record_embedded_broker(spool_dir: &Path, bootstrap: &str) {
    if let Err(e) = std::fs::write(spool_dir.join(EMBEDDED_BROKER_FILE), bootstrap) {
        tracing::warn!(error = %e, "cannot record the embedded broker's address for `tail`");
    }
}

/// Forgets the address when the embedded broker goes away with its bridge.
pub(super) fn forget_embedded_broker(spool_dir: &Path) {
    let _ = std::fs::remove_file(spool_dir.join(EMBEDDED_BROKER_FILE));
}

fn brokers(settings: &Settings) -> Result<String, CommandError> {
    if let Some(brokers) = &settings.brokers {
        return Ok(brokers.clone());
    }
    let file: PathBuf = settings.spool_dir.join(EMBEDDED_BROKER_FILE);
    std::fs::read_to_string(&file)
        .map(|address| address.trim().to_string())
        .map_err(|_| {
            CommandError::Start(format!(
                "tail needs --brokers, or a bridge running on its embedded broker with this \
                 --spool-dir ({} has no {EMBEDDED_BROKER_FILE})",
                settings.spool_dir.display()
            ))
        })
}

pub(super) fn tail(settings: &Settings, tail: &Tail) -> Result<(), CommandError> {
    let brokers = brokers(settings)?;
    let properties = &settings.kafka.properties;
    let kafka = |what: &str, e: rdkafka::error::KafkaError| {
        CommandError::Kafka(format!(
            "{what} at {brokers}: {}",
            properties.redact(&e.to_string())
        ))
    };
    let config: ClientConfig = ProducerFactory::new(&brokers, properties, Metrics::new())
        .client_config()
        // Needed by librdkafka for any consumer; with assignment alone no group is joined.
        .set("group.id", "rc-kafka-bridge-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .clone();
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| kafka("cannot create a consumer", e))?;

    let mut assignment = TopicPartitionList::new();
    // Per partition, the offset it must reach before `tail` without `--follow` stops.
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for topic in &tail.topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
            .map_err(|e| kafka("cannot read the topics", e))?;
        for t in metadata.topics() {
            if t.error().is_some() || t.partitions().is_empty() {
                return Err(CommandError::Kafka(format!(
                    "no topic {topic} at {brokers}"
                )));
            }
            for p in t.partitions() {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p.id(), KAFKA_TIMEOUT)
                    .map_err(|e| kafka("cannot read the partitions' offsets", e))?;
                let start = if tail.from_beginning {
                    low
                } else {
                    (high - tail.lines).max(low)
                };
                assignment
                    .add_partition_offset(topic, p.id(), Offset::Offset(start))
                    .map_err(|e| kafka("cannot assign a partition", e))?;
                if start < high {
                    ends.insert((topic.clone(), p.id()), high);
                }
            }
        }
    }
    consumer
        .assign(&assignment)
        .map_err(|e| kafka("cannot assign the partitions", e))?;

    let mut out = std::io::stdout().lock();
    while tail.follow || !ends.is_empty() {
        let Some(received) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = match received {
            Ok(message) => message,
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => {
                // At a partition's end: the offsets it ends at may be no message's (a
                // transaction's marker), so what was reached is read from the consumer.
                if let Ok(positions) = consumer.position() {
                    for p in positions.elements() {
                        let at = (p.topic().to_string(), p.partition());
                        if let (Offset::Offset(o), Some(end)) = (p.offset(), ends.get(&at))
                            && o >= *end
                        {
                            ends.remove(&at);
                        }
                    }
                }
                continue;
            }
            Err(e) => return Err(kafka("cannot read", e)),
        };
        let position = (message.topic().to_string(), message.partition());
        if ends
            .get(&position)
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            ends.remove(&position);
        }
        let printed = if tail.json {
            format!("{}\n", as_json(&message))
        } else {
            as_text(&message)
        };
        if std::io::Write::write_all(&mut out, printed.as_bytes()).is_err() {
            // The reader went away (`| head`): nothing more to do.
            return Ok(());
        }
    }
    Ok(())
}

fn key(message: &BorrowedMessage<'_>) -> Option<String> {
    message
        .key()
        .map(|k| String::from_utf8_lossy(k).into_owned())
}

fn headers(message: &BorrowedMessage<'_>) -> Vec<(String, String)> {
    let Some(headers) = message.headers() else {
        return Vec::new();
    };
    headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
            (h.key.to_string(), value)
        })
        .collect()
}

/// The value as JSON when it is JSON, else as text; `None` for a tombstone.
fn value(message: &BorrowedMessage<'_>) -> Option<Value> {
    let payload = message.payload()?;
    Some(
        serde_json::from_slice(payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned())),
    )
}

fn as_json(message: &BorrowedMessage<'_>) -> Value {
    let headers: serde_json::Map<String, Value> = headers(message)
        .into_iter()
        .map(|(name, value)| (name, Value::String(value)))
        .collect();
    json!({
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "key": key(message),
        "headers": headers,
        "value": value(message),
    })
}

fn as_text(message: &BorrowedMessage<'_>) -> String {
    let mut text = format!(
        "{} [{}@{}] key={}\n",
        message.topic(),
        message.partition(),
        message.offset(),
        key(message).unwrap_or_else(|| "(none)".into())
    );
    for (name, value) in headers(message) {
        text.push_str(&format!("  {name}: {value}\n"));
    }
    match value(message) {
        None => text.push_str("(tombstone)\n"),
        Some(Value::String(s)) => text.push_str(&format!("{s}\n")),
        Some(v) => text.push_str(&format!(
            "{}\n",
            serde_json::to_string_pretty(&v).expect("a JSON value always serialises")
        )),
    }
    text.push('\n');
    text
}
