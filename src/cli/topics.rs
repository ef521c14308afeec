//! `topics ensure`: create what Kafka lacks of the topics this configuration publishes to.

use std::time::Duration;

use super::{CommandError, runtime};
use crate::config::Settings;
use crate::kafka::{self, ProducerFactory};
use crate::metrics::Metrics;

pub(super) fn ensure(settings: &Settings) -> Result<(), CommandError> {
    let Some(brokers) = &settings.brokers else {
        return Err(CommandError::Usage(
            "topics ensure needs --brokers (the embedded broker creates its own topics)",
        ));
    };
    let properties = &settings.kafka.properties;
    let factory = ProducerFactory::new(brokers, properties, Metrics::new());
    let wanted = settings.routing.published_topics();
    let missing =
        kafka::missing_topics(&factory, &wanted, Duration::from_secs(10)).map_err(|e| {
            let e = properties.redact(&e.to_string());
            CommandError::Kafka(format!("cannot read Kafka metadata: {e}"))
        })?;
    if missing.is_empty() {
        println!("all {} topics exist", wanted.len());
        return Ok(());
    }
    runtime()?
        .block_on(kafka::create_topics(
            &factory,
            &missing,
            &kafka::TopicKinds::of(&settings.routing),
            settings.partitions.get().into(),
            settings.replication_factor.get().into(),
        ))
        .map_err(|e| CommandError::Kafka(properties.redact(&e)))?;
    for topic in &missing {
        println!("created {topic}");
    }
    Ok(())
}
