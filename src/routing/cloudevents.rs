//! CloudEvents binary-mode headers (the CloudEvents Kafka protocol binding): every attribute as a
//! `ce_` header beside the value, which stays the message contract's JSON; `content-type` is the
//! event's `datacontenttype`. A consumer with a CloudEvents SDK reads each message as an event
//! without parsing the value; the others ignore the headers.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::routing::HeaderName;

/// The CloudEvents version of every event.
pub const SPEC_VERSION: &str = "1.0";
/// The most `ce_` headers one event has.
pub const HEADERS: usize = 6;
/// Every event type starts with this (reverse DNS of the events' producer, RingCentral).
const TYPE_PREFIX: &str = "com.ringcentral";

/// The `ce_` headers of the messages: on unless `--cloudevents false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvents {
    /// RingCentral's API, the base of every `ce_source`: e.g.
    /// `https://platform.ringcentral.com/restapi/v1.0`.
    api: String,
}

/// What kind of event a message is: its `ce_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// One hint of an extension's update (also an unknown hint, on the unrouted topic).
    Hint(&'a str),
    /// An extension's event without a hint: `Create`, `Update` or `Delete`.
    Extension(&'a str),
    /// A sweep found a change no notification told.
    Reconciled,
    SubscriptionReminder,
    /// A notification the bridge does not route, as received.
    Unrouted,
    /// A state record, or its tombstone, of the state topic of `resource` (e.g.
    /// `account.extension.features`).
    State(&'a str),
}

impl Kind<'_> {
    /// The event type in reverse-DNS form.
    pub fn event_type(&self) -> String {
        match self {
            Kind::Hint(hint) => format!("{TYPE_PREFIX}.extension.hint.{hint}"),
            Kind::Extension(event_type) => {
                let past = match *event_type {
                    "Create" => "created",
                    "Update" => "updated",
                    "Delete" => "deleted",
                    other => return format!("{TYPE_PREFIX}.extension.{}", other.to_lowercase()),
                };
                format!("{TYPE_PREFIX}.extension.{past}")
            }
            Kind::Reconciled => format!("{TYPE_PREFIX}.extension.reconciled"),
            Kind::SubscriptionReminder => format!("{TYPE_PREFIX}.subscription.reminder"),
            Kind::Unrouted => format!("{TYPE_PREFIX}.notification.unrouted"),
            Kind::State(resource) => format!("{TYPE_PREFIX}.state.{resource}"),
        }
    }
}

/// Where an event comes from: its `ce_source` below RingCentral's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// An account (its id, or `~` as the event named it).
    Account(&'a str),
    /// A subscription (its id).
    Subscription(&'a str),
    /// RingCentral's API as a whole: a notification the bridge could not attribute.
    Api,
}

/// One event's attributes.
pub struct Event<'a> {
    /// Unique per source and stable across redelivery: the `rc-message-id`.
    pub id: &'a str,
    pub kind: Kind<'a>,
    pub source: Source<'a>,
    /// When the change happened, as RFC 3339 (see [`normalise_time`]).
    pub time: &'a str,
    /// The extension id, where there is one.
    pub subject: Option<&'a str>,
}

impl CloudEvents {
    /// The headers for events of the RingCentral `server` (e.g. `https://platform.ringcentral.com`).
    pub fn new(server: &str) -> CloudEvents {
        CloudEvents {
            api: format!("{}/restapi/v1.0", server.trim_end_matches('/')),
        }
    }

    /// An upper bound of the bytes the `ce_` headers add to a message beyond what its event's id,
    /// source id, time and subject weigh: the names, the type and the API's address. The fan-out
    /// caps count it before anything is planned.
    pub fn fixed_bytes(&self) -> usize {
        // Six names of at most 14 bytes, the version, and the longest type: the prefix, a kind and
        // a hint or resource name (counted by the caller as the event's hint).
        HEADERS * 14
            + SPEC_VERSION.len()
            + TYPE_PREFIX.len()
            + 32
            + self.api.len()
            + "/subscription/".len()
    }

    /// The `ce_` headers of one event, in the binding's names.
    pub fn headers(&self, event: &Event<'_>) -> Vec<(HeaderName, String)> {
        let mut headers = Vec::with_capacity(HEADERS);
        self.push_headers(&mut headers, event);
        headers
    }

    /// Appends the `ce_` headers of one event to a message's `headers` (sized by the caller for
    /// all of them, [`HEADERS`] at most).
    pub fn push_headers(&self, headers: &mut Vec<(HeaderName, String)>, event: &Event<'_>) {
        let source = match event.source {
            Source::Account(id) => format!("{}/account/{id}", self.api),
            Source::Subscription(id) => format!("{}/subscription/{id}", self.api),
            Source::Api => self.api.clone(),
        };
        headers.extend([
            ("ce_specversion".into(), SPEC_VERSION.to_string()),
            ("ce_id".into(), event.id.to_string()),
            ("ce_source".into(), source),
            ("ce_type".into(), event.kind.event_type()),
            ("ce_time".into(), event.time.to_string()),
        ]);
        if let Some(subject) = event.subject {
            headers.push(("ce_subject".into(), subject.to_string()));
        }
    }
}

/// A notification's `timestamp` as RFC 3339 (`ce_time` must be one): RingCentral's usual form
/// already is, and is kept as sent; a form with a basic offset (`+0000`) gets its colon; anything
/// else, or no timestamp, gives `fallback` (when the bridge accepted the notification).
pub fn normalise_time(timestamp: Option<&str>, fallback: &str) -> String {
    let is_rfc_3339 = |text: &str| OffsetDateTime::parse(text, &Rfc3339).is_ok();
    let Some(text) = timestamp else {
        return fallback.to_string();
    };
    if is_rfc_3339(text) {
        return text.to_string();
    }
    // `2013-06-14T12:00:00.000+0000`: the offset without its colon.
    if let Some((head, offset)) = text.split_at_checked(text.len().saturating_sub(5))
        && offset.starts_with(['+', '-'])
        && offset[1..].bytes().all(|b| b.is_ascii_digit())
    {
        let with_colon = format!("{head}{}:{}", &offset[..3], &offset[3..]);
        if is_rfc_3339(&with_colon) {
            return with_colon;
        }
    }
    fallback.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_are_reverse_dns_per_kind() {
        let cases = [
            (
                Kind::Hint("CompanyNumbers"),
                "com.ringcentral.extension.hint.CompanyNumbers",
            ),
            (
                Kind::Extension("Delete"),
                "com.ringcentral.extension.deleted",
            ),
            (
                Kind::Extension("Create"),
                "com.ringcentral.extension.created",
            ),
            (
                Kind::Extension("Update"),
                "com.ringcentral.extension.updated",
            ),
            (Kind::Reconciled, "com.ringcentral.extension.reconciled"),
            (
                Kind::SubscriptionReminder,
                "com.ringcentral.subscription.reminder",
            ),
            (Kind::Unrouted, "com.ringcentral.notification.unrouted"),
            (
                Kind::State("account.extension.features"),
                "com.ringcentral.state.account.extension.features",
            ),
        ];
        for (kind, expected) in cases {
            assert_eq!(kind.event_type(), expected);
        }
    }

    #[test]
    fn headers_name_the_account_below_the_server_and_the_subject_when_there_is_one() {
        let ce = CloudEvents::new("https://platform.ringcentral.com/");
        let headers = ce.headers(&Event {
            id: "u:1:ExtensionInfo:t",
            kind: Kind::Hint("ExtensionInfo"),
            source: Source::Account("37439510"),
            time: "2013-06-14T12:00:00Z",
            subject: Some("1"),
        });
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("ce_specversion"), Some("1.0"));
        assert_eq!(get("ce_id"), Some("u:1:ExtensionInfo:t"));
        assert_eq!(
            get("ce_source"),
            Some("https://platform.ringcentral.com/restapi/v1.0/account/37439510")
        );
        assert_eq!(get("ce_subject"), Some("1"));
        let reminder = ce.headers(&Event {
            id: "r",
            kind: Kind::SubscriptionReminder,
            source: Source::Subscription("sub-1"),
            time: "2013-06-14T12:00:00Z",
            subject: None,
        });
        assert!(reminder.iter().all(|(n, _)| n != "ce_subject"));
    }

    #[test]
    fn times_become_rfc_3339_or_the_fallback() {
        let fallback = "2026-01-01T00:00:00Z";
        let cases = [
            (Some("2013-06-14T12:00:00.000Z"), "2013-06-14T12:00:00.000Z"),
            (
                Some("2013-06-14T12:00:00.250+0000"),
                "2013-06-14T12:00:00.250+00:00",
            ),
            (
                Some("2013-06-14T14:00:00+02:00"),
                "2013-06-14T14:00:00+02:00",
            ),
            (Some("yesterday"), fallback),
            (Some(""), fallback),
            (None, fallback),
        ];
        for (timestamp, expected) in cases {
            assert_eq!(
                normalise_time(timestamp, fallback),
                expected,
                "{timestamp:?}"
            );
        }
    }
}
