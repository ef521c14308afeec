//! RingCentral notification types and their lenient parsing.
//!
//! RingCentral's own examples disagree on the shape of a notification: ids arrive as JSON strings or
//! numbers, `uuid` is not always an RFC 4122 UUID, timestamps come in two formats, the Extension List
//! event is sometimes flat and sometimes batched, and hints are an open set. A [`Notification`] can only
//! be built by [`Notification::parse`], which accepts every documented variant and rejects only bodies
//! that are not a notification envelope at all.
//!
//! Lenient is not trusting: ids become Kafka keys and REST paths downstream, so an account id must be
//! `~` or digits and an extension id digits. An event whose ids are anything else is [`EventKind::Unroutable`]
//! and carried raw. Numbers are kept as their exact text (never through `f64`), so two big numeric
//! uuids never collide.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;

/// A hint of an Extension Info change, e.g. `CompanyNumbers`. Hints are an open set: unknown ones are
/// carried, never dropped.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Hint(String);

impl Hint {
    pub fn new(name: impl Into<String>) -> Self {
        Hint(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, not `write_str`: tables of hints line up with `{:<24}`.
        f.pad(&self.0)
    }
}

/// One extension's change: the Extension Info event carries one, a batched Extension List event many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionChange {
    /// The extension id as a decimal string, whatever JSON type it arrived as.
    pub extension_id: String,
    /// `Update`, `Delete` or (Extension List only) `Create`; carried as received.
    pub event_type: String,
    /// Hints in arrival order, without repeats (a repeated hint would repeat a message id).
    pub hints: Vec<Hint>,
}

/// What kind of event a notification is, decided from its `event` filter and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// `/restapi/v1.0/account/{accountId}/extension/{extensionId}`.
    ExtensionInfo {
        account_id: String,
        change: ExtensionChange,
    },
    /// `/restapi/v1.0/account/{accountId}/extension`, flat or batched in `body.extensions[]`.
    ExtensionList {
        account_id: String,
        changes: Vec<ExtensionChange>,
    },
    /// `/restapi/v1.0/subscription/~?threshold=..&interval=..`: time to renew the subscription.
    SubscriptionReminder,
    /// Any other event filter, or an extension event whose body cannot be routed: carried raw.
    Other,
    /// An event whose ids cannot be trusted as keys or paths: carried raw, with the reason.
    Unroutable(InvalidId),
}

/// Which id of an event is not what RingCentral sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidId {
    /// An account id that is neither `~` nor digits.
    Account,
    /// An extension id that is not digits.
    Extension,
    /// A subscription id (of a reminder) that is not letters, digits and `-`.
    Subscription,
}

impl InvalidId {
    /// A bounded label, for metrics and the `rc-unrouted-reason` header.
    pub fn label(self) -> &'static str {
        match self {
            InvalidId::Account => "invalid_account_id",
            InvalidId::Extension => "invalid_extension_id",
            InvalidId::Subscription => "invalid_subscription_id",
        }
    }
}

fn is_digits(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())
}

fn is_account_id(id: &str) -> bool {
    id == "~" || is_digits(id)
}

/// RingCentral's resource ids (subscriptions): letters, digits and `-`, 1 to 128 characters (theirs
/// are 36).
pub fn is_resource_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl EventKind {
    /// A bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            EventKind::ExtensionInfo { .. } => "extension_info",
            EventKind::ExtensionList { .. } => "extension_list",
            EventKind::SubscriptionReminder => "subscription_reminder",
            EventKind::Other | EventKind::Unroutable(_) => "other",
        }
    }
}

/// A notification envelope that passed parsing. Only [`Notification::parse`] builds one.
#[derive(Debug, Clone)]
pub struct Notification {
    pub uuid: String,
    pub event: String,
    /// Carried exactly as received (RFC 3339 or `2014-04-29T14:29:27.408+0000`, or absent).
    pub timestamp: Value,
    pub subscription_id: Option<String>,
    pub owner_id: Option<String>,
    pub body: Value,
    pub kind: EventKind,
}

impl Notification {
    /// The length of `timestamp` as it will be written into each message.
    pub fn timestamp_len(&self) -> usize {
        match &self.timestamp {
            Value::String(s) => s.len() + 2,
            other => other.to_string().len(),
        }
    }
}

/// Why a body is not a notification. The message is short: it goes back to the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("body is not valid JSON")]
    MalformedJson,
    #[error("not a notification envelope: {0}")]
    NotAnEnvelope(String),
}

impl ParseError {
    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::MalformedJson => "malformed_json",
            ParseError::NotAnEnvelope(_) => "not_an_envelope",
        }
    }
}

/// An id that RingCentral sends either as a JSON string or as a JSON number. Not an untagged enum:
/// serde buffers those through a type that cannot hold a number of arbitrary precision.
#[derive(Debug)]
enum Id {
    Text(String),
    Number(serde_json::Number),
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Id::Text(s)),
            Value::Number(n) => Ok(Id::Number(n)),
            other => Err(serde::de::Error::custom(format!(
                "expected a string or a number as id, found {}",
                kind_of(&other)
            ))),
        }
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Id {
    /// The id as text. Numbers keep the digits they arrived with (`arbitrary_precision`): a 30-digit
    /// uuid is not rounded through `f64`.
    fn into_string(self) -> String {
        match self {
            Id::Text(s) => s,
            Id::Number(n) => n.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    uuid: Id,
    event: String,
    #[serde(default)]
    timestamp: Value,
    #[serde(default)]
    subscription_id: Option<Id>,
    #[serde(default)]
    owner_id: Option<Id>,
    #[serde(default)]
    body: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangeBody {
    #[serde(default)]
    extension_id: Option<Id>,
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    hints: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct BatchBody {
    extensions: Vec<Value>,
}

impl Notification {
    /// Parses a webhook body. Unknown fields are ignored; anything RingCentral documents is accepted.
    pub fn parse(body: &[u8]) -> Result<Notification, ParseError> {
        let value: Value = serde_json::from_slice(body).map_err(|_| ParseError::MalformedJson)?;
        if !value.is_object() {
            return Err(ParseError::NotAnEnvelope("expected a JSON object".into()));
        }
        let envelope: Envelope = serde_json::from_value(value).map_err(|e| {
            let mut msg = e.to_string();
            msg.truncate(160);
            ParseError::NotAnEnvelope(msg)
        })?;
        let uuid = envelope.uuid.into_string();
        if uuid.is_empty() {
            return Err(ParseError::NotAnEnvelope("uuid is empty".into()));
        }
        let subscription_id = envelope.subscription_id.map(Id::into_string);
        let kind = classify(&envelope.event, &envelope.body, subscription_id.as_deref());
        Ok(Notification {
            uuid,
            event: envelope.event,
            timestamp: envelope.timestamp,
            subscription_id,
            owner_id: envelope.owner_id.map(Id::into_string),
            body: envelope.body,
            kind,
        })
    }
}

/// The path segments of an event filter, without query string, after `/restapi/v1.0/`.
fn filter_segments(event: &str) -> Option<Vec<&str>> {
    let path = event.split(['?', '#']).next().unwrap_or_default();
    let rest = path.trim_start_matches('/').strip_prefix("restapi/v1.0/")?;
    Some(rest.split('/').filter(|s| !s.is_empty()).collect())
}

fn classify(event: &str, body: &Value, subscription_id: Option<&str>) -> EventKind {
    let Some(segments) = filter_segments(event) else {
        return EventKind::Other;
    };
    let routed = match segments.as_slice() {
        ["account", account, "extension", extension] => {
            parse_change(body, Some(extension)).map(|change| EventKind::ExtensionInfo {
                account_id: (*account).to_string(),
                change,
            })
        }
        ["account", account, "extension"] => {
            parse_list(body).map(|changes| EventKind::ExtensionList {
                account_id: (*account).to_string(),
                changes,
            })
        }
        ["subscription", ..] => match subscription_id {
            Some(id) if !is_resource_id(id) => Some(EventKind::Unroutable(InvalidId::Subscription)),
            _ => Some(EventKind::SubscriptionReminder),
        },
        _ => None,
    };
    match routed {
        Some(kind) => validated(kind),
        None => EventKind::Other,
    }
}

/// The kind, unless one of its ids would become a key or a path it must not.
fn validated(kind: EventKind) -> EventKind {
    let (account_id, changes) = match &kind {
        EventKind::ExtensionInfo { account_id, change } => {
            (account_id, std::slice::from_ref(change))
        }
        EventKind::ExtensionList {
            account_id,
            changes,
        } => (account_id, changes.as_slice()),
        _ => return kind,
    };
    if !is_account_id(account_id) {
        EventKind::Unroutable(InvalidId::Account)
    } else if !changes.iter().all(|c| is_digits(&c.extension_id)) {
        EventKind::Unroutable(InvalidId::Extension)
    } else {
        kind
    }
}

/// One change, falling back to the extension id of the event filter when the body has none.
fn parse_change(body: &Value, filter_extension: Option<&str>) -> Option<ExtensionChange> {
    let raw: ChangeBody = serde_json::from_value(body.clone()).ok()?;
    let extension_id = match raw.extension_id {
        Some(id) => id.into_string(),
        None => filter_extension
            .filter(|id| *id != "~")
            .map(str::to_string)?,
    };
    if extension_id.is_empty() {
        return None;
    }
    let event_type = raw.event_type.filter(|t| !t.is_empty())?;
    // Linear in the number of hints: a body of thousands of hints costs what it weighs.
    let mut seen: HashSet<String> = HashSet::with_capacity(raw.hints.len());
    let mut hints: Vec<Hint> = Vec::with_capacity(raw.hints.len());
    for value in raw.hints {
        let name = match value {
            Value::String(s) => s,
            other => other.to_string(),
        };
        if !name.is_empty() && seen.insert(name.clone()) {
            hints.push(Hint(name));
        }
    }
    Some(ExtensionChange {
        extension_id,
        event_type,
        hints,
    })
}

/// The Extension List body: batched (`extensions[]`) as in the docs' example, or flat as in its table.
/// A batch with any entry that cannot be routed is carried raw rather than partly.
fn parse_list(body: &Value) -> Option<Vec<ExtensionChange>> {
    if let Ok(batch) = serde_json::from_value::<BatchBody>(body.clone()) {
        return batch
            .extensions
            .iter()
            .map(|entry| parse_change(entry, None))
            .collect();
    }
    parse_change(body, None).map(|change| vec![change])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Notification {
        Notification::parse(value.to_string().as_bytes()).expect("parses")
    }

    fn change(id: &str, event_type: &str, hints: &[&str]) -> ExtensionChange {
        ExtensionChange {
            extension_id: id.into(),
            event_type: event_type.into(),
            hints: hints.iter().map(|h| Hint::new(*h)).collect(),
        }
    }

    #[test]
    fn the_documented_example_is_an_extension_info_update() {
        let n = parse(json!({
            "uuid": "ed1cf00c-0420-4bf5-a0ae-e659cc9f77e0",
            "event": "/restapi/v1.0/account/~/extension/8475874957",
            "timestamp": "2013-06-14T12:00:00.000Z",
            "subscriptionId": "9d38419f-645f-4ee3-a053-8cf1368c21c4",
            "ownerId": "8475874957",
            "body": {"extensionId": "8475874957", "eventType": "Update",
                     "hints": ["ExtensionInfo", "CompanyNumbers"]}
        }));
        assert_eq!(n.uuid, "ed1cf00c-0420-4bf5-a0ae-e659cc9f77e0");
        assert_eq!(n.owner_id.as_deref(), Some("8475874957"));
        assert_eq!(
            n.kind,
            EventKind::ExtensionInfo {
                account_id: "~".into(),
                change: change("8475874957", "Update", &["ExtensionInfo", "CompanyNumbers"]),
            }
        );
    }

    #[test]
    fn lenient_variants_are_accepted() {
        // Each case: (what varies, body, expected kind).
        let cases = [
            (
                "numeric ids everywhere and a non-UUID uuid",
                json!({"uuid": 2661273919712564939u64, "event": "/restapi/v1.0/account/233676004/extension/233676004",
                       "timestamp": "2014-04-29T14:29:27.408+0000", "subscriptionId": 42, "ownerId": 233676004,
                       "body": {"extensionId": 233676004, "eventType": "Update", "hints": ["Limits"]}}),
                EventKind::ExtensionInfo {
                    account_id: "233676004".into(),
                    change: change("233676004", "Update", &["Limits"]),
                },
            ),
            (
                "unknown fields and an unknown hint",
                json!({"uuid": "u", "event": "/restapi/v1.0/account/~/extension/1", "extra": {"x": 1},
                       "body": {"extensionId": "1", "eventType": "Update", "hints": ["Teleport"], "more": true}}),
                EventKind::ExtensionInfo {
                    account_id: "~".into(),
                    change: change("1", "Update", &["Teleport"]),
                },
            ),
            (
                "extension id only in the event filter, repeated hint",
                json!({"uuid": "u", "event": "/restapi/v1.0/account/~/extension/77",
                       "body": {"eventType": "Update", "hints": ["Features", "Features"]}}),
                EventKind::ExtensionInfo {
                    account_id: "~".into(),
                    change: change("77", "Update", &["Features"]),
                },
            ),
            (
                "delete has no hints",
                json!({"uuid": "u", "event": "/restapi/v1.0/account/~/extension/5",
                       "body": {"extensionId": "5", "eventType": "Delete"}}),
                EventKind::ExtensionInfo {
                    account_id: "~".into(),
                    change: change("5", "Delete", &[]),
                },
            ),
            (
                "flat extension list create",
                json!({"uuid": "u", "event": "/restapi/v1.0/account/~/extension",
                       "body": {"extensionId": 9, "eventType": "Create"}}),
                EventKind::ExtensionList {
                    account_id: "~".into(),
                    changes: vec![change("9", "Create", &[])],
                },
            ),
            (
                "batched extension list",
                json!({"uuid": "u", "event": "/restapi/v1.0/account/12/extension",
                       "body": {"extensions": [
                           {"extensionId": "1", "eventType": "Create"},
                           {"extensionId": 2, "eventType": "Update", "hints": ["AnsweringRules"]},
                           {"extensionId": "3", "eventType": "Delete"}]}}),
                EventKind::ExtensionList {
                    account_id: "12".into(),
                    changes: vec![
                        change("1", "Create", &[]),
                        change("2", "Update", &["AnsweringRules"]),
                        change("3", "Delete", &[]),
                    ],
                },
            ),
            (
                "subscription reminder",
                json!({"uuid": "u", "event": "/restapi/v1.0/subscription/~?threshold=86400&interval=3600",
                       "subscriptionId": "s1", "body": {"expiresIn": 86000}}),
                EventKind::SubscriptionReminder,
            ),
            (
                "another event filter",
                json!({"uuid": "u", "event": "/restapi/v1.0/account/~/extension/~/presence", "body": {}}),
                EventKind::Other,
            ),
            (
                "extension event without an event type",
                json!({"uuid": "u", "event": "/restapi/v1.0/account/~/extension/5", "body": {"extensionId": "5"}}),
                EventKind::Other,
            ),
            (
                "extension event without any extension id",
                json!({"uuid": "u", "event": "/restapi/v1.0/account/~/extension/~", "body": {"eventType": "Update"}}),
                EventKind::Other,
            ),
        ];
        for (what, body, expected) in cases {
            assert_eq!(parse(body).kind, expected, "{what}");
        }
    }

    #[test]
    fn ids_that_are_not_ids_make_the_event_unroutable() {
        let cases = [
            (
                "path trick in the extension id",
                json!({"uuid": "u", "event": "/restapi/v1.0/account/~/extension/1",
                       "body": {"extensionId": "../../../../oauth/revoke?token=x&", "eventType": "Update",
                                "hints": ["CompanyNumbers"]}}),
                InvalidId::Extension,
            ),
            (
                "a fractional number as extension id",
                json!({"uuid": "u", "event": "/restapi/v1.0/account/~/extension/1",
                       "body": {"extensionId": 1.5, "eventType": "Update", "hints": ["Limits"]}}),
                InvalidId::Extension,
            ),
            (
                "a negative extension id",
                json!({"uuid": "u", "event": "/restapi/v1.0/account/~/extension",
                       "body": {"extensionId": -7, "eventType": "Create"}}),
                InvalidId::Extension,
            ),
            (
                "one bad entry in a batch",
                json!({"uuid": "u", "event": "/restapi/v1.0/account/~/extension",
                       "body": {"extensions": [{"extensionId": "1", "eventType": "Delete"},
                                               {"extensionId": "1/x", "eventType": "Delete"}]}}),
                InvalidId::Extension,
            ),
            (
                "an account id that is not digits",
                json!({"uuid": "u", "event": "/restapi/v1.0/account/a%2F..%2F/extension/1",
                       "body": {"extensionId": "1", "eventType": "Delete"}}),
                InvalidId::Account,
            ),
            (
                "a reminder for a subscription id with a path",
                json!({"uuid": "u", "event": "/restapi/v1.0/subscription/~?threshold=60&interval=30",
                       "subscriptionId": "../../v1.0/account/~/extension/~/ring-out?x=1", "body": {}}),
                InvalidId::Subscription,
            ),
        ];
        for (what, body, expected) in cases {
            assert_eq!(parse(body).kind, EventKind::Unroutable(expected), "{what}");
        }
    }

    #[test]
    fn numbers_keep_their_exact_digits() {
        let body = |uuid: &str| {
            format!(
                r#"{{"uuid": {uuid}, "event": "/restapi/v1.0/account/1/extension/2",
                       "body": {{"extensionId": 123456789012345678901234567891, "eventType": "Delete"}}}}"#
            )
        };
        let a = Notification::parse(body("123456789012345678901234567890").as_bytes()).unwrap();
        let b = Notification::parse(body("123456789012345678901234567891").as_bytes()).unwrap();
        assert_eq!(a.uuid, "123456789012345678901234567890");
        assert_eq!(b.uuid, "123456789012345678901234567891");
        match a.kind {
            EventKind::ExtensionInfo { change, .. } => {
                assert_eq!(change.extension_id, "123456789012345678901234567891")
            }
            other => panic!("expected an extension event, got {other:?}"),
        }
    }

    #[test]
    fn thousands_of_hints_are_deduplicated_in_order() {
        let mut hints: Vec<String> = (0..5000).map(|i| format!("H{i}")).collect();
        hints.extend((0..5000).map(|i| format!("H{i}")));
        let n = parse(
            json!({"uuid": "u", "event": "/restapi/v1.0/account/~/extension/1",
                             "body": {"extensionId": "1", "eventType": "Update", "hints": hints}}),
        );
        let EventKind::ExtensionInfo { change, .. } = n.kind else {
            panic!("expected an extension event")
        };
        assert_eq!(change.hints.len(), 5000);
        assert_eq!(change.hints[4999].as_str(), "H4999");
    }

    #[test]
    fn timestamps_are_carried_as_received() {
        for ts in ["2013-06-14T12:00:00.000Z", "2014-04-29T14:29:27.408+0000"] {
            let n = parse(json!({"uuid": "u", "event": "/x", "timestamp": ts, "body": {}}));
            assert_eq!(n.timestamp, json!(ts));
        }
    }

    #[test]
    fn non_envelopes_are_rejected() {
        let cases: [(&str, &[u8]); 7] = [
            ("not json", b"{nope"),
            ("empty", b""),
            ("array", b"[1,2]"),
            ("string", b"\"hello\""),
            (
                "no uuid",
                br#"{"event":"/restapi/v1.0/account/~/extension/1","body":{}}"#,
            ),
            ("no event", br#"{"uuid":"u","body":{}}"#),
            ("uuid is an object", br#"{"uuid":{},"event":"/x"}"#),
        ];
        for (what, body) in cases {
            assert!(Notification::parse(body).is_err(), "{what}");
        }
        assert_eq!(
            Notification::parse(b"{nope").unwrap_err(),
            ParseError::MalformedJson
        );
    }
}
