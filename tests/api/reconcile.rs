//! Reconciliation end to end: the real binary against the fake RingCentral, whose extensions change
//! with no notification sent; sweeps (the initial snapshot, SIGUSR1) repair the state topics and
//! tell hint consumers what they missed.

use std::time::Duration;

use serde_json::json;

use crate::common::fake_extensions::Budget;
use crate::common::fake_ringcentral::FakeRingCentral;
use crate::common::kafka::{Received, read_until};
use crate::common::metrics::{sample, scrape_until};
use crate::common::mock_kafka::MockKafka;
use crate::common::payloads::{extension_update, unique};
use crate::common::process::BridgeProcess;
use crate::state::{EXTENSION_TOPIC, latest_for, setup_without_index};

const HINT_TOPIC: &str = "ringcentral.account.extension";
const INDEX_TOPIC: &str = "ringcentral.state-index";
const REQUESTS_TOPIC: &str = "ringcentral.state-requests";
const FEATURES_TOPIC: &str = "ringcentral.state.account.extension.features";
const VIDEO_TOPIC: &str = "ringcentral.state.account.extension.video-configuration";

/// The fake with 30 extensions, listed 10 a page, and budgets large enough that a test's snapshot
/// takes seconds, not minutes.
async fn thirty_extensions() -> (MockKafka, FakeRingCentral, Vec<String>) {
    extensions(30).await
}

/// The fake with `n` extensions from 501 on, as [`thirty_extensions`].
async fn extensions(n: usize) -> (MockKafka, FakeRingCentral, Vec<String>) {
    let (kafka, fake) = setup_without_index(1).await;
    let ids: Vec<String> = (501..).take(n).map(|n: u32| n.to_string()).collect();
    {
        let mut state = fake.state.lock().unwrap();
        state.extensions.clear();
        state.listing.page_cap = Some(10);
        let roomy = Budget {
            limit: 1000,
            window: Duration::from_secs(60),
            penalty: Duration::from_secs(60),
        };
        for group in ["light", "medium"] {
            state.limits.budgets.insert(group, roomy);
        }
    }
    for id in &ids {
        fake.add_extension(id);
    }
    (kafka, fake, ids)
}

async fn start(
    kafka: &MockKafka,
    fake: &FakeRingCentral,
    spool: &std::path::Path,
) -> BridgeProcess {
    let mut args = vec!["--state".to_string()];
    args.extend(fake.cli_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    BridgeProcess::start(&kafka.bootstrap, spool, &args).await
}

/// Waits for `n` completed sweeps of `cause` on the bridge.
async fn sweeps(bridge: &BridgeProcess, cause: &str, n: f64) {
    scrape_until(
        &bridge.admin_address(),
        &format!("{n} {cause} sweeps"),
        |m| {
            sample(
                m,
                "rckb_state_sweeps_total",
                &[("cause", cause), ("outcome", "ok")],
            ) >= n
        },
    )
    .await;
}

/// Reads until every one of `ids` has a record on the extension state topic.
async fn every_state(kafka: &MockKafka, ids: &[String]) -> Vec<Received> {
    read_until(
        &kafka.bootstrap,
        &topics(),
        Duration::from_secs(60),
        |read| {
            ids.iter()
                .all(|id| latest_for(read, EXTENSION_TOPIC, id).is_some())
        },
    )
    .await
}

fn topics() -> Vec<String> {
    [EXTENSION_TOPIC, HINT_TOPIC].map(String::from).to_vec()
}

fn reconciled<'a>(read: &'a [Received], event_type: &str) -> Vec<&'a Received> {
    read.iter()
        .filter(|m| m.topic == HINT_TOPIC && m.header("rc-event-type") == Some(event_type))
        .filter(|m| m.header("rc-reconciled").is_some())
        .collect()
}

fn states(read: &[Received]) -> Vec<&Received> {
    read.iter().filter(|m| m.topic == EXTENSION_TOPIC).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_repairs_exactly_what_changed_without_a_notification() {
    let (kafka, fake, ids) = thirty_extensions().await;
    // One extension whose video configuration the app may not read: that state topic never holds
    // a record for it, and so gets no tombstone when it is gone.
    fake.state
        .lock()
        .unwrap()
        .forbidden_resources
        .insert(("512".to_string(), "video-configuration"));
    let spool = tempfile::tempdir().unwrap();
    let mut bridge = start(&kafka, &fake, spool.path()).await;

    // The index is empty: the initial snapshot fetches every extension once, and tells hint
    // consumers nothing (nothing was missed yet).
    sweeps(&bridge, "snapshot", 1.0).await;
    // Its cost, logged before anything is queued: six GETs per extension, in two groups.
    let cost = bridge
        .wait_for_log("fetches to queue", Duration::from_secs(10))
        .await;
    assert_eq!(cost["listed"], 30, "{cost}");
    assert_eq!(cost["calls"], "light=90 medium=90", "{cost}");
    let read = every_state(&kafka, &ids).await;
    assert_eq!(states(&read).len(), 30, "one state per extension");
    assert!(reconciled(&read, "Reconciled").is_empty());

    // RingCentral changes with no notification: 3 renamed, 2 deleted, 1 added; and it is busy
    // when the sweep lists the second page.
    {
        let mut state = fake.state.lock().unwrap();
        for id in ["503", "507", "520"] {
            state.extensions.get_mut(id).unwrap()["name"] = json!(format!("Renamed {id}"));
        }
        for id in ["511", "512"] {
            state.extensions.remove(id);
        }
        state.listing.rate_limit_page = Some(2);
    }
    fake.add_extension("599");
    bridge.signal("USR1");
    sweeps(&bridge, "requested", 1.0).await;

    let changed = ["503", "507", "520", "599"];
    let expected = |read: &[Received]| {
        let renamed = ["503", "507", "520"].iter().all(|id| {
            latest_for(read, EXTENSION_TOPIC, id).is_some_and(|m| {
                !m.tombstone && m.value()["name"] == json!(format!("Renamed {id}"))
            })
        });
        let added = latest_for(read, EXTENSION_TOPIC, "599").is_some_and(|m| !m.tombstone);
        let tombstoned = ["511", "512"]
            .iter()
            .all(|id| latest_for(read, EXTENSION_TOPIC, id).is_some_and(|m| m.tombstone));
        renamed
            && added
            && tombstoned
            && reconciled(read, "Reconciled").len() == 4
            && reconciled(read, "Delete").len() == 2
    };
    let read = read_until(
        &kafka.bootstrap,
        &topics(),
        Duration::from_secs(60),
        expected,
    )
    .await;
    assert!(expected(&read), "the repairs arrive");
    // 30 snapshot states, 4 updates, 2 tombstones: nothing for the other 24.
    assert_eq!(states(&read).len(), 36);
    let mut told: Vec<&str> = reconciled(&read, "Reconciled")
        .iter()
        .map(|m| m.key.as_str())
        .collect();
    told.sort();
    assert_eq!(told, changed);
    let mut deleted: Vec<&str> = reconciled(&read, "Delete")
        .iter()
        .map(|m| m.key.as_str())
        .collect();
    deleted.sort();
    assert_eq!(deleted, ["511", "512"]);
    let delete = reconciled(&read, "Delete")[0];
    assert_eq!(delete.value()["eventType"], "Delete");
    assert!(delete.header("rc-hint").is_none());

    // A second sweep finds nothing to repair, and so publishes nothing.
    bridge.signal("USR1");
    sweeps(&bridge, "requested", 2.0).await;
    let scrape = scrape_until(&bridge.admin_address(), "the second sweep", |m| {
        sample(m, "rckb_state_sweeps_total", &[("outcome", "ok")]) == 3.0
    })
    .await;
    for (kind, total) in [("new", 31.0), ("changed", 3.0), ("gone", 2.0)] {
        let counted = sample(
            &scrape,
            "rckb_state_sweep_differences_total",
            &[("kind", kind)],
        );
        assert_eq!(counted, total, "{kind}");
    }
    let again = read_until(&kafka.bootstrap, &topics(), Duration::from_secs(30), |r| {
        r.len() >= read.len()
    })
    .await;
    assert_eq!(
        again.len(),
        read.len(),
        "the second sweep published nothing"
    );
    // Three pages a sweep; the 429 made the second sweep list its first page again.
    assert_eq!(fake.state.lock().unwrap().listing.pages, 3 + 4 + 3);

    // The gone extensions' tombstones are where they had records, and only there; the index no
    // longer says they hold any.
    let per_extension = [FEATURES_TOPIC, VIDEO_TOPIC].map(String::from).to_vec();
    let mut read_topics = per_extension.clone();
    read_topics.push(INDEX_TOPIC.to_string());
    let tombstoned = |read: &[Received], topic: &str, id: &str| {
        latest_for(read, topic, id).is_some_and(|m| m.tombstone)
    };
    let settled = |read: &[Received]| {
        per_extension
            .iter()
            .all(|topic| tombstoned(read, topic, "511"))
            && tombstoned(read, FEATURES_TOPIC, "512")
            && [
                ("511", FEATURES_TOPIC),
                ("511", VIDEO_TOPIC),
                ("512", FEATURES_TOPIC),
            ]
            .iter()
            .all(|(id, topic)| tombstoned(read, INDEX_TOPIC, &format!("{id}@{topic}")))
    };
    let read = read_until(
        &kafka.bootstrap,
        &read_topics,
        Duration::from_secs(30),
        settled,
    )
    .await;
    assert!(settled(&read), "tombstones on the topics holding records");
    assert!(
        latest_for(&read, VIDEO_TOPIC, "512").is_none(),
        "no record, and so no tombstone, where the extension had none"
    );
    assert!(latest_for(&read, INDEX_TOPIC, &format!("512@{VIDEO_TOPIC}")).is_none());
    assert!(latest_for(&read, VIDEO_TOPIC, "513").is_some_and(|m| !m.tombstone));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_a_hint_delivered_is_not_reported_again_by_the_next_sweep() {
    let (kafka, fake, ids) = thirty_extensions().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = start(&kafka, &fake, spool.path()).await;
    sweeps(&bridge, "snapshot", 1.0).await;
    every_state(&kafka, &ids).await;

    // RingCentral renames an extension and says so: the hint's fetch publishes the record (with
    // fields List Extensions does not return), then moves the index.
    fake.state
        .lock()
        .unwrap()
        .extensions
        .get_mut("507")
        .unwrap()["name"] = json!("Renamed 507");
    post_hint(&bridge, &format!("r-{}", unique()), "507").await;
    let renamed = |read: &[Received]| {
        latest_for(read, EXTENSION_TOPIC, "507").is_some_and(|m| m.value()["name"] == "Renamed 507")
    };
    let indexed = |read: &[Received]| {
        latest_for(read, INDEX_TOPIC, "507").is_some_and(|m| m.value()["sweep"] == "fetch")
    };
    let both = [EXTENSION_TOPIC, INDEX_TOPIC].map(String::from);
    let read = read_until(&kafka.bootstrap, &both, Duration::from_secs(30), |read| {
        renamed(read) && indexed(read)
    })
    .await;
    assert!(renamed(&read), "the renamed record's state");
    assert!(indexed(&read), "the fetch's index entry");

    bridge.signal("USR1");
    sweeps(&bridge, "requested", 1.0).await;
    let scrape = crate::common::metrics::scrape(&bridge.admin_address()).await;
    let kind = |kind| {
        sample(
            &scrape,
            "rckb_state_sweep_differences_total",
            &[("kind", kind)],
        )
    };
    assert_eq!(
        kind("changed"),
        0.0,
        "the renamed extension is no difference"
    );
    assert_eq!(kind("new"), 30.0, "the snapshot's, and no more");
    assert_eq!(kind("gone"), 0.0);
    // A hint after the sweep: everything before it on the hint topic is what the sweep published.
    let marker = format!("marker-{}", unique());
    post_hint(&bridge, &marker, "501").await;
    let read = read_until(
        &kafka.bootstrap,
        &topics(),
        Duration::from_secs(30),
        |read| read.iter().any(|m| m.uuid() == marker),
    )
    .await;
    assert!(
        read.iter().any(|m| m.uuid() == marker),
        "the marker arrived"
    );
    assert!(
        reconciled(&read, "Reconciled").is_empty(),
        "nothing reported as missed"
    );
}

/// Posts an ExtensionInfo hint for `extension`, accepted.
async fn post_hint(bridge: &BridgeProcess, uuid: &str, extension: &str) {
    let body = extension_update(uuid, extension, &["ExtensionInfo"]);
    assert_eq!(bridge.post_webhook(body.to_string(), &[]).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_snapshot_is_tried_again_soon_without_being_asked() {
    let (kafka, fake, ids) = thirty_extensions().await;
    // The user lacks ReadExtensions: RingCentral refuses the list.
    fake.state.lock().unwrap().listing.forbidden = true;
    let spool = tempfile::tempdir().unwrap();
    let bridge = start(&kafka, &fake, spool.path()).await;
    scrape_until(&bridge.admin_address(), "a failed snapshot", |m| {
        sample(
            m,
            "rckb_state_sweeps_total",
            &[("cause", "snapshot"), ("outcome", "failed")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        fake.state.lock().unwrap().listing.pages,
        0,
        "a refused list is not asked again and again"
    );

    // Permission granted: the next try, 15 s later with nothing asked of the bridge, is the
    // snapshot, and it fills the state topics.
    fake.state.lock().unwrap().listing.forbidden = false;
    crate::common::polling::eventually(
        "the snapshot tried again",
        Duration::from_secs(60),
        async || {
            let scrape = crate::common::metrics::scrape(&bridge.admin_address()).await;
            let ok = &[("cause", "snapshot"), ("outcome", "ok")];
            (sample(&scrape, "rckb_state_sweeps_total", ok) == 1.0).then_some(())
        },
    )
    .await;
    let read = every_state(&kafka, &ids).await;
    assert_eq!(states(&read).len(), 30, "one state per extension");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_during_the_snapshot_is_fetched_before_the_snapshots_backlog() {
    // 60 extensions: the snapshot queues them in three steps of 20, each once the fetch queue is
    // short again.
    let (kafka, fake, ids) = extensions(60).await;
    let gate = fake.state.lock().unwrap().gate.clone();
    let closed = gate.write().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = start(&kafka, &fake, spool.path()).await;
    // RingCentral holds the fetches: the first step is queued and the snapshot waits on it.
    scrape_until(&bridge.admin_address(), "the snapshot's first step", |m| {
        sample(m, "rckb_state_sweep_progress_ratio", &[]) > 0.3
    })
    .await;
    // A hint for an extension of the last step, queued behind the first step.
    let hinted = "559";
    let uuid = format!("p-{}", unique());
    post_hint(&bridge, &uuid, hinted).await;
    let requests = vec![REQUESTS_TOPIC.to_string()];
    let queued = |read: &[Received]| read.iter().any(|m| m.raw.contains(&uuid));
    let read = read_until(&kafka.bootstrap, &requests, Duration::from_secs(30), queued).await;
    assert!(queued(&read), "the hint's fetch is queued");
    drop(closed);

    sweeps(&bridge, "snapshot", 1.0).await;
    let topic = vec![EXTENSION_TOPIC.to_string()];
    let read = read_until(&kafka.bootstrap, &topic, Duration::from_secs(60), |read| {
        ids.iter()
            .all(|id| latest_for(read, EXTENSION_TOPIC, id).is_some())
            && read.iter().filter(|m| m.key == hinted).count() >= 2
    })
    .await;
    let by_hint = read
        .iter()
        .position(|m| m.header("rc-cause").is_some_and(|c| c.starts_with(&uuid)))
        .expect("the hint's state");
    assert_eq!(read[by_hint].key, hinted);
    let last_step = read
        .iter()
        .position(|m| m.key.as_str() >= "541")
        .expect("the last step's states");
    assert!(
        by_hint <= last_step,
        "the hint's state (record {by_hint}) waited for the snapshot's last step (from record {last_step})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_cut_by_sigkill_completes_after_the_restart() {
    let (kafka, fake, ids) = thirty_extensions().await;
    let spool = tempfile::tempdir().unwrap();
    // RingCentral holds the extensions' resources: the fetch queue fills, and the snapshot waits
    // for it to drain after its first step of 20 extensions.
    let gate = fake.state.lock().unwrap().gate.clone();
    let closed = gate.write().await;
    let bridge = start(&kafka, &fake, spool.path()).await;
    scrape_until(&bridge.admin_address(), "the snapshot's first step", |m| {
        sample(m, "rckb_state_sweep_progress_ratio", &[]) > 0.5
    })
    .await;
    bridge.kill_hard();
    drop(closed);

    let restarted = start(&kafka, &fake, spool.path()).await;
    sweeps(&restarted, "snapshot", 1.0).await;
    let read = every_state(&kafka, &ids).await;
    for id in &ids {
        let state = latest_for(&read, EXTENSION_TOPIC, id);
        assert!(state.is_some_and(|m| !m.tombstone), "no state for {id}");
    }
    assert!(
        reconciled(&read, "Reconciled").is_empty(),
        "a resumed snapshot is still a snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_cut_by_sigkill_completes_after_the_restart_and_loses_no_difference() {
    let (kafka, fake, ids) = thirty_extensions().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = start(&kafka, &fake, spool.path()).await;
    sweeps(&bridge, "snapshot", 1.0).await;
    every_state(&kafka, &ids).await;

    // 25 renamed and 2 deleted, unannounced: two steps of repairs. RingCentral holds the fetches,
    // so the sweep waits after its first step, and is killed there.
    let renamed: Vec<String> = ids[..25].to_vec();
    {
        let mut state = fake.state.lock().unwrap();
        for id in &renamed {
            state.extensions.get_mut(id).unwrap()["name"] = json!(format!("Renamed {id}"));
        }
        for id in &ids[28..] {
            state.extensions.remove(id);
        }
    }
    let gate = fake.state.lock().unwrap().gate.clone();
    let closed = gate.write().await;
    bridge.signal("USR1");
    scrape_until(&bridge.admin_address(), "the sweep's first step", |m| {
        let progress = sample(m, "rckb_state_sweep_progress_ratio", &[]);
        progress > 0.5 && progress < 1.0
    })
    .await;
    bridge.kill_hard();
    drop(closed);

    let restarted = start(&kafka, &fake, spool.path()).await;
    sweeps(&restarted, "resumed", 1.0).await;
    let expected = |read: &[Received]| {
        let repaired = renamed.iter().all(|id| {
            latest_for(read, EXTENSION_TOPIC, id)
                .is_some_and(|m| m.value()["name"] == json!(format!("Renamed {id}")))
        });
        let tombstoned = ids[28..]
            .iter()
            .all(|id| latest_for(read, EXTENSION_TOPIC, id).is_some_and(|m| m.tombstone));
        repaired && tombstoned && reconciled(read, "Delete").len() == 2
    };
    let read = read_until(
        &kafka.bootstrap,
        &topics(),
        Duration::from_secs(60),
        expected,
    )
    .await;
    assert!(expected(&read), "every repair arrives");
    let mut told: Vec<&str> = reconciled(&read, "Reconciled")
        .iter()
        .map(|m| m.key.as_str())
        .collect();
    told.sort();
    assert_eq!(told, renamed, "each change told once, across the kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_sweeps_and_the_next_does_not_republish_everything() {
    let (kafka, fake, ids) = thirty_extensions().await;
    let (first_spool, second_spool) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = start(&kafka, &fake, first_spool.path()).await;
    sweeps(&leader, "snapshot", 1.0).await;
    every_state(&kafka, &ids).await;
    assert_eq!(fake.state.lock().unwrap().listing.pages, 3, "one snapshot");
    // The second replica joins once the snapshot is fetched. Two members joining one group at once
    // can keep the mock cluster's group rebalancing for good: it answers a follower's SyncGroup
    // that comes after the leader's with an error, and the follower's rejoin starts it over.
    let follower = start(&kafka, &fake, second_spool.path()).await;
    let sweeper = |scrape: &_| sample(scrape, "rckb_state_sweeper", &[]);
    let scrape = crate::common::metrics::scrape(&leader.admin_address()).await;
    assert_eq!(sweeper(&scrape), 1.0, "the first replica sweeps");

    // A sweep asked of the replica that does not sweep is run by the one that does.
    follower.signal("USR1");
    sweeps(&leader, "requested", 1.0).await;
    let asked = crate::common::metrics::scrape(&follower.admin_address()).await;
    assert_eq!(sample(&asked, "rckb_state_sweeps_total", &[]), 0.0);

    // The sweeping replica dies; the other takes over the sweeps, and its first finds nothing.
    leader.kill_hard();
    scrape_until(
        &follower.admin_address(),
        "the other replica to sweep",
        |m| sweeper(m) == 1.0,
    )
    .await;
    follower.signal("USR1");
    let scrape = scrape_until(&follower.admin_address(), "its sweep", |m| {
        sample(m, "rckb_state_sweeps_total", &[("outcome", "ok")]) == 1.0
    })
    .await;
    assert_eq!(
        sample(
            &scrape,
            "rckb_state_sweeps_total",
            &[("cause", "requested"), ("outcome", "ok")]
        ),
        1.0,
        "not a snapshot again"
    );
    let differences = sample(&scrape, "rckb_state_sweep_differences_total", &[]);
    assert_eq!(differences, 0.0, "nothing republished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_subscription_is_followed_by_a_sweep() {
    let (kafka, fake) = setup_without_index(1).await;
    let mut seeded = None;
    let app = crate::common::app::TestApp::spawn_bound(&kafka.bootstrap, |settings, port| {
        let address = format!("http://127.0.0.1:{port}/webhook");
        seeded = Some(fake.seed(&address, "Active", Some("keeper-token")));
        settings.verification_token = Some(rc_kafka_bridge::config::Secret::new("keeper-token"));
        crate::state::with_state(&fake)(settings);
        let rc = &mut settings.ringcentral;
        rc.webhook_address = Some(address);
        rc.keep_subscription = true;
        rc.check_interval = Duration::from_millis(200);
    })
    .await;
    app.metrics_until("the initial snapshot", |m| {
        sample(
            m,
            "rckb_state_sweeps_total",
            &[("cause", "snapshot"), ("outcome", "ok")],
        ) == 1.0
    })
    .await;
    // While RingCentral held the subscription blacklisted, it sent nothing.
    fake.set_status(&seeded.unwrap(), "Blacklisted");
    app.metrics_until("a sweep after the recreation", |m| {
        sample(
            m,
            "rckb_subscription_recreations_total",
            &[("reason", "blacklisted")],
        ) == 1.0
            && sample(
                m,
                "rckb_state_sweeps_total",
                &[("cause", "subscription_gap"), ("outcome", "ok")],
            ) == 1.0
    })
    .await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_reconcile_sweeps_for_a_stopped_bridge_and_defers_to_a_running_one() {
    let (kafka, fake, _) = thirty_extensions().await;
    let spool = tempfile::tempdir().unwrap();
    let reconcile = || {
        let output = crate::common::process::bridge_command()
            .args([
                "state",
                "reconcile",
                "--state",
                "--brokers",
                &kafka.bootstrap,
            ])
            .arg("--spool-dir")
            .arg(spool.path())
            .args(fake.cli_args())
            .output()
            .unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (
            output.status.success(),
            text(&output.stdout),
            text(&output.stderr),
        )
    };
    // A bridge (without state topics) runs on the spool: it is the one to ask.
    let running = BridgeProcess::start(&kafka.bootstrap, spool.path(), &[]).await;
    let (ok, _, stderr) = reconcile();
    assert!(!ok && stderr.contains("kill -USR1"), "{stderr}");
    running.kill_hard();

    let (ok, stdout, stderr) = reconcile();
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("30 extensions listed: 30 new, 0 changed, 0 gone (initial snapshot)"),
        "{stdout}"
    );
    assert!(stderr.contains("100%"), "a progress bar: {stderr}");
    let (ok, stdout, stderr) = reconcile();
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("30 extensions listed: 0 new, 0 changed, 0 gone\n"),
        "{stdout}"
    );
}
