//! `routes` and `check-config`: what a configuration means, without running anything.

use super::CommandError;
use crate::config::Settings;
use crate::kafka::ProducerFactory;
use crate::metrics::Metrics;

/// Prints the effective hint -> topics table, then the fixed topics.
pub(super) fn routes(settings: &Settings) -> Result<(), CommandError> {
    let routing = &settings.routing;
    println!("{:<24} {:<40} TARGET API", "HINT", "TOPIC");
    for (hint, route) in routing.hints() {
        for (topic, target) in &route.topics {
            println!("{:<24} {:<40} {}", hint, topic, target.as_str());
        }
    }
    for (what, topic) in [
        ("(Delete, Create)", routing.extension_topic()),
        ("(subscription reminder)", routing.subscription_topic()),
        ("(unknown hint, other)", routing.unrouted_topic()),
        ("(dead letters)", routing.dead_letter_topic()),
    ] {
        println!("{what:<24} {topic:<40} -");
    }
    if let Some(state) = routing.state() {
        println!("\n{:<24} STATE TOPIC (GET, rate-limit group)", "HINT");
        for (hint, fetch) in state.fetches.hints() {
            match fetch {
                Ok(f) => println!(
                    "{:<24} {} ({}, {})",
                    hint,
                    f.topic.topic,
                    f.get.as_str(),
                    f.group.label()
                ),
                Err(why) => println!("{hint:<24} not fetched: {why}"),
            }
        }
        println!("{:<24} {}", "(fetch requests)", state.requests_topic);
    }
    Ok(())
}

/// Validates the settings as `serve` would, including librdkafka's view of its properties (no
/// connection needed), and prints a summary with secret values as `***`.
pub(super) fn check_config(settings: &Settings) -> Result<(), CommandError> {
    for warning in settings.check_webhook_auth()? {
        eprintln!("warning: {warning}");
    }
    let properties = &settings.kafka.properties;
    let brokers = settings.brokers.as_deref().unwrap_or("localhost:9092");
    // librdkafka checks its properties when a client is made; no connection is needed.
    let _producer = ProducerFactory::new(brokers, properties, Metrics::new())
        .build()
        .map_err(|e| {
            CommandError::Kafka(format!(
                "kafka.properties: {}",
                properties.redact(&e.to_string())
            ))
        })?;
    println!(
        "configuration is valid: {} hints, {} topics",
        settings.routing.hints().count(),
        settings.routing.topics().len()
    );
    println!("kafka properties: {properties:?}");
    Ok(())
}
