//! The dispatcher: takes decided notifications into the durable outbox,
//! then delivers them with one worker per channel.
//!
//! Each worker applies the channel's concurrency limit (a semaphore) and
//! rate limit (a token bucket, governor), hands due notifications to the
//! channel, and settles the result in the outbox: sent; retried later with
//! exponential backoff and full jitter (or the server's `Retry-After`) on
//! transient failures; dead-lettered on permanent failures or once
//! `max_attempts` or `max_age` is reached. Nothing is dropped silently.
//!
//! The send-time guard (SPEC 2, absence point 6): the engine reports the
//! notifications an `until`/`cancel_on` event resolved; [`Dispatcher::resolve`]
//! takes those still waiting out of the outbox (outcome `resolved`). A
//! notification already handed to its channel is past the guard.
//!
//! On shutdown, workers stop taking notifications, sends in flight finish
//! (bounded by the channel timeout), and what is still pending stays in the
//! outbox for the next start.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::channel::{Channel, ChannelError, Retry};
use super::outbox::{DeadLetter, Enqueued, Outbox, Pending, Settle};
use super::Notification;
use crate::config::{ChannelConfig, RateLimit, RetryPolicy};
use crate::event::Millis;
use crate::metrics::Metrics;
use crate::state::StoreError;

/// A final outcome, reported to whoever needs to know (the engine drops
/// its send-time guard entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub id: String,
    pub outcome: &'static str,
}

/// The in-memory view of the pending part of the outbox.
#[derive(Default)]
struct Queue {
    entries: HashMap<String, Pending>,
    /// Per channel: (due time, id) of entries not in flight.
    due: HashMap<String, BTreeSet<(Millis, String)>>,
    in_flight: HashSet<String>,
}

impl Queue {
    fn put(&mut self, p: Pending) {
        self.due
            .entry(p.notification.channel.clone())
            .or_default()
            .insert((p.next_at, p.notification.id.clone()));
        self.entries.insert(p.notification.id.clone(), p);
    }

    fn pending_on(&self, channel: &str) -> usize {
        self.due.get(channel).map_or(0, BTreeSet::len)
    }
}

struct Route {
    channel: Channel,
    retry: RetryPolicy,
    concurrency: usize,
    limiter: Option<DefaultDirectRateLimiter>,
    wake: Notify,
}

/// A last look before a notification goes to its channel: `Some(reason)`
/// withdraws it (the customer's consent, read from their profile now).
pub type SendCheck = Arc<dyn Fn(&Notification) -> Option<String> + Send + Sync>;

struct Shared {
    send_check: std::sync::OnceLock<SendCheck>,
    outbox: Outbox,
    routes: BTreeMap<String, Route>,
    queue: Mutex<Queue>,
    metrics: Arc<Metrics>,
    settled: mpsc::UnboundedSender<Settled>,
}

/// A handle to the running dispatcher; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

fn limiter(r: &RateLimit) -> Option<DefaultDirectRateLimiter> {
    let period = r.per / r.count;
    let quota = Quota::with_period(period.max(Duration::from_nanos(1)))?
        .allow_burst(NonZeroU32::new(r.count).unwrap_or(NonZeroU32::MIN));
    Some(RateLimiter::direct(quota))
}

impl Dispatcher {
    /// Builds the channels, reads the pending outbox back, and starts one
    /// worker per channel. The returned receiver reports final outcomes.
    pub fn start(
        channels: &BTreeMap<String, ChannelConfig>,
        outbox: Outbox,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<(Dispatcher, mpsc::UnboundedReceiver<Settled>, JoinSet<()>), String> {
        let mut routes = BTreeMap::new();
        for (name, cfg) in channels {
            let channel = Channel::build(cfg).map_err(|e| format!("channel {name:?}: {e}"))?;
            routes.insert(
                name.clone(),
                Route {
                    channel,
                    retry: cfg.retry.clone(),
                    concurrency: cfg.concurrency,
                    limiter: cfg.rate_limit.as_ref().and_then(limiter),
                    wake: Notify::new(),
                },
            );
        }
        let mut queue = Queue::default();
        for p in outbox.pending().map_err(|e| e.to_string())? {
            queue.put(p);
        }
        let dead = outbox.dead_count().map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            send_check: std::sync::OnceLock::new(),
            outbox,
            routes,
            queue: Mutex::new(queue),
            metrics,
            settled: tx,
        });
        shared.metrics.dead_letters.set(dead as i64);
        let me = Dispatcher { shared };
        me.update_gauges();
        {
            let q = me.shared.queue.lock().expect("queue lock");
            let orphans: Vec<&String> = q
                .due
                .keys()
                .filter(|c| !me.shared.routes.contains_key(*c))
                .collect();
            if !orphans.is_empty() {
                tracing::warn!(error_code = "outbox_unknown_channel", stage = "dispatch", channels = ?orphans, "the outbox holds notifications for channels no longer configured; they wait until the channel is configured again");
            }
            let resumed = q.entries.len();
            if resumed > 0 {
                tracing::info!(
                    pending = resumed,
                    "resuming notifications left in the outbox"
                );
            }
        }
        let mut workers = JoinSet::new();
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        for name in me.shared.routes.keys() {
            workers.spawn(worker(
                me.clone(),
                name.clone(),
                settle_tx.clone(),
                shutdown.clone(),
            ));
        }
        // Ends once the workers (the senders) are gone and all is written.
        drop(settle_tx);
        workers.spawn(settler(me.clone(), settle_rx));
        Ok((me, rx, workers))
    }

    /// Writes decided notifications to the outbox (one transaction) and
    /// wakes their workers. Once this returns, they survive a crash.
    pub fn enqueue(&self, batch: Vec<Notification>) -> Result<Vec<(String, Enqueued)>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let results = self
            .shared
            .outbox
            .enqueue(batch, crate::event::now_millis())?;
        Ok(self.hand_over(results))
    }

    /// Queues notifications the caller has just committed to the outbox
    /// (see [`Outbox::enqueue_in`]) and wakes their workers.
    pub fn hand_over(&self, results: Vec<(Enqueued, Pending)>) -> Vec<(String, Enqueued)> {
        let mut out = Vec::with_capacity(results.len());
        let mut wake = BTreeSet::new();
        {
            let mut q = self.shared.queue.lock().expect("queue lock");
            for (how, p) in results {
                out.push((p.notification.id.clone(), how));
                if how == Enqueued::Queued {
                    wake.insert(p.notification.channel.clone());
                    q.put(p);
                }
            }
        }
        for c in wake {
            if let Some(r) = self.shared.routes.get(&c) {
                r.wake.notify_one();
            }
        }
        self.update_gauges();
        out
    }

    /// The send-time guard: drops the given notifications if they are
    /// still waiting (not yet handed to their channel), with outcome
    /// `resolved`. Returns the ids dropped.
    pub fn resolve(&self, ids: &[String]) -> Vec<String> {
        let mut taken = Vec::new();
        {
            let mut q = self.shared.queue.lock().expect("queue lock");
            for id in ids {
                if q.in_flight.contains(id) {
                    continue;
                }
                if let Some(p) = q.entries.remove(id) {
                    if let Some(d) = q.due.get_mut(&p.notification.channel) {
                        d.remove(&(p.next_at, id.clone()));
                    }
                    taken.push(p);
                }
            }
        }
        if taken.is_empty() {
            return Vec::new();
        }
        let now = crate::event::now_millis();
        let batch: Vec<(String, Settle)> = taken
            .iter()
            .map(|p| (p.notification.id.clone(), Settle::Resolved))
            .collect();
        let records: Vec<_> = taken
            .iter()
            .map(|p| {
                crate::pipeline::delivery_record(
                    &p.notification,
                    "resolved",
                    now,
                    Some("an until or cancel_on event arrived before it was sent".into()),
                )
            })
            .collect();
        if let Err(e) = self.shared.outbox.settle_with(&batch, &records, now) {
            // Still dropped from the queue: at worst a restart re-reads it
            // and sends what the customer has already resolved.
            tracing::error!(error_code = "outbox_write_failed", stage = "dispatch", error = %e, "could not record resolved notifications");
        }
        // The gauges first: a scrape that sees the `resolved` count must
        // not see the notification still pending.
        self.update_gauges();
        for p in &taken {
            self.report(&p.notification, "resolved");
            tracing::info!(stage = "dispatch", rule = %p.notification.rule_id, notification_id = %p.notification.id, "resolved before sending (send-time guard): not sent");
        }
        taken.into_iter().map(|p| p.notification.id).collect()
    }

    /// Installs the send-time check (once; later calls are ignored).
    pub fn set_send_check(&self, check: SendCheck) {
        let _ = self.shared.send_check.set(check);
    }

    /// Drops notifications from the queue without sending or recording
    /// them (their outbox entries are already deleted: `forget`). One
    /// already handed to its channel cannot be called back.
    pub fn drop_queued(&self, ids: &[String]) {
        {
            let mut q = self.shared.queue.lock().expect("queue lock");
            for id in ids {
                if let Some(p) = q.entries.remove(id) {
                    if let Some(d) = q.due.get_mut(&p.notification.channel) {
                        d.remove(&(p.next_at, id.clone()));
                    }
                }
            }
        }
        self.refresh_dead_gauge();
        self.update_gauges();
    }

    /// Dead letters back to pending (`ids` empty: all); wakes the workers.
    pub fn redrive(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let moved = self
            .shared
            .outbox
            .redrive(ids, crate::event::now_millis())?;
        let mut out = Vec::new();
        {
            let mut q = self.shared.queue.lock().expect("queue lock");
            for p in moved {
                out.push(p.notification.id.clone());
                q.put(p);
            }
        }
        for r in self.shared.routes.values() {
            r.wake.notify_one();
        }
        self.refresh_dead_gauge();
        self.update_gauges();
        Ok(out)
    }

    /// Deletes dead letters for good (`ids` empty: all). Returns the ids.
    pub fn purge_dead(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let gone = self.shared.outbox.purge_dead(ids)?;
        self.refresh_dead_gauge();
        Ok(gone)
    }

    pub fn outbox(&self) -> &Outbox {
        &self.shared.outbox
    }

    fn refresh_dead_gauge(&self) {
        if let Ok(n) = self.shared.outbox.dead_count() {
            self.shared.metrics.dead_letters.set(n as i64);
        }
    }

    /// Notifications waiting (not in flight), over all channels.
    pub fn pending(&self) -> usize {
        let q = self.shared.queue.lock().expect("queue lock");
        q.due.values().map(BTreeSet::len).sum()
    }

    fn update_gauges(&self) {
        let q = self.shared.queue.lock().expect("queue lock");
        for name in self.shared.routes.keys() {
            self.shared
                .metrics
                .outbox_pending
                .with_label_values(&[name])
                .set(q.pending_on(name) as i64);
        }
    }

    fn report(&self, n: &Notification, outcome: &'static str) {
        self.shared
            .metrics
            .notifications
            .with_label_values(&[&n.rule_id, &n.channel, outcome])
            .inc();
        let _ = self.shared.settled.send(Settled {
            id: n.id.clone(),
            outcome,
        });
    }

    /// Takes the next due notification of `channel` and marks it in
    /// flight, or says how long until the next one is due.
    fn take_due(&self, channel: &str) -> Result<Pending, Option<Duration>> {
        let now = crate::event::now_millis();
        let mut q = self.shared.queue.lock().expect("queue lock");
        let Some(due) = q.due.get_mut(channel) else {
            return Err(None);
        };
        match due.first().cloned() {
            None => Err(None),
            Some((at, _)) if at > now => Err(Some(Duration::from_millis((at - now) as u64))),
            Some(key) => {
                due.remove(&key);
                q.in_flight.insert(key.1.clone());
                // Out of `entries` while in flight: `resolve` skips it, and
                // the settlement puts a retry back.
                Ok(q.entries.remove(&key.1).expect("due and entries agree"))
            }
        }
    }

    /// Puts a notification taken by `take_due` back, untouched (shutdown
    /// while waiting for the rate limiter).
    fn untake(&self, p: Pending) {
        let mut q = self.shared.queue.lock().expect("queue lock");
        q.in_flight.remove(&p.notification.id);
        q.put(p);
    }

    /// One attempt on `p`, then its settlement in the outbox and the queue.
    async fn attempt(&self, route: &Route, mut p: Pending, settle_tx: &SettleTx) {
        let n = &p.notification;
        let m = &self.shared.metrics;
        if let Some(reason) = self.shared.send_check.get().and_then(|c| c(n)) {
            tracing::info!(stage = "deliver", rule = %n.rule_id, channel = %n.channel, notification_id = %n.id, "withdrawn at send time: the customer no longer consents");
            let _ = settle_tx.send((p.notification.clone(), Settle::Unsubscribed(reason)));
            return;
        }
        let result = route.channel.send(n).await;
        let label = match &result {
            Ok(()) => "ok",
            Err(ChannelError {
                retry: Retry::Transient,
                ..
            }) => "transient",
            Err(_) => "permanent",
        };
        m.delivery_attempts
            .with_label_values(&[&n.channel, label])
            .inc();
        p.attempts += 1;
        let now = crate::event::now_millis();
        let settle = match result {
            Ok(()) => {
                let since = n.not_before.map_or(p.enqueued_at, |t| t.max(p.enqueued_at));
                m.delivery_duration
                    .with_label_values(&[&n.rule_id, &n.channel])
                    .observe((now - since).max(0) as f64 / 1000.0);
                if let Some(deadline) = n.episode.deadline {
                    m.detection_delay
                        .with_label_values(&[&n.rule_id])
                        .observe((now - deadline).max(0) as f64 / 1000.0);
                }
                tracing::info!(stage = "deliver", rule = %n.rule_id, channel = %n.channel, notification_id = %n.id, attempts = p.attempts, "notification sent");
                Settle::Sent
            }
            Err(e) => {
                // A deferred notification ages from when it became due.
                let since = p
                    .notification
                    .not_before
                    .map_or(p.enqueued_at, |t| t.max(p.enqueued_at));
                let age = Duration::from_millis((now - since).max(0) as u64);
                let wait = e
                    .retry_after
                    .unwrap_or_else(|| backoff(&route.retry, p.attempts));
                let give_up = match e.retry {
                    Retry::Permanent => Some(format!("permanent failure: {e}")),
                    Retry::Transient if p.attempts >= route.retry.max_attempts => Some(format!(
                        "gave up after {} attempts (max_attempts): {e}",
                        p.attempts
                    )),
                    Retry::Transient if age + wait > route.retry.max_age => Some(format!(
                        "gave up after {} attempts: the next one would be past max_age ({}): {e}",
                        p.attempts,
                        humantime::format_duration(route.retry.max_age)
                    )),
                    Retry::Transient => None,
                };
                match give_up {
                    Some(reason) => {
                        tracing::error!(error_code = "delivery_dead_letter", stage = "deliver", rule = %n.rule_id, channel = %n.channel, notification_id = %n.id, attempts = p.attempts, reason = %reason, "notification dead-lettered; re-drive it with `forewarn dead-letters redrive`");
                        Settle::Dead(DeadLetter {
                            notification: n.clone(),
                            enqueued_at: p.enqueued_at,
                            attempts: p.attempts,
                            reason,
                            dead_at: now,
                        })
                    }
                    None => {
                        tracing::warn!(error_code = "delivery_retry", stage = "deliver", rule = %n.rule_id, channel = %n.channel, notification_id = %n.id, attempt = p.attempts, retry_in_ms = wait.as_millis() as u64, error = %e, "delivery failed, will retry");
                        p.next_at = now + wait.as_millis() as Millis;
                        p.last_error = Some(e.message.clone());
                        Settle::Retry(p.clone())
                    }
                }
            }
        };
        let _ = settle_tx.send((p.notification, settle));
    }

    /// Applies settled attempts to the queue and reports their outcomes,
    /// after `settler` has made them durable.
    fn apply_settled(&self, batch: Vec<(Notification, Settle)>) {
        let m = &self.shared.metrics;
        let mut retried = BTreeSet::new();
        let mut done = Vec::new();
        {
            let mut q = self.shared.queue.lock().expect("queue lock");
            for (n, settle) in batch {
                q.in_flight.remove(&n.id);
                match settle {
                    Settle::Retry(p) => {
                        retried.insert(p.notification.channel.clone());
                        q.put(p);
                    }
                    other => {
                        let outcome = match other {
                            Settle::Sent => "sent",
                            Settle::Resolved => "resolved",
                            Settle::Unsubscribed(_) => "unsubscribed",
                            _ => "dead_letter",
                        };
                        done.push((n, outcome));
                    }
                }
            }
        }
        // A worker asleep until "the next due time" must see the retry.
        for c in retried {
            if let Some(r) = self.shared.routes.get(&c) {
                r.wake.notify_one();
            }
        }
        for (n, outcome) in done {
            if outcome == "dead_letter" {
                m.dead_letters.inc();
            }
            self.report(&n, outcome);
        }
        self.update_gauges();
    }
}

/// Records attempt results in the outbox in batches: whatever has
/// arrived while the previous transaction was being written goes into the
/// next one, so a busy dispatcher pays one disk flush per batch, not per
/// message, and the flush runs off the async threads. Ends when every
/// worker has stopped and the last results are written.
async fn settler(d: Dispatcher, mut rx: mpsc::UnboundedReceiver<(Notification, Settle)>) {
    let mut buf = Vec::new();
    while rx.recv_many(&mut buf, 512).await > 0 {
        let batch = std::mem::take(&mut buf);
        let rows: Vec<(String, Settle)> = batch
            .iter()
            .map(|(n, s)| (n.id.clone(), s.clone()))
            .collect();
        let now = crate::event::now_millis();
        let records: Vec<_> = batch
            .iter()
            .filter_map(|(n, s)| {
                let (outcome, reason) = match s {
                    Settle::Sent => ("sent", None),
                    Settle::Resolved => ("resolved", None),
                    Settle::Unsubscribed(r) => ("unsubscribed", Some(r.clone())),
                    Settle::Dead(d) => ("dead_letter", Some(d.reason.clone())),
                    Settle::Retry(_) => return None,
                };
                Some(crate::pipeline::delivery_record(n, outcome, now, reason))
            })
            .collect();
        let outbox = d.shared.outbox.clone();
        let written =
            tokio::task::spawn_blocking(move || outbox.settle_with(&rows, &records, now)).await;
        match written {
            Ok(Ok(())) => {}
            // The queue still moves on; a restart re-reads the old state
            // (at worst one more attempt of an already sent message).
            Ok(Err(e)) => {
                tracing::error!(error_code = "outbox_write_failed", stage = "dispatch", error = %e, count = batch.len(), "could not record delivery results")
            }
            Err(e) => {
                tracing::error!(error_code = "outbox_write_failed", stage = "dispatch", error = %e, count = batch.len(), "recording delivery results failed")
            }
        }
        d.apply_settled(batch);
    }
}

type SettleTx = mpsc::UnboundedSender<(Notification, Settle)>;

/// One channel's loop: wait for a free slot, a due notification and a
/// rate-limit token, then attempt it in the background.
async fn worker(d: Dispatcher, name: String, settle_tx: SettleTx, shutdown: CancellationToken) {
    let route = d.shared.routes.get(&name).expect("a worker per route");
    let slots = Arc::new(Semaphore::new(route.concurrency));
    let mut sends = JoinSet::new();
    'outer: loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.cancelled() => break,
        };
        let p = loop {
            // Reap finished sends so the set does not grow.
            while sends.try_join_next().is_some() {}
            match d.take_due(&name) {
                Ok(p) => break p,
                Err(wait) => {
                    let wait = wait.unwrap_or(Duration::from_secs(3600));
                    tokio::select! {
                        _ = route.wake.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => break 'outer,
                    }
                }
            }
        };
        if let Some(l) = &route.limiter {
            tokio::select! {
                _ = l.until_ready() => {}
                _ = shutdown.cancelled() => {
                    d.untake(p);
                    break;
                }
            }
        }
        let d2 = d.clone();
        let name2 = name.clone();
        let tx = settle_tx.clone();
        sends.spawn(async move {
            let route = d2.shared.routes.get(&name2).expect("a worker per route");
            d2.attempt(route, p, &tx).await;
            drop(permit);
        });
    }
    // Sends already handed to the channel finish (bounded by its timeout).
    while sends.join_next().await.is_some() {}
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
            max_age: Duration::from_secs(3600),
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

    #[test]
    fn rate_limits_become_token_buckets() {
        let l = limiter(&RateLimit {
            count: 3,
            per: Duration::from_secs(1),
        })
        .unwrap();
        assert!((0..3).all(|_| l.check().is_ok()), "a burst of count");
        assert!(l.check().is_err(), "then it waits");
    }
}
