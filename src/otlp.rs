//! Optional export of spans over OTLP/HTTP (`--otlp-endpoint`): the webhook request's span (kind
//! server) and, per message the relay published, a producer span, named and attributed by
//! OpenTelemetry's messaging conventions. The spans carry the ids of the bridge's own trace context
//! ([`crate::trace_context`]), the ones its messages' `traceparent` headers carry, so the collector
//! sees the same trace as the consumers continue; a producer span's parent comes from its message's
//! header, so it joins the request's trace even when the message was relayed after a restart.
//!
//! OpenTelemetry's batch processor queues them (bounded: a full queue drops spans, never waits) and
//! exports from its own thread.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanProcessor};

use crate::routing::Outbound;
use crate::trace_context::{TRACEPARENT, TraceContext, Traceparent};

/// How long an export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The process's spans, once [`install`]ed: like OpenTelemetry's global tracer provider, so that
/// every part that records spans finds it without being handed it.
static SPANS: OnceLock<Spans> = OnceLock::new();

/// Exports spans to the OTLP/HTTP collector at `endpoint` from now on. Builds an HTTP client of its
/// own: call it before the async runtime starts.
pub fn install(endpoint: &str) -> Result<(), String> {
    let spans = Spans::new(endpoint)?;
    SPANS
        .set(spans)
        .map_err(|_| "OTLP export is installed already".to_string())
}

/// Where spans go, when OTLP export is on.
pub fn spans() -> Option<&'static Spans> {
    SPANS.get()
}

/// Exports what is queued and stops: at exit, outside the async runtime (it blocks).
pub fn shutdown() {
    if let Some(spans) = SPANS.get()
        && let Err(e) = spans.processor.shutdown()
    {
        tracing::warn!(error = %e, "OTLP: spans not exported at exit");
    }
}

/// Where spans go.
pub struct Spans {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
}

impl std::fmt::Debug for Spans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spans")
    }
}

/// The span of a message being sent, ended by [`Spans::published`].
pub struct Sending(Box<Ended>);

/// One span that ended.
struct Ended {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<([u8; 8], bool)>,
    sampled: bool,
    kind: SpanKind,
    name: String,
    start: SystemTime,
    attributes: Vec<KeyValue>,
}

impl Spans {
    /// Spans exported to the OTLP/HTTP collector at `endpoint` (e.g. `http://collector:4318`).
    fn new(endpoint: &str) -> Result<Spans, String> {
        // The HTTP client's TLS needs a crypto provider; one may be installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("OTLP exporter: {e}"))?;
        let mut processor = BatchSpanProcessor::builder(exporter).build();
        processor.set_resource(
            &Resource::builder()
                .with_service_name("rc-kafka-bridge")
                .build(),
        );
        let scope = InstrumentationScope::builder("rc-kafka-bridge")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        Ok(Spans { processor, scope })
    }

    /// The webhook request's span, which `trace` names, from `start` until now.
    pub fn request(&self, trace: &TraceContext, start: SystemTime, status: u16, uuid: &str) {
        let (trace_id, span_id, parent, sampled) = trace.ids();
        self.end(Ended {
            trace_id,
            span_id,
            parent: parent.map(|p| (p, true)),
            sampled,
            kind: SpanKind::Server,
            name: "POST /webhook".into(),
            start,
            attributes: vec![
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.route", "/webhook"),
                KeyValue::new("http.response.status_code", i64::from(status)),
                KeyValue::new("rc.notification.uuid", uuid.to_string()),
            ],
        });
    }

    /// The producer span of `message`, sent from `start` on, as a child of the span its
    /// `traceparent` names (none without one: the message was planned with no trace). Taken when
    /// the message is enqueued, so that what is sent need not be kept until Kafka answers.
    pub fn sending(&self, message: &impl Outbound, start: SystemTime) -> Option<Sending> {
        let parent = message.header(TRACEPARENT).and_then(Traceparent::parse)?;
        if !parent.sampled {
            return None;
        }
        let mut attributes = vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.name", "send"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", message.topic().to_string()),
            KeyValue::new("messaging.kafka.message.key", message.key().to_string()),
        ];
        if let Some(id) = message.header("rc-message-id") {
            attributes.push(KeyValue::new("messaging.message.id", id.to_string()));
        }
        if message.tombstone() {
            attributes.push(KeyValue::new("messaging.kafka.message.tombstone", true));
        }
        Some(Sending(Box::new(Ended {
            trace_id: parent.trace_id,
            span_id: crate::trace_context::random_id(),
            parent: Some((parent.span_id, false)),
            sampled: parent.sampled,
            kind: SpanKind::Producer,
            name: format!("send {}", message.topic()),
            start,
            attributes,
        })))
    }

    /// Ends the span of a message Kafka acknowledged.
    pub fn published(&self, sending: Sending) {
        self.end(*sending.0);
    }

    fn end(&self, span: Ended) {
        if !span.sampled {
            return;
        }
        let (parent_span_id, parent_span_is_remote) = match span.parent {
            Some((id, remote)) => (SpanId::from_bytes(id), remote),
            None => (SpanId::INVALID, false),
        };
        self.processor.on_end(SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(span.trace_id),
                SpanId::from_bytes(span.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id,
            parent_span_is_remote,
            span_kind: span.kind,
            name: Cow::Owned(span.name),
            start_time: span.start,
            end_time: SystemTime::now(),
            attributes: span.attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: self.scope.clone(),
        });
    }
}
