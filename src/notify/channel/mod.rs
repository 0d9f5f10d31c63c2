//! Channels are dumb: each one sends a notification and classifies its
//! failure as transient (worth retrying) or permanent. Retries, dead letters
//! and metrics are the delivery stage's job (`notify::deliver`).

pub mod file;
pub mod smtp;

use crate::config::{ChannelConfig, ChannelKind};

use super::Notification;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Timeouts, refused connections, SMTP 4xx: try again later.
    Transient,
    /// SMTP 5xx, a message that cannot be built: retrying will not help.
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ChannelError {
    pub retry: Retry,
    pub message: String,
}

impl ChannelError {
    pub fn transient(message: impl Into<String>) -> Self {
        ChannelError {
            retry: Retry::Transient,
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        ChannelError {
            retry: Retry::Permanent,
            message: message.into(),
        }
    }
}

/// Every channel kind. Enum dispatch keeps channels plain structs with an
/// `async fn send`, and makes the list of kinds one place to read.
pub enum Channel {
    Smtp(smtp::SmtpChannel),
    File(file::FileChannel),
}

impl Channel {
    pub fn build(cfg: &ChannelConfig) -> Result<Channel, String> {
        Ok(match &cfg.kind {
            ChannelKind::Smtp(c) => Channel::Smtp(smtp::SmtpChannel::new(c)?),
            ChannelKind::File(c) => Channel::File(file::FileChannel::new(c)?),
        })
    }

    pub async fn send(&self, n: &Notification) -> Result<(), ChannelError> {
        match self {
            Channel::Smtp(c) => c.send(n).await,
            Channel::File(c) => c.send(n).await,
        }
    }
}
