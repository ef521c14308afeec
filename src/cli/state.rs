//! `state status`: the fetch queue as the fetchers' consumer group sees it, per partition of the
//! requests topic.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::CommandError;
use crate::config::Settings;
use crate::kafka::ProducerFactory;
use crate::metrics::Metrics;

const TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn status(settings: &Settings) -> Result<(), CommandError> {
    let Some(state) = settings.routing.state() else {
        return Err(CommandError::Usage("state status needs --state"));
    };
    let Some(brokers) = &settings.brokers else {
        return Err(CommandError::Usage("state status needs --brokers"));
    };
    let properties = &settings.kafka.properties;
    let kafka = |e: rdkafka::error::KafkaError| {
        CommandError::Kafka(format!(
            "cannot read the queue: {}",
            properties.redact(&e.to_string())
        ))
    };
    let consumer: BaseConsumer = ProducerFactory::new(brokers, properties, Metrics::new())
        .client_config()
        .set("group.id", &state.fetcher_group)
        .create()
        .map_err(kafka)?;
    let topic = state.requests_topic.as_str();
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(kafka)?;
    let mut partitions = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        partitions.add_partition(topic, partition.id());
    }
    let committed = consumer
        .committed_offsets(partitions, TIMEOUT)
        .map_err(kafka)?;
    println!("{topic} (consumer group {})", state.fetcher_group);
    println!(
        "{:<10} {:>12} {:>12} {:>8}",
        "PARTITION", "FETCHED TO", "END", "QUEUED"
    );
    let mut total = 0;
    for element in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(topic, element.partition(), TIMEOUT)
            .map_err(kafka)?;
        let position = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => low,
        };
        let queued = (high - position).max(0);
        total += queued;
        println!(
            "{:<10} {position:>12} {high:>12} {queued:>8}",
            element.partition()
        );
    }
    println!("{total} requests queued");
    Ok(())
}
