//! From an engine decision to a notification ready for a channel, or to
//! the outcome that stops it. Shared by the daemon and `forewarn replay`,
//! so both decide the same on the same events.

use crate::engine::{Decision, Outcome};
use crate::event::FieldPath;
use crate::notify::template::Templates;
use crate::notify::{compose, Notification};
use crate::rules::Mode;

#[derive(Debug)]
pub enum Prepared {
    /// Hand this to the channel.
    Send(Notification),
    /// Decided, rendered, and not sent (shadow mode).
    Shadow(Notification),
    /// Not sent: the outcome says why (`cooldown`, `duplicate`, `stale`,
    /// `no_address`, `render_failed`), with details for the log.
    /// (`resolved` and `dead_letter` are decided later, by the dispatcher.)
    Skip {
        outcome: &'static str,
        detail: Option<String>,
    },
}

impl Prepared {
    pub fn outcome(&self) -> &'static str {
        match self {
            Prepared::Send(_) => "sent",
            Prepared::Shadow(_) => "shadow",
            Prepared::Skip { outcome, .. } => outcome,
        }
    }
}

/// `needs_address`: the rule's channel delivers email, so an event
/// without a usable address yields `no_address`.
pub fn prepare(
    decision: &Decision,
    templates: &Templates,
    email: &FieldPath,
    needs_address: bool,
) -> Prepared {
    if decision.outcome != Outcome::Fire {
        return Prepared::Skip {
            outcome: decision.outcome.as_str(),
            detail: None,
        };
    }
    match compose(&decision.firing, templates, email, needs_address) {
        Err(e) => Prepared::Skip {
            outcome: e.outcome(),
            detail: Some(e.to_string()),
        },
        Ok(n) if decision.firing.rule.mode == Mode::Shadow => Prepared::Shadow(n),
        Ok(n) => Prepared::Send(n),
    }
}
