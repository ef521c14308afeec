//! The bridge end to end over real HTTP, with Kafka from librdkafka's in-process mock cluster.

#[path = "../common/mod.rs"]
mod common;

mod delivery;
mod docs;
mod exposure;
mod http_limits;
mod keeper_hardening;
mod operations;
mod spool;
mod subscription;
mod webhook;

use rc_kafka_bridge::config::Settings;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A mock Kafka cluster with every default topic created (one partition each).
pub struct MockKafka {
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub bootstrap: String,
}

impl MockKafka {
    pub fn start() -> MockKafka {
        let cluster = MockCluster::new(1).expect("mock cluster");
        let settings = Settings::default();
        let topics = settings.routing.published_topics();
        for topic in topics {
            cluster.create_topic(topic.as_str(), 1, 1).expect("topic");
        }
        let bootstrap = cluster.bootstrap_servers();
        MockKafka { cluster, bootstrap }
    }

    pub fn down(&self) {
        self.cluster.broker_down(1).expect("broker down");
    }

    pub fn up(&self) {
        self.cluster.broker_up(1).expect("broker up");
    }
}
