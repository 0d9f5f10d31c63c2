//! `match` rules: every trigger event whose condition holds fires once, or
//! once per matching catalog entry when the rule joins a catalog.
//!
//! The episode key is the rule's key values plus the event's identity (its
//! id when the pipeline provides one, else a hash of its payload), so a
//! redelivered event yields the same notification id.

use std::sync::Arc;

use super::{event_identity, notification_id, record, Cx, Firing, Output, Partition, RuleError};
use crate::event::Event;
use crate::rules::catalog::Catalog;
use crate::rules::{Condition, Rule};

/// Evaluates a condition's `if` (true without one). An error is for the
/// caller to report ([`trigger_holds`]) or to settle otherwise.
pub(super) fn condition_holds<'c>(
    event: &Event,
    scope: impl FnOnce() -> &'c cel::Context<'c, 'static>,
    cond: &Condition,
) -> Result<bool, crate::rules::expr::EvalError> {
    match &cond.when {
        None => Ok(true),
        Some(expr) => expr.eval_event(event, |e| e.eval_bool(scope())),
    }
}

/// Evaluates a condition's `if`; errors count as "does not hold" and are
/// reported as rule errors.
pub(super) fn trigger_holds<'c>(
    rule: &Rule,
    event: &Event,
    scope: impl FnOnce() -> &'c cel::Context<'c, 'static>,
    cond: &Condition,
    out: &mut Output,
) -> bool {
    condition_holds(event, scope, cond).unwrap_or_else(|e| {
        let source = cond.when.as_ref().map_or("", |w| w.source());
        out.errors.push(RuleError {
            rule_id: rule.id.clone(),
            message: format!(
                "condition {source:?}: {}",
                crate::redact::values(&e.to_string())
            ),
        });
        false
    })
}

pub(super) fn on_trigger(
    cx: &Cx,
    part: &mut Partition,
    rule: &Arc<Rule>,
    catalog: Option<&Catalog>,
    mut key: Vec<String>,
    event: &Arc<Event>,
    out: &mut Output,
) {
    // Catalog conditions read their fields in place; the payload is
    // parsed whole only if a template or CEL condition asks for it.
    key.push(event_identity(event));
    let entries: Vec<Option<Arc<crate::rules::catalog::CatalogEntry>>> = match catalog {
        None => vec![None],
        Some(c) => c
            .entries
            .iter()
            .filter(|entry| {
                match entry
                    .matches
                    .eval_event(&**event, |e| e.eval_bool(cx.scope.get()))
                {
                    Ok(b) => b,
                    Err(e) => {
                        out.errors.push(RuleError {
                            rule_id: rule.id.clone(),
                            message: format!(
                                "catalog {:?} entry {:?}: {}",
                                c.name,
                                entry.id,
                                crate::redact::values(&e.to_string())
                            ),
                        });
                        false
                    }
                }
            })
            .map(|e| Some(Arc::clone(e)))
            .collect(),
    };
    for entry in entries {
        let mut key = key.clone();
        if let Some(e) = &entry {
            key.push(e.id.clone());
        }
        let firing = Firing {
            notification_id: notification_id(&rule.id, &key, event.time),
            rule: Arc::clone(rule),
            event: Arc::clone(event),
            entry,
            key,
            episode_start: event.time,
            deadline: None,
            fired_at: event.time,
            partition: cx.partition,
        };
        record(firing, cx.clock, cx.cfg, &mut part.ledger, out);
    }
}
