//! Crash-proof state (SPEC 6): the real `forewarn` binary, a real broker and
//! a real SMTP server, and a daemon that is killed with SIGKILL, stopped
//! while deadlines are pending, cut off from its broker, or handed a
//! damaged or missing state store.
//!
//! The contract checked here:
//! - engine state, the outbox and the consumer positions live in
//!   `<state.dir>/forewarn.redb`, committed together; after `kill -9` at any
//!   moment and a restart no pending deadline is lost and no notification is
//!   sent twice, except one in flight to the SMTP server at the crash (the
//!   email's Message-ID is `<NOTIFICATION-ID@…>`, so a duplicate is a second
//!   mail with the same Message-ID);
//! - a deadline that passed while the daemon was down fires once after the
//!   restart, or counts as `stale` when older than the rule's `stale_after`;
//! - a corrupted store, or a lost one while the consumer group has committed
//!   offsets, stops the start-up with an error naming `--reset-state`; with
//!   that flag the old file is moved aside (`forewarn.redb.*`) and the daemon
//!   starts empty from the group's committed offsets.
//!
//! The crash test is heavy (thousands of events and mails on two cores):
//! it takes [`HEAVY`] for writing, the other tests for reading, so it never
//! runs beside them while they still run beside each other. It prints its
//! seed and kill points; `FOREWARN_TEST_SEED=N` repeats a run's workload and
//! plan, and `FOREWARN_TEST_KILLS=0` runs the same workload without a kill
//! (a control: the exact set and no duplicate, on any build).

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

static HEAVY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as i64
}

/// Sleeps until the wall clock reads `ms` (epoch milliseconds).
async fn sleep_until_ms(ms: i64) {
    let left = ms - now_ms();
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
}

/// One event as the topic carries it (see `write_config`'s `[events]`).
fn event(kind: &str, customer: &str, ts: i64) -> String {
    format!(
        r#"{{"type":"{kind}","event_id":"{kind}-{customer}-{ts}","customer_id":"{customer}","ts":{ts},"customer":{{"email":"{customer}@example.com"}}}}"#
    )
}

/// The customer a mail went to (`c-0042@example.com` → `c-0042`).
fn customer_of(mail: &Mail) -> String {
    let addr = mail.rcpt_to.first().unwrap_or(&mail.to);
    addr.split('@').next().unwrap_or_default().to_string()
}

/// A rules folder for one test: `rules_toml` as `rules.toml`, and one
/// template, `notice`, whose subject names the rule and the customer.
fn write_rules(dir: &Path, rules_toml: &str) -> PathBuf {
    write_rules_dir(
        dir,
        rules_toml,
        "Hi {{ customer.id }},\n\nrule {{ rule.id }}, notification {{ notification.id }}.\n",
    )
}

/// An absence rule in the shape of the shipped `checkout-dropoff`, without
/// cooldown (and without `stale_after` unless given), so the expected set of
/// mails is exact.
fn absence_rule(id: &str, within: &str, stale_after: Option<&str>) -> String {
    let stale = stale_after
        .map(|s| format!("stale_after = {s:?}\n"))
        .unwrap_or_default();
    format!(
        r#"[[rule]]
id       = "{id}"
kind     = "absence"
trigger  = {{ event = "checkout_started" }}
until    = {{ event = "order_placed" }}
key      = ["customer_id"]
within   = "{within}"
on_repeat = "ignore"
{stale}notify   = {{ channel = "email", template = "notice" }}

"#
    )
}

/// A match rule: every `ping` event is one mail (a marker that the daemon
/// has read up to it).
const PING_RULE: &str = r#"[[rule]]
id      = "ping"
kind    = "match"
trigger = { event = "ping" }
notify  = { channel = "email", template = "notice" }

"#;

fn smtp_channel_with_concurrency(port: u16, concurrency: usize) -> String {
    format!("{}concurrency = {concurrency}\n", smtp_channel(port))
}

/// With Tansu, a shorter session so that the group drops a killed member
/// (and hands its partitions to the restarted daemon) sooner. A real Kafka
/// refuses sessions under `group.min.session.timeout.ms` (6 s by default),
/// so it keeps the daemon's own setting.
fn fast_rejoin(broker: &Broker) -> &'static [(&'static str, &'static str)] {
    if broker.is_external() {
        &[]
    } else {
        &[
            ("session.timeout.ms", "3000"),
            ("heartbeat.interval.ms", "500"),
        ]
    }
}

/// The current `/metrics` exposition (empty when the daemon does not answer).
fn scrape(admin: &str) -> String {
    http_get(admin, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// Successive runs of the daemon on one config and state dir, each with its
/// own log file (`run1.log`, `run2.log`, …).
struct Runs {
    dir: PathBuf,
    config: PathBuf,
    admin_port: u16,
    logs: Vec<PathBuf>,
    daemon: Option<DaemonProcess>,
}

impl Runs {
    /// Writes `rules_toml` and a config for `topic` into `dir`, starts the
    /// first run and waits until it is ready. `fast`: quick group rejoins
    /// after a kill (see `fast_rejoin`).
    async fn start(
        dir: &Path,
        broker: &Broker,
        topic: &str,
        rules_toml: &str,
        channels: &str,
        fast: bool,
        snapshot_min_bytes: Option<u64>,
    ) -> Runs {
        let rules = write_rules(dir, rules_toml);
        let admin_port = free_port();
        let config = write_config_with(
            dir,
            &broker.brokers,
            &[topic],
            admin_port,
            channels,
            &ConfigOptions {
                rules_dir: Some(&rules),
                kafka_properties: if fast { fast_rejoin(broker) } else { &[] },
                snapshot_min_bytes,
                ..ConfigOptions::default()
            },
        );
        let mut runs = Runs::new(dir, config, admin_port);
        runs.spawn(&[]);
        runs.ready(Duration::from_secs(60)).await;
        runs
    }

    fn new(dir: &Path, config: PathBuf, admin_port: u16) -> Runs {
        Runs {
            dir: dir.to_path_buf(),
            config,
            admin_port,
            logs: Vec::new(),
            daemon: None,
        }
    }

    /// Starts the next run (the previous one must have exited or been killed).
    fn spawn(&mut self, args: &[&str]) -> &mut DaemonProcess {
        let log = self.dir.join(format!("run{}.log", self.logs.len() + 1));
        self.logs.push(log.clone());
        self.daemon = Some(DaemonProcess::spawn_with_args(
            &self.config,
            self.admin_port,
            &log,
            args,
        ));
        self.daemon.as_mut().expect("just spawned")
    }

    fn current(&mut self) -> &mut DaemonProcess {
        self.daemon.as_mut().expect("a daemon was spawned")
    }

    fn admin(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }

    /// The tails of the last two runs' logs, for assertion messages.
    fn tails(&self) -> String {
        let from = self.logs.len().saturating_sub(2);
        self.logs[from..]
            .iter()
            .map(|l| log_tail(l, 40))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn ready(&mut self, timeout: Duration) {
        let result = self.current().ready_within(timeout).await;
        if let Err(e) = result {
            panic!("{e}\n{}", self.tails());
        }
    }

    /// SIGKILL; panics (with the logs) if the daemon had already exited.
    async fn kill_9(&mut self) {
        if let Ok(Some(status)) = self.current().child.try_wait() {
            panic!(
                "the daemon exited by itself ({status}) before it was killed\n{}",
                self.tails()
            );
        }
        self.current().signal("KILL");
        let status = self.current().wait_exit(Duration::from_secs(10)).await;
        assert_eq!(
            status.and_then(|s| s.signal()),
            Some(9),
            "the daemon dies of SIGKILL\n{}",
            self.tails()
        );
    }

    /// SIGTERM, and a clean exit (status 0) within 30 s.
    async fn stop(&mut self) {
        self.current().signal("TERM");
        let status = self.current().wait_exit(Duration::from_secs(30)).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "a clean exit after SIGTERM, got {status:?}\n{}",
            self.tails()
        );
    }

    /// Waits for the current run to exit on its own; panics (with the logs)
    /// if it is still running after `timeout` or exits with success.
    async fn refused(&mut self, timeout: Duration, why: &str) -> String {
        let status = self.current().wait_exit(timeout).await;
        let log = std::fs::read_to_string(self.logs.last().expect("a run")).unwrap_or_default();
        match status {
            Some(s) if !s.success() => log,
            Some(s) => panic!(
                "{why}: the daemon exited with {s}, expected a failure\n{}",
                self.tails()
            ),
            None => panic!(
                "{why}: the daemon is still running after {timeout:?}, expected it to refuse to start\n{}",
                self.tails()
            ),
        }
    }

    /// Polls `/metrics` until `pred` holds; panics (with the logs and the
    /// last exposition) after `timeout`.
    async fn wait_metrics(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let start = Instant::now();
        loop {
            let body = scrape(&self.admin());
            if pred(&body) {
                return body;
            }
            if start.elapsed() > timeout {
                let ours: Vec<&str> = body
                    .lines()
                    .filter(|l| {
                        !l.starts_with('#')
                            && (l.contains("notifications_total")
                                || l.contains("events_total")
                                || l.contains("open_episodes")
                                || l.contains("outbox_pending")
                                || l.contains("rule_firings"))
                    })
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; metrics now:\n{}\n{}",
                    ours.join("\n"),
                    self.tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The mails at the sink, parsed once each as they arrive.
#[derive(Default)]
struct Inbox {
    mails: BTreeMap<PathBuf, Mail>,
}

impl Inbox {
    fn refresh(&mut self, smtp: &SmtpSink) -> &BTreeMap<PathBuf, Mail> {
        for f in smtp.files() {
            if let std::collections::btree_map::Entry::Vacant(e) = self.mails.entry(f) {
                let mail = parse_mail(e.key());
                e.insert(mail);
            }
        }
        &self.mails
    }

    fn customers(&self) -> BTreeSet<String> {
        self.mails.values().map(customer_of).collect()
    }

    /// Waits up to `timeout` for a mail to every expected customer;
    /// returns those still without one.
    async fn missing_after(
        &mut self,
        smtp: &SmtpSink,
        expected: &BTreeSet<String>,
        timeout: Duration,
    ) -> Vec<String> {
        let start = Instant::now();
        loop {
            self.refresh(smtp);
            let missing: Vec<String> = expected.difference(&self.customers()).cloned().collect();
            if missing.is_empty() || start.elapsed() > timeout {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the daemon has nothing left to fire or send, then
    /// returns the customers mailed who were not expected.
    async fn unexpected_once_settled(
        &mut self,
        runs: &Runs,
        smtp: &SmtpSink,
        expected: &BTreeSet<String>,
    ) -> Vec<String> {
        runs.wait_metrics(
            "no open episode and an empty outbox",
            Duration::from_secs(60),
            settled,
        )
        .await;
        self.refresh(smtp);
        self.customers().difference(expected).cloned().collect()
    }

    /// Message-IDs received more than once, with their counts.
    fn duplicates(&self) -> BTreeMap<String, usize> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for m in self.mails.values() {
            *counts.entry(m.message_id.clone()).or_default() += 1;
        }
        counts.retain(|_, n| *n > 1);
        counts
    }
}

/// `forewarn_notifications_total{rule, channel="email", outcome}`, 0 when absent.
fn notifications(body: &str, rule: &str, outcome: &str) -> f64 {
    metric(
        body,
        "forewarn_notifications_total",
        &[("rule", rule), ("channel", "email"), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

/// Nothing left to do: no open episode and nothing in the email outbox.
fn settled(body: &str) -> bool {
    metric(body, "forewarn_open_episodes", &[]) == Some(0.0)
        && metric(body, "forewarn_outbox_pending", &[("channel", "email")]).unwrap_or(0.0) == 0.0
}

// ---------------------------------------------------------------------------
// 1. kill -9 at random points
// ---------------------------------------------------------------------------

const CRASH_CUSTOMERS: usize = 2000;
const CRASH_PARTITIONS: i32 = 3;
const CRASH_CHUNKS: usize = 20;
/// 20 chunks, one a second: the kills (each costs a ~3 s restart) land
/// while the events still come.
const CRASH_CHUNK_PAUSE: Duration = Duration::from_millis(1_000);
const CRASH_CONCURRENCY: usize = 8;
/// Event time between two customers' checkouts.
const CRASH_SPACING_MS: i64 = 1_000;
/// The rule's `within`: with one checkout a second, ~600 episodes are open
/// at any moment, and deadlines fire all along the production.
const CRASH_WITHIN_MS: i64 = 10 * 60_000;

/// Where in the run a kill lands. Each kill also waits until the daemon has
/// been ready for a random 0.5 to 2 s (the second half of each step of the
/// plan), so that it has read, decided and sent something since its last
/// restart.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// Once `chunk` chunks are in the topic: reading, opening and closing
    /// episodes, firing deadlines and sending, all at once.
    AfterChunk { chunk: usize },
    /// Once the SMTP server holds `mails` messages.
    AtMails { mails: usize },
    /// After the closing clock ticks, once `frac` of the mails still due at
    /// that moment have arrived: the last deadlines firing, mails in flight.
    InTail { frac: f64 },
}

/// The crash test's seed: `FOREWARN_TEST_SEED`, else the clock.
fn seed() -> u64 {
    std::env::var("FOREWARN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("a clock after 1970")
                .as_nanos() as u64
        })
}

/// How many of the five planned kills to carry out: `FOREWARN_TEST_KILLS`
/// (0 makes a control run: the same workload without a crash, which must
/// give the exact set with no duplicate on any build).
fn kills_wanted() -> usize {
    std::env::var("FOREWARN_TEST_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// The main durability test. 2000 customers start a checkout, one a second
/// in event time; about half place an order within the 10 minutes (no mail),
/// the others get exactly one mail. The events go to a 3-partition topic in
/// 20 chunks while the daemon runs, and the daemon is killed with SIGKILL at
/// five random points and restarted on the same state dir each time.
///
/// Event times are synthetic and lie in the future (30 days from now): the
/// watermark then moves only with the events, never with the wall clock (an
/// idle partition's watermark follows the clock, which is behind), so no
/// deadline fires before the order that closes its episode has been read,
/// however long a restart takes, and the expected set is exact. At the end,
/// one clock-tick record per partition, an hour past the last event, lets
/// the last deadlines fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_loses_no_deadline_and_resends_only_mail_in_flight() {
    let _heavy = HEAVY.write().await;
    let started = Instant::now();
    let seed = seed();
    println!("crash test: seed {seed} (FOREWARN_TEST_SEED={seed} repeats this run)");
    let mut rng = StdRng::seed_from_u64(seed);

    // The workload: (event time, key, payload), in event-time order.
    let base = now_ms() + 30 * 24 * 3_600_000;
    let mut events: Vec<(i64, String, String)> = Vec::new();
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for i in 0..CRASH_CUSTOMERS {
        let customer = format!("c-{i:04}");
        let t = base + i as i64 * CRASH_SPACING_MS;
        events.push((t, customer.clone(), event("checkout_started", &customer, t)));
        if rng.random_bool(0.5) {
            // An order at least 5 s before the deadline: the episode closes.
            let at = t + rng.random_range(1_000..CRASH_WITHIN_MS - 5_000);
            events.push((at, customer.clone(), event("order_placed", &customer, at)));
        } else {
            expected.insert(customer);
        }
    }
    events.sort_by_key(|(t, _, _)| *t);
    let last_time = events.last().expect("events").0;
    let chunk_len = events.len().div_ceil(CRASH_CHUNKS);
    let chunks: Vec<Vec<(String, String)>> = events
        .chunks(chunk_len)
        .map(|c| c.iter().map(|(_, k, p)| (k.clone(), p.clone())).collect())
        .collect();
    assert_eq!(chunks.len(), CRASH_CHUNKS);
    let expected_n = expected.len();

    let plan: Vec<(KillAt, u64)> = [
        KillAt::AfterChunk {
            chunk: rng.random_range(3..=5),
        },
        KillAt::AfterChunk {
            chunk: rng.random_range(7..=10),
        },
        KillAt::AfterChunk {
            chunk: rng.random_range(12..=15),
        },
        KillAt::AtMails {
            mails: expected_n * rng.random_range(55..=75) / 100,
        },
        KillAt::InTail {
            frac: rng.random_range(0.2..0.8),
        },
    ]
    .into_iter()
    .map(|at| (at, rng.random_range(500..2_000)))
    .take(kills_wanted())
    .collect();
    println!(
        "crash test: {CRASH_CUSTOMERS} customers, {} events in {CRASH_CHUNKS} chunks, {expected_n} mails expected; kill plan {plan:?}",
        events.len()
    );

    let broker = Broker::start().await;
    let smtp = SmtpSink::start_with(&["--quiet"]).await;
    let topic = format!("crash-{}", free_port());
    broker.create_topic(&topic, CRASH_PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let within = format!("{}s", CRASH_WITHIN_MS / 1000);
    let mut runs = Runs::start(
        dir.path(),
        &broker,
        &topic,
        &absence_rule("crash-dropoff", &within, None),
        &smtp_channel_with_concurrency(smtp.port, CRASH_CONCURRENCY),
        true,
        // Tiny: partitions snapshot every few commits, so kills land on
        // both snapshots and logs, and restarts read both.
        Some(16 * 1024),
    )
    .await;

    // The producer: one chunk every CRASH_CHUNK_PAUSE, whatever the daemon
    // is doing (records pile up in the topic while it is down), then one
    // clock tick per partition. `produced` counts chunks, ticks as one more.
    let produced = Arc::new(AtomicUsize::new(0));
    let producer = {
        let producer = broker.producer();
        let topic = topic.clone();
        let produced = Arc::clone(&produced);
        tokio::spawn(async move {
            for chunk in &chunks {
                let records: Vec<(Option<i32>, Option<&str>, &str)> = chunk
                    .iter()
                    .map(|(k, p)| (None, Some(k.as_str()), p.as_str()))
                    .collect();
                Broker::produce_batch(&producer, &topic, &records).await;
                produced.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(CRASH_CHUNK_PAUSE).await;
            }
            let tick_time = last_time + 3_600_000;
            let ticks: Vec<String> = (0..CRASH_PARTITIONS)
                .map(|p| event("clock_tick", &format!("clock-{p}"), tick_time))
                .collect();
            let records: Vec<(Option<i32>, Option<&str>, &str)> = ticks
                .iter()
                .enumerate()
                .map(|(p, payload)| (Some(p as i32), None, payload.as_str()))
                .collect();
            Broker::produce_batch(&producer, &topic, &records).await;
            produced.fetch_add(1, Ordering::SeqCst);
        })
    };

    let mut kill_log: Vec<String> = Vec::new();
    // Partition snapshots written before the kills (a tiny
    // snapshot_min_bytes makes them frequent): restarts read snapshots.
    let mut snapshots_written = 0.0;
    let mut ready_at = Instant::now();
    for (k, &(at, alive_ms)) in plan.iter().enumerate() {
        // Wait for the planned moment. A mail count the daemon never reaches
        // (state lost, say) falls back to "all produced and no new mail for
        // 3 s", so the test goes on to report what is missing.
        let mut tail_target: Option<usize> = None;
        let mut last_mails = (usize::MAX, Instant::now());
        let note = loop {
            let chunks_in = produced.load(Ordering::SeqCst);
            let mails = smtp.files().len();
            if mails != last_mails.0 {
                last_mails = (mails, Instant::now());
            }
            let alive = ready_at.elapsed() >= Duration::from_millis(alive_ms);
            let due = alive
                && match at {
                    KillAt::AfterChunk { chunk } => chunks_in >= chunk,
                    KillAt::AtMails { mails: m } => mails >= m,
                    KillAt::InTail { frac } => {
                        chunks_in > CRASH_CHUNKS && {
                            let target = *tail_target.get_or_insert_with(|| {
                                mails + (expected_n.saturating_sub(mails) as f64 * frac) as usize
                            });
                            mails >= target
                        }
                    }
                };
            if due {
                break "";
            }
            if alive && chunks_in > CRASH_CHUNKS && last_mails.1.elapsed() > Duration::from_secs(3)
            {
                break " (fallback: no new mail for 3 s)";
            }
            if started.elapsed() > Duration::from_secs(150) {
                panic!(
                    "kill #{} ({at:?}) never became due: {chunks_in} chunks produced, {mails} mails\n{}",
                    k + 1,
                    runs.tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let body = scrape(&runs.admin());
        let snapshots = metric(&body, "forewarn_state_snapshots_total", &[]).unwrap_or(0.0);
        snapshots_written += snapshots;
        let context = format!(
            "chunks in topic {}/{CRASH_CHUNKS}{}, mails at the sink {}/{expected_n}, open episodes {:?}, outbox {:?}, state snapshots this run {snapshots}",
            produced.load(Ordering::SeqCst).min(CRASH_CHUNKS),
            if produced.load(Ordering::SeqCst) > CRASH_CHUNKS {
                " + clock ticks"
            } else {
                ""
            },
            smtp.files().len(),
            metric(&body, "forewarn_open_episodes", &[]),
            metric(&body, "forewarn_outbox_pending", &[("channel", "email")]),
        );
        let killed_at = started.elapsed();
        runs.kill_9().await;
        let restart = Instant::now();
        runs.spawn(&[]);
        runs.ready(Duration::from_secs(90)).await;
        ready_at = Instant::now();
        let line = format!(
            "kill #{} at {:.1}s, {at:?} and {alive_ms} ms up{note}: {context}; ready again after {:.1}s",
            k + 1,
            killed_at.as_secs_f64(),
            restart.elapsed().as_secs_f64()
        );
        println!("crash test: {line}");
        kill_log.push(line);
    }
    producer.await.expect("the producer task");
    let kills = kill_log.len();

    // Every expected customer gets a mail. On a timeout, report what is
    // missing rather than only that something is.
    let mut inbox = Inbox::default();
    let missing = inbox
        .missing_after(&smtp, &expected, Duration::from_secs(60))
        .await;
    let body = scrape(&runs.admin());
    assert!(
        missing.is_empty(),
        "{} of {expected_n} expected customers never got their mail (deadlines lost across kill -9), e.g. {:?}\nkills:\n{}\nopen episodes {:?}, outbox {:?}, sent this run {}\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        kill_log.join("\n"),
        metric(&body, "forewarn_open_episodes", &[]),
        metric(&body, "forewarn_outbox_pending", &[("channel", "email")]),
        notifications(&body, "crash-dropoff", "sent"),
        runs.tails()
    );

    // Then nothing is left to fire or send, and the mails are final.
    let extra = inbox.unexpected_once_settled(&runs, &smtp, &expected).await;
    assert!(
        extra.is_empty(),
        "{} customers who placed their order (or do not exist) got a mail, e.g. {:?}\nkills:\n{}\n{}",
        extra.len(),
        &extra[..extra.len().min(10)],
        kill_log.join("\n"),
        runs.tails()
    );
    let distinct: BTreeSet<&str> = inbox
        .mails
        .values()
        .map(|m| m.message_id.as_str())
        .collect();
    assert_eq!(
        distinct.len(),
        expected_n,
        "one notification id per customer\n{}",
        runs.tails()
    );
    let dups = inbox.duplicates();
    let dup_count: usize = dups.values().map(|n| n - 1).sum();
    for (id, n) in &dups {
        let who: BTreeSet<String> = inbox
            .mails
            .values()
            .filter(|m| &m.message_id == id)
            .map(customer_of)
            .collect();
        println!("crash test: duplicate {id} received {n} times ({who:?})");
    }
    println!(
        "crash test: {CRASH_CUSTOMERS} customers, {expected_n} expected, kills {kills}, duplicates {dup_count} (in flight at a crash), partition snapshots before the kills {snapshots_written}, {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        snapshots_written > 0.0,
        "no partition snapshot was written before a kill, so no restart read one\n{}",
        runs.tails()
    );
    assert!(
        dup_count <= kills * CRASH_CONCURRENCY,
        "{dup_count} duplicate mails after {kills} kills: only the at most {CRASH_CONCURRENCY} in flight at each crash may go twice; duplicates {dups:?}\nkills:\n{}\n{}",
        kill_log.join("\n"),
        runs.tails()
    );
    runs.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Deadlines that pass while the daemon is down
// ---------------------------------------------------------------------------

/// Two absence rules on wall-clock event times, both 3 s: `downtime-sent`
/// without `stale_after`, `downtime-stale` with `stale_after = "1s"`. The
/// daemon reads three checkouts and is stopped (`signal`) long before their
/// deadlines fire; it comes back after the deadlines (and the allowed
/// lateness) have passed. `downtime-sent` mails each customer exactly once,
/// `downtime-stale` counts three `stale` and mails no one.
async fn deadlines_passed_while_down(signal: &str) {
    let _heavy = HEAVY.read().await;
    let broker = Broker::start().await;
    let smtp = SmtpSink::start_with(&["--quiet"]).await;
    let topic = format!("downtime-{}", free_port());
    broker.create_topic(&topic, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let rules = format!(
        "{}{}",
        absence_rule("downtime-sent", "3s", None),
        absence_rule("downtime-stale", "3s", Some("1s"))
    );
    let mut runs = Runs::start(
        dir.path(),
        &broker,
        &topic,
        &rules,
        &smtp_channel(smtp.port),
        true,
        None,
    )
    .await;

    let customers = ["d-1", "d-2", "d-3"];
    let t = now_ms();
    let records: Vec<(String, String)> = customers
        .iter()
        .map(|c| (c.to_string(), event("checkout_started", c, t)))
        .collect();
    broker.produce_all(&topic, &records).await;
    let accepted = |b: &str| {
        metric(
            b,
            "forewarn_events_total",
            &[("topic", &topic), ("outcome", "accepted")],
        )
    };
    let body = runs
        .wait_metrics("the three checkouts read", Duration::from_secs(30), |b| {
            accepted(b) == Some(3.0)
        })
        .await;
    // Deadline t + 3 s; with the default allowed_lateness (5 s) an idle
    // partition lets it fire at t + 8 s at the earliest. Stop well before
    // (checked after the stop).
    assert_eq!(
        metric(
            &body,
            "forewarn_rule_firings_total",
            &[("rule", "downtime-sent")]
        ),
        None,
        "nothing fired before the stop"
    );
    match signal {
        "TERM" => runs.stop().await,
        _ => {
            // Kill once the group has committed past the checkouts (the
            // daemon commits a position only after the effects before it
            // are durable), so the restart cannot read them again and must
            // restore the episodes from the store. If no commit comes in
            // time, kill anyway: reading them again must give the same.
            let group = format!("forewarn-test-{}", runs.admin_port);
            let mut committed = None;
            while now_ms() - t < 5_000 {
                committed = broker.committed_total(&group, &topic).await;
                if committed == Some(3) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!(
                "downtime test (kill -9): committed offsets before the kill {committed:?} of 3 records{}",
                if committed == Some(3) {
                    ": the episodes must come back from the state store"
                } else {
                    ": the restart reads the checkouts again"
                }
            );
            runs.kill_9().await;
        }
    }
    let elapsed = now_ms() - t;
    assert!(
        elapsed < 7_500,
        "test setup too slow: stopped {elapsed} ms after the checkouts, the deadlines could have fired before the stop\n{}",
        runs.tails()
    );
    assert!(
        smtp.files().is_empty(),
        "no mail before the stop\n{}",
        runs.tails()
    );

    // Down past the deadline, its lateness, and stale_after.
    sleep_until_ms(t + 3_000 + 5_000 + 1_500).await;
    runs.spawn(&[]);
    runs.ready(Duration::from_secs(60)).await;
    let body = runs
        .wait_metrics(
            "3 sent for downtime-sent and 3 stale for downtime-stale",
            Duration::from_secs(30),
            |b| {
                notifications(b, "downtime-sent", "sent") >= 3.0
                    && notifications(b, "downtime-stale", "stale") >= 3.0
            },
        )
        .await;
    let body = if settled(&body) {
        body
    } else {
        runs.wait_metrics("an empty outbox", Duration::from_secs(30), settled)
            .await
    };
    let logs = runs.tails();
    assert_eq!(notifications(&body, "downtime-sent", "sent"), 3.0, "{logs}");
    assert_eq!(
        notifications(&body, "downtime-stale", "stale"),
        3.0,
        "{logs}"
    );
    assert_eq!(
        notifications(&body, "downtime-stale", "sent"),
        0.0,
        "a stale firing is not sent\n{logs}"
    );
    let mails = smtp.messages();
    let subjects: Vec<&str> = mails.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(
        mails.len(),
        3,
        "exactly one mail per customer: {subjects:?}\n{logs}"
    );
    assert!(
        subjects.iter().all(|s| s.starts_with("downtime-sent for ")),
        "only downtime-sent mails: {subjects:?}\n{logs}"
    );
    let to: BTreeSet<String> = mails.iter().map(customer_of).collect();
    assert_eq!(
        to,
        customers.iter().map(|c| c.to_string()).collect(),
        "{logs}"
    );
    let ids: BTreeSet<&str> = mails.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "three distinct notifications\n{logs}");
    runs.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_passed_during_a_clean_stop_fire_once_or_count_as_stale() {
    deadlines_passed_while_down("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_passed_during_a_crash_fire_once_or_count_as_stale() {
    deadlines_passed_while_down("KILL").await;
}

// ---------------------------------------------------------------------------
// 3. The broker restarts under a running daemon
// ---------------------------------------------------------------------------

/// A persistent Tansu (SQLite: slow, so few events) restarts while 15
/// episodes are open; 15 more customers come after it. Each customer without
/// an order gets exactly one mail: nothing lost, nothing repeated.
///
/// `within` is 10 s on wall-clock times, longer than the broker's restart and
/// the consumer's return, so that if the daemon reads records again after
/// the restart it does so before their deadlines, as it did the first time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_no_deadline_and_repeats_no_mail() {
    let _heavy = HEAVY.read().await;
    let mut broker = Broker::start_persistent().await;
    if broker.is_external() {
        return; // cannot restart someone else's cluster
    }
    let smtp = SmtpSink::start_with(&["--quiet"]).await;
    let topic = "events";
    broker.create_topic(topic, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Runs::start(
        dir.path(),
        &broker,
        topic,
        &absence_rule("broker-restart", "10s", None),
        &smtp_channel(smtp.port),
        false,
        None,
    )
    .await;

    // Customer i checks out; even ones order right after (no mail).
    let batch = |range: std::ops::Range<usize>| -> Vec<(String, String)> {
        let mut out = Vec::new();
        for i in range {
            let c = format!("b-{i:02}");
            out.push((c.clone(), event("checkout_started", &c, now_ms())));
            if i % 2 == 0 {
                out.push((c.clone(), event("order_placed", &c, now_ms())));
            }
        }
        out
    };
    let expected: BTreeSet<String> = (0..30)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("b-{i:02}"))
        .collect();

    let first = batch(0..15);
    broker.produce_all(topic, &first).await;
    let n = first.len() as f64;
    runs.wait_metrics("the first batch read", Duration::from_secs(30), |b| {
        metric(
            b,
            "forewarn_events_total",
            &[("topic", topic), ("outcome", "accepted")],
        ) == Some(n)
    })
    .await;
    let restart = Instant::now();
    broker.restart().await;
    runs.ready(Duration::from_secs(90)).await;
    println!(
        "broker restart test: broker back and daemon ready {:.1}s after the restart began",
        restart.elapsed().as_secs_f64()
    );
    broker.produce_all(topic, &batch(15..30)).await;

    let mut inbox = Inbox::default();
    let missing = inbox
        .missing_after(&smtp, &expected, Duration::from_secs(90))
        .await;
    assert!(
        missing.is_empty(),
        "no mail for {missing:?} after the broker restart\n{}",
        runs.tails()
    );
    let extra = inbox.unexpected_once_settled(&runs, &smtp, &expected).await;
    assert!(
        extra.is_empty(),
        "mails for customers who ordered: {extra:?}\n{}",
        runs.tails()
    );
    let dups = inbox.duplicates();
    assert!(
        dups.is_empty() && inbox.mails.len() == expected.len(),
        "every mail exactly once: {} mails for {} customers, duplicates {dups:?}\n{}",
        inbox.mails.len(),
        expected.len(),
        runs.tails()
    );
    runs.stop().await;
}

// ---------------------------------------------------------------------------
// 4. A corrupted or lost state store
// ---------------------------------------------------------------------------

/// A daemon on a 1-partition topic with a long absence rule (nothing fires)
/// and the `ping` rule, which has read three checkouts and stopped cleanly,
/// so that its store holds open episodes and the group has committed offsets.
struct StateRig {
    broker: Broker,
    smtp: SmtpSink,
    topic: String,
    state: PathBuf,
    runs: Runs,
    _dir: tempfile::TempDir,
}

impl StateRig {
    async fn after_one_run() -> StateRig {
        let broker = Broker::start().await;
        let smtp = SmtpSink::start_with(&["--quiet"]).await;
        let topic = format!("state-{}", free_port());
        broker.create_topic(&topic, 1).await;
        let dir = tempfile::tempdir().unwrap();
        let runs = Runs::start(
            dir.path(),
            &broker,
            &topic,
            &format!("{}{PING_RULE}", absence_rule("long-wait", "1h", None)),
            &smtp_channel(smtp.port),
            false,
            None,
        )
        .await;
        let mut rig = StateRig {
            state: dir.path().join("state"),
            broker,
            smtp,
            topic,
            runs,
            _dir: dir,
        };
        for c in ["s-1", "s-2", "s-3"] {
            rig.broker
                .produce(&rig.topic, Some(c), &event("checkout_started", c, now_ms()))
                .await;
        }
        let topic = rig.topic.clone();
        rig.runs
            .wait_metrics("the three checkouts read", Duration::from_secs(30), |b| {
                metric(
                    b,
                    "forewarn_events_total",
                    &[("topic", &topic), ("outcome", "accepted")],
                ) == Some(3.0)
            })
            .await;
        rig.runs.stop().await;
        rig
    }

    /// Starts the daemon with `--reset-state`: it must become ready, resume
    /// from the group's committed offsets (not from the beginning) and work.
    async fn reset_and_check(&mut self) {
        self.runs.spawn(&["--reset-state"]);
        self.runs.ready(Duration::from_secs(60)).await;
        self.broker
            .produce(&self.topic, Some("s-9"), &event("ping", "s-9", now_ms()))
            .await;
        let mails = self.smtp.wait_for_count(1, Duration::from_secs(30)).await;
        assert_eq!(mails[0].subject, "ping for s-9");
        // The ping's mail is out, so every record before it was read: the
        // three old checkouts would have made this 4.
        let body = scrape(&self.runs.admin());
        assert_eq!(
            metric(
                &body,
                "forewarn_events_total",
                &[("topic", &self.topic), ("outcome", "accepted")],
            ),
            Some(1.0),
            "after --reset-state the daemon reads on from the group's committed offsets\n{}",
            self.runs.tails()
        );
        self.runs.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_state_store_stops_startup_until_reset_state_moves_it_aside() {
    let _heavy = HEAVY.read().await;
    let mut rig = StateRig::after_one_run().await;
    let store = rig.state.join("forewarn.redb");
    assert!(
        store.is_file(),
        "the daemon keeps its state in {}\n{}",
        store.display(),
        rig.runs.tails()
    );
    // Garbage of the store's size (at least 64 KiB), from a fixed LCG.
    let len = std::fs::metadata(&store).unwrap().len().max(65_536) as usize;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let garbage: Vec<u8> = (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect();
    std::fs::write(&store, &garbage).unwrap();

    rig.runs.spawn(&[]);
    let log = rig
        .runs
        .refused(Duration::from_secs(30), "a corrupted state store")
        .await;
    let state_dir = rig.state.display().to_string();
    assert!(
        log.contains("--reset-state"),
        "the error tells how to start anyway (--reset-state)\n{}",
        rig.runs.tails()
    );
    assert!(
        log.contains(&state_dir),
        "the error names the state store ({state_dir})\n{}",
        rig.runs.tails()
    );
    assert_eq!(
        std::fs::read(&store).unwrap(),
        garbage,
        "a refused start leaves the damaged file as it was"
    );

    rig.reset_and_check().await;
    assert!(store.is_file(), "a new store in {}", store.display());
    let aside: Vec<PathBuf> = std::fs::read_dir(&rig.state)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("forewarn.redb."))
        })
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "the damaged store is moved aside as forewarn.redb.*, beside the new one: {aside:?}\n{}",
        rig.runs.tails()
    );
    assert_eq!(
        std::fs::read(&aside[0]).unwrap(),
        garbage,
        "moved aside, not rewritten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_state_dir_stops_startup_until_reset_state() {
    let _heavy = HEAVY.read().await;
    let mut rig = StateRig::after_one_run().await;
    // The state is lost, but the group has committed offsets: starting empty
    // from them would silently drop the three open episodes.
    std::fs::remove_dir_all(&rig.state).unwrap();
    rig.runs.spawn(&[]);
    let log = rig
        .runs
        .refused(
            Duration::from_secs(30),
            "a lost state dir while the group has committed offsets",
        )
        .await;
    assert!(
        log.contains("--reset-state"),
        "the error tells how to start anyway (--reset-state)\n{}",
        rig.runs.tails()
    );
    rig.reset_and_check().await;
}
