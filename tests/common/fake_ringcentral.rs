//! A fake RingCentral API: OAuth (JWT bearer and refresh-token grants) and the subscription
//! endpoints, in memory. Creating a subscription performs the real validation handshake against the
//! given address and fails with SUB-520 unless the `Validation-Token` comes back. Every request is
//! recorded as it arrived (method, raw path and query), including those to endpoints it lacks,
//! which are answered 404 as RingCentral does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rc_kafka_bridge::config::{Secret, Settings};
use serde_json::{Value, json};

use super::app::http;
use super::payloads::unique;
use super::polling::eventually;

pub const CLIENT_ID: &str = "fake-client-id";
pub const CLIENT_SECRET: &str = "fake-client-secret";
pub const JWT: &str = "fake-jwt-credential";

#[derive(Default)]
pub struct FakeState {
    pub subscriptions: BTreeMap<String, Value>,
    /// Every grant type asked for, in order.
    pub grants: Vec<String>,
    pub valid_tokens: Vec<String>,
    /// Refresh tokens not used yet: each is good for one refresh grant.
    refresh_tokens: Vec<String>,
    pub token_expires_in: u64,
    /// Answer the next this many API calls with 429 and `Retry-After: 1`.
    pub rate_limit_next: usize,
    pub api_calls: usize,
    pub renewals: Vec<String>,
    pub deletions: Vec<String>,
    next: u64,
    /// Every request, as `METHOD /path?query` exactly as received (still percent-encoded).
    pub requests: Vec<String>,
    /// Extension records by id (`fake_extensions`), and how many resource GETs were answered.
    pub extensions: BTreeMap<String, Value>,
    pub state_gets: usize,
    /// Extensions whose resources the app may not read: answered 403.
    pub forbidden: std::collections::BTreeSet<String>,
    /// One resource of an extension the app may not read (extension id, the resource's last path
    /// segment: `features`, `video-configuration`...): answered 403 like `forbidden`.
    pub forbidden_resources: std::collections::BTreeSet<(String, &'static str)>,
    /// RingCentral's per-group rate limits, enforced on the resource GETs.
    pub limits: super::fake_extensions::RateLimits,
    /// How List Extensions pages, and how often it was asked.
    pub listing: super::fake_extensions::Listing,
    /// GETs of an extension's resources wait while a test holds this for writing (the account and
    /// the list of extensions do not).
    pub gate: Arc<tokio::sync::RwLock<()>>,
}

#[derive(Clone)]
pub struct FakeRingCentral {
    pub url: String,
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeRingCentral {
    pub async fn start() -> FakeRingCentral {
        let state = Arc::new(Mutex::new(FakeState {
            token_expires_in: 3600,
            ..Default::default()
        }));
        let app = Router::new()
            .route("/restapi/oauth/token", post(token))
            .route("/restapi/v1.0/subscription", post(create).get(list))
            .route("/restapi/v1.0/subscription/{id}", get(read).delete(delete))
            .route("/restapi/v1.0/subscription/{id}/renew", post(renew))
            .merge(super::fake_extensions::routes())
            .fallback(no_such_endpoint)
            .layer(middleware::from_fn_with_state(state.clone(), record))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeRingCentral { url, state }
    }

    /// Points `settings` at this fake, with the app's credentials.
    pub fn credentials(&self, settings: &mut Settings) {
        let rc = &mut settings.ringcentral;
        rc.server = self.url.clone();
        rc.client_id = Some(CLIENT_ID.into());
        rc.client_secret = Some(Secret::new(CLIENT_SECRET));
        rc.jwt = Some(Secret::new(JWT));
    }

    /// Adds a subscription as if created earlier.
    pub fn seed(&self, address: &str, status: &str, token: Option<&str>) -> String {
        let mut state = self.state.lock().unwrap();
        state.next += 1;
        let id = format!("seeded-{}", state.next);
        let subscription = subscription_json(
            &id,
            status,
            &json!(["/restapi/v1.0/account/37439510/extension"]),
            address,
            token,
            86_400 * 30,
        );
        state.subscriptions.insert(id.clone(), subscription);
        id
    }

    pub fn set_status(&self, id: &str, status: &str) {
        let mut state = self.state.lock().unwrap();
        let s = state.subscriptions.get_mut(id).expect("known subscription");
        s["status"] = json!(status);
        if status == "Blacklisted" {
            s["blacklistedData"] =
                json!({"blacklistedAt": now(0), "reason": "Webhook responded with 503"});
        }
    }

    /// Waits (at most 20 s) until `condition` holds on the fake's state.
    pub async fn until(&self, what: &str, condition: impl Fn(&FakeState) -> bool) {
        eventually(what, std::time::Duration::from_secs(20), async || {
            condition(&self.state.lock().unwrap())
        })
        .await;
    }

    /// The arguments every CLI call needs to reach this fake.
    pub fn cli_args(&self) -> Vec<String> {
        let app = ["--rc-server", &self.url, "--rc-client-id", CLIENT_ID];
        let secrets = ["--rc-client-secret", CLIENT_SECRET, "--rc-jwt", JWT];
        app.iter().chain(&secrets).map(|s| s.to_string()).collect()
    }
}

fn now(offset_seconds: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_seconds))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn subscription_json(
    id: &str,
    status: &str,
    filters: &Value,
    address: &str,
    token: Option<&str>,
    expires_in: i64,
) -> Value {
    let mut delivery = json!({"transportType": "WebHook", "address": address});
    if let Some(token) = token {
        delivery["verificationToken"] = json!(token);
    }
    json!({
        "id": id,
        "uri": format!("https://platform.ringcentral.com/restapi/v1.0/subscription/{id}"),
        "eventFilters": filters,
        "expirationTime": now(expires_in),
        "expiresIn": expires_in,
        "status": status,
        "creationTime": now(0),
        "deliveryMode": delivery,
    })
}

pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errorCode": code, "message": message, "errors": [{"errorCode": code, "message": message}]})),
    )
        .into_response()
}

async fn token(
    State(state): State<Arc<Mutex<FakeState>>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<BTreeMap<String, String>>,
) -> Response {
    use base64::Engine;
    let credentials = format!("{CLIENT_ID}:{CLIENT_SECRET}");
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "OAU-123", "Invalid client");
    }
    let mut state = state.lock().unwrap();
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    state.grants.push(grant.clone());
    let ok = match grant.as_str() {
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            form.get("assertion").map(String::as_str) == Some(JWT)
        }
        "refresh_token" => {
            let used = form.get("refresh_token");
            let known = state.refresh_tokens.iter().position(|t| Some(t) == used);
            known.map(|n| state.refresh_tokens.remove(n)).is_some()
        }
        _ => false,
    };
    if !ok {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "errorCode": "OAU-151", "error_description": "Invalid assertion"})),
        )
            .into_response();
    }
    state.next += 1;
    let access = format!("access-{}", state.next);
    let refresh = format!("refresh-{}", state.next);
    // Each grant is a session of its own: a second client (another replica) does not end the
    // first one's.
    state.valid_tokens.push(access.clone());
    state.refresh_tokens.push(refresh.clone());
    axum::Json(json!({
        "access_token": access,
        "token_type": "bearer",
        "expires_in": state.token_expires_in,
        "refresh_token": refresh,
        "refresh_token_expires_in": 604800,
        "scope": "ReadAccounts WebhookSubscriptions",
    }))
    .into_response()
}

async fn record(
    State(state): State<Arc<Mutex<FakeState>>>,
    request: Request,
    next: Next,
) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let line = format!("{} {target}", request.method());
    state.lock().unwrap().requests.push(line);
    next.run(request).await
}

async fn no_such_endpoint() -> Response {
    error(StatusCode::NOT_FOUND, "CMN-102", "Resource is not found")
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "CMN-102",
        "Resource for parameter [subscriptionId] is not found",
    )
}

/// RingCentral's 429: `CMN-301`, and how many seconds to wait.
pub(super) fn too_many_requests(retry_after: u64) -> Response {
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "CMN-301",
        "Request rate exceeded",
    );
    response
        .headers_mut()
        .insert("retry-after", retry_after.to_string().parse().unwrap());
    response
}

/// Checks the bearer token and the rate limit of an API call; the refusal, if any.
pub(super) fn refusal(state: &mut FakeState, headers: &HeaderMap) -> Option<Response> {
    state.api_calls += 1;
    if state.rate_limit_next > 0 {
        state.rate_limit_next -= 1;
        return Some(too_many_requests(1));
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !state.valid_tokens.iter().any(|t| t == token) {
        return Some(error(StatusCode::UNAUTHORIZED, "CMN-401", "Invalid token"));
    }
    None
}

async fn create(
    State(state): State<Arc<Mutex<FakeState>>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(r) = refusal(&mut state.lock().unwrap(), &headers) {
        return r;
    }
    let Some(expires_in) = body["expiresIn"].as_i64() else {
        return error(
            StatusCode::BAD_REQUEST,
            "CMN-101",
            "expiresIn missing at the top level",
        );
    };
    let address = body["deliveryMode"]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // The validation handshake, as RingCentral performs it.
    let validation = format!("validation-{}", unique());
    let answer = http()
        .post(&address)
        .header("Validation-Token", &validation)
        .timeout(std::time::Duration::from_secs(3))
        .send()
        .await;
    let echoed = match answer {
        Ok(r) => {
            let size: usize = r
                .headers()
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>()
                + 17;
            let ok = r.status() == 200
                && r.headers()
                    .get("validation-token")
                    .and_then(|v| v.to_str().ok())
                    == Some(validation.as_str());
            let body = r.bytes().await.map(|b| b.len()).unwrap_or(usize::MAX);
            if ok && size + body > 1024 {
                return error(StatusCode::BAD_REQUEST, "SUB-525", "Response is too large");
            }
            ok
        }
        Err(_) => false,
    };
    if !echoed {
        return error(
            StatusCode::BAD_REQUEST,
            "SUB-520",
            "WebHook responds with incorrect HTTP status or without Validation-Token header",
        );
    }
    let mut state = state.lock().unwrap();
    state.next += 1;
    let id = format!("created-{}", state.next);
    let subscription = subscription_json(
        &id,
        "Active",
        &body["eventFilters"],
        &address,
        body["deliveryMode"]["verificationToken"].as_str(),
        expires_in,
    );
    state.subscriptions.insert(id, subscription.clone());
    axum::Json(subscription).into_response()
}

async fn list(State(state): State<Arc<Mutex<FakeState>>>, headers: HeaderMap) -> Response {
    let mut state = state.lock().unwrap();
    if let Some(r) = refusal(&mut state, &headers) {
        return r;
    }
    let records: Vec<Value> = state.subscriptions.values().cloned().collect();
    axum::Json(json!({"records": records})).into_response()
}

async fn read(
    State(state): State<Arc<Mutex<FakeState>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut state = state.lock().unwrap();
    if let Some(r) = refusal(&mut state, &headers) {
        return r;
    }
    match state.subscriptions.get(&id) {
        Some(s) => axum::Json(s.clone()).into_response(),
        None => not_found(),
    }
}

async fn renew(
    State(state): State<Arc<Mutex<FakeState>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut state = state.lock().unwrap();
    if let Some(r) = refusal(&mut state, &headers) {
        return r;
    }
    state.renewals.push(id.clone());
    match state.subscriptions.get_mut(&id) {
        Some(s) => {
            let expires_in = s["expiresIn"].as_i64().unwrap_or(86_400);
            s["expirationTime"] = json!(now(expires_in));
            axum::Json(s.clone()).into_response()
        }
        None => not_found(),
    }
}

async fn delete(
    State(state): State<Arc<Mutex<FakeState>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut state = state.lock().unwrap();
    if let Some(r) = refusal(&mut state, &headers) {
        return r;
    }
    state.deletions.push(id.clone());
    match state.subscriptions.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => not_found(),
    }
}
