//! The admin HTTP listener: `/metrics` (Prometheus text format), `/healthz`
//! (liveness: the process answers) and `/readyz` (readiness: rules loaded,
//! partitions assigned, brokers reachable; says why when it is not).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What readiness is made of. Written by the source and the daemon, read here.
#[derive(Default)]
pub struct Health {
    pub rules_loaded: AtomicBool,
    pub broker_reachable: AtomicBool,
    pub assigned_partitions: AtomicUsize,
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

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState { metrics, health })
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
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    let app = router(metrics, health);
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
