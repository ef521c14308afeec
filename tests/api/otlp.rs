//! Spans over OTLP: with `--otlp-endpoint`, the webhook request's span and a producer span per
//! published message reach the collector (an in-process OTLP/HTTP JSON receiver), in the trace the
//! messages' `traceparent` headers name.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use serde_json::Value;

use crate::common::kafka::read_until;
use crate::common::mock_kafka::MockKafka;
use crate::common::payloads::{extension_update, unique};
use crate::common::polling::eventually;
use crate::common::process::BridgeProcess;

/// What the collector received: every span of every export.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Value>>>);

impl Collector {
    async fn start() -> (String, Collector) {
        let collector = Collector::default();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(collector.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, collector)
    }

    fn spans(&self) -> Vec<Value> {
        self.0.lock().unwrap().clone()
    }
}

/// OTLP/HTTP JSON: `resourceSpans[].scopeSpans[].spans[]`, each span with the service's name.
async fn receive(State(collector): State<Collector>, body: Bytes) -> &'static str {
    let request: Value = serde_json::from_slice(&body).expect("OTLP JSON");
    let mut spans = collector.0.lock().unwrap();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        let service = attribute(&resource["resource"], "service.name");
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let mut span = span.clone();
                span["service"] = service.clone();
                spans.push(span);
            }
        }
    }
    "{}"
}

/// A string attribute of a span (or resource).
fn attribute(holder: &Value, key: &str) -> Value {
    holder["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["key"] == key)
        .map(|a| a["value"]["stringValue"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_the_request_and_of_each_published_message_reach_the_collector() {
    let (collector_url, collector) = Collector::start().await;
    let kafka = MockKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let bridge = BridgeProcess::start(
        &kafka.bootstrap,
        dir.path(),
        &["--otlp-endpoint", &collector_url],
    )
    .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let uuid = format!("otlp-{}", unique());
    let body = extension_update(&uuid, "301", &["ExtensionInfo", "CompanyNumbers"]);
    let traceparent = format!("00-{trace}-{caller}-01");
    let answer = bridge
        .post_webhook(body.to_string(), &[("traceparent", &traceparent)])
        .await;
    assert_eq!(answer, 200);

    // The bridge's span, as the messages name it.
    let topics = [
        "ringcentral.account.extension",
        "ringcentral.account.extension.phone-number",
    ]
    .map(String::from);
    let ours = |read: &[crate::common::kafka::Received]| {
        read.iter().filter(|m| m.uuid() == uuid).count() == 2
    };
    let read = read_until(&kafka.bootstrap, &topics, Duration::from_secs(30), ours).await;
    assert!(ours(&read), "both messages");
    let parent = read[0].header("traceparent").unwrap().to_string();
    let bridge_span = parent.split('-').nth(2).unwrap().to_string();

    // Spans are exported in batches, every few seconds.
    let spans = eventually(
        "the request's and the messages' spans",
        Duration::from_secs(30),
        async || {
            let spans = collector.spans();
            let in_trace: Vec<Value> = spans
                .into_iter()
                .filter(|s| s["traceId"] == trace)
                .collect();
            (in_trace.len() >= 3).then_some(in_trace)
        },
    )
    .await;
    let request = spans
        .iter()
        .find(|s| s["name"] == "POST /webhook")
        .expect("the request's span");
    assert_eq!(request["kind"], 2, "a server span");
    assert_eq!(
        request["spanId"],
        bridge_span.as_str(),
        "the span the messages name"
    );
    assert_eq!(
        request["parentSpanId"], caller,
        "a child of the caller's span"
    );
    assert_eq!(request["service"], "rc-kafka-bridge");
    assert_eq!(attribute(request, "http.route"), "/webhook");

    let mut published: Vec<&Value> = spans.iter().filter(|s| s["kind"] == 4).collect();
    published.sort_by_key(|s| s["name"].as_str().unwrap().to_string());
    assert_eq!(
        published.len(),
        2,
        "a producer span per message: {spans:#?}"
    );
    for (span, topic) in published.iter().zip(&topics) {
        assert_eq!(span["name"], format!("send {topic}"));
        assert_eq!(span["parentSpanId"], bridge_span.as_str());
        assert_eq!(attribute(span, "messaging.system"), "kafka");
        assert_eq!(attribute(span, "messaging.operation.type"), "send");
        assert_eq!(
            attribute(span, "messaging.destination.name"),
            topic.as_str()
        );
        assert_eq!(attribute(span, "messaging.kafka.message.key"), "301");
        let id = attribute(span, "messaging.message.id");
        assert!(id.as_str().unwrap().starts_with(&uuid), "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_relayed_after_a_restart_joins_the_requests_trace() {
    let (collector_url, collector) = Collector::start().await;
    let kafka = MockKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--otlp-endpoint", collector_url.as_str()];
    // Kafka is down: the notification waits in the spool, and the bridge dies before it is relayed.
    kafka.down();
    let first = BridgeProcess::start(&kafka.bootstrap, dir.path(), &args).await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{trace}-b7ad6b7169203331-01");
    let uuid = format!("restart-{}", unique());
    let body = extension_update(&uuid, "302", &["ExtensionInfo"]);
    let answer = first
        .post_webhook(body.to_string(), &[("traceparent", &traceparent)])
        .await;
    assert_eq!(answer, 200);
    let request = eventually("the request's span", Duration::from_secs(30), async || {
        collector
            .spans()
            .into_iter()
            .find(|s| s["traceId"] == trace && s["name"] == "POST /webhook")
    })
    .await;
    first.kill_hard();

    kafka.up();
    let _second = BridgeProcess::start(&kafka.bootstrap, dir.path(), &args).await;
    let published = eventually(
        "the relayed message's span",
        Duration::from_secs(30),
        async || {
            collector
                .spans()
                .into_iter()
                .find(|s| s["traceId"] == trace && s["kind"] == 4)
        },
    )
    .await;
    assert_eq!(published["parentSpanId"], request["spanId"]);
    assert_eq!(published["name"], "send ringcentral.account.extension");
}
