//! State topics: the current state of each changed resource, fetched once from RingCentral and
//! published to compacted topics keyed by extension (account for account-level resources), so that
//! consumers need neither RingCentral credentials nor a share of the app's rate limits.
//!
//! - [`fetch_table`]: which GET returns each hint's state, its rate-limit group and its state topic.
//! - [`limiter`]: one rate limiter per usage-plan group, adjusted from RingCentral's answers.

pub mod fetch_table;
pub mod limiter;
