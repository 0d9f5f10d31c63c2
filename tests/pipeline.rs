//! End to end through real parts: events produced to a Kafka-compatible
//! broker become emails received by a real SMTP server; invalid records in
//! the same stream are counted, dead-lettered, and do not block the valid
//! events behind them.

mod harness;

use std::time::Duration;

use harness::*;

const CARRIER_DELAY: &str = r#"{"type":"carrier_delay_reported","event_id":"e-1","customer_id":"c-1","ts":"2026-11-24T09:05:00Z","customer":{"email":"ana@example.com","name":"Ana"},"order_id":"A-7781","carrier":"DHL","delay_hours":48,"new_eta":"2026-11-28T18:00:00Z"}"#;
const SHORT_DELAY: &str = r#"{"type":"carrier_delay_reported","event_id":"e-2","customer_id":"c-2","ts":"2026-11-24T09:06:00Z","customer":{"email":"ben@example.com"},"order_id":"A-7790","carrier":"UPS","delay_hours":3,"new_eta":"2026-11-25T12:00:00Z"}"#;
const CARD_DECLINED: &str = r#"{"type":"payment_failed","event_id":"e-3","customer_id":"c-3","ts":1795518900000,"customer":{"email":"chen@example.com","name":"<b>Chen</b>"},"payment":{"kind":"renewal","plan":"Family","reason":"expired_card"}}"#;
const NO_ADDRESS: &str = r#"{"type":"payment_failed","event_id":"e-4","customer_id":"c-4","ts":1795518900000,"payment":{"kind":"renewal","plan":"Solo","reason":"card_declined"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_become_emails_and_invalid_records_are_dead_lettered() {
    let broker = Broker::start().await;
    let smtp = SmtpSink::start().await;
    let topic = format!("events-{}", free_port());
    let dlq = format!("dead-{}", free_port());
    broker.create_topic(&topic, 3).await;
    broker.create_topic(&dlq, 1).await;

    let dir = tempfile::tempdir().unwrap();
    let (daemon, admin, shutdown) = start_daemon(
        dir.path(),
        &broker.brokers,
        &[&topic],
        Some(&dlq),
        &smtp_channel(smtp.port),
    )
    .await;

    // Invalid records first, on the same keys (so the same partitions) as
    // the valid ones: they must not block what follows.
    for (key, payload) in [
        ("c-1", "this is not JSON"),
        (
            "c-1",
            r#"{"type":"carrier_delay_reported","ts":"2026-11-24T09:00:00Z"}"#,
        ),
        (
            "c-3",
            r#"{"type":"payment_failed","customer_id":"c-3","ts":"last tuesday"}"#,
        ),
    ] {
        broker.produce(&topic, Some(key), payload).await;
    }
    for (key, payload) in [
        ("c-1", CARRIER_DELAY),
        ("c-2", SHORT_DELAY),
        ("c-3", CARD_DECLINED),
        ("c-4", NO_ADDRESS),
    ] {
        broker.produce(&topic, Some(key), payload).await;
    }

    let mails = smtp.wait_for_count(2, Duration::from_secs(60)).await;
    let by_rcpt = |addr: &str| {
        mails
            .iter()
            .find(|m| m.rcpt_to.iter().any(|r| r == addr))
            .cloned()
    };

    let ana = by_rcpt("ana@example.com").expect("a carrier-delay email to ana");
    assert_eq!(ana.to, "ana@example.com");
    assert_eq!(ana.from, "\"Acme Care\" <care@acme.example>");
    assert_eq!(
        ana.subject,
        "Your order A-7781 is running late — new delivery date 2026-11-28"
    );
    assert!(ana.text.contains("Hi Ana,"), "{}", ana.text);
    assert!(ana.text.contains("DHL just told us"), "{}", ana.text);
    let html = ana.html.as_deref().expect("an HTML part");
    assert!(html.contains("<strong>A-7781</strong>"), "{html}");
    assert!(
        ana.message_id.ends_with("@forewarn>") && ana.message_id.len() == 32 + "<@forewarn>".len(),
        "{}",
        ana.message_id
    );

    let chen = by_rcpt("chen@example.com").expect("a card-declined email to chen");
    assert_eq!(chen.subject, "Your Family renewal did not go through");
    assert!(
        chen.text.contains("Hi <b>Chen</b>,"),
        "plain text is not escaped: {}",
        chen.text
    );
    assert!(
        chen.text.contains("because the card has expired"),
        "{}",
        chen.text
    );

    // Give the daemon time to act on the rest; exactly two emails.
    let metrics = wait_for("all seven records counted", Duration::from_secs(30), || {
        let (_, body) = http_get(&admin, "/metrics").ok()?;
        let accepted = metric(
            &body,
            "forewarn_events_total",
            &[("topic", &topic), ("outcome", "accepted")],
        )?;
        let invalid = metric(
            &body,
            "forewarn_events_total",
            &[("topic", &topic), ("outcome", "invalid")],
        )?;
        // Outcomes are recorded once the outbox has them, a moment after
        // the server accepted each mail.
        let sent = ["carrier-delay", "card-declined"].iter().all(|rule| {
            metric(
                &body,
                "forewarn_notifications_total",
                &[("rule", rule), ("outcome", "sent")],
            )
            .is_some()
        });
        (accepted == 4.0 && invalid == 3.0 && sent).then_some(body)
    })
    .await;
    assert_eq!(
        smtp.messages().len(),
        2,
        "only the two matching events with addresses are mailed"
    );
    // Every record is durably processed and committed: no lag left on
    // any assigned partition (librdkafka's statistics, every 5 s).
    let lag = wait_for(
        "consumer lag 0 on every partition",
        Duration::from_secs(30),
        || {
            let (_, body) = http_get(&admin, "/metrics").ok()?;
            let lags: Vec<f64> = body
                .lines()
                .filter(|l| {
                    l.starts_with("forewarn_consumer_lag{")
                        && l.contains(&format!("topic=\"{topic}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
                .collect();
            (!lags.is_empty() && lags.iter().all(|&l| l == 0.0)).then_some(lags)
        },
    )
    .await;
    assert!(!lag.is_empty());
    for (reason, n) in [
        ("not_json", 1.0),
        ("missing_customer", 1.0),
        ("bad_time", 1.0),
    ] {
        assert_eq!(
            metric(
                &metrics,
                "forewarn_invalid_events_total",
                &[("reason", reason)]
            ),
            Some(n),
            "{reason}"
        );
    }
    assert_eq!(
        metric(
            &metrics,
            "forewarn_rule_firings_total",
            &[("rule", "carrier-delay")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "forewarn_rule_firings_total",
            &[("rule", "card-declined")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "forewarn_notifications_total",
            &[("rule", "card-declined"), ("outcome", "sent")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "forewarn_notifications_total",
            &[("rule", "card-declined"), ("outcome", "no_address")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "forewarn_delivery_attempts_total",
            &[("channel", "email"), ("result", "ok")]
        ),
        Some(2.0)
    );
    assert!(
        metrics.contains("forewarn_delivery_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("ana@example.com") && !metrics.contains("c-1"),
        "no PII in metrics"
    );

    // The invalid records are on the dead-letter topic, with the reason.
    let dead = broker.read_all(&dlq, 3, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(dead.iter().any(|(p, _)| p == "this is not JSON"));
    for (_, headers) in &dead {
        let get = |k: &str| {
            headers
                .iter()
                .find(|(hk, _)| hk == k)
                .map(|(_, v)| v.clone())
        };
        assert!(
            get("forewarn.error").is_some_and(|e| !e.is_empty()),
            "{headers:?}"
        );
        assert_eq!(
            get("forewarn.source.topic").as_deref(),
            Some(topic.as_str())
        );
    }

    assert_eq!(http_get(&admin, "/healthz").unwrap().0, 200);
    let (status, body) = http_get(&admin, "/readyz").unwrap();
    assert_eq!(status, 200, "{body}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), daemon.wait())
        .await
        .expect("the daemon stops promptly")
        .expect("the daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_smtp_server_is_retried_then_the_mail_goes_through() {
    let broker = Broker::start().await;
    // The first two deliveries get "451 try again later".
    let smtp = SmtpSink::start_with(&["--fail-first", "2"]).await;
    let topic = format!("events-{}", free_port());
    broker.create_topic(&topic, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let (daemon, admin, shutdown) = start_daemon(
        dir.path(),
        &broker.brokers,
        &[&topic],
        None,
        &smtp_channel(smtp.port),
    )
    .await;

    broker.produce(&topic, Some("c-1"), CARRIER_DELAY).await;
    let mails = smtp.wait_for_count(1, Duration::from_secs(60)).await;
    assert_eq!(mails.len(), 1);
    // The outcome is recorded once the outbox has it, a moment after the
    // server accepted the mail.
    let body = wait_for_metric(
        &admin,
        "forewarn_notifications_total",
        &[("outcome", "sent")],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        metric(
            &body,
            "forewarn_delivery_attempts_total",
            &[("result", "transient")]
        ),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        metric(
            &body,
            "forewarn_notifications_total",
            &[("outcome", "sent")]
        ),
        Some(1.0)
    );
    shutdown.cancel();
    daemon.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_refused_mail_is_dead_lettered_not_dropped() {
    let broker = Broker::start().await;
    let smtp = SmtpSink::start_with(&["--fail-first", "1000", "--fail-code", "550"]).await;
    let topic = format!("events-{}", free_port());
    broker.create_topic(&topic, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let (daemon, admin, shutdown) = start_daemon(
        dir.path(),
        &broker.brokers,
        &[&topic],
        None,
        &smtp_channel(smtp.port),
    )
    .await;

    broker.produce(&topic, Some("c-1"), CARRIER_DELAY).await;
    let body = wait_for_metric(
        &admin,
        "forewarn_notifications_total",
        &[("outcome", "dead_letter")],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        metric(
            &body,
            "forewarn_delivery_attempts_total",
            &[("result", "permanent")]
        ),
        Some(1.0),
        "no retry of a 5xx"
    );
    // The dead letter is kept in the state store. While the daemon runs,
    // the CLI reads it through the admin API.
    let config = dir.path().join("forewarn.toml");
    let listed = forewarn_cli(&["dead-letters", "list", "--config"], &config, &admin);
    assert!(listed.contains("rule=carrier-delay"), "{listed}");
    assert!(listed.contains("550"), "the reason is kept: {listed}");
    assert!(smtp.messages().is_empty());
    shutdown.cancel();
    daemon.wait().await.unwrap();

    // Stopped: the CLI opens the store itself. Re-drive it, and a daemon
    // pointed at a working server delivers it.
    let listed = forewarn_cli(&["dead-letters", "list", "--config"], &config, &admin);
    let id = listed.split_whitespace().next().unwrap().to_string();
    let redriven = forewarn_cli(
        &["dead-letters", "redrive", &id, "--config"],
        &config,
        &admin,
    );
    assert!(
        redriven.contains("the state store (daemon not running)"),
        "{redriven}"
    );
    assert!(redriven.contains("1 notification"), "{redriven}");
    let good = SmtpSink::start().await;
    let (daemon, admin, shutdown) = start_daemon(
        dir.path(),
        &broker.brokers,
        &[&topic],
        None,
        &smtp_channel(good.port),
    )
    .await;
    let mails = good.wait_for_count(1, Duration::from_secs(60)).await;
    assert_eq!(mails[0].message_id, format!("<{id}@forewarn>"));
    let listed = forewarn_cli(&["dead-letters", "list", "--config"], &config, &admin);
    assert!(listed.contains("no dead letters"), "{listed}");
    shutdown.cancel();
    daemon.wait().await.unwrap();
}

/// Runs the `forewarn` binary with `args` followed by `config`; its
/// stdout. `admin`: the running daemon's admin address (the config says
/// port 0), passed the way ops would, as an environment override.
fn forewarn_cli(args: &[&str], config: &std::path::Path, admin: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .args(args)
        .arg(config)
        .env("FOREWARN__ADMIN__LISTEN", admin)
        .output()
        .expect("the forewarn binary runs");
    assert!(
        out.status.success(),
        "forewarn {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_after_the_deadline_stops_the_waiting_nudge() {
    // The send-time guard: the drop-off mail is decided but the SMTP server
    // defers it; the order arrives meanwhile; the mail is never sent.
    let broker = Broker::start().await;
    let smtp = SmtpSink::start_with(&["--fail-first", "1"]).await;
    let topic = format!("events-{}", free_port());
    broker.create_topic(&topic, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let channel = format!(
        "[channels.email]\ntype = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\ntimeout = \"5s\"\nretry_initial = \"10s\"\n",
        smtp.port
    );
    let (daemon, admin, shutdown) =
        start_daemon(dir.path(), &broker.brokers, &[&topic], None, &channel).await;
    let now = jiff::Timestamp::now();
    let at = |mins: i64| (now - jiff::SignedDuration::from_mins(mins)).to_string();
    let checkout = format!(
        r#"{{"type":"checkout_started","event_id":"g-1","customer_id":"c-9","ts":"{}","customer":{{"email":"ida@example.com"}},"cart":{{"total":80.0,"currency":"EUR","items":[{{"name":"Lamp","qty":1}}]}}}}"#,
        at(45)
    );
    // Something later on the partition moves the watermark past the deadline.
    let later = format!(
        r#"{{"type":"page_view","event_id":"g-2","customer_id":"c-8","ts":"{}","page":"/"}}"#,
        at(1)
    );
    broker.produce(&topic, Some("c-9"), &checkout).await;
    broker.produce(&topic, Some("c-9"), &later).await;
    // A deferred first attempt.
    wait_for_metric(
        &admin,
        "forewarn_delivery_attempts_total",
        &[("result", "transient")],
        Duration::from_secs(60),
    )
    .await;
    let order = format!(
        r#"{{"type":"order_placed","event_id":"g-3","customer_id":"c-9","ts":"{}","order_id":"A-1"}}"#,
        at(0)
    );
    broker.produce(&topic, Some("c-9"), &order).await;
    let body = wait_for_metric(
        &admin,
        "forewarn_notifications_total",
        &[("rule", "checkout-dropoff"), ("outcome", "resolved")],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        metric(&body, "forewarn_outbox_pending", &[("channel", "email")]),
        Some(0.0)
    );
    // Taken out of the outbox: no retry is left to send it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(smtp.messages().is_empty(), "the nudge must not go out");
    shutdown.cancel();
    daemon.wait().await.unwrap();
}
