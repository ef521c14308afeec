//! How a spooled entry is stored: a compact binary record, a version byte then the entry in
//! [`postcard`] (lengths as varints, strings as they are). Entries written by earlier releases are
//! JSON documents, each message's value a JSON string inside them (escaped a second time); they are
//! still read, told apart by their first byte (`{`). The relay reads a binary record in place
//! ([`StoredEntry`]): its strings are borrowed from the stored bytes, not copied into a plan.

use serde::{Deserialize, Serialize};

use super::SpooledEntry;
use crate::routing::{HeaderName, Outbound, OutboundMessage, RoutePlan};

/// The first byte of a binary record: the version of its layout. A JSON record starts with `{`.
const BINARY_V1: u8 = 1;

/// The layout of version 1, in field order (postcard is positional: only ever add a version), as
/// read: its strings are borrowed from the stored bytes. [`encode`] writes the same layout straight
/// from a plan.
#[derive(Deserialize)]
pub struct Record<'a> {
    /// [`BINARY_V1`]: postcard writes a `u8` as the byte itself, so it is the record's first byte,
    /// checked before the rest is read.
    _version: u8,
    /// Milliseconds since the Unix epoch when the notification was accepted.
    pub accepted_at_ms: u64,
    pub uuid: &'a str,
    pub kind: &'a str,
    #[serde(borrow)]
    pub messages: Vec<StoredMessage<'a>>,
}

/// One message of a record, read in place.
#[derive(Deserialize)]
pub struct StoredMessage<'a> {
    topic: &'a str,
    key: &'a str,
    #[serde(borrow)]
    headers: Vec<(&'a str, Text<'a>)>,
    #[serde(borrow)]
    value: Text<'a>,
    hint_label: &'a str,
    tombstone: bool,
}

impl Outbound for StoredMessage<'_> {
    fn topic(&self) -> &str {
        self.topic
    }
    fn key(&self) -> &str {
        self.key
    }
    fn headers(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|&(name, value)| (name, value.0))
    }
    fn value(&self) -> &[u8] {
        self.value.0
    }
    fn hint_label(&self) -> &str {
        self.hint_label
    }
    fn tombstone(&self) -> bool {
        self.tombstone
    }
    fn to_outbound(&self) -> OutboundMessage {
        OutboundMessage {
            topic: self.topic.into(),
            key: self.key.into(),
            headers: self
                .headers
                .iter()
                .map(|&(n, v)| (n.to_string().into(), v.to_string()))
                .collect(),
            value: self.value.to_string(),
            hint_label: self.hint_label.into(),
            tombstone: self.tombstone,
        }
    }
}

/// Text laid out as postcard lays out a string (its length, then its bytes) and read back as bytes,
/// without checking again that it is UTF-8: it was a `String` when encoded. For what Kafka takes as
/// bytes (a value, a header's value), where that check at every read would only cost time.
#[derive(Clone, Copy)]
struct Text<'a>(&'a [u8]);

impl Serialize for Text<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'a [u8]>::deserialize(deserializer).map(Text)
    }
}

impl std::fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.0))
    }
}

impl Record<'_> {
    /// How long ago the notification was accepted.
    pub fn age(&self) -> std::time::Duration {
        super::age_since(self.accepted_at_ms)
    }
}

/// A committed entry as stored: what the hand-off holds and the relay publishes from, read in
/// place ([`StoredEntry::read`]) rather than decoded into a plan of owned strings.
#[derive(Debug)]
pub struct StoredEntry {
    pub seq: u64,
    /// A binary record.
    bytes: Box<[u8]>,
}

impl StoredEntry {
    /// An entry just encoded by [`encode`].
    pub fn encoded(seq: u64, bytes: Vec<u8>) -> StoredEntry {
        StoredEntry {
            seq,
            bytes: bytes.into_boxed_slice(),
        }
    }

    /// An entry as the database holds it; a JSON record of an earlier release is encoded again as
    /// a binary one, so that every entry reads alike.
    pub fn from_database(seq: u64, bytes: &[u8]) -> Result<StoredEntry, String> {
        let bytes = match bytes.first() {
            Some(b'{') => {
                let entry = decode(bytes)?;
                encode(entry.accepted_at_ms, &entry.plan)?
            }
            _ => {
                // Refused now rather than at every round.
                read_binary(bytes)?;
                bytes.to_vec()
            }
        };
        Ok(StoredEntry::encoded(seq, bytes))
    }

    /// Its stored size in bytes.
    pub fn stored_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The record, its strings borrowed from the entry.
    pub fn read(&self) -> Result<Record<'_>, String> {
        read_binary(&self.bytes)
    }

    /// The entry with owned strings, as `spool export` writes it.
    pub fn decode(&self) -> Result<SpooledEntry, String> {
        let mut entry = decode(&self.bytes)?;
        entry.seq = self.seq;
        Ok(entry)
    }
}

/// The stored form of `plan`, accepted at `accepted_at_ms`.
pub fn encode(accepted_at_ms: u64, plan: &RoutePlan) -> Result<Vec<u8>, String> {
    let record = PlanRecord {
        accepted_at_ms,
        plan,
    };
    // Sized before it is written: the buffer is never grown (and copied) on the way.
    let buffer = Vec::with_capacity(record.encoded_len());
    postcard::to_extend(&record, buffer).map_err(|e| e.to_string())
}

/// A plan laid out as a [`Record`] of version 1, field for field, written straight from the plan
/// rather than through a `Record` of borrowed fields (a vector per message and per header list).
struct PlanRecord<'a> {
    accepted_at_ms: u64,
    plan: &'a RoutePlan,
}

impl PlanRecord<'_> {
    /// The exact length of the encoded record.
    fn encoded_len(&self) -> usize {
        let text = |len: usize| varint_len(len as u64) + len;
        let message = |m: &OutboundMessage| {
            text(m.topic.len())
                + text(m.key.len())
                + varint_len(m.headers.len() as u64)
                + m.headers
                    .iter()
                    .map(|(n, v)| text(n.len()) + text(v.len()))
                    .sum::<usize>()
                + text(m.value.len())
                + text(m.hint_label.len())
                + 1
        };
        1 + varint_len(self.accepted_at_ms)
            + text(self.plan.uuid.len())
            + text(self.plan.kind.len())
            + varint_len(self.plan.messages.len() as u64)
            + self.plan.messages.iter().map(message).sum::<usize>()
    }
}

/// How many bytes postcard's varint of `n` takes: seven bits a byte.
fn varint_len(n: u64) -> usize {
    (64 - n.leading_zeros() as usize).max(1).div_ceil(7)
}

impl Serialize for PlanRecord<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut record = serializer.serialize_struct("Record", 5)?;
        record.serialize_field("version", &BINARY_V1)?;
        record.serialize_field("accepted_at_ms", &self.accepted_at_ms)?;
        record.serialize_field("uuid", &self.plan.uuid)?;
        record.serialize_field("kind", &self.plan.kind)?;
        record.serialize_field("messages", &Messages(&self.plan.messages))?;
        record.end()
    }
}

struct Messages<'a>(&'a [OutboundMessage]);

impl Serialize for Messages<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(Message))
    }
}

/// One message laid out as a [`StoredMessage`].
struct Message<'a>(&'a OutboundMessage);

impl Serialize for Message<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let m = self.0;
        let mut message = serializer.serialize_struct("StoredMessage", 6)?;
        message.serialize_field("topic", &m.topic)?;
        message.serialize_field("key", &m.key)?;
        message.serialize_field("headers", &Headers(&m.headers))?;
        message.serialize_field("value", &Text(m.value.as_bytes()))?;
        message.serialize_field("hint_label", &m.hint_label)?;
        message.serialize_field("tombstone", &m.tombstone)?;
        message.end()
    }
}

struct Headers<'a>(&'a [(HeaderName, String)]);

impl Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|(n, v)| (&**n, Text(v.as_bytes()))))
    }
}

fn read_binary(bytes: &[u8]) -> Result<Record<'_>, String> {
    match bytes.first() {
        Some(&BINARY_V1) => postcard::from_bytes(bytes).map_err(|e| e.to_string()),
        Some(b'{') => Err("a JSON entry where a binary record was expected".into()),
        Some(version) => Err(format!(
            "an entry of record version {version}, written by a later release"
        )),
        None => Err("an empty entry".into()),
    }
}

/// The entry stored as `bytes`, with owned strings (its sequence number is the caller's to set).
fn decode(bytes: &[u8]) -> Result<SpooledEntry, String> {
    if bytes.first() == Some(&b'{') {
        return serde_json::from_slice(bytes).map_err(|e| e.to_string());
    }
    let record = read_binary(bytes)?;
    Ok(SpooledEntry {
        seq: 0,
        accepted_at_ms: record.accepted_at_ms,
        plan: RoutePlan {
            uuid: record.uuid.into(),
            kind: record.kind.into(),
            messages: record.messages.iter().map(Outbound::to_outbound).collect(),
            unrouted_reason: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> RoutePlan {
        let message = |topic: &str, value: &str, tombstone| OutboundMessage {
            topic: topic.into(),
            key: "101".into(),
            headers: vec![
                ("rc-message-id".into(), "u:101:Features:t".into()),
                ("tracestate".into(), "vendor=é\"\\".into()),
            ],
            value: value.into(),
            hint_label: "Features".into(),
            tombstone,
        };
        RoutePlan {
            uuid: "u-1".into(),
            kind: "ExtensionInfo".into(),
            messages: vec![
                message("t.a", r#"{"name":"Zoë \"Z\"","n":1e400}"#, false),
                message("t.b", "", true),
            ],
            unrouted_reason: None,
        }
    }

    #[test]
    fn a_binary_record_reads_back_as_written_and_is_smaller_than_json() {
        let plan = plan();
        let binary = encode(1_700_000_000_000, &plan).unwrap();
        let entry = decode(&binary).unwrap();
        assert_eq!(entry.plan, plan);
        assert_eq!(entry.accepted_at_ms, 1_700_000_000_000);
        let json = serde_json::to_vec(&SpooledEntry {
            seq: 0,
            accepted_at_ms: 1_700_000_000_000,
            plan: plan.clone(),
        })
        .unwrap();
        assert!(
            binary.len() < json.len(),
            "{} >= {}",
            binary.len(),
            json.len()
        );
    }

    #[test]
    fn a_stored_entry_reads_in_place_as_the_plan_it_was_encoded_from() {
        let plan = plan();
        let entry = StoredEntry::encoded(7, encode(9, &plan).unwrap());
        let record = entry.read().unwrap();
        assert_eq!(
            (record.accepted_at_ms, record.uuid, record.kind),
            (9, "u-1", "ExtensionInfo")
        );
        let messages: Vec<OutboundMessage> =
            record.messages.iter().map(Outbound::to_outbound).collect();
        assert_eq!(messages, plan.messages);
        assert!(record.messages[1].tombstone());
        assert_eq!(
            record.messages[0].header("tracestate"),
            Some("vendor=é\"\\")
        );
        // Borrowed from the entry's bytes, not copied out of them.
        let stored = entry.bytes.as_ptr_range();
        assert!(stored.contains(&record.messages[0].value().as_ptr()));
        assert!(stored.contains(&record.messages[0].headers[0].1.0.as_ptr()));
    }

    /// Version 1 as this release writes it, kept byte for byte: a later release must read these
    /// bytes, and a change to how `encode` lays out version 1 fails here rather than in a spool.
    const RECORD_V1: &[u8] = include_bytes!("../../tests/fixtures/record-v1.bin");

    #[test]
    fn version_1_is_read_and_written_byte_for_byte_as_released() {
        let entry = StoredEntry::from_database(1, RECORD_V1).unwrap();
        let decoded = entry.decode().unwrap();
        assert_eq!(decoded.plan, plan());
        assert_eq!(decoded.accepted_at_ms, 1_700_000_000_000);
        assert_eq!(encode(1_700_000_000_000, &plan()).unwrap(), RECORD_V1);
    }

    proptest::proptest! {
        /// The encoder sizes its buffer exactly, whatever the lengths (varints of one to three
        /// bytes), and what it writes reads back as the plan.
        #[test]
        fn a_record_is_sized_exactly_and_reads_back_as_its_plan(
            at in proptest::prelude::any::<u64>(),
            lengths in proptest::collection::vec(0usize..20_000, 1..6),
            headers in 0usize..140,
        ) {
            let text = |n: usize| "é".repeat(n / 2);
            let mut plan = plan();
            plan.uuid = text(lengths[0]);
            plan.messages = lengths
                .iter()
                .map(|&n| OutboundMessage {
                    topic: text(n % 300),
                    key: text(n % 7),
                    headers: (0..headers)
                        .map(|i| (text(i).into(), text(n % 200)))
                        .collect(),
                    value: text(n),
                    hint_label: text(n % 150),
                    tombstone: n % 2 == 0,
                })
                .collect();
            let record = PlanRecord { accepted_at_ms: at, plan: &plan };
            let bytes = encode(at, &plan).unwrap();
            proptest::prop_assert_eq!(bytes.len(), record.encoded_len());
            let entry = decode(&bytes).unwrap();
            proptest::prop_assert_eq!((entry.accepted_at_ms, entry.plan), (at, plan));
        }
    }

    #[test]
    fn entries_of_earlier_releases_are_stored_again_as_binary_and_later_versions_refused() {
        let json = serde_json::to_vec(&SpooledEntry {
            seq: 0,
            accepted_at_ms: 5,
            plan: plan(),
        })
        .unwrap();
        let entry = StoredEntry::from_database(3, &json).unwrap();
        assert_eq!((entry.seq, entry.bytes[0]), (3, BINARY_V1));
        let record = entry.read().unwrap();
        assert_eq!(record.accepted_at_ms, 5);
        assert_eq!(decode(&entry.bytes).unwrap().plan, plan());
        let binary = encode(5, &plan()).unwrap();
        assert_eq!(
            StoredEntry::from_database(4, &binary).unwrap().bytes[..],
            binary[..]
        );
        let mut later = binary.clone();
        later[0] = 2;
        let refused = StoredEntry::from_database(5, &later).unwrap_err();
        assert!(refused.contains("later release"), "{refused}");
        assert!(StoredEntry::from_database(6, &binary[..binary.len() - 3]).is_err());
        assert!(StoredEntry::from_database(7, &[]).is_err());
    }

    #[test]
    fn json_records_of_earlier_releases_are_read_and_later_versions_refused() {
        let json = serde_json::to_vec(&SpooledEntry {
            seq: 0,
            accepted_at_ms: 5,
            plan: plan(),
        })
        .unwrap();
        assert_eq!(decode(&json).unwrap().plan, plan());
        let mut later = encode(5, &plan()).unwrap();
        later[0] = 2;
        assert!(decode(&later).unwrap_err().contains("later release"));
        assert!(decode(&[]).is_err());
        // A record cut short is an error, not a shorter plan.
        let binary = encode(5, &plan()).unwrap();
        assert!(decode(&binary[..binary.len() - 3]).is_err());
    }
}
