//! Where ingress hands a route plan: the durable spool (default) or, in `direct` mode, Kafka itself.
//! Ingress only knows this trait, so the delivery strategy changes without touching ingress or routing.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::in_flight::Reservation;
use crate::kafka::{ErrorKind, KafkaProducer, Publisher};
use crate::metrics::Metrics;
use crate::routing::RoutePlan;

/// What became of an accepted plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// Kept (spool) or delivered (direct): answer 200.
    Accepted,
    /// The same notification uuid was accepted recently: answer 200, publish nothing.
    Duplicate,
}

/// Why a plan could not be kept: the answer is 503 with `Retry-After`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    #[error("spool is full")]
    SpoolFull,
    #[error("spool cannot be written")]
    SpoolUnwritable,
    #[error("Kafka did not acknowledge in time")]
    KafkaTimeout,
    #[error("Kafka refused the messages")]
    KafkaFailed,
    #[error("shutting down")]
    ShuttingDown,
    /// The plan does not fit in what requests in flight may hold together
    /// (`--max-plan-bytes-in-flight`): nothing was kept.
    #[error("too many bytes planned by requests in flight")]
    Busy,
}

impl SinkError {
    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SinkError::SpoolFull => "spool_full",
            SinkError::SpoolUnwritable => "spool_unwritable",
            SinkError::KafkaTimeout => "kafka_timeout",
            SinkError::KafkaFailed => "kafka_failed",
            SinkError::ShuttingDown => "shutting_down",
            SinkError::Busy => "plans_in_flight",
        }
    }
}

pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<Acceptance, SinkError>> + Send + 'a>>;

pub trait Sink: Send + Sync + 'static {
    /// Keeps the plan, or says why it cannot. Must deduplicate on `plan.uuid`. `held` counts the
    /// plan's bytes against the budget of requests in flight: it is dropped once what holds the
    /// plan (or its record) is done, even if the caller hung up before.
    fn accept(&self, plan: RoutePlan, held: Reservation) -> SinkFuture<'_>;
}

/// Notification uuids accepted recently: bounded in count and in time.
pub struct RecentUuids {
    window: Duration,
    capacity: usize,
    seen: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
}

impl RecentUuids {
    pub fn new(window: Duration, capacity: usize) -> Self {
        RecentUuids {
            window,
            capacity,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `uuid` unless it is already recorded; false means duplicate.
    pub fn claim(&mut self, uuid: &str, now: Instant) -> bool {
        self.expire(now);
        if self.seen.contains_key(uuid) {
            return false;
        }
        while self.seen.len() >= self.capacity {
            match self.order.pop_front() {
                Some((old, at)) => {
                    if self.seen.get(&old) == Some(&at) {
                        self.seen.remove(&old);
                    }
                }
                None => break,
            }
        }
        self.seen.insert(uuid.to_string(), now);
        self.order.push_back((uuid.to_string(), now));
        true
    }

    /// Forgets a claim whose notification was not kept after all, so a retry is not a duplicate.
    pub fn release(&mut self, uuid: &str) {
        self.seen.remove(uuid);
    }

    fn expire(&mut self, now: Instant) {
        while let Some((uuid, at)) = self.order.front() {
            if now.duration_since(*at) < self.window {
                break;
            }
            if self.seen.get(uuid) == Some(at) {
                self.seen.remove(uuid);
            }
            self.order.pop_front();
        }
    }
}

/// `direct` mode: the answer waits for Kafka's acknowledgement of every planned message.
pub struct DirectSink {
    inner: Arc<Direct>,
}

struct Direct {
    publisher: Publisher<KafkaProducer>,
    timeout: Duration,
    recent: Mutex<RecentUuids>,
    metrics: Metrics,
}

impl DirectSink {
    pub fn new(
        producer: KafkaProducer,
        timeout: Duration,
        recent: RecentUuids,
        metrics: Metrics,
    ) -> Self {
        DirectSink {
            inner: Arc::new(Direct {
                publisher: Publisher::new(producer, metrics.clone()),
                timeout,
                recent: Mutex::new(recent),
                metrics,
            }),
        }
    }

    pub fn producer(&self) -> &KafkaProducer {
        self.inner.publisher.producer()
    }
}

impl Direct {
    async fn publish(&self, plan: &RoutePlan) -> Result<(), SinkError> {
        let started = Instant::now();
        let mut pending = Vec::with_capacity(plan.messages.len());
        for message in &plan.messages {
            let queued = self
                .publisher
                .enqueue(message)
                .map_err(|_| SinkError::KafkaFailed)?;
            if queued.refused() {
                // Counted as it is settled; the notification fails whole, as it would at once.
                let _ = self.publisher.acknowledged(queued).await;
                return Err(SinkError::KafkaFailed);
            }
            pending.push(queued);
        }
        let all = async {
            for queued in pending {
                let topic = queued.message.topic.clone();
                if let Err(e) = self.publisher.acknowledged(queued).await {
                    tracing::warn!(uuid = %plan.uuid, topic = %topic, error = %e, "publish failed");
                    return Err(SinkError::KafkaFailed);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.timeout, all).await {
            Ok(result) => {
                self.metrics
                    .accept_to_ack
                    .observe(started.elapsed().as_secs_f64());
                result
            }
            Err(_) => {
                self.publisher.count_error(ErrorKind::Timeout);
                Err(SinkError::KafkaTimeout)
            }
        }
    }
}

impl Sink for DirectSink {
    fn accept(&self, plan: RoutePlan, held: Reservation) -> SinkFuture<'_> {
        Box::pin(async move {
            let now = Instant::now();
            if !self.inner.recent.lock().unwrap().claim(&plan.uuid, now) {
                return Ok(Acceptance::Duplicate);
            }
            // Published on its own task: a caller that hangs up must not cancel the publish halfway
            // and leave the uuid claimed, or a redelivery would be taken for a duplicate and lost.
            let direct = self.inner.clone();
            let publish = tokio::spawn(async move {
                let result = direct.publish(&plan).await;
                if result.is_err() {
                    direct.recent.lock().unwrap().release(&plan.uuid);
                }
                drop((plan, held));
                result
            });
            match publish.await {
                Ok(Ok(())) => Ok(Acceptance::Accepted),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(SinkError::KafkaFailed),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_uuids_are_bounded_in_time_and_count() {
        let start = Instant::now();
        let mut recent = RecentUuids::new(Duration::from_secs(10), 2);
        assert!(recent.claim("a", start));
        assert!(!recent.claim("a", start), "second claim is a duplicate");
        assert!(recent.claim("b", start));
        assert!(recent.claim("c", start), "capacity evicts the oldest");
        assert!(recent.claim("a", start), "a was evicted");
        let later = start + Duration::from_secs(11);
        assert!(recent.claim("c", later), "the window expired c");
        recent.release("c");
        assert!(
            recent.claim("c", later),
            "a released claim can be made again"
        );
    }
}
