//! What RingCentral posts: the notifications tests send, and process-unique ids for them.

use serde_json::{Value, json};

/// A process-unique number for uuids.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id() as u64;
    pid * 1_000_000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// An Extension Info Update for extension `ext` of account 37439510.
pub fn extension_update(uuid: &str, ext: &str, hints: &[&str]) -> Value {
    json!({
        "uuid": uuid,
        "event": format!("/restapi/v1.0/account/37439510/extension/{ext}"),
        "timestamp": "2013-06-14T12:00:00.000Z",
        "subscriptionId": "9d38419f-645f-4ee3-a053-8cf1368c21c4",
        "ownerId": ext,
        "body": {"extensionId": ext, "eventType": "Update", "hints": hints}
    })
}

/// A subscription's expiry reminder.
pub fn reminder_notification(uuid: &str, subscription: &str) -> Value {
    json!({
        "uuid": uuid,
        "event": "/restapi/v1.0/subscription/~?threshold=86400&interval=3600",
        "timestamp": "2014-04-29T14:29:27.408+0000",
        "subscriptionId": subscription,
        "ownerId": "1",
        "body": {"id": subscription, "expiresIn": 86000}
    })
}

/// The example of RingCentral's Extension Info Event page, verbatim.
pub const DOCUMENTED_EXAMPLE: &str = r#"{
"uuid": "ed1cf00c-0420-4bf5-a0ae-e659cc9f77e0",
"event": "/restapi/v1.0/account/~/extension/8475874957",
"timestamp": "2013-06-14T12:00:00.000Z",
"subscriptionId": "9d38419f-645f-4ee3-a053-8cf1368c21c4",
"ownerId": "8475874957",
"body": {
"extensionId": "8475874957",
"eventType": "Update",
"hints": ["ExtensionInfo", "CompanyNumbers"]
}
}"#;
