//! Loading a rules folder: `rules/*.toml` plus `rules/templates/`.
//!
//! Every problem in every file is collected, not just the first, so a CX
//! lead fixes a whole batch per `forewarn check`.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::diagnostics::{Diagnostic, Diagnostics};
use super::expr::Expr;
use super::model::*;
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
            let Some(rule) = cx.rule(raw_rule.into_inner(), span, &templates, opts) else {
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

        let kind = match raw.kind.get_ref().as_str() {
            "match" => Some(RuleKind::Match),
            k @ ("absence" | "threshold") => {
                self.err(
                    raw.kind.span(),
                    format!("kind = {k:?} is not supported by this forewarn version yet"),
                    "only kind = \"match\" runs today; keep this rule in a file outside the rules folder until the rule engine release",
                );
                None
            }
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

        let trigger_span = raw.trigger.span();
        let trigger = self.condition(raw.trigger.into_inner(), trigger_span);

        // Fields of SPEC section 2 that this version cannot act on yet. They
        // are rejected rather than ignored: a cooldown that silently does
        // nothing would mail customers more often than the rule says.
        let unsupported: [(&str, Option<Range<usize>>); 13] = [
            ("until", raw.until.as_ref().map(Spanned::span)),
            ("cancel_on", raw.cancel_on.as_ref().map(Spanned::span)),
            ("key", raw.key.as_ref().map(Spanned::span)),
            ("within", raw.within.as_ref().map(Spanned::span)),
            ("deadline", raw.deadline.as_ref().map(Spanned::span)),
            ("grace", raw.grace.as_ref().map(Spanned::span)),
            ("on_repeat", raw.on_repeat.as_ref().map(Spanned::span)),
            ("stale_after", raw.stale_after.as_ref().map(Spanned::span)),
            ("cooldown", raw.cooldown.as_ref().map(Spanned::span)),
            ("once_per", raw.once_per.as_ref().map(Spanned::span)),
            ("count", raw.count.as_ref().map(Spanned::span)),
            ("catalog", raw.catalog.as_ref().map(Spanned::span)),
            (
                "holdout_percent",
                raw.holdout_percent.as_ref().map(Spanned::span),
            ),
        ];
        for (field, span) in unsupported {
            if let Some(span) = span {
                self.err(
                    span,
                    format!("`{field}` is not supported by this forewarn version yet"),
                    format!("remove `{field}` from rule {id:?}; it would otherwise be ignored and the rule would behave differently than written"),
                );
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

        if self.diags.len() > before {
            return None;
        }
        Some(Rule {
            id,
            description: raw.description.unwrap_or_default(),
            kind: kind?,
            class,
            trigger: trigger?,
            enabled: raw.enabled.unwrap_or(true),
            mode,
            notify: Notify { channel, template },
            origin: Origin {
                file: self.file.to_path_buf(),
                line: super::diagnostics::line_col(self.source, span.start).0,
            },
        })
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
            loaded.rules.triggered_by("shipment_delayed")[0].id,
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
    fn fields_not_yet_supported_are_refused_not_ignored() {
        let text = errors(&[(
            "a.toml",
            &GOOD.replace("notify", "cooldown = \"7d\"\nnotify"),
        )]);
        assert!(text.contains("`cooldown` is not supported"), "{text}");
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
