//! The extension resources of the fake RingCentral, as its API reference answers them: Get
//! Extension, Get User Features and the paged Get Extension Phone Number List, each with the
//! `X-Rate-Limit-*` headers of its usage-plan group, 404 with `CMN-102` for an extension that does
//! not exist, and the token and rate-limit refusals of the other endpoints.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::fake_ringcentral::{FakeState, error, refusal};

/// The routes, for the fake's router.
pub fn routes() -> Router<Arc<Mutex<FakeState>>> {
    Router::new()
        .route(
            "/restapi/v1.0/account/{account}/extension/{id}",
            get(extension),
        )
        .route(
            "/restapi/v1.0/account/{account}/extension/{id}/features",
            get(features),
        )
        .route(
            "/restapi/v1.0/account/{account}/extension/{id}/phone-number",
            get(phone_numbers),
        )
}

/// An answer of `group` (`light`, `medium`) with RingCentral's rate-limit headers.
fn answer(group: &str, limit: u32, body: Value) -> Response {
    let mut response = axum::Json(body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-rate-limit-group", group.to_string()),
        ("x-rate-limit-limit", limit.to_string()),
        ("x-rate-limit-remaining", (limit - 1).to_string()),
        ("x-rate-limit-window", "60".to_string()),
    ] {
        headers.insert(name, HeaderValue::from_str(&value).unwrap());
    }
    response
}

/// The extension's record, or the answer that refuses the request.
/// (Boxed: a refusal is a whole response.)
fn lookup(
    state: &Arc<Mutex<FakeState>>,
    headers: &HeaderMap,
    id: &str,
) -> Result<Value, Box<Response>> {
    let mut state = state.lock().unwrap();
    if let Some(refused) = refusal(&mut state, headers) {
        return Err(Box::new(refused));
    }
    state.state_gets += 1;
    state.extensions.get(id).cloned().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "CMN-102",
            "Resource for parameter [extensionId] is not found",
        ))
    })
}

async fn extension(
    State(state): State<Arc<Mutex<FakeState>>>,
    headers: HeaderMap,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    match lookup(&state, &headers, &id) {
        Ok(record) => answer("light", 50, record),
        Err(refused) => *refused,
    }
}

async fn features(
    State(state): State<Arc<Mutex<FakeState>>>,
    headers: HeaderMap,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    match lookup(&state, &headers, &id) {
        Ok(record) => answer(
            "medium",
            40,
            json!({"records": [{"id": "SMS", "available": record["status"] == "Enabled"}]}),
        ),
        Err(refused) => *refused,
    }
}

/// Two pages of one number each, linked by `navigation.nextPage.uri` as RingCentral links them.
async fn phone_numbers(
    State(state): State<Arc<Mutex<FakeState>>>,
    headers: HeaderMap,
    Path((account, id)): Path<(String, String)>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if let Err(refused) = lookup(&state, &headers, &id) {
        return *refused;
    }
    let page: u32 = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let uri = format!("/restapi/v1.0/account/{account}/extension/{id}/phone-number");
    let mut body = json!({
        "uri": format!("{uri}?page={page}&perPage=1"),
        "records": [{"id": format!("{id}0{page}"), "phoneNumber": format!("+1650555{id}{page}")}],
        "paging": {"page": page, "perPage": 1, "totalPages": 2, "totalElements": 2},
        "navigation": {"firstPage": {"uri": format!("{uri}?page=1&perPage=1")}},
    });
    if page == 1 {
        body["navigation"]["nextPage"] =
            json!({"uri": format!("https://platform.example{uri}?page=2&perPage=1")});
    }
    answer("light", 50, body)
}
