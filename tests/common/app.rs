//! The bridge in this process: [`TestApp`] runs the real application on ephemeral loopback ports
//! and talks real HTTP to it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rc_kafka_bridge::app::{Application, Listeners};
use rc_kafka_bridge::config::Settings;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An HTTP client for tests. The crate compiles rustls with the `ring` provider only, which must be
/// installed once per process before any client is built.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The settings of a test bridge: loopback listeners on port 0, the spool in `spool_dir`, the
/// given brokers, then whatever `tweak` changes.
pub fn test_settings(
    brokers: &str,
    spool_dir: &Path,
    tweak: impl FnOnce(&mut Settings),
) -> Settings {
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        brokers: Some(brokers.to_string()),
        spool_dir: spool_dir.to_path_buf(),
        // Short timeouts keep outage tests quick; the relay retries whatever times out.
        kafka_property: vec![
            ("message.timeout.ms".into(), "5000".into()),
            ("statistics.interval.ms".into(), "500".into()),
        ],
        shutdown_grace: Duration::from_secs(5),
        // Tests that check verification set a token; the others post without one.
        allow_unverified_webhooks: true,
        ..Default::default()
    };
    tweak(&mut settings);
    settings.resolve().expect("valid test settings")
}

/// The bridge running in this process on ephemeral ports.
pub struct TestApp {
    pub address: String,
    pub admin_address: String,
    pub bootstrap: String,
    pub settings: Settings,
    client: reqwest::Client,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    _spool_guard: Option<tempfile::TempDir>,
}

impl TestApp {
    /// Starts the bridge against `brokers` with a fresh spool; `tweak` adjusts the settings.
    pub async fn spawn(brokers: &str, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut app = Self::spawn_in(brokers, dir.path().to_path_buf(), tweak).await;
        app._spool_guard = Some(dir);
        app
    }

    /// Starts the bridge on an existing spool directory (a restart).
    pub async fn spawn_in(
        brokers: &str,
        spool_dir: PathBuf,
        tweak: impl FnOnce(&mut Settings),
    ) -> TestApp {
        let settings = test_settings(brokers, &spool_dir, tweak);
        let listeners = Listeners::bind(&settings).await.expect("loopback ports");
        Self::start(settings, listeners, None).await
    }

    /// Starts the bridge on listeners already bound; `spool_guard` removes the spool with the app.
    pub async fn start(
        settings: Settings,
        listeners: Listeners,
        spool_guard: Option<tempfile::TempDir>,
    ) -> TestApp {
        rc_kafka_bridge::telemetry::init_for_tests();
        let app = Application::build_on(listeners, settings.clone())
            .await
            .expect("app builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let admin_address = format!("http://127.0.0.1:{}", app.admin_port());
        let bootstrap = app.bootstrap_servers().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        TestApp {
            address,
            admin_address,
            bootstrap,
            settings,
            client: http(),
            stop,
            task,
            _spool_guard: spool_guard,
        }
    }

    pub async fn post_webhook(&self, body: impl Into<String>) -> reqwest::Response {
        self.post_with(body, &[]).await
    }

    pub async fn post_with(
        &self,
        body: impl Into<String>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/webhook", self.address))
            .header("content-type", "application/json; charset=UTF-8")
            .header("user-agent", "RingCentral-Webhook/8.3")
            .body(body.into());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("bridge answers")
    }

    pub async fn get_admin(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.admin_address))
            .send()
            .await
            .expect("admin answers")
    }

    /// Stops the bridge gracefully and waits for it.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("the bridge's task")
            .expect("the bridge stops cleanly");
    }
}
