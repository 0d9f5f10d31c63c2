//! `forewarn test`: rule tests written in TOML (`rules/tests/*.toml`), in
//! the spirit of `promtool test rules`.
//!
//! A test gives events (inline, or a JSONL file), optional customer
//! profiles, and the decisions it expects. The events run in virtual time
//! through the same engine, contact policy and templates as the daemon
//! (the same path as `forewarn replay`). A failure prints what was
//! expected beside what happened, with each decision's reason.
//!
//! ```toml
//! [[test]]
//! name   = "an abandoned checkout gets one nudge after 30 minutes"
//! events = [
//!   { at = "+0m", type = "checkout_started", customer_id = "c-1", customer = { email = "ana@example.com" }, cart = { total = 54.9 } },
//! ]
//! expect = [
//!   { rule = "checkout-dropoff", customer = "c-1", outcome = "sent", at = "+30m", subject_contains = "basket" },
//! ]
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::engine::{Clock, Engine, EngineConfig, Output};
use crate::event::{format_time, EventSchema, FieldPath, Millis};
use crate::notify::template::Templates;
use crate::pipeline::{Decide, Prepared, VirtualState};
use crate::policy::PolicyConfig;
use crate::rules::diagnostics::Diagnostic;
use crate::rules::{Diagnostics, RuleSet};

/// When a test's virtual clock starts unless it says otherwise: a Monday
/// morning, UTC.
pub const DEFAULT_START: &str = "2026-01-05T09:00:00Z";

/// What every test of a run shares: the loaded rules and the settings of
/// the daemon config (or the defaults without one).
pub struct Suite<'a> {
    pub rules: Arc<RuleSet>,
    pub templates: &'a Templates,
    pub schema: EventSchema,
    pub email: FieldPath,
    pub engine: EngineConfig,
    pub policy: PolicyConfig,
    pub unsubscribe_url: Option<String>,
    /// Channels without an email address (webhook, kafka).
    pub addressless_channels: std::collections::BTreeSet<String>,
}

// ------------------------------------------------------------- file format

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    test: Vec<RawTest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: toml::Spanned<String>,
    /// RFC 3339; what `+DURATION` times count from.
    start: Option<toml::Spanned<String>>,
    #[serde(default)]
    events: Vec<toml::Spanned<toml::Table>>,
    /// JSONL, relative to the test file; its events come before `events`.
    events_file: Option<toml::Spanned<String>>,
    /// Customer id → profile (what the profiles topic would hold).
    #[serde(default)]
    profiles: BTreeMap<String, toml::Table>,
    /// Virtual time runs on to here after the last event. Default: until
    /// every pending deadline has fired.
    until: Option<toml::Spanned<String>>,
    /// Only these rules' decisions are compared; default: every rule's.
    rules: Option<Vec<toml::Spanned<String>>>,
    #[serde(default)]
    expect: Vec<toml::Spanned<RawExpect>>,
    #[serde(default)]
    expect_none: Vec<toml::Spanned<RawExpect>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    rule: String,
    customer: Option<String>,
    outcome: Option<String>,
    at: Option<String>,
    subject_contains: Option<String>,
    text_contains: Option<String>,
    html_contains: Option<String>,
    reason_contains: Option<String>,
    to: Option<String>,
}

/// Outcomes a test may expect: the ones replay reports.
const OUTCOMES: &[&str] = crate::replay::OUTCOME_COLUMNS;

// ------------------------------------------------------------ parsed form

#[derive(Debug)]
pub struct Test {
    pub file: PathBuf,
    pub line: usize,
    pub name: String,
    start: Millis,
    /// Raw JSON lines, in arrival order.
    events: Vec<(String, Vec<u8>)>,
    profiles: BTreeMap<String, Value>,
    until: Option<Millis>,
    rules: Option<Vec<String>>,
    expect: Vec<Expect>,
    expect_none: Vec<Expect>,
}

#[derive(Debug, Clone)]
struct Expect {
    rule: String,
    customer: Option<String>,
    outcome: Option<String>,
    at: Option<Millis>,
    subject_contains: Option<String>,
    text_contains: Option<String>,
    html_contains: Option<String>,
    reason_contains: Option<String>,
    to: Option<String>,
}

/// One decision the engine and policy made during a test.
#[derive(Debug, Clone)]
pub struct Got {
    pub rule: String,
    pub customer: String,
    pub outcome: &'static str,
    pub at: Millis,
    pub reason: Option<String>,
    pub to: Option<String>,
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
}

/// Reads every `*.toml` in `dir` (sorted). Invalid files give
/// file:line:column diagnostics with a fix.
pub fn load_tests(dir: &Path, schema: &EventSchema) -> Result<Vec<Test>, Diagnostics> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect(),
        Err(e) => {
            return Err(Diagnostics(vec![Diagnostic::file(
                dir,
                format!("cannot read the tests folder ({e})"),
            )
            .help(
                "put rule tests in rules/tests/*.toml (see rules/README.md, \"Testing a rule\")",
            )]))
        }
    };
    files.sort();
    let mut tests = Vec::new();
    let mut diags = Vec::new();
    for file in files {
        match load_file(&file, schema) {
            Ok(t) => tests.extend(t),
            Err(d) => diags.extend(d),
        }
    }
    if diags.is_empty() {
        Ok(tests)
    } else {
        Err(Diagnostics(diags))
    }
}

fn load_file(file: &Path, schema: &EventSchema) -> Result<Vec<Test>, Vec<Diagnostic>> {
    let source = std::fs::read_to_string(file)
        .map_err(|e| vec![Diagnostic::file(file, format!("cannot read ({e})"))])?;
    let raw: TestFile = toml::from_str(&source).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        vec![Diagnostic::at(file, &source, at, e.message().trim().to_string()).help(
            "a test file holds [[test]] tables with name, events (or events_file), profiles, until, rules, expect and expect_none",
        )]
    })?;
    if raw.test.is_empty() {
        return Err(vec![Diagnostic::file(file, "no [[test]] in this file")
            .help(
                "start a test with [[test]] and a name = \"…\", then its events and expect",
            )]);
    }
    let mut diags = Vec::new();
    let mut tests = Vec::new();
    for t in raw.test {
        let d0 = diags.len();
        let at = |d: &mut Vec<Diagnostic>, offset: usize, msg: String, help: &str| {
            d.push(Diagnostic::at(file, &source, offset, msg).help(help.to_string()));
        };
        let start = match &t.start {
            None => DEFAULT_START
                .parse::<jiff::Timestamp>()
                .expect("valid default")
                .as_millisecond(),
            Some(s) => match s.get_ref().parse::<jiff::Timestamp>() {
                Ok(ts) => ts.as_millisecond(),
                Err(_) => {
                    at(
                        &mut diags,
                        s.span().start,
                        format!("start = {:?} is not an RFC 3339 time", s.get_ref()),
                        "write it like \"2026-03-02T09:00:00Z\"",
                    );
                    0
                }
            },
        };
        let mut events = Vec::new();
        if let Some(f) = &t.events_file {
            let path = file.parent().unwrap_or(Path::new(".")).join(f.get_ref());
            let lines = crate::jsonl::open(&path)
                .map_err(|e| e.error)
                .and_then(|r| std::io::BufRead::lines(r).collect::<std::io::Result<Vec<String>>>());
            match lines {
                Ok(lines) => {
                    for (n, line) in lines.iter().enumerate() {
                        if !line.trim().is_empty() {
                            events.push((
                                format!("{}:{}", f.get_ref(), n + 1),
                                line.as_bytes().to_vec(),
                            ));
                        }
                    }
                }
                Err(e) => at(
                    &mut diags,
                    f.span().start,
                    format!("events_file = {:?} cannot be read ({e})", f.get_ref()),
                    "give a JSONL file (one event per line), relative to this test file",
                ),
            }
        }
        for (i, ev) in t.events.iter().enumerate() {
            match event_json(ev.get_ref(), start, schema) {
                Ok(bytes) => events.push((format!("event {}", i + 1), bytes)),
                Err(msg) => at(
                    &mut diags,
                    ev.span().start,
                    format!("event {} of test {:?}: {msg}", i + 1, t.name.get_ref()),
                    "give each event an at = \"+5m\" (after start) or an RFC 3339 time, or the time field itself",
                ),
            }
        }
        if events.is_empty() {
            at(
                &mut diags,
                t.name.span().start,
                format!("test {:?} has no events", t.name.get_ref()),
                "add events = [{ at = \"+0m\", type = \"…\", customer_id = \"…\" }] or events_file = \"….jsonl\"",
            );
        }
        let until = t
            .until
            .as_ref()
            .and_then(|u| match time_at(u.get_ref(), start) {
                Ok(ms) => Some(ms),
                Err(msg) => {
                    at(
                        &mut diags,
                        u.span().start,
                        format!("until = {:?}: {msg}", u.get_ref()),
                        "write \"+2h\" (after start) or an RFC 3339 time",
                    );
                    None
                }
            });
        let expects = |list: &[toml::Spanned<RawExpect>], key: &str, d: &mut Vec<Diagnostic>| {
            let mut out = Vec::new();
            for e in list {
                let r = e.get_ref();
                let offset = e.span().start;
                if let Some(o) = &r.outcome {
                    if !OUTCOMES.contains(&o.as_str()) {
                        at(
                            d,
                            offset,
                            format!("{key}: outcome = {o:?} is not an outcome"),
                            &format!("use one of {}", OUTCOMES.join(", ")),
                        );
                    }
                }
                let when = r.at.as_deref().and_then(|a| match time_at(a, start) {
                    Ok(ms) => Some(ms),
                    Err(msg) => {
                        at(
                            d,
                            offset,
                            format!("{key}: at = {a:?}: {msg}"),
                            "write \"+30m\" (after start) or an RFC 3339 time",
                        );
                        None
                    }
                });
                out.push((
                    offset,
                    Expect {
                        rule: r.rule.clone(),
                        customer: r.customer.clone(),
                        outcome: r.outcome.clone(),
                        at: when,
                        subject_contains: r.subject_contains.clone(),
                        text_contains: r.text_contains.clone(),
                        html_contains: r.html_contains.clone(),
                        reason_contains: r.reason_contains.clone(),
                        to: r.to.clone(),
                    },
                ));
            }
            out
        };
        let expect = expects(&t.expect, "expect", &mut diags);
        let expect_none = expects(&t.expect_none, "expect_none", &mut diags);
        if expect.is_empty() && expect_none.is_empty() {
            at(
                &mut diags,
                t.name.span().start,
                format!("test {:?} expects nothing", t.name.get_ref()),
                "say what must happen (expect = [{ rule = \"…\", customer = \"…\", outcome = \"sent\" }]) or what must not (expect_none = [{ rule = \"…\" }])",
            );
        }
        let profiles = t
            .profiles
            .iter()
            .map(|(c, p)| (c.clone(), toml_to_json(p)))
            .collect();
        if diags.len() > d0 {
            continue;
        }
        let (line, _) = crate::rules::diagnostics::line_col(&source, t.name.span().start);
        tests.push(Test {
            file: file.to_path_buf(),
            line,
            name: t.name.into_inner(),
            start,
            events,
            profiles,
            until,
            rules: t
                .rules
                .map(|r| r.into_iter().map(|s| s.into_inner()).collect()),
            expect: expect.into_iter().map(|(_, e)| e).collect(),
            expect_none: expect_none.into_iter().map(|(_, e)| e).collect(),
        });
    }
    if diags.is_empty() {
        Ok(tests)
    } else {
        Err(diags)
    }
}

/// Names in `expect`, `expect_none` and `rules` that are not loaded rules.
pub fn check_rule_names(tests: &[Test], rules: &RuleSet) -> Diagnostics {
    let known: Vec<&str> = rules.rules.iter().map(|r| r.id.as_str()).collect();
    let mut d = Vec::new();
    for t in tests {
        let named = t
            .expect
            .iter()
            .chain(&t.expect_none)
            .map(|e| e.rule.as_str())
            .chain(t.rules.iter().flatten().map(String::as_str));
        for name in named {
            if !known.contains(&name) {
                let near = crate::rules::expr::closest(name, &known)
                    .map(|k| format!("did you mean {k:?}? "))
                    .unwrap_or_default();
                d.push(Diagnostic {
                    file: t.file.clone(),
                    line: t.line,
                    column: 1,
                    message: format!(
                        "test {:?} names the rule {name:?}, which is not loaded",
                        t.name
                    ),
                    help: Some(format!("{near}rules: {}", known.join(", "))),
                });
            }
        }
    }
    Diagnostics(d)
}

fn toml_to_json(t: &toml::Table) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// `+DURATION` after `start`, or an RFC 3339 time.
fn time_at(s: &str, start: Millis) -> Result<Millis, String> {
    if let Some(rest) = s.strip_prefix('+') {
        return humantime::parse_duration(rest.trim())
            .map(|d| start + d.as_millis() as Millis)
            .map_err(|e| {
                format!("not a duration ({e}); write e.g. \"+30m\", \"+2h\", \"+1d 2h\"")
            });
    }
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| "neither +DURATION (e.g. \"+30m\") nor an RFC 3339 time".to_string())
}

/// An inline event as the JSON line the daemon would read: `at` becomes
/// the schema's time field.
fn event_json(t: &toml::Table, start: Millis, schema: &EventSchema) -> Result<Vec<u8>, String> {
    let mut t = t.clone();
    let at = t.remove("at");
    let mut v = toml_to_json(&t);
    let has_time = schema.time.get(&v).is_some();
    match (at, has_time) {
        (Some(_), true) => {
            return Err(format!(
                "it has both at and its time field `{}`; keep one",
                schema.time
            ))
        }
        (None, false) => return Err(format!("it has no time: neither at nor `{}`", schema.time)),
        (Some(toml::Value::String(a)), false) => {
            let ms = time_at(&a, start)?;
            set_path(&mut v, &schema.time, Value::String(format_time(ms)));
        }
        (Some(other), false) => return Err(format!("at = {other} is not a string like \"+5m\"")),
        (None, true) => {}
    }
    serde_json::to_vec(&v).map_err(|e| e.to_string())
}

/// Sets the value at `path`, making the objects on the way.
fn set_path(root: &mut Value, path: &FieldPath, value: Value) {
    let mut v = root;
    for seg in path.segments() {
        if !v.is_object() {
            *v = Value::Object(Default::default());
        }
        v = v
            .as_object_mut()
            .expect("made an object above")
            .entry(seg.clone())
            .or_insert(Value::Null);
    }
    *v = value;
}

// ----------------------------------------------------------------- running

/// The outcome of one test.
#[derive(Debug)]
pub struct TestResult {
    pub got: Vec<Got>,
    /// Expectations no decision met.
    pub missing: Vec<String>,
    /// Decisions no expectation accounted for.
    pub unexpected: Vec<usize>,
    /// `expect_none` entries a decision met, with the decision.
    pub forbidden: Vec<(String, usize)>,
    /// Invalid events and conditions that failed: worth showing on failure.
    pub notes: Vec<String>,
}

impl TestResult {
    pub fn passed(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.forbidden.is_empty()
    }
}

impl Suite<'_> {
    /// Runs one test in virtual time.
    pub fn run(&self, test: &Test) -> TestResult {
        let mut engine = Engine::new(
            Arc::clone(&self.rules),
            self.engine.clone(),
            &self.policy.retained_fields(&self.email),
        );
        engine.assign(0);
        let mut state = VirtualState::default();
        let mut got = Vec::new();
        let mut notes = Vec::new();
        let mut last = test.start;
        for (label, bytes) in &test.events {
            let event = match self.schema.decode_lazy(bytes, &|kind| engine.reads(kind)) {
                Ok(e) => e,
                Err(e) => {
                    notes.push(format!("{label} is invalid and was skipped: {e}"));
                    continue;
                }
            };
            last = last.max(event.time);
            let mut out = Output::default();
            engine.on_event(0, &event, Clock::Virtual, &mut out);
            self.decide(test, out, &mut state, &mut got, &mut notes);
        }
        // Default: far enough for every pending deadline (and grace).
        let end = test.until.unwrap_or(last + 400 * 86_400_000);
        let mut out = Output::default();
        engine.advance_to(end, Clock::Virtual, &mut out);
        self.decide(test, out, &mut state, &mut got, &mut notes);
        compare(test, got, notes)
    }

    fn decide(
        &self,
        test: &Test,
        out: Output,
        state: &mut VirtualState,
        got: &mut Vec<Got>,
        notes: &mut Vec<String>,
    ) {
        for e in out.errors {
            notes.push(format!("rule {}: {}", e.rule_id, e.message));
        }
        for r in out.missing_key {
            notes.push(format!(
                "rule {r}: a trigger lacked its key or deadline field and opened nothing"
            ));
        }
        let cx = Decide {
            templates: self.templates,
            email: &self.email,
            unsubscribe_url: self.unsubscribe_url.as_deref(),
            policy: &self.policy,
        };
        for d in &out.decisions {
            let f = &d.firing;
            let needs_address = !self.addressless_channels.contains(&f.rule.notify.channel);
            let profile = test.profiles.get(f.event.customer());
            let prepared = state.prepare(d, &cx, needs_address, profile, f.fired_at);
            let record = crate::pipeline::record(d, &prepared, f.fired_at);
            let reason = record
                .reason
                .clone()
                .or_else(|| default_reason(prepared.outcome()));
            let n = match &prepared {
                Prepared::Send(n) | Prepared::Shadow(n) => Some(n),
                Prepared::Skip { .. } => None,
            };
            got.push(Got {
                rule: f.rule.id.clone(),
                customer: f.event.customer().to_owned(),
                outcome: prepared.outcome(),
                at: f.fired_at,
                reason,
                to: n.and_then(|n| n.recipient.clone()),
                subject: n.map(|n| n.message.subject.clone()),
                text: n.map(|n| n.message.text.clone()),
                html: n.and_then(|n| n.message.html.clone()),
            });
        }
    }
}

/// A sentence for outcomes the engine decides without details.
fn default_reason(outcome: &str) -> Option<String> {
    Some(
        match outcome {
            "cooldown" => "the rule already messaged this customer within its cooldown",
            "duplicate" => "once_per: this was already sent for the same values",
            "stale" => "later than the rule's stale_after",
            "shadow" => "the rule is in shadow mode: decided and rendered, not sent",
            _ => return None,
        }
        .to_string(),
    )
}

impl Expect {
    fn matches(&self, g: &Got, default_outcome: Option<&str>) -> bool {
        let contains = |hay: &Option<String>, needle: &Option<String>| match needle {
            None => true,
            Some(n) => hay.as_deref().is_some_and(|h| h.contains(n.as_str())),
        };
        self.rule == g.rule
            && self.customer.as_ref().is_none_or(|c| *c == g.customer)
            && self
                .outcome
                .as_deref()
                .or(default_outcome)
                .is_none_or(|o| o == g.outcome)
            && self.at.is_none_or(|a| a == g.at)
            && self.to.as_ref().is_none_or(|t| g.to.as_ref() == Some(t))
            && contains(&g.subject, &self.subject_contains)
            && contains(&g.text, &self.text_contains)
            && contains(&g.html, &self.html_contains)
            && contains(&g.reason, &self.reason_contains)
    }

    fn describe(&self, start: Millis, default_outcome: Option<&str>) -> String {
        let mut s = format!(
            "{}  {} → {}  {}",
            self.at.map_or("any time".into(), |a| offset(a, start)),
            self.rule,
            self.customer.as_deref().unwrap_or("any customer"),
            self.outcome
                .as_deref()
                .or(default_outcome)
                .unwrap_or("any outcome"),
        );
        for (what, v) in [
            ("to", &self.to),
            ("subject contains", &self.subject_contains),
            ("text contains", &self.text_contains),
            ("html contains", &self.html_contains),
            ("reason contains", &self.reason_contains),
        ] {
            if let Some(v) = v {
                let _ = write!(s, ", {what} {v:?}");
            }
        }
        s
    }
}

fn compare(test: &Test, got: Vec<Got>, notes: Vec<String>) -> TestResult {
    let in_scope = |g: &Got| test.rules.as_ref().is_none_or(|r| r.contains(&g.rule));
    let mut used = vec![false; got.len()];
    let mut missing = Vec::new();
    for e in &test.expect {
        match (0..got.len()).find(|&i| !used[i] && e.matches(&got[i], Some("sent"))) {
            Some(i) => used[i] = true,
            None => missing.push(e.describe(test.start, Some("sent"))),
        }
    }
    let unexpected = (0..got.len())
        .filter(|&i| !used[i] && in_scope(&got[i]))
        .collect();
    let mut forbidden = Vec::new();
    for e in &test.expect_none {
        for (i, g) in got.iter().enumerate() {
            if e.matches(g, None) {
                forbidden.push((e.describe(test.start, None), i));
            }
        }
    }
    TestResult {
        got,
        missing,
        unexpected,
        forbidden,
        notes,
    }
}

/// `+30m`-style offset of `t` from the test's start.
fn offset(t: Millis, start: Millis) -> String {
    let d = t - start;
    let sign = if d < 0 { "-" } else { "+" };
    let secs = d.unsigned_abs() / 1000;
    let (days, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = sign.to_string();
    if days > 0 {
        let _ = write!(out, "{days}d");
    }
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if m > 0 {
        let _ = write!(out, "{m}m");
    }
    if s > 0 || out.len() == 1 {
        let _ = write!(out, "{s}s");
    }
    out
}

/// One decision as a line of the report.
fn got_line(g: &Got, start: Millis) -> String {
    let mut s = format!(
        "{:>7}  {} → {}  {}",
        offset(g.at, start),
        g.rule,
        g.customer,
        g.outcome
    );
    if let Some(subject) = &g.subject {
        let _ = write!(s, "  {subject:?}");
    }
    if let Some(r) = &g.reason {
        let _ = write!(s, "  ({r})");
    }
    s
}

/// The report of a failed test: expected versus got, each decision with
/// its reason.
pub fn failure_report(test: &Test, r: &TestResult) -> String {
    let mut s = String::new();
    for m in &r.missing {
        let _ = writeln!(s, "    expected, did not happen:  {m}");
    }
    for &i in &r.unexpected {
        let _ = writeln!(
            s,
            "    happened, not expected:    {}",
            got_line(&r.got[i], test.start).trim_start()
        );
    }
    for (e, i) in &r.forbidden {
        let _ = writeln!(
            s,
            "    must not happen, did:      {e}\n                        got:   {}",
            got_line(&r.got[*i], test.start).trim_start()
        );
    }
    let _ = writeln!(
        s,
        "    every decision in this test (time after start = {}):",
        format_time(test.start)
    );
    if r.got.is_empty() {
        let _ = writeln!(s, "         (none: no rule fired)");
    }
    for g in &r.got {
        let _ = writeln!(s, "    {}", got_line(g, test.start));
    }
    for n in &r.notes {
        let _ = writeln!(s, "    note: {n}");
    }
    s
}

/// Runs `tests` (those whose name contains `filter`), printing one line
/// per test and a report per failure. Returns (passed, failed).
impl Test {
    /// `--filter`: part of the test's name, or of its file's name (by
    /// convention the rule id, e.g. `checkout-dropoff`).
    pub fn matches(&self, filter: &str) -> bool {
        self.name.contains(filter)
            || self
                .file
                .file_stem()
                .is_some_and(|stem| stem.to_string_lossy().contains(filter))
    }
}

pub fn run_all(
    suite: &Suite<'_>,
    tests: &[Test],
    filter: Option<&str>,
    out: &mut String,
) -> (usize, usize) {
    let (mut passed, mut failed) = (0, 0);
    let mut file: Option<&Path> = None;
    for t in tests {
        if filter.is_some_and(|f| !t.matches(f)) {
            continue;
        }
        if file != Some(t.file.as_path()) {
            let _ = writeln!(out, "{}", t.file.display());
            file = Some(t.file.as_path());
        }
        let r = suite.run(t);
        if r.passed() {
            passed += 1;
            let _ = writeln!(out, "  ok    {}", t.name);
        } else {
            failed += 1;
            let _ = writeln!(out, "  FAIL  {}  ({}:{})", t.name, t.file.display(), t.line);
            out.push_str(&failure_report(t, &r));
        }
    }
    (passed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{load_rules, LoadOptions};

    fn schema() -> EventSchema {
        EventSchema::conventional()
    }

    /// Writes `body` as the only test file and loads it.
    fn load(body: &str) -> (Result<Vec<Test>, Diagnostics>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.toml"), body).unwrap();
        (load_tests(dir.path(), &schema()), dir)
    }

    fn run_shipped(body: &str) -> (String, usize, usize) {
        let loaded = load_rules(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules")),
            &LoadOptions::default(),
        )
        .unwrap();
        let (tests, _dir) = load(body);
        let tests = tests.unwrap();
        let suite = Suite {
            rules: Arc::new(loaded.rules),
            templates: &loaded.templates,
            schema: schema(),
            email: FieldPath::parse("customer.email").unwrap(),
            engine: EngineConfig::default(),
            policy: PolicyConfig::default(),
            unsubscribe_url: None,
            addressless_channels: Default::default(),
        };
        let mut out = String::new();
        let (p, f) = run_all(&suite, &tests, None, &mut out);
        (out, p, f)
    }

    const DROPOFF: &str = r#"{ at = "+0m", type = "checkout_started", event_id = "e1", customer_id = "c-1", customer = { email = "fay@example.com" }, cart = { total = 54.9, items = 2 } }"#;

    #[test]
    fn a_failure_shows_expected_against_got_with_reasons() {
        let (out, passed, failed) = run_shipped(&format!(
            r#"
[[test]]
name = "wrong time and a missing order"
events = [
  {DROPOFF},
  {{ at = "+1h", type = "checkout_started", event_id = "e2", customer_id = "c-1", customer = {{ email = "fay@example.com" }}, cart = {{ total = 30.0 }} }},
]
expect = [{{ rule = "checkout-dropoff", customer = "c-1", at = "+20m" }}]
"#
        ));
        assert_eq!((passed, failed), (0, 1), "{out}");
        for want in [
            "FAIL  wrong time and a missing order",
            "expected, did not happen:  +20m  checkout-dropoff → c-1  sent",
            "happened, not expected:    +30m  checkout-dropoff → c-1  sent  \"You left 2 items in your basket\"",
            "+1h30m  checkout-dropoff → c-1  cooldown",
            "(the rule already messaged this customer within its cooldown)",
        ] {
            assert!(out.contains(want), "missing {want:?} in:\n{out}");
        }
    }

    #[test]
    fn the_rules_filter_and_expect_none() {
        let (out, passed, failed) = run_shipped(&format!(
            r#"
[[test]]
name = "only the rule under test counts"
rules = ["carrier-delay"]
events = [{DROPOFF}]
expect_none = [{{ rule = "carrier-delay" }}]

[[test]]
name = "expect_none catches a send"
events = [{DROPOFF}]
expect_none = [{{ rule = "checkout-dropoff", outcome = "sent" }}]
"#
        ));
        assert_eq!((passed, failed), (1, 1), "{out}");
        assert!(
            out.contains(
                "must not happen, did:      any time  checkout-dropoff → any customer  sent"
            ),
            "{out}"
        );
    }

    #[test]
    fn profiles_feed_the_contact_policy() {
        let (out, passed, _) = run_shipped(&format!(
            r#"
[[test]]
name = "consent from the profile"
events = [{DROPOFF}]
profiles = {{ c-1 = {{ consent = {{ marketing = false }} }} }}
expect = [{{ rule = "checkout-dropoff", outcome = "unsubscribed", reason_contains = "marketing" }}]
"#
        ));
        assert_eq!(passed, 1, "{out}");
    }

    #[test]
    fn invalid_test_files_name_the_place_and_the_fix() {
        for (body, want) in [
            ("[[test]]\nname = \"x\"\nevent = []\n", "unknown field `event`"),
            (
                "[[test]]\nname = \"x\"\nevents = [{ at = \"in a bit\", type = \"t\", customer_id = \"c\" }]\nexpect_none = [{ rule = \"r\" }]\n",
                "t.toml:3:11: error: event 1 of test \"x\": neither +DURATION",
            ),
            (
                "[[test]]\nname = \"x\"\nevents = [{ type = \"t\", customer_id = \"c\" }]\nexpect_none = [{ rule = \"r\" }]\n",
                "it has no time: neither at nor `ts`",
            ),
            (
                "[[test]]\nname = \"x\"\nevents = [{ at = \"+1m\", type = \"t\", customer_id = \"c\" }]\n",
                "test \"x\" expects nothing",
            ),
            (
                "[[test]]\nname = \"x\"\nevents = [{ at = \"+1m\", type = \"t\", customer_id = \"c\" }]\nexpect = [{ rule = \"r\", outcome = \"delivered\" }]\n",
                "expect: outcome = \"delivered\" is not an outcome",
            ),
            ("name = \"x\"\n", "unknown field `name`"),
            ("[[test]\n", "t.toml:1:"),
        ] {
            let (r, _dir) = load(body);
            let text = r.map(|_| String::new()).unwrap_or_else(|d| d.to_string());
            assert!(text.contains(want), "{body}\nwanted {want:?} in:\n{text}");
        }
    }

    #[test]
    fn unknown_rule_names_get_a_suggestion() {
        let loaded = load_rules(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules")),
            &LoadOptions::default(),
        )
        .unwrap();
        let (tests, _dir) = load(&format!(
            "[[test]]\nname = \"x\"\nevents = [{DROPOFF}]\nexpect = [{{ rule = \"checkout-dropof\" }}]\n"
        ));
        let d = check_rule_names(&tests.unwrap(), &loaded.rules).to_string();
        assert!(
            d.contains("names the rule \"checkout-dropof\", which is not loaded"),
            "{d}"
        );
        assert!(d.contains("did you mean \"checkout-dropoff\"?"), "{d}");
    }

    #[test]
    fn offsets_read_like_durations() {
        assert_eq!(offset(1_800_000, 0), "+30m");
        assert_eq!(offset(0, 0), "+0s");
        assert_eq!(offset(90_061_000, 0), "+1d1h1m1s");
        assert_eq!(offset(-60_000, 0), "-1m");
    }
}
