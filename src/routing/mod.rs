//! The hint table, topic derivation and message planning. Pure: a notification in, a [`RoutePlan`] out.
//!
//! Each hint names one or more target APIs; each target API derives a topic. A hint yields exactly one
//! message on each distinct topic its targets derive to. Unknown hints, unroutable events and other
//! event filters land on `<prefix>unrouted`; deletions and creations on the Get Extension Info topic;
//! subscription reminders on `<prefix>subscription`.

use std::collections::BTreeMap;

use crate::notification::{EventKind, ExtensionChange, Hint, Notification, is_resource_id};
use crate::state::request::StateRouting;
use cloudevents::CloudEvents;

/// The default topic prefix.
pub const DEFAULT_TOPIC_PREFIX: &str = "ringcentral.";

// The table is its own file so that the load generator (`bench/loadgen.rs`, built without Cargo)
// includes the same list.
#[path = "../hint_table.rs"]
mod hint_table;
pub use hint_table::BUILT_IN_HINTS;

/// The target API of Get Extension Info: where deletions and creations go.
const EXTENSION_INFO_TARGET: &str = "account/~/extension/~/";

/// The header naming why a notification was carried raw on the unrouted topic.
pub const UNROUTED_REASON_HEADER: &str = "rc-unrouted-reason";
/// What a fetch request adds to what every message of its notification repeats: its JSON field
/// names, a GET path and a state topic (each at most a few hundred bytes for any configured GET).
const STATE_REQUEST_BYTES: usize = 1024;

pub mod cloudevents;
mod limits;
mod plan;
mod topic;
pub use limits::{FanoutLimits, Overflow};
use plan::{Destination, Planner};
pub use plan::{HeaderName, Outbound, OutboundMessage, RECONCILED_HEADER, Reconciled, RoutePlan};
pub use topic::{TargetApi, Topic, TopicError};

/// Where one hint goes: each distinct topic with the first target API (in table order) that derives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintRoute {
    pub targets: Vec<TargetApi>,
    pub topics: Vec<(Topic, TargetApi)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutingError {
    #[error("hint `{hint}`: {source}")]
    Topic {
        hint: String,
        #[source]
        source: TopicError,
    },
    #[error("hint `{0}` has no target API")]
    NoTarget(String),
    #[error("topic prefix: {0}")]
    Prefix(TopicError),
}

/// The effective routing: the built-in hint table with the configuration's overrides and additions.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    hints: BTreeMap<Hint, HintRoute>,
    extension_topic: Topic,
    subscription_topic: Topic,
    unrouted_topic: Topic,
    dead_letter_topic: Topic,
    extension_target: TargetApi,
    limits: FanoutLimits,
    /// With `--state`: the fetch table and the requests topic.
    state: Option<StateRouting>,
    /// Unless `--cloudevents false`: the `ce_` headers.
    cloudevents: Option<CloudEvents>,
}

impl RoutingTable {
    /// Builds and validates the table. `overrides` replace a built-in hint's targets or add a hint.
    pub fn new(
        prefix: &str,
        overrides: &BTreeMap<String, Vec<String>>,
    ) -> Result<RoutingTable, RoutingError> {
        let with_prefix = |suffix: &str| Topic::parse(format!("{prefix}{suffix}"));
        // The prefix alone must be made of legal characters (an empty prefix is allowed).
        if !prefix.is_empty() {
            Topic::parse(prefix).map_err(RoutingError::Prefix)?;
        }
        let mut entries: BTreeMap<String, Vec<String>> = BUILT_IN_HINTS
            .iter()
            .map(|(hint, targets)| {
                (
                    (*hint).to_string(),
                    targets.iter().map(|t| (*t).to_string()).collect(),
                )
            })
            .collect();
        entries.extend(overrides.clone());

        let mut hints = BTreeMap::new();
        for (hint, targets) in entries {
            let targets: Vec<TargetApi> = targets.into_iter().map(TargetApi::new).collect();
            let mut topics: Vec<(Topic, TargetApi)> = Vec::new();
            for target in &targets {
                let suffix = target.topic_suffix();
                let topic = with_prefix(&suffix).map_err(|source| RoutingError::Topic {
                    hint: hint.clone(),
                    source,
                })?;
                if !topics.iter().any(|(t, _)| *t == topic) {
                    topics.push((topic, target.clone()));
                }
            }
            if topics.is_empty() {
                return Err(RoutingError::NoTarget(hint));
            }
            hints.insert(Hint::new(hint), HintRoute { targets, topics });
        }
        let fixed = |suffix: &str| with_prefix(suffix).map_err(RoutingError::Prefix);
        Ok(RoutingTable {
            hints,
            extension_topic: fixed(&TargetApi::new(EXTENSION_INFO_TARGET).topic_suffix())?,
            subscription_topic: fixed("subscription")?,
            unrouted_topic: fixed("unrouted")?,
            dead_letter_topic: fixed("dead-letter")?,
            extension_target: TargetApi::new(EXTENSION_INFO_TARGET),
            limits: FanoutLimits::default(),
            state: None,
            cloudevents: None,
        })
    }

    /// The same table with other fan-out caps.
    pub fn with_limits(mut self, limits: FanoutLimits) -> RoutingTable {
        self.limits = limits;
        self
    }

    /// The same table giving every message CloudEvents headers.
    pub fn with_cloudevents(mut self, cloudevents: CloudEvents) -> RoutingTable {
        self.cloudevents = Some(cloudevents);
        self
    }

    /// The CloudEvents headers messages get, if they get them.
    pub fn cloudevents(&self) -> Option<&CloudEvents> {
        self.cloudevents.as_ref()
    }

    /// The same table planning a fetch request for every fetchable hint (`--state`).
    pub fn with_state(mut self, state: StateRouting) -> RoutingTable {
        self.state = Some(state);
        self
    }

    /// The state topics, created compacted: none without `--state`.
    pub fn state_topics(&self) -> Vec<Topic> {
        self.state.as_ref().map_or_else(Vec::new, |s| {
            let mut topics: Vec<Topic> = s
                .fetches
                .state_topics()
                .into_iter()
                .map(|s| s.topic)
                .collect();
            topics.push(s.index_topic.clone());
            topics
        })
    }

    /// Topics that must have exactly one partition: the sweeps' index, whose one partition's
    /// owner in the sweepers' group is the one replica that runs sweeps.
    pub fn single_partition_topics(&self) -> Vec<Topic> {
        self.state
            .as_ref()
            .map_or_else(Vec::new, |s| vec![s.index_topic.clone()])
    }

    /// The fetch table and requests topic, with `--state`.
    pub fn state(&self) -> Option<&StateRouting> {
        self.state.as_ref()
    }

    /// The same table with another dead-letter topic than `<prefix>dead-letter`.
    pub fn with_dead_letter_topic(mut self, topic: Topic) -> RoutingTable {
        self.dead_letter_topic = topic;
        self
    }

    pub fn limits(&self) -> FanoutLimits {
        self.limits
    }

    pub fn route(&self, hint: &Hint) -> Option<&HintRoute> {
        self.hints.get(hint)
    }

    /// Every hint with its route, in name order: what `routes` prints.
    pub fn hints(&self) -> impl Iterator<Item = (&Hint, &HintRoute)> {
        self.hints.iter()
    }

    pub fn is_known(&self, hint: &Hint) -> bool {
        self.hints.contains_key(hint)
    }

    /// Every topic the bridge may publish to (without the dead-letter topic), sorted, without repeats.
    pub fn topics(&self) -> Vec<Topic> {
        let mut topics: Vec<Topic> = self
            .hints
            .values()
            .flat_map(|r| r.topics.iter().map(|(t, _)| t.clone()))
            .chain([
                self.extension_topic.clone(),
                self.subscription_topic.clone(),
                self.unrouted_topic.clone(),
            ])
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }

    pub fn unrouted_topic(&self) -> &Topic {
        &self.unrouted_topic
    }

    /// Where deletions and creations go (Get Extension Info's topic).
    pub fn extension_topic(&self) -> &Topic {
        &self.extension_topic
    }

    /// Where subscription reminders go.
    pub fn subscription_topic(&self) -> &Topic {
        &self.subscription_topic
    }

    /// Where the relay puts messages Kafka rejects for good.
    pub fn dead_letter_topic(&self) -> &Topic {
        &self.dead_letter_topic
    }

    /// Every topic this configuration publishes to, the dead-letter topic included: what `topics
    /// ensure` creates and start-up checks.
    pub fn published_topics(&self) -> Vec<Topic> {
        let mut topics = self.topics();
        topics.push(self.dead_letter_topic.clone());
        if let Some(state) = &self.state {
            topics.push(state.requests_topic.clone());
            topics.push(state.index_topic.clone());
            topics.extend(state.fetches.state_topics().into_iter().map(|s| s.topic));
        }
        topics.sort();
        topics.dedup();
        topics
    }

    /// Plans every message of one notification. `raw` is the body as received (for unrouted events);
    /// `received_at` is when the bridge accepted it (RFC 3339). A notification over a cap is planned as
    /// one raw message on the unrouted topic: neither lost nor amplified.
    pub fn plan(&self, notification: &Notification, raw: &[u8], received_at: &str) -> RoutePlan {
        let mut planner = Planner {
            table: self,
            notification,
            received_at,
            messages: Vec::new(),
            time: None,
        };
        let mut unrouted_reason = None;
        match &notification.kind {
            EventKind::ExtensionInfo { account_id, change } => {
                match self.overflow(notification, account_id, std::slice::from_ref(change)) {
                    Some(over) => unrouted_reason = Some(over.label()),
                    None => planner.change(account_id, change),
                }
            }
            EventKind::ExtensionList {
                account_id,
                changes,
            } => match self.overflow(notification, account_id, changes) {
                Some(over) => unrouted_reason = Some(over.label()),
                None => {
                    for change in changes {
                        planner.change(account_id, change);
                    }
                }
            },
            EventKind::SubscriptionReminder => planner.reminder(),
            EventKind::Other => planner.raw(raw, None),
            EventKind::Unroutable(invalid) => unrouted_reason = Some(invalid.label()),
        }
        if let Some(reason) = unrouted_reason {
            planner.raw(raw, Some(reason));
        }
        RoutePlan {
            uuid: notification.uuid.clone(),
            kind: notification.kind.label().to_string(),
            messages: planner.messages,
            unrouted_reason,
        }
    }

    /// The first cap these changes go over, counted and sized without serializing anything: the cost
    /// of the check grows with the body, never with what the body would fan out to.
    fn overflow(
        &self,
        n: &Notification,
        account_id: &str,
        changes: &[ExtensionChange],
    ) -> Option<Overflow> {
        let limits = &self.limits;
        if changes.len() > limits.max_changes {
            return Some(Overflow::Changes);
        }
        if changes
            .iter()
            .any(|c| c.hints.len() > limits.max_hints_per_change)
        {
            return Some(Overflow::Hints);
        }
        // Fields every message of this notification repeats, in its value and headers; the trace
        // headers (stamped on the built plan) and the CloudEvents headers at their largest.
        let cloudevents = self.cloudevents.as_ref().map_or(0, |ce| {
            ce.fixed_bytes() + n.uuid.len() + n.timestamp_len().max(40) + account_id.len()
        });
        let common = 512
            + crate::trace_context::MAX_HEADER_BYTES
            + cloudevents
            + 3 * n.uuid.len()
            + n.event.len()
            + n.timestamp_len()
            + 2 * n.subscription_id.as_deref().map_or(0, str::len)
            + n.owner_id.as_deref().map_or(0, str::len)
            + 2 * account_id.len();
        let (mut messages, mut bytes) = (0usize, 0usize);
        for change in changes {
            let per_change = common
                + 6 * change.extension_id.len()
                + 2 * change.event_type.len()
                + change
                    .hints
                    .iter()
                    .map(|h| h.as_str().len() + 3)
                    .sum::<usize>();
            // `ce_id` repeats the message id (topic and hint), `ce_type` the hint.
            let ce = usize::from(self.cloudevents.is_some());
            self.for_each_destination(change, |d| {
                messages += 1;
                bytes += per_change
                    + (2 + ce) * d.topic.as_str().len()
                    + 2 * d.target.map_or(0, |t| t.as_str().len())
                    + (3 + 2 * ce) * d.hint.map_or(0, |h| h.as_str().len());
            });
            if self.state.is_some() {
                // At most one fetch request per distinct hint, one for a change without hints; each
                // carries a path, a state topic and a cause besides what every message repeats.
                let requests = change.hints.len().max(1);
                messages += requests;
                bytes += requests * (per_change + STATE_REQUEST_BYTES);
            }
            if messages > limits.max_messages {
                return Some(Overflow::Messages);
            }
            if bytes > limits.max_plan_bytes {
                return Some(Overflow::Bytes);
            }
        }
        None
    }

    /// Where the messages of one change go, in publication order: the one place that decides it, for
    /// both the caps and the plan. A visitor rather than an iterator: nothing is allocated per hint.
    fn for_each_destination<'a>(
        &'a self,
        change: &'a ExtensionChange,
        mut visit: impl FnMut(Destination<'a>),
    ) {
        if change.event_type != "Update" || change.hints.is_empty() {
            // Delete, Create, or an Update without hints: the extension itself changed.
            return visit(Destination {
                topic: &self.extension_topic,
                target: Some(&self.extension_target),
                hint: None,
            });
        }
        for hint in &change.hints {
            match self.route(hint) {
                Some(route) => {
                    for (topic, target) in &route.topics {
                        visit(Destination {
                            topic,
                            target: Some(target),
                            hint: Some(hint),
                        });
                    }
                }
                None => visit(Destination {
                    topic: &self.unrouted_topic,
                    target: None,
                    hint: Some(hint),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use serde_json::json;

    fn table() -> RoutingTable {
        RoutingTable::new(DEFAULT_TOPIC_PREFIX, &BTreeMap::new()).unwrap()
    }

    fn plan(body: Value) -> RoutePlan {
        let raw = body.to_string();
        let n = Notification::parse(raw.as_bytes()).unwrap();
        table().plan(&n, raw.as_bytes(), "2026-01-01T00:00:00Z")
    }

    fn update(hints: &[&str]) -> Value {
        json!({
            "uuid": "n1", "event": "/restapi/v1.0/account/37439510/extension/8475874957",
            "timestamp": "2013-06-14T12:00:00.000Z", "subscriptionId": "sub-1", "ownerId": "8475874957",
            "body": {"extensionId": "8475874957", "eventType": "Update", "hints": hints}
        })
    }

    fn value(m: &OutboundMessage) -> Value {
        serde_json::from_str(&m.value).unwrap()
    }

    fn over_cap(p: &RoutePlan, reason: &str) {
        assert_eq!(p.messages.len(), 1, "carried once");
        let m = &p.messages[0];
        assert_eq!(m.topic, "ringcentral.unrouted");
        assert_eq!(m.header(UNROUTED_REASON_HEADER), Some(reason));
        assert_eq!(p.unrouted_reason, Some(reason));
    }

    /// A planned message's headers stay in the one list they were planned in: the contract's, the
    /// CloudEvents attributes when they are on and the longest trace context, stamped after
    /// planning, all fit.
    #[test]
    fn a_message_keeps_the_header_list_it_was_planned_in() {
        let over_the_cap: Vec<String> = (0..1920).map(|i| format!("Hint{i}")).collect();
        let over_the_cap: Vec<&str> = over_the_cap.iter().map(String::as_str).collect();
        let tracestate = format!("v={}", "x".repeat(510));
        let trace = crate::trace_context::TraceContext::continue_or_start(
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some(&tracestate),
        );
        let with_attributes =
            table().with_cloudevents(CloudEvents::new("https://platform.ringcentral.com"));
        for (table, cloudevents) in [(with_attributes, true), (table(), false)] {
            for body in [
                update(&["ExtensionInfo", "NoSuchHint"]),
                update(&over_the_cap),
            ] {
                let raw = body.to_string();
                let n = Notification::parse(raw.as_bytes()).unwrap();
                let mut p = table.plan(&n, raw.as_bytes(), "2026-01-01T00:00:00Z");
                trace.stamp(&mut p);
                for m in &p.messages {
                    assert!(m.header("tracestate").is_some(), "every header stamped");
                    let capacity = plan::max_headers(cloudevents);
                    assert_eq!(m.headers.capacity(), capacity, "{:?}", m.headers);
                }
            }
        }
    }

    #[test]
    fn a_change_over_the_hint_cap_is_carried_raw_once() {
        let hints: Vec<String> = (0..1920).map(|i| format!("Hint{i}")).collect();
        let hints: Vec<&str> = hints.iter().map(String::as_str).collect();
        let body = update(&hints);
        let p = plan(body.clone());
        over_cap(&p, "too_many_hints");
        assert_eq!(
            value(&p.messages[0]),
            body,
            "the notification exactly as received"
        );
        assert_eq!(p.messages[0].key, "sub-1");
    }

    #[test]
    fn each_cap_names_itself() {
        let batch = |entries: usize, hints: &[&str]| {
            let entry = json!({"extensionId": "1", "eventType": "Update", "hints": hints});
            json!({"uuid": "b", "event": "/restapi/v1.0/account/~/extension",
                   "body": {"extensions": vec![entry; entries]}})
        };
        let limits = FanoutLimits {
            max_hints_per_change: 12,
            max_changes: 10,
            max_messages: 20,
            max_plan_bytes: 1 << 20,
        };
        let table = table().with_limits(limits);
        let plan_with = |table: &RoutingTable, body: Value| {
            let raw = body.to_string();
            let n = Notification::parse(raw.as_bytes()).unwrap();
            table.plan(&n, raw.as_bytes(), "t")
        };
        over_cap(
            &plan_with(&table, batch(11, &["Limits"])),
            "too_many_changes",
        );
        over_cap(
            &plan_with(&table, batch(7, &["Limits", "CallQueueMembersChange"])),
            "too_many_messages",
        );
        let small = table.clone().with_limits(FanoutLimits {
            max_plan_bytes: 4096,
            ..limits
        });
        over_cap(&plan_with(&small, batch(10, &["Limits"])), "plan_too_large");
        // Exactly at the caps: routed in full.
        let p = plan_with(&table, batch(10, &["Limits", "Features"]));
        assert_eq!(p.messages.len(), 20);
        assert_eq!(p.unrouted_reason, None);
    }

    #[test]
    fn a_body_limit_sized_batch_of_ordinary_entries_is_routed_in_full() {
        let hints: Vec<&str> = BUILT_IN_HINTS.iter().map(|(h, _)| *h).collect();
        let mut entries = Vec::new();
        let mut body = json!({});
        while body.to_string().len() < 64 * 1024 {
            entries.push(
                json!({"extensionId": format!("{}", 100_000 + entries.len()),
                                "eventType": "Update", "hints": hints}),
            );
            body = json!({"uuid": "b", "event": "/restapi/v1.0/account/~/extension",
                          "subscriptionId": "sub-1", "body": {"extensions": entries}});
        }
        let p = plan(body);
        assert_eq!(p.unrouted_reason, None);
        assert_eq!(p.messages.len(), entries.len() * 13);
    }

    #[test]
    fn invalid_ids_are_carried_raw_without_a_key_or_path_from_them() {
        let body = json!({"uuid": "../u", "event": "/restapi/v1.0/account/~/extension/1",
                          "subscriptionId": "../../x?y",
                          "body": {"extensionId": "../../../../oauth/revoke?token=x&",
                                   "eventType": "Update", "hints": ["CompanyNumbers"]}});
        let p = plan(body);
        over_cap(&p, "invalid_extension_id");
        assert_eq!(
            p.messages[0].key, "",
            "neither the subscription id nor the uuid is an id"
        );
        assert!(!p.messages[0].value.contains("resourcePath"));
    }

    #[test]
    fn topic_derivation() {
        let cases = [
            (
                "account/~/extension/~/phone-number",
                "ringcentral.account.extension.phone-number",
            ),
            ("account/~", "ringcentral.account"),
            ("account/~/extension/~/", "ringcentral.account.extension"),
            ("account/~/extension", "ringcentral.account.extension"),
            (
                "account/~/call-queues/~/bulk-assign",
                "ringcentral.account.call-queues.bulk-assign",
            ),
            (
                "/account/~/extension/~/profile-image",
                "ringcentral.account.extension.profile-image",
            ),
            (
                "//account//~//dialing-plan//",
                "ringcentral.account.dialing-plan",
            ),
        ];
        for (target, topic) in cases {
            assert_eq!(
                format!(
                    "{DEFAULT_TOPIC_PREFIX}{}",
                    TargetApi::new(target).topic_suffix()
                ),
                topic,
                "{target}"
            );
        }
    }

    #[test]
    fn every_built_in_hint_goes_to_its_topics() {
        let cases: [(&str, &[&str]); 12] = [
            ("AccountSettings", &["ringcentral.account"]),
            ("AccountStatus", &["ringcentral.account"]),
            ("AnsweringRules", &["ringcentral.account.extension"]),
            (
                "CompanyNumbers",
                &["ringcentral.account.extension.phone-number"],
            ),
            ("DialingPlan", &["ringcentral.account.dialing-plan"]),
            ("ExtensionInfo", &["ringcentral.account.extension"]),
            ("Features", &["ringcentral.account.extension.features"]),
            ("Limits", &["ringcentral.account.extension.features"]),
            ("Permissions", &["ringcentral.account.extension.features"]),
            (
                "ProfileImage",
                &["ringcentral.account.extension.profile-image"],
            ),
            ("VideoConfiguration", &["ringcentral.account.extension"]),
            (
                "CallQueueMembersChange",
                &[
                    "ringcentral.account.extension.call-queues",
                    "ringcentral.account.call-queues.bulk-assign",
                ],
            ),
        ];
        for (hint, topics) in cases {
            let p = plan(update(&[hint]));
            let got: Vec<&str> = p.messages.iter().map(|m| m.topic.as_str()).collect();
            assert_eq!(got, topics, "{hint}");
            for m in &p.messages {
                assert_eq!(m.header("rc-hint"), Some(hint));
                assert_eq!(value(m)["hint"], json!(hint));
            }
        }
    }

    #[test]
    fn features_limits_permissions_are_three_messages_on_one_topic() {
        let p = plan(update(&["Features", "Limits", "Permissions"]));
        assert_eq!(p.messages.len(), 3);
        assert!(
            p.messages
                .iter()
                .all(|m| m.topic == "ringcentral.account.extension.features")
        );
        let ids: std::collections::HashSet<_> = p
            .messages
            .iter()
            .map(|m| m.header("rc-message-id"))
            .collect();
        assert_eq!(ids.len(), 3, "each message has its own id");
    }

    #[test]
    fn resource_path_for_each_target() {
        let cases = [
            ("account/~", "/restapi/v1.0/account/37439510"),
            (
                "account/~/extension/~",
                "/restapi/v1.0/account/37439510/extension/8475874957",
            ),
            (
                "account/~/extension/~/phone-number",
                "/restapi/v1.0/account/37439510/extension/8475874957/phone-number",
            ),
            (
                "account/~/dialing-plan",
                "/restapi/v1.0/account/37439510/dialing-plan",
            ),
            (
                "account/~/extension/~/",
                "/restapi/v1.0/account/37439510/extension/8475874957",
            ),
            (
                "account/~/extension/~/features",
                "/restapi/v1.0/account/37439510/extension/8475874957/features",
            ),
            (
                "/account/~/extension/~/profile-image",
                "/restapi/v1.0/account/37439510/extension/8475874957/profile-image",
            ),
            (
                "account/~/extension",
                "/restapi/v1.0/account/37439510/extension",
            ),
            (
                "account/~/extension/~/call-queues",
                "/restapi/v1.0/account/37439510/extension/8475874957/call-queues",
            ),
            (
                "account/~/call-queues/~/bulk-assign",
                "/restapi/v1.0/account/37439510/call-queues/8475874957/bulk-assign",
            ),
        ];
        for (target, path) in cases {
            assert_eq!(
                TargetApi::new(target).resource_path("37439510", "8475874957"),
                path
            );
        }
        // An account given as `~` in the event filter stays `~`.
        assert_eq!(
            TargetApi::new("account/~/extension/~").resource_path("~", "5"),
            "/restapi/v1.0/account/~/extension/5"
        );
    }

    #[test]
    fn message_contract_of_the_documented_example() {
        let p = plan(update(&["ExtensionInfo", "CompanyNumbers"]));
        assert_eq!(p.messages.len(), 2);
        let m = &p.messages[1];
        assert_eq!(m.topic, "ringcentral.account.extension.phone-number");
        assert_eq!(m.key, "8475874957");
        assert_eq!(
            m.headers,
            vec![
                (
                    "rc-message-id".into(),
                    "n1:8475874957:CompanyNumbers:ringcentral.account.extension.phone-number"
                        .to_string()
                ),
                ("rc-notification-uuid".into(), "n1".into()),
                ("rc-event-type".into(), "Update".into()),
                ("rc-hint".into(), "CompanyNumbers".into()),
                ("rc-subscription-id".into(), "sub-1".into()),
                ("content-type".into(), "application/json".into()),
            ]
        );
        assert_eq!(
            value(m),
            json!({
                "uuid": "n1",
                "event": "/restapi/v1.0/account/37439510/extension/8475874957",
                "timestamp": "2013-06-14T12:00:00.000Z",
                "subscriptionId": "sub-1",
                "ownerId": "8475874957",
                "accountId": "37439510",
                "extensionId": "8475874957",
                "eventType": "Update",
                "hint": "CompanyNumbers",
                "targetApi": "account/~/extension/~/phone-number",
                "resourcePath": "/restapi/v1.0/account/37439510/extension/8475874957/phone-number",
                "hints": ["ExtensionInfo", "CompanyNumbers"],
                "receivedAt": "2026-01-01T00:00:00Z"
            })
        );
    }

    #[test]
    fn video_configuration_is_one_message_with_the_first_target() {
        let p = plan(update(&["VideoConfiguration"]));
        assert_eq!(p.messages.len(), 1);
        assert_eq!(
            value(&p.messages[0])["targetApi"],
            json!("account/~/extension")
        );
    }

    #[test]
    fn unknown_hints_are_carried_on_unrouted() {
        let p = plan(update(&["Teleport", "Limits"]));
        let topics: Vec<&str> = p.messages.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "ringcentral.unrouted",
                "ringcentral.account.extension.features"
            ]
        );
        let m = &p.messages[0];
        assert_eq!(m.header("rc-hint"), Some("Teleport"));
        assert_eq!(m.hint_label, "unknown");
        assert_eq!(value(m)["targetApi"], Value::Null);
        assert_eq!(m.key, "8475874957");
    }

    #[test]
    fn delete_and_create_go_to_the_extension_topic_without_hint() {
        for (event, body) in [
            (
                "/restapi/v1.0/account/~/extension/5",
                json!({"extensionId": "5", "eventType": "Delete"}),
            ),
            (
                "/restapi/v1.0/account/~/extension",
                json!({"extensionId": 5, "eventType": "Create"}),
            ),
        ] {
            let p =
                plan(json!({"uuid": "n2", "event": event, "subscriptionId": "s", "body": body}));
            assert_eq!(p.messages.len(), 1);
            let m = &p.messages[0];
            assert_eq!(m.topic, "ringcentral.account.extension");
            assert_eq!(m.key, "5");
            assert_eq!(m.header("rc-hint"), None);
            let event_type = body["eventType"].as_str().unwrap();
            assert_eq!(m.header("rc-event-type"), Some(event_type));
            assert_eq!(
                m.header("rc-message-id").unwrap(),
                format!("n2:5:{event_type}:ringcentral.account.extension")
            );
            assert_eq!(value(m)["hint"], Value::Null);
            assert_eq!(
                value(m)["resourcePath"],
                json!("/restapi/v1.0/account/~/extension/5")
            );
        }
    }

    #[test]
    fn batched_extension_list_routes_each_entry() {
        let p = plan(
            json!({"uuid": "n3", "event": "/restapi/v1.0/account/12/extension", "body": {"extensions": [
            {"extensionId": "1", "eventType": "Create"},
            {"extensionId": 2, "eventType": "Update", "hints": ["CallQueueMembersChange"]}]}}),
        );
        let got: Vec<(&str, &str)> = p
            .messages
            .iter()
            .map(|m| (m.topic.as_str(), m.key.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("ringcentral.account.extension", "1"),
                ("ringcentral.account.extension.call-queues", "2"),
                ("ringcentral.account.call-queues.bulk-assign", "2"),
            ]
        );
    }

    #[test]
    fn reminder_goes_to_subscription_keyed_by_subscription() {
        let p = plan(
            json!({"uuid": "n4", "event": "/restapi/v1.0/subscription/~?threshold=120&interval=30",
                            "subscriptionId": "sub-9", "body": {"expiresIn": 100}}),
        );
        assert_eq!(p.messages.len(), 1);
        let m = &p.messages[0];
        assert_eq!(m.topic, "ringcentral.subscription");
        assert_eq!(m.key, "sub-9");
        assert_eq!(
            m.header("rc-message-id"),
            Some("n4::SubscriptionReminder:ringcentral.subscription")
        );
        assert_eq!(value(m)["body"], json!({"expiresIn": 100}));
    }

    #[test]
    fn other_events_are_carried_raw_on_unrouted() {
        let raw = r#"{"uuid":"n5","event":"/restapi/v1.0/account/~/presence","subscriptionId":"s","body":{"x":1}}"#;
        let n = Notification::parse(raw.as_bytes()).unwrap();
        let p = table().plan(&n, raw.as_bytes(), "t");
        assert_eq!(p.messages.len(), 1);
        assert_eq!(p.messages[0].topic, "ringcentral.unrouted");
        assert_eq!(p.messages[0].value, raw);
        assert_eq!(p.messages[0].key, "s");
    }

    #[test]
    fn overrides_replace_and_add_hints() {
        let overrides = BTreeMap::from([
            (
                "Limits".to_string(),
                vec!["account/~/extension/~/limits".to_string()],
            ),
            (
                "Holidays".to_string(),
                vec!["account/~/holidays".to_string()],
            ),
        ]);
        let t = RoutingTable::new("rc-", &overrides).unwrap();
        let topics = |h: &str| -> Vec<String> {
            t.route(&Hint::new(h))
                .unwrap()
                .topics
                .iter()
                .map(|(t, _)| t.to_string())
                .collect()
        };
        assert_eq!(topics("Limits"), ["rc-account.extension.limits"]);
        assert_eq!(topics("Holidays"), ["rc-account.holidays"]);
        assert_eq!(topics("Features"), ["rc-account.extension.features"]);
    }

    #[test]
    fn invalid_topics_are_rejected_at_start_up() {
        let bad = |target: &str| {
            RoutingTable::new(
                DEFAULT_TOPIC_PREFIX,
                &BTreeMap::from([("X".to_string(), vec![target.to_string()])]),
            )
        };
        assert!(matches!(
            bad("account/~/ext ension"),
            Err(RoutingError::Topic { .. })
        ));
        assert!(matches!(
            bad(&"a/".repeat(200)),
            Err(RoutingError::Topic { .. })
        ));
        assert!(matches!(
            RoutingTable::new(
                DEFAULT_TOPIC_PREFIX,
                &BTreeMap::from([("X".to_string(), vec![])])
            ),
            Err(RoutingError::NoTarget(_))
        ));
        assert!(matches!(
            RoutingTable::new("bad prefix!", &BTreeMap::new()),
            Err(RoutingError::Prefix(_))
        ));
        assert_eq!(Topic::parse(".."), Err(TopicError::Reserved("..".into())));
        assert!(Topic::parse("a".repeat(249)).is_ok());
        assert!(Topic::parse("a".repeat(250)).is_err());
    }

    #[test]
    fn fetch_requests_count_against_the_message_cap() {
        use crate::state::fetch_table::FetchTable;
        use crate::state::request::StateRouting;
        let entry = json!({"extensionId": "1", "eventType": "Update", "hints": ["ExtensionInfo", "Features"]});
        let body = json!({"uuid": "b", "event": "/restapi/v1.0/account/~/extension",
                          "body": {"extensions": vec![entry; 7]}});
        let raw = body.to_string();
        let n = Notification::parse(raw.as_bytes()).unwrap();
        let limits = FanoutLimits {
            max_messages: 20,
            ..FanoutLimits::default()
        };
        let without = table().with_limits(limits);
        let with = without.clone().with_state(StateRouting {
            fetches: FetchTable::built_in(DEFAULT_TOPIC_PREFIX).unwrap(),
            ..StateRouting::new(
                DEFAULT_TOPIC_PREFIX,
                FetchTable::built_in(DEFAULT_TOPIC_PREFIX).unwrap(),
            )
            .unwrap()
        });
        let plan = without.plan(&n, raw.as_bytes(), "t");
        assert_eq!((plan.messages.len(), plan.unrouted_reason), (14, None));
        // 14 hint messages and 14 fetch requests: over 20.
        over_cap(&with.plan(&n, raw.as_bytes(), "t"), "too_many_messages");
    }

    #[test]
    fn state_adds_fetch_requests_and_leaves_the_hint_messages_byte_identical() {
        use crate::state::fetch_table::FetchTable;
        use crate::state::request::{Request, StateRouting};
        let with_state = table().with_state(StateRouting {
            fetches: FetchTable::built_in(DEFAULT_TOPIC_PREFIX).unwrap(),
            ..StateRouting::new(
                DEFAULT_TOPIC_PREFIX,
                FetchTable::built_in(DEFAULT_TOPIC_PREFIX).unwrap(),
            )
            .unwrap()
        });
        // ExtensionInfo and ProfileImage share one resource; DialingPlan has no GET.
        let body = update(&["ExtensionInfo", "ProfileImage", "Features", "DialingPlan"]);
        let raw = body.to_string();
        let n = Notification::parse(raw.as_bytes()).unwrap();
        let without = table().plan(&n, raw.as_bytes(), "2026-01-01T00:00:00Z");
        let with = with_state.plan(&n, raw.as_bytes(), "2026-01-01T00:00:00Z");
        let (requests, hints): (Vec<_>, Vec<_>) = with
            .messages
            .into_iter()
            .partition(|m| m.topic == "ringcentral.state-requests");
        assert_eq!(
            hints, without.messages,
            "hint topics do not change with state on"
        );
        let requests: Vec<Request> = requests
            .iter()
            .map(|m| serde_json::from_str(&m.value).unwrap())
            .collect();
        let fetched: Vec<(&str, &str)> = requests
            .iter()
            .map(|r| match r {
                Request::Fetch {
                    state_topic, key, ..
                } => (state_topic.as_str(), key.as_str()),
                Request::Delete { .. } => ("delete", ""),
            })
            .collect();
        assert_eq!(
            fetched,
            [
                ("ringcentral.state.account.extension", "8475874957"),
                ("ringcentral.state.account.extension.features", "8475874957"),
            ]
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;
    use serde_json::json;

    fn hint() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(
                BUILT_IN_HINTS
                    .iter()
                    .map(|(h, _)| h.to_string())
                    .collect::<Vec<_>>()
            ),
            "[A-Za-z]{1,12}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Whatever the hints: one message per distinct topic of each known hint, one per unknown
        /// hint, every topic legal, every message id distinct, every key the extension id.
        #[test]
        fn a_plan_has_one_message_per_hint_and_topic(
            hints in proptest::collection::vec(hint(), 1..16),
            extension in 1u64..u64::MAX,
        ) {
            let table = RoutingTable::new(DEFAULT_TOPIC_PREFIX, &BTreeMap::new()).unwrap();
            let body = json!({"uuid": "p", "event": "/restapi/v1.0/account/~/extension/1",
                "body": {"extensionId": extension, "eventType": "Update", "hints": hints}});
            let raw = body.to_string();
            let n = Notification::parse(raw.as_bytes()).unwrap();
            let plan = table.plan(&n, raw.as_bytes(), "t");
            let mut distinct: Vec<&String> = Vec::new();
            for h in &hints {
                if !distinct.contains(&h) {
                    distinct.push(h);
                }
            }
            let expected: usize = distinct
                .iter()
                .map(|h| table.route(&Hint::new(h.as_str())).map_or(1, |r| r.topics.len()))
                .sum();
            prop_assert_eq!(plan.messages.len(), expected);
            let ids: std::collections::HashSet<_> =
                plan.messages.iter().map(|m| m.header("rc-message-id")).collect();
            prop_assert_eq!(ids.len(), plan.messages.len());
            for m in &plan.messages {
                prop_assert!(Topic::parse(m.topic.clone()).is_ok());
                prop_assert_eq!(&m.key, &extension.to_string());
            }
        }

        /// Whatever a body under the limit holds (distinct or repeated hints, long hint names,
        /// batches), the plan stays within every cap: counted and sized before serializing, the
        /// estimate never undershoots what is built.
        #[test]
        fn no_body_yields_more_than_the_caps(
            changes in proptest::collection::vec(
                (proptest::collection::vec(prop_oneof![hint(), "[A-Za-z]{40,200}"], 0..40),
                 proptest::sample::select(vec!["Update", "Delete", "Create"])),
                1..20),
            batched in any::<bool>(),
            state in any::<bool>(),
            cloudevents in any::<bool>(),
        ) {
            let limits = FanoutLimits {
                max_hints_per_change: 30,
                max_changes: 30,
                max_messages: 200,
                max_plan_bytes: 64 * 1024,
            };
            let mut table = RoutingTable::new(DEFAULT_TOPIC_PREFIX, &BTreeMap::new())
                .unwrap()
                .with_limits(limits);
            if state {
                // Fetch requests count against the caps like the hint messages they come with.
                table = table.with_state(crate::state::request::StateRouting {
                    fetches: crate::state::fetch_table::FetchTable::built_in(DEFAULT_TOPIC_PREFIX).unwrap(),
                    ..crate::state::request::StateRouting::new(DEFAULT_TOPIC_PREFIX, crate::state::fetch_table::FetchTable::built_in(DEFAULT_TOPIC_PREFIX).unwrap()).unwrap()
                });
            }
            if cloudevents {
                table = table.with_cloudevents(CloudEvents::new("https://platform.ringcentral.com"));
            }
            let entries: Vec<Value> = changes
                .iter()
                .enumerate()
                .map(|(i, (hints, event_type))| {
                    json!({"extensionId": i + 1, "eventType": event_type, "hints": hints})
                })
                .collect();
            let body = if batched {
                json!({"uuid": "p", "event": "/restapi/v1.0/account/~/extension",
                       "subscriptionId": "s", "body": {"extensions": entries}})
            } else {
                json!({"uuid": "p", "event": "/restapi/v1.0/account/~/extension/1",
                       "subscriptionId": "s", "body": entries[0]})
            };
            let raw = body.to_string();
            prop_assume!(raw.len() <= 64 * 1024);
            let n = Notification::parse(raw.as_bytes()).unwrap();
            let mut plan = table.plan(&n, raw.as_bytes(), "2026-01-01T00:00:00Z");
            // The trace headers are stamped on the built plan: the longest a client can send.
            let tracestate = format!("v={}", "x".repeat(510));
            crate::trace_context::TraceContext::continue_or_start(
                Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                Some(&tracestate),
            )
            .stamp(&mut plan);
            prop_assert!(plan.messages.len() <= limits.max_messages);
            prop_assert!(plan.payload_bytes() <= limits.max_plan_bytes.max(2 * raw.len()),
                "{} bytes planned", plan.payload_bytes());
            if plan.unrouted_reason.is_some() {
                prop_assert_eq!(plan.messages.len(), 1);
            }
        }

        /// Parsing arbitrary bytes never panics: a bad body is an error, not a crash.
        #[test]
        fn parsing_arbitrary_bodies_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Notification::parse(&body);
        }
    }
}
