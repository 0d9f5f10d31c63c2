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
    let firing = &decision.firing;
    let rule = &firing.rule;
    let view = CustomerView {
        id: &firing.event.customer,
        profile,
        event: &firing.event.payload,
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
    if policy::in_holdout(rule, &firing.event.customer) {
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
        customer: f.event.customer.clone(),
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
