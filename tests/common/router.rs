//! The webhook router in process, for what the router alone decides (statuses, answers, what is
//! kept): no socket and no Kafka. Requests go through `tower::ServiceExt::oneshot`; what the router
//! accepts goes to the bridge's own spool in a temporary directory, so a test reads exactly what
//! would be published.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use rc_kafka_bridge::config::Settings;
use rc_kafka_bridge::in_flight::PlansInFlight;
use rc_kafka_bridge::ingress::{self, AllowedSubscriptions, IngressState};
use rc_kafka_bridge::metrics::Metrics;
use rc_kafka_bridge::routing::RoutePlan;
use rc_kafka_bridge::spool::Spool;
use serde_json::Value;
use tower::ServiceExt;

use super::app::test_settings;

/// The webhook router over a spool, built from the test settings as the application builds it.
pub struct Ingress {
    router: Router,
    pub metrics: Metrics,
    spool: Arc<Spool>,
    _spool_dir: tempfile::TempDir,
}

/// The router's answer to one request.
pub struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("a JSON answer, got {}", self.text()))
    }
}

impl Ingress {
    /// `tweak` adjusts the settings as for [`super::app::TestApp::spawn`]; Kafka is never reached.
    pub fn new(tweak: impl FnOnce(&mut Settings)) -> Ingress {
        let dir = tempfile::tempdir().unwrap();
        let settings = test_settings("127.0.0.1:1", dir.path(), tweak);
        let metrics = Metrics::new();
        let spool = Arc::new(
            Spool::open(dir.path(), settings.spool_options(), metrics.clone())
                .expect("a spool in a fresh directory"),
        );
        let state = IngressState {
            routing: Arc::new(ArcSwap::from_pointee(settings.routing.clone())),
            sink: spool.clone(),
            verification_token: settings.verification_token.clone(),
            metrics: metrics.clone(),
            reminders: None,
            allowed: Arc::new(AllowedSubscriptions::new(
                settings.allowed_subscription_ids.clone(),
                None,
            )),
            plans_in_flight: PlansInFlight::new(
                settings.max_plan_bytes_in_flight.get(),
                metrics.plan_bytes_in_flight.clone(),
            ),
        };
        Ingress {
            router: ingress::router(state, settings.max_body_bytes.get()),
            metrics,
            spool,
            _spool_dir: dir,
        }
    }

    /// `POST /webhook` with `body` and `headers`, as RingCentral sends it.
    pub async fn post(&self, body: impl Into<Body>, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::post("/webhook")
            .header("content-type", "application/json; charset=UTF-8")
            .header("user-agent", "RingCentral-Webhook/8.3");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body.into()).expect("a valid request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router answers every request");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the answer's body")
            .to_vec();
        Answer { status, body }
    }

    /// Every plan the spool keeps for the relay to publish, oldest first.
    pub fn kept(&self) -> Vec<RoutePlan> {
        self.spool
            .oldest(usize::MAX, usize::MAX)
            .expect("the spool reads")
            .into_iter()
            .map(|entry| entry.plan)
            .collect()
    }
}
