//! The engine is pure: events, idle ticks and a clock reading go in;
//! decisions come out. No async, no I/O, no clock of its own, so live mode,
//! `replay`, rule tests and property tests all drive the same code.
//!
//! State is kept per Kafka partition ([`Partition`]): a watermark, open
//! absence episodes with a sorted deadline index (one timer structure per
//! partition, never a task per timer), threshold windows and the
//! cooldown / once_per ledgers. The engine watermark is the minimum over
//! partitions; an absence deadline fires only once it has passed.
//!
//! One module per rule kind: `matcher` (match), `absence`, `threshold`.
//! A new kind adds a module here, a variant in `rules::model::RuleKind`,
//! and arms in `on_event` / `fire_due`.

mod absence;
mod ledger;
mod matcher;
pub mod persist;
pub mod project;
pub mod shared;
mod table;
mod threshold;
mod timers;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::event::{Event, Millis};
use crate::rules::catalog::CatalogEntry;
use crate::rules::expr::{base_context, to_cel};
use crate::rules::model::TypeMap;
use crate::rules::{Rule, RuleKind, RuleSet};

pub type PartitionId = i32;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Watermark = highest event time seen − this.
    pub allowed_lateness: Millis,
    /// How long once_per entries are remembered.
    pub ledger_retention: Millis,
    /// Keep fired absence episodes until [`Engine::settle`] so that an
    /// `until`/`cancel_on` event can still resolve their notification
    /// (reported in [`Output::resolved`]). On where sending takes time
    /// (the daemon); off where it is instant (replay, tests).
    pub send_time_guard: bool,
    /// Note every state change for [`Engine::take_changes`], to be made
    /// durable by the caller (the daemon); off in replay and tests.
    pub durable: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            allowed_lateness: 5_000,
            ledger_retention: 90 * 24 * 3_600_000,
            send_time_guard: false,
            durable: false,
        }
    }
}

/// What "now" means when the engine judges staleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Live: the wall clock, in epoch milliseconds.
    Wall(Millis),
    /// Replay and tests: virtual time, in which every firing is on time.
    Virtual,
}

/// What the engine decided about a firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Go on to policy and delivery.
    Fire,
    /// The rule notified this customer within its cooldown.
    Cooldown,
    /// once_per: this value tuple was notified before.
    Duplicate,
    /// The deadline is older than stale_after by the clock.
    Stale,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Fire => "fired",
            Outcome::Cooldown => "cooldown",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
        }
    }
}

/// A rule decided that a customer should hear from us.
#[derive(Debug, Clone)]
pub struct Firing {
    pub rule: Arc<Rule>,
    /// The event templates see as `event` and `trigger`: the trigger for
    /// absence rules, the firing event otherwise.
    pub event: Arc<Event>,
    pub entry: Option<Arc<CatalogEntry>>,
    /// The values that identify the episode.
    pub key: Vec<String>,
    pub episode_start: Millis,
    /// Absence rules: when the customer should have acted.
    pub deadline: Option<Millis>,
    /// Event time of the firing: the deadline, or the firing event's time.
    pub fired_at: Millis,
    pub partition: PartitionId,
    pub notification_id: String,
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub firing: Firing,
    pub outcome: Outcome,
}

/// A condition that could not be evaluated (counted and logged by the caller).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub rule_id: String,
    /// Safe to log: runtime values and addresses in it are masked
    /// (`crate::redact::values`).
    pub message: String,
}

/// Everything the engine reports; the caller drains it after each call.
#[derive(Debug, Default)]
pub struct Output {
    pub decisions: Vec<Decision>,
    pub errors: Vec<RuleError>,
    /// Rule ids whose trigger lacked a key (or deadline) field: opened nothing.
    pub missing_key: Vec<String>,
    /// Events older than their partition's watermark (still processed).
    pub late_events: u64,
    /// Notification ids of fired, undelivered absence episodes that an
    /// `until`/`cancel_on` event has resolved (send-time guard).
    pub resolved: Vec<String>,
}

/// What [`Engine::forget`] erased.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Forgotten {
    pub episodes: usize,
    pub fired: usize,
    pub windows: usize,
    pub ledger_entries: usize,
}

/// Sizes of the engine's state, for metrics and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub open_episodes: usize,
    pub threshold_windows: usize,
    pub ledger_entries: usize,
    /// Fired absence episodes awaiting delivery (send-time guard).
    pub guarded: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Partition {
    max_event: Option<Millis>,
    idle_floor: Option<Millis>,
    episodes: absence::Episodes,
    guard: absence::Guard,
    windows: threshold::Windows,
    ledger: ledger::Ledger,
    /// Durable: the watermark inputs changed since the last flush.
    moved: bool,
    /// Durable: stored rows a restore dropped, deleted at the next flush.
    dropped: Vec<persist::Write>,
}

impl Partition {
    fn new(durable: bool) -> Partition {
        let mut p = Partition::default();
        if durable {
            p.note_changes();
        }
        p
    }

    /// From now on, every structure notes what it changes.
    fn note_changes(&mut self) {
        self.episodes.journal = persist::Journal::on();
        self.guard.journal = persist::Journal::on();
        self.windows.journal = persist::Journal::on();
        self.ledger.journal = persist::Journal::on();
    }

    /// This partition's changes since the last flush, as store rows.
    fn changes(&mut self, pid: PartitionId, rules: &RuleSet, out: &mut Vec<persist::Write>) {
        out.append(&mut self.dropped);
        self.episodes.changes(pid, rules, out);
        self.guard.changes(pid, rules, out);
        self.windows.changes(pid, out);
        self.ledger.changes(pid, out);
        if std::mem::take(&mut self.moved) {
            out.push(self.meta_row(pid));
        }
    }

    /// All of this partition's state, as store rows.
    fn snapshot(&self, pid: PartitionId, rules: &RuleSet, out: &mut Vec<persist::Write>) {
        out.push(self.meta_row(pid));
        self.episodes.snapshot(pid, rules, out);
        self.guard.snapshot(pid, rules, out);
        self.windows.snapshot(pid, out);
        self.ledger.snapshot(pid, out);
    }

    fn meta_row(&self, pid: PartitionId) -> persist::Write {
        persist::Write {
            table: persist::StateTable::Partitions,
            key: persist::partition_prefix(pid).to_vec(),
            value: Some(
                persist::Enc::value()
                    .opt_millis(self.max_event)
                    .opt_millis(self.idle_floor)
                    .done(),
            ),
        }
    }

    fn watermark(&self, lateness: Millis) -> Option<Millis> {
        let from_events = self.max_event.map(|m| m.saturating_sub(lateness));
        match (from_events, self.idle_floor) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Partition `p`'s state, tracked from now on if it was not (which
/// unsettles the engine watermark: see [`Engine::settled`]).
fn partition_in<'a>(
    partitions: &'a mut BTreeMap<PartitionId, Partition>,
    settled: &mut bool,
    durable: bool,
    p: PartitionId,
) -> &'a mut Partition {
    partitions.entry(p).or_insert_with(|| {
        *settled = false;
        Partition::new(durable)
    })
}

/// [`TypeRules`] by event type.
struct Types {
    rules: Vec<TypeRules>,
    /// Each type, as `rules`.
    names: Vec<String>,
    /// Where each type's rules are in `rules`.
    at: TypeMap<u32>,
    /// Where the type [`Types::reads`] looked up last is (`u32::MAX`: it
    /// found none).
    last: std::cell::Cell<u32>,
}

impl Types {
    fn new(types: Vec<(String, TypeRules)>) -> Types {
        let (names, rules): (Vec<String>, Vec<TypeRules>) = types.into_iter().unzip();
        Types {
            at: names
                .iter()
                .enumerate()
                .map(|(at, kind)| (kind.clone(), at as u32))
                .collect(),
            names,
            rules,
            last: std::cell::Cell::new(u32::MAX),
        }
    }

    /// Whether some rule names `kind` (see [`Engine::reads`]). The type
    /// found last is compared first: events of one type often come in a
    /// row (most are page views), and a comparison of words costs less
    /// than a hash and the map's `memcmp` call.
    fn reads(&self, kind: &str) -> bool {
        if self.found_last(kind).is_some() {
            return true;
        }
        let at = self.at.get(kind).copied();
        self.last.set(at.unwrap_or(u32::MAX));
        at.is_some()
    }

    /// The rules an event of type `kind` meets, if any. The daemon (as
    /// replay, `forewarn test` and the benchmark) asks [`Engine::reads`]
    /// while it decodes an event, then hands the event to
    /// [`Engine::on_event`], which finds its type here: compared with the
    /// one `reads` found, rather than hashed and looked up again.
    fn get(&self, kind: &str) -> Option<&TypeRules> {
        if let Some(last) = self.found_last(kind) {
            return Some(&self.rules[last]);
        }
        self.at.get(kind).map(|&at| &self.rules[at as usize])
    }

    /// Where `kind` is, if it is the type [`Types::reads`] found last
    /// (compared as words: no hash, no `memcmp` call). Inline: it is on
    /// every event's path, twice, and costs less than a call.
    #[inline(always)]
    fn found_last(&self, kind: &str) -> Option<usize> {
        let last = self.last.get() as usize;
        self.names
            .get(last)
            .is_some_and(|name| crate::event::same_text(name, kind))
            .then_some(last)
    }
}

/// What an event of one type meets.
struct TypeRules {
    /// Absence rules it may close (as [`RuleSet::closed_by`]).
    closers: Vec<u32>,
    /// Rules it may trigger (as [`RuleSet::triggered_by`]).
    triggers: Vec<u32>,
    /// The payload fields their conditions read (None: all). Only these are
    /// converted to CEL, once per event.
    bindings: Option<Vec<crate::event::FieldPath>>,
    /// Per trigger (as `triggers`): its condition's slot in
    /// [`SharedConditions`], or [`NOT_SHARED`].
    trigger_slots: Vec<u8>,
    /// Per closer (as `closers`): a slot per condition of its that this
    /// type meets, in [`absence::closing_conditions`] order.
    closer_slots: Vec<Vec<u8>>,
}

/// A condition no other rule of the event type shares: evaluated directly.
const NOT_SHARED: u8 = u8::MAX;

/// Slots for the conditions on an event alone that several of one event
/// type's rules share (the same source text decides the same on the same
/// event): [`SharedConditions`] evaluates each once per event. A rule
/// engine shares such tests across rules (Rete's alpha memories); rule
/// sets share them where several rules watch one page, platform or
/// status, or where a shadow copy of a rule runs beside it. Conditions
/// that name `trigger` depend on the episode and are never shared. Up to
/// 64 shared conditions per type get a slot; any more are evaluated per
/// rule as before.
fn shared_condition_slots<'r>(
    kind: &'r str,
    rules: &'r RuleSet,
    triggers: &[u32],
    closers: &[u32],
    closer_reads_trigger: &[bool],
) -> (Vec<u8>, Vec<Vec<u8>>) {
    let trigger_source = |idx: &u32| -> Option<&'r str> {
        rules.rule(*idx).trigger.when.as_ref().map(|w| w.source())
    };
    let closer_sources = |idx: &u32| -> Vec<Option<&'r str>> {
        match &rules.rule(*idx).kind {
            RuleKind::Absence(a) if !closer_reads_trigger[*idx as usize] => {
                absence::closing_conditions(a, kind)
                    .map(|c| c.when.as_ref().map(|w| w.source()))
                    .collect()
            }
            _ => Vec::new(),
        }
    };
    let mut uses: HashMap<&'r str, usize> = HashMap::new();
    let all = triggers
        .iter()
        .map(trigger_source)
        .chain(closers.iter().flat_map(closer_sources));
    for source in all.flatten() {
        *uses.entry(source).or_default() += 1;
    }
    let mut slots: HashMap<&'r str, u8> = HashMap::new();
    let mut slot_of = |source: Option<&'r str>| -> u8 {
        let Some(source) = source.filter(|s| uses.get(s).is_some_and(|&n| n > 1)) else {
            return NOT_SHARED;
        };
        let next = slots.len();
        match slots.get(source) {
            Some(&slot) => slot,
            None if next < 64 => {
                slots.insert(source, next as u8);
                next as u8
            }
            None => NOT_SHARED,
        }
    };
    let trigger_slots = triggers
        .iter()
        .map(|i| slot_of(trigger_source(i)))
        .collect();
    let closer_slots = closers
        .iter()
        .map(|i| closer_sources(i).into_iter().map(&mut slot_of).collect())
        .collect();
    (trigger_slots, closer_slots)
}

/// The results so far, for one event, of its type's shared conditions
/// (see [`shared_condition_slots`]): a bit per slot.
#[derive(Debug, Default)]
struct SharedConditions {
    known: std::cell::Cell<u64>,
    holds: std::cell::Cell<u64>,
}

impl SharedConditions {
    /// Whether the condition in `slot` holds: its result for this event if
    /// another rule has evaluated it, else `eval`'s. `eval` returns the
    /// result and whether it may be shared: a condition that failed to
    /// evaluate is not, so that each rule evaluates it and reports its
    /// error itself.
    fn holds(&self, slot: u8, eval: impl FnOnce() -> (bool, bool)) -> bool {
        if slot == NOT_SHARED {
            return eval().0;
        }
        let bit = 1u64 << slot;
        if self.known.get() & bit != 0 {
            return self.holds.get() & bit != 0;
        }
        let (holds, shared) = eval();
        if shared {
            self.known.set(self.known.get() | bit);
            if holds {
                self.holds.set(self.holds.get() | bit);
            }
        }
        holds
    }
}

pub struct Engine {
    rules: Arc<RuleSet>,
    /// Per event type that some enabled rule names: its rules and the
    /// fields their conditions read, found with one lookup per event.
    types: Types,
    /// Per rule: the trigger fields an episode keeps, as the encoder
    /// walks them (None: all).
    plans: Vec<Option<project::Plan>>,
    /// Per rule: the index of the first rule that keeps the same fields.
    retain_class: Vec<u32>,
    /// What every stored trigger keeps (see [`Engine::new`]).
    always_retain: Vec<crate::event::FieldPath>,
    /// Per rule: an until / cancel_on condition names `trigger`.
    closer_reads_trigger: Vec<bool>,
    /// Per rule: the buffer its key hashes are laid out in, holding the
    /// start they share ([`key_prefix`]); see [`event_key_hash`].
    key_bufs: Vec<std::cell::RefCell<KeyBuf>>,
    cel: cel::Context<'static, 'static>,
    cfg: EngineConfig,
    partitions: BTreeMap<PartitionId, Partition>,
    /// The engine watermark up to which timers have fired.
    fired_through: Option<Millis>,
    /// Since `fire_due` last looked, only events have moved watermarks,
    /// each followed by a look (or a skip `on_event` proved safe): the
    /// engine watermark is then at most `fired_through`. Adding, dropping
    /// or restoring a partition clears it.
    settled: bool,
    /// Lists `on_event` fills and empties on every event, kept between
    /// events so that no event allocates them, however many rules of its
    /// type hold (inline lists spilled to the heap past eight).
    scratch: Scratch,
}

/// See [`Engine::scratch`].
#[derive(Default)]
struct Scratch {
    /// The rules whose trigger held, with their key hashes.
    held: Vec<(u32, Option<u128>)>,
    /// The closers that have episodes to look up.
    probes: Vec<absence::CloserProbe>,
}

impl Engine {
    /// `always_retain`: event fields every stored trigger keeps besides
    /// what its rule uses (the recipient address path, typically).
    pub fn new(
        rules: Arc<RuleSet>,
        cfg: EngineConfig,
        always_retain: &[crate::event::FieldPath],
    ) -> Engine {
        let retain: Vec<Option<Vec<crate::event::FieldPath>>> = rules
            .rules
            .iter()
            .map(|r| project::retained_paths(r, always_retain))
            .collect();
        let bindings = event_bindings(&rules);
        let plans = retain
            .iter()
            .map(|r| r.as_deref().map(project::Plan::new))
            .collect();
        let retain_class = (0..retain.len())
            .map(|i| retain.iter().position(|r| *r == retain[i]).unwrap_or(i) as u32)
            .collect();
        let closer_reads_trigger: Vec<bool> = rules
            .rules
            .iter()
            .map(|r| match &r.kind {
                RuleKind::Absence(a) => a.until.iter().chain(&a.cancel_on).any(|c| {
                    c.when
                        .as_ref()
                        .is_some_and(|w| w.source().contains("trigger"))
                }),
                _ => false,
            })
            .collect();
        // `event_bindings` has an entry for every type an enabled rule
        // triggers on or closes on: exactly the keys of `triggered_by` and
        // `closed_by`.
        let types: Vec<(String, TypeRules)> = bindings
            .into_iter()
            .map(|(kind, bindings)| {
                let closers = rules.closed_by(&kind).to_vec();
                let triggers = rules.triggered_by(&kind).to_vec();
                let (trigger_slots, closer_slots) = shared_condition_slots(
                    &kind,
                    &rules,
                    &triggers,
                    &closers,
                    &closer_reads_trigger,
                );
                let rules = TypeRules {
                    closers,
                    triggers,
                    bindings,
                    trigger_slots,
                    closer_slots,
                };
                (kind, rules)
            })
            .collect();
        Engine {
            closer_reads_trigger,
            key_bufs: rules
                .rules
                .iter()
                .map(|r| std::cell::RefCell::new(key_prefix(r)))
                .collect(),
            rules,
            types: Types::new(types),
            retain_class,
            plans,
            always_retain: always_retain.to_vec(),
            cel: base_context(),
            cfg,
            partitions: BTreeMap::new(),
            fired_through: None,
            settled: false,
            scratch: Scratch::default(),
        }
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Whether a rule reads events of this type: if none does, decoding
    /// keeps nothing of its payload (see
    /// [`crate::event::EventSchema::decode_lazy`]).
    pub fn reads(&self, kind: &str) -> bool {
        self.types.reads(kind)
    }

    /// Starts tracking a partition. Until it sees an event or goes idle, its
    /// watermark is unknown and holds the engine watermark back.
    pub fn assign(&mut self, p: PartitionId) {
        self.partition(p);
    }

    fn partition(&mut self, p: PartitionId) -> &mut Partition {
        partition_in(&mut self.partitions, &mut self.settled, self.cfg.durable, p)
    }

    /// Whether partition `p` is tracked (assigned or restored).
    pub fn has_partition(&self, p: PartitionId) -> bool {
        self.partitions.contains_key(&p)
    }

    /// Every state change since the last call, as rows for the store
    /// (durable engines only; see [`persist`]). Commit them together with
    /// the positions of the events that caused them.
    pub fn take_changes(&mut self) -> Vec<persist::Write> {
        let mut out = Vec::new();
        for (&pid, part) in self.partitions.iter_mut() {
            part.changes(pid, &self.rules, &mut out);
        }
        out
    }

    /// Every row of partition `p`'s current state, for a snapshot that
    /// replaces the changes logged so far. Call right after
    /// [`Engine::take_changes`], so that the snapshot is what is committed.
    pub fn snapshot(&self, p: PartitionId) -> Vec<persist::Write> {
        let mut out = Vec::new();
        if let Some(part) = self.partitions.get(&p) {
            part.snapshot(p, &self.rules, &mut out);
        }
        out
    }

    /// Rebuilds partition `p` from the rows the store holds for it (all
    /// tables), replacing whatever the engine had. Fired episodes are kept
    /// only while `unsettled(notification id)` holds. Rows whose rule is
    /// gone or changed kind are dropped, and deleted at the next flush.
    pub fn restore(
        &mut self,
        p: PartitionId,
        rows: &[persist::Row],
        unsettled: &dyn Fn(&str) -> bool,
    ) -> persist::Restored {
        use persist::StateTable;
        let by_id: HashMap<&str, u32> = self
            .rules
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.as_str(), i as u32))
            .collect();
        let rule_index = |id: &str| by_id.get(id).copied();
        // What is read back is stored already: nothing is noted until the
        // rows are in.
        let mut part = Partition::new(false);
        let mut report = persist::Restored::default();
        for row in rows {
            let kept = match row.table {
                StateTable::Partitions => {
                    let mut v = persist::Dec(&row.value);
                    match (v.opt_millis(), v.opt_millis()) {
                        (Some(max_event), Some(idle_floor)) => {
                            part.max_event = max_event;
                            part.idle_floor = idle_floor;
                            continue;
                        }
                        _ => false,
                    }
                }
                StateTable::Episodes => {
                    let ok = part.episodes.restore(row, &rule_index, &self.rules);
                    report.episodes += usize::from(ok);
                    ok
                }
                StateTable::Fired => {
                    let ok = part.guard.restore(row, &rule_index, unsettled);
                    report.fired += usize::from(ok);
                    ok
                }
                StateTable::Windows => {
                    let ok = part.windows.restore(row);
                    report.windows += usize::from(ok);
                    ok
                }
                StateTable::Ledger => {
                    let ok = part.ledger.restore(row);
                    report.ledger += usize::from(ok);
                    ok
                }
            };
            if !kept {
                report.dropped += 1;
                part.dropped.push(persist::Write {
                    table: row.table,
                    key: row.key.clone(),
                    value: None,
                });
            }
        }
        if self.cfg.durable {
            part.note_changes();
        }
        self.partitions.insert(p, part);
        self.settled = false;
        // Timers are checked against the restored watermark at the next
        // event or tick, like any other.
        self.fired_through = None;
        report
    }

    /// The same state under a new rule set (hot reload). Every partition is
    /// snapshotted and restored, so a reload treats state exactly as a
    /// restart with the new rules would: open episodes (and fired ones
    /// awaiting delivery) of a rule that is gone, disabled or of another
    /// kind now are dropped, and when durable deleted at the next flush;
    /// those of a rule that kept its id and kind stay as they are, with the
    /// deadline they were opened with. Windows and ledger entries are keyed
    /// by hashes of (rule, key): a kept rule keeps them, a removed rule's
    /// expire on their own.
    pub fn reloaded(&self, rules: Arc<RuleSet>) -> (Engine, persist::Restored) {
        let mut next = Engine::new(rules, self.cfg.clone(), &self.always_retain);
        let mut total = persist::Restored::default();
        for p in self.partitions() {
            let rows: Vec<persist::Row> = self
                .snapshot(p)
                .into_iter()
                .filter_map(persist::Write::into_row)
                .collect();
            let r = next.restore(p, &rows, &|_| true);
            total.episodes += r.episodes;
            total.fired += r.fired;
            total.windows += r.windows;
            total.ledger += r.ledger;
            total.dropped += r.dropped;
        }
        (next, total)
    }

    /// Stops tracking a partition and drops its state (the durable store
    /// keeps it for the next owner).
    pub fn revoke(&mut self, p: PartitionId) {
        self.partitions.remove(&p);
        self.settled = false;
    }

    pub fn partitions(&self) -> impl Iterator<Item = PartitionId> + '_ {
        self.partitions.keys().copied()
    }

    /// The engine watermark: the minimum over partitions, `None` while any
    /// partition has neither an event nor an idle tick.
    pub fn watermark(&self) -> Option<Millis> {
        let mut min: Option<Millis> = None;
        for p in self.partitions.values() {
            let w = p.watermark(self.cfg.allowed_lateness)?;
            min = Some(min.map_or(w, |m| m.min(w)));
        }
        min
    }

    /// A partition's own watermark.
    pub fn partition_watermark(&self, p: PartitionId) -> Option<Millis> {
        self.partitions
            .get(&p)?
            .watermark(self.cfg.allowed_lateness)
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for p in self.partitions.values() {
            s.open_episodes += p.episodes.len();
            s.threshold_windows += p.windows.len();
            s.ledger_entries += p.ledger.len();
            s.guarded += p.guard.len();
        }
        s
    }

    /// The notification `id` has a final outcome (sent, dead-lettered,
    /// resolved, suppressed): the send-time guard forgets its episode.
    /// Erases what the engine holds about `customer` (GDPR): open episodes
    /// and fired ones awaiting delivery whose trigger is theirs, threshold
    /// windows of rules keyed by the customer, and their cooldown and
    /// customer-only once_per entries. Durable engines journal the removals
    /// for the next commit.
    pub fn forget(&mut self, customer: &str) -> Forgotten {
        let ledger_keys = ledger::keys_of(&self.rules.rules, customer);
        let window_keys: Vec<u128> = self
            .rules
            .rules
            .iter()
            .filter(|r| matches!(r.kind, RuleKind::Threshold(_)))
            // Windows keyed by the customer id alone (however the field is
            // named); other keys are one-way hashes of other values.
            .map(|r| key_hash("window", &r.id, &vec![customer.to_string(); r.key.len()]))
            .collect();
        let mut f = Forgotten::default();
        for part in self.partitions.values_mut() {
            f.episodes += part.episodes.forget(customer);
            for id in part.guard.ids_of(customer) {
                part.guard.settle(&id);
                f.fired += 1;
            }
            f.windows += window_keys
                .iter()
                .filter(|&&k| part.windows.remove(k))
                .count();
            f.ledger_entries += ledger_keys
                .iter()
                .filter(|&&k| part.ledger.remove(k))
                .count();
        }
        f
    }

    pub fn settle(&mut self, id: &str) {
        for part in self.partitions.values_mut() {
            if part.guard.settle(id) {
                return;
            }
        }
    }

    /// Processes one event read from partition `p`.
    pub fn on_event(&mut self, p: PartitionId, event: &Arc<Event>, clock: Clock, out: &mut Output) {
        let lateness = self.cfg.allowed_lateness;
        let fired_through = self.fired_through;
        // Found once, and kept for the whole event: borrowing the
        // partitions alone leaves the engine's other fields free to read.
        let part = partition_in(&mut self.partitions, &mut self.settled, self.cfg.durable, p);
        let before = part.watermark(lateness);
        if before.is_some_and(|w| event.time < w) {
            out.late_events += 1;
        }
        if part.max_event.is_none_or(|m| event.time > m) {
            part.max_event = Some(event.time);
            part.moved = true;
        }
        // The engine watermark is the minimum over partitions and is at
        // most `fired_through` when settled. A partition that was above
        // `fired_through` is not the minimum, and moving it up cannot move
        // the minimum: no timer can be due, and most events skip the look.
        let nothing_due =
            self.settled && matches!((before, fired_through), (Some(b), Some(f)) if b > f);

        let Scratch {
            mut held,
            mut probes,
        } = std::mem::take(&mut self.scratch);
        held.clear();
        probes.clear();
        if let Some(TypeRules {
            closers,
            triggers,
            bindings,
            trigger_slots,
            closer_slots,
        }) = self.types.get(event.kind())
        {
            let scope = LazyScope {
                base: &self.cel,
                event,
                paths: bindings.as_deref(),
                cell: std::cell::OnceCell::new(),
            };
            let cx = Cx {
                rules: &self.rules,
                plans: &self.plans,
                retain_class: &self.retain_class,
                closer_reads_trigger: &self.closer_reads_trigger,
                key_bufs: &self.key_bufs,
                encoded: Default::default(),
                shared: SharedConditions::default(),
                cfg: &self.cfg,
                scope: &scope,
                partition: p,
                clock,
            };
            // Every condition on the event alone, and every key hash,
            // first: the episodes and windows they lead to are prefetched,
            // so that their cache misses overlap rather than come one after
            // another. (The lists are the engine's, reused: see `scratch`.)
            for (&idx, &slot) in triggers.iter().zip(trigger_slots) {
                let rule = self.rules.rule(idx);
                let holds = cx.shared.holds(slot, || {
                    let errors = out.errors.len();
                    let holds =
                        matcher::trigger_holds(rule, event, || scope.get(), &rule.trigger, out);
                    (holds, out.errors.len() == errors)
                });
                if !holds {
                    continue;
                }
                // Absence and threshold state is found by the key's hash,
                // taken from the event's fields without copying them.
                let hash = match &rule.kind {
                    RuleKind::Match { .. } => None,
                    RuleKind::Absence(_) => {
                        let hash = event_key_hash(&self.key_bufs[idx as usize], rule, event);
                        if let Some(k) = hash {
                            part.episodes.prefetch(k);
                        }
                        hash
                    }
                    RuleKind::Threshold(_) => {
                        let hash = event_key_hash(&self.key_bufs[idx as usize], rule, event);
                        if let Some(k) = hash {
                            part.windows.prefetch(k);
                        }
                        hash
                    }
                };
                held.push((idx, hash));
            }
            // Closers before triggers: an event that both closes and
            // re-triggers (say, a second checkout after an order) ends the
            // old episode before it opens the next.
            probes.extend(
                closers
                    .iter()
                    .zip(closer_slots)
                    .filter_map(|(&idx, slots)| {
                        absence::closer_probe(&cx, part, idx, slots, event)
                    }),
            );
            for &probe in &probes {
                absence::on_closer(&cx, part, probe, event, out);
            }
            for &(idx, hash) in &held {
                let rule = self.rules.rule(idx);
                // A trigger without its key fields opens nothing (counted).
                let missing = match (&rule.kind, hash) {
                    (RuleKind::Match { catalog }, _) => match rule.key_values(event) {
                        Some(key) => {
                            matcher::on_trigger(
                                &cx,
                                part,
                                rule,
                                catalog.as_deref(),
                                key,
                                event,
                                out,
                            );
                            false
                        }
                        None => true,
                    },
                    (RuleKind::Absence(a), Some(k)) => {
                        absence::on_trigger(&cx, part, idx, a, k, event, out);
                        false
                    }
                    (RuleKind::Threshold(t), Some(k)) => {
                        threshold::on_trigger(&cx, part, rule, t, k, event, out);
                        false
                    }
                    (_, None) => true,
                };
                if missing {
                    out.missing_key.push(rule.id.clone());
                }
            }
        }
        self.scratch = Scratch { held, probes };
        if !nothing_due {
            self.fire_due(clock, out);
        }
    }

    /// Partition `p` has been caught up for `idle_timeout`: its watermark
    /// follows the clock (`now` − allowed_lateness), so deadlines fire even
    /// when no further events arrive.
    pub fn on_idle(&mut self, p: PartitionId, now: Millis, clock: Clock, out: &mut Output) {
        let floor = now.saturating_sub(self.cfg.allowed_lateness);
        let part = self.partition(p);
        if part.idle_floor.is_none_or(|f| floor > f) {
            part.idle_floor = Some(floor);
            part.moved = true;
        }
        self.fire_due(clock, out);
    }

    /// Moves every partition's watermark to at least `until`, as if all
    /// were idle then: the end of a replay stops time at the last event.
    pub fn advance_to(&mut self, until: Millis, clock: Clock, out: &mut Output) {
        for part in self.partitions.values_mut() {
            part.idle_floor = Some(part.idle_floor.map_or(until, |f| f.max(until)));
            part.moved = true;
        }
        self.fire_due(clock, out);
    }

    /// Time runs on forever: every open deadline fires (tests, shutdown reports).
    pub fn flush(&mut self, clock: Clock, out: &mut Output) {
        for part in self.partitions.values_mut() {
            part.idle_floor = Some(Millis::MAX);
            part.moved = true;
        }
        self.fire_due(clock, out);
    }

    /// Fires every timer the engine watermark has passed, in deadline order
    /// per partition, and expires windows and ledger entries behind it.
    fn fire_due(&mut self, clock: Clock, out: &mut Output) {
        self.settled = true;
        let Some(wm) = self.watermark() else {
            return;
        };
        if self.fired_through.is_some_and(|f| f >= wm) {
            return;
        }
        self.fired_through = Some(wm);
        let rules = Arc::clone(&self.rules);
        for (&pid, part) in self.partitions.iter_mut() {
            absence::fire_due(&rules, &self.cfg, part, pid, wm, clock, out);
            threshold::expire(&mut part.windows, wm);
            part.ledger.expire(wm);
        }
    }
}

/// For each event type, the union of the payload fields read as `event.*`
/// by every condition that can run on it: trigger conditions, catalog
/// `matches`, and until / cancel_on conditions.
fn event_bindings(rules: &RuleSet) -> TypeMap<Option<Vec<crate::event::FieldPath>>> {
    let mut out: TypeMap<Option<Vec<crate::event::FieldPath>>> = TypeMap::default();
    let mut add = |kind: &str, expr: Option<&crate::rules::expr::Expr>| {
        let entry = out
            .entry(kind.to_string())
            .or_insert_with(|| Some(Vec::new()));
        let paths = expr.map_or(Some(Vec::new()), |e| e.field_paths("event"));
        match (entry.as_mut(), paths) {
            (Some(all), Some(p)) => all.extend(p),
            _ => *entry = None,
        }
    };
    for rule in rules.rules.iter().filter(|r| r.enabled) {
        add(&rule.trigger.event, rule.trigger.when.as_ref());
        match &rule.kind {
            RuleKind::Match { catalog: Some(c) } => {
                for e in &c.entries {
                    add(&rule.trigger.event, Some(&e.matches));
                }
            }
            RuleKind::Absence(a) => {
                for c in a.until.iter().chain(&a.cancel_on) {
                    add(&c.event, c.when.as_ref());
                }
            }
            _ => {}
        }
    }
    for paths in out.values_mut().flatten() {
        paths.sort_by_key(ToString::to_string);
        paths.dedup();
    }
    out
}

/// The CEL scope of one event, built on first use: conditions on the fast
/// path never need it. Converted once per event, shared by every rule that
/// looks at it, with only the fields the conditions read.
struct LazyScope<'a> {
    base: &'a cel::Context<'static, 'static>,
    event: &'a Event,
    paths: Option<&'a [crate::event::FieldPath]>,
    cell: std::cell::OnceCell<cel::Context<'a, 'static>>,
}

impl<'a> LazyScope<'a> {
    fn get(&self) -> &cel::Context<'a, 'static> {
        self.cell.get_or_init(|| {
            let value = match self.paths {
                Some(paths) => to_cel(&self.event.project(paths)),
                None => to_cel(self.event.payload()),
            };
            let mut scope = self.base.new_inner_scope();
            scope.add_variable_from_value("event", value);
            scope
        })
    }
}

/// (retain class, the trigger as stored) for the event being processed.
type EncodedTriggers = std::cell::RefCell<smallvec::SmallVec<[(u32, shared::SharedBytes); 2]>>;

/// What the per-kind modules need from the engine for one event.
struct Cx<'a> {
    rules: &'a RuleSet,
    plans: &'a [Option<project::Plan>],
    /// Per rule: which distinct `retain` set it has (equal sets, equal ids).
    retain_class: &'a [u32],
    /// Per rule: an until / cancel_on condition names `trigger`.
    closer_reads_trigger: &'a [bool],
    /// Per rule: the buffer its key hashes are laid out in (see
    /// [`Engine::key_bufs`]).
    key_bufs: &'a [std::cell::RefCell<KeyBuf>],
    /// This event's stored form per retain class, encoded once however
    /// many absence rules it opens an episode for, and shared by them.
    encoded: EncodedTriggers,
    /// This event's results of the conditions its type's rules share.
    shared: SharedConditions,
    cfg: &'a EngineConfig,
    scope: &'a LazyScope<'a>,
    partition: PartitionId,
    clock: Clock,
}

impl Cx<'_> {
    /// The trigger as rule `idx` stores it (see [`project::encode_trigger`]):
    /// encoded for the first rule of its retain class, shared by the rest.
    fn encoded_trigger(&self, idx: u32, event: &Event) -> shared::SharedBytes {
        let class = self.retain_class[idx as usize];
        let mut cache = self.encoded.borrow_mut();
        if let Some((_, bytes)) = cache.iter().find(|(c, _)| *c == class) {
            return bytes.clone();
        }
        let bytes = project::encode_trigger(event, self.plans[idx as usize].as_ref());
        cache.push((class, bytes.clone()));
        bytes
    }
}

/// Applies the ledgers (stale, once_per, cooldown) to a firing and records
/// the decision: the one way every rule kind emits.
fn record(
    firing: Firing,
    clock: Clock,
    cfg: &EngineConfig,
    ledger: &mut ledger::Ledger,
    out: &mut Output,
) {
    let outcome = ledger::decide(&firing.rule, &firing, clock, cfg, ledger);
    out.decisions.push(Decision { firing, outcome });
}

/// Hash maps keyed by [`key_hash`]es: the keys are uniform hashes already,
/// so hashing them again (std's SipHash) is wasted work on every event.
/// They are still mixed with the process's secret ([`table::spread`]), so
/// that keys crafted to share a bucket cannot be found outside the process.
pub(crate) type KeyMap<K, V> = HashMap<K, V, KeyState>;

/// Builds [`KeyHasher`]s with the process's secret ([`table::process_seed`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyState([u64; 2]);

impl Default for KeyState {
    fn default() -> Self {
        KeyState(table::process_seed())
    }
}

impl std::hash::BuildHasher for KeyState {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            words: [0, 0],
            seed: self.0,
        }
    }
}

/// Takes a key that is already a uniform hash as two words (longer input
/// folds into them), then mixes them with the secret.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyHasher {
    words: [u64; 2],
    seed: [u64; 2],
}

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        table::spread(self.words, self.seed)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    /// The last two words written are kept as they are (a key's two
    /// words); any written before them fold in.
    fn write_u64(&mut self, n: u64) {
        self.words = [self.words[1], self.words[0].rotate_left(23) ^ n];
    }

    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }

    fn write_usize(&mut self, _: usize) {
        // Only a slice's length prefix: the same for every key of a map.
    }
}

/// Stable 128-bit identity of (rule, values): episodes, windows, ledgers.
fn key_hash(tag: &str, rule_id: &str, values: &[String]) -> u128 {
    key_hash_parts(tag, rule_id, values.iter().map(String::as_str))
}

/// [`key_hash`] over borrowed parts, laid out in a stack buffer (on the
/// heap only past [`KeyBuf::STACK`] bytes of key). Length prefixes keep
/// ("a","bc") apart from ("ab","c").
fn key_hash_parts<'a>(tag: &str, rule_id: &str, values: impl Iterator<Item = &'a str>) -> u128 {
    let mut buf = KeyBuf::new();
    buf.put(tag);
    buf.put(rule_id);
    values.for_each(|v| buf.put(v));
    buf.digest()
}

/// The parts of a key laid end to end, each after its length, and hashed
/// in one call: the same digest as feeding them to a streaming hasher one
/// by one (xxh3's streaming and one-shot forms agree), at a fraction of
/// the set-up. A plain array and an offset: this runs for every rule an
/// event meets, and a growable vector's checks per part cost more than
/// the hash.
struct KeyBuf {
    stack: [u8; KeyBuf::STACK],
    len: usize,
    /// Only for keys longer than the stack part: everything, in order.
    heap: Vec<u8>,
    /// Where [`KeyBuf::rewind`] goes back to: the end of a rule's
    /// [`key_prefix`] (0 elsewhere).
    base: usize,
}

impl KeyBuf {
    const STACK: usize = 192;

    fn new() -> KeyBuf {
        KeyBuf {
            stack: [0; KeyBuf::STACK],
            len: 0,
            heap: Vec::new(),
            base: 0,
        }
    }

    /// The parts laid out so far.
    fn bytes(&self) -> &[u8] {
        match self.heap.is_empty() {
            true => &self.stack[..self.len],
            false => &self.heap,
        }
    }

    fn put(&mut self, part: &str) {
        let prefix = (part.len() as u32).to_le_bytes();
        let end = self.len + prefix.len() + part.len();
        if self.heap.is_empty() && end <= KeyBuf::STACK {
            self.stack[self.len..self.len + 4].copy_from_slice(&prefix);
            self.stack[self.len + 4..end].copy_from_slice(part.as_bytes());
        } else {
            if self.heap.is_empty() {
                self.heap.extend_from_slice(&self.stack[..self.len]);
            }
            self.heap.extend_from_slice(&prefix);
            self.heap.extend_from_slice(part.as_bytes());
        }
        self.len = end;
    }

    fn digest(&self) -> u128 {
        xxhash_rust::xxh3::xxh3_128(self.bytes())
    }

    /// Back to the parts laid out before `base` was set (a rule's
    /// [`key_prefix`]).
    fn rewind(&mut self) {
        self.len = self.base;
        if self.base <= KeyBuf::STACK {
            // The prefix is in the stack part: a longer key's copy goes.
            self.heap.clear();
        } else {
            self.heap.truncate(self.base);
        }
    }
}

/// The start every key hash of `rule` shares, laid out once per rule:
/// its tag ("episode" for absence rules, "window" for threshold rules,
/// nothing for others) and the rule id (see [`key_hash`]).
/// The engine keeps it in the buffer the rule's key hashes are laid out
/// in: an event's key values go after it, and [`KeyBuf::rewind`] drops
/// them again. Each hash once started from a fresh buffer (zeroed, and the
/// prefix copied in), then from a copy of this one (a `memcpy` call of the
/// whole buffer per hash): 0.7–0.8% of the instructions went to the copy.
fn key_prefix(rule: &Rule) -> KeyBuf {
    let mut buf = KeyBuf::new();
    let tag = match rule.kind {
        RuleKind::Absence(_) => "episode",
        RuleKind::Threshold(_) => "window",
        RuleKind::Match { .. } => return buf,
    };
    buf.put(tag);
    buf.put(&rule.id);
    buf.base = buf.len;
    buf
}

/// The key hash of an event for `rule`, straight from its fields (string
/// values are borrowed, not copied); `None` when a key field is missing.
/// `buf` holds the rule's [`key_prefix`]: the same hash as [`key_hash`]
/// of its tag, id and key values. It is rewound to the prefix before the
/// values go in, so whatever the last hash left after it does not count.
fn event_key_hash(buf: &std::cell::RefCell<KeyBuf>, rule: &Rule, event: &Event) -> Option<u128> {
    use crate::rules::KeyField;
    let mut buf = buf.borrow_mut();
    buf.rewind();
    for k in &rule.key {
        match k {
            KeyField::Customer => buf.put(event.customer()),
            // Strings borrowed; numbers and booleans printed as
            // `FieldPath::get_text` prints them.
            KeyField::Path(p) => buf.put(&event.text(p)?),
        }
    }
    Some(buf.digest())
}

/// What identifies an event for notification ids: its id when the pipeline
/// provides one, else a hash of its payload (so a redelivery maps to the
/// same id). serde_json's map is ordered, so equal payloads hash equally.
fn event_identity(event: &Event) -> String {
    match event.id() {
        Some(id) => id.to_owned(),
        None => {
            // Hashed over the whole payload.
            let bytes = serde_json::to_vec(event.payload()).unwrap_or_default();
            hex::encode(&Sha256::digest(&bytes)[..8])
        }
    }
}

/// The deterministic notification id: hash(rule, key values, episode start),
/// as 32 hex characters. Length-prefixed parts keep ("a","bc") ≠ ("ab","c").
pub fn notification_id(rule_id: &str, key: &[String], episode_start: Millis) -> String {
    let mut h = Sha256::new();
    for part in std::iter::once(rule_id).chain(key.iter().map(String::as_str)) {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update(episode_start.to_be_bytes());
    // Written digit by digit into an array: `hex::encode` collects chars
    // one at a time into a growing string, 1% of a firing-heavy run.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    for (pair, byte) in text.chunks_exact_mut(2).zip(&h.finalize()[..16]) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    String::from(std::str::from_utf8(&text).expect("hex digits are ASCII"))
}

#[cfg(test)]
pub(crate) mod tests;
