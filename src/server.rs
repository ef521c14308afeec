//! An HTTP/1.1 server that bounds what each client can cost; both listeners use it.
//!
//! - **Descriptors.** At start-up the soft descriptor limit is raised to the hard one, and each
//!   listener's connection cap is sized under it, leaving room for the spool, Kafka and the rest
//!   ([`ConnectionCaps`]). A listener at its cap stops accepting: new connections wait in the
//!   kernel's listen backlog, where they cost the process nothing, and are taken as soon as a slot
//!   frees. Accepting and closing them instead would spend a descriptor to turn a burst into
//!   failed deliveries, which RingCentral holds against the subscription.
//! - **Deadlines.** Every phase of a connection has one: the request head must arrive within the
//!   header timeout (counted from connecting, or from the first byte after an idle keep-alive), the
//!   whole body within the body timeout (answered 408 when it expires), the response must be taken
//!   within the body timeout too, and a keep-alive connection may idle for the idle timeout. A
//!   connection past its deadline is closed: a silent or trickling client holds a slot for
//!   seconds, never for good.
//! - **Heads** over the size limit are answered 431 by hyper.
//! - **Shutdown.** The listener closes; connections without a request in flight close at once;
//!   requests in flight finish, or are cut at the grace deadline.
//!
//! The 408 and the 431 are about the connection, not about a notification: they are decided here
//! (and in hyper), not in `ingress`.
//!
//! hyper's own `header_read_timeout` is not used: its timer also runs while a keep-alive
//! connection sits idle (hyper 1.x starts reading the next head right after a response), so it
//! would double as an idle timeout as short as the header timeout. The phases are tracked here
//! instead: a read on an idle socket starts a head, the service marks the request and the response.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::shutdown::{self, Shutdown};

/// What one listener allows each client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From connecting (or the first byte after idling) to the end of the request head.
    pub header_timeout: Duration,
    /// From the end of the head to the end of the body; and for taking the response.
    pub body_timeout: Duration,
    /// Between requests on a keep-alive connection.
    pub idle_timeout: Duration,
    /// Request line and headers, in bytes.
    pub max_header_bytes: usize,
    /// Open connections at once.
    pub max_connections: usize,
}

/// Descriptors kept for everything that is not a client connection: the spool's database, Kafka
/// (librdkafka holds a socket and a wake-up pipe per broker for each client: the relay's producer,
/// its replacement after a fatal error, the topic check), the embedded broker, the subscription
/// keeper's HTTPS client, the listeners, the runtime's epoll and signal descriptors, stdio.
/// A quarter of a small limit, at most this many.
const RESERVED_DESCRIPTORS: u64 = 256;
/// Default cap of the webhook listener: RingCentral delivers from a handful of servers, a proxy in
/// front pools a few connections; far more open at once is an attack or a leak, and each open
/// connection holds buffers.
const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default cap of the admin listener: Prometheus, the kubelet's probes, an operator.
const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 32;

/// Both listeners' connection caps, sized under the process's descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    pub descriptor_limit: u64,
    pub reserved: u64,
    pub webhook: usize,
    pub admin: usize,
}

/// A requested cap lowered to fit the descriptor limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clamped {
    pub setting: &'static str,
    pub requested: usize,
    pub allowed: usize,
}

impl ConnectionCaps {
    /// Splits what the descriptor limit leaves after the reserve between the listeners: the admin
    /// listener at most half, the webhook listener the rest. Explicit caps win over the defaults
    /// but are lowered (and reported) where they would exceed that.
    pub fn fit(
        descriptor_limit: u64,
        webhook: Option<usize>,
        admin: Option<usize>,
    ) -> (ConnectionCaps, Vec<Clamped>) {
        let reserved = RESERVED_DESCRIPTORS.min(descriptor_limit / 4);
        let budget = usize::try_from(descriptor_limit - reserved).unwrap_or(usize::MAX);
        let mut clamped = Vec::new();
        let mut fit = |setting, requested: Option<usize>, default: usize, allowed: usize| {
            let allowed = allowed.max(1);
            match requested {
                Some(requested) if requested > allowed => {
                    clamped.push(Clamped {
                        setting,
                        requested,
                        allowed,
                    });
                    allowed
                }
                Some(requested) => requested,
                None => default.min(allowed),
            }
        };
        let admin = fit(
            "admin_max_connections",
            admin,
            DEFAULT_ADMIN_MAX_CONNECTIONS,
            budget / 2,
        );
        let webhook = fit(
            "max_connections",
            webhook,
            DEFAULT_MAX_CONNECTIONS,
            budget.saturating_sub(admin),
        );
        let caps = ConnectionCaps {
            descriptor_limit,
            reserved,
            webhook,
            admin,
        };
        (caps, clamped)
    }
}

/// Raises the soft descriptor limit to the hard one, and returns the limit now in force.
pub fn raise_descriptor_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // Linux refuses an infinite descriptor limit; this is its default ceiling (`fs.nr_open`).
    const UNLIMITED: u64 = 1 << 20;
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(UNLIMITED);
    let hard = limit.maximum.unwrap_or(UNLIMITED);
    if soft >= hard {
        return soft;
    }
    let raised = Rlimit {
        current: Some(hard),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => hard,
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise the descriptor limit");
            soft
        }
    }
}

/// Serves `router` on `listener` until `shutdown` yields the grace deadline; then stops accepting
/// and returns once every connection is closed, at the latest at that deadline.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = Instant>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = shutdown::channel();
    let mut shutdown = pin!(shutdown);
    let grace = loop {
        let slot = tokio::select! {
            grace = &mut shutdown => break grace,
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else {
            break Instant::now();
        };
        let stream = tokio::select! {
            grace = &mut shutdown => break grace,
            accepted = listener.accept() => accepted,
        };
        match stream {
            Ok((stream, _)) => {
                tokio::spawn(connection(
                    stream,
                    router.clone(),
                    limits,
                    stopping.clone(),
                    slot,
                ));
            }
            Err(e) => {
                // Out of descriptors despite the cap, or a connection reset before it was taken:
                // the backlog keeps the rest until the next attempt.
                tracing::warn!(listener = name, error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    drop(listener);
    stop.begin(grace);
    // Every open connection holds a slot: holding them all means every connection is closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    tracing::debug!(listener = name, "listener stopped");
}

/// Drives one connection until it ends, its phase's deadline passes, or shutdown cuts it.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    mut stopping: Shutdown,
    _slot: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new(Instant::now()));
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let service = Service {
        router,
        activity: activity.clone(),
        body_timeout: limits.body_timeout,
    };
    let mut builder = http1::Builder::new();
    builder
        .header_read_timeout(None)
        .max_header_size(limits.max_header_bytes)
        // hyper needs at least 8 KiB; the head must fit whole.
        .max_buf_size(limits.max_header_bytes.max(8192));
    let mut served = pin!(builder.serve_connection(io, service));
    let mut grace = stopping.deadline();
    if grace.is_some() {
        return;
    }
    let mut begun = pin!(stopping.begun());
    // One timer for the connection's life, moved to each phase's deadline. Every phase change
    // happens while hyper's connection is polled, here in this task (the socket's reads, the
    // service's call and future, the response body's drop), so reading the phase after each poll
    // sees every change without being told of it: no wake-up of its own per request. A later
    // deadline only moves the timer's mark; an earlier one (a head after an idle wait) re-registers it.
    let mut timer = pin!(tokio::time::sleep_until(Instant::now()));
    let ended = poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = served.as_mut().poll(cx) {
                return Poll::Ready(Ended::Served(result));
            }
            if grace.is_none()
                && let Poll::Ready(deadline) = begun.as_mut().poll(cx)
            {
                grace = Some(deadline);
                served.as_mut().graceful_shutdown();
                continue;
            }
            let now = Instant::now();
            let phase = activity.phase();
            let Some(deadline) = phase.deadline(&limits, grace, now) else {
                // Handling: the handler is ours and the body has its own deadline.
                return Poll::Pending;
            };
            if deadline > now {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            return Poll::Ready(Ended::PastDeadline(phase));
        }
    })
    .await;
    match ended {
        Ended::Served(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
        Ended::Served(Ok(())) => {}
        Ended::PastDeadline(phase) => tracing::debug!(
            phase = phase.label(),
            "closing a connection past its deadline"
        ),
    }
}

/// Why a connection's task ends.
enum Ended {
    /// hyper finished with it: the client closed it, or the response said so.
    Served(hyper::Result<()>),
    /// Its phase's deadline passed (or shutdown's grace did).
    PastDeadline(Phase),
}

/// Where a connection is in its request cycle; each phase has its own deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head to complete, since connecting or since its first byte.
    Head { since: Instant },
    /// A request is with the router; its body has its own deadline, the handler is ours.
    Handling,
    /// The router answered; hyper is writing the response.
    Responding { since: Instant },
    /// Between requests on a keep-alive connection.
    Idle { since: Instant },
}

impl Phase {
    /// When a connection in this phase is closed. `grace` is the shutdown deadline, once shutdown
    /// has begun.
    fn deadline(self, limits: &Limits, grace: Option<Instant>, now: Instant) -> Option<Instant> {
        let own = match self {
            Phase::Head { since } => Some(since + limits.header_timeout),
            Phase::Handling => None,
            Phase::Responding { since } => Some(since + limits.body_timeout),
            Phase::Idle { since } => Some(since + limits.idle_timeout),
        };
        match (self, grace) {
            (_, None) => own,
            // Shutting down: without a request in flight there is nothing to finish.
            (Phase::Head { .. } | Phase::Idle { .. }, Some(_)) => Some(now),
            (_, Some(grace)) => Some(own.map_or(grace, |own| own.min(grace))),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Phase::Head { .. } => "head",
            Phase::Handling => "handling",
            Phase::Responding { .. } => "responding",
            Phase::Idle { .. } => "idle",
        }
    }
}

/// One connection's phase, shared by its socket, its service and the connection's task.
struct Activity {
    phase: Mutex<Phase>,
}

impl Activity {
    fn new(connected: Instant) -> Activity {
        Activity {
            phase: Mutex::new(Phase::Head { since: connected }),
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase;
    }

    /// Bytes arrived: on an idle connection, they start the next request's head.
    fn received(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if let Phase::Idle { .. } = *phase {
            *phase = Phase::Head {
                since: Instant::now(),
            };
        }
    }

    /// hyper took the whole response. A pipelined head already buffered then gets the idle
    /// deadline rather than the header deadline: still bounded.
    fn responded(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if let Phase::Responding { .. } = *phase {
            *phase = Phase::Idle {
                since: Instant::now(),
            };
        }
    }
}

/// The socket, telling its connection's [`Activity`] when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.received();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The router as hyper calls it: marks the phases, puts the body deadline on the request and
/// answers 408 when it expired.
#[derive(Clone)]
struct Service {
    router: Router,
    activity: Arc<Activity>,
    body_timeout: Duration,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Answer>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Answer>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.activity.set(Phase::Handling);
        let expired = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + self.body_timeout;
        let request = request.map(|body| BodyWithDeadline {
            body,
            deadline,
            timer: None,
            expired: expired.clone(),
        });
        let router = self.router.clone();
        let activity = self.activity.clone();
        Box::pin(async move {
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let response = if expired.load(Ordering::Relaxed) {
                body_timed_out()
            } else {
                response
            };
            activity.set(Phase::Responding {
                since: Instant::now(),
            });
            Ok(response.map(|body| Answer {
                body,
                _taken: Taken(activity),
            }))
        })
    }
}

fn body_timed_out() -> Response<Body> {
    let mut response = (
        StatusCode::REQUEST_TIMEOUT,
        axum::Json(json!({"error": "request body not received in time"})),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The request body has until its deadline to arrive whole.
struct BodyWithDeadline {
    body: Incoming,
    deadline: Instant,
    /// Started only once the body keeps the handler waiting: a notification's body usually
    /// arrives with its head, and a timer per request would be allocated and dropped unused.
    timer: Option<Pin<Box<Sleep>>>,
    expired: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("request body not received in time")]
struct BodyTimedOut;

impl http_body::Body for BodyWithDeadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.expired.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(BodyTimedOut.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The response body; once hyper has taken it whole (and dropped it) the connection is idle.
struct Answer {
    body: Body,
    _taken: Taken,
}

struct Taken(Arc<Activity>);

impl Drop for Taken {
    fn drop(&mut self) {
        self.0.responded();
    }
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(75),
        max_header_bytes: 16 * 1024,
        max_connections: 8,
    };

    #[test]
    fn each_phase_has_its_own_deadline() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let deadline = |phase: Phase| phase.deadline(&LIMITS, None, t);
        assert_eq!(deadline(Phase::Head { since: t }), Some(t + s(5)));
        assert_eq!(deadline(Phase::Handling), None);
        assert_eq!(deadline(Phase::Responding { since: t }), Some(t + s(10)));
        assert_eq!(deadline(Phase::Idle { since: t }), Some(t + s(75)));
    }

    #[test]
    fn shutdown_closes_idle_connections_at_once_and_bounds_requests_in_flight() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let grace = Some(t + s(2));
        let deadline = |phase: Phase| phase.deadline(&LIMITS, grace, t);
        assert_eq!(deadline(Phase::Head { since: t }), Some(t));
        assert_eq!(deadline(Phase::Idle { since: t }), Some(t));
        assert_eq!(deadline(Phase::Handling), Some(t + s(2)));
        assert_eq!(deadline(Phase::Responding { since: t }), Some(t + s(2)));
        let early = Phase::Responding { since: t - s(9) };
        assert_eq!(early.deadline(&LIMITS, grace, t), Some(t + s(1)));
    }

    #[test]
    fn caps_fit_under_the_descriptor_limit() {
        let (caps, clamped) = ConnectionCaps::fit(1024, None, None);
        assert_eq!(
            caps,
            ConnectionCaps {
                descriptor_limit: 1024,
                reserved: 256,
                webhook: 736,
                admin: 32,
            }
        );
        assert!(clamped.is_empty());

        let (caps, clamped) = ConnectionCaps::fit(1 << 20, None, None);
        assert_eq!((caps.webhook, caps.admin), (1024, 32));
        assert!(clamped.is_empty());

        // A small limit keeps a quarter for the rest and still serves both listeners.
        let (caps, _) = ConnectionCaps::fit(64, None, None);
        assert_eq!((caps.reserved, caps.admin, caps.webhook), (16, 24, 24));
        let (caps, _) = ConnectionCaps::fit(0, None, None);
        assert_eq!((caps.admin, caps.webhook), (1, 1));
    }

    #[test]
    fn an_explicit_cap_wins_but_is_clamped_to_the_budget() {
        let (caps, clamped) = ConnectionCaps::fit(1 << 20, Some(50_000), Some(8));
        assert_eq!((caps.webhook, caps.admin), (50_000, 8));
        assert!(clamped.is_empty());

        let (caps, clamped) = ConnectionCaps::fit(1024, Some(5000), None);
        assert_eq!(caps.webhook, 736);
        assert_eq!(
            clamped,
            vec![Clamped {
                setting: "max_connections",
                requested: 5000,
                allowed: 736,
            }]
        );
        let (caps, clamped) = ConnectionCaps::fit(1024, None, Some(1000));
        assert_eq!((caps.admin, caps.webhook), (384, 384));
        assert_eq!(clamped[0].setting, "admin_max_connections");
    }
}
