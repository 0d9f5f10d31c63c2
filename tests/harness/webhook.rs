//! A real HTTP server (axum, on 127.0.0.1 and a port the OS picks) that
//! plays a webhook receiver: it answers with a scripted sequence of
//! statuses (each optionally with a `Retry-After`), then with a default
//! status, and records every request it gets (headers, body, arrival time,
//! and the status it answered).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

/// One answer the receiver gives: the status, and a `Retry-After` value.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            retry_after: None,
        }
    }

    pub fn retry_after(status: u16, value: &str) -> Reply {
        Reply {
            status,
            retry_after: Some(value.to_string()),
        }
    }
}

/// One request as the receiver got it.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    /// Header names in lower case; the last value wins.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// What the receiver answered.
    pub answered: u16,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the webhook body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

struct Inner {
    script: VecDeque<Reply>,
    default: Reply,
    requests: Vec<Request>,
}

/// The receiver; stops when dropped.
pub struct WebhookReceiver {
    /// The URL to configure (`http://127.0.0.1:PORT/hook`).
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let mut s = inner.lock().expect("receiver lock");
    let reply = s.script.pop_front().unwrap_or_else(|| s.default.clone());
    s.requests.push(Request {
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        at,
        answered: reply.status,
    });
    drop(s);
    let status = StatusCode::from_u16(reply.status).expect("a valid scripted status");
    match reply.retry_after {
        Some(v) => (status, [("retry-after", v)], "scripted").into_response(),
        None => (status, "scripted").into_response(),
    }
}

impl WebhookReceiver {
    /// Answers `script` in order, then 200 to everything.
    pub async fn start(script: Vec<Reply>) -> WebhookReceiver {
        let inner = Arc::new(Mutex::new(Inner {
            script: script.into(),
            default: Reply::status(200),
            requests: Vec::new(),
        }));
        let app = Router::new()
            .route("/hook", post(handle))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the webhook receiver");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        WebhookReceiver {
            url: format!("http://{addr}/hook"),
            inner,
            stop: Some(tx),
        }
    }

    /// Replaces what the receiver answers from now on (after any script left).
    pub fn set_default(&self, reply: Reply) {
        self.inner.lock().expect("receiver lock").default = reply;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.lock().expect("receiver lock").requests.clone()
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Request> {
        super::wait_for(
            &format!("{n} requests at the webhook receiver"),
            timeout,
            || {
                let r = self.requests();
                (r.len() >= n).then_some(r)
            },
        )
        .await
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
