//! `forewarn render --rule ID --event FILE.json`: previews a rule's message
//! exactly as its channel would send it, from one sample event (and the
//! customer's profile, with `--profile`).
//!
//! The event goes through the same decoding, engine, prepare stage and
//! templates as live mode, in virtual time: a match or threshold rule fires
//! on it if its trigger holds (a threshold rule with count > 1 needs the
//! event that many times: render repeats it), an absence rule fires at its
//! deadline as if nothing followed. When the rule does not fire, the
//! report says why, so a CX lead can fix the sample or the condition.
//! Each message comes back as a [`MessageView`]: the command line prints
//! its card and text, and writes the preview page of [`crate::preview`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use crate::config::ChannelConfig;
use crate::engine::{Clock, Engine, EngineConfig, Output};
use crate::event::{EventSchema, FieldPath};
use crate::pipeline::{prepare, Decide, Prepared};
use crate::policy::PolicyConfig;
use crate::preview::{channel_or_default, MessageView};
use crate::rules::{load_rules, Diagnostics, LoadOptions, RuleKind};

pub struct RenderOptions {
    pub rule: String,
    pub event: PathBuf,
    pub rules_dir: PathBuf,
    pub schema: EventSchema,
    pub email: FieldPath,
    /// The daemon's channels; `None` previews every rule as an email.
    pub channels: Option<BTreeMap<String, ChannelConfig>>,
    /// `customers.unsubscribe_url`: marketing emails show `List-Unsubscribe`.
    pub unsubscribe_url: Option<String>,
    /// The daemon config's `[policy]`: where consent and the time zone
    /// are found. A preview judges consent, not the cap or quiet hours.
    pub policy: PolicyConfig,
    /// A JSON file with the customer's profile, as the profiles topic
    /// holds it: templates and consent see it as they would live.
    pub profile: Option<PathBuf>,
}

/// One message as it would go out.
#[derive(Debug, Clone)]
pub struct Preview {
    pub notification_id: String,
    pub channel: String,
    /// `sent`, `shadow` (rendered, not sent in live mode) or `holdout`
    /// (this customer is in the rule's control group; others get this).
    pub outcome: &'static str,
    /// The message as a person reads it, with its wire text.
    pub view: MessageView,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the rules are invalid:\n{0}")]
    Rules(Diagnostics),
    #[error("no rule has id {id:?}{hint}")]
    NoSuchRule { id: String, hint: String },
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: String },
    #[error("{path} is not a valid event: {error}")]
    BadEvent { path: String, error: String },
    #[error("{path} is not a valid profile: {error}. A profile is one JSON object, what the profiles topic holds for the customer, e.g. {{\"name\": \"Ana\", \"email\": \"ana@example.com\", \"timezone\": \"Europe/Berlin\", \"consent\": {{\"marketing\": false}}}}")]
    BadProfile { path: String, error: String },
    #[error("rule {rule:?} does not fire on this event: {why}")]
    NoFiring { rule: String, why: String },
    #[error("rule {rule:?} fired but nothing would be sent ({outcome}): {detail}")]
    NotSent {
        rule: String,
        outcome: &'static str,
        detail: String,
    },
    #[error("the {channel:?} channel cannot build the message: {error}")]
    Channel { channel: String, error: String },
}

pub fn render(opts: &RenderOptions) -> Result<Vec<Preview>, RenderError> {
    let load = LoadOptions {
        channels: opts.channels.as_ref().map(|c| c.keys().cloned().collect()),
    };
    let loaded = load_rules(&opts.rules_dir, &load).map_err(RenderError::Rules)?;
    let Some(rule) = loaded.rules.get(&opts.rule).cloned() else {
        let ids: Vec<&str> = loaded.rules.rules.iter().map(|r| r.id.as_str()).collect();
        let hint = match ids.is_empty() {
            true => format!(" (no rules in {})", opts.rules_dir.display()),
            false => format!("; the rules are: {}", ids.join(", ")),
        };
        return Err(RenderError::NoSuchRule {
            id: opts.rule.clone(),
            hint,
        });
    };
    let bytes = std::fs::read(&opts.event).map_err(|e| RenderError::Read {
        path: opts.event.display().to_string(),
        error: e.to_string(),
    })?;
    let event = opts
        .schema
        .decode(&bytes)
        .map_err(|e| RenderError::BadEvent {
            path: opts.event.display().to_string(),
            error: e.to_string(),
        })?;
    let profile = opts.profile.as_deref().map(read_profile).transpose()?;
    if event.kind() != rule.trigger.event {
        return Err(RenderError::NoFiring {
            rule: rule.id.clone(),
            why: format!(
                "its trigger is a {:?} event, and this event's type is {:?}; use a sample {:?} event",
                rule.trigger.event, event.kind(), rule.trigger.event
            ),
        });
    }
    let event = Arc::new(event);
    let mut engine = Engine::new(
        Arc::new(loaded.rules),
        EngineConfig::default(),
        std::slice::from_ref(&opts.email),
    );
    engine.assign(0);
    let repeats = match &rule.kind {
        RuleKind::Threshold(t) => t.count.max(1),
        _ => 1,
    };
    let mut out = Output::default();
    for n in 0..repeats {
        // Distinct ids: the engine counts a redelivered event (same id) once.
        let event = match (event.id(), n) {
            (Some(id), 1..) => Arc::new(event.with_id(Some(&format!("{id}#{n}")))),
            _ => Arc::clone(&event),
        };
        engine.on_event(0, &event, Clock::Virtual, &mut out);
    }
    engine.flush(Clock::Virtual, &mut out);
    let decisions: Vec<_> = out
        .decisions
        .iter()
        .filter(|d| d.firing.rule.id == rule.id)
        .collect();
    if decisions.is_empty() {
        let why = if out.missing_key.iter().any(|r| *r == rule.id) {
            let keys: Vec<String> = rule
                .key
                .iter()
                .map(|k| match k {
                    crate::rules::KeyField::Customer => "the customer field".to_string(),
                    crate::rules::KeyField::Path(p) => p.to_string(),
                })
                .collect();
            format!(
                "the event lacks a key field ({}) or its deadline field",
                keys.join(", ")
            )
        } else if let Some(e) = out.errors.iter().find(|e| e.rule_id == rule.id) {
            format!("a condition could not be evaluated: {}", e.message)
        } else if matches!(rule.kind, RuleKind::Match { catalog: Some(_) }) {
            "its trigger condition is false, or no catalog entry matches the event".into()
        } else {
            let cond = rule
                .trigger
                .when
                .as_ref()
                .map_or("(none)".to_string(), |w| w.source().to_string());
            format!("its trigger condition is false for this event: {cond}")
        };
        return Err(RenderError::NoFiring {
            rule: rule.id.clone(),
            why,
        });
    }
    // A preview judges consent (from the profile, else the sample event)
    // but no cap or quiet hours: those depend on the customer's history
    // and the hour.
    let policy = PolicyConfig {
        max_per_customer: None,
        quiet_hours: None,
        ..opts.policy.clone()
    };
    let cx = Decide {
        templates: &loaded.templates,
        email: &opts.email,
        unsubscribe_url: opts.unsubscribe_url.as_deref(),
        policy: &policy,
    };
    let mut previews = Vec::new();
    for d in decisions {
        let cfg = channel_or_default(opts.channels.as_ref(), &d.firing.rule.notify.channel);
        let needs_address = cfg.kind.needs_address();
        let mut caps = crate::policy::CapLedger::default();
        let prepared = prepare(
            d,
            &cx,
            needs_address,
            profile.as_ref(),
            d.firing.fired_at,
            &mut caps,
        );
        let outcome = prepared.outcome();
        let n = match prepared {
            Prepared::Send(n) | Prepared::Shadow(n) => n,
            Prepared::Skip {
                outcome: "holdout", ..
            } => {
                let to = crate::notify::Recipient {
                    profile: profile.as_ref(),
                    email: &opts.email,
                    unsubscribe_url: opts.unsubscribe_url.as_deref(),
                };
                crate::notify::compose(&d.firing, &loaded.templates, &to, needs_address).map_err(
                    |e| RenderError::NotSent {
                        rule: rule.id.clone(),
                        outcome: e.outcome(),
                        detail: e.to_string(),
                    },
                )?
            }
            Prepared::Skip { outcome, detail } => {
                return Err(RenderError::NotSent {
                    rule: rule.id.clone(),
                    outcome,
                    detail: detail.unwrap_or_else(|| outcome.to_string()),
                })
            }
        };
        let view = MessageView::new(&n, &cfg, outcome, rule.holdout_percent).map_err(|e| {
            RenderError::Channel {
                channel: cfg.name.clone(),
                error: e.to_string(),
            }
        })?;
        previews.push(Preview {
            notification_id: n.id.clone(),
            channel: cfg.name.clone(),
            outcome,
            view,
        });
    }
    Ok(previews)
}

/// The profile in `path`: one JSON object.
fn read_profile(path: &std::path::Path) -> Result<Value, RenderError> {
    let bytes = std::fs::read(path).map_err(|e| RenderError::Read {
        path: path.display().to_string(),
        error: e.to_string(),
    })?;
    let bad = |error: String| RenderError::BadProfile {
        path: path.display().to_string(),
        error,
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(other) => Err(bad(format!(
            "it holds {}, not an object",
            match other {
                Value::Array(_) => "a list",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "true or false",
                _ => "null",
            }
        ))),
        Err(e) => Err(bad(format!("it is not JSON ({e})"))),
    }
}
