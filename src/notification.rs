//! RingCentral notification types and their lenient parsing.
//!
//! RingCentral's own examples disagree on the shape of a notification: ids arrive as JSON strings or
//! numbers, `uuid` is not always an RFC 4122 UUID, timestamps come in two formats, the Extension List
//! event is sometimes flat and sometimes batched, and hints are an open set. A [`Notification`] can only
//! be built by [`Notification::parse`], which accepts every documented variant and rejects only bodies
//! that are not a notification envelope at all.

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
        f.write_str(&self.0)
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
}

impl EventKind {
    /// A bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            EventKind::ExtensionInfo { .. } => "extension_info",
            EventKind::ExtensionList { .. } => "extension_list",
            EventKind::SubscriptionReminder => "subscription_reminder",
            EventKind::Other => "other",
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

/// An id that RingCentral sends either as a JSON string or as a JSON number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Id {
    Text(String),
    Number(serde_json::Number),
}

impl Id {
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
        let kind = classify(&envelope.event, &envelope.body);
        Ok(Notification {
            uuid,
            event: envelope.event,
            timestamp: envelope.timestamp,
            subscription_id: envelope.subscription_id.map(Id::into_string),
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

fn classify(event: &str, body: &Value) -> EventKind {
    let Some(segments) = filter_segments(event) else {
        return EventKind::Other;
    };
    match segments.as_slice() {
        ["account", account, "extension", extension] => match parse_change(body, Some(extension)) {
            Some(change) => EventKind::ExtensionInfo {
                account_id: (*account).to_string(),
                change,
            },
            None => EventKind::Other,
        },
        ["account", account, "extension"] => match parse_list(body) {
            Some(changes) => EventKind::ExtensionList {
                account_id: (*account).to_string(),
                changes,
            },
            None => EventKind::Other,
        },
        ["subscription", ..] => EventKind::SubscriptionReminder,
        _ => EventKind::Other,
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
    let mut hints: Vec<Hint> = Vec::with_capacity(raw.hints.len());
    for value in raw.hints {
        let hint = match value {
            Value::String(s) => Hint(s),
            other => Hint(other.to_string()),
        };
        if !hint.0.is_empty() && !hints.contains(&hint) {
            hints.push(hint);
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
