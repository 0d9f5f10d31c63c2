//! `threshold` rules: fire when `count` matching events with the same key
//! fall inside a sliding event-time window of length `within`; the count
//! then starts again from zero.
//!
//! A window holds the event times since the last firing that are no older
//! than the newest one minus `within`. It is dropped once the watermark has
//! passed newest + within: no in-order event can join it any more.

use std::sync::Arc;

use smallvec::SmallVec;

use super::persist::{Dec, Enc, Journal, Row, StateTable, Write};
use super::table::{Line, Table};
use super::{event_identity, notification_id, record, Cx, Firing, Output, Partition, PartitionId};
use crate::event::{Event, Millis};
use crate::rules::{Rule, Threshold};

/// The open windows of one partition.
#[derive(Debug, Default)]
pub(crate) struct Windows {
    map: Table<Window, Line>,
    /// Watermark at which windows are next swept.
    next_sweep: Millis,
    /// Keys changed or dropped since the last flush.
    pub(crate) journal: Journal<u128>,
}

impl Windows {
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Asks for the memory where `key`'s window is looked up (a hint).
    pub(crate) fn prefetch(&self, key: u128) {
        self.map.prefetch(key);
    }

    /// Removes the window under `key`; true when there was one.
    pub(crate) fn remove(&mut self, key: u128) -> bool {
        let gone = self.map.remove(key).is_some();
        if gone {
            self.journal.note(key);
        }
        gone
    }

    /// Rows for the windows changed or dropped since the last flush.
    pub(crate) fn changes(&mut self, pid: PartitionId, out: &mut Vec<Write>) {
        let noted: Vec<u128> = self.journal.drain().collect();
        self.rows(noted, pid, out);
    }

    /// Rows for every open window (a snapshot).
    pub(crate) fn snapshot(&self, pid: PartitionId, out: &mut Vec<Write>) {
        self.rows(self.map.iter().map(|(k, _)| k).collect(), pid, out);
    }

    fn rows(&self, keys: Vec<u128>, pid: PartitionId, out: &mut Vec<Write>) {
        for key in keys {
            // until, the marker, then (time, event id hash) per event.
            let value = self.map.get(key).map(|w| {
                w.times
                    .iter()
                    .fold(
                        Enc::value().millis(w.until).millis(WITH_IDS),
                        |e, &(t, id)| e.millis(t).millis(id as Millis),
                    )
                    .done()
            });
            out.push(Write {
                table: StateTable::Windows,
                key: Enc::key(pid).u128(key).done(),
                value,
            });
        }
    }

    /// Reopens a stored window; false when the row is unreadable.
    pub(crate) fn restore(&mut self, row: &Row) -> bool {
        let Some(key) = Dec::key(&row.key).and_then(|mut k| k.u128()) else {
            return false;
        };
        let mut v = Dec(&row.value);
        let Some(until) = v.millis() else {
            return false;
        };
        let mut times = SmallVec::new();
        let mut with_ids = false;
        while !v.is_empty() {
            let Some(t) = v.millis() else {
                return false;
            };
            if t == WITH_IDS && times.is_empty() && !with_ids {
                with_ids = true;
                continue;
            }
            // Rows written before event ids were kept have times only.
            let id = match with_ids {
                true => match v.millis() {
                    Some(id) => id as u64,
                    None => return false,
                },
                false => NO_ID,
            };
            times.push((t, id));
        }
        self.map.insert(key, Window { times, until });
        true
    }
}

/// Marks a stored window whose times carry their events' id hashes (a
/// time no event has; older rows hold times only).
const WITH_IDS: Millis = Millis::MIN;
/// The id hash of an event without an id: never taken for a repeat.
const NO_ID: u64 = 0;

/// An event's id, hashed: a redelivered event (same id) is recognised.
fn id_hash(event: &Event) -> u64 {
    match &event.id {
        Some(id) => xxhash_rust::xxh3::xxh3_64(id.as_bytes()).max(1),
        None => NO_ID,
    }
}

#[derive(Debug, Default)]
pub(crate) struct Window {
    /// Sorted (event time, event id hash). Two inline: most windows hold
    /// one or two events, and a table slot (key and window) then fits
    /// one 64-byte cache line (see [`Table`]). The tables hold hundreds of
    /// thousands of windows reached at random, so their size is what the
    /// look-ups cost (with four inline, an entry took 112 bytes).
    times: SmallVec<[(Millis, u64); 2]>,
    /// Newest time + within: past this, no in-order event can join.
    until: Millis,
}

pub(super) fn on_trigger(
    cx: &Cx,
    part: &mut Partition,
    rule: &Arc<Rule>,
    t: &Threshold,
    k: u128,
    event: &Arc<Event>,
    out: &mut Output,
) {
    let windows = &mut part.windows;
    let id = id_hash(event);
    let window = windows.map.get_or_default(k);
    // A redelivered event (an id already in the window) is one failure,
    // not two: it does not count again.
    if id != NO_ID && window.times.iter().any(|&(_, seen)| seen == id) {
        return;
    }
    windows.journal.note(k);
    window.add(event.time, id, t.within);
    if window.times.len() >= t.count {
        let start = window.times[0].0;
        windows.map.remove(k);
        // The firing event's identity keeps two windows that start in the
        // same millisecond apart (the id is still stable on redelivery).
        let key = rule.key_values(event).unwrap_or_default();
        let mut id_key = key.clone();
        id_key.push(event_identity(event));
        let firing = Firing {
            notification_id: notification_id(&rule.id, &id_key, start),
            rule: Arc::clone(rule),
            event: Arc::clone(event),
            entry: None,
            key,
            episode_start: start,
            deadline: None,
            fired_at: event.time,
            partition: cx.partition,
        };
        record(firing, cx.clock, cx.cfg, &mut part.ledger, out);
    }
}

impl Window {
    /// Counts an event at `time` (id hash `id`) in a window `within` long:
    /// times older than the newest minus `within` leave, and `time` joins
    /// unless it is one of them.
    fn add(&mut self, time: Millis, id: u64, within: Millis) {
        // Times that fall out of the window go before the new one comes
        // in: a window then spills to the heap only when three times are
        // in it at once, not whenever a third arrives as the first expires.
        let newest = self.times.last().map_or(time, |&(x, _)| x.max(time));
        let cutoff = newest.saturating_sub(within);
        let old = self.times.partition_point(|&(x, _)| x < cutoff);
        self.times.drain(..old);
        if time >= cutoff {
            let at = self.times.partition_point(|&(x, _)| x <= time);
            self.times.insert(at, (time, id));
        }
        // Back inline once two or fewer are left: a spilled window costs
        // a second cache miss on every event that reaches it.
        if self.times.spilled() && self.times.len() <= self.times.inline_size() {
            self.times.shrink_to_fit();
        }
        self.until = newest.saturating_add(within);
    }
}

const _: () = assert!(std::mem::size_of::<Window>() <= 48);

/// Windows are swept rather than indexed: an index costs a B-tree remove
/// and insert on every event, a sweep one pass now and then. A window may
/// outlive its usefulness by up to `SWEEP_EVERY` of event time; it never
/// fires wrongly, since stale times are dropped when the next event comes.
const SWEEP_EVERY: Millis = 5 * 60_000;

pub(super) fn expire(windows: &mut Windows, watermark: Millis) {
    if watermark < windows.next_sweep {
        return;
    }
    let journal = &mut windows.journal;
    // The soonest end among the windows kept, found in the same pass.
    let mut soonest = Millis::MAX;
    windows.map.retain(|k, w| {
        let keep = w.until >= watermark;
        if keep {
            soonest = soonest.min(w.until);
        } else {
            journal.note(k);
        }
        keep
    });
    if windows.map.len() == 0 {
        soonest = watermark;
    }
    windows.next_sweep =
        watermark.saturating_add(soonest.saturating_sub(watermark).max(SWEEP_EVERY));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against the plain statement: after each event, the window holds
        /// every time so far that is no older than the newest minus
        /// `within`, in order; and it is inline whenever two or fewer are.
        #[test]
        fn a_window_keeps_the_times_within_reach_of_the_newest(
            within in 1i64..50,
            times in prop::collection::vec(0i64..200, 1..40),
        ) {
            let mut w = Window::default();
            let mut seen: Vec<Millis> = Vec::new();
            for (n, &t) in times.iter().enumerate() {
                w.add(t, n as u64 + 1, within);
                seen.push(t);
                let newest = *seen.iter().max().unwrap();
                let mut expected: Vec<Millis> =
                    seen.iter().copied().filter(|&x| x >= newest - within).collect();
                expected.sort();
                let kept: Vec<Millis> = w.times.iter().map(|&(x, _)| x).collect();
                prop_assert_eq!(kept, expected);
                prop_assert_eq!(w.until, newest + within);
                prop_assert!(w.times.len() > 2 || !w.times.spilled());
            }
        }
    }
}
