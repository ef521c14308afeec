//! The AsyncAPI 3.0 document of a configuration: one channel per topic the bridge publishes to
//! (the address is the topic's name, overrides and added hints included), each with the messages
//! it carries, their payload and header schemas (the JSON Schemas of `schemas/`, embedded so the
//! document stands alone), the Kafka message binding with the key's schema, and the Kafka channel
//! binding with partitions, replicas and, for state topics, the compaction policy.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::config::Settings;
use crate::routing::Topic;

/// The version of the Kafka bindings used.
const KAFKA_BINDING_VERSION: &str = "0.5.0";

/// The schemas of `schemas/`, by component name, embedded so the document stands alone.
const SCHEMAS: [(&str, &str); 13] = [
    ("hint", include_str!("../schemas/hint.json")),
    ("unknown-hint", include_str!("../schemas/unknown-hint.json")),
    (
        "extension-event",
        include_str!("../schemas/extension-event.json"),
    ),
    ("reconciled", include_str!("../schemas/reconciled.json")),
    (
        "subscription-reminder",
        include_str!("../schemas/subscription-reminder.json"),
    ),
    ("unrouted", include_str!("../schemas/unrouted.json")),
    ("state-record", include_str!("../schemas/state-record.json")),
    ("headers-hint", include_str!("../schemas/headers/hint.json")),
    (
        "headers-subscription-reminder",
        include_str!("../schemas/headers/subscription-reminder.json"),
    ),
    (
        "headers-unrouted",
        include_str!("../schemas/headers/unrouted.json"),
    ),
    (
        "headers-state-record",
        include_str!("../schemas/headers/state-record.json"),
    ),
    (
        "headers-state-tombstone",
        include_str!("../schemas/headers/state-tombstone.json"),
    ),
    (
        "headers-dead-letter",
        include_str!("../schemas/headers/dead-letter.json"),
    ),
];

/// A kind of message: its component name, what it is, its payload and headers schemas, and whether
/// its key is an extension id (else a subscription id, or an account id for account state).
struct MessageKind {
    name: &'static str,
    title: &'static str,
    summary: &'static str,
    payload: Option<&'static str>,
    headers: &'static str,
}

const HINT: MessageKind = MessageKind {
    name: "hint",
    title: "Hint",
    summary: "One hint of an extension's change: the resource its target API names changed.",
    payload: Some("hint"),
    headers: "headers-hint",
};
const EXTENSION_EVENT: MessageKind = MessageKind {
    name: "extensionEvent",
    title: "Extension created, deleted or updated",
    summary: "An extension's Create or Delete, or an Update without hints.",
    payload: Some("extension-event"),
    headers: "headers-hint",
};
const RECONCILED: MessageKind = MessageKind {
    name: "reconciled",
    title: "Reconciled",
    summary: "A sweep found a change (eventType Reconciled) or a deletion (Delete) no notification told.",
    payload: Some("reconciled"),
    headers: "headers-hint",
};
const REMINDER: MessageKind = MessageKind {
    name: "subscriptionReminder",
    title: "Subscription reminder",
    summary: "RingCentral's reminder that the webhook subscription is about to expire.",
    payload: Some("subscription-reminder"),
    headers: "headers-subscription-reminder",
};
const UNKNOWN_HINT: MessageKind = MessageKind {
    name: "unknownHint",
    title: "Unknown hint",
    summary: "A hint the routing table does not know, never dropped.",
    payload: Some("unknown-hint"),
    headers: "headers-hint",
};
const UNROUTED: MessageKind = MessageKind {
    name: "unrouted",
    title: "Unrouted notification",
    summary: "A notification the bridge does not route, as received (with rc-unrouted-reason when refused routing).",
    payload: Some("unrouted"),
    headers: "headers-unrouted",
};
const STATE: MessageKind = MessageKind {
    name: "stateRecord",
    title: "State record",
    summary: "The current state of one resource as RingCentral's GET returned it (pages merged into one record).",
    payload: Some("state-record"),
    headers: "headers-state-record",
};
const STATE_TOMBSTONE: MessageKind = MessageKind {
    name: "stateTombstone",
    title: "State tombstone",
    summary: "The resource is gone (its extension was deleted): no value, so compaction removes the key.",
    payload: None,
    headers: "headers-state-tombstone",
};
const DEAD_LETTER: MessageKind = MessageKind {
    name: "deadLetter",
    title: "Dead letter",
    summary: "A message Kafka refused for good, as it was, with where it was going and why.",
    payload: None,
    headers: "headers-dead-letter",
};

/// The document for `settings`.
pub fn document(settings: &Settings) -> Value {
    let routing = &settings.routing;
    // Topic -> (what it carries, its messages, compacted).
    let mut channels: BTreeMap<Topic, (Vec<String>, Vec<&MessageKind>, bool)> = BTreeMap::new();
    let mut add = |topic: &Topic, what: String, kind: &'static MessageKind, compacted: bool| {
        let channel = channels.entry(topic.clone()).or_default();
        if !channel.0.contains(&what) {
            channel.0.push(what);
        }
        if !channel.1.iter().any(|k| k.name == kind.name) {
            channel.1.push(kind);
        }
        channel.2 |= compacted;
    };
    for (hint, route) in routing.hints() {
        for (topic, target) in &route.topics {
            add(topic, format!("{hint} ({})", target.as_str()), &HINT, false);
        }
    }
    let extension = routing.extension_topic();
    add(
        extension,
        "Create, Delete, Update without hints".into(),
        &EXTENSION_EVENT,
        false,
    );
    if routing.state().is_some() {
        add(extension, "reconciliation".into(), &RECONCILED, false);
    }
    add(
        routing.subscription_topic(),
        "subscription reminders".into(),
        &REMINDER,
        false,
    );
    let unrouted = routing.unrouted_topic();
    add(unrouted, "unknown hints".into(), &UNKNOWN_HINT, false);
    add(unrouted, "other notifications".into(), &UNROUTED, false);
    add(
        routing.dead_letter_topic(),
        "dead letters".into(),
        &DEAD_LETTER,
        false,
    );
    if let Some(state) = routing.state() {
        for state_topic in state.fetches.state_topics() {
            let hints: Vec<String> = state
                .fetches
                .hints()
                .filter(|(_, f)| f.is_ok_and(|f| f.topic.topic == state_topic.topic))
                .map(|(hint, _)| hint.to_string())
                .collect();
            let what = format!("state of {}", hints.join(", "));
            add(&state_topic.topic, what.clone(), &STATE, true);
            if state_topic.is_per_extension() {
                add(&state_topic.topic, what, &STATE_TOMBSTONE, true);
            }
        }
    }

    let mut channel_objects = Map::new();
    let mut operations = Map::new();
    for (topic, (carries, kinds, compacted)) in &channels {
        let id = channel_id(topic);
        let messages: Map<String, Value> = kinds
            .iter()
            .map(|k| {
                (
                    k.name.to_string(),
                    json!({"$ref": format!("#/components/messages/{}", k.name)}),
                )
            })
            .collect();
        let mut binding = json!({
            "partitions": settings.partitions.get(),
            "replicas": settings.replication_factor.get(),
            "bindingVersion": KAFKA_BINDING_VERSION,
        });
        if *compacted {
            binding["topicConfiguration"] = json!({"cleanup.policy": ["compact"]});
        }
        channel_objects.insert(
            id.clone(),
            json!({
                "address": topic.as_str(),
                "description": format!("Carries: {}.", carries.join("; ")),
                "messages": messages,
                "bindings": {"kafka": binding},
            }),
        );
        let refs: Vec<Value> = kinds
            .iter()
            .map(|k| json!({"$ref": format!("#/channels/{id}/messages/{}", k.name)}))
            .collect();
        operations.insert(
            format!("receive-{id}"),
            json!({
                "action": "receive",
                "channel": {"$ref": format!("#/channels/{id}")},
                "summary": format!("Consume {topic}."),
                "messages": refs,
            }),
        );
    }

    let mut messages = Map::new();
    for kind in [
        &HINT,
        &EXTENSION_EVENT,
        &RECONCILED,
        &REMINDER,
        &UNROUTED,
        &STATE,
        &DEAD_LETTER,
    ] {
        let mut message = json!({
            "name": kind.name,
            "title": kind.title,
            "summary": kind.summary,
            "contentType": "application/json",
            "headers": {"$ref": format!("#/components/schemas/{}", kind.headers)},
            "bindings": {"kafka": {
                "key": {"type": "string", "description": "The extension id (decimal); for messages without one, the subscription id, or the account id of account-level state."},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }},
        });
        if let Some(payload) = kind.payload {
            message["payload"] = json!({"$ref": format!("#/components/schemas/{payload}")});
        }
        messages.insert(kind.name.to_string(), message);
    }
    let schemas: Map<String, Value> = SCHEMAS
        .iter()
        .map(|(name, text)| {
            let schema: Value = serde_json::from_str(text).expect("the embedded schemas are JSON");
            (name.to_string(), schema)
        })
        .collect();

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "rc-kafka-bridge",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "RingCentral Extension Info webhook notifications, one Kafka message per hint, on topics derived from each hint's target API; with --state, the current state of each changed resource on compacted topics. Every message is also a CloudEvent (binary mode, ce_ headers) unless --cloudevents false. Deduplicate on rc-message-id; order holds per key.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": settings.brokers.as_deref().unwrap_or("localhost:9092"),
                "protocol": "kafka",
                "description": "The cluster the bridge publishes to.",
            }
        },
        "channels": channel_objects,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": schemas,
        },
    })
}

/// A channel id from a topic name: AsyncAPI ids are free-form, but `.` reads badly in `$ref`s.
fn channel_id(topic: &Topic) -> String {
    topic.as_str().replace('.', "-")
}

/// The document as YAML. `serde_json`'s exact numbers do not survive another serializer, so the
/// document is converted to a YAML value first.
pub fn to_yaml(document: &Value) -> String {
    yaml_serde::to_string(&yaml(document)).expect("a YAML value always serialises")
}

fn yaml(value: &Value) -> yaml_serde::Value {
    match value {
        Value::Null => yaml_serde::Value::Null,
        Value::Bool(b) => yaml_serde::Value::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => yaml_serde::Value::Number(u.into()),
            (_, Some(i), _) => yaml_serde::Value::Number(i.into()),
            (_, _, Some(f)) => yaml_serde::Value::Number(f.into()),
            _ => yaml_serde::Value::String(n.to_string()),
        },
        Value::String(s) => yaml_serde::Value::String(s.clone()),
        Value::Array(items) => yaml_serde::Value::Sequence(items.iter().map(yaml).collect()),
        Value::Object(map) => yaml_serde::Value::Mapping(
            map.iter()
                .map(|(k, v)| (yaml_serde::Value::String(k.clone()), yaml(v)))
                .collect(),
        ),
    }
}
