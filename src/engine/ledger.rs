//! The cooldown and once_per ledgers, and the decision they make.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::persist::{Dec, Enc, Journal, Row, StateTable, Write};
use super::{key_hash, key_hash_parts, Clock, EngineConfig, Firing, KeyMap, Outcome, PartitionId};
use crate::event::Millis;
use crate::rules::{OncePerField, Rule, RuleKind};

/// Remembered firings: key hash → the event time until which it counts.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    entries: KeyMap<u128, Millis>,
    expiry: BTreeSet<(Millis, u128)>,
    /// Keys recorded or expired since the last flush.
    pub(crate) journal: Journal<u128>,
}

impl Ledger {
    fn active(&self, key: u128, at: Millis) -> bool {
        self.entries.get(&key).is_some_and(|&until| until > at)
    }

    fn record(&mut self, key: u128, until: Millis) {
        self.journal.note(key);
        if let Some(old) = self.entries.insert(key, until) {
            self.expiry.remove(&(old, key));
        }
        self.expiry.insert((until, key));
    }

    /// Removes the entry under `key`; true when there was one.
    pub(crate) fn remove(&mut self, key: u128) -> bool {
        match self.entries.remove(&key) {
            Some(until) => {
                self.expiry.remove(&(until, key));
                self.journal.note(key);
                true
            }
            None => false,
        }
    }

    /// Forgets entries that ended before the watermark.
    pub(crate) fn expire(&mut self, watermark: Millis) {
        while let Some(&(until, key)) = self.expiry.first() {
            if until >= watermark {
                break;
            }
            self.expiry.pop_first();
            self.entries.remove(&key);
            self.journal.note(key);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Rows for the entries recorded or expired since the last flush.
    pub(crate) fn changes(&mut self, pid: PartitionId, out: &mut Vec<Write>) {
        let noted: Vec<u128> = self.journal.drain().collect();
        self.rows(noted, pid, out);
    }

    /// Rows for every entry (a snapshot).
    pub(crate) fn snapshot(&self, pid: PartitionId, out: &mut Vec<Write>) {
        self.rows(self.entries.keys().copied().collect(), pid, out);
    }

    fn rows(&self, keys: Vec<u128>, pid: PartitionId, out: &mut Vec<Write>) {
        for key in keys {
            out.push(Write {
                table: StateTable::Ledger,
                key: Enc::key(pid).u128(key).done(),
                value: self
                    .entries
                    .get(&key)
                    .map(|&until| Enc::value().millis(until).done()),
            });
        }
    }

    /// Remembers a stored entry again; false when the row is unreadable.
    pub(crate) fn restore(&mut self, row: &Row) -> bool {
        let key = Dec::key(&row.key).and_then(|mut k| k.u128());
        let until = Dec(&row.value).millis();
        match (key, until) {
            (Some(key), Some(until)) => {
                self.record(key, until);
                true
            }
            _ => false,
        }
    }
}

/// Stale, then once_per, then cooldown. Only a firing that passes all
/// three is recorded in the ledgers.
pub(crate) fn decide(
    rule: &Rule,
    firing: &Firing,
    clock: Clock,
    cfg: &EngineConfig,
    ledger: &mut Ledger,
) -> Outcome {
    if let (RuleKind::Absence(a), Some(deadline), Clock::Wall(now)) =
        (&rule.kind, firing.deadline, clock)
    {
        if a.stale_after
            .is_some_and(|s| now.saturating_sub(deadline) > s)
        {
            return Outcome::Stale;
        }
    }
    let once = (!rule.once_per.is_empty()).then(|| {
        let values: Vec<String> = rule
            .once_per
            .iter()
            .map(|f| once_per_value(f, firing))
            .collect();
        key_hash("once_per", &rule.id, &values)
    });
    if once.is_some_and(|k| ledger.active(k, firing.fired_at)) {
        return Outcome::Duplicate;
    }
    let cool = rule
        .cooldown
        .map(|c| (cooldown_key(&rule.id, firing.event.customer()), c));
    if cool.is_some_and(|(k, _)| ledger.active(k, firing.fired_at)) {
        return Outcome::Cooldown;
    }
    if let Some(k) = once {
        ledger.record(k, firing.fired_at.saturating_add(cfg.ledger_retention));
    }
    if let Some((k, c)) = cool {
        ledger.record(k, firing.fired_at.saturating_add(c));
    }
    Outcome::Fire
}

/// The ledger keys that can hold `customer`'s entries: every rule's
/// cooldown, and the once_per tuples whose every value is the customer id
/// (`once_per = ["customer_id"]`, whichever way the field is named). A
/// tuple that mixes in other values (`["customer_id", "app.version"]`) is
/// a one-way hash that cannot be found from the id alone; it expires after
/// `ledger_retention`.
pub(crate) fn keys_of(rules: &[Arc<Rule>], customer: &str) -> Vec<u128> {
    let mut keys = Vec::new();
    for rule in rules {
        if rule.cooldown.is_some() {
            keys.push(cooldown_key(&rule.id, customer));
        }
        let event_fields = rule
            .once_per
            .iter()
            .all(|f| matches!(f, OncePerField::Event(_)));
        if !rule.once_per.is_empty() && event_fields {
            let values = vec![customer.to_string(); rule.once_per.len()];
            keys.push(key_hash("once_per", &rule.id, &values));
        }
    }
    keys
}

/// The ledger key of `rule_id`'s cooldown for `customer`: where a firing
/// records it, and where forgetting the customer finds it.
fn cooldown_key(rule_id: &str, customer: &str) -> u128 {
    key_hash_parts("cooldown", rule_id, std::iter::once(customer))
}

fn once_per_value(field: &OncePerField, firing: &Firing) -> String {
    let text = match field {
        OncePerField::Entry(name) => {
            firing
                .entry
                .as_ref()
                .and_then(|e| match e.fields.get(name)? {
                    serde_json::Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                })
        }
        OncePerField::Event(k) => k.value(&firing.event),
    };
    // A missing field is its own value: such firings share one slot.
    text.unwrap_or_else(|| "\u{0}missing".into())
}
