//! `subscription create|list|show|renew|delete`: the RingCentral webhook subscription by hand.

use super::{CommandError, SubscriptionCommand, runtime};
use crate::config::Settings;
use crate::ringcentral::{self, NewSubscription, RingCentral, Subscription};
use crate::telemetry;

pub(super) fn run(command: SubscriptionCommand) -> Result<(), CommandError> {
    use SubscriptionCommand as S;
    let (S::Create { settings }
    | S::List { settings }
    | S::Show { settings, .. }
    | S::Renew { settings, .. }
    | S::Delete { settings, .. }) = &command;
    let settings = Settings::load(settings)?;
    telemetry::init(settings.log_format);
    let client = RingCentral::new(settings.ringcentral.credentials()?)?;
    runtime()?.block_on(async {
        match command {
            S::Create { .. } => create(&client, &settings).await,
            S::List { .. } => list(&client).await,
            S::Show { id, .. } => print(&client.subscription(&id).await?),
            S::Renew { id, .. } => print(&client.renew_subscription(&id).await?),
            S::Delete { id, .. } => {
                client.delete_subscription(&id).await?;
                println!("deleted {id}");
                Ok(())
            }
        }
    })
}

/// Creates the subscription of this bridge's address, with the configured token or a new one.
async fn create(client: &RingCentral, settings: &Settings) -> Result<(), CommandError> {
    let rc = &settings.ringcentral;
    let (token, generated) = match &settings.verification_token {
        Some(token) => (token.clone(), false),
        None => (ringcentral::generate_token(), true),
    };
    let new = NewSubscription::webhook(
        rc.address()?,
        rc.event_filters.clone(),
        rc.expires_in,
        Some(&token),
    );
    print(&client.create_subscription(&new).await?)?;
    if generated {
        // Printed once: RingCentral will send it on every notification.
        println!(
            "verification token: {}\nrun the bridge with RCKB_VERIFICATION_TOKEN set to it",
            token.expose()
        );
    }
    Ok(())
}

async fn list(client: &RingCentral) -> Result<(), CommandError> {
    let list = client.list_subscriptions().await?;
    println!("{:<38} {:<12} {:<26} ADDRESS", "ID", "STATUS", "EXPIRES");
    for s in &list {
        println!(
            "{:<38} {:<12} {:<26} {}",
            s.id,
            s.status,
            s.expiration_time.as_deref().unwrap_or("-"),
            s.address().unwrap_or("-")
        );
    }
    Ok(())
}

fn print(subscription: &Subscription) -> Result<(), CommandError> {
    println!("{}", serde_json::to_string_pretty(subscription)?);
    Ok(())
}
