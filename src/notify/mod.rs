//! From a firing to a delivered message.
//!
//! `compose` resolves the recipient and renders the template into a
//! [`Notification`]; `deliver` is the stage around the channels that retries
//! transient failures with backoff and jitter and dead-letters the rest;
//! `channel/` holds the channels themselves, which only send and classify
//! their errors. To add a channel: a file in `channel/`, a variant in
//! [`channel::Channel`], a type in `config::ChannelKind`.

pub mod channel;
pub mod deliver;
pub mod email;
pub mod template;

use lettre::message::Mailbox;
use serde_json::{json, Value};

use crate::engine::Firing;
use crate::event::{format_time, FieldPath};
use crate::rules::Class;
use template::{RenderError, Rendered, Templates};

/// A decided, rendered message for one customer, ready for a channel.
#[derive(Debug, Clone)]
pub struct Notification {
    /// Deterministic: hash(rule, key values, episode start). The email
    /// Message-ID, so a resend after a crash is recognisable downstream.
    pub id: String,
    pub rule_id: String,
    pub channel: String,
    pub class: Class,
    pub customer: String,
    pub recipient: Mailbox,
    pub message: Rendered,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ComposeError {
    #[error("the event has no usable email address at `{0}`")]
    NoAddress(String),
    #[error(transparent)]
    Render(#[from] RenderError),
}

impl ComposeError {
    /// The decision outcome this stands for (metric label and decision reason).
    pub fn outcome(&self) -> &'static str {
        match self {
            ComposeError::NoAddress(_) => "no_address",
            ComposeError::Render(_) => "render_failed",
        }
    }
}

/// The template context of SPEC section 5.
pub fn template_context(firing: &Firing, email: Option<&str>) -> Value {
    let payload = &firing.event.payload;
    let mut customer = serde_json::Map::new();
    // A `customer` object on the event (name, locale, …) is visible as-is;
    // profiles from the profiles topic will take precedence once they exist.
    if let Some(Value::Object(obj)) = payload.get("customer") {
        customer.extend(obj.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    customer.insert("id".into(), Value::String(firing.event.customer.clone()));
    if let Some(e) = email {
        customer.insert("email".into(), Value::String(e.to_string()));
    }
    json!({
        "event": payload,
        "trigger": payload,
        "customer": customer,
        "rule": {
            "id": firing.rule.id,
            "description": firing.rule.description,
            "class": firing.rule.class.as_str(),
        },
        "entry": firing.entry.as_ref().map(|e| e.fields.clone()),
        "episode": {
            "start": format_time(firing.episode_start),
            "deadline": firing.deadline.map(format_time),
            "key": firing.key,
        },
        "notification": { "id": firing.notification_id },
    })
}

/// Resolves the recipient and renders the rule's template.
pub fn compose(
    firing: &Firing,
    templates: &Templates,
    email_path: &FieldPath,
) -> Result<Notification, ComposeError> {
    let address = email_path
        .get(&firing.event.payload)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let recipient: Mailbox = address
        .and_then(|a| a.parse::<lettre::Address>().ok())
        .map(|a| Mailbox::new(None, a))
        .ok_or_else(|| ComposeError::NoAddress(email_path.to_string()))?;
    let ctx = template_context(firing, address);
    let message = templates.render(&firing.rule.notify.template, &ctx)?;
    Ok(Notification {
        id: firing.notification_id.clone(),
        rule_id: firing.rule.id.clone(),
        channel: firing.rule.notify.channel.clone(),
        class: firing.rule.class,
        customer: firing.event.customer.clone(),
        recipient,
        message,
    })
}
