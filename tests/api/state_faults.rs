//! State topics when things go wrong: small rate-limit budgets, an expired token, a resource the
//! app may not read, a record Kafka refuses, a SIGKILL with fetches pending, and two replicas
//! sharing one queue.

use std::time::Duration;

use crate::common::app::TestApp;
use crate::common::fake_extensions::Budget;
use crate::common::kafka::read_until;
use crate::common::metrics::sample;
use crate::common::payloads::{extension_update, unique};
use crate::common::process::BridgeProcess;
use crate::state::{
    EXTENSION, EXTENSION_TOPIC, latest_for, setup, setup_with_request_partitions, with_state,
};

/// Posts one `ExtensionInfo` hint for each of `extensions`.
async fn hint_each(app: &TestApp, extensions: &[String]) {
    for id in extensions {
        let body = extension_update(&format!("f-{}", unique()), id, &["ExtensionInfo"]);
        assert_eq!(app.post_webhook(body.to_string()).await.status(), 200);
    }
}

/// Reads the extension state topic until each of `extensions` has a record there.
async fn states_of(bootstrap: &str, extensions: &[String]) {
    let topic = vec![EXTENSION_TOPIC.to_string()];
    let read = read_until(bootstrap, &topic, Duration::from_secs(60), |read| {
        extensions
            .iter()
            .all(|id| latest_for(read, EXTENSION_TOPIC, id).is_some())
    })
    .await;
    for id in extensions {
        assert!(
            latest_for(&read, EXTENSION_TOPIC, id).is_some(),
            "no state for extension {id}"
        );
    }
}

fn extensions(ids: std::ops::Range<u32>) -> Vec<String> {
    ids.map(|n| n.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_budget_is_never_exceeded_and_every_state_arrives() {
    let (kafka, fake) = setup().await;
    let ids = extensions(201..209);
    {
        let mut state = fake.state.lock().unwrap();
        let budget = Budget {
            limit: 3,
            window: Duration::from_secs(2),
            penalty: Duration::from_secs(2),
        };
        state.limits.budgets.insert("light", budget);
    }
    for id in &ids {
        fake.add_extension(id);
    }
    let app = TestApp::spawn(&kafka.bootstrap, with_state(&fake)).await;
    hint_each(&app, &ids).await;
    states_of(&kafka.bootstrap, &ids).await;
    let (gets, over_budget) = {
        let state = fake.state.lock().unwrap();
        (state.state_gets, state.limits.over_budget)
    };
    assert_eq!(gets, ids.len(), "one fetch per extension");
    assert_eq!(
        over_budget, 0,
        "a request over the budget the headers announced"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_renewed_and_the_state_still_arrives() {
    let (kafka, fake) = setup().await;
    fake.add_extension("102");
    let app = TestApp::spawn(&kafka.bootstrap, with_state(&fake)).await;
    hint_each(&app, &[EXTENSION.to_string()]).await;
    states_of(&kafka.bootstrap, &[EXTENSION.to_string()]).await;
    let grants = {
        let mut state = fake.state.lock().unwrap();
        // RingCentral no longer takes the access token the bridge holds.
        state.valid_tokens.clear();
        state.grants.len()
    };
    hint_each(&app, &["102".to_string()]).await;
    states_of(&kafka.bootstrap, &["102".to_string()]).await;
    assert_eq!(
        fake.state.lock().unwrap().grants.len(),
        grants + 1,
        "one new token"
    );
    let scrape = app.metrics().await;
    let fetches = |outcome| {
        sample(
            &scrape,
            "rckb_state_fetches_total",
            &[("group", "light"), ("outcome", outcome)],
        )
    };
    assert_eq!((fetches("ok"), fetches("unauthorized")), (2.0, 0.0));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_ringcentral_refuses_is_given_up_and_the_queue_goes_on() {
    let (kafka, fake) = setup().await;
    fake.add_extension("666");
    fake.state.lock().unwrap().forbidden.insert("666".into());
    let app = TestApp::spawn(&kafka.bootstrap, with_state(&fake)).await;
    hint_each(&app, &["666".to_string(), EXTENSION.to_string()]).await;
    states_of(&kafka.bootstrap, &[EXTENSION.to_string()]).await;
    let scrape = app
        .metrics_until("the refusal to be counted", |m| {
            sample(m, "rckb_state_fetches_total", &[("outcome", "refused")]) == 1.0
        })
        .await;
    assert_eq!(
        sample(&scrape, "rckb_state_fetches_total", &[("outcome", "ok")]),
        1.0
    );
    let asked = fake.state.lock().unwrap().requests.clone();
    let refused = asked
        .iter()
        .filter(|r| r.ends_with("/extension/666"))
        .count();
    assert_eq!(refused, 1, "a 403 is not asked again: {asked:#?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_record_kafka_refuses_for_good_is_counted_and_the_queue_goes_on() {
    let (kafka, fake) = setup().await;
    // A record far larger than the producer may send.
    fake.state.lock().unwrap().extensions.insert(
        "777".into(),
        serde_json::json!({"id": 777, "name": "x".repeat(20_000), "status": "Enabled"}),
    );
    let app = TestApp::spawn(&kafka.bootstrap, |settings| {
        with_state(&fake)(settings);
        settings
            .kafka_property
            .push(("message.max.bytes".into(), "8000".into()));
    })
    .await;
    hint_each(&app, &["777".to_string(), EXTENSION.to_string()]).await;
    states_of(&kafka.bootstrap, &[EXTENSION.to_string()]).await;
    // The dead-letter topic takes no larger message: dropped, counted, logged.
    app.metrics_until("the refused record to be counted", |m| {
        sample(
            m,
            "rckb_state_dead_letters_total",
            &[("outcome", "dropped")],
        ) == 1.0
    })
    .await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_pending_at_a_sigkill_are_carried_out_after_the_restart() {
    let (kafka, fake) = setup().await;
    let ids = extensions(301..306);
    for id in &ids {
        fake.add_extension(id);
    }
    let spool = tempfile::tempdir().unwrap();
    let args: Vec<String> = ["--state".to_string()]
        .into_iter()
        .chain(fake.cli_args())
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gate = fake.state.lock().unwrap().gate.clone();
    let closed = gate.write().await;
    let bridge = BridgeProcess::start(&kafka.bootstrap, spool.path(), &args).await;
    for id in &ids {
        let body = extension_update(&format!("k-{}", unique()), id, &["ExtensionInfo"]);
        assert_eq!(bridge.post_webhook(body.to_string(), &[]).await, 200);
    }
    // The fetcher is inside its first GET, which RingCentral holds: every fetch is pending.
    fake.until("a fetch to start", |s| {
        s.requests.iter().any(|r| r.contains("/extension/3"))
    })
    .await;
    bridge.kill_hard();
    drop(closed);

    let restarted = BridgeProcess::start(&kafka.bootstrap, spool.path(), &args).await;
    states_of(&kafka.bootstrap, &ids).await;
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_queue_and_fetch_each_resource_once() {
    let partitions = 4;
    let (kafka, fake) = setup_with_request_partitions(partitions).await;
    let ids = extensions(401..421);
    for id in &ids {
        fake.add_extension(id);
    }
    let first = TestApp::spawn(&kafka.bootstrap, with_state(&fake)).await;
    let second = TestApp::spawn(&kafka.bootstrap, with_state(&fake)).await;
    // Both are in the fetchers' group, with the partitions split between them.
    let owned = |scrape: &_| sample(scrape, "rckb_state_fetcher_partitions", &[]);
    let mut shares = (0.0, 0.0);
    crate::common::polling::eventually(
        "the partitions to be split",
        Duration::from_secs(60),
        async || {
            shares = (
                owned(&first.metrics().await),
                owned(&second.metrics().await),
            );
            (shares.0 >= 1.0 && shares.1 >= 1.0 && shares.0 + shares.1 == f64::from(partitions))
                .then_some(())
        },
    )
    .await;
    // Notifications reach either replica.
    for (n, id) in ids.iter().enumerate() {
        let app = if n % 2 == 0 { &first } else { &second };
        hint_each(app, std::slice::from_ref(id)).await;
    }
    states_of(&kafka.bootstrap, &ids).await;
    assert_eq!(
        fake.state.lock().unwrap().state_gets,
        ids.len(),
        "each resource fetched once, by one replica"
    );
    let ok = |scrape: &_| sample(scrape, "rckb_state_fetches_total", &[("outcome", "ok")]);
    let (by_first, by_second) = (ok(&first.metrics().await), ok(&second.metrics().await));
    assert!(
        by_first >= 1.0 && by_second >= 1.0,
        "both replicas fetch: {by_first} and {by_second} (partitions {shares:?})"
    );
    first.shutdown().await;
    second.shutdown().await;
}
