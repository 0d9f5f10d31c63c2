//! The rule language: what CX leads write in `rules/*.toml`.
//!
//! `model` is the file shape (serde, unknown keys rejected), `expr` compiles
//! CEL conditions once, `load` turns a rules folder into a validated
//! [`RuleSet`] or a list of [`Diagnostic`]s that name file:line:column and
//! say how to fix each problem. Nothing here evaluates events; the engine does.

pub mod catalog;
pub mod diagnostics;
pub mod expr;
pub mod load;
pub mod model;
pub mod native;

pub use diagnostics::{Diagnostic, Diagnostics};
pub use load::{load_rules, LoadOptions};
pub use model::{
    Absence, Class, Condition, DeadlineSpec, KeyField, Mode, Notify, OnRepeat, OncePerField, Rule,
    RuleKind, RuleSet, Threshold,
};
