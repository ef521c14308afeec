//! Fetching one resource's state: a GET with the bridge's token through its group's rate limiter,
//! every page of a paged resource merged into one value, and the answer classified for the queue.
//!
//! A paged resource is published as one record: the first page's body with `records` holding the
//! records of every page, in order, and without `navigation` and `paging`, which describe a split into
//! pages the merge undid (their links and counts would be wrong for the merged value). The merged
//! value is RingCentral's JSON re-serialized: the same values (numbers keep their exact text), object
//! keys in sorted order. A resource that is not paged is RingCentral's answer byte for byte.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use reqwest::{StatusCode, Url};
use serde_json::{Map, Value};

use super::fetch_table::Resource;
use super::get_template::KeyScope;
use super::limiter::RateLimiter;
use super::rate_limits::{DEFAULT_RETRY_AFTER, RateAnswer};
use crate::ringcentral::{ApiError, RingCentral};

/// The most pages one resource is fetched in: at RingCentral's default of 100 records a page, far
/// more than any extension has; a resource that seems to have more is answering in a loop.
pub const MAX_PAGES: usize = 100;

/// What fetching a resource came to.
#[derive(Debug)]
pub enum FetchOutcome {
    /// The resource's current state, to publish as the record's value.
    State(Bytes),
    /// 404 on a per-extension resource: the extension is gone (publish tombstones).
    Gone,
    /// 429, or 503 with `Retry-After`: the group is paused this long; fetch again after it.
    RateLimited(Duration),
    /// 401 even with a renewed token, or the token itself refused: the credentials need a look.
    Unauthorized,
    /// Any other failure: fetch again after a backoff.
    Retry(FetchError),
}

/// Why a fetch is to be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchErrorKind {
    /// RingCentral could not be reached, or its answer was cut.
    Network,
    /// A 5xx answer.
    Server,
    /// A 4xx answer other than 401, 404 on a per-extension resource and 429.
    Client,
    /// A 2xx answer that is not JSON, or a page without `records`.
    Decode,
    /// A `nextPage` that leaves the REST API, repeats a page, or one page too many.
    Paging,
}

impl FetchErrorKind {
    /// RingCentral refuses the request as made (400, 403, a broken `nextPage`): asking again
    /// changes nothing.
    pub fn is_refusal(self) -> bool {
        matches!(self, FetchErrorKind::Client | FetchErrorKind::Paging)
    }

    /// A bounded label, for metrics.
    pub fn label(self) -> &'static str {
        match self {
            FetchErrorKind::Network => "network",
            FetchErrorKind::Server => "server",
            FetchErrorKind::Client => "client",
            FetchErrorKind::Decode => "decode",
            FetchErrorKind::Paging => "paging",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    pub kind: FetchErrorKind,
    /// For logs: what failed, never a token.
    pub message: String,
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn retry(kind: FetchErrorKind, message: impl Into<String>) -> FetchOutcome {
    FetchOutcome::Retry(FetchError {
        kind,
        message: message.into(),
    })
}

/// Fetches `resource` whole: one GET per page, each let through by `limiter` and adjusting it. A 401
/// renews the access token once per fetch.
pub async fn fetch(
    client: &RingCentral,
    limiter: &RateLimiter,
    resource: &Resource,
) -> FetchOutcome {
    let mut path = resource.path.clone();
    let mut fetched: Vec<String> = Vec::new();
    let mut pages = Pages::default();
    let mut renewed = false;
    loop {
        let permit = limiter.acquire(resource.group).await;
        let response = match client.get_once(&path).await {
            Ok(response) => response,
            Err(e) => return token_failure(e),
        };
        let status = response.status();
        let answer = RateAnswer::from_response(status, response.headers());
        let pause = permit.observe(&answer).map(|p| p.duration);
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => return retry(FetchErrorKind::Network, format!("GET {path}: {e}")),
        };
        match status {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED if !renewed => {
                renewed = true;
                client.expire_access_token().await;
                continue;
            }
            StatusCode::UNAUTHORIZED => return FetchOutcome::Unauthorized,
            StatusCode::NOT_FOUND if resource.scope == KeyScope::Extension => {
                return FetchOutcome::Gone;
            }
            StatusCode::TOO_MANY_REQUESTS => {
                return FetchOutcome::RateLimited(pause.unwrap_or(DEFAULT_RETRY_AFTER));
            }
            StatusCode::SERVICE_UNAVAILABLE if pause.is_some() => {
                return FetchOutcome::RateLimited(pause.unwrap_or(DEFAULT_RETRY_AFTER));
            }
            s => {
                let kind = if s.is_server_error() {
                    FetchErrorKind::Server
                } else {
                    FetchErrorKind::Client
                };
                return retry(kind, format!("GET {path}: {s}{}", error_code(&body)));
            }
        }
        if !resource.paged {
            return match serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
                Ok(_) => FetchOutcome::State(body),
                Err(e) => retry(FetchErrorKind::Decode, format!("GET {path}: not JSON: {e}")),
            };
        }
        let next = match pages.add(&body) {
            Ok(next) => next,
            Err(e) => return retry(FetchErrorKind::Decode, format!("GET {path}: {e}")),
        };
        fetched.push(path);
        let Some(next) = next else {
            return match pages.merged() {
                Ok(state) => FetchOutcome::State(state),
                Err(e) => retry(FetchErrorKind::Decode, e),
            };
        };
        path = match next_page(&next) {
            Ok(next) => next,
            Err(e) => return retry(FetchErrorKind::Paging, e),
        };
        if fetched.contains(&path) {
            return retry(
                FetchErrorKind::Paging,
                format!("nextPage `{next}` repeats a page"),
            );
        }
        if fetched.len() >= MAX_PAGES {
            return retry(
                FetchErrorKind::Paging,
                format!("more than {MAX_PAGES} pages"),
            );
        }
    }
}

/// `get_once` fails before any GET is sent: the access token could not be had, or the path was refused.
fn token_failure(e: ApiError) -> FetchOutcome {
    match &e {
        ApiError::Api {
            status: 400 | 401 | 403,
            ..
        } => FetchOutcome::Unauthorized,
        ApiError::Network { .. } => retry(FetchErrorKind::Network, e.to_string()),
        ApiError::Api { status, .. } if *status >= 500 => {
            retry(FetchErrorKind::Server, e.to_string())
        }
        ApiError::Setup(_) => retry(FetchErrorKind::Paging, e.to_string()),
        ApiError::Decode(_) => retry(FetchErrorKind::Decode, e.to_string()),
        ApiError::Api { .. } => retry(FetchErrorKind::Client, e.to_string()),
    }
}

/// RingCentral's error code in an error answer (`errorCode` at the top or in `errors[0]`), for logs.
fn error_code(body: &[u8]) -> String {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    body["errorCode"]
        .as_str()
        .or(body["errors"][0]["errorCode"].as_str())
        .map(|code| format!(" {code}"))
        .unwrap_or_default()
}

/// The path and query of a `nextPage` URI (absolute, as RingCentral writes it, or relative). Only
/// the path and query are followed, on the bridge's own server: whatever host a URI names, the token
/// is sent nowhere else.
fn next_page(uri: &str) -> Result<String, String> {
    let url = Url::parse("https://platform.ringcentral.com/")
        .and_then(|base| base.join(uri))
        .map_err(|e| format!("nextPage `{uri}` is not a URI: {e}"))?;
    if !url.path().starts_with("/restapi/") {
        return Err(format!("nextPage `{uri}` is outside the REST API"));
    }
    Ok(match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    })
}

/// The pages of a paged resource read so far.
#[derive(Default)]
struct Pages {
    first: Option<Map<String, Value>>,
    records: Vec<Value>,
}

impl Pages {
    /// Adds a page; returns its `navigation.nextPage.uri`, if it has one.
    fn add(&mut self, body: &[u8]) -> Result<Option<String>, String> {
        let page: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(mut page) = page else {
            return Err("a page is not a JSON object".into());
        };
        let Some(Value::Array(records)) = page.remove("records") else {
            return Err("a page has no `records` array".into());
        };
        self.records.extend(records);
        let uri = page.get("navigation").map(|n| &n["nextPage"]["uri"]);
        let next = match uri {
            None | Some(Value::Null) => None,
            Some(Value::String(uri)) => Some(uri.clone()),
            Some(other) => return Err(format!("navigation.nextPage.uri is not a string: {other}")),
        };
        if self.first.is_none() {
            page.remove("navigation");
            page.remove("paging");
            self.first = Some(page);
        }
        Ok(next)
    }

    fn merged(self) -> Result<Bytes, String> {
        let mut state = self.first.unwrap_or_default();
        state.insert("records".into(), Value::Array(self.records));
        serde_json::to_vec(&Value::Object(state))
            .map(Bytes::from)
            .map_err(|e| format!("cannot write the merged pages: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::Hint;
    use crate::state::fake_api::{Answer, FakeApi};
    use crate::state::fetch_table::FetchTable;
    use crate::state::rate_limits::{Budget, RateGroup};

    fn resource(hint: &str) -> Resource {
        FetchTable::built_in("ringcentral.")
            .unwrap()
            .fetch_for(&Hint::new(hint))
            .unwrap()
            .resource("37439510", "8475874957")
            .unwrap()
    }

    const EXTENSION: &str = "/restapi/v1.0/account/37439510/extension/8475874957";
    const PHONE_NUMBERS: &str = "/restapi/v1.0/account/37439510/extension/8475874957/phone-number";

    async fn fetch_from(api: &FakeApi, resource: &Resource) -> FetchOutcome {
        fetch(&api.client(), &RateLimiter::new(), resource).await
    }

    fn state(outcome: FetchOutcome) -> Bytes {
        match outcome {
            FetchOutcome::State(state) => state,
            other => panic!("not a state: {other:?}"),
        }
    }

    fn retried(outcome: FetchOutcome) -> FetchErrorKind {
        match outcome {
            FetchOutcome::Retry(e) => e.kind,
            other => panic!("not a retry: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_resource_that_is_not_paged_is_its_answer_byte_for_byte() {
        let api = FakeApi::start().await;
        let body = r#"{ "uri":"x",  "id" : 8475874957, "cost": 1.50, "name": "\u00e9" }"#;
        api.answer(EXTENSION, Answer::new(200, body));
        let state = state(fetch_from(&api, &resource("ExtensionInfo")).await);
        assert_eq!(state, body.as_bytes());
        let requests = api.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].path, EXTENSION);
        assert_eq!(requests[0].authorization.as_deref(), Some("Bearer token-1"));
    }

    #[tokio::test]
    async fn the_query_of_a_get_is_sent() {
        let api = FakeApi::start().await;
        let path = "/restapi/v1.0/account/37439510/call-queues?memberExtensionId=8475874957";
        api.answer(
            path,
            Answer::new(200, r#"{"uri":"q","records":[{"id":"1"}]}"#),
        );
        let state = state(fetch_from(&api, &resource("CallQueueMembersChange")).await);
        assert_eq!(state, r#"{"records":[{"id":"1"}],"uri":"q"}"#.as_bytes());
        assert_eq!(api.paths(), [path]);
    }

    #[tokio::test]
    async fn pages_are_merged_into_one_records_array_without_navigation_and_paging() {
        let api = FakeApi::start().await;
        let page = |records: &str, next: Option<&str>| {
            let navigation = next.map_or(String::new(), |uri| {
                format!(r#", "navigation": {{"nextPage": {{"uri": "{uri}"}}}}"#)
            });
            format!(
                r#"{{"uri": "{PHONE_NUMBERS}", "records": [{records}], "paging": {{"page": 1}}{navigation}}}"#
            )
        };
        // RingCentral writes absolute URIs, on its own host: only the path and query are followed.
        let second = format!("{PHONE_NUMBERS}?page=2&perPage=1");
        let third = format!("{PHONE_NUMBERS}?page=3&perPage=1");
        api.answer(
            PHONE_NUMBERS,
            Answer::new(
                200,
                page(
                    r#"{"id": 1, "n": 12345678901234567890}"#,
                    Some(&format!("https://platform.ringcentral.com{second}")),
                ),
            ),
        );
        api.answer(
            &second,
            Answer::new(200, page(r#"{"id": 2}"#, Some(&third))),
        );
        api.answer(&third, Answer::new(200, page(r#"{"id": 3}"#, None)));

        let state = state(fetch_from(&api, &resource("CompanyNumbers")).await);
        let value: Value = serde_json::from_slice(&state).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "uri": PHONE_NUMBERS,
                "records": [{"id": 1, "n": 12345678901234567890_u64}, {"id": 2}, {"id": 3}],
            })
        );
        assert!(
            String::from_utf8_lossy(&state).contains("12345678901234567890"),
            "numbers keep their exact text"
        );
        assert_eq!(api.paths(), [PHONE_NUMBERS, &second, &third]);
    }

    #[tokio::test]
    async fn a_404_means_a_gone_extension_but_not_a_gone_account() {
        let api = FakeApi::start().await;
        let not_found = r#"{"errorCode": "CMN-102", "message": "Resource for parameter [extensionId] is not found"}"#;
        api.answer(EXTENSION, Answer::new(404, not_found));
        api.answer(
            "/restapi/v1.0/account/37439510",
            Answer::new(404, not_found),
        );
        assert!(matches!(
            fetch_from(&api, &resource("ExtensionInfo")).await,
            FetchOutcome::Gone
        ));
        match fetch_from(&api, &resource("AccountStatus")).await {
            FetchOutcome::Retry(e) => {
                assert_eq!(e.kind, FetchErrorKind::Client);
                assert!(e.message.contains("404 Not Found CMN-102"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_401_renews_the_token_once() {
        let api = FakeApi::start().await;
        api.answer(
            EXTENSION,
            Answer::new(401, r#"{"errorCode": "TokenInvalid"}"#),
        );
        api.answer(EXTENSION, Answer::new(200, "{}"));
        assert_eq!(
            state(fetch_from(&api, &resource("ExtensionInfo")).await),
            "{}"
        );
        let authorizations: Vec<_> = api
            .requests()
            .into_iter()
            .map(|r| r.authorization.unwrap_or_default())
            .collect();
        assert_eq!(authorizations, ["Bearer token-1", "Bearer token-2"]);

        let api = FakeApi::start().await;
        api.answer(EXTENSION, Answer::new(401, "{}"));
        assert!(matches!(
            fetch_from(&api, &resource("ExtensionInfo")).await,
            FetchOutcome::Unauthorized
        ));
        assert_eq!(api.requests().len(), 2, "renewed once, not more");
        assert_eq!(api.tokens_granted(), 2);
    }

    #[tokio::test]
    async fn refused_credentials_are_unauthorized_and_send_no_get() {
        let api = FakeApi::start().await;
        api.refuse_tokens();
        api.answer(EXTENSION, Answer::new(200, "{}"));
        assert!(matches!(
            fetch_from(&api, &resource("ExtensionInfo")).await,
            FetchOutcome::Unauthorized
        ));
        assert!(api.requests().is_empty());
    }

    #[tokio::test]
    async fn a_429_pauses_the_group_and_says_for_how_long() {
        let api = FakeApi::start().await;
        api.answer(
            EXTENSION,
            Answer::new(429, r#"{"errorCode": "CMN-301"}"#).header("Retry-After", 9),
        );
        let limiter = RateLimiter::new();
        let outcome = fetch(&api.client(), &limiter, &resource("ExtensionInfo")).await;
        assert!(
            matches!(outcome, FetchOutcome::RateLimited(d) if d == Duration::from_secs(9)),
            "{outcome:?}"
        );
        let paused = limiter.paused_for(RateGroup::Light).unwrap();
        assert!(paused > Duration::from_secs(8), "{paused:?}");
        assert_eq!(limiter.paused_for(RateGroup::Medium), None);
    }

    #[tokio::test]
    async fn answers_adjust_the_limiter_of_the_group() {
        let api = FakeApi::start().await;
        let features = "/restapi/v1.0/account/37439510/extension/8475874957/features";
        api.answer(
            features,
            Answer::new(200, r#"{"records": []}"#)
                .header("X-Rate-Limit-Group", "medium")
                .header("X-Rate-Limit-Limit", 7)
                .header("X-Rate-Limit-Remaining", 6)
                .header("X-Rate-Limit-Window", 30),
        );
        let limiter = RateLimiter::new();
        let outcome = fetch(&api.client(), &limiter, &resource("Features")).await;
        assert!(matches!(outcome, FetchOutcome::State(_)), "{outcome:?}");
        assert_eq!(
            limiter.budget(RateGroup::Medium),
            Budget {
                requests: 7,
                window: Duration::from_secs(30)
            }
        );
        assert_eq!(
            limiter.budget(RateGroup::Light),
            RateGroup::Light.default_budget()
        );
    }

    #[tokio::test]
    async fn other_failures_are_retried_with_their_kind() {
        let cases = [
            (Answer::new(503, "busy").header("Retry-After", 5), None),
            (Answer::new(503, "busy"), Some(FetchErrorKind::Server)),
            (Answer::new(500, "{}"), Some(FetchErrorKind::Server)),
            (
                Answer::new(403, r#"{"errors": [{"errorCode": "CMN-408"}]}"#),
                Some(FetchErrorKind::Client),
            ),
            (
                Answer::new(200, "<html>proxy</html>"),
                Some(FetchErrorKind::Decode),
            ),
            (Answer::new(200, ""), Some(FetchErrorKind::Decode)),
        ];
        for (answer, kind) in cases {
            let api = FakeApi::start().await;
            api.answer(EXTENSION, answer.clone());
            let outcome = fetch_from(&api, &resource("ExtensionInfo")).await;
            match kind {
                None => assert!(
                    matches!(outcome, FetchOutcome::RateLimited(d) if d == Duration::from_secs(5)),
                    "{answer:?}: {outcome:?}"
                ),
                Some(kind) => assert_eq!(retried(outcome), kind, "{answer:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_page_without_records_is_not_a_state() {
        let api = FakeApi::start().await;
        api.answer(PHONE_NUMBERS, Answer::new(200, r#"{"uri": "x"}"#));
        assert_eq!(
            retried(fetch_from(&api, &resource("CompanyNumbers")).await),
            FetchErrorKind::Decode
        );
        let api = FakeApi::start().await;
        api.answer(PHONE_NUMBERS, Answer::new(200, "[]"));
        assert_eq!(
            retried(fetch_from(&api, &resource("CompanyNumbers")).await),
            FetchErrorKind::Decode
        );
    }

    #[tokio::test]
    async fn a_next_page_outside_the_rest_api_or_repeating_a_page_is_not_followed() {
        for next in [
            "https://evil.example/oauth/token".to_string(),
            "/restapi/../restapi/oauth/../../oauth/token".to_string(),
            "/restapi/%2e%2e/oauth/token".to_string(),
            format!("https://platform.ringcentral.com{PHONE_NUMBERS}"),
        ] {
            let api = FakeApi::start().await;
            let body =
                format!(r#"{{"records": [], "navigation": {{"nextPage": {{"uri": "{next}"}}}}}}"#);
            api.answer(PHONE_NUMBERS, Answer::new(200, body));
            let outcome = fetch_from(&api, &resource("CompanyNumbers")).await;
            assert_eq!(retried(outcome), FetchErrorKind::Paging, "{next}");
            assert_eq!(api.paths(), [PHONE_NUMBERS], "{next}");
        }
    }

    #[tokio::test]
    async fn a_resource_answering_pages_forever_stops_at_the_page_limit() {
        let api = FakeApi::start().await;
        let page = |n: usize| format!("{PHONE_NUMBERS}?page={n}");
        api.answer(
            PHONE_NUMBERS,
            Answer::new(
                200,
                format!(
                    r#"{{"records": [], "navigation": {{"nextPage": {{"uri": "{}"}}}}}}"#,
                    page(2)
                ),
            ),
        );
        for n in 2..=MAX_PAGES + 1 {
            let body = format!(
                r#"{{"records": [{n}], "navigation": {{"nextPage": {{"uri": "{}"}}}}}}"#,
                page(n + 1)
            );
            api.answer(&page(n), Answer::new(200, body));
        }
        // A budget that lets every page through at once.
        let limiter = RateLimiter::with_budgets(|_| Budget {
            requests: 1000,
            window: Duration::from_secs(60),
        });
        let outcome = fetch(&api.client(), &limiter, &resource("CompanyNumbers")).await;
        assert_eq!(retried(outcome), FetchErrorKind::Paging);
        assert_eq!(api.requests().len(), MAX_PAGES);
    }

    #[tokio::test]
    async fn an_unreachable_server_is_retried() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let client = RingCentral::new(crate::ringcentral::Credentials {
            server,
            client_id: "id".into(),
            client_secret: crate::secret::Secret::new("secret"),
            jwt: crate::secret::Secret::new("jwt"),
        })
        .unwrap();
        let outcome = fetch(&client, &RateLimiter::new(), &resource("ExtensionInfo")).await;
        assert_eq!(retried(outcome), FetchErrorKind::Network);
    }

    #[tokio::test]
    async fn the_client_gets_nothing_outside_the_rest_api() {
        let api = FakeApi::start().await;
        let client = api.client();
        for path in [
            "/oauth/token",
            "/restapi/../oauth/token",
            "/restapi/%2e%2e/x",
            "x",
        ] {
            let err = client.get_once(path).await.unwrap_err();
            assert_eq!(err.kind(), "setup", "{path}");
        }
        assert!(api.requests().is_empty());
        assert_eq!(api.tokens_granted(), 0, "not even a token was asked for");
    }
}
