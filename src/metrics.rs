//! Every metric forewarn exports, defined in one place. Names start with
//! `forewarn_`; labels are bounded (rule ids, channel names, topics, fixed
//! outcome words), never customer ids.
//!
//! A metric lives in a per-daemon registry rather than the global one, so
//! tests can run several daemons in one process.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    /// Events read, by topic and outcome (`accepted`, `invalid`).
    pub events: IntCounterVec,
    /// Invalid events by reason (`not_json`, `missing_customer`, …).
    pub invalid_events: IntCounterVec,
    /// Invalid events copied to the dead-letter topic, by result.
    pub dead_letter_events: IntCounterVec,
    /// Firings by rule.
    pub rule_firings: IntCounterVec,
    /// Conditions that could not be evaluated, by rule.
    pub rule_errors: IntCounterVec,
    /// Notifications by rule, channel and final outcome (`sent`, `shadow`,
    /// `holdout`, `cooldown`, `duplicate`, `stale`, `capped`,
    /// `unsubscribed`, `no_address`, `render_failed`, `resolved`,
    /// `dead_letter`).
    pub notifications: IntCounterVec,
    /// Per assigned (topic, partition): records not yet durably processed
    /// (high watermark − committed offset).
    pub consumer_lag: IntGaugeVec,
    /// Rule reloads by result (`applied`, `rejected`).
    pub rule_reloads: IntCounterVec,
    /// Marketing sends deferred out of quiet hours, by rule (each is
    /// counted again in `notifications` at its final outcome).
    pub deferred: IntCounterVec,
    /// Customer profiles read from the profiles topic, by result
    /// (`upserted`, `deleted`, `invalid`).
    pub profiles: IntCounterVec,
    /// Channel send attempts by channel and result (`ok`, `transient`, `permanent`).
    pub delivery_attempts: IntCounterVec,
    /// Delivery latency: from the decision (entry into the outbox) to
    /// acceptance by the channel, by rule and channel.
    pub delivery_duration: HistogramVec,
    /// Notifications in the outbox waiting for a first attempt or a retry, by channel.
    pub outbox_pending: IntGaugeVec,
    /// Dead letters kept in the store (list and re-drive with `forewarn dead-letters`).
    pub dead_letters: IntGauge,
    /// Send time − deadline for absence rules: how late "before they complain" was.
    pub detection_delay: HistogramVec,
    /// Events older than their partition's watermark (still processed).
    pub late_events: prometheus::IntCounter,
    /// Triggers that lacked a key or deadline field and opened nothing, by rule.
    pub rule_missing_key: IntCounterVec,
    pub open_episodes: IntGauge,
    pub threshold_windows: IntGauge,
    /// Durable commits of engine state + outbox entries + positions.
    pub state_commits: prometheus::IntCounter,
    /// How long one durable commit took (written and synced).
    pub state_commit_duration: prometheus::Histogram,
    /// Events per durable commit.
    pub state_commit_events: prometheus::Histogram,
    /// Partition state snapshots written (each replaces a partition's log).
    pub state_snapshots: prometheus::IntCounter,
    /// Rows read back from the store on partition assignment, by kind
    /// (`episodes`, `fired`, `windows`, `ledger`, `dropped`).
    pub state_restored: IntCounterVec,
    /// Rows deleted by retention, by what (`settled_ids`, `dead_letters`).
    pub state_compacted: IntCounterVec,
    /// The engine watermark, in Unix seconds.
    pub watermark: prometheus::Gauge,
    pub rules_loaded: IntGauge,
    pub broker_up: IntGauge,
    pub assigned_partitions: IntGauge,
    pub ready: IntGauge,
    pub build_info: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("metric definitions are static and valid");
            registry
                .register(Box::new(c.clone()))
                .expect("each metric is registered once");
            c
        };
        let plain_counter = |name: &str, help: &str| {
            let c = prometheus::IntCounter::new(name, help)
                .expect("metric definitions are static and valid");
            registry
                .register(Box::new(c.clone()))
                .expect("each metric is registered once");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric definitions are static and valid");
            registry
                .register(Box::new(g.clone()))
                .expect("each metric is registered once");
            g
        };
        let events = counter(
            "forewarn_events_total",
            "Events read, by topic and outcome.",
            &["topic", "outcome"],
        );
        let invalid_events = counter(
            "forewarn_invalid_events_total",
            "Invalid events, by reason.",
            &["reason"],
        );
        let dead_letter_events = counter(
            "forewarn_dead_letter_events_total",
            "Invalid events copied to the dead-letter topic, by result.",
            &["result"],
        );
        let rule_firings = counter(
            "forewarn_rule_firings_total",
            "Rule firings, by rule.",
            &["rule"],
        );
        let rule_errors = counter(
            "forewarn_rule_errors_total",
            "Rule conditions that could not be evaluated, by rule.",
            &["rule"],
        );
        let notifications = counter(
            "forewarn_notifications_total",
            "Notifications, by rule, channel and outcome.",
            &["rule", "channel", "outcome"],
        );
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "forewarn_consumer_lag",
                "Records not yet durably processed per assigned partition (high watermark - committed offset).",
            ),
            &["topic", "partition"],
        )
        .expect("metric definitions are static and valid");
        registry
            .register(Box::new(consumer_lag.clone()))
            .expect("each metric is registered once");
        let rule_reloads = counter(
            "forewarn_rule_reloads_total",
            "Rule reloads (SIGHUP or a change in the rules folder), by result.",
            &["result"],
        );
        let deferred = counter(
            "forewarn_notifications_deferred_total",
            "Marketing notifications deferred out of quiet hours, by rule.",
            &["rule"],
        );
        let profiles = counter(
            "forewarn_profiles_total",
            "Customer profiles read from the profiles topic, by result.",
            &["result"],
        );
        let delivery_attempts = counter(
            "forewarn_delivery_attempts_total",
            "Channel send attempts, by channel and result.",
            &["channel", "result"],
        );
        let delivery_duration = HistogramVec::new(
            HistogramOpts::new(
                "forewarn_delivery_duration_seconds",
                "Delivery latency: from the decision (entry into the outbox) to acceptance by the channel.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                900.0, 3600.0,
            ]),
            &["rule", "channel"],
        )
        .expect("metric definitions are static and valid");
        registry
            .register(Box::new(delivery_duration.clone()))
            .expect("each metric is registered once");
        let detection_delay = HistogramVec::new(
            HistogramOpts::new(
                "forewarn_detection_delay_seconds",
                "Absence rules: time from the deadline to the send.",
            )
            .buckets(vec![
                0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
            ]),
            &["rule"],
        )
        .expect("metric definitions are static and valid");
        registry
            .register(Box::new(detection_delay.clone()))
            .expect("each metric is registered once");
        let outbox_pending = IntGaugeVec::new(
            Opts::new(
                "forewarn_outbox_pending",
                "Notifications in the outbox waiting for a first attempt or a retry, by channel.",
            ),
            &["channel"],
        )
        .expect("metric definitions are static and valid");
        registry
            .register(Box::new(outbox_pending.clone()))
            .expect("each metric is registered once");
        let dead_letters = gauge(
            "forewarn_dead_letters",
            "Dead letters kept in the store; list and re-drive them with `forewarn dead-letters`.",
        );
        let late_events = plain_counter(
            "forewarn_late_events_total",
            "Events older than their partition's watermark (still processed).",
        );
        let rule_missing_key = counter(
            "forewarn_rule_missing_key_total",
            "Triggers without a key or deadline field; they open nothing.",
            &["rule"],
        );
        let open_episodes = gauge(
            "forewarn_open_episodes",
            "Open absence episodes waiting for their deadline.",
        );
        let threshold_windows = gauge("forewarn_threshold_windows", "Open threshold windows.");
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h =
                prometheus::Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                    .expect("metric definitions are static and valid");
            registry
                .register(Box::new(h.clone()))
                .expect("each metric is registered once");
            h
        };
        let state_commits = plain_counter(
            "forewarn_state_commits_total",
            "Durable commits of engine state, outbox entries and positions.",
        );
        let state_commit_duration = histogram(
            "forewarn_state_commit_duration_seconds",
            "Time to write and sync one durable commit.",
            vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ],
        );
        let state_commit_events = histogram(
            "forewarn_state_commit_events",
            "Events per durable commit.",
            vec![1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0],
        );
        let state_snapshots = plain_counter(
            "forewarn_state_snapshots_total",
            "Partition state snapshots written; each replaces that partition's change log.",
        );
        let state_restored = counter(
            "forewarn_state_restored_total",
            "State rows read back from the store on partition assignment, by kind.",
            &["kind"],
        );
        let state_compacted = counter(
            "forewarn_state_compacted_total",
            "Rows deleted by retention, by what.",
            &["what"],
        );
        let watermark = prometheus::Gauge::new(
            "forewarn_watermark_seconds",
            "The engine watermark (event time), in Unix seconds.",
        )
        .expect("metric definitions are static and valid");
        registry
            .register(Box::new(watermark.clone()))
            .expect("each metric is registered once");
        let rules_loaded = gauge("forewarn_rules_loaded", "Rules in the active rule set.");
        let broker_up = gauge(
            "forewarn_broker_up",
            "1 when the Kafka brokers answered the last probe.",
        );
        let assigned_partitions = gauge(
            "forewarn_assigned_partitions",
            "Partitions assigned to this instance.",
        );
        let ready = gauge("forewarn_ready", "1 when /readyz reports ready.");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "forewarn_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )
        .expect("metric definitions are static and valid");
        registry
            .register(Box::new(build_info.clone()))
            .expect("each metric is registered once");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics {
            registry,
            events,
            invalid_events,
            dead_letter_events,
            rule_firings,
            deferred,
            profiles,
            rule_reloads,
            consumer_lag,
            rule_errors,
            notifications,
            delivery_attempts,
            delivery_duration,
            outbox_pending,
            dead_letters,
            detection_delay,
            late_events,
            rule_missing_key,
            open_episodes,
            threshold_windows,
            state_commits,
            state_commit_duration,
            state_commit_events,
            state_snapshots,
            state_restored,
            state_compacted,
            watermark,
            rules_loaded,
            broker_up,
            assigned_partitions,
            ready,
            build_info,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error_code = "metrics_encode_failed", error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
