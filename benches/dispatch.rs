//! Delivery benchmark: `cargo bench --bench dispatch`.
//!
//! Prints figures, asserts nothing about speed. Needs python3 with aiosmtpd
//! (`deploy/test.sh` installs it; `FOREWARN_TEST_PYTHON` picks another
//! interpreter); without it the benchmark says so and exits 0.
//!
//! 1. Outbox alone: M notifications enqueued one per transaction (as the
//!    daemon does per event), then settled one per transaction (as the
//!    dispatcher does per send), nothing delivered: the redb cost of a
//!    message.
//! 2. Dispatcher end to end, for 1, 4 and 16 workers (the SMTP channel's
//!    `concurrency`): M notifications enqueued one per `Dispatcher::enqueue`
//!    on the runtime's main thread (as the daemon does), delivered to a real
//!    SMTP server (aiosmtpd, `tests/harness/smtp_sink.py`) over loopback,
//!    until all M `Settled { outcome: "sent" }` have arrived. Prints the
//!    enqueue rate (outbox writes/s while the workers deliver), messages/s
//!    from the first enqueue to the last settlement, the wall time, the CPU
//!    time of this process and of the sink, and how many `.eml` files the
//!    sink stored (a warning when that is not M).
//! 3. The SMTP channel alone, same worker counts, no outbox, no dispatcher:
//!    what lettre and the sink allow, the ceiling for part 2.
//! 4. The dispatcher again with the `file` channel on tmpfs, where delivery
//!    costs next to nothing: the dispatcher's own ceiling, outbox included.
//!
//! Every run gets a fresh sink and a fresh state dir in a temp dir under
//! `TMPDIR`, so the redb fsyncs are real. Delivered mail goes to `/dev/shm`
//! when there is one: the sink fsyncs every message on its single event
//! loop, which on a disk makes the Python sink, not forewarn, the limit
//! (`FOREWARN_BENCH_SINK_DIR=DIR` puts it elsewhere, an empty value in the
//! temp dir). The tokio runtime is the daemon's (`Runtime::new()`, one
//! worker thread per core). A dispatcher run that has not settled within
//! `RUN_BUDGET_SECS` (a channel run: `CHANNEL_BUDGET_SECS`) stops and prints
//! what it got, which keeps the whole benchmark under two minutes on two
//! cores.
//!
//! `FOREWARN_BENCH_MESSAGES=M` sets M (default 2000),
//! `FOREWARN_BENCH_WORKERS=1,4,16` the worker counts, and
//! `FOREWARN_BENCH_ONLY=outbox|dispatcher|channel|file` runs one part.

mod common;
use common::group;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use forewarn::config::{ChannelConfig, Config};
use forewarn::metrics::Metrics;
use forewarn::notify::channel::Channel;
use forewarn::notify::dispatcher::Dispatcher;
use forewarn::notify::outbox::{Outbox, Pending, Settle};
use forewarn::notify::template::Rendered;
use forewarn::notify::{email, EpisodeInfo, Notification};
use forewarn::rules::Class;
use forewarn::state::Store;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const WORKERS: &[usize] = &[1, 4, 16];
const DEFAULT_MESSAGES: usize = 2000;
const RUN_BUDGET_SECS: u64 = 30;
const CHANNEL_BUDGET_SECS: u64 = 10;
const CHANNEL: &str = "email";
const FROM: &str = "Acme Care <care@acme.example>";

/// 2026-11-24T09:00:00Z.
const BASE_TIME: i64 = 1_795_510_800_000;

// ------------------------------------------------------------ inputs

fn messages() -> usize {
    std::env::var("FOREWARN_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&m| m > 0)
        .unwrap_or(DEFAULT_MESSAGES)
}

/// `FOREWARN_BENCH_WORKERS=1,4,16` (the default): the worker counts.
fn workers() -> Vec<usize> {
    std::env::var("FOREWARN_BENCH_WORKERS")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|w| w.trim().parse().ok())
                .filter(|&w| w > 0)
                .collect::<Vec<usize>>()
        })
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| WORKERS.to_vec())
}

/// `FOREWARN_BENCH_ONLY=outbox|dispatcher|channel|file` runs one part.
fn part(name: &str) -> bool {
    std::env::var("FOREWARN_BENCH_ONLY").map_or(true, |p| p == name)
}

fn python() -> String {
    std::env::var("FOREWARN_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn sink_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/smtp_sink.py")
}

/// A cart reminder of ordinary size: text and HTML alternatives.
fn notification(run: &str, i: usize) -> Notification {
    let customer = format!("c-{i:06}");
    let start = BASE_TIME + i as i64 * 1000;
    let items = "Trail running shoes (size 42), 2 pairs of merino socks, a 750 ml steel bottle";
    let text = format!(
        "Hi Ana,\n\nyou left {items} in your cart, 129.90 EUR in total. \
         We kept it for you: pick up where you left off at \
         https://shop.acme.example/cart?c={customer}\n\n\
         If something went wrong at checkout (a card that was declined, a \
         delivery option you missed), reply to this email and a person will \
         answer within the hour.\n\nAcme Care\n"
    );
    let html = format!(
        "<!doctype html><html><body style=\"font-family:sans-serif\">\
         <p>Hi Ana,</p><p>you left <strong>{items}</strong> in your cart, \
         <strong>129.90&nbsp;EUR</strong> in total.</p>\
         <p><a href=\"https://shop.acme.example/cart?c={customer}\" \
         style=\"background:#0a5;color:#fff;padding:8px 16px;text-decoration:none\">\
         Back to my cart</a></p><p>If something went wrong at checkout (a card \
         that was declined, a delivery option you missed), reply to this email \
         and a person will answer within the hour.</p><p>Acme Care</p></body></html>"
    );
    Notification {
        id: format!("{run}-{i:06}"),
        rule_id: "checkout-dropoff".into(),
        channel: CHANNEL.into(),
        class: Class::Marketing,
        customer: customer.clone(),
        recipient: Some("x@example.com".into()),
        message: Rendered {
            subject: "You left something in your cart".into(),
            text,
            html: Some(html),
        },
        episode: EpisodeInfo {
            key: vec![customer.clone()],
            start,
            deadline: Some(start + 30 * 60_000),
            partition: (i % 8) as i32,
        },
        event: serde_json::json!({
            "type": "checkout_started",
            "customer_id": customer,
            "ts": start,
            "event_id": format!("e-{i}"),
            "cart": {"total": 129.9, "currency": "EUR", "items": 4},
            "customer": {"name": "Ana", "email": "x@example.com"},
        }),
        entry: None,
        unsubscribe_url: None,
        not_before: None,
    }
}

/// `[channels.email]` of type smtp, to the sink on `port`.
fn smtp_channel(port: u16, concurrency: usize) -> String {
    format!(
        "type = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
         from = \"{FROM}\"\ntimeout = \"10s\"\nretry_initial = \"100ms\"\n\
         retry_max = \"1s\"\nconcurrency = {concurrency}\n"
    )
}

/// `[channels.email]` of type file, into `dir`.
fn file_channel(dir: &Path, concurrency: usize) -> String {
    format!(
        "type = \"file\"\ndir = {:?}\nfrom = \"{FROM}\"\nretry_initial = \"100ms\"\n\
         retry_max = \"1s\"\nconcurrency = {concurrency}\n",
        dir.display().to_string()
    )
}

/// The channel as the daemon would load it from its config file.
fn channel_config(dir: &Path, channel: &str) -> Result<ChannelConfig, String> {
    let body = format!(
        "[kafka]\nbrokers = \"127.0.0.1:9092\"\ntopics = [\"behavior-events\"]\n\
         [channels.{CHANNEL}]\n{channel}"
    );
    let path = dir.join("forewarn.toml");
    std::fs::write(&path, body).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let mut cfg = Config::load_with_env(&path, vec![]).map_err(|e| e.to_string())?;
    cfg.channels
        .remove(CHANNEL)
        .ok_or_else(|| "the config has no email channel".into())
}

// ------------------------------------------------------------ the sink

/// aiosmtpd on an ephemeral loopback port (`--port 0`; the port comes
/// back on the `READY` line). Killed on drop.
struct Sink {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Sink {
    fn start(mail_dir: &Path, log: &Path) -> Result<Sink, String> {
        std::fs::create_dir_all(mail_dir).map_err(|e| e.to_string())?;
        let err = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let mut child = Command::new(python())
            .arg(sink_script())
            .args(["--port", "0", "--dir"])
            .arg(mail_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", python()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut sink = Sink {
            child,
            port: 0,
            log: log.to_path_buf(),
        };
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        sink.port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| {
                format!(
                    "the SMTP sink did not start (said {line:?}); its log:\n{}",
                    std::fs::read_to_string(&sink.log).unwrap_or_default()
                )
            })?;
        Ok(sink)
    }

    fn cpu(&self) -> Option<Duration> {
        process_cpu(&format!("/proc/{}/stat", self.child.id()))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `.eml` files in `dir` (the sink's and the file channel's messages;
/// both write under a `.tmp` name first and rename).
fn eml_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .count()
        })
        .unwrap_or(0)
}

// ------------------------------------------------------------ measuring

/// User + system CPU time of a process, from `/proc/PID/stat`.
fn process_cpu(stat: &str) -> Option<Duration> {
    let s = std::fs::read_to_string(stat).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn self_cpu() -> Option<Duration> {
    process_cpu("/proc/self/stat")
}

fn cpu_delta(after: Option<Duration>, before: Option<Duration>) -> String {
    match (after, before) {
        (Some(a), Some(b)) => format!("{:.2} s", a.saturating_sub(b).as_secs_f64()),
        _ => "n/a".into(),
    }
}

fn rate(n: usize, d: Duration) -> String {
    group(n as f64 / d.as_secs_f64().max(1e-9))
}

fn per_message(d: Duration, n: usize) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0 / n.max(1) as f64)
}

// ------------------------------------------------------------ run dirs

/// Where delivered messages go: `FOREWARN_BENCH_SINK_DIR`, else
/// `/dev/shm` when there is one, else the run's temp dir.
fn mail_root() -> Option<PathBuf> {
    static ROOT: OnceLock<Option<PathBuf>> = OnceLock::new();
    ROOT.get_or_init(|| match std::env::var_os("FOREWARN_BENCH_SINK_DIR") {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        Some(_) => None,
        None => Some(PathBuf::from("/dev/shm")).filter(|p| {
            tempfile::Builder::new()
                .prefix("forewarn-bench-probe-")
                .tempdir_in(p)
                .is_ok()
        }),
    })
    .clone()
}

/// One run's directories: a fresh temp dir (config, state dir, sink log)
/// and the mail dir, removed on drop.
struct RunDirs {
    tmp: tempfile::TempDir,
    mail: PathBuf,
}

impl RunDirs {
    fn new(tag: &str) -> Result<RunDirs, String> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("forewarn-bench-{tag}-"))
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mail = match mail_root() {
            Some(root) => root.join(tmp.path().file_name().expect("a temp dir name")),
            None => tmp.path().join("mail"),
        };
        Ok(RunDirs { tmp, mail })
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }
}

impl Drop for RunDirs {
    fn drop(&mut self) {
        if !self.mail.starts_with(self.tmp.path()) {
            let _ = std::fs::remove_dir_all(&self.mail);
        }
    }
}

// ------------------------------------------------------------ [1] outbox alone

/// Enqueue then settle, one notification per transaction. Returns the
/// seconds per message of both together.
fn outbox_alone(m: usize) -> Result<Duration, String> {
    let dirs = RunDirs::new("outbox")?;
    let outbox = Outbox::open(Store::open(dirs.path()).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let notes: Vec<Notification> = (0..m).map(|i| notification("outbox", i)).collect();
    let ids: Vec<String> = notes.iter().map(|n| n.id.clone()).collect();
    let t = Instant::now();
    for n in notes {
        outbox
            .enqueue(vec![n], BASE_TIME)
            .map_err(|e| e.to_string())?;
    }
    let enq = t.elapsed();
    let t = Instant::now();
    for id in ids {
        outbox
            .settle(&[(id, Settle::Sent)], BASE_TIME)
            .map_err(|e| e.to_string())?;
    }
    let settle = t.elapsed();
    println!(
        "  enqueue, 1 per transaction: {} writes/s ({} each)",
        rate(m, enq),
        per_message(enq, m)
    );
    println!(
        "  settle,  1 per transaction: {} writes/s ({} each)",
        rate(m, settle),
        per_message(settle, m)
    );
    println!(
        "  one enqueue + one settle in turn: {} messages/s (redb has one writer at a time, whatever the worker count; compare [4])",
        rate(m, enq + settle)
    );
    Ok(enq + settle)
}

// ------------------------------------------------------------ [2] and [4] dispatcher

/// What the dispatcher delivers to.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    Smtp,
    File,
}

async fn dispatcher_run(target: Target, workers: usize, m: usize) -> Result<(), String> {
    let dirs = RunDirs::new(&format!("dispatch{workers}"))?;
    let (sink, channel) = match target {
        Target::Smtp => {
            let sink = Sink::start(&dirs.mail, &dirs.path().join("sink.log"))?;
            let channel = smtp_channel(sink.port, workers);
            (Some(sink), channel)
        }
        Target::File => (None, file_channel(&dirs.mail, workers)),
    };
    let cfg = channel_config(dirs.path(), &channel)?;
    let store = Store::open(&dirs.path().join("state")).map_err(|e| e.to_string())?;
    let outbox = Outbox::open(store).map_err(|e| e.to_string())?;
    let channels = BTreeMap::from([(CHANNEL.to_string(), cfg)]);
    let shutdown = CancellationToken::new();
    let (dispatcher, mut settled, mut tasks) = Dispatcher::start(
        &channels,
        outbox,
        Arc::new(Metrics::new()),
        shutdown.clone(),
    )?;
    let run = format!("w{workers}");
    let notes: Vec<Notification> = (0..m).map(|i| notification(&run, i)).collect();

    let sink_cpu = || sink.as_ref().and_then(Sink::cpu);
    let probe = tokio::spawn(stall_probe(shutdown.clone()));
    let (cpu0, sink0) = (self_cpu(), sink_cpu());
    let start = Instant::now();
    for n in notes {
        dispatcher.enqueue(vec![n]).map_err(|e| e.to_string())?;
    }
    let enqueued = start.elapsed();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(RUN_BUDGET_SECS);
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut done = 0;
    let mut cut = false;
    while done < m {
        match tokio::time::timeout_at(deadline, settled.recv()).await {
            Ok(Some(s)) => {
                *outcomes.entry(s.outcome).or_default() += 1;
                done += 1;
            }
            Ok(None) => break,
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    let wall = start.elapsed();
    let (cpu1, sink1) = (self_cpu(), sink_cpu());
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    let stall = probe.await.unwrap_or_default();
    drop(sink);
    let eml = eml_count(&dirs.mail);
    let sent = outcomes.get("sent").copied().unwrap_or(0);

    println!(
        "  workers {workers:>2}: end to end {} messages/s ({sent} sent in {:.2} s wall, first enqueue to last settlement)",
        rate(sent, wall),
        wall.as_secs_f64()
    );
    println!(
        "              enqueue {} outbox writes/s ({} each, {:.2} s for {m}, workers delivering meanwhile)",
        rate(m, enqueued),
        per_message(enqueued, m),
        enqueued.as_secs_f64()
    );
    let receiver = match target {
        Target::Smtp => "smtp sink",
        Target::File => "file channel dir",
    };
    println!(
        "              cpu: forewarn {}{}; runtime stall: a 1 ms timer fired up to {:.1} ms late; {receiver} holds {eml} .eml files",
        cpu_delta(cpu1, cpu0),
        match target {
            Target::Smtp => format!(", smtp sink {}", cpu_delta(sink1, sink0)),
            Target::File => String::new(),
        },
        stall.as_secs_f64() * 1000.0,
    );
    if cut {
        println!(
            "              cut short at the {RUN_BUDGET_SECS} s budget with {done} of {m} settled: the rate is for what settled; sends in flight then may have arrived too"
        );
    } else if eml != m {
        println!("              WARNING: {receiver} holds {eml} .eml files, expected {m}");
    }
    if outcomes.keys().any(|&o| o != "sent") {
        println!("              WARNING: outcomes other than sent: {outcomes:?}");
    }
    Ok(())
}

/// How late a 1 ms timer on the runtime's worker threads fires, at worst,
/// until `stop`: what blocking work on those threads (such as a redb
/// commit inside an async task) costs everything else on the runtime.
async fn stall_probe(stop: CancellationToken) -> Duration {
    let mut worst = Duration::ZERO;
    while !stop.is_cancelled() {
        let t = Instant::now();
        tokio::time::sleep(Duration::from_millis(1)).await;
        worst = worst.max(t.elapsed().saturating_sub(Duration::from_millis(1)));
    }
    worst
}

// ------------------------------------------------------------ [3] channel alone

async fn channel_run(workers: usize, m: usize) -> Result<(), String> {
    let dirs = RunDirs::new(&format!("channel{workers}"))?;
    let sink = Sink::start(&dirs.mail, &dirs.path().join("sink.log"))?;
    let cfg = channel_config(dirs.path(), &smtp_channel(sink.port, workers))?;
    let channel = Arc::new(Channel::build(&cfg)?);
    let run = format!("c{workers}");
    let notes: Vec<Notification> = (0..m).map(|i| notification(&run, i)).collect();
    let slots = Arc::new(Semaphore::new(workers));
    let mut sends = JoinSet::new();
    let deadline = Instant::now() + Duration::from_secs(CHANNEL_BUDGET_SECS);
    let (cpu0, sink0) = (self_cpu(), sink.cpu());
    let start = Instant::now();
    let (mut ok, mut failed) = (0, 0);
    let mut tally = |r: Result<bool, tokio::task::JoinError>| {
        if r.unwrap_or(false) {
            ok += 1;
        } else {
            failed += 1;
        }
    };
    for n in notes {
        if Instant::now() > deadline {
            break;
        }
        let permit = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("never closed");
        let channel = Arc::clone(&channel);
        sends.spawn(async move {
            let r = channel.send(&n).await;
            drop(permit);
            r.is_ok()
        });
        while let Some(r) = sends.try_join_next() {
            tally(r);
        }
    }
    while let Some(r) = sends.join_next().await {
        tally(r);
    }
    let wall = start.elapsed();
    let (cpu1, sink1) = (self_cpu(), sink.cpu());
    drop(sink);
    let eml = eml_count(&dirs.mail);
    println!(
        "  workers {workers:>2}: {} messages/s ({ok} sent in {:.2} s wall{}; cpu: forewarn {}, smtp sink {}; sink holds {eml} .eml files)",
        rate(ok, wall),
        wall.as_secs_f64(),
        if ok + failed < m { ", stopped at the budget" } else { "" },
        cpu_delta(cpu1, cpu0),
        cpu_delta(sink1, sink0)
    );
    if failed > 0 {
        println!("              WARNING: {failed} sends failed");
    }
    if eml != ok {
        println!("              WARNING: the sink holds {eml} .eml files, {ok} sends succeeded");
    }
    Ok(())
}

// ------------------------------------------------------------ main

fn aiosmtpd_available() -> bool {
    Command::new(python())
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn main() {
    let total = Instant::now();
    if !aiosmtpd_available() {
        println!(
            "dispatch benchmark skipped: `{} -c 'import aiosmtpd'` failed. It delivers to a real \
             SMTP server (aiosmtpd): run deploy/test.sh, which installs it, or set \
             FOREWARN_TEST_PYTHON to a python that has it.",
            python()
        );
        return;
    }
    let m = messages();
    let workers = workers();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let sample = notification("sample", 0);
    let from = FROM.parse().expect("a valid mailbox");
    let wire = email::build(&sample, &from)
        .map(|msg| msg.formatted().len())
        .unwrap_or(0);
    let record = serde_json::to_vec(&Pending {
        notification: sample,
        enqueued_at: BASE_TIME,
        attempts: 0,
        next_at: BASE_TIME,
        last_error: None,
    })
    .map_or(0, |v| v.len());
    println!(
        "forewarn dispatch benchmark: {m} notifications per run, workers {workers:?}, SMTP over loopback to aiosmtpd"
    );
    println!(
        "message: {wire} bytes on the wire (text + HTML), {record} bytes as an outbox record; cores: {cores} (available_parallelism)"
    );
    println!(
        "state dirs under {}; delivered mail under {}",
        std::env::temp_dir().display(),
        mail_root().map_or_else(
            || "the state dir's temp dir".into(),
            |p| p.display().to_string()
        )
    );
    let _ = std::io::stdout().flush();

    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        if part("outbox") {
            println!("\n[1] outbox alone (redb, no delivery)");
            if let Err(e) = outbox_alone(m) {
                println!("  failed: {e}");
            }
        }
        if part("dispatcher") {
            println!(
                "\n[2] dispatcher end to end: enqueue 1 per call, SMTP channel, wait for every `sent`"
            );
            for &w in &workers {
                if let Err(e) = dispatcher_run(Target::Smtp, w, m).await {
                    println!("  workers {w:>2}: failed: {e}");
                }
            }
        }
        if part("channel") {
            println!(
                "\n[3] SMTP channel alone (no outbox, no dispatcher; {CHANNEL_BUDGET_SECS} s budget each): the ceiling for [2]"
            );
            for &w in &workers {
                if let Err(e) = channel_run(w, m).await {
                    println!("  workers {w:>2}: failed: {e}");
                }
            }
        }
        if part("file") {
            println!(
                "\n[4] dispatcher with the file channel (near-free delivery): its own ceiling, outbox included"
            );
            for &w in &workers {
                if let Err(e) = dispatcher_run(Target::File, w, m).await {
                    println!("  workers {w:>2}: failed: {e}");
                }
            }
        }
    });
    println!("\ntotal: {:.1} s", total.elapsed().as_secs_f64());
}
