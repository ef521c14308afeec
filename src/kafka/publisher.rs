//! One way to publish: enqueue, await Kafka's acknowledgement, classify, count. The relay and the
//! direct delivery mode both publish through a [`Publisher`]; the [`Producer`] trait is where a test
//! puts a double in place of Kafka's producer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord};

use super::{ErrorKind, KafkaProducer, PublishError};
use crate::metrics::Metrics;
use crate::routing::Outbound;

/// What messages are sent through: Kafka's idempotent producer, or a double in tests.
pub trait Producer: Send + Sync + 'static {
    /// Completes once Kafka acknowledged the message or gave up on it.
    type Delivery: Future<Output = Result<(), PublishError>> + Send + 'static;

    /// Enqueues one message without blocking.
    fn send(&self, message: &impl Outbound) -> Result<Self::Delivery, PublishError>;

    /// Waits up to `timeout` for what is enqueued to be delivered.
    fn flush(&self, timeout: Duration);

    /// Serves the events waiting for the producer's owner (statistics, errors), for a producer
    /// that has no thread of its own to do that.
    fn serve(&self) {}
}

impl Producer for KafkaProducer {
    type Delivery = Delivery;

    fn send(&self, message: &impl Outbound) -> Result<Delivery, PublishError> {
        let record = FutureRecord::to(message.topic())
            .key(message.key())
            .headers(headers(message));
        // A tombstone has no value at all: that is what compaction deletes a key on.
        let record = match message.tombstone() {
            true => record,
            false => record.payload(message.value()),
        };
        self.send_result(record)
            .map(Delivery)
            .map_err(|(error, _)| PublishError::classify(error))
    }

    fn flush(&self, timeout: Duration) {
        // What is not flushed in time is retried from the spool (or answered 503 in direct mode).
        let _ = rdkafka::producer::Producer::flush(self, timeout);
    }
}

/// The message's headers as librdkafka takes them.
pub(super) fn headers(message: &impl Outbound) -> OwnedHeaders {
    let message_headers = message.headers();
    let mut headers = OwnedHeaders::new_with_capacity(message_headers.len());
    for (name, value) in message_headers {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    headers
}

/// Kafka's acknowledgement of one message, classified.
pub struct Delivery(DeliveryFuture);

impl Future for Delivery {
    type Output = Result<(), PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.get_mut().0)
            .poll(cx)
            .map(|outcome| match outcome {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(PublishError::classify(error)),
                // The producer was dropped before reporting: a timeout, and the message is retried.
                Err(_) => Err(PublishError {
                    kind: ErrorKind::Timeout,
                    error: KafkaError::Canceled,
                }),
            })
    }
}

/// A message handed to the producer, its outcome still to come; or one the producer refused for
/// good at once, which has its outcome already. `message` is what the caller keeps for the
/// outcome: the message itself, or less, so that what was sent can be freed once enqueued
/// (librdkafka has its own copy).
pub struct Pending<T, D> {
    pub message: T,
    /// The delivery, with `rckb_messages_published_total` for the message's topic and hint,
    /// counted once Kafka acknowledges it.
    delivery: Result<(D, IntCounter), PublishError>,
}

impl<T, D: Future<Output = Result<(), PublishError>>> Pending<T, D> {
    /// Whether the producer refused the message for good when it was enqueued.
    pub fn refused(&self) -> bool {
        self.delivery.is_err()
    }

    /// Waits for the outcome without counting it: for messages whose entry is published again.
    pub async fn settle(self) {
        if let Ok((delivery, _)) = self.delivery {
            let _ = delivery.await;
        }
    }
}

/// Publishes messages through a producer and counts every outcome.
pub struct Publisher<P> {
    producer: P,
    metrics: Metrics,
}

impl<P: Producer> Publisher<P> {
    pub fn new(producer: P, metrics: Metrics) -> Self {
        Publisher { producer, metrics }
    }

    pub fn producer(&self) -> &P {
        &self.producer
    }

    /// Enqueues one message. A permanent refusal becomes the message's outcome; a retriable one
    /// (queue full, a fatal producer) is counted and returned, as enqueueing more would fail alike.
    pub fn enqueue<'m, M: Outbound>(
        &self,
        message: &'m M,
    ) -> Result<Pending<&'m M, P::Delivery>, PublishError> {
        self.enqueue_keeping(message, message)
    }

    /// [`Publisher::enqueue`], keeping `kept` of the message for its outcome instead of the message.
    pub fn enqueue_keeping<M: Outbound, T>(
        &self,
        message: &M,
        kept: T,
    ) -> Result<Pending<T, P::Delivery>, PublishError> {
        let delivery = match self.producer.send(message) {
            Ok(delivery) => {
                let published = self
                    .metrics
                    .messages_published
                    .with_label_values(&[message.topic(), message.hint_label()]);
                Ok((delivery, published))
            }
            Err(e) if e.kind.is_permanent() => Err(e),
            Err(e) => {
                self.count_error(e.kind);
                return Err(e);
            }
        };
        Ok(Pending {
            message: kept,
            delivery,
        })
    }

    /// Kafka's outcome for a pending message, counted.
    pub async fn acknowledged<T>(
        &self,
        pending: Pending<T, P::Delivery>,
    ) -> Result<(), PublishError> {
        self.outcome(pending).await.1
    }

    /// [`Publisher::acknowledged`], and what was kept of the message.
    pub async fn outcome<T>(
        &self,
        pending: Pending<T, P::Delivery>,
    ) -> (T, Result<(), PublishError>) {
        let outcome = match pending.delivery {
            Ok((delivery, published)) => delivery.await.inspect(|()| published.inc()),
            Err(e) => Err(e),
        };
        if let Err(e) = &outcome {
            self.count_error(e.kind);
        }
        (pending.message, outcome)
    }

    /// Counts a failure that happened around the producer (a timeout waiting for it).
    pub fn count_error(&self, kind: ErrorKind) {
        self.metrics
            .publish_errors
            .with_label_values(&[kind.label()])
            .inc();
    }
}
