//! The one shutdown signal of a running bridge. Every task watches a [`Shutdown`]: it is quiet while
//! the bridge runs, then carries the deadline by which everything must have stopped, so that a task
//! can both notice the shutdown and know how long it still has.

use tokio::sync::watch;
use tokio::time::Instant;

/// Begins a shutdown. Dropping it without [`Trigger::begin`] counts as a shutdown due now: a task
/// whose owner is gone has nobody left to stop it.
#[derive(Debug)]
pub struct Trigger(watch::Sender<Option<Instant>>);

/// What a task watches.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<Option<Instant>>);

/// A trigger and the signal it sends; clone the signal for each task.
pub fn channel() -> (Trigger, Shutdown) {
    let (trigger, signal) = watch::channel(None);
    (Trigger(trigger), Shutdown(signal))
}

impl Trigger {
    /// Tells every watcher to stop by `deadline`. Only the first call counts.
    pub fn begin(&self, deadline: Instant) {
        self.0.send_if_modified(|current| {
            let first = current.is_none();
            if first {
                *current = Some(deadline);
            }
            first
        });
    }
}

impl Shutdown {
    /// Completes when the shutdown begins, with its deadline.
    pub async fn begun(&mut self) -> Instant {
        match self.0.wait_for(Option::is_some).await {
            Ok(deadline) => deadline.unwrap_or_else(Instant::now),
            Err(_) => Instant::now(),
        }
    }

    /// The deadline, once the shutdown has begun.
    pub fn deadline(&self) -> Option<Instant> {
        match *self.0.borrow() {
            // A trigger dropped without a deadline: due now, as `begun` says.
            None if self.0.has_changed().is_err() => Some(Instant::now()),
            deadline => deadline,
        }
    }

    /// Completes at the deadline: never while the bridge runs.
    pub async fn deadline_passed(&mut self) {
        let deadline = self.begun().await;
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn every_watcher_learns_the_first_deadline() {
        let (trigger, signal) = channel();
        let (mut a, mut b) = (signal.clone(), signal);
        assert_eq!(a.deadline(), None);
        let deadline = Instant::now() + Duration::from_secs(5);
        trigger.begin(deadline);
        trigger.begin(deadline + Duration::from_secs(60));
        assert_eq!(a.begun().await, deadline);
        assert_eq!(b.begun().await, deadline);
        b.deadline_passed().await;
        assert!(Instant::now() >= deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_trigger_stops_the_watchers_now() {
        let (trigger, mut signal) = channel();
        drop(trigger);
        let before = Instant::now();
        assert_eq!(signal.deadline(), Some(before));
        assert_eq!(signal.begun().await, before);
    }
}
