//! What the webhook refuses, and hostile bodies: answered by the router alone, in process (no
//! socket, no Kafka), with the spool as the sink so that "nothing kept" is read where the relay
//! would read it.

use rc_kafka_bridge::config::Secret;
use serde_json::json;

use crate::common::metrics::{render, sample};
use crate::common::payloads::{extension_update, unique};
use crate::common::router::Ingress;

#[tokio::test]
async fn verification_token_is_required_when_configured() {
    let ingress = Ingress::new(|a| a.verification_token = Some(Secret::new("s3cret")));
    let body = extension_update(&format!("auth-{}", unique()), "1", &["Limits"]).to_string();
    let missing = ingress.post(body.clone(), &[]).await;
    assert_eq!(missing.status, 401);
    let wrong = ingress
        .post(body.clone(), &[("Verification-Token", "s3cre")])
        .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json(), json!({"error": "invalid verification token"}));
    let right = ingress
        .post(body.clone(), &[("Verification-Token", "s3cret")])
        .await;
    assert_eq!(right.status, 200);
    let metrics = render(&ingress.metrics);
    for reason in ["missing", "mismatch"] {
        assert_eq!(
            sample(
                &metrics,
                "rckb_verification_failures_total",
                &[("reason", reason)]
            ),
            1.0,
            "{reason}"
        );
    }
}

#[tokio::test]
async fn rejected_requests_get_their_status_and_publish_nothing() {
    let ingress = Ingress::new(|a| {
        a.verification_token = Some(Secret::new("tok"));
        a.max_body_bytes = 4096.try_into().unwrap();
    });
    let auth = [("Verification-Token", "tok")];
    let valid = extension_update("never-published", "9", &["Limits"]).to_string();
    let oversized = extension_update("too-big", "9", &[&"x".repeat(5000)]).to_string();
    type Rejected<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Rejected> = vec![
        ("malformed JSON", "{\"uuid\": ".into(), auth.to_vec(), 400),
        ("a JSON array", "[1, 2]".into(), auth.to_vec(), 400),
        (
            "an object without uuid",
            r#"{"event": "/restapi/v1.0/account/~/extension/1", "body": {}}"#.into(),
            auth.to_vec(),
            400,
        ),
        (
            "an empty body without Validation-Token",
            String::new(),
            auth.to_vec(),
            400,
        ),
        ("a body over the limit", oversized, auth.to_vec(), 413),
        ("no verification token", valid.clone(), vec![], 401),
        (
            "a wrong verification token",
            valid,
            vec![("Verification-Token", "nope")],
            401,
        ),
    ];
    for (what, body, headers, status) in cases {
        let answer = ingress.post(body, &headers).await;
        assert_eq!(answer.status.as_u16(), status, "{what}");
        assert!(
            answer.json()["error"].is_string(),
            "{what}: {}",
            answer.text()
        );
        assert!(answer.body.len() < 300, "{what}: short answer");
    }
    // Nothing kept, so nothing for the relay to publish.
    let kept = ingress.kept();
    assert!(kept.is_empty(), "rejected requests kept {kept:?}");
    let metrics = render(&ingress.metrics);
    for outcome in ["rejected_too_large", "rejected_malformed_json"] {
        assert_eq!(
            sample(
                &metrics,
                "rckb_notifications_total",
                &[("outcome", outcome)]
            ),
            1.0,
            "{outcome}"
        );
    }
}

#[tokio::test]
async fn only_allowed_subscriptions_may_post() {
    let ingress = Ingress::new(|a| a.allowed_subscription_ids = vec!["sub-ok".parse().unwrap()]);
    let notification = |uuid: &str, subscription: Option<&str>| {
        let mut body = json!({"uuid": uuid, "event": "/restapi/v1.0/account/~/extension/1",
            "body": {"extensionId": "1", "eventType": "Update", "hints": ["Features"]}});
        if let Some(id) = subscription {
            body["subscriptionId"] = json!(id);
        }
        body.to_string()
    };
    let run = unique();
    for (what, subscription) in [("another", Some("sub-other")), ("none", None)] {
        let answer = ingress
            .post(notification(&format!("no-{run}-{what}"), subscription), &[])
            .await;
        assert_eq!(answer.status, 403, "{what}");
        assert!(answer.body.len() < 100);
    }
    let allowed = format!("yes-{run}");
    let answer = ingress
        .post(notification(&allowed, Some("sub-ok")), &[])
        .await;
    assert_eq!(answer.status, 200);

    let kept: Vec<String> = ingress.kept().into_iter().map(|plan| plan.uuid).collect();
    assert_eq!(kept, [allowed], "only the allowed one kept");
    assert_eq!(
        sample(
            &render(&ingress.metrics),
            "rckb_notifications_total",
            &[("outcome", "rejected_forbidden")]
        ),
        2.0
    );
}

/// Bodies a hostile client might send. None may crash the bridge, none may be answered 5xx, and
/// what is accepted is bounded.
#[tokio::test]
async fn a_hostile_corpus_gets_clear_answers_and_bounded_work() {
    let ingress = Ingress::new(|_| {});
    let u = unique();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_body = format!(
        r#"{{"uuid":"deep-{u}","event":"/restapi/v1.0/account/~/extension/1","body":{}}}"#,
        "{\"a\":".repeat(2000) + "1" + &"}".repeat(2000)
    );
    let corpus: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("deeply nested arrays", deep.into_bytes(), &[400, 413]),
        ("deeply nested body", deep_body.into_bytes(), &[400]),
        ("invalid UTF-8", b"{\"uuid\":\"\xff\xfe\",\"event\":\"/x\"}".to_vec(), &[400]),
        ("NUL bytes", b"\0\0\0\0".to_vec(), &[400]),
        ("huge number uuid", format!(r#"{{"uuid":{},"event":"/x"}}"#, "9".repeat(5000)).into_bytes(), &[200]),
        ("exponent uuid", format!(r#"{{"uuid":1e999999,"event":"/x-{u}"}}"#).into_bytes(), &[200, 400]),
        ("hints as objects", json!({"uuid": format!("obj-{u}"), "event": "/restapi/v1.0/account/~/extension/1",
            "body": {"extensionId": "1", "eventType": "Update", "hints": [{"a": [1, 2]}, null, true, 7]}})
            .to_string().into_bytes(), &[200]),
        ("extension id as an object", json!({"uuid": format!("eobj-{u}"), "event": "/restapi/v1.0/account/~/extension/1",
            "body": {"extensionId": {"x": 1}, "eventType": "Update", "hints": ["Features"]}})
            .to_string().into_bytes(), &[200]),
        ("account id with a path", json!({"uuid": format!("acc-{u}"), "event": "/restapi/v1.0/account/..%2f..%2f/extension/1",
            "body": {"extensionId": "1", "eventType": "Update", "hints": ["Features"]}})
            .to_string().into_bytes(), &[200]),
        ("newlines in a hint", json!({"uuid": format!("nl-{u}"), "event": "/restapi/v1.0/account/~/extension/1",
            "body": {"extensionId": "1", "eventType": "Update", "hints": ["A\r\nX-Injected: 1"]}})
            .to_string().into_bytes(), &[200]),
        ("a batch of 5000 empty entries", json!({"uuid": format!("empty-{u}"), "event": "/restapi/v1.0/account/~/extension",
            "body": {"extensions": vec![json!({}); 5000]}}).to_string().into_bytes(), &[200]),
        ("a batch of 1600 deletions", json!({"uuid": format!("many-{u}"), "event": "/restapi/v1.0/account/~/extension",
            "body": {"extensions": vec![json!({"extensionId": 1, "eventType": "Delete"}); 1600]}})
            .to_string().into_bytes(), &[200]),
        ("a 1 MiB body", vec![b' '; 1 << 20], &[413]),
    ];
    for (what, body, expected) in corpus {
        let answer = ingress.post(body, &[]).await;
        let status = answer.status.as_u16();
        assert!(expected.contains(&status), "{what}: answered {status}");
        assert!(answer.body.len() < 200, "{what}: tiny answer");
    }
    // Still serving, and what was accepted stayed within the default caps.
    let after = extension_update(&format!("after-{u}"), "1", &["Features"]).to_string();
    assert_eq!(ingress.post(after, &[]).await.status, 200);
    let messages: usize = ingress.kept().iter().map(|plan| plan.messages.len()).sum();
    assert!(messages < 5000, "{messages} messages from the corpus");
}
