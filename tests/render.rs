//! `forewarn render`, as a CX lead runs it: the real binary, the shipped
//! rules and their sample events (rules/samples/).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// (exit ok, stdout, stderr)
fn render(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .current_dir(root())
        .arg("render")
        .args(args)
        .output()
        .expect("the forewarn binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_shipped_rule_renders_from_its_sample_event() {
    let rules = forewarn::rules::load_rules(&root().join("rules"), &Default::default())
        .unwrap_or_else(|d| panic!("{d}"));
    assert!(!rules.rules.is_empty());
    for rule in &rules.rules.rules {
        let sample = format!("rules/samples/{}.json", rule.id);
        assert!(
            root().join(&sample).exists(),
            "every shipped rule has a sample event: add {sample}"
        );
        let (ok, stdout, stderr) = render(&["--rule", &rule.id, "--event", &sample]);
        assert!(ok, "{}: {stderr}", rule.id);
        let mail = mailparse::parse_mail(stdout.as_bytes()).expect("an RFC 5322 message");
        let header = |name: &str| {
            mail.headers
                .iter()
                .find(|h| h.get_key().eq_ignore_ascii_case(name))
                .map(|h| h.get_value())
                .unwrap_or_default()
        };
        assert!(header("To").contains('@'), "{}: {stdout}", rule.id);
        assert!(!header("Subject").is_empty(), "{}: {stdout}", rule.id);
        assert!(
            header("Message-ID").ends_with("@forewarn>"),
            "{}: {stdout}",
            rule.id
        );
    }
}

#[test]
fn a_sample_the_rule_does_not_fire_on_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small-cart.json");
    std::fs::write(
        &small,
        r#"{"type":"checkout_started","customer_id":"c-1","ts":"2026-11-24T12:00:00Z","customer":{"email":"a@example.com"},"cart":{"total":12.0}}"#,
    )
    .unwrap();
    let (ok, _, stderr) = render(&[
        "--rule",
        "checkout-dropoff",
        "--event",
        small.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("does not fire"), "{stderr}");
    assert!(stderr.contains("event.cart.total >= 20.0"), "{stderr}");

    let (ok, _, stderr) = render(&[
        "--rule",
        "checkout-dropoff",
        "--event",
        "rules/samples/carrier-delay.json",
    ]);
    assert!(!ok);
    assert!(stderr.contains("\"checkout_started\" event"), "{stderr}");

    let (ok, _, stderr) = render(&["--rule", "checkout-dropof", "--event", "x.json"]);
    assert!(!ok);
    assert!(
        stderr.contains("checkout-dropoff"),
        "lists the rules: {stderr}"
    );
}

#[test]
fn a_webhook_channel_previews_the_signed_request() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(rules.join("templates")).unwrap();
    std::fs::write(
        rules.join("templates/cx.subject"),
        "Drop-off: {{ customer.id }}",
    )
    .unwrap();
    std::fs::write(
        rules.join("templates/cx.txt"),
        "{{ trigger.cart.total }} in the cart",
    )
    .unwrap();
    std::fs::write(
        rules.join("cx.toml"),
        r#"[[rule]]
id = "dropoff-to-cx"
kind = "absence"
trigger = { event = "checkout_started" }
until = { event = "order_placed" }
within = "30m"
notify = { channel = "cx-slack", template = "cx" }
"#,
    )
    .unwrap();
    let config = dir.path().join("forewarn.toml");
    std::fs::write(
        &config,
        format!(
            r#"[kafka]
brokers = "127.0.0.1:9092"
topics = ["behavior-events"]
[rules]
dir = {:?}
[channels.cx-slack]
type = "webhook"
url = "https://hooks.example.com/cx"
secret_env = "FOREWARN_TEST_WEBHOOK_SECRET"
"#,
            rules.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .current_dir(root())
        .env(
            "FOREWARN_TEST_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .args(["render", "--rule", "dropoff-to-cx", "--event"])
        .arg("rules/samples/checkout-dropoff.json")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("POST https://hooks.example.com/cx\n"),
        "{stdout}"
    );
    assert!(stdout.contains("webhook-signature: v1,"), "{stdout}");
    let body_start = stdout.find("\n\n").unwrap();
    let body: serde_json::Value = serde_json::from_str(&stdout[body_start..]).unwrap();
    assert_eq!(body["type"], "forewarn.notification");
    assert_eq!(body["data"]["subject"], "Drop-off: c-200");
    assert_eq!(body["data"]["text"], "54.9 in the cart");
    let id = body["data"]["id"].as_str().unwrap();
    assert!(stdout.contains(&format!("webhook-id: {id}\n")), "{stdout}");
}
