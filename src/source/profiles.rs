//! The profiles topic (`customers.profiles_topic`): a compacted Kafka
//! topic keyed by customer id whose values are the customers' latest
//! profiles as JSON (email, phone, name, locale, timezone, consent flags
//! per class). forewarn reads it as a table into the state store, like a
//! Kafka Streams GlobalKTable: every instance reads every partition, from
//! its own stored positions, without a consumer group. A tombstone (a
//! record with no value) deletes the profile.
//!
//! At start-up the topic is read up to its end before any event is
//! decided (`/readyz` says so meanwhile), so that a customer who
//! unsubscribed yesterday is not messaged today because their profile had
//! not been read yet. After that it follows the topic as it grows.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::Health;
use crate::config::KafkaConfig;
use crate::metrics::Metrics;
use crate::state::Store;

/// Records per store transaction, at most.
const BATCH: usize = 2_000;

/// Reads the profiles topic into the store until shutdown. `caught_up`
/// turns true once the topic has been read to the end it had at start
/// (or when it cannot be read at all: decisions then use event fields).
pub async fn follow(
    kafka: KafkaConfig,
    topic: String,
    store: Store,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    caught_up: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    health.profiles_loading.store(true, Ordering::Relaxed);
    let stop = shutdown.clone();
    let h = Arc::clone(&health);
    let done = move |health: &Health| {
        health.profiles_loading.store(false, Ordering::Relaxed);
        let _ = caught_up.send(true);
    };
    // librdkafka's BaseConsumer is blocking: one dedicated thread.
    let task =
        tokio::task::spawn_blocking(move || run(kafka, topic, store, &h, &metrics, &done, &stop));
    if let Ok(Err(e)) = task.await {
        tracing::error!(error_code = "profiles_failed", stage = "profiles", error = %e, "reading the profiles topic stopped; decisions use the profiles read so far and the events' own fields");
        health.profiles_loading.store(false, Ordering::Relaxed);
    }
}

fn run(
    kafka: KafkaConfig,
    topic: String,
    store: Store,
    health: &Health,
    metrics: &Metrics,
    done: &dyn Fn(&Health),
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let mut cc = crate::source::kafka::client_config(&kafka);
    // A group id librdkafka needs for its consumer; nothing is ever
    // committed to it: positions live in the state store.
    cc.set("group.id", format!("{}-profiles", kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = cc.create().map_err(|e| e.to_string())?;

    // Partitions: wait for the topic (the brokers may be starting too).
    let mut wait = Duration::from_millis(200);
    let partitions: Vec<i32> = loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        match consumer.fetch_metadata(Some(&topic), Duration::from_secs(2)) {
            Ok(m) => {
                let ps: Vec<i32> = m
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                if !ps.is_empty() {
                    break ps;
                }
                tracing::warn!(error_code = "profiles_topic_missing", stage = "profiles", topic = %topic, "customers.profiles_topic does not exist (yet); create it as a compacted topic keyed by customer id. Waiting for it; decisions meanwhile use the events' own fields");
                done(health);
            }
            Err(e) => {
                tracing::warn!(error_code = "kafka_unreachable", stage = "profiles", error = %e, "waiting for the Kafka brokers to read the profiles topic");
            }
        }
        // In slices, so a shutdown is not held up by the wait.
        let until = std::time::Instant::now() + wait;
        while std::time::Instant::now() < until && !shutdown.is_cancelled() {
            std::thread::sleep(Duration::from_millis(100));
        }
        wait = (wait * 2).min(Duration::from_secs(30));
    };

    // Resume from the stored positions, else from the beginning.
    let stored = crate::state::engine::positions(&store).map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    let mut next: HashMap<i32, i64> = HashMap::new();
    for &p in &partitions {
        let offset = match stored.get(&(topic.clone(), p)) {
            Some(&n) => {
                next.insert(p, n);
                Offset::Offset(n)
            }
            None => Offset::Beginning,
        };
        tpl.add_partition_offset(&topic, p, offset)
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;

    // The end to reach before deciding: each partition's high watermark now.
    let mut targets: HashMap<i32, i64> = HashMap::new();
    for &p in &partitions {
        let (_, high) = consumer
            .fetch_watermarks(&topic, p, Duration::from_secs(10))
            .map_err(|e| format!("cannot read the end of {topic} partition {p}: {e}"))?;
        targets.insert(p, high);
    }
    let reached = |next: &HashMap<i32, i64>| {
        targets
            .iter()
            .all(|(p, &high)| high <= 0 || next.get(p).is_some_and(|&n| n >= high))
    };
    let mut loading = true;
    if reached(&next) {
        loading = false;
        done(health);
    }
    let (mut read, started) = (0u64, std::time::Instant::now());

    let mut rows: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    let mut positions: HashMap<(String, i32), i64> = HashMap::new();
    while !shutdown.is_cancelled() {
        let timeout = if rows.is_empty() {
            Duration::from_millis(200)
        } else {
            Duration::ZERO
        };
        match consumer.poll(timeout) {
            Some(Ok(msg)) => {
                let key = msg.key().and_then(|k| std::str::from_utf8(k).ok());
                positions.insert((topic.clone(), msg.partition()), msg.offset() + 1);
                next.insert(msg.partition(), msg.offset() + 1);
                read += 1;
                match (key, msg.payload()) {
                    (Some(k), None) if !k.is_empty() => {
                        rows.push((k.to_string(), None));
                        metrics.profiles.with_label_values(&["deleted"]).inc();
                    }
                    (Some(k), Some(v)) if !k.is_empty() && is_object(v) => {
                        rows.push((k.to_string(), Some(v.to_vec())));
                        metrics.profiles.with_label_values(&["upserted"]).inc();
                    }
                    _ => {
                        // Never the payload: it is personal data.
                        tracing::warn!(error_code = "invalid_profile", stage = "profiles", partition = msg.partition(), offset = msg.offset(), "profile record skipped: it needs the customer id as its key and a JSON object (or nothing, to delete) as its value");
                        metrics.profiles.with_label_values(&["invalid"]).inc();
                    }
                }
                if rows.len() < BATCH {
                    continue;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error_code = "profiles_read_error", stage = "profiles", error = %e, "reading the profiles topic failed; retrying");
            }
            None => {}
        }
        if !positions.is_empty() {
            let tx = store.db().begin_write().map_err(|e| e.to_string())?;
            crate::state::customers::put_profiles_in(&tx, &rows).map_err(|e| e.to_string())?;
            crate::state::engine::put_positions(&tx, &positions).map_err(|e| e.to_string())?;
            tx.commit().map_err(|e| e.to_string())?;
            rows.clear();
            positions.clear();
        }
        if loading && reached(&next) {
            loading = false;
            tracing::info!(topic = %topic, records = read, elapsed_ms = started.elapsed().as_millis() as u64, "customer profiles loaded");
            done(health);
        }
    }
    Ok(())
}

fn is_object(v: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<serde_json::Value>(v),
        Ok(serde_json::Value::Object(_))
    )
}
