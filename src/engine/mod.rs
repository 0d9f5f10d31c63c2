//! The engine is pure: events (and, with the rule engine release, watermarks)
//! in, firings out. No async, no clock, no I/O, so live mode, replay and
//! tests all drive the same code.
//!
//! One module per rule kind: `matcher` for `match`. A new kind adds a module
//! here, a variant in `rules::model::RuleKind`, and an arm in `on_event`.

mod matcher;

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::event::{Event, Millis};
use crate::rules::expr::{base_context, to_cel};
use crate::rules::{Rule, RuleKind, RuleSet};

/// A rule decided that a customer should hear from us.
#[derive(Debug, Clone)]
pub struct Firing {
    pub rule: Arc<Rule>,
    /// The event that fired the rule (for `match`, the trigger itself).
    pub event: Arc<Event>,
    /// The values that identify the episode (for `match`: customer and event).
    pub key: Vec<String>,
    pub episode_start: Millis,
    pub notification_id: String,
}

/// A condition that could not be evaluated (counted, logged by the caller).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub rule_id: String,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Evaluation {
    pub firings: Vec<Firing>,
    pub errors: Vec<RuleError>,
}

pub struct Engine {
    rules: Arc<RuleSet>,
    cel: cel::Context<'static, 'static>,
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>) -> Engine {
        Engine {
            rules,
            cel: base_context(),
        }
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    pub fn on_event(&self, event: &Arc<Event>) -> Evaluation {
        let mut out = Evaluation::default();
        let candidates = self.rules.triggered_by(&event.kind);
        if candidates.is_empty() {
            return out;
        }
        // Converted once per event, shared by every rule that looks at it.
        let mut scope = self.cel.new_inner_scope();
        let value = to_cel(&event.payload);
        scope.add_variable_from_value("event", value.clone());
        scope.add_variable_from_value("trigger", value);
        for rule in candidates {
            match rule.kind {
                RuleKind::Match => matcher::on_event(rule, event, &scope, &mut out),
            }
        }
        out
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
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_ids_are_deterministic_and_distinct() {
        let k = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = notification_id("r", &k(&["c1", "e1"]), 5);
        assert_eq!(a, notification_id("r", &k(&["c1", "e1"]), 5));
        assert_eq!(a.len(), 32);
        assert_ne!(a, notification_id("r", &k(&["c1", "e1"]), 6));
        assert_ne!(a, notification_id("r2", &k(&["c1", "e1"]), 5));
        assert_ne!(
            notification_id("r", &k(&["a", "bc"]), 5),
            notification_id("r", &k(&["ab", "c"]), 5)
        );
    }
}
