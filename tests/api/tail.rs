//! `tail`: what a newcomer reads the topics with, against the mock cluster and against the embedded
//! broker of a running bridge.

use std::time::Duration;

use serde_json::Value;

use crate::common::metrics::{sample, scrape_until};
use crate::common::mock_kafka::MockKafka;
use crate::common::payloads::{extension_update, unique};
use crate::common::process::{BridgeProcess, Serve, bridge_command};

const TOPIC: &str = "ringcentral.account.extension";

/// Posts `n` ExtensionInfo hints to `bridge` and waits until Kafka has them all.
async fn publish(bridge: &BridgeProcess, n: usize) -> Vec<String> {
    let mut uuids = Vec::new();
    for i in 0..n {
        let uuid = format!("tail-{}-{i}", unique());
        let body = extension_update(&uuid, &(100 + i).to_string(), &["ExtensionInfo"]);
        assert_eq!(bridge.post_webhook(body.to_string(), &[]).await, 200);
        uuids.push(uuid);
    }
    scrape_until(&bridge.admin_address(), "every message published", |m| {
        sample(m, "rckb_messages_published_total", &[]) >= n as f64
    })
    .await;
    uuids
}

/// A `tail --follow`, stopped when the test ends however it ends.
struct Follower(std::process::Child);

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `tail` with `args`; its standard output, or its standard error when it fails.
fn tail(args: &[&str]) -> Result<String, String> {
    let output = bridge_command().arg("tail").args(args).output().unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    if output.status.success() {
        Ok(text(output.stdout))
    } else {
        Err(text(output.stderr))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_the_last_messages_or_all_and_stops_at_the_end() {
    let kafka = MockKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let bridge = BridgeProcess::start(&kafka.bootstrap, dir.path(), &[]).await;
    let uuids = publish(&bridge, 12).await;

    // By default the last ten: as text, a head line per message, its headers, its value.
    let last = tail(&["--brokers", &kafka.bootstrap, TOPIC]).unwrap();
    let heads: Vec<&str> = last.lines().filter(|l| l.starts_with(TOPIC)).collect();
    assert_eq!(heads.len(), 10, "{last}");
    assert!(
        heads[0].starts_with(&format!("{TOPIC} [0@2] key=102")),
        "{last}"
    );
    assert!(last.contains(&format!("  rc-notification-uuid: {}", uuids[11])));
    assert!(
        last.contains("  \"hint\": \"ExtensionInfo\","),
        "pretty-printed: {last}"
    );
    assert!(!last.contains(&uuids[1]), "older than the last ten: {last}");

    // From the beginning, as JSON: one object per message and line.
    let all = tail(&[
        "--brokers",
        &kafka.bootstrap,
        "--from-beginning",
        "--json",
        TOPIC,
    ])
    .unwrap();
    let objects: Vec<Value> = all
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 12);
    for (object, uuid) in objects.iter().zip(&uuids) {
        assert_eq!(object["topic"], TOPIC);
        assert_eq!(object["partition"], 0);
        assert_eq!(object["value"]["uuid"], uuid.as_str());
        assert_eq!(object["headers"]["rc-notification-uuid"], uuid.as_str());
        assert_eq!(object["key"], object["value"]["extensionId"]);
    }
    assert_eq!(
        tail(&["--brokers", &kafka.bootstrap, "-n", "3", TOPIC])
            .unwrap()
            .lines()
            .filter(|l| l.starts_with(TOPIC))
            .count(),
        3
    );

    // Following: what arrives later is printed as it arrives.
    let mut follower = Follower(
        bridge_command()
            .args([
                "tail",
                "--brokers",
                &kafka.bootstrap,
                "--follow",
                "--json",
                "-n",
                "1",
                TOPIC,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (lines, printed) = std::sync::mpsc::channel();
    let stdout = follower.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        let line = printed
            .recv_timeout(Duration::from_secs(30))
            .expect("a line");
        serde_json::from_str::<Value>(&line).unwrap()
    };
    // The last message first: once it is printed, `tail` is reading.
    assert_eq!(next()["value"]["uuid"], uuids[11].as_str());
    let later = publish(&bridge, 1).await;
    let object = next();
    assert_eq!(
        object["value"]["uuid"],
        later[0].as_str(),
        "then the new one"
    );

    let missing = tail(&["--brokers", &kafka.bootstrap, "no.such.topic"]).unwrap_err();
    assert!(missing.contains("no topic no.such.topic"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_finds_the_embedded_broker_of_the_bridge_running_on_its_spool_dir() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().to_str().unwrap();
    let mut bridge = Serve::new(dir.path()).start().await;
    let uuids = publish(&bridge, 1).await;
    let printed = tail(&["--spool-dir", spool, TOPIC]).unwrap();
    assert!(printed.contains(&uuids[0]), "{printed}");

    // The embedded broker goes with its bridge, and `tail` says what it needs instead.
    bridge.signal("TERM");
    assert!(bridge.wait_exit(Duration::from_secs(30)).await.success());
    let refused = tail(&["--spool-dir", spool, TOPIC]).unwrap_err();
    assert!(refused.contains("tail needs --brokers"), "{refused}");
}
