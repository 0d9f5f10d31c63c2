//! `match` rules: every trigger event whose condition holds fires once.
//!
//! The episode key is (customer, event identity): the event's id when the
//! pipeline provides one, else a hash of its payload. A redelivered event
//! therefore yields the same notification id, and downstream can drop it.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{notification_id, Evaluation, Firing, RuleError};
use crate::event::Event;
use crate::rules::Rule;

pub(super) fn on_event(
    rule: &Arc<Rule>,
    event: &Arc<Event>,
    scope: &cel::Context,
    out: &mut Evaluation,
) {
    if let Some(cond) = &rule.trigger.when {
        match cond.eval_bool(scope) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                out.errors.push(RuleError {
                    rule_id: rule.id.clone(),
                    message: format!("trigger condition {:?}: {e}", cond.source()),
                });
                return;
            }
        }
    }
    let identity = event.id.clone().unwrap_or_else(|| payload_hash(event));
    let key = vec![event.customer.clone(), identity];
    out.firings.push(Firing {
        notification_id: notification_id(&rule.id, &key, event.time),
        rule: Arc::clone(rule),
        event: Arc::clone(event),
        key,
        episode_start: event.time,
    });
}

fn payload_hash(event: &Event) -> String {
    // serde_json's map is ordered (BTreeMap), so equal payloads hash equally.
    let bytes = serde_json::to_vec(&event.payload).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}

#[cfg(test)]
mod tests {
    use super::super::Engine;
    use super::*;
    use crate::event::{EventSchema, FieldPath};
    use crate::rules::expr::Expr;
    use crate::rules::model::{Class, Condition, Mode, Notify, Origin, RuleKind, RuleSet};

    fn rule(id: &str, event: &str, when: Option<&str>, enabled: bool) -> Rule {
        Rule {
            id: id.into(),
            description: String::new(),
            kind: RuleKind::Match,
            class: Class::Transactional,
            trigger: Condition {
                event: event.into(),
                when: when.map(|w| Expr::compile(w).unwrap()),
            },
            enabled,
            mode: Mode::Live,
            notify: Notify {
                channel: "email".into(),
                template: "t".into(),
            },
            origin: Origin {
                file: "x.toml".into(),
                line: 1,
            },
        }
    }

    fn event(json: &str) -> Arc<Event> {
        let schema = EventSchema {
            kind: FieldPath::parse("type").unwrap(),
            customer: FieldPath::parse("customer_id").unwrap(),
            time: FieldPath::parse("ts").unwrap(),
            id: Some(FieldPath::parse("event_id").unwrap()),
        };
        Arc::new(schema.decode(json.as_bytes()).unwrap())
    }

    fn engine(rules: Vec<Rule>) -> Engine {
        Engine::new(Arc::new(RuleSet::new(rules)))
    }

    #[test]
    fn fires_only_for_matching_type_and_condition() {
        let e = engine(vec![
            rule("late", "shipment_delayed", Some("event.hours >= 4"), true),
            rule("other", "order_placed", None, true),
        ]);
        let fired = e.on_event(&event(
            r#"{"type":"shipment_delayed","customer_id":"c1","ts":1000,"hours":5}"#,
        ));
        assert_eq!(fired.firings.len(), 1);
        assert_eq!(fired.firings[0].rule.id, "late");
        assert_eq!(fired.firings[0].episode_start, 1000);
        let quiet = e.on_event(&event(
            r#"{"type":"shipment_delayed","customer_id":"c1","ts":1000,"hours":2}"#,
        ));
        assert!(quiet.firings.is_empty());
        let none = e.on_event(&event(
            r#"{"type":"page_view","customer_id":"c1","ts":1000}"#,
        ));
        assert!(none.firings.is_empty() && none.errors.is_empty());
    }

    #[test]
    fn disabled_rules_never_fire() {
        let e = engine(vec![rule("off", "x", None, false)]);
        assert!(e
            .on_event(&event(r#"{"type":"x","customer_id":"c","ts":1}"#))
            .firings
            .is_empty());
    }

    #[test]
    fn redelivered_event_gets_the_same_notification_id() {
        let e = engine(vec![rule("r", "x", None, true)]);
        let json = r#"{"type":"x","customer_id":"c","ts":1,"event_id":"e-1"}"#;
        let a = e.on_event(&event(json)).firings.remove(0);
        let b = e.on_event(&event(json)).firings.remove(0);
        assert_eq!(a.notification_id, b.notification_id);
        let other = e
            .on_event(&event(
                r#"{"type":"x","customer_id":"c","ts":1,"event_id":"e-2"}"#,
            ))
            .firings
            .remove(0);
        assert_ne!(a.notification_id, other.notification_id);
        // Without an id, the payload identifies the event.
        let p1 = e
            .on_event(&event(r#"{"type":"x","customer_id":"c","ts":1,"n":1}"#))
            .firings
            .remove(0);
        let p2 = e
            .on_event(&event(r#"{"type":"x","customer_id":"c","ts":1,"n":2}"#))
            .firings
            .remove(0);
        assert_ne!(p1.notification_id, p2.notification_id);
    }

    #[test]
    fn evaluation_errors_are_reported_not_fired() {
        let e = engine(vec![rule("r", "x", Some("event.n > 'a'"), true)]);
        let out = e.on_event(&event(r#"{"type":"x","customer_id":"c","ts":1,"n":1}"#));
        assert!(out.firings.is_empty());
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.errors[0].rule_id, "r");
    }
}
