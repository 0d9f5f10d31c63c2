//! The delivery stage around the channels: retries transient failures with
//! exponential backoff and full jitter, dead-letters permanent failures and
//! exhausted retries, and counts every outcome. A notification is never
//! dropped silently: it is sent, dead-lettered, or (on shutdown during a
//! backoff) left undone so that its event is read again after a restart.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::channel::{file::write_atomically, Channel, ChannelError, Retry};
use super::{email, Notification};
use crate::config::{ChannelConfig, RetryPolicy};
use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    Sent {
        attempts: u32,
    },
    DeadLettered {
        attempts: u32,
        reason: String,
    },
    /// Shutdown arrived while waiting to retry: nothing was delivered and
    /// the caller must not commit the event's position.
    Interrupted,
}

impl Delivered {
    pub fn outcome(&self) -> &'static str {
        match self {
            Delivered::Sent { .. } => "sent",
            Delivered::DeadLettered { .. } => "dead_letter",
            Delivered::Interrupted => "interrupted",
        }
    }
}

struct Route {
    channel: Channel,
    retry: RetryPolicy,
}

pub struct Dispatcher {
    routes: BTreeMap<String, Route>,
    dead_letters: PathBuf,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    pub fn new(
        channels: &BTreeMap<String, ChannelConfig>,
        dead_letters: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Result<Dispatcher, String> {
        std::fs::create_dir_all(&dead_letters).map_err(|e| {
            format!(
                "cannot create the dead-letter folder {:?}: {e}",
                dead_letters.display()
            )
        })?;
        let mut routes = BTreeMap::new();
        for (name, cfg) in channels {
            let channel = Channel::build(cfg).map_err(|e| format!("channel {name:?}: {e}"))?;
            routes.insert(
                name.clone(),
                Route {
                    channel,
                    retry: cfg.retry.clone(),
                },
            );
        }
        Ok(Dispatcher {
            routes,
            dead_letters,
            metrics,
        })
    }

    pub async fn deliver(&self, n: &Notification, shutdown: &CancellationToken) -> Delivered {
        let Some(route) = self.routes.get(&n.channel) else {
            // Rules are validated against the configured channels at load,
            // so this is a broken invariant, but it still must not lose mail.
            let reason = format!("channel {:?} is not configured", n.channel);
            return self.dead_letter(n, 0, reason).await;
        };
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = route.channel.send(n).await;
            let label = match &result {
                Ok(()) => "ok",
                Err(ChannelError {
                    retry: Retry::Transient,
                    ..
                }) => "transient",
                Err(_) => "permanent",
            };
            self.metrics
                .delivery_attempts
                .with_label_values(&[&n.channel, label])
                .inc();
            match result {
                Ok(()) => {
                    self.metrics
                        .delivery_duration
                        .with_label_values(&[&n.channel])
                        .observe(started.elapsed().as_secs_f64());
                    return Delivered::Sent { attempts: attempt };
                }
                Err(e) if e.retry == Retry::Transient && attempt < route.retry.max_attempts => {
                    let wait = backoff(&route.retry, attempt);
                    tracing::warn!(
                        error_code = "delivery_retry",
                        stage = "deliver",
                        notification_id = %n.id,
                        rule = %n.rule_id,
                        channel = %n.channel,
                        attempt,
                        retry_in_ms = wait.as_millis() as u64,
                        error = %e,
                        "delivery failed, will retry"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return Delivered::Interrupted,
                    }
                }
                Err(e) => {
                    let reason = match e.retry {
                        Retry::Permanent => format!("permanent failure: {e}"),
                        Retry::Transient => format!("gave up after {attempt} attempts: {e}"),
                    };
                    return self.dead_letter(n, attempt, reason).await;
                }
            }
        }
    }

    /// Keeps the message and why it failed under `state.dir/dead-letters/`.
    async fn dead_letter(&self, n: &Notification, attempts: u32, reason: String) -> Delivered {
        tracing::error!(
            error_code = "delivery_dead_letter",
            stage = "deliver",
            notification_id = %n.id,
            rule = %n.rule_id,
            channel = %n.channel,
            attempts,
            reason = %reason,
            "notification dead-lettered"
        );
        let from: lettre::message::Mailbox = crate::config::DEFAULT_FROM
            .parse()
            .expect("the default sender is a valid mailbox");
        let meta = serde_json::json!({
            "notification_id": n.id,
            "rule": n.rule_id,
            "channel": n.channel,
            "attempts": attempts,
            "reason": reason,
            "at": jiff::Timestamp::now().to_string(),
        });
        let eml = email::build(n, &from).map(|m| m.formatted());
        let written = async {
            if let Ok(bytes) = &eml {
                write_atomically(&self.dead_letters, &format!("{}.eml", n.id), bytes).await?;
            }
            write_atomically(
                &self.dead_letters,
                &format!("{}.json", n.id),
                meta.to_string().as_bytes(),
            )
            .await
        }
        .await;
        if let Err(e) = written {
            tracing::error!(
                error_code = "dead_letter_write_failed",
                stage = "deliver",
                notification_id = %n.id,
                error = %e,
                "could not write the dead letter"
            );
        }
        Delivered::DeadLettered { attempts, reason }
    }
}

/// Exponential backoff with full jitter: uniform in [base/2, base], where
/// base = initial × 2^(attempt-1), capped at `max`.
pub fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = policy
        .initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let base = exp.min(policy.max);
    let half = base / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let b1 = backoff(&p, 1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100));
            let b3 = backoff(&p, 3);
            assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400));
            let b9 = backoff(&p, 9);
            assert!(b9 >= Duration::from_millis(500) && b9 <= Duration::from_secs(1));
        }
    }
}
