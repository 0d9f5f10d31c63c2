//! Loading a rules folder: `rules/*.toml` plus `rules/templates/`.
//!
//! Every problem in every file is collected, not just the first, so a CX
//! lead fixes a whole batch per `forewarn check`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Spanned;

use super::catalog::{load_catalogs, Catalog};
use super::diagnostics::{Diagnostic, Diagnostics};
use super::expr::Expr;
use super::model::*;
use crate::event::{FieldPath, Millis};
use crate::notify::template::Templates;

/// What the rules are checked against besides themselves.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Channel names from the daemon config; `None` skips the channel check
    /// (`forewarn check` without `--config`).
    pub channels: Option<BTreeSet<String>>,
}

/// A validated rules folder.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub rules: RuleSet,
    pub templates: Templates,
    pub catalogs: BTreeMap<String, Arc<Catalog>>,
}

pub fn load_rules(dir: &Path, opts: &LoadOptions) -> Result<Loaded, Diagnostics> {
    let mut diags = Vec::new();
    if !dir.is_dir() {
        diags.push(
            Diagnostic::file(dir, "the rules folder does not exist")
                .help("point rules.dir (or the folder argument) at the folder that holds your *.toml rule files"),
        );
        return Err(Diagnostics(diags));
    }
    let templates = Templates::load(&dir.join("templates"), &mut diags);
    let catalogs = load_catalogs(&dir.join("catalogs"), &mut diags);

    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
            .collect(),
        Err(e) => {
            diags.push(Diagnostic::file(
                dir,
                format!("cannot read the rules folder: {e}"),
            ));
            return Err(Diagnostics(diags));
        }
    };
    files.sort();

    let mut rules = Vec::new();
    let mut seen: HashMap<String, (PathBuf, usize)> = HashMap::new();
    for file in &files {
        let source = match std::fs::read_to_string(file) {
            Ok(s) => s,
            Err(e) => {
                diags.push(Diagnostic::file(file, format!("cannot read the file: {e}")));
                continue;
            }
        };
        let raw: RawRuleFile = match toml::from_str(&source) {
            Ok(r) => r,
            Err(e) => {
                diags.push(toml_error(file, &source, &e));
                continue;
            }
        };
        if raw.rule.is_empty() {
            diags.push(
                Diagnostic::file(file, "the file defines no rule")
                    .help("start each rule with a [[rule]] header, or remove the file"),
            );
        }
        for raw_rule in raw.rule {
            let mut cx = FileCx {
                file,
                source: &source,
                diags: &mut diags,
            };
            let span = raw_rule.span();
            let Some(rule) = cx.rule(raw_rule.into_inner(), span, &templates, &catalogs, opts)
            else {
                continue;
            };
            match seen.get(&rule.id) {
                Some((other, line)) => diags.push(
                    Diagnostic::file(file, format!("rule id {:?} is already used", rule.id))
                        .help(format!(
                            "rule ids must be unique across the folder; it is first defined at {}:{line}; rename one of them",
                            other.display()
                        )),
                ),
                None => {
                    seen.insert(rule.id.clone(), (file.clone(), rule.origin.line));
                    rules.push(rule);
                }
            }
        }
    }
    if files.is_empty() {
        diags.push(
            Diagnostic::file(dir, "the rules folder has no *.toml rule file")
                .help("add a file such as rules/checkout.toml with a [[rule]] table"),
        );
    }
    if diags.is_empty() {
        Ok(Loaded {
            rules: RuleSet::new(rules),
            templates,
            catalogs,
        })
    } else {
        Err(Diagnostics(diags))
    }
}

fn toml_error(file: &Path, source: &str, e: &toml::de::Error) -> Diagnostic {
    let offset = e.span().map_or(0, |s| s.start);
    let message = e.message().trim().to_string();
    let help = if message.contains("unknown field") {
        "remove the key or fix its spelling; the keys a rule accepts are listed in rules/README.md"
    } else if message.contains("missing field") {
        "add the missing key to this rule"
    } else {
        "fix the TOML syntax here; strings need quotes, and each rule starts with [[rule]]"
    };
    Diagnostic::at(file, source, offset, message).help(help)
}

struct FileCx<'a> {
    file: &'a Path,
    source: &'a str,
    diags: &'a mut Vec<Diagnostic>,
}

impl FileCx<'_> {
    fn err(&mut self, span: Range<usize>, message: impl Into<String>, help: impl Into<String>) {
        self.diags
            .push(Diagnostic::at(self.file, self.source, span.start, message).help(help));
    }

    /// Byte offset where a string value's content starts (past its quotes).
    fn content_start(&self, span: &Range<usize>) -> usize {
        let rest = &self.source[span.start.min(self.source.len())..];
        let quote = if rest.starts_with("\"\"\"") || rest.starts_with("'''") {
            3
        } else {
            1
        };
        span.start + quote
    }

    fn rule(
        &mut self,
        raw: RawRule,
        span: Range<usize>,
        templates: &Templates,
        catalogs: &BTreeMap<String, Arc<Catalog>>,
        opts: &LoadOptions,
    ) -> Option<Rule> {
        let before = self.diags.len();
        let id = raw.id.get_ref().trim().to_string();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            self.err(
                raw.id.span(),
                format!("rule id {:?} is not a valid id", raw.id.get_ref()),
                "use letters, digits, '-' and '_', e.g. \"checkout-dropoff\"",
            );
        }

        let kind: Option<&str> = match raw.kind.get_ref().as_str() {
            k @ ("match" | "absence" | "threshold") => Some(k),
            other => {
                self.err(
                    raw.kind.span(),
                    format!("kind = {other:?} is not a rule kind"),
                    "use \"match\", \"absence\" or \"threshold\"",
                );
                None
            }
        };

        let class = match raw.class.as_ref().map(|c| c.get_ref().as_str()) {
            None | Some("transactional") => Class::Transactional,
            Some("marketing") => Class::Marketing,
            Some(other) => {
                let span = raw.class.as_ref().map_or(0..0, Spanned::span);
                self.err(
                    span,
                    format!("class = {other:?} is not a message class"),
                    "use \"transactional\" or \"marketing\"",
                );
                Class::Transactional
            }
        };

        let mode = match raw.mode.as_ref().map(|m| m.get_ref().as_str()) {
            None | Some("live") => Mode::Live,
            Some("shadow") => Mode::Shadow,
            Some(other) => {
                let span = raw.mode.as_ref().map_or(0..0, Spanned::span);
                self.err(
                    span,
                    format!("mode = {other:?} is not a mode"),
                    "use \"live\" (send) or \"shadow\" (decide and record, send nothing)",
                );
                Mode::Live
            }
        };

        let holdout_percent = match raw
            .holdout_percent
            .as_ref()
            .map(|h| (h.get_ref().value(), h.span()))
        {
            None => None,
            Some((h, _)) if h.is_finite() && (0.0..100.0).contains(&h) => {
                Some(h).filter(|&v| v > 0.0)
            }
            Some((h, span)) => {
                self.err(
                    span,
                    format!("holdout_percent = {h} is not a share of customers"),
                    "use a percentage from 0 up to (not including) 100, e.g. 10 to keep one customer in ten as a control group",
                );
                None
            }
        };

        let trigger_span = raw.trigger.span();
        let trigger = self.condition(clone_condition(raw.trigger.get_ref()), trigger_span);

        // Which fields each kind takes. A field that does not apply is an
        // error, not ignored: a `within` on a match rule would otherwise
        // read as a promise the engine does not keep.
        let kind_name = raw.kind.get_ref().clone();
        let present: [(&str, Option<Range<usize>>); 9] = [
            ("until", raw.until.as_ref().map(Spanned::span)),
            ("cancel_on", raw.cancel_on.as_ref().map(Spanned::span)),
            ("within", raw.within.as_ref().map(Spanned::span)),
            ("deadline", raw.deadline.as_ref().map(Spanned::span)),
            ("grace", raw.grace.as_ref().map(Spanned::span)),
            ("on_repeat", raw.on_repeat.as_ref().map(Spanned::span)),
            ("stale_after", raw.stale_after.as_ref().map(Spanned::span)),
            ("count", raw.count.as_ref().map(Spanned::span)),
            ("catalog", raw.catalog.as_ref().map(Spanned::span)),
        ];
        let allowed: &[&str] = match kind_name.as_str() {
            "match" => &["catalog"],
            "absence" => &[
                "until",
                "cancel_on",
                "within",
                "deadline",
                "grace",
                "on_repeat",
                "stale_after",
            ],
            "threshold" => &["count", "within"],
            _ => &[],
        };
        for (field, span) in &present {
            let Some(span) = span else { continue };
            if kind.is_some() && !allowed.contains(field) {
                self.err(
                    span.clone(),
                    format!("`{field}` does not apply to a {kind_name} rule"),
                    format!(
                        "remove `{field}`; a {kind_name} rule takes {}",
                        describe_fields(&kind_name)
                    ),
                );
            }
        }

        let key = match &raw.key {
            None => vec![KeyField::Customer],
            Some(k) => {
                let mut fields = Vec::new();
                if k.get_ref().is_empty() {
                    self.err(
                        k.span(),
                        "`key` is empty",
                        "list the fields that tie events together, e.g. key = [\"customer_id\"]",
                    );
                }
                for f in k.get_ref() {
                    match FieldPath::parse(f) {
                        Ok(p) => fields.push(KeyField::Path(p)),
                        Err(e) => self.err(
                            k.span(),
                            format!("key field {f:?}: {e}"),
                            "write event field paths such as \"customer_id\" or \"order.id\"",
                        ),
                    }
                }
                fields
            }
        };
        let cooldown = raw
            .cooldown
            .as_ref()
            .and_then(|d| self.duration("cooldown", d));

        let kind = match kind {
            None => None,
            Some("match") => {
                let catalog = match &raw.catalog {
                    None => Some(None),
                    Some(name) => {
                        match catalogs.get(name.get_ref()) {
                            Some(c) => Some(Some(Arc::clone(c))),
                            None => {
                                let known: Vec<&String> = catalogs.keys().collect();
                                self.err(
                                name.span(),
                                format!("catalog {:?} does not exist in rules/catalogs/", name.get_ref()),
                                if known.is_empty() {
                                    format!("create rules/catalogs/{}.toml with [[entry]] tables", name.get_ref())
                                } else {
                                    format!("use one of {known:?}, or create rules/catalogs/{}.toml", name.get_ref())
                                },
                            );
                                None
                            }
                        }
                    }
                };
                catalog.map(|catalog| RuleKind::Match { catalog })
            }
            Some("absence") => self.absence(&raw, rule_span(&span)),
            Some(_) => self.threshold(&raw, rule_span(&span)),
        };

        let catalog = match &kind {
            Some(RuleKind::Match { catalog: Some(c) }) => Some(Arc::clone(c)),
            _ => None,
        };
        let mut once_per = Vec::new();
        if let Some(op) = &raw.once_per {
            if op.get_ref().is_empty() {
                self.err(
                    op.span(),
                    "`once_per` is empty",
                    "list fields, e.g. once_per = [\"customer_id\", \"entry.id\"], or remove it",
                );
            }
            for f in op.get_ref() {
                if let Some(field) = f.strip_prefix("entry.") {
                    match &catalog {
                        None => self.err(
                            op.span(),
                            format!("once_per names {f:?}, but this rule joins no catalog, so `entry` never exists"),
                            "add catalog = \"…\" to the rule, or use event fields such as \"customer_id\"",
                        ),
                        Some(c) if !c.common_fields.contains(field) => self.err(
                            op.span(),
                            format!("once_per names {f:?}, but not every entry of catalog {:?} has a `{field}` field", c.name),
                            format!("use one of the fields every entry has: {:?}", c.common_fields.iter().map(|f| format!("entry.{f}")).collect::<Vec<_>>()),
                        ),
                        Some(_) => once_per.push(OncePerField::Entry(field.to_string())),
                    }
                } else {
                    let path = f
                        .strip_prefix("event.")
                        .or_else(|| f.strip_prefix("trigger."))
                        .unwrap_or(f);
                    match FieldPath::parse(path) {
                        Ok(p) => once_per.push(OncePerField::Event(KeyField::Path(p))),
                        Err(e) => self.err(
                            op.span(),
                            format!("once_per field {f:?}: {e}"),
                            "write event field paths such as \"customer_id\", or entry.<field>",
                        ),
                    }
                }
            }
        }

        let notify = raw.notify.into_inner();
        let channel = notify.channel.get_ref().clone();
        if let Some(channels) = &opts.channels {
            if !channels.contains(&channel) {
                let known: Vec<&str> = channels.iter().map(String::as_str).collect();
                self.err(
                    notify.channel.span(),
                    format!("channel {channel:?} is not defined in the daemon config"),
                    format!(
                        "use one of {known:?}, or add a [channels.{channel}] section to the config"
                    ),
                );
            }
        }
        let template = notify.template.get_ref().clone();
        if !templates.contains(&template) {
            let known = templates.names();
            self.err(
                notify.template.span(),
                format!("template {template:?} does not exist in rules/templates/"),
                if known.is_empty() {
                    format!("create rules/templates/{template}.subject and rules/templates/{template}.txt (and optionally .html)")
                } else {
                    format!("use one of {known:?}, or create rules/templates/{template}.subject and .txt")
                },
            );
        }

        let trigger_fields = match &kind {
            Some(RuleKind::Absence(a)) => {
                let conditions: Vec<&Condition> = a.until.iter().chain(&a.cancel_on).collect();
                trigger_fields(templates, &template, &conditions)
            }
            _ => Some(Vec::new()),
        };
        if self.diags.len() > before {
            return None;
        }
        Some(Rule {
            id,
            description: raw.description.unwrap_or_default(),
            kind: kind?,
            class,
            trigger: trigger?,
            key,
            cooldown,
            once_per,
            trigger_fields,
            enabled: raw.enabled.unwrap_or(true),
            mode,
            holdout_percent,
            notify: Notify { channel, template },
            origin: Origin {
                file: self.file.to_path_buf(),
                line: super::diagnostics::line_col(self.source, span.start).0,
            },
        })
    }

    fn duration(&mut self, field: &str, v: &Spanned<String>) -> Option<Millis> {
        match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) if !d.is_zero() => Some(d.as_millis() as Millis),
            Ok(_) => {
                self.err(
                    v.span(),
                    format!("`{field}` = {:?} is zero", v.get_ref()),
                    "use a positive duration such as \"30m\"",
                );
                None
            }
            Err(e) => {
                self.err(
                    v.span(),
                    format!("`{field}` = {:?} is not a duration ({e})", v.get_ref()),
                    "write a number with a unit: \"90s\", \"30m\", \"2h\", \"7d\" (units combine: \"1h 30m\")",
                );
                None
            }
        }
    }

    fn absence(&mut self, raw: &RawRule, span: Range<usize>) -> Option<RuleKind> {
        let before = self.diags.len();
        let until = match &raw.until {
            Some(u) => self.condition(clone_condition(u.get_ref()), u.span()),
            None => None,
        };
        let mut cancel_on = Vec::new();
        if let Some(c) = &raw.cancel_on {
            for cond in c.get_ref() {
                if let Some(cond) = self.condition(clone_condition(cond), c.span()) {
                    cancel_on.push(cond);
                }
            }
        }
        if raw.until.is_none() && raw.cancel_on.is_none() {
            self.err(
                span.clone(),
                "an absence rule needs `until` (the event that should follow) or `cancel_on`",
                "add until = { event = \"order_placed\" } (the event whose absence the rule is about)",
            );
        }
        let deadline = match (&raw.within, &raw.deadline) {
            (Some(w), None) => {
                if let Some(g) = &raw.grace {
                    self.err(
                        g.span(),
                        "`grace` only applies with `deadline`",
                        "remove `grace`, or use deadline = \"<field>\" with grace",
                    );
                }
                self.duration("within", w).map(DeadlineSpec::Within)
            }
            (None, Some(d)) => {
                let grace = match &raw.grace {
                    Some(g) => self.duration("grace", g),
                    None => Some(0),
                };
                match FieldPath::parse(d.get_ref()) {
                    Ok(path) => grace.map(|grace| DeadlineSpec::Field { path, grace }),
                    Err(e) => {
                        self.err(d.span(), format!("`deadline` = {:?}: {e}", d.get_ref()), "name the trigger field that holds the promised time, e.g. deadline = \"promised_delivery_at\"");
                        None
                    }
                }
            }
            (Some(w), Some(_)) => {
                self.err(w.span(), "an absence rule takes `within` or `deadline`, not both", "keep within = \"30m\" (relative to the trigger) or deadline = \"<field>\" (a time on the trigger), not both");
                None
            }
            (None, None) => {
                self.err(
                    span,
                    "an absence rule needs `within` or `deadline`",
                    "add within = \"30m\" (deadline = trigger time + 30 minutes), or deadline = \"promised_delivery_at\" with grace = \"2h\"",
                );
                None
            }
        };
        let on_repeat = match raw.on_repeat.as_ref().map(|r| r.get_ref().as_str()) {
            None | Some("restart") => OnRepeat::Restart,
            Some("ignore") => OnRepeat::Ignore,
            Some(other) => {
                let sp = raw.on_repeat.as_ref().map_or(0..0, Spanned::span);
                self.err(
                    sp,
                    format!("on_repeat = {other:?} is not an option"),
                    "use \"restart\" (a new trigger starts the wait again) or \"ignore\"",
                );
                OnRepeat::Restart
            }
        };
        let stale_after = raw
            .stale_after
            .as_ref()
            .and_then(|d| self.duration("stale_after", d));
        if self.diags.len() > before {
            return None;
        }
        Some(RuleKind::Absence(Absence {
            until,
            cancel_on,
            deadline: deadline?,
            on_repeat,
            stale_after,
        }))
    }

    fn threshold(&mut self, raw: &RawRule, span: Range<usize>) -> Option<RuleKind> {
        let count = match &raw.count {
            Some(c) if *c.get_ref() >= 1 => Some(*c.get_ref() as usize),
            Some(c) => {
                self.err(
                    c.span(),
                    format!("count = {} must be at least 1", c.get_ref()),
                    "set how many events within `within` fire the rule, e.g. count = 3",
                );
                None
            }
            None => {
                self.err(
                    span.clone(),
                    "a threshold rule needs `count`",
                    "add count = 3 (how many events within `within` fire the rule)",
                );
                None
            }
        };
        let within = match &raw.within {
            Some(w) => self.duration("within", w),
            None => {
                self.err(
                    span,
                    "a threshold rule needs `within`",
                    "add within = \"10m\" (the sliding window)",
                );
                None
            }
        };
        Some(RuleKind::Threshold(Threshold {
            count: count?,
            within: within?,
        }))
    }

    fn condition(&mut self, raw: RawCondition, span: Range<usize>) -> Option<Condition> {
        let event = raw.event.get_ref().trim().to_string();
        if event.is_empty() {
            self.err(
                if raw.event.span().is_empty() {
                    span
                } else {
                    raw.event.span()
                },
                "the event type is empty",
                "name the event type to react to, e.g. event = \"checkout_started\"",
            );
            return None;
        }
        let when = match raw.when {
            None => None,
            Some(src) => match Expr::compile(src.get_ref()) {
                Ok(e) => Some(e),
                Err(e) => {
                    let at = self.content_start(&src.span()) + e.offset;
                    self.diags
                        .push(Diagnostic::at(self.file, self.source, at, e.message).help(e.help));
                    return None;
                }
            },
        };
        Some(Condition { event, when })
    }
}

/// The trigger fields a rule reads after the trigger: from its template
/// (`trigger.*`, `event.*`, and `customer.*`, which comes from the event's
/// `customer` object) and its until/cancel conditions (`trigger.*`).
/// `None` when one of them uses the trigger whole.
fn trigger_fields(
    templates: &Templates,
    template: &str,
    conditions: &[&Condition],
) -> Option<Vec<FieldPath>> {
    let mut out = Vec::new();
    for r in templates.referenced(template) {
        let (root, rest) = r.split_once('.').unwrap_or((r.as_str(), ""));
        match (root, rest) {
            ("event" | "trigger", "") => return None,
            ("event" | "trigger", rest) => out.push(FieldPath::parse(rest).ok()?),
            ("customer", "") => out.push(FieldPath::parse("customer").ok()?),
            ("customer", rest) => out.push(FieldPath::parse(&format!("customer.{rest}")).ok()?),
            _ => {}
        }
    }
    for c in conditions {
        if let Some(w) = &c.when {
            out.extend(w.field_paths("trigger")?);
        }
    }
    Some(out)
}

fn clone_condition(c: &RawCondition) -> RawCondition {
    RawCondition {
        event: c.event.clone(),
        when: c.when.clone(),
    }
}

/// The start of the `[[rule]]` table, for rule-level problems.
fn rule_span(span: &Range<usize>) -> Range<usize> {
    span.start..span.start
}

fn describe_fields(kind: &str) -> &'static str {
    match kind {
        "match" => "trigger, catalog, key, once_per, cooldown",
        "absence" => "trigger, until, cancel_on, key, within or deadline + grace, on_repeat, stale_after, once_per, cooldown",
        _ => "trigger, key, count, within, once_per, cooldown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        for (name, body) in files {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        dir
    }

    const TEMPLATES: &[(&str, &str)] = &[
        (
            "templates/delay.subject",
            "Your parcel {{ event.parcel_id }} is late",
        ),
        (
            "templates/delay.txt",
            "Hello, sorry about parcel {{ event.parcel_id }}.",
        ),
    ];

    const GOOD: &str = r#"
[[rule]]
id = "carrier-delay"
kind = "match"
trigger = { event = "shipment_delayed", if = "event.delay_hours >= 4" }
notify = { channel = "email", template = "delay" }
"#;

    fn load(files: &[(&str, &str)]) -> Result<Loaded, Diagnostics> {
        let mut all = TEMPLATES.to_vec();
        all.extend_from_slice(files);
        let dir = folder(&all);
        let opts = LoadOptions {
            channels: Some(["email".to_string()].into()),
        };
        let r = load_rules(dir.path(), &opts);
        drop(dir);
        r
    }

    #[test]
    fn loads_a_valid_rule_and_indexes_it_by_trigger() {
        let loaded = load(&[("a.toml", GOOD)]).unwrap();
        assert_eq!(loaded.rules.len(), 1);
        assert_eq!(
            loaded
                .rules
                .rule(loaded.rules.triggered_by("shipment_delayed")[0])
                .id,
            "carrier-delay"
        );
        assert!(loaded.rules.triggered_by("order_placed").is_empty());
    }

    fn errors(files: &[(&str, &str)]) -> String {
        load(files).unwrap_err().to_string()
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let text = errors(&[("a.toml", "[[rule]]\nid = \"x\nkind = \"match\"\n")]);
        assert!(text.contains("a.toml:2:"), "{text}");
    }

    #[test]
    fn unknown_key_is_an_error_with_position() {
        let text = errors(&[(
            "a.toml",
            &GOOD.replace("kind = ", "knd = \"match\"\nkind = "),
        )]);
        assert!(
            text.contains("a.toml:4:1: error: unknown field `knd`"),
            "{text}"
        );
        assert!(text.contains("help: remove the key"), "{text}");
    }

    #[test]
    fn cel_error_points_into_the_condition() {
        let text = errors(&[(
            "a.toml",
            &GOOD.replace("event.delay_hours >= 4", "event.delay_hours >="),
        )]);
        assert!(text.contains("a.toml:5:"), "{text}");
        assert!(text.contains("not valid CEL"), "{text}");
    }

    #[test]
    fn unknown_channel_and_template_say_what_exists() {
        let text = errors(&[(
            "a.toml",
            &GOOD
                .replace("\"email\"", "\"sms\"")
                .replace("\"delay\"", "\"late\""),
        )]);
        assert!(text.contains("channel \"sms\" is not defined"), "{text}");
        assert!(text.contains("[\"email\"]"), "{text}");
        assert!(text.contains("template \"late\" does not exist"), "{text}");
        assert!(text.contains("[\"delay\"]"), "{text}");
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let text = errors(&[("a.toml", GOOD), ("b.toml", GOOD)]);
        assert!(
            text.contains("rule id \"carrier-delay\" is already used"),
            "{text}"
        );
        assert!(text.contains("a.toml:2"), "{text}");
    }

    #[test]
    fn fields_that_do_not_apply_are_refused_not_ignored() {
        let text = errors(&[(
            "a.toml",
            &GOOD.replace("notify", "within = \"7d\"\nholdout_percent = 100.0\nnotify"),
        )]);
        assert!(
            text.contains("`within` does not apply to a match rule"),
            "{text}"
        );
        assert!(
            text.contains("holdout_percent = 100 is not a share of customers"),
            "{text}"
        );
    }

    #[test]
    fn holdout_percent_takes_integers_and_fractions() {
        for (text, want) in [("10", 10.0), ("2.5", 2.5), ("0", -1.0)] {
            let src = GOOD.replace("notify", &format!("holdout_percent = {text}\nnotify"));
            let loaded = load(&[("a.toml", &src)]).expect("loads");
            let got = loaded.rules.rule(0).holdout_percent;
            assert_eq!(got, (want >= 0.0).then_some(want), "{text}");
        }
    }

    #[test]
    fn absence_rules_need_until_and_a_deadline() {
        let rule = r#"
[[rule]]
id = "dropoff"
kind = "absence"
trigger = { event = "checkout_started" }
notify = { channel = "email", template = "delay" }
"#;
        let text = errors(&[("a.toml", rule)]);
        assert!(
            text.contains("a.toml:2:1: error: an absence rule needs `until`"),
            "{text}"
        );
        assert!(
            text.contains("an absence rule needs `within` or `deadline`"),
            "{text}"
        );
        let text = errors(&[(
            "a.toml",
            &rule.replace(
                "notify",
                "until = { event = \"order_placed\" }\nwithin = \"30 parsecs\"\nnotify",
            ),
        )]);
        assert!(
            text.contains("a.toml:7:10: error: `within` = \"30 parsecs\" is not a duration"),
            "{text}"
        );
    }

    #[test]
    fn once_per_fields_that_can_never_exist_are_errors() {
        let text = errors(&[(
            "a.toml",
            &GOOD.replace(
                "notify",
                "once_per = [\"customer_id\", \"entry.id\"]\nnotify",
            ),
        )]);
        assert!(
            text.contains("this rule joins no catalog, so `entry` never exists"),
            "{text}"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let text = errors(&[
            ("a.toml", &GOOD.replace("\"match\"", "\"sometimes\"")),
            ("b.toml", "[[rule]]\nid = 'x'\n"),
        ]);
        assert!(text.contains("kind = \"sometimes\""), "{text}");
        assert!(text.contains("b.toml"), "{text}");
        assert!(text.contains("2 errors found"), "{text}");
    }
}
