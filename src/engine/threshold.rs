//! `threshold` rules: fire when `count` matching events with the same key
//! fall inside a sliding event-time window of length `within`; the count
//! then starts again from zero.
//!
//! A window holds the event times since the last firing that are no older
//! than the newest one minus `within`. It is dropped once the watermark has
//! passed newest + within: no in-order event can join it any more.

use std::sync::Arc;

use smallvec::SmallVec;

use super::{event_identity, key_hash, notification_id, record, Cx, Firing, Output, Partition};
use crate::event::{Event, Millis};
use crate::rules::{Rule, Threshold};

#[derive(Debug, Default)]
pub(crate) struct Window {
    /// Sorted event times.
    times: SmallVec<[Millis; 4]>,
}

pub(super) fn on_trigger(
    cx: &Cx,
    part: &mut Partition,
    rule: &Arc<Rule>,
    t: &Threshold,
    key: Vec<String>,
    event: &Arc<Event>,
    out: &mut Output,
) {
    let k = key_hash("window", &rule.id, &key);
    let window = part.windows.entry(k).or_default();
    if let Some(&old_newest) = window.times.last() {
        part.window_expiry
            .remove(&(old_newest.saturating_add(t.within), k));
    }
    let at = window.times.partition_point(|&x| x <= event.time);
    window.times.insert(at, event.time);
    let newest = *window.times.last().expect("just inserted");
    let cutoff = newest.saturating_sub(t.within);
    let old = window.times.partition_point(|&x| x < cutoff);
    window.times.drain(..old);
    if window.times.len() >= t.count {
        let start = window.times[0];
        part.windows.remove(&k);
        // The firing event's identity keeps two windows that start in the
        // same millisecond apart (the id is still stable on redelivery).
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
    } else {
        part.window_expiry
            .insert((newest.saturating_add(t.within), k));
    }
}

pub(super) fn expire(part: &mut Partition, watermark: Millis) {
    while let Some(&(until, k)) = part.window_expiry.first() {
        if until >= watermark {
            break;
        }
        part.window_expiry.pop_first();
        part.windows.remove(&k);
    }
}
