//! Test harness: real servers on loopback, started by the tests themselves.
//!
//! - [`Broker`]: Tansu, a Kafka-compatible broker (`deploy/test.sh` installs
//!   it), on a free port; or any real Kafka when `FOREWARN_TEST_BROKERS` is set.
//! - [`SmtpSink`]: aiosmtpd (`smtp_sink.py` beside this file), storing each
//!   received message as a file.
//! - [`webhook::WebhookReceiver`]: an HTTP server (axum) with scripted answers.
//! - [`tls::TestCert`]: a self-signed certificate made with `openssl`.
//! - Helpers to produce and consume records, fetch admin endpoints, and run
//!   the `forewarn` binary as a child process.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod tls;
pub mod webhook;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return p.into();
    }
    let home_bin = std::env::var("HOME")
        .map(|h| PathBuf::from(h).join(".cargo/bin/tansu"))
        .unwrap_or_default();
    if home_bin.exists() {
        return home_bin;
    }
    if Command::new("tansu").arg("--version").output().is_ok() {
        return "tansu".into();
    }
    panic!("the Tansu broker is not installed: run `deploy/test.sh` (it installs Tansu with cargo), or set FOREWARN_TEST_BROKERS to a real Kafka")
}

/// `kill -SIG` to a child process (SIGTERM, SIGSTOP, …), asserting it was delivered.
fn send_signal(child: &Child, sig: &str) {
    let pid = child.id();
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill command");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// A Kafka-compatible broker for one test.
pub struct Broker {
    pub brokers: String,
    port: u16,
    storage: Option<String>,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// An in-memory Tansu, or the cluster in `FOREWARN_TEST_BROKERS`.
    pub async fn start() -> Broker {
        if let Ok(external) = std::env::var("FOREWARN_TEST_BROKERS") {
            let dir = tempfile::tempdir().expect("temp dir");
            return Broker {
                brokers: external,
                port: 0,
                storage: None,
                child: None,
                log: dir.path().join("none.log"),
                _dir: dir,
            };
        }
        Self::start_tansu("memory://tansu/".into()).await
    }

    /// A Tansu that keeps its data (SQLite) across [`Broker::kill`] and [`Broker::restart`].
    pub async fn start_persistent() -> Broker {
        // The sqlite:// path is relative to the broker's working directory,
        // which is the broker's own temp dir (see spawn).
        Self::start_tansu("sqlite://tansu.db".into()).await
    }

    async fn start_tansu(storage: String) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut b = Broker {
            brokers: format!("127.0.0.1:{port}"),
            port,
            storage: Some(storage),
            child: None,
            log: dir.path().join("tansu.log"),
            _dir: dir,
        };
        b.spawn().await;
        b
    }

    pub fn is_external(&self) -> bool {
        self.storage.is_none()
    }

    async fn spawn(&mut self) {
        let storage = self.storage.clone().expect("only a local Tansu is spawned");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("broker log file");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu_binary())
            .current_dir(self._dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &storage])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let brokers = self.brokers.clone();
        let log = self.log.clone();
        let start = Instant::now();
        loop {
            let b = brokers.clone();
            let ok = tokio::task::spawn_blocking(move || metadata_ok(&b))
                .await
                .unwrap_or(false);
            if ok {
                return;
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "Tansu did not answer on {brokers} within 30 s; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, as a crash or a pulled cable would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the broker keeps its connections open and answers nothing,
    /// as a hung or partitioned broker does. [`Broker::thaw`] resumes it.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`Broker::freeze`].
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        send_signal(self.child.as_ref().expect("a local Tansu"), sig);
    }

    /// Starts the broker again on the same port and storage.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .expect("admin client");
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let res = admin
            .create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create_topics request");
        for r in res {
            match r {
                Ok(_) => {}
                Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))
                    if self.is_external() =>
                {
                    let _ = t;
                }
                Err((t, e)) => panic!("cannot create topic {t}: {e}"),
            }
        }
        // Wait until the topic is visible in metadata with its partitions.
        let brokers = self.brokers.clone();
        let name = name.to_string();
        wait_for("the new topic in metadata", Duration::from_secs(10), || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()
                .ok()?;
            let md = c.fetch_metadata(Some(&name), Duration::from_secs(2)).ok()?;
            md.topics()
                .iter()
                .any(|t| t.name() == name && t.partitions().len() == partitions as usize)
                .then_some(())
        })
        .await;
    }

    pub fn producer(&self) -> FutureProducer {
        self.producer_with(&[])
    }

    /// [`Broker::producer`] with more librdkafka settings.
    fn producer_with(&self, settings: &[(&str, &str)]) -> FutureProducer {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("message.timeout.ms", "10000");
        for (k, v) in settings {
            c.set(*k, *v);
        }
        c.create().expect("producer")
    }

    /// A producer that sends each record in a batch of its own. Tansu
    /// 0.6.0 loses the rest of a record batch when a consumer starts
    /// fetching in the middle of it (a restart resuming mid-batch misses
    /// those records; a real Kafka returns the whole batch). Tests that
    /// resume from stored positions while several records of a partition
    /// were produced at once use this, so they test forewarn, not Tansu.
    #[allow(dead_code)]
    pub fn producer_one_record_per_batch(&self) -> FutureProducer {
        self.producer_with(&[("batch.num.messages", "1")])
    }

    pub async fn produce(&self, topic: &str, key: Option<&str>, payload: &str) {
        let producer = self.producer();
        let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }

    /// A tombstone: a record with `key` and no value (on a compacted
    /// topic, "delete this key").
    pub async fn produce_tombstone(&self, topic: &str, key: &str) {
        let record: FutureRecord<'_, str, str> = FutureRecord::to(topic).key(key);
        self.producer()
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("produce a tombstone");
    }

    /// Sends `records` (partition or `None` for the key's, key, payload)
    /// through one producer, all in flight at once, and waits for every
    /// acknowledgement. Records for one partition keep their order.
    pub async fn produce_batch(
        producer: &FutureProducer,
        topic: &str,
        records: &[(Option<i32>, Option<&str>, &str)],
    ) {
        let mut pending = Vec::with_capacity(records.len());
        for (partition, key, payload) in records {
            let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic).payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(p) = partition {
                record = record.partition(*p);
            }
            let delivery = producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("a record queued in the producer");
            pending.push(delivery);
        }
        for delivery in pending {
            delivery
                .await
                .expect("the producer was not dropped")
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    }

    /// Sends (key, payload) records through one new producer; see
    /// [`Broker::produce_batch`].
    pub async fn produce_all(&self, topic: &str, records: &[(String, String)]) {
        Self::produce_keyed(&self.producer(), topic, records).await;
    }

    /// (key, payload) records through `producer`; see [`Broker::produce_batch`].
    pub async fn produce_keyed(
        producer: &FutureProducer,
        topic: &str,
        records: &[(String, String)],
    ) {
        let refs: Vec<(Option<i32>, Option<&str>, &str)> = records
            .iter()
            .map(|(k, p)| (None, Some(k.as_str()), p.as_str()))
            .collect();
        Self::produce_batch(producer, topic, &refs).await;
    }

    /// The sum over `topic`'s partitions of `group`'s committed offsets
    /// (a partition without one counts 0): on a topic that started empty,
    /// how many records the group has committed past. `None` when the
    /// broker does not answer.
    pub async fn committed_total(&self, group: &str, topic: &str) -> Option<i64> {
        let brokers = self.brokers.clone();
        let (group, topic) = (group.to_string(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()
                .ok()?;
            let md = c
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .ok()?;
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in md.topics().iter().flat_map(|t| t.partitions()) {
                tpl.add_partition(&topic, p.id());
            }
            let committed = c.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
            Some(
                committed
                    .elements()
                    .iter()
                    .map(|e| match e.offset() {
                        rdkafka::Offset::Offset(n) => n,
                        _ => 0,
                    })
                    .sum(),
            )
        })
        .await
        .ok()
        .flatten()
    }

    /// Reads every record currently in `topic` (from the beginning):
    /// (payload, headers as (key, value) pairs).
    pub async fn read_all(
        &self,
        topic: &str,
        expected: usize,
        timeout: Duration,
    ) -> Vec<(String, Vec<(String, String)>)> {
        let brokers = self.brokers.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", format!("reader-{}", free_port()))
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false")
                .create()
                .expect("reader");
            c.subscribe(&[&topic]).expect("subscribe");
            let mut out = Vec::new();
            let start = Instant::now();
            while out.len() < expected && start.elapsed() < timeout {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_string(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push((
                        String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                        headers,
                    ));
                }
            }
            out
        })
        .await
        .expect("reader task")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn metadata_ok(brokers: &str) -> bool {
    let Ok(c) = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create::<BaseConsumer>()
    else {
        return false;
    };
    c.fetch_metadata(None, Duration::from_millis(500)).is_ok()
}

/// One email as the SMTP server received it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub raw: String,
    pub rcpt_to: Vec<String>,
    pub to: String,
    pub from: String,
    pub subject: String,
    pub message_id: String,
    /// The decoded text/plain part.
    pub text: String,
    /// The decoded text/html part, if any.
    pub html: Option<String>,
}

/// aiosmtpd on a free loopback port; every message lands as a file in `dir`.
pub struct SmtpSink {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
    _tmp: tempfile::TempDir,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> SmtpSink {
        Self::start_on(free_port(), extra).await
    }

    /// On a given port (e.g. one a client already tried while nothing listened).
    pub async fn start_on(port: u16, extra: &[&str]) -> SmtpSink {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("mail");
        std::fs::create_dir_all(&dir).expect("mail dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/smtp_sink.py");
        let python = std::env::var("FOREWARN_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--port", &port.to_string(), "--dir"])
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {python} {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let ready = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            line
        });
        let line = tokio::time::timeout(Duration::from_secs(20), ready)
            .await
            .expect("the SMTP sink did not start within 20 s (is aiosmtpd installed? run deploy/test.sh)")
            .expect("reader");
        assert!(
            line.starts_with("READY"),
            "unexpected SMTP sink output: {line:?}"
        );
        SmtpSink {
            port,
            dir,
            child,
            _tmp: tmp,
        }
    }

    pub fn messages(&self) -> Vec<Mail> {
        self.files().iter().map(|p| parse_mail(p)).collect()
    }

    /// The stored messages' files (`.eml`), sorted; cheaper than
    /// [`SmtpSink::messages`] when only counting or reading new ones.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "eml"));
        files.sort();
        files
    }

    pub async fn wait_for_count(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        wait_for(&format!("{n} emails at the SMTP server"), timeout, || {
            let m = self.messages();
            (m.len() >= n).then_some(m)
        })
        .await
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `n` lines of a log file (all of it when shorter), with a header.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    format!(
        "--- last {} of {} lines of {} ---\n{}",
        lines.len() - from,
        lines.len(),
        path.display(),
        lines[from..].join("\n")
    )
}

pub fn parse_mail(path: &Path) -> Mail {
    let raw = std::fs::read(path).expect("mail file");
    let envelope: serde_json::Value = std::fs::read_to_string(path.with_extension("json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let parsed = mailparse::parse_mail(&raw).expect("a parseable email");
    let header = |name: &str| {
        use mailparse::MailHeaderMap;
        parsed.headers.get_first_value(name).unwrap_or_default()
    };
    let mut text = String::new();
    let mut html = None;
    let mut parts = vec![&parsed];
    while let Some(p) = parts.pop() {
        if p.subparts.is_empty() {
            let body = p.get_body().unwrap_or_default();
            match p.ctype.mimetype.as_str() {
                "text/html" => html = Some(body),
                _ => text = body,
            }
        } else {
            parts.extend(p.subparts.iter());
        }
    }
    Mail {
        raw: String::from_utf8_lossy(&raw).into_owned(),
        rcpt_to: envelope["rcpt_tos"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        to: header("To"),
        from: header("From"),
        subject: header("Subject"),
        message_id: header("Message-ID"),
        text,
        html,
    }
}

/// [`http_get`] with extra request headers, e.g. `("Authorization",
/// "Bearer …")`: (status, body).
pub fn http_get_with(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_get_with(addr, path, &[])
}

/// Polls the daemon's `/metrics` at `admin` until the sample `name{labels}`
/// exists; returns the whole exposition of that moment.
pub async fn wait_for_metric(
    admin: &str,
    name: &str,
    labels: &[(&str, &str)],
    timeout: Duration,
) -> String {
    wait_for(&format!("{name} {labels:?}"), timeout, || {
        let (_, body) = http_get(admin, "/metrics").ok()?;
        metric(&body, name, labels).map(|_| body)
    })
    .await
}

/// The value of one sample in a Prometheus text exposition, matched by the
/// metric name and a set of `label="value"` pairs.
pub fn metric(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (head, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let (n, rest) = head.split_once('{').unwrap_or((head, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// Starts the daemon in-process with a config from [`write_config`]
/// (admin on a free port): (daemon, admin address, shutdown token).
pub async fn start_daemon(
    dir: &Path,
    brokers: &str,
    topics: &[&str],
    dead_letter: Option<&str>,
    channels: &str,
) -> (
    forewarn::daemon::Daemon,
    String,
    tokio_util::sync::CancellationToken,
) {
    let path = write_config(dir, brokers, topics, dead_letter, 0, channels);
    let config = forewarn::config::Config::load_with_env(&path, vec![]).expect("valid test config");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let daemon = forewarn::daemon::Daemon::start(config, shutdown.clone())
        .await
        .expect("the daemon starts");
    let admin = daemon.admin_addr.to_string();
    (daemon, admin, shutdown)
}

/// Writes a daemon config for tests. `channels` is TOML for the [channels] tables.
pub fn write_config(
    dir: &Path,
    brokers: &str,
    topics: &[&str],
    dead_letter: Option<&str>,
    admin_port: u16,
    channels: &str,
) -> PathBuf {
    write_config_with(
        dir,
        brokers,
        topics,
        admin_port,
        channels,
        &ConfigOptions {
            dead_letter,
            ..ConfigOptions::default()
        },
    )
}

/// What [`write_config_with`] may change in the config [`write_config`]
/// writes; `Default` changes nothing.
#[derive(Debug, Default, Clone)]
pub struct ConfigOptions<'a> {
    /// `kafka.dead_letter_topic`.
    pub dead_letter: Option<&'a str>,
    /// A rules folder (rule files plus `templates/`) instead of the shipped `rules/`.
    pub rules_dir: Option<&'a Path>,
    /// `events.allowed_lateness` (the daemon's default, 5 s, when `None`).
    pub allowed_lateness: Option<&'a str>,
    /// `[kafka.properties]`, handed to librdkafka (a shorter session
    /// timeout, say, so a restarted daemon gets its partitions back sooner).
    pub kafka_properties: &'a [(&'a str, &'a str)],
    /// `state.snapshot_min_bytes` (tiny: engine state snapshots often).
    pub snapshot_min_bytes: Option<u64>,
    /// More `key = value` lines for `[customers]` (e.g. `profiles_topic`).
    pub customers_toml: &'a str,
    /// More `key = value` lines for `[admin]` (e.g. `token_env`).
    pub admin_toml: &'a str,
    /// Whole sections appended to the file (e.g. `[policy]`).
    pub extra_toml: &'a str,
}

/// [`write_config`] with [`ConfigOptions`]: `dir/forewarn.toml`, state in
/// `dir/state`, group id `forewarn-test-{admin_port}`.
pub fn write_config_with(
    dir: &Path,
    brokers: &str,
    topics: &[&str],
    admin_port: u16,
    channels: &str,
    opts: &ConfigOptions<'_>,
) -> PathBuf {
    let rules = opts
        .rules_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"));
    let topics = topics
        .iter()
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let dlq = opts
        .dead_letter
        .map(|d| format!("dead_letter_topic = {d:?}\n"))
        .unwrap_or_default();
    let properties = if opts.kafka_properties.is_empty() {
        String::new()
    } else {
        let mut t = String::from("\n[kafka.properties]\n");
        for (k, v) in opts.kafka_properties {
            t.push_str(&format!("{k:?} = {v:?}\n"));
        }
        t
    };
    let lateness = opts
        .allowed_lateness
        .map(|l| format!("allowed_lateness = {l:?}\n"))
        .unwrap_or_default();
    let snapshot = opts
        .snapshot_min_bytes
        .map(|n| format!("snapshot_min_bytes = {n}\n"))
        .unwrap_or_default();
    let body = format!(
        r#"[kafka]
brokers = {brokers:?}
group_id = "forewarn-test-{admin_port}"
topics = [{topics}]
{dlq}{properties}
[events]
type = "type"
customer = "customer_id"
time = "ts"
id = "event_id"
idle_timeout = "1s"
{lateness}
[customers]
email = "customer.email"
{customers_toml}

[state]
dir = {state:?}
{snapshot}
[rules]
dir = {rules:?}

[admin]
listen = "127.0.0.1:{admin_port}"
{admin_toml}

{channels}
{extra_toml}
"#,
        state = dir.join("state").display().to_string(),
        rules = rules.display().to_string(),
        customers_toml = opts.customers_toml,
        admin_toml = opts.admin_toml,
        extra_toml = opts.extra_toml,
    );
    let path = dir.join("forewarn.toml");
    std::fs::write(&path, body).expect("write config");
    path
}

pub fn smtp_channel(port: u16) -> String {
    format!(
        "[channels.email]\ntype = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"Acme Care <care@acme.example>\"\ntimeout = \"5s\"\nretry_initial = \"100ms\"\nretry_max = \"1s\"\n"
    )
}

/// The `forewarn` binary running as a child process, stderr captured to a file.
pub struct DaemonProcess {
    pub child: Child,
    pub log: PathBuf,
    pub admin: String,
}

impl DaemonProcess {
    pub fn spawn(config: &Path, admin_port: u16, log: &Path) -> DaemonProcess {
        Self::spawn_with_args(config, admin_port, log, &[])
    }

    /// `forewarn run --config CONFIG ARGS…` (e.g. `--reset-state`).
    pub fn spawn_with_args(
        config: &Path,
        admin_port: u16,
        log: &Path,
        args: &[&str],
    ) -> DaemonProcess {
        Self::spawn_with_env(config, admin_port, log, args, &[])
    }

    /// [`DaemonProcess::spawn_with_args`] with more environment variables
    /// (e.g. the one `admin.token_env` names).
    pub fn spawn_with_env(
        config: &Path,
        admin_port: u16,
        log: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> DaemonProcess {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("daemon log");
        let child = Command::new(env!("CARGO_BIN_EXE_forewarn"))
            .args(["run", "--config"])
            .arg(config)
            .args(args)
            .env("FOREWARN_LOG", "info,rdkafka=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start forewarn");
        DaemonProcess {
            child,
            log: log.to_path_buf(),
            admin: format!("127.0.0.1:{admin_port}"),
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log, for assertion messages.
    pub fn logs_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    /// Polls `/readyz` until it answers 200; on timeout, `Err` with its
    /// last answer (the caller adds the log it wants to show).
    pub async fn ready_within(&self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            match http_get(&self.admin, "/readyz") {
                Ok((200, _)) => return Ok(()),
                last if start.elapsed() > timeout => {
                    return Err(format!("not ready within {timeout:?}; /readyz: {last:?}"))
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        send_signal(&self.child, sig);
    }

    /// Waits for the process to exit; `None` on timeout.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// [`Self::wait_exit`], failing the test with `what` and the last
    /// lines of the daemon's log when it is still running at `timeout`
    /// (what it was waiting on is the first thing to know).
    pub async fn exits_within(
        &mut self,
        timeout: Duration,
        what: &str,
    ) -> std::process::ExitStatus {
        match self.wait_exit(timeout).await {
            Some(status) => status,
            None => panic!(
                "{what}: still running after {timeout:?}; the log's last lines:\n{}",
                self.logs_tail(40)
            ),
        }
    }

    pub async fn wait_ready(&self, timeout: Duration) {
        let admin = self.admin.clone();
        let log = self.log.clone();
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = http_get(&admin, "/readyz") {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "forewarn not ready within {timeout:?}; /readyz: {:?}\nlog:\n{}",
                    http_get(&admin, "/readyz"),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A rules folder for tests: `dir/rules/rules.toml` and one template,
/// `notice`, whose subject names the rule and customer and whose text is
/// `text`. Returns the folder.
#[allow(dead_code)]
pub fn write_rules_dir(dir: &Path, rules_toml: &str, text: &str) -> PathBuf {
    let rules = dir.join("rules");
    let templates = rules.join("templates");
    std::fs::create_dir_all(&templates).expect("rules dir");
    std::fs::write(rules.join("rules.toml"), rules_toml).expect("rules file");
    std::fs::write(
        templates.join("notice.subject"),
        "{{ rule.id }} for {{ customer.id }}\n",
    )
    .expect("template");
    std::fs::write(templates.join("notice.txt"), text).expect("template");
    rules
}
