//! How a spooled entry is stored: a compact binary record, a version byte then the entry in
//! [`postcard`] (lengths as varints, strings as they are). Entries written by earlier releases are
//! JSON documents, each message's value a JSON string inside them (escaped a second time); they are
//! still read, told apart by their first byte (`{`).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::SpooledEntry;
use crate::routing::{OutboundMessage, RoutePlan};

/// The first byte of a binary record: the version of its layout. A JSON record starts with `{`.
const BINARY_V1: u8 = 1;

/// The layout of version 1, in field order (postcard is positional: only ever add a version).
#[derive(Serialize, Deserialize)]
struct Record<'a> {
    /// [`BINARY_V1`]: postcard writes a `u8` as the byte itself, so it is the record's first byte.
    version: u8,
    accepted_at_ms: u64,
    #[serde(borrow)]
    uuid: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    messages: Vec<Message<'a>>,
}

#[derive(Serialize, Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow)]
    headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    #[serde(borrow)]
    value: Cow<'a, str>,
    #[serde(borrow)]
    hint_label: Cow<'a, str>,
    tombstone: bool,
}

/// The stored form of `plan`, accepted at `accepted_at_ms`.
pub fn encode(accepted_at_ms: u64, plan: &RoutePlan) -> Result<Vec<u8>, String> {
    let record = Record {
        version: BINARY_V1,
        accepted_at_ms,
        uuid: Cow::Borrowed(&plan.uuid),
        kind: Cow::Borrowed(&plan.kind),
        messages: plan
            .messages
            .iter()
            .map(|m| Message {
                topic: Cow::Borrowed(&m.topic),
                key: Cow::Borrowed(&m.key),
                headers: m
                    .headers
                    .iter()
                    .map(|(n, v)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(v.as_str())))
                    .collect(),
                value: Cow::Borrowed(&m.value),
                hint_label: Cow::Borrowed(&m.hint_label),
                tombstone: m.tombstone,
            })
            .collect(),
    };
    postcard::to_stdvec(&record).map_err(|e| e.to_string())
}

/// The entry stored as `bytes` (its sequence number is the caller's to set).
pub fn decode(bytes: &[u8]) -> Result<SpooledEntry, String> {
    match bytes.first() {
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Some(&BINARY_V1) => {
            let record: Record<'_> = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
            Ok(SpooledEntry {
                seq: 0,
                accepted_at_ms: record.accepted_at_ms,
                plan: RoutePlan {
                    uuid: record.uuid.into_owned(),
                    kind: record.kind.into_owned(),
                    messages: record
                        .messages
                        .into_iter()
                        .map(|m| OutboundMessage {
                            topic: m.topic.into_owned(),
                            key: m.key.into_owned(),
                            headers: m
                                .headers
                                .into_iter()
                                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                                .collect(),
                            value: m.value.into_owned(),
                            hint_label: m.hint_label.into_owned(),
                            tombstone: m.tombstone,
                        })
                        .collect(),
                    unrouted_reason: None,
                },
            })
        }
        Some(version) => Err(format!(
            "an entry of record version {version}, written by a later release"
        )),
        None => Err("an empty entry".into()),
    }
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
