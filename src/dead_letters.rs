//! `forewarn dead-letters`: list, show, re-drive and purge dead letters.
//!
//! With the daemon stopped, the CLI opens the state store itself. While the
//! daemon runs it holds the store's lock, so the CLI goes through the
//! daemon's admin API instead (`admin.listen`), and the daemon's workers
//! pick re-driven notifications up at once.

use std::net::SocketAddr;
use std::path::Path;

use crate::admin::{DeadLetterSummary, IdsRequest, IdsResponse};
use crate::notify::outbox::{DeadLetter, Outbox};
use crate::state::{Store, StoreError};

pub enum Access {
    /// The daemon is not running: the store, directly.
    Store(Outbox),
    /// The daemon holds the store: its admin API at this base URL.
    Admin(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the daemon holds the state store, and its admin API at {url} did not answer: {error}; is admin.listen right?")]
    Admin { url: String, error: String },
    #[error("no dead letter {0:?}; `forewarn dead-letters list` shows them")]
    NotFound(String),
}

impl Access {
    pub fn open(state_dir: &Path, admin: SocketAddr) -> Result<Access, AccessError> {
        match Store::open(state_dir) {
            Ok(store) => Ok(Access::Store(Outbox::open(store)?)),
            Err(StoreError::Locked { .. }) => Ok(Access::Admin(format!("http://{admin}"))),
            Err(e) => Err(e.into()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Access::Store(_) => "the state store (daemon not running)".into(),
            Access::Admin(url) => format!("the running daemon at {url}"),
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        url: &str,
        path: &str,
        body: Option<&IdsRequest>,
    ) -> Result<T, AccessError> {
        let client = reqwest::Client::new();
        let full = format!("{url}{path}");
        let err = |e: String| AccessError::Admin {
            url: url.to_string(),
            error: e,
        };
        let req = match body {
            Some(b) => client
                .post(&full)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(b).expect("ids serialize")),
            None => client.get(&full),
        };
        let resp = req.send().await.map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| err(e.to_string()))?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(AccessError::NotFound(
                path.rsplit('/').next().unwrap_or("").to_string(),
            ));
        }
        if !status.is_success() {
            return Err(err(format!("{status}: {}", text.trim())));
        }
        serde_json::from_str(&text).map_err(|e| err(format!("unexpected answer: {e}")))
    }

    pub async fn list(&self) -> Result<Vec<DeadLetterSummary>, AccessError> {
        match self {
            Access::Store(o) => Ok(o
                .dead_letters()?
                .iter()
                .map(DeadLetterSummary::from)
                .collect()),
            Access::Admin(url) => Self::call(url, "/dead-letters", None).await,
        }
    }

    pub async fn show(&self, id: &str) -> Result<DeadLetter, AccessError> {
        match self {
            Access::Store(o) => o
                .dead_letter(id)?
                .ok_or_else(|| AccessError::NotFound(id.to_string())),
            Access::Admin(url) => Self::call(url, &format!("/dead-letters/{id}"), None).await,
        }
    }

    /// `ids` empty: all of them. Returns the ids moved back to the outbox.
    pub async fn redrive(&self, ids: &[String]) -> Result<Vec<String>, AccessError> {
        match self {
            Access::Store(o) => Ok(o
                .redrive(ids, crate::event::now_millis())?
                .into_iter()
                .map(|p| p.notification.id)
                .collect()),
            Access::Admin(url) => {
                let r: IdsResponse = Self::call(
                    url,
                    "/dead-letters/redrive",
                    Some(&IdsRequest { ids: ids.to_vec() }),
                )
                .await?;
                Ok(r.ids)
            }
        }
    }

    /// `ids` empty: all of them. Returns the ids deleted.
    pub async fn purge(&self, ids: &[String]) -> Result<Vec<String>, AccessError> {
        match self {
            Access::Store(o) => Ok(o.purge_dead(ids)?),
            Access::Admin(url) => {
                let r: IdsResponse = Self::call(
                    url,
                    "/dead-letters/purge",
                    Some(&IdsRequest { ids: ids.to_vec() }),
                )
                .await?;
                Ok(r.ids)
            }
        }
    }
}
