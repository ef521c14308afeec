//! The Kafka side: the idempotent producer, error classification, librdkafka statistics, topic
//! checks, and the embedded development broker.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;

use crate::metrics::Metrics;
use crate::routing::Topic;

mod polled;
mod publisher;
pub use polled::{RelayDelivery, RelayProducer};
pub use publisher::{Delivery, Pending, Producer, Publisher};

/// How a failed publish is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Kafka did not answer in time, or no broker is reachable: retry later.
    Timeout,
    /// The producer's local queue is full: retry shortly.
    QueueFull,
    /// The message or its batch is larger than the broker accepts: permanent.
    TooLarge,
    /// The topic is invalid or does not exist: permanent.
    Topic,
    /// Not allowed to write the topic: permanent.
    Authorization,
    /// The producer is in a fatal state (e.g. the broker lost its producer ids): build a new one.
    Fatal,
    /// Anything else: retry later.
    Other,
}

impl ErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::QueueFull => "queue_full",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Topic => "topic",
            ErrorKind::Authorization => "authorization",
            ErrorKind::Fatal => "fatal",
            ErrorKind::Other => "other",
        }
    }

    /// Rejected for good: retrying the same message can never succeed.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            ErrorKind::TooLarge | ErrorKind::Topic | ErrorKind::Authorization
        )
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?}: {error}")]
pub struct PublishError {
    pub kind: ErrorKind,
    pub error: KafkaError,
}

impl PublishError {
    pub fn classify(error: KafkaError) -> PublishError {
        use RDKafkaErrorCode as C;
        let kind = match error.rdkafka_error_code() {
            Some(C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessage) => {
                ErrorKind::TooLarge
            }
            Some(
                C::InvalidTopic
                | C::UnknownTopic
                | C::UnknownTopicOrPartition
                | C::UnknownPartition
                | C::InvalidRecord,
            ) => ErrorKind::Topic,
            Some(C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed) => {
                ErrorKind::Authorization
            }
            Some(C::QueueFull) => ErrorKind::QueueFull,
            Some(C::MessageTimedOut | C::AllBrokersDown | C::OperationTimedOut) => {
                ErrorKind::Timeout
            }
            Some(
                C::Fatal
                | C::InvalidProducerEpoch
                | C::UnknownProducerId
                | C::OutOfOrderSequenceNumber
                | C::PurgeQueue,
            ) => ErrorKind::Fatal,
            _ => ErrorKind::Other,
        };
        PublishError { kind, error }
    }
}

/// Feeds librdkafka's statistics into the metrics.
pub struct StatsContext {
    metrics: Metrics,
}

impl ClientContext for StatsContext {
    fn stats(&self, statistics: Statistics) {
        self.metrics
            .kafka_producer_queue_messages
            .set(statistics.msg_cnt as i64);
        let mut up = 0;
        for broker in statistics.brokers.values() {
            // librdkafka also lists its internal and bootstrap pseudo-brokers; only real ones count.
            if broker.nodeid < 0 {
                continue;
            }
            let name = broker.nodeid.to_string();
            let is_up = broker.state == "UP";
            up += i64::from(is_up);
            self.metrics
                .kafka_broker_state
                .with_label_values(&[&name])
                .set(i64::from(is_up));
            if let Some(rtt) = &broker.rtt {
                self.metrics
                    .kafka_broker_rtt
                    .with_label_values(&[&name])
                    .set(rtt.avg as f64 / 1e6);
            }
        }
        self.metrics.kafka_brokers_up.set(up);
    }
}

pub type KafkaProducer = FutureProducer<StatsContext>;

/// What is needed to (re)build a producer: the relay builds a new one after a fatal error.
#[derive(Clone)]
pub struct ProducerFactory {
    config: ClientConfig,
    metrics: Metrics,
}

impl ProducerFactory {
    /// The producer configuration: idempotent, `acks=all`, compressed, every send bounded in time;
    /// `properties` (librdkafka's own names) are applied last.
    ///
    /// `linger.ms` is 2, not librdkafka's 5: the relay batches for itself, enqueueing a round of up
    /// to 2,048 entries at once and awaiting its acknowledgements, so lingering only holds back the
    /// round's last batch of each partition and with it the next round. Against 5 ms at max load
    /// (bench/HISTORY.md): 0.81 times the CPU per notification at seven hints, 0.91 at one to
    /// twelve, up to 1.06 at one; a drain 1.22 times as fast at 0.83 times the CPU; peaks a few MiB
    /// lower. Direct mode, whose every answer waits for its message's acknowledgement, waits less.
    pub fn new(
        brokers: &str,
        properties: &BTreeMap<String, String>,
        metrics: Metrics,
    ) -> ProducerFactory {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "30000")
            .set("statistics.interval.ms", "5000");
        for (key, value) in properties {
            config.set(key, value);
        }
        ProducerFactory { config, metrics }
    }

    pub fn build(&self) -> Result<KafkaProducer, KafkaError> {
        self.config.create_with_context(StatsContext {
            metrics: self.metrics.clone(),
        })
    }

    /// The relay's producer, which serves its delivery reports on the task awaiting them.
    pub fn build_relay(&self) -> Result<RelayProducer, KafkaError> {
        let producer = self.config.create_with_context(polled::RelayContext {
            stats: StatsContext {
                metrics: self.metrics.clone(),
            },
        })?;
        Ok(RelayProducer::new(producer))
    }

    /// A producer whose statistics feed no metric: for the state fetcher, so that the producer
    /// gauges keep describing the relay's producer alone.
    pub fn build_unobserved(&self) -> Result<KafkaProducer, KafkaError> {
        let mut config = self.config.clone();
        config.set("statistics.interval.ms", "0");
        config.create_with_context(StatsContext {
            metrics: self.metrics.clone(),
        })
    }

    /// The configuration with the bridge's own settings, for admin and consumer clients.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in self.config.config_map() {
            let producer_only = [
                "enable.idempotence",
                "acks",
                "compression.type",
                "linger.ms",
                "message.timeout.ms",
                "statistics.interval.ms",
            ];
            if !producer_only.contains(&key) {
                config.set(key, value);
            }
        }
        config
    }
}

/// The configuration of a member of `group` among the replicas: offsets committed by the bridge
/// only, and a session of 10 s unless the properties say otherwise, so that a replica that died
/// (SIGKILL, a lost node) hands over its partitions in seconds rather than librdkafka's 45. Its
/// topic metadata is refreshed every 10 s (librdkafka: 5 min), so a topic created after it
/// subscribed (`--ensure-topics` creates them in the background) or given more partitions is
/// consumed within seconds.
pub fn group_member_config(config: &ClientConfig, group: &str) -> ClientConfig {
    let mut config = config.clone();
    if config.get("session.timeout.ms").is_none() {
        config.set("session.timeout.ms", "10000");
    }
    if config.get("topic.metadata.refresh.interval.ms").is_none() {
        config.set("topic.metadata.refresh.interval.ms", "10000");
    }
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    config
}

/// How long a stopping member may take to leave its group and close: the sessions' timeout, after
/// which the group has dropped it anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a leaving member looks whether its partitions are gone.
const LEAVE_POLL: Duration = Duration::from_millis(20);

/// Takes a group member out of its group, then closes it, within [`LEAVE_TIMEOUT`]; `false` when
/// the close did not finish in time.
///
/// Dropping a member closes it, and a close that meets a rebalance can hang for good inside
/// librdkafka: the revocation it serves becomes an unassign that the closing group never answers
/// (librdkafka issues 4527 and 4884). So the member unsubscribes first and is polled (which serves
/// the revocation) until it owns nothing. The close itself runs on a thread of its own: should it
/// hang all the same, the stop goes on without it.
pub async fn leave_group<C>(member: StreamConsumer<C>) -> bool
where
    C: ConsumerContext + 'static,
{
    let deadline = tokio::time::Instant::now() + LEAVE_TIMEOUT;
    let (closed, close) = tokio::sync::oneshot::channel();
    // Closed off this thread even when this future is dropped half-way (a stop cut at its deadline).
    let member = Closing {
        member: Some(member),
        closed: Some(closed),
    };
    if let Some(consumer) = &member.member {
        consumer.unsubscribe();
        // A served rebalance does not end `recv` (only a message does): look again every moment.
        while consumer.assignment().is_ok_and(|a| a.count() > 0)
            && tokio::time::Instant::now() < deadline
        {
            let _ = tokio::time::timeout(LEAVE_POLL, consumer.recv()).await;
        }
    }
    drop(member);
    tokio::time::timeout_at(deadline, close).await.is_ok()
}

/// A group member that is closed on a thread of its own when dropped.
struct Closing<C: ConsumerContext + 'static> {
    member: Option<StreamConsumer<C>>,
    closed: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<C: ConsumerContext + 'static> Drop for Closing<C> {
    fn drop(&mut self) {
        let (member, closed) = (self.member.take(), self.closed.take());
        let closing = std::thread::Builder::new()
            .name("rckb-group-close".into())
            .spawn(move || {
                drop(member);
                closed.map(|closed| closed.send(()));
            });
        if let Err(e) = closing {
            // The member was closed on this thread instead, with the closure.
            tracing::warn!(error = %e, "cannot start a thread to close a group member");
        }
    }
}

/// The topics of `wanted` that the cluster does not have.
pub fn missing_topics(
    factory: &ProducerFactory,
    wanted: &[Topic],
    timeout: Duration,
) -> Result<Vec<Topic>, KafkaError> {
    let consumer: rdkafka::consumer::BaseConsumer = factory.client_config().create()?;
    let metadata = consumer.fetch_metadata(None, timeout)?;
    let existing: std::collections::HashSet<&str> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| t.name())
        .collect();
    Ok(wanted
        .iter()
        .filter(|t| !existing.contains(t.as_str()))
        .cloned()
        .collect())
}

/// Creates the given topics; a topic that already exists is not an error. Those also in
/// `compacted` (the state topics) are created with `cleanup.policy=compact`: the latest record of
/// each key is the state.
pub async fn create_topics(
    factory: &ProducerFactory,
    topics: &[Topic],
    kinds: &TopicKinds,
    partitions: i32,
    replication: i32,
) -> Result<(), String> {
    let compact = [("cleanup.policy", "compact")];
    for topic in topics {
        let partitions = match kinds.single_partition.contains(topic) {
            true => 1,
            false => partitions,
        };
        let config: &[(&str, &str)] = match kinds.compacted.contains(topic) {
            true => &compact,
            false => &[],
        };
        create(factory, &[topic], partitions, replication, config).await?;
    }
    Ok(())
}

/// Topics created otherwise than the others.
#[derive(Debug, Clone, Default)]
pub struct TopicKinds {
    /// With `cleanup.policy=compact`: the latest record of each key is the state.
    pub compacted: Vec<Topic>,
    /// With one partition, whatever `--partitions` says.
    pub single_partition: Vec<Topic>,
}

impl TopicKinds {
    pub fn of(routing: &crate::routing::RoutingTable) -> TopicKinds {
        TopicKinds {
            compacted: routing.state_topics(),
            single_partition: routing.single_partition_topics(),
        }
    }
}

/// The topics of `topics` whose `cleanup.policy` does not include `compact`. A state topic that
/// is only deleted by age loses the state of every extension that did not change for that long.
pub async fn not_compacted(
    factory: &ProducerFactory,
    topics: &[Topic],
) -> Result<Vec<Topic>, String> {
    if topics.is_empty() {
        return Ok(Vec::new());
    }
    let admin: AdminClient<DefaultClientContext> = factory
        .client_config()
        .create()
        .map_err(|e| e.to_string())?;
    let resources: Vec<ResourceSpecifier<'_>> = topics
        .iter()
        .map(|t| ResourceSpecifier::Topic(t.as_str()))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let described = admin
        .describe_configs(&resources, &options)
        .await
        .map_err(|e| e.to_string())?;
    let mut not_compacted = Vec::new();
    for (topic, result) in topics.iter().zip(described) {
        let resource = result.map_err(|code| format!("{topic}: {code}"))?;
        let policy = resource
            .get("cleanup.policy")
            .and_then(|e| e.value.as_deref())
            .unwrap_or("delete");
        if !policy.split(',').any(|p| p.trim() == "compact") {
            not_compacted.push(topic.clone());
        }
    }
    Ok(not_compacted)
}

async fn create(
    factory: &ProducerFactory,
    topics: &[&Topic],
    partitions: i32,
    replication: i32,
    config: &[(&str, &str)],
) -> Result<(), String> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = factory
        .client_config()
        .create()
        .map_err(|e| e.to_string())?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            let topic = NewTopic::new(t.as_str(), partitions, TopicReplication::Fixed(replication));
            config
                .iter()
                .fold(topic, |topic, (key, value)| topic.set(key, value))
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(new.iter(), &options)
        .await
        .map_err(|e| e.to_string())?;
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => failures.push(format!("{topic}: {code}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join(", "))
    }
}

/// An in-process Kafka-protocol broker (librdkafka's mock cluster) for development: it keeps nothing
/// across restarts. The cluster lives on its own thread, as its handle may not cross threads.
pub struct EmbeddedBroker {
    bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts the broker with `topics` created (one partition each).
    pub fn start(topics: &[Topic]) -> Result<EmbeddedBroker, KafkaError> {
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || match MockCluster::new(1) {
                Ok(cluster) => {
                    for topic in &topics {
                        if let Err(e) = cluster.create_topic(topic, 1, 1) {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    }
                    let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                    // Runs until the broker handle is dropped.
                    let _ = stop_rx.recv();
                    drop(cluster);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .expect("spawning a thread");
        let bootstrap = ready_rx.recv().unwrap_or(Err(KafkaError::Canceled))?;
        Ok(EmbeddedBroker {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_sasl_and_zstd_are_compiled_in() {
        // librdkafka refuses these at client creation when built without OpenSSL or zstd.
        let properties = BTreeMap::from([
            ("security.protocol".to_string(), "sasl_ssl".to_string()),
            ("sasl.mechanisms".to_string(), "SCRAM-SHA-512".to_string()),
            ("sasl.username".to_string(), "bridge".to_string()),
            ("sasl.password".to_string(), "secret".to_string()),
            ("compression.type".to_string(), "zstd".to_string()),
        ]);
        let factory = ProducerFactory::new("127.0.0.1:1", &properties, Metrics::new());
        assert!(factory.build().is_ok());
    }

    #[test]
    fn the_defaults_apply_and_a_property_overrides_them() {
        let defaults = ProducerFactory::new("127.0.0.1:1", &BTreeMap::new(), Metrics::new());
        for (key, value) in [
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", "lz4"),
            ("linger.ms", "2"),
            ("message.timeout.ms", "30000"),
        ] {
            assert_eq!(defaults.config.get(key), Some(value), "{key}");
        }
        let properties = BTreeMap::from([("linger.ms".to_string(), "5".to_string())]);
        let own = ProducerFactory::new("127.0.0.1:1", &properties, Metrics::new());
        assert_eq!(own.config.get("linger.ms"), Some("5"));
        assert!(own.build().is_ok());
    }

    #[test]
    fn a_wrong_property_is_refused_clearly() {
        let properties = BTreeMap::from([("linger.ms".to_string(), "soon".to_string())]);
        let factory = ProducerFactory::new("127.0.0.1:1", &properties, Metrics::new());
        let error = factory
            .build()
            .err()
            .expect("invalid value refused")
            .to_string();
        assert!(error.contains("linger.ms"), "{error}");
    }

    #[test]
    fn errors_are_classified() {
        use RDKafkaErrorCode as C;
        let kind = |code| PublishError::classify(KafkaError::MessageProduction(code)).kind;
        assert_eq!(kind(C::MessageSizeTooLarge), ErrorKind::TooLarge);
        assert_eq!(kind(C::TopicAuthorizationFailed), ErrorKind::Authorization);
        assert_eq!(kind(C::UnknownTopicOrPartition), ErrorKind::Topic);
        assert_eq!(kind(C::MessageTimedOut), ErrorKind::Timeout);
        assert_eq!(kind(C::QueueFull), ErrorKind::QueueFull);
        assert_eq!(kind(C::InvalidProducerEpoch), ErrorKind::Fatal);
        assert!(ErrorKind::TooLarge.is_permanent() && !ErrorKind::Timeout.is_permanent());
    }

    fn member(
        cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    ) -> StreamConsumer {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", cluster.bootstrap_servers());
        group_member_config(&config, "sweepers")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .create()
            .unwrap()
    }

    /// Polls `member` (which serves its rebalances) until it owns a partition.
    async fn until_owning(member: &StreamConsumer) {
        while member.assignment().unwrap().count() == 0 {
            let _ = tokio::time::timeout(Duration::from_millis(10), member.recv()).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_leaves_its_group_and_closes_in_time_during_a_rebalance() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("index", 1, 1).unwrap();
        let owner = member(&cluster);
        owner.subscribe(&["index"]).unwrap();
        until_owning(&owner).await;
        // Another replica joins: the group rebalances while the owner leaves.
        let next = member(&cluster);
        next.subscribe(&["index"]).unwrap();
        let joining = tokio::spawn(async move { until_owning(&next).await });

        assert!(leave_group(owner).await, "closed within the timeout");
        joining.abort();
    }
}
