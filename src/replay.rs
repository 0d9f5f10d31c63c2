//! `forewarn replay`: the same engine, prepare stage and templates as the
//! daemon, in virtual time over recorded events (JSONL), with no broker.
//! It reports per rule what would have happened and writes the would-be
//! messages as `.eml` files through the `file` channel.
//!
//! With `--report`, [`report`] turns the report into one self-contained
//! HTML page with charts and sample messages.
//!
//! Events go to one engine partition in file order. At the end of the
//! input, time stops at the last event (or at `until`): deadlines up to
//! then fire, later ones are reported as still open. Staleness is judged
//! in virtual time, so a replay never calls a firing stale; a live daemon
//! working through an old backlog would.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::FileConfig;
use crate::engine::{Clock, Engine, EngineConfig, Output};
use crate::event::{EventSchema, FieldPath, Millis};
use crate::notify::channel::file::FileChannel;
use crate::notify::template::Templates;
use crate::notify::Notification;
use crate::pipeline::{Decide, Prepared, VirtualState};
use crate::policy::PolicyConfig;
use crate::rules::{load_rules, Diagnostics, LoadOptions};

pub mod report;

#[derive(Clone)]
pub struct ReplayOptions {
    pub events: PathBuf,
    pub rules_dir: PathBuf,
    pub schema: EventSchema,
    pub email: FieldPath,
    pub engine: EngineConfig,
    /// Where would-be messages are written; `None` writes nothing.
    pub out_dir: Option<PathBuf>,
    /// The sender of a channel the config does not give one for.
    pub from: lettre::message::Mailbox,
    /// Each email channel's sender from the daemon config, so the
    /// would-be messages carry the `From` the channel would send.
    pub senders: BTreeMap<String, lettre::message::Mailbox>,
    /// Let time run on to here after the last event (default: the last event).
    pub until: Option<Millis>,
    /// Channels that carry notifications without an email address
    /// (webhook, kafka in the daemon config): their rules never yield
    /// `no_address`, and their would-be messages are written as JSON.
    pub addressless_channels: std::collections::BTreeSet<String>,
    /// The contact policy (the daemon config's `[policy]`; none without
    /// `--config`). Judged in event time; customer details come from the
    /// events (a replay reads no profiles topic).
    pub policy: PolicyConfig,
    pub unsubscribe_url: Option<String>,
}

/// One decision of the replay, in the order they were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayDecision {
    pub rule: String,
    pub customer: String,
    pub notification_id: String,
    pub outcome: &'static str,
    pub fired_at: Millis,
    /// The event time of the firing's trigger event (an absence rule's
    /// trigger, a match rule's event, a threshold rule's last event).
    pub trigger_at: Millis,
    /// When the message would go out: `fired_at`, or the end of the quiet
    /// hours for a `deferred` one. `None` when nothing is sent.
    pub send_at: Option<Millis>,
}

/// A message replay would have sent (or, in shadow mode, rendered), kept
/// as an example of what a rule's customers get.
#[derive(Debug, Clone)]
pub struct Sample {
    /// `sent`, `deferred` or `shadow`.
    pub outcome: &'static str,
    pub notification: Notification,
}

/// Sample messages kept per rule.
pub const SAMPLES_PER_RULE: usize = 3;

/// Keeps the first `SAMPLES_PER_RULE` messages of a rule, but makes room
/// for an outcome not shown yet (a deferred message beside sent ones) by
/// replacing the newest sample of an outcome shown more than once.
pub fn offer_sample(samples: &mut Vec<Sample>, s: Sample) {
    if samples.len() < SAMPLES_PER_RULE {
        samples.push(s);
        return;
    }
    if samples.iter().any(|k| k.outcome == s.outcome) {
        return;
    }
    let repeated = (0..samples.len()).rev().find(|&i| {
        samples
            .iter()
            .filter(|k| k.outcome == samples[i].outcome)
            .count()
            > 1
    });
    if let Some(i) = repeated {
        samples[i] = s;
    }
}

#[derive(Debug, Default)]
pub struct ReplayReport {
    pub events: u64,
    /// (line number, reason) of each invalid line.
    pub invalid: Vec<(usize, String)>,
    pub late_events: u64,
    pub missing_key: BTreeMap<String, u64>,
    pub rule_errors: BTreeMap<String, u64>,
    /// rule id → outcome → count; every loaded rule has a row.
    pub outcomes: BTreeMap<String, BTreeMap<&'static str, u64>>,
    pub decisions: Vec<ReplayDecision>,
    pub written: usize,
    /// Absence episodes whose deadline lies after the end of the replay.
    pub still_open: usize,
    pub first_event: Option<Millis>,
    pub last_event: Option<Millis>,
    /// Where virtual time stopped: the last event, or `until`.
    pub end: Option<Millis>,
    /// rule id → up to [`SAMPLES_PER_RULE`] messages it would have sent.
    pub samples: BTreeMap<String, Vec<Sample>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the rules are invalid:\n{0}")]
    Rules(Diagnostics),
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("cannot write would-be messages: {0}")]
    Write(String),
}

pub async fn replay(opts: &ReplayOptions) -> Result<ReplayReport, ReplayError> {
    let loaded =
        load_rules(&opts.rules_dir, &LoadOptions::default()).map_err(ReplayError::Rules)?;
    let mut report = ReplayReport::default();
    for r in &loaded.rules.rules {
        report.outcomes.insert(r.id.clone(), BTreeMap::new());
    }
    let mut engine = Engine::new(
        Arc::new(loaded.rules),
        opts.engine.clone(),
        &opts.policy.retained_fields(&opts.email),
    );
    engine.assign(0);
    // One writer per sender, all into the same folder.
    let writer = |from: &lettre::message::Mailbox| -> Result<Option<FileChannel>, ReplayError> {
        opts.out_dir
            .as_ref()
            .map(|dir| {
                FileChannel::new(&FileConfig {
                    dir: dir.clone(),
                    from: from.clone(),
                })
                .map_err(ReplayError::Write)
            })
            .transpose()
    };
    let mut writers = BTreeMap::new();
    for (name, from) in &opts.senders {
        if let Some(w) = writer(from)? {
            writers.insert(name.clone(), w);
        }
    }
    let mut sink = Sink {
        templates: &loaded.templates,
        opts,
        default_writer: writer(&opts.from)?,
        writers,
        state: VirtualState::default(),
    };
    let read_err = |error| ReplayError::Read {
        path: opts.events.display().to_string(),
        error,
    };
    let reader = crate::jsonl::open(&opts.events).map_err(|e| read_err(e.error))?;
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(read_err)?;
        if line.trim().is_empty() {
            continue;
        }
        let event = match opts
            .schema
            .decode_lazy(line.as_bytes(), &|kind| engine.reads(kind))
        {
            Ok(e) => e,
            Err(e) => {
                report.invalid.push((n + 1, e.to_string()));
                continue;
            }
        };
        report.events += 1;
        report.first_event = Some(report.first_event.map_or(event.time, |f| f.min(event.time)));
        report.last_event = Some(report.last_event.map_or(event.time, |l| l.max(event.time)));
        let mut out = Output::default();
        engine.on_event(0, &event, Clock::Virtual, &mut out);
        record(&mut report, out, &mut sink).await?;
    }
    let end = match (opts.until, report.last_event) {
        (Some(u), Some(l)) => Some(u.max(l)),
        (u, l) => u.or(l),
    };
    report.end = end;
    if let Some(end) = end {
        let mut out = Output::default();
        engine.advance_to(end, Clock::Virtual, &mut out);
        record(&mut report, out, &mut sink).await?;
    }
    report.still_open = engine.stats().open_episodes;
    Ok(report)
}

/// What deciding and writing a replay's firings needs besides the report.
struct Sink<'a> {
    templates: &'a Templates,
    opts: &'a ReplayOptions,
    /// Per channel (its sender); `default_writer` for the rest. None
    /// when nothing is written.
    writers: BTreeMap<String, FileChannel>,
    default_writer: Option<FileChannel>,
    state: VirtualState,
}

async fn record(
    report: &mut ReplayReport,
    out: Output,
    sink: &mut Sink<'_>,
) -> Result<(), ReplayError> {
    let (templates, opts, state) = (sink.templates, sink.opts, &mut sink.state);
    let cx = Decide {
        templates,
        email: &opts.email,
        unsubscribe_url: opts.unsubscribe_url.as_deref(),
        policy: &opts.policy,
    };
    report.late_events += out.late_events;
    for r in out.missing_key {
        *report.missing_key.entry(r).or_default() += 1;
    }
    for e in out.errors {
        *report.rule_errors.entry(e.rule_id).or_default() += 1;
    }
    for d in &out.decisions {
        let addressless = opts
            .addressless_channels
            .contains(&d.firing.rule.notify.channel);
        let prepared = state.prepare(d, &cx, !addressless, None, d.firing.fired_at);
        let channel = sink
            .writers
            .get(&d.firing.rule.notify.channel)
            .or(sink.default_writer.as_ref());
        if let (Prepared::Send(n), Some(ch)) = (&prepared, channel) {
            if addressless {
                // What a webhook or Kafka channel would carry.
                let body = serde_json::to_vec_pretty(&n.to_json()).unwrap_or_default();
                crate::notify::channel::file::write_atomically(
                    ch.dir(),
                    &format!("{}.json", n.id),
                    &body,
                )
                .await
                .map_err(|e| ReplayError::Write(e.to_string()))?;
            } else {
                ch.send(n)
                    .await
                    .map_err(|e| ReplayError::Write(e.to_string()))?;
            }
            report.written += 1;
        }
        // "sent" in a replay means "would have been sent".
        let outcome = prepared.outcome();
        let f = &d.firing;
        let send_at = match &prepared {
            Prepared::Send(n) => Some(n.not_before.unwrap_or(f.fired_at)),
            _ => None,
        };
        if let Prepared::Send(n) | Prepared::Shadow(n) = &prepared {
            offer_sample(
                report.samples.entry(f.rule.id.clone()).or_default(),
                Sample {
                    outcome,
                    notification: n.clone(),
                },
            );
        }
        *report
            .outcomes
            .entry(f.rule.id.clone())
            .or_default()
            .entry(outcome)
            .or_default() += 1;
        report.decisions.push(ReplayDecision {
            rule: f.rule.id.clone(),
            customer: f.event.customer().to_owned(),
            notification_id: f.notification_id.clone(),
            outcome,
            fired_at: f.fired_at,
            trigger_at: f.event.time,
            send_at,
        });
    }
    Ok(())
}

/// The columns of the summary table, in order.
pub const OUTCOME_COLUMNS: &[&str] = &[
    "sent",
    "deferred",
    "shadow",
    "holdout",
    "capped",
    "unsubscribed",
    "cooldown",
    "duplicate",
    "stale",
    "no_address",
    "render_failed",
];

impl ReplayReport {
    /// A compact table for the terminal.
    pub fn table(&self) -> String {
        let width = self
            .outcomes
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(4)
            .max(4);
        let mut s = format!("{:<width$}  {:>6}", "rule", "fired");
        for c in OUTCOME_COLUMNS {
            s.push_str(&format!("  {c:>w$}", w = c.len().max(5)));
        }
        s.push('\n');
        for (rule, counts) in &self.outcomes {
            let fired: u64 = counts.values().sum();
            s.push_str(&format!("{rule:<width$}  {fired:>6}"));
            for c in OUTCOME_COLUMNS {
                s.push_str(&format!(
                    "  {:>w$}",
                    counts.get(c).copied().unwrap_or(0),
                    w = c.len().max(5)
                ));
            }
            s.push('\n');
        }
        s
    }
}

/// Default location of would-be messages.
pub fn default_out_dir() -> &'static Path {
    Path::new("replay-out")
}

/// How two rule sets decide on the same events (`forewarn replay --rules
/// OLD --compare NEW`).
#[derive(Debug, Default, PartialEq)]
pub struct Comparison {
    /// rule → outcome → (old count, new count), for every rule either set
    /// has and every outcome either produced.
    pub counts: BTreeMap<String, BTreeMap<&'static str, (u64, u64)>>,
    /// rule → customers the new rules message and the old did not.
    pub gained: BTreeMap<String, Vec<String>>,
    /// rule → customers the old rules messaged and the new do not.
    pub lost: BTreeMap<String, Vec<String>>,
    /// Rules only in one of the two sets.
    pub only_old: Vec<String>,
    pub only_new: Vec<String>,
}

/// A customer is messaged by a rule when a decision was `sent` or
/// `deferred` (sent later, out of quiet hours).
fn messaged(r: &ReplayReport) -> std::collections::BTreeSet<(&str, &str)> {
    r.decisions
        .iter()
        .filter(|d| matches!(d.outcome, "sent" | "deferred"))
        .map(|d| (d.rule.as_str(), d.customer.as_str()))
        .collect()
}

pub fn compare(old: &ReplayReport, new: &ReplayReport) -> Comparison {
    let mut c = Comparison::default();
    for (rule, counts) in &old.outcomes {
        let row = c.counts.entry(rule.clone()).or_default();
        for (o, n) in counts {
            row.entry(o).or_default().0 = *n;
        }
    }
    for (rule, counts) in &new.outcomes {
        let row = c.counts.entry(rule.clone()).or_default();
        for (o, n) in counts {
            row.entry(o).or_default().1 = *n;
        }
    }
    c.only_old = old
        .outcomes
        .keys()
        .filter(|r| !new.outcomes.contains_key(*r))
        .cloned()
        .collect();
    c.only_new = new
        .outcomes
        .keys()
        .filter(|r| !old.outcomes.contains_key(*r))
        .cloned()
        .collect();
    let (a, b) = (messaged(old), messaged(new));
    for (rule, customer) in b.difference(&a) {
        c.gained
            .entry(rule.to_string())
            .or_default()
            .push(customer.to_string());
    }
    for (rule, customer) in a.difference(&b) {
        c.lost
            .entry(rule.to_string())
            .or_default()
            .push(customer.to_string());
    }
    c
}

impl Comparison {
    /// For the terminal: the outcome counts that changed, then who gains
    /// and who loses a message (at most `show` customers per rule).
    pub fn table(&self, show: usize) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let width = self
            .counts
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = writeln!(
            s,
            "{:<width$}  {:<13} {:>7} {:>7} {:>7}",
            "rule", "outcome", "old", "new", "change"
        );
        let mut same = 0;
        for (rule, row) in &self.counts {
            for (outcome, (a, b)) in row {
                if a == b {
                    same += 1;
                    continue;
                }
                let _ = writeln!(
                    s,
                    "{rule:<width$}  {outcome:<13} {a:>7} {b:>7} {:>+7}",
                    *b as i64 - *a as i64
                );
            }
        }
        if same > 0
            && self
                .counts
                .values()
                .flat_map(|r| r.values())
                .all(|(a, b)| a == b)
        {
            let _ = writeln!(s, "(no outcome changed)");
        }
        for r in &self.only_old {
            let _ = writeln!(s, "rule {r} is only in the old rules");
        }
        for r in &self.only_new {
            let _ = writeln!(s, "rule {r} is only in the new rules");
        }
        let list = |s: &mut String, title: &str, m: &BTreeMap<String, Vec<String>>| {
            if m.is_empty() {
                return;
            }
            let _ = writeln!(s, "\n{title}:");
            for (rule, customers) in m {
                let mut names = customers
                    .iter()
                    .take(show)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                if customers.len() > show {
                    let _ = write!(names, ", … {} more", customers.len() - show);
                }
                let _ = writeln!(s, "  {rule:<width$}  {:>5}  {names}", customers.len());
            }
        };
        list(
            &mut s,
            "customers who would gain a message (new rules message them, old did not)",
            &self.gained,
        );
        list(
            &mut s,
            "customers who would lose a message (old rules messaged them, new do not)",
            &self.lost,
        );
        if self.gained.is_empty() && self.lost.is_empty() {
            let _ = writeln!(s, "\nno customer gains or loses a message");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(decisions: &[(&str, &str, &'static str)]) -> ReplayReport {
        let mut r = ReplayReport::default();
        for (i, (rule, customer, outcome)) in decisions.iter().enumerate() {
            *r.outcomes
                .entry(rule.to_string())
                .or_default()
                .entry(outcome)
                .or_default() += 1;
            r.decisions.push(ReplayDecision {
                rule: rule.to_string(),
                customer: customer.to_string(),
                notification_id: format!("n{i}"),
                outcome,
                fired_at: i as Millis,
                trigger_at: i as Millis,
                send_at: matches!(*outcome, "sent" | "deferred").then_some(i as Millis),
            });
        }
        r
    }

    #[test]
    fn compare_counts_outcomes_and_names_who_gains_and_loses() {
        let old = report(&[
            ("dropoff", "c1", "sent"),
            ("dropoff", "c2", "sent"),
            ("dropoff", "c3", "cooldown"),
            ("retired", "c1", "sent"),
        ]);
        let new = report(&[
            ("dropoff", "c1", "sent"),
            ("dropoff", "c3", "deferred"),
            ("dropoff", "c4", "sent"),
            ("fresh", "c9", "shadow"),
        ]);
        let c = compare(&old, &new);
        assert_eq!(c.counts["dropoff"]["sent"], (2, 2));
        assert_eq!(c.counts["dropoff"]["cooldown"], (1, 0));
        assert_eq!(c.counts["dropoff"]["deferred"], (0, 1));
        assert_eq!(c.gained["dropoff"], vec!["c3", "c4"]);
        assert_eq!(c.lost["dropoff"], vec!["c2"]);
        assert_eq!(c.lost["retired"], vec!["c1"]);
        assert!(!c.gained.contains_key("fresh"), "shadow messages nobody");
        assert_eq!(
            (c.only_old.clone(), c.only_new.clone()),
            (vec!["retired".to_string()], vec!["fresh".to_string()])
        );
        let t = c.table(1);
        assert!(
            t.contains("dropoff  cooldown            1       0      -1"),
            "{t}"
        );
        assert!(t.contains("dropoff      2  c3, … 1 more"), "{t}");
        assert!(t.contains("rule retired is only in the old rules"), "{t}");
        assert!(
            !t.contains("dropoff  sent"),
            "unchanged rows are left out: {t}"
        );
    }

    #[test]
    fn samples_keep_the_first_messages_and_make_room_for_a_new_outcome() {
        let n = crate::preview::tests_support::notification;
        let sample = |outcome: &'static str, id: &str| Sample {
            outcome,
            notification: n(id),
        };
        let ids = |s: &[Sample]| {
            s.iter()
                .map(|s| format!("{}:{}", s.outcome, s.notification.id))
                .collect::<Vec<_>>()
        };
        let mut kept = Vec::new();
        for (o, id) in [("sent", "a"), ("sent", "b"), ("sent", "c"), ("sent", "d")] {
            offer_sample(&mut kept, sample(o, id));
        }
        assert_eq!(ids(&kept), ["sent:a", "sent:b", "sent:c"]);
        offer_sample(&mut kept, sample("deferred", "e"));
        assert_eq!(ids(&kept), ["sent:a", "sent:b", "deferred:e"]);
        offer_sample(&mut kept, sample("deferred", "f"));
        offer_sample(&mut kept, sample("shadow", "g"));
        assert_eq!(ids(&kept), ["sent:a", "shadow:g", "deferred:e"]);
        offer_sample(&mut kept, sample("holdout", "h"));
        assert_eq!(
            ids(&kept),
            ["sent:a", "shadow:g", "deferred:e"],
            "one of each already: nothing to replace"
        );
    }

    #[test]
    fn identical_rule_sets_compare_as_unchanged() {
        let r = report(&[("dropoff", "c1", "sent")]);
        let t = compare(&r, &r).table(5);
        assert!(t.contains("(no outcome changed)"), "{t}");
        assert!(t.contains("no customer gains or loses a message"), "{t}");
    }
}
