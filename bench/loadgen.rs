//! A small HTTP/1.1 load generator for the webhook: unique notification uuids, realistic hint mixes,
//! either closed loop (as fast as the server answers) or open loop at a fixed rate, bounded in count
//! and in time. Standard library only: `rustc -O --edition 2021 bench/loadgen.rs`.
//!
//! Open loop works like wrk2: request `i` is due at `start + i / rate`, and its latency is measured
//! from when it was due, so a slow answer that delays the next request is counted against the server
//! (no coordinated omission). `service` latency (from the actual send) is reported too.
//!
//! ```text
//! loadgen --addr 127.0.0.1:8080 [--path /webhook] [--connections 32] [--rate 0] [--duration 20]
//!         [--count 0] [--hints 1-12] [--single-topic] [--nonce abcd1234]
//! ```
//! Prints one JSON object on stdout. Only loopback addresses are accepted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// The bridge's own hint table (the same file `src/routing/mod.rs` uses).
#[path = "../src/hint_table.rs"]
mod hint_table;
use hint_table::BUILT_IN_HINTS;

#[derive(Clone)]
struct Options {
    addr: SocketAddr,
    path: String,
    connections: u64,
    rate: f64,
    duration: Duration,
    count: u64,
    hints_min: usize,
    hints_max: usize,
    single_topic: bool,
    nonce: String,
}

fn usage(message: &str) -> ! {
    eprintln!("loadgen: {message}");
    eprintln!(
        "usage: loadgen --addr 127.0.0.1:PORT [--path /webhook] [--connections N] [--rate R] \
         [--duration S] [--count N] [--hints MIN-MAX] [--single-topic] [--nonce HEX]"
    );
    std::process::exit(2)
}

fn num<T: std::str::FromStr>(flag: &str, value: &str) -> T {
    value
        .parse()
        .unwrap_or_else(|_| usage(&format!("bad value for {flag}: {value}")))
}

fn parse_options() -> Options {
    let mut args = std::env::args().skip(1);
    let mut o = Options {
        addr: "127.0.0.1:8080".parse().unwrap(),
        path: "/webhook".into(),
        connections: 32,
        rate: 0.0,
        duration: Duration::from_secs(20),
        count: 0,
        hints_min: 1,
        hints_max: 12,
        single_topic: false,
        nonce: format!(
            "{:08x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u32
        ),
    };
    while let Some(flag) = args.next() {
        if flag == "--single-topic" {
            o.single_topic = true;
            continue;
        }
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--addr" => o.addr = value.parse().unwrap_or_else(|_| usage("bad --addr")),
            "--path" => o.path = value.clone(),
            "--connections" => o.connections = num(&flag, &value),
            "--rate" => o.rate = num(&flag, &value),
            "--duration" => o.duration = Duration::from_secs_f64(num(&flag, &value)),
            "--count" => o.count = num(&flag, &value),
            "--hints" => {
                let (a, b) = value.split_once('-').unwrap_or((&value, &value));
                o.hints_min = num(&flag, a);
                o.hints_max = num(&flag, b);
            }
            "--nonce" => o.nonce = value.clone(),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if !o.addr.ip().is_loopback() {
        usage("only loopback addresses are allowed");
    }
    if o.connections == 0 || o.hints_min == 0 || o.hints_min > o.hints_max || o.hints_max > 12 {
        usage("need connections >= 1 and 1 <= hints min <= max <= 12");
    }
    if o.duration > Duration::from_secs(3600) {
        usage("--duration is bounded to one hour");
    }
    o
}

/// xorshift64*: fast, good enough for picking hints and ids.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn body(o: &Options, rng: &mut Rng, index: u64) -> String {
    let names: Vec<&str> = BUILT_IN_HINTS.iter().map(|(h, _)| *h).collect();
    // One topic per hint: leave out CallQueueMembersChange, whose two targets make two messages.
    let pool: &[&str] = if o.single_topic { &names[..11] } else { &names };
    let max = o.hints_max.min(pool.len());
    let k = o.hints_min.min(max) + rng.below(max - o.hints_min.min(max) + 1);
    let mut chosen: Vec<&str> = pool.to_vec();
    for i in 0..k {
        let j = i + rng.below(chosen.len() - i);
        chosen.swap(i, j);
    }
    let hints: Vec<String> = chosen[..k].iter().map(|h| format!("\"{h}\"")).collect();
    let extension = 100_000_000 + rng.below(900_000_000) as u64;
    let nonce = &o.nonce;
    format!(
        r#"{{"uuid":"{nonce:0>8.8}-{a:04x}-4{b:03x}-8{c:03x}-{d:012x}","event":"/restapi/v1.0/account/~/extension/{extension}","timestamp":"2026-11-27T12:00:00.000Z","subscriptionId":"9d38419f-645f-4ee3-a053-8cf1368c21c4","ownerId":"{extension}","body":{{"extensionId":"{extension}","eventType":"Update","hints":[{hints}]}}}}"#,
        a = (index >> 60) & 0xffff,
        b = (index >> 48) & 0xfff,
        c = (index >> 36) & 0xfff,
        d = index & 0xffff_ffff_ffff,
        hints = hints.join(","),
    )
}

struct Connection {
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Connection {
    fn stream(&mut self, addr: SocketAddr) -> std::io::Result<&mut TcpStream> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            self.stream = Some(s);
        }
        Ok(self.stream.as_mut().unwrap())
    }

    /// Sends one request and reads its whole answer; returns the status code.
    fn exchange(&mut self, addr: SocketAddr, request: &[u8]) -> std::io::Result<u16> {
        let result = self.try_exchange(addr, request);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn try_exchange(&mut self, addr: SocketAddr, request: &[u8]) -> std::io::Result<u16> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let result = self.read_answer(addr, request, &mut buf);
        self.buf = buf;
        result
    }

    fn read_answer(
        &mut self,
        addr: SocketAddr,
        request: &[u8],
        buf: &mut Vec<u8>,
    ) -> std::io::Result<u16> {
        let stream = self.stream(addr)?;
        stream.write_all(request)?;
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(p) = find(buf.as_slice(), b"\r\n\r\n") {
                break p + 4;
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(std::io::ErrorKind::InvalidData)?;
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        match length {
            Some(length) => {
                while buf.len() < head_end + length {
                    let n = stream.read(&mut chunk)?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
            None if head.contains("transfer-encoding: chunked") => {
                while find(&buf[head_end..], b"0\r\n\r\n").is_none() {
                    let n = stream.read(&mut chunk)?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
            None => return Err(std::io::ErrorKind::InvalidData.into()),
        }
        if head.contains("connection: close") {
            self.stream = None;
        }
        Ok(status)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    service_us: Vec<u32>,
    ok: u64,
    non_2xx: u64,
    errors: u64,
    late_starts: u64,
}

fn worker(
    o: Arc<Options>,
    id: u64,
    start: Instant,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id + 1).wrapping_mul(0x1000_0000_01b3));
    let mut connection = Connection {
        stream: None,
        buf: Vec::with_capacity(8192),
    };
    let deadline = start + o.duration;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let index = next.fetch_add(1, Ordering::Relaxed);
        if o.count > 0 && index >= o.count {
            break;
        }
        let due = if o.rate > 0.0 {
            start + Duration::from_secs_f64(index as f64 / o.rate)
        } else {
            Instant::now()
        };
        if due >= deadline {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if o.rate > 0.0 && now - due > Duration::from_millis(1) {
            tally.late_starts += 1;
        }
        if Instant::now() >= deadline {
            break;
        }
        let body = if o.path == "/webhook" {
            body(&o, &mut rng, index)
        } else {
            String::new()
        };
        let request = if body.is_empty() {
            format!("GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", o.path)
        } else {
            format!(
                "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                o.path,
                body.len(),
                body
            )
        };
        let sent = Instant::now();
        match connection.exchange(o.addr, request.as_bytes()) {
            Ok(status) => {
                let done = Instant::now();
                tally
                    .latencies_us
                    .push((done - due).as_micros().min(u32::MAX as u128) as u32);
                tally
                    .service_us
                    .push((done - sent).as_micros().min(u32::MAX as u128) as u32);
                if (200..300).contains(&status) {
                    tally.ok += 1;
                } else {
                    tally.non_2xx += 1;
                }
            }
            Err(_) => {
                tally.errors += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    tally
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn main() {
    let o = Arc::new(parse_options());
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now() + Duration::from_millis(20);
    let threads: Vec<_> = (0..o.connections)
        .map(|id| {
            let (o, next, stop) = (o.clone(), next.clone(), stop.clone());
            std::thread::spawn(move || {
                let now = Instant::now();
                if start > now {
                    std::thread::sleep(start - now);
                }
                worker(o, id, start, next, stop)
            })
        })
        .collect();
    let mut all = Tally::default();
    for t in threads {
        let t = t.join().expect("worker");
        all.latencies_us.extend(t.latencies_us);
        all.service_us.extend(t.service_us);
        all.ok += t.ok;
        all.non_2xx += t.non_2xx;
        all.errors += t.errors;
        all.late_starts += t.late_starts;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    all.service_us.sort_unstable();
    let l = &all.latencies_us;
    let s = &all.service_us;
    println!(
        "{{\"requests\":{},\"ok\":{},\"non_2xx\":{},\"errors\":{},\"late_starts\":{},\"seconds\":{:.3},\
         \"rate_target\":{},\"rate_achieved\":{:.1},\
         \"latency_ms\":{{\"p50\":{:.3},\"p90\":{:.3},\"p99\":{:.3},\"p999\":{:.3},\"max\":{:.3}}},\
         \"service_ms\":{{\"p50\":{:.3},\"p99\":{:.3},\"max\":{:.3}}}}}",
        l.len(),
        all.ok,
        all.non_2xx,
        all.errors,
        all.late_starts,
        elapsed,
        o.rate,
        l.len() as f64 / elapsed,
        percentile(l, 50.0),
        percentile(l, 90.0),
        percentile(l, 99.0),
        percentile(l, 99.9),
        percentile(l, 100.0),
        percentile(s, 50.0),
        percentile(s, 99.0),
        percentile(s, 100.0),
    );
}
