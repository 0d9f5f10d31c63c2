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
                w.times()
                    .fold(
                        Enc::value().millis(w.until).millis(WITH_IDS),
                        |e, (t, id)| e.millis(t).millis(id as Millis),
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
        let mut times = Vec::new();
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
        // Written sorted; sorted again so that a damaged row cannot
        // break the window's order.
        times.sort_unstable_by_key(|&(t, _)| t);
        self.map.insert(key, Window::from_times(times, until));
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
    match event.id() {
        Some(id) => xxhash_rust::xxh3::xxh3_64(id.as_bytes()).max(1),
        None => NO_ID,
    }
}

/// The times a window holds inline: up to three fit its 64-byte table
/// slot with the key and `until`.
const INLINE: usize = 3;

/// The times of one window since its last firing, sorted by event time,
/// each with its event's id hash (for redeliveries).
#[derive(Debug, Default)]
pub(crate) struct Window {
    /// Newest time + within: past this, no in-order event can join.
    until: Millis,
    times: Times,
}

/// A window's times. Most windows hold one to three events, so they are
/// kept inline, each time as its distance back from `until` in 32 bits
/// (a time the window keeps is at most `2 × within` back: no older than
/// the newest minus `within`). The tables hold hundreds of thousands of
/// windows reached at random, so a second cache line, or an allocation,
/// per window is what the look-ups cost. A window of more times, or one
/// whose times do not fit 32 bits (a `within` over 24 days), is kept on
/// the heap with full times, and comes back inline once it can.
#[derive(Debug)]
enum Times {
    Inline {
        len: u8,
        back: [u32; INLINE],
        ids: [u64; INLINE],
    },
    Heap(Vec<(Millis, u64)>),
}

impl Default for Times {
    fn default() -> Self {
        Times::Inline {
            len: 0,
            back: [0; INLINE],
            ids: [0; INLINE],
        }
    }
}

impl Window {
    /// A window of `times` (sorted), in whichever form they fit.
    fn from_times(times: Vec<(Millis, u64)>, until: Millis) -> Window {
        let times = Times::inline(&times, until).unwrap_or(Times::Heap(times));
        Window { until, times }
    }

    fn len(&self) -> usize {
        match &self.times {
            Times::Inline { len, .. } => usize::from(*len),
            Times::Heap(v) => v.len(),
        }
    }

    /// (event time, id hash), oldest first.
    fn times(&self) -> impl Iterator<Item = (Millis, u64)> + '_ {
        let (inline, heap) = match &self.times {
            Times::Inline { len, back, ids } => {
                let n = usize::from(*len);
                (Some((&back[..n], &ids[..n])), None)
            }
            Times::Heap(v) => (None, Some(v.iter().copied())),
        };
        let until = self.until;
        inline
            .into_iter()
            .flat_map(move |(back, ids)| {
                back.iter()
                    .zip(ids)
                    .map(move |(&b, &id)| (until - Millis::from(b), id))
            })
            .chain(heap.into_iter().flatten())
    }

    #[cfg(test)]
    fn is_spilled(&self) -> bool {
        matches!(self.times, Times::Heap(_))
    }
}

impl Times {
    /// The inline form of `times` (sorted) under `until`, when they fit.
    fn inline(times: &[(Millis, u64)], until: Millis) -> Option<Times> {
        if times.len() > INLINE {
            return None;
        }
        let mut back = [0; INLINE];
        let mut ids = [0; INLINE];
        for (i, &(t, id)) in times.iter().enumerate() {
            back[i] = u32::try_from(until.checked_sub(t)?).ok()?;
            ids[i] = id;
        }
        Some(Times::Inline {
            len: times.len() as u8,
            back,
            ids,
        })
    }
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
    if id != NO_ID && window.holds_id(id) {
        return;
    }
    windows.journal.note(k);
    window.add(event.time, id, t.within);
    if window.len() >= t.count {
        let start = window.oldest().unwrap_or(event.time);
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
    /// The newest time held, if any.
    fn newest(&self) -> Option<Millis> {
        match &self.times {
            Times::Inline { len: 0, .. } => None,
            Times::Inline { len, back, .. } => {
                Some(self.until - Millis::from(back[usize::from(*len) - 1]))
            }
            Times::Heap(v) => v.last().map(|&(t, _)| t),
        }
    }

    /// Whether an event with id hash `id` is held, whatever its time: its
    /// ids alone are read, without working out the times beside them.
    fn holds_id(&self, id: u64) -> bool {
        match &self.times {
            Times::Inline { len, ids, .. } => ids[..usize::from(*len)].contains(&id),
            Times::Heap(v) => v.iter().any(|&(_, seen)| seen == id),
        }
    }

    /// The oldest time held, if any.
    fn oldest(&self) -> Option<Millis> {
        self.times().next().map(|(t, _)| t)
    }

    /// Counts an event at `time` (id hash `id`) in a window `within` long:
    /// times older than the newest minus `within` leave, and `time` joins
    /// unless it is one of them.
    fn add(&mut self, time: Millis, id: u64, within: Millis) {
        // Times that fall out of the window go before the new one comes
        // in: a window then leaves its inline form only when four times
        // are in it at once, not whenever a fourth arrives as the first
        // expires.
        let newest = self.newest().map_or(time, |x| x.max(time));
        let cutoff = newest.saturating_sub(within);
        let until = newest.saturating_add(within);
        let times = match &mut self.times {
            Times::Heap(v) => {
                let old = v.partition_point(|&(x, _)| x < cutoff);
                v.drain(..old);
                if time >= cutoff {
                    let at = v.partition_point(|&(x, _)| x <= time);
                    v.insert(at, (time, id));
                }
                // Back inline once it fits: a spilled window costs a
                // second cache miss on every event that reaches it.
                Times::inline(v, until)
            }
            Times::Inline { len, back, ids } => {
                // Decoded here rather than through `Window::times`: its
                // chained iterator cost 0.22% of the sustained instructions
                // (1,297.1M → 1,300.0M) on this, the hottest path.
                let mut kept: SmallVec<[(Millis, u64); INLINE + 1]> = back[..usize::from(*len)]
                    .iter()
                    .zip(ids.iter())
                    .map(|(&b, &id)| (self.until - Millis::from(b), id))
                    .filter(|&(x, _)| x >= cutoff)
                    .collect();
                if time >= cutoff {
                    let at = kept.partition_point(|&(x, _)| x <= time);
                    kept.insert(at, (time, id));
                }
                Some(Times::inline(&kept, until).unwrap_or_else(|| Times::Heap(kept.into_vec())))
            }
        };
        if let Some(times) = times {
            self.times = times;
        }
        self.until = until;
    }
}

// With its 16-byte key, one 64-byte table slot (see [`Table`]).
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
        /// `within`, in order, each with its id; it is inline whenever three
        /// or fewer are and they fit 32 bits back from `until`; and its
        /// stored row reads back as the same window. `within` reaches past
        /// 24 days, where the times no longer fit inline.
        #[test]
        fn a_window_keeps_the_times_within_reach_of_the_newest(
            (within, times) in prop_oneof![
                (1i64..50, prop::collection::vec(0i64..200, 1..40)),
                (
                    (1i64 << 31) - 50..(1i64 << 31) + 50,
                    prop::collection::vec(0i64..(1i64 << 33), 1..40),
                ),
            ],
            base in prop_oneof![Just(0i64), Just(1_780_000_000_000i64), Just(-5_000_000_000i64)],
        ) {
            let mut w = Window::default();
            let mut seen: Vec<(Millis, u64)> = Vec::new();
            for (n, &t) in times.iter().enumerate() {
                let (t, id) = (base + t, n as u64 + 1);
                w.add(t, id, within);
                seen.push((t, id));
                let newest = seen.iter().map(|&(x, _)| x).max().unwrap();
                let mut expected: Vec<(Millis, u64)> =
                    seen.iter().copied().filter(|&(x, _)| x >= newest - within).collect();
                expected.sort_by_key(|&(x, _)| x);
                let kept: Vec<(Millis, u64)> = w.times().collect();
                prop_assert_eq!(kept.iter().map(|&(x, _)| x).collect::<Vec<_>>(),
                    expected.iter().map(|&(x, _)| x).collect::<Vec<_>>());
                // Equal times keep their events, in either order.
                let mut sorted = kept.clone();
                sorted.sort();
                expected.sort();
                prop_assert_eq!(&sorted, &expected);
                prop_assert_eq!(w.until, newest + within);
                prop_assert_eq!(w.len(), kept.len());
                prop_assert_eq!(w.oldest(), kept.first().map(|&(x, _)| x));
                for &(_, id) in &seen {
                    prop_assert_eq!(w.holds_id(id), kept.iter().any(|&(_, k)| k == id));
                }
                let fits = kept.len() <= INLINE
                    && kept.iter().all(|&(x, _)| w.until - x <= Millis::from(u32::MAX));
                prop_assert_eq!(w.is_spilled(), !fits);

                let mut out = Vec::new();
                let mut windows = Windows::default();
                windows.map.insert(7, Window::from_times(kept.clone(), w.until));
                windows.snapshot(PartitionId::default(), &mut out);
                let mut back = Windows::default();
                let row = Row {
                    table: StateTable::Windows,
                    key: out[0].key.clone(),
                    value: out[0].value.clone().unwrap(),
                };
                prop_assert!(back.restore(&row));
                let again = back.map.get(7).unwrap();
                prop_assert_eq!(again.times().collect::<Vec<_>>(), kept);
                prop_assert_eq!(again.until, w.until);
                prop_assert_eq!(again.is_spilled(), w.is_spilled());
            }
        }
    }

    /// Rows written before ids were kept (times only) read back; rows
    /// with ids keep them whole.
    #[test]
    fn older_window_rows_read_back() {
        let key = Enc::key(PartitionId::default()).u128(9).done();
        let wide = u64::MAX - 6;
        let row = Row {
            table: StateTable::Windows,
            key: key.clone(),
            value: Enc::value()
                .millis(700)
                .millis(WITH_IDS)
                .millis(100)
                .millis(wide as Millis)
                .done(),
        };
        let mut w = Windows::default();
        assert!(w.restore(&row));
        let got: Vec<_> = w.map.get(9).unwrap().times().collect();
        assert_eq!(got, vec![(100, wide)]);
        let row = Row {
            table: StateTable::Windows,
            key,
            value: Enc::value().millis(700).millis(100).millis(200).done(),
        };
        assert!(w.restore(&row));
        let got: Vec<_> = w.map.get(9).unwrap().times().collect();
        assert_eq!(got, vec![(100, NO_ID), (200, NO_ID)]);
    }
}
