//! Reading the bridge's metrics: a scrape of `/metrics` (the app in process or the binary), or the
//! rendering of a registry the test holds; a sample's value; bounded waits on a condition.

use std::time::Duration;

use prometheus_parse::Scrape;
use rc_kafka_bridge::metrics::Metrics;

use super::app::{TestApp, http};
use super::polling::eventually;

/// How long a metric may take to say what a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(30);

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format")
}

/// One scrape of the `/metrics` of the bridge whose admin listener is `admin_address`.
pub async fn scrape(admin_address: &str) -> Scrape {
    let text = http()
        .get(format!("{admin_address}/metrics"))
        .send()
        .await
        .expect("admin answers")
        .text()
        .await
        .expect("a metrics page");
    parse(&text)
}

/// Scrapes the `/metrics` of a bridge (in process or a child process) until `condition` holds, and
/// returns that scrape.
pub async fn scrape_until(
    admin_address: &str,
    what: &str,
    condition: impl Fn(&Scrape) -> bool,
) -> Scrape {
    eventually(what, PATIENCE, async || {
        let scrape = scrape(admin_address).await;
        condition(&scrape).then_some(scrape)
    })
    .await
}

/// The metrics of a registry held by the test (a part run on its own, not a whole bridge).
pub fn render(metrics: &Metrics) -> Scrape {
    parse(&metrics.render())
}

/// Renders `metrics` until `condition` holds, and returns that rendering.
pub async fn render_until(
    metrics: &Metrics,
    what: &str,
    condition: impl Fn(&Scrape) -> bool,
) -> Scrape {
    eventually(what, PATIENCE, async || {
        let scrape = render(metrics);
        condition(&scrape).then_some(scrape)
    })
    .await
}

/// The value of a metric sample with exactly these labels (0 when absent).
pub fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

impl TestApp {
    pub async fn metrics(&self) -> Scrape {
        scrape(&self.admin_address).await
    }

    /// Scrapes `/metrics` until `condition` holds, and returns that scrape.
    pub async fn metrics_until(&self, what: &str, condition: impl Fn(&Scrape) -> bool) -> Scrape {
        scrape_until(&self.admin_address, what, condition).await
    }

    /// Checks that `refused` is a 503 to try again later, and that it is the `count`th counted as
    /// such; returns the scrape.
    pub async fn assert_unavailable(&self, refused: &reqwest::Response, count: f64) -> Scrape {
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()["retry-after"], "5");
        let metrics = self.metrics().await;
        let counted = sample(
            &metrics,
            "rckb_notifications_total",
            &[("outcome", "unavailable")],
        );
        assert_eq!(counted, count, "notifications counted unavailable");
        metrics
    }
}
