//! A fetch request: what the relay publishes, with an accepted notification's hint messages, to the
//! internal requests topic, and what the fetcher consumes. Planned in the same spool entry as the
//! hints, it is as durable as they are; keyed by extension (account for account-level resources),
//! every request for one extension lands on one partition, so one replica fetches it, in order.

use serde::{Deserialize, Serialize};

use super::fetch_table::{FetchTable, Resource};
use super::get_template::KeyScope;
use super::rate_limits::RateGroup;
use crate::routing::{OutboundMessage, Topic, TopicError};

/// What to do for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Request {
    /// Fetch one resource and publish its state.
    #[serde(rename_all = "camelCase")]
    Fetch {
        state_topic: String,
        key: String,
        path: String,
        group: String,
        paged: bool,
        /// `extension` or `account`: whether a 404 means the extension is gone.
        scope: String,
        /// The `rc-message-id` of the hint message that caused the fetch.
        cause: String,
        accepted_at: String,
        /// How many times the fetch kept failing and was queued again behind the others.
        #[serde(default, skip_serializing_if = "is_zero")]
        requeued: u32,
    },
    /// The extension is gone: a tombstone on each of `topics`.
    #[serde(rename_all = "camelCase")]
    Delete {
        key: String,
        topics: Vec<String>,
        cause: String,
        accepted_at: String,
    },
}

impl Request {
    pub fn fetch(resource: &Resource, cause: String, accepted_at: &str) -> Request {
        Request::Fetch {
            state_topic: resource.key.topic.to_string(),
            key: resource.key.key.clone(),
            path: resource.path.clone(),
            group: resource.group.label().to_string(),
            paged: resource.paged,
            scope: match resource.scope {
                KeyScope::Extension => "extension",
                KeyScope::Account => "account",
            }
            .to_string(),
            cause,
            accepted_at: accepted_at.to_string(),
            requeued: 0,
        }
    }

    /// Tombstones for `extension_id` on `topics`.
    pub fn delete(
        extension_id: &str,
        topics: &[Topic],
        cause: String,
        accepted_at: &str,
    ) -> Request {
        Request::Delete {
            key: extension_id.to_string(),
            topics: topics.iter().map(Topic::to_string).collect(),
            cause,
            accepted_at: accepted_at.to_string(),
        }
    }

    /// The key requests are partitioned and coalesced by.
    pub fn key(&self) -> &str {
        match self {
            Request::Fetch { key, .. } | Request::Delete { key, .. } => key,
        }
    }

    /// The rate-limit group of a fetch.
    pub fn group(&self) -> Option<RateGroup> {
        match self {
            Request::Fetch { group, .. } => group.parse().ok(),
            Request::Delete { .. } => None,
        }
    }

    /// The message the relay publishes.
    pub fn message(&self, requests_topic: &Topic) -> OutboundMessage {
        OutboundMessage {
            topic: requests_topic.to_string(),
            key: self.key().to_string(),
            headers: vec![("content-type".into(), "application/json".into())],
            value: serde_json::to_string(self).expect("a request always serialises"),
            hint_label: "none".into(),
            tombstone: false,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// State topics in the routing table: which hints are fetched, and where requests queue.
#[derive(Debug, Clone)]
pub struct StateRouting {
    pub fetches: FetchTable,
    pub requests_topic: Topic,
    /// The consumer group every replica's fetcher joins.
    pub fetcher_group: String,
    /// The reconciliation sweeps' index: compacted, one partition, keyed by extension id.
    pub index_topic: Topic,
    /// The consumer group whose owner of the index topic's one partition runs the sweeps.
    pub sweeper_group: String,
    /// What every state topic's name starts with: `<prefix>state.`
    pub state_prefix: String,
}

impl StateRouting {
    /// The state routing of `prefix`, with its internal topics and groups.
    pub fn new(prefix: &str, fetches: FetchTable) -> Result<StateRouting, TopicError> {
        Ok(StateRouting {
            fetches,
            requests_topic: Topic::parse(format!("{prefix}state-requests"))?,
            fetcher_group: format!("{prefix}state-fetchers"),
            index_topic: Topic::parse(format!("{prefix}state-index"))?,
            sweeper_group: format!("{prefix}state-sweepers"),
            state_prefix: format!("{prefix}state."),
        })
    }
}
