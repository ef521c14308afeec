//! The message contract end to end, shared by both suites: every documented variant posted, then
//! every topic read back up to a marker and compared with exactly the messages it must hold.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cloudevents::AttributesReader;
use rc_kafka_bridge::routing::BUILT_IN_HINTS;
use serde_json::{Value, json};

use super::app::TestApp;
use super::kafka::{Received, read_until};
use super::payloads::{DOCUMENTED_EXAMPLE, extension_update, reminder_notification, unique};

/// Posts a marker notification that lands on every routed topic and reads each topic up to its
/// marker: what comes before the marker is everything the bridge published there. Needs spool mode
/// (the relay publishes in acceptance order) and single-partition topics.
pub async fn read_all_before_marker(
    app: &TestApp,
    timeout: Duration,
) -> HashMap<String, Vec<Received>> {
    let marker = format!("marker-{}", unique());
    // Every built-in hint and an unknown one reach every routed topic but the reminders' one.
    let mut hints: Vec<&str> = BUILT_IN_HINTS.iter().map(|(hint, _)| *hint).collect();
    hints.push("MarkerUnknownHint");
    let token = app
        .settings
        .verification_token
        .as_ref()
        .map(|t| t.expose().to_string());
    let headers: Vec<(&str, &str)> = token
        .as_deref()
        .map(|t| vec![("Verification-Token", t)])
        .unwrap_or_default();
    let response = app
        .post_with(extension_update(&marker, "1", &hints).to_string(), &headers)
        .await;
    assert_eq!(response.status(), 200, "marker accepted");
    let reminder = format!("{marker}-reminder");
    let response = app
        .post_with(
            reminder_notification(&reminder, "sub-marker").to_string(),
            &headers,
        )
        .await;
    assert_eq!(response.status(), 200, "reminder marker accepted");
    let topics: Vec<String> = app
        .settings
        .routing
        .topics()
        .iter()
        .map(|t| t.to_string())
        .collect();
    let expected = topics.len();
    let all = read_until(&app.bootstrap, &topics, timeout, move |got| {
        got.iter()
            .filter(|m| m.uuid().starts_with("marker-"))
            .map(|m| m.topic.as_str())
            .collect::<HashSet<_>>()
            .len()
            >= expected
    })
    .await;
    let mut by_topic: HashMap<String, Vec<Received>> = HashMap::new();
    let mut closed = HashSet::new();
    for m in all {
        if m.uuid().starts_with("marker-") {
            closed.insert(m.topic.clone());
            continue;
        }
        if !closed.contains(&m.topic) {
            by_topic.entry(m.topic.clone()).or_default().push(m);
        }
    }
    assert_eq!(closed.len(), expected, "every topic's marker arrived");
    by_topic
}

/// An expected message: (topic, key, rc-message-id).
type Expected = (&'static str, &'static str, String);
/// A contract case: what it shows, the request body, the messages it must produce.
type ContractCase = (&'static str, Value, Vec<Expected>);

/// The end-to-end contract cases: each request and the exact messages it must produce.
fn contract_cases() -> Vec<ContractCase> {
    let u = |name: &str| format!("case-{name}-{}", unique());
    let mut cases = Vec::new();
    let ext = "ringcentral.account.extension";

    let id = u("video");
    cases.push((
        "VideoConfiguration: both targets derive one topic, one message",
        extension_update(&id, "101", &["VideoConfiguration"]),
        vec![(ext, "101", format!("{id}:101:VideoConfiguration:{ext}"))],
    ));
    let id = u("queue");
    cases.push((
        "CallQueueMembersChange: two topics, two messages",
        extension_update(&id, "102", &["CallQueueMembersChange"]),
        vec![
            (
                "ringcentral.account.extension.call-queues",
                "102",
                format!(
                    "{id}:102:CallQueueMembersChange:ringcentral.account.extension.call-queues"
                ),
            ),
            (
                "ringcentral.account.call-queues.bulk-assign",
                "102",
                format!(
                    "{id}:102:CallQueueMembersChange:ringcentral.account.call-queues.bulk-assign"
                ),
            ),
        ],
    ));
    let id = u("features");
    let features = "ringcentral.account.extension.features";
    cases.push((
        "Features, Limits, Permissions: three messages on one topic",
        extension_update(&id, "103", &["Features", "Limits", "Permissions"]),
        vec![
            (features, "103", format!("{id}:103:Features:{features}")),
            (features, "103", format!("{id}:103:Limits:{features}")),
            (features, "103", format!("{id}:103:Permissions:{features}")),
        ],
    ));
    let id = u("numeric");
    cases.push((
        "numeric ids and a non-UUID uuid",
        json!({"uuid": id, "event": "/restapi/v1.0/account/233676004/extension/233676004",
               "timestamp": "2014-04-29T14:29:27.408+0000", "subscriptionId": "s-num", "ownerId": 233676004,
               "body": {"extensionId": 233676004, "eventType": "Update", "hints": ["DialingPlan", "AccountStatus"]}}),
        vec![
            (
                "ringcentral.account.dialing-plan",
                "233676004",
                format!("{id}:233676004:DialingPlan:ringcentral.account.dialing-plan"),
            ),
            (
                "ringcentral.account",
                "233676004",
                format!("{id}:233676004:AccountStatus:ringcentral.account"),
            ),
        ],
    ));
    let id = u("unknown");
    cases.push((
        "an unknown hint is carried on unrouted",
        extension_update(&id, "104", &["Teleport", "ProfileImage"]),
        vec![
            (
                "ringcentral.unrouted",
                "104",
                format!("{id}:104:Teleport:ringcentral.unrouted"),
            ),
            (
                "ringcentral.account.extension.profile-image",
                "104",
                format!("{id}:104:ProfileImage:ringcentral.account.extension.profile-image"),
            ),
        ],
    ));
    let id = u("delete");
    cases.push((
        "Delete: one message on the extension topic",
        json!({"uuid": id, "event": "/restapi/v1.0/account/~/extension/105", "subscriptionId": "s",
               "body": {"extensionId": "105", "eventType": "Delete"}}),
        vec![(ext, "105", format!("{id}:105:Delete:{ext}"))],
    ));
    let id = u("create");
    cases.push((
        "flat Extension List Create",
        json!({"uuid": id, "event": "/restapi/v1.0/account/~/extension", "subscriptionId": "s",
               "body": {"extensionId": 106, "eventType": "Create"}}),
        vec![(ext, "106", format!("{id}:106:Create:{ext}"))],
    ));
    let id = u("batch");
    cases.push((
        "batched Extension List",
        json!({"uuid": id, "event": "/restapi/v1.0/account/~/extension", "subscriptionId": "s",
               "body": {"extensions": [
                   {"extensionId": "107", "eventType": "Create"},
                   {"extensionId": 108, "eventType": "Update", "hints": ["AnsweringRules"]}]}}),
        vec![
            (ext, "107", format!("{id}:107:Create:{ext}")),
            (ext, "108", format!("{id}:108:AnsweringRules:{ext}")),
        ],
    ));
    let id = u("reminder");
    cases.push((
        "subscription reminder",
        reminder_notification(&id, "sub-7"),
        vec![(
            "ringcentral.subscription",
            "sub-7",
            format!("{id}::SubscriptionReminder:ringcentral.subscription"),
        )],
    ));
    let id = u("other");
    cases.push((
        "another event filter is carried raw",
        json!({"uuid": id, "event": "/restapi/v1.0/account/~/extension/~/presence", "subscriptionId": "sub-8",
               "body": {"presenceStatus": "Available"}}),
        vec![("ringcentral.unrouted", "sub-8", format!("{id}::Unrouted:ringcentral.unrouted"))],
    ));
    cases
}

/// Posts every contract case, then checks every topic holds exactly the expected messages.
pub async fn check_contract(app: &TestApp) {
    let response = app.post_webhook(DOCUMENTED_EXAMPLE).await;
    assert_eq!(response.status(), 200);
    let cases = contract_cases();
    for (what, body, _) in &cases {
        let response = app.post_webhook(body.to_string()).await;
        assert_eq!(response.status(), 200, "{what}");
    }
    let published = read_all_before_marker(app, Duration::from_secs(60)).await;

    // The documented example, field by field.
    let uuid = "ed1cf00c-0420-4bf5-a0ae-e659cc9f77e0";
    let numbers = &published["ringcentral.account.extension.phone-number"];
    let m = numbers
        .iter()
        .find(|m| m.uuid() == uuid)
        .expect("CompanyNumbers message");
    assert_eq!(m.key, "8475874957");
    let message_id =
        format!("{uuid}:8475874957:CompanyNumbers:ringcentral.account.extension.phone-number");
    let mut headers: Vec<(String, String)> = vec![
        ("rc-message-id".to_string(), message_id.clone()),
        ("rc-notification-uuid".into(), uuid.into()),
        ("rc-event-type".into(), "Update".into()),
        ("rc-hint".into(), "CompanyNumbers".into()),
        (
            "rc-subscription-id".into(),
            "9d38419f-645f-4ee3-a053-8cf1368c21c4".into(),
        ),
        ("content-type".into(), "application/json".into()),
    ];
    if app.settings.cloudevents {
        let server = &app.settings.ringcentral.server;
        headers.extend([
            ("ce_specversion".to_string(), "1.0".to_string()),
            ("ce_id".into(), message_id),
            (
                "ce_source".into(),
                format!("{server}/restapi/v1.0/account/~"),
            ),
            (
                "ce_type".into(),
                "com.ringcentral.extension.hint.CompanyNumbers".into(),
            ),
            ("ce_time".into(), "2013-06-14T12:00:00.000Z".into()),
            ("ce_subject".into(), "8475874957".into()),
        ]);
    }
    // The trace headers close the list: the notification's trace, started here (no traceparent).
    let (trace, others): (Vec<_>, Vec<_>) = m
        .headers
        .iter()
        .cloned()
        .partition(|(name, _)| name.ends_with("traceparent"));
    assert_eq!(others, headers);
    let traceparent = m.header("traceparent").expect("a traceparent");
    assert!(is_traceparent(traceparent), "{traceparent}");
    let mut names: Vec<&str> = trace.iter().map(|(name, _)| name.as_str()).collect();
    names.sort();
    if app.settings.cloudevents {
        assert_eq!(names, ["ce_traceparent", "traceparent"]);
        assert_eq!(m.header("ce_traceparent"), Some(traceparent));
    } else {
        assert_eq!(names, ["traceparent"]);
    }
    assert!(!m.tombstone, "a hint message always has a value");
    let mut value = m.value();
    let received_at = value["receivedAt"].take();
    assert!(
        time::OffsetDateTime::parse(
            received_at.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok(),
        "receivedAt is RFC 3339: {received_at}"
    );
    assert_eq!(
        value,
        json!({
            "uuid": uuid,
            "event": "/restapi/v1.0/account/~/extension/8475874957",
            "timestamp": "2013-06-14T12:00:00.000Z",
            "subscriptionId": "9d38419f-645f-4ee3-a053-8cf1368c21c4",
            "ownerId": "8475874957",
            "accountId": "~",
            "extensionId": "8475874957",
            "eventType": "Update",
            "hint": "CompanyNumbers",
            "targetApi": "account/~/extension/~/phone-number",
            "resourcePath": "/restapi/v1.0/account/~/extension/8475874957/phone-number",
            "hints": ["ExtensionInfo", "CompanyNumbers"],
            "receivedAt": null
        })
    );
    let info = published["ringcentral.account.extension"]
        .iter()
        .find(|m| m.uuid() == uuid)
        .expect("ExtensionInfo message");
    assert_eq!(info.header("rc-hint"), Some("ExtensionInfo"));

    // Every case: exactly its messages, in order, with the right key and id.
    for (what, body, expected) in &cases {
        let uuid = body["uuid"].as_str().unwrap();
        let mut got: Vec<(String, String, String)> = published
            .values()
            .flatten()
            .filter(|m| m.uuid() == uuid)
            .map(|m| {
                (
                    m.topic.clone(),
                    m.key.clone(),
                    m.header("rc-message-id").unwrap_or_default().to_string(),
                )
            })
            .collect();
        let mut want: Vec<(String, String, String)> = expected
            .iter()
            .map(|(t, k, id)| (t.to_string(), k.to_string(), id.clone()))
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{what}");
        for m in published.values().flatten().filter(|m| m.uuid() == uuid) {
            assert_eq!(m.header("content-type"), Some("application/json"), "{what}");
            let value = m.value();
            assert_eq!(value["uuid"], json!(uuid), "{what}");
            if m.header("rc-message-id").unwrap().contains("::Unrouted:") {
                assert_eq!(value, *body, "{what}: the raw notification");
            } else {
                assert_eq!(value["hint"].as_str(), m.header("rc-hint"), "{what}");
            }
            check_cloudevent(app, m, what);
        }
    }
    // A timestamp with a basic offset is given as RFC 3339.
    let numeric = published["ringcentral.account"]
        .iter()
        .find(|m| m.uuid().starts_with("case-numeric-"))
        .expect("the numeric case's message");
    if app.settings.cloudevents {
        let event = super::cloudevents::event(numeric).unwrap();
        let time = event.time().expect("ce_time").to_rfc3339();
        assert_eq!(time, "2014-04-29T14:29:27.408+00:00");
    }

    // Nothing else was published anywhere.
    let total: usize = published.values().map(Vec::len).sum();
    let expected_total: usize = 2 + cases.iter().map(|(_, _, e)| e.len()).sum::<usize>();
    assert_eq!(total, expected_total, "no message beyond the planned ones");
}

/// With CloudEvents on, `m` reads as an event through the SDK, with the attributes the message
/// contract gives it; with them off, it has no `ce_` header.
fn check_cloudevent(app: &TestApp, m: &Received, what: &str) {
    if !app.settings.cloudevents {
        assert!(
            m.headers.iter().all(|(name, _)| !name.starts_with("ce_")),
            "{what}: {:?}",
            m.headers
        );
        return;
    }
    let event = super::cloudevents::event(m).unwrap_or_else(|e| panic!("{what}: {e}"));
    let message_id = m.header("rc-message-id").unwrap();
    assert_eq!(event.id(), message_id, "{what}");
    assert_eq!(event.datacontenttype(), Some("application/json"), "{what}");
    assert!(event.time().is_some(), "{what}");
    let value = m.value();
    let api = format!("{}/restapi/v1.0", app.settings.ringcentral.server);
    let (ty, source, subject) = if message_id.contains("::Unrouted:") {
        (
            "com.ringcentral.notification.unrouted".to_string(),
            api,
            None,
        )
    } else if message_id.contains("::SubscriptionReminder:") {
        let subscription = value["subscriptionId"].as_str().unwrap();
        (
            "com.ringcentral.subscription.reminder".to_string(),
            format!("{api}/subscription/{subscription}"),
            None,
        )
    } else {
        let ty = match (m.header("rc-hint"), m.header("rc-event-type")) {
            (Some(hint), _) => format!("com.ringcentral.extension.hint.{hint}"),
            (None, Some("Delete")) => "com.ringcentral.extension.deleted".to_string(),
            (None, Some("Create")) => "com.ringcentral.extension.created".to_string(),
            (None, other) => panic!("{what}: an extension message with event type {other:?}"),
        };
        let account = value["accountId"].as_str().unwrap();
        (ty, format!("{api}/account/{account}"), Some(m.key.as_str()))
    };
    assert_eq!(event.ty(), ty, "{what}");
    assert_eq!(event.source().to_string(), source, "{what}");
    assert_eq!(event.subject(), subject, "{what}");
}

/// Whether `header` is a W3C `traceparent` of version 00: lowercase hex ids, not zero, sampled or not.
pub fn is_traceparent(header: &str) -> bool {
    let fields: Vec<&str> = header.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    fields.len() == 4
        && fields[0] == "00"
        && hex(fields[1], 32)
        && fields[1].bytes().any(|b| b != b'0')
        && hex(fields[2], 16)
        && fields[2].bytes().any(|b| b != b'0')
        && (fields[3] == "00" || fields[3] == "01")
}
