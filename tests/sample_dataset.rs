//! The sample week (rules/samples/week.jsonl.gz): it is exactly what its
//! generator (examples/sample_week.rs) writes, and replayed through the
//! shipped rules with rules/samples/week.toml it decides exactly the
//! pinned outcomes (tests/guide.rs checks that the guide shows what
//! replay prints). No broker: replay runs in virtual time.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use forewarn::config::Config;
use forewarn::replay::{replay, ReplayOptions, ReplayReport};

// The generator is an example program; its `main` and command line go
// unused here.
#[allow(dead_code)]
#[path = "../examples/sample_week.rs"]
mod sample_week;

const SAMPLE: &str = "rules/samples/week.jsonl.gz";
const CONFIG: &str = "rules/samples/week.toml";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

#[test]
fn the_committed_sample_is_what_the_generator_writes() {
    let path = root().join(SAMPLE);
    let mut committed = String::new();
    forewarn::jsonl::open(&path)
        .unwrap_or_else(|e| panic!("{e}"))
        .read_to_string(&mut committed)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let generated = sample_week::generate(&sample_week::Options::default());
    if generated.jsonl != committed {
        let (n, (want, got)) = generated
            .jsonl
            .lines()
            .chain(std::iter::repeat("<end of file>"))
            .zip(committed.lines().chain(std::iter::repeat("<end of file>")))
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .expect("the texts differ somewhere");
        panic!(
            "{SAMPLE} is not what examples/sample_week.rs generates; first difference at line {}:\n  generator: {want}\n  committed: {got}\n\
             Regenerate it with: cargo run --example sample_week -- --out {SAMPLE}",
            n + 1
        );
    }
    assert_eq!(generated.lines, committed.lines().count());
    assert_eq!((generated.invalid, generated.redelivered), (8, 8));
    // Small enough to keep in the repository.
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 2_000_000, "{SAMPLE} is {size} bytes");
}

/// The generator's fixed UTC offsets (it uses no time zone database, so
/// its output never changes) are the real ones throughout the week.
#[test]
fn the_generator_knows_the_offsets_of_its_time_zones() {
    let start: jiff::Timestamp = "2026-11-16T00:00:00Z".parse().unwrap();
    let end: jiff::Timestamp = "2026-11-23T00:00:00Z".parse().unwrap();
    for zone in sample_week::ZONES {
        let tz = jiff::tz::TimeZone::get(zone.name).unwrap();
        for t in [start, end] {
            assert_eq!(
                tz.to_offset(t).seconds(),
                (zone.offset_minutes * 60) as i32,
                "{} at {t}",
                zone.name
            );
        }
    }
    // And its calendar agrees with jiff's.
    for (i, t) in [0i64, 1_763_251_200, 1_763_856_000 + 86_399, 4_102_444_800]
        .into_iter()
        .enumerate()
    {
        let expected = jiff::Timestamp::from_second(t).unwrap().to_string();
        assert_eq!(sample_week::rfc3339(t), expected, "case {i}");
    }
}

/// Replay options built the way `forewarn replay --config` builds them.
fn options(config: &Config, events: PathBuf) -> ReplayOptions {
    ReplayOptions {
        events,
        rules_dir: root().join(&config.rules_dir),
        schema: config.events.clone(),
        email: config.customers.email.clone(),
        engine: config.engine(false),
        out_dir: None,
        from: forewarn::config::DEFAULT_FROM.parse().unwrap(),
        senders: Default::default(),
        until: None,
        addressless_channels: config.addressless_channels(),
        policy: config.policy.clone(),
        unsubscribe_url: config.customers.unsubscribe_url.clone(),
    }
}

async fn replay_the_week() -> ReplayReport {
    let config = Config::load(&root().join(CONFIG)).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.policy.max_per_customer.is_some() && config.policy.quiet_hours.is_some());
    replay(&options(&config, root().join(SAMPLE)))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// What the replay decides, rule by rule (outcomes that did not happen
/// are left out). Deterministic: the same file, rules and config always
/// give these numbers. A change to the rules, the engine or the policy
/// that moves them shows here; update them (and the table in
/// rules/README.md) when the change is meant.
const EXPECTED: &[(&str, &[(&str, u64)])] = &[
    (
        "big-basket-followup",
        &[
            ("shadow", 10),
            ("capped", 135),
            ("unsubscribed", 10),
            ("cooldown", 3),
            ("no_address", 4),
        ],
    ),
    ("card-declined", &[("sent", 31)]),
    (
        "carrier-delay",
        &[("sent", 51), ("duplicate", 1), ("no_address", 1)],
    ),
    (
        "checkout-dropoff",
        &[
            ("sent", 304),
            ("deferred", 120),
            ("unsubscribed", 35),
            ("cooldown", 73),
            ("no_address", 7),
        ],
    ),
    ("delayed-shipment", &[("sent", 135), ("no_address", 2)]),
    (
        "known-bug-exposure",
        &[("sent", 204), ("duplicate", 290), ("no_address", 2)],
    ),
    (
        "payment-failures",
        &[("sent", 71), ("cooldown", 10), ("no_address", 2)],
    ),
];

#[tokio::test]
async fn the_week_replayed_through_the_shipped_rules_shows_every_outcome_they_can_have() {
    let report = replay_the_week().await;
    println!("{}", report.table());

    // About fifty thousand events over the week, in order.
    assert_eq!(report.events, 50_630);
    assert!((45_000..=55_000).contains(&report.events));
    assert_eq!(
        (report.first_event, report.last_event),
        (
            Some(ms("2026-11-16T00:00:20Z")),
            Some(ms("2026-11-22T23:59:13Z"))
        )
    );
    assert_eq!(report.late_events, 0, "the file is sorted by time");

    // The broken lines are counted with their line numbers and reasons.
    let reasons: Vec<(usize, &str)> = report
        .invalid
        .iter()
        .map(|(line, why)| (*line, why.split(" (").next().unwrap_or(why)))
        .collect();
    assert_eq!(
        reasons,
        [
            (
                2012,
                "the `ts` field is not an RFC 3339 timestamp or integer epoch milliseconds"
            ),
            (6279, "the record is not valid JSON"),
            (14136, "the record is not valid JSON"),
            (15118, "the record is not valid JSON"),
            (
                16180,
                "the `ts` field is not an RFC 3339 timestamp or integer epoch milliseconds"
            ),
            (17419, "the record has no usable `type` field"),
            (47392, "the record has no usable `customer_id` field"),
            (48072, "the record has no usable `type` field"),
        ]
    );

    // Every shipped rule fires, and each decides exactly this.
    let got: BTreeMap<&str, BTreeMap<&str, u64>> = report
        .outcomes
        .iter()
        .map(|(rule, counts)| {
            let counts = counts
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(o, n)| (*o, *n))
                .collect();
            (rule.as_str(), counts)
        })
        .collect();
    let want: BTreeMap<&str, BTreeMap<&str, u64>> = EXPECTED
        .iter()
        .map(|(rule, counts)| (*rule, counts.iter().copied().collect()))
        .collect();
    assert_eq!(got, want, "\n{}", report.table());
    for (rule, counts) in &got {
        assert!(counts.values().sum::<u64>() > 0, "{rule} never fired");
    }

    // Across the rules, every outcome a replay of these rules can show.
    let total = |outcome: &str| -> u64 { got.values().filter_map(|c| c.get(outcome)).sum() };
    for outcome in [
        "sent",
        "deferred",
        "cooldown",
        "unsubscribed",
        "duplicate",
        "no_address",
        "capped",
        "shadow",
    ] {
        assert!(total(outcome) > 0, "no {outcome} in\n{}", report.table());
    }
    // The cap (one marketing message a day in week.toml) holds back most
    // of big-basket-followup: checkout-dropoff wrote to the same customer
    // 30 minutes after the same checkout. `holdout` needs a rule with
    // holdout_percent, and a replay never judges a firing `stale`. Every
    // template renders, also for carrier delays without a new date.
    for outcome in ["holdout", "stale", "render_failed"] {
        assert_eq!(total(outcome), 0, "{outcome}");
    }

    // Shipments without a promised delivery time open no episode: counted
    // once, as a missing key or deadline field (no condition failed).
    assert_eq!(
        report.missing_key,
        BTreeMap::from([("delayed-shipment".to_string(), 19)])
    );
    assert!(report.rule_errors.is_empty(), "{:?}", report.rule_errors);
    // Parcels and checkouts whose deadline falls after the last event.
    assert_eq!(report.still_open, 496);
}

/// The training rules of the profile-guided build (deploy/pgo/rules,
/// replayed by deploy/pgo/build.sh over the same week) are there to reach
/// the engine's code that the shipped rules leave out; code the training
/// never runs is built as cold. So each of them must still load, fire in
/// the week and render, and together they must cover every rule kind and
/// the outcomes the shipped rules do not show.
#[tokio::test]
async fn every_training_rule_of_the_profile_guided_build_fires_in_the_week() {
    let config = Config::load(&root().join(CONFIG)).unwrap_or_else(|e| panic!("{e}"));
    let mut opts = options(&config, root().join(SAMPLE));
    opts.rules_dir = root().join("deploy/pgo/rules");
    // As build.sh replays it: time runs on past the longest deadline.
    opts.until = Some(ms("2026-11-26T00:00:00Z"));
    let report = replay(&opts).await.unwrap_or_else(|e| panic!("{e}"));
    println!("{}", report.table());

    let loaded = forewarn::rules::load::load_rules(&opts.rules_dir, &Default::default())
        .unwrap_or_else(|d| panic!("{d}"));
    let kinds: std::collections::BTreeSet<&str> =
        loaded.rules.rules.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(report.outcomes.len(), loaded.rules.rules.len());
    for (rule, counts) in &report.outcomes {
        assert!(
            counts.values().sum::<u64>() > 0,
            "{rule} never fired in the week:\n{}",
            report.table()
        );
    }
    let total = |outcome: &str| -> u64 {
        report
            .outcomes
            .values()
            .filter_map(|c| c.get(outcome))
            .sum()
    };
    for outcome in [
        "sent",
        "holdout",
        "shadow",
        "duplicate",
        "cooldown",
        "deferred",
        "no_address",
    ] {
        assert!(total(outcome) > 0, "no {outcome} in\n{}", report.table());
    }
    assert_eq!(total("render_failed"), 0, "\n{}", report.table());
    assert!(report.rule_errors.is_empty(), "{:?}", report.rule_errors);
}

fn ms(rfc3339: &str) -> i64 {
    rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}
