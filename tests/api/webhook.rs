//! The HTTP contract of `POST /webhook` and the message contract, read back from Kafka.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::app::{TestApp, http};
use crate::common::contract::{check_contract, is_traceparent, read_all_before_marker};
use crate::common::kafka::{Received, read_until};
use crate::common::metrics::sample;
use crate::common::mock_kafka::MockKafka;
use crate::common::payloads::{DOCUMENTED_EXAMPLE, extension_update, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_variant_is_published_as_the_contract_says() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |_| {}).await;
    check_contract(&app).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_continues_the_callers_trace_or_starts_one_on_every_message() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |_| {}).await;
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = format!("traced-{}", unique());
    let body = extension_update(&traced, "201", &["ExtensionInfo", "CompanyNumbers"]);
    let headers = [
        ("traceparent", given),
        ("tracestate", "rojo=00f067aa0ba902b7"),
    ];
    assert_eq!(
        app.post_with(body.to_string(), &headers).await.status(),
        200
    );
    let fresh = [format!("fresh-{}", unique()), format!("fresh-{}", unique())];
    for uuid in &fresh {
        let body = extension_update(uuid, "202", &["ExtensionInfo", "CompanyNumbers"]);
        assert_eq!(app.post_webhook(body.to_string()).await.status(), 200);
    }
    let topics = [
        "ringcentral.account.extension",
        "ringcentral.account.extension.phone-number",
    ]
    .map(String::from);
    let uuids = [traced.clone(), fresh[0].clone(), fresh[1].clone()];
    let all = |read: &[Received]| {
        uuids
            .iter()
            .all(|u| read.iter().filter(|m| m.uuid() == u).count() == 2)
    };
    let read = read_until(&kafka.bootstrap, &topics, Duration::from_secs(30), all).await;
    assert!(all(&read), "two messages per notification");
    let trace_of = |uuid: &str| -> Vec<String> {
        read.iter()
            .filter(|m| m.uuid() == uuid)
            .map(|m| {
                let parent = m.header("traceparent").expect("a traceparent").to_string();
                assert!(is_traceparent(&parent), "{parent}");
                assert_eq!(m.header("ce_traceparent"), Some(parent.as_str()));
                parent.split('-').nth(1).unwrap().to_string()
            })
            .collect()
    };
    // The caller's trace, continued by the bridge's span, its trace state passed on.
    for m in read.iter().filter(|m| m.uuid() == traced) {
        let parent = m.header("traceparent").unwrap();
        assert!(
            parent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{parent}"
        );
        assert_ne!(parent, given, "the bridge's own span is the parent");
        assert_eq!(m.header("tracestate"), Some("rojo=00f067aa0ba902b7"));
    }
    assert_eq!(trace_of(&traced), ["4bf92f3577b34da6a3ce929d0e0e4736"; 2]);
    // Without one: a trace per notification, shared by its messages.
    let (a, b) = (trace_of(&fresh[0]), trace_of(&fresh[1]));
    assert_eq!(a[0], a[1]);
    assert_eq!(b[0], b[1]);
    assert_ne!(a[0], b[0]);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cloudevents_the_contract_is_the_same_without_ce_headers() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |a| a.cloudevents = false).await;
    check_contract(&app).await;
    app.shutdown().await;
}

/// Sends a raw HTTP/1.1 request and returns the whole response as bytes.
async fn raw_exchange(address: &str, request: String) -> Vec<u8> {
    let host = address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_echoes_the_token_in_a_tiny_answer_even_with_kafka_down_and_a_verification_token_set()
 {
    let kafka = MockKafka::start();
    kafka.down();
    let app = TestApp::spawn(&kafka.bootstrap, |a| {
        a.verification_token = Some(rc_kafka_bridge::config::Secret::new("s3cret"));
    })
    .await;
    let token = "a7f3c5e2-1b4d-4e8f-9a6c-0d2e4f6a8b1c";
    let response = raw_exchange(
        &app.address,
        format!(
            "POST /webhook HTTP/1.1\r\nHost: bridge\r\nValidation-Token: {token}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    let text = String::from_utf8(response.clone()).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.contains(&format!("validation-token: {token}\r\n")),
        "{text}"
    );
    assert!(
        text.contains("content-type: application/json\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n"), "empty body: {text}");
    assert!(
        response.len() <= 1024,
        "whole answer is {} bytes",
        response.len()
    );
    let metrics = app.metrics().await;
    assert_eq!(
        sample(&metrics, "rckb_validation_handshakes_total", &[]),
        1.0
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_answers_are_tiny() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |_| {}).await;
    let body = extension_update(&format!("tiny-{}", unique()), "1", &["Limits"]).to_string();
    let response = raw_exchange(
        &app.address,
        format!(
            "POST /webhook HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    let text = String::from_utf8(response.clone()).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with(r#"{"status":"accepted"}"#), "{text}");
    assert!(response.len() <= 1024);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_uuid_is_answered_200_and_not_republished() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |_| {}).await;
    for attempt in 0..3 {
        let response = app.post_webhook(DOCUMENTED_EXAMPLE).await;
        assert_eq!(response.status(), 200, "attempt {attempt}");
        let answer: Value = response.json().await.unwrap();
        let expected = if attempt == 0 {
            "accepted"
        } else {
            "duplicate"
        };
        assert_eq!(answer["status"], json!(expected));
    }
    let published = read_all_before_marker(&app, Duration::from_secs(30)).await;
    let total: usize = published.values().map(Vec::len).sum();
    assert_eq!(total, 2, "the two messages of the example, once");
    let metrics = app.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "rckb_notifications_total",
            &[("outcome", "duplicate")]
        ),
        2.0
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_mode_answers_after_kafka_acknowledged() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |a| {
        a.delivery = rc_kafka_bridge::config::DeliveryMode::Direct;
    })
    .await;
    let response = app.post_webhook(DOCUMENTED_EXAMPLE).await;
    assert_eq!(response.status(), 200);
    // Acknowledged before the answer: the publish counter already shows both messages.
    let metrics = app.metrics().await;
    assert_eq!(sample(&metrics, "rckb_messages_published_total", &[]), 2.0);
    let got = read_until(
        &app.bootstrap,
        &["ringcentral.account.extension.phone-number".to_string()],
        Duration::from_secs(10),
        |got| !got.is_empty(),
    )
    .await;
    assert_eq!(got[0].key, "8475874957");
    let duplicate = app.post_webhook(DOCUMENTED_EXAMPLE).await;
    assert_eq!(
        duplicate.json::<Value>().await.unwrap()["status"],
        json!("duplicate")
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_mode_answers_503_when_kafka_does_not_acknowledge_in_time() {
    let kafka = MockKafka::start();
    kafka.down();
    let app = TestApp::spawn(&kafka.bootstrap, |a| {
        a.delivery = rc_kafka_bridge::config::DeliveryMode::Direct;
        a.direct_timeout = Duration::from_millis(300);
    })
    .await;
    let response = app.post_webhook(DOCUMENTED_EXAMPLE).await;
    app.assert_unavailable(&response, 1.0).await;
    kafka.up();
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_mode_a_caller_hanging_up_does_not_turn_a_redelivery_into_a_duplicate() {
    let kafka = MockKafka::start();
    kafka.down();
    let app = TestApp::spawn(&kafka.bootstrap, |a| {
        a.delivery = rc_kafka_bridge::config::DeliveryMode::Direct;
        a.direct_timeout = Duration::from_millis(300);
    })
    .await;
    // The caller gives up long before Kafka's timeout.
    let hung_up = http()
        .post(format!("{}/webhook", app.address))
        .body(DOCUMENTED_EXAMPLE)
        .timeout(Duration::from_millis(50))
        .send()
        .await;
    assert!(hung_up.is_err());
    // The publish still ran to its end (a timeout) on its own...
    app.metrics_until("the publish to finish", |m| {
        sample(m, "rckb_publish_errors_total", &[("kind", "timeout")]) >= 1.0
    })
    .await;
    // ...and released the uuid: the redelivery is tried again, not called a duplicate.
    let again = app.post_webhook(DOCUMENTED_EXAMPLE).await;
    assert_eq!(again.status(), 503);
    kafka.up();
    app.shutdown().await;
}
