//! Prints every message of the given topics with its key and headers: a minimal downstream consumer.
//!
//! ```text
//! cargo run --example consume -- 127.0.0.1:PORT ringcentral.account.extension ringcentral.account.extension.phone-number
//! ```
//! It reads each topic from the beginning by partition assignment (no consumer group needed) and
//! stops after ten seconds without a new message.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args.next().ok_or("usage: consume BOOTSTRAP TOPIC...")?;
    let topics: Vec<String> = args.collect();
    if topics.is_empty() {
        return Err("usage: consume BOOTSTRAP TOPIC...".into());
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "rc-kafka-bridge-example")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for topic in &topics {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for t in metadata.topics() {
            for p in t.partitions() {
                assignment.add_partition_offset(t.name(), p.id(), Offset::Beginning)?;
            }
        }
    }
    consumer.assign(&assignment)?;
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(10) {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = message?;
        last = Instant::now();
        println!(
            "{} [{}@{}] key={}",
            m.topic(),
            m.partition(),
            m.offset(),
            String::from_utf8_lossy(m.key().unwrap_or_default())
        );
        if let Some(headers) = m.headers() {
            for h in headers.iter() {
                println!(
                    "  {}: {}",
                    h.key,
                    String::from_utf8_lossy(h.value.unwrap_or_default())
                );
            }
        }
        println!(
            "  {}",
            String::from_utf8_lossy(m.payload().unwrap_or_default())
        );
    }
    Ok(())
}
