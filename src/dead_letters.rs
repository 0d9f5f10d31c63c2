//! How the CLI reaches forewarn's state (`forewarn dead-letters`,
//! `explain`, `forget`): with the daemon stopped, the CLI opens the state
//! store itself. While the daemon runs it holds the store's lock, so the
//! CLI goes through the daemon's admin API instead (`admin.listen`, with
//! the bearer token of `admin.token_env` / `admin.token_file` when one is
//! set), and the daemon acts at once (re-driven notifications are picked
//! up, an erased customer's state leaves the running engine).

use std::net::SocketAddr;
use std::path::Path;

use crate::admin::{DeadLetterSummary, IdsRequest, IdsResponse};
use crate::notify::outbox::{DeadLetter, Outbox};
use crate::state::{Store, StoreError};

pub enum Access {
    /// The daemon is not running: the store, directly.
    Store(Outbox),
    /// The daemon holds the store: its admin API at this base URL.
    Admin {
        url: String,
        token: Option<crate::config::Secret>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the daemon holds the state store, and its admin API at {url} did not answer: {error}; is admin.listen right?")]
    Admin { url: String, error: String },
    #[error("the daemon's admin API at {url} refused the request ({status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("no dead letter {0:?}; `forewarn dead-letters list` shows them")]
    NotFound(String),
}

impl Access {
    pub fn open(
        state_dir: &Path,
        admin: SocketAddr,
        token: Option<crate::config::Secret>,
    ) -> Result<Access, AccessError> {
        match Store::open(state_dir) {
            Ok(store) => Ok(Access::Store(Outbox::open(store)?)),
            Err(StoreError::Locked { .. }) => Ok(Access::Admin {
                url: format!("http://{admin}"),
                token,
            }),
            Err(e) => Err(e.into()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Access::Store(_) => "the state store (daemon not running)".into(),
            Access::Admin { url, .. } => format!("the running daemon at {url}"),
        }
    }

    /// A GET (no body) or POST (JSON body) to the admin API.
    pub async fn call<T: serde::de::DeserializeOwned>(
        url: &str,
        token: Option<&crate::config::Secret>,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, AccessError> {
        let client = reqwest::Client::new();
        let full = format!("{url}{path}");
        let err = |e: String| AccessError::Admin {
            url: url.to_string(),
            error: e,
        };
        let mut req = match body {
            Some(b) => client
                .post(&full)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(b).map_err(|e| err(e.to_string()))?),
            None => client.get(&full),
        };
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {}", t.expose()));
        }
        let resp = req.send().await.map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| err(e.to_string()))?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(AccessError::NotFound(
                path.rsplit('/').next().unwrap_or("").to_string(),
            ));
        }
        if status.is_client_error() {
            return Err(AccessError::Refused {
                url: url.to_string(),
                status: status.as_u16(),
                message: text.trim().to_string(),
            });
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
            Access::Admin { url, token } => {
                Self::call(url, token.as_ref(), "/dead-letters", None::<&()>).await
            }
        }
    }

    pub async fn show(&self, id: &str) -> Result<DeadLetter, AccessError> {
        match self {
            Access::Store(o) => o
                .dead_letter(id)?
                .ok_or_else(|| AccessError::NotFound(id.to_string())),
            Access::Admin { url, token } => {
                Self::call(
                    url,
                    token.as_ref(),
                    &format!("/dead-letters/{id}"),
                    None::<&()>,
                )
                .await
            }
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
            Access::Admin { url, token } => {
                let r: IdsResponse = Self::call(
                    url,
                    token.as_ref(),
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
            Access::Admin { url, token } => {
                let r: IdsResponse = Self::call(
                    url,
                    token.as_ref(),
                    "/dead-letters/purge",
                    Some(&IdsRequest { ids: ids.to_vec() }),
                )
                .await?;
                Ok(r.ids)
            }
        }
    }

    /// A customer's decision log, oldest first (the newest `limit`).
    pub async fn decisions(
        &self,
        customer: &str,
        limit: usize,
    ) -> Result<Vec<crate::decisions::DecisionRecord>, AccessError> {
        match self {
            Access::Store(o) => {
                crate::decisions::open(o.store())?;
                Ok(crate::decisions::for_customer(o.store(), customer, limit)?)
            }
            Access::Admin { url, token } => {
                let path = format!(
                    "/api/customers/{}/decisions?limit={limit}",
                    path_segment(customer)
                );
                Self::call(url, token.as_ref(), &path, None::<&()>).await
            }
        }
    }

    /// Erases a customer. `offline` does it in the store when the daemon
    /// is stopped (it needs the rules to read the engine state).
    pub async fn forget(
        &self,
        customer: &str,
        offline: impl FnOnce(&Store) -> Result<crate::forget::Erased, StoreError>,
    ) -> Result<crate::forget::Erased, AccessError> {
        match self {
            Access::Store(o) => Ok(offline(o.store())?),
            Access::Admin { url, token } => {
                let path = format!("/api/customers/{}/forget", path_segment(customer));
                Self::call(url, token.as_ref(), &path, Some(&())).await
            }
        }
    }
}

/// Percent-encodes an id (customer, rule) for a URL path segment.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
