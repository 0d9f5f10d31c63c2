//! Channels are dumb: each one sends a notification and classifies its
//! failure as transient (worth retrying, perhaps after a server-given
//! delay) or permanent. Retries, rate limits, dead letters and metrics are
//! the dispatcher's job (`notify::dispatcher`).

pub mod file;
pub mod kafka;
pub mod smtp;
pub mod webhook;

use std::time::Duration;

use crate::config::{ChannelConfig, ChannelKind};

use super::Notification;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Timeouts, refused connections, SMTP 4xx, HTTP 5xx and 429: try again later.
    Transient,
    /// SMTP 5xx, HTTP 4xx, a message that cannot be built: retrying will not help.
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ChannelError {
    pub retry: Retry,
    pub message: String,
    /// The server asked to wait this long (HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl ChannelError {
    /// `message` may quote a server's reply; addresses in it are masked
    /// (it reaches logs and dead letters).
    pub fn transient(message: impl Into<String>) -> Self {
        ChannelError {
            retry: Retry::Transient,
            message: crate::redact::addresses(&message.into()),
            retry_after: None,
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        ChannelError {
            retry: Retry::Permanent,
            message: crate::redact::addresses(&message.into()),
            retry_after: None,
        }
    }
}

/// Every channel kind. Enum dispatch keeps channels plain structs with an
/// `async fn send`, and makes the list of kinds one place to read.
pub enum Channel {
    Smtp(smtp::SmtpChannel),
    File(file::FileChannel),
    Webhook(webhook::WebhookChannel),
    Kafka(kafka::KafkaChannel),
}

impl Channel {
    pub fn build(cfg: &ChannelConfig) -> Result<Channel, String> {
        Ok(match &cfg.kind {
            ChannelKind::Smtp(c) => Channel::Smtp(smtp::SmtpChannel::new(c)?),
            ChannelKind::File(c) => Channel::File(file::FileChannel::new(c)?),
            ChannelKind::Webhook(c) => Channel::Webhook(webhook::WebhookChannel::new(c)?),
            ChannelKind::Kafka(c) => Channel::Kafka(kafka::KafkaChannel::new(c)?),
        })
    }

    pub async fn send(&self, n: &Notification) -> Result<(), ChannelError> {
        match self {
            Channel::Smtp(c) => c.send(n).await,
            Channel::File(c) => c.send(n).await,
            Channel::Webhook(c) => c.send(n).await,
            Channel::Kafka(c) => c.send(n).await,
        }
    }
}

/// What the channel configured as `cfg` would put on the wire for `n`,
/// for `forewarn render`: the RFC 5322 message, the signed HTTP request,
/// or the Kafka record. Connects to nothing.
pub fn preview(cfg: &ChannelConfig, n: &Notification) -> Result<String, ChannelError> {
    match &cfg.kind {
        ChannelKind::Smtp(c) => email_preview(n, &c.from),
        ChannelKind::File(c) => email_preview(n, &c.from),
        ChannelKind::Webhook(c) => webhook::WebhookChannel::new(c)
            .map_err(ChannelError::permanent)?
            .preview(n),
        ChannelKind::Kafka(c) => kafka::preview(&c.topic, n),
    }
}

/// The RFC 5322 message, as the smtp and file channels send it.
pub fn email_preview(
    n: &Notification,
    from: &lettre::message::Mailbox,
) -> Result<String, ChannelError> {
    let bytes = super::email::build(n, from)?.formatted();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
