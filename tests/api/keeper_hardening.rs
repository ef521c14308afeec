//! Hardening of the RingCentral side and of Kafka secrets: untrusted subscription ids never steer a
//! request, the API server must be HTTPS off loopback, the client works on a machine without CA
//! certificates, and Kafka property values never appear in an error.

use std::process::Output;
use std::time::Duration;

use rc_kafka_bridge::config::Secret;
use rc_kafka_bridge::metrics::Metrics;
use rc_kafka_bridge::ringcentral::keeper::{Keeper, KeeperSettings};
use rc_kafka_bridge::ringcentral::{Credentials, RingCentral, SubscriptionId};
use tokio::sync::{mpsc, watch};

use crate::common::app::TestApp;
use crate::common::fake_ringcentral::{CLIENT_ID, CLIENT_SECRET, FakeRingCentral, JWT};
use crate::common::metrics::{render, render_until, sample};
use crate::common::mock_kafka::MockKafka;
use crate::common::payloads::{reminder_notification, unique};
use crate::common::polling::eventually;
use crate::common::process::{Serve, bridge_command};

/// A subscription id that, pasted into a path, would reach RingCentral's RingOut endpoint.
const PATH_TRICK: &str = "../../v1.0/account/~/extension/~/ring-out?to=15551234567&";

const TOKEN: &str = "keeper-hardening-token";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The binary, run without blocking the test's runtime.
fn bridge() -> tokio::process::Command {
    tokio::process::Command::from(bridge_command())
}

async fn run(command: &mut tokio::process::Command) -> Output {
    command.output().await.expect("the binary runs")
}

fn ignored(scrape: &prometheus_parse::Scrape, reason: &str) -> f64 {
    sample(
        scrape,
        "rckb_subscription_reminders_ignored_total",
        &[("reason", reason)],
    )
}

fn requests(fake: &FakeRingCentral) -> Vec<String> {
    fake.state.lock().unwrap().requests.clone()
}

/// A keeper run directly (not inside `serve`), fed reminders through its channel.
struct RunningKeeper {
    reminders: mpsc::UnboundedSender<String>,
    kept: watch::Receiver<Option<SubscriptionId>>,
    metrics: Metrics,
    stop: rc_kafka_bridge::shutdown::Trigger,
}

/// The address of the bridge's `/webhook` in keepers that never create a subscription.
const ADDRESS: &str = "https://bridge.example/webhook";

fn start_keeper(
    fake: &FakeRingCentral,
    jwt: &str,
    address: &str,
    subscription_id: Option<&str>,
    interval: Duration,
) -> RunningKeeper {
    let client = RingCentral::new(Credentials {
        server: fake.url.clone(),
        client_id: CLIENT_ID.into(),
        client_secret: Secret::new(CLIENT_SECRET),
        jwt: Secret::new(jwt),
    })
    .expect("a client for the fake");
    let metrics = Metrics::new();
    let keeper = Keeper::new(
        std::sync::Arc::new(client),
        KeeperSettings {
            address: address.into(),
            event_filters: vec!["/restapi/v1.0/account/~/extension".into()],
            expires_in: 86_400,
            verification_token: Some(Secret::new(TOKEN)),
            subscription_id: subscription_id.map(|id| SubscriptionId::parse(id).unwrap()),
            check_interval: interval,
            renew_before: Duration::from_secs(60),
        },
        metrics.clone(),
    );
    let kept = keeper.subscription_id();
    let (reminders, rx) = mpsc::unbounded_channel();
    let (stop, stopped) = rc_kafka_bridge::shutdown::channel();
    tokio::spawn(keeper.run(rx, stopped));
    RunningKeeper {
        reminders,
        kept,
        metrics,
        stop,
    }
}

/// Waits (bounded) until the keeper publishes `want` as its subscription.
async fn kept_becomes(kept: &watch::Receiver<Option<SubscriptionId>>, want: &str) {
    let what = format!("the keeper to keep {want}");
    eventually(what, Duration::from_secs(20), async || {
        kept.borrow().as_ref().is_some_and(|id| id == want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_posted_to_the_webhook_with_a_path_trick_id_reaches_no_other_endpoint() {
    let kafka = MockKafka::start();
    let fake = FakeRingCentral::start().await;
    let mut ours = String::new();
    let app = TestApp::spawn_bound(&kafka.bootstrap, |a, port| {
        let address = format!("http://127.0.0.1:{port}/webhook");
        ours = fake.seed(&address, "Active", Some(TOKEN));
        a.verification_token = Some(Secret::new(TOKEN));
        fake.credentials(a);
        let rc = &mut a.ringcentral;
        rc.webhook_address = Some(address);
        rc.keep_subscription = true;
        rc.check_interval = Duration::from_secs(3600);
    })
    .await;
    // The status gauge is set while the keeper adopts; it reads reminders only after that.
    app.metrics_until("the keeper to adopt its subscription", |m| {
        sample(m, "rckb_subscription_status", &[("status", "Active")]) == 1.0
    })
    .await;

    for subscription in [PATH_TRICK, "another-subscription-1", ours.as_str()] {
        let reminder = reminder_notification(&format!("reminder-{}", unique()), subscription);
        app.post_with(reminder.to_string(), &[("Verification-Token", TOKEN)])
            .await;
    }
    // Reminders are handled in order: once ours is renewed, the others were handled too.
    fake.until("the renewal of the kept subscription", |s| {
        s.renewals.contains(&ours)
    })
    .await;

    assert_eq!(
        requests(&fake),
        [
            "POST /restapi/oauth/token".to_string(),
            "GET /restapi/v1.0/subscription".to_string(),
            format!("POST /restapi/v1.0/subscription/{ours}/renew"),
        ],
        "the keeper adopted, then renewed only its own subscription"
    );
    {
        let state = fake.state.lock().unwrap();
        assert_eq!(state.renewals, std::slice::from_ref(&ours));
        assert!(state.deletions.is_empty(), "{:?}", state.deletions);
        assert_eq!(state.subscriptions.len(), 1, "nothing created");
    }
    app.metrics_until("the other subscription's reminder to be counted", |m| {
        ignored(m, "other_subscription") == 1.0
    })
    .await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_acts_only_on_reminders_for_the_subscription_it_owns() {
    let fake = FakeRingCentral::start().await;
    let ours = fake.seed(ADDRESS, "Active", Some(TOKEN));
    let other = fake.seed("https://other.example/webhook", "Active", None);
    let keeper = start_keeper(&fake, JWT, ADDRESS, Some(&ours), Duration::from_secs(3600));
    kept_becomes(&keeper.kept, &ours).await;

    for reminded in [
        PATH_TRICK,
        "../renew",
        "a/b",
        "%2e%2e",
        "",
        other.as_str(),
        ours.as_str(),
        // A flood of genuine-looking reminders renews once.
        ours.as_str(),
        ours.as_str(),
    ] {
        keeper.reminders.send(reminded.to_string()).unwrap();
    }
    fake.until("the renewal of the kept subscription", |s| {
        s.renewals.contains(&ours)
    })
    .await;

    assert_eq!(
        requests(&fake),
        [
            "POST /restapi/oauth/token".to_string(),
            format!("GET /restapi/v1.0/subscription/{ours}"),
            format!("POST /restapi/v1.0/subscription/{ours}/renew"),
        ]
    );
    assert_eq!(
        fake.state.lock().unwrap().renewals,
        std::slice::from_ref(&ours)
    );
    render_until(&keeper.metrics, "every reminder handled", |m| {
        ignored(m, "recently_renewed") == 2.0
    })
    .await;
    let m = render(&keeper.metrics);
    assert_eq!(ignored(&m, "invalid_id"), 5.0);
    assert_eq!(ignored(&m, "other_subscription"), 1.0);
    assert_eq!(sample(&m, "rckb_subscription_renewals_total", &[]), 1.0);
    keeper.stop.begin(tokio::time::Instant::now());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kept_subscription_id_follows_a_recreation() {
    let fake = FakeRingCentral::start().await;
    // Creating a subscription performs the handshake: point the new one at a bridge that answers.
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |_| {}).await;
    let address = format!("{}/webhook", app.address);
    let ours = fake.seed(&address, "Active", None);
    let keeper = start_keeper(
        &fake,
        JWT,
        &address,
        Some(&ours),
        Duration::from_millis(100),
    );
    kept_becomes(&keeper.kept, &ours).await;

    fake.set_status(&ours, "Blacklisted");
    let new = eventually(
        "a new subscription to be kept",
        Duration::from_secs(20),
        async || {
            keeper
                .kept
                .borrow()
                .clone()
                .filter(|id| *id != *ours.as_str())
        },
    )
    .await;
    {
        let state = fake.state.lock().unwrap();
        assert!(state.subscriptions.contains_key(new.as_str()));
        assert!(!state.subscriptions.contains_key(&ours));
    }

    // A reminder for the replaced subscription is no longer acted on.
    keeper.reminders.send(ours.clone()).unwrap();
    render_until(&keeper.metrics, "the stale reminder to be ignored", |m| {
        ignored(m, "other_subscription") == 1.0
    })
    .await;
    assert!(fake.state.lock().unwrap().renewals.is_empty());
    keeper.stop.begin(tokio::time::Instant::now());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keeper_that_owns_no_subscription_renews_nothing() {
    let fake = FakeRingCentral::start().await;
    let id = fake.seed(ADDRESS, "Active", None);
    // Wrong credentials: the keeper cannot adopt anything.
    let keeper = start_keeper(
        &fake,
        "not-the-jwt",
        ADDRESS,
        Some(&id),
        Duration::from_secs(3600),
    );
    render_until(&keeper.metrics, "the failed adoption", |m| {
        sample(m, "rckb_ringcentral_api_errors_total", &[]) >= 1.0
    })
    .await;
    keeper.reminders.send(id.clone()).unwrap();
    render_until(&keeper.metrics, "the reminder to be ignored", |m| {
        ignored(m, "none_kept") == 1.0
    })
    .await;
    assert!(fake.state.lock().unwrap().renewals.is_empty());
    assert!(
        requests(&fake)
            .iter()
            .all(|r| r == "POST /restapi/oauth/token"),
        "{:?}",
        requests(&fake)
    );
    assert!(keeper.kept.borrow().is_none());
    keeper.stop.begin(tokio::time::Instant::now());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_refuses_subscription_ids_that_are_not_ids() {
    let fake = FakeRingCentral::start().await;
    for action in ["show", "renew", "delete"] {
        for id in ["../x", PATH_TRICK, "a b"] {
            let out = run(bridge()
                .args(["subscription", action, id])
                .args(fake.cli_args()))
            .await;
            assert!(!out.status.success(), "{action} {id}");
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains("not a RingCentral subscription id"),
                "{action} {id}: {stderr}"
            );
        }
    }
    assert!(requests(&fake).is_empty(), "{:?}", requests(&fake));

    let out = run(bridge().args(["check-config", "--rc-subscription-id", "../x"])).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--rc-subscription-id"), "{stderr}");
    assert!(
        stderr.contains("not a RingCentral subscription id"),
        "{stderr}"
    );
}

/// `subscription list` against `server` with the fake's credentials.
async fn list_on(server: &str) -> Output {
    run(bridge()
        .args(["subscription", "list", "--rc-server", server])
        .args([
            "--rc-client-id",
            CLIENT_ID,
            "--rc-client-secret",
            CLIENT_SECRET,
            "--rc-jwt",
            JWT,
        ]))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_must_be_https_unless_it_is_on_loopback() {
    let fake = FakeRingCentral::start().await;
    for server in [
        "http://platform.ringcentral.com",
        "http://10.0.0.7:8080",
        "http://[2001:db8::1]",
        "ftp://platform.ringcentral.com",
    ] {
        let out = list_on(server).await;
        assert!(!out.status.success(), "{server}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("ringcentral.server"), "{server}: {stderr}");
        assert!(stderr.contains("https://"), "{server}: {stderr}");
    }
    let out = run(bridge().args(["check-config", "--rc-server", "http://rc.example.com"])).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("ringcentral.server"));
    assert!(requests(&fake).is_empty());

    // Loopback by name or address: the fake itself.
    let port = fake.url.rsplit(':').next().unwrap();
    for server in [fake.url.clone(), format!("http://localhost:{port}")] {
        let out = list_on(&server).await;
        assert!(out.status.success(), "{server}: {}", text(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_works_on_a_machine_without_ca_certificates() {
    let fake = FakeRingCentral::start().await;
    let id = fake.seed(ADDRESS, "Active", None);
    // SSL_CERT_FILE replaces the system's certificate store: an empty file is a machine without
    // CA certificates, like the shipped image.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-certificates.pem");
    std::fs::write(&empty, "").unwrap();
    let out = run(bridge()
        .args(["subscription", "list"])
        .args(fake.cli_args())
        .env("SSL_CERT_FILE", &empty)
        .env_remove("SSL_CERT_DIR"))
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&id));
}

/// `check-config` with extra arguments and environment (and no other `RCKB_*` variable).
async fn check_config(args: &[&str], env: &[(&str, &str)]) -> Output {
    run(bridge()
        .arg("check-config")
        .args(args)
        .envs(env.iter().copied()))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_values_with_commas_pass_through_the_environment() {
    let out = check_config(
        &[],
        &[
            ("RCKB_KAFKA_PROPERTY_CLIENT_ID", "bridge,eu-1"),
            ("RCKB_KAFKA_PROPERTY_SASL_PASSWORD", "pass,word"),
            ("RCKB_KAFKA_PROPERTIES", r"linger.ms=7,client.rack=rack\,a"),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(r#""client.id": "bridge,eu-1""#), "{stdout}");
    assert!(stdout.contains(r#""client.rack": "rack,a""#), "{stdout}");
    assert!(stdout.contains(r#""linger.ms": "7""#), "{stdout}");
    assert!(stdout.contains(r#""sasl.password": "***""#), "{stdout}");
    assert!(!stdout.contains("pass,word"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_property_flag_wins_over_its_variable_which_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "[kafka.properties]\n\"linger.ms\" = \"1\"\n").unwrap();
    let file = file.to_str().unwrap();
    let linger = |out: &Output| {
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        stdout
            .split(r#""linger.ms": ""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no linger.ms in {stdout}"))
            .to_string()
    };
    let variable = [("RCKB_KAFKA_PROPERTY_LINGER_MS", "2")];
    let list = [("RCKB_KAFKA_PROPERTIES", "linger.ms=4")];
    let both = [variable[0], list[0]];
    let flag = ["--config", file, "--kafka-property", "linger.ms=3"];
    assert_eq!(linger(&check_config(&["--config", file], &[]).await), "1");
    assert_eq!(linger(&check_config(&["--config", file], &list).await), "4");
    assert_eq!(linger(&check_config(&["--config", file], &both).await), "2");
    assert_eq!(linger(&check_config(&flag, &both).await), "3");
}

/// A configuration `check-config` must refuse, and what its error must name.
struct Refused {
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    named: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_property_errors_name_the_key_and_never_the_value() {
    const SECRET: &str = "S3cr3tValue";
    let flags = |properties: &[String]| {
        properties
            .iter()
            .flat_map(|p| ["--kafka-property".to_string(), p.clone()])
            .collect::<Vec<_>>()
    };
    let cases = [
        // A value librdkafka refuses.
        Refused {
            args: flags(&[format!("linger.ms={SECRET}")]),
            env: vec![],
            named: "linger.ms",
        },
        // A misspelled key.
        Refused {
            args: flags(&[format!("sasl.pasword={SECRET}")]),
            env: vec![],
            named: "sasl.pasword",
        },
        // Not KEY=VALUE at all.
        Refused {
            args: flags(&[SECRET.into()]),
            env: vec![],
            named: "KEY=VALUE",
        },
        // A password with an unescaped comma, split in two.
        Refused {
            args: vec![],
            env: vec![(
                "RCKB_KAFKA_PROPERTIES",
                format!("sasl.password={SECRET},{SECRET}"),
            )],
            named: "RCKB_KAFKA_PROPERTIES",
        },
        Refused {
            args: vec![],
            env: vec![("RCKB_KAFKA_PROPERTY_LINGER_MS", SECRET.into())],
            named: "linger.ms",
        },
        // Accepted property by property, refused when the client is made.
        Refused {
            args: flags(&[
                "security.protocol=sasl_plaintext".into(),
                format!("sasl.mechanisms={SECRET}"),
            ]),
            env: vec![],
            named: "sasl.mechanisms",
        },
    ];
    for Refused { args, env, named } in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = check_config(&args, &env).await;
        assert!(!out.status.success(), "{args:?} {env:?}");
        let output = text(&out.stderr) + &text(&out.stdout);
        assert!(output.contains(named), "{args:?} {env:?}: {output}");
        assert!(!output.contains(SECRET), "{args:?} {env:?}: {output}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_names_a_refused_kafka_property_without_its_value() {
    const SECRET: &str = "S3cr3tMechanism";
    let dir = tempfile::tempdir().unwrap();
    let stderr = Serve::new(dir.path())
        .brokers("127.0.0.1:9")
        .args(&["--verification-token", "a-long-enough-verification-token"])
        .args(&["--kafka-property", "security.protocol=sasl_plaintext"])
        .args(&["--kafka-property", &format!("sasl.mechanisms={SECRET}")])
        .refuses()
        .await;
    assert!(stderr.contains("sasl.mechanisms"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
}
