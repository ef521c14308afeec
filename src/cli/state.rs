//! `state status`: the fetch queue as the fetchers' consumer group sees it, per partition of the
//! requests topic.

use super::CommandError;
use crate::config::Settings;
use crate::kafka::ProducerFactory;
use crate::metrics::Metrics;

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
    let config = ProducerFactory::new(brokers, properties, Metrics::new()).client_config();
    let queue =
        crate::state::queue::partitions(&config, &state.requests_topic, &state.fetcher_group)
            .map_err(kafka)?;
    println!(
        "{} (consumer group {})",
        state.requests_topic, state.fetcher_group
    );
    println!(
        "{:<10} {:>12} {:>12} {:>8}",
        "PARTITION", "FETCHED TO", "END", "QUEUED"
    );
    let mut total = 0;
    for partition in &queue {
        total += partition.queued();
        println!(
            "{:<10} {:>12} {:>12} {:>8}",
            partition.partition,
            partition.position,
            partition.end,
            partition.queued()
        );
    }
    println!("{total} requests queued");
    Ok(())
}
