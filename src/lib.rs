//! forewarn: reads customers' behavioral events from Kafka, evaluates rules
//! written in TOML, and messages customers before they complain.
//!
//! The shape (see ARCHITECTURE in the README): `source` decodes events,
//! the pure `engine` turns them into firings, `notify` renders and
//! delivers, `daemon` wires it all under one cancellation token, `admin`
//! serves metrics and health. Signals are handled only in `main.rs`.

pub mod admin;
pub mod alloc;
pub mod config;
pub mod daemon;
pub mod dead_letters;
pub mod decisions;
pub mod engine;
pub mod event;
pub mod forget;
pub mod jsonl;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod policy;
pub mod preview;
pub mod redact;
pub mod render;
pub mod replay;
pub mod report;
pub mod rules;
pub mod ruletest;
pub mod source;
pub mod state;
