//! Engine benchmark: `cargo bench --bench engine`. `deploy/pgo/build.sh
//! --bench` builds and runs it profile-guided, as the container image's
//! binary is built (trained on the sample week, not on this stream).
//!
//! Prints figures, asserts nothing about speed. Single-threaded throughout.
//!
//! 1. Throughput: JSON decode + evaluation of a realistic mixed event
//!    stream (1,000,000 events, 100,000 customers, 1 ms apart) against the
//!    shipped rules (`rules/`, whatever is there) plus 200 generated filler
//!    rules. Median of 3 runs after a warm-up, each on a fresh engine
//!    (state grows from nothing). Then the sustained rate: one engine fed
//!    a continuing stream, untimed for 40 minutes of event time (past the
//!    longest window, so episodes close, expire and fire as fast as they
//!    open), then 3 timed stretches of new events; this is what a daemon
//!    that has run for a while does. A decode-only figure is printed for
//!    comparison.
//! 2. Memory: live heap bytes per open absence episode at one million open
//!    episodes of the checkout drop-off rule, measured with a counting
//!    global allocator (requested sizes; malloc's own overhead excluded);
//!    again at 400,000, just past a doubling of the episodes' key index
//!    (the most per episode of the counts measured).
//!    Then the time to restore them, as at a restart: every partition's
//!    snapshot rows read back into a fresh engine (`Engine::restore`).
//! 3. Durable: the throughput run again with the daemon's durability on:
//!    every `state.commit_max_events` events (5,000 by default; 1,000 for
//!    comparison) the engine's changes, the decided notifications (through
//!    the daemon's decide stage: the contact policy with a marketing cap,
//!    then the templates), their decision log entries and the positions
//!    commit in one fsync'd redb
//!    transaction on a second thread while the next batch is processed,
//!    as `daemon::Pipeline::start_commit` does. Wall time, since the fsync
//!    waits are the point; the engine-only wall figure of the same events
//!    is printed beside it.
//!
//! Per-core figures use the thread's CPU time (`/proc/thread-self/schedstat`)
//! so that other processes on the machine do not distort them; wall time is
//! printed alongside. A measured run is cut short (and says so) when the
//! warm-up shows it would take more than `RUN_BUDGET_SECS`, to keep the
//! whole benchmark near two minutes.
//!
//! The memory phase runs first: the allocator counts only until it ends, so
//! the throughput loop does not pay for atomic counters. The summary at the
//! end prints both figures next to their targets.
//!
//! For profiling: `FOREWARN_BENCH_ONLY=memory|throughput|durable` runs one part,
//! `FOREWARN_BENCH_EVENTS=N` shrinks the stream, the sustained stretches
//! and the episode count (not the sustained warm-up: its 40 minutes of
//! event time are what make the state steady), and
//! `FOREWARN_BENCH_CUSTOMERS=N` spreads the stream over N customers rather
//! than 100,000 (the state's size follows).

mod common;
use common::group;

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::hint::black_box;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use forewarn::engine::persist::{self, Row};
use forewarn::engine::{project, Clock, Engine, EngineConfig, Outcome, Output, Stats};
use forewarn::event::{EventSchema, FieldPath, Millis};
use forewarn::rules::{load_rules, LoadOptions, Rule, RuleKind, RuleSet};

// ------------------------------------------------------------ allocator

/// Counts live heap bytes (requested sizes, not allocator overhead) while
/// `COUNTING` is on, over the allocator the daemon runs with
/// (`forewarn::alloc`, tuned the same way at the start of `main`).
struct CountingAlloc;

static INNER: forewarn::alloc::Allocator = forewarn::alloc::Allocator;

static COUNTING: AtomicBool = AtomicBool::new(true);
static LIVE: AtomicIsize = AtomicIsize::new(0);

#[inline]
fn track(delta: isize) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE.fetch_add(delta, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { INNER.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { INNER.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { INNER.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { INNER.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn live_bytes() -> isize {
    LIVE.load(Ordering::SeqCst)
}

// ------------------------------------------------------------ parameters

const STREAM_EVENTS: usize = 1_000_000;
/// Customers the stream spreads over, unless `FOREWARN_BENCH_CUSTOMERS`
/// says otherwise ([`customers`]). The state an engine holds grows with
/// them: at 100,000, some 440,000 open episodes and 570,000 windows once
/// steady, several hundred megabytes reached at random.
const CUSTOMERS: u64 = 100_000;
const PARTITIONS: u64 = 8;
const WARMUP_EVENTS: usize = 200_000;
const RUNS: usize = 3;
/// Events fed to the sustained engine before it is timed: 40 minutes of
/// event time, past the longest window of the filler rules (30 minutes),
/// so that episodes and windows close and expire as fast as they open.
const SUSTAINED_WARMUP: usize = 40 * 60_000;
const EPISODES: usize = 1_000_000;
/// A second count for the memory figure: just past a doubling of the
/// episodes' key index (50,000 per partition), the most per episode of 22
/// counts from 300,000 to 2,000,000 (`FOREWARN_BENCH_EVENTS=N`) since the
/// slab grows by chunks (1,600,000 was the most before, past the next
/// doubling). Tables grow in steps, so one count alone can sit at a kind
/// spot between them.
const EPISODES_PAST_DOUBLING: usize = 400_000;
const FILLER_RULES: usize = 200;
/// Events in the durable run ([3]): enough for the store to hold a few
/// hundred thousand episodes and windows.
const DURABLE_EVENTS: usize = 500_000;

const TARGET_EVENTS_PER_SEC: f64 = 500_000.0;
const TARGET_BYTES_PER_EPISODE: f64 = 300.0;

/// 2026-11-24T09:00:00Z.
const BASE_TIME: Millis = 1_795_510_800_000;
const MINUTE: Millis = 60_000;

const NAMES: &[&str] = &[
    "Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kemal", "Lena",
    "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tomoko",
];
const CARRIERS: &[&str] = &["DHL", "UPS", "DPD", "GLS", "PostNL"];
const PLANS: &[&str] = &["Solo", "Family", "Pro"];
const FAIL_REASONS: &[&str] = &[
    "card_declined",
    "expired_card",
    "insufficient_funds",
    "processing_error",
];
const PLATFORMS: &[&str] = &["ios", "android", "web"];
const SCREENS: &[&str] = &["home", "search", "product", "cart", "payment", "orders"];
const DEVICES: &[&str] = &["mobile", "desktop", "tablet"];

/// Event types the generator produces natively, with their share per mille.
/// `extra` is the share of event types that shipped rules name but the
/// generator has no shape for (page views when there are none).
const MIX: &[(&str, u64)] = &[
    ("page_view", 590),
    ("checkout_started", 100),
    ("order_placed", 60),
    ("payment_succeeded", 40),
    ("payment_failed", 30),
    ("app_error", 70),
    ("carrier_delay_reported", 20),
    ("shipment_dispatched", 35),
    ("shipment_delivered", 30),
    ("order_cancelled", 5),
    ("support_ticket_opened", 10),
    ("extra", 10),
];

fn schema() -> EventSchema {
    EventSchema {
        kind: FieldPath::parse("type").unwrap(),
        customer: FieldPath::parse("customer_id").unwrap(),
        time: FieldPath::parse("ts").unwrap(),
        id: Some(FieldPath::parse("event_id").unwrap()),
    }
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        allowed_lateness: 5_000,
        ledger_retention: 90 * 24 * 3_600_000,
        send_time_guard: false,
        durable: false,
    }
}

fn new_engine(rules: &Arc<RuleSet>) -> Engine {
    Engine::new(
        Arc::clone(rules),
        engine_config(),
        &[FieldPath::parse("customer.email").unwrap()],
    )
}

fn partition_of(customer: &str) -> i32 {
    (xxhash_rust::xxh3::xxh3_64(customer.as_bytes()) % PARTITIONS) as i32
}

/// How many customers the stream spreads over: `FOREWARN_BENCH_CUSTOMERS`
/// (at least 1), else [`CUSTOMERS`]. Fewer customers make the state
/// smaller and more make it larger, but they also change the work: with
/// more events per customer, windows fill and rules fire more often, so
/// compare the decisions each run prints as well as its rate.
fn customers() -> u64 {
    static N: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("FOREWARN_BENCH_CUSTOMERS")
            .ok()
            .and_then(|v| v.replace('_', "").parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(CUSTOMERS)
    })
}

/// `FOREWARN_BENCH_ONLY=memory|throughput|durable` runs one part;
/// `FOREWARN_BENCH_EVENTS=N` shrinks the sizes (profiling, callgrind).
fn knobs() -> ([bool; 3], Option<usize>) {
    let only = std::env::var("FOREWARN_BENCH_ONLY").unwrap_or_default();
    let events = std::env::var("FOREWARN_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok());
    let on = |part: &str| only.is_empty() || only == part;
    ([on("memory"), on("throughput"), on("durable")], events)
}

/// This thread's CPU time (Linux `schedstat`, nanoseconds): unlike wall
/// time it does not count time the core spent on other processes.
fn cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// This thread's time in the kernel and its page faults so far (Linux
/// `/proc/thread-self/stat`: `stime`, in the 1/100 s ticks procfs always
/// counts in, and `minflt` + `majflt`). A run that grows its state from
/// nothing touches new memory, which the kernel zeroes on the first
/// touch of each page (and a virtual machine's host may fault in again):
/// that share of the CPU time is the memory's price, not the engine's
/// work, and it is printed apart.
fn kernel_time() -> Option<(Duration, u64)> {
    let s = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Past the command name, which is in parentheses and may hold spaces:
    // field 3 (state) first, so field N is at N - 3.
    let f: Vec<&str> = s.get(s.rfind(')')? + 1..)?.split_whitespace().collect();
    let n = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    let faults = n(10)? + n(12)?;
    Some((Duration::from_millis(n(15)? * 10), faults))
}

/// Wall and CPU time of one measured section.
#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Option<Duration>,
    /// Of `cpu`, the kernel's time (10 ms resolution) and the page faults.
    kernel: Option<(Duration, u64)>,
}

impl Timing {
    /// CPU time when known: the per-core figure.
    fn best(&self) -> Duration {
        self.cpu.unwrap_or(self.wall)
    }
}

struct Stopwatch(Instant, Option<Duration>, Option<(Duration, u64)>);

impl Stopwatch {
    fn start() -> Stopwatch {
        let kernel = kernel_time();
        let cpu = cpu_time();
        Stopwatch(Instant::now(), cpu, kernel)
    }

    fn stop(&self) -> Timing {
        let wall = self.0.elapsed();
        let cpu = match (self.1, cpu_time()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let kernel = match (self.2, kernel_time()) {
            (Some((t0, f0)), Some((t1, f1))) => Some((t1.saturating_sub(t0), f1 - f0)),
            _ => None,
        };
        Timing { wall, cpu, kernel }
    }
}

// ------------------------------------------------------------ randomness

/// SplitMix64: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// A price with cents, in [lo, hi).
    fn money(&mut self, lo: u64, hi: u64) -> f64 {
        (lo * 100 + self.below((hi - lo) * 100)) as f64 / 100.0
    }
}

// ------------------------------------------------------------ event shapes

fn rfc3339(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .expect("in range")
        .to_string()
}

struct Customer {
    id: String,
    email: String,
    name: &'static str,
}

fn customer(n: u64) -> Customer {
    let name = NAMES[(n % NAMES.len() as u64) as usize];
    Customer {
        id: format!("c-{n:07}"),
        email: format!("{}.{n}@example.com", name.to_ascii_lowercase()),
        name,
    }
}

/// Appends one event as compact JSON to `buf`. Shapes follow
/// `deploy/local/sample-events.jsonl` and the fields the shipped rules,
/// templates and catalogs read.
fn write_event(buf: &mut Vec<u8>, rng: &mut Rng, seq: u64, kind: &str, c: &Customer, ts: Millis) {
    let mut s = String::with_capacity(320);
    write!(
        s,
        r#"{{"type":"{kind}","event_id":"ev-{seq:010}","customer_id":"{}","ts":"{}","customer":{{"email":"{}","name":"{}"}}"#,
        c.id,
        rfc3339(ts),
        c.email,
        c.name
    )
    .unwrap();
    let cnum = &c.id[2..];
    match kind {
        "page_view" => {
            let page = match rng.below(10) {
                0 => "/".to_string(),
                1 => "/orders".to_string(),
                2 => format!("/help/article-{}", rng.below(40)),
                3 => format!("/search?q=term{}", rng.below(500)),
                4 => "/account".to_string(),
                _ => format!("/products/sku-{}", rng.below(20_000)),
            };
            write!(
                s,
                r#","page":"{page}","referrer":"/","session_id":"s-{:08x}","device":"{}""#,
                rng.next() as u32,
                rng.pick(DEVICES)
            )
            .unwrap();
        }
        "checkout_started" => {
            let items = 1 + rng.below(4);
            let total = items as f64 * rng.money(4, 60);
            write!(
                s,
                r#","cart":{{"total":{total:.2},"items":{items},"currency":"EUR"}},"page":"/checkout","session_id":"s-{:08x}""#,
                rng.next() as u32
            )
            .unwrap();
        }
        "order_placed" => {
            write!(
                s,
                r#","order_id":"A-{}","total":{:.2},"items":{},"currency":"EUR","payment_method":"card""#,
                100_000 + rng.below(900_000),
                rng.money(5, 400),
                1 + rng.below(4)
            )
            .unwrap();
        }
        "payment_succeeded" | "payment_failed" => {
            let pkind = match rng.below(10) {
                0..=4 => "renewal",
                5..=7 => "checkout",
                _ => "one_off",
            };
            write!(
                s,
                r#","payment":{{"kind":"{pkind}","plan":"{}","amount":{:.2}"#,
                rng.pick(PLANS),
                rng.money(4, 60)
            )
            .unwrap();
            if kind == "payment_failed" {
                write!(s, r#","reason":"{}""#, rng.pick(FAIL_REASONS)).unwrap();
            }
            s.push('}');
        }
        "app_error" => {
            let platform = rng.pick(PLATFORMS);
            let code = match rng.below(20) {
                0 => "SHEET_TIMEOUT".to_string(),
                1 => "UPLOAD_EACCES".to_string(),
                2 => "GIFTCARD_CHECKSUM".to_string(),
                n => format!("E{}", 1000 + n * 7),
            };
            write!(
                s,
                r#","app":{{"platform":"{platform}","version":"4.{}.{}"}},"device":{{"os_version":"{}.{}","model":"M{}"}},"error":{{"screen":"{}","code":"{code}"}}"#,
                rng.below(5),
                rng.below(5),
                12 + rng.below(4),
                rng.below(3),
                rng.below(50),
                rng.pick(SCREENS)
            )
            .unwrap();
        }
        "carrier_delay_reported" => {
            write!(
                s,
                r#","order_id":"A-{}","carrier":"{}","delay_hours":{},"new_eta":"{}""#,
                100_000 + rng.below(900_000),
                rng.pick(CARRIERS),
                1 + rng.below(96),
                rfc3339(ts + 3 * 24 * 60 * MINUTE)
            )
            .unwrap();
        }
        "shipment_dispatched" => {
            // Shipment and order ids derive from the customer, so that a
            // delivery or cancellation can close the episode keyed on them.
            write!(
                s,
                r#","order_id":"A-{cnum}","shipment":{{"id":"SHP-{cnum}","carrier":"{}","tracking":"TRK{:012}","promised_delivery_at":"{}"}}"#,
                rng.pick(CARRIERS),
                rng.next() % 1_000_000_000_000,
                rfc3339(ts + 2 * 24 * 60 * MINUTE)
            )
            .unwrap();
        }
        "shipment_delivered" => {
            write!(
                s,
                r#","order_id":"A-{cnum}","shipment":{{"id":"SHP-{cnum}","carrier":"{}"}}"#,
                rng.pick(CARRIERS)
            )
            .unwrap();
        }
        "order_cancelled" => {
            write!(
                s,
                r#","order_id":"A-{cnum}","shipment":{{"id":"SHP-{cnum}"}},"reason":"customer_request""#
            )
            .unwrap();
        }
        "support_ticket_opened" => {
            write!(
                s,
                r#","ticket":{{"id":"T-{}","channel":"{}","topic":"{}"}}"#,
                rng.below(10_000_000),
                rng.pick(&["email", "chat", "phone"]),
                rng.pick(&["delivery", "billing", "checkout", "app"])
            )
            .unwrap();
        }
        _ => {
            write!(
                s,
                r#","source":"web","session_id":"s-{:08x}""#,
                rng.next() as u32
            )
            .unwrap();
        }
    }
    s.push('}');
    buf.extend_from_slice(s.as_bytes());
}

/// The pre-generated stream: all records in one buffer.
struct Stream {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Stream {
    fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let s = &self.data[start..end];
            start = end;
            s
        })
    }

    fn len(&self) -> usize {
        self.ends.len()
    }
}

/// A small ring of customers who recently did `X`, so the follow-up event
/// (order after checkout, delivery after dispatch) often closes an episode.
struct Recent {
    ring: Vec<u64>,
    next: usize,
}

impl Recent {
    fn new() -> Recent {
        Recent {
            ring: Vec::new(),
            next: 0,
        }
    }

    fn push(&mut self, c: u64) {
        const CAP: usize = 2_000;
        if self.ring.len() < CAP {
            self.ring.push(c);
        } else {
            self.ring[self.next] = c;
            self.next = (self.next + 1) % CAP;
        }
    }

    fn take(&self, rng: &mut Rng) -> Option<u64> {
        if self.ring.is_empty() {
            None
        } else {
            Some(self.ring[rng.below(self.ring.len() as u64) as usize])
        }
    }
}

/// The event stream, generated as it goes: each [`Generator::chunk`]
/// continues where the last one ended (sequence numbers, event time, the
/// rings of recent customers), so one engine can be fed for as long as a
/// measurement needs without the whole stream in memory.
struct Generator<'a> {
    rng: Rng,
    customers: Vec<Customer>,
    extra_types: &'a [String],
    checkouts: Recent,
    failures: Recent,
    dispatches: Recent,
    /// Events generated so far: the next one's sequence number, and its
    /// time in milliseconds after `BASE_TIME`.
    seq: u64,
}

impl<'a> Generator<'a> {
    fn new(extra_types: &'a [String]) -> Generator<'a> {
        Generator {
            rng: Rng(0x5EED_F0E1),
            customers: (0..customers()).map(customer).collect(),
            extra_types,
            checkouts: Recent::new(),
            failures: Recent::new(),
            dispatches: Recent::new(),
            seq: 0,
        }
    }

    /// The next `n` events, 1 ms apart.
    fn chunk(&mut self, n: usize) -> Stream {
        let mut data = Vec::with_capacity(n * 260);
        let mut ends = Vec::with_capacity(n);
        let total: u64 = MIX.iter().map(|(_, w)| w).sum();
        let rng = &mut self.rng;
        for _ in 0..n {
            let mut roll = rng.below(total);
            let mut kind = "page_view";
            for &(k, w) in MIX {
                if roll < w {
                    kind = k;
                    break;
                }
                roll -= w;
            }
            if kind == "extra" {
                kind = if self.extra_types.is_empty() {
                    "page_view"
                } else {
                    self.extra_types[rng.below(self.extra_types.len() as u64) as usize].as_str()
                };
            }
            let random = rng.below(self.customers.len() as u64);
            let follow = |ring: &Recent, rng: &mut Rng| {
                if rng.chance(700) {
                    ring.take(rng).unwrap_or(random)
                } else {
                    random
                }
            };
            let c = match kind {
                "order_placed" => follow(&self.checkouts, rng),
                "payment_succeeded" => follow(&self.failures, rng),
                "shipment_delivered" | "order_cancelled" => follow(&self.dispatches, rng),
                _ => random,
            };
            match kind {
                "checkout_started" => self.checkouts.push(c),
                "payment_failed" => self.failures.push(c),
                "shipment_dispatched" => self.dispatches.push(c),
                _ => {}
            }
            let ts = BASE_TIME + self.seq as Millis;
            write_event(
                &mut data,
                rng,
                self.seq,
                kind,
                &self.customers[c as usize],
                ts,
            );
            ends.push(data.len());
            self.seq += 1;
        }
        Stream { data, ends }
    }
}

fn generate_stream(n: usize, extra_types: &[String]) -> Stream {
    Generator::new(extra_types).chunk(n)
}

// ------------------------------------------------------------ rules

fn copy_dir(from: &Path, to: &Path) {
    let Ok(rd) = std::fs::read_dir(from) else {
        return;
    };
    std::fs::create_dir_all(to).unwrap();
    for entry in rd.filter_map(Result::ok) {
        let p = entry.path();
        if p.is_file() {
            std::fs::copy(&p, to.join(entry.file_name())).unwrap();
        }
    }
}

/// 200 filler rules of mixed kinds: 150 on event types that are never
/// produced, 50 on types that are.
fn filler_rules() -> String {
    let mut s = String::from(
        "# Generated by benches/engine.rs: filler rules for the throughput benchmark.\n",
    );
    let mut rule = |body: String| {
        s.push_str("\n[[rule]]\n");
        s.push_str(&body);
        s.push_str("notify = { channel = \"email\", template = \"bench_filler\" }\n");
    };
    // 150 rules on types never produced: 100 match, 30 absence, 20 threshold.
    for i in 0..150 {
        let ty = format!("legacy_event_{i:03}");
        let body = match i % 15 {
            0..=9 => format!(
                "id = \"bench-never-match-{i}\"\nkind = \"match\"\ntrigger = {{ event = \"{ty}\", if = 'event.value >= {i} && event.region == \"eu-{}\"' }}\n",
                i % 7
            ),
            10..=12 => {
                // A few wait for a common event: they are consulted as closers.
                let until = match i % 45 {
                    10 => "order_placed",
                    25 => "payment_succeeded",
                    _ => "legacy_followup",
                };
                format!(
                    "id = \"bench-never-absence-{i}\"\nkind = \"absence\"\ntrigger = {{ event = \"{ty}\" }}\nuntil = {{ event = \"{until}\" }}\nwithin = \"30m\"\n"
                )
            }
            _ => format!(
                "id = \"bench-never-threshold-{i}\"\nkind = \"threshold\"\ntrigger = {{ event = \"{ty}\", if = 'event.severity == \"high\"' }}\ncount = 3\nwithin = \"10m\"\n"
            ),
        };
        rule(body);
    }
    // 24 match rules on produced types, mostly selective.
    for j in 0..24 {
        let (ty, cond, extra) = match j % 8 {
            0 => (
                "page_view",
                format!(
                    r#"event.page == "/account/close-{j}" || (event.page.startsWith("/help/article-{j}") && event.device == "mobile")"#
                ),
                "cooldown = \"7d\"\nclass = \"marketing\"\n",
            ),
            1 => (
                "checkout_started",
                format!(
                    r#"event.cart.total >= {}.0 && event.cart.currency == "EUR""#,
                    150 + j * 5
                ),
                "cooldown = \"1d\"\n",
            ),
            2 => ("order_placed", format!("event.total >= {}.0", 390 + j), ""),
            3 => (
                "payment_failed",
                format!(
                    r#"event.payment.kind == "one_off" && event.payment.reason in ["processing_error", "do_not_honor"] && event.payment.amount >= {j}.5"#
                ),
                "once_per = [\"customer_id\"]\n",
            ),
            4 => (
                "app_error",
                format!(
                    r#"event.app.platform == "ios" && semver_match(event.app.version, ">=4.{}.0, <4.{}.2")"#,
                    j % 10,
                    j % 10
                ),
                "once_per = [\"customer_id\", \"app.version\"]\n",
            ),
            5 => (
                "carrier_delay_reported",
                format!("event.delay_hours >= {}", 80 + j),
                "",
            ),
            6 => (
                "shipment_dispatched",
                format!(
                    r#"event.carrier == "{}" && has(event.promised_delivery_at)"#,
                    CARRIERS[j % CARRIERS.len()]
                ),
                "cooldown = \"7d\"\nmode = \"shadow\"\n",
            ),
            _ => (
                "payment_succeeded",
                r#"event.payment.plan == "Pro" && event.payment.amount > 100.0"#.to_string(),
                "",
            ),
        };
        rule(format!(
            "id = \"bench-match-{j}\"\nkind = \"match\"\ntrigger = {{ event = \"{ty}\", if = '{cond}' }}\n{extra}"
        ));
    }
    // 16 absence rules on produced types, all within 30 minutes.
    for k in 0..16 {
        let body = match k % 4 {
            0 => format!(
                "trigger = {{ event = \"checkout_started\", if = 'event.cart.total >= {}.0' }}\nuntil = {{ event = \"order_placed\" }}\ncancel_on = [{{ event = \"support_ticket_opened\" }}]\n",
                20 + k * 5
            ),
            1 => format!(
                "trigger = {{ event = \"payment_failed\", if = 'event.payment.kind == \"renewal\" && event.payment.amount >= {k}.0' }}\nuntil = {{ event = \"payment_succeeded\" }}\non_repeat = \"{}\"\n",
                if k % 8 == 1 { "ignore" } else { "restart" }
            ),
            2 => "trigger = { event = \"shipment_dispatched\" }\nuntil = { event = \"shipment_delivered\" }\nkey = [\"shipment.id\"]\n".to_string(),
            _ => "trigger = { event = \"app_error\", if = 'event.app.platform == \"android\"' }\nuntil = { event = \"page_view\", if = 'event.page == \"/orders\"' }\n".to_string(),
        };
        rule(format!(
            "id = \"bench-absence-{k}\"\nkind = \"absence\"\n{body}within = \"30m\"\n"
        ));
    }
    // 10 threshold rules on produced types.
    for t in 0..10 {
        let body = match t % 5 {
            0 => "trigger = { event = \"app_error\" }\ncount = 3\nwithin = \"10m\"\ncooldown = \"1d\"\n",
            1 => "trigger = { event = \"payment_failed\" }\ncount = 2\nwithin = \"30m\"\n",
            2 => "trigger = { event = \"page_view\", if = 'event.page.startsWith(\"/help\")' }\ncount = 5\nwithin = \"15m\"\n",
            3 => "trigger = { event = \"checkout_started\" }\ncount = 3\nwithin = \"30m\"\n",
            _ => "trigger = { event = \"page_view\" }\ncount = 30\nwithin = \"5m\"\n",
        };
        rule(format!(
            "id = \"bench-threshold-{t}\"\nkind = \"threshold\"\n{body}"
        ));
    }
    s
}

fn load_or_die(dir: &Path) -> forewarn::rules::load::Loaded {
    load_rules(dir, &LoadOptions::default())
        .unwrap_or_else(|d| panic!("cannot load rules from {}:\n{d}", dir.display()))
}

/// The shipped rules plus the filler, loaded from a temporary copy.
fn rules_with_filler() -> (forewarn::rules::load::Loaded, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new("rules");
    for entry in std::fs::read_dir(shipped).unwrap().filter_map(Result::ok) {
        let p = entry.path();
        if p.is_file() && p.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(&p, dir.path().join(entry.file_name())).unwrap();
        }
    }
    copy_dir(&shipped.join("templates"), &dir.path().join("templates"));
    copy_dir(&shipped.join("catalogs"), &dir.path().join("catalogs"));
    let t = dir.path().join("templates");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join("bench_filler.subject"), "A note from Acme").unwrap();
    std::fs::write(
        t.join("bench_filler.txt"),
        "Hi {{ customer.name | default(\"there\") }}, about {{ trigger.cart.total | default(0) }}.\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("zz-bench-filler.toml"), filler_rules()).unwrap();
    let loaded = load_or_die(dir.path());
    (loaded, dir)
}

/// Types the shipped rules name that the generator has no shape for.
fn extra_types(shipped: &RuleSet) -> Vec<String> {
    let known: BTreeSet<&str> = MIX.iter().map(|(k, _)| *k).collect();
    rule_types(shipped)
        .into_iter()
        .filter(|t| !known.contains(t.as_str()))
        .collect()
}

/// Event types the shipped rules react to (trigger, until, cancel_on).
fn rule_types(rules: &RuleSet) -> BTreeSet<String> {
    let mut types = BTreeSet::new();
    for r in &rules.rules {
        types.insert(r.trigger.event.clone());
        if let RuleKind::Absence(a) = &r.kind {
            for c in a.until.iter().chain(&a.cancel_on) {
                types.insert(c.event.clone());
            }
        }
    }
    types
}

// ------------------------------------------------------------ tallies

#[derive(Default)]
struct Tally {
    decisions: usize,
    by_outcome: [usize; 4],
    by_kind: [usize; 3],
    errors: usize,
    first_error: Option<String>,
    missing_key: usize,
    late: u64,
    invalid: usize,
}

impl Tally {
    /// How many decisions, by outcome and by rule kind.
    fn decisions(&self) -> String {
        let n = |x: usize| group(x as f64);
        format!(
            "{} (fired {}, cooldown {}, duplicate {}, stale {}; from match {}, absence {}, threshold {})",
            n(self.decisions),
            n(self.by_outcome[0]),
            n(self.by_outcome[1]),
            n(self.by_outcome[2]),
            n(self.by_outcome[3]),
            n(self.by_kind[0]),
            n(self.by_kind[1]),
            n(self.by_kind[2]),
        )
    }

    fn drain(&mut self, out: &mut Output) {
        self.decisions += out.decisions.len();
        for d in &out.decisions {
            let o = match d.outcome {
                Outcome::Fire => 0,
                Outcome::Cooldown => 1,
                Outcome::Duplicate => 2,
                Outcome::Stale => 3,
            };
            self.by_outcome[o] += 1;
            let k = match d.firing.rule.kind {
                RuleKind::Match { .. } => 0,
                RuleKind::Absence(_) => 1,
                RuleKind::Threshold(_) => 2,
            };
            self.by_kind[k] += 1;
        }
        self.errors += out.errors.len();
        if self.first_error.is_none() {
            if let Some(e) = out.errors.first() {
                self.first_error = Some(format!("{}: {}", e.rule_id, e.message));
            }
        }
        self.missing_key += out.missing_key.len();
        self.late += out.late_events;
        out.decisions.clear();
        out.errors.clear();
        out.missing_key.clear();
        out.late_events = 0;
    }
}

// ------------------------------------------------------------ measurements

struct Run {
    timing: Timing,
    events: usize,
    tally: Tally,
    stats: Stats,
}

fn run_engine(rules: &Arc<RuleSet>, schema: &EventSchema, stream: &Stream, limit: usize) -> Run {
    let mut engine = new_engine(rules);
    let mut out = Output::default();
    let mut tally = Tally::default();
    let watch = Stopwatch::start();
    let events = feed(&mut engine, schema, stream, limit, &mut out, &mut tally);
    let timing = watch.stop();
    let stats = engine.stats();
    drop(engine);
    Run {
        timing,
        events,
        tally,
        stats,
    }
}

/// Decodes and evaluates the first `limit` records of `stream` as the
/// daemon does, tallying the outcomes; returns how many it took.
fn feed(
    engine: &mut Engine,
    schema: &EventSchema,
    stream: &Stream,
    limit: usize,
    out: &mut Output,
    tally: &mut Tally,
) -> usize {
    let mut events = 0;
    for (i, bytes) in stream.iter().take(limit).enumerate() {
        events += 1;
        // The daemon's path: the full payload only for types a rule names.
        let event = match schema.decode_lazy(bytes, &|kind| engine.reads(kind)) {
            Ok(e) => e,
            Err(_) => {
                tally.invalid += 1;
                continue;
            }
        };
        let p = partition_of(event.customer());
        engine.on_event(p, &event, Clock::Virtual, out);
        if i % 1024 == 1023 {
            tally.drain(out);
        }
    }
    tally.drain(out);
    events
}

/// One engine fed a continuing stream: untimed until its state has stopped
/// growing (see [`SUSTAINED_WARMUP`]), then `RUNS` timed stretches of `n`
/// events each, each generated before its clock starts.
struct Sustained {
    warmup_events: usize,
    warmup: Timing,
    before: Stats,
    runs: Vec<(Timing, Stats)>,
    tally: Tally,
}

/// A timed stretch of the sustained run: [`feed`] under its own name, so
/// that a profile can pick it out from the warm-up (callgrind
/// `--toggle-collect='*stretch*'`, or perf stacks through it).
#[inline(never)]
fn stretch(
    engine: &mut Engine,
    schema: &EventSchema,
    stream: &Stream,
    out: &mut Output,
    tally: &mut Tally,
) {
    // Used after the call, so that the call is not a jump and the frame
    // stays on the stack.
    black_box(feed(engine, schema, stream, usize::MAX, out, tally));
}

fn run_sustained(
    rules: &Arc<RuleSet>,
    schema: &EventSchema,
    extra: &[String],
    warmup_events: usize,
    n: usize,
) -> Sustained {
    let mut gen = Generator::new(extra);
    let mut engine = new_engine(rules);
    let mut out = Output::default();
    let mut tally = Tally::default();
    let mut warmed = 0;
    let mut warm_cpu = Duration::ZERO;
    let mut warm_wall = Duration::ZERO;
    while warmed < warmup_events {
        let stream = gen.chunk((warmup_events - warmed).min(250_000));
        let watch = Stopwatch::start();
        warmed += feed(
            &mut engine,
            schema,
            &stream,
            usize::MAX,
            &mut out,
            &mut tally,
        );
        let t = watch.stop();
        warm_wall += t.wall;
        warm_cpu += t.cpu.unwrap_or(t.wall);
    }
    let before = engine.stats();
    let mut runs = Vec::new();
    tally = Tally::default();
    for _ in 0..RUNS {
        let stream = gen.chunk(n);
        let watch = Stopwatch::start();
        stretch(&mut engine, schema, &stream, &mut out, &mut tally);
        runs.push((watch.stop(), engine.stats()));
    }
    Sustained {
        warmup_events,
        warmup: Timing {
            wall: warm_wall,
            cpu: Some(warm_cpu),
            kernel: None,
        },
        before,
        runs,
        tally,
    }
}

struct Durable {
    wall: Duration,
    commits: usize,
    commit_time: Duration,
    commit_max: Duration,
    queued: usize,
    rows: usize,
    by_table: std::collections::BTreeMap<String, usize>,
    snapshots: usize,
    /// On the consumer thread: collecting the engine's changes and snapshots.
    take_time: Duration,
    /// Outside commits: composing notifications from templates.
    compose_time: Duration,
    store_bytes: u64,
}

/// The daemon's path with durability: decode, evaluate, decide (policy +
/// compose) the firings, and every `batch` events commit the engine's
/// changes, the notifications, the decision log entries and the
/// positions in one transaction.
fn run_durable(
    rules: &Arc<RuleSet>,
    templates: &forewarn::notify::template::Templates,
    schema: &EventSchema,
    stream: &Stream,
    limit: usize,
    batch: usize,
) -> Durable {
    use forewarn::notify::outbox::Outbox;
    use std::collections::HashMap;
    let dir = tempfile::tempdir().unwrap();
    let store = forewarn::state::Store::open(dir.path()).unwrap();
    forewarn::state::engine::open(&store).unwrap();
    forewarn::decisions::open(&store).unwrap();
    Outbox::open(store.clone()).unwrap();
    let mut engine = Engine::new(
        Arc::clone(rules),
        EngineConfig {
            durable: true,
            send_time_guard: true,
            ..engine_config()
        },
        &[FieldPath::parse("customer.email").unwrap()],
    );
    let email = FieldPath::parse("customer.email").unwrap();
    let mut out = Output::default();
    let mut notifications = Vec::new();
    let mut decisions = Vec::new();
    let mut positions: HashMap<(String, i32), i64> = HashMap::new();
    // The daemon's decide stage: the contact policy (a marketing cap, no
    // quiet hours: the stream spans one hour), then compose.
    let policy = forewarn::policy::PolicyConfig {
        max_per_customer: Some(forewarn::policy::Cap {
            count: 2,
            per: 24 * 3_600_000,
        }),
        ..Default::default()
    };
    let cx = forewarn::pipeline::Decide {
        templates,
        email: &email,
        unsubscribe_url: None,
        policy: &policy,
    };
    let mut caps = forewarn::policy::CapLedger::default();
    let (mut queued, mut rows) = (0, 0);
    let mut by_table = std::collections::BTreeMap::new();
    let changelog = forewarn::state::engine::Changelog::default();
    let mut take_time = Duration::ZERO;
    let mut compose_time = Duration::ZERO;
    let mut snapshots_taken = 0;
    // As the daemon does: the transaction runs on another thread while
    // the next batch is processed, one commit in flight at a time.
    type Job = (
        Vec<forewarn::engine::persist::Write>,
        Vec<(i32, Vec<forewarn::engine::persist::Write>)>,
        Vec<forewarn::notify::Notification>,
        Vec<forewarn::decisions::DecisionRecord>,
        HashMap<(String, i32), i64>,
    );
    let (jobs, job_rx) = std::sync::mpsc::channel::<Job>();
    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    // The commit thread keeps its own figures: (commits, total, max).
    let worker = {
        let store = store.clone();
        let changelog = changelog.clone();
        std::thread::spawn(move || {
            let (mut commits, mut total, mut max) = (0usize, Duration::ZERO, Duration::ZERO);
            for (writes, snapshots, notifications, decisions, positions) in job_rx {
                let t = Instant::now();
                let tx = store.db().begin_write().unwrap();
                forewarn::state::engine::commit(&tx, &changelog, &writes, &snapshots).unwrap();
                Outbox::enqueue_in(&tx, notifications, BASE_TIME).unwrap();
                forewarn::decisions::write_in(&tx, &decisions).unwrap();
                forewarn::state::engine::put_positions(&tx, &positions).unwrap();
                tx.commit().unwrap();
                let took = t.elapsed();
                commits += 1;
                total += took;
                max = max.max(took);
                done_tx.send(()).unwrap();
            }
            (commits, total, max)
        })
    };
    let mut in_flight = false;
    let mut commit = |engine: &mut Engine,
                      notifications: &mut Vec<forewarn::notify::Notification>,
                      decisions: &mut Vec<forewarn::decisions::DecisionRecord>,
                      positions: &mut HashMap<(String, i32), i64>| {
        // The previous commit lands first, as in the daemon.
        if std::mem::take(&mut in_flight) {
            done.recv().unwrap();
        }
        let t = Instant::now();
        let writes = engine.take_changes();
        queued += notifications.len();
        rows += writes.len();
        for w in &writes {
            *by_table.entry(w.table.name().to_string()).or_insert(0) += 1;
        }
        let snapshots: Vec<_> = (0..PARTITIONS as i32)
            .filter(|&p| changelog.snapshot_due(p))
            .map(|p| (p, engine.snapshot(p)))
            .collect();
        snapshots_taken += snapshots.len();
        take_time += t.elapsed();
        jobs.send((
            writes,
            snapshots,
            std::mem::take(notifications),
            std::mem::take(decisions),
            std::mem::take(positions),
        ))
        .unwrap();
        in_flight = true;
    };
    let n = limit.min(stream.len());
    let start = Instant::now();
    for (i, bytes) in stream.iter().take(n).enumerate() {
        if let Ok(event) = schema.decode_lazy(bytes, &|kind| engine.reads(kind)) {
            let p = partition_of(event.customer());
            engine.on_event(p, &event, Clock::Virtual, &mut out);
            let t = Instant::now();
            for d in out.decisions.drain(..) {
                let now = d.firing.fired_at;
                let prepared = forewarn::pipeline::prepare(&d, &cx, true, None, now, &mut caps);
                decisions.push(forewarn::pipeline::record(&d, &prepared, now));
                if let forewarn::pipeline::Prepared::Send(n) = prepared {
                    notifications.push(n);
                }
            }
            compose_time += t.elapsed();
            out.errors.clear();
            out.missing_key.clear();
            out.resolved.clear();
            positions.insert(("events".to_string(), p), i as i64 + 1);
        }
        if (i + 1) % batch == 0 || i + 1 == n {
            commit(
                &mut engine,
                &mut notifications,
                &mut decisions,
                &mut positions,
            );
        }
    }
    drop(jobs);
    let (commits, commit_time, commit_max) = worker.join().unwrap();
    let wall = start.elapsed();
    drop(engine);
    let store_bytes = std::fs::metadata(store.path()).map_or(0, |m| m.len());
    Durable {
        wall,
        commits,
        commit_time,
        commit_max,
        queued,
        rows,
        by_table,
        snapshots: snapshots_taken,
        take_time,
        compose_time,
        store_bytes,
    }
}

/// Decoding alone: the whole record (`lazy: None`), or as the engine
/// path does, only what `lazy`'s rules read.
fn run_decode(
    schema: &EventSchema,
    stream: &Stream,
    limit: usize,
    lazy: Option<&Engine>,
) -> Timing {
    let watch = Stopwatch::start();
    for bytes in stream.iter().take(limit) {
        let decoded = match lazy {
            Some(engine) => schema.decode_lazy(bytes, &|kind| engine.reads(kind)),
            // Shared as the engine path shares it (decode_lazy builds the
            // event in its Arc).
            None => schema.decode(bytes).map(Arc::new),
        };
        match decoded {
            Ok(e) => {
                black_box(&e);
            }
            Err(e) => {
                black_box(&e);
            }
        }
    }
    watch.stop()
}

/// The run with the median CPU (else wall) time.
fn median(mut xs: Vec<Timing>) -> Timing {
    xs.sort_by_key(Timing::best);
    xs[xs.len() / 2]
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn ns_per(n: usize, d: Duration) -> f64 {
    d.as_nanos() as f64 / n as f64
}

/// "target >= 500,000 events/s/core: MET" (or MISSED) for a rate.
fn against_target(eps: f64) -> String {
    format!(
        "target >= {} events/s/core: {}",
        group(TARGET_EVENTS_PER_SEC),
        verdict(eps >= TARGET_EVENTS_PER_SEC)
    )
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}

/// For a median line: how much of the run's CPU time the kernel took
/// (page faults on new memory, above all), and the rate of the rest. Not
/// a figure to hold against the target, which counts the whole CPU time:
/// it tells the price of growing state from the engine's own work.
fn kernel_share(n: usize, t: &Timing) -> Option<String> {
    let (cpu, (kernel, faults)) = (t.cpu?, t.kernel?);
    let user = cpu.checked_sub(kernel).filter(|u| !u.is_zero())?;
    Some(format!(
        "    of the median run's {:.3} s cpu, {:.2} s ({:.1}%) in the kernel ({} page faults); the rest alone: {} events/s",
        cpu.as_secs_f64(),
        kernel.as_secs_f64(),
        100.0 * kernel.as_secs_f64() / cpu.as_secs_f64(),
        group(faults as f64),
        group(per_sec(n, user))
    ))
}

/// "1.200 s cpu (0.09 s in the kernel: 8,211 page faults), 1.234 s wall".
fn describe(t: &Timing) -> String {
    let kernel = match t.kernel {
        Some((k, faults)) if t.cpu.is_some() && (faults > 0 || !k.is_zero()) => format!(
            " ({:.2} s in the kernel: {} page faults)",
            k.as_secs_f64(),
            group(faults as f64)
        ),
        _ => String::new(),
    };
    match t.cpu {
        Some(c) => format!(
            "{:.3} s cpu{kernel}, {:.3} s wall",
            c.as_secs_f64(),
            t.wall.as_secs_f64()
        ),
        None => format!("{:.3} s wall", t.wall.as_secs_f64()),
    }
}

// --------------------------------------------- memory: bytes per episode

struct MemoryResult {
    rule_id: String,
    shipped: bool,
    open: usize,
    delta: isize,
    trigger_bytes_avg: f64,
    sample_trigger: String,
    feed: Timing,
    restore: Timing,
}

/// The shipped checkout drop-off rule if there is one, else an equivalent.
fn dropoff_rule(shipped: &RuleSet) -> (Rule, bool, Option<tempfile::TempDir>) {
    let found = shipped
        .rules
        .iter()
        .find(|r| r.id == "checkout-dropoff")
        .or_else(|| {
            shipped.rules.iter().find(|r| {
                r.trigger.event == "checkout_started"
                    && matches!(&r.kind, RuleKind::Absence(a)
                    if a.until.as_ref().is_some_and(|u| u.event == "order_placed"))
            })
        });
    if let Some(r) = found {
        return ((**r).clone(), true, None);
    }
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("templates");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(
        t.join("checkout_dropoff.subject"),
        "You left {{ trigger.cart.items | default(1) }} items in your basket",
    )
    .unwrap();
    std::fs::write(
        t.join("checkout_dropoff.txt"),
        "Hi {{ customer.name | default(\"there\") }},\n\nyour basket worth {{ trigger.cart.currency }} {{ trigger.cart.total }} is still waiting.\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("checkout-dropoff.toml"),
        r#"[[rule]]
id          = "checkout-dropoff"
description = "A checkout was started and no order followed within 30 minutes"
kind        = "absence"
class       = "marketing"
trigger     = { event = "checkout_started", if = "event.cart.total >= 20.0" }
until       = { event = "order_placed" }
within      = "30m"
notify      = { channel = "email", template = "checkout_dropoff" }
"#,
    )
    .unwrap();
    let loaded = load_or_die(dir.path());
    let rule = (*loaded.rules.rules[0]).clone();
    (rule, false, Some(dir))
}

fn cart_total(e: &forewarn::event::Event) -> f64 {
    e.payload()
        .pointer("/cart/total")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0)
}

fn measure_memory(shipped: &RuleSet, episodes: usize) -> MemoryResult {
    let (rule, is_shipped, _dir) = dropoff_rule(shipped);
    let rule_id = rule.id.clone();
    let email = FieldPath::parse("customer.email").unwrap();
    let retained = project::retained_paths(&rule, std::slice::from_ref(&email))
        .map(|paths| project::Plan::new(&paths));
    let rules = Arc::new(RuleSet::new(vec![rule]));
    let schema = schema();
    let mut engine = new_engine(&rules);
    let mut out = Output::default();
    let mut rng = Rng(0xE915_0DE5);
    let mut buf = Vec::with_capacity(512);
    let mut sampled = (0usize, 0usize);
    let mut sample_trigger = String::new();

    // The allocator counts from here until the episodes are open (below),
    // so that each call measures on its own.
    COUNTING.store(true, Ordering::SeqCst);
    let before = live_bytes();
    let watch = Stopwatch::start();
    for i in 0..episodes {
        let c = customer(i as u64);
        // All triggers within 200 seconds (at a million): no deadline is near.
        let ts = BASE_TIME + (i / 5) as Millis;
        // Every cart qualifies for the shipped rule's `cart.total >= 20.0`.
        let event = loop {
            buf.clear();
            write_event(&mut buf, &mut rng, i as u64, "checkout_started", &c, ts);
            let e = schema.decode(&buf).expect("valid event");
            if cart_total(&e) >= 20.0 {
                break Arc::new(e);
            }
        };
        engine.on_event(
            partition_of(event.customer()),
            &event,
            Clock::Virtual,
            &mut out,
        );
        if i % 100 == 0 {
            let b = project::encode_trigger(&event, retained.as_ref());
            if i == 0 {
                // MessagePack on the inside; shown decoded.
                sample_trigger = project::decode_trigger(&b, event.kind(), event.time)
                    .map(|t| {
                        format!(
                            "{} bytes: [{:?}, {:?}, {}]",
                            b.len(),
                            t.customer(),
                            t.id(),
                            t.payload()
                        )
                    })
                    .unwrap_or_default();
            }
            sampled.0 += 1;
            sampled.1 += b.len();
        }
        if i % 1024 == 0 {
            out.decisions.clear();
            out.errors.clear();
            out.missing_key.clear();
        }
    }
    let feed = watch.stop();
    // Drop every temporary: the output and the scratch buffer.
    drop(out);
    drop(buf);
    let after = live_bytes();
    let open = engine.stats().open_episodes;
    COUNTING.store(false, Ordering::SeqCst);
    // A restart: every partition's rows, as the store hands them back,
    // read into a fresh engine. (Sizing its tables up front for the row
    // count measured about a quarter slower than letting them double:
    // 304-368 against 208-296 ns/episode, five runs each.)
    let stored: Vec<(i32, Vec<Row>)> = engine
        .partitions()
        .map(|p| {
            let rows = engine
                .snapshot(p)
                .into_iter()
                .filter_map(persist::Write::into_row);
            (p, rows.collect())
        })
        .collect();
    drop(engine);
    let mut restored = new_engine(&rules);
    let watch = Stopwatch::start();
    for (p, rows) in &stored {
        restored.restore(*p, rows, &|_| false);
    }
    let restore = watch.stop();
    assert_eq!(
        restored.stats().open_episodes,
        open,
        "every episode restored"
    );
    drop(restored);
    MemoryResult {
        rule_id,
        shipped: is_shipped,
        open,
        delta: after - before,
        trigger_bytes_avg: sampled.1 as f64 / sampled.0.max(1) as f64,
        sample_trigger,
        feed,
        restore,
    }
}

// ------------------------------------------------------------ main

/// Seconds of engine time each measured run may take: keeps the whole
/// benchmark near two minutes however slow the engine is.
const RUN_BUDGET_SECS: f64 = 20.0;

fn main() {
    forewarn::alloc::tune();
    let total = Instant::now();
    let ([do_memory, do_throughput, do_durable], events_override) = knobs();
    let stdout = std::io::stdout();
    let mut o = stdout.lock();
    writeln!(
        o,
        "forewarn engine benchmark (single thread, one core; per-core figures use this thread's CPU time)"
    )
    .unwrap();

    let shipped = load_or_die(Path::new("rules")).rules;
    let shipped_ids: Vec<&str> = shipped.rules.iter().map(|r| r.id.as_str()).collect();
    writeln!(
        o,
        "shipped rules ({}): {}",
        shipped.len(),
        shipped_ids.join(", ")
    )
    .unwrap();

    // ---------------------------------------------------------------- [2]
    // Runs first: the allocator stops counting once it is done, so the
    // throughput loop does not pay for the counters.
    let mut mem_summary = None;
    let mut past_summary = None;
    if do_memory {
        let episodes = events_override.unwrap_or(EPISODES);
        writeln!(
            o,
            "\n[2] memory: {} open absence episodes (counting allocator)",
            group(episodes as f64)
        )
        .unwrap();
        o.flush().unwrap();
        let mem = measure_memory(&shipped, episodes);
        let per_episode = mem.delta as f64 / mem.open.max(1) as f64;
        writeln!(
            o,
            "  rule: {} ({})",
            mem.rule_id,
            if mem.shipped {
                "shipped"
            } else {
                "not shipped yet: bench stand-in, trigger checkout_started, until order_placed, within 30m"
            }
        )
        .unwrap();
        writeln!(
            o,
            "  open episodes: {}   live heap delta: {} bytes = {:.1} MB",
            group(mem.open as f64),
            group(mem.delta as f64),
            mem.delta as f64 / 1e6,
        )
        .unwrap();
        writeln!(
            o,
            "  stored trigger (projected MessagePack envelope, SharedBytes), average: {:.1} bytes; other state: {:.1} bytes",
            mem.trigger_bytes_avg,
            per_episode - mem.trigger_bytes_avg
        )
        .unwrap();
        writeln!(o, "  e.g. {}", mem.sample_trigger).unwrap();
        writeln!(
            o,
            "  opening them (generate + decode + on_event): {}, {:.0} ns/episode",
            describe(&mem.feed),
            ns_per(episodes, mem.feed.best())
        )
        .unwrap();
        writeln!(
            o,
            "  restoring them (a restart: Engine::restore of every partition's stored rows): {}, {:.0} ns/episode",
            describe(&mem.restore),
            ns_per(episodes, mem.restore.best())
        )
        .unwrap();
        writeln!(
            o,
            "  bytes per open episode: {:.1}   (target <= {:.0}: {})",
            per_episode,
            TARGET_BYTES_PER_EPISODE,
            verdict(per_episode <= TARGET_BYTES_PER_EPISODE)
        )
        .unwrap();
        mem_summary = Some((per_episode, mem.delta, mem.open));
        if events_override.is_none() {
            let past = measure_memory(&shipped, EPISODES_PAST_DOUBLING);
            let per = past.delta as f64 / past.open.max(1) as f64;
            writeln!(
                o,
                "  at {} open episodes (just past the key index's doubling, the most per episode measured): {:.1} bytes per open episode   (target <= {:.0}: {})",
                group(past.open as f64),
                per,
                TARGET_BYTES_PER_EPISODE,
                verdict(per <= TARGET_BYTES_PER_EPISODE)
            )
            .unwrap();
            past_summary = Some((per, past.open));
        }
    }
    COUNTING.store(false, Ordering::SeqCst);

    // ---------------------------------------------------------------- [1]
    let mut tp_summary = None;
    if do_throughput {
        let (loaded, _dir) = rules_with_filler();
        let rules = Arc::new(loaded.rules);
        let extra = extra_types(&shipped);
        writeln!(
            o,
            "\n[1] throughput: decode + evaluate, {} shipped + {} filler = {} rules",
            shipped.len(),
            FILLER_RULES,
            rules.len()
        )
        .unwrap();
        assert_eq!(
            rules.len(),
            shipped.len() + FILLER_RULES,
            "every filler rule loads"
        );
        let watch = Instant::now();
        let stream = generate_stream(events_override.unwrap_or(STREAM_EVENTS), &extra);
        writeln!(
            o,
            "  stream: {} events, {:.0} bytes/event on average, {} customers, {} partitions, 1 ms apart (generated in {:.1} s)",
            group(stream.len() as f64),
            stream.data.len() as f64 / stream.len() as f64,
            group(customers() as f64),
            PARTITIONS,
            watch.elapsed().as_secs_f64()
        )
        .unwrap();
        let mix: Vec<String> = MIX
            .iter()
            .map(|(k, w)| format!("{k} {:.1}%", *w as f64 / 10.0))
            .collect();
        writeln!(o, "  mix: {}", mix.join(", ")).unwrap();
        writeln!(
            o,
            "  extra (types shipped rules name that the generator has no shape for; generic payload): {}",
            if extra.is_empty() {
                "none, page views instead".to_string()
            } else {
                extra.join(", ")
            }
        )
        .unwrap();
        {
            // The types whose payload decode_lazy keeps (read in place) for
            // these rules; the others keep only type, customer, time, id.
            let engine = new_engine(&rules);
            let (read, skipped): (Vec<&str>, Vec<&str>) = MIX
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| *k != "extra")
                .partition(|k| engine.reads(k));
            let list = |types: &[&str]| match types.is_empty() {
                true => "none".to_string(),
                false => types.join(", "),
            };
            writeln!(
                o,
                "  payload read in place: {}; envelope only: {}",
                list(&read),
                list(&skipped)
            )
            .unwrap();
        }
        o.flush().unwrap();

        let schema = schema();
        // Warm-up: caches, allocator, branch predictors; also sizes the runs.
        let warm_n = WARMUP_EVENTS.min(stream.len());
        let warm = run_engine(&rules, &schema, &stream, warm_n);
        let _ = run_decode(&schema, &stream, warm_n, None);
        let warm_rate = per_sec(warm_n, warm.timing.best());
        let n = stream
            .len()
            .min(((warm_rate * RUN_BUDGET_SECS) as usize).max(warm_n));
        writeln!(
            o,
            "  warm-up: {} events at {} events/s",
            group(warm_n as f64),
            group(warm_rate)
        )
        .unwrap();
        if n < stream.len() {
            writeln!(
                o,
                "  NOTE: each run is cut to the first {} events (about {:.0} s of engine time) to keep the benchmark near 2 minutes",
                group(n as f64),
                RUN_BUDGET_SECS
            )
            .unwrap();
        }
        let mut times = Vec::new();
        let mut last = None;
        for r in 0..RUNS {
            let run = run_engine(&rules, &schema, &stream, n);
            writeln!(
                o,
                "  run {}: {} events in {}  -> {} events/s, {:.0} ns/event",
                r + 1,
                group(run.events as f64),
                describe(&run.timing),
                group(per_sec(run.events, run.timing.best())),
                ns_per(run.events, run.timing.best())
            )
            .unwrap();
            o.flush().unwrap();
            times.push(run.timing);
            last = Some(run);
        }
        let full = median(times);
        let run = last.expect("at least one run");
        let eps = per_sec(n, full.best());
        writeln!(
            o,
            "  median of {RUNS}: {} events/s/core, {:.0} ns/event   ({})",
            group(eps),
            ns_per(n, full.best()),
            against_target(eps)
        )
        .unwrap();
        if let Some(line) = kernel_share(n, &full) {
            writeln!(o, "{line}").unwrap();
        }
        let t = &run.tally;
        writeln!(o, "  decisions per run: {}", t.decisions()).unwrap();
        writeln!(
            o,
            "  rule errors: {}   missing key: {}   late events: {}   invalid records: {}",
            t.errors, t.missing_key, t.late, t.invalid
        )
        .unwrap();
        if let Some(e) = &t.first_error {
            writeln!(o, "  first rule error: {e}").unwrap();
        }
        writeln!(
            o,
            "  state at end of run: {} open episodes, {} threshold windows, {} ledger entries",
            group(run.stats.open_episodes as f64),
            group(run.stats.threshold_windows as f64),
            group(run.stats.ledger_entries as f64)
        )
        .unwrap();

        // The same rules and stream on one engine that has run long enough
        // for its state to stop growing: the daemon's sustained rate.
        let sus = run_sustained(&rules, &schema, &extra, SUSTAINED_WARMUP, n);
        writeln!(
            o,
            "  sustained: one engine, first {} events ({} min of event time) untimed in {}, then {RUNS} stretches of {} new events",
            group(sus.warmup_events as f64),
            sus.warmup_events as Millis / MINUTE,
            describe(&sus.warmup),
            group(n as f64)
        )
        .unwrap();
        let show = |s: &Stats| {
            format!(
                "{} open episodes, {} threshold windows, {} ledger entries",
                group(s.open_episodes as f64),
                group(s.threshold_windows as f64),
                group(s.ledger_entries as f64)
            )
        };
        writeln!(o, "    state after warm-up: {}", show(&sus.before)).unwrap();
        for (r, (t, after)) in sus.runs.iter().enumerate() {
            writeln!(
                o,
                "    stretch {}: {} -> {} events/s, {:.0} ns/event; state after: {}",
                r + 1,
                describe(t),
                group(per_sec(n, t.best())),
                ns_per(n, t.best()),
                show(after)
            )
            .unwrap();
        }
        let sustained = median(sus.runs.iter().map(|(t, _)| *t).collect());
        let st = &sus.tally;
        writeln!(
            o,
            "    decisions over the stretches: {}; late {}, invalid {}",
            st.decisions(),
            st.late,
            st.invalid
        )
        .unwrap();
        let sustained_eps = per_sec(n, sustained.best());
        writeln!(
            o,
            "  sustained, median of {RUNS}: {} events/s/core, {:.0} ns/event   ({})",
            group(sustained_eps),
            ns_per(n, sustained.best()),
            against_target(sustained_eps)
        )
        .unwrap();
        if let Some(line) = kernel_share(n, &sustained) {
            writeln!(o, "{line}").unwrap();
        }
        o.flush().unwrap();

        let needs = new_engine(&rules);
        let decode_median = |lazy: Option<&Engine>| {
            median(
                (0..RUNS)
                    .map(|_| run_decode(&schema, &stream, n, lazy))
                    .collect(),
            )
        };
        let decode = decode_median(Some(&needs));
        writeln!(
            o,
            "  decode only, as the engine path does (EventSchema::decode_lazy), median of {RUNS}: {} events/s, {:.0} ns/event ({}; {:.0}% of decode + evaluate)",
            group(per_sec(n, decode.best())),
            ns_per(n, decode.best()),
            describe(&decode),
            100.0 * decode.best().as_secs_f64() / full.best().as_secs_f64()
        )
        .unwrap();
        writeln!(
            o,
            "  evaluation alone (decode + evaluate minus decode only): about {:.0} ns/event",
            ns_per(n, full.best().saturating_sub(decode.best()))
        )
        .unwrap();
        let whole = decode_median(None);
        writeln!(
            o,
            "  for comparison, whole-record decode (EventSchema::decode, serde_json tree): {} events/s, {:.0} ns/event",
            group(per_sec(n, whole.best())),
            ns_per(n, whole.best()),
        )
        .unwrap();
        tp_summary = Some((
            eps,
            ns_per(n, full.best()),
            sustained_eps,
            ns_per(n, sustained.best()),
        ));

        // For context, not the target: the same stream with only the
        // shipped rules, closer to a deployment where most rules name
        // event types other than the busiest ones.
        let shipped_only = Arc::new(shipped.clone());
        let mut stimes = Vec::new();
        for _ in 0..RUNS {
            stimes.push(run_engine(&shipped_only, &schema, &stream, n).timing);
        }
        let s = median(stimes);
        writeln!(
            o,
            "  shipped rules only ({}), median of {RUNS}: {} events/s/core, {:.0} ns/event",
            shipped_only.len(),
            group(per_sec(n, s.best())),
            ns_per(n, s.best())
        )
        .unwrap();
    }

    // ---------------------------------------------------------------- [3]
    let mut durable_summary = None;
    if do_durable {
        let (loaded, _dir) = rules_with_filler();
        let rules = Arc::new(loaded.rules);
        let extra = extra_types(&shipped);
        let n = events_override.unwrap_or(DURABLE_EVENTS);
        let stream = generate_stream(n, &extra);
        let schema = schema();
        writeln!(
            o,
            "\n[3] durable: decode + evaluate + commit to redb (fsync'd), {} rules, {} events, wall time",
            rules.len(),
            group(n as f64)
        )
        .unwrap();
        o.flush().unwrap();
        let engine_only = run_engine(&rules, &schema, &stream, n).timing.wall;
        writeln!(
            o,
            "  engine only (no store), same events: {} events/s wall",
            group(per_sec(n, engine_only))
        )
        .unwrap();
        let mut at_default = None;
        for batch in [5_000usize, 1_000] {
            let d = run_durable(&rules, &loaded.templates, &schema, &stream, n, batch);
            writeln!(
                o,
                "  commit every {} events: {} events/s wall ({:.0}% of engine only); {} commits, {:.2} ms/commit mean, {:.2} ms max; {} notifications queued; store {:.1} MB",
                group(batch as f64),
                group(per_sec(n, d.wall)),
                100.0 * engine_only.as_secs_f64() / d.wall.as_secs_f64(),
                group(d.commits as f64),
                d.commit_time.as_secs_f64() * 1e3 / d.commits.max(1) as f64,
                d.commit_max.as_secs_f64() * 1e3,
                group(d.queued as f64),
                d.store_bytes as f64 / 1e6
            )
            .unwrap();
            let tables: Vec<String> = d
                .by_table
                .iter()
                .map(|(t, n)| format!("{t} {}", group(*n as f64 / d.commits.max(1) as f64)))
                .collect();
            writeln!(
                o,
                "    state rows per commit: {} ({}); partition snapshots taken: {}",
                group(d.rows as f64 / d.commits.max(1) as f64),
                tables.join(", "),
                d.snapshots
            )
            .unwrap();
            writeln!(
                o,
                "    consumer thread: collecting changes {:.2} s, deciding (policy, compose, decision records) {:.2} s, decode + evaluate + journal + waiting for commits {:.2} s; commit thread: {:.2} s of transactions",
                d.take_time.as_secs_f64(),
                d.compose_time.as_secs_f64(),
                (d.wall - d.take_time - d.compose_time).as_secs_f64(),
                d.commit_time.as_secs_f64()
            )
            .unwrap();
            o.flush().unwrap();
            at_default.get_or_insert((per_sec(n, d.wall), per_sec(n, engine_only)));
        }
        durable_summary = at_default;
    }

    writeln!(o, "\nsummary").unwrap();
    if let Some((durable, engine_only)) = durable_summary {
        writeln!(
            o,
            "  durable (commit every 5,000 events): {} events/s wall, engine only {} events/s wall",
            group(durable),
            group(engine_only)
        )
        .unwrap();
    }
    if let Some((eps, ns, sustained, sustained_ns)) = tp_summary {
        writeln!(
            o,
            "  throughput: {} events/s/core ({:.0} ns/event)   {}",
            group(eps),
            ns,
            against_target(eps)
        )
        .unwrap();
        writeln!(
            o,
            "  sustained throughput (state no longer growing, deadlines firing): {} events/s/core ({:.0} ns/event)   {}",
            group(sustained),
            sustained_ns,
            against_target(sustained)
        )
        .unwrap();
    }
    if let Some((per_episode, delta, open)) = mem_summary {
        writeln!(
            o,
            "  memory: {:.1} bytes per open episode ({:.1} MB for {} episodes)   target <= {:.0} bytes: {}",
            per_episode,
            delta as f64 / 1e6,
            group(open as f64),
            TARGET_BYTES_PER_EPISODE,
            verdict(per_episode <= TARGET_BYTES_PER_EPISODE)
        )
        .unwrap();
    }
    if let Some((per, open)) = past_summary {
        writeln!(
            o,
            "  memory at {} episodes (past the key index's doubling): {:.1} bytes per open episode   target <= {:.0} bytes: {}",
            group(open as f64),
            per,
            TARGET_BYTES_PER_EPISODE,
            verdict(per <= TARGET_BYTES_PER_EPISODE)
        )
        .unwrap();
    }
    writeln!(
        o,
        "  total bench time: {:.1} s",
        total.elapsed().as_secs_f64()
    )
    .unwrap();
}
