//! librdkafka properties: where they come from (`[kafka.properties]`, `RCKB_KAFKA_PROPERTIES`,
//! `RCKB_KAFKA_PROPERTY_<KEY>`, `--kafka-property`) and how they are kept out of logs. A value may be
//! a password: no error and no printout here ever shows one.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;

use serde::Deserialize;

use super::ConfigError;

/// One `KEY=VALUE` librdkafka property. Errors name the key at most, never the text: a value may be
/// a password, and text without `=` may be a piece of one.
pub(super) fn parse_property(s: &str) -> Result<(String, String), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(
            "expected KEY=VALUE, found no `=` (the text is not shown: it may be a secret)".into(),
        );
    };
    let key = key.trim();
    if key.is_empty() {
        return Err("expected KEY=VALUE, found an empty key".into());
    }
    Ok((key.to_string(), value.trim().to_string()))
}

/// Parses `--kafka-property`. clap's own message for a rejected value repeats the value, which may
/// be a password; this parser's errors name the key at most.
#[derive(Clone)]
pub(super) struct PropertyParser;

impl clap::builder::TypedValueParser for PropertyParser {
    type Value = (String, String);

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<Self::Value, clap::Error> {
        let refuse = |message: String| {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                format!("--kafka-property: {message}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse("is not UTF-8 (not shown)".into()))?;
        parse_property(text).map_err(refuse)
    }
}

/// librdkafka properties as given. Printing them hides every value whose key looks secret
/// (`sasl.password`, `ssl.key.password`, `sasl.oauthbearer.client.secret`, ...).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl std::ops::Deref for KafkaProperties {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Whether a librdkafka property's value is a secret, going by its name (`sasl.password`,
/// `ssl.key.password`, `sasl.oauthbearer.client.secret`, `sasl.jaas.config`, ...).
fn is_secret_property(key: &str) -> bool {
    [
        "password",
        "secret",
        "key",
        "token",
        "jaas",
        "oauthbearer.config",
    ]
    .iter()
    .any(|s| key.contains(s))
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                (
                    k,
                    if is_secret_property(k) {
                        "***"
                    } else {
                        v.as_str()
                    },
                )
            }))
            .finish()
    }
}

impl KafkaProperties {
    /// `text` (a librdkafka error) with every property value replaced by `<value of KEY>`, so that
    /// a message about a property names its key only. Values of four characters or more, and those
    /// of secret-looking keys, are masked wherever they appear; other short ones (`1`, `all`) only
    /// as whole words, so that the numbers and words of the message stay readable.
    pub fn redact(&self, text: &str) -> String {
        let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        // Every occurrence is found in the original text, then overlapping ones are masked as one:
        // masking values one after another could leave a piece of a longer one in view.
        let mut spans: Vec<(usize, usize, &str)> = Vec::new();
        for (key, value) in self.0.iter().filter(|(_, v)| !v.is_empty()) {
            let anywhere = value.len() >= 4 || is_secret_property(key);
            for (at, _) in text.match_indices(value.as_str()) {
                let end = at + value.len();
                let whole_word = !is_word(text[..at].chars().next_back())
                    && !is_word(text[end..].chars().next());
                if anywhere || whole_word {
                    spans.push((at, end, key));
                }
            }
        }
        spans.sort_by_key(|&(at, end, _)| (at, std::cmp::Reverse(end)));
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        let mut spans = spans.into_iter().peekable();
        while let Some((at, mut end, key)) = spans.next() {
            while let Some(&(_, next_end, _)) = spans.peek().filter(|(next, _, _)| *next < end) {
                end = end.max(next_end);
                spans.next();
            }
            out.push_str(&text[copied..at]);
            out.push_str(&format!("<value of {key}>"));
            copied = end;
        }
        out.push_str(&text[copied..]);
        out
    }

    /// Asks librdkafka whether it accepts every property, as it would when a client is made; the
    /// error names the key only.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: "kafka.properties",
            message,
        };
        for (key, value) in &self.0 {
            if key.contains('\0') || value.contains('\0') {
                return Err(invalid(format!("`{key}`: contains a NUL character")));
            }
        }
        let config: rdkafka::ClientConfig = self.0.clone().into_iter().collect();
        match config.create_native_config() {
            Ok(_) => Ok(()),
            Err(rdkafka::error::KafkaError::ClientConfig(result, _, key, _)) => {
                use rdkafka::types::RDKafkaConfRes as R;
                let why = match result {
                    R::RD_KAFKA_CONF_UNKNOWN => "no such librdkafka property (check the spelling)",
                    _ => {
                        "librdkafka refuses this value (not shown: it may be a secret); see \
                         librdkafka's CONFIGURATION.md for the allowed values"
                    }
                };
                Err(invalid(format!("`{key}`: {why}")))
            }
            Err(e) => Err(invalid(self.redact(&e.to_string()))),
        }
    }
}

/// The variable that lists librdkafka properties: `KEY=VALUE,KEY=VALUE`.
pub const KAFKA_PROPERTIES_VAR: &str = "RCKB_KAFKA_PROPERTIES";
/// The prefix of one-property variables: `RCKB_KAFKA_PROPERTY_SASL_PASSWORD` sets `sasl.password`.
pub const KAFKA_PROPERTY_VAR_PREFIX: &str = "RCKB_KAFKA_PROPERTY_";

/// The librdkafka properties given in `vars` (the process environment): first the items of
/// `RCKB_KAFKA_PROPERTIES`, split on commas (`\,` is a comma inside a value, `\\` a backslash),
/// then one property per `RCKB_KAFKA_PROPERTY_<KEY>` variable, whose value is taken whole; for one
/// key, the latter wins. `<KEY>` is the property's name upper-cased with `.` as `_`. An empty
/// variable counts as not set. Errors name the variable, never a value.
pub fn kafka_properties_from_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut list = Vec::new();
    let mut single = BTreeMap::new();
    for (name, value) in vars {
        let Some(name) = name.to_str() else { continue };
        let is_list = name == KAFKA_PROPERTIES_VAR;
        let key = name.strip_prefix(KAFKA_PROPERTY_VAR_PREFIX);
        if !is_list && key.is_none() {
            continue;
        }
        let refuse = |message: &str| ConfigError::Environment {
            variable: name.to_string(),
            message: message.to_string(),
        };
        let value = value
            .into_string()
            .map_err(|_| refuse("is not UTF-8 (the value is not shown)"))?;
        if value.is_empty() {
            continue;
        }
        match key {
            None => {
                for (n, item) in split_escaped_list(&value).iter().enumerate() {
                    if item.trim().is_empty() {
                        continue;
                    }
                    let property = parse_property(item).map_err(|e| {
                        refuse(&format!(
                            "item {}: {e}; write a comma inside a value as `\\,`, or set the \
                             property alone with {KAFKA_PROPERTY_VAR_PREFIX}<KEY>",
                            n + 1
                        ))
                    })?;
                    list.push(property);
                }
            }
            Some(key) => {
                let valid =
                    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    return Err(refuse(
                        "must be RCKB_KAFKA_PROPERTY_ followed by the property's name in capitals, \
                         with `_` for `.` (RCKB_KAFKA_PROPERTY_SASL_PASSWORD for sasl.password)",
                    ));
                }
                let property = key.to_ascii_lowercase().replace('_', ".");
                if let Some(other) = single.insert(property.clone(), (name.to_string(), value)) {
                    return Err(refuse(&format!(
                        "sets `{property}`, as {} does: keep one of them",
                        other.0
                    )));
                }
            }
        }
    }
    list.extend(single.into_iter().map(|(key, (_, value))| (key, value)));
    Ok(list)
}

/// Splits on `,` except where escaped: `\,` is a comma, `\\` a backslash, any other `\` itself.
pub(super) fn split_escaped_list(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut item = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(&next @ (',' | '\\'))) => {
                item.push(next);
                chars.next();
            }
            (',', _) => items.push(std::mem::take(&mut item)),
            _ => item.push(c),
        }
    }
    items.push(item);
    items
}

/// librdkafka properties the bridge owns: setting them would break its delivery guarantees or
/// duplicate a first-class setting.
pub(super) const OWNED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "use --brokers"),
    (
        "enable.idempotence",
        "the bridge always produces idempotently",
    ),
    ("acks", "the bridge always waits for acks=all"),
    (
        "request.required.acks",
        "the bridge always waits for acks=all",
    ),
];
