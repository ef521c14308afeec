//! Owning the RingCentral subscription: the CLI and the keeper against a fake RingCentral API whose
//! "create subscription" performs the real validation handshake against the bridge.

use std::process::Output;
use std::time::Duration;

use rc_kafka_bridge::config::Secret;
use rc_kafka_bridge::ringcentral::{Credentials, RingCentral};
use serde_json::Value;

use crate::common::app::TestApp;
use crate::common::fake_ringcentral::{CLIENT_ID, CLIENT_SECRET, FakeRingCentral, JWT};
use crate::common::metrics::sample;
use crate::common::mock_kafka::MockKafka;
use crate::common::payloads::{extension_update, reminder_notification, unique};
use crate::common::process::bridge_command;

/// The binary, run without blocking the test's runtime.
fn bridge() -> tokio::process::Command {
    tokio::process::Command::from(bridge_command())
}

async fn cli(fake: &FakeRingCentral, args: &[&str]) -> Output {
    let mut command = bridge();
    command.arg("subscription").args(args).args(fake.cli_args());
    command.output().await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn client(fake: &FakeRingCentral, jwt: &str) -> RingCentral {
    RingCentral::new(Credentials {
        server: fake.url.clone(),
        client_id: CLIENT_ID.into(),
        client_secret: Secret::new(CLIENT_SECRET),
        jwt: Secret::new(jwt),
    })
    .expect("a client for the fake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_create_passes_the_real_handshake_and_prints_a_new_token_once() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |_| {}).await;
    let fake = FakeRingCentral::start().await;
    let address = format!("{}/webhook", app.address);
    let out = cli(&fake, &["create", "--rc-webhook-address", &address]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix("verification token: "))
        .expect("the generated token is printed")
        .to_string();
    assert_eq!(token.len(), 32);

    let subscriptions = fake.state.lock().unwrap().subscriptions.clone();
    assert_eq!(subscriptions.len(), 1);
    let created = subscriptions.values().next().unwrap();
    assert_eq!(created["deliveryMode"]["address"], address);
    assert_eq!(created["deliveryMode"]["verificationToken"], token);
    assert_eq!(created["expiresIn"], 315_360_000);
    assert_eq!(
        created["eventFilters"],
        serde_json::json!([
            "/restapi/v1.0/account/~/extension",
            "/restapi/v1.0/subscription/~?threshold=86400&interval=3600"
        ])
    );
    assert_eq!(
        sample(
            &app.metrics().await,
            "rckb_validation_handshakes_total",
            &[]
        ),
        1.0,
        "the bridge answered the handshake"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_create_explains_a_failed_handshake() {
    let fake = FakeRingCentral::start().await;
    // Something that answers, but is not the bridge: it does not echo the Validation-Token.
    let address = format!("{}/restapi/oauth/token", fake.url);
    let out = cli(
        &fake,
        &[
            "create",
            "--rc-webhook-address",
            &address,
            "--verification-token",
            "t",
        ],
    )
    .await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("SUB-520"), "{stderr}");
    assert!(stderr.contains("validation handshake failed"), "{stderr}");
    assert!(fake.state.lock().unwrap().subscriptions.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_list_show_renew_delete() {
    let fake = FakeRingCentral::start().await;
    let id = fake.seed("https://bridge.example/webhook", "Active", Some("t"));

    let out = cli(&fake, &["list"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    assert!(
        listed.contains(&id) && listed.contains("https://bridge.example/webhook"),
        "{listed}"
    );

    let out = cli(&fake, &["show", &id]).await;
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["status"], "Active");

    let out = cli(&fake, &["renew", &id]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(fake.state.lock().unwrap().renewals, vec![id.clone()]);

    let out = cli(&fake, &["delete", &id]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("deleted {id}")));
    assert!(fake.state.lock().unwrap().subscriptions.is_empty());

    let out = cli(&fake, &["show", &id]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_names_missing_credentials() {
    let out = bridge()
        .args(["subscription", "list", "--rc-client-id", "x"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("ringcentral.client_secret"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_acquired_with_the_jwt_and_refreshed_before_they_expire() {
    let fake = FakeRingCentral::start().await;
    // Tokens that expire within the client's safety margin: every call must renew first.
    fake.state.lock().unwrap().token_expires_in = 30;
    let rc = client(&fake, JWT);
    rc.list_subscriptions().await.unwrap();
    rc.list_subscriptions().await.unwrap();
    assert_eq!(
        fake.state.lock().unwrap().grants,
        [
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "refresh_token"
        ]
    );

    // Long-lived tokens are reused.
    let fake = FakeRingCentral::start().await;
    let rc = client(&fake, JWT);
    for _ in 0..3 {
        rc.list_subscriptions().await.unwrap();
    }
    assert_eq!(fake.state.lock().unwrap().grants.len(), 1);

    let wrong = client(&fake, "not-the-jwt")
        .list_subscriptions()
        .await
        .unwrap_err();
    assert!(wrong.to_string().contains("OAU-151"), "{wrong}");
}

/// The client waits on tokio's clock, so the test's clock is paused: the second passes at once.
#[tokio::test(start_paused = true)]
async fn a_429_is_retried_after_the_time_retry_after_asks() {
    let fake = FakeRingCentral::start().await;
    fake.state.lock().unwrap().rate_limit_next = 1;
    let rc = client(&fake, JWT);
    let started = tokio::time::Instant::now();
    rc.list_subscriptions().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(fake.state.lock().unwrap().api_calls, 2);
}

fn keeper_args(
    fake: &FakeRingCentral,
    address: String,
    interval: &str,
) -> impl FnOnce(&mut rc_kafka_bridge::config::Settings) {
    let interval = interval.to_string();
    move |a| {
        a.verification_token = Some(Secret::new("keeper-token"));
        fake.credentials(a);
        let rc = &mut a.ringcentral;
        rc.webhook_address = Some(address);
        rc.keep_subscription = true;
        rc.check_interval = humantime::parse_duration(&interval).unwrap();
    }
}

/// A bridge whose keeper looks after the subscription of its own address. `seed` adds an existing
/// subscription for the address first.
async fn bridge_with_keeper(
    kafka: &MockKafka,
    fake: &FakeRingCentral,
    interval: &str,
    seed: Option<&str>,
) -> (TestApp, Option<String>) {
    let mut seeded = None;
    let app = TestApp::spawn_bound(&kafka.bootstrap, |a, port| {
        let address = format!("http://127.0.0.1:{port}/webhook");
        seeded = seed.map(|status| fake.seed(&address, status, Some("keeper-token")));
        keeper_args(fake, address, interval)(a);
    })
    .await;
    (app, seeded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_renews_on_an_expiry_reminder() {
    let kafka = MockKafka::start();
    let fake = FakeRingCentral::start().await;
    let (app, id) = bridge_with_keeper(&kafka, &fake, "1h", Some("Active")).await;
    let id = id.unwrap();
    // The keeper's first look adopts the seeded subscription (its address is this bridge's).
    fake.until("the keeper to look", |s| s.api_calls >= 1).await;

    let reminder = reminder_notification(&format!("reminder-{}", unique()), &id).to_string();
    let response = app
        .post_with(reminder, &[("Verification-Token", "keeper-token")])
        .await;
    assert_eq!(response.status(), 200);
    fake.until("a renewal", |s| s.renewals.contains(&id)).await;
    app.metrics_until("the renewal to be counted", |m| {
        sample(m, "rckb_subscription_renewals_total", &[]) >= 1.0
    })
    .await;
    assert_eq!(
        fake.state.lock().unwrap().subscriptions.len(),
        1,
        "nothing recreated"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_recreates_a_blacklisted_subscription_with_the_same_filters_address_and_token() {
    let kafka = MockKafka::start();
    let fake = FakeRingCentral::start().await;
    let (app, id) = bridge_with_keeper(&kafka, &fake, "100ms", Some("Active")).await;
    let id = id.unwrap();
    let address = format!("{}/webhook", app.address);
    fake.until("the keeper to adopt", |s| s.api_calls >= 2)
        .await;
    let before = fake.state.lock().unwrap().subscriptions[&id].clone();

    fake.set_status(&id, "Blacklisted");
    fake.until("a new subscription", |s| {
        s.subscriptions.len() == 1 && !s.subscriptions.contains_key(&id)
    })
    .await;
    let (new, deleted) = {
        let state = fake.state.lock().unwrap();
        let new = state.subscriptions.values().next().unwrap().clone();
        (new, state.deletions.contains(&id))
    };
    assert!(deleted, "the blacklisted one was deleted");
    assert_eq!(new["status"], "Active");
    assert_eq!(new["eventFilters"], before["eventFilters"]);
    assert_eq!(new["deliveryMode"]["address"], address);
    assert_eq!(new["deliveryMode"]["verificationToken"], "keeper-token");

    let m = app
        .metrics_until("the recreation to be counted", |m| {
            sample(
                m,
                "rckb_subscription_recreations_total",
                &[("reason", "blacklisted")],
            ) == 1.0
        })
        .await;
    assert_eq!(
        sample(&m, "rckb_subscription_status", &[("status", "Active")]),
        1.0
    );
    assert!(sample(&m, "rckb_subscription_expiry_seconds", &[]) > 0.0);
    assert_eq!(sample(&m, "rckb_validation_handshakes_total", &[]), 1.0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_creates_a_subscription_when_there_is_none() {
    let kafka = MockKafka::start();
    let fake = FakeRingCentral::start().await;
    let (app, _) = bridge_with_keeper(&kafka, &fake, "1h", None).await;
    fake.until("a subscription", |s| s.subscriptions.len() == 1)
        .await;
    let subscriptions = fake.state.lock().unwrap().subscriptions.clone();
    let created = subscriptions.values().next().unwrap();
    assert_eq!(
        created["deliveryMode"]["address"],
        format!("{}/webhook", app.address)
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_allow_list_the_keepers_own_subscription_is_allowed_too() {
    let kafka = MockKafka::start();
    let fake = FakeRingCentral::start().await;
    let mut id = String::new();
    let app = TestApp::spawn_bound(&kafka.bootstrap, |a, port| {
        let address = format!("http://127.0.0.1:{port}/webhook");
        id = fake.seed(&address, "Active", Some("keeper-token"));
        keeper_args(&fake, address, "1h")(a);
        a.allowed_subscription_ids = vec!["configured-sub".parse().unwrap()];
    })
    .await;
    app.metrics_until("the keeper to adopt", |m| {
        sample(m, "rckb_subscription_status", &[("status", "Active")]) == 1.0
    })
    .await;
    let post = |subscription: &str| {
        let mut body = extension_update(&format!("allow-{}", unique()), "7", &["Features"]);
        body["subscriptionId"] = serde_json::json!(subscription);
        app.post_with(body.to_string(), &[("Verification-Token", "keeper-token")])
    };
    assert_eq!(post(&id).await.status(), 200, "the keeper's subscription");
    assert_eq!(
        post("configured-sub").await.status(),
        200,
        "the configured one"
    );
    assert_eq!(post("stranger").await.status(), 403, "any other");
    app.shutdown().await;
}
