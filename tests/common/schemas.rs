//! Every message the suites read back is checked against its JSON Schema (`schemas/`): the rules of
//! `schemas/index.json` pick the schemas of a record from its topic and headers, as a consumer
//! would, so the schemas and the code cannot drift apart; the internal topics (the fetch queue, the
//! sweeps' index) too.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use super::kafka::Received;

/// The prefix every suite's topics have.
const PREFIX: &str = "ringcentral.";

struct Schemas {
    index: Value,
    /// Schema path (as `index.json` names it) to its validator.
    validators: BTreeMap<String, jsonschema::Validator>,
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let read = |path: &str| -> Value {
            let text = std::fs::read_to_string(dir.join(path))
                .unwrap_or_else(|e| panic!("schemas/{path}: {e}"));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("schemas/{path}: {e}"))
        };
        let index = read("index.json");
        let mut validators = BTreeMap::new();
        for rule in index["rules"].as_array().expect("rules") {
            for field in ["schema", "headers_schema"] {
                if let Some(path) = rule[field].as_str() {
                    let validator = jsonschema::validator_for(&read(path))
                        .unwrap_or_else(|e| panic!("schemas/{path} is no schema: {e}"));
                    validators.insert(path.to_string(), validator);
                }
            }
        }
        Schemas { index, validators }
    })
}

/// The kind of `topic`, as `index.json`'s `topic_kinds` say.
fn kind(index: &Value, topic: &str) -> String {
    for entry in index["topic_kinds"].as_array().expect("topic_kinds") {
        let named = |field: &str| entry[field].as_str().map(|t| t.replace("{prefix}", PREFIX));
        let matches = match (named("topic"), named("topic_prefix")) {
            (Some(exact), _) => topic == exact,
            (_, Some(prefix)) => topic.starts_with(&prefix),
            _ => entry["otherwise"] == true,
        };
        if matches {
            return entry["kind"].as_str().expect("a kind").to_string();
        }
    }
    panic!("{topic}: no topic kind");
}

fn matches_pattern(pattern: &str, text: &str) -> bool {
    let schema = json!({"type": "string", "pattern": pattern});
    jsonschema::is_valid(&schema, &json!(text))
}

/// Whether `rule` applies to a record of `kind` with `headers`.
fn applies(rule: &Value, kind: &str, headers: &Map<String, Value>, m: &Received) -> bool {
    let when = &rule["when"];
    if when["topic"] != kind {
        return false;
    }
    if let Some(tombstone) = when["tombstone"].as_bool()
        && tombstone != m.tombstone
    {
        return false;
    }
    if let Some(pattern) = when["key"].as_str()
        && !matches_pattern(pattern, &m.key)
    {
        return false;
    }
    let Some(conditions) = when["headers"].as_object() else {
        return true;
    };
    conditions.iter().all(|(name, condition)| match condition {
        Value::Bool(present) => headers.contains_key(name) == *present,
        Value::Array(allowed) => headers.get(name).is_some_and(|v| allowed.contains(v)),
        _ => panic!("index.json: a header condition that is not one: {condition}"),
    })
}

/// Checks `m` (read on `topic`) against the schemas its rule names; panics with what is wrong.
fn check_as(m: &Received, topic: &str, mut headers: Map<String, Value>) {
    let schemas = schemas();
    let kind = kind(&schemas.index, topic);
    let rules: Vec<&Value> = schemas.index["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|rule| applies(rule, &kind, &headers, m))
        .collect();
    let [rule] = rules.as_slice() else {
        panic!(
            "{topic} key {}: {} rules apply, not one: {:?}",
            m.key,
            rules.len(),
            m.headers
        );
    };
    let what = format!("{topic} key {} (rule {})", m.key, rule["name"]);
    let validate = |path: &str, instance: &Value| {
        if let Err(e) = schemas.validators[path].validate(instance) {
            panic!("{what}: {path}: {e} in {instance}");
        }
    };
    validate(
        rule["headers_schema"].as_str().expect("a headers schema"),
        &Value::Object(headers.clone()),
    );
    if let Some(reselect) = rule.get("reselect") {
        let original = reselect["topic_from_header"].as_str().expect("a header");
        let original = headers[original].as_str().expect("a topic").to_string();
        for name in reselect["remove_headers"].as_array().expect("headers") {
            headers.remove(name.as_str().expect("a header name"));
        }
        return check_as(m, &original, headers);
    }
    if let Err(e) = jsonschema::validate(&rule["key_schema"], &json!(m.key)) {
        panic!("{what}: the key: {e}");
    }
    match rule["schema"].as_str() {
        Some(path) => {
            let value: Value = serde_json::from_str(&m.raw)
                .unwrap_or_else(|e| panic!("{what}: a value that is not JSON: {e}"));
            validate(path, &value);
        }
        None => assert!(m.tombstone, "{what}: a value where the contract has none"),
    }
}

/// Checks a record read back against its schemas.
pub fn check(m: &Received) {
    let headers: Map<String, Value> = m
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), Value::String(value.clone())))
        .collect();
    check_as(m, &m.topic, headers);
}
