//! What one notification may cost: the fan-out caps, checked before anything is serialized.

/// What one notification may cost, decided before anything is serialized. The webhook faces the
/// internet: without caps a 64 KiB body of distinct hints becomes thousands of messages that each copy
/// every hint. The defaults are far above anything RingCentral sends (its table has 12 hints) and let a
/// body-limit-sized batch of ordinary Extension List entries through in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanoutLimits {
    /// Distinct hints in one extension's change.
    pub max_hints_per_change: usize,
    /// Changes (entries of a batched Extension List) in one notification.
    pub max_changes: usize,
    /// Messages planned from one notification.
    pub max_messages: usize,
    /// Bytes of everything planned from one notification (topics, keys, headers, values).
    pub max_plan_bytes: usize,
}

impl Default for FanoutLimits {
    fn default() -> Self {
        FanoutLimits {
            max_hints_per_change: 64,
            max_changes: 4096,
            max_messages: 8192,
            max_plan_bytes: 16 << 20,
        }
    }
}

/// Which cap a notification went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Hints,
    Changes,
    Messages,
    Bytes,
}

impl Overflow {
    /// A bounded label, for metrics and the `rc-unrouted-reason` header.
    pub fn label(self) -> &'static str {
        match self {
            Overflow::Hints => "too_many_hints",
            Overflow::Changes => "too_many_changes",
            Overflow::Messages => "too_many_messages",
            Overflow::Bytes => "plan_too_large",
        }
    }
}
