//! librdkafka's mock cluster: a Kafka-protocol broker inside the test process, with fault
//! injection. The default suite's Kafka.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use super::kafka::default_topics;
use super::scenarios::Outage;

/// A mock Kafka cluster of one broker with every default topic created (one partition each).
pub struct MockKafka {
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub bootstrap: String,
}

impl MockKafka {
    pub fn start() -> MockKafka {
        let cluster = MockCluster::new(1).expect("mock cluster");
        for topic in default_topics() {
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

/// An outage of the mock cluster: its broker down, then up.
impl Outage for MockKafka {
    fn begin(&self) {
        self.down();
    }

    fn end(&self) {
        self.up();
    }
}
