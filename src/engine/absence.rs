//! `absence` rules: a trigger opens an episode for (rule, key values) with
//! a deadline; a matching `until` or `cancel_on` event with the same key and
//! an event time in [trigger time, deadline] closes it silently; once the
//! engine watermark passes the deadline, the episode fires once.
//!
//! Several episodes can share a key: a trigger after the previous deadline
//! opens a new episode while the old one still waits for the watermark
//! (and may still be closed by an until event that is late but in time).

use std::sync::Arc;

use super::persist::{Dec, Enc, Journal, Row, StateTable, Write};
use super::project::decode_trigger;
use super::shared::SharedBytes;
use super::table::Table;
use super::timers::Deadlines;
use std::collections::HashMap;

use super::{
    event_key_hash,
    matcher::{condition_holds, trigger_holds},
    notification_id, record, Clock, Cx, EngineConfig, Firing, KeyMap, Outcome, Output, Partition,
    PartitionId, RuleError,
};
use crate::event::{Event, Millis};
use crate::rules::expr::to_cel;
use crate::rules::{Absence, DeadlineSpec, Mode, OnRepeat, RuleKind, RuleSet};

const NIL: u32 = u32::MAX;
type Key = [u64; 2];

fn key_of(hash: u128) -> Key {
    [hash as u64, (hash >> 64) as u64]
}

fn hash_of(key: &Key) -> u128 {
    (u128::from(key[1]) << 64) | u128::from(key[0])
}

/// Slots per chunk of the [`Slab`]: 4,096 slots of 48 bytes, 192 KiB.
const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

/// The episodes' slots, in chunks of [`CHUNK`] that never move: the slab
/// grows by a chunk, not by copying itself into an allocation half as
/// large again, so no slot is copied and no page is filled twice. (A
/// growing `Vec` took most of the 1.5% of a fresh engine's samples in
/// the benchmark that went to growing allocations under `insert`, the
/// kernel zeroing each new allocation's pages and the old slots copied
/// into them; 0.4% with the chunks. Finding a slot's chunk costs 0.2%
/// more instructions.) The first chunk alone grows as a `Vec`
/// does, by half, so a partition with a few episodes keeps a few slots.
#[derive(Debug, Default)]
struct Slab {
    /// Every chunk but the last is full.
    chunks: Vec<Vec<Slot>>,
}

impl Slab {
    fn len(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |last| (self.chunks.len() - 1) * CHUNK + last.len())
    }

    fn push(&mut self, slot: Slot) {
        let last = match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last,
            full => {
                // Later chunks come whole: their pages are touched only as
                // slots are pushed, so the rest is not yet resident.
                let first = full.is_none();
                self.chunks
                    .push(Vec::with_capacity(if first { 64 } else { CHUNK }));
                self.chunks.last_mut().expect("just pushed")
            }
        };
        if last.len() == last.capacity() {
            // Half as much again, where `Vec` would double: the first
            // chunk's spare room peaks at a third of it.
            let more = (last.len() / 2).max(64).min(CHUNK - last.len());
            last.reserve_exact(more);
        }
        last.push(slot);
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }
}

impl std::ops::Index<usize> for Slab {
    type Output = Slot;

    #[inline]
    fn index(&self, at: usize) -> &Slot {
        &self.chunks[at >> CHUNK_BITS][at & (CHUNK - 1)]
    }
}

impl std::ops::IndexMut<usize> for Slab {
    #[inline]
    fn index_mut(&mut self, at: usize) -> &mut Slot {
        &mut self.chunks[at >> CHUNK_BITS][at & (CHUNK - 1)]
    }
}

/// The open episodes of one partition, laid out for millions: a slab of
/// small slots, an index from key to the newest slot of that key (older
/// ones chain through `next`), and one deadline calendar ([`Deadlines`]).
#[derive(Debug, Default)]
pub(crate) struct Episodes {
    index: Table<u32>,
    slots: Slab,
    free: Vec<u32>,
    /// (deadline, slot), earliest first. Closing an episode leaves its
    /// entry behind, to be dropped when it comes up: an entry stands only
    /// while its slot is open with that deadline. Buckets of event time
    /// (see [`Deadlines`]): a B-tree paid a node walk for each new
    /// deadline, a heap a sift through cold memory for each firing.
    timers: Deadlines,
    open: usize,
    /// Open episodes per rule index: a closer of a rule with none open
    /// here needs no lookup.
    per_rule: Vec<u32>,
    /// Episodes inserted or removed since the last flush: (key, start, deadline).
    pub(crate) journal: Journal<(Key, Millis, Millis)>,
}

// The size the chunk's notes (and the memory figures) count on, on the
// 64-bit targets they were measured on.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Slot>() == 48);

#[derive(Debug)]
struct Slot {
    key: Key,
    start: Millis,
    deadline: Millis,
    rule: u32,
    next: u32,
    /// The trigger, reduced to the fields the rule can use (see `project`).
    trigger: SharedBytes,
}

/// Fired episodes whose notification is not yet delivered, for the
/// send-time guard: an `until`/`cancel_on` event for one of them reports
/// its notification id as resolved. Few at a time (the outbox's backlog);
/// the caller settles each one when its notification's fate is known.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    by_key: KeyMap<Key, Vec<Fired>>,
    keys: HashMap<String, Key>,
    /// Notification ids guarded or settled since the last flush.
    pub(crate) journal: Journal<String>,
}

#[derive(Debug)]
struct Fired {
    id: String,
    start: Millis,
    rule: u32,
    trigger: SharedBytes,
}

impl Guard {
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn insert(&mut self, key: Key, fired: Fired) {
        self.journal.note(fired.id.clone());
        self.keys.insert(fired.id.clone(), key);
        self.by_key.entry(key).or_default().push(fired);
    }

    /// Notification ids of fired episodes whose trigger is `customer`'s.
    pub(crate) fn ids_of(&self, customer: &str) -> Vec<String> {
        self.by_key
            .values()
            .flatten()
            .filter(|f| trigger_customer(&f.trigger).as_deref() == Some(customer))
            .map(|f| f.id.clone())
            .collect()
    }

    /// Forgets `id`; true when it was guarded here.
    pub(crate) fn settle(&mut self, id: &str) -> bool {
        let Some(key) = self.keys.remove(id) else {
            return false;
        };
        self.journal.note(id.to_string());
        if let Some(list) = self.by_key.get_mut(&key) {
            list.retain(|f| f.id != id);
            if list.is_empty() {
                self.by_key.remove(&key);
            }
        }
        true
    }
}

/// An episode taken out of the slab.
struct Episode {
    key: Key,
    start: Millis,
    deadline: Millis,
    rule: u32,
    trigger: SharedBytes,
}

/// The customer a stored trigger belongs to.
fn trigger_customer(trigger: &[u8]) -> Option<String> {
    decode_trigger(trigger, "", 0).map(|e| e.customer().to_owned())
}

impl Episodes {
    pub(crate) fn len(&self) -> usize {
        self.open
    }

    /// Asks for the memory where the episodes under `hash` are found (a hint).
    pub(crate) fn prefetch(&self, hash: u128) {
        self.index.prefetch(hash);
    }

    /// How many episodes of rule `idx` are open.
    fn open_of(&self, idx: u32) -> u32 {
        self.per_rule.get(idx as usize).copied().unwrap_or(0)
    }

    /// The open slots, in slab order.
    fn open_slots(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.slots.len() as u32).filter(|&at| self.slots[at as usize].rule != NIL)
    }

    /// Removes every open episode whose trigger is `customer`'s (GDPR
    /// erasure). Returns how many.
    pub(crate) fn forget(&mut self, customer: &str) -> usize {
        let theirs: Vec<u32> = self
            .open_slots()
            .filter(|&at| {
                trigger_customer(&self.slots[at as usize].trigger).as_deref() == Some(customer)
            })
            .collect();
        for &at in &theirs {
            self.remove(at);
        }
        theirs.len()
    }

    /// Slots of `key`, newest first.
    fn chain(&self, key: &Key) -> smallvec::SmallVec<[u32; 4]> {
        self.walk(key).collect()
    }

    /// [`Episodes::chain`] without collecting it.
    fn walk(&self, key: &Key) -> impl Iterator<Item = u32> + '_ {
        let mut at = self.index.get(hash_of(key)).copied().unwrap_or(NIL);
        std::iter::from_fn(move || {
            (at != NIL).then(|| {
                let this = at;
                at = self.slots[at as usize].next;
                this
            })
        })
    }

    /// Opens an episode.
    fn insert(
        &mut self,
        key: Key,
        start: Millis,
        deadline: Millis,
        rule: u32,
        trigger: SharedBytes,
    ) {
        self.journal.note((key, start, deadline));
        let hash = hash_of(&key);
        let next = self.index.get(hash).copied().unwrap_or(NIL);
        let slot = Slot {
            key,
            start,
            deadline,
            rule,
            next,
            trigger,
        };
        let at = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(hash, at);
        self.timers.push(deadline, at);
        self.open += 1;
        if self.per_rule.len() <= rule as usize {
            self.per_rule.resize(rule as usize + 1, 0);
        }
        self.per_rule[rule as usize] += 1;
        // Entries of closed episodes wait for their deadline: when they
        // outnumber the open ones (far deadlines, closed early), rebuild.
        if self.timers.len() > 2 * self.open + 1024 {
            self.timers = self
                .open_slots()
                .map(|at| (self.slots[at as usize].deadline, at))
                .collect();
        }
    }

    fn remove(&mut self, at: u32) -> Episode {
        let (key, next, deadline) = {
            let s = &self.slots[at as usize];
            (s.key, s.next, s.deadline)
        };
        let hash = hash_of(&key);
        match self.index.get(hash).copied() {
            Some(head) if head == at => {
                if next == NIL {
                    self.index.remove(hash);
                } else {
                    self.index.insert(hash, next);
                }
            }
            Some(head) => {
                let mut prev = head;
                while self.slots[prev as usize].next != at {
                    prev = self.slots[prev as usize].next;
                }
                self.slots[prev as usize].next = next;
            }
            None => {}
        }
        self.free.push(at);
        self.open -= 1;
        let s = &mut self.slots[at as usize];
        self.per_rule[s.rule as usize] -= 1;
        self.journal.note((key, s.start, deadline));
        s.next = NIL;
        Episode {
            key: s.key,
            start: s.start,
            deadline: s.deadline,
            // A free slot has no rule.
            rule: std::mem::replace(&mut s.rule, NIL),
            trigger: std::mem::take(&mut s.trigger),
        }
    }

    /// The slot whose deadline is earliest, if the watermark has passed it.
    /// Entries of closed episodes are dropped on the way.
    fn due(&mut self, watermark: Millis) -> Option<u32> {
        while let Some((deadline, at)) = self.timers.peek() {
            let s = &self.slots[at as usize];
            if s.rule == NIL || s.deadline != deadline {
                self.timers.pop();
                continue;
            }
            return (deadline < watermark).then_some(at);
        }
        None
    }
}

fn deadline_of(a: &Absence, event: &Event) -> Option<Millis> {
    match &a.deadline {
        DeadlineSpec::Within(w) => Some(event.time.saturating_add(*w)),
        DeadlineSpec::Field { path, grace } => event
            .get(path)
            .and_then(|v| v.time())
            .map(|t| t.saturating_add(*grace)),
    }
}

pub(super) fn on_trigger(
    cx: &Cx,
    part: &mut Partition,
    idx: u32,
    a: &Absence,
    key_hash: u128,
    event: &Arc<Event>,
    out: &mut Output,
) {
    let rule = cx.rules.rule(idx);
    let Some(deadline) = deadline_of(a, event) else {
        // Counted once, with a key field that is missing: the trigger
        // lacks what the episode needs (not a condition that failed).
        out.missing_key.push(rule.id.clone());
        return;
    };
    let k = key_of(key_hash);
    let episodes = &mut part.episodes;
    // The episode still running at this trigger's time, if any: the one
    // that started first, should out-of-order input have left several.
    // (Chosen by start, not by arrival, so a restored engine, which knows
    // no arrival order, chooses the same.)
    let running = episodes
        .walk(&k)
        .filter(|&at| episodes.slots[at as usize].deadline >= event.time)
        .min_by_key(|&at| {
            let s = &episodes.slots[at as usize];
            (s.start, s.deadline)
        });
    if let Some(at) = running {
        // A trigger older than the running episode's own is superseded.
        if a.on_repeat == OnRepeat::Ignore || episodes.slots[at as usize].start > event.time {
            return;
        }
        episodes.remove(at);
    }
    // An episode is (rule, key, start), as its notification id says: one
    // that is open already is not opened twice.
    if episodes
        .walk(&k)
        .any(|at| episodes.slots[at as usize].start == event.time)
    {
        return;
    }
    episodes.insert(k, event.time, deadline, idx, cx.encoded_trigger(idx, event));
}

/// What a closing event needs of rule `idx` before its episodes are looked
/// up: decided on the event alone, so that the look-ups of all the rules an
/// event meets can be prefetched together (see [`Engine::on_event`]).
///
/// [`Engine::on_event`]: super::Engine::on_event
#[derive(Clone, Copy)]
pub(super) struct CloserProbe {
    idx: u32,
    key: Key,
    /// The conditions that read the event alone hold: every episode in
    /// range closes, without evaluating them again.
    closes_every_episode: bool,
}

/// The closing conditions of `rule` for events of type `kind`, in the
/// order [`super::shared_condition_slots`] numbers them.
pub(super) fn closing_conditions<'r>(
    a: &'r Absence,
    kind: &'r str,
) -> impl Iterator<Item = &'r crate::rules::Condition> + Clone {
    a.until
        .iter()
        .chain(&a.cancel_on)
        .filter(move |c| crate::event::same_text(&c.event, kind))
}

/// Decides whether `event` can close anything of rule `idx` here, and if
/// so asks for the memory its episodes are found in.
pub(super) fn closer_probe(
    cx: &Cx,
    part: &Partition,
    idx: u32,
    slots: &[u8],
    event: &Event,
) -> Option<CloserProbe> {
    let rule = cx.rules.rule(idx);
    let RuleKind::Absence(a) = &rule.kind else {
        return None;
    };
    // Nothing of this rule open or awaiting delivery here: nothing to close.
    if part.episodes.open_of(idx) == 0 && part.guard.is_empty() {
        return None;
    }
    // Conditions on the event alone decide alike for every episode: decide
    // once, before looking any up. Most closing-type events (every page
    // view, say) close nothing. Should a condition fail to evaluate, each
    // episode evaluates it again in `on_closer`, and reports the error.
    let mut closes_every_episode = false;
    if !cx.closer_reads_trigger[idx as usize] {
        let mut failed = false;
        let holds = closing_conditions(a, event.kind())
            .enumerate()
            .any(|(i, c)| {
                let slot = slots.get(i).copied().unwrap_or(super::NOT_SHARED);
                cx.shared.holds(slot, || {
                    match condition_holds(event, || cx.scope.get(), c) {
                        Ok(holds) => (holds, true),
                        Err(_) => {
                            failed = true;
                            (false, false)
                        }
                    }
                })
            });
        if !failed {
            if !holds {
                return None;
            }
            closes_every_episode = true;
        }
    }
    // Most closers concern no open episode: hash without copying the key.
    let hash = event_key_hash(&cx.key_bufs[idx as usize], rule, event)?;
    part.episodes.prefetch(hash);
    Some(CloserProbe {
        idx,
        key: key_of(hash),
        closes_every_episode,
    })
}

/// Closes the episodes of a probed rule that `event` ends, and resolves
/// the fired ones awaiting delivery that it would have ended.
pub(super) fn on_closer(
    cx: &Cx,
    part: &mut Partition,
    probe: CloserProbe,
    event: &Arc<Event>,
    out: &mut Output,
) {
    let CloserProbe {
        idx,
        key: k,
        closes_every_episode,
    } = probe;
    let rule = cx.rules.rule(idx);
    let RuleKind::Absence(a) = &rule.kind else {
        return;
    };
    let chain = part.episodes.chain(&k);
    let guarded = part.guard.by_key.contains_key(&k);
    if chain.is_empty() && !guarded {
        return;
    }
    let conditions = closing_conditions(a, event.kind());
    // `trigger` is only decoded for conditions that name it.
    let needs_trigger = cx.closer_reads_trigger[idx as usize];
    // Conditions that name `trigger` run in CEL with the stored trigger
    // decoded; the others may take the fast path. (The trigger is not
    // touched otherwise: its bytes are far from the slot, and cold.)
    let closes = |trigger: &SharedBytes, start: Millis, out: &mut Output| {
        if closes_every_episode {
            return true;
        }
        let inner;
        let scope: &cel::Context<'_, 'static> = if needs_trigger {
            let mut s = cx.scope.get().new_inner_scope();
            if let Some(t) = decode_trigger(trigger, &rule.trigger.event, start) {
                s.add_variable_from_value("trigger", to_cel(t.payload()));
            }
            inner = s;
            &inner
        } else {
            cx.scope.get()
        };
        conditions
            .clone()
            .any(|c| trigger_holds(rule, event, || scope, c, out))
    };
    for at in chain {
        let slot = &part.episodes.slots[at as usize];
        if slot.start > event.time || event.time > slot.deadline {
            continue;
        }
        if closes(&slot.trigger, slot.start, out) {
            part.episodes.remove(at);
        }
    }
    if guarded {
        // Fired, not yet delivered: a closer at or after the episode's
        // start resolves it, however late (SPEC 2, absence point 6).
        let mut resolved = Vec::new();
        for f in &part.guard.by_key[&k] {
            if f.rule == idx && f.start <= event.time && closes(&f.trigger, f.start, out) {
                resolved.push(f.id.clone());
            }
        }
        for id in resolved {
            part.guard.settle(&id);
            out.resolved.push(id);
        }
    }
}

/// Fires every episode whose deadline the watermark has passed.
pub(super) fn fire_due(
    rules: &RuleSet,
    cfg: &EngineConfig,
    part: &mut Partition,
    pid: PartitionId,
    watermark: Millis,
    clock: Clock,
    out: &mut Output,
) {
    while let Some(at) = part.episodes.due(watermark) {
        let ep = part.episodes.remove(at);
        let rule = rules.rule(ep.rule);
        let Some(trigger) = decode_trigger(&ep.trigger, &rule.trigger.event, ep.start) else {
            out.errors.push(RuleError {
                rule_id: rule.id.clone(),
                message: "a stored trigger could not be decoded; the episode is dropped".into(),
            });
            continue;
        };
        let key = rule.key_values(&trigger).unwrap_or_default();
        let guard = (cfg.send_time_guard && rule.mode == Mode::Live).then(|| Fired {
            id: String::new(),
            start: ep.start,
            rule: ep.rule,
            trigger: ep.trigger,
        });
        let firing = Firing {
            notification_id: notification_id(&rule.id, &key, ep.start),
            rule: Arc::clone(rule),
            event: Arc::new(trigger),
            entry: None,
            key,
            episode_start: ep.start,
            deadline: Some(ep.deadline),
            fired_at: ep.deadline,
            partition: pid,
        };
        let id = firing.notification_id.clone();
        record(firing, clock, cfg, &mut part.ledger, out);
        let fired = out
            .decisions
            .last()
            .is_some_and(|d| d.outcome == Outcome::Fire);
        if let (true, Some(mut g)) = (fired, guard) {
            g.id = id;
            part.guard.insert(ep.key, g);
        }
    }
}

// Durable state: rows for the store (see `persist`).

impl Episodes {
    /// The slot holding exactly this episode, if it is open.
    fn find(&self, key: &Key, start: Millis, deadline: Millis) -> Option<u32> {
        self.walk(key).find(|&at| {
            let s = &self.slots[at as usize];
            s.start == start && s.deadline == deadline
        })
    }

    /// Rows for the episodes opened or closed since the last flush.
    pub(crate) fn changes(&mut self, pid: PartitionId, rules: &RuleSet, out: &mut Vec<Write>) {
        let noted: Vec<_> = self.journal.drain().collect();
        self.rows(noted, pid, rules, out);
    }

    /// Rows for every open episode (a snapshot).
    pub(crate) fn snapshot(&self, pid: PartitionId, rules: &RuleSet, out: &mut Vec<Write>) {
        let mut open: Vec<u32> = self.open_slots().collect();
        open.sort_by_key(|&at| (self.slots[at as usize].deadline, at));
        let all: Vec<_> = open
            .into_iter()
            .map(|at| {
                let s = &self.slots[at as usize];
                (s.key, s.start, s.deadline)
            })
            .collect();
        self.rows(all, pid, rules, out);
    }

    fn rows(
        &self,
        ids: Vec<(Key, Millis, Millis)>,
        pid: PartitionId,
        rules: &RuleSet,
        out: &mut Vec<Write>,
    ) {
        for (key, start, deadline) in ids {
            let value = self.find(&key, start, deadline).map(|at| {
                let s = &self.slots[at as usize];
                Enc::value()
                    .str(&rules.rule(s.rule).id)
                    .bytes(&s.trigger)
                    .done()
            });
            out.push(Write {
                table: StateTable::Episodes,
                key: Enc::key(pid)
                    .u128(hash_of(&key))
                    .millis(start)
                    .millis(deadline)
                    .done(),
                value,
            });
        }
    }

    /// Reopens a stored episode; false when the row is unreadable or its
    /// rule is no longer an enabled absence rule.
    pub(crate) fn restore(
        &mut self,
        row: &Row,
        rule_index: &dyn Fn(&str) -> Option<u32>,
        rules: &RuleSet,
    ) -> bool {
        let Some(mut k) = Dec::key(&row.key) else {
            return false;
        };
        let (Some(hash), Some(start), Some(deadline)) = (k.u128(), k.millis(), k.millis()) else {
            return false;
        };
        let mut v = Dec(&row.value);
        let Some(idx) = v.str().and_then(rule_index) else {
            return false;
        };
        let rule = rules.rule(idx);
        if !rule.enabled || !matches!(rule.kind, RuleKind::Absence(_)) {
            return false;
        }
        self.insert(
            key_of(hash),
            start,
            deadline,
            idx,
            SharedBytes::new(v.rest()),
        );
        true
    }
}

impl Guard {
    /// Rows for the fired episodes guarded or settled since the last flush.
    pub(crate) fn changes(&mut self, pid: PartitionId, rules: &RuleSet, out: &mut Vec<Write>) {
        let noted: Vec<String> = self.journal.drain().collect();
        self.rows(noted, pid, rules, out);
    }

    /// Rows for every guarded episode (a snapshot).
    pub(crate) fn snapshot(&self, pid: PartitionId, rules: &RuleSet, out: &mut Vec<Write>) {
        self.rows(self.keys.keys().cloned().collect(), pid, rules, out);
    }

    fn rows(&self, ids: Vec<String>, pid: PartitionId, rules: &RuleSet, out: &mut Vec<Write>) {
        for id in ids {
            let value = self.keys.get(&id).and_then(|key| {
                let f = self.by_key.get(key)?.iter().find(|f| f.id == id)?;
                Some(
                    Enc::value()
                        .u128(hash_of(key))
                        .millis(f.start)
                        .str(&rules.rule(f.rule).id)
                        .bytes(&f.trigger)
                        .done(),
                )
            });
            out.push(Write {
                table: StateTable::Fired,
                key: Enc::key(pid).bytes(id.as_bytes()).done(),
                value,
            });
        }
    }

    /// Guards a stored fired episode again; false when the row is
    /// unreadable, its rule is gone, or `keep` says its notification is
    /// settled.
    pub(crate) fn restore(
        &mut self,
        row: &Row,
        rule_index: &dyn Fn(&str) -> Option<u32>,
        keep: &dyn Fn(&str) -> bool,
    ) -> bool {
        let Some(id) = super::persist::fired_id(row) else {
            return false;
        };
        if !keep(id) {
            return false;
        }
        let mut v = Dec(&row.value);
        let (Some(hash), Some(start)) = (v.u128(), v.millis()) else {
            return false;
        };
        let Some(rule) = v.str().and_then(rule_index) else {
            return false;
        };
        self.insert(
            key_of(hash),
            Fired {
                id: id.to_string(),
                start,
                rule,
                trigger: SharedBytes::new(v.rest()),
            },
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deadlines come out in (deadline, slot) order whatever was closed,
    /// with slots reused and the heap rebuilt along the way, as a sorted
    /// set of the open ones would give them.
    #[test]
    fn the_deadline_heap_yields_exactly_the_open_episodes_in_order() {
        let mut eps = Episodes::default();
        let mut model = std::collections::BTreeSet::new();
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for i in 0..20_000u64 {
            let r = next();
            if r % 5 < 2 && !model.is_empty() {
                // Close an open episode (the heap keeps its entry).
                let &(deadline, at) = model.iter().nth((r >> 8) as usize % model.len()).unwrap();
                eps.remove(at);
                model.remove(&(deadline, at));
            } else {
                // Deadlines mostly rising, some far ahead, some repeated.
                let deadline = match r % 7 {
                    0 => (i as Millis) + 1_000_000,
                    1 => 5,
                    _ => i as Millis,
                };
                let key = key_of(u128::from(r));
                eps.insert(key, 0, deadline, 0, SharedBytes::new(&[1]));
                let at = eps.index.get(hash_of(&key)).copied().unwrap();
                model.insert((deadline, at));
            }
            assert_eq!(eps.len(), model.len());
        }
        assert!(
            eps.timers.len() <= 2 * eps.open + 1024,
            "rebuilt when stale entries pile up"
        );
        let mut fired = Vec::new();
        while let Some(at) = eps.due(Millis::MAX) {
            fired.push((eps.slots[at as usize].deadline, at));
            eps.remove(at);
        }
        assert_eq!(fired, model.into_iter().collect::<Vec<_>>());
        assert_eq!(eps.len(), 0);
    }

    /// The slab's first chunk grows by half (64 slots while it is small),
    /// not by doubling, and the slab then grows a chunk at a time: a
    /// partition with few episodes holds few slots, and a large one at
    /// most a chunk's spare room. Every slot stays where it was put.
    #[test]
    fn the_slab_grows_by_half_then_by_chunks_and_keeps_every_slot() {
        let mut eps = Episodes::default();
        let mut grew = 0;
        for i in 1..=200_000u64 {
            let before = eps.slots.capacity();
            eps.insert(
                key_of(u128::from(i)),
                0,
                i as Millis,
                0,
                SharedBytes::new(&[1]),
            );
            let after = eps.slots.capacity();
            if after != before {
                grew += 1;
                let step = if before < CHUNK {
                    (before / 2).max(64)
                } else {
                    CHUNK
                };
                assert!(
                    after <= before + step,
                    "grew from {before} to {after} slots"
                );
            }
            assert!(eps.slots.capacity() < eps.slots.len() + CHUNK);
        }
        assert!(grew > 50, "grew {grew} times");
        for i in 0..200_000usize {
            assert_eq!(eps.slots[i].deadline, i as Millis + 1);
        }
    }
}
