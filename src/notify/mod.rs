//! From a firing to a delivered message.
//!
//! `compose` resolves the recipient and renders the template into a
//! [`Notification`]; the `outbox` keeps every decided notification durably
//! (redb) until it is sent or dead-lettered; the `dispatcher` runs one
//! worker per channel that applies concurrency and rate limits, the
//! send-time guard, retries with backoff, and dead letters; `channel/`
//! holds the channels themselves, which only send and classify their
//! errors. To add a channel: a file in `channel/`, a variant in
//! [`channel::Channel`], a type in `config::ChannelKind`.

pub mod channel;
pub mod dispatcher;
pub mod email;
pub mod outbox;
pub mod template;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::engine::Firing;
use crate::event::{format_time, FieldPath, Millis};
use crate::rules::Class;
use template::{RenderError, Rendered, Templates};

/// A decided, rendered message for one customer, ready for a channel.
/// Serialized into the outbox as it is, so what is retried after a restart
/// is byte-for-byte what was decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Deterministic: hash(rule, key values, episode start). The email
    /// Message-ID, the webhook-id and the Kafka record key, so a resend
    /// after a crash is recognisable downstream.
    pub id: String,
    pub rule_id: String,
    pub channel: String,
    pub class: Class,
    pub customer: String,
    /// A valid address, when the event carries one (email channels need it).
    pub recipient: Option<String>,
    pub message: Rendered,
    pub episode: EpisodeInfo,
    /// The trigger (absence) or firing event payload, and the catalog
    /// entry: what webhook and Kafka consumers get besides the text.
    pub event: Value,
    pub entry: Option<Value>,
    /// Marketing emails: the `List-Unsubscribe` URL, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe_url: Option<String>,
    /// Deferred by quiet hours: not sent before this wall-clock time (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeInfo {
    pub key: Vec<String>,
    pub start: Millis,
    pub deadline: Option<Millis>,
    pub partition: i32,
}

impl Notification {
    /// The JSON that webhook and Kafka channels carry: a Standard Webhooks
    /// style envelope (`type`, `timestamp`, `data`). `timestamp` is the
    /// episode time, so the body is the same on every attempt.
    pub fn to_json(&self) -> Value {
        json!({
            "type": "forewarn.notification",
            "timestamp": format_time(self.episode.deadline.unwrap_or(self.episode.start)),
            "data": {
                "id": self.id,
                "rule": self.rule_id,
                "class": self.class,
                "channel": self.channel,
                "customer": { "id": self.customer, "email": self.recipient },
                "subject": self.message.subject,
                "text": self.message.text,
                "html": self.message.html,
                "episode": {
                    "key": self.episode.key,
                    "start": format_time(self.episode.start),
                    "deadline": self.episode.deadline.map(format_time),
                },
                "event": self.event,
                "entry": self.entry,
            }
        })
    }
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

/// The template context of SPEC section 5. `customer` is the event's own
/// `customer` object (if any) overlaid with the customer's profile from the
/// profiles topic, plus `id` and the resolved `email`.
pub fn template_context(firing: &Firing, email: Option<&str>, profile: Option<&Value>) -> Value {
    let payload = firing.event.payload();
    let mut customer = serde_json::Map::new();
    if let Some(Value::Object(obj)) = payload.get("customer") {
        customer.extend(obj.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if let Some(Value::Object(obj)) = profile {
        customer.extend(obj.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    customer.insert(
        "id".into(),
        Value::String(firing.event.customer().to_owned()),
    );
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

/// Where compose finds the customer: their profile (if the profiles topic
/// has one) and the paths of the `[customers]` section.
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    pub profile: Option<&'a Value>,
    pub email: &'a FieldPath,
    /// `customers.unsubscribe_url`, a template; used for marketing emails.
    pub unsubscribe_url: Option<&'a str>,
}

impl<'a> Recipient<'a> {
    /// Only an address path: no profile, no unsubscribe link.
    pub fn from_event(email: &'a FieldPath) -> Recipient<'a> {
        Recipient {
            profile: None,
            email,
            unsubscribe_url: None,
        }
    }
}

/// Resolves the recipient (profile first, then the event) and renders the
/// rule's template. `needs_address`: the rule's channel is an email
/// channel, so no address means no message.
pub fn compose(
    firing: &Firing,
    templates: &Templates,
    to: &Recipient<'_>,
    needs_address: bool,
) -> Result<Notification, ComposeError> {
    let view = crate::policy::CustomerView {
        id: firing.event.customer(),
        profile: to.profile,
        event: firing.event.payload(),
    };
    let address = view
        .text(to.email)
        .filter(|a| a.parse::<lettre::Address>().is_ok());
    if needs_address && address.is_none() {
        return Err(ComposeError::NoAddress(to.email.to_string()));
    }
    let ctx = template_context(firing, address, to.profile);
    let message = templates.render(&firing.rule.notify.template, &ctx)?;
    let unsubscribe_url = match (firing.rule.class, to.unsubscribe_url) {
        (Class::Marketing, Some(t)) => Some(template::render_line(t, &ctx)?),
        _ => None,
    };
    Ok(Notification {
        id: firing.notification_id.clone(),
        rule_id: firing.rule.id.clone(),
        channel: firing.rule.notify.channel.clone(),
        class: firing.rule.class,
        customer: firing.event.customer().to_owned(),
        recipient: address.map(str::to_string),
        message,
        episode: EpisodeInfo {
            key: firing.key.clone(),
            start: firing.episode_start,
            deadline: firing.deadline,
            partition: firing.partition,
        },
        event: firing.event.payload().clone(),
        entry: firing.entry.as_ref().map(|e| e.fields.clone()),
        unsubscribe_url,
        not_before: None,
    })
}
