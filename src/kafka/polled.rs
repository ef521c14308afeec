//! The relay's producer: Kafka's delivery reports are served by the task that enqueued the
//! messages, when it awaits them, instead of by a polling thread of their own.
//!
//! librdkafka allocates each message and its header list with the C library's `malloc` when it is
//! enqueued, and frees them once its delivery report is served. Served on another thread, every one
//! of those frees crosses threads, which glibc's per-thread caches do not absorb: the enqueueing
//! thread's allocations then take the slow path and the freeing thread's frees take the arena's
//! lock. The relay enqueues a round and then awaits it on one task, so serving the reports from
//! that task keeps both ends on one thread. Direct delivery keeps [`super::KafkaProducer`], whose
//! many concurrent requests are served by its polling thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::statistics::Statistics;
use tokio::time::Sleep;

use super::publisher::{Producer, headers};
use super::{PublishError, StatsContext};
use crate::routing::Outbound;

/// How long an awaited delivery waits before it serves the producer's reports again, once there
/// was nothing to serve. `linger.ms` (2) and the broker's round trip come first anyway.
const REPORT_INTERVAL: Duration = Duration::from_millis(1);

/// A producer whose events (delivery reports, statistics, errors) are served by whoever awaits its
/// deliveries or calls [`Producer::serve`].
pub struct RelayProducer {
    inner: Arc<BaseProducer<RelayContext>>,
}

impl RelayProducer {
    pub(super) fn new(inner: BaseProducer<RelayContext>) -> RelayProducer {
        RelayProducer {
            inner: Arc::new(inner),
        }
    }
}

/// Where Kafka's outcome for one message is written when its report is served.
#[derive(Default)]
pub struct DeliverySlot(OnceLock<Result<(), PublishError>>);

/// Statistics go to the metrics, as for every producer; outcomes go to their slots.
pub struct RelayContext {
    pub(super) stats: StatsContext,
}

impl ClientContext for RelayContext {
    fn stats(&self, statistics: Statistics) {
        self.stats.stats(statistics);
    }
}

impl ProducerContext for RelayContext {
    type DeliveryOpaque = Arc<DeliverySlot>;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: Arc<DeliverySlot>) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(PublishError::classify(error.clone())),
        };
        let _ = slot.0.set(outcome);
    }
}

/// Serves at most one of the producer's waiting events (a delivery report covers a whole batch of
/// messages); whether it served one.
fn serve_one(producer: &BaseProducer<RelayContext>) -> bool {
    use rdkafka::producer::Producer as _;
    // Only serving an event lowers the count (a report takes its messages with it). One that
    // arrives meanwhile can hide the one served: the awaited delivery then looks again shortly.
    let before = producer.in_flight_count();
    producer.poll(Duration::ZERO);
    producer.in_flight_count() < before
}

impl Producer for RelayProducer {
    type Delivery = RelayDelivery;

    fn send(&self, message: &impl Outbound) -> Result<RelayDelivery, PublishError> {
        let slot = Arc::new(DeliverySlot::default());
        let record = BaseRecord::with_opaque_to(message.topic(), slot.clone())
            .key(message.key())
            .headers(headers(message));
        // A tombstone has no value at all: that is what compaction deletes a key on.
        let record = match message.tombstone() {
            true => record,
            false => record.payload(message.value()),
        };
        match self.inner.send(record) {
            Ok(()) => Ok(RelayDelivery {
                slot,
                producer: self.inner.clone(),
                again: None,
            }),
            Err((error, _)) => Err(PublishError::classify(error)),
        }
    }

    fn flush(&self, timeout: Duration) {
        // What is not flushed in time is retried from the spool.
        let _ = rdkafka::producer::Producer::flush(&*self.inner, timeout);
    }

    fn serve(&self) {
        while serve_one(&self.inner) {}
    }
}

/// Kafka's acknowledgement of one message, classified; polling it serves the producer's reports.
pub struct RelayDelivery {
    slot: Arc<DeliverySlot>,
    producer: Arc<BaseProducer<RelayContext>>,
    /// When to serve the reports again, once there was nothing to serve.
    again: Option<Pin<Box<Sleep>>>,
}

impl Future for RelayDelivery {
    type Output = Result<(), PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if let Some(outcome) = this.slot.0.get() {
                return Poll::Ready(outcome.clone());
            }
            if !serve_one(&this.producer) {
                break;
            }
        }
        // Only the delivery being awaited gets here: the ones after it are mostly served by then.
        let again = this
            .again
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(REPORT_INTERVAL)));
        if again.as_mut().poll(cx).is_ready() {
            again
                .as_mut()
                .reset(tokio::time::Instant::now() + REPORT_INTERVAL);
            // Registers the wake-up for the new deadline.
            let _ = again.as_mut().poll(cx);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::Producer as _;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    use super::*;
    use crate::kafka::{ErrorKind, ProducerFactory};
    use crate::metrics::Metrics;

    fn message(topic: &str, n: usize) -> crate::routing::OutboundMessage {
        crate::routing::OutboundMessage {
            topic: topic.into(),
            key: format!("extension-{n}"),
            headers: vec![("rc-message-id".into(), format!("message-{n}"))],
            value: format!("{{\"n\":{n}}}"),
            hint_label: "ExtensionInfo".into(),
            tombstone: false,
        }
    }

    fn producer(
        cluster: &MockCluster<'_, impl ProducerContext>,
        metrics: &Metrics,
    ) -> RelayProducer {
        let properties = BTreeMap::from([("statistics.interval.ms".into(), "100".into())]);
        ProducerFactory::new(&cluster.bootstrap_servers(), &properties, metrics.clone())
            .build_relay()
            .unwrap()
    }

    #[tokio::test]
    async fn awaiting_the_deliveries_serves_their_acknowledgements() {
        // No thread polls this producer: the acknowledgements arrive only because they are awaited.
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let producer = producer(&cluster, &Metrics::new());
        let deliveries: Vec<_> = (0..500)
            .map(|n| producer.send(&message("t", n)).unwrap())
            .collect();
        for delivery in deliveries {
            tokio::time::timeout(Duration::from_secs(10), delivery)
                .await
                .expect("acknowledged in time")
                .unwrap();
        }
        let (_, high) = producer
            .inner
            .client()
            .fetch_watermarks("t", 0, Duration::from_secs(10))
            .unwrap();
        assert_eq!(high, 500);
    }

    #[tokio::test]
    async fn a_refusal_reaches_its_delivery_classified() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
        );
        let producer = producer(&cluster, &Metrics::new());
        let delivery = producer.send(&message("t", 1)).unwrap();
        let error = tokio::time::timeout(Duration::from_secs(10), delivery)
            .await
            .expect("reported in time")
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Authorization);
    }

    #[tokio::test]
    async fn an_idle_producer_serves_its_statistics_when_asked() {
        let cluster = MockCluster::new(1).unwrap();
        let metrics = Metrics::new();
        let producer = producer(&cluster, &metrics);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        // The statistics come every 100 ms; only `serve` hands them to the metrics.
        while metrics.kafka_brokers_up.get() != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no statistics served"
            );
            producer.serve();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
