//! A fast path for the condition shapes CX leads write most often, evaluated
//! straight on the event's JSON instead of through the CEL interpreter:
//! `event.path <op> literal`, `in [literals]`, `startsWith` / `endsWith` /
//! `contains`, `has(event.path)`, `semver_match(event.path, "range")` (the
//! range parsed once), combined with `&&`, `||` and `!`.
//!
//! It must decide exactly as CEL does, or not at all: whenever a value's
//! JSON type is not the literal's (an int against a double, say) it answers
//! `None` and the caller asks CEL. Errors follow cel-rust's logic operators:
//! `||` is true if either side is true, `&&` false if either side is false,
//! and otherwise an error on either side wins.

use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};

use crate::event::{FieldPath, Fields, Scalar};

/// The result of a native evaluation: a boolean, or cel's `NoSuchKey`
/// (a missing field), which a condition reads as false.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    True,
    False,
    Missing,
}

impl From<bool> for Tri {
    fn from(b: bool) -> Tri {
        if b {
            Tri::True
        } else {
            Tri::False
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Int(i64),
    Double(f64),
    Str(String),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrFn {
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Debug, Clone)]
enum Node {
    Cmp(FieldPath, Op, Lit),
    In(FieldPath, Vec<Lit>),
    Str(FieldPath, StrFn, String),
    /// `has(event.<parents>.<last>)`.
    Has(FieldPath, String),
    /// A boolean field used as a condition: `event.is_first_order`.
    Field(FieldPath),
    Semver(FieldPath, semver::VersionReq),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
}

impl Node {
    fn compile(e: &IdedExpr) -> Option<Node> {
        let Expr::Call(call) = &e.expr else {
            if let Some(path) = event_path(e) {
                return Some(Node::Field(path));
            }
            // has(event.a.b) is a Select with test = true.
            if let Expr::Select(s) = &e.expr {
                if s.test {
                    let parents = match &s.operand.expr {
                        Expr::Ident(root) if root == "event" => {
                            FieldPath::from_segments(Vec::new())
                        }
                        _ => event_path(&s.operand)?,
                    };
                    return Some(Node::Has(parents, s.field.clone()));
                }
            }
            return None;
        };
        let args = &call.args;
        match (call.func_name.as_str(), &call.target, args.len()) {
            (operators::LOGICAL_AND, None, 2) => Some(Node::And(
                Box::new(Node::compile(&args[0])?),
                Box::new(Node::compile(&args[1])?),
            )),
            (operators::LOGICAL_OR, None, 2) => Some(Node::Or(
                Box::new(Node::compile(&args[0])?),
                Box::new(Node::compile(&args[1])?),
            )),
            (operators::LOGICAL_NOT, None, 1) => {
                Some(Node::Not(Box::new(Node::compile(&args[0])?)))
            }
            (
                op @ (operators::EQUALS
                | operators::NOT_EQUALS
                | operators::LESS
                | operators::LESS_EQUALS
                | operators::GREATER
                | operators::GREATER_EQUALS),
                None,
                2,
            ) => {
                let op = match op {
                    operators::EQUALS => Op::Eq,
                    operators::NOT_EQUALS => Op::Ne,
                    operators::LESS => Op::Lt,
                    operators::LESS_EQUALS => Op::Le,
                    operators::GREATER => Op::Gt,
                    _ => Op::Ge,
                };
                if let (Some(path), Some(lit)) = (event_path(&args[0]), literal(&args[1])) {
                    return Some(Node::Cmp(path, op, lit));
                }
                let (lit, path) = (literal(&args[0])?, event_path(&args[1])?);
                let flipped = match op {
                    Op::Lt => Op::Gt,
                    Op::Le => Op::Ge,
                    Op::Gt => Op::Lt,
                    Op::Ge => Op::Le,
                    same => same,
                };
                Some(Node::Cmp(path, flipped, lit))
            }
            (operators::IN, None, 2) => {
                let path = event_path(&args[0])?;
                let Expr::List(list) = &args[1].expr else {
                    return None;
                };
                let lits: Vec<Lit> = list.elements.iter().map(literal).collect::<Option<_>>()?;
                Some(Node::In(path, lits))
            }
            (f @ ("startsWith" | "endsWith" | "contains"), Some(target), 1) => {
                let path = event_path(target)?;
                let Some(Lit::Str(arg)) = literal(&args[0]) else {
                    return None;
                };
                let f = match f {
                    "startsWith" => StrFn::StartsWith,
                    "endsWith" => StrFn::EndsWith,
                    _ => StrFn::Contains,
                };
                Some(Node::Str(path, f, arg))
            }
            ("semver_match", None, 2) => {
                let path = event_path(&args[0])?;
                let Some(Lit::Str(req)) = literal(&args[1]) else {
                    return None;
                };
                // An invalid range is CEL's error to report.
                Some(Node::Semver(path, semver::VersionReq::parse(&req).ok()?))
            }
            _ => None,
        }
    }

    fn eval<F: Fields + ?Sized>(&self, event: &F) -> Option<Tri> {
        Some(match self {
            Node::Cmp(path, op, lit) => match event.field(path)? {
                None => Tri::Missing,
                Some(v) => compare(&v, *op, lit)?.into(),
            },
            Node::In(path, lits) => match event.field(path)? {
                None => Tri::Missing,
                Some(v) => {
                    let mut found = false;
                    for l in lits {
                        found |= compare(&v, Op::Eq, l)?;
                    }
                    found.into()
                }
            },
            Node::Str(path, f, arg) => match event.field(path)? {
                None => Tri::Missing,
                Some(Scalar::Str(s)) => match f {
                    StrFn::StartsWith => crate::event::text_starts_with(&s, arg),
                    StrFn::EndsWith => crate::event::text_ends_with(&s, arg),
                    StrFn::Contains => s.contains(arg.as_str()),
                }
                .into(),
                Some(_) => return None,
            },
            Node::Field(path) => match event.field(path)? {
                None => Tri::Missing,
                Some(Scalar::Bool(b)) => b.into(),
                Some(_) => return None,
            },
            Node::Has(parents, last) => match event.field(parents)? {
                None => Tri::Missing,
                Some(Scalar::Object(m)) => m.contains(last).into(),
                Some(_) => return None,
            },
            Node::Semver(path, req) => match event.field(path)? {
                None => Tri::Missing,
                Some(Scalar::Str(v)) => semver::Version::parse(v.trim().trim_start_matches('v'))
                    .map(|v| req.matches(&v))
                    .unwrap_or(false)
                    .into(),
                Some(_) => return None,
            },
            Node::And(a, b) => {
                let l = a.eval(event)?;
                if l == Tri::False {
                    return Some(Tri::False);
                }
                match b.eval(event)? {
                    Tri::Missing => Tri::Missing,
                    Tri::False => Tri::False,
                    Tri::True => l,
                }
            }
            Node::Or(a, b) => {
                let l = a.eval(event)?;
                if l == Tri::True {
                    return Some(Tri::True);
                }
                match b.eval(event)? {
                    Tri::Missing => Tri::Missing,
                    Tri::True => Tri::True,
                    Tri::False => l,
                }
            }
            Node::Not(x) => match x.eval(event)? {
                Tri::True => Tri::False,
                Tri::False => Tri::True,
                Tri::Missing => Tri::Missing,
            },
        })
    }
}

/// A compiled condition (see the module docs).
#[derive(Debug, Clone)]
pub struct Native(Node);

impl Native {
    /// Compiles the shapes above; `None` for anything else.
    pub fn compile(e: &IdedExpr) -> Option<Native> {
        Node::compile(e).map(Native)
    }

    /// Evaluates on the event's fields; `None`: ask CEL.
    pub fn eval<F: Fields + ?Sized>(&self, event: &F) -> Option<Tri> {
        self.0.eval(event)
    }
}

/// `event.a.b` → ["a", "b"].
fn event_path(e: &IdedExpr) -> Option<FieldPath> {
    let mut segments = Vec::new();
    let mut at = e;
    loop {
        match &at.expr {
            Expr::Select(s) if !s.test => {
                segments.push(s.field.clone());
                at = &s.operand;
            }
            Expr::Ident(name) if name == "event" && !segments.is_empty() => {
                segments.reverse();
                return Some(FieldPath::from_segments(segments));
            }
            _ => return None,
        }
    }
}

fn literal(e: &IdedExpr) -> Option<Lit> {
    match &e.expr {
        Expr::Literal(LiteralValue::Int(i)) => Some(Lit::Int(*i.inner())),
        Expr::Literal(LiteralValue::Double(d)) => Some(Lit::Double(*d.inner())),
        Expr::Literal(LiteralValue::String(s)) => Some(Lit::Str(s.inner().to_string())),
        Expr::Literal(LiteralValue::Boolean(b)) => Some(Lit::Bool(*b.inner())),
        _ => None,
    }
}

/// Same-type comparisons only, as CEL would make them from this JSON.
fn compare(v: &Scalar<'_>, op: Op, lit: &Lit) -> Option<bool> {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (v, lit) {
        // serde_json keeps integers that fit i64 as i64; CEL sees an int.
        (Scalar::Int(x), Lit::Int(l)) => Some(x.cmp(l)),
        // A JSON number with a fraction or exponent is a double in CEL.
        (Scalar::Float(x), Lit::Double(l)) => x.partial_cmp(l),
        // Equality, the common case, without an ordering (and `memcmp`).
        (Scalar::Str(s), Lit::Str(l)) if matches!(op, Op::Eq | Op::Ne) => {
            return Some(crate::event::same_text(s, l) == (op == Op::Eq));
        }
        (Scalar::Str(s), Lit::Str(l)) => Some(s.as_ref().cmp(l.as_str())),
        (Scalar::Bool(b), Lit::Bool(l)) if matches!(op, Op::Eq | Op::Ne) => Some(b.cmp(l)),
        _ => return None,
    };
    let Some(ord) = ord else {
        // NaN: leave it to CEL.
        return None;
    };
    Some(match op {
        Op::Eq => ord == Ordering::Equal,
        Op::Ne => ord != Ordering::Equal,
        Op::Lt => ord == Ordering::Less,
        Op::Le => ord != Ordering::Greater,
        Op::Gt => ord == Ordering::Greater,
        Op::Ge => ord != Ordering::Less,
    })
}

#[cfg(test)]
mod tests {
    use crate::rules::expr::{base_context, to_cel, Expr};
    use proptest::prelude::*;
    use serde_json::json;

    const CONDITIONS: &[&str] = &[
        "event.a >= 3",
        "event.a < 3",
        "event.a == 3",
        "event.a != 3",
        "3 <= event.a",
        "event.d >= 20.0",
        "event.d < 20.5 && event.s == \"x\"",
        "event.s == \"x\" || event.a > 1",
        "event.a > 1 || event.s == \"x\"",
        "!(event.s == \"x\")",
        "event.s in [\"x\", \"y\"]",
        "event.a in [1, 2, 3]",
        "event.s.startsWith(\"x\")",
        "event.s.endsWith(\"y\") && event.b",
        "event.s.contains(\"q\")",
        "has(event.n.m)",
        "has(event.s)",
        "event.n.m == \"k\"",
        "event.b == true",
        "event.b != false || event.a >= 0",
        "semver_match(event.v, \">=4.2.0, <4.2.3\")",
        "event.p.kind == \"renewal\" && event.p.reason in [\"card_declined\", \"expired_card\"]",
    ];

    fn value() -> impl Strategy<Value = Option<serde_json::Value>> {
        prop_oneof![
            Just(None),
            Just(Some(json!(null))),
            (-5i64..6).prop_map(|i| Some(json!(i))),
            (-5.0f64..30.0).prop_map(|f| Some(json!(f))),
            Just(Some(json!(3))),
            Just(Some(json!(20.0))),
            prop::sample::select(vec![
                "x",
                "y",
                "xy",
                "q",
                "",
                "4.2.1",
                "4.2.3",
                "v4.2.0",
                "renewal",
                "card_declined",
                "k"
            ])
            .prop_map(|s| Some(json!(s))),
            any::<bool>().prop_map(|b| Some(json!(b))),
            Just(Some(
                json!({"m": "k", "kind": "renewal", "reason": "card_declined"})
            )),
            Just(Some(json!([1, 2]))),
        ]
    }

    fn event() -> impl Strategy<Value = serde_json::Value> {
        (
            value(),
            value(),
            value(),
            value(),
            value(),
            value(),
            value(),
        )
            .prop_map(|(a, d, s, b, n, v, p)| {
                let mut m = serde_json::Map::new();
                for (k, x) in [
                    ("a", a),
                    ("d", d),
                    ("s", s),
                    ("b", b),
                    ("n", n),
                    ("v", v),
                    ("p", p),
                ] {
                    if let Some(x) = x {
                        m.insert(k.to_string(), x);
                    }
                }
                serde_json::Value::Object(m)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Whenever the fast path answers, it answers as CEL does.
        #[test]
        fn native_agrees_with_cel(ev in event()) {
            // The record as the engine reads it, in place, and the tree
            // serde_json reads from the same text (floats as read back).
            let bytes = serde_json::to_vec(&ev).unwrap();
            let ev: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let rec = crate::event::Event::in_place("t", "c", 0, None, &bytes).unwrap();
            let base = base_context();
            let mut scope = base.new_inner_scope();
            scope.add_variable_from_value("event", to_cel(&ev));
            let fell_back = || Err(crate::rules::expr::EvalError::Execution("fell back".into()));
            for src in CONDITIONS {
                let expr = Expr::compile(src).unwrap();
                prop_assert!(expr.is_native(), "{src} should compile natively");
                let cel = expr.eval_bool(&scope);
                let fast = expr.eval_event(&ev, |_| fell_back());
                if fast != fell_back() {
                    prop_assert_eq!(&fast, &cel, "{} on {}", src, ev);
                }
                let in_place = expr.eval_event(&rec, |_| fell_back());
                prop_assert_eq!(&in_place, &fast, "{} in place on {}", src, ev);
            }
        }
    }

    #[test]
    fn other_shapes_stay_with_cel() {
        for src in [
            "size(event.items) > 1",
            "event.a + 1 > 2",
            "trigger.a == event.a",
            "event.items.exists(i, i > 1)",
            "event.s.matches(\"^x\")",
        ] {
            assert!(!Expr::compile(src).unwrap().is_native(), "{src}");
        }
    }
}
