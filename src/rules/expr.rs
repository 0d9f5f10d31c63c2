//! CEL conditions: compiled once when rules load, evaluated per event.
//!
//! Variables are `event` (the current event), `trigger` (the event that
//! opened the episode; the event itself for `match` rules) and `entry` (a
//! catalog entry). Besides CEL's standard library there is
//! `semver_match(version, "req")`, and CEL's own `has(event.a.b)` macro.

use std::fmt;
use std::sync::Arc;

use cel::{Context, ExecutionError, Program, Value};

use crate::event::FieldPath;

/// The variables a condition may name.
pub const VARIABLES: &[&str] = &["event", "trigger", "entry"];

/// Macros that bind their own loop variables (`list.all(x, x > 1)`).
const BINDING_MACROS: &[&str] = &["all", "exists", "exists_one", "map", "filter"];

#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<Program>,
    /// The same condition compiled for the fast path, when its shape allows.
    native: Option<Arc<super::native::Native>>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

/// A compile problem, positioned inside the expression text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// Byte offset into the expression source.
    pub offset: usize,
    pub message: String,
    pub help: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("the condition returned {0}, not true or false")]
    NotBool(String),
    #[error("{0}")]
    Execution(String),
}

impl Expr {
    pub fn compile(source: &str) -> Result<Expr, ExprError> {
        let program = Program::compile(source).map_err(|errs| {
            let first = errs.errors.first();
            let (line, col) = first.map_or((1, 0), |e| (e.pos.0.max(1), e.pos.1.max(0)));
            ExprError {
                offset: offset_of(source, line as usize, col as usize),
                message: format!(
                    "the condition {source:?} is not valid CEL: {}",
                    first.map_or_else(|| errs.to_string(), |e| e.msg.clone())
                ),
                help: "conditions are CEL expressions, e.g. 'event.cart.total >= 20.0 && event.app.platform == \"ios\"'".into(),
            }
        })?;
        let refs = program.references();
        // Macros expand at parse time, so look for them in the text.
        let binds_locals = BINDING_MACROS
            .iter()
            .any(|m| source.contains(&format!(".{m}(")));
        if !binds_locals {
            if let Some(unknown) = refs
                .variables()
                .into_iter()
                .find(|v| !VARIABLES.contains(v))
            {
                return Err(ExprError {
                    offset: source.find(unknown).unwrap_or(0),
                    message: format!("the condition names `{unknown}`, which is not a variable here"),
                    help: format!(
                        "start field paths with `event.` (the current event), `trigger.` or `entry.`, e.g. `event.{unknown}`"
                    ),
                });
            }
        }
        if let Some(unknown) = refs.functions().into_iter().find(|f| !is_known_function(f)) {
            let suggestion = closest(unknown, SUGGESTIONS);
            return Err(ExprError {
                offset: source.find(unknown).unwrap_or(0),
                message: format!("the condition calls `{unknown}`, which is not a function"),
                help: match suggestion {
                    Some(s) => format!("did you mean `{s}`? Functions include size, contains, startsWith, endsWith, matches, int, double, string, timestamp, duration and semver_match"),
                    None => "functions include size, contains, startsWith, endsWith, matches, int, double, string, timestamp, duration and semver_match".to_string(),
                },
            });
        }
        let native = super::native::Native::compile(program.expression()).map(Arc::new);
        Ok(Expr {
            source: source.into(),
            program: Arc::new(program),
            native,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The field paths this condition reads under `root` (`event`,
    /// `trigger` or `entry`), e.g. `cart.total` for `event.cart.total >= 20.0`;
    /// `None` when it uses `root` whole (`size(event)`, `event[k]`).
    /// A trailing method call (`event.email.endsWith(…)`) is not a field,
    /// and a list macro (`event.items.exists(…)`) keeps the list whole.
    pub fn field_paths(&self, root: &str) -> Option<Vec<FieldPath>> {
        field_paths(&self.source, root)
    }

    /// Evaluates on an event: on the fast path when the condition's shape
    /// and this event's values allow, else through CEL via `cel` (so the
    /// caller builds the CEL scope only when it is needed). Both decide the
    /// same; `tests/engine_model.rs`-style checks compare them.
    pub fn eval_event<F: crate::event::Fields + ?Sized>(
        &self,
        event: &F,
        cel: impl FnOnce(&Expr) -> Result<bool, EvalError>,
    ) -> Result<bool, EvalError> {
        if let Some(t) = self.native.as_ref().and_then(|n| n.eval(event)) {
            return Ok(t == super::native::Tri::True);
        }
        cel(self)
    }

    /// Whether this condition has a fast-path form.
    pub fn is_native(&self) -> bool {
        self.native.is_some()
    }

    /// Evaluates to a boolean. A field the event does not have makes the
    /// condition false (CX leads write `event.cart.total >= 20.0` and mean
    /// "a cart worth at least 20"); use `has()` to be explicit.
    pub fn eval_bool(&self, ctx: &Context) -> Result<bool, EvalError> {
        match self.program.execute(ctx) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(EvalError::NotBool(format!("{other:?}"))),
            Err(ExecutionError::NoSuchKey(_)) => Ok(false),
            Err(e) => Err(EvalError::Execution(e.to_string())),
        }
    }
}

/// The root context shared by all evaluations: the standard library plus
/// forewarn's functions. Per-event variables go into an inner scope.
pub fn base_context() -> Context<'static, 'static> {
    let mut ctx = Context::default();
    ctx.add_function("semver_match", semver_match)
        .expect("semver_match is not a CEL built-in");
    ctx
}

fn semver_match(version: Arc<String>, req: Arc<String>) -> Result<bool, ExecutionError> {
    let req = semver::VersionReq::parse(&req).map_err(|e| {
        ExecutionError::function_error(
            "semver_match",
            format!("{req:?} is not a version requirement ({e}); write e.g. \">=4.2.0, <4.2.3\""),
        )
    })?;
    // An app that reports a malformed version matches no range.
    Ok(
        semver::Version::parse(version.trim().trim_start_matches('v'))
            .map(|v| req.matches(&v))
            .unwrap_or(false),
    )
}

/// See [`Expr::field_paths`]. A textual scan: CEL's AST would be exact,
/// but the scan errs on the safe side (an extra path only keeps a field).
pub fn field_paths(source: &str, root: &str) -> Option<Vec<FieldPath>> {
    let mut out = Vec::new();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut rest = source;
    while let Some(i) = rest.find(root) {
        let before_ok = rest[..i]
            .chars()
            .last()
            .is_none_or(|c| !ident(c) && c != '.');
        let after = &rest[i + root.len()..];
        rest = after;
        if !before_ok || after.starts_with(ident) {
            continue; // part of another identifier, e.g. `events` or `x.event`
        }
        let Some(chain) = after.strip_prefix('.') else {
            return None; // the root used whole
        };
        let mut segments: Vec<&str> = Vec::new();
        let mut tail = chain;
        loop {
            let len = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
            if len == 0 {
                break;
            }
            segments.push(&tail[..len]);
            tail = &tail[len..];
            match tail.strip_prefix('.') {
                Some(t) if t.starts_with(ident) => tail = t,
                _ => break,
            }
        }
        if tail.trim_start().starts_with('(') {
            segments.pop(); // a method, not a field
        }
        if segments.is_empty() {
            return None;
        }
        out.push(FieldPath::parse(&segments.join(".")).ok()?);
    }
    Some(out)
}

/// Function names offered as "did you mean" suggestions.
const SUGGESTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "timestamp",
    "duration",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "max",
    "min",
    "semver_match",
];

/// Whether CEL (the standard library, a macro or an operator) or forewarn
/// defines `name`. Asked of the library itself: `add_function` refuses a
/// name the standard library already declares.
fn is_known_function(name: &str) -> bool {
    // Operators (`_>_`, `!_`, `@in`, `_[_]`) are not identifiers.
    let identifier = name
        .chars()
        .all(|c| c.is_alphanumeric() || c == '_' || c == '.');
    if !identifier || name.starts_with('_') || name == "semver_match" {
        return true;
    }
    if ["has", "all", "exists", "exists_one", "map", "filter"].contains(&name) {
        return true;
    }
    let mut probe = Context::default();
    probe.add_function(name, || true).is_err()
}

/// The candidate within edit distance 2 of `name`, if any.
pub(crate) fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push(
                    (prev[j] + usize::from(ca != *cb))
                        .min(prev[j + 1] + 1)
                        .min(cur[j] + 1),
                );
            }
            prev = cur;
        }
        prev[b.len()]
    }
    candidates
        .iter()
        .map(|c| (distance(&name.to_lowercase(), &c.to_lowercase()), *c))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, c)| c)
}

/// Converts an event payload into a CEL value.
pub fn to_cel(payload: &serde_json::Value) -> Value {
    cel::to_value(payload).unwrap_or(Value::Null)
}

/// Byte offset of a 1-based line and 0-based column in `source`.
fn offset_of(source: &str, line: usize, col: usize) -> usize {
    let mut offset = 0;
    for (i, l) in source.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            return offset + l.char_indices().nth(col).map_or(l.len(), |(b, _)| b);
        }
        offset += l.len();
    }
    source.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(src: &str, event: serde_json::Value) -> Result<bool, EvalError> {
        let base = base_context();
        let mut ctx = base.new_inner_scope();
        ctx.add_variable_from_value("event", to_cel(&event));
        Expr::compile(src).unwrap().eval_bool(&ctx)
    }

    #[test]
    fn evaluates_conditions_over_event_fields() {
        let ev = json!({"cart": {"total": 25.5}, "app": {"platform": "ios", "version": "4.2.1"}});
        assert_eq!(eval("event.cart.total >= 20.0", ev.clone()), Ok(true));
        assert_eq!(eval("event.cart.total >= 30.0", ev.clone()), Ok(false));
        assert_eq!(
            eval(
                r#"event.app.platform == "ios" && semver_match(event.app.version, ">=4.2.0, <4.2.3")"#,
                ev.clone()
            ),
            Ok(true)
        );
        assert_eq!(
            eval(r#"semver_match(event.app.version, ">=4.2.3")"#, ev.clone()),
            Ok(false)
        );
        assert_eq!(eval("has(event.cart.coupon)", ev.clone()), Ok(false));
        assert_eq!(
            eval("event.cart.coupon == 'X'", ev.clone()),
            Ok(false),
            "missing field is false"
        );
    }

    #[test]
    fn integer_fields_compare_with_integer_literals() {
        assert_eq!(eval("event.n >= 3", json!({"n": 5})), Ok(true));
    }

    #[test]
    fn non_boolean_results_are_errors() {
        assert!(matches!(
            eval("event.cart", json!({"cart": 1})),
            Err(EvalError::NotBool(_))
        ));
    }

    #[test]
    fn bad_requirement_is_an_error_not_a_match() {
        assert!(matches!(
            eval(r#"semver_match("1.0.0", "not a range")"#, json!({})),
            Err(EvalError::Execution(_))
        ));
    }

    #[test]
    fn syntax_errors_point_into_the_expression() {
        let err = Expr::compile("event.cart.total >= ").unwrap_err();
        assert!(err.message.contains("not valid CEL"), "{err:?}");
        assert!(err.offset <= "event.cart.total >= ".len());
    }

    #[test]
    fn field_paths_name_fields_not_methods() {
        let paths = |src: &str, root: &str| {
            Expr::compile(src)
                .unwrap()
                .field_paths(root)
                .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        assert_eq!(
            paths("event.cart.total >= 20.0", "event"),
            Some(vec!["cart.total".into()])
        );
        assert_eq!(
            paths(
                r#"event.email.endsWith("@x") && trigger.order.id == event.order.id"#,
                "event"
            ),
            Some(vec!["email".into(), "order.id".into()])
        );
        assert_eq!(
            paths(r#"trigger.order.id == event.order.id"#, "trigger"),
            Some(vec!["order.id".into()])
        );
        assert_eq!(
            paths("event.items.exists(i, i.qty > 0)", "event"),
            Some(vec!["items".into()])
        );
        assert_eq!(
            paths("has(event.coupon) && size(event.items) > 1", "event"),
            Some(vec!["coupon".into(), "items".into()])
        );
        assert_eq!(paths("size(event) > 1", "event"), None);
        assert_eq!(paths("event.a == 1", "trigger"), Some(vec![]));
    }

    #[test]
    fn unknown_functions_are_rejected_with_a_suggestion() {
        let err = Expr::compile(r#"semver_matches(event.v, ">=1.0.0")"#).unwrap_err();
        assert!(err.message.contains("`semver_matches`"), "{err:?}");
        assert!(err.help.contains("did you mean `semver_match`"), "{err:?}");
        let err = Expr::compile(r#"event.name.startswith("A")"#).unwrap_err();
        assert!(err.help.contains("`startsWith`"), "{err:?}");
        for ok in [
            r#"size(event.items) > 0 && event.name.startsWith("A") && event.email.endsWith(".com")"#,
            r#"event.a in [1, 2] && !has(event.b) && int(event.c) == 1 && string(event.d) != """#,
            r#"event.items.exists(i, i.sku.matches("^GIFT")) && timestamp(event.ts) > timestamp("2020-01-01T00:00:00Z")"#,
            r#"event.n % 2 == 0 || double(event.x) / 2.0 > 1.0 || event.s.contains("x")"#,
        ] {
            assert!(
                Expr::compile(ok).is_ok(),
                "{ok}: {:?}",
                Expr::compile(ok).err()
            );
        }
    }

    #[test]
    fn unknown_variables_are_rejected_with_a_fix() {
        let err = Expr::compile("cart.total > 1.0").unwrap_err();
        assert!(err.message.contains("`cart`"), "{err:?}");
        assert!(err.help.contains("event.cart"), "{err:?}");
        assert!(Expr::compile("event.items.all(i, i.qty > 0)").is_ok());
    }
}
