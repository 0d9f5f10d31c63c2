//! Wiring: rules, channels, admin HTTP, the Kafka source and the event
//! pipeline, under one cancellation token.
//!
//! Durable progress: events are processed in batches. A batch's engine
//! state changes, its new outbox entries and the partition positions after
//! it commit in one store transaction ([`Pipeline::flush`]), every
//! `state.commit_interval` or `state.commit_max_events` events. Only then
//! are the notifications handed to the dispatcher and the positions
//! committed to Kafka (for monitoring). A `kill -9` anywhere loses at most
//! an uncommitted batch, whose events are read again from the stored
//! positions and decide the same things (notification ids are
//! deterministic). Delivery runs beside the consumer in the dispatcher, so
//! a slow or failing channel never stalls reading.
//!
//! Partitions: on assignment, a partition's state is restored from the
//! store before any of its events is processed, and consumption starts at
//! its stored position (see `source::kafka`). On revoke, the batch is
//! committed and the partition's state dropped from memory (the store
//! keeps it for the next owner).
//!
//! Shutdown story: the token stops the consumer loop between events and
//! the dispatcher's workers; the last batch is committed; sends in flight
//! finish (bounded by the channel timeout); pending notifications and
//! waiting retries stay in the outbox for the next start; then the
//! positions are committed to Kafka synchronously and the consumer leaves
//! its group, within [`KAFKA_CLOSE_TIMEOUT`] (a hung broker must not hold
//! the exit: the store has the positions), and `run` returns.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::CommitMode;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Health};
use crate::config::Config;
use crate::engine::{Clock, Engine, Output, PartitionId};
use crate::event::{EventSchema, FieldPath, Millis};
use crate::metrics::Metrics;
use crate::notify::dispatcher::{Dispatcher, Settled};
use crate::notify::outbox::{Enqueued, Outbox};
use crate::notify::template::Templates;
use crate::notify::Notification;
use crate::pipeline::{prepare, Decide, Prepared};
use crate::rules::{load_rules, Diagnostics, LoadOptions};
use crate::source::kafka::{KafkaSource, SourceError};
use crate::state::{Store, StoreError};

/// How long shutdown waits for the final commit to Kafka and for the
/// consumer to leave its group. librdkafka sets no limit on either, and a
/// broker that holds the connection but answers nothing would hold the
/// exit past any orchestrator's grace period (then SIGKILL). Nothing
/// depends on them: the state store has the positions.
pub const KAFKA_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the rules in {dir} are invalid; nothing was started:\n{diags}")]
    Rules { dir: String, diags: Diagnostics },
    #[error("cannot set up delivery: {0}")]
    Delivery(String),
    #[error(transparent)]
    Store(#[from] crate::state::StoreError),
    #[error("the state store in {dir} has no consumer positions, but consumer group {group:?} has committed offsets (e.g. {example}): the state of a previous run is missing, so its open deadlines and sent-notification records are lost. Point state.dir at the right directory (or restore it from a backup); or, to accept the loss, start once with `forewarn run --reset-state`, which resumes from the group's committed offsets with empty state")]
    StateMissing {
        dir: String,
        group: String,
        example: String,
    },
    #[error("cannot read consumer group {group:?}'s committed offsets to check the state store against them: {error}")]
    Offsets { group: String, error: String },
    #[error("cannot listen on admin.listen = {addr}: {error}; choose a free port or stop the other process")]
    Admin {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the daemon task failed: {0}")]
    Task(String),
}

/// A started daemon. `wait` returns when it has stopped.
pub struct Daemon {
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Notify it to reload the rules (what SIGHUP does).
    pub reload: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<Result<(), DaemonError>>,
    admin: tokio::task::JoinHandle<()>,
}

/// How to start, beyond the config file.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// `--reset-state`: move a damaged store aside, and accept a state
    /// store without positions although the group has committed offsets.
    pub reset_state: bool,
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    options: StartOptions,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    Daemon::start_with(config, options, shutdown)
        .await?
        .wait()
        .await
}

impl Daemon {
    /// [`Daemon::start_with`] with default options.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Daemon, DaemonError> {
        Daemon::start_with(config, StartOptions::default(), shutdown).await
    }

    /// Loads and checks everything that can be checked without the brokers,
    /// opens the state store, binds the admin listener, then consumes in a
    /// background task. The brokers may come later: /readyz says so
    /// meanwhile.
    pub async fn start_with(
        config: Config,
        options: StartOptions,
        shutdown: CancellationToken,
    ) -> Result<Daemon, DaemonError> {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());

        let channels: BTreeSet<String> = config.channels.keys().cloned().collect();
        let loaded = load_rules(
            &config.rules_dir,
            &LoadOptions {
                channels: Some(channels),
            },
        )
        .map_err(|diags| DaemonError::Rules {
            dir: config.rules_dir.display().to_string(),
            diags,
        })?;
        metrics.rules_loaded.set(loaded.rules.len() as i64);
        health.rules_loaded.store(true, Ordering::Relaxed);
        tracing::info!(rules = loaded.rules.len(), dir = %config.rules_dir.display(), "rules loaded");

        let store = if options.reset_state {
            let (store, moved) = Store::open_or_reset(&config.state_dir)?;
            if let Some(aside) = moved {
                tracing::warn!(moved_to = %aside.display(), "--reset-state: the damaged state store was moved aside; starting with empty state (open deadlines in it are lost)");
            }
            store
        } else {
            Store::open(&config.state_dir)?
        };
        crate::state::engine::open(&store)?;
        crate::state::customers::open(&store)?;
        crate::decisions::open(&store)?;
        let mut caps = crate::policy::CapLedger::default();
        for (customer, times) in crate::state::customers::caps(&store)? {
            caps.restore(customer, times);
        }
        // Positions of the event topics only (the profiles topic has its own).
        let fresh_state = crate::state::engine::positions(&store)?
            .keys()
            .all(|(topic, _)| !config.kafka.topics.contains(topic));
        let outbox = Outbox::open(store.clone())?;
        // The dispatcher stops with the daemon, or when consuming fails.
        let delivery_stop = shutdown.child_token();
        let (dispatcher, settled, workers) = Dispatcher::start(
            &config.channels,
            outbox,
            Arc::clone(&metrics),
            delivery_stop.clone(),
        )
        .map_err(DaemonError::Delivery)?;

        // Consent is read again when a marketing message is about to go
        // out: a deferred one may wait all night, and people unsubscribe.
        {
            let store = store.clone();
            let policy = config.policy.clone();
            dispatcher.set_send_check(Arc::new(move |n: &Notification| {
                if n.class != crate::rules::Class::Marketing {
                    return None;
                }
                let profile = crate::state::customers::profile(&store, &n.customer).ok()??;
                let view = crate::policy::CustomerView {
                    id: &n.customer,
                    profile: Some(&profile),
                    event: &n.event,
                };
                (!crate::policy::consents(&policy, &view, n.class)).then(|| {
                    "the customer's profile withdrew consent to marketing messages before it was sent".to_string()
                })
            }));
        }
        let (forget_tx, forget_rx) = tokio::sync::mpsc::channel(8);
        let (admin_addr, admin) = admin::serve(
            config.admin_listen,
            Arc::clone(&metrics),
            Arc::clone(&health),
            admin::Api {
                dispatcher: Some(dispatcher.clone()),
                store: Some(store.clone()),
                forget: Some(forget_tx),
                token: config.admin_token.clone(),
            },
            shutdown.clone(),
        )
        .await
        .map_err(|error| DaemonError::Admin {
            addr: config.admin_listen,
            error,
        })?;
        tracing::info!(%admin_addr, "admin HTTP listening (/metrics, /healthz, /readyz, /dead-letters)");
        let metrics_for_task = Arc::clone(&metrics);
        let mut workers = workers;
        workers.spawn(compactor(
            dispatcher.outbox().clone(),
            Retention {
                settled: config.ledger_retention,
                dead_letters: config.dead_letter_retention,
                decisions: config.decision_log_retention,
                every: config.compact_every,
            },
            Arc::clone(&metrics),
            delivery_stop.clone(),
        ));

        let profiles_ready = config.customers.profiles_topic.clone().map(|topic| {
            let (tx, rx) = tokio::sync::watch::channel(false);
            workers.spawn(crate::source::profiles::follow(
                config.kafka.clone(),
                topic,
                store.clone(),
                Arc::clone(&health),
                Arc::clone(&metrics),
                tx,
                delivery_stop.clone(),
            ));
            rx
        });
        let pipeline = Pipeline {
            profiles_ready,
            forget_requests: Some(forget_rx),
            engine: Engine::new(
                Arc::new(loaded.rules),
                config.engine(true),
                &config.policy.retained_fields(&config.customers.email),
            ),
            templates: loaded.templates,
            policy: config.policy.clone(),
            unsubscribe_url: config.customers.unsubscribe_url.clone(),
            caps,
            dispatcher,
            settled,
            addressless: config.addressless_channels(),
            schema: config.events.clone(),
            email: config.customers.email.clone(),
            metrics: Arc::clone(&metrics),
            log_customer_ids: config.log_customer_ids,
            store,
            changelog: crate::state::engine::Changelog::new(config.snapshot_min_bytes),
            batch: Batch::default(),
            in_flight: None,
            applied: HashMap::new(),
            accepted: Vec::new(),
        };
        let check_state = fresh_state && !options.reset_state;
        let health_for_task = Arc::clone(&health);
        let reload = Arc::new(tokio::sync::Notify::new());
        let reload_for_task = Arc::clone(&reload);
        let task = tokio::spawn(async move {
            let consumed = consume(
                config,
                pipeline,
                reload_for_task,
                check_state,
                health_for_task,
                metrics_for_task,
                shutdown,
            )
            .await;
            // Sends in flight finish; pending ones stay in the outbox.
            delivery_stop.cancel();
            while workers.join_next().await.is_some() {}
            consumed
        });
        Ok(Daemon {
            admin_addr,
            metrics,
            health,
            reload,
            task,
            admin,
        })
    }

    pub async fn wait(self) -> Result<(), DaemonError> {
        let result = self
            .task
            .await
            .unwrap_or_else(|e| Err(DaemonError::Task(e.to_string())));
        // The admin server stops on the same token; a failed consumer task
        // must not leave it serving a dead daemon.
        self.admin.abort();
        // Wait for it to go, so the state store is closed when `wait`
        // returns (the admin API holds a dispatcher handle).
        let _ = self.admin.await;
        result
    }
}

async fn consume(
    config: Config,
    mut pipeline: Pipeline,
    reload: Arc<tokio::sync::Notify>,
    check_state: bool,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let source = match KafkaSource::connect(
        &config.kafka,
        Some(pipeline.store.clone()),
        Arc::clone(&health),
        Arc::clone(&metrics),
        &shutdown,
    )
    .await
    {
        Ok(s) => s,
        Err(SourceError::Cancelled) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if check_state {
        // Never a silent fresh start: empty state beside a group that has
        // made progress means the state was lost (SPEC 6).
        let group = config.kafka.group_id.clone();
        match source.committed_offsets().await {
            Ok(committed) => {
                if let Some((topic, partition, offset)) = committed.first() {
                    return Err(DaemonError::StateMissing {
                        dir: config.state_dir.display().to_string(),
                        group,
                        example: format!("{topic}/{partition} at {offset}"),
                    });
                }
            }
            Err(e) => {
                return Err(DaemonError::Offsets {
                    group,
                    error: e.to_string(),
                })
            }
        }
    }
    if let Some(mut ready) = pipeline.profiles_ready.take() {
        // Decide nothing before the profiles are read: consent lives there.
        if !*ready.borrow() {
            tracing::info!("reading the customer profiles topic before deciding");
        }
        while !*ready.borrow() {
            tokio::select! {
                changed = ready.changed() => if changed.is_err() { break },
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }
    source.subscribe()?;
    let probe = source.spawn_health_probe(
        Arc::clone(&health),
        Arc::clone(&metrics),
        Duration::from_secs(1),
        shutdown.clone(),
    );

    let idle_timeout = config.idle_timeout;
    let commit_interval = config.commit_interval;
    let commit_max_events = config.commit_max_events;
    let mut rules_watch = RulesWatch::new(&config.rules_dir);
    let mut forget_requests = pipeline
        .forget_requests
        .take()
        .expect("consume takes the forget requests once");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Wall-clock time of the last record per partition, for idleness.
    let mut last_seen: HashMap<PartitionId, Instant> = HashMap::new();
    let mut last_recv_error: Option<Instant> = None;
    // A store failure: the batch's effects are not durable, so its
    // positions are not committed and the daemon stops (its supervisor
    // restarts it, and the batch is read again).
    let mut stop: Option<DaemonError> = None;
    loop {
        let flush_at = pipeline
            .batch
            .since
            .map(|t| tokio::time::Instant::from_std(t + commit_interval));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = reload.notified() => {
                if let Err(e) = pipeline.reload(&source, &config, "signal").await {
                    stop = Some(e);
                    break;
                }
                rules_watch.accept(&config.rules_dir);
            }
            Some((customer, reply)) = forget_requests.recv() => {
                match pipeline.forget(&source, &customer).await {
                    Ok(erased) => {
                        tracing::info!(stage = "forget", "{}", if config.log_customer_ids { erased.summary() } else { "a customer was erased (forewarn forget)".to_string() });
                        let _ = reply.send(Ok(erased));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                        stop = Some(e);
                        break;
                    }
                }
            }
            landed = pipeline.commit_landed() => {
                let flight = pipeline.in_flight.take().expect("a commit was in flight");
                match landed.map_err(|e| DaemonError::Task(e.to_string())).and_then(|r| r.map_err(DaemonError::from)) {
                    Ok((queued, positions)) => pipeline.committed(&source, flight, queued, positions),
                    Err(e) => {
                        stop = Some(e);
                        break;
                    }
                }
            }
            _ = async { tokio::time::sleep_until(flush_at.expect("guarded")).await }, if flush_at.is_some() => {
                if let Err(e) = pipeline.start_commit(&source).await {
                    stop = Some(e);
                    break;
                }
            }
            _ = tick.tick() => {
                if let Err(e) = source.commit(CommitMode::Async) {
                    tracing::debug!(error = %e, "periodic commit failed; retried on the next tick");
                }
                if let Err(e) = pipeline.follow_assignment(&source, &health, &mut last_seen).await {
                    stop = Some(e);
                    break;
                }
                // A partition with nothing to read for idle_timeout follows
                // the wall clock, so deadlines fire without further events.
                let now = crate::event::now_millis();
                let mut out = Output::default();
                for (p, seen) in &last_seen {
                    if seen.elapsed() >= idle_timeout {
                        pipeline.engine.on_idle(*p, now, Clock::Wall(now), &mut out);
                    }
                }
                for s in std::iter::from_fn(|| pipeline.settled.try_recv().ok()) {
                    pipeline.engine.settle(&s.id);
                }
                // A change in the rules folder, once it has settled.
                if rules_watch.changed(&config.rules_dir) {
                    if let Err(e) = pipeline.reload(&source, &config, "rules folder changed").await {
                        stop = Some(e);
                        break;
                    }
                }
                // Cap entries of customers who went quiet leave memory and
                // the store (at the next commit), so the ledger stays bounded.
                if let Some(cap) = pipeline.policy.max_per_customer {
                    pipeline.caps.expire(now, cap.per);
                }
                pipeline.apply(out);
                if let Err(e) = pipeline.start_commit(&source).await {
                    stop = Some(e);
                    break;
                }
                pipeline.update_gauges();
            }
            received = source.recv() => {
                // A rebalance runs inside recv: commit and drop revoked
                // partitions before anything else.
                if let Err(e) = pipeline.on_revoked(&source, &mut last_seen).await {
                    stop = Some(e);
                    break;
                }
                match received {
                    Ok(msg) => {
                        let (topic, p, offset) = (msg.topic(), msg.partition(), msg.offset());
                        if !source.is_assigned(topic, p) || pipeline.already_applied(topic, p, offset) {
                            continue;
                        }
                        if !pipeline.engine.has_partition(p) {
                            if let Err(e) = pipeline.flush(&source).await {
                                stop = Some(e);
                                break;
                            }
                            if let Err(e) = pipeline.restore(p).await {
                                stop = Some(e);
                                break;
                            }
                        }
                        last_seen.insert(p, Instant::now());
                        match pipeline.handle(&source, &msg, &shutdown).await {
                            Ok(()) => {
                                pipeline.batch.record(topic, p, offset);
                                if pipeline.batch.events >= commit_max_events {
                                    if let Err(e) = pipeline.start_commit(&source).await {
                                        stop = Some(e);
                                        break;
                                    }
                                }
                            }
                            // Shutdown while copying an invalid record to
                            // the dead-letter topic: read it again next time.
                            Err(None) => break,
                            Err(Some(e)) => {
                                stop = Some(e);
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        // librdkafka reconnects by itself; log at most every 5 s.
                        if last_recv_error.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                            tracing::warn!(error_code = "kafka_consume_error", stage = "source", error = %e, "consume error; retrying");
                            last_recv_error = Some(Instant::now());
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            _ = shutdown.cancelled() => break,
                        }
                    }
                }
            }
        }
    }
    if stop.is_none() {
        tracing::info!("stopping: committing the last batch");
        if let Err(e) = pipeline.flush(&source).await {
            stop = Some(e);
        }
    }
    probe.abort();
    tracing::info!("stopping: committing positions to Kafka and leaving the group");
    let closed = source.close(KAFKA_CLOSE_TIMEOUT).await;
    match closed.commit {
        Some(Ok(n)) => tracing::info!(partitions = n, "positions committed"),
        Some(Err(e)) => {
            tracing::warn!(error_code = "kafka_commit_failed", stage = "source", error = %e, "final commit to Kafka failed; the state store has the positions, Kafka's lag figures catch up at the next start")
        }
        None => {
            tracing::warn!(error_code = "kafka_commit_timeout", stage = "source", timeout_s = KAFKA_CLOSE_TIMEOUT.as_secs(), "Kafka did not answer the final commit in time; stopping without it: the state store has the positions, Kafka's lag figures catch up at the next start")
        }
    }
    match closed.left {
        true => tracing::info!("left the consumer group"),
        false => {
            tracing::warn!(error_code = "kafka_close_timeout", stage = "source", timeout_s = KAFKA_CLOSE_TIMEOUT.as_secs(), "stopping without leaving the consumer group: the group hands this instance's partitions on after kafka session.timeout.ms")
        }
    }
    match stop {
        Some(e) => {
            tracing::error!(error_code = "state_store_failed", stage = "dispatch", error = %e, "stopping: the last batch could not be made durable; its events will be read again after a restart");
            Err(e)
        }
        None => Ok(()),
    }
}

/// Events processed since the last durable commit, and what they decided.
#[derive(Default)]
struct Batch {
    /// Decided notifications, written to the outbox at the commit.
    notifications: Vec<Notification>,
    /// Decision log entries of the batch's decisions.
    decisions: Vec<crate::decisions::DecisionRecord>,
    /// Next offset per (topic, partition) after the batch.
    positions: HashMap<(String, i32), i64>,
    events: usize,
    /// When the first event of the batch was processed.
    since: Option<Instant>,
}

impl Batch {
    fn record(&mut self, topic: &str, partition: i32, offset: i64) {
        // A few (topic, partition)s: found by a scan, without a key String
        // per event.
        match self
            .positions
            .iter_mut()
            .find(|((t, p), _)| t == topic && *p == partition)
        {
            Some((_, next)) => *next = offset + 1,
            None => {
                self.positions
                    .insert((topic.to_string(), partition), offset + 1);
            }
        }
        self.events += 1;
        self.since.get_or_insert_with(Instant::now);
    }
}

/// What a commit hands back: the outbox's verdict on each notification,
/// and the positions it made durable.
type Committed = (
    Vec<(Enqueued, crate::notify::outbox::Pending)>,
    HashMap<(String, i32), i64>,
);
type CommitResult = Result<Result<Committed, StoreError>, tokio::task::JoinError>;

/// A batch whose commit runs on a blocking thread.
struct InFlight {
    task: tokio::task::JoinHandle<Result<Committed, StoreError>>,
    /// Its notification ids, and those of them resolved (send-time guard)
    /// before the dispatcher had them.
    ids: HashSet<String>,
    resolve_after: Vec<String>,
    events: usize,
    snapshots: usize,
    started: Instant,
}

/// The position recorded for (topic, partition), found without building a
/// key (there are only a few).
fn position_of(m: &HashMap<(String, i32), i64>, topic: &str, partition: i32) -> Option<i64> {
    m.iter()
        .find(|((t, p), _)| t == topic && *p == partition)
        .map(|(_, &n)| n)
}

/// How long the store keeps what it no longer needs.
struct Retention {
    /// Settled notification ids (duplicate protection for re-read events).
    settled: Duration,
    dead_letters: Duration,
    decisions: Duration,
    every: Duration,
}

/// Enforces retention in the background: settled outbox ids and dead
/// letters past their time to live are deleted, so the store does not
/// grow without bound. (Engine ledgers expire with the watermark, and
/// their deletion is part of the regular commits.)
async fn compactor(
    outbox: Outbox,
    retention: Retention,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        let ob = outbox.clone();
        let settled = retention.settled.as_millis() as Millis;
        let dead = retention.dead_letters.as_millis() as Millis;
        let decided = retention.decisions.as_millis() as Millis;
        let result = tokio::task::spawn_blocking(move || {
            let now = crate::event::now_millis();
            Ok::<_, StoreError>((
                ob.prune_done(now - settled)?,
                ob.prune_dead(now - dead)?,
                crate::decisions::prune(ob.store(), now - decided)?,
            ))
        })
        .await;
        match result {
            Ok(Ok((done, dead, decisions))) => {
                metrics
                    .state_compacted
                    .with_label_values(&["decisions"])
                    .inc_by(decisions as u64);
                metrics
                    .state_compacted
                    .with_label_values(&["settled_ids"])
                    .inc_by(done as u64);
                metrics
                    .state_compacted
                    .with_label_values(&["dead_letters"])
                    .inc_by(dead as u64);
                if done + dead + decisions > 0 {
                    tracing::info!(
                        settled_ids = done,
                        dead_letters = dead,
                        decisions,
                        "retention: old rows deleted from the state store"
                    );
                    if let Ok(n) = outbox.dead_count() {
                        metrics.dead_letters.set(n as i64);
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error_code = "state_compaction_failed", stage = "state", error = %e, "retention could not run; retried later")
            }
            Err(e) => {
                tracing::warn!(error_code = "state_compaction_failed", stage = "state", error = %e, "retention task failed; retried later")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retention.every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Watches the rules folder by polling a fingerprint of its files (path,
/// size, modification time): no extra crate or inotify limits, and editors
/// that save by rename are seen too. A change counts once the folder has
/// looked the same for two polls in a row, so a half-copied set is not
/// loaded.
struct RulesWatch {
    active: u64,
    seen: Option<u64>,
}

impl RulesWatch {
    fn new(dir: &Path) -> RulesWatch {
        RulesWatch {
            active: fingerprint(dir),
            seen: None,
        }
    }

    /// True once when the folder changed and then stayed the same.
    fn changed(&mut self, dir: &Path) -> bool {
        let now = fingerprint(dir);
        if now == self.active {
            self.seen = None;
            return false;
        }
        if self.seen == Some(now) {
            self.active = now;
            self.seen = None;
            return true;
        }
        self.seen = Some(now);
        false
    }

    /// The folder as it is now is the active one (after a SIGHUP reload).
    fn accept(&mut self, dir: &Path) {
        self.active = fingerprint(dir);
        self.seen = None;
    }
}

fn fingerprint(dir: &Path) -> u64 {
    fn walk(dir: &Path, out: &mut Vec<(String, u64, u128)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                walk(&path, out);
            } else {
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                out.push((path.display().to_string(), meta.len(), modified));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (path, len, modified) in files {
        h.update(path.as_bytes());
        h.update(&len.to_le_bytes());
        h.update(&modified.to_le_bytes());
    }
    h.digest()
}

/// Decode → engine → prepare → batch; the batch commits to the store,
/// then the dispatcher delivers.
struct Pipeline {
    engine: Engine,
    templates: Templates,
    policy: crate::policy::PolicyConfig,
    unsubscribe_url: Option<String>,
    /// Recent marketing decisions per customer (the frequency cap).
    caps: crate::policy::CapLedger,
    /// Turns true once the profiles topic is read to its end (taken when
    /// consuming starts).
    profiles_ready: Option<tokio::sync::watch::Receiver<bool>>,
    /// GDPR erasures from the admin API (the pipeline owns the engine state).
    /// (Taken when consuming starts.)
    forget_requests: Option<tokio::sync::mpsc::Receiver<admin::ForgetRequest>>,
    dispatcher: Dispatcher,
    /// Final outcomes from the dispatcher, for the engine's send-time guard.
    settled: tokio::sync::mpsc::UnboundedReceiver<Settled>,
    /// Channels that need no email address (webhook, kafka).
    addressless: BTreeSet<String>,
    schema: EventSchema,
    email: FieldPath,
    metrics: Arc<Metrics>,
    log_customer_ids: bool,
    store: Store,
    /// Where each partition's state log stands (snapshots are due when it
    /// outgrows the last one).
    changelog: crate::state::engine::Changelog,
    batch: Batch,
    /// The batch being committed while the next one is processed.
    in_flight: Option<InFlight>,
    /// Durable next offset per (topic, partition): records before it are
    /// in the state already and are skipped should they come again.
    applied: HashMap<(String, i32), i64>,
    /// `forewarn_events_total{topic, outcome="accepted"}` per topic, found
    /// once: looking the labels up hashes them and takes a lock, on every
    /// event. A handful of topics at most, so a list.
    accepted: Vec<(String, prometheus::IntCounter)>,
}

impl Pipeline {
    /// Handles one record. `Err(None)`: shutdown interrupted it and its
    /// position must not be recorded.
    async fn handle(
        &mut self,
        source: &KafkaSource,
        msg: &OwnedMessage,
        shutdown: &CancellationToken,
    ) -> Result<(), Option<DaemonError>> {
        let topic = msg.topic();
        let engine = &self.engine;
        // Decoded before the match: the match would keep the closure's
        // reference, a temporary, across its awaits, and a `&dyn Fn` is
        // not Send.
        let decoded = self
            .schema
            .decode_lazy(msg.payload().unwrap_or_default(), &|kind| {
                engine.reads(kind)
            });
        let event = match decoded {
            Ok(e) => e,
            Err(invalid) => {
                self.metrics
                    .events
                    .with_label_values(&[topic, "invalid"])
                    .inc();
                self.metrics
                    .invalid_events
                    .with_label_values(&[invalid.reason()])
                    .inc();
                // Never the payload: it may carry addresses and other PII.
                tracing::warn!(
                    error_code = "invalid_event",
                    stage = "decode",
                    topic,
                    partition = msg.partition(),
                    offset = msg.offset(),
                    reason = invalid.reason(),
                    error = %invalid,
                    "invalid event skipped"
                );
                let written = source
                    .dead_letter(msg, &invalid.to_string(), &self.metrics, shutdown)
                    .await;
                return if written { Ok(()) } else { Err(None) };
            }
        };
        self.accepted_counter(topic).inc();
        let mut out = Output::default();
        let now = crate::event::now_millis();
        self.engine
            .on_event(msg.partition(), &event, Clock::Wall(now), &mut out);
        self.apply(out);
        Ok(())
    }

    /// The accepted-events counter of `topic`.
    fn accepted_counter(&mut self, topic: &str) -> &prometheus::IntCounter {
        let at = match self.accepted.iter().position(|(t, _)| t == topic) {
            Some(at) => at,
            None => {
                let counter = self.metrics.events.with_label_values(&[topic, "accepted"]);
                self.accepted.push((topic.to_string(), counter));
                self.accepted.len() - 1
            }
        };
        &self.accepted[at].1
    }

    /// Whether the record at `offset` is already part of the durable state.
    fn already_applied(&self, topic: &str, partition: i32, offset: i64) -> bool {
        let done = |m: &HashMap<(String, i32), i64>| {
            position_of(m, topic, partition).is_some_and(|n| offset < n)
        };
        done(&self.applied) || done(&self.batch.positions)
    }

    /// Counts what the engine reported, adds its notifications to the
    /// batch, and applies the send-time guard.
    fn apply(&mut self, out: Output) {
        let m = &self.metrics;
        if out.late_events > 0 {
            m.late_events.inc_by(out.late_events);
        }
        for rule in &out.missing_key {
            m.rule_missing_key.with_label_values(&[rule]).inc();
        }
        for err in &out.errors {
            m.rule_errors.with_label_values(&[&err.rule_id]).inc();
            tracing::warn!(error_code = "rule_eval_error", stage = "engine", rule = %err.rule_id, error = %err.message, "condition could not be evaluated; treated as not matching");
        }
        let now = crate::event::now_millis();
        for decision in &out.decisions {
            let firing = &decision.firing;
            let rule = &firing.rule;
            m.rule_firings.with_label_values(&[&rule.id]).inc();
            let channel = rule.notify.channel.as_str();
            let customer = self.log_customer_ids.then_some(firing.event.customer());
            let needs_address = !self.addressless.contains(channel);
            let profile = self.profile(decision);
            let cx = Decide {
                templates: &self.templates,
                email: &self.email,
                unsubscribe_url: self.unsubscribe_url.as_deref(),
                policy: &self.policy,
            };
            let prepared = prepare(
                decision,
                &cx,
                needs_address,
                profile.as_ref(),
                now,
                &mut self.caps,
            );
            self.batch
                .decisions
                .push(crate::pipeline::record(decision, &prepared, now));
            let outcome = match prepared {
                Prepared::Send(n) => {
                    if let Some(at) = n.not_before {
                        tracing::info!(stage = "decide", rule = %rule.id, notification_id = %firing.notification_id, customer, send_at = %crate::event::format_time(at), "quiet hours: deferred");
                        m.deferred.with_label_values(&[&rule.id]).inc();
                    }
                    self.batch.notifications.push(n);
                    continue;
                }
                Prepared::Skip { outcome, detail } => {
                    tracing::info!(stage = "decide", rule = %rule.id, notification_id = %firing.notification_id, customer, outcome, detail, "notification not sent");
                    outcome
                }
                Prepared::Shadow(_) => {
                    tracing::info!(stage = "decide", rule = %rule.id, notification_id = %firing.notification_id, customer, "shadow mode: decided, not sent");
                    "shadow"
                }
            };
            self.engine.settle(&firing.notification_id);
            m.notifications
                .with_label_values(&[&rule.id, channel, outcome])
                .inc();
        }
        if !out.resolved.is_empty() {
            // Decided in this batch: never reaches the outbox.
            let mut elsewhere: HashSet<&str> = out.resolved.iter().map(String::as_str).collect();
            let decisions = &mut self.batch.decisions;
            self.batch.notifications.retain(|n| {
                let gone = elsewhere.remove(n.id.as_str());
                if gone {
                    tracing::info!(stage = "decide", rule = %n.rule_id, notification_id = %n.id, "resolved before sending (send-time guard): not sent");
                    m.notifications
                        .with_label_values(&[&n.rule_id, &n.channel, "resolved"])
                        .inc();
                    decisions.push(crate::pipeline::delivery_record(
                        n,
                        "resolved",
                        now,
                        Some("an until or cancel_on event arrived before it was sent".into()),
                    ));
                }
                !gone
            });
            // Being committed: resolved once the dispatcher has them.
            // Committed before: the dispatcher drops those not yet sent.
            let mut committed = Vec::new();
            for id in elsewhere {
                match &mut self.in_flight {
                    Some(f) if f.ids.contains(id) => f.resolve_after.push(id.to_string()),
                    _ => committed.push(id.to_string()),
                }
            }
            if !committed.is_empty() {
                self.dispatcher.resolve(&committed);
            }
        }
    }

    /// Hot reload: loads the rules folder again; a valid set replaces the
    /// active one at a batch boundary (see [`Engine::reloaded`] for what
    /// happens to existing state), an invalid one is reported with the
    /// same diagnostics as `forewarn check` and the active set stays.
    async fn reload(
        &mut self,
        source: &KafkaSource,
        config: &Config,
        trigger: &str,
    ) -> Result<(), DaemonError> {
        let dir = config.rules_dir.clone();
        let channels: BTreeSet<String> = config.channels.keys().cloned().collect();
        let loaded = tokio::task::spawn_blocking(move || {
            load_rules(
                &dir,
                &LoadOptions {
                    channels: Some(channels),
                },
            )
        })
        .await
        .map_err(|e| DaemonError::Task(e.to_string()))?;
        let m = Arc::clone(&self.metrics);
        let loaded = match loaded {
            Ok(l) => l,
            Err(diags) => {
                m.rule_reloads.with_label_values(&["rejected"]).inc();
                tracing::error!(error_code = "rules_reload_rejected", stage = "reload", trigger, dir = %config.rules_dir.display(), "the changed rules are invalid, so the active rules stay in place; fix these and save again (or check with `forewarn check`):\n{diags}");
                return Ok(());
            }
        };
        // Everything decided under the old rules is durable first.
        self.flush(source).await?;
        let count = loaded.rules.len();
        let (engine, r) = self.engine.reloaded(Arc::new(loaded.rules));
        self.engine = engine;
        self.templates = loaded.templates;
        m.rules_loaded.set(count as i64);
        m.rule_reloads.with_label_values(&["applied"]).inc();
        tracing::info!(
            stage = "reload",
            trigger,
            rules = count,
            episodes_kept = r.episodes,
            awaiting_delivery = r.fired,
            dropped = r.dropped,
            "rules reloaded"
        );
        Ok(())
    }

    /// Erases a customer (GDPR): engine state and the cap ledger through a
    /// commit, then their stored rows, then their queued notifications.
    async fn forget(
        &mut self,
        source: &KafkaSource,
        customer: &str,
    ) -> Result<crate::forget::Erased, DaemonError> {
        let engine = self.engine.forget(customer);
        let had_caps = self.caps.forget(customer);
        self.batch.notifications.retain(|n| n.customer != customer);
        self.batch.decisions.retain(|d| d.customer != customer);
        self.flush(source).await?;
        let store = self.store.clone();
        let who = customer.to_string();
        let (mut erased, pending) = tokio::task::spawn_blocking(move || {
            let tx = store.db().begin_write()?;
            let r = crate::forget::erase_stored(&tx, &who)?;
            tx.commit()?;
            Ok::<_, StoreError>(r)
        })
        .await
        .map_err(|e| DaemonError::Task(e.to_string()))??;
        self.dispatcher.drop_queued(&pending);
        erased.engine = engine;
        erased.cap_entries |= had_caps;
        Ok(erased)
    }

    /// The customer's profile from the profiles topic, for a decision the
    /// engine let through (no store read for suppressed ones).
    fn profile(&self, decision: &crate::engine::Decision) -> Option<serde_json::Value> {
        if decision.outcome != crate::engine::Outcome::Fire {
            return None;
        }
        match crate::state::customers::profile(&self.store, decision.firing.event.customer()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error_code = "profile_read_failed", stage = "decide", error = %e, "could not read the customer's profile; deciding from the event's fields");
                None
            }
        }
    }

    /// Commits the batch and waits until it is durable (and the commit
    /// before it).
    async fn flush(&mut self, source: &KafkaSource) -> Result<(), DaemonError> {
        self.start_commit(source).await?;
        self.finish_commit(source).await
    }

    /// Starts committing the batch: engine changes, outbox entries and
    /// positions in one store transaction, on a blocking thread, while
    /// the consumer goes on with the next batch. At most one commit is in
    /// flight: the previous one is finished first, so commits land in
    /// order.
    async fn start_commit(&mut self, source: &KafkaSource) -> Result<(), DaemonError> {
        self.finish_commit(source).await?;
        let writes = self.engine.take_changes();
        let caps = self.caps.take_changes();
        let batch = std::mem::take(&mut self.batch);
        if writes.is_empty()
            && caps.is_empty()
            && batch.notifications.is_empty()
            && batch.decisions.is_empty()
            && batch.positions.is_empty()
        {
            return Ok(());
        }
        // A partition whose log has outgrown its snapshot gets a new one.
        let snapshots: Vec<(PartitionId, Vec<crate::engine::persist::Write>)> = self
            .engine
            .partitions()
            .filter(|&p| self.changelog.snapshot_due(p))
            .map(|p| (p, self.engine.snapshot(p)))
            .collect();
        let changelog = self.changelog.clone();
        let store = self.store.clone();
        let Batch {
            notifications,
            decisions,
            positions,
            events,
            ..
        } = batch;
        let ids = notifications.iter().map(|n| n.id.clone()).collect();
        let snapshot_count = snapshots.len();
        let started = Instant::now();
        let task = tokio::task::spawn_blocking(move || {
            let tx = store.db().begin_write()?;
            crate::state::engine::commit(&tx, &changelog, &writes, &snapshots)?;
            let queued = Outbox::enqueue_in(&tx, notifications, crate::event::now_millis())?;
            crate::decisions::write_in(&tx, &decisions)?;
            crate::state::customers::put_caps_in(&tx, &caps)?;
            crate::state::engine::put_positions(&tx, &positions)?;
            tx.commit()?;
            Ok::<_, StoreError>((queued, positions))
        });
        self.in_flight = Some(InFlight {
            task,
            ids,
            resolve_after: Vec::new(),
            events,
            snapshots: snapshot_count,
            started,
        });
        Ok(())
    }

    /// Waits for the commit in flight, if any; then hands its
    /// notifications to the dispatcher and its positions to Kafka.
    async fn finish_commit(&mut self, source: &KafkaSource) -> Result<(), DaemonError> {
        let Some(mut flight) = self.in_flight.take() else {
            return Ok(());
        };
        let (queued, positions) = (&mut flight.task)
            .await
            .map_err(|e| DaemonError::Task(e.to_string()))??;
        self.committed(source, flight, queued, positions);
        Ok(())
    }

    /// The commit in flight has finished (for `select!`): never resolves
    /// while there is none.
    async fn commit_landed(&mut self) -> CommitResult {
        match &mut self.in_flight {
            Some(f) => (&mut f.task).await,
            None => std::future::pending().await,
        }
    }

    fn committed(
        &mut self,
        source: &KafkaSource,
        flight: InFlight,
        queued: Vec<(Enqueued, crate::notify::outbox::Pending)>,
        positions: HashMap<(String, i32), i64>,
    ) {
        let m = &self.metrics;
        m.state_commits.inc();
        m.state_commit_duration
            .observe(flight.started.elapsed().as_secs_f64());
        m.state_commit_events.observe(flight.events as f64);
        m.state_snapshots.inc_by(flight.snapshots as u64);
        for ((topic, partition), next) in positions {
            source.mark_position(&topic, partition, next);
            self.applied.insert((topic, partition), next);
        }
        let duplicates: Vec<(String, String, String)> = queued
            .iter()
            .filter(|(how, _)| *how == Enqueued::Duplicate)
            .map(|(_, p)| {
                let n = &p.notification;
                (n.id.clone(), n.rule_id.clone(), n.channel.clone())
            })
            .collect();
        self.dispatcher.hand_over(queued);
        if !flight.resolve_after.is_empty() {
            self.dispatcher.resolve(&flight.resolve_after);
        }
        for (id, rule, channel) in duplicates {
            // Decided before (the event was read again after a restart):
            // the outbox already has it, or it was sent.
            tracing::info!(stage = "decide", rule = %rule, notification_id = %id, "already in the outbox or sent: not queued again");
            self.engine.settle(&id);
            m.notifications
                .with_label_values(&[&rule, &channel, "duplicate"])
                .inc();
        }
    }

    /// Rebuilds partition `p`'s engine state from the store.
    async fn restore(&mut self, p: PartitionId) -> Result<(), DaemonError> {
        let store = self.store.clone();
        let outbox = self.dispatcher.outbox().clone();
        let (rows, log, unsettled) = tokio::task::spawn_blocking(move || {
            let (rows, log) = crate::state::engine::load_partition(&store, p)?;
            let mut unsettled = HashSet::new();
            for id in rows.iter().filter_map(crate::engine::persist::fired_id) {
                if outbox.is_pending(id)? {
                    unsettled.insert(id.to_string());
                }
            }
            Ok::<_, StoreError>((rows, log, unsettled))
        })
        .await
        .map_err(|e| DaemonError::Task(e.to_string()))??;
        self.changelog.set(p, log);
        let r = self.engine.restore(p, &rows, &|id| unsettled.contains(id));
        let m = &self.metrics.state_restored;
        for (kind, n) in [
            ("episodes", r.episodes),
            ("fired", r.fired),
            ("windows", r.windows),
            ("ledger", r.ledger),
            ("dropped", r.dropped),
        ] {
            m.with_label_values(&[kind]).inc_by(n as u64);
        }
        tracing::info!(
            partition = p,
            episodes = r.episodes,
            awaiting_delivery = r.fired,
            windows = r.windows,
            ledger = r.ledger,
            dropped = r.dropped,
            snapshot_bytes = log.snapshot_bytes,
            log_bytes = log.log_bytes,
            watermark = ?self.engine.partition_watermark(p),
            "partition state restored"
        );
        if r.dropped > 0 {
            tracing::warn!(partition = p, dropped = r.dropped, "stored state rows were dropped: their rule was removed, disabled or changed kind, or their notification is settled");
        }
        Ok(())
    }

    /// Restores newly assigned partitions and drops ones no longer
    /// assigned; /readyz is ready once every assigned one is restored.
    async fn follow_assignment(
        &mut self,
        source: &KafkaSource,
        health: &Health,
        last_seen: &mut HashMap<PartitionId, Instant>,
    ) -> Result<(), DaemonError> {
        self.on_revoked(source, last_seen).await?;
        let assigned = source.assigned_partitions();
        let known: Vec<PartitionId> = self.engine.partitions().collect();
        if known.iter().any(|p| !assigned.contains(p)) {
            self.flush(source).await?;
            for p in known.iter().filter(|p| !assigned.contains(p)) {
                self.engine.revoke(*p);
                last_seen.remove(p);
            }
        }
        let new: Vec<PartitionId> = assigned
            .iter()
            .copied()
            .filter(|p| !known.contains(p))
            .collect();
        if !new.is_empty() {
            // A partition revoked a moment ago may have its last changes
            // in the commit in flight.
            self.finish_commit(source).await?;
        }
        for p in new {
            self.restore(p).await?;
            last_seen.insert(p, Instant::now());
        }
        health
            .state_restored
            .store(!assigned.is_empty(), Ordering::Relaxed);
        Ok(())
    }

    /// Partitions revoked in a rebalance: commit what was done on them,
    /// then forget their state (the store keeps it for the next owner).
    async fn on_revoked(
        &mut self,
        source: &KafkaSource,
        last_seen: &mut HashMap<PartitionId, Instant>,
    ) -> Result<(), DaemonError> {
        let revoked = source.take_revoked();
        if revoked.is_empty() {
            return Ok(());
        }
        self.flush(source).await?;
        let still = source.assigned_partitions();
        for (_, p) in revoked {
            if !still.contains(&p) && self.engine.has_partition(p) {
                self.engine.revoke(p);
                last_seen.remove(&p);
                tracing::info!(
                    partition = p,
                    "partition revoked: its state is committed and dropped from memory"
                );
            }
        }
        Ok(())
    }

    fn update_gauges(&self) {
        let stats = self.engine.stats();
        self.metrics.open_episodes.set(stats.open_episodes as i64);
        self.metrics
            .threshold_windows
            .set(stats.threshold_windows as i64);
        if let Some(w) = self.engine.watermark() {
            self.metrics.watermark.set(w as f64 / 1000.0);
        }
    }
}
