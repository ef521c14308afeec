//! Whether the bridge can take notifications now: what `/readyz` reports. Its own module so that the
//! spool (storage) can say how it is without depending on HTTP.

/// Whether the bridge can accept notifications now, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolHealth {
    Ok,
    Full,
    Unwritable,
    /// `direct` mode: there is no spool.
    Absent,
}

impl SpoolHealth {
    pub fn label(self) -> &'static str {
        match self {
            SpoolHealth::Ok => "ok",
            SpoolHealth::Full => "full",
            SpoolHealth::Unwritable => "unwritable",
            SpoolHealth::Absent => "absent",
        }
    }
}

/// What `/readyz` asks; implemented by the application over the spool.
pub trait Readiness: Send + Sync + 'static {
    fn spool_health(&self) -> SpoolHealth;

    /// Shutdown has begun: a load balancer should send nothing new.
    fn shutting_down(&self) -> bool {
        false
    }

    /// Whether state topics are on: `/readyz` then reports the fetcher.
    fn state_enabled(&self) -> bool {
        false
    }
}
