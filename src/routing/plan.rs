//! Planning: every Kafka message of one notification, built once routing has decided where each
//! change goes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cloudevents::{self, Event, Kind, Source};
use super::*;
use crate::state::request::Request;

/// One message of a change: its topic, the target API it stands for (none for an unknown hint) and
/// its hint (none when the extension itself changed).
pub(super) struct Destination<'a> {
    pub(super) topic: &'a Topic,
    pub(super) target: Option<&'a TargetApi>,
    pub(super) hint: Option<&'a Hint>,
}

/// Every Kafka message planned from one notification, in publication order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePlan {
    pub uuid: String,
    /// The event kind label, for metrics and logs.
    pub kind: String,
    pub messages: Vec<OutboundMessage>,
    /// Why the notification was carried raw on the unrouted topic (a cap, an invalid id); for metrics.
    #[serde(skip)]
    pub unrouted_reason: Option<&'static str>,
}

impl RoutePlan {
    /// The size of everything this plan will put on the wire: what the spool accounts for.
    pub fn payload_bytes(&self) -> usize {
        self.messages.iter().map(OutboundMessage::wire_bytes).sum()
    }
}

/// The most headers a planned message carries: six of the contract's (`rc-message-id` to
/// `content-type`; an unrouted message has its `rc-unrouted-reason` but no event type or hint), the
/// trace context, stamped after planning, and when they are on the CloudEvents attributes with
/// the trace context again in the tracing extension's names. Each message's list is allocated
/// once, at this size.
pub(super) fn max_headers(cloudevents: bool) -> usize {
    let trace = crate::trace_context::HEADERS;
    let attributes = if cloudevents {
        cloudevents::HEADERS + trace
    } else {
        0
    };
    6 + trace + attributes
}

/// A header's name: one of the contract's fixed names, borrowed rather than allocated per message
/// (a message carries up to a dozen headers); owned when read back from a stored record.
pub type HeaderName = std::borrow::Cow<'static, str>;

/// One Kafka record, ready to produce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMessage {
    pub topic: String,
    pub key: String,
    pub headers: Vec<(HeaderName, String)>,
    /// The JSON value as text.
    pub value: String,
    /// The hint this message is for; a metrics label (`unknown` for a hint not in the table).
    pub hint_label: String,
    /// A state topic's tombstone: published with no value at all (`value` is empty).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tombstone: bool,
}

impl OutboundMessage {
    /// This message as a dead letter: on `topic`, saying where it was going and why Kafka refused it.
    pub fn dead_letter(&self, topic: &Topic, reason: &str) -> OutboundMessage {
        let mut letter = self.clone();
        letter.topic = topic.to_string();
        letter
            .headers
            .push(("rc-original-topic".into(), self.topic.clone()));
        letter
            .headers
            .push(("rc-dead-letter-reason".into(), reason.into()));
        letter
    }

    /// The first header named `name` (callable without [`Outbound`] in scope).
    pub fn header(&self, name: &str) -> Option<&str> {
        Outbound::header(self, name)
    }

    pub fn wire_bytes(&self) -> usize {
        self.topic.len()
            + self.key.len()
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }
}

/// What publishing needs of a message: an [`OutboundMessage`] as planned, or one read in place from
/// the spool's stored record (`spool::record`), whose fields stay where they were read instead of
/// each becoming a `String` of its own.
pub trait Outbound {
    fn topic(&self) -> &str;
    fn key(&self) -> &str;
    /// Names and values, in order; each value UTF-8 (bytes, as Kafka takes it, like the value).
    fn headers(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])>;
    /// The JSON value, UTF-8 (empty for a tombstone): bytes, as Kafka takes it, so that a value read
    /// in place from the spool is not checked again.
    fn value(&self) -> &[u8];
    /// The metrics label of the message's hint.
    fn hint_label(&self) -> &str;
    /// Published with no value at all.
    fn tombstone(&self) -> bool;
    /// The message as an owned [`OutboundMessage`]: for a dead letter, which outlives the round.
    fn to_outbound(&self) -> OutboundMessage;

    fn header(&self, name: &str) -> Option<&str> {
        let (_, value) = self.headers().find(|(n, _)| *n == name)?;
        std::str::from_utf8(value).ok()
    }
}

impl Outbound for OutboundMessage {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn key(&self) -> &str {
        &self.key
    }
    fn headers(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(n, v)| (&**n, v.as_bytes()))
    }
    fn value(&self) -> &[u8] {
        self.value.as_bytes()
    }
    fn hint_label(&self) -> &str {
        &self.hint_label
    }
    fn tombstone(&self) -> bool {
        self.tombstone
    }
    fn to_outbound(&self) -> OutboundMessage {
        self.clone()
    }
}

/// What a reconciliation sweep tells hint consumers about one extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciled {
    /// The extension is new, or its record changed, without a notification saying so.
    Changed,
    /// The extension is gone without a notification saying so.
    Gone,
}

/// The header naming the sweep that found a difference.
pub const RECONCILED_HEADER: &str = "rc-reconciled";

impl RoutingTable {
    /// The synthetic message a sweep publishes for one extension: the hint message format, with
    /// `eventType` `Reconciled` on the topic of Get Extension Info's hint, or `Delete` on the
    /// extension topic; `uuid` is the sweep's id, the message id is derived from the sweep and the
    /// extension, and `rc-reconciled` names the sweep.
    pub fn reconciled_message(
        &self,
        what: Reconciled,
        sweep_id: &str,
        account_id: &str,
        extension_id: &str,
        at: &str,
    ) -> OutboundMessage {
        let (event_type, topic) = match what {
            Reconciled::Changed => {
                let info = self
                    .route(&Hint::new("ExtensionInfo"))
                    .and_then(|r| r.topics.first())
                    .map_or(&self.extension_topic, |(t, _)| t);
                ("Reconciled", info)
            }
            Reconciled::Gone => ("Delete", &self.extension_topic),
        };
        let timestamp = Value::String(at.to_string());
        let value = MessageValue {
            head: HeadFields {
                uuid: sweep_id,
                event: &format!("/restapi/v1.0/account/{account_id}/extension/{extension_id}"),
                timestamp: &timestamp,
                subscription_id: None,
                owner_id: None,
                account_id: Some(account_id),
                extension_id: Some(extension_id),
                event_type: Some(event_type),
            },
            own: OwnFields {
                hint: None,
                target_api: None,
                resource_path: None,
            },
            tail: TailFields {
                hints: &[],
                received_at: at,
                body: None,
            },
        };
        let topic = topic.as_str();
        let message_id = format!("{sweep_id}:{extension_id}:{event_type}:{topic}");
        let mut headers = vec![
            ("rc-message-id".into(), message_id.clone()),
            ("rc-notification-uuid".into(), sweep_id.into()),
            ("rc-event-type".into(), event_type.into()),
            ("content-type".into(), "application/json".into()),
            (RECONCILED_HEADER.into(), sweep_id.into()),
        ];
        if let Some(ce) = &self.cloudevents {
            let kind = match what {
                Reconciled::Changed => Kind::Reconciled,
                Reconciled::Gone => Kind::Extension("Delete"),
            };
            ce.push_headers(
                &mut headers,
                &Event {
                    id: &message_id,
                    kind,
                    source: Source::Account(account_id),
                    time: at,
                    subject: Some(extension_id),
                },
            );
        }
        OutboundMessage {
            topic: topic.to_string(),
            key: extension_id.to_string(),
            headers,
            value: value.to_json(None),
            hint_label: "none".into(),
            tombstone: false,
        }
    }
}

/// The JSON value of a routed message (the message contract): the fields every message of a change
/// shares around the message's own, in this order.
#[derive(Serialize)]
struct MessageValue<'a> {
    #[serde(flatten)]
    head: HeadFields<'a>,
    #[serde(flatten)]
    own: OwnFields<'a>,
    #[serde(flatten)]
    tail: TailFields<'a>,
}

impl MessageValue<'_> {
    /// The value as JSON text: the fields every message of one change shares are serialized once
    /// (`shared`, from [`SharedParts::of`]) and the message's own (`hint`, `targetApi`,
    /// `resourcePath`) spliced between them, giving exactly what serializing it whole would.
    fn to_json(&self, shared: Option<&SharedParts>) -> String {
        let Some(shared) = shared else {
            return serde_json::to_string(self).expect("a message value always serialises");
        };
        let own = serde_json::to_string(&self.own).expect("a message value always serialises");
        // `{"uuid":...,"eventType":...` + `,` + `"hint":...,"resourcePath":...` + `,` + `"hints":...}`
        let mut json = String::with_capacity(shared.head.len() + own.len() + shared.tail.len());
        json.push_str(&shared.head);
        json.push(',');
        json.push_str(&own[1..own.len() - 1]);
        json.push(',');
        json.push_str(&shared.tail);
        json
    }
}

/// The fields of [`MessageValue`] before a message's own, and after them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HeadFields<'a> {
    uuid: &'a str,
    event: &'a str,
    timestamp: &'a Value,
    subscription_id: Option<&'a str>,
    owner_id: Option<&'a str>,
    account_id: Option<&'a str>,
    extension_id: Option<&'a str>,
    event_type: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OwnFields<'a> {
    hint: Option<&'a str>,
    target_api: Option<&'a str>,
    resource_path: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TailFields<'a> {
    hints: &'a [Hint],
    received_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a Value>,
}

/// One change's shared fields as JSON text: `head` without its closing brace, `tail` without its
/// opening one. The `hints` array is serialized once per change instead of once per message.
struct SharedParts {
    head: String,
    tail: String,
}

impl SharedParts {
    fn of(value: &MessageValue<'_>) -> SharedParts {
        let head = serde_json::to_string(&value.head).expect("a message value always serialises");
        let tail = serde_json::to_string(&value.tail).expect("a message value always serialises");
        SharedParts {
            head: head[..head.len() - 1].to_string(),
            tail: tail[1..].to_string(),
        }
    }
}

pub(super) struct Planner<'a> {
    pub(super) table: &'a RoutingTable,
    pub(super) notification: &'a Notification,
    pub(super) received_at: &'a str,
    pub(super) messages: Vec<OutboundMessage>,
    /// The notification's `ce_time`, worked out for its first message (it parses the timestamp).
    pub(super) time: Option<String>,
}

/// What distinguishes one message of a notification from the others.
struct Part<'a> {
    topic: &'a Topic,
    account_id: Option<&'a str>,
    change: Option<&'a ExtensionChange>,
    hint: Option<&'a Hint>,
    hint_label: &'a str,
    target: Option<&'a TargetApi>,
    /// For messages without an event type: the kind that stands in for it in the message id.
    kind_label: &'a str,
    /// The change's shared value fields, serialized by its first message for the others.
    shared: Option<&'a mut Option<SharedParts>>,
}

impl Planner<'_> {
    pub(super) fn change(&mut self, account_id: &str, change: &ExtensionChange) {
        let table = self.table;
        let mut shared = None;
        table.for_each_destination(change, |d| {
            let hint_label = match (d.hint, d.target) {
                (None, _) => "none",
                (Some(hint), Some(_)) => hint.as_str(),
                (Some(_), None) => "unknown",
            };
            self.push(Part {
                topic: d.topic,
                account_id: Some(account_id),
                change: Some(change),
                hint: d.hint,
                hint_label,
                target: d.target,
                kind_label: "",
                shared: Some(&mut shared),
            });
        });
        if let Some(state) = &table.state {
            self.state_requests(state, account_id, change);
        }
    }

    /// With `--state`: a request to fetch each distinct resource the change names (the extension's
    /// record for a creation or an update without hints), or to tombstone a deleted extension.
    fn state_requests(&mut self, state: &StateRouting, account_id: &str, change: &ExtensionChange) {
        let n = self.notification;
        let extension = change.extension_id.as_str();
        let cause = |what: &str, topic: &Topic| format!("{}:{extension}:{what}:{topic}", n.uuid);
        let own_record = || {
            let cause = cause(&change.event_type, &self.table.extension_topic);
            (Hint::new("ExtensionInfo"), cause)
        };
        let wanted: Vec<(Hint, String)> = match change.event_type.as_str() {
            "Delete" => {
                let cause = cause("Delete", &self.table.extension_topic);
                let topics = state.fetches.per_extension_topics();
                let delete = Request::delete(extension, &topics, cause, self.received_at);
                self.messages.push(delete.message(&state.requests_topic));
                return;
            }
            "Update" if !change.hints.is_empty() => change
                .hints
                .iter()
                .map(|hint| {
                    let topic = self.table.route(hint).and_then(|r| r.topics.first());
                    let topic = topic.map_or(&self.table.unrouted_topic, |(t, _)| t);
                    (hint.clone(), cause(hint.as_str(), topic))
                })
                .collect(),
            _ => vec![own_record()],
        };
        let mut seen = std::collections::HashSet::new();
        for (hint, cause) in wanted {
            let Ok(fetch) = state.fetches.fetch_for(&hint) else {
                continue;
            };
            // Ids were validated when the notification was parsed; a refusal here fetches nothing.
            let Ok(resource) = fetch.resource(account_id, extension) else {
                continue;
            };
            if seen.insert(resource.key.clone()) {
                let request = Request::fetch(&resource, cause, self.received_at);
                self.messages.push(request.message(&state.requests_topic));
            }
        }
    }

    pub(super) fn reminder(&mut self) {
        self.push(Part {
            topic: &self.table.subscription_topic,
            account_id: None,
            change: None,
            hint: None,
            hint_label: "none",
            target: None,
            kind_label: "SubscriptionReminder",
            shared: None,
        });
    }

    /// An event the bridge does not route: the notification exactly as received, with the reason
    /// when it was refused routing (a cap, an invalid id).
    pub(super) fn raw(&mut self, raw: &[u8], reason: Option<&'static str>) {
        let n = self.notification;
        let topic = self.table.unrouted_topic.as_str();
        let message_id = format!("{}::Unrouted:{topic}", n.uuid);
        let mut headers = self.headers(&message_id, None, None);
        if let Some(reason) = reason {
            headers.push((UNROUTED_REASON_HEADER.into(), reason.into()));
        }
        if let Some(ce) = &self.table.cloudevents {
            ce.push_headers(
                &mut headers,
                &Event {
                    id: &message_id,
                    kind: Kind::Unrouted,
                    source: Source::Api,
                    time: self.time(),
                    subject: None,
                },
            );
        }
        self.messages.push(OutboundMessage {
            topic: topic.to_string(),
            key: fallback_key(n).to_string(),
            headers,
            value: String::from_utf8_lossy(raw).into_owned(),
            hint_label: "none".into(),
            tombstone: false,
        });
    }

    fn push(&mut self, part: Part<'_>) {
        let n = self.notification;
        let extension_id = part.change.map(|c| c.extension_id.as_str());
        let event_type = part.change.map(|c| c.event_type.as_str());
        let hint = part.hint.map(Hint::as_str);
        let resource_path = part
            .target
            .zip(part.account_id.zip(extension_id))
            .map(|(t, (account, extension))| t.resource_path(account, extension));
        let value = MessageValue {
            head: HeadFields {
                uuid: &n.uuid,
                event: &n.event,
                timestamp: &n.timestamp,
                subscription_id: n.subscription_id.as_deref(),
                owner_id: n.owner_id.as_deref(),
                account_id: part.account_id,
                extension_id,
                event_type,
            },
            own: OwnFields {
                hint,
                target_api: part.target.map(TargetApi::as_str),
                resource_path: resource_path.as_deref(),
            },
            tail: TailFields {
                hints: part.change.map(|c| c.hints.as_slice()).unwrap_or_default(),
                received_at: self.received_at,
                body: part.change.is_none().then_some(&n.body),
            },
        };
        let topic = part.topic.as_str();
        let message_id = format!(
            "{}:{}:{}:{topic}",
            n.uuid,
            extension_id.unwrap_or_default(),
            hint.or(event_type).unwrap_or(part.kind_label),
        );
        let mut headers = self.headers(&message_id, event_type, hint);
        if let Some(ce) = &self.table.cloudevents {
            let (kind, source) = match (hint, event_type, part.account_id) {
                (Some(hint), _, Some(account)) => (Kind::Hint(hint), Source::Account(account)),
                (None, Some(event_type), Some(account)) => {
                    (Kind::Extension(event_type), Source::Account(account))
                }
                _ => (
                    Kind::SubscriptionReminder,
                    n.subscription_id
                        .as_deref()
                        .map_or(Source::Api, Source::Subscription),
                ),
            };
            ce.push_headers(
                &mut headers,
                &Event {
                    id: &message_id,
                    kind,
                    source,
                    time: self.time(),
                    subject: extension_id,
                },
            );
        }
        self.messages.push(OutboundMessage {
            topic: topic.to_string(),
            key: extension_id.unwrap_or_else(|| fallback_key(n)).to_string(),
            headers,
            value: match part.shared {
                Some(shared) => {
                    value.to_json(Some(shared.get_or_insert_with(|| SharedParts::of(&value))))
                }
                None => value.to_json(None),
            },
            hint_label: part.hint_label.to_string(),
            tombstone: false,
        });
    }

    /// The notification's time, for `ce_time`.
    fn time(&mut self) -> &str {
        let (notification, received_at) = (self.notification, self.received_at);
        self.time.get_or_insert_with(|| {
            cloudevents::normalise_time(notification.timestamp.as_str(), received_at)
        })
    }

    /// The contract's headers of a message, in a list with room for all it will carry.
    fn headers(
        &self,
        message_id: &str,
        event_type: Option<&str>,
        hint: Option<&str>,
    ) -> Vec<(HeaderName, String)> {
        let n = self.notification;
        let mut headers = Vec::with_capacity(max_headers(self.table.cloudevents.is_some()));
        headers.push(("rc-message-id".into(), message_id.to_string()));
        headers.push(("rc-notification-uuid".into(), n.uuid.clone()));
        if let Some(event_type) = event_type {
            headers.push(("rc-event-type".into(), event_type.into()));
        }
        if let Some(hint) = hint {
            headers.push(("rc-hint".into(), hint.into()));
        }
        if let Some(subscription) = &n.subscription_id {
            headers.push(("rc-subscription-id".into(), subscription.clone()));
        }
        headers.push(("content-type".into(), "application/json".into()));
        headers
    }
}

/// The key of a message without an extension id: the subscription id, else the notification uuid,
/// each only when it looks like an id (a key is not a place for whatever a client sent); else none.
fn fallback_key(n: &Notification) -> &str {
    [n.subscription_id.as_deref(), Some(n.uuid.as_str())]
        .into_iter()
        .flatten()
        .find(|id| is_resource_id(id))
        .unwrap_or_default()
}

#[cfg(test)]
mod splice {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A value spliced from its change's shared parts is byte for byte the value serialized
        /// whole, whatever the fields hold (quotes, escapes, non-ASCII, absent fields).
        #[test]
        fn a_spliced_value_is_the_value_serialized_whole(
            texts in proptest::collection::vec(any::<String>(), 8),
            present in proptest::collection::vec(any::<bool>(), 6),
            hints in proptest::collection::vec("[A-Za-z\"\\\\é]{0,12}", 0..6),
        ) {
            let hints: Vec<Hint> = hints.iter().map(Hint::new).collect();
            let timestamp = Value::String(texts[2].clone());
            let some = |i: usize, text: &str| present[i].then_some(text.to_string());
            let (subscription, owner, hint, target, path) = (
                some(0, &texts[3]), some(1, &texts[4]), some(2, &texts[5]), some(3, &texts[6]),
                some(4, &texts[7]),
            );
            let value = MessageValue {
                head: HeadFields {
                    uuid: &texts[0],
                    event: &texts[1],
                    timestamp: &timestamp,
                    subscription_id: subscription.as_deref(),
                    owner_id: owner.as_deref(),
                    account_id: Some("~"),
                    extension_id: Some("101"),
                    event_type: Some("Update"),
                },
                own: OwnFields {
                    hint: hint.as_deref(),
                    target_api: target.as_deref(),
                    resource_path: path.as_deref(),
                },
                tail: TailFields {
                    hints: &hints,
                    received_at: &texts[0],
                    body: None,
                },
            };
            let shared = SharedParts::of(&value);
            prop_assert_eq!(value.to_json(Some(&shared)), value.to_json(None));
        }
    }
}
