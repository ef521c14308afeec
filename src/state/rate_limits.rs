//! RingCentral's rate limits as its developer guide describes them: the usage-plan groups, their
//! default budgets, and what an answer's `X-Rate-Limit-*` and `Retry-After` headers say.

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;

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

    pub(super) fn index(self) -> usize {
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
/// The largest budget or remainder taken from a header. RingCentral's are tens of requests; the
/// limiter keeps one entry per counted request, so a broken answer must not make it count billions.
pub const MAX_HEADER_REQUESTS: u32 = 10_000;

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
            limit: number("x-rate-limit-limit").map(requests_from_header),
            remaining: number("x-rate-limit-remaining").map(requests_from_header),
            window: seconds("x-rate-limit-window").filter(|w| !w.is_zero()),
            retry_after: seconds(RETRY_AFTER.as_str()),
        }
    }
}

fn requests_from_header(requests: u64) -> u32 {
    u32::try_from(requests.min(u64::from(MAX_HEADER_REQUESTS))).unwrap_or(MAX_HEADER_REQUESTS)
}

fn duration_from_header(seconds: u64) -> Duration {
    Duration::from_secs(seconds).min(MAX_HEADER_DURATION)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIGHT: RateGroup = RateGroup::Light;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_default_budgets_are_ringcentrals() {
        let budgets = RateGroup::ALL.map(RateGroup::default_budget);
        assert_eq!(
            budgets.map(|b| (b.requests, b.window)),
            [(50, secs(60)), (40, secs(60)), (10, secs(60))]
        );
    }

    #[test]
    fn headers_are_read_tolerantly() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, value.parse().unwrap());
            }
            map
        };
        let answer = RateAnswer::from_response(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[
                ("X-Rate-Limit-Group", "Medium"),
                ("X-Rate-Limit-Limit", "40"),
                ("X-Rate-Limit-Remaining", "0"),
                ("X-Rate-Limit-Window", "60"),
                ("Retry-After", " 15 "),
            ]),
        );
        assert_eq!(
            answer,
            RateAnswer {
                status: 429,
                group: Some(RateGroup::Medium),
                limit: Some(40),
                remaining: Some(0),
                window: Some(secs(60)),
                retry_after: Some(secs(15)),
            }
        );
        let odd = RateAnswer::from_response(
            StatusCode::OK,
            &headers(&[
                ("X-Rate-Limit-Group", "auth-plus"),
                ("X-Rate-Limit-Limit", "many"),
                ("X-Rate-Limit-Remaining", "-1"),
                ("X-Rate-Limit-Window", "0"),
                ("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ]),
        );
        assert_eq!(
            odd,
            RateAnswer {
                status: 200,
                ..RateAnswer::default()
            },
            "what is not understood is left out"
        );
        let huge = RateAnswer::from_response(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[
                ("X-Rate-Limit-Limit", "99999999999"),
                ("X-Rate-Limit-Remaining", "4294967296"),
                ("X-Rate-Limit-Window", "99999999999999"),
                ("Retry-After", "18446744073709551615"),
            ]),
        );
        assert_eq!(huge.limit, Some(MAX_HEADER_REQUESTS));
        assert_eq!(huge.remaining, Some(MAX_HEADER_REQUESTS));
        assert_eq!(huge.window, Some(MAX_HEADER_DURATION));
        assert_eq!(huge.retry_after, Some(MAX_HEADER_DURATION));
    }

    #[test]
    fn group_names_are_read_in_any_case() {
        for (name, group) in [
            ("light", LIGHT),
            ("Medium", RateGroup::Medium),
            ("HEAVY", RateGroup::Heavy),
        ] {
            assert_eq!(name.parse::<RateGroup>(), Ok(group));
        }
        assert_eq!(
            "auth".parse::<RateGroup>(),
            Err(UnknownRateGroup("auth".into()))
        );
    }
}
