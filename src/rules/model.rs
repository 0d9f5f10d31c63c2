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

use super::catalog::Catalog;
use super::expr::Expr;
use crate::event::{Event, FieldPath, Millis};

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
    pub holdout_percent: Option<Spanned<Number>>,
    pub notify: Spanned<RawNotify>,
}

/// A TOML number, integer or float (`10` and `10.0` both mean ten).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Number {
    Integer(i64),
    Float(f64),
}

impl Number {
    pub fn value(self) -> f64 {
        match self {
            Number::Integer(i) => i as f64,
            Number::Float(f) => f,
        }
    }
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

/// How a rule finds the values that tie trigger, until and cancel events together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyField {
    /// The configured customer field of the event (`[events] customer`).
    Customer,
    /// A dotted path into the event payload.
    Path(FieldPath),
}

impl KeyField {
    pub fn value(&self, event: &Event) -> Option<String> {
        match self {
            KeyField::Customer => Some(event.customer().to_owned()),
            KeyField::Path(p) => event.text(p).map(std::borrow::Cow::into_owned),
        }
    }
}

/// One element of `once_per`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OncePerField {
    /// `entry.<field>` of the catalog entry.
    Entry(String),
    /// A field of the firing event (the trigger, for absence rules).
    Event(KeyField),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRepeat {
    /// A new trigger restarts the open episode with a new deadline.
    Restart,
    /// A new trigger while an episode is open is ignored.
    Ignore,
}

#[derive(Debug, Clone)]
pub enum DeadlineSpec {
    /// Trigger time + this.
    Within(Millis),
    /// The time in this field of the trigger + grace.
    Field { path: FieldPath, grace: Millis },
}

#[derive(Debug, Clone)]
pub struct Absence {
    pub until: Option<Condition>,
    pub cancel_on: Vec<Condition>,
    pub deadline: DeadlineSpec,
    pub on_repeat: OnRepeat,
    /// A firing whose deadline is older than this by the wall clock is not sent.
    pub stale_after: Option<Millis>,
}

#[derive(Debug, Clone)]
pub struct Threshold {
    pub count: usize,
    pub within: Millis,
}

#[derive(Debug, Clone)]
pub enum RuleKind {
    /// "X happened": every matching trigger event fires (once per matching
    /// catalog entry when a catalog is joined).
    Match { catalog: Option<Arc<Catalog>> },
    /// "X happened and Y did not follow in time".
    Absence(Absence),
    /// "X happened N times within W".
    Threshold(Threshold),
}

impl RuleKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            RuleKind::Match { .. } => "match",
            RuleKind::Absence(_) => "absence",
            RuleKind::Threshold(_) => "threshold",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// Values that identify an episode; default: the customer.
    pub key: Vec<KeyField>,
    pub cooldown: Option<Millis>,
    pub once_per: Vec<OncePerField>,
    /// Trigger fields the rule uses after the trigger (template,
    /// until/cancel conditions); `None`: the whole trigger. Absence
    /// episodes store only these (plus key, deadline and address fields).
    pub trigger_fields: Option<Vec<FieldPath>>,
    pub enabled: bool,
    pub mode: Mode,
    /// The share of customers (0–100) kept as a control group: their
    /// decisions are recorded as `holdout` and nothing is sent.
    pub holdout_percent: Option<f64>,
    pub notify: Notify,
    pub origin: Origin,
}

impl Rule {
    /// The key values of an event, or `None` when a key field is missing.
    pub fn key_values(&self, event: &Event) -> Option<Vec<String>> {
        self.key.iter().map(|k| k.value(event)).collect()
    }
}

/// A validated set of rules, ready for the engine. Rules are addressed by
/// their index in `rules`.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Arc<Rule>>,
    /// Enabled rules by trigger event type: an event only meets the rules that name it.
    by_trigger: TypeMap<Vec<u32>>,
    /// Enabled absence rules by until / cancel_on event type.
    by_closer: TypeMap<Vec<u32>>,
}

/// Maps keyed by event type, looked up several times for every event:
/// hashed with xxh3 rather than std's SipHash (event types are the
/// company's own names, not input an attacker picks per record).
pub type TypeMap<V> = HashMap<String, V, std::hash::BuildHasherDefault<TypeHasher>>;

/// The hasher of [`TypeMap`]: xxh3 over the key's bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct TypeHasher(u64);

impl std::hash::Hasher for TypeHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = self.0.rotate_left(5) ^ xxhash_rust::xxh3::xxh3_64(bytes);
    }

    fn write_u8(&mut self, n: u8) {
        // `str`'s end marker: the same for every key.
        self.0 ^= u64::from(n);
    }
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> RuleSet {
        let rules: Vec<Arc<Rule>> = rules.into_iter().map(Arc::new).collect();
        let mut by_trigger: TypeMap<Vec<u32>> = TypeMap::default();
        let mut by_closer: TypeMap<Vec<u32>> = TypeMap::default();
        for (i, r) in rules.iter().enumerate().filter(|(_, r)| r.enabled) {
            let i = i as u32;
            by_trigger
                .entry(r.trigger.event.clone())
                .or_default()
                .push(i);
            if let RuleKind::Absence(a) = &r.kind {
                let mut types: Vec<&str> = a
                    .until
                    .iter()
                    .chain(&a.cancel_on)
                    .map(|c| c.event.as_str())
                    .collect();
                types.sort_unstable();
                types.dedup();
                for t in types {
                    by_closer.entry(t.to_string()).or_default().push(i);
                }
            }
        }
        RuleSet {
            rules,
            by_trigger,
            by_closer,
        }
    }

    /// Indexes of enabled rules whose trigger names this event type.
    pub fn triggered_by(&self, event_type: &str) -> &[u32] {
        self.by_trigger.get(event_type).map_or(&[], Vec::as_slice)
    }

    /// Indexes of enabled absence rules that this event type may close.
    pub fn closed_by(&self, event_type: &str) -> &[u32] {
        self.by_closer.get(event_type).map_or(&[], Vec::as_slice)
    }

    pub fn rule(&self, idx: u32) -> &Arc<Rule> {
        &self.rules[idx as usize]
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
