//! One rate limiter per RingCentral usage-plan group, so that the state fetcher never sends more
//! requests than RingCentral allows. The budgets are per app and user and shared with every other
//! client of that user: going over them costs a 60 s penalty that restarts with every request sent
//! during it, so the limiter errs on the side of sending later.
//!
//! Each group keeps a log of its sends (a sliding window, as RingCentral counts) and is adjusted by
//! every answer: `X-Rate-Limit-Limit` and `-Window` set the budget, `-Remaining` lower than the log says
//! counts sends the bridge did not make (other clients of the same user), `Remaining: 0` waits a whole
//! window, and a 429 (or a 503 with `Retry-After`) pauses the group for `Retry-After` (30 s when absent).
//! Until a group's budget has been announced by a header, it sends one request at a time: the defaults
//! may be larger than the app's real budget, and a burst at start-up must not spend it before the
//! first answer says what it is.
//!
//! Why not `governor`: it is a GCRA with a fixed quota per limiter, and it has no notion of a budget
//! learnt from answers, of counting other clients' requests, of pausing a group, or of a probe before
//! the budget is known: all of that would sit beside it, and what remains of it (a count of sends in a
//! window) is a few lines of a `VecDeque`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::rate_limits::{Budget, DEFAULT_RETRY_AFTER, RateAnswer, RateGroup};

/// Sends are counted this much longer than the window: RingCentral counts a request when it arrives,
/// and two requests sent a window apart can arrive closer together than that.
const ARRIVAL_MARGIN: Duration = Duration::from_secs(1);

/// Why a group stopped sending for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// 429: over a limit.
    TooManyRequests,
    /// 503 with `Retry-After`.
    Unavailable,
    /// `X-Rate-Limit-Remaining: 0`.
    BudgetSpent,
}

impl PauseReason {
    /// A bounded label, for metrics.
    pub fn label(self) -> &'static str {
        match self {
            PauseReason::TooManyRequests => "too_many_requests",
            PauseReason::Unavailable => "unavailable",
            PauseReason::BudgetSpent => "budget_spent",
        }
    }
}

/// A pause an answer imposed on a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    pub group: RateGroup,
    pub reason: PauseReason,
    pub duration: Duration,
}

/// One group's state.
struct Bucket {
    budget: Budget,
    /// Send times, oldest first, including sends of other clients inferred from `Remaining`.
    sends: VecDeque<Instant>,
    /// The longest window this group has had: sends are kept that long, so a window that grows
    /// still sees them.
    longest_window: Duration,
    paused_until: Option<Instant>,
    /// Whether an answer has announced the budget (`X-Rate-Limit-Limit`).
    budget_announced: bool,
    /// Whether the one request allowed before the budget is announced is in flight.
    probing: bool,
}

enum Decision {
    Send { probe: bool },
    WaitUntil(Instant),
    WaitForProbe,
}

impl Bucket {
    fn new(budget: Budget) -> Bucket {
        Bucket {
            budget,
            sends: VecDeque::new(),
            longest_window: budget.window,
            paused_until: None,
            budget_announced: false,
            probing: false,
        }
    }

    fn counted_window(&self) -> Duration {
        self.budget.window + ARRIVAL_MARGIN
    }

    /// Forgets sends no window can see any more; returns the index of the first send in the window.
    fn first_in_window(&mut self, now: Instant) -> usize {
        let keep = self.longest_window + ARRIVAL_MARGIN;
        while self.sends.front().is_some_and(|&s| s + keep <= now) {
            self.sends.pop_front();
        }
        let window = self.counted_window();
        self.sends.partition_point(|&s| s + window <= now)
    }

    fn in_window(&mut self, now: Instant) -> usize {
        self.sends.len() - self.first_in_window(now)
    }

    fn decide(&mut self, now: Instant) -> Decision {
        if let Some(until) = self.paused_until.filter(|&until| until > now) {
            return Decision::WaitUntil(until);
        }
        if !self.budget_announced && self.probing {
            return Decision::WaitForProbe;
        }
        let first = self.first_in_window(now);
        let in_window = self.sends.len() - first;
        let allowed = self.budget.requests as usize;
        if in_window < allowed {
            self.sends.push_back(now);
            let probe = !self.budget_announced;
            self.probing |= probe;
            return Decision::Send { probe };
        }
        // The send that must leave the window before one more fits.
        match self.sends.get(first + in_window - allowed) {
            Some(&oldest) => Decision::WaitUntil(oldest + self.counted_window()),
            // A budget of zero requests: nothing leaves, wait a window and look again.
            None => Decision::WaitUntil(now + self.budget.window),
        }
    }

    fn pause(
        &mut self,
        now: Instant,
        group: RateGroup,
        reason: PauseReason,
        duration: Duration,
    ) -> Pause {
        let until = now + duration;
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
        Pause {
            group,
            reason,
            duration,
        }
    }

    fn observe(&mut self, now: Instant, group: RateGroup, answer: &RateAnswer) -> Option<Pause> {
        if let Some(requests) = answer.limit.filter(|&n| n > 0) {
            self.budget.requests = requests;
            self.budget_announced = true;
        }
        if let Some(window) = answer.window {
            self.budget.window = window;
            self.longest_window = self.longest_window.max(window);
        }
        let mut pause = None;
        if let Some(remaining) = answer.remaining {
            let available = (self.budget.requests as usize).saturating_sub(self.in_window(now));
            let spent_by_others = available.saturating_sub(remaining as usize);
            self.sends.extend(std::iter::repeat_n(now, spent_by_others));
            if remaining == 0 {
                let window = self.budget.window;
                pause = Some(self.pause(now, group, PauseReason::BudgetSpent, window));
            }
        }
        let retry = match answer.status {
            429 => Some((
                PauseReason::TooManyRequests,
                answer.retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
            )),
            503 => answer.retry_after.map(|d| (PauseReason::Unavailable, d)),
            _ => None,
        };
        if let Some((reason, duration)) = retry {
            // The longer of the two pauses wins; a 429 names itself as the reason.
            let longest = pause.map_or(duration, |p: Pause| p.duration.max(duration));
            pause = Some(self.pause(now, group, reason, longest));
        }
        pause
    }
}

struct Group {
    bucket: Mutex<Bucket>,
    /// Taken while a request waits for its turn: requests of a group are let through in the order they
    /// asked, and the bucket's lock is never held across a wait.
    turn: tokio::sync::Mutex<()>,
    /// Signalled when a probe ends.
    probe_done: Notify,
}

impl Group {
    fn bucket(&self) -> MutexGuard<'_, Bucket> {
        // The bucket is consistent after every statement: a panic elsewhere cannot leave it half-done.
        self.bucket.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The rate limiters of the three groups, shared by every fetch of one bridge.
pub struct RateLimiter {
    groups: [Group; 3],
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RateLimiter");
        for group in RateGroup::ALL {
            debug.field(group.label(), &self.budget(group));
        }
        debug.finish()
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new()
    }
}

impl RateLimiter {
    /// Limiters with RingCentral's default budgets.
    pub fn new() -> RateLimiter {
        RateLimiter::with_budgets(RateGroup::default_budget)
    }

    /// Limiters starting from other budgets (an app with raised limits); answers still adjust them.
    pub fn with_budgets(budget: impl Fn(RateGroup) -> Budget) -> RateLimiter {
        RateLimiter {
            groups: RateGroup::ALL.map(|group| Group {
                bucket: Mutex::new(Bucket::new(budget(group))),
                turn: tokio::sync::Mutex::new(()),
                probe_done: Notify::new(),
            }),
        }
    }

    fn group(&self, group: RateGroup) -> &Group {
        &self.groups[group.index()]
    }

    /// Waits until a request of `group` may be sent, and counts it as sent. Pass the request's answer
    /// to [`Permit::observe`]; dropping the permit unobserved (no answer came) is fine.
    pub async fn acquire(&self, group: RateGroup) -> Permit<'_> {
        let state = self.group(group);
        let _turn = state.turn.lock().await;
        loop {
            let decision = state.bucket().decide(Instant::now());
            match decision {
                Decision::Send { probe } => {
                    return Permit {
                        limiter: self,
                        group,
                        probe,
                    };
                }
                Decision::WaitUntil(until) => tokio::time::sleep_until(until).await,
                Decision::WaitForProbe => state.probe_done.notified().await,
            }
        }
    }

    /// The group's budget as last announced (or the default).
    pub fn budget(&self, group: RateGroup) -> Budget {
        self.group(group).bucket().budget
    }

    /// How much longer the group is paused, if it is.
    pub fn paused_for(&self, group: RateGroup) -> Option<Duration> {
        let until = self.group(group).bucket().paused_until?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

/// The right to send one request of a group, counted when it was granted.
#[must_use = "a permit is the right to send one request"]
pub struct Permit<'a> {
    limiter: &'a RateLimiter,
    group: RateGroup,
    probe: bool,
}

impl Permit<'_> {
    pub fn group(&self) -> RateGroup {
        self.group
    }

    /// Adjusts the group from the request's answer; returns the pause it imposed, if any. The answer
    /// is applied to the permit's group: `answer.group` naming another one means the fetch table's
    /// group is wrong, which the caller may report.
    pub fn observe(self, answer: &RateAnswer) -> Option<Pause> {
        // The bucket's lock is released here, before `drop(self)` takes it to end a probe.
        self.limiter
            .group(self.group)
            .bucket()
            .observe(Instant::now(), self.group, answer)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe {
            let state = self.limiter.group(self.group);
            state.bucket().probing = false;
            state.probe_done.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    const LIGHT: RateGroup = RateGroup::Light;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A 200 announcing a budget of `limit` per `window` seconds with `remaining` left.
    fn announcing(limit: u32, remaining: u32, window: u64) -> RateAnswer {
        RateAnswer {
            status: 200,
            group: Some(LIGHT),
            limit: Some(limit),
            remaining: Some(remaining),
            window: Some(secs(window)),
            retry_after: None,
        }
    }

    fn status(status: u16, retry_after: Option<u64>) -> RateAnswer {
        RateAnswer {
            status,
            retry_after: retry_after.map(secs),
            ..RateAnswer::default()
        }
    }

    /// How long `acquire` waited.
    async fn wait_for_turn(limiter: &RateLimiter, group: RateGroup) -> (Duration, Permit<'_>) {
        let asked = Instant::now();
        let permit = limiter.acquire(group).await;
        (asked.elapsed(), permit)
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_sends_its_announced_budget_then_waits_for_the_window() {
        let limiter = RateLimiter::new();
        let (_, first) = wait_for_turn(&limiter, LIGHT).await;
        assert_eq!(first.observe(&announcing(3, 2, 10)), None);
        assert_eq!(
            limiter.budget(LIGHT),
            Budget {
                requests: 3,
                window: secs(10)
            }
        );
        for _ in 0..2 {
            let (waited, permit) = wait_for_turn(&limiter, LIGHT).await;
            assert_eq!(waited, Duration::ZERO);
            drop(permit);
        }
        let (waited, _) = wait_for_turn(&limiter, LIGHT).await;
        assert_eq!(
            waited,
            secs(10) + ARRIVAL_MARGIN,
            "the fourth waits until the first leaves the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn until_the_budget_is_announced_one_request_is_in_flight() {
        let limiter = Arc::new(RateLimiter::new());
        let probe = limiter.acquire(LIGHT).await;
        let second = {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let _permit = limiter.acquire(LIGHT).await;
                Instant::now()
            })
        };
        tokio::time::sleep(secs(5)).await;
        assert!(
            !second.is_finished(),
            "the second waits for the probe's answer"
        );
        // An answer without the budget: the next request probes again.
        let answered = Instant::now();
        assert_eq!(probe.observe(&status(500, None)), None);
        assert_eq!(second.await.unwrap(), answered);

        let probe = limiter.acquire(LIGHT).await;
        drop(probe);
        let (waited, permit) = wait_for_turn(&limiter, LIGHT).await;
        assert_eq!(
            waited,
            Duration::ZERO,
            "a probe without an answer ends when dropped"
        );
        let _ = permit.observe(&announcing(50, 47, 60));
        let permits: Vec<Permit<'_>> = permits_at_once(&limiter, 5).await;
        assert_eq!(permits.len(), 5, "once announced, requests go in parallel");
    }

    /// `n` permits of Light taken at once, without answering any.
    async fn permits_at_once(limiter: &RateLimiter, n: usize) -> Vec<Permit<'_>> {
        let start = Instant::now();
        let mut permits = Vec::new();
        for _ in 0..n {
            permits.push(limiter.acquire(LIGHT).await);
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        permits
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_zero_waits_a_whole_window() {
        let limiter = RateLimiter::new();
        let permit = limiter.acquire(LIGHT).await;
        assert_eq!(
            permit.observe(&announcing(10, 0, 20)),
            Some(Pause {
                group: LIGHT,
                reason: PauseReason::BudgetSpent,
                duration: secs(20),
            })
        );
        assert_eq!(limiter.paused_for(LIGHT), Some(secs(20)));
        let (waited, _) = wait_for_turn(&limiter, LIGHT).await;
        // The budget is spent as of the answer: those sends leave the window a margin later.
        assert_eq!(waited, secs(20) + ARRIVAL_MARGIN);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_its_group_for_retry_after_and_no_other_group() {
        let limiter = RateLimiter::new();
        let permit = limiter.acquire(RateGroup::Medium).await;
        assert_eq!(
            permit.observe(&status(429, Some(7))),
            Some(Pause {
                group: RateGroup::Medium,
                reason: PauseReason::TooManyRequests,
                duration: secs(7),
            })
        );
        assert_eq!(limiter.paused_for(RateGroup::Medium), Some(secs(7)));
        assert_eq!(limiter.paused_for(LIGHT), None);
        let (waited, _) = wait_for_turn(&limiter, LIGHT).await;
        assert_eq!(waited, Duration::ZERO);
        let (waited, _) = wait_for_turn(&limiter, RateGroup::Medium).await;
        assert_eq!(waited, secs(7));
        assert_eq!(limiter.paused_for(RateGroup::Medium), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_without_retry_after_waits_30_seconds() {
        let limiter = RateLimiter::new();
        let permit = limiter.acquire(RateGroup::Heavy).await;
        let pause = permit.observe(&status(429, None)).unwrap();
        assert_eq!(pause.duration, DEFAULT_RETRY_AFTER);
        assert_eq!(pause.duration, secs(30));
        let (waited, _) = wait_for_turn(&limiter, RateGroup::Heavy).await;
        assert_eq!(waited, secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_503_pauses_only_when_it_says_how_long() {
        let limiter = RateLimiter::new();
        let permit = limiter.acquire(LIGHT).await;
        assert_eq!(permit.observe(&status(503, None)), None);
        let permit = limiter.acquire(LIGHT).await;
        let pause = permit.observe(&status(503, Some(12))).unwrap();
        assert_eq!(pause.reason, PauseReason::Unavailable);
        let (waited, _) = wait_for_turn(&limiter, LIGHT).await;
        assert_eq!(waited, secs(12));
    }

    #[tokio::test(start_paused = true)]
    async fn a_remaining_lower_than_counted_counts_the_other_clients_of_the_user() {
        let limiter = RateLimiter::new();
        let permit = limiter.acquire(LIGHT).await;
        // The bridge sent 1 of 5; RingCentral counts 4.
        assert_eq!(permit.observe(&announcing(5, 1, 60)), None);
        let (waited, _) = wait_for_turn(&limiter, LIGHT).await;
        assert_eq!(waited, Duration::ZERO);
        let (waited, _) = wait_for_turn(&limiter, LIGHT).await;
        assert_eq!(waited, secs(60) + ARRIVAL_MARGIN);
    }

    /// What the simulated RingCentral answers to one request.
    #[derive(Debug, Clone)]
    enum Reply {
        /// A 200; `others` requests of other clients are counted besides the bridge's.
        Ok {
            others: u32,
        },
        TooManyRequests {
            retry_after: Option<u64>,
        },
        Unavailable {
            retry_after: Option<u64>,
        },
        ServerError,
    }

    fn reply() -> impl Strategy<Value = Reply> {
        prop_oneof![
            6 => (0u32..4).prop_map(|others| Reply::Ok { others }),
            1 => proptest::option::of(0u64..90)
                .prop_map(|retry_after| Reply::TooManyRequests { retry_after }),
            1 => proptest::option::of(0u64..30)
                .prop_map(|retry_after| Reply::Unavailable { retry_after }),
            1 => Just(Reply::ServerError),
        ]
    }

    /// Up to `max` requests asked for within `span` ms, each with how long its answer takes (below
    /// `latency` ms) and the answer.
    fn requests(
        max: usize,
        span: u64,
        latency: u64,
    ) -> impl Strategy<Value = Vec<(u64, u64, Reply)>> {
        proptest::collection::vec((0..span, 0..latency, reply()), 1..max)
    }

    struct Run {
        sends: Vec<Instant>,
        /// When an answer paused the group, and for how long.
        pauses: Vec<(Instant, Duration)>,
    }

    /// Runs the requests through one limiter against a RingCentral that counts the bridge's sends
    /// (and `others`) in a sliding window, announcing `budget` in every answer if there is one.
    fn simulate(budget: Option<(u32, u64)>, requests: Vec<(u64, u64, Reply)>) -> Run {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async move {
            let limiter = Arc::new(RateLimiter::new());
            let sends = Arc::new(Mutex::new(Vec::new()));
            let pauses = Arc::new(Mutex::new(Vec::new()));
            let start = Instant::now();
            let mut tasks = Vec::new();
            for (asked_at, latency, reply) in requests {
                let (limiter, sends, pauses) = (limiter.clone(), sends.clone(), pauses.clone());
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep_until(start + Duration::from_millis(asked_at)).await;
                    let permit = limiter.acquire(LIGHT).await;
                    sends.lock().unwrap().push(Instant::now());
                    tokio::time::sleep(Duration::from_millis(latency)).await;
                    let now = Instant::now();
                    let (code, retry_after, others) = match reply {
                        Reply::Ok { others } => (200, None, others),
                        Reply::TooManyRequests { retry_after } => (429, retry_after, 0),
                        Reply::Unavailable { retry_after } => (503, retry_after, 0),
                        Reply::ServerError => (500, None, 0),
                    };
                    let mut answer = status(code, retry_after);
                    if let Some((limit, window)) = budget {
                        let counted = sends
                            .lock()
                            .unwrap()
                            .iter()
                            .filter(|&&s| s + secs(window) > now)
                            .count() as u32;
                        answer = RateAnswer {
                            remaining: Some(limit.saturating_sub(counted + others)),
                            ..announcing(limit, 0, window)
                        };
                        answer.status = code;
                        answer.retry_after = retry_after.map(secs);
                    }
                    if let Some(pause) = permit.observe(&answer) {
                        pauses.lock().unwrap().push((now, pause.duration));
                    }
                }));
            }
            let all = async {
                for task in tasks {
                    task.await.unwrap();
                }
            };
            tokio::time::timeout(secs(86_400), all)
                .await
                .expect("every request gets its turn within a day");
            let mut sends = sends.lock().unwrap().clone();
            sends.sort();
            let pauses = pauses.lock().unwrap().clone();
            Run { sends, pauses }
        })
    }

    /// The most sends in any window of `window`.
    fn busiest_window(sends: &[Instant], window: Duration) -> usize {
        sends
            .iter()
            .map(|&from| {
                sends
                    .iter()
                    .filter(|&&s| s >= from && s < from + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn no_window_holds_more_sends_than_the_announced_budget(
            limit in 1u32..8,
            window in 1u64..30,
            requests in requests(40, 180_000, 3_000),
        ) {
            let run = simulate(Some((limit, window)), requests);
            prop_assert!(busiest_window(&run.sends, secs(window)) <= limit as usize);
            for (at, pause) in &run.pauses {
                prop_assert!(
                    run.sends.iter().all(|&s| s <= *at || s >= *at + *pause),
                    "a send during a pause of {pause:?} from {at:?}"
                );
            }
        }

        #[test]
        fn without_headers_no_window_holds_more_than_the_default_budget(
            // More than the budget, asked for within one window and answered fast (one request is in
            // flight at a time while no budget is announced).
            requests in requests(120, 60_000, 200),
        ) {
            let run = simulate(None, requests);
            let budget = LIGHT.default_budget();
            prop_assert!(busiest_window(&run.sends, budget.window) <= budget.requests as usize);
            for (at, pause) in &run.pauses {
                prop_assert!(run.sends.iter().all(|&s| s <= *at || s >= *at + *pause));
            }
        }
    }
}
