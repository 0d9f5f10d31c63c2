//! `forewarn test`, as a CX lead and CI run it: the real binary over the
//! shipped rules and their tests (rules/tests/), and over a copy where a
//! rule changed under its tests.

mod files;
use files::copy_dir;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// (exit code, stdout)
fn forewarn_test(dir: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .arg("test")
        .arg(dir)
        .output()
        .expect("the forewarn binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_shipped_rules_pass_their_tests() {
    let (code, out) = forewarn_test(&root().join("rules"));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("test result: ok."), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn a_changed_rule_fails_its_tests_with_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    copy_dir(&root().join("rules"), &rules);
    // A CX lead lengthens the wait from 30 to 45 minutes.
    let file = rules.join("checkout-dropoff.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("within      = \"30m\"", "within      = \"45m\""),
    )
    .unwrap();

    let (code, out) = forewarn_test(&rules);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL  a checkout with no order gets one nudge, 30 minutes later"),
        "{out}"
    );
    assert!(
        out.contains("expected, did not happen:  +30m  checkout-dropoff → c-1  sent"),
        "{out}"
    );
    assert!(
        out.contains("happened, not expected:    +45m  checkout-dropoff → c-1  sent"),
        "{out}"
    );
    assert!(out.contains("test result: FAILED."), "{out}");

    // A broken test file is an error with its place, not a failure.
    std::fs::write(rules.join("tests/broken.toml"), "[[test]]\nname = \"x\"\nevents = [{ at = \"soon\", type = \"t\", customer_id = \"c\" }]\nexpect_none = [{ rule = \"carrier-delay\" }]\n").unwrap();
    let (code, out) = forewarn_test(&rules);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("broken.toml:3:11: error:"), "{out}");
}

#[test]
fn a_filter_matches_file_names_and_one_that_matches_nothing_fails() {
    let run = |filter: &str| {
        Command::new(env!("CARGO_BIN_EXE_forewarn"))
            .arg("test")
            .arg(root().join("rules"))
            .args(["--filter", filter])
            .output()
            .unwrap()
    };
    let by_file = run("payment-failures");
    let stdout = String::from_utf8_lossy(&by_file.stdout);
    assert_eq!(by_file.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("2 of "), "{stdout}");
    let none = run("no-such-rule");
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no test matches --filter"));
}
