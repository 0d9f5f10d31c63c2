//! From an engine decision to a notification ready for a channel, or to
//! the outcome that stops it: the engine's own outcome, then the contact
//! policy ([`crate::policy`]) around composing the message. Shared by the
//! daemon, `forewarn replay` and `forewarn render`, so all three decide
//! the same on the same events.

use serde_json::Value;

use crate::decisions::DecisionRecord;
use crate::engine::{Decision, Outcome};
use crate::event::{FieldPath, Millis};
use crate::notify::template::Templates;
use crate::notify::{compose, Notification, Recipient};
use crate::policy::{self, CapLedger, CustomerView, PolicyConfig};
use crate::rules::Mode;

#[derive(Debug)]
pub enum Prepared {
    /// Hand this to the channel (at `not_before`, when quiet hours
    /// deferred it).
    Send(Notification),
    /// Decided, rendered, and not sent (shadow mode).
    Shadow(Notification),
    /// Not sent: the outcome says why (`cooldown`, `duplicate`, `stale`,
    /// `unsubscribed`, `capped`, `no_address`, `render_failed`,
    /// `holdout`), with details for the log. (`resolved` and
    /// `dead_letter` are decided later, by the dispatcher.)
    Skip {
        outcome: &'static str,
        detail: Option<String>,
    },
}

impl Prepared {
    /// The outcome as replay and render report it: `sent`, `deferred`,
    /// `shadow`, or why not.
    pub fn outcome(&self) -> &'static str {
        match self {
            Prepared::Send(n) if n.not_before.is_some() => "deferred",
            Prepared::Send(_) => "sent",
            Prepared::Shadow(_) => "shadow",
            Prepared::Skip { outcome, .. } => outcome,
        }
    }

    /// The outcome the decision log records at decide time: `fired` for a
    /// send that goes out now (`sent` follows once the channel took it).
    pub fn decided(&self) -> &'static str {
        match self {
            Prepared::Send(n) if n.not_before.is_none() => "fired",
            other => other.outcome(),
        }
    }
}

/// What deciding needs besides the decision.
#[derive(Debug, Clone, Copy)]
pub struct Decide<'a> {
    pub templates: &'a Templates,
    /// `customers.email`.
    pub email: &'a FieldPath,
    /// `customers.unsubscribe_url`.
    pub unsubscribe_url: Option<&'a str>,
    pub policy: &'a PolicyConfig,
}

/// `needs_address`: the rule's channel delivers email, so an event
/// without a usable address yields `no_address`. `profile`: the customer's
/// profile from the profiles topic, if any. `now`: the wall clock (live)
/// or the firing's event time (replay).
pub fn prepare(
    decision: &Decision,
    cx: &Decide<'_>,
    needs_address: bool,
    profile: Option<&Value>,
    now: Millis,
    caps: &mut CapLedger,
) -> Prepared {
    if decision.outcome != Outcome::Fire {
        return Prepared::Skip {
            outcome: decision.outcome.as_str(),
            detail: None,
        };
    }
    // Policy and templates see the whole payload (`Event::payload`).
    let firing = &decision.firing;
    let rule = &firing.rule;
    let view = CustomerView {
        id: firing.event.customer(),
        profile,
        event: firing.event.payload(),
    };
    if let Err(s) = policy::admit(cx.policy, rule, &view, now, caps) {
        return Prepared::Skip {
            outcome: s.outcome,
            detail: Some(s.reason),
        };
    }
    let to = Recipient {
        profile,
        email: cx.email,
        unsubscribe_url: cx.unsubscribe_url,
    };
    let mut n = match compose(firing, cx.templates, &to, needs_address) {
        Err(e) => {
            return Prepared::Skip {
                outcome: e.outcome(),
                detail: Some(e.to_string()),
            }
        }
        Ok(n) => n,
    };
    if rule.mode == Mode::Shadow {
        return Prepared::Shadow(n);
    }
    if policy::in_holdout(rule, firing.event.customer()) {
        return Prepared::Skip {
            outcome: "holdout",
            detail: Some(format!(
                "the customer is in the {}% control group of this rule",
                rule.holdout_percent.unwrap_or_default()
            )),
        };
    }
    if let Some(d) = policy::schedule(cx.policy, rule, &view, now, caps) {
        n.not_before = Some(d.until);
        return Prepared::Send(n);
    }
    Prepared::Send(n)
}

/// What deciding remembers between decisions when there is no daemon
/// (replay, `forewarn test`): the marketing cap's ledger, and the
/// notification ids already queued, which the daemon's outbox keeps. A
/// redelivered event that decides the same notification again is a
/// `duplicate` there as in the daemon, never a second send.
#[derive(Debug, Default)]
pub struct VirtualState {
    caps: CapLedger,
    queued: std::collections::HashSet<String>,
}

impl VirtualState {
    /// [`prepare`], then the outbox's check for a notification queued before.
    pub fn prepare(
        &mut self,
        decision: &Decision,
        cx: &Decide<'_>,
        needs_address: bool,
        profile: Option<&Value>,
        now: Millis,
    ) -> Prepared {
        match prepare(decision, cx, needs_address, profile, now, &mut self.caps) {
            Prepared::Send(n) if !self.queued.insert(n.id.clone()) => Prepared::Skip {
                outcome: "duplicate",
                detail: Some(
                    "this notification was queued before: its event came again (the daemon's outbox keeps it once)"
                        .into(),
                ),
            },
            other => other,
        }
    }
}

/// The decision log entry for a prepared decision.
pub fn record(decision: &Decision, prepared: &Prepared, now: Millis) -> DecisionRecord {
    let f = &decision.firing;
    let (reason, send_at) = match prepared {
        Prepared::Skip { detail, .. } => (detail.clone(), None),
        Prepared::Send(n) => (
            n.not_before
                .map(|_| "marketing message inside the customer's quiet hours".to_string()),
            n.not_before,
        ),
        Prepared::Shadow(_) => (None, None),
    };
    DecisionRecord {
        customer: f.event.customer().to_owned(),
        at: now,
        rule: f.rule.id.clone(),
        outcome: prepared.decided().to_string(),
        notification_id: f.notification_id.clone(),
        channel: f.rule.notify.channel.clone(),
        reason,
        fired_at: f.fired_at,
        episode_start: f.episode_start,
        deadline: f.deadline,
        send_at,
    }
}

/// The decision log entry for a delivery outcome of `n`.
pub fn delivery_record(
    n: &Notification,
    outcome: &str,
    at: Millis,
    reason: Option<String>,
) -> DecisionRecord {
    DecisionRecord {
        customer: n.customer.clone(),
        at,
        rule: n.rule_id.clone(),
        outcome: outcome.to_string(),
        notification_id: n.id.clone(),
        channel: n.channel.clone(),
        reason,
        fired_at: n.episode.deadline.unwrap_or(n.episode.start),
        episode_start: n.episode.start,
        deadline: n.episode.deadline,
        send_at: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::engine::{Clock, Engine, EngineConfig, Output};
    use crate::policy::{parse_clock, Cap, QuietHours};
    use crate::rules::{load_rules, LoadOptions};

    const RULES: &str = r#"
[[rule]]
id = "promo"
kind = "match"
class = "marketing"
trigger = { event = "page_view" }
notify = { channel = "email", template = "t" }

[[rule]]
id = "promo-shadow"
kind = "match"
class = "marketing"
mode = "shadow"
trigger = { event = "pricing_view" }
notify = { channel = "email", template = "t" }

[[rule]]
id = "promo-holdout"
kind = "match"
class = "marketing"
holdout_percent = 50
trigger = { event = "cart_view" }
notify = { channel = "email", template = "t" }

[[rule]]
id = "payment"
kind = "match"
trigger = { event = "payment_failed" }
notify = { channel = "email", template = "t" }
"#;

    struct Rig {
        engine: Engine,
        templates: Templates,
        email: FieldPath,
        _dir: tempfile::TempDir,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(
            dir.path().join("templates/t.subject"),
            "Hi {{ customer.name | default('') }}",
        )
        .unwrap();
        std::fs::write(dir.path().join("templates/t.txt"), "Body").unwrap();
        std::fs::write(dir.path().join("r.toml"), RULES).unwrap();
        let loaded =
            load_rules(dir.path(), &LoadOptions::default()).unwrap_or_else(|d| panic!("{d}"));
        let mut engine = Engine::new(Arc::new(loaded.rules), EngineConfig::default(), &[]);
        engine.assign(0);
        Rig {
            engine,
            templates: loaded.templates,
            email: FieldPath::parse("customer.email").unwrap(),
            _dir: dir,
        }
    }

    fn decide(rig: &mut Rig, kind: &str, customer: &str, extra: serde_json::Value) -> Decision {
        // A distinct event id per call: match rules fire on each event.
        let mut extra = extra;
        let id = format!("{kind}-{customer}-{extra}");
        if let Some(e) = extra.as_object_mut() {
            e.insert("event_id".into(), json!(id));
        }
        let event = crate::engine::tests::ev(kind, customer, 1_000, extra);
        let mut out = Output::default();
        rig.engine.on_event(0, &event, Clock::Virtual, &mut out);
        out.decisions.pop().expect("the rule fires")
    }

    fn ms(t: &str) -> Millis {
        t.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn the_policy_decides_in_order_and_every_decision_is_recorded() {
        let mut rig = rig();
        let policy = PolicyConfig {
            max_per_customer: Some(Cap {
                count: 1,
                per: 24 * 3_600_000,
            }),
            quiet_hours: Some(QuietHours {
                start: parse_clock("21:00").unwrap(),
                end: parse_clock("08:00").unwrap(),
            }),
            ..PolicyConfig::default()
        };
        let mut caps = CapLedger::default();
        let noon = ms("2026-05-01T12:00:00Z");
        let night = ms("2026-05-01T23:00:00Z");
        let addr = json!({"customer": {"email": "ana@example.com"}});
        let profile =
            json!({"name": "Ana", "timezone": "Asia/Tokyo", "consent": {"marketing": false}});
        let templates = std::mem::take(&mut rig.templates);
        let email = rig.email.clone();
        let cx = Decide {
            templates: &templates,
            email: &email,
            unsubscribe_url: Some("https://acme.example/u/{{ customer.id }}"),
            policy: &policy,
        };

        // No consent: stopped before anything else, with a reason.
        let d = decide(&mut rig, "page_view", "ana", addr.clone());
        let p = prepare(&d, &cx, true, Some(&profile), noon, &mut caps);
        assert_eq!(p.outcome(), "unsubscribed");
        let r = record(&d, &p, noon);
        assert_eq!(
            (r.outcome.as_str(), r.customer.as_str()),
            ("unsubscribed", "ana")
        );
        assert!(r.reason.unwrap().contains("consent"));
        // …but a transactional message still goes, with the profile's name,
        // and without an unsubscribe link.
        let d = decide(&mut rig, "payment_failed", "ana", addr.clone());
        match prepare(&d, &cx, true, Some(&profile), noon, &mut caps) {
            Prepared::Send(n) => {
                assert_eq!(n.message.subject, "Hi Ana");
                assert_eq!(n.unsubscribe_url, None);
                assert_eq!(n.not_before, None);
            }
            other => panic!("{other:?}"),
        }

        // A marketing message at noon UTC goes now, with its unsubscribe link…
        let d = decide(&mut rig, "page_view", "bo", addr.clone());
        let p = prepare(&d, &cx, true, None, noon, &mut caps);
        assert_eq!((p.outcome(), p.decided()), ("sent", "fired"));
        if let Prepared::Send(n) = &p {
            assert_eq!(
                n.unsubscribe_url.as_deref(),
                Some("https://acme.example/u/bo")
            );
        }
        // …and fills bo's cap of one: the next is capped.
        let d = decide(
            &mut rig,
            "page_view",
            "bo",
            json!({"n": 2, "customer": {"email": "bo@example.com"}}),
        );
        assert_eq!(
            prepare(&d, &cx, true, None, noon, &mut caps).outcome(),
            "capped"
        );

        // At 23:00 UTC, a UTC customer is in quiet hours: deferred to 08:00.
        let d = decide(&mut rig, "page_view", "cy", addr.clone());
        let p = prepare(&d, &cx, true, None, night, &mut caps);
        assert_eq!(p.outcome(), "deferred");
        let r = record(&d, &p, night);
        assert_eq!(r.send_at, Some(ms("2026-05-02T08:00:00Z")));
        // The same hour is 08:00 in Tokyo: outside the window, sent now.
        let tokyo = json!({"timezone": "Asia/Tokyo"});
        let d = decide(&mut rig, "page_view", "dee", addr.clone());
        assert_eq!(
            prepare(&d, &cx, true, Some(&tokyo), night, &mut caps).outcome(),
            "sent"
        );

        // No address: no_address, and it does not use up the cap.
        let d = decide(&mut rig, "page_view", "eve", json!({}));
        assert_eq!(
            prepare(&d, &cx, true, None, noon, &mut caps).outcome(),
            "no_address"
        );
        assert_eq!(caps.count("eve", noon, 24 * 3_600_000), 0);

        // Shadow: recorded, not sent, and the cap is not used.
        let d = decide(&mut rig, "pricing_view", "fay", addr.clone());
        let p = prepare(&d, &cx, true, None, noon, &mut caps);
        assert_eq!(
            (p.outcome(), record(&d, &p, noon).outcome.as_str()),
            ("shadow", "shadow")
        );
        assert_eq!(caps.count("fay", noon, 24 * 3_600_000), 0);

        // Holdout: exactly the customers the stable hash puts in the group.
        let mut held = 0;
        for i in 0..40 {
            let c = format!("h{i}");
            let d = decide(&mut rig, "cart_view", &c, addr.clone());
            let p = prepare(&d, &cx, true, None, noon, &mut caps);
            let expect = crate::policy::in_holdout(&d.firing.rule, &c);
            assert_eq!(p.outcome() == "holdout", expect, "{c}");
            if expect {
                held += 1;
                assert_eq!(
                    caps.count(&c, noon, 24 * 3_600_000),
                    0,
                    "a held-out customer keeps their allowance"
                );
            }
        }
        assert!((8..=32).contains(&held), "{held} of 40 in a 50% holdout");
    }
}
