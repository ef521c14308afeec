//! The fetch queue as the fetchers' consumer group sees it: per partition of the requests topic,
//! where the group has committed to and where the partition ends. Blocking (Kafka admin calls):
//! run it off the async workers.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::routing::Topic;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One partition of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedPartition {
    pub partition: i32,
    /// The next request the group will carry out.
    pub position: i64,
    /// Where the partition ends.
    pub end: i64,
}

impl QueuedPartition {
    pub fn queued(&self) -> i64 {
        (self.end - self.position).max(0)
    }
}

/// Every partition of `topic`, as `group` has it.
pub fn partitions(
    config: &ClientConfig,
    topic: &Topic,
    group: &str,
) -> Result<Vec<QueuedPartition>, KafkaError> {
    let consumer: BaseConsumer = config.clone().set("group.id", group).create()?;
    let topic = topic.as_str();
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let mut partitions = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        partitions.add_partition(topic, partition.id());
    }
    let committed = consumer.committed_offsets(partitions, TIMEOUT)?;
    let mut queue = Vec::new();
    for element in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(topic, element.partition(), TIMEOUT)?;
        let position = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => low,
        };
        queue.push(QueuedPartition {
            partition: element.partition(),
            position,
            end: high,
        });
    }
    Ok(queue)
}

/// Requests queued in all partitions.
pub fn length(config: &ClientConfig, topic: &Topic, group: &str) -> Result<i64, KafkaError> {
    Ok(partitions(config, topic, group)?
        .iter()
        .map(QueuedPartition::queued)
        .sum())
}
