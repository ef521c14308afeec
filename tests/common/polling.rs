//! The one way a test waits: [`eventually`] asks a probe again every few milliseconds until it
//! answers, and fails the test naming what it waited for when the time given runs out. Never a bare
//! sleep, never a loop of one's own.

use std::fmt::Display;
use std::time::Duration;

use tokio::time::Instant;

/// How often a probe is asked again.
const EVERY: Duration = Duration::from_millis(10);

/// What a probe answers: `true` or `Some(value)` when the wait is over.
pub trait Settled {
    type Value;
    fn settled(self) -> Option<Self::Value>;
}

impl Settled for bool {
    type Value = ();
    fn settled(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Settled for Option<T> {
    type Value = T;
    fn settled(self) -> Option<T> {
        self
    }
}

/// Asks `probe` until it answers `true` or `Some(value)` (returned), at most `timeout`; a timeout
/// fails the test with `what`. On tokio's clock, so it also waits in tests with paused time.
pub async fn eventually<R: Settled>(
    what: impl Display,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> R,
) -> R::Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await.settled() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(EVERY).await;
    }
}
