//! The admin HTTP listener: `/metrics` (Prometheus text format), `/healthz`
//! (liveness: the process answers), `/readyz` (readiness: rules loaded,
//! partitions assigned, brokers reachable; says why when it is not), and
//! the dead letters of the running daemon (`forewarn dead-letters` uses
//! these while the daemon holds the state store):
//! `GET /dead-letters`, `GET /dead-letters/{id}`,
//! `POST /dead-letters/redrive` and `POST /dead-letters/purge` with
//! `{"ids": [...]}` (empty: all).
//!
//! Customer data sits under `/api/`, behind a bearer token
//! (`admin.token_env` or `admin.token_file`; without one, `/api/` answers
//! 403): `GET /api/customers/{id}/decisions` (the decision log),
//! `POST /api/customers/{id}/forget` (GDPR erasure, through the running
//! pipeline), and `GET /api/rules/{id}/decisions` (for `forewarn report`).
//! With a token configured the dead-letter routes require it too.
//! `/metrics`, `/healthz` and `/readyz` stay open. Keep `admin.listen` on
//! loopback or an internal network all the same.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::notify::dispatcher::Dispatcher;
use crate::notify::outbox::DeadLetter;

/// What readiness is made of. Written by the source and the daemon, read here.
#[derive(Default)]
pub struct Health {
    pub rules_loaded: AtomicBool,
    pub broker_reachable: AtomicBool,
    pub assigned_partitions: AtomicUsize,
    /// The engine state of every assigned partition is restored from the store.
    pub state_restored: AtomicBool,
    /// The profiles topic is being read up to its end (decisions wait).
    pub profiles_loading: AtomicBool,
    pub broker_error: Mutex<Option<String>>,
}

impl Health {
    /// `Ok` when ready, else every reason it is not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut why = Vec::new();
        if !self.rules_loaded.load(Ordering::Relaxed) {
            why.push("rules are not loaded yet".to_string());
        }
        if !self.broker_reachable.load(Ordering::Relaxed) {
            let detail = self
                .broker_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_else(|| "no answer yet".into());
            why.push(format!("Kafka brokers are not reachable: {detail}"));
        }
        if self.assigned_partitions.load(Ordering::Relaxed) == 0 {
            why.push("no partition is assigned to this instance yet".to_string());
        } else if !self.state_restored.load(Ordering::Relaxed) {
            why.push("the state of the assigned partitions is being restored".to_string());
        }
        if self.profiles_loading.load(Ordering::Relaxed) {
            why.push("the customer profiles topic is being read up to its end".to_string());
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }

    pub fn set_broker(&self, result: Result<(), String>) {
        self.broker_reachable
            .store(result.is_ok(), Ordering::Relaxed);
        if let Ok(mut e) = self.broker_error.lock() {
            *e = result.err();
        }
    }
}

/// A request to erase a customer, served by the running pipeline (which
/// holds the engine state); the reply says what was erased.
pub type ForgetRequest = (
    String,
    tokio::sync::oneshot::Sender<Result<crate::forget::Erased, String>>,
);

/// What the admin API reaches besides metrics and health.
#[derive(Clone, Default)]
pub struct Api {
    pub dispatcher: Option<Dispatcher>,
    pub store: Option<crate::state::Store>,
    pub forget: Option<tokio::sync::mpsc::Sender<ForgetRequest>>,
    /// Bearer token for `/api/` (and the dead letters); `None`: `/api/` is off.
    pub token: Option<crate::config::Secret>,
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    dispatcher: Option<Dispatcher>,
    api: Api,
}

pub fn router(metrics: Arc<Metrics>, health: Arc<Health>, api: Api) -> Router {
    let state = AdminState {
        metrics,
        health,
        dispatcher: api.dispatcher.clone(),
        api,
    };
    let dead_letters = Router::new()
        .route("/dead-letters", get(list_dead))
        .route("/dead-letters/redrive", post(redrive))
        .route("/dead-letters/purge", post(purge))
        .route("/dead-letters/{id}", get(show_dead))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            token_if_configured,
        ));
    let customer_api = Router::new()
        .route("/api/customers/{id}/decisions", get(customer_decisions))
        .route("/api/customers/{id}/forget", post(forget_customer))
        .route("/api/rules/{id}/decisions", get(rule_decisions))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            token_required,
        ));
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(dead_letters)
        .merge(customer_api)
        .with_state(state)
}

/// Whether the request carries `Authorization: Bearer <token>`, compared
/// in constant time.
fn bearer_matches(req: &axum::extract::Request, token: &crate::config::Secret) -> bool {
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.expose().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> axum::response::Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "missing or wrong bearer token: send `Authorization: Bearer <token>` with the token from admin.token_env or admin.token_file\n",
    )
        .into_response()
}

async fn token_required(
    State(s): State<AdminState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match &s.api.token {
        None => (
            StatusCode::FORBIDDEN,
            "the customer API is off: set admin.token_env or admin.token_file in the daemon config to enable it\n",
        )
            .into_response(),
        Some(t) if bearer_matches(&req, t) => next.run(req).await,
        Some(_) => unauthorized(),
    }
}

async fn token_if_configured(
    State(s): State<AdminState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match &s.api.token {
        Some(t) if !bearer_matches(&req, t) => unauthorized(),
        _ => next.run(req).await,
    }
}

#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<usize>,
}

fn store(s: &AdminState) -> Result<&crate::state::Store, ApiError> {
    s.api.store.as_ref().ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "the state store is not open\n".to_string(),
    ))
}

/// A customer's decision log, oldest first (the newest `limit`, 1000 by default).
async fn customer_decisions(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<Limit>,
) -> Result<Json<Vec<crate::decisions::DecisionRecord>>, ApiError> {
    let store = store(&s)?.clone();
    let limit = q.limit.unwrap_or(1000);
    let records =
        tokio::task::spawn_blocking(move || crate::decisions::for_customer(&store, &id, limit))
            .await
            .map_err(internal)?
            .map_err(internal)?;
    Ok(Json(records))
}

/// Every decision of one rule (for `forewarn report`).
async fn rule_decisions(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<crate::decisions::DecisionRecord>>, ApiError> {
    let store = store(&s)?.clone();
    let records = tokio::task::spawn_blocking(move || crate::decisions::for_rule(&store, &id))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok(Json(records))
}

async fn forget_customer(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<crate::forget::Erased>, ApiError> {
    let tx = s.api.forget.as_ref().ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "the pipeline is not running\n".to_string(),
    ))?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    tx.send((id, reply))
        .await
        .map_err(|_| internal("the pipeline has stopped"))?;
    let erased = answer
        .await
        .map_err(|_| internal("the pipeline stopped before answering"))?
        .map_err(internal)?;
    Ok(Json(erased))
}

/// One line of `forewarn dead-letters list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetterSummary {
    pub id: String,
    pub rule: String,
    pub channel: String,
    pub attempts: u32,
    pub reason: String,
    /// RFC 3339.
    pub dead_at: String,
    pub subject: String,
}

impl From<&DeadLetter> for DeadLetterSummary {
    fn from(d: &DeadLetter) -> Self {
        DeadLetterSummary {
            id: d.notification.id.clone(),
            rule: d.notification.rule_id.clone(),
            channel: d.notification.channel.clone(),
            attempts: d.attempts,
            reason: d.reason.clone(),
            dead_at: crate::event::format_time(d.dead_at),
            subject: d.notification.message.subject.clone(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct IdsRequest {
    /// Empty: every dead letter.
    #[serde(default)]
    pub ids: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct IdsResponse {
    pub ids: Vec<String>,
}

type ApiError = (StatusCode, String);

fn dispatcher(s: &AdminState) -> Result<&Dispatcher, ApiError> {
    s.dispatcher.as_ref().ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "delivery is not running\n".to_string(),
    ))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
}

async fn list_dead(State(s): State<AdminState>) -> Result<Json<Vec<DeadLetterSummary>>, ApiError> {
    let d = dispatcher(&s)?;
    let all = d.outbox().dead_letters().map_err(internal)?;
    Ok(Json(all.iter().map(DeadLetterSummary::from).collect()))
}

async fn show_dead(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<DeadLetter>, ApiError> {
    let d = dispatcher(&s)?;
    d.outbox()
        .dead_letter(&id)
        .map_err(internal)?
        .map(Json)
        .ok_or((StatusCode::NOT_FOUND, format!("no dead letter {id:?}\n")))
}

async fn redrive(
    State(s): State<AdminState>,
    body: Option<Json<IdsRequest>>,
) -> Result<Json<IdsResponse>, ApiError> {
    let d = dispatcher(&s)?;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let ids = d.redrive(&req.ids).map_err(internal)?;
    tracing::info!(
        stage = "dispatch",
        count = ids.len(),
        "dead letters re-driven through the admin API"
    );
    Ok(Json(IdsResponse { ids }))
}

async fn purge(
    State(s): State<AdminState>,
    body: Option<Json<IdsRequest>>,
) -> Result<Json<IdsResponse>, ApiError> {
    let d = dispatcher(&s)?;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let ids = d.purge_dead(&req.ids).map_err(internal)?;
    tracing::info!(
        stage = "dispatch",
        count = ids.len(),
        "dead letters purged through the admin API"
    );
    Ok(Json(IdsResponse { ids }))
}

async fn metrics_handler(State(s): State<AdminState>) -> impl IntoResponse {
    s.metrics.ready.set(i64::from(s.health.readiness().is_ok()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    match s.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n- {}\n", why.join("\n- ")),
        ),
    }
}

/// Binds the listener now (so a taken port fails start-up) and serves until
/// `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    api: Api,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    let app = router(metrics, health, api);
    let handle = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error_code = "admin_server_failed", error = %e, "admin HTTP server stopped");
        }
    });
    Ok((local, handle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decisions::DecisionRecord;

    fn rec(customer: &str, at: i64) -> DecisionRecord {
        DecisionRecord {
            customer: customer.into(),
            at,
            rule: "r".into(),
            outcome: "sent".into(),
            notification_id: format!("{customer}-{at}"),
            channel: "email".into(),
            reason: None,
            fired_at: at,
            episode_start: at,
            deadline: None,
            send_at: None,
        }
    }

    async fn get(url: &str, token: Option<&str>) -> (u16, String) {
        let mut req = reqwest::Client::new().get(url);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn serve_with(token: Option<&str>) -> (String, CancellationToken, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::state::Store::open(dir.path()).unwrap();
        crate::decisions::open(&store).unwrap();
        crate::decisions::write(
            &store,
            &[
                rec("ada", 1),
                rec("ada", 2),
                rec("ada@x/1", 3),
                rec("adam", 4),
            ],
        )
        .unwrap();
        let stop = CancellationToken::new();
        let (addr, _) = serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Metrics::new()),
            Arc::new(Health::default()),
            Api {
                store: Some(store),
                token: token.map(crate::config::Secret::new),
                ..Api::default()
            },
            stop.clone(),
        )
        .await
        .unwrap();
        (format!("http://{addr}"), stop, dir)
    }

    #[tokio::test]
    async fn the_customer_api_needs_the_token_and_returns_only_that_customer() {
        let (url, stop, _dir) = serve_with(Some("s3cret")).await;
        let decisions = format!("{url}/api/customers/ada/decisions");
        assert_eq!(get(&decisions, None).await.0, 401);
        assert_eq!(get(&decisions, Some("wrong")).await.0, 401);
        assert_eq!(get(&decisions, Some("s3cret-and-more")).await.0, 401);
        let (status, body) = get(&decisions, Some("s3cret")).await;
        assert_eq!(status, 200, "{body}");
        let records: Vec<DecisionRecord> = serde_json::from_str(&body).unwrap();
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.customer == "ada"), "{body}");
        // An id with reserved characters, percent-encoded.
        let (_, body) = get(
            &format!("{url}/api/customers/ada%40x%2F1/decisions"),
            Some("s3cret"),
        )
        .await;
        let records: Vec<DecisionRecord> = serde_json::from_str(&body).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].customer, "ada@x/1");
        // Health and metrics stay open.
        assert_eq!(get(&format!("{url}/healthz"), None).await.0, 200);
        assert_eq!(get(&format!("{url}/metrics"), None).await.0, 200);
        // The dead letters need the token once one is set.
        assert_eq!(get(&format!("{url}/dead-letters"), None).await.0, 401);
        stop.cancel();
    }

    #[tokio::test]
    async fn without_a_token_the_customer_api_is_off() {
        let (url, stop, _dir) = serve_with(None).await;
        let (status, body) = get(&format!("{url}/api/customers/ada/decisions"), None).await;
        assert_eq!(status, 403);
        assert!(body.contains("admin.token_env"), "{body}");
        stop.cancel();
    }
}
