//! The Kafka source: a consumer in a consumer group over the configured
//! topics, an optional dead-letter producer, broker health probing.
//!
//! Positions: the state store is the source of truth. The daemon commits
//! the positions after each batch to the store, in the same transaction as
//! the batch's effects; when a partition is assigned, consumption starts at
//! the position the store holds for it (set in the rebalance callback,
//! before librdkafka fetches anything). The daemon then calls
//! [`KafkaSource::mark_position`], and marked positions are committed to
//! Kafka too (on a timer, on partition revoke, and at shutdown), only so
//! that lag monitoring sees them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
    StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::admin::Health;
use crate::config::KafkaConfig;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot create the Kafka client: {0}")]
    Client(KafkaError),
    #[error("topic {topic:?} does not exist on {brokers}: create it first (e.g. `tansu topic create {topic} --partitions 3`, or `kafka-topics.sh --create --topic {topic}`), or fix kafka.{key}")]
    MissingTopic {
        topic: String,
        brokers: String,
        key: &'static str,
    },
    #[error("cannot subscribe to {topics:?}: {error}")]
    Subscribe {
        topics: Vec<String>,
        error: KafkaError,
    },
    #[error("stopped before the brokers answered")]
    Cancelled,
}

/// Next offset to commit, per (topic, partition): the position after the
/// last event whose effects are done.
type Done = Arc<Mutex<HashMap<(String, i32), i64>>>;

/// Partitions revoked inside a rebalance callback, for the daemon to flush
/// and forget after `recv` returns.
pub type Revoked = Arc<Mutex<Vec<(String, i32)>>>;

/// The current assignment, topic → partitions, kept by the rebalance
/// callback: asking librdkafka per record would copy its list each time.
type Assigned = Arc<Mutex<HashMap<String, std::collections::HashSet<i32>>>>;

pub struct SourceContext {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    done: Done,
    /// Where assigned partitions resume: the state store's positions.
    /// Taken out at shutdown ([`KafkaSource::close`]), so that a consumer
    /// still waiting on the broker does not hold the store open.
    store: Mutex<Option<crate::state::Store>>,
    revoked: Revoked,
    assigned: Assigned,
    /// (topic, partition) labels of `forewarn_consumer_lag` now set.
    lag_labels: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

impl SourceContext {
    fn track(&self, tpl: &TopicPartitionList, assign: bool) {
        let mut a = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        for e in tpl.elements() {
            let set = a.entry(e.topic().to_string()).or_default();
            if assign {
                set.insert(e.partition());
            } else {
                set.remove(&e.partition());
            }
        }
    }

    /// Sets each newly assigned partition's start to the position the
    /// store holds for it; partitions it has never seen keep the group's
    /// committed offset (or `auto.offset.reset`).
    fn resume_from_store(&self, tpl: &mut TopicPartitionList) {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let Some(store) = store.as_ref() else {
            return;
        };
        let wanted: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        for (topic, partition) in wanted {
            match crate::state::engine::position(store, &topic, partition) {
                Ok(Some(next)) => {
                    if let Err(e) =
                        tpl.set_partition_offset(&topic, partition, Offset::Offset(next))
                    {
                        tracing::error!(error_code = "kafka_seek_failed", stage = "source", topic, partition, error = %e, "cannot resume from the stored position");
                    } else {
                        tracing::info!(
                            topic,
                            partition,
                            offset = next,
                            "resuming from the stored position"
                        );
                    }
                }
                Ok(None) => {
                    tracing::info!(
                        topic,
                        partition,
                        "no stored position: starting from the group's committed offset"
                    )
                }
                Err(e) => {
                    tracing::error!(error_code = "state_store_failed", stage = "source", topic, partition, error = %e, "cannot read the stored position")
                }
            }
        }
    }
}

impl ClientContext for SourceContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the lag of
    /// each assigned partition, high watermark − committed offset (forewarn
    /// commits only what is durable), or − the read position before the
    /// first commit. Partitions no longer assigned leave the gauge.
    fn stats(&self, stats: rdkafka::Statistics) {
        let mut now = std::collections::HashSet::new();
        for (topic, t) in &stats.topics {
            for (&p, part) in &t.partitions {
                if p < 0 || !part.desired || part.hi_offset < 0 {
                    continue;
                }
                let done = if part.committed_offset >= 0 {
                    part.committed_offset
                } else {
                    part.app_offset
                };
                if done < 0 {
                    continue;
                }
                let label = p.to_string();
                self.metrics
                    .consumer_lag
                    .with_label_values(&[topic, &label])
                    .set((part.hi_offset - done).max(0));
                now.insert((topic.clone(), label));
            }
        }
        if let Ok(mut seen) = self.lag_labels.lock() {
            for (topic, p) in seen.difference(&now) {
                let _ = self.metrics.consumer_lag.remove_label_values(&[topic, p]);
            }
            *seen = now;
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reconnects by itself; this is for humans and /readyz.
        tracing::warn!(error_code = "kafka_client_error", stage = "source", error = %error, reason, "Kafka client error");
        if matches!(
            error.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.health.set_broker(Err(reason.to_string()));
            self.metrics.broker_up.set(0);
        }
    }
}

impl ConsumerContext for SourceContext {
    /// rdkafka's default rebalance, plus: assigned partitions start at the
    /// positions in the state store.
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            base_consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.resume_from_store(tpl);
                self.track(tpl, true);
                let result = if cooperative {
                    base_consumer.incremental_assign(tpl)
                } else {
                    base_consumer.assign(tpl)
                };
                self.post_rebalance(base_consumer, &Rebalance::Assign(tpl));
                result
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.pre_rebalance(base_consumer, &Rebalance::Revoke(tpl));
                if cooperative {
                    self.track(tpl, false);
                } else {
                    self.assigned
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clear();
                }
                let result = if cooperative {
                    base_consumer.incremental_unassign(tpl)
                } else {
                    base_consumer.unassign()
                };
                self.post_rebalance(base_consumer, &Rebalance::Revoke(tpl));
                result
            }
            other => {
                let e = KafkaError::Rebalance(other.into());
                self.post_rebalance(base_consumer, &Rebalance::Error(e));
                self.assigned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                // As rdkafka's default: drop the assignment after an error.
                if cooperative {
                    base_consumer.incremental_unassign(tpl)
                } else {
                    base_consumer.unassign()
                }
            }
        };
        if let Err(e) = result {
            tracing::error!(error_code = "kafka_rebalance_error", stage = "source", error = %e, "cannot apply the rebalance");
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Commit what is done on the partitions we lose, so the next
            // owner starts right after it. The consumer loop is between
            // events here (rebalances run inside recv), so `done` is exact.
            let list = {
                let done = self.done.lock().unwrap_or_else(|p| p.into_inner());
                let mut list = TopicPartitionList::new();
                for el in tpl.elements() {
                    if let Some(next) = done.get(&(el.topic().to_string(), el.partition())) {
                        let _ = list.add_partition_offset(
                            el.topic(),
                            el.partition(),
                            Offset::Offset(*next),
                        );
                    }
                }
                list
            };
            if list.count() > 0 {
                if let Err(e) = consumer.commit(&list, CommitMode::Sync) {
                    tracing::warn!(error_code = "kafka_commit_failed", stage = "source", error = %e, "commit on revoke failed");
                }
            }
            tracing::info!(partitions = %describe(tpl), "partitions revoked");
            let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            revoked.extend(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition())),
            );
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        self.health
            .assigned_partitions
            .store(assigned, std::sync::atomic::Ordering::Relaxed);
        self.metrics.assigned_partitions.set(assigned as i64);
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = %describe(tpl), assigned, "partitions assigned")
            }
            Rebalance::Revoke(_) => tracing::info!(assigned, "after revoke"),
            Rebalance::Error(e) => {
                tracing::warn!(error_code = "kafka_rebalance_error", error = %e, "rebalance error")
            }
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

pub struct KafkaSource {
    consumer: Arc<StreamConsumer<SourceContext>>,
    dead_letter: Option<(FutureProducer, String)>,
    done: Done,
    revoked: Revoked,
    assigned: Assigned,
    cfg: KafkaConfig,
}

/// How [`KafkaSource::close`] ended.
#[derive(Debug)]
pub struct Closed {
    /// The final commit: how many partitions' positions, or its error;
    /// `None` when the broker did not answer in time.
    pub commit: Option<Result<usize, KafkaError>>,
    /// The consumer closed, leaving its group, in time.
    pub left: bool,
}

/// librdkafka settings forewarn owns, then the user's `kafka.properties`.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

impl KafkaSource {
    /// Creates the clients, waits for the brokers, checks that every
    /// configured topic exists, and subscribes.
    /// `store`: where assigned partitions resume (see the module docs).
    pub async fn connect(
        cfg: &KafkaConfig,
        store: Option<crate::state::Store>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        shutdown: &CancellationToken,
    ) -> Result<KafkaSource, SourceError> {
        let done: Done = Arc::default();
        let revoked: Revoked = Arc::default();
        let assigned: Assigned = Arc::default();
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "10000")
            // For forewarn_consumer_lag (kafka.properties may change it).
            .set("statistics.interval.ms", "5000")
            .set("reconnect.backoff.max.ms", "2000");
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        let consumer: StreamConsumer<SourceContext> = cc
            .create_with_context(SourceContext {
                health: Arc::clone(&health),
                metrics: Arc::clone(&metrics),
                done: Arc::clone(&done),
                store: Mutex::new(store),
                revoked: Arc::clone(&revoked),
                assigned: Arc::clone(&assigned),
                lag_labels: Default::default(),
            })
            .map_err(SourceError::Client)?;
        let consumer = Arc::new(consumer);

        let dead_letter = match &cfg.dead_letter_topic {
            Some(topic) => {
                let producer: FutureProducer = client_config(cfg)
                    .set("enable.idempotence", "true")
                    .set("message.timeout.ms", "10000")
                    .create()
                    .map_err(SourceError::Client)?;
                Some((producer, topic.clone()))
            }
            None => None,
        };

        // Wait for the brokers: an orchestrator may start us first.
        let mut wait = Duration::from_millis(200);
        let metadata = loop {
            match probe(&consumer).await {
                Ok(m) => break m,
                Err(e) => {
                    health.set_broker(Err(e.clone()));
                    tracing::warn!(error_code = "kafka_unreachable", stage = "source", brokers = %cfg.brokers, error = %e, retry_in_ms = wait.as_millis() as u64, "waiting for the Kafka brokers");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return Err(SourceError::Cancelled),
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        };
        health.set_broker(Ok(()));
        metrics.broker_up.set(1);
        let exists = |t: &str| metadata.iter().any(|(name, ok)| name == t && *ok);
        for t in &cfg.topics {
            if !exists(t) {
                return Err(SourceError::MissingTopic {
                    topic: t.clone(),
                    brokers: cfg.brokers.clone(),
                    key: "topics",
                });
            }
        }
        if let Some(t) = &cfg.dead_letter_topic {
            if !exists(t) {
                return Err(SourceError::MissingTopic {
                    topic: t.clone(),
                    brokers: cfg.brokers.clone(),
                    key: "dead_letter_topic",
                });
            }
        }
        Ok(KafkaSource {
            consumer,
            dead_letter,
            done,
            revoked,
            assigned,
            cfg: cfg.clone(),
        })
    }

    /// Joins the consumer group. Separate from `connect`, so the caller
    /// can check its state against the group's offsets first.
    pub fn subscribe(&self) -> Result<(), SourceError> {
        let topics: Vec<&str> = self.cfg.topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&topics)
            .map_err(|error| SourceError::Subscribe {
                topics: self.cfg.topics.clone(),
                error,
            })?;
        tracing::info!(topics = ?self.cfg.topics, group = %self.cfg.group_id, "subscribed");
        Ok(())
    }

    /// The group's committed offsets for every partition of the
    /// configured topics: (topic, partition, next offset), only those
    /// that have one.
    pub async fn committed_offsets(&self) -> Result<Vec<(String, i32, i64)>, KafkaError> {
        let c = Arc::clone(&self.consumer);
        let topics = self.cfg.topics.clone();
        tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for t in &topics {
                let md = c.fetch_metadata(Some(t), Duration::from_secs(5))?;
                for mt in md.topics() {
                    for p in mt.partitions() {
                        tpl.add_partition(t, p.id());
                    }
                }
            }
            let committed = c.committed_offsets(tpl, Duration::from_secs(10))?;
            Ok(committed
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(n) if n >= 0 => Some((e.topic().to_string(), e.partition(), n)),
                    _ => None,
                })
                .collect())
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Partitions revoked since the last call (see [`Revoked`]).
    pub fn take_revoked(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The next record. Errors are for the caller to log and carry on.
    pub async fn recv(&self) -> Result<OwnedMessage, KafkaError> {
        self.consumer.recv().await.map(|m| m.detach())
    }

    /// Partition numbers assigned to this instance, over all topics. The
    /// topics are co-partitioned (keyed by customer with equal partition
    /// counts), so partition N of every topic is one engine partition.
    pub fn assigned_partitions(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .consumer
            .assignment()
            .map(|a| a.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The effects of every record before `next` are durable: the
    /// position may be committed to Kafka.
    pub fn mark_position(&self, topic: &str, partition: i32, next: i64) {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        done.insert((topic.to_string(), partition), next);
    }

    /// Whether (topic, partition) is assigned to this consumer now.
    pub fn is_assigned(&self, topic: &str, partition: i32) -> bool {
        self.assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .is_some_and(|s| s.contains(&partition))
    }

    /// Commits every marked position. `Sync` waits for the broker's answer.
    pub fn commit(&self, mode: CommitMode) -> Result<usize, KafkaError> {
        let list = {
            let done = self.done.lock().unwrap_or_else(|p| p.into_inner());
            let mut list = TopicPartitionList::new();
            let assigned = self.consumer.assignment().unwrap_or_default();
            for ((topic, partition), next) in done.iter() {
                // Positions of partitions we no longer own belong to their new owner.
                if assigned.find_partition(topic, *partition).is_some() {
                    list.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
                }
            }
            list
        };
        let n = list.count();
        if n > 0 {
            self.consumer.commit(&list, mode)?;
        }
        Ok(n)
    }

    /// Commits the marked positions to Kafka and leaves the group (the
    /// consumer's close), waiting at most `within`.
    ///
    /// librdkafka gives neither step a deadline of its own: a broker that
    /// keeps the connection but answers nothing holds a synchronous commit
    /// and the close without limit (over 120 s in the test that freezes
    /// the broker, `tests/lifecycle.rs`). So both run on a thread of their own, and
    /// shutdown goes on without them at `within`. Nothing is lost by that:
    /// the state store holds every position, and is released first so that
    /// it closes cleanly whatever the broker does. Kafka's committed
    /// offsets (its lag figures) catch up at the next start, and the group
    /// moves the partitions on after `session.timeout.ms`.
    pub async fn close(self, within: Duration) -> Closed {
        let deadline = tokio::time::Instant::now() + within;
        self.context()
            .store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let (committed_tx, committed) = tokio::sync::oneshot::channel();
        let (left_tx, left) = tokio::sync::oneshot::channel();
        // (Should the thread not start, the closure is dropped here, and
        // the consumer with it: the close then waits on this thread.)
        let _ = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                let _ = committed_tx.send(self.commit(CommitMode::Sync));
                let KafkaSource {
                    mut consumer,
                    dead_letter,
                    ..
                } = self;
                drop(dead_letter);
                // The consumer closes where its last handle drops, which
                // must be here: the health probe's and the lag reader's
                // handles live on in metadata requests of two seconds at
                // most, on tokio's blocking threads, which the runtime
                // waits for when it stops.
                let consumer = loop {
                    match Arc::try_unwrap(consumer) {
                        Ok(c) => break c,
                        Err(shared) => {
                            consumer = shared;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                };
                drop(consumer);
                let _ = left_tx.send(());
            });
        let commit = tokio::time::timeout_at(deadline, committed)
            .await
            .ok()
            .and_then(Result::ok);
        let left =
            commit.is_some() && matches!(tokio::time::timeout_at(deadline, left).await, Ok(Ok(())));
        Closed { commit, left }
    }

    fn context(&self) -> &SourceContext {
        self.consumer.context()
    }

    /// Copies an invalid record to the dead-letter topic, with the reason
    /// and its origin in headers. Retries until it is written or shutdown.
    pub async fn dead_letter(
        &self,
        msg: &OwnedMessage,
        reason: &str,
        metrics: &Metrics,
        shutdown: &CancellationToken,
    ) -> bool {
        let Some((producer, topic)) = &self.dead_letter else {
            return true;
        };
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "forewarn.error",
                value: Some(reason),
            })
            .insert(Header {
                key: "forewarn.source.topic",
                value: Some(msg.topic()),
            })
            .insert(Header {
                key: "forewarn.source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "forewarn.source.offset",
                value: Some(offset.as_str()),
            });
        let payload = msg.payload().unwrap_or_default();
        let mut wait = Duration::from_millis(200);
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .payload(payload)
                .headers(headers.clone());
            if let Some(k) = msg.key() {
                record = record.key(k);
            }
            match producer.send(record, Duration::from_secs(5)).await {
                Ok(_) => {
                    metrics
                        .dead_letter_events
                        .with_label_values(&["written"])
                        .inc();
                    return true;
                }
                Err((e, _)) => {
                    metrics
                        .dead_letter_events
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::warn!(error_code = "dead_letter_failed", stage = "source", topic = %topic, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot write to the dead-letter topic, will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return false,
                    }
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Probes the brokers every `every` until shutdown, for /readyz.
    pub fn spawn_health_probe(
        &self,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        every: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let consumer = Arc::clone(&self.consumer);
        let brokers = self.cfg.brokers.clone();
        tokio::spawn(async move {
            let mut was_up = true;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.cancelled() => return,
                }
                let result = probe(&consumer).await.map(|_| ());
                let up = result.is_ok();
                if up != was_up {
                    if up {
                        tracing::info!(brokers = %brokers, "Kafka brokers reachable again");
                    } else {
                        tracing::error!(error_code = "kafka_unreachable", stage = "source", brokers = %brokers, error = %result.as_ref().err().cloned().unwrap_or_default(), "Kafka brokers unreachable; consumption pauses until they return");
                    }
                    was_up = up;
                }
                metrics.broker_up.set(i64::from(up));
                health.set_broker(result);
            }
        })
    }
}

/// Asks the brokers for metadata: (topic, has partitions and no error).
async fn probe(
    consumer: &Arc<StreamConsumer<SourceContext>>,
) -> Result<Vec<(String, bool)>, String> {
    let c = Arc::clone(consumer);
    tokio::task::spawn_blocking(move || {
        c.fetch_metadata(None, Duration::from_secs(2))
            .map(|m| {
                m.topics()
                    .iter()
                    .map(|t| {
                        (
                            t.name().to_string(),
                            t.error().is_none() && !t.partitions().is_empty(),
                        )
                    })
                    .collect()
            })
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("probe task failed: {e}"))?
}
