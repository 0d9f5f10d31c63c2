//! `absence` rules: a trigger opens an episode for (rule, key values) with
//! a deadline; a matching `until` or `cancel_on` event with the same key and
//! an event time in [trigger time, deadline] closes it silently; once the
//! engine watermark passes the deadline, the episode fires once.
//!
//! Several episodes can share a key: a trigger after the previous deadline
//! opens a new episode while the old one still waits for the watermark
//! (and may still be closed by an until event that is late but in time).

use std::sync::Arc;

use super::project::{decode_trigger, encode_trigger};
use super::{
    key_hash, ledger, matcher::trigger_holds, notification_id, Clock, Cx, Decision, EngineConfig,
    Episode, Firing, Output, Partition, PartitionId, RuleError,
};
use crate::event::{parse_time, Event, Millis};
use crate::rules::expr::to_cel;
use crate::rules::{Absence, DeadlineSpec, OnRepeat, RuleKind, RuleSet};

fn deadline_of(a: &Absence, event: &Event) -> Option<Millis> {
    match &a.deadline {
        DeadlineSpec::Within(w) => Some(event.time.saturating_add(*w)),
        DeadlineSpec::Field { path, grace } => path
            .get(&event.payload)
            .and_then(parse_time)
            .map(|t| t.saturating_add(*grace)),
    }
}

pub(super) fn on_trigger(
    cx: &Cx,
    part: &mut Partition,
    idx: u32,
    event: &Arc<Event>,
    out: &mut Output,
) {
    let rule = cx.rules.rule(idx);
    let RuleKind::Absence(a) = &rule.kind else {
        return;
    };
    let Some(key) = rule.key_values(event) else {
        out.missing_key.push(rule.id.clone());
        return;
    };
    let Some(deadline) = deadline_of(a, event) else {
        out.missing_key.push(rule.id.clone());
        if let DeadlineSpec::Field { path, .. } = &a.deadline {
            out.errors.push(RuleError {
                rule_id: rule.id.clone(),
                message: format!("the trigger has no usable `{path}` time (RFC 3339 or epoch milliseconds): no episode opened"),
            });
        }
        return;
    };
    let k = key_hash("episode", &rule.id, &key);
    let list = part.episodes.entry(k).or_default();
    // The episode still running at this trigger's time, if any.
    if let Some(pos) = list.iter().position(|e| e.deadline >= event.time) {
        // A trigger older than the running episode's own is superseded.
        if a.on_repeat == OnRepeat::Ignore || list[pos].start > event.time {
            return;
        }
        let old = list.remove(pos);
        if !list.iter().any(|e| e.deadline == old.deadline) {
            part.timers.remove(&(old.deadline, k));
        }
    }
    let fields = cx.retain[idx as usize].as_deref();
    list.push(Episode {
        start: event.time,
        deadline,
        rule: idx,
        trigger: encode_trigger(event, fields),
    });
    part.timers.insert((deadline, k));
}

pub(super) fn on_closer(
    cx: &Cx,
    part: &mut Partition,
    idx: u32,
    event: &Arc<Event>,
    out: &mut Output,
) {
    let rule = cx.rules.rule(idx);
    let RuleKind::Absence(a) = &rule.kind else {
        return;
    };
    let Some(key) = rule.key_values(event) else {
        return;
    };
    let k = key_hash("episode", &rule.id, &key);
    let Some(list) = part.episodes.get_mut(&k) else {
        return;
    };
    let conditions: Vec<_> = a
        .until
        .iter()
        .chain(&a.cancel_on)
        .filter(|c| c.event == event.kind)
        .collect();
    let mut closed = Vec::new();
    list.retain(|ep| {
        if ep.start > event.time || event.time > ep.deadline {
            return true;
        }
        // `trigger` is only decoded for conditions that name it.
        let mut scope = cx.scope.new_inner_scope();
        if conditions.iter().any(|c| {
            c.when
                .as_ref()
                .is_some_and(|w| w.source().contains("trigger"))
        }) {
            if let Some(t) = decode_trigger(&ep.trigger, &rule.trigger.event, ep.start) {
                scope.add_variable_from_value("trigger", to_cel(&t.payload));
            }
        }
        let holds = conditions
            .iter()
            .any(|c| trigger_holds(rule, &scope, c, out));
        if holds {
            closed.push(ep.deadline);
        }
        !holds
    });
    for d in closed {
        if !list.iter().any(|e| e.deadline == d) {
            part.timers.remove(&(d, k));
        }
    }
    if list.is_empty() {
        part.episodes.remove(&k);
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
    while let Some(&(deadline, k)) = part.timers.first() {
        if deadline >= watermark {
            break;
        }
        part.timers.pop_first();
        let Some(list) = part.episodes.get_mut(&k) else {
            continue;
        };
        let mut due = Vec::new();
        list.retain(|e| {
            if e.deadline == deadline {
                due.push(e.clone());
                false
            } else {
                true
            }
        });
        if list.is_empty() {
            part.episodes.remove(&k);
        }
        for ep in due {
            let rule = rules.rule(ep.rule);
            let Some(trigger) = decode_trigger(&ep.trigger, &rule.trigger.event, ep.start) else {
                out.errors.push(RuleError {
                    rule_id: rule.id.clone(),
                    message: "a stored trigger could not be decoded; the episode is dropped".into(),
                });
                continue;
            };
            let key = rule.key_values(&trigger).unwrap_or_default();
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
            let outcome = ledger::decide(rule, &firing, clock, cfg, &mut part.ledger);
            out.decisions.push(Decision { firing, outcome });
        }
    }
}
