//! `forewarn report`: does a rule help? It compares how often *notified*
//! customers and *holdout* customers (the rule's control group, see
//! `holdout_percent`) went on to do an outcome event (e.g. `order_placed`)
//! within a window after the rule's decision.
//!
//! The pure part, [`Measure`] and [`compare`], takes decision records and
//! events and returns figures: no I/O, so it is tested without a broker.
//! The edges are thin: the decision log comes from the state store, or from
//! the running daemon's admin API while it holds the store's lock; events
//! come from a JSONL file or from the configured Kafka topics, read once up
//! to the end they had at start, with a throwaway consumer that commits
//! nothing.
//!
//! Cohorts: a customer is *notified* when the rule has a `sent` record for
//! them (a message reached the channel; `fired` or `deferred` alone may
//! still end `resolved` or as a dead letter, and then nothing reached the
//! customer), and *held out* when it has a `holdout` record. Each customer
//! counts once, at their first exposure (earliest firing time); one with
//! both (the rule's `holdout_percent` changed) counts in the group of the
//! earlier one. The window is measured from the firing's event time in
//! both groups, so quiet-hour deferrals do not shift it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::{KafkaConfig, Secret};
use crate::decisions::DecisionRecord;
use crate::event::{format_time, EventSchema, Millis};
use crate::state::{Store, StoreError};

/// Below this many customers in a group, the normal approximation (and any
/// verdict) is not to be trusted.
pub const MIN_GROUP: u64 = 30;
/// The effect size the sample-size estimate is for: 2 percentage points.
pub const TARGET_EFFECT: f64 = 0.02;
/// Two-sided 5 % and 80 % power: the usual defaults for an A/B test.
const Z_975: f64 = 1.959_963_984_540_054;
const Z_80: f64 = 0.841_621_233_572_914_3;

// ---------------------------------------------------------------- cohorts

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Notified,
    Holdout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exposure {
    pub group: Group,
    /// Event time of the firing that put the customer in the group.
    pub at: Millis,
}

/// Who is in which group, from one rule's decision records.
#[derive(Debug, Default, Clone)]
pub struct Cohorts {
    pub exposures: HashMap<String, Exposure>,
    /// Customers with both a `sent` and a `holdout` record.
    pub in_both: u64,
    /// Customers the rule decided to message (`fired`/`deferred`) who have
    /// no `sent` record: dropped by the send-time guard, dead-lettered, or
    /// still waiting. Not in either group.
    pub not_reached: u64,
    /// `shadow` records: the rule was (or is) in shadow mode.
    pub shadow: u64,
}

impl Cohorts {
    pub fn from_records(records: &[DecisionRecord]) -> Cohorts {
        // A `sent` record carries the episode's time, which for threshold
        // rules is the window start; the decide-time record of the same
        // notification has the firing's own time, as `holdout` records do.
        let decided: HashMap<&str, Millis> = records
            .iter()
            .filter(|r| matches!(r.outcome.as_str(), "fired" | "deferred"))
            .map(|r| (r.notification_id.as_str(), r.fired_at))
            .collect();
        let mut notified: HashMap<&str, Millis> = HashMap::new();
        let mut holdout: HashMap<&str, Millis> = HashMap::new();
        let mut to_send: HashSet<&str> = HashSet::new();
        let mut shadow = 0;
        fn first<'a>(m: &mut HashMap<&'a str, Millis>, customer: &'a str, at: Millis) {
            let e = m.entry(customer).or_insert(at);
            *e = (*e).min(at);
        }
        for r in records {
            let customer = r.customer.as_str();
            match r.outcome.as_str() {
                "sent" => first(
                    &mut notified,
                    customer,
                    decided
                        .get(r.notification_id.as_str())
                        .copied()
                        .unwrap_or(r.fired_at),
                ),
                "holdout" => first(&mut holdout, customer, r.fired_at),
                "fired" | "deferred" => {
                    to_send.insert(r.customer.as_str());
                }
                "shadow" => shadow += 1,
                _ => {}
            }
        }
        let not_reached = to_send
            .iter()
            .filter(|c| !notified.contains_key(*c) && !holdout.contains_key(*c))
            .count() as u64;
        let mut exposures = HashMap::with_capacity(notified.len() + holdout.len());
        let mut in_both = 0;
        for (c, at) in &holdout {
            exposures.insert(
                c.to_string(),
                Exposure {
                    group: Group::Holdout,
                    at: *at,
                },
            );
        }
        for (c, at) in notified {
            if let Some(h) = exposures.get(c) {
                in_both += 1;
                // The earlier exposure wins; a tie goes to the message,
                // which did reach the customer.
                if h.at < at {
                    continue;
                }
            }
            exposures.insert(
                c.to_string(),
                Exposure {
                    group: Group::Notified,
                    at,
                },
            );
        }
        Cohorts {
            exposures,
            in_both,
            not_reached,
            shadow,
        }
    }

    pub fn size(&self, group: Group) -> u64 {
        self.exposures.values().filter(|e| e.group == group).count() as u64
    }
}

// ---------------------------------------------------------------- measuring

/// Counts conversions as events stream past. Feed it every event with
/// [`Measure::observe`] (and [`Measure::invalid`] for undecodable ones),
/// then [`Measure::finish`].
pub struct Measure {
    rule: String,
    outcome_event: String,
    within: Duration,
    within_ms: Millis,
    cohorts: Cohorts,
    converted: HashSet<String>,
    events: u64,
    outcome_events: u64,
    invalid: u64,
    invalid_examples: Vec<String>,
    last_event: Option<Millis>,
}

/// How many invalid-event reasons a report keeps to show.
const INVALID_EXAMPLES: usize = 10;

impl Measure {
    /// `Err(NoDecisions)` when the log holds nothing for the rule: most
    /// likely a wrong id, which deserves a clear message, not empty figures.
    pub fn new(
        rule: &str,
        records: &[DecisionRecord],
        outcome_event: &str,
        within: Duration,
    ) -> Result<Measure, ReportError> {
        if records.is_empty() {
            return Err(ReportError::NoDecisions {
                rule: rule.to_string(),
            });
        }
        Ok(Measure {
            rule: rule.to_string(),
            outcome_event: outcome_event.to_string(),
            within,
            within_ms: Millis::try_from(within.as_millis()).unwrap_or(Millis::MAX),
            cohorts: Cohorts::from_records(records),
            converted: HashSet::new(),
            events: 0,
            outcome_events: 0,
            invalid: 0,
            invalid_examples: Vec::new(),
            last_event: None,
        })
    }

    /// The earliest exposure in either group: events before it cannot count.
    pub fn first_exposure(&self) -> Option<Millis> {
        self.cohorts.exposures.values().map(|e| e.at).min()
    }

    pub fn observe(&mut self, kind: &str, customer: &str, time: Millis) {
        self.events += 1;
        self.last_event = Some(self.last_event.map_or(time, |t| t.max(time)));
        if kind != self.outcome_event {
            return;
        }
        self.outcome_events += 1;
        if let Some(e) = self.cohorts.exposures.get(customer) {
            // Both edges inclusive: an order in the same millisecond as the
            // decision, or exactly `within` after it, counts.
            if e.at <= time && time <= e.at.saturating_add(self.within_ms) {
                self.converted.insert(customer.to_string());
            }
        }
    }

    /// An event that could not be decoded; `what` says where and why.
    pub fn invalid(&mut self, what: String) {
        self.invalid += 1;
        if self.invalid_examples.len() < INVALID_EXAMPLES {
            self.invalid_examples.push(what);
        }
    }

    /// The figures. `end`: up to when the events reach (now, for a topic
    /// read to its end); `None`: the latest event time seen.
    pub fn finish(self, end: Option<Millis>) -> Report {
        let end = end.or(self.last_event);
        let mut tally = BTreeMap::<Group, (u64, u64)>::new();
        let mut still_open = 0;
        let (mut first, mut last) = (None::<Millis>, None::<Millis>);
        for (customer, e) in &self.cohorts.exposures {
            let t = tally.entry(e.group).or_default();
            t.0 += 1;
            if self.converted.contains(customer) {
                t.1 += 1;
            }
            if end.is_none_or(|end| e.at.saturating_add(self.within_ms) > end) {
                still_open += 1;
            }
            first = Some(first.map_or(e.at, |f| f.min(e.at)));
            last = Some(last.map_or(e.at, |l| l.max(e.at)));
        }
        let group = |g| {
            let (customers, converted) = tally.get(&g).copied().unwrap_or_default();
            GroupFigures {
                customers,
                converted,
                rate: (customers > 0).then(|| converted as f64 / customers as f64),
            }
        };
        let (notified, holdout) = (group(Group::Notified), group(Group::Holdout));
        let comparison = compare(
            notified.converted,
            notified.customers,
            holdout.converted,
            holdout.customers,
        );
        let needed = holdout
            .rate
            .and_then(|base| needed_per_group(base, TARGET_EFFECT));
        let mut report = Report {
            rule: self.rule,
            outcome_event: self.outcome_event,
            within: humantime::format_duration(self.within).to_string(),
            within_ms: self.within_ms,
            notified,
            holdout,
            comparison,
            needed_per_group_for_2_points: needed,
            first_decision: first.map(format_time),
            last_decision: last.map(format_time),
            in_both: self.cohorts.in_both,
            not_reached: self.cohorts.not_reached,
            shadow_decisions: self.cohorts.shadow,
            still_open,
            events: EventCounts {
                read: self.events,
                outcome_events: self.outcome_events,
                invalid: self.invalid,
                invalid_examples: self.invalid_examples,
            },
            verdict: String::new(),
            warnings: Vec::new(),
            notes: Vec::new(),
            decisions_from: String::new(),
            events_from: String::new(),
        };
        report.judge();
        report
    }
}

/// Everything `measure` needs in one call (tests, and callers that have
/// the events at hand).
pub fn measure(
    rule: &str,
    records: &[DecisionRecord],
    outcome_event: &str,
    within: Duration,
    events: impl IntoIterator<Item = crate::event::Event>,
) -> Result<Report, ReportError> {
    let mut m = Measure::new(rule, records, outcome_event, within)?;
    for e in events {
        m.observe(e.kind(), e.customer(), e.time);
    }
    Ok(m.finish(None))
}

// ---------------------------------------------------------------- statistics

/// The comparison of two proportions, notified (1) against holdout (2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Comparison {
    /// p1 − p2, in percentage points.
    pub difference_points: f64,
    /// 95 % confidence interval of the difference (normal approximation,
    /// unpooled standard error), in percentage points.
    pub ci95_low_points: f64,
    pub ci95_high_points: f64,
    /// (p1 − p2) / p2; `None` when no holdout customer converted.
    pub relative_lift: Option<f64>,
    /// Two-proportion z-test with the pooled standard error.
    pub z: f64,
    /// Two-sided.
    pub p_value: f64,
}

/// `None` when a group is empty: there is nothing to compare.
pub fn compare(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<Comparison> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let (p1, p2) = (x1 as f64 / n1f, x2 as f64 / n2f);
    let diff = p1 - p2;
    let se = (p1 * (1.0 - p1) / n1f + p2 * (1.0 - p2) / n2f).sqrt();
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    let se0 = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    // Both groups at 0 % or both at 100 %: no variance, and no difference.
    let z = if se0 > 0.0 { diff / se0 } else { 0.0 };
    Some(Comparison {
        difference_points: diff * 100.0,
        ci95_low_points: (diff - Z_975 * se) * 100.0,
        ci95_high_points: (diff + Z_975 * se) * 100.0,
        relative_lift: (p2 > 0.0).then(|| diff / p2),
        z,
        p_value: erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0),
    })
}

/// Customers per group to detect `effect` (absolute, e.g. 0.02) on a
/// `baseline` rate, two-sided 5 %, 80 % power.
pub fn needed_per_group(baseline: f64, effect: f64) -> Option<u64> {
    if !(0.0..=1.0).contains(&baseline) || effect <= 0.0 || effect >= 1.0 {
        return None;
    }
    let p2 = baseline;
    // Near 100 % there is no room above: look for a drop instead.
    let p1 = if p2 + effect <= 1.0 {
        p2 + effect
    } else {
        p2 - effect
    };
    let pbar = (p1 + p2) / 2.0;
    let a = Z_975 * (2.0 * pbar * (1.0 - pbar)).sqrt();
    let b = Z_80 * (p1 * (1.0 - p1) + p2 * (1.0 - p2)).sqrt();
    Some(((a + b).powi(2) / (effect * effect)).ceil() as u64)
}

/// The standard normal CDF.
pub fn normal_cdf(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 - 0.5 * erfc(z / std::f64::consts::SQRT_2)
    } else {
        0.5 * erfc(-z / std::f64::consts::SQRT_2)
    }
}

/// erf, Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
pub fn erf(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 - erfc(x)
    } else {
        erfc(-x) - 1.0
    }
}

/// 1 − erf(x) for x ≥ 0, computed directly so that small tail
/// probabilities (p-values) keep their digits; for x < 0, 2 − erfc(−x).
fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    const P: f64 = 0.327_591_1;
    const A: [f64; 5] = [
        0.254_829_592,
        -0.284_496_736,
        1.421_413_741,
        -1.453_152_027,
        1.061_405_429,
    ];
    let t = 1.0 / (1.0 + P * x);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    poly * (-x * x).exp()
}

// ---------------------------------------------------------------- the report

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GroupFigures {
    pub customers: u64,
    pub converted: u64,
    /// converted / customers; `None` for an empty group.
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventCounts {
    pub read: u64,
    /// Of those, events of the outcome type.
    pub outcome_events: u64,
    pub invalid: u64,
    /// The first few, with where and why.
    pub invalid_examples: Vec<String>,
}

/// What `forewarn report` prints (as text, or as JSON with `--json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub rule: String,
    pub outcome_event: String,
    pub within: String,
    pub within_ms: Millis,
    pub notified: GroupFigures,
    pub holdout: GroupFigures,
    /// `None` when a group is empty.
    pub comparison: Option<Comparison>,
    /// Customers per group to detect a 2-point effect on the holdout's rate.
    pub needed_per_group_for_2_points: Option<u64>,
    pub first_decision: Option<String>,
    pub last_decision: Option<String>,
    pub in_both: u64,
    pub not_reached: u64,
    pub shadow_decisions: u64,
    /// Customers whose window reaches past the last event read: they may
    /// still convert.
    pub still_open: u64,
    pub events: EventCounts,
    /// One plain sentence.
    pub verdict: String,
    /// Reasons not to trust the figures (yet).
    pub warnings: Vec<String>,
    /// How the groups were formed, for the careful reader.
    pub notes: Vec<String>,
    pub decisions_from: String,
    pub events_from: String,
}

fn points(x: f64) -> String {
    format!("{x:.1}")
}

fn p_text(p: f64) -> String {
    if p < 0.001 {
        "p < 0.001".into()
    } else if p < 0.1 {
        // Two significant digits: p = 0.022, p = 0.006, p = 0.41.
        format!("p = {p:.3}")
    } else {
        format!("p = {p:.2}")
    }
}

fn rate_text(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
}

impl Report {
    /// Fills in the verdict, warnings and notes from the figures.
    fn judge(&mut self) {
        let (n1, n2) = (self.notified.customers, self.holdout.customers);
        let rule = &self.rule;
        if self.shadow_decisions > 0 && n1 == 0 {
            self.warnings.push(format!(
                "rule {rule} made {} decisions in shadow mode, where nothing is sent: switch it to mode = \"live\" (with a holdout_percent) to measure it",
                self.shadow_decisions
            ));
        }
        if n2 == 0 {
            self.warnings.push(format!(
                "no customer of rule {rule} is in a holdout group, so there is nothing to compare with: the rule has no holdout_percent (add e.g. holdout_percent = 10 to measure it), or none of its decisions fell in the control group yet"
            ));
        }
        if n1 == 0 {
            self.warnings.push(format!(
                "no customer of rule {rule} has been sent a message yet (no `sent` decision), so there is no notified group"
            ));
        }
        for (name, g) in [("notified", &self.notified), ("holdout", &self.holdout)] {
            if g.customers > 0 && g.customers < MIN_GROUP {
                self.warnings.push(format!(
                    "the {name} group has only {} customer{} (fewer than {MIN_GROUP}): too few to judge; wait for more decisions",
                    g.customers,
                    if g.customers == 1 { "" } else { "s" }
                ));
            }
        }
        let (x1, x2) = (self.notified.converted, self.holdout.converted);
        if n1 >= MIN_GROUP && n2 >= MIN_GROUP && (x1.min(n1 - x1) < 5 || x2.min(n2 - x2) < 5) {
            self.warnings.push(
                "a group has fewer than 5 conversions (or non-conversions): the confidence interval and p-value are rough".into(),
            );
        }
        if self.events.read == 0 {
            self.warnings.push(
                "no events were read: check the --events file, or that the configured topics hold events from after the rule's decisions".into(),
            );
        } else if self.events.outcome_events == 0 {
            self.warnings.push(format!(
                "no `{}` event was read at all: check the event type (--outcome-event)",
                self.outcome_event
            ));
        }
        let needed = self.needed_per_group_for_2_points.map(|n| {
            format!("about {n} customers per group would be needed to detect a 2-point effect")
        });
        self.verdict = match self.comparison {
            None => "no comparison: both a notified and a holdout group are needed".into(),
            Some(_) if n1 < MIN_GROUP || n2 < MIN_GROUP => format!(
                "too few customers to judge yet{}",
                needed.map(|n| format!(": {n}")).unwrap_or_default()
            ),
            Some(c) if c.p_value < 0.05 && c.difference_points > 0.0 => format!(
                "notified customers converted {} points more often (95% CI {} to {}, {}): the rule appears to help",
                points(c.difference_points),
                points(c.ci95_low_points),
                points(c.ci95_high_points),
                p_text(c.p_value)
            ),
            Some(c) if c.p_value < 0.05 => format!(
                "notified customers converted {} points less often (95% CI {} to {}, {}): the rule appears to hurt this outcome",
                points(-c.difference_points),
                points(-c.ci95_high_points),
                points(-c.ci95_low_points),
                p_text(c.p_value)
            ),
            Some(c) => {
                let more = match self.needed_per_group_for_2_points {
                    Some(n) if n <= n1.min(n2) => "; the groups are large enough to show a 2-point effect, so any effect is likely smaller than that".to_string(),
                    _ => needed.map(|n| format!("; {n}")).unwrap_or_default(),
                };
                format!("no clear difference yet ({}){more}", p_text(c.p_value))
            }
        };
        if self.in_both > 0 {
            self.notes.push(format!(
                "{} customer{} both notified and held out (the rule's holdout_percent changed?): each counts once, in the group of their earlier decision",
                self.in_both,
                if self.in_both == 1 { " was" } else { "s were" }
            ));
        }
        if self.not_reached > 0 {
            self.notes.push(format!(
                "{} customer{} decided to be messaged without a `sent` record (resolved by the send-time guard, dead-lettered, or still waiting): counted in neither group",
                self.not_reached,
                if self.not_reached == 1 { " was" } else { "s were" }
            ));
        }
        if self.still_open > 0 {
            self.notes.push(format!(
                "{} customer{} decided less than {} before the end of the events read: their window is still open, and they may yet convert",
                self.still_open,
                if self.still_open == 1 { " was" } else { "s were" },
                self.within
            ));
        }
    }

    /// The plain-text report.
    pub fn text(&self) -> String {
        let mut s = format!(
            "rule {}: `{}` within {} of the rule's decision\n",
            self.rule, self.outcome_event, self.within
        );
        if let (Some(a), Some(b)) = (&self.first_decision, &self.last_decision) {
            s.push_str(&format!("decisions from {a} to {b}"));
            if !self.decisions_from.is_empty() {
                s.push_str(&format!(" (from {})", self.decisions_from));
            }
            s.push('\n');
        }
        s.push_str(&format!(
            "events: {} read ({} `{}`), {} invalid{}\n\n",
            self.events.read,
            self.events.outcome_events,
            self.outcome_event,
            self.events.invalid,
            if self.events_from.is_empty() {
                String::new()
            } else {
                format!(", from {}", self.events_from)
            }
        ));
        s.push_str(&format!(
            "  {:<10} {:>10} {:>10} {:>8}\n",
            "", "customers", "converted", "rate"
        ));
        for (name, g) in [("notified", &self.notified), ("holdout", &self.holdout)] {
            s.push_str(&format!(
                "  {:<10} {:>10} {:>10} {:>8}\n",
                name,
                g.customers,
                g.converted,
                rate_text(g.rate)
            ));
        }
        s.push('\n');
        if let Some(c) = &self.comparison {
            s.push_str(&format!(
                "difference: {:+.1} points (95% CI {:+.1} to {:+.1}), relative lift {}, z = {:.2}, {}\n",
                c.difference_points,
                c.ci95_low_points,
                c.ci95_high_points,
                c.relative_lift
                    .map_or("-".into(), |l| format!("{:+.1}%", l * 100.0)),
                c.z,
                p_text(c.p_value)
            ));
        }
        s.push_str(&format!("verdict: {}\n", self.verdict));
        for w in &self.warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        for e in &self.events.invalid_examples {
            s.push_str(&format!("  invalid event: {e}\n"));
        }
        if self.events.invalid > self.events.invalid_examples.len() as u64 {
            s.push_str(&format!(
                "  … and {} more invalid events\n",
                self.events.invalid - self.events.invalid_examples.len() as u64
            ));
        }
        s
    }
}

// ---------------------------------------------------------------- the edges

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no decisions were recorded for rule {rule:?}: check the rule id (the `id` in its TOML file), or that it has fired within state.decision_log_retention")]
    NoDecisions { rule: String },
    #[error("no state store at {path}: pass --config with the daemon's config (its state.dir), or run where the daemon's ./data is")]
    NoStore { path: PathBuf },
    #[error("the state store {path} is in use by a running daemon: pass --config with its config, so the report can ask the daemon's admin API instead")]
    LockedWithoutConfig { path: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the daemon holds the state store, and its admin API at {url} did not answer: {error}; is admin.listen right?")]
    Admin { url: String, error: String },
    #[error("the daemon's admin API at {url} refused the request ({status}): {message}")]
    AdminRefused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("cannot read the events file {path}: {error}; check the --events path")]
    EventsFile { path: PathBuf, error: String },
    #[error("topic {topic:?} does not exist on {brokers}: check kafka.topics in the config, or pass --events FILE.jsonl")]
    MissingTopic { topic: String, brokers: String },
    #[error("cannot read the events from Kafka ({brokers}): {error}; check kafka.brokers and kafka.properties, or pass --events FILE.jsonl")]
    Kafka { brokers: String, error: String },
}

impl ReportError {
    /// 2 for what the user can fix in the command or config, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReportError::NoDecisions { .. }
            | ReportError::NoStore { .. }
            | ReportError::LockedWithoutConfig { .. }
            | ReportError::AdminRefused { .. }
            | ReportError::EventsFile { .. }
            | ReportError::MissingTopic { .. } => 2,
            ReportError::Store(_) | ReportError::Admin { .. } | ReportError::Kafka { .. } => 1,
        }
    }
}

/// The running daemon's admin API, for when it holds the store.
#[derive(Debug, Clone)]
pub struct AdminApi {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub enum EventSource {
    File(PathBuf),
    Kafka(KafkaConfig),
}

#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub rule: String,
    pub outcome_event: String,
    pub within: Duration,
    pub state_dir: PathBuf,
    /// `None` without a config: then a locked store is an error.
    pub admin: Option<AdminApi>,
    pub schema: EventSchema,
    pub events: EventSource,
}

/// What `forewarn report` runs: decisions, then events, then figures.
pub async fn run(opts: &ReportOptions) -> Result<Report, ReportError> {
    let (records, decisions_from) =
        load_decisions(&opts.state_dir, opts.admin.as_ref(), &opts.rule).await?;
    let mut m = Measure::new(&opts.rule, &records, &opts.outcome_event, opts.within)?;
    drop(records);
    let (m, end, events_from) = match &opts.events {
        EventSource::File(path) => {
            read_file(path, &opts.schema, &mut m)?;
            (m, None, path.display().to_string())
        }
        EventSource::Kafka(kafka) => {
            let (kafka, schema) = (kafka.clone(), opts.schema.clone());
            let from = format!("topics {:?} on {}", kafka.topics, kafka.brokers);
            let brokers = kafka.brokers.clone();
            // librdkafka's BaseConsumer blocks: off the async threads.
            let m = tokio::task::spawn_blocking(move || {
                read_kafka(&kafka, &schema, &mut m).map(|()| m)
            })
            .await
            .map_err(|e| ReportError::Kafka {
                brokers,
                error: e.to_string(),
            })??;
            // A topic read to its end reaches now.
            (m, Some(crate::event::now_millis()), from)
        }
    };
    let mut report = m.finish(end);
    report.decisions_from = decisions_from;
    report.events_from = events_from;
    Ok(report)
}

/// The rule's decision records, and where they came from.
pub async fn load_decisions(
    state_dir: &Path,
    admin: Option<&AdminApi>,
    rule: &str,
) -> Result<(Vec<DecisionRecord>, String), ReportError> {
    let file = state_dir.join(crate::state::FILE_NAME);
    // Store::open would create an empty store: a wrong directory would
    // then read as "no decisions" instead of saying what is wrong.
    if !file.exists() {
        return Err(ReportError::NoStore { path: file });
    }
    match Store::open(state_dir) {
        Ok(store) => {
            // The table exists once the daemon has run; creating it here
            // is what the daemon would do, and lets an empty log say so.
            crate::decisions::open(&store)?;
            let records = crate::decisions::for_rule(&store, rule)?;
            Ok((records, format!("the state store {}", file.display())))
        }
        Err(StoreError::Locked { path }) => match admin {
            None => Err(ReportError::LockedWithoutConfig { path }),
            Some(api) => {
                let url = format!("http://{}", api.listen);
                let records = fetch_decisions(&url, api.token.as_ref(), rule).await?;
                Ok((records, format!("the running daemon at {url}")))
            }
        },
        Err(e) => Err(e.into()),
    }
}

async fn fetch_decisions(
    base: &str,
    token: Option<&Secret>,
    rule: &str,
) -> Result<Vec<DecisionRecord>, ReportError> {
    use crate::dead_letters::{path_segment, Access, AccessError};
    let path = format!("/api/rules/{}/decisions", path_segment(rule));
    Access::call(base, token, &path, None::<&()>)
        .await
        .map_err(|e| match e {
            AccessError::NotFound(_) => ReportError::AdminRefused {
                url: base.to_string(),
                status: 404,
                message: "it has no /api/rules/{id}/decisions: the running daemon is an older forewarn; upgrade it, or stop it to read the store directly".into(),
            },
            AccessError::Refused {
                url,
                status,
                message,
            } => ReportError::AdminRefused {
                url,
                status,
                message,
            },
            AccessError::Admin { url, error } => ReportError::Admin { url, error },
            other => ReportError::Admin {
                url: base.to_string(),
                error: other.to_string(),
            },
        })
}

/// One JSON event per line; blank lines are skipped, invalid ones counted.
pub fn read_file(path: &Path, schema: &EventSchema, m: &mut Measure) -> Result<(), ReportError> {
    let fail = |e: std::io::Error| ReportError::EventsFile {
        path: path.to_path_buf(),
        error: e.to_string(),
    };
    let mut reader = crate::jsonl::open(path).map_err(|e| fail(e.error))?;
    let mut line = Vec::new();
    let mut n = 0usize;
    loop {
        line.clear();
        // Bytes, not String: a line of bad UTF-8 is an invalid event, not
        // the end of the report.
        if reader.read_until(b'\n', &mut line).map_err(fail)? == 0 {
            return Ok(());
        }
        n += 1;
        if line.trim_ascii().is_empty() {
            continue;
        }
        match schema.decode_lazy(&line, &|_| false) {
            Ok(e) => m.observe(e.kind(), e.customer(), e.time),
            Err(e) => m.invalid(format!("line {n}: {e}")),
        }
    }
}

/// A one-shot command reports a broker failure once, in its error: not as
/// a stream of librdkafka's retry logs.
struct Quiet;

impl rdkafka::ClientContext for Quiet {
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, _: &str, _: &str) {}
    fn error(&self, _: rdkafka::error::KafkaError, _: &str) {}
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

/// Reads the configured topics from just before the first exposure up to
/// the high watermarks they had at start, then stops. A fresh group id and
/// no commits: the daemon's consumer group is never touched.
pub fn read_kafka(
    cfg: &KafkaConfig,
    schema: &EventSchema,
    m: &mut Measure,
) -> Result<(), ReportError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};

    const TIMEOUT: Duration = Duration::from_secs(10);
    // Without a record for this long, the brokers are taken to be gone.
    const STALL: Duration = Duration::from_secs(60);
    // Record timestamps are the producer's clock, not event time.
    const SLACK_MS: Millis = 60_000;

    let Some(first) = m.first_exposure() else {
        return Ok(()); // no group: no event can count
    };
    let kafka = |e: String| ReportError::Kafka {
        brokers: cfg.brokers.clone(),
        error: e,
    };
    let mut cc = crate::source::kafka::client_config(cfg);
    cc.set(
        "group.id",
        format!(
            "forewarn-report-{}-{}",
            std::process::id(),
            crate::event::now_millis()
        ),
    )
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer<Quiet> = cc
        .create_with_context(Quiet)
        .map_err(|e| kafka(e.to_string()))?;

    // topic → partition → the end to reach (high watermark at start).
    let mut ends: HashMap<String, HashMap<i32, i64>> = HashMap::new();
    for topic in &cfg.topics {
        let md = consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|e| kafka(e.to_string()))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(ReportError::MissingTopic {
                topic: topic.clone(),
                brokers: cfg.brokers.clone(),
            });
        }
        for p in partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, TIMEOUT)
                .map_err(|e| kafka(format!("the end of {topic} partition {p}: {e}")))?;
            if high > low {
                ends.entry(topic.clone()).or_default().insert(p, high);
            }
        }
    }

    let mut by_time = TopicPartitionList::new();
    for (topic, ps) in &ends {
        for &p in ps.keys() {
            by_time
                .add_partition_offset(topic, p, Offset::Offset(first.saturating_sub(SLACK_MS)))
                .map_err(|e| kafka(e.to_string()))?;
        }
    }
    let starts = consumer.offsets_for_times(by_time, TIMEOUT).ok();
    let mut assign = TopicPartitionList::new();
    for (topic, ps) in ends.iter_mut() {
        ps.retain(|&p, _| {
            let found = starts
                .as_ref()
                .and_then(|s| s.find_partition(topic, p))
                .map(|e| e.offset());
            let start = match found {
                Some(Offset::Offset(o)) => Offset::Offset(o),
                // No record at or after that time: nothing to read here.
                Some(Offset::End) => return false,
                // The broker could not say: read it all (slower, still right).
                _ => Offset::Beginning,
            };
            tracing::debug!(topic = %topic, partition = p, ?start, "report: reading from");
            assign.add_partition_offset(topic, p, start).is_ok()
        });
    }
    ends.retain(|_, ps| !ps.is_empty());
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&assign).map_err(|e| kafka(e.to_string()))?;

    let mut last_progress = std::time::Instant::now();
    let mut last_error = None;
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                last_progress = std::time::Instant::now();
                let Some(ps) = ends.get_mut(msg.topic()) else {
                    continue;
                };
                let Some(&end) = ps.get(&msg.partition()) else {
                    continue; // that partition is done: newer records are not ours
                };
                if msg.offset() < end {
                    let at = || {
                        format!(
                            "{} partition {} offset {}",
                            msg.topic(),
                            msg.partition(),
                            msg.offset()
                        )
                    };
                    match msg.payload() {
                        Some(bytes) => match schema.decode_lazy(bytes, &|_| false) {
                            Ok(e) => m.observe(e.kind(), e.customer(), e.time),
                            Err(e) => m.invalid(format!("{}: {e}", at())),
                        },
                        None => m.invalid(format!("{}: the record has no value", at())),
                    }
                }
                if msg.offset() + 1 >= end {
                    ps.remove(&msg.partition());
                    if ps.is_empty() {
                        let topic = msg.topic().to_string();
                        ends.remove(&topic);
                    }
                }
            }
            Some(Err(e)) => last_error = Some(e.to_string()),
            None => {
                // Transaction markers and compaction leave gaps, so the
                // last offset below the end may never come as a record.
                if let Ok(positions) = consumer.position() {
                    for e in positions.elements() {
                        if let (Offset::Offset(o), Some(ps)) = (e.offset(), ends.get_mut(e.topic()))
                        {
                            if ps.get(&e.partition()).is_some_and(|&end| o >= end) {
                                ps.remove(&e.partition());
                            }
                        }
                    }
                    ends.retain(|_, ps| !ps.is_empty());
                }
                if last_progress.elapsed() > STALL {
                    return Err(kafka(format!(
                        "no record for {}s before the end of the topics was reached{}",
                        STALL.as_secs(),
                        last_error
                            .map(|e| format!(" (last error: {e})"))
                            .unwrap_or_default()
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Millis = 3_600_000;

    fn rec(customer: &str, outcome: &str, fired_at: Millis) -> DecisionRecord {
        DecisionRecord {
            customer: customer.into(),
            at: fired_at + 1_000,
            rule: "checkout-dropoff".into(),
            outcome: outcome.into(),
            notification_id: format!("n-{customer}-{fired_at}"),
            channel: "email".into(),
            reason: None,
            fired_at,
            episode_start: fired_at - 30 * 60_000,
            deadline: Some(fired_at),
            send_at: None,
        }
    }

    /// Through [`measure`], the pure entry point: records and events in.
    fn report(records: &[DecisionRecord], events: &[(&str, &str, Millis)]) -> Report {
        let events = events.iter().map(|(kind, customer, time)| {
            crate::event::Event::new(kind, customer, *time, None, serde_json::Value::Null)
        });
        measure(
            "checkout-dropoff",
            records,
            "order_placed",
            Duration::from_secs(24 * 3600),
            events,
        )
        .unwrap()
    }

    #[test]
    fn each_customer_counts_once_at_their_first_exposure() {
        let records = [
            rec("a", "fired", 10 * H),
            rec("a", "sent", 10 * H),
            rec("a", "sent", 30 * H), // a second message: same customer
            rec("b", "holdout", 20 * H),
            rec("b", "holdout", 5 * H),
            // In both groups: the earlier decision (holdout) wins.
            rec("c", "sent", 12 * H),
            rec("c", "holdout", 11 * H),
            // Decided, never sent: in neither group.
            rec("d", "fired", 10 * H),
            rec("d", "resolved", 10 * H),
            rec("e", "capped", 10 * H),
        ];
        let c = Cohorts::from_records(&records);
        assert_eq!(
            c.exposures["a"],
            Exposure {
                group: Group::Notified,
                at: 10 * H
            }
        );
        assert_eq!(
            c.exposures["b"],
            Exposure {
                group: Group::Holdout,
                at: 5 * H
            }
        );
        assert_eq!(c.exposures["c"].group, Group::Holdout);
        assert!(!c.exposures.contains_key("d") && !c.exposures.contains_key("e"));
        assert_eq!((c.in_both, c.not_reached), (1, 1));
        assert_eq!((c.size(Group::Notified), c.size(Group::Holdout)), (1, 2));

        // a's order 16h after the *first* message counts; it is 4h before
        // the second, which must not restart the window.
        let r = report(&records, &[("order_placed", "a", 26 * H)]);
        assert_eq!((r.notified.customers, r.notified.converted), (1, 1));
    }

    #[test]
    fn a_sent_record_is_timed_by_its_decision_not_its_episode() {
        // Threshold rules: the delivery record carries the window start.
        let mut sent = rec("a", "sent", 2 * H);
        sent.notification_id = "n1".into();
        let mut fired = rec("a", "fired", 10 * H);
        fired.notification_id = "n1".into();
        let c = Cohorts::from_records(&[sent, fired]);
        assert_eq!(c.exposures["a"].at, 10 * H);
    }

    #[test]
    fn conversions_count_inside_the_window_edges_included_and_only_the_customers_own() {
        let t = 10 * H;
        let records = [
            rec("at-start", "sent", t),
            rec("at-end", "sent", t),
            rec("before", "sent", t),
            rec("after", "sent", t),
            rec("other-type", "sent", t),
            rec("h1", "holdout", t),
            rec("h2", "holdout", t),
        ];
        let events = [
            ("order_placed", "at-start", t),
            ("order_placed", "at-end", t + 24 * H),
            ("order_placed", "before", t - 1),
            ("order_placed", "after", t + 24 * H + 1),
            ("page_viewed", "other-type", t + H),
            // Someone outside both groups, and a holdout's order before exposure.
            ("order_placed", "stranger", t + H),
            ("order_placed", "h1", t - H),
            ("order_placed", "h2", t + H),
            ("order_placed", "h2", t + 2 * H), // twice: still one customer
        ];
        let r = report(&records, &events);
        assert_eq!(
            (r.notified.customers, r.notified.converted),
            (5, 2),
            "at-start and at-end only"
        );
        assert_eq!((r.holdout.customers, r.holdout.converted), (2, 1));
        assert_eq!(r.events.read, 9);
        assert_eq!(r.events.outcome_events, 8);
    }

    #[test]
    fn statistics_match_known_values() {
        // 5.0 % of 1000 against 3.0 % of 1000.
        let c = compare(50, 1000, 30, 1000).unwrap();
        assert!((c.difference_points - 2.0).abs() < 1e-9);
        // Pooled z: 0.02 / sqrt(0.04 * 0.96 * 2/1000) = 2.2822.
        assert!((c.z - 2.2822).abs() < 1e-3, "z = {}", c.z);
        assert!((c.p_value - 0.02248).abs() < 2e-4, "p = {}", c.p_value);
        // Unpooled SE sqrt(.05*.95/1000 + .03*.97/1000) = 0.0087522.
        assert!((c.ci95_low_points - 0.2846).abs() < 1e-3, "{c:?}");
        assert!((c.ci95_high_points - 3.7154).abs() < 1e-3, "{c:?}");
        assert!((c.relative_lift.unwrap() - 2.0 / 3.0).abs() < 1e-9);

        // No difference: z = 0, p = 1. No variance at all: the same.
        let same = compare(30, 1000, 30, 1000).unwrap();
        assert!(same.z.abs() < 1e-12 && (same.p_value - 1.0).abs() < 1e-6);
        let none = compare(0, 100, 0, 100).unwrap();
        assert_eq!((none.z, none.relative_lift), (0.0, None));
        assert!(compare(1, 10, 0, 0).is_none());

        // The normal CDF and erf against tabulated values.
        for (z, phi) in [
            (0.0, 0.5),
            (1.0, 0.841_344_746),
            (1.959_964, 0.975),
            (-1.644_854, 0.05),
            (3.0, 0.998_650_102),
        ] {
            assert!((normal_cdf(z) - phi).abs() < 2e-7, "Φ({z})");
        }
        assert!((erf(0.5) - 0.520_499_878).abs() < 2e-7);
        assert!((erf(-0.5) + 0.520_499_878).abs() < 2e-7);

        // 3 % baseline, +2 points, 5 % two-sided, 80 % power: the usual
        // formula gives 1,506 per group.
        let n = needed_per_group(0.03, 0.02).unwrap();
        assert_eq!(n, 1506);
        assert!(needed_per_group(0.99, 0.02).is_some(), "near 100 %: a drop");
    }

    fn many(prefix: &str, outcome: &str, n: usize) -> Vec<DecisionRecord> {
        (0..n)
            .map(|i| rec(&format!("{prefix}{i}"), outcome, 10 * H))
            .collect()
    }

    fn orders(prefix: &str, n: usize) -> Vec<(String, Millis)> {
        (0..n).map(|i| (format!("{prefix}{i}"), 11 * H)).collect()
    }

    fn run_groups(n1: usize, x1: usize, n2: usize, x2: usize) -> Report {
        let mut records = many("n", "sent", n1);
        records.extend(many("h", "holdout", n2));
        let mut m = Measure::new(
            "checkout-dropoff",
            &records,
            "order_placed",
            Duration::from_secs(24 * 3600),
        )
        .unwrap();
        for (c, t) in orders("n", x1).into_iter().chain(orders("h", x2)) {
            m.observe("order_placed", &c, t);
        }
        m.finish(Some(100 * H))
    }

    #[test]
    fn the_verdict_says_help_hurt_or_not_yet() {
        let r = run_groups(1000, 50, 1000, 30);
        assert_eq!(
            r.verdict,
            "notified customers converted 2.0 points more often (95% CI 0.3 to 3.7, p = 0.022): the rule appears to help"
        );
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);

        let r = run_groups(1000, 30, 1000, 50);
        assert!(
            r.verdict
                .contains("2.0 points less often (95% CI 0.3 to 3.7")
                && r.verdict.contains("appears to hurt"),
            "{}",
            r.verdict
        );

        let r = run_groups(200, 10, 200, 8);
        assert!(
            r.verdict.starts_with("no clear difference yet (p = 0.")
                && r.verdict
                    .contains("customers per group would be needed to detect a 2-point effect"),
            "{}",
            r.verdict
        );
        let text = r.text();
        assert!(
            text.contains("notified          200         10     5.0%"),
            "{text}"
        );
    }

    #[test]
    fn the_verdict_warns_without_a_holdout_group() {
        let r = run_groups(100, 10, 0, 0);
        assert!(r.comparison.is_none());
        assert_eq!(
            r.verdict,
            "no comparison: both a notified and a holdout group are needed"
        );
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("add e.g. holdout_percent = 10 to measure it")),
            "{:?}",
            r.warnings
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["holdout"]["customers"], 0);
        assert!(json["comparison"].is_null());
    }

    #[test]
    fn the_verdict_warns_about_small_groups() {
        let r = run_groups(200, 20, 12, 1);
        assert!(
            r.verdict.starts_with("too few customers to judge yet"),
            "{}",
            r.verdict
        );
        assert!(
            r.warnings.iter().any(|w| w
                == "the holdout group has only 12 customers (fewer than 30): too few to judge; wait for more decisions"),
            "{:?}",
            r.warnings
        );
        assert!(r.comparison.is_some(), "the figures are still shown");
    }

    #[test]
    fn an_unknown_rule_says_so() {
        let err = Measure::new("nope", &[], "order_placed", Duration::from_secs(60))
            .err()
            .expect("no records, no measure");
        assert_eq!(err.exit_code(), 2);
        assert!(err
            .to_string()
            .contains("no decisions were recorded for rule \"nope\""));
    }

    #[test]
    fn still_open_windows_are_noted() {
        let mut records = many("n", "sent", 40);
        records.extend(many("h", "holdout", 40));
        let m = Measure::new(
            "r",
            &records,
            "order_placed",
            Duration::from_secs(24 * 3600),
        )
        .unwrap();
        // Decided at 10h; the events reach 20h: every window is open.
        let r = m.finish(Some(20 * H));
        assert_eq!(r.still_open, 80);
        assert!(r.notes.iter().any(|n| n.contains("window is still open")));
    }

    #[tokio::test]
    async fn end_to_end_from_a_store_and_a_jsonl_file() {
        use crate::event::FieldPath;
        use std::io::Write;

        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("data");
        let store = Store::open(&state).unwrap();
        crate::decisions::open(&store).unwrap();
        let t0: Millis = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        let mut records = Vec::new();
        for i in 0..40 {
            let mut fired = rec(&format!("n{i}"), "fired", t0);
            fired.notification_id = format!("id-n{i}");
            records.push(fired.then("sent", t0 + 5_000, None));
            records.push(fired);
            let mut held = rec(&format!("h{i}"), "holdout", t0);
            held.notification_id = format!("id-h{i}");
            records.push(held);
        }
        let mut other_rule = rec("n0", "sent", t0);
        other_rule.rule = "another-rule".into();
        records.push(other_rule);
        crate::decisions::write(&store, &records).unwrap();
        drop(store);

        let events = dir.path().join("events.jsonl");
        let mut f = std::fs::File::create(&events).unwrap();
        let line = |kind: &str, customer: &str, t: Millis| {
            format!(
                r#"{{"type":"{kind}","customer_id":"{customer}","ts":"{}","event_id":"{customer}-{t}"}}"#,
                format_time(t)
            )
        };
        for i in 0..20 {
            writeln!(f, "{}", line("order_placed", &format!("n{i}"), t0 + H)).unwrap();
        }
        for i in 0..4 {
            writeln!(f, "{}", line("order_placed", &format!("h{i}"), t0 + 2 * H)).unwrap();
        }
        writeln!(f, "{}", line("page_viewed", "h9", t0 + 3 * H)).unwrap();
        writeln!(f, "not json").unwrap();
        writeln!(f).unwrap();
        writeln!(
            f,
            r#"{{"type":"order_placed","ts":"2026-01-01T01:00:00Z"}}"#
        )
        .unwrap();
        drop(f);

        let p = |s: &str| FieldPath::parse(s).unwrap();
        let opts = ReportOptions {
            rule: "checkout-dropoff".into(),
            outcome_event: "order_placed".into(),
            within: Duration::from_secs(24 * 3600),
            state_dir: state.clone(),
            admin: None,
            schema: EventSchema {
                kind: p("type"),
                customer: p("customer_id"),
                time: p("ts"),
                id: Some(p("event_id")),
            },
            events: EventSource::File(events.clone()),
        };
        let r = run(&opts).await.unwrap();
        assert_eq!((r.notified.customers, r.notified.converted), (40, 20));
        assert_eq!((r.holdout.customers, r.holdout.converted), (40, 4));
        assert_eq!((r.events.read, r.events.outcome_events), (25, 24));
        assert_eq!(r.events.invalid, 2);
        assert!(
            r.events.invalid_examples[0].starts_with("line 26: "),
            "{:?}",
            r.events.invalid_examples
        );
        assert!(
            r.verdict.contains("the rule appears to help"),
            "{}",
            r.verdict
        );
        assert!(r.decisions_from.contains("state store"));
        let text = r.text();
        assert!(text.contains("invalid event: line 28"), "{text}");

        // A rule the log does not know: exit code 2, with what to check.
        let err = run(&ReportOptions {
            rule: "checkout-dropof".into(),
            ..opts.clone()
        })
        .await
        .err()
        .unwrap();
        assert!(matches!(err, ReportError::NoDecisions { .. }), "{err}");
        assert_eq!(err.exit_code(), 2);

        // A state directory without a store is not silently created.
        let err = run(&ReportOptions {
            state_dir: dir.path().join("elsewhere"),
            ..opts.clone()
        })
        .await
        .err()
        .unwrap();
        assert!(matches!(err, ReportError::NoStore { .. }), "{err}");
        assert!(!dir.path().join("elsewhere").exists());

        // A missing events file names the flag to fix.
        let err = run(&ReportOptions {
            events: EventSource::File(dir.path().join("missing.jsonl")),
            ..opts.clone()
        })
        .await
        .err()
        .unwrap();
        assert!(err.to_string().contains("--events"), "{err}");
        assert_eq!(err.exit_code(), 2);

        // While something else holds the store, and no admin API is known.
        let _held = Store::open(&state).unwrap();
        let err = run(&opts).await.err().unwrap();
        assert!(
            matches!(err, ReportError::LockedWithoutConfig { .. }),
            "{err}"
        );
    }
}
