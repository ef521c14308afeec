//! What the mock-cluster suite checks of the real binary's life beyond starting it
//! ([`super::process`]): the environment and descriptor limit it starts with, its start-up log, a
//! refusal to start, its admin listener, its exit and every line it logged; and an in-process
//! bridge whose settings need its own bound port.

use std::process::ExitStatus;
use std::time::Duration;

use rc_kafka_bridge::app::Listeners;
use rc_kafka_bridge::config::Settings;
use serde_json::Value;

use super::app::{TestApp, test_settings};
use super::polling::eventually;
use super::process::{BridgeProcess, Serve, event};

impl Serve {
    pub fn env(mut self, name: &str, value: &str) -> Serve {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Sends `signal` the moment the bridge writes its "listening" line, without the delay of
    /// polling for it: what a supervisor that acts on that line does.
    pub fn signal_at_listening(mut self, signal: rustix::process::Signal) -> Serve {
        self.at_listening = Some(signal);
        self
    }

    /// Starts the binary with this descriptor limit, soft and hard.
    pub fn descriptor_limit(mut self, limit: u64) -> Serve {
        self.nofile = Some(limit);
        self
    }

    /// Runs `serve`, which must refuse to start: it exits by itself within 30 s, non-zero, without a
    /// panic and without ever listening. Returns its stderr.
    pub async fn refuses(self) -> String {
        let description = format!("{:?}", self.args);
        let mut bridge = self.spawn();
        eventually(
            "serve to stop by itself",
            Duration::from_secs(30),
            async || {
                bridge.receive();
                if let Some(line) = bridge.log.iter().find(|l| l.contains("\"listening\"")) {
                    panic!("serve {description} started: {line}");
                }
                bridge.stderr_closed()
            },
        )
        .await;
        let status = bridge.wait_exit(Duration::from_secs(10)).await;
        let stderr = bridge.log.join("\n");
        assert!(!status.success(), "serve {description} exited 0: {stderr}");
        assert!(status.code().is_some(), "killed by a signal: {status:?}");
        assert_ne!(status.code(), Some(101), "a panic: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }
}

impl BridgeProcess {
    /// The admin listener, as `http://127.0.0.1:PORT`.
    pub fn admin_address(&self) -> String {
        format!("http://127.0.0.1:{}", self.listening("admin_port"))
    }

    /// Every stderr line up to and including "listening", as written.
    pub fn start_up_lines(&self) -> &[String] {
        &self.log[..self.start_up]
    }

    /// The JSON log events up to and including "listening".
    pub fn start_up_events(&self) -> Vec<Value> {
        self.start_up_lines()
            .iter()
            .filter_map(|line| event(line))
            .collect()
    }

    /// Waits for the bridge to exit by itself, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        eventually("the bridge to exit", timeout, async || {
            self.child.try_wait().expect("the child can be waited for")
        })
        .await
    }

    /// Every line the bridge wrote to stderr, once it has exited and closed it.
    pub async fn all_logs(&mut self) -> &[String] {
        eventually(
            "the bridge's stderr to close",
            Duration::from_secs(10),
            async || {
                self.receive();
                self.stderr_closed()
            },
        )
        .await;
        &self.log
    }
}

impl TestApp {
    /// Starts the bridge with settings that need its own webhook address (the keeper's): the
    /// listeners are bound first, then `tweak` gets the webhook port. No port is picked and freed
    /// for the bridge to bind later, so no other process can take it in between.
    pub async fn spawn_bound(brokers: &str, tweak: impl FnOnce(&mut Settings, u16)) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(brokers, dir.path(), |_| {});
        let listeners = Listeners::bind(&settings).await.expect("loopback ports");
        tweak(&mut settings, listeners.port());
        let settings = settings.resolve().expect("valid test settings");
        Self::start(settings, listeners, Some(dir)).await
    }
}
