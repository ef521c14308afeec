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

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A usage-plan group of RingCentral's API: calls of one group share one budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum RateGroup {
    Light,
    Medium,
    Heavy,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown rate-limit group `{0}`: light, medium or heavy")]
pub struct UnknownRateGroup(pub String);

impl RateGroup {
    pub const ALL: [RateGroup; 3] = [RateGroup::Light, RateGroup::Medium, RateGroup::Heavy];

    /// A bounded label, for metrics and logs; also the name RingCentral's `X-Rate-Limit-Group` uses.
    pub fn label(self) -> &'static str {
        match self {
            RateGroup::Light => "light",
            RateGroup::Medium => "medium",
            RateGroup::Heavy => "heavy",
        }
    }

    /// RingCentral's default budget per user and app, used until an answer announces the real one.
    pub fn default_budget(self) -> Budget {
        let requests = match self {
            RateGroup::Light => 50,
            RateGroup::Medium => 40,
            RateGroup::Heavy => 10,
        };
        Budget {
            requests,
            window: Duration::from_secs(60),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::str::FromStr for RateGroup {
    type Err = UnknownRateGroup;
    /// Any case: RingCentral documents `light` in its headers and `Light` in its reference.
    fn from_str(name: &str) -> Result<RateGroup, UnknownRateGroup> {
        RateGroup::ALL
            .into_iter()
            .find(|group| group.label().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| UnknownRateGroup(name.to_string()))
    }
}

impl TryFrom<String> for RateGroup {
    type Error = UnknownRateGroup;
    fn try_from(name: String) -> Result<RateGroup, UnknownRateGroup> {
        name.parse()
    }
}

impl fmt::Display for RateGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// How many requests a group may send in any window of `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub requests: u32,
    pub window: Duration,
}

/// The wait when a 429 has no `Retry-After`: RingCentral asks for at least 30 s.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);
/// The longest window or pause taken from a header. RingCentral's are a minute; a larger value is a
/// broken answer, and it must not stall a group for days (nor overflow the clock).
pub const MAX_HEADER_DURATION: Duration = Duration::from_secs(3600);
/// Sends are counted this much longer than the window: RingCentral counts a request when it arrives,
/// and two requests sent a window apart can arrive closer together than that.
const ARRIVAL_MARGIN: Duration = Duration::from_secs(1);

/// What an answer says about the budget: its status and its `X-Rate-Limit-*` and `Retry-After`
/// headers. Values that are missing or not understood are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateAnswer {
    pub status: u16,
    /// `X-Rate-Limit-Group`, when it names a known group (RingCentral says the names may change).
    pub group: Option<RateGroup>,
    pub limit: Option<u32>,
    pub remaining: Option<u32>,
    pub window: Option<Duration>,
    pub retry_after: Option<Duration>,
}

impl RateAnswer {
    pub fn from_response(status: StatusCode, headers: &HeaderMap) -> RateAnswer {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let number = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
        let seconds = |name: &str| number(name).map(duration_from_header);
        RateAnswer {
            status: status.as_u16(),
            group: text("x-rate-limit-group").and_then(|g| g.parse().ok()),
            limit: number("x-rate-limit-limit").map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            remaining: number("x-rate-limit-remaining")
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            window: seconds("x-rate-limit-window").filter(|w| !w.is_zero()),
            retry_after: seconds(RETRY_AFTER.as_str()),
        }
    }
}

fn duration_from_header(seconds: u64) -> Duration {
    Duration::from_secs(seconds).min(MAX_HEADER_DURATION)
}

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
