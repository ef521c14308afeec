//! State topics: the current state of each changed resource, fetched once from RingCentral and
//! published to compacted topics keyed by extension (account for account-level resources), so that
//! consumers need neither RingCentral credentials nor a share of the app's rate limits.
//!
//! - [`fetch_table`]: which GET returns each hint's state, its rate-limit group and its state topic.
//! - [`get_template`]: a state GET as documented, and the concrete path of one resource.
//! - [`rate_limits`]: RingCentral's usage-plan groups, default budgets and rate-limit headers.
//! - [`limiter`]: one rate limiter per group, adjusted from RingCentral's answers.
//! - [`fetch`]: one resource fetched whole (all pages) and its answer classified.
//! - [`request`]: a fetch request, as queued on the internal requests topic.
//! - [`fetcher`]: the consumer of the requests topic that fetches and publishes state.
//! - [`queue`]: the requests topic's length, as the fetchers' group sees it.
//! - [`index`]: the sweeps' index of extensions, on a compacted topic.
//! - [`sweep`]: one reconciliation sweep: list, compare, repair.
//! - [`reconciler`]: when sweeps run, and on which replica.

pub mod fetch;
pub mod fetch_table;
pub mod fetcher;
pub mod get_template;
pub mod index;
pub mod limiter;
pub mod queue;
pub mod rate_limits;
pub mod reconciler;
pub mod request;
pub mod sweep;

#[cfg(test)]
mod fake_api;

/// Now, as RFC 3339: when a state was fetched, a request accepted, a sweep repaired.
fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
