//! The subscription keeper: inside `serve` (when `keep_subscription` is on) it owns the bridge's
//! webhook subscription. It adopts the configured subscription (or the one pointing at this bridge's
//! address, or creates one), renews it on each expiry reminder and before it expires, checks its
//! status periodically, and recreates it with the same filters, address and token when RingCentral
//! blacklisted it, it expired or it is gone: the events users lose most often.
//!
//! Expiry reminders reach the keeper from the public webhook, so their subscription id is
//! untrusted: a reminder acts only on the subscription the keeper owns, and is otherwise ignored
//! with a log line and `rckb_subscription_reminders_ignored_total{reason}`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{ApiError, NewSubscription, RingCentral, Subscription, SubscriptionId};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::shutdown::Shutdown;

/// The statuses the status gauge reports (one of them is 1).
const STATUSES: &[&str] = &["Active", "Blacklisted", "Suspended", "Missing", "Unknown"];

#[derive(Debug, Clone)]
pub struct KeeperSettings {
    /// The public address of this bridge's `/webhook`.
    pub address: String,
    pub event_filters: Vec<String>,
    pub expires_in: u64,
    /// The token RingCentral sends back as `Verification-Token` (the bridge's own).
    pub verification_token: Option<Secret>,
    /// A subscription to adopt; without it, the one whose address is `address`, else a new one.
    pub subscription_id: Option<SubscriptionId>,
    pub check_interval: Duration,
    pub renew_before: Duration,
}

pub struct Keeper {
    client: Arc<RingCentral>,
    settings: KeeperSettings,
    metrics: Metrics,
    current: Option<Subscription>,
    /// The id of `current`, published for the rest of the bridge.
    kept: watch::Sender<Option<SubscriptionId>>,
    /// When a reminder last renewed the subscription.
    last_reminded_renewal: Option<tokio::time::Instant>,
    /// Told after each recreation: the events of the gap were never sent.
    sweeps: Option<crate::state::reconciler::SweepRequests>,
}

/// Reminders for the kept subscription closer together than this renew it once: RingCentral sends
/// them at most hourly, and anyone holding the verification token could otherwise make the keeper
/// call RingCentral for every notification they post.
const REMINDER_RENEWAL_GAP: Duration = Duration::from_secs(60);

impl Keeper {
    pub fn new(client: Arc<RingCentral>, settings: KeeperSettings, metrics: Metrics) -> Keeper {
        Keeper {
            client,
            settings,
            metrics,
            current: None,
            kept: watch::Sender::new(None),
            last_reminded_renewal: None,
            sweeps: None,
        }
    }

    /// Asks `sweeps` for a reconciliation sweep after each recreation of the subscription.
    pub fn after_recreation(&mut self, sweeps: crate::state::reconciler::SweepRequests) {
        self.sweeps = Some(sweeps);
    }

    /// The id of the subscription this keeper owns (the one it adopted or created), `None` until it
    /// has one; it follows every recreation. Take it before [`Keeper::run`]: the receiver is cheap
    /// to clone and to read (`borrow()`) from any task, and stays readable after the keeper
    /// stopped. The ingress can use it to accept the kept subscription's notifications without
    /// its id being configured.
    pub fn subscription_id(&self) -> watch::Receiver<Option<SubscriptionId>> {
        self.kept.subscribe()
    }

    /// Makes `subscription` the one kept, and publishes its id.
    fn keep(&mut self, subscription: Option<Subscription>) {
        let id = subscription.as_ref().map(|s| s.id.clone());
        self.kept.send_if_modified(|kept| {
            let changed = *kept != id;
            *kept = id;
            changed
        });
        self.current = subscription;
    }

    /// Runs until the shutdown begins. `reminders` carries the subscription id of each expiry reminder
    /// the bridge accepted, as received (unvalidated).
    pub async fn run(
        mut self,
        mut reminders: mpsc::UnboundedReceiver<String>,
        mut shutdown: Shutdown,
    ) {
        let mut ticker = tokio::time::interval(self.settings.check_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.check().await,
                Some(id) = reminders.recv() => self.on_reminder(&id).await,
                _ = shutdown.begun() => break,
            }
        }
    }

    fn api_error(&self, what: &str, e: &ApiError) {
        self.metrics
            .ringcentral_api_errors
            .with_label_values(&[e.kind()])
            .inc();
        tracing::warn!(error = %e, "subscription keeper: {what} failed");
    }

    fn observe(&self, status: &str, subscription: Option<&Subscription>) {
        let status = if STATUSES.contains(&status) {
            status
        } else {
            "Unknown"
        };
        for s in STATUSES {
            self.metrics
                .subscription_status
                .with_label_values(&[s])
                .set(i64::from(*s == status));
        }
        let expiry = subscription
            .and_then(Subscription::seconds_to_expiry)
            .unwrap_or(0);
        self.metrics.subscription_expiry.set(expiry as f64);
    }

    /// One periodic look: adopt when there is no subscription yet, else read its state and act.
    pub async fn check(&mut self) {
        let Some(id) = self.current.as_ref().map(|s| s.id.clone()) else {
            self.adopt().await;
            return;
        };
        match self.client.subscription(&id).await {
            Ok(subscription) => self.act_on(subscription).await,
            Err(e) if e.is_not_found() => {
                self.observe("Missing", None);
                self.recreate("gone").await;
            }
            Err(e) => {
                self.observe("Unknown", None);
                self.api_error("status check", &e);
            }
        }
    }

    async fn act_on(&mut self, subscription: Subscription) {
        // Kept before it is reported: whoever sees the status metric can rely on the kept id.
        self.keep(Some(subscription.clone()));
        self.observe(&subscription.status, Some(&subscription));
        let to_expiry = subscription.seconds_to_expiry();
        if subscription.status == "Blacklisted" {
            tracing::warn!(id = %subscription.id, details = ?subscription.blacklisted_data,
                "subscription is blacklisted");
            self.recreate("blacklisted").await;
        } else if to_expiry.is_some_and(|s| s <= 0) {
            self.recreate("expired").await;
        } else if to_expiry.is_some_and(|s| (s as u64) < self.settings.renew_before.as_secs()) {
            self.renew(&subscription.id).await;
        }
    }

    /// Finds the subscription to keep: the configured one, else the one delivering to this address,
    /// else a new one.
    async fn adopt(&mut self) {
        let found = match &self.settings.subscription_id {
            Some(id) => match self.client.subscription(id).await {
                Ok(s) => Some(s),
                Err(e) if e.is_not_found() => None,
                Err(e) => return self.api_error("reading the configured subscription", &e),
            },
            None => match self.client.list_subscriptions().await {
                Ok(list) => {
                    let mut ours: Vec<Subscription> = list
                        .into_iter()
                        .filter(|s| s.address() == Some(self.settings.address.as_str()))
                        .collect();
                    // An active one wins over a blacklisted one.
                    ours.sort_by_key(|s| s.status != "Active");
                    ours.into_iter().next()
                }
                Err(e) => return self.api_error("listing subscriptions", &e),
            },
        };
        match found {
            Some(subscription) => {
                tracing::info!(id = %subscription.id, status = %subscription.status,
                    "subscription keeper: keeping subscription");
                self.act_on(subscription).await;
            }
            None => self.recreate("missing").await,
        }
    }

    async fn on_reminder(&mut self, reminded: &str) {
        let Ok(reminded) = SubscriptionId::parse(reminded) else {
            // Not logged: the text came from the internet and names nothing RingCentral knows.
            return self.ignore_reminder("invalid_id", None);
        };
        let ours = self.current.as_ref().map(|s| s.id.clone());
        match ours {
            Some(_)
                if self
                    .last_reminded_renewal
                    .is_some_and(|at| at.elapsed() < REMINDER_RENEWAL_GAP) =>
            {
                self.ignore_reminder("recently_renewed", Some(&reminded))
            }
            Some(ours) if ours == reminded => {
                self.last_reminded_renewal = Some(tokio::time::Instant::now());
                self.renew(&ours).await
            }
            Some(_) => self.ignore_reminder("other_subscription", Some(&reminded)),
            None => self.ignore_reminder("none_kept", Some(&reminded)),
        }
    }

    /// A reminder that names no subscription this keeper owns: renewing it would act on whatever
    /// id a client posted to the webhook.
    fn ignore_reminder(&self, reason: &'static str, reminded: Option<&SubscriptionId>) {
        self.metrics
            .subscription_reminders_ignored
            .with_label_values(&[reason])
            .inc();
        tracing::info!(
            reason,
            reminded = reminded.map(SubscriptionId::as_str),
            kept = self.current.as_ref().map(|s| s.id.as_str()),
            "expiry reminder not for the kept subscription; ignored"
        );
    }

    async fn renew(&mut self, id: &SubscriptionId) {
        match self.client.renew_subscription(id).await {
            Ok(subscription) => {
                self.metrics.subscription_renewals.inc();
                tracing::info!(%id, expires = ?subscription.expiration_time, "subscription renewed");
                self.observe(&subscription.status, Some(&subscription));
                self.keep(Some(subscription));
            }
            Err(e) if e.is_not_found() => {
                self.observe("Missing", None);
                self.recreate("gone").await;
            }
            Err(e) => self.api_error("renewal", &e),
        }
    }

    /// Replaces the subscription: same filters, address and token.
    async fn recreate(&mut self, reason: &'static str) {
        let old = self.current.take();
        let filters = old
            .as_ref()
            .map(|s| s.event_filters.clone())
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| self.settings.event_filters.clone());
        if let Some(old) = &old
            && let Err(e) = self.client.delete_subscription(&old.id).await
            && !e.is_not_found()
        {
            // A blacklisted subscription that cannot be deleted still counts against the limit;
            // creating the new one matters more.
            self.api_error("deleting the old subscription", &e);
        }
        let new = NewSubscription::webhook(
            &self.settings.address,
            filters,
            self.settings.expires_in,
            self.settings.verification_token.as_ref(),
        );
        match self.client.create_subscription(&new).await {
            Ok(subscription) => {
                self.metrics
                    .subscription_recreations
                    .with_label_values(&[reason])
                    .inc();
                tracing::warn!(
                    reason,
                    old = old.as_ref().map(|s| s.id.as_str()).unwrap_or("none"),
                    new = %subscription.id,
                    "subscription created anew"
                );
                self.observe(&subscription.status, Some(&subscription));
                self.keep(Some(subscription));
                if let Some(sweeps) = &self.sweeps {
                    tracing::info!(reason, "a reconciliation sweep repairs what the gap lost");
                    sweeps.request(crate::state::sweep::Cause::SubscriptionGap);
                }
            }
            Err(e) => {
                self.api_error("creating the subscription", &e);
                // Keep pointing at the old one, so the next check tries again.
                self.keep(old);
            }
        }
    }
}
