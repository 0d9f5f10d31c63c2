//! The sample week (rules/samples/week.jsonl.gz) is exactly what its
//! generator (examples/sample_week.rs) writes.

use std::io::Read;
use std::path::{Path, PathBuf};

// The generator is an example program; its `main` and command line go
// unused here.
#[allow(dead_code)]
#[path = "../examples/sample_week.rs"]
mod sample_week;

const SAMPLE: &str = "rules/samples/week.jsonl.gz";

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
