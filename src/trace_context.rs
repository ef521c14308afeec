//! W3C Trace Context: the trace a notification belongs to, carried on every message it becomes, so
//! that a consumer continues the trace. A `traceparent` on the webhook request is continued (same
//! trace, the bridge's own span as the parent); without one, or with one that is not valid, the
//! notification starts a trace. The headers are planned into the spool entry with the messages, so a
//! notification relayed after a restart still carries its trace.

use std::fmt;

use crate::routing::{OutboundMessage, RoutePlan};

/// The request and message header of the trace's position.
pub const TRACEPARENT: &str = "traceparent";
/// Vendors' trace state, passed on unchanged.
pub const TRACESTATE: &str = "tracestate";
/// The CloudEvents distributed-tracing extension's attributes, in the Kafka binding's names.
const CE_TRACEPARENT: &str = "ce_traceparent";
const CE_TRACESTATE: &str = "ce_tracestate";
/// The longest `tracestate` passed on (the W3C limit is 32 entries of at most 256 characters; 512
/// is what the specification asks to propagate at least).
const MAX_TRACESTATE: usize = 512;

/// The most the trace headers add to one message: `traceparent` (always 55 characters) and
/// `tracestate` (at most [`MAX_TRACESTATE`]), twice when the message is a CloudEvent. The fan-out
/// caps count it before the plan is built, since the headers are stamped on the built plan.
pub const MAX_HEADER_BYTES: usize = CE_TRACEPARENT.len()
    + CE_TRACESTATE.len()
    + 2 * (55 + MAX_TRACESTATE)
    + TRACEPARENT.len()
    + TRACESTATE.len();

/// The trace headers one message gets (`traceparent`, `tracestate`); a CloudEvent gets them again
/// in the tracing extension's names.
pub const HEADERS: usize = 2;

/// One notification's place in a trace: the trace and the bridge's span in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// The caller's span, when the trace is continued.
    parent: Option<[u8; 8]>,
    sampled: bool,
    state: Option<String>,
}

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl Traceparent {
    /// `version-traceid-parentid-flags`, as W3C Trace Context level 1 reads it: version 00
    /// exactly, a later version by its first four fields; a trace or parent id of zeros is invalid.
    pub fn parse(header: &str) -> Option<Traceparent> {
        let header = header.trim();
        let mut fields = header.split('-');
        let version = fields.next()?;
        let trace = fields.next()?;
        let parent = fields.next()?;
        let flags = fields.next()?;
        let more = fields.next().is_some();
        let version = u8::from_str_radix(lower_hex(version, 2)?, 16).ok()?;
        if version == 0xff || (version == 0 && more) {
            return None;
        }
        let trace_id: [u8; 16] = decode(lower_hex(trace, 32)?)?;
        let span_id: [u8; 8] = decode(lower_hex(parent, 16)?)?;
        let flags = u8::from_str_radix(lower_hex(flags, 2)?, 16).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Traceparent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

impl TraceContext {
    /// Continues the trace of `traceparent` (and its `tracestate`) with a span of the bridge, or
    /// starts a trace when there is none or it is not valid.
    pub fn continue_or_start(traceparent: Option<&str>, tracestate: Option<&str>) -> TraceContext {
        let span_id = random_id::<8>();
        match traceparent.and_then(Traceparent::parse) {
            Some(caller) => TraceContext {
                trace_id: caller.trace_id,
                span_id,
                parent: Some(caller.span_id),
                sampled: caller.sampled,
                state: tracestate
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE && s.is_ascii())
                    .map(str::to_string),
            },
            None => TraceContext {
                trace_id: random_id::<16>(),
                span_id,
                parent: None,
                sampled: true,
                state: None,
            },
        }
    }

    /// The trace, the bridge's span, the caller's span (if continued) and whether it is sampled.
    pub fn ids(&self) -> ([u8; 16], [u8; 8], Option<[u8; 8]>, bool) {
        (self.trace_id, self.span_id, self.parent, self.sampled)
    }

    /// The trace id as 32 hex digits, for logs.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// Adds the trace headers to every message of `plan`.
    pub fn stamp(&self, plan: &mut RoutePlan) {
        // Formatted once: every message carries the same.
        let parent = self.to_string();
        for message in &mut plan.messages {
            self.stamp_with(message, &parent);
        }
    }

    /// Adds the trace headers to `message`, and the CloudEvents tracing extension's when it is a
    /// CloudEvent.
    pub fn stamp_message(&self, message: &mut OutboundMessage) {
        self.stamp_with(message, &self.to_string());
    }

    fn stamp_with(&self, message: &mut OutboundMessage, parent: &str) {
        let cloudevent = message.header("ce_specversion").is_some();
        message
            .headers
            .push((TRACEPARENT.into(), parent.to_string()));
        if let Some(state) = &self.state {
            message.headers.push((TRACESTATE.into(), state.clone()));
        }
        if cloudevent {
            message
                .headers
                .push((CE_TRACEPARENT.into(), parent.to_string()));
            if let Some(state) = &self.state {
                message.headers.push((CE_TRACESTATE.into(), state.clone()));
            }
        }
    }
}

/// `text` when it is `len` lowercase hex digits.
fn lower_hex(text: &str, len: usize) -> Option<&str> {
    (text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then_some(text)
}

fn decode<const N: usize>(hex: &str) -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(bytes)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(2 * bytes.len());
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    text
}

/// A random id that is not all zeros (which W3C reserves for "none").
pub fn random_id<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    while id == [0u8; N] {
        RANDOM.with_borrow_mut(|random| random.fill(&mut id));
    }
    id
}

/// How many of the OS's random bytes a thread takes at once: a notification's two ids take 24, so
/// one system call serves about 170 notifications instead of two calls serving one.
const RANDOM_BATCH: usize = 4096;

thread_local! {
    static RANDOM: std::cell::RefCell<RandomBytes> = const {
        std::cell::RefCell::new(RandomBytes { bytes: [0; RANDOM_BATCH], used: RANDOM_BATCH })
    };
}

/// Bytes from the OS's random source, handed out once each.
struct RandomBytes {
    bytes: [u8; RANDOM_BATCH],
    used: usize,
}

impl RandomBytes {
    fn fill(&mut self, out: &mut [u8]) {
        if self.used + out.len() > RANDOM_BATCH {
            getrandom::fill(&mut self.bytes).expect("the OS random source");
            self.used = 0;
        }
        out.copy_from_slice(&self.bytes[self.used..self.used + out.len()]);
        self.used += out.len();
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` of the bridge's span.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = if self.sampled { "01" } else { "00" };
        write!(
            f,
            "00-{}-{}-{flags}",
            hex(&self.trace_id),
            hex(&self.span_id)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_a_span_of_the_bridge() {
        let context = TraceContext::continue_or_start(Some(GIVEN), Some("rojo=00f067aa0ba902b7"));
        let parent = context.to_string();
        assert!(
            parent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{parent}"
        );
        assert!(parent.ends_with("-01"));
        assert_ne!(parent, GIVEN, "the bridge's span is the new parent");
        assert_eq!(context.state.as_deref(), Some("rojo=00f067aa0ba902b7"));
        let unsampled = GIVEN.replace("-01", "-00");
        let context = TraceContext::continue_or_start(Some(&unsampled), None);
        assert!(
            context.to_string().ends_with("-00"),
            "the sampling decision is kept"
        );
    }

    #[test]
    fn an_invalid_traceparent_starts_a_trace() {
        for invalid in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let context = TraceContext::continue_or_start(Some(invalid), Some("a=b"));
            assert_ne!(
                context.trace_id(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{invalid}"
            );
            assert_eq!(
                context.state, None,
                "{invalid}: a tracestate belongs to its parent"
            );
            assert!(
                Traceparent::parse(&context.to_string()).is_some(),
                "{invalid}: starts a valid one"
            );
        }
        // A later version is read by its first four fields.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        let context = TraceContext::continue_or_start(Some(future), None);
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn started_traces_differ() {
        let a = TraceContext::continue_or_start(None, None);
        let b = TraceContext::continue_or_start(None, None);
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(Traceparent::parse(&a.to_string()).is_some());
    }

    #[test]
    fn ids_stay_distinct_across_many_batches_of_random_bytes() {
        // Ten batches' worth, ids of both sizes interleaved as the spans take them.
        let count = 10 * RANDOM_BATCH / 24;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..count {
            let trace = random_id::<16>();
            let span = random_id::<8>();
            assert!(seen.insert(trace.to_vec()), "a trace id came twice");
            assert!(seen.insert(span.to_vec()), "a span id came twice");
        }
        assert_eq!(seen.len(), 2 * count);
    }
}
