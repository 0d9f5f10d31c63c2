//! The rule file shape (raw, as written) and the validated rule (typed).
//!
//! The raw structs know every field of SPEC section 2 so that a misspelt key
//! is reported as unknown, and a field this version cannot act on yet is
//! reported as such instead of being silently ignored.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::expr::Expr;

// ------------------------------------------------------------------ raw

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRuleFile {
    #[serde(default)]
    pub rule: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub id: Spanned<String>,
    pub description: Option<String>,
    pub kind: Spanned<String>,
    pub class: Option<Spanned<String>>,
    pub trigger: Spanned<RawCondition>,
    pub until: Option<Spanned<RawCondition>>,
    pub cancel_on: Option<Spanned<Vec<RawCondition>>>,
    pub key: Option<Spanned<Vec<String>>>,
    pub within: Option<Spanned<String>>,
    pub deadline: Option<Spanned<String>>,
    pub grace: Option<Spanned<String>>,
    pub on_repeat: Option<Spanned<String>>,
    pub stale_after: Option<Spanned<String>>,
    pub cooldown: Option<Spanned<String>>,
    pub once_per: Option<Spanned<Vec<String>>>,
    pub count: Option<Spanned<i64>>,
    pub catalog: Option<Spanned<String>>,
    pub enabled: Option<bool>,
    pub mode: Option<Spanned<String>>,
    pub holdout_percent: Option<Spanned<f64>>,
    pub notify: Spanned<RawNotify>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCondition {
    pub event: Spanned<String>,
    #[serde(rename = "if")]
    pub when: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    pub channel: Spanned<String>,
    pub template: Spanned<String>,
}

// ------------------------------------------------------------------ typed

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// "X happened": every matching trigger event fires.
    Match,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Match => "match",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Marketing,
    Transactional,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Marketing => "marketing",
            Class::Transactional => "transactional",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decide and send.
    Live,
    /// Decide and record, send nothing.
    Shadow,
}

#[derive(Debug, Clone)]
pub struct Condition {
    pub event: String,
    pub when: Option<Expr>,
}

#[derive(Debug, Clone)]
pub struct Notify {
    pub channel: String,
    pub template: String,
}

/// Where a rule was written, for messages that point back at it.
#[derive(Debug, Clone)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub description: String,
    pub kind: RuleKind,
    pub class: Class,
    pub trigger: Condition,
    pub enabled: bool,
    pub mode: Mode,
    pub notify: Notify,
    pub origin: Origin,
}

/// A validated set of rules, ready for the engine.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Arc<Rule>>,
    /// Enabled rules by trigger event type: an event only meets the rules that name it.
    by_trigger: HashMap<String, Vec<Arc<Rule>>>,
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> RuleSet {
        let rules: Vec<Arc<Rule>> = rules.into_iter().map(Arc::new).collect();
        let mut by_trigger: HashMap<String, Vec<Arc<Rule>>> = HashMap::new();
        for r in rules.iter().filter(|r| r.enabled) {
            by_trigger
                .entry(r.trigger.event.clone())
                .or_default()
                .push(Arc::clone(r));
        }
        RuleSet { rules, by_trigger }
    }

    /// Enabled rules whose trigger names this event type.
    pub fn triggered_by(&self, event_type: &str) -> &[Arc<Rule>] {
        self.by_trigger.get(event_type).map_or(&[], Vec::as_slice)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Rule>> {
        self.rules.iter().find(|r| r.id == id)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}
