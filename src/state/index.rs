//! The sweeps' state index: per extension, a digest of its record as List Extensions last showed it,
//! or as the last fetch of its extension record did (the digest covers the listed fields only, so
//! both give the same digest for the same record).
//! Beside each entry, one record per state topic that holds a record for the extension
//! (`<id>@<topic>`), written by the fetcher with the state itself: a gone extension leaves
//! tombstones on those topics only.
//! Kept in Kafka, on a compacted topic of one partition keyed by extension id, rather than in one
//! replica's spool: whichever replica runs the sweeps reads it whole at the start of each sweep,
//! so a replica taking over the sweeps compares with what the previous one published instead of
//! republishing everything.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::routing::{OutboundMessage, Topic};

/// How long reading the index may take before the sweep gives up (and runs again later).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// One extension's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The digest of the extension's record as listed.
    pub digest: String,
    /// The sweep that recorded it, or [`FETCHED`] when a fetch of the extension record did.
    pub sweep: String,
}

/// What an entry recorded by a fetch (not a sweep) says in `sweep`.
pub const FETCHED: &str = "fetch";

/// The fields of an extension record that List Extensions returns (RingCentral's API reference,
/// `listExtensions`). Get Extension Info returns more; the digest covers these alone, so a state
/// the fetcher published and the same record listed by the next sweep are not a difference.
const LISTED_FIELDS: [&str; 20] = [
    "id",
    "uri",
    "contact",
    "extensionNumber",
    "name",
    "permissions",
    "profileImage",
    "partnerId",
    "references",
    "status",
    "type",
    "subType",
    "callQueueInfo",
    "hidden",
    "roles",
    "site",
    "assignedCountry",
    "costCenter",
    "creationTime",
    "alertTimer",
];

/// The digest of an extension record's listed fields: SHA-256 of their JSON with keys sorted, so
/// the order RingCentral sends fields in does not matter.
pub fn digest(record: &Value) -> String {
    let listed: serde_json::Map<String, Value> = LISTED_FIELDS
        .iter()
        .filter_map(|field| Some((field.to_string(), record.get(*field)?.clone())))
        .collect();
    let canonical = serde_json::to_string(&listed).expect("a JSON value always serialises");
    let hash = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    hash.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Extension id to entry.
pub type Index = BTreeMap<String, Entry>;

/// Extension id to the per-extension state topics that hold a record for it.
pub type Holdings = BTreeMap<String, BTreeSet<String>>;

/// What separates the extension id and the state topic in the key of a holding record (`101@<topic>`):
/// neither an id nor a topic name holds it.
const HOLDING_SEPARATOR: char = '@';

/// A holding record's value: when the state it stands for was fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holding {
    pub fetched_at: String,
}

/// The record that says the state topic `state_topic` holds a record for `extension` (a tombstone
/// when `fetched_at` is `None`: it holds none any more). Written by the fetcher beside each state
/// record, it is what lets a gone extension leave tombstones only where it has records.
pub fn holding_message(
    topic: &Topic,
    extension: &str,
    state_topic: &Topic,
    fetched_at: Option<&str>,
) -> OutboundMessage {
    let holding = fetched_at.map(|at| Holding {
        fetched_at: at.to_string(),
    });
    OutboundMessage {
        topic: topic.to_string(),
        key: format!("{extension}{HOLDING_SEPARATOR}{state_topic}"),
        headers: vec![("content-type".into(), "application/json".into())],
        value: holding
            .map(|h| serde_json::to_string(&h).expect("a holding always serialises"))
            .unwrap_or_default(),
        hint_label: "none".into(),
        tombstone: fetched_at.is_none(),
    }
}

/// The key of the record that says which sweep runs or ran last: not an extension id (those are
/// digits), so never mistaken for one.
pub const SWEEP_KEY: &str = "~sweep";

/// The key of a request for a sweep, from a replica that does not run them to the one that does,
/// which reads the index topic from its end while it sweeps.
pub const SWEEP_REQUEST_KEY: &str = "~sweep-request";

/// A request for a sweep: its cause's label, as JSON.
pub fn sweep_request(topic: &Topic, cause: super::sweep::Cause) -> OutboundMessage {
    OutboundMessage {
        topic: topic.to_string(),
        key: SWEEP_REQUEST_KEY.to_string(),
        headers: vec![("content-type".into(), "application/json".into())],
        value: format!("\"{}\"", cause.label()),
        hint_label: "none".into(),
        tombstone: false,
    }
}

/// The last sweep that started, and whether it finished: a sweep cut short (SIGKILL, a lost
/// leadership) is run again by whichever replica sweeps next, as the same kind of sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepMark {
    pub sweep: String,
    /// The cause's label: `snapshot` for the initial snapshot.
    pub cause: String,
    pub finished: bool,
}

impl SweepMark {
    pub fn message(&self, topic: &Topic) -> OutboundMessage {
        OutboundMessage {
            topic: topic.to_string(),
            key: SWEEP_KEY.to_string(),
            headers: vec![("content-type".into(), "application/json".into())],
            value: serde_json::to_string(self).expect("a mark always serialises"),
            hint_label: "none".into(),
            tombstone: false,
        }
    }
}

/// The index as read: the entries, which state topics hold records, and the last sweep's mark.
#[derive(Debug, Default)]
pub struct Read {
    pub index: Index,
    pub holdings: Holdings,
    pub mark: Option<SweepMark>,
}

impl Read {
    /// Applies one record of the index topic (`payload` `None`: a tombstone), as compaction will:
    /// a later record of a key replaces an earlier one and a tombstone removes it.
    pub fn apply(&mut self, key: &str, payload: Option<&[u8]>) {
        if key == SWEEP_REQUEST_KEY {
            return;
        }
        if key == SWEEP_KEY {
            self.mark = payload.and_then(|p| serde_json::from_slice(p).ok());
            return;
        }
        if let Some((extension, state_topic)) = key.split_once(HOLDING_SEPARATOR) {
            let held = self.holdings.entry(extension.to_string()).or_default();
            if payload.is_some() {
                held.insert(state_topic.to_string());
            } else {
                held.remove(state_topic);
                if held.is_empty() {
                    self.holdings.remove(extension);
                }
            }
            return;
        }
        match payload.map(serde_json::from_slice::<Entry>) {
            Some(Ok(entry)) => {
                self.index.insert(key.to_string(), entry);
            }
            Some(Err(e)) => {
                tracing::warn!(key, error = %e, "an index entry that is not one; ignored")
            }
            None => {
                self.index.remove(key);
            }
        }
    }

    /// Whether no sweep ever ran: the initial snapshot is due. (Fetches fill the index too, so an
    /// index with entries may still have had no sweep.)
    pub fn never_swept(&self) -> bool {
        self.mark.is_none()
    }

    /// Whether the next sweep is the initial snapshot: none ever ran, or the snapshot was cut
    /// short.
    pub fn snapshot_due(&self) -> bool {
        self.never_swept()
            || self
                .interrupted()
                .is_some_and(|m| m.cause == super::sweep::Cause::Snapshot.label())
    }

    /// Whether a sweep was cut short: it is to be run again.
    pub fn interrupted(&self) -> Option<&SweepMark> {
        self.mark.as_ref().filter(|m| !m.finished)
    }
}

/// The index entry of `extension` as a message: a tombstone when `entry` is `None` (gone).
pub fn entry_message(topic: &Topic, extension: &str, entry: Option<&Entry>) -> OutboundMessage {
    OutboundMessage {
        topic: topic.to_string(),
        key: extension.to_string(),
        headers: vec![("content-type".into(), "application/json".into())],
        value: entry
            .map(|e| serde_json::to_string(e).expect("an entry always serialises"))
            .unwrap_or_default(),
        hint_label: "none".into(),
        tombstone: entry.is_none(),
    }
}

/// Reads the whole index (blocking: run it off the async workers). Later records of a key replace
/// earlier ones and a tombstone removes it, as compaction will.
pub fn read(config: &ClientConfig, topic: &Topic) -> Result<Read, KafkaError> {
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", "rc-kafka-bridge-index-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let (low, high) = consumer.fetch_watermarks(topic.as_str(), 0, Duration::from_secs(10))?;
    let mut read = Read::default();
    if high <= low {
        return Ok(read);
    }
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition_offset(topic.as_str(), 0, Offset::Beginning)?;
    consumer.assign(&partitions)?;
    let deadline = Instant::now() + READ_TIMEOUT;
    while Instant::now() < deadline {
        let Some(received) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = received?;
        if let Some(key) = message.key() {
            read.apply(&String::from_utf8_lossy(key), message.payload());
        }
        if message.offset() + 1 >= high {
            return Ok(read);
        }
    }
    Err(KafkaError::MessageConsumption(
        rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_json_and_a_gone_extension_a_tombstone() {
        let topic = Topic::parse("ringcentral.state-index").unwrap();
        let entry = Entry {
            digest: "abc".into(),
            sweep: "s1".into(),
        };
        let message = entry_message(&topic, "101", Some(&entry));
        assert_eq!(message.key, "101");
        assert_eq!(
            serde_json::from_str::<Entry>(&message.value).unwrap(),
            entry
        );
        let gone = entry_message(&topic, "101", None);
        assert!(gone.tombstone && gone.value.is_empty());
    }

    #[test]
    fn records_read_in_order_leave_what_compaction_would() {
        let topic = Topic::parse("ringcentral.state-index").unwrap();
        let features = Topic::parse("ringcentral.state.account.extension.features").unwrap();
        let numbers = Topic::parse("ringcentral.state.account.extension.phone-number").unwrap();
        let entry = Entry {
            digest: "d".into(),
            sweep: FETCHED.into(),
        };
        let records = [
            entry_message(&topic, "101", Some(&entry)),
            holding_message(&topic, "101", &features, Some("2026-01-01T00:00:00Z")),
            holding_message(&topic, "101", &numbers, Some("2026-01-01T00:00:00Z")),
            holding_message(&topic, "102", &numbers, Some("2026-01-01T00:00:00Z")),
            holding_message(&topic, "101", &numbers, None),
            entry_message(&topic, "102", Some(&entry)),
            entry_message(&topic, "102", None),
            holding_message(&topic, "102", &numbers, None),
            sweep_request(&topic, super::super::sweep::Cause::Requested),
        ];
        let mut read = Read::default();
        for r in &records {
            read.apply(&r.key, (!r.tombstone).then_some(r.value.as_bytes()));
        }
        assert_eq!(read.index.keys().collect::<Vec<_>>(), ["101"]);
        let held: Vec<(&String, Vec<&String>)> = read
            .holdings
            .iter()
            .map(|(id, topics)| (id, topics.iter().collect()))
            .collect();
        assert_eq!(held.len(), 1, "102 holds nothing any more: {held:?}");
        assert_eq!(held[0].0, "101");
        assert_eq!(held[0].1, [&features.to_string()]);
        assert!(read.mark.is_none());
    }

    #[test]
    fn the_digest_ignores_field_order_and_sees_any_listed_change() {
        let a: Value =
            serde_json::from_str(r#"{"id": 1, "name": "A", "status": "Enabled"}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"status": "Enabled", "name": "A", "id": 1}"#).unwrap();
        let c: Value =
            serde_json::from_str(r#"{"id": 1, "name": "A", "status": "Disabled"}"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&c));
        assert_eq!(digest(&a).len(), 32);
    }

    #[test]
    fn the_extension_record_and_its_listed_form_have_one_digest() {
        let listed: Value = serde_json::from_str(
            r#"{"id": 1, "uri": "u", "name": "A", "status": "Enabled", "contact": {"email": "a@example.com"}}"#,
        )
        .unwrap();
        let mut fetched = listed.clone();
        fetched["regionalSettings"] = serde_json::json!({"timezone": {"id": "58"}});
        fetched["setupWizardState"] = serde_json::json!("Completed");
        assert_eq!(digest(&listed), digest(&fetched));
        fetched["contact"]["email"] = serde_json::json!("b@example.com");
        assert_ne!(digest(&listed), digest(&fetched));
    }
}
