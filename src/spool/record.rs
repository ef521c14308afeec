//! How a spooled entry is stored: a compact binary record, a version byte then the entry in
//! [`postcard`] (lengths as varints, strings as they are), which the spool keeps compressed
//! ([`LZ4_V1`]), on disk and in memory alike ([`StoredRecord`]). Entries written by earlier
//! releases are uncompressed records, or JSON documents, each message's value a JSON string inside
//! them (escaped a second time); they are still read, told apart by their first byte (`{`). The
//! relay decompresses one record at a time and reads it in place ([`StoredEntry::read`]): its
//! strings are borrowed from the record's bytes, not copied into a plan.

#[cfg(test)]
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::SpooledEntry;
use crate::routing::{HeaderName, Outbound, OutboundMessage, RoutePlan};

/// The first byte of a binary record: the version of its layout. A JSON record starts with `{`.
const BINARY_V1: u8 = 1;

/// The first byte of a compressed record, as the database keeps binary records: the length of the
/// binary record (a varint), then the record as one LZ4 block. A notification's messages repeat its
/// fields (uuid, ids, hints, the common part of every value and header), so a record of 7 messages
/// shrinks about sixfold: the spool's writer writes and syncs that much less for every notification.
const LZ4_V1: u8 = 2;

/// LZ4 expands at most 255-fold: a compressed record claiming more than that is damaged, and its
/// claim is refused before any memory is set aside for it.
const LZ4_MAX_RATIO: usize = 255;

/// The layout of version 1, in field order (postcard is positional: only ever add a version), as
/// read: its strings are borrowed from the stored bytes. [`StoredRecord::new`] writes the same
/// layout straight from a plan.
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

/// A record as the spool keeps it, in memory as on disk: compressed when that makes it smaller
/// (see [`LZ4_V1`]), with its length once read, which the relay weighs it by before reading it.
/// Kept compressed until the relay publishes it: what the hand-off and a backlog's rounds read
/// ahead hold is a sixth of the records they stand for.
#[derive(Debug)]
pub struct StoredRecord {
    /// A compressed record or a binary one.
    bytes: Box<[u8]>,
    /// The binary record's length: what it takes in memory once read, and in librdkafka's copy.
    record_len: usize,
}

impl StoredRecord {
    /// The stored form of `plan`, accepted at `accepted_at_ms`.
    pub fn new(accepted_at_ms: u64, plan: &RoutePlan) -> Result<StoredRecord, String> {
        SCRATCH.with_borrow_mut(|scratch| scratch.store(accepted_at_ms, plan))
    }

    /// A record as the database holds it. A JSON record of an earlier release is stored again as
    /// this release stores a plan, so that every entry reads alike. A compressed record is not
    /// decompressed here: its length once read is in its header (a claim past LZ4's ratio is
    /// refused), and the relay reads it anyway as it publishes it, where a record of a later
    /// version or damaged inside is found and ends the round, as here it would have ended the
    /// read (decompressing every record read back twice was 1.1% of the CPU at max load, where the
    /// relay reads its rounds back).
    pub fn from_database(bytes: Vec<u8>) -> Result<StoredRecord, String> {
        let record_len = match bytes.first() {
            Some(&LZ4_V1) => compressed_header(&bytes)?.0,
            Some(b'{') => {
                let entry = decode(&bytes)?;
                return StoredRecord::new(entry.accepted_at_ms, &entry.plan);
            }
            _ => {
                // An uncompressed record: its version checked now, the rest as it is read.
                read_version(&bytes)?;
                bytes.len()
            }
        };
        Ok(StoredRecord {
            bytes: bytes.into_boxed_slice(),
            record_len,
        })
    }

    /// As stored: what the journal writes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A record that reads as `record_len` bytes, for tests that only weigh records.
    #[cfg(test)]
    pub(super) fn weighing(record_len: usize) -> StoredRecord {
        StoredRecord {
            bytes: Box::new([]),
            record_len,
        }
    }
}

/// A committed entry as stored: what the hand-off holds and the relay publishes from, read in
/// place ([`StoredEntry::read`]) rather than decoded into a plan of owned strings.
#[derive(Debug)]
pub struct StoredEntry {
    pub seq: u64,
    record: StoredRecord,
}

impl StoredEntry {
    /// The entry committed as sequence number `seq`.
    pub fn new(seq: u64, record: StoredRecord) -> StoredEntry {
        StoredEntry { seq, record }
    }

    /// An entry as the database holds it: see [`StoredRecord::from_database`].
    pub fn from_database(seq: u64, bytes: Vec<u8>) -> Result<StoredEntry, String> {
        StoredRecord::from_database(bytes).map(|record| StoredEntry::new(seq, record))
    }

    /// Its size in bytes as the relay reads it (the binary record, uncompressed).
    pub fn record_bytes(&self) -> usize {
        self.record.record_len
    }

    /// When it was accepted, in milliseconds since the Unix epoch, read from the record (for the
    /// first entry of a round only: the age of the oldest); `None` if the record cannot be read.
    pub fn accepted_at_ms(&self) -> Option<u64> {
        let mut scratch = Vec::new();
        self.read(&mut scratch)
            .ok()
            .map(|record| record.accepted_at_ms)
    }

    /// The record, its strings borrowed from the entry, or from `scratch` where the entry is
    /// decompressed (a buffer the caller keeps for record after record).
    pub fn read<'a>(&'a self, scratch: &'a mut Vec<u8>) -> Result<Record<'a>, String> {
        read_binary(self.unpack(scratch)?)
    }

    /// The binary record: the entry's bytes, or decompressed into `scratch`.
    fn unpack<'a>(&'a self, scratch: &'a mut Vec<u8>) -> Result<&'a [u8], String> {
        let bytes = &self.record.bytes;
        if bytes.first() != Some(&LZ4_V1) {
            return Ok(bytes);
        }
        decompress_into(bytes, scratch)?;
        Ok(scratch)
    }

    /// The entry with owned strings, as `spool export` writes it.
    pub fn decode(&self) -> Result<SpooledEntry, String> {
        let mut entry = decode(self.unpack(&mut Vec::new())?)?;
        entry.seq = self.seq;
        Ok(entry)
    }
}

/// The stored form of `plan` as a binary record, uncompressed.
#[cfg(test)]
pub fn encode(accepted_at_ms: u64, plan: &RoutePlan) -> Result<Vec<u8>, String> {
    let mut record = Vec::new();
    encode_into(accepted_at_ms, plan, &mut record)?;
    Ok(record)
}

/// Writes the binary record of `plan` into `record`, in place of what it held.
fn encode_into(accepted_at_ms: u64, plan: &RoutePlan, record: &mut Vec<u8>) -> Result<(), String> {
    let plan = PlanRecord {
        accepted_at_ms,
        plan,
    };
    record.clear();
    // Sized before it is written: the buffer is never grown (and copied) on the way.
    record.reserve(plan.encoded_len());
    *record = postcard::to_extend(&plan, std::mem::take(record)).map_err(|e| e.to_string())?;
    Ok(())
}

/// A binary record as the database keeps it: compressed (see [`LZ4_V1`]), or as it is when LZ4
/// cannot make it smaller (a version 1 record is read either way).
#[cfg(test)]
pub fn compress(record: &[u8]) -> Cow<'_, [u8]> {
    let mut stored = Vec::new();
    match compress_into(record, &mut stored) {
        Some(len) => {
            stored.truncate(len);
            Cow::Owned(stored)
        }
        None => Cow::Borrowed(record),
    }
}

/// Compresses `record` into the start of `stored` and says how many bytes it took there, or
/// `None` when LZ4 cannot make it smaller. `stored` is only ever lengthened, so a buffer kept from
/// record to record is zeroed once, not at every record.
fn compress_into(record: &[u8], stored: &mut Vec<u8>) -> Option<usize> {
    let len = u32::try_from(record.len()).ok()?;
    let bound = lz4_flex::block::get_maximum_output_size(record.len());
    // The version byte and the length, a varint of at most five bytes.
    let most = 6 + bound;
    if stored.len() < most {
        stored.resize(most, 0);
    }
    let header = postcard::to_slice(&(LZ4_V1, len), stored).ok()?.len();
    match lz4_flex::block::compress_into(record, &mut stored[header..most]) {
        Ok(written) if header + written < record.len() => Some(header + written),
        _ => None,
    }
}

/// The buffers a thread encodes and compresses records in, kept from one record to the next: each
/// record then costs one allocation, of its stored size, rather than one for the binary record,
/// one for LZ4's worst case, zeroing that, and shrinking it to what it took. The webhook's thread
/// stores every notification: a record of one hint stores in about a quarter less time
/// (`cargo bench --bench parse_route -- record`).
#[derive(Default)]
struct Scratch {
    record: Vec<u8>,
    stored: Vec<u8>,
}

/// Past this, a buffer grown by an unusually large record is given back once it has been used,
/// rather than held by its thread for as long as the bridge runs.
const SCRATCH_KEPT_BYTES: usize = 256 << 10;

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

impl Scratch {
    fn store(&mut self, accepted_at_ms: u64, plan: &RoutePlan) -> Result<StoredRecord, String> {
        encode_into(accepted_at_ms, plan, &mut self.record)?;
        let record_len = self.record.len();
        let bytes = match compress_into(&self.record, &mut self.stored) {
            Some(len) => Box::from(&self.stored[..len]),
            None => Box::from(&self.record[..]),
        };
        for buffer in [&mut self.record, &mut self.stored] {
            if buffer.capacity() > SCRATCH_KEPT_BYTES {
                *buffer = Vec::new();
            }
        }
        Ok(StoredRecord { bytes, record_len })
    }
}

/// A compressed record's header: the length it claims uncompressed, checked against what its
/// block could hold (before any memory is set aside for it), and the block.
fn compressed_header(stored: &[u8]) -> Result<(usize, &[u8]), String> {
    let ((_, len), block) = postcard::take_from_bytes::<(u8, u32)>(stored)
        .map_err(|e| format!("a compressed record without its length: {e}"))?;
    let len = len as usize;
    if len > block.len().saturating_mul(LZ4_MAX_RATIO) {
        return Err(format!(
            "a compressed record of {} bytes claiming {len} bytes uncompressed",
            block.len()
        ));
    }
    Ok((len, block))
}

/// Decompresses a compressed record into `record`, in place of what it held.
fn decompress_into(stored: &[u8], record: &mut Vec<u8>) -> Result<(), String> {
    let (len, block) = compressed_header(stored)?;
    // Only what the buffer lacks is zeroed: the block writes every byte of the record.
    record.resize(len, 0);
    let written = lz4_flex::block::decompress_into(block, record).map_err(|e| e.to_string())?;
    if written != len {
        return Err(format!(
            "a compressed record claiming {len} bytes uncompressed, holding {written} bytes"
        ));
    }
    Ok(())
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
    read_version(bytes)?;
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}

/// Checks that `bytes` are a binary record of this release's version.
fn read_version(bytes: &[u8]) -> Result<(), String> {
    match bytes.first() {
        Some(&BINARY_V1) => Ok(()),
        Some(b'{') => Err("a JSON entry where a binary record was expected".into()),
        Some(&LZ4_V1) => Err("a compressed record where its binary record was expected".into()),
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

    /// An entry of `bytes` as the database holds them.
    fn from_database(seq: u64, bytes: &[u8]) -> Result<StoredEntry, String> {
        StoredEntry::from_database(seq, bytes.to_vec())
    }

    /// The binary record `entry` reads as.
    fn unpacked(entry: &StoredEntry) -> Vec<u8> {
        entry.unpack(&mut Vec::new()).unwrap().to_vec()
    }

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
        let entry = StoredEntry::new(7, StoredRecord::new(9, &plan).unwrap());
        assert_eq!(entry.accepted_at_ms(), Some(9));
        assert_eq!(entry.record_bytes(), encode(9, &plan).unwrap().len());
        let mut scratch = Vec::new();
        let unpacked = entry.unpack(&mut scratch).unwrap();
        let record = read_binary(unpacked).unwrap();
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
        // Borrowed from the record as read, not copied out of it.
        let stored = unpacked.as_ptr_range();
        assert!(stored.contains(&record.messages[0].value().as_ptr()));
        assert!(stored.contains(&record.messages[0].headers[0].1.0.as_ptr()));
    }

    /// Version 1 as this release writes it, kept byte for byte: a later release must read these
    /// bytes, and a change to how `encode` lays out version 1 fails here rather than in a spool.
    const RECORD_V1: &[u8] = include_bytes!("../../tests/fixtures/record-v1.bin");

    #[test]
    fn version_1_is_read_and_written_byte_for_byte_as_released() {
        let entry = from_database(1, RECORD_V1).unwrap();
        let decoded = entry.decode().unwrap();
        assert_eq!(decoded.plan, plan());
        assert_eq!(decoded.accepted_at_ms, 1_700_000_000_000);
        assert_eq!(encode(1_700_000_000_000, &plan()).unwrap(), RECORD_V1);
    }

    /// A record of 7 messages as this release stores it, compressed: a later release must read it.
    const RECORD_V1_LZ4: &[u8] = include_bytes!("../../tests/fixtures/record-v1-lz4.bin");

    #[test]
    fn a_compressed_record_as_released_is_read() {
        assert_eq!(RECORD_V1_LZ4[0], LZ4_V1);
        let decoded = from_database(1, RECORD_V1_LZ4).unwrap().decode().unwrap();
        assert_eq!(decoded.plan, plan_of(7));
        assert_eq!(decoded.accepted_at_ms, 1_700_000_000_000);
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
            // As the database keeps it, compressed or not, it reads back as the same record.
            let stored = from_database(0, &compress(&bytes)).unwrap();
            proptest::prop_assert_eq!(unpacked(&stored), bytes.clone());
            proptest::prop_assert_eq!(
                (stored.record_bytes(), stored.accepted_at_ms()),
                (bytes.len(), Some(at))
            );
            let entry = decode(&bytes).unwrap();
            proptest::prop_assert_eq!((entry.accepted_at_ms, entry.plan), (at, plan));
        }
    }

    /// A plan of `n` messages alike but for the hint, as a notification of `n` hints plans them.
    fn plan_of(n: usize) -> RoutePlan {
        let mut plan = plan();
        let first = plan.messages[0].clone();
        plan.messages = (0..n)
            .map(|i| {
                let mut message = first.clone();
                message.hint_label = format!("Hint{i}");
                message.value = format!(
                    r#"{{"uuid":"ed1cf00c-0420-4bf5-a0ae-e659cc9f77e0","extensionId":"847587495","hint":"Hint{i}","hints":["Hint0","Hint1","Hint2","Hint3","Hint4","Hint5","Hint6"]}}"#
                );
                message
            })
            .collect();
        plan
    }

    #[test]
    fn records_stored_one_after_another_each_hold_their_own_plan_and_nothing_of_the_last() {
        // A large record first leaves its bytes in the thread's buffers; each record after it,
        // smaller, compressible or not, is stored exactly as it would be on its own. The plan of
        // no messages is too short for LZ4 to find a repeat that pays for the compressed header.
        let incompressible = RoutePlan {
            uuid: "u".into(),
            kind: "k".into(),
            messages: Vec::new(),
            unrouted_reason: None,
        };
        for plan in [
            plan_of(12),
            plan_of(1),
            incompressible.clone(),
            plan(),
            plan_of(3),
        ] {
            let stored = StoredRecord::new(4, &plan).unwrap();
            let alone = encode(4, &plan).unwrap();
            assert_eq!(stored.bytes(), &compress(&alone)[..]);
            assert_eq!(stored.record_len, alone.len());
            let entry = StoredEntry::new(1, stored);
            assert_eq!(entry.decode().unwrap().plan, plan);
        }
        assert_ne!(
            StoredRecord::new(4, &incompressible).unwrap().bytes()[0],
            LZ4_V1,
            "the incompressible plan is stored uncompressed"
        );
    }

    #[test]
    fn a_buffer_grown_by_an_unusually_large_record_is_given_back() {
        let mut plan = plan();
        plan.messages[0].value = "x".repeat(2 * SCRATCH_KEPT_BYTES);
        let stored = StoredRecord::new(4, &plan).unwrap();
        assert!(stored.record_len > SCRATCH_KEPT_BYTES);
        let kept = SCRATCH.with_borrow(|s| (s.record.capacity(), s.stored.capacity()));
        assert_eq!(kept, (0, 0));
        StoredRecord::new(4, &plan_of(7)).unwrap();
        let kept = SCRATCH.with_borrow(|s| (s.record.capacity(), s.stored.capacity()));
        assert!(kept.0 > 0 && kept.0 <= SCRATCH_KEPT_BYTES, "{kept:?}");
        assert!(kept.1 > 0 && kept.1 <= SCRATCH_KEPT_BYTES, "{kept:?}");
        assert_eq!(StoredEntry::new(1, stored).decode().unwrap().plan, plan);
    }

    #[test]
    fn the_database_keeps_a_record_compressed_and_reads_it_back_as_the_record() {
        let record = encode(5, &plan_of(7)).unwrap();
        let stored = compress(&record);
        assert_eq!(stored[0], LZ4_V1);
        assert!(
            stored.len() * 3 < record.len(),
            "{} of {} bytes",
            stored.len(),
            record.len()
        );
        let entry = from_database(9, &stored).unwrap();
        // Kept compressed, and read as the record.
        assert_eq!((entry.seq, entry.record.bytes()), (9, &stored[..]));
        assert_eq!(unpacked(&entry), record);
        assert_eq!(entry.decode().unwrap().plan, plan_of(7));
    }

    #[test]
    fn the_most_compressible_record_is_within_the_ratio_beyond_which_damaged_ones_are_refused() {
        // A value of one byte repeated: LZ4 at its best, close to the 255-fold limit.
        let mut plan = plan_of(1);
        plan.messages[0].value = "a".repeat(4 << 20);
        let record = encode(5, &plan).unwrap();
        let stored = compress(&record);
        assert!(stored.len() * 200 < record.len(), "{}", stored.len());
        let entry = from_database(1, &stored).unwrap();
        assert_eq!(unpacked(&entry), record);
    }

    #[test]
    fn a_record_lz4_cannot_shrink_is_kept_as_it_is() {
        // Too short for LZ4 to find a repeat that pays for the compressed record's header.
        let empty = RoutePlan {
            uuid: "u".into(),
            kind: "k".into(),
            messages: Vec::new(),
            unrouted_reason: None,
        };
        let record = encode(5, &empty).unwrap();
        assert!(matches!(compress(&record), Cow::Borrowed(kept) if kept == &record[..]));
        let entry = from_database(1, &compress(&record)).unwrap();
        assert_eq!(entry.record.bytes(), &record[..]);
        assert_eq!(unpacked(&entry), record);
    }

    #[test]
    fn a_damaged_compressed_record_is_refused_before_memory_is_set_aside_for_it() {
        let record = encode(5, &plan_of(7)).unwrap();
        let stored = compress(&record).into_owned();
        let header = postcard::to_stdvec(&(LZ4_V1, record.len() as u32))
            .unwrap()
            .len();
        let block = &stored[header..];
        let claiming = |len: u32| {
            let mut damaged = postcard::to_stdvec(&(LZ4_V1, len)).unwrap();
            damaged.extend_from_slice(block);
            damaged
        };
        // A header that cannot be right: refused as the record is read from the database.
        let huge = from_database(1, &claiming(u32::MAX)).unwrap_err();
        assert!(huge.contains("claiming 4294967295 bytes"), "{huge}");
        assert!(from_database(1, &stored[..header - 1]).is_err());
        // Damage inside the block: weighed by its header, refused when the relay reads it.
        let unreadable = |bytes: &[u8]| {
            let entry = from_database(1, bytes).unwrap();
            match entry.read(&mut Vec::new()) {
                Ok(_) => panic!("a damaged record was read"),
                Err(e) => e,
            }
        };
        let longer = unreadable(&claiming(record.len() as u32 + 1));
        assert!(longer.contains("holding"), "{longer}");
        unreadable(&stored[..stored.len() - 5]);
        // A block that decompresses, but not into a record.
        unreadable(&compress(&[b'x'; 400]));
        // One that decompresses into a damaged record.
        let mut damaged = record.clone();
        damaged.truncate(record.len() - 3);
        unreadable(&compress(&damaged));
        // Or into a record of a later version.
        let mut later = record.clone();
        later[0] = 3;
        let refused = unreadable(&compress(&later));
        assert!(refused.contains("later release"), "{refused}");
    }

    #[test]
    fn entries_of_earlier_releases_are_stored_again_as_binary_and_later_versions_refused() {
        let json = serde_json::to_vec(&SpooledEntry {
            seq: 0,
            accepted_at_ms: 5,
            plan: plan(),
        })
        .unwrap();
        let entry = from_database(3, &json).unwrap();
        assert_eq!(entry.seq, 3);
        assert_eq!(
            entry.record.bytes(),
            StoredRecord::new(5, &plan()).unwrap().bytes()
        );
        let record = entry.read(&mut Vec::new()).unwrap().accepted_at_ms;
        assert_eq!(record, 5);
        assert_eq!(entry.decode().unwrap().plan, plan());
        let binary = encode(5, &plan()).unwrap();
        assert_eq!(
            from_database(4, &binary).unwrap().record.bytes(),
            &binary[..]
        );
        let mut later = binary.clone();
        later[0] = 3;
        let refused = from_database(5, &later).unwrap_err();
        assert!(refused.contains("later release"), "{refused}");
        let truncated = from_database(6, &binary[..binary.len() - 3]).unwrap();
        assert!(truncated.read(&mut Vec::new()).is_err());
        assert!(from_database(7, &[]).is_err());
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
        later[0] = 3;
        assert!(decode(&later).unwrap_err().contains("later release"));
        assert!(decode(&[]).is_err());
        // A record cut short is an error, not a shorter plan.
        let binary = encode(5, &plan()).unwrap();
        assert!(decode(&binary[..binary.len() - 3]).is_err());
    }
}
