//! Delivery through the spool: outages, ordering, poison messages, a full spool, restarts, crashes.

use std::time::Duration;

use rc_kafka_bridge::metrics::Metrics;
use rc_kafka_bridge::spool::{Spool, SpoolOptions};
use rdkafka::types::RDKafkaRespErr;
use serde_json::Value;

use crate::common::app::TestApp;
use crate::common::kafka::{missing_after_delivery, read_until};
use crate::common::metrics::sample;
use crate::common::mock_kafka::MockKafka;
use crate::common::payloads::{extension_update, unique};
use crate::common::polling::eventually;
use crate::common::process::{BridgeProcess, Serve};
use crate::common::scenarios::{
    an_outage_costs_no_notification_and_no_slow_answer, kill_repeatedly_under_load,
};

const FEATURES: &str = "ringcentral.account.extension.features";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_notifications_are_answered_fast_and_delivered_when_it_returns() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |_| {}).await;
    an_outage_costs_no_notification_and_no_slow_answer(&app, &kafka).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_to_one_extension_stay_in_order_across_an_outage() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |_| {}).await;
    let mut sent = Vec::new();
    for i in 0..90 {
        if i == 30 {
            kafka.down();
        }
        if i == 60 {
            kafka.up();
        }
        let uuid = format!("order-{}-{i:03}", unique());
        let response = app
            .post_webhook(extension_update(&uuid, "4242", &["Features"]).to_string())
            .await;
        assert_eq!(response.status(), 200);
        sent.push(uuid);
    }
    let got = read_until(
        &app.bootstrap,
        &[FEATURES.to_string()],
        Duration::from_secs(60),
        {
            let last = sent.last().unwrap().clone();
            move |got| got.iter().any(|m| m.uuid() == last)
        },
    )
    .await;
    // First delivery of each uuid, in topic order (a retry may add a later duplicate).
    let mut seen = std::collections::HashSet::new();
    let order: Vec<String> = got
        .iter()
        .filter(|m| m.key == "4242")
        .map(|m| m.uuid().to_string())
        .filter(|u| seen.insert(u.clone()))
        .collect();
    assert_eq!(order, sent);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_kafka_rejects_for_good_goes_to_the_dead_letter_topic_and_blocks_nothing() {
    let kafka = MockKafka::start();
    kafka
        .cluster
        .topic_error(
            "ringcentral.account.dialing-plan",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let app = TestApp::spawn(&kafka.bootstrap, |_| {}).await;
    let poisoned = format!("poison-{}", unique());
    let after = format!("after-{}", unique());
    for (uuid, hint) in [(&poisoned, "DialingPlan"), (&after, "Limits")] {
        let response = app
            .post_webhook(extension_update(uuid, "5", &[hint]).to_string())
            .await;
        assert_eq!(response.status(), 200);
    }
    let later = read_until(
        &app.bootstrap,
        &[FEATURES.to_string()],
        Duration::from_secs(30),
        |got| !got.is_empty(),
    )
    .await;
    assert_eq!(
        later[0].uuid(),
        after,
        "the next notification was not blocked"
    );
    let dead = read_until(
        &app.bootstrap,
        &["ringcentral.dead-letter".to_string()],
        Duration::from_secs(30),
        |got| !got.is_empty(),
    )
    .await;
    assert_eq!(dead[0].uuid(), poisoned);
    assert_eq!(
        dead[0].header("rc-original-topic"),
        Some("ringcentral.account.dialing-plan")
    );
    assert_eq!(
        dead[0].header("rc-dead-letter-reason"),
        Some("authorization")
    );
    assert_eq!(dead[0].value()["hint"], "DialingPlan");
    let metrics = app.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "rckb_dead_letters_total",
            &[("destination", "topic")]
        ),
        1.0
    );
    assert_eq!(sample(&metrics, "rckb_spool_entries", &[]), 0.0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_for_any_topic_is_kept_in_the_spools_dead_letter_area() {
    let kafka = MockKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_in(&kafka.bootstrap, dir.path().to_path_buf(), |a| {
        a.kafka_property
            .push(("message.max.bytes".into(), "3000".into()));
    })
    .await;
    let huge = format!("huge-{}", unique());
    let after = format!("after-{}", unique());
    let long_hint = "H".repeat(4000);
    for (uuid, hint) in [(&huge, long_hint.as_str()), (&after, "Limits")] {
        let response = app
            .post_webhook(extension_update(uuid, "5", &[hint]).to_string())
            .await;
        assert_eq!(response.status(), 200);
    }
    let later = read_until(
        &app.bootstrap,
        &[FEATURES.to_string()],
        Duration::from_secs(30),
        |got| !got.is_empty(),
    )
    .await;
    assert_eq!(
        later[0].uuid(),
        after,
        "the next notification was not blocked"
    );
    let metrics = app.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "rckb_dead_letters_total",
            &[("destination", "spool")]
        ),
        1.0
    );
    assert_eq!(sample(&metrics, "rckb_spool_entries", &[]), 0.0);
    app.shutdown().await;

    let spool = Spool::open(
        dir.path(),
        SpoolOptions {
            max_bytes: 1 << 20,
            dedup_window: Duration::from_secs(60),
            dedup_capacity: 10,
            cache_bytes: 1 << 20,
            linger: std::time::Duration::ZERO,
            linger_max: std::time::Duration::ZERO,
        },
        Metrics::new(),
    )
    .unwrap();
    let dead = spool.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "too_large");
    assert_eq!(
        dead[0].message.header("rc-notification-uuid"),
        Some(huge.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_answers_503_then_recovers_by_itself() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |a| {
        a.spool_max_bytes = 8_000.try_into().unwrap()
    })
    .await;
    kafka.down();
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..100 {
        let uuid = format!("full-{}-{i}", unique());
        let response = app
            .post_webhook(extension_update(&uuid, "3", &["Limits"]).to_string())
            .await;
        if response.status() != 200 {
            refused = Some(response);
            break;
        }
        accepted.push(uuid);
    }
    let refused = refused.expect("the spool filled");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"],
        "spool is full"
    );
    let ready = app.get_admin("/readyz").await;
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.json::<Value>().await.unwrap()["spool"], "full");

    kafka.up();
    let missing = missing_after_delivery(&app.bootstrap, &accepted, Duration::from_secs(60)).await;
    assert!(missing.is_empty(), "lost {missing:?}");
    // Once drained, the spool takes notifications again and says so.
    eventually(
        "the spool to take notifications again",
        Duration::from_secs(10),
        async || {
            let uuid = format!("after-full-{}", unique());
            let response = app
                .post_webhook(extension_update(&uuid, "3", &["Limits"]).to_string())
                .await;
            response.status() == 200
        },
    )
    .await;
    assert_eq!(app.get_admin("/readyz").await.status(), 200, "ready again");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_the_spool_and_remembers_uuids() {
    let kafka = MockKafka::start();
    let dir = tempfile::tempdir().unwrap();
    kafka.down();
    let uuid = format!("restart-{}", unique());
    let body = extension_update(&uuid, "8", &["Limits"]).to_string();
    {
        let app = TestApp::spawn_in(&kafka.bootstrap, dir.path().to_path_buf(), |a| {
            a.shutdown_grace = Duration::from_millis(200);
        })
        .await;
        assert_eq!(app.post_webhook(body.clone()).await.status(), 200);
        app.shutdown().await;
    }
    kafka.up();
    let app = TestApp::spawn_in(&kafka.bootstrap, dir.path().to_path_buf(), |_| {}).await;
    let again = app.post_webhook(body).await;
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "duplicate");
    let missing = missing_after_delivery(&app.bootstrap, &[uuid], Duration::from_secs(30)).await;
    assert!(missing.is_empty());
    app.shutdown().await;
}

/// The real binary under concurrent load, SIGKILLed three times in a row, then restarted on the same
/// spool: every notification answered 200 reaches Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_answered_200_is_lost_when_the_bridge_is_killed_repeatedly() {
    let kafka = MockKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let (accepted, bridge) = kill_repeatedly_under_load(&kafka.bootstrap, dir.path(), &kafka).await;
    let missing =
        missing_after_delivery(&kafka.bootstrap, &accepted, Duration::from_secs(90)).await;
    drop(bridge);
    assert!(
        missing.is_empty(),
        "{} of {} lost: {:?}",
        missing.len(),
        accepted.len(),
        &missing[..missing.len().min(5)]
    );
}

/// The deduplication record is made durable only now and then (the journal holds every answered
/// notification meanwhile): after a SIGKILL, what was answered before it is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_answered_before_a_sigkill_is_a_duplicate_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let status = async |bridge: &BridgeProcess, uuid: &str| -> Value {
        let answer = crate::common::app::http()
            .post(format!("{}/webhook", bridge.address()))
            .header("content-type", "application/json")
            .body(extension_update(uuid, "7", &["Limits"]).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        answer.json::<Value>().await.unwrap()["status"].clone()
    };
    let uuids: Vec<String> = (0..5).map(|n| format!("killed-{}-{n}", unique())).collect();
    let bridge = BridgeProcess::start("127.0.0.1:1", dir.path(), &[]).await;
    for uuid in &uuids {
        assert_eq!(status(&bridge, uuid).await, "accepted");
    }
    bridge.kill_hard();

    let bridge = BridgeProcess::start("127.0.0.1:1", dir.path(), &[]).await;
    for uuid in &uuids {
        assert_eq!(status(&bridge, uuid).await, "duplicate", "{uuid}");
    }
    drop(bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_spool_directory_stops_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, "").unwrap();
    let stderr = Serve::new(file.join("spool"))
        .brokers("127.0.0.1:1")
        .args(&["--allow-unverified-webhooks"])
        .refuses()
        .await;
    assert!(stderr.contains("cannot create spool directory"), "{stderr}");
}
