//! A scripted RingCentral REST API on a loopback port, for the fetcher's tests: the token endpoint
//! grants `token-1`, `token-2`, … (or refuses them all); every GET gets the answers scripted for its
//! path and query, in order (the last one repeats), and is recorded with its `Authorization` header.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::ringcentral::{Credentials, RingCentral};
use crate::secret::Secret;

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Answer {
    pub fn new(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl ToString) -> Answer {
        self.headers.push((name, value.to_string()));
        self
    }
}

/// A GET the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Script {
    answers: HashMap<String, VecDeque<Answer>>,
    requests: Vec<Request>,
    tokens_granted: u32,
    refuse_tokens: bool,
}

type Shared = Arc<Mutex<Script>>;

pub struct FakeApi {
    pub server: String,
    script: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let script = Shared::default();
        let router = Router::new()
            .route("/restapi/oauth/token", post(token))
            .fallback(get)
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        FakeApi {
            server,
            script,
            task,
        }
    }

    /// A client of this fake.
    pub fn client(&self) -> RingCentral {
        RingCentral::new(Credentials {
            server: self.server.clone(),
            client_id: "id".into(),
            client_secret: Secret::new("secret"),
            jwt: Secret::new("jwt"),
        })
        .unwrap()
    }

    /// Scripts the next answer to a GET of `path` (path and query).
    pub fn answer(&self, path: &str, answer: Answer) {
        let mut script = self.script.lock().unwrap();
        script
            .answers
            .entry(path.to_string())
            .or_default()
            .push_back(answer);
    }

    /// Answers every token request as RingCentral answers a bad JWT.
    pub fn refuse_tokens(&self) {
        self.script.lock().unwrap().refuse_tokens = true;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.script.lock().unwrap().requests.clone()
    }

    pub fn paths(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.path).collect()
    }

    pub fn tokens_granted(&self) -> u32 {
        self.script.lock().unwrap().tokens_granted
    }
}

async fn token(State(script): State<Shared>) -> Response {
    let mut script = script.lock().unwrap();
    if script.refuse_tokens {
        let body = serde_json::json!({"error": "invalid_grant", "errorCode": "OAU-151"});
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    script.tokens_granted += 1;
    let body = serde_json::json!({
        "access_token": format!("token-{}", script.tokens_granted),
        "expires_in": 3600,
        "refresh_token": "refresh",
        "refresh_token_expires_in": 86400,
    });
    axum::Json(body).into_response()
}

async fn get(State(script): State<Shared>, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string());
    let mut script = script.lock().unwrap();
    script.requests.push(Request {
        path: path.clone(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    let Some(answers) = script.answers.get_mut(&path) else {
        return (
            StatusCode::IM_A_TEAPOT,
            format!("no answer scripted for {path}"),
        )
            .into_response();
    };
    let answer = if answers.len() > 1 {
        answers.pop_front()
    } else {
        answers.front().cloned()
    };
    let Some(answer) = answer else {
        return StatusCode::IM_A_TEAPOT.into_response();
    };
    let mut response = (StatusCode::from_u16(answer.status).unwrap(), answer.body).into_response();
    for (name, value) in answer.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}
