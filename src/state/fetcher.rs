//! The fetcher: consumes the requests topic as one consumer group shared by every replica (each
//! extension's requests live on one partition, so one replica fetches them, in order), fetches each
//! resource once per batch however many hints asked for it, publishes its state, and commits the
//! requests only once Kafka acknowledged what they caused. RingCentral's budgets are per app and user,
//! so replicas never multiply the calls.

use std::collections::HashSet;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use super::fetch::{FetchOutcome, fetch};
use super::fetch_table::{Resource, ResourceKey};
use super::get_template::KeyScope;
use super::index::{self, Entry};
use super::limiter::RateLimiter;
use super::now;
use super::request::{Request, StateRouting};
use crate::kafka::{ErrorKind, KafkaProducer, ProducerFactory, Publisher};
use crate::metrics::Metrics;
use crate::ringcentral::RingCentral;
use crate::routing::cloudevents::{CloudEvents, Event, Kind, Source};
use crate::routing::{HeaderName, OutboundMessage, RoutingTable, Topic};
use crate::shutdown::Shutdown;
use crate::trace_context::{TRACEPARENT, TRACESTATE, TraceContext};

/// Requests taken per batch: the unit of coalescing.
const BATCH: usize = 500;
/// How long a batch waits for more requests once it has one.
const BATCH_WAIT: Duration = Duration::from_millis(50);
/// Attempts at a resource that fails for another reason than rate limits, before it is put back at
/// the end of the queue (reported) so that it does not hold up the others.
const ATTEMPTS: u32 = 4;
/// Times a failing resource is put back before it is given up (logged and counted): by then it
/// failed 16 times over more than a minute, and its next hint fetches it again.
const REQUEUES: u32 = 3;
/// How often the age of the oldest queued request is brought up to date while a fetch waits.
const AGE_TICK: Duration = Duration::from_secs(5);

/// The fetcher's consumer context: librdkafka's statistics give the queue's length, the requests
/// not yet committed on the partitions this replica owns.
pub struct QueueStats {
    metrics: Metrics,
}

impl ClientContext for QueueStats {
    fn stats(&self, statistics: Statistics) {
        let queued: i64 = statistics
            .topics
            .values()
            .flat_map(|topic| topic.partitions.values())
            // -1 is librdkafka's unassigned pseudo-partition; a lag of -1 means not known yet.
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        self.metrics.state_queue_requests.set(queued);
    }
}

impl ConsumerContext for QueueStats {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, _: &Rebalance<'_>) {
        // Which share of the queue this replica fetches for: how a scale-out is seen to take.
        let partitions = consumer.assignment().map_or(0, |a| a.count());
        self.metrics.state_fetcher_partitions.set(partitions as i64);
    }
}

/// A request and where it was read from: what is committed once it is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Queued {
    request: Request,
    partition: i32,
    offset: i64,
    /// The trace of the notification that queued it, continued by the fetch.
    trace: Option<TraceContext>,
}

pub struct Fetcher {
    consumer: StreamConsumer<QueueStats>,
    worker: Worker,
    /// Requests read while a batch was being carried out: the start of the next batch.
    held: Vec<Queued>,
    oldest: Arc<OldestRequest>,
}

/// What carries requests out: everything but the consumer, which keeps being polled meanwhile.
struct Worker {
    factory: ProducerFactory,
    publisher: Publisher<KafkaProducer>,
    client: Arc<RingCentral>,
    limiter: Arc<RateLimiter>,
    requests_topic: Topic,
    dead_letter_topic: Topic,
    /// Where a deleted extension leaves tombstones.
    per_extension_topics: Vec<Topic>,
    index: IndexFeed,
    cloudevents: Option<StateEvents>,
    /// The trace of the request being carried out: its state records continue it.
    trace: Option<TraceContext>,
    metrics: Metrics,
    shutdown: Shutdown,
    oldest: Arc<OldestRequest>,
}

/// The CloudEvents headers of state records: `ce_type` names the state topic's resource (the topic
/// without `<prefix>state.`), `ce_time` is when the state was fetched.
struct StateEvents {
    cloudevents: CloudEvents,
    /// `<prefix>state.`
    state_prefix: String,
}

impl StateEvents {
    fn headers(&self, resource: &Resource, fetched_at: &str) -> Vec<(HeaderName, String)> {
        let topic = resource.key.topic.as_str();
        let name = topic.strip_prefix(&self.state_prefix).unwrap_or(topic);
        // `/restapi/v1.0/account/{id}/...`; a tombstone has no path.
        let account = resource
            .path
            .strip_prefix("/restapi/v1.0/account/")
            .and_then(|rest| rest.split(['/', '?']).next())
            .filter(|id| !id.is_empty())
            .unwrap_or("~");
        let id = format!("{topic}:{}:{fetched_at}", resource.key.key);
        self.cloudevents.headers(&Event {
            id: &id,
            kind: Kind::State(name),
            source: Source::Account(account),
            time: fetched_at,
            subject: (resource.scope == KeyScope::Extension).then_some(resource.key.key.as_str()),
        })
    }
}

/// The sweeps' index, moved by what the fetcher publishes, after it: an extension record's digest
/// (so that a sweep does not report as missed a change a hint delivered), and which state topics
/// hold a record for an extension (so that a gone extension leaves tombstones only there).
struct IndexFeed {
    /// The extension record's state topic, when it is fetched.
    extension_topic: Option<Topic>,
    index_topic: Topic,
}

impl IndexFeed {
    /// The index records that follow a per-extension state on `topic` (a tombstone when `record` is
    /// `None`): its holding record and, for the extension record, the entry with its digest.
    fn records(
        &self,
        topic: &Topic,
        extension: &str,
        record: Option<&str>,
        fetched_at: &str,
    ) -> Vec<OutboundMessage> {
        let holding = record.map(|_| fetched_at);
        let mut records = vec![index::holding_message(
            &self.index_topic,
            extension,
            topic,
            holding,
        )];
        if self.extension_topic.as_ref() == Some(topic) {
            let entry = match record {
                None => None,
                Some(record) => match serde_json::from_str::<serde_json::Value>(record) {
                    Ok(record) => Some(Entry {
                        digest: index::digest(&record),
                        sweep: index::FETCHED.to_string(),
                    }),
                    // Not JSON: the next sweep compares and repairs.
                    Err(_) => return records,
                },
            };
            records.push(index::entry_message(
                &self.index_topic,
                extension,
                entry.as_ref(),
            ));
        }
        records
    }
}

/// When the oldest request not yet carried out was accepted, shown as its age.
struct OldestRequest {
    /// Unix milliseconds; 0 for none.
    accepted_ms: AtomicI64,
    metrics: Metrics,
}

impl OldestRequest {
    fn note(&self, queued: Option<&Queued>) {
        let accepted_ms = queued
            .and_then(|q| accepted_at(&q.request))
            .map_or(0, |at| (at.unix_timestamp_nanos() / 1_000_000) as i64);
        self.accepted_ms.store(accepted_ms, Ordering::Relaxed);
        self.show();
    }

    fn show(&self) {
        let age = match self.accepted_ms.load(Ordering::Relaxed) {
            0 => 0.0,
            ms => {
                let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
                (now as i64 - ms).max(0) as f64 / 1000.0
            }
        };
        self.metrics.state_queue_oldest_age.set(age);
    }
}

impl Fetcher {
    /// Joins the fetchers' consumer group on the requests topic; [`Fetcher::run`] fetches. From
    /// `routing` (whose state part is `state`): the dead-letter topic and the CloudEvents headers.
    pub fn new(
        config: &ClientConfig,
        routing: &RoutingTable,
        state: &StateRouting,
        factory: ProducerFactory,
        client: Arc<RingCentral>,
        limiter: Arc<RateLimiter>,
        metrics: Metrics,
    ) -> Result<Fetcher, KafkaError> {
        let consumer: StreamConsumer<QueueStats> =
            crate::kafka::group_member_config(config, &state.fetcher_group)
                .set("auto.offset.reset", "earliest")
                .set("statistics.interval.ms", "5000")
                .create_with_context(QueueStats {
                    metrics: metrics.clone(),
                })?;
        consumer.subscribe(&[state.requests_topic.as_str()])?;
        let producer = factory.build_unobserved()?;
        let oldest = Arc::new(OldestRequest {
            accepted_ms: AtomicI64::new(0),
            metrics: metrics.clone(),
        });
        Ok(Fetcher {
            consumer,
            worker: Worker {
                factory,
                publisher: Publisher::new(producer, metrics.clone()),
                client,
                limiter,
                requests_topic: state.requests_topic.clone(),
                dead_letter_topic: routing.dead_letter_topic().clone(),
                per_extension_topics: state.fetches.per_extension_topics(),
                index: IndexFeed {
                    extension_topic: state.fetches.extension_record_topic(),
                    index_topic: state.index_topic.clone(),
                },
                trace: None,
                cloudevents: routing.cloudevents().map(|cloudevents| StateEvents {
                    cloudevents: cloudevents.clone(),
                    state_prefix: state.state_prefix.clone(),
                }),
                metrics,
                // Replaced by `run`'s.
                shutdown: crate::shutdown::channel().1,
                oldest: oldest.clone(),
            },
            held: Vec::new(),
            oldest,
        })
    }

    /// Fetches until the shutdown begins.
    ///
    /// While a batch is carried out (for as long as the rate limits make it take) the consumer's
    /// partitions are paused and the consumer is still polled: the group sees a live member and
    /// its rebalances go on, and what arrives meanwhile is held for the next batch.
    pub async fn run(mut self, shutdown: Shutdown) {
        self.worker.shutdown = shutdown.clone();
        self.worker.metrics.state_fetcher_running.set(1);
        let mut stopping = shutdown.clone();
        loop {
            let batch = tokio::select! {
                batch = self.next_batch() => batch,
                _ = stopping.begun() => break,
            };
            let batch = coalesce(batch);
            self.oldest.note(batch.first());
            self.pause();
            let finished = {
                let mut work = pin!(self.worker.carry_out(&self.consumer, batch));
                let mut tick = tokio::time::interval(AGE_TICK);
                loop {
                    tokio::select! {
                        finished = &mut work => break finished,
                        received = self.consumer.recv() => {
                            if let Some(queued) = read(received) {
                                self.held.push(queued);
                            }
                            if self.held.len() >= BATCH {
                                // A rebalance assigned partitions that are not paused.
                                pause(&self.consumer);
                            }
                        }
                        _ = tick.tick() => self.oldest.show(),
                    }
                }
            };
            self.resume();
            if !finished {
                // Shutting down mid-batch: what is not committed is fetched again.
                break;
            }
        }
        self.worker.metrics.state_fetcher_running.set(0);
        if !crate::kafka::leave_group(self.consumer).await {
            tracing::warn!(
                "the state fetchers' group member did not close in time; stopping without it"
            );
        }
        tracing::info!("state fetcher stopped");
    }

    fn pause(&self) {
        pause(&self.consumer);
    }

    fn resume(&self) {
        if let Ok(assignment) = self.consumer.assignment()
            && let Err(e) = self.consumer.resume(&assignment)
        {
            tracing::warn!(error = %e, "cannot resume reading state requests");
        }
    }

    /// The next requests: what was held, else waits for one; then takes what else is there within a
    /// moment.
    async fn next_batch(&mut self) -> Vec<Queued> {
        let mut batch = std::mem::take(&mut self.held);
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
                Ok(message) => batch.extend(read(Ok(message))),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read state requests");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        batch
    }
}

fn pause(consumer: &StreamConsumer<QueueStats>) {
    if let Ok(assignment) = consumer.assignment()
        && let Err(e) = consumer.pause(&assignment)
    {
        tracing::warn!(error = %e, "cannot pause reading state requests");
    }
}

/// A request as read from the queue; a message that is not one is skipped (and logged).
fn read(received: Result<BorrowedMessage<'_>, KafkaError>) -> Option<Queued> {
    let message = match received {
        Ok(message) => message,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read state requests");
            return None;
        }
    };
    let header = |name: &str| {
        let headers = message.headers()?;
        let found = headers.iter().find(|h| h.key == name)?;
        std::str::from_utf8(found.value?).ok()
    };
    let trace = header(TRACEPARENT)
        .map(|parent| TraceContext::continue_or_start(Some(parent), header(TRACESTATE)));
    match message.payload().map(serde_json::from_slice::<Request>) {
        Some(Ok(request)) => Some(Queued {
            request,
            partition: message.partition(),
            offset: message.offset(),
            trace,
        }),
        _ => {
            tracing::error!(
                partition = message.partition(),
                offset = message.offset(),
                "a state request that is not one; skipped"
            );
            None
        }
    }
}

/// How one request ended.
enum Handled {
    /// Its state or tombstones are acknowledged, or it was given up: commit it.
    Done,
    /// The shutdown came first: leave it uncommitted.
    Stopped,
}

impl Worker {
    /// Carries out a batch in order, committing each request once it is done: a rebalance or a
    /// crash mid-batch repeats only what was not finished. `false` when the shutdown came first.
    async fn carry_out(
        &mut self,
        consumer: &StreamConsumer<QueueStats>,
        batch: Vec<Queued>,
    ) -> bool {
        for (n, queued) in batch.iter().enumerate() {
            self.oldest.note(Some(queued));
            self.trace = queued.trace.clone();
            if let Handled::Stopped = self.handle(&queued.request).await {
                return false;
            }
            // Everything before this request on its partition is done, or made moot by a later
            // request that is not yet committed.
            let mut offsets = TopicPartitionList::new();
            let next = Offset::Offset(queued.offset + 1);
            let topic = self.requests_topic.as_str();
            if offsets
                .add_partition_offset(topic, queued.partition, next)
                .is_ok()
                && let Err(e) = consumer.commit(&offsets, CommitMode::Async)
            {
                // Not committed means fetched again: a repeated state record, never a lost one.
                tracing::debug!(error = %e, "cannot commit a state request");
            }
            if n + 1 == batch.len() {
                self.oldest.note(None);
            }
        }
        true
    }

    /// Carries out one request until its state (or tombstones) is acknowledged, or it is given up.
    async fn handle(&mut self, request: &Request) -> Handled {
        let (resource, cause, accepted_at, requeued) = match request {
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
                requeued,
                ..
            } => {
                let (Ok(topic), Some(group)) =
                    (Topic::parse(state_topic.as_str()), request.group())
                else {
                    tracing::error!(topic = %state_topic, "a state request for no known topic; skipped");
                    return Handled::Done;
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
                (resource, cause.clone(), accepted_at.clone(), *requeued)
            }
        };
        let mut failures = 0;
        loop {
            let outcome = tokio::select! {
                outcome = fetch(&self.client, &self.limiter, &resource) => outcome,
                _ = self.shutdown.begun() => return Handled::Stopped,
            };
            let group = resource.group.label();
            let wait = match outcome {
                FetchOutcome::State(body) => {
                    self.count(group, "ok");
                    let value = String::from_utf8_lossy(&body).into_owned();
                    let fetched_at = now();
                    let index = match resource.scope {
                        KeyScope::Extension => self.index.records(
                            &resource.key.topic,
                            &resource.key.key,
                            Some(&value),
                            &fetched_at,
                        ),
                        KeyScope::Account => Vec::new(),
                    };
                    let message = self.state_message(&resource, Some(value), &cause, &fetched_at);
                    let messages = std::iter::once(message).chain(index).collect();
                    return self.publish(messages, &accepted_at).await;
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
                FetchOutcome::Retry(e) if e.kind.is_refusal() => {
                    // RingCentral refuses this request as made (400, 403...): asking again changes
                    // nothing, so it is reported and left; the others go on.
                    self.count(group, "refused");
                    tracing::error!(path = %resource.path, error = %e.message, "RingCentral refuses this state fetch; given up");
                    return Handled::Done;
                }
                FetchOutcome::Retry(e) => {
                    self.count(group, e.kind.label());
                    failures += 1;
                    if failures < ATTEMPTS {
                        tracing::warn!(path = %resource.path, error = %e.message, "state fetch failed; retrying");
                        Duration::from_secs(1 << failures)
                    } else if requeued < REQUEUES {
                        tracing::error!(path = %resource.path, error = %e.message, "state fetch keeps failing; queued again behind the others");
                        return self.requeue(request).await;
                    } else {
                        self.count(group, "abandoned");
                        tracing::error!(path = %resource.path, error = %e.message, "state fetch failed 16 times; given up until its next hint");
                        return Handled::Done;
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.begun() => return Handled::Stopped,
            }
        }
    }

    /// One state record (a tombstone without `value`).
    fn state_message(
        &self,
        resource: &Resource,
        value: Option<String>,
        cause: &str,
        fetched_at: &str,
    ) -> OutboundMessage {
        let mut headers = vec![
            ("rc-fetched-at".into(), fetched_at.to_string()),
            ("rc-cause".into(), cause.to_string()),
        ];
        if !resource.path.is_empty() {
            headers.insert(0, ("rc-resource-path".into(), resource.path.clone()));
        }
        let tombstone = value.is_none();
        if !tombstone {
            headers.push(("content-type".into(), "application/json".into()));
        }
        if let Some(events) = &self.cloudevents {
            headers.extend(events.headers(resource, fetched_at));
        }
        let mut message = OutboundMessage {
            topic: resource.key.topic.to_string(),
            key: resource.key.key.clone(),
            headers,
            value: value.unwrap_or_default(),
            hint_label: if tombstone { "tombstone" } else { "state" }.into(),
            tombstone,
        };
        if let Some(trace) = &self.trace {
            trace.stamp_message(&mut message);
        }
        message
    }

    fn count(&self, group: &str, outcome: &str) {
        self.metrics
            .state_fetches
            .with_label_values(&[group, outcome])
            .inc();
    }

    async fn tombstones(
        &mut self,
        key: &str,
        topics: &[String],
        cause: &str,
        accepted_at: &str,
    ) -> Handled {
        let topics: Vec<Topic> = topics
            .iter()
            .filter_map(|t| Topic::parse(t.as_str()).ok())
            .collect();
        let at = now();
        let index: Vec<OutboundMessage> = topics
            .iter()
            .flat_map(|topic| self.index.records(topic, key, None, &at))
            .collect();
        let messages = topics
            .into_iter()
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
                self.state_message(&resource, None, cause, &at)
            })
            .chain(index)
            .collect();
        self.publish(messages, accepted_at).await
    }

    /// Puts a failing fetch back at the end of the queue.
    async fn requeue(&mut self, request: &Request) -> Handled {
        let mut request = request.clone();
        if let Request::Fetch { requeued, .. } = &mut request {
            *requeued += 1;
        }
        let mut message = request.message(&self.requests_topic);
        if let Some(trace) = &self.trace {
            trace.stamp_message(&mut message);
        }
        self.publish(vec![message], "").await
    }

    /// Publishes until Kafka acknowledged every message. A message Kafka refuses for good (too
    /// large, not authorized) goes to the dead-letter topic, or is logged and counted if that
    /// refuses too: the state is RingCentral's, fetched again on the next hint, and one record
    /// must not stop the queue. A fatal producer is replaced.
    async fn publish(&mut self, messages: Vec<OutboundMessage>, accepted_at: &str) -> Handled {
        let mut shutdown = self.shutdown.clone();
        let mut backoff = Duration::from_millis(100);
        let mut unsent = messages.as_slice();
        while let Some(message) = unsent.first() {
            let sent = match self.publisher.enqueue(message) {
                Ok(pending) => self.publisher.acknowledged(pending).await,
                Err(e) => Err(e),
            };
            let failure = match sent {
                Ok(()) => {
                    unsent = &unsent[1..];
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Err(e) if e.kind.is_permanent() => {
                    self.dead_letter(message, e.kind).await;
                    unsent = &unsent[1..];
                    continue;
                }
                Err(e) => e,
            };
            tracing::warn!(topic = %message.topic, error = %failure, "cannot publish state; retrying");
            if failure.kind == ErrorKind::Fatal {
                self.renew_producer();
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.begun() => return Handled::Stopped,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        if let Some(accepted) = accepted_at_of(accepted_at) {
            let lag = time::OffsetDateTime::now_utc() - accepted;
            self.metrics
                .state_lag
                .observe(lag.as_seconds_f64().max(0.0));
        }
        Handled::Done
    }

    async fn dead_letter(&self, message: &OutboundMessage, kind: ErrorKind) {
        tracing::error!(topic = %message.topic, key = %message.key, reason = kind.label(),
            "Kafka refused a state record for good; dead-lettering it");
        let letter = message.dead_letter(&self.dead_letter_topic, kind.label());
        let sent = match crate::kafka::Producer::send(self.publisher.producer(), &letter) {
            Ok(delivery) => delivery.await,
            Err(e) => Err(e),
        };
        let (label, outcome) = match sent {
            Ok(()) => ("topic", None),
            Err(e) => ("dropped", Some(e)),
        };
        if let Some(e) = outcome {
            tracing::error!(topic = %message.topic, key = %message.key, error = %e,
                "the dead-letter topic refused the state record too; it is dropped until the next hint");
        }
        self.metrics
            .state_dead_letters
            .with_label_values(&[label])
            .inc();
    }

    /// After a fatal error (the broker lost the producer's id) only a new producer can publish.
    fn renew_producer(&mut self) {
        match self.factory.build_unobserved() {
            Ok(producer) => {
                tracing::warn!("state fetcher: producer fatal; replaced by a new one");
                self.publisher = Publisher::new(producer, self.metrics.clone());
            }
            Err(e) => tracing::error!(error = %e, "state fetcher: cannot build a new producer"),
        }
    }
}

/// When a request was accepted.
fn accepted_at(request: &Request) -> Option<time::OffsetDateTime> {
    match request {
        Request::Fetch { accepted_at, .. } | Request::Delete { accepted_at, .. } => {
            accepted_at_of(accepted_at)
        }
    }
}

fn accepted_at_of(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// The requests of a batch worth carrying out, in order: a fetch is dropped when a later request
/// for the same resource (a fetch, or the extension's deletion) makes it moot.
fn coalesce(batch: Vec<Queued>) -> Vec<Queued> {
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut deleted: HashSet<String> = HashSet::new();
    let mut kept: Vec<Queued> = batch
        .into_iter()
        .rev()
        .filter(|queued| match &queued.request {
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
            requeued: 0,
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

    /// Requests as read one after the other from partition 0.
    fn queued(requests: Vec<Request>) -> Vec<Queued> {
        (0..)
            .zip(requests)
            .map(|(offset, request)| Queued {
                request,
                partition: 0,
                offset,
                trace: None,
            })
            .collect()
    }

    fn requests(queued: Vec<Queued>) -> Vec<(i64, Request)> {
        queued.into_iter().map(|q| (q.offset, q.request)).collect()
    }

    #[test]
    fn a_burst_for_one_resource_is_fetched_once_with_the_latest_cause() {
        let burst = (0..100)
            .map(|n| fetch("s.a", "1", &n.to_string()))
            .collect();
        let kept = coalesce(queued(burst));
        assert_eq!(requests(kept), vec![(99, fetch("s.a", "1", "99"))]);
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
            requests(coalesce(queued(batch))),
            vec![
                (1, fetch("s.b", "2", "b")),
                (2, delete("1")),
                (3, fetch("s.a", "1", "c"))
            ]
        );
    }

    #[test]
    fn a_requeued_fetch_says_how_often_it_was_and_reads_back_the_same() {
        let first = fetch("s.a", "1", "a");
        let wire = serde_json::to_string(&first).unwrap();
        assert!(
            !wire.contains("requeued"),
            "a fresh request stays as small as before: {wire}"
        );
        let mut again = first.clone();
        if let Request::Fetch { requeued, .. } = &mut again {
            *requeued = 2;
        }
        let wire = serde_json::to_string(&again).unwrap();
        assert!(wire.contains(r#""requeued":2"#), "{wire}");
        assert_eq!(serde_json::from_str::<Request>(&wire).unwrap(), again);
    }
}
