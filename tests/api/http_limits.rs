//! HTTP limits on both listeners and the shutdown deadline: slow, silent and trickling clients cost
//! a connection slot for seconds, never the bridge; SIGTERM ends within the grace period whatever
//! is in flight.

use std::path::Path;
use std::time::{Duration, Instant};

use rc_kafka_bridge::metrics::Metrics;
use rc_kafka_bridge::spool::{Spool, SpoolOptions};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::app::{TestApp, http};
use crate::common::kafka::read_until;
use crate::common::metrics::{sample, scrape_until};
use crate::common::mock_kafka::MockKafka;
use crate::common::payloads::{extension_update, unique};
use crate::common::polling::eventually;
use crate::common::process::{BridgeProcess, Serve};

const FEATURES: &str = "ringcentral.account.extension.features";
const TOKEN: &str = "http-limits-test-verification-token";

/// The real binary on ephemeral ports with a verification token, its descriptor limit (soft and
/// hard) set to `nofile` when given.
async fn start_bridge(
    brokers: &str,
    spool_dir: &Path,
    nofile: Option<u64>,
    extra: &[&str],
) -> BridgeProcess {
    let mut serve = Serve::new(spool_dir)
        .brokers(brokers)
        .args(&["--verification-token", TOKEN])
        .args(extra);
    if let Some(limit) = nofile {
        serve = serve.descriptor_limit(limit);
    }
    serve.start().await
}

/// The first start-up log event whose message is `message`.
fn logged(start_up: &[Value], message: &str) -> Value {
    start_up
        .iter()
        .find(|e| e["message"] == message)
        .cloned()
        .unwrap_or_else(|| panic!("no {message:?} log line in {start_up:?}"))
}

fn host_port(address: &str) -> &str {
    address.trim_start_matches("http://")
}

/// Posts one notification with the verification token; its status, or `None` if no answer came.
async fn post_notification(address: &str, uuid: &str) -> Option<u16> {
    http()
        .post(format!("{address}/webhook"))
        .header("content-type", "application/json")
        .header("verification-token", TOKEN)
        .body(extension_update(uuid, "12", &["Limits"]).to_string())
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

async fn get_status(url: &str) -> Option<u16> {
    http()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Reads until the server closes the connection; what it sent, and whether it closed within `within`.
async fn read_until_closed(
    stream: &mut (impl AsyncRead + Unpin),
    within: Duration,
) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                // A reset is the server closing too (it had unread bytes of ours).
                Err(_) => return,
            }
        }
    })
    .await
    .is_ok();
    (received, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_cannot_exhaust_the_descriptors_of_a_1024_descriptor_process() {
    let kafka = MockKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(
        &kafka.bootstrap,
        dir.path(),
        Some(1024),
        &["--header-timeout", "1s", "--max-connections", "5000"],
    )
    .await;
    let (address, admin_address) = (bridge.address(), bridge.admin_address());
    let start_up = bridge.start_up_events();
    let caps = logged(&start_up, "connection caps");
    assert_eq!(caps["descriptor_limit"], 1024, "{caps}");
    let clamped = logged(
        &start_up,
        "connection cap lowered to fit the descriptor limit",
    );
    assert_eq!(clamped["setting"], "max_connections", "{clamped}");
    assert_eq!(clamped["requested"], 5000, "{clamped}");
    assert_eq!(clamped["allowed"], caps["webhook_connections"], "{clamped}");
    let webhook_cap = caps["webhook_connections"].as_u64().unwrap();
    let admin_cap = caps["admin_connections"].as_u64().unwrap();
    assert!(webhook_cap + admin_cap < 1024, "{caps}");

    // 1,100 clients each send half a request head and then nothing: 1,000 on the webhook listener,
    // 100 on the admin listener; both listeners get more than their cap.
    let mut attackers = Vec::new();
    for i in 0..1100 {
        let address = if i < 1000 { &address } else { &admin_address };
        let mut stream = TcpStream::connect(host_port(address)).await.unwrap();
        stream
            .write_all(b"POST /webhook HTTP/1.1\r\nHost: bridge\r\nContent-Le")
            .await
            .unwrap();
        attackers.push(stream);
    }
    assert!(1000 > webhook_cap && 100 > admin_cap, "{caps}");
    let attacked = Instant::now();

    // Both listeners answer again within a few seconds of the header timeout.
    let uuid = format!("after-attack-{}", unique());
    let (mut webhook, mut health) = (None, None);
    let again = Duration::from_secs(10).saturating_sub(attacked.elapsed());
    eventually("both listeners to answer again", again, async || {
        if webhook != Some(200) {
            webhook = post_notification(&address, &uuid).await;
        }
        if health != Some(200) {
            health = get_status(&format!("{admin_address}/healthz")).await;
        }
        webhook == Some(200) && health == Some(200)
    })
    .await;
    assert_eq!(
        get_status(&format!("{admin_address}/readyz")).await,
        Some(200)
    );

    // And every half-sent connection was closed by the server.
    let mut still_open = 0;
    for stream in &mut attackers {
        let left = Duration::from_secs(15).saturating_sub(attacked.elapsed());
        let (_, closed) = read_until_closed(stream, left).await;
        still_open += usize::from(!closed);
    }
    assert_eq!(still_open, 0, "connections the server never closed");
    let got = read_until(
        &kafka.bootstrap,
        &[FEATURES.into()],
        Duration::from_secs(30),
        {
            let uuid = uuid.clone();
            move |got| got.iter().any(|m| m.uuid() == uuid)
        },
    )
    .await;
    assert!(
        got.iter().any(|m| m.uuid() == uuid),
        "the notification reached Kafka"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_request_body_is_cut_at_the_body_timeout() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |a| {
        a.body_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = TcpStream::connect(host_port(&app.address)).await.unwrap();
    stream
        .write_all(
            b"POST /webhook HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        let mut sent = 0;
        // One byte every 100 ms (the client's pace, not a wait): the whole body would take 100 s.
        while sent < 1000 && writer.write_all(b" ").await.is_ok() {
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent
    });
    let (received, closed) = read_until_closed(&mut reader, Duration::from_secs(5)).await;
    let cut_after = started.elapsed();
    trickle.abort();
    assert!(closed, "the trickling request was never cut");
    assert!(
        cut_after >= Duration::from_millis(900) && cut_after < Duration::from_secs(3),
        "cut after {cut_after:?}, the body timeout is 1 s"
    );
    let answer = String::from_utf8_lossy(&received);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Nothing was kept, and the bridge serves others as before.
    let uuid = format!("after-trickle-{}", unique());
    let response = app
        .post_webhook(extension_update(&uuid, "5", &["Limits"]).to_string())
        .await;
    assert_eq!(response.status(), 200);
    app.shutdown().await;
}

/// A keep-alive connection to `address` that has had one request answered: idle from now on.
async fn answered_keep_alive(address: &str) -> TcpStream {
    let mut stream = TcpStream::connect(host_port(address)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_idles_for_the_idle_timeout_not_the_header_timeout() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |a| {
        a.header_timeout = Duration::from_millis(500);
        a.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let mut stream = answered_keep_alive(&app.admin_address).await;
    let idle_since = Instant::now();
    let (extra, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let idled = idle_since.elapsed();
    assert!(closed && extra.is_empty(), "closed quietly");
    assert!(
        idled >= Duration::from_millis(1800) && idled < Duration::from_secs(4),
        "idle connection closed after {idled:?}, the idle timeout is 2 s"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_begun_after_an_idle_wait_has_the_header_timeout_not_what_is_left_of_the_idle_one() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |a| {
        a.header_timeout = Duration::from_millis(500);
        a.idle_timeout = Duration::from_secs(30);
    })
    .await;
    let mut stream = answered_keep_alive(&app.admin_address).await;
    // Idle now, with 30 s to go; the first bytes of a head bring the deadline to 0.5 s from them.
    stream.write_all(b"GET /healthz HTT").await.unwrap();
    let head_since = Instant::now();
    let (extra, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let waited = head_since.elapsed();
    assert!(closed && extra.is_empty(), "closed quietly");
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "a half-sent head was closed after {waited:?}, the header timeout is 0.5 s"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_the_limit_gets_431() {
    let kafka = MockKafka::start();
    let app = TestApp::spawn(&kafka.bootstrap, |a| {
        a.max_header_bytes = 4096;
    })
    .await;
    let big = "x".repeat(5000);
    let response = app.post_with("{}", &[("x-padding", big.as_str())]).await;
    assert_eq!(response.status(), 431);
    let small = "x".repeat(2000);
    let handshake = app
        .post_with(
            "",
            &[("x-padding", small.as_str()), ("Validation-Token", "t")],
        )
        .await;
    assert_eq!(handshake.status(), 200);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_trickling_client_exits_within_the_grace_period() {
    let kafka = MockKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = start_bridge(
        &kafka.bootstrap,
        dir.path(),
        None,
        &["--shutdown-grace", "2s", "--body-timeout", "60s"],
    )
    .await;
    let mut stream = TcpStream::connect(host_port(&bridge.address()))
        .await
        .unwrap();
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n\
         Verification-Token: {TOKEN}\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The handler reading the body is what makes hyper send 100 Continue: the request is in flight.
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("100 Continue")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        // A byte every 100 ms: the client's pace, not a wait.
        while writer.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let signalled = Instant::now();
    bridge.signal("TERM");
    let readyz = format!("{}/readyz", bridge.admin_address());
    let within = Duration::from_secs(1).saturating_sub(signalled.elapsed());
    let draining = eventually(
        "/readyz to say the bridge is draining",
        within,
        async || {
            let response = http()
                .get(&readyz)
                .send()
                .await
                .expect("admin answers while draining");
            match response.status().as_u16() {
                503 => Some(response.json::<Value>().await.unwrap()),
                _ => None,
            }
        },
    )
    .await;
    assert_eq!(draining["shuttingDown"], true, "{draining}");
    assert_eq!(draining["ready"], false, "{draining}");
    assert!(bridge.child.try_wait().unwrap().is_none(), "still draining");

    let status = bridge.wait_exit(Duration::from_secs(10)).await;
    let exited_after = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        exited_after < Duration::from_secs(4),
        "exited {exited_after:?} after SIGTERM with a 2 s grace period"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(1), reader.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the trickling connection was closed");
    trickle.abort();
    drop(bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_a_relay_round_stuck_on_kafka_and_the_notification_waits_in_the_spool() {
    let kafka = MockKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let stuck = [
        "--shutdown-grace",
        "2s",
        // Kafka would be waited on for a minute without the deadline.
        "--kafka-property",
        "message.timeout.ms=60000",
        "--kafka-property",
        "statistics.interval.ms=100",
    ];
    let mut bridge = start_bridge(&kafka.bootstrap, dir.path(), None, &stuck).await;
    kafka.down();
    let uuid = format!("stuck-{}", unique());
    assert_eq!(post_notification(&bridge.address(), &uuid).await, Some(200));
    // The relay's round is in flight once the producer holds the message.
    scrape_until(
        &bridge.admin_address(),
        "the producer to hold the message",
        |s| sample(s, "rckb_kafka_producer_queue_messages", &[]) >= 1.0,
    )
    .await;

    let signalled = Instant::now();
    bridge.signal("TERM");
    let status = bridge.wait_exit(Duration::from_secs(30)).await;
    let exited_after = signalled.elapsed();
    drop(bridge);
    assert!(status.success(), "exit status {status:?}");
    assert!(
        exited_after < Duration::from_secs(4),
        "exited {exited_after:?} after SIGTERM with a 2 s grace period"
    );

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
    let waiting = spool.oldest(10, 1 << 20).unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].plan.uuid, uuid);
    drop(waiting);
    spool.close();
    drop(spool);

    kafka.up();
    let restarted = start_bridge(&kafka.bootstrap, dir.path(), None, &[]).await;
    let got = read_until(
        &kafka.bootstrap,
        &[FEATURES.into()],
        Duration::from_secs(30),
        {
            let uuid = uuid.clone();
            move |got| got.iter().any(|m| m.uuid() == uuid)
        },
    )
    .await;
    assert!(
        got.iter().any(|m| m.uuid() == uuid),
        "published after the restart"
    );
    let scrape = scrape_until(&restarted.admin_address(), "the spool to drain", |s| {
        sample(s, "rckb_messages_published_total", &[]) >= 1.0
            && sample(s, "rckb_spool_entries", &[]) == 0.0
    })
    .await;
    assert_eq!(sample(&scrape, "rckb_spool_entries", &[]), 0.0);
}
