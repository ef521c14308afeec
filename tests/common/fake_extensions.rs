//! The extension resources of the fake RingCentral, as its API reference answers them: Get Account
//! Info, Get Extension, Get User Features, Get User Video Configuration and the paged lists (phone
//! numbers, answering rules, call queues), each counted against its usage-plan group's budget with
//! RingCentral's sliding window and `X-Rate-Limit-*` headers; 429 with `Retry-After` and a penalty
//! that a request during it restarts; 404 with `CMN-102` for an extension that does not exist; 403
//! for an extension the app may not read; and the token refusals of the other endpoints.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::fake_ringcentral::{FakeState, error, refusal, too_many_requests};

type Shared = State<Arc<Mutex<FakeState>>>;
/// The `X-Rate-Limit-*` headers of one answer.
type LimitHeaders = [(&'static str, String); 4];

/// The routes, for the fake's router.
pub fn routes() -> Router<Arc<Mutex<FakeState>>> {
    let extension_path = "/restapi/v1.0/account/{account}/extension/{id}";
    Router::new()
        .route("/restapi/v1.0/account/{account}", get(account))
        .route(
            "/restapi/v1.0/account/{account}/extension",
            get(list_extensions),
        )
        .route(extension_path, get(extension))
        .route(&format!("{extension_path}/features"), get(features))
        .route(
            &format!("{extension_path}/video-configuration"),
            get(video_configuration),
        )
        .route(
            &format!("{extension_path}/phone-number"),
            get(phone_numbers),
        )
        .route(
            &format!("{extension_path}/answering-rule"),
            get(answering_rules),
        )
        .route(
            "/restapi/v1.0/account/{account}/call-queues",
            get(call_queues),
        )
}

/// How the fake pages List Extensions.
#[derive(Debug, Default)]
pub struct Listing {
    /// The largest page it serves, whatever `perPage` asks (RingCentral's is 1000).
    pub page_cap: Option<u32>,
    /// Answer this page once with 429 and `Retry-After: 1`, as a busy RingCentral does mid-list.
    pub rate_limit_page: Option<u32>,
    /// How many pages were served.
    pub pages: usize,
    /// Answer every list with 403, as RingCentral does while the user lacks ReadExtensions.
    pub forbidden: bool,
}

/// One group's budget: `limit` requests in any `window`; going over costs a `penalty`.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub limit: u32,
    pub window: Duration,
    pub penalty: Duration,
}

/// RingCentral's rate limits per group, as its developer guide describes them: a sliding window
/// per user and app, a penalty after a request over the budget, restarted by any request during it.
#[derive(Default)]
pub struct RateLimits {
    /// Budgets a test sets; the others are RingCentral's defaults.
    pub budgets: BTreeMap<&'static str, Budget>,
    /// Requests that arrived over the budget or during a penalty: what a well-behaved client never
    /// sends.
    pub over_budget: usize,
    sends: BTreeMap<&'static str, VecDeque<Instant>>,
    penalty_until: BTreeMap<&'static str, Instant>,
}

impl RateLimits {
    pub fn budget(&self, group: &'static str) -> Budget {
        let default = |limit| Budget {
            limit,
            window: Duration::from_secs(60),
            penalty: Duration::from_secs(60),
        };
        self.budgets.get(group).copied().unwrap_or(match group {
            "light" => default(50),
            "medium" => default(40),
            _ => default(10),
        })
    }

    /// Counts one request of `group`: its rate-limit headers, or the 429 that refuses it.
    fn admit(&mut self, group: &'static str) -> Result<LimitHeaders, Box<Response>> {
        let now = Instant::now();
        let budget = self.budget(group);
        let sends = self.sends.entry(group).or_default();
        while sends
            .front()
            .is_some_and(|&s| now.duration_since(s) >= budget.window)
        {
            sends.pop_front();
        }
        let penalized = self.penalty_until.get(group).is_some_and(|&u| now < u);
        if penalized || sends.len() >= budget.limit as usize {
            self.over_budget += 1;
            self.penalty_until.insert(group, now + budget.penalty);
            return Err(Box::new(too_many_requests(budget.penalty.as_secs().max(1))));
        }
        sends.push_back(now);
        Ok([
            ("x-rate-limit-group", group.to_string()),
            ("x-rate-limit-limit", budget.limit.to_string()),
            (
                "x-rate-limit-remaining",
                (budget.limit as usize - sends.len()).to_string(),
            ),
            ("x-rate-limit-window", budget.window.as_secs().to_string()),
        ])
    }
}

/// Waits while a test holds the gate closed.
async fn gate(state: &Arc<Mutex<FakeState>>) {
    let gate = state.lock().unwrap().gate.clone();
    drop(gate.read().await);
}

/// The extension's record and the rate-limit headers of `group`, or the answer that refuses the
/// request: token, budget, permission, existence, in RingCentral's order.
/// (Boxed: a refusal is a whole response.)
fn lookup(
    state: &Arc<Mutex<FakeState>>,
    headers: &HeaderMap,
    group: &'static str,
    id: &str,
    what: &'static str,
) -> Result<(Value, LimitHeaders), Box<Response>> {
    let mut state = state.lock().unwrap();
    if let Some(refused) = refusal(&mut state, headers) {
        return Err(Box::new(refused));
    }
    let limits = state.limits.admit(group)?;
    state.state_gets += 1;
    if state.forbidden.contains(id) || state.forbidden_resources.contains(&(id.to_string(), what)) {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "CMN-408",
            "In order to call this API endpoint, user needs to have [ReadExtensions] permission for requested resource.",
        )));
    }
    let record = state.extensions.get(id).cloned().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "CMN-102",
            "Resource for parameter [extensionId] is not found",
        ))
    })?;
    Ok((record, limits))
}

/// Looks `id` up after the gate and answers with what `body` makes of its record.
async fn resource(
    state: &Arc<Mutex<FakeState>>,
    headers: &HeaderMap,
    group: &'static str,
    id: &str,
    what: &'static str,
    body: impl FnOnce(Value) -> Value,
) -> Response {
    gate(state).await;
    match lookup(state, headers, group, id, what) {
        Ok((record, limits)) => {
            let mut response = axum::Json(body(record)).into_response();
            for (name, value) in limits {
                response
                    .headers_mut()
                    .insert(name, HeaderValue::from_str(&value).unwrap());
            }
            response
        }
        Err(refused) => *refused,
    }
}

async fn account(
    State(state): Shared,
    headers: HeaderMap,
    Path(account): Path<String>,
) -> Response {
    let limits = {
        let mut state = state.lock().unwrap();
        if let Some(refused) = refusal(&mut state, &headers) {
            return refused;
        }
        match state.limits.admit("light") {
            Ok(limits) => limits,
            Err(refused) => return *refused,
        }
    };
    let id = if account == "~" { "37439510" } else { &account };
    let mut response =
        axum::Json(json!({"id": id.parse::<u64>().unwrap_or(0), "status": "Confirmed", "mainNumber": "+16505550100"}))
            .into_response();
    for (name, value) in limits {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_str(&value).unwrap());
    }
    response
}

async fn extension(
    State(state): Shared,
    headers: HeaderMap,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    resource(&state, &headers, "light", &id, "extension", |record| record).await
}

async fn features(
    State(state): Shared,
    headers: HeaderMap,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    resource(
        &state,
        &headers,
        "medium",
        &id,
        "features",
        |record| json!({"records": [{"id": "SMS", "available": record["status"] == "Enabled"}]}),
    )
    .await
}

async fn video_configuration(
    State(state): Shared,
    headers: HeaderMap,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    resource(
        &state,
        &headers,
        "light",
        &id,
        "video-configuration",
        |_| json!({"provider": "RCVideo", "userLicenseType": "Paid"}),
    )
    .await
}

/// A page of `records` as RingCentral pages lists: `uri`, `records`, `paging`, `navigation`, and
/// `navigation.nextPage.uri` (absolute, on the API's host) when a page follows.
fn page(uri: &str, page: u32, pages: u32, records: Value) -> Value {
    let mut body = json!({
        "uri": format!("{uri}?page={page}&perPage=1"),
        "records": records,
        "paging": {"page": page, "perPage": 1, "totalPages": pages, "totalElements": pages},
        "navigation": {"firstPage": {"uri": format!("{uri}?page=1&perPage=1")}},
    });
    if page < pages {
        body["navigation"]["nextPage"] =
            json!({"uri": format!("https://platform.example{uri}?page={}&perPage=1", page + 1)});
    }
    body
}

fn page_number(query: &HashMap<String, String>) -> u32 {
    query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1)
}

/// Two pages of one number each.
async fn phone_numbers(
    State(state): Shared,
    headers: HeaderMap,
    Path((account, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let n = page_number(&query);
    let uri = format!("/restapi/v1.0/account/{account}/extension/{id}/phone-number");
    resource(&state, &headers, "light", &id, "phone-number", |_| {
        let number =
            json!([{"id": format!("{id}0{n}"), "phoneNumber": format!("+1650555{id}{n}")}]);
        page(&uri, n, 2, number)
    })
    .await
}

/// One page with the business-hours rule.
async fn answering_rules(
    State(state): Shared,
    headers: HeaderMap,
    Path((account, id)): Path<(String, String)>,
) -> Response {
    let uri = format!("/restapi/v1.0/account/{account}/extension/{id}/answering-rule");
    resource(&state, &headers, "medium", &id, "answering-rule", |_| {
        let rule = json!([{"id": "business-hours-rule", "type": "BusinessHours", "enabled": true}]);
        page(&uri, 1, 1, rule)
    })
    .await
}

/// The call queues `memberExtensionId` belongs to: one page with one queue.
async fn call_queues(
    State(state): Shared,
    headers: HeaderMap,
    Path(account): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(id) = query.get("memberExtensionId").cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            "CMN-101",
            "Parameter [memberExtensionId] value is invalid",
        );
    };
    let uri = format!("/restapi/v1.0/account/{account}/call-queues");
    resource(&state, &headers, "medium", &id, "call-queues", |_| {
        let queue =
            json!([{"id": "q1", "name": "Support", "extensionNumber": "200", "status": "Enabled"}]);
        page(&uri, 1, 1, queue)
    })
    .await
}

impl super::fake_ringcentral::FakeRingCentral {
    /// An enabled extension, named after its id, with fields only Get Extension Info returns too.
    pub fn add_extension(&self, id: &str) {
        let record = json!({
            "id": id.parse::<u64>().unwrap(), "extensionNumber": id, "name": format!("User {id}"),
            "status": "Enabled", "setupWizardState": "Completed",
            "regionalSettings": {"timezone": {"id": "58", "name": "US/Pacific"}},
        });
        self.state
            .lock()
            .unwrap()
            .extensions
            .insert(id.into(), record);
    }
}

/// An extension record as List Extensions returns it: the fields its `records` schema has
/// (`GetExtensionListInfoResponse`), without those only Get Extension Info returns.
fn listed(record: &Value) -> Value {
    const LIST_FIELDS: [&str; 20] = [
        "id",
        "uri",
        "contact",
        "extensionNumber",
        "name",
        "permissions",
        "profileImage",
        "partnerId",
        "references",
        "status",
        "type",
        "subType",
        "callQueueInfo",
        "hidden",
        "roles",
        "site",
        "assignedCountry",
        "costCenter",
        "creationTime",
        "alertTimer",
    ];
    let fields = LIST_FIELDS
        .iter()
        .filter_map(|field| Some((field.to_string(), record.get(*field)?.clone())));
    Value::Object(fields.collect())
}

/// List Extensions: every extension's record, in id order, paged by `perPage` (capped) and
/// `page`, in the Medium group.
async fn list_extensions(
    State(state): Shared,
    headers: HeaderMap,
    Path(account): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut state = state.lock().unwrap();
    if let Some(refused) = refusal(&mut state, &headers) {
        return refused;
    }
    if state.listing.forbidden {
        return error(
            StatusCode::FORBIDDEN,
            "CMN-408",
            "In order to call this API endpoint, user needs to have [ReadExtensions] permission for requested resource.",
        );
    }
    let n = page_number(&query);
    if state.listing.rate_limit_page == Some(n) {
        state.listing.rate_limit_page = None;
        return too_many_requests(1);
    }
    let limits = match state.limits.admit("medium") {
        Ok(limits) => limits,
        Err(refused) => return *refused,
    };
    state.listing.pages += 1;
    let asked: u32 = query
        .get("perPage")
        .and_then(|p| p.parse().ok())
        .unwrap_or(100);
    let per_page = asked.min(state.listing.page_cap.unwrap_or(1000)).max(1);
    let records: Vec<Value> = state.extensions.values().map(listed).collect();
    let pages = (records.len() as u32).div_ceil(per_page).max(1);
    let start = ((n - 1) * per_page) as usize;
    let page_records: Vec<Value> = records
        .iter()
        .skip(start)
        .take(per_page as usize)
        .cloned()
        .collect();
    let uri = format!("/restapi/v1.0/account/{account}/extension");
    let mut body = json!({
        "uri": format!("{uri}?page={n}&perPage={per_page}"),
        "records": page_records,
        "paging": {"page": n, "perPage": per_page, "totalPages": pages, "totalElements": records.len()},
        "navigation": {"firstPage": {"uri": format!("https://platform.example{uri}?page=1&perPage={per_page}")}},
    });
    if n < pages {
        body["navigation"]["nextPage"] = json!({
            "uri": format!("https://platform.example{uri}?page={}&perPage={per_page}", n + 1)
        });
    }
    let mut response = axum::Json(body).into_response();
    for (name, value) in limits {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_str(&value).unwrap());
    }
    response
}
