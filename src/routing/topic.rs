//! Topic names: a target API and the topic it derives, and Kafka's rules for a name.

use std::fmt;

use serde::Deserialize;

/// A target API as written in the hint table, e.g. `account/~/extension/~/phone-number`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetApi(String);

impl TargetApi {
    pub fn new(target: impl Into<String>) -> Self {
        TargetApi(target.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic name without prefix: trim `/`, split on `/`, drop `~` and empty segments, join with `.`.
    pub fn topic_suffix(&self) -> String {
        self.0
            .split('/')
            .filter(|s| !s.is_empty() && *s != "~")
            .collect::<Vec<_>>()
            .join(".")
    }

    /// `/restapi/v1.0/` + the target with the account `~` replaced by the account id and every other `~`
    /// by the extension id.
    pub fn resource_path(&self, account_id: &str, extension_id: &str) -> String {
        let mut path = String::from("/restapi/v1.0");
        let mut previous = "";
        for segment in self.0.split('/').filter(|s| !s.is_empty()) {
            path.push('/');
            path.push_str(match segment {
                "~" if previous == "account" => account_id,
                "~" => extension_id,
                other => other,
            });
            previous = segment;
        }
        path
    }
}

/// A Kafka topic name that satisfies Kafka's rules. Only [`Topic::parse`] builds one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Topic(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopicError {
    #[error("topic name is empty")]
    Empty,
    #[error("topic `{0}` is longer than 249 characters")]
    TooLong(String),
    #[error("topic `{0}` is not allowed by Kafka")]
    Reserved(String),
    #[error("topic `{0}` has characters outside [a-zA-Z0-9._-]")]
    InvalidCharacter(String),
}

impl Topic {
    pub fn parse(name: impl Into<String>) -> Result<Topic, TopicError> {
        let name = name.into();
        if name.is_empty() {
            return Err(TopicError::Empty);
        }
        if name.len() > 249 {
            return Err(TopicError::TooLong(name));
        }
        if name == "." || name == ".." {
            return Err(TopicError::Reserved(name));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(TopicError::InvalidCharacter(name));
        }
        Ok(Topic(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Topic {
    type Error = TopicError;
    fn try_from(name: String) -> Result<Topic, TopicError> {
        Topic::parse(name)
    }
}

impl std::str::FromStr for Topic {
    type Err = TopicError;
    fn from_str(name: &str) -> Result<Topic, TopicError> {
        Topic::parse(name)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}
