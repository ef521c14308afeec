//! The fetcher: consumes the requests topic as one consumer group shared by every replica (each
//! extension's requests live on one partition, so one replica fetches them, in order), fetches each
//! resource once per batch however many hints asked for it, publishes its state, and commits the
//! requests only once Kafka acknowledged what they caused. RingCentral's budgets are per app and user,
//! so replicas never multiply the calls.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;

use super::fetch::{FetchOutcome, fetch};
use super::fetch_table::{Resource, ResourceKey};
use super::get_template::KeyScope;
use super::limiter::RateLimiter;
use super::request::{Request, StateRouting};
use crate::kafka::{KafkaProducer, Publisher};
use crate::metrics::Metrics;
use crate::ringcentral::RingCentral;
use crate::routing::{OutboundMessage, Topic};
use crate::shutdown::Shutdown;

/// Requests taken per batch: the unit of coalescing and of offset commits.
const BATCH: usize = 500;
/// How long a batch waits for more requests once it has one.
const BATCH_WAIT: Duration = Duration::from_millis(50);
/// Attempts at a resource that fails for another reason than rate limits, before it is put back at
/// the end of the queue (reported, never dropped) so that it does not hold up the others.
const ATTEMPTS: u32 = 4;

pub struct Fetcher {
    consumer: StreamConsumer,
    publisher: Publisher<KafkaProducer>,
    client: Arc<RingCentral>,
    limiter: RateLimiter,
    requests_topic: Topic,
    /// Where a deleted extension leaves tombstones.
    per_extension_topics: Vec<Topic>,
    metrics: Metrics,
    shutdown: Shutdown,
}

impl Fetcher {
    /// Joins the fetchers' consumer group on the requests topic; [`Fetcher::run`] fetches.
    pub fn new(
        config: &ClientConfig,
        state: &StateRouting,
        producer: KafkaProducer,
        client: Arc<RingCentral>,
        metrics: Metrics,
    ) -> Result<Fetcher, KafkaError> {
        let consumer: StreamConsumer = config
            .clone()
            .set("group.id", &state.fetcher_group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        consumer.subscribe(&[state.requests_topic.as_str()])?;
        Ok(Fetcher {
            consumer,
            publisher: Publisher::new(producer, metrics.clone()),
            client,
            limiter: RateLimiter::new(),
            requests_topic: state.requests_topic.clone(),
            per_extension_topics: state.fetches.per_extension_topics(),
            metrics,
            // Replaced by `run`'s.
            shutdown: crate::shutdown::channel().1,
        })
    }

    /// Fetches until the shutdown begins.
    pub async fn run(mut self, shutdown: Shutdown) {
        self.shutdown = shutdown.clone();
        let mut shutdown = shutdown;
        loop {
            let batch = tokio::select! {
                batch = self.next_batch() => batch,
                _ = shutdown.begun() => break,
            };
            for request in coalesce(batch) {
                if !self.handle(request).await {
                    // Shutting down mid-batch: nothing committed, the batch is fetched again.
                    return tracing::info!("state fetcher stopped");
                }
            }
            if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Async) {
                // Not committed means fetched again: a repeated state record, never a lost one.
                tracing::warn!(error = %e, "cannot commit the state requests");
            }
        }
        tracing::info!("state fetcher stopped");
    }

    /// The next requests: waits for one, then takes what else is there within a moment.
    async fn next_batch(&self) -> Vec<Request> {
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            let received = if batch.is_empty() {
                self.consumer.recv().await
            } else {
                match tokio::time::timeout(BATCH_WAIT, self.consumer.recv()).await {
                    Ok(received) => received,
                    Err(_) => break,
                }
            };
            match received {
                Ok(message) => match message.payload().map(serde_json::from_slice::<Request>) {
                    Some(Ok(request)) => batch.push(request),
                    _ => tracing::error!(
                        partition = message.partition(),
                        offset = message.offset(),
                        "a state request that is not one; skipped"
                    ),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read state requests");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        batch
    }

    /// Carries out one request until its state (or tombstones) is acknowledged; `false` when the
    /// shutdown came first.
    async fn handle(&mut self, request: Request) -> bool {
        let (resource, cause, accepted_at) = match &request {
            Request::Delete {
                key,
                topics,
                cause,
                accepted_at,
            } => {
                let topics: Vec<String> = topics.clone();
                return self.tombstones(key, &topics, cause, accepted_at).await;
            }
            Request::Fetch {
                state_topic,
                key,
                path,
                paged,
                scope,
                cause,
                accepted_at,
                ..
            } => {
                let (Ok(topic), Some(group)) =
                    (Topic::parse(state_topic.as_str()), request.group())
                else {
                    tracing::error!(topic = %state_topic, "a state request for no known topic; skipped");
                    return true;
                };
                let scope = match scope.as_str() {
                    "account" => KeyScope::Account,
                    _ => KeyScope::Extension,
                };
                let resource = Resource {
                    key: ResourceKey {
                        topic,
                        key: key.clone(),
                    },
                    scope,
                    path: path.clone(),
                    group,
                    paged: *paged,
                };
                (resource, cause.clone(), accepted_at.clone())
            }
        };
        let mut failures = 0;
        loop {
            let outcome = tokio::select! {
                outcome = fetch(&self.client, &self.limiter, &resource) => outcome,
                _ = self.shutdown.begun() => return false,
            };
            let group = resource.group.label();
            let wait = match outcome {
                FetchOutcome::State(body) => {
                    self.count(group, "ok");
                    let value = String::from_utf8_lossy(&body).into_owned();
                    let message = state_message(&resource, Some(value), &cause);
                    return self.publish(vec![message], &accepted_at).await;
                }
                FetchOutcome::Gone => {
                    self.count(group, "gone");
                    let topics: Vec<String> = self
                        .per_extension_topics
                        .iter()
                        .map(Topic::to_string)
                        .collect();
                    return self
                        .tombstones(&resource.key.key, &topics, &cause, &accepted_at)
                        .await;
                }
                FetchOutcome::RateLimited(pause) => {
                    self.count(group, "rate_limited");
                    self.metrics
                        .state_rate_limit_pauses
                        .with_label_values(&[group])
                        .inc();
                    pause
                }
                FetchOutcome::Unauthorized => {
                    self.count(group, "unauthorized");
                    tracing::error!(path = %resource.path, "RingCentral refuses the bridge's credentials; state fetches wait");
                    Duration::from_secs(60)
                }
                FetchOutcome::Retry(e) => {
                    self.count(group, e.kind.label());
                    failures += 1;
                    if failures >= ATTEMPTS {
                        tracing::error!(path = %resource.path, error = %e.message, "state fetch keeps failing; queued again behind the others");
                        return self.requeue(&request).await;
                    }
                    tracing::warn!(path = %resource.path, error = %e.message, "state fetch failed; retrying");
                    Duration::from_secs(1 << failures)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.begun() => return false,
            }
        }
    }

    fn count(&self, group: &str, outcome: &str) {
        self.metrics
            .state_fetches
            .with_label_values(&[group, outcome])
            .inc();
    }

    async fn tombstones(
        &self,
        key: &str,
        topics: &[String],
        cause: &str,
        accepted_at: &str,
    ) -> bool {
        let messages = topics
            .iter()
            .filter_map(|t| Topic::parse(t.as_str()).ok())
            .map(|topic| {
                let resource = Resource {
                    key: ResourceKey {
                        topic,
                        key: key.to_string(),
                    },
                    scope: KeyScope::Extension,
                    path: String::new(),
                    group: super::rate_limits::RateGroup::Light,
                    paged: false,
                };
                state_message(&resource, None, cause)
            })
            .collect();
        self.publish(messages, accepted_at).await
    }

    /// Puts a request back at the end of the queue.
    async fn requeue(&self, request: &Request) -> bool {
        self.publish(vec![request.message(&self.requests_topic)], "")
            .await
    }

    /// Publishes until Kafka acknowledged every message; `false` when the shutdown came first.
    async fn publish(&self, messages: Vec<OutboundMessage>, accepted_at: &str) -> bool {
        let mut shutdown = self.shutdown.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut all = true;
            for message in &messages {
                let sent = match self.publisher.enqueue(message) {
                    Ok(pending) => self.publisher.acknowledged(pending).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = sent {
                    tracing::warn!(topic = %message.topic, error = %e, "cannot publish state; retrying");
                    all = false;
                    break;
                }
            }
            if all {
                if let Ok(accepted) = time::OffsetDateTime::parse(
                    accepted_at,
                    &time::format_description::well_known::Rfc3339,
                ) {
                    let lag = time::OffsetDateTime::now_utc() - accepted;
                    self.metrics
                        .state_lag
                        .observe(lag.as_seconds_f64().max(0.0));
                }
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.begun() => return false,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// One state record (a tombstone without `value`).
fn state_message(resource: &Resource, value: Option<String>, cause: &str) -> OutboundMessage {
    let fetched_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut headers = vec![
        ("rc-fetched-at".to_string(), fetched_at),
        ("rc-cause".to_string(), cause.to_string()),
    ];
    if !resource.path.is_empty() {
        headers.insert(0, ("rc-resource-path".into(), resource.path.clone()));
    }
    let tombstone = value.is_none();
    if !tombstone {
        headers.push(("content-type".into(), "application/json".into()));
    }
    OutboundMessage {
        topic: resource.key.topic.to_string(),
        key: resource.key.key.clone(),
        headers,
        value: value.unwrap_or_default(),
        hint_label: if tombstone { "tombstone" } else { "state" }.into(),
        tombstone,
    }
}

/// The requests of a batch worth carrying out, in order: a fetch is dropped when a later request
/// for the same resource (a fetch, or the extension's deletion) makes it moot.
fn coalesce(batch: Vec<Request>) -> Vec<Request> {
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut deleted: HashSet<String> = HashSet::new();
    let mut kept: Vec<Request> = batch
        .into_iter()
        .rev()
        .filter(|request| match request {
            Request::Fetch {
                state_topic,
                key,
                scope,
                ..
            } => {
                let moot = scope == "extension" && deleted.contains(key);
                !moot && seen.insert((state_topic.clone(), key.clone()))
            }
            Request::Delete { key, .. } => deleted.insert(key.clone()),
        })
        .collect();
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(topic: &str, key: &str, cause: &str) -> Request {
        Request::Fetch {
            state_topic: topic.into(),
            key: key.into(),
            path: format!("/restapi/v1.0/account/~/extension/{key}"),
            group: "light".into(),
            paged: false,
            scope: "extension".into(),
            cause: cause.into(),
            accepted_at: String::new(),
        }
    }

    fn delete(key: &str) -> Request {
        Request::Delete {
            key: key.into(),
            topics: vec!["s.a".into()],
            cause: "d".into(),
            accepted_at: String::new(),
        }
    }

    #[test]
    fn a_burst_for_one_resource_is_fetched_once_with_the_latest_cause() {
        let burst: Vec<Request> = (0..100)
            .map(|n| fetch("s.a", "1", &n.to_string()))
            .collect();
        let kept = coalesce(burst);
        assert_eq!(kept, vec![fetch("s.a", "1", "99")]);
    }

    #[test]
    fn a_deletion_makes_earlier_fetches_moot_and_keeps_later_ones() {
        let batch = vec![
            fetch("s.a", "1", "a"),
            fetch("s.b", "2", "b"),
            delete("1"),
            fetch("s.a", "1", "c"),
        ];
        assert_eq!(
            coalesce(batch),
            vec![fetch("s.b", "2", "b"), delete("1"), fetch("s.a", "1", "c")]
        );
    }
}
