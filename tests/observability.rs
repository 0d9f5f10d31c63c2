//! What ops read off a running daemon: its logs and its metrics.
//!
//! One end-to-end run through the real binary, a real broker and a real
//! SMTP server (STARTTLS + AUTH) covers everything that could leak
//! customer data into logs: a sent mail, a mail refused by a server that
//! echoes the address back, invalid events carrying addresses, a rule
//! condition that fails on a customer's value, and admin API calls with
//! the right and a wrong token. The JSON logs must then hold no address,
//! payload value, customer id or secret, while still reporting each of
//! those happenings. `/metrics` must count them and pass
//! `promtool check metrics`.

mod harness;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::tls::TestCert;
use harness::*;

const SMTP_PASSWORD: &str = "smtp-pw-Q7x9Lr2";
const ADMIN_TOKEN: &str = "admin-token-Vb81Kq0";
const WRONG_TOKEN: &str = "guessed-token-Hh4Zp3";

/// A carrier delay for `customer`, with payload values the logs must never show.
fn carrier_delay(n: u32, customer: &str, email: &str, name: &str, delay_hours: &str) -> String {
    let ts = jiff::Timestamp::now().as_millisecond();
    format!(
        r#"{{"type":"carrier_delay_reported","event_id":"obs-{n}","customer_id":"{customer}","ts":{ts},"customer":{{"email":"{email}","name":"{name}"}},"order_id":"ORD-{customer}","carrier":"DHL","delay_hours":{delay_hours},"new_eta":"2026-12-28T18:00:00Z"}}"#
    )
}

fn promtool_check_metrics(exposition: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install Debian's prometheus package (deploy/test.sh does)")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_hold_no_address_payload_customer_id_or_secret_and_metrics_pass_promtool() {
    let broker = Broker::start().await;
    let cert = TestCert::generate();
    // The first message is refused the way real servers do it: with the
    // recipient's address in the reply.
    let smtp = cert
        .start_sink(&[
            "--auth-user",
            "forewarn",
            "--auth-password",
            SMTP_PASSWORD,
            "--fail-first",
            "1",
            "--fail-code",
            "550",
            "--fail-reply",
            "5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table",
        ])
        .await;
    let topic = format!("events-{}", free_port());
    let dlq = format!("dead-{}", free_port());
    broker.create_topic(&topic, 2).await;
    broker.create_topic(&dlq, 1).await;

    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let channel = format!(
        "[channels.email]\ntype = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nca_file = {:?}\nusername = \"forewarn\"\npassword_env = \"FOREWARN_TEST_SMTP_PASSWORD\"\nfrom = \"Acme Care <care@acme.example>\"\ntimeout = \"5s\"\nretry_initial = \"100ms\"\nretry_max = \"1s\"\n",
        smtp.port,
        cert.cert.display().to_string()
    );
    let config = write_config_with(
        dir.path(),
        &broker.brokers,
        &[&topic],
        admin_port,
        &channel,
        &ConfigOptions {
            dead_letter: Some(&dlq),
            admin_toml: "token_env = \"FOREWARN_TEST_ADMIN_TOKEN\"",
            ..ConfigOptions::default()
        },
    );
    let mut daemon = DaemonProcess::spawn_with_env(
        &config,
        admin_port,
        &dir.path().join("forewarn.log"),
        &["--log-format", "json"],
        &[
            // Everything forewarn logs, down to debug.
            ("FOREWARN_LOG", "debug,rdkafka=info,h2=info,hyper=info"),
            ("FOREWARN_TEST_SMTP_PASSWORD", SMTP_PASSWORD),
            ("FOREWARN_TEST_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    );
    daemon.wait_ready(Duration::from_secs(60)).await;
    let admin = daemon.admin.clone();

    // 1. A mail the server refuses, echoing the address: dead-lettered.
    broker
        .produce(
            &topic,
            Some("cust-rita-31"),
            &carrier_delay(
                1,
                "cust-rita-31",
                "rita.refused@example.org",
                "Rita Refusedname",
                "48",
            ),
        )
        .await;
    wait_for_metric(
        &admin,
        "forewarn_notifications_total",
        &[("rule", "carrier-delay"), ("outcome", "dead_letter")],
        Duration::from_secs(60),
    )
    .await;

    // 2. Two mails that go through, a condition that fails on a
    //    customer's value, and three invalid records full of PII.
    let ts = jiff::Timestamp::now().as_millisecond();
    for (key, payload) in [
        (
            "cust-ana-82",
            carrier_delay(2, "cust-ana-82", "ana.lima@example.com", "Ana Limaname", "30"),
        ),
        (
            "cust-chen-93",
            format!(
                r#"{{"type":"payment_failed","event_id":"obs-3","customer_id":"cust-chen-93","ts":{ts},"customer":{{"email":"chen.wu@example.net","name":"Chen Wuname"}},"payment":{{"kind":"renewal","plan":"Family","reason":"expired_card"}}}}"#
            ),
        ),
        (
            "cust-zed-44",
            carrier_delay(4, "cust-zed-44", "zed@example.com", "Zed Zedname", r#""Zed Secretvalue zed.other@example.com""#),
        ),
        ("cust-ana-82", "not JSON but mentions invalid.person@example.com and Ivan Invalidname".to_string()),
        (
            "cust-ana-82",
            r#"{"type":"carrier_delay_reported","ts":"2026-11-24T09:00:00Z","customer":{"email":"nocustomer@example.com","name":"Nora Nocustomername"}}"#.to_string(),
        ),
        (
            "cust-bad-55",
            r#"{"type":"payment_failed","customer_id":"cust-bad-55","ts":"the Tuesday after Bo Badtimename moved","customer":{"email":"badtime@example.com"}}"#.to_string(),
        ),
    ] {
        broker.produce(&topic, Some(key), &payload).await;
    }
    let mails = smtp.wait_for_count(2, Duration::from_secs(60)).await;
    let mut to: Vec<&str> = mails.iter().map(|m| m.to.as_str()).collect();
    to.sort();
    assert_eq!(to, ["ana.lima@example.com", "chen.wu@example.net"]);

    // 3. The admin API, with the right token and a wrong one.
    let (status, body) = http_get_with(
        &admin,
        "/api/customers/cust-ana-82/decisions",
        &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))],
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("carrier-delay"), "{body}");
    let (status, _) = http_get_with(
        &admin,
        "/api/customers/cust-chen-93/decisions",
        &[("Authorization", &format!("Bearer {WRONG_TOKEN}"))],
    )
    .unwrap();
    assert!(
        status == 401 || status == 403,
        "a wrong token is refused: {status}"
    );

    // 4. The counters moved as the run says, and promtool accepts them.
    let metrics = wait_for("every record counted", Duration::from_secs(30), || {
        let (_, m) = http_get(&admin, "/metrics").ok()?;
        let invalid = metric(&m, "forewarn_events_total", &[("outcome", "invalid")])?;
        // Lag comes with librdkafka's statistics, every 5 s.
        (invalid >= 3.0 && m.contains("forewarn_consumer_lag{")).then_some(m)
    })
    .await;
    let count = |name: &str, labels: &[(&str, &str)]| metric(&metrics, name, labels).unwrap_or(0.0);
    for (name, labels, want) in [
        (
            "forewarn_events_total",
            &[("topic", topic.as_str()), ("outcome", "accepted")][..],
            4.0,
        ),
        (
            "forewarn_events_total",
            &[("topic", topic.as_str()), ("outcome", "invalid")][..],
            3.0,
        ),
        (
            "forewarn_invalid_events_total",
            &[("reason", "not_json")][..],
            1.0,
        ),
        (
            "forewarn_invalid_events_total",
            &[("reason", "missing_customer")][..],
            1.0,
        ),
        (
            "forewarn_invalid_events_total",
            &[("reason", "bad_time")][..],
            1.0,
        ),
        (
            "forewarn_dead_letter_events_total",
            &[("result", "written")][..],
            3.0,
        ),
        (
            "forewarn_rule_firings_total",
            &[("rule", "carrier-delay")][..],
            2.0,
        ),
        (
            "forewarn_rule_firings_total",
            &[("rule", "card-declined")][..],
            1.0,
        ),
        (
            "forewarn_rule_errors_total",
            &[("rule", "carrier-delay")][..],
            1.0,
        ),
        (
            "forewarn_notifications_total",
            &[
                ("rule", "carrier-delay"),
                ("channel", "email"),
                ("outcome", "sent"),
            ][..],
            1.0,
        ),
        (
            "forewarn_notifications_total",
            &[
                ("rule", "card-declined"),
                ("channel", "email"),
                ("outcome", "sent"),
            ][..],
            1.0,
        ),
        (
            "forewarn_delivery_attempts_total",
            &[("channel", "email"), ("result", "ok")][..],
            2.0,
        ),
        (
            "forewarn_delivery_attempts_total",
            &[("channel", "email"), ("result", "permanent")][..],
            1.0,
        ),
        ("forewarn_dead_letters", &[][..], 1.0),
        ("forewarn_ready", &[][..], 1.0),
        (
            "forewarn_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))][..],
            1.0,
        ),
    ] {
        assert_eq!(count(name, labels), want, "{name}{labels:?} in:\n{metrics}");
    }
    for family in [
        "forewarn_delivery_duration_seconds_bucket",
        "forewarn_consumer_lag{",
        "forewarn_watermark_seconds ",
        "forewarn_open_episodes ",
        "forewarn_outbox_pending",
    ] {
        assert!(
            metrics.contains(family),
            "{family} missing from:\n{metrics}"
        );
    }
    let (ok, promtool) = promtool_check_metrics(&metrics);
    assert!(ok, "promtool check metrics failed:\n{promtool}\n{metrics}");

    // 5. A clean stop, so the log is complete.
    daemon.signal("TERM");
    let status = daemon
        .exits_within(Duration::from_secs(30), "exits after SIGTERM")
        .await;
    assert!(status.success(), "{status:?}");

    let logs = daemon.logs();
    // Every line is one JSON object (--log-format json).
    let mut messages = Vec::new();
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        messages.push(v);
    }
    // The run was logged: each happening left its line…
    let with_code = |code: &str| {
        messages
            .iter()
            .filter(|m| m["fields"]["error_code"] == code)
            .count()
    };
    assert_eq!(with_code("invalid_event"), 3, "{logs}");
    assert_eq!(with_code("rule_eval_error"), 1, "{logs}");
    assert_eq!(with_code("delivery_dead_letter"), 1, "{logs}");
    let refused = messages
        .iter()
        .find(|m| m["fields"]["error_code"] == "delivery_dead_letter")
        .unwrap();
    let reason = refused["fields"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("<[address]>: Recipient address rejected"),
        "the server's reply is kept, its address masked: {reason}"
    );
    // …and none of them carries customer data or a secret.
    let needles = [
        // addresses, anywhere in the events or the server's reply
        "rita.refused@",
        "ana.lima@",
        "chen.wu@",
        "zed@",
        "zed.other@",
        "invalid.person@",
        "nocustomer@",
        "badtime@",
        "@example.",
        // payload values
        "Refusedname",
        "Limaname",
        "Wuname",
        "Zedname",
        "Secretvalue",
        "Invalidname",
        "Nocustomername",
        "Badtimename",
        "ORD-",
        "expired_card",
        // customer ids (log_customer_ids is off)
        "cust-",
        // secrets
        SMTP_PASSWORD,
        ADMIN_TOKEN,
        WRONG_TOKEN,
    ];
    let found: Vec<&str> = needles
        .iter()
        .copied()
        .filter(|n| logs.contains(n))
        .collect();
    assert!(found.is_empty(), "the logs hold {found:?}:\n{logs}");
}
