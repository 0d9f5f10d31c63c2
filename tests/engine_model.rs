//! Model-based property tests of the pure rule engine.
//!
//! A deliberately naive reference model (full histories in `Vec`s,
//! recomputed from scratch, no code shared with `forewarn::engine`) says
//! which notifications a stream of events must produce. The engine is then
//! driven with the same stream cut into Kafka-like partitions (every event
//! of a customer in the same partition, in order), fed in a random
//! interleaving of the partitions and with a random allowed lateness, and
//! must decide exactly the same firings: replay and live decide the same,
//! whatever the partitioning.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use forewarn::engine::{Clock, Decision, Engine, EngineConfig, Outcome, Output, PartitionId};
use forewarn::event::{Event, EventSchema, FieldPath, Millis};
use forewarn::rules::{load_rules, LoadOptions, RuleSet};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::json;

/// Customers are "c0" .. "c4" (a stream uses the first 1 to 5 of them).
const CUSTOMERS: u8 = 5;
/// Longest generated stream.
const MAX_EVENTS: usize = 48;
/// Most partitions a stream is split into.
const MAX_PARTITIONS: u8 = 4;

// ---------------------------------------------------------------------------
// Generated input
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Trigger,
    Until,
    Cancel,
    Noise,
}

impl Kind {
    fn type_name(self) -> &'static str {
        match self {
            Kind::Trigger => "trigger",
            Kind::Until => "until",
            Kind::Cancel => "cancel",
            Kind::Noise => "noise",
        }
    }
}

#[derive(Debug, Clone)]
struct Ev {
    kind: Kind,
    customer: u8,
    time: Millis,
}

/// How one run cuts and orders the stream.
#[derive(Debug, Clone)]
struct Split {
    partitions: u8,
    /// customer → partition (Kafka keying: a customer always lands in one).
    of_customer: Vec<u8>,
    /// Which non-empty partition feeds the next event, modulo their number.
    picks: Vec<u32>,
    allowed_lateness: Millis,
}

#[derive(Debug, Clone)]
struct Stream {
    /// `within` of every rule, in milliseconds.
    w: Millis,
    /// `count` of the threshold rule.
    n: usize,
    /// No event is older than the newest before it minus this (0: the
    /// stream is in time order). Runs use an allowed lateness of at least
    /// this much, so no event is ever late.
    disorder: Millis,
    events: Vec<Ev>,
}

fn arb_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => Just(Kind::Trigger),
        2 => Just(Kind::Until),
        1 => Just(Kind::Cancel),
        2 => Just(Kind::Noise),
    ]
}

/// `disordered`: event times step back by up to `disorder` ≤ 2W from the
/// newest so far; otherwise they never decrease.
fn arb_stream(disordered: bool) -> impl Strategy<Value = Stream> {
    (1 as Millis..=12, 1usize..=4, 1..=CUSTOMERS).prop_flat_map(move |(w, n, customers)| {
        // Increments in 0..=2W, skewed small so that one customer's events
        // often share a window, with ties (0) and exact boundaries.
        let step = prop_oneof![
            2 => Just(0 as Millis),
            4 => 0..=w / 2,
            2 => 0..=w,
            1 => 0..=2 * w,
        ];
        let disorder = if disordered { 0..=2 * w } else { 0..=0 };
        disorder.prop_flat_map(move |disorder| {
            let back = prop_oneof![1 => Just(0 as Millis), 1 => 0..=disorder];
            let events = prop::collection::vec(
                (arb_kind(), 0..customers, step.clone(), back),
                0..=MAX_EVENTS,
            );
            events.prop_map(move |raw| {
                // `base` never decreases and each time is at most
                // `disorder` behind it, hence behind the newest so far.
                let mut base: Millis = 1_000;
                let events = raw
                    .into_iter()
                    .map(|(kind, customer, dt, back)| {
                        base += dt;
                        Ev {
                            kind,
                            customer,
                            time: base - back,
                        }
                    })
                    .collect();
                Stream {
                    w,
                    n,
                    disorder,
                    events,
                }
            })
        })
    })
}

/// Allowed lateness in `min_lateness .. min_lateness + w`.
fn arb_split(w: Millis, min_lateness: Millis) -> impl Strategy<Value = Split> {
    (1..=MAX_PARTITIONS).prop_flat_map(move |partitions| {
        (
            prop::collection::vec(0..partitions, CUSTOMERS as usize),
            prop::collection::vec(any::<u32>(), MAX_EVENTS),
            min_lateness..min_lateness + w,
        )
            .prop_map(move |(of_customer, picks, allowed_lateness)| Split {
                partitions,
                of_customer,
                picks,
                allowed_lateness,
            })
    })
}

fn arb_case(disordered: bool) -> impl Strategy<Value = (Stream, Split)> {
    arb_stream(disordered).prop_flat_map(|s| {
        let (w, d) = (s.w, s.disorder);
        (Just(s), arb_split(w, d))
    })
}

fn arb_two_splits(disordered: bool) -> impl Strategy<Value = (Stream, Split, Split)> {
    arb_stream(disordered).prop_flat_map(|s| {
        let (w, d) = (s.w, s.disorder);
        (Just(s), arb_split(w, d), arb_split(w, d))
    })
}

fn customer_name(c: u8) -> String {
    format!("c{c}")
}

// ---------------------------------------------------------------------------
// The rules under test
// ---------------------------------------------------------------------------

/// (rule id, on_repeat = restart?, closing event kinds) of the absence rules.
const ABSENCE_RULES: &[(&str, bool, &[Kind])] = &[
    ("abs-restart", true, &[Kind::Until, Kind::Cancel]),
    ("abs-ignore", false, &[Kind::Until, Kind::Cancel]),
    ("abs-restart-until-only", true, &[Kind::Until]),
    ("abs-ignore-until-only", false, &[Kind::Until]),
];
const THRESHOLD_RULE: &str = "thr";
const MATCH_RULE: &str = "match";

fn rules_toml(w: Millis, n: usize) -> String {
    let mut s = String::new();
    for (id, restart, closers) in ABSENCE_RULES {
        let on_repeat = if *restart { "restart" } else { "ignore" };
        s.push_str(&format!(
            "[[rule]]\nid = \"{id}\"\nkind = \"absence\"\ntrigger = {{ event = \"trigger\" }}\n\
             until = {{ event = \"until\" }}\nwithin = \"{w}ms\"\non_repeat = \"{on_repeat}\"\n\
             notify = {{ channel = \"email\", template = \"t\" }}\n"
        ));
        if closers.contains(&Kind::Cancel) {
            s.push_str("cancel_on = [{ event = \"cancel\" }]\n");
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "[[rule]]\nid = \"{THRESHOLD_RULE}\"\nkind = \"threshold\"\ntrigger = {{ event = \"trigger\" }}\n\
         count = {n}\nwithin = \"{w}ms\"\nnotify = {{ channel = \"email\", template = \"t\" }}\n\n"
    ));
    s.push_str(&format!(
        "[[rule]]\nid = \"{MATCH_RULE}\"\nkind = \"match\"\ntrigger = {{ event = \"trigger\" }}\n\
         notify = {{ channel = \"email\", template = \"t\" }}\n"
    ));
    s
}

/// Loaded rule sets by (`within`, `count`): loading touches the disk, so
/// each combination is loaded once per test binary.
fn rules_for(w: Millis, n: usize) -> Arc<RuleSet> {
    type Cache = Mutex<HashMap<(Millis, usize), Arc<RuleSet>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    let rules = cache.entry((w, n)).or_insert_with(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/t.subject"), "Hi").unwrap();
        std::fs::write(dir.path().join("templates/t.txt"), "Body").unwrap();
        std::fs::write(dir.path().join("r.toml"), rules_toml(w, n)).unwrap();
        let loaded =
            load_rules(dir.path(), &LoadOptions::default()).unwrap_or_else(|d| panic!("{d}"));
        Arc::new(loaded.rules)
    });
    Arc::clone(rules)
}

fn engine_for(w: Millis, n: usize, allowed_lateness: Millis) -> Engine {
    engine_with(w, n, allowed_lateness, false)
}

fn engine_with(w: Millis, n: usize, allowed_lateness: Millis, durable: bool) -> Engine {
    Engine::new(
        rules_for(w, n),
        EngineConfig {
            allowed_lateness,
            ledger_retention: 1_000_000_000,
            send_time_guard: false,
            durable,
        },
        &[FieldPath::parse("customer.email").unwrap()],
    )
}

fn to_event(index: usize, e: &Ev) -> Arc<Event> {
    let schema = EventSchema {
        kind: FieldPath::parse("type").unwrap(),
        customer: FieldPath::parse("customer_id").unwrap(),
        time: FieldPath::parse("ts").unwrap(),
        id: Some(FieldPath::parse("event_id").unwrap()),
    };
    let payload = json!({
        "type": e.kind.type_name(),
        "customer_id": customer_name(e.customer),
        "ts": e.time,
        "event_id": format!("e{index}"),
        "customer": {"email": format!("{}@example.com", customer_name(e.customer))},
    });
    Arc::new(schema.from_value(payload).unwrap())
}

// ---------------------------------------------------------------------------
// The naive reference model
// ---------------------------------------------------------------------------

/// (rule id, customer, episode_start, fired_at)
type Fired = (String, String, Millis, Millis);

#[derive(Debug, Clone)]
struct ModelEpisode {
    start: Millis,
    deadline: Millis,
    closed: bool,
    replaced: bool,
}

impl ModelEpisode {
    fn open(&self) -> bool {
        !self.closed && !self.replaced
    }
}

fn model_absence(
    events: &[Ev],
    w: Millis,
    restart: bool,
    closers: &[Kind],
) -> Vec<(String, Millis, Millis)> {
    let mut fired = Vec::new();
    for c in 0..CUSTOMERS {
        let mut episodes: Vec<ModelEpisode> = Vec::new();
        for e in events.iter().filter(|e| e.customer == c) {
            let t = e.time;
            if e.kind == Kind::Trigger {
                // The running episode that started first.
                let running = episodes
                    .iter()
                    .enumerate()
                    .filter(|(_, ep)| ep.open() && ep.deadline >= t)
                    .min_by_key(|(_, ep)| (ep.start, ep.deadline))
                    .map(|(i, _)| i);
                if let Some(i) = running {
                    if restart && episodes[i].start <= t {
                        episodes[i].replaced = true;
                    } else {
                        continue;
                    }
                }
                // An episode is (rule, customer, start): never open twice.
                if !episodes.iter().any(|ep| ep.open() && ep.start == t) {
                    episodes.push(ModelEpisode {
                        start: t,
                        deadline: t + w,
                        closed: false,
                        replaced: false,
                    });
                }
            } else if closers.contains(&e.kind) {
                for ep in episodes.iter_mut() {
                    if ep.open() && ep.start <= t && t <= ep.deadline {
                        ep.closed = true;
                    }
                }
            }
        }
        for ep in episodes.iter().filter(|ep| ep.open()) {
            fired.push((customer_name(c), ep.start, ep.deadline));
        }
    }
    fired
}

fn model_threshold(events: &[Ev], w: Millis, n: usize) -> Vec<(String, Millis, Millis)> {
    let mut fired = Vec::new();
    for c in 0..CUSTOMERS {
        let mut s: Vec<Millis> = Vec::new();
        for e in events
            .iter()
            .filter(|e| e.customer == c && e.kind == Kind::Trigger)
        {
            s.push(e.time);
            let newest = *s.iter().max().unwrap();
            s.retain(|&x| x >= newest - w);
            if s.len() >= n {
                let start = *s.iter().min().unwrap();
                fired.push((customer_name(c), start, e.time));
                s.clear();
            }
        }
    }
    fired
}

fn model(stream: &Stream) -> Vec<Fired> {
    let mut all = Vec::new();
    for (id, restart, closers) in ABSENCE_RULES {
        for (c, start, deadline) in model_absence(&stream.events, stream.w, *restart, closers) {
            all.push((id.to_string(), c, start, deadline));
        }
    }
    for (c, start, at) in model_threshold(&stream.events, stream.w, stream.n) {
        all.push((THRESHOLD_RULE.to_string(), c, start, at));
    }
    for e in stream.events.iter().filter(|e| e.kind == Kind::Trigger) {
        all.push((
            MATCH_RULE.to_string(),
            customer_name(e.customer),
            e.time,
            e.time,
        ));
    }
    all.sort();
    all
}

// ---------------------------------------------------------------------------
// Driving the engine
// ---------------------------------------------------------------------------

struct Run {
    decisions: Vec<Decision>,
    engine: Engine,
}

/// Each partition's sub-stream, in the global order: (index, event).
fn partition_queues<'a>(stream: &'a Stream, split: &Split) -> Vec<Vec<(usize, &'a Ev)>> {
    let mut queues: Vec<Vec<(usize, &Ev)>> = vec![Vec::new(); split.partitions as usize];
    for (i, e) in stream.events.iter().enumerate() {
        queues[split.of_customer[e.customer as usize] as usize].push((i, e));
    }
    queues
}

/// Feeds the engine the next event of one of the partitions that have
/// events left (`pick` chooses which): (partition, event, output).
fn feed_next<'a>(
    engine: &mut Engine,
    queues: &[Vec<(usize, &'a Ev)>],
    next: &mut [usize],
    pick: u32,
) -> (usize, &'a Ev, Output) {
    let ready: Vec<usize> = (0..queues.len())
        .filter(|&p| next[p] < queues[p].len())
        .collect();
    let p = ready[pick as usize % ready.len()];
    let (index, e) = queues[p][next[p]];
    next[p] += 1;
    let mut out = Output::default();
    engine.on_event(
        p as PartitionId,
        &to_event(index, e),
        Clock::Virtual,
        &mut out,
    );
    (p, e, out)
}

/// Feeds the stream through `split`, checking on the way that nothing
/// fires before its time, then flushes.
fn run_engine(stream: &Stream, split: &Split) -> Result<Run, TestCaseError> {
    let mut engine = engine_for(stream.w, stream.n, split.allowed_lateness);
    let parts = split.partitions as usize;
    for p in 0..parts {
        engine.assign(p as PartitionId);
    }
    let queues = partition_queues(stream, split);
    let mut next = vec![0usize; parts];
    let mut decisions = Vec::new();
    for step in 0..stream.events.len() {
        let (p, e, out) = feed_next(&mut engine, &queues, &mut next, split.picks[step]);
        prop_assert!(stream.disorder <= split.allowed_lateness);
        prop_assert!(out.errors.is_empty(), "rule errors: {:?}", out.errors);
        prop_assert!(out.missing_key.is_empty());
        prop_assert_eq!(
            out.late_events,
            0,
            "no event is older than the lateness allows"
        );
        let wm = engine.watermark();
        for d in &out.decisions {
            let f = &d.firing;
            match f.deadline {
                // An absence deadline fires only once the engine
                // watermark has passed it.
                Some(deadline) => prop_assert!(
                    wm.is_some_and(|wm| wm > deadline),
                    "{} fired for {} at deadline {} with the watermark at {:?}",
                    f.rule.id,
                    f.event.customer(),
                    deadline,
                    wm
                ),
                // Match and threshold rules fire on the event itself.
                None => {
                    prop_assert_eq!(f.fired_at, e.time);
                    prop_assert_eq!(&f.event.customer(), &customer_name(e.customer));
                    prop_assert_eq!(f.partition, p as PartitionId);
                }
            }
        }
        decisions.extend(out.decisions);
    }
    // Whatever was due before the flush has fired already: the flush only
    // releases deadlines the watermark has not passed.
    let wm = engine.watermark();
    let mut out = Output::default();
    engine.flush(Clock::Virtual, &mut out);
    prop_assert!(out.errors.is_empty(), "rule errors: {:?}", out.errors);
    for d in &out.decisions {
        let f = &d.firing;
        prop_assert!(
            f.deadline
                .is_some_and(|deadline| wm.is_none_or(|wm| deadline >= wm)),
            "{} for {} (deadline {:?}) was held back until the flush, watermark {:?}",
            f.rule.id,
            f.event.customer(),
            f.deadline,
            wm
        );
    }
    decisions.extend(out.decisions);

    for d in &decisions {
        let f = &d.firing;
        prop_assert_eq!(
            d.outcome,
            Outcome::Fire,
            "{} for {}",
            f.rule.id,
            f.event.customer()
        );
        // Every firing comes from the customer's own partition.
        let c: u8 = f.event.customer()[1..].parse().unwrap();
        prop_assert_eq!(f.partition, split.of_customer[c as usize] as PartitionId);
        if let Some(deadline) = f.deadline {
            prop_assert_eq!(deadline, f.fired_at);
            prop_assert_eq!(f.episode_start + stream.w, deadline);
        }
    }
    Ok(Run { decisions, engine })
}

fn fired_of(decisions: &[Decision]) -> Vec<Fired> {
    let mut v: Vec<Fired> = decisions
        .iter()
        .map(|d| {
            (
                d.firing.rule.id.clone(),
                d.firing.event.customer().to_owned(),
                d.firing.episode_start,
                d.firing.fired_at,
            )
        })
        .collect();
    v.sort();
    v
}

/// Model and engine side by side, per rule, for a readable failure.
fn diff(model: &[Fired], engine: &[Fired]) -> String {
    let mut by_rule: BTreeMap<&str, (Vec<&Fired>, Vec<&Fired>)> = BTreeMap::new();
    for f in model {
        by_rule.entry(&f.0).or_default().0.push(f);
    }
    for f in engine {
        by_rule.entry(&f.0).or_default().1.push(f);
    }
    let mut s = String::new();
    for (rule, (m, e)) in by_rule.iter().filter(|(_, (m, e))| m != e) {
        s.push_str(&format!("rule {rule}:\n  model:  {m:?}\n  engine: {e:?}\n"));
    }
    s
}

fn check_against_model(stream: &Stream, split: &Split) -> Result<(), TestCaseError> {
    let run = run_engine(stream, split)?;
    let got = fired_of(&run.decisions);
    let want = model(stream);
    prop_assert!(got == want, "firings differ\n{}", diff(&want, &got));
    Ok(())
}

/// The daemon's life in miniature: a durable engine whose changes and
/// per-partition positions are "committed" to an in-memory store at random
/// points, and which "crashes" at random points: a new engine is restored
/// from the store, the uncommitted batch (its decisions too) is lost, and
/// consumption resumes at the stored positions. Returns every decision
/// that was committed.
fn run_with_crashes(
    stream: &Stream,
    split: &Split,
    fate: &[u8],
) -> Result<(Vec<Decision>, usize), TestCaseError> {
    use forewarn::engine::persist::{Row, StateTable};
    let fresh = || engine_with(stream.w, stream.n, split.allowed_lateness, true);
    let parts = split.partitions as usize;
    let queues = partition_queues(stream, split);
    let mut store: BTreeMap<(StateTable, Vec<u8>), Vec<u8>> = BTreeMap::new();
    let mut stored_next = vec![0usize; parts];
    let mut committed = Vec::new();
    let mut engine = fresh();
    for p in 0..parts {
        engine.assign(p as PartitionId);
    }
    let mut next = vec![0usize; parts];
    let mut uncommitted: Vec<Decision> = Vec::new();
    let mut crashes = 0;
    let mut step = 0usize;
    let commit = |engine: &mut Engine,
                  store: &mut BTreeMap<(StateTable, Vec<u8>), Vec<u8>>,
                  uncommitted: &mut Vec<Decision>,
                  committed: &mut Vec<Decision>| {
        for w in engine.take_changes() {
            match w.value {
                Some(v) => store.insert((w.table, w.key), v),
                None => store.remove(&(w.table, w.key)),
            };
        }
        committed.append(uncommitted);
    };
    while (0..parts).any(|p| next[p] < queues[p].len()) {
        let roll = fate[step % fate.len()];
        step += 1;
        if roll < 20 {
            commit(&mut engine, &mut store, &mut uncommitted, &mut committed);
            stored_next.clone_from(&next);
        } else if roll < 32 && crashes < 6 {
            crashes += 1;
            engine = fresh();
            for p in 0..parts {
                let prefix = (p as u32).to_be_bytes();
                let rows: Vec<Row> = store
                    .iter()
                    .filter(|((_, k), _)| k.starts_with(&prefix))
                    .map(|((t, k), v)| Row {
                        table: *t,
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect();
                let r = engine.restore(p as PartitionId, &rows, &|_| true);
                prop_assert_eq!(r.dropped, 0);
            }
            next.clone_from(&stored_next);
            uncommitted.clear();
            continue;
        }
        let pick = split.picks[step % split.picks.len()];
        let (_, _, out) = feed_next(&mut engine, &queues, &mut next, pick);
        prop_assert!(out.errors.is_empty(), "rule errors: {:?}", out.errors);
        uncommitted.extend(out.decisions);
    }
    let mut out = Output::default();
    engine.flush(Clock::Virtual, &mut out);
    uncommitted.extend(out.decisions);
    commit(&mut engine, &mut store, &mut uncommitted, &mut committed);
    // Flushed: every episode fired, and its deletion reached the store.
    prop_assert!(
        !store.keys().any(|(t, _)| *t == StateTable::Episodes),
        "episodes left in the store after a flush"
    );
    Ok((committed, crashes))
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // One file only: no proptest-regressions/ next to it.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// The engine fires exactly what the naive model says, whatever the
    /// partitioning, the interleaving of partitions and the lateness.
    #[test]
    fn engine_fires_what_the_model_says((stream, split) in arb_case(false)) {
        check_against_model(&stream, &split)?;
    }

    /// The same with events out of time order by no more than the allowed
    /// lateness: none is late, so the engine still decides exactly as the
    /// model, which walks each customer's events in processing order.
    #[test]
    fn bounded_disorder_changes_nothing((stream, split) in arb_case(true)) {
        check_against_model(&stream, &split)?;
    }

    /// After a flush nothing is left waiting: no open episode, no window.
    #[test]
    fn flush_leaves_no_open_episodes((stream, split) in arb_case(false)) {
        let run = run_engine(&stream, &split)?;
        let stats = run.engine.stats();
        prop_assert_eq!(stats.open_episodes, 0, "{:?}", stats);
        prop_assert_eq!(stats.threshold_windows, 0, "{:?}", stats);
    }
}

proptest! {
    // Each case runs the engine twice.
    #![proptest_config(config(128))]

    /// Two different splits and interleavings of one stream send the same
    /// notification ids (as a multiset, hence also as a set).
    #[test]
    fn notification_ids_do_not_depend_on_the_split((stream, a, b) in arb_two_splits(false)) {
        let ids = |run: &Run| {
            let mut v: Vec<String> = run
                .decisions
                .iter()
                .map(|d| d.firing.notification_id.clone())
                .collect();
            v.sort();
            v
        };
        let ra = run_engine(&stream, &a)?;
        let rb = run_engine(&stream, &b)?;
        let (ia, ib) = (ids(&ra), ids(&rb));
        let (sa, sb): (BTreeSet<&String>, BTreeSet<&String>) = (ia.iter().collect(), ib.iter().collect());
        prop_assert_eq!(sa, sb, "different sets of notification ids");
        prop_assert_eq!(ia, ib, "different multisets of notification ids");
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Crash-proof state, in the pure engine: commits and crashes at
    /// random points (state restored from the committed rows, the
    /// uncommitted batch read again) decide exactly what the model says,
    /// each notification once.
    #[test]
    fn crashes_and_restores_change_nothing(
        (stream, split) in arb_case(true),
        fate in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let fate: Vec<u8> = fate.iter().map(|f| f % 100).collect();
        let (decisions, _crashes) = run_with_crashes(&stream, &split, &fate)?;
        let got = fired_of(&decisions);
        let want = model(&stream);
        prop_assert!(got == want, "firings differ\n{}", diff(&want, &got));
    }
}
