//! Message templates (minijinja), in `rules/templates/`:
//! `NAME.subject` (one line), `NAME.txt` (plain text) and optionally
//! `NAME.html` (HTML, autoescaped).
//!
//! Rendering is strict: an undefined variable is an error, never an empty
//! string, and a subject that would contain CR or LF (header injection from
//! event data) is rejected.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use crate::rules::Diagnostic;

/// Variables a template may use (SPEC section 5).
pub const CONTEXT_VARIABLES: &[&str] = &[
    "event",
    "trigger",
    "entry",
    "customer",
    "rule",
    "episode",
    "notification",
];

const PARTS: [&str; 3] = ["subject", "txt", "html"];

#[derive(Clone, Default)]
pub struct Templates {
    env: Arc<Environment<'static>>,
    names: BTreeSet<String>,
    with_html: BTreeSet<String>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates")
            .field("names", &self.names)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("template {0:?} does not exist")]
    Missing(String),
    #[error("rendering {template} failed: {message}")]
    Failed { template: String, message: String },
    #[error("the subject of {0:?} would contain a line break (CR or LF), likely from event data; refusing to build the header")]
    HeaderInjection(String),
}

impl RenderError {
    /// Bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RenderError::Missing(_) => "missing_template",
            RenderError::Failed { .. } => "render_failed",
            RenderError::HeaderInjection(_) => "header_injection",
        }
    }
}

impl Templates {
    /// Loads every template in `dir`, pushing a diagnostic per problem.
    pub fn load(dir: &Path, diags: &mut Vec<Diagnostic>) -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        env.set_keep_trailing_newline(true);
        let mut names = BTreeSet::new();
        let mut with_html = BTreeSet::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(rd) => {
                let mut v: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
                v.sort();
                v
            }
            Err(_) => Vec::new(),
        };
        let mut parts_seen: BTreeSet<(String, String)> = BTreeSet::new();
        for path in entries.iter().filter(|p| p.is_file()) {
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some((name, part)) = file_name.rsplit_once('.') else {
                continue;
            };
            if !PARTS.contains(&part) {
                if !file_name.starts_with('.') && !file_name.ends_with(".md") {
                    diags.push(
                        Diagnostic::file(path, format!("`{file_name}` is not a template file"))
                            .help("templates are NAME.subject, NAME.txt and optionally NAME.html"),
                    );
                }
                continue;
            }
            let source = match std::fs::read_to_string(path) {
                Ok(s) => s,
                Err(e) => {
                    diags.push(Diagnostic::file(
                        path,
                        format!("cannot read the template: {e}"),
                    ));
                    continue;
                }
            };
            // Present, even if broken: a syntax error must not also read as "missing".
            parts_seen.insert((name.to_string(), part.to_string()));
            let source = if part == "subject" {
                let s = source.trim_end_matches(['\r', '\n']).to_string();
                if s.contains('\n') {
                    diags.push(
                        Diagnostic::at(
                            path,
                            &s,
                            s.find('\n').unwrap_or(0),
                            "the subject template has more than one line",
                        )
                        .help("a subject is a single line; move the rest to the .txt template"),
                    );
                    continue;
                }
                s
            } else {
                source
            };
            let tname = format!("{name}.{part}");
            if let Err(e) = env.add_template_owned(tname.clone(), source.clone()) {
                diags.push(template_diag(path, &source, &e));
                continue;
            }
            let Ok(tmpl) = env.get_template(&tname) else {
                continue;
            };
            for var in tmpl.undeclared_variables(false) {
                if !CONTEXT_VARIABLES.contains(&var.as_str()) {
                    let at = source.find(var.as_str()).unwrap_or(0);
                    diags.push(
                        Diagnostic::at(path, &source, at, format!("the template uses `{var}`, which is not defined when it renders"))
                            .help(format!("use one of {CONTEXT_VARIABLES:?}, e.g. `event.{var}` for a field of the event")),
                    );
                }
            }
            if part == "html" {
                with_html.insert(name.to_string());
            }
        }
        let all: BTreeSet<&String> = parts_seen.iter().map(|(n, _)| n).collect();
        for name in all {
            let has = |p: &str| parts_seen.contains(&(name.clone(), p.to_string()));
            if !has("subject") {
                diags.push(
                    Diagnostic::file(
                        &dir.join(format!("{name}.subject")),
                        format!("template {name:?} has no subject"),
                    )
                    .help(format!("create {name}.subject with a one-line subject")),
                );
            }
            if !has("txt") {
                diags.push(
                    Diagnostic::file(
                        &dir.join(format!("{name}.txt")),
                        format!("template {name:?} has no plain-text body"),
                    )
                    .help(format!(
                        "create {name}.txt; every message carries a text part, HTML is optional"
                    )),
                );
            }
            if has("subject")
                && has("txt")
                && env.get_template(&format!("{name}.subject")).is_ok()
                && env.get_template(&format!("{name}.txt")).is_ok()
            {
                names.insert(name.clone());
            }
        }
        Templates {
            env: Arc::new(env),
            names,
            with_html,
        }
    }

    /// Every variable path the template's parts read, e.g. `event.cart.total`.
    pub fn referenced(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for part in PARTS {
            if let Ok(t) = self.env.get_template(&format!("{name}.{part}")) {
                out.extend(t.undeclared_variables(true));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.names.iter().cloned().collect()
    }

    pub fn render(&self, name: &str, ctx: &serde_json::Value) -> Result<Rendered, RenderError> {
        if !self.contains(name) {
            return Err(RenderError::Missing(name.to_string()));
        }
        let render = |part: &str| -> Result<String, RenderError> {
            let tname = format!("{name}.{part}");
            self.env
                .get_template(&tname)
                .and_then(|t| t.render(ctx))
                .map_err(|e| RenderError::Failed {
                    template: tname,
                    // Plain Display: the alternate form would print context values.
                    message: e.to_string(),
                })
        };
        let subject = render("subject")?;
        if subject.contains(['\r', '\n']) {
            return Err(RenderError::HeaderInjection(name.to_string()));
        }
        let text = render("txt")?;
        let html = if self.with_html.contains(name) {
            Some(render("html")?)
        } else {
            None
        };
        Ok(Rendered {
            subject: subject.trim().to_string(),
            text,
            html,
        })
    }
}

/// Renders a one-line template given in the config (the unsubscribe URL):
/// strict about undefined values, no escaping, no line breaks allowed.
pub fn render_line(source: &str, ctx: &serde_json::Value) -> Result<String, RenderError> {
    const NAME: &str = "customers.unsubscribe_url";
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let out = env
        .render_str(source, ctx)
        .map_err(|e| RenderError::Failed {
            template: NAME.to_string(),
            message: e.to_string(),
        })?;
    if out.contains(['\r', '\n']) {
        return Err(RenderError::HeaderInjection(NAME.to_string()));
    }
    Ok(out.trim().to_string())
}

fn template_diag(path: &Path, source: &str, e: &minijinja::Error) -> Diagnostic {
    let line = e.line().unwrap_or(1);
    let offset = e.range().map(|r| r.start).unwrap_or_else(|| {
        source
            .split_inclusive('\n')
            .take(line - 1)
            .map(str::len)
            .sum()
    });
    Diagnostic::at(
        path,
        source,
        offset,
        format!(
            "template syntax error: {}",
            e.detail().unwrap_or(&e.kind().to_string())
        ),
    )
    .help("check the {{ … }} and {% … %} tags here; see https://docs.rs/minijinja for the syntax")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_unsubscribe_url_renders_encoded_and_refuses_line_breaks() {
        let ctx = json!({"customer": {"id": "ana@x.example/1"}});
        let url = render_line(
            "https://acme.example/u?c={{ customer.id | urlencode }}",
            &ctx,
        )
        .unwrap();
        // Like Jinja's, minijinja's urlencode keeps `/`.
        assert_eq!(url, "https://acme.example/u?c=ana%40x.example/1");
        let bad = json!({"customer": {"id": "a\r\nBcc: x@evil.example"}});
        assert!(matches!(
            render_line("https://acme.example/u?c={{ customer.id }}", &bad),
            Err(RenderError::HeaderInjection(_))
        ));
        assert!(render_line("{{ customer.nope }}", &ctx).is_err(), "strict");
    }

    fn load(files: &[(&str, &str)]) -> (Templates, Vec<Diagnostic>) {
        let dir = tempfile::tempdir().unwrap();
        for (n, b) in files {
            std::fs::write(dir.path().join(n), b).unwrap();
        }
        let mut d = Vec::new();
        let t = Templates::load(dir.path(), &mut d);
        (t, d)
    }

    #[test]
    fn renders_subject_text_and_escaped_html() {
        let (t, d) = load(&[
            ("hi.subject", "Hello {{ customer.name }}\n"),
            ("hi.txt", "Dear {{ customer.name }}, {{ event.note }}"),
            (
                "hi.html",
                "<p>Dear {{ customer.name }}, {{ event.note }}</p>",
            ),
        ]);
        assert!(d.is_empty(), "{d:?}");
        let r = t
            .render("hi", &json!({"customer": {"name": "<script>alert(1)</script>"}, "event": {"note": "{{ 7*7 }}"}}))
            .unwrap();
        assert_eq!(r.subject, "Hello <script>alert(1)</script>");
        assert_eq!(r.text, "Dear <script>alert(1)</script>, {{ 7*7 }}");
        let html = r.html.unwrap();
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(
            html.contains("{{ 7*7 }}"),
            "event data is never evaluated: {html}"
        );
    }

    #[test]
    fn subject_with_line_break_from_data_is_rejected() {
        let (t, _) = load(&[("hi.subject", "Hi {{ event.name }}"), ("hi.txt", "x")]);
        let err = t
            .render(
                "hi",
                &json!({"event": {"name": "Bob\r\nBcc: all@example.com"}}),
            )
            .unwrap_err();
        assert_eq!(err.reason(), "header_injection");
    }

    #[test]
    fn undefined_variables_fail_at_render_not_silently() {
        let (t, _) = load(&[("hi.subject", "Hi {{ event.missing }}"), ("hi.txt", "x")]);
        let err = t.render("hi", &json!({"event": {}})).unwrap_err();
        assert_eq!(err.reason(), "render_failed");
    }

    #[test]
    fn check_finds_syntax_errors_unknown_variables_and_missing_parts() {
        let (_, d) = load(&[
            ("a.subject", "Hi"),
            ("a.txt", "line one\n{{ event.x }\n"),
            ("b.subject", "Hi {{ cart.total }}"),
            ("b.txt", "x"),
            ("c.txt", "no subject"),
        ]);
        let text: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        let all = text.join("\n");
        assert!(all.contains("a.txt:2:"), "{all}");
        assert!(all.contains("template syntax error"), "{all}");
        assert!(all.contains("`cart`"), "{all}");
        assert!(all.contains("template \"c\" has no subject"), "{all}");
    }
}
