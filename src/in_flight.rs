//! The bytes planned by every webhook request in flight, together. One notification's plan is
//! capped (`--max-plan-bytes`, [`crate::routing::FanoutLimits`]), but a plan is held until the spool
//! has committed it (or, in direct mode, until Kafka acknowledged it), and up to `--max-connections`
//! requests may each hold one: without a cap on their sum, many concurrent requests of large plans
//! could ask for gigabytes. A request whose plan does not fit in what is left is answered 503 with
//! `Retry-After` at once, before anything is stored or published.
//!
//! The budget is held by the work, not by the request: a caller that hangs up leaves its plan on its
//! way to the spool's writer or to Kafka, and the bytes count until that work is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::IntGauge;

/// The budget of planned bytes in flight (`--max-plan-bytes-in-flight`).
pub struct PlansInFlight {
    max_bytes: usize,
    held: AtomicUsize,
    /// `rckb_plan_bytes_in_flight`.
    gauge: IntGauge,
}

/// Bytes of one plan, counted against [`PlansInFlight`] until dropped.
#[must_use = "the bytes are released when the reservation is dropped"]
pub struct Reservation {
    budget: Option<Arc<PlansInFlight>>,
    bytes: usize,
}

impl Reservation {
    /// Counts against no budget: for plans that come from no webhook request (the tests' own).
    pub fn unbudgeted() -> Reservation {
        Reservation {
            budget: None,
            bytes: 0,
        }
    }
}

impl PlansInFlight {
    pub fn new(max_bytes: usize, gauge: IntGauge) -> Arc<PlansInFlight> {
        Arc::new(PlansInFlight {
            max_bytes,
            held: AtomicUsize::new(0),
            gauge,
        })
    }

    /// Counts `bytes` against the budget, or `None` if they do not fit in what is left.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&sum| sum <= self.max_bytes)
            })
            .ok()?;
        self.gauge.add(bytes as i64);
        Some(Reservation {
            budget: Some(self.clone()),
            bytes,
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
            budget.gauge.sub(self.bytes as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max_bytes: usize) -> Arc<PlansInFlight> {
        PlansInFlight::new(max_bytes, IntGauge::new("held", "held").unwrap())
    }

    #[test]
    fn plans_are_reserved_up_to_the_budget_and_released_when_their_work_is_done() {
        let budget = budget(100);
        let first = budget.reserve(60).expect("fits");
        assert!(budget.reserve(41).is_none(), "over what is left");
        let second = budget.reserve(40).expect("fits exactly");
        assert_eq!((budget.held(), budget.gauge.get()), (100, 100));
        assert!(budget.reserve(1).is_none(), "nothing left");
        drop(first);
        assert_eq!((budget.held(), budget.gauge.get()), (40, 40));
        assert!(
            budget.reserve(60).is_some(),
            "released bytes are free again"
        );
        drop(second);
        assert_eq!((budget.held(), budget.gauge.get()), (0, 0));
    }

    #[test]
    fn a_refused_plan_holds_nothing() {
        let budget = budget(100);
        assert!(budget.reserve(101).is_none());
        assert!(budget.reserve(usize::MAX).is_none(), "no overflow");
        assert_eq!((budget.held(), budget.gauge.get()), (0, 0));
        assert!(budget.reserve(100).is_some());
    }
}
