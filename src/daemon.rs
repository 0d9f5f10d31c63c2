//! Wiring: rules, channels, admin HTTP, the Kafka source and the event
//! pipeline, under one cancellation token.
//!
//! An event's position is marked done once its notifications are in the
//! durable outbox (or it decided none); delivery runs beside the consumer
//! in the dispatcher, so a slow or failing channel never stalls reading.
//!
//! Shutdown story: the token stops the consumer loop between events and
//! the dispatcher's workers; sends in flight finish (bounded by the channel
//! timeout); pending notifications and waiting retries stay in the outbox
//! for the next start; then every done position is committed synchronously
//! and `run` returns.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::CommitMode;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Health};
use crate::config::Config;
use crate::engine::{Clock, Engine, EngineConfig, Output, PartitionId};
use crate::event::{EventSchema, FieldPath, Millis};
use crate::metrics::Metrics;
use crate::notify::dispatcher::{Dispatcher, Settled};
use crate::notify::outbox::{Enqueued, Outbox};
use crate::notify::template::Templates;
use crate::pipeline::{prepare, Prepared};
use crate::rules::{load_rules, Diagnostics, LoadOptions};
use crate::source::kafka::{KafkaSource, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the rules in {dir} are invalid; nothing was started:\n{diags}")]
    Rules { dir: String, diags: Diagnostics },
    #[error("cannot set up delivery: {0}")]
    Delivery(String),
    #[error(transparent)]
    Store(#[from] crate::state::StoreError),
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
    task: tokio::task::JoinHandle<Result<(), DaemonError>>,
    admin: tokio::task::JoinHandle<()>,
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    Daemon::start(config, shutdown).await?.wait().await
}

impl Daemon {
    /// Loads and checks everything that can be checked without the brokers,
    /// binds the admin listener, then consumes in a background task. The
    /// brokers may come later: /readyz says so meanwhile.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Daemon, DaemonError> {
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

        let store = crate::state::Store::open(&config.state_dir)?;
        let outbox = Outbox::open(store)?;
        let retention = config.ledger_retention.as_millis() as Millis;
        match outbox.prune_done(crate::event::now_millis() - retention) {
            Ok(n) if n > 0 => tracing::info!(
                forgotten = n,
                "outbox: settled ids past state.ledger_retention forgotten"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error_code = "outbox_prune_failed", stage = "dispatch", error = %e, "could not prune settled ids; retried at the next start")
            }
        }
        // The dispatcher stops with the daemon, or when consuming fails.
        let delivery_stop = shutdown.child_token();
        let (dispatcher, settled, workers) = Dispatcher::start(
            &config.channels,
            outbox,
            Arc::clone(&metrics),
            delivery_stop.clone(),
        )
        .map_err(DaemonError::Delivery)?;

        let (admin_addr, admin) = admin::serve(
            config.admin_listen,
            Arc::clone(&metrics),
            Arc::clone(&health),
            Some(dispatcher.clone()),
            shutdown.clone(),
        )
        .await
        .map_err(|error| DaemonError::Admin {
            addr: config.admin_listen,
            error,
        })?;
        tracing::info!(%admin_addr, "admin HTTP listening (/metrics, /healthz, /readyz, /dead-letters)");
        let metrics_for_task = Arc::clone(&metrics);

        let pipeline = Pipeline {
            engine: Engine::new(
                Arc::new(loaded.rules),
                EngineConfig {
                    allowed_lateness: config.allowed_lateness.as_millis() as Millis,
                    ledger_retention: config.ledger_retention.as_millis() as Millis,
                    send_time_guard: true,
                },
                std::slice::from_ref(&config.customers.email),
            ),
            templates: loaded.templates,
            dispatcher,
            settled,
            addressless: config
                .channels
                .iter()
                .filter(|(_, c)| !c.kind.needs_address())
                .map(|(n, _)| n.clone())
                .collect(),
            schema: config.events.clone(),
            email: config.customers.email.clone(),
            metrics: Arc::clone(&metrics),
            log_customer_ids: config.log_customer_ids,
        };
        let health_for_task = Arc::clone(&health);
        let task = tokio::spawn(async move {
            let consumed = consume(
                config,
                pipeline,
                health_for_task,
                metrics_for_task,
                shutdown,
            )
            .await;
            // Sends in flight finish; pending ones stay in the outbox.
            delivery_stop.cancel();
            let mut workers = workers;
            while workers.join_next().await.is_some() {}
            consumed
        });
        Ok(Daemon {
            admin_addr,
            metrics,
            health,
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
    pipeline: Pipeline,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let source = match KafkaSource::connect(
        &config.kafka,
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
    let probe = source.spawn_health_probe(
        Arc::clone(&health),
        Arc::clone(&metrics),
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let mut pipeline = pipeline;
    let idle_timeout = config.idle_timeout;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Wall-clock time of the last record per partition, for idleness.
    let mut last_seen: HashMap<PartitionId, Instant> = HashMap::new();
    let mut last_recv_error: Option<Instant> = None;
    // A store failure: the event's effects are not durable, so its position
    // is not committed and the daemon stops (its supervisor restarts it).
    let mut stop: Option<DaemonError> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                if let Err(e) = source.commit(CommitMode::Async) {
                    tracing::debug!(error = %e, "periodic commit failed; retried on the next tick");
                }
                // Rebalances are picked up here, on the async side, rather
                // than doing engine work inside librdkafka's callback.
                let assigned = source.assigned_partitions();
                let known: Vec<PartitionId> = pipeline.engine.partitions().collect();
                for p in known.iter().filter(|p| !assigned.contains(p)) {
                    pipeline.engine.revoke(*p);
                    last_seen.remove(p);
                }
                for p in assigned.iter().filter(|p| !known.contains(p)) {
                    pipeline.engine.assign(*p);
                    last_seen.insert(*p, Instant::now());
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
                if let Err(e) = pipeline.apply(out) {
                    stop = Some(e);
                    break;
                }
                pipeline.update_gauges();
            }
            received = source.recv() => match received {
                Ok(msg) => {
                    last_seen.insert(msg.partition(), Instant::now());
                    match pipeline.handle(&source, &msg, &shutdown).await {
                        Ok(true) => source.mark_done(msg.topic(), msg.partition(), msg.offset()),
                        // Shutdown while copying an invalid record to the
                        // dead-letter topic: read it again next time.
                        Ok(false) => break,
                        Err(e) => {
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
    tracing::info!("stopping: committing positions");
    match source.commit(CommitMode::Sync) {
        Ok(n) => tracing::info!(partitions = n, "positions committed"),
        Err(e) => {
            tracing::error!(error_code = "kafka_commit_failed", stage = "source", error = %e, "final commit failed; the events since the last commit will be read again")
        }
    }
    probe.abort();
    match stop {
        Some(e) => {
            tracing::error!(error_code = "state_store_failed", stage = "dispatch", error = %e, "stopping: decided notifications could not be made durable; their events will be read again after a restart");
            Err(e)
        }
        None => Ok(()),
    }
}

/// Decode → engine → prepare → outbox (the dispatcher delivers).
struct Pipeline {
    engine: Engine,
    templates: Templates,
    dispatcher: Dispatcher,
    /// Final outcomes from the dispatcher, for the engine's send-time guard.
    settled: tokio::sync::mpsc::UnboundedReceiver<Settled>,
    /// Channels that need no email address (webhook, kafka).
    addressless: BTreeSet<String>,
    schema: EventSchema,
    email: FieldPath,
    metrics: Arc<Metrics>,
    log_customer_ids: bool,
}

impl Pipeline {
    /// Handles one record. `Ok(false)`: shutdown interrupted it and its
    /// position must not be committed; `Err`: the outbox could not be
    /// written, likewise.
    async fn handle(
        &mut self,
        source: &KafkaSource,
        msg: &OwnedMessage,
        shutdown: &CancellationToken,
    ) -> Result<bool, DaemonError> {
        let topic = msg.topic();
        let engine = &self.engine;
        let event = match self
            .schema
            .decode_lazy(msg.payload().unwrap_or_default(), |kind| {
                engine.payload_need(kind)
            }) {
            Ok(e) => Arc::new(e),
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
                return Ok(source
                    .dead_letter(msg, &invalid.to_string(), &self.metrics, shutdown)
                    .await);
            }
        };
        self.metrics
            .events
            .with_label_values(&[topic, "accepted"])
            .inc();
        let mut out = Output::default();
        let now = crate::event::now_millis();
        self.engine
            .on_event(msg.partition(), &event, Clock::Wall(now), &mut out);
        self.apply(out).map(|()| true)
    }

    /// Counts what the engine reported, puts its notifications in the
    /// outbox, and applies the send-time guard.
    fn apply(&mut self, out: Output) -> Result<(), DaemonError> {
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
        if !out.resolved.is_empty() {
            self.dispatcher.resolve(&out.resolved);
        }
        let mut batch = Vec::new();
        for decision in &out.decisions {
            let firing = &decision.firing;
            let rule = &firing.rule;
            m.rule_firings.with_label_values(&[&rule.id]).inc();
            let channel = rule.notify.channel.as_str();
            let customer = self
                .log_customer_ids
                .then_some(firing.event.customer.as_str());
            let needs_address = !self.addressless.contains(channel);
            let outcome = match prepare(decision, &self.templates, &self.email, needs_address) {
                Prepared::Send(n) => {
                    batch.push(n);
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
        if batch.is_empty() {
            return Ok(());
        }
        let rules: Vec<(String, String)> = batch
            .iter()
            .map(|n| (n.rule_id.clone(), n.channel.clone()))
            .collect();
        for ((id, how), (rule, channel)) in self.dispatcher.enqueue(batch)?.into_iter().zip(rules) {
            if how == Enqueued::Duplicate {
                // Decided before (the event was read again after a
                // restart): the outbox already has it, or it was sent.
                tracing::info!(stage = "decide", rule = %rule, notification_id = %id, "already in the outbox or sent: not queued again");
                self.engine.settle(&id);
                m.notifications
                    .with_label_values(&[&rule, &channel, "duplicate"])
                    .inc();
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
