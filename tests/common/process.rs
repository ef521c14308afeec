//! The real binary: [`bridge_command`] for one-shot commands, [`Serve`] for `serve` as a child
//! process (the one way tests start it), [`BridgeProcess`] for the running bridge and its logs.

use std::ffi::OsString;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::polling::eventually;

const BINARY: &str = env!("CARGO_BIN_EXE_rc-kafka-bridge");

/// The binary with no `RCKB_*` variable of the environment the tests run in: what a test does not
/// set, the bridge does not see.
pub fn bridge_command() -> Command {
    without_settings_from_the_environment(Command::new(BINARY))
}

fn without_settings_from_the_environment(mut command: Command) -> Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RCKB_") {
            command.env_remove(name);
        }
    }
    command
}

/// `rc-kafka-bridge serve` on loopback port 0 with JSON logs and its spool in the given directory;
/// the rest is added with [`Serve::brokers`], [`Serve::args`] and the like, then [`Serve::start`].
pub struct Serve {
    pub(super) args: Vec<OsString>,
    pub(super) env: Vec<(String, String)>,
    /// A descriptor limit (soft and hard) set before the binary starts.
    pub(super) nofile: Option<u64>,
    /// A signal sent the moment the "listening" line is read, from the thread reading it.
    pub(super) at_listening: Option<rustix::process::Signal>,
}

impl Serve {
    pub fn new(spool_dir: impl AsRef<Path>) -> Serve {
        let mut args: Vec<OsString> = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--spool-dir",
        ]
        .map(OsString::from)
        .to_vec();
        args.push(spool_dir.as_ref().into());
        Serve {
            args,
            env: Vec::new(),
            nofile: None,
            at_listening: None,
        }
    }

    pub fn brokers(self, brokers: &str) -> Serve {
        self.args(&["--brokers", brokers])
    }

    pub fn args(mut self, args: &[&str]) -> Serve {
        self.args.extend(args.iter().map(OsString::from));
        self
    }

    /// Spawns the binary; its stderr lines arrive on the [`BridgeProcess`] (echoed when `TEST_LOG`
    /// is set) until it closes stderr by exiting.
    pub(super) fn spawn(self) -> BridgeProcess {
        let mut command = match self.nofile {
            None => bridge_command(),
            Some(limit) => {
                // `ulimit` in a shell that then becomes the bridge: same process, lower limit.
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(BINARY);
                without_settings_from_the_environment(shell)
            }
        };
        let mut child = command
            .args(&self.args)
            .envs(self.env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the bridge binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::unbounded_channel();
        let (pid, mut at_listening) = (rustix::process::Pid::from_child(&child), self.at_listening);
        // Drained all along, so that the bridge never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("\"listening\"")
                    && let Some(signal) = at_listening.take()
                {
                    rustix::process::kill_process(pid, signal)
                        .expect("the bridge can be signalled");
                }
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("bridge: {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        BridgeProcess {
            child,
            lines,
            log: Vec::new(),
            start_up: 0,
            read: 0,
        }
    }

    /// Starts the bridge and waits (at most 30 s) for its "listening" log line.
    pub async fn start(self) -> BridgeProcess {
        let mut bridge = self.spawn();
        let listening = eventually(
            "the bridge to listen",
            Duration::from_secs(30),
            async || {
                bridge.receive();
                let position = bridge
                    .log
                    .iter()
                    .position(|line| event(line).is_some_and(|e| e["message"] == "listening"));
                if position.is_none() && bridge.stderr_closed() {
                    panic!("the bridge exited before listening: {:#?}", bridge.log);
                }
                position
            },
        )
        .await;
        bridge.start_up = listening + 1;
        bridge.read = bridge.start_up;
        bridge
    }
}

/// A log line as JSON, if it is JSON.
pub(super) fn event(line: &str) -> Option<Value> {
    serde_json::from_str(line).ok()
}

/// The real binary running `serve` (or refusing to); killed when dropped.
pub struct BridgeProcess {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every stderr line so far.
    pub(super) log: Vec<String>,
    /// How many lines of `log` came up to and including "listening".
    pub(super) start_up: usize,
    /// How many lines of `log` [`BridgeProcess::wait_for_log`] has gone past.
    read: usize,
}

impl BridgeProcess {
    /// `serve` against `brokers` with the test defaults: no verification token, Kafka timeouts of
    /// 5 s; `extra` arguments come last.
    pub async fn start(brokers: &str, spool_dir: &Path, extra: &[&str]) -> BridgeProcess {
        Serve::new(spool_dir)
            .brokers(brokers)
            .args(&["--allow-unverified-webhooks"])
            .args(&["--kafka-property", "message.timeout.ms=5000"])
            .args(extra)
            .start()
            .await
    }

    /// Moves the lines that arrived since the last look into `log`.
    pub(super) fn receive(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
    }

    /// Whether the bridge closed its stderr (it exited) and every line of it is in `log`.
    pub(super) fn stderr_closed(&self) -> bool {
        self.lines.is_closed() && self.lines.is_empty()
    }

    /// The `listening` event's value of `field` (a port, the worker threads).
    pub fn listening(&self, field: &str) -> u64 {
        self.log[..self.start_up]
            .iter()
            .filter_map(|line| event(line))
            .find(|e| e["message"] == "listening")
            .and_then(|e| e[field].as_u64())
            .unwrap_or_else(|| panic!("no {field} in the listening event"))
    }

    /// The webhook listener, as `http://127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.listening("port"))
    }

    /// Posts `body` to the webhook, with `headers`; the answer's status.
    pub async fn post_webhook(
        &self,
        body: impl Into<String>,
        headers: &[(&str, &str)],
    ) -> reqwest::StatusCode {
        let mut request = super::app::http()
            .post(format!("{}/webhook", self.address()))
            .body(body.into());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("the webhook answers").status()
    }

    /// Sends `signal` (a name such as `TERM`) to the bridge.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal}");
    }

    /// The next log event after the last one waited for whose message contains `text`, waiting at
    /// most `timeout`.
    pub async fn wait_for_log(&mut self, text: &str, timeout: Duration) -> Value {
        let what = format!("a log line containing {text:?}");
        eventually(what, timeout, async || {
            self.receive();
            while self.read < self.log.len() {
                let line = &self.log[self.read];
                self.read += 1;
                if let Some(e) = event(line)
                    && e["message"].as_str().is_some_and(|m| m.contains(text))
                {
                    return Some(e);
                }
            }
            None
        })
        .await
    }

    /// SIGKILL: no chance to flush or clean up anything.
    pub fn kill_hard(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("the killed bridge is reaped");
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
