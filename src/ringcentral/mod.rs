//! RingCentral's REST API, the part the bridge needs to own its webhook subscription: OAuth 2.0 with
//! the JWT bearer grant (server to server), access-token refresh, rate limits (429 with
//! `Retry-After`), and the subscription endpoints. [`keeper`] keeps a subscription alive from `serve`.

pub mod keeper;

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::secret::Secret;

pub const PRODUCTION_SERVER: &str = "https://platform.ringcentral.com";
pub const SANDBOX_SERVER: &str = "https://platform.devtest.ringcentral.com";

/// The filters a new subscription gets by default: every extension of the account (the Extension List
/// event carries each extension's changes) and the expiry reminder, one day ahead, hourly.
pub const DEFAULT_EVENT_FILTERS: &[&str] = &[
    "/restapi/v1.0/account/~/extension",
    "/restapi/v1.0/subscription/~?threshold=86400&interval=3600",
];

/// The longest lifetime RingCentral grants a webhook subscription (ten years).
pub const MAX_EXPIRES_IN: u64 = 315_360_000;

/// Renew an access token this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// How often a request is retried after a 429.
const RATE_LIMIT_RETRIES: usize = 3;
/// The longest `Retry-After` honoured; RingCentral's penalty windows are a minute.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// Credentials of a RingCentral app with the JWT auth flow.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub server: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub jwt: Secret,
}

/// A RingCentral subscription id (a UUID in practice). Ids arrive from the command line, from
/// RingCentral's answers and from expiry reminders posted to the public webhook, and each becomes a
/// segment of a request sent with the bridge's bearer token: only letters, digits and `-` are
/// accepted, so no id can name another endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SubscriptionId(String);

/// The longest subscription id accepted (`notification::is_resource_id`); RingCentral's are 36.
const MAX_SUBSCRIPTION_ID_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a RingCentral subscription id: only letters, digits and `-`, 1 to {MAX_SUBSCRIPTION_ID_LEN} characters"
)]
pub struct InvalidSubscriptionId;

impl SubscriptionId {
    pub fn parse(id: impl Into<String>) -> Result<SubscriptionId, InvalidSubscriptionId> {
        let id = id.into();
        if crate::notification::is_resource_id(&id) {
            Ok(SubscriptionId(id))
        } else {
            Err(InvalidSubscriptionId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SubscriptionId {
    type Err = InvalidSubscriptionId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SubscriptionId::parse(s)
    }
}

impl TryFrom<String> for SubscriptionId {
    type Error = InvalidSubscriptionId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        SubscriptionId::parse(s)
    }
}

impl From<SubscriptionId> for String {
    fn from(id: SubscriptionId) -> String {
        id.0
    }
}

impl PartialEq<str> for SubscriptionId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// Parses the API server's address. The bridge sends its JWT, client secret and bearer tokens
/// there, so it must be `https://`; plain `http://` is accepted only on loopback (127.0.0.0/8,
/// `::1`, `localhost`), where nothing crosses a network (a local fake API, a local proxy).
pub fn parse_server(server: &str) -> Result<Url, String> {
    let url = Url::parse(server).map_err(|e| format!("`{server}` is not a URL: {e}"))?;
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(format!("`{server}` is not an http(s) server address"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "`{server}` must be a plain server address, without credentials, query or fragment"
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "`{server}` must use https:// (credentials and tokens are sent there);              http:// is allowed only on loopback"
        )),
        _ => Err(format!("`{server}` is not an https:// URL")),
    }
}

fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A webhook subscription as RingCentral describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: SubscriptionId,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub event_filters: Vec<String>,
    #[serde(default)]
    pub expiration_time: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub delivery_mode: Option<DeliveryMode>,
    #[serde(default)]
    pub blacklisted_data: Option<Value>,
}

impl Subscription {
    /// Seconds until `expirationTime`, negative once past; `None` when RingCentral did not say.
    pub fn seconds_to_expiry(&self) -> Option<i64> {
        let at = self.expiration_time.as_deref()?;
        let at =
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()?;
        Some((at - time::OffsetDateTime::now_utc()).whole_seconds())
    }

    pub fn address(&self) -> Option<&str> {
        self.delivery_mode
            .as_ref()
            .and_then(|d| d.address.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryMode {
    pub transport_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_token: Option<String>,
}

/// What a new subscription asks for. `expiresIn` is at the top level: inside `deliveryMode`
/// RingCentral silently ignores it and grants about a week.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSubscription {
    pub event_filters: Vec<String>,
    pub expires_in: u64,
    pub delivery_mode: DeliveryMode,
}

impl NewSubscription {
    /// A webhook subscription to `address`. Without a token RingCentral sends none, and the bridge
    /// must have been started with `--allow-unverified-webhooks`.
    pub fn webhook(
        address: &str,
        event_filters: Vec<String>,
        expires_in: u64,
        token: Option<&Secret>,
    ) -> Self {
        NewSubscription {
            event_filters,
            expires_in,
            delivery_mode: DeliveryMode {
                transport_type: "WebHook".into(),
                address: Some(address.into()),
                verification_token: token.map(|t| t.expose().to_string()),
            },
        }
    }
}

/// A failed API call, with what to check for the codes users meet most.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach RingCentral at {server}: {message}")]
    Network { server: String, message: String },
    #[error("RingCentral answered {status}{}: {message}{}", code_suffix(.code), advice(.code))]
    Api {
        status: u16,
        code: Option<String>,
        message: String,
    },
    #[error("RingCentral's answer was not understood: {0}")]
    Decode(String),
    #[error("cannot set up the RingCentral client: {0}")]
    Setup(String),
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_ref().map(|c| format!(" {c}")).unwrap_or_default()
}

fn advice(code: &Option<String>) -> &'static str {
    match code.as_deref() {
        Some("SUB-505") => {
            " (the app has reached its limit of subscriptions for this user: \
             `subscription list`, then `subscription delete` the stale ones)"
        }
        Some("SUB-520") => {
            " (the validation handshake failed: the address must reach this bridge's /webhook \
             over public HTTPS with a valid certificate chain, and the bridge must be running)"
        }
        Some("SUB-525") => {
            " (the webhook's answer to the handshake was too large or too slow: check that \
             nothing in front of the bridge adds headers or a body, and that it answers in < 3 s)"
        }
        Some("OAU-151" | "OAU-153" | "OAU-149") => {
            " (the app credentials or the JWT are wrong or expired: check the client id, secret \
             and JWT credential)"
        }
        Some("CMN-401" | "OAU-213") => {
            " (the access token was refused: check the app's credentials)"
        }
        Some("CMN-408") => {
            " (the app lacks a permission: it needs ReadAccounts and WebhookSubscriptions)"
        }
        _ => "",
    }
}

impl ApiError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Network { .. } => "network",
            ApiError::Decode(_) => "decode",
            ApiError::Setup(_) => "setup",
            ApiError::Api { status, code, .. } => match (status, code.as_deref()) {
                (_, Some("SUB-505")) => "limit_reached",
                (_, Some("SUB-520" | "SUB-525")) => "handshake",
                (401, _) => "unauthorized",
                (403, _) => "forbidden",
                (404, _) => "not_found",
                (429, _) => "rate_limited",
                (500..=599, _) => "server",
                _ => "other",
            },
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Api { status: 404, .. })
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: u64,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    refresh_token_expires_in: u64,
}

struct Token {
    access: String,
    expires_at: Instant,
    refresh: Option<(String, Instant)>,
}

/// A RingCentral REST client for one app. Tokens are acquired on first use and renewed before they
/// expire (with the refresh token while it is valid, else a new JWT grant).
pub struct RingCentral {
    http: reqwest::Client,
    credentials: Credentials,
    /// `credentials.server`, parsed: every request URL is this plus percent-encoded segments.
    base: Url,
    token: Mutex<Option<Token>>,
}

impl fmt::Debug for RingCentral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingCentral")
            .field("server", &self.credentials.server)
            .finish_non_exhaustive()
    }
}

/// rustls needs one process-wide crypto provider; `ring` is the one compiled in.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Mozilla's root certificates, compiled in. The shipped image installs no CA certificates, and a
/// machine's own store may be missing or empty: these roots let the client reach RingCentral
/// everywhere. The machine's roots, when there are any, are trusted as well (a corporate proxy's).
fn bundled_roots() -> Result<Vec<reqwest::Certificate>, ApiError> {
    webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|der| reqwest::Certificate::from_der(der))
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::Setup(format!("bundled root certificates: {e}")))
}

impl RingCentral {
    /// A client for `credentials.server`, which must pass [`parse_server`].
    pub fn new(credentials: Credentials) -> Result<RingCentral, ApiError> {
        install_crypto_provider();
        let base = parse_server(&credentials.server).map_err(ApiError::Setup)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("rc-kafka-bridge/", env!("CARGO_PKG_VERSION")))
            .tls_certs_merge(bundled_roots()?)
            .build()
            .map_err(|e| ApiError::Setup(error_chain(&e)))?;
        Ok(RingCentral {
            http,
            credentials,
            base,
            token: Mutex::new(None),
        })
    }

    pub fn server(&self) -> &str {
        &self.credentials.server
    }

    /// The URL of an API endpoint. Each segment is percent-encoded on its own (`/`, `?`, `#`, `%`
    /// included; `.` and `..` are dropped), so no value placed in a segment can reach another
    /// endpoint.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn network(&self, e: reqwest::Error) -> ApiError {
        ApiError::Network {
            server: self.credentials.server.clone(),
            message: e.to_string(),
        }
    }

    /// A valid access token, acquired or renewed as needed.
    async fn access_token(&self) -> Result<String, ApiError> {
        let mut slot = self.token.lock().await;
        let now = Instant::now();
        if let Some(token) = slot.as_ref()
            && token.expires_at > now + TOKEN_MARGIN
        {
            return Ok(token.access.clone());
        }
        let refresh = slot
            .as_ref()
            .and_then(|t| t.refresh.clone())
            .filter(|(_, until)| *until > now + TOKEN_MARGIN)
            .map(|(token, _)| token);
        let form: Vec<(&str, &str)> = match &refresh {
            Some(refresh) => vec![("grant_type", "refresh_token"), ("refresh_token", refresh)],
            None => vec![
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", self.credentials.jwt.expose()),
            ],
        };
        let response = self
            .send_with_retries(|| {
                self.http
                    .post(self.url(&["restapi", "oauth", "token"]))
                    .basic_auth(
                        &self.credentials.client_id,
                        Some(self.credentials.client_secret.expose()),
                    )
                    .form(&form)
            })
            .await?;
        let token: TokenResponse = decode(response).await?;
        tracing::debug!(
            grant = if refresh.is_some() {
                "refresh_token"
            } else {
                "jwt"
            },
            expires_in = token.expires_in,
            "RingCentral access token acquired"
        );
        let issued = Instant::now();
        let access = token.access_token.clone();
        *slot = Some(Token {
            access: token.access_token,
            expires_at: issued + Duration::from_secs(token.expires_in),
            refresh: token.refresh_token.map(|r| {
                (
                    r,
                    issued + Duration::from_secs(token.refresh_token_expires_in),
                )
            }),
        });
        Ok(access)
    }

    /// Sends a request, waiting out 429 answers as `Retry-After` asks (a few times at most).
    async fn send_with_retries(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        for _ in 0..RATE_LIMIT_RETRIES {
            let response = build().send().await.map_err(|e| self.network(e))?;
            if response.status() != StatusCode::TOO_MANY_REQUESTS {
                return Ok(response);
            }
            let wait = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(60))
                .min(MAX_RETRY_AFTER);
            tracing::warn!(
                wait_seconds = wait.as_secs(),
                "RingCentral rate limit reached; waiting"
            );
            tokio::time::sleep(wait).await;
        }
        build().send().await.map_err(|e| self.network(e))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&Value>,
    ) -> Result<T, ApiError> {
        let token = self.access_token().await?;
        let url = self.url(path);
        let response = self
            .send_with_retries(|| {
                let request = self
                    .http
                    .request(method.clone(), url.clone())
                    .bearer_auth(&token);
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
        decode(response).await
    }

    pub async fn create_subscription(
        &self,
        new: &NewSubscription,
    ) -> Result<Subscription, ApiError> {
        let body = serde_json::to_value(new).map_err(|e| ApiError::Decode(e.to_string()))?;
        self.call(Method::POST, SUBSCRIPTIONS, Some(&body)).await
    }

    pub async fn list_subscriptions(&self) -> Result<Vec<Subscription>, ApiError> {
        #[derive(Deserialize)]
        struct Records {
            records: Vec<Subscription>,
        }
        let records: Records = self.call(Method::GET, SUBSCRIPTIONS, None).await?;
        Ok(records.records)
    }

    pub async fn subscription(&self, id: &SubscriptionId) -> Result<Subscription, ApiError> {
        self.call(Method::GET, &subscription_path(id, None), None)
            .await
    }

    pub async fn renew_subscription(&self, id: &SubscriptionId) -> Result<Subscription, ApiError> {
        self.call(Method::POST, &subscription_path(id, Some("renew")), None)
            .await
    }

    pub async fn delete_subscription(&self, id: &SubscriptionId) -> Result<(), ApiError> {
        let _: Value = self
            .call(Method::DELETE, &subscription_path(id, None), None)
            .await?;
        Ok(())
    }

    /// One authorized GET of `path` (path and query, percent-encoded, e.g.
    /// `/restapi/v1.0/account/1/extension/2?x=y`), sent once and returned whatever its status: for the
    /// state fetcher, which handles rate limits, paging and errors itself. The path goes under the
    /// server's own path, and one resolving outside its `restapi/` is refused: the bearer token reaches
    /// nothing else.
    pub async fn get_once(&self, path: &str) -> Result<reqwest::Response, ApiError> {
        let (path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        let mut url = self.base.clone();
        let root = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{root}{path}"));
        url.set_query(query);
        if !url.path().starts_with(&format!("{root}/restapi/")) || url.fragment().is_some() {
            return Err(ApiError::Setup(format!("`{path}` is not a REST API path")));
        }
        let token = self.access_token().await?;
        self.http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| self.network(e))
    }

    /// Makes the next request renew the access token (with the refresh token while it is valid): a
    /// 401 means RingCentral no longer takes the one held.
    pub async fn expire_access_token(&self) {
        if let Some(token) = self.token.lock().await.as_mut() {
            token.expires_at = Instant::now();
        }
    }
}

/// `/restapi/v1.0/subscription`, as path segments.
const SUBSCRIPTIONS: &[&str] = &["restapi", "v1.0", "subscription"];

fn subscription_path<'a>(id: &'a SubscriptionId, action: Option<&'a str>) -> Vec<&'a str> {
    let mut path = SUBSCRIPTIONS.to_vec();
    path.push(id.as_str());
    path.extend(action);
    path
}

/// An error with its causes: reqwest's own message rarely says what failed underneath.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Decodes a success body (an empty one as `null`), or turns an error answer into [`ApiError`].
async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ApiError> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| ApiError::Decode(e.to_string()))?;
    if status.is_success() {
        let text: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        return serde_json::from_slice(text).map_err(|e| ApiError::Decode(e.to_string()));
    }
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    // RingCentral puts the code at the top (`errorCode`) and/or in `errors[0]`; OAuth uses `error`.
    let first = &body["errors"][0];
    let code = body["errorCode"]
        .as_str()
        .or(first["errorCode"].as_str())
        .or(body["error"].as_str())
        .map(str::to_string);
    let message = body["message"]
        .as_str()
        .or(first["message"].as_str())
        .or(body["error_description"].as_str())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error"))
        .to_string();
    Err(ApiError::Api {
        status: status.as_u16(),
        code,
        message,
    })
}

/// A fresh random verification token: 32 hex characters.
pub fn generate_token() -> Secret {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source");
    Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_to_check() {
        let limit = ApiError::Api {
            status: 400,
            code: Some("SUB-505".into()),
            message: "Subscription limit exceeded".into(),
        };
        assert_eq!(limit.kind(), "limit_reached");
        assert!(limit.to_string().contains("subscription delete"), "{limit}");
        let handshake = ApiError::Api {
            status: 400,
            code: Some("SUB-520".into()),
            message: "Validation token not returned".into(),
        };
        assert_eq!(handshake.kind(), "handshake");
        assert!(handshake.to_string().contains("certificate"), "{handshake}");
    }

    #[test]
    fn new_subscriptions_put_expires_in_at_the_top_level() {
        let new = NewSubscription::webhook(
            "https://bridge.example/webhook",
            vec!["/restapi/v1.0/account/~/extension".into()],
            MAX_EXPIRES_IN,
            Some(&Secret::new("t")),
        );
        let json = serde_json::to_value(&new).unwrap();
        assert_eq!(json["expiresIn"], MAX_EXPIRES_IN);
        assert!(json["deliveryMode"].get("expiresIn").is_none());
        assert_eq!(json["deliveryMode"]["transportType"], "WebHook");
        assert_eq!(json["deliveryMode"]["verificationToken"], "t");
    }

    #[test]
    fn subscription_ids_are_letters_digits_and_dashes() {
        for good in ["a1b2c3d4-e5f6-7890-abcd-ef1234567890", "seeded-1", "X"] {
            assert_eq!(SubscriptionId::parse(good).unwrap().as_str(), good);
        }
        let too_long = "a".repeat(MAX_SUBSCRIPTION_ID_LEN + 1);
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            "a?b",
            "a#b",
            "%2e%2e",
            "a b",
            "a.b",
            "~",
            "é",
            too_long.as_str(),
        ] {
            assert!(SubscriptionId::parse(bad).is_err(), "{bad:?}");
        }
        let answer = r#"{"id": "../renew", "status": "Active"}"#;
        assert!(
            serde_json::from_str::<Subscription>(answer).is_err(),
            "an answer with such an id is not understood"
        );
    }

    #[test]
    fn the_server_is_https_except_on_loopback() {
        for good in [
            "https://platform.ringcentral.com",
            "https://platform.devtest.ringcentral.com/",
            "https://proxy.example/ringcentral",
            "http://127.0.0.1:8080",
            "http://127.9.9.9",
            "http://localhost:1234",
            "http://LOCALHOST",
            "http://[::1]:8080",
        ] {
            assert!(parse_server(good).is_ok(), "{good}");
        }
        for bad in [
            "http://platform.ringcentral.com",
            "http://10.0.0.1",
            "http://[::2]",
            "http://localhost.example.com",
            "http://127.0.0.1.example.com",
            "ftp://platform.ringcentral.com",
            "platform.ringcentral.com",
            "https://user:pass@platform.ringcentral.com",
            "https://platform.ringcentral.com/?x=1",
            "",
        ] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
    }

    fn client(server: &str) -> RingCentral {
        RingCentral::new(Credentials {
            server: server.into(),
            client_id: "id".into(),
            client_secret: Secret::new("secret"),
            jwt: Secret::new("jwt"),
        })
        .unwrap()
    }

    #[test]
    fn every_path_segment_is_percent_encoded() {
        let rc = client("https://platform.ringcentral.com");
        let url = rc.url(&["restapi", "v1.0", "subscription", "../a/b?c#d%e"]);
        assert_eq!(
            url.as_str(),
            "https://platform.ringcentral.com/restapi/v1.0/subscription/..%2Fa%2Fb%3Fc%23d%25e"
        );
        assert_eq!(
            rc.url(&["restapi", "v1.0", "subscription", "..", "renew"])
                .as_str(),
            "https://platform.ringcentral.com/restapi/v1.0/subscription/renew",
            "a `..` segment is dropped, never followed"
        );
        let id = SubscriptionId::parse("abc-1").unwrap();
        assert_eq!(
            rc.url(&subscription_path(&id, Some("renew"))).as_str(),
            "https://platform.ringcentral.com/restapi/v1.0/subscription/abc-1/renew"
        );
        // A server with a path (a proxy) keeps it.
        let proxied = client("https://proxy.example/rc/");
        assert_eq!(
            proxied.url(&["restapi", "oauth", "token"]).as_str(),
            "https://proxy.example/rc/restapi/oauth/token"
        );
    }

    #[test]
    fn a_plain_http_server_off_loopback_is_an_error_not_a_panic() {
        let err = RingCentral::new(Credentials {
            server: "http://platform.ringcentral.com".into(),
            client_id: "id".into(),
            client_secret: Secret::new("secret"),
            jwt: Secret::new("jwt"),
        })
        .unwrap_err();
        assert_eq!(err.kind(), "setup");
        assert!(err.to_string().contains("https://"), "{err}");
    }

    #[test]
    fn generated_tokens_are_random_hex() {
        let a = generate_token();
        let b = generate_token();
        assert_eq!(a.expose().len(), 32);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
