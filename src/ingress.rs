//! HTTP: RingCentral's webhook endpoint and the admin endpoints. Status codes are decided here, in
//! [`Rejection`], and nowhere else.
//!
//! Every answer is tiny (RingCentral refuses responses over 1024 bytes, headers included) and never
//! waits on Kafka in the default spool mode.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use tokio::sync::watch;

use crate::in_flight::PlansInFlight;
use crate::metrics::Metrics;
use crate::notification::{EventKind, Notification, ParseError};
use crate::readiness::{Readiness, SpoolHealth};
use crate::ringcentral::SubscriptionId;
use crate::routing::RoutingTable;
use crate::secret::Secret;
use crate::sink::{Acceptance, Sink, SinkError};
use crate::trace_context::{TRACEPARENT, TRACESTATE, TraceContext};

pub const VALIDATION_TOKEN: &str = "validation-token";
pub const VERIFICATION_TOKEN: &str = "verification-token";

#[derive(Clone)]
pub struct IngressState {
    pub routing: Arc<ArcSwap<RoutingTable>>,
    pub sink: Arc<dyn Sink>,
    pub verification_token: Option<Secret>,
    pub metrics: Metrics,
    /// Where accepted expiry reminders are announced (their subscription id), when a subscription
    /// keeper runs.
    pub reminders: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// The subscriptions notifications may come from; everything else gets 403.
    pub allowed: Arc<AllowedSubscriptions>,
    /// What plans of requests in flight may hold together; beyond it, 503.
    pub plans_in_flight: Arc<PlansInFlight>,
}

/// The subscriptions the webhook accepts notifications from: the configured ids, and the keeper's
/// current subscription (which changes when the keeper recreates it). Empty and without a keeper: any.
#[derive(Debug, Default)]
pub struct AllowedSubscriptions {
    configured: Vec<SubscriptionId>,
    keeper: Option<watch::Receiver<Option<SubscriptionId>>>,
}

impl AllowedSubscriptions {
    pub fn new(
        configured: Vec<SubscriptionId>,
        keeper: Option<watch::Receiver<Option<SubscriptionId>>>,
    ) -> Self {
        AllowedSubscriptions { configured, keeper }
    }

    /// Whether a notification with this subscription id may pass. The keeper alone does not restrict:
    /// only a configured list does (the keeper's subscription is then added to it).
    pub fn allows(&self, id: Option<&str>) -> bool {
        if self.configured.is_empty() {
            return true;
        }
        let Some(id) = id else { return false };
        self.configured.iter().any(|allowed| allowed.as_str() == id)
            || self
                .keeper
                .as_ref()
                .is_some_and(|kept| kept.borrow().as_ref().map(SubscriptionId::as_str) == Some(id))
    }
}

/// The webhook router: `POST /webhook`.
pub fn router(state: IngressState, max_body_bytes: usize) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/webhook", post(webhook))
        // Behind one `Arc`: axum clones the state for every request, and a clone of the fields
        // (four reference counts and a copy of the token) was 1% of the CPU at one hint.
        .with_state(Arc::new(state))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(metrics, record_http))
}

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    readiness: Arc<dyn Readiness>,
}

/// The admin router: `/metrics`, `/healthz`, `/readyz`.
pub fn admin_router(metrics: Metrics, readiness: Arc<dyn Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { ok(json!({"status": "alive"})) }))
        .route("/readyz", get(ready))
        .with_state(AdminState { metrics, readiness })
}

async fn render_metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn ready(State(state): State<AdminState>) -> Response {
    let spool = state.readiness.spool_health();
    // Kafka's state is reported, never a reason to be unready: a load balancer taking the bridge
    // out during a Kafka outage would turn the outage into lost webhooks.
    let brokers_up = state.metrics.kafka_brokers_up.get();
    let shutting_down = state.readiness.shutting_down();
    let ready = !shutting_down && matches!(spool, SpoolHealth::Ok | SpoolHealth::Absent);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "ready": ready,
        "shuttingDown": shutting_down,
        "spool": spool.label(),
        "kafka": {"brokersUp": brokers_up},
    });
    if state.readiness.state_enabled() {
        // Reported like Kafka's state: a fetcher that waits (rate limits, credentials) delays
        // state records, never the hints, so it is no reason to turn webhooks away.
        let m = &state.metrics;
        body["stateFetcher"] = json!({
            "running": m.state_fetcher_running.get() == 1,
            "partitions": m.state_fetcher_partitions.get(),
            "queued": m.state_queue_requests.get(),
            "oldestRequestAgeSeconds": m.state_queue_oldest_age.get(),
        });
    }
    (status, axum::Json(body)).into_response()
}

/// Counts and times every request by route template and status class.
async fn record_http(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(request).await;
    let class = match response.status().as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    };
    metrics
        .http_requests
        .with_label_values(&[&route, class])
        .inc();
    metrics
        .http_request_duration
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// A 200 with a tiny JSON body.
fn ok(value: serde_json::Value) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

/// Every way a webhook request is refused, and its answer.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("verification token missing")]
    VerificationMissing,
    #[error("verification token mismatch")]
    VerificationMismatch,
    #[error("{0}")]
    Body(String, StatusCode),
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("empty body")]
    Empty,
    #[error("subscription not allowed")]
    Forbidden,
    #[error(transparent)]
    Unavailable(#[from] SinkError),
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            Rejection::VerificationMissing | Rejection::VerificationMismatch => (
                StatusCode::UNAUTHORIZED,
                "invalid verification token".to_string(),
            ),
            Rejection::Body(message, status) => (*status, message.clone()),
            Rejection::Parse(e) => (StatusCode::BAD_REQUEST, e.to_string()),
            Rejection::Empty => (
                StatusCode::BAD_REQUEST,
                "empty body without Validation-Token".to_string(),
            ),
            Rejection::Forbidden => (
                StatusCode::FORBIDDEN,
                "subscription not allowed".to_string(),
            ),
            Rejection::Unavailable(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
        let mut response = (status, axum::Json(json!({"error": message}))).into_response();
        if let Rejection::Unavailable(_) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

impl From<BytesRejection> for Rejection {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body too large".to_string()
        } else {
            "cannot read body".to_string()
        };
        Rejection::Body(message, status)
    }
}

#[tracing::instrument(name = "webhook", skip_all, fields(uuid, kind, trace_id))]
async fn webhook(
    State(state): State<Arc<IngressState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Rejection> {
    let started = std::time::SystemTime::now();
    let metrics = &state.metrics;
    let count = |kind: &str, outcome: &str| {
        metrics
            .notifications
            .with_label_values(&[kind, outcome])
            .inc()
    };
    let body = body.inspect_err(|r| {
        let outcome = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "rejected_too_large"
        } else {
            "rejected_unreadable"
        };
        count("unknown", outcome);
    })?;

    // The handshake comes first: it never needs the verification token or Kafka.
    if body.is_empty()
        && let Some(token) = headers.get(VALIDATION_TOKEN)
    {
        metrics.validation_handshakes.inc();
        tracing::info!("validation handshake answered");
        return Ok((
            StatusCode::OK,
            [
                (
                    header::HeaderName::from_static(VALIDATION_TOKEN),
                    token.clone(),
                ),
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
            ],
        )
            .into_response());
    }

    if let Some(expected) = &state.verification_token {
        let given = headers.get(VERIFICATION_TOKEN).ok_or_else(|| {
            metrics
                .verification_failures
                .with_label_values(&["missing"])
                .inc();
            count("unknown", "rejected_unauthorized");
            Rejection::VerificationMissing
        })?;
        if !bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())) {
            metrics
                .verification_failures
                .with_label_values(&["mismatch"])
                .inc();
            count("unknown", "rejected_unauthorized");
            return Err(Rejection::VerificationMismatch);
        }
    }

    if body.is_empty() {
        count("unknown", "rejected_empty");
        return Err(Rejection::Empty);
    }
    let notification = Notification::parse(&body).inspect_err(|e| {
        count("unknown", &format!("rejected_{}", e.reason()));
    })?;
    if !state
        .allowed
        .allows(notification.subscription_id.as_deref())
    {
        count("unknown", "rejected_forbidden");
        tracing::warn!("notification from a subscription that is not allowed: refused");
        return Err(Rejection::Forbidden);
    }
    let kind = notification.kind.label();
    let span = tracing::Span::current();
    span.record("uuid", notification.uuid.as_str());
    span.record("kind", kind);

    let received_at = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("now formats as RFC 3339");
    let routing = state.routing.load();
    let mut plan = routing.plan(&notification, &body, &received_at);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let trace = TraceContext::continue_or_start(header(TRACEPARENT), header(TRACESTATE));
    span.record("trace_id", trace.trace_id().as_str());
    trace.stamp(&mut plan);
    // One message per unknown hint is planned on the unrouted topic: count what was planned.
    let unknown = plan
        .messages
        .iter()
        .filter(|m| m.hint_label == "unknown")
        .count() as u64;

    let unrouted_reason = plan.unrouted_reason;
    let accepted = match state.plans_in_flight.reserve(plan.payload_bytes()) {
        Some(held) => state.sink.accept(plan, held).await,
        None => Err(SinkError::Busy),
    };
    if let Some(spans) = crate::otlp::spans() {
        let status = if accepted.is_ok() { 200 } else { 503 };
        spans.request(&trace, started, status, &notification.uuid);
    }
    match accepted {
        Ok(Acceptance::Accepted) => {
            count(kind, "accepted");
            if let Some(reason) = unrouted_reason {
                metrics
                    .notifications_unrouted
                    .with_label_values(&[reason])
                    .inc();
                tracing::warn!(
                    reason,
                    "notification carried raw on the unrouted topic instead of being routed"
                );
            }
            if let (EventKind::SubscriptionReminder, Some(reminders), Some(id)) = (
                &notification.kind,
                &state.reminders,
                &notification.subscription_id,
            ) {
                let _ = reminders.send(id.clone());
            }
            metrics.unknown_hints.inc_by(unknown);
            tracing::debug!("notification accepted");
            Ok(ok(json!({"status": "accepted"})))
        }
        Ok(Acceptance::Duplicate) => {
            count(kind, "duplicate");
            tracing::info!("duplicate notification, not republished");
            Ok(ok(json!({"status": "duplicate"})))
        }
        Err(e) => {
            count(kind, "unavailable");
            tracing::warn!(reason = e.reason(), "notification refused: {e}");
            Err(Rejection::Unavailable(e))
        }
    }
}
