//! The daemon as ops see it: the real binary, real signals, a broker that
//! goes away and comes back, a topic that does not exist.

mod harness;

use std::time::Duration;

use harness::*;

fn delay_event(n: usize) -> String {
    format!(
        r#"{{"type":"carrier_delay_reported","event_id":"ev-{n}","customer_id":"c-{n}","ts":"2026-11-24T09:05:00Z","customer":{{"email":"c{n}@example.com"}},"order_id":"A-{n}","carrier":"DHL","delay_hours":48,"new_eta":"2026-11-28T18:00:00Z"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_commits_so_a_restart_sends_nothing_twice() {
    let broker = Broker::start().await;
    let smtp = SmtpSink::start().await;
    let topic = format!("events-{}", free_port());
    broker.create_topic(&topic, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let config = write_config(
        dir.path(),
        &broker.brokers,
        &[&topic],
        None,
        admin_port,
        &smtp_channel(smtp.port),
    );

    let mut daemon = DaemonProcess::spawn(&config, admin_port, &dir.path().join("run1.log"));
    daemon.wait_ready(Duration::from_secs(60)).await;
    for n in 0..20 {
        broker
            .produce(&topic, Some(&format!("c-{n}")), &delay_event(n))
            .await;
    }
    smtp.wait_for_count(20, Duration::from_secs(60)).await;

    daemon.signal("TERM");
    let status = daemon
        .exits_within(Duration::from_secs(30), "exits after SIGTERM")
        .await;
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        daemon.logs()
    );
    let logs = daemon.logs();
    assert!(logs.contains("SIGTERM: draining"), "{logs}");
    assert!(logs.contains("positions committed"), "{logs}");

    // Five more while it is down; the restart must send exactly those.
    for n in 20..25 {
        broker
            .produce(&topic, Some(&format!("c-{n}")), &delay_event(n))
            .await;
    }
    let mut daemon = DaemonProcess::spawn(&config, admin_port, &dir.path().join("run2.log"));
    smtp.wait_for_count(25, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mails = smtp.messages();
    assert_eq!(mails.len(), 25, "no email sent twice after a clean restart");
    let mut ids: Vec<&str> = mails.iter().map(|m| m.message_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 25);
    daemon.signal("INT");
    let status = daemon
        .exits_within(Duration::from_secs(30), "exits after SIGINT")
        .await;
    assert!(status.success(), "{}", daemon.logs());
}

/// SIGTERM in the middle of a burst: events still arriving, hundreds of
/// mails decided but not yet sent. The daemon exits 0 within the grace
/// period with its positions committed to the group; what it decided and
/// had not sent waits in the persisted outbox, so a restart sends every
/// mail exactly once, none lost and none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_burst_exits_0_commits_and_keeps_the_outbox() {
    const N: usize = 2000;
    let broker = Broker::start().await;
    let smtp = SmtpSink::start_with(&["--quiet"]).await;
    let topic = format!("events-{}", free_port());
    broker.create_topic(&topic, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let config = write_config(
        dir.path(),
        &broker.brokers,
        &[&topic],
        None,
        admin_port,
        &smtp_channel(smtp.port),
    );
    let mut daemon = DaemonProcess::spawn(&config, admin_port, &dir.path().join("run1.log"));
    daemon.wait_ready(Duration::from_secs(60)).await;

    // The burst: N events in chunks, still being produced at SIGTERM.
    let records: Vec<(String, String)> =
        (0..N).map(|n| (format!("c-{n}"), delay_event(n))).collect();
    let producer = {
        let client = broker.producer_one_record_per_batch();
        let topic = topic.clone();
        tokio::spawn(async move {
            for chunk in records.chunks(100) {
                Broker::produce_keyed(&client, &topic, chunk).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    smtp.wait_for_count(50, Duration::from_secs(60)).await;
    daemon.signal("TERM");
    let status = daemon
        .exits_within(Duration::from_secs(30), "exits within 30 s of SIGTERM")
        .await;
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        daemon.logs_tail(40)
    );
    let sent_before = smtp.messages().len();
    assert!(
        sent_before < N,
        "the stop came after every mail was sent, so it proves nothing about the outbox"
    );
    let logs = daemon.logs();
    assert!(logs.contains("positions committed"), "{logs}");
    producer.await.unwrap();
    let group = format!("forewarn-test-{admin_port}");
    let committed = broker
        .committed_total(&group, &topic)
        .await
        .expect("the broker answers");
    assert!(
        committed > 0 && committed < N as i64,
        "committed {committed} of {N} records"
    );

    // The restart resumes at the committed positions and sends what the
    // outbox kept and what the topic still holds: every mail once.
    let daemon = DaemonProcess::spawn(&config, admin_port, &dir.path().join("run2.log"));
    let resumed = wait_for("the restart", Duration::from_secs(60), || {
        let logs = daemon.logs();
        let line = logs
            .lines()
            .find(|l| l.contains("resuming notifications left in the outbox"))?;
        line.split("pending=").nth(1)?.trim().parse::<usize>().ok()
    })
    .await;
    assert_eq!(
        sent_before + resumed,
        committed as usize,
        "every event processed before the stop was either sent or kept in the outbox"
    );
    let start = std::time::Instant::now();
    while smtp.files().len() < N && start.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = smtp.messages();
    let mut to: Vec<&str> = mails.iter().map(|m| m.to.as_str()).collect();
    to.sort();
    to.dedup();
    assert_eq!(
        (mails.len(), to.len()),
        (N, N),
        "{N} mails, one per customer (sent before the stop: {sent_before}, kept: {resumed}); log:\n{}",
        daemon.logs_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_makes_it_unready_not_dead_and_it_carries_on() {
    let mut broker = Broker::start_persistent().await;
    if broker.is_external() {
        return; // cannot kill someone else's cluster
    }
    let smtp = SmtpSink::start().await;
    let topic = "events";
    broker.create_topic(topic, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let config = write_config(
        dir.path(),
        &broker.brokers,
        &[topic],
        None,
        admin_port,
        &smtp_channel(smtp.port),
    );
    let mut daemon = DaemonProcess::spawn(&config, admin_port, &dir.path().join("run.log"));
    daemon.wait_ready(Duration::from_secs(60)).await;
    broker.produce(topic, Some("c-1"), &delay_event(1)).await;
    smtp.wait_for_count(1, Duration::from_secs(60)).await;

    broker.kill();
    let body = wait_for(
        "/readyz to report the broker outage",
        Duration::from_secs(30),
        || match http_get(&daemon.admin, "/readyz") {
            Ok((503, body)) if body.contains("not reachable") => Some(body),
            _ => None,
        },
    )
    .await;
    assert!(body.contains("Kafka brokers are not reachable"), "{body}");
    assert_eq!(
        http_get(&daemon.admin, "/healthz").unwrap().0,
        200,
        "alive while the broker is away"
    );
    let metrics = http_get(&daemon.admin, "/metrics").unwrap().1;
    assert_eq!(metric(&metrics, "forewarn_broker_up", &[]), Some(0.0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "no crash:\n{}",
        daemon.logs()
    );

    broker.restart().await;
    daemon.wait_ready(Duration::from_secs(90)).await;
    broker.produce(topic, Some("c-2"), &delay_event(2)).await;
    let mails = smtp.wait_for_count(2, Duration::from_secs(90)).await;
    assert_eq!(
        mails.len(),
        2,
        "the first event is not sent again, the new one is"
    );
    let logs = daemon.logs();
    assert!(
        logs.contains("Kafka brokers unreachable"),
        "a clear log line:\n{logs}"
    );
    assert!(logs.contains("Kafka brokers reachable again"), "{logs}");

    daemon.signal("TERM");
    let status = daemon.exits_within(Duration::from_secs(30), "exits").await;
    assert!(status.success(), "{}", daemon.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_hung_still_exits_0_promptly() {
    let mut broker = Broker::start_persistent().await;
    if broker.is_external() {
        return; // cannot freeze someone else's cluster
    }
    let smtp = SmtpSink::start().await;
    let topic = "events";
    broker.create_topic(topic, 1).await;
    // The profiles reader is the daemon's other consumer: it must not
    // hold the exit either.
    broker.create_topic("profiles", 1).await;
    broker
        .produce("profiles", Some("c-1"), r#"{"tier":"gold"}"#)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    // A short session, so that a group that still counts the member which
    // could not leave hands its partition on sooner.
    let config = write_config_with(
        dir.path(),
        &broker.brokers,
        &[topic],
        admin_port,
        &smtp_channel(smtp.port),
        &ConfigOptions {
            kafka_properties: &[
                ("session.timeout.ms", "3000"),
                ("heartbeat.interval.ms", "500"),
            ],
            customers_toml: "profiles_topic = \"profiles\"\n",
            ..ConfigOptions::default()
        },
    );
    let mut daemon = DaemonProcess::spawn(&config, admin_port, &dir.path().join("run.log"));
    daemon.wait_ready(Duration::from_secs(60)).await;
    broker.produce(topic, Some("c-1"), &delay_event(1)).await;
    smtp.wait_for_count(1, Duration::from_secs(60)).await;

    // The broker stops answering but keeps its connections: the final
    // commit to Kafka and leaving the group get no reply. (librdkafka
    // waits on them without a limit: before the deadline, this daemon was
    // still running 120 s after SIGTERM.)
    broker.freeze();
    let stopped = std::time::Instant::now();
    daemon.signal("TERM");
    let status = daemon.exits_within(Duration::from_secs(30), "exits").await;
    let took = stopped.elapsed();
    broker.thaw();
    // Tansu's group coordinator does not come back from SIGSTOP (it never
    // hands the partition on): a fresh broker process, same storage.
    broker.restart().await;
    assert!(status.success(), "{status:?}\n{}", daemon.logs_tail(20));
    assert!(
        took >= Duration::from_secs(9),
        "waited for the broker ({took:?})"
    );
    let logs = daemon.logs();
    assert!(logs.contains("customer profiles loaded"), "{logs}");
    assert!(
        logs.contains("Kafka did not answer the final commit in time"),
        "{logs}"
    );
    assert!(
        logs.contains("stopping without leaving the consumer group"),
        "{logs}"
    );
    // The consumer, still waiting on the broker at the exit, no longer
    // held the state store: it was closed cleanly (a store left open by
    // an exit needs redb's repair at the next open).
    let repaired = std::rc::Rc::new(std::cell::Cell::new(false));
    let flag = std::rc::Rc::clone(&repaired);
    drop(
        redb::Builder::new()
            .set_repair_callback(move |_| flag.set(true))
            .open(dir.path().join("state/forewarn.redb"))
            .expect("the state store opens"),
    );
    assert!(!repaired.get(), "the state store was not closed cleanly");

    // Nothing was lost: the store had the position, and a new start
    // resumes there.
    let mut daemon = DaemonProcess::spawn(&config, admin_port, &dir.path().join("run2.log"));
    daemon.wait_ready(Duration::from_secs(90)).await;
    broker.produce(topic, Some("c-2"), &delay_event(2)).await;
    smtp.wait_for_count(2, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = smtp.messages();
    assert_eq!(mails.len(), 2, "the first event is not sent again");
    let to: Vec<_> = mails.iter().map(|m| m.to.as_str()).collect();
    assert!(to.contains(&"c2@example.com"), "{to:?}");
    let logs = daemon.logs();
    assert!(logs.contains("resuming from the stored position"), "{logs}");
    daemon.signal("TERM");
    let status = daemon.exits_within(Duration::from_secs(30), "exits").await;
    assert!(status.success(), "{}", daemon.logs_tail(20));
    assert!(
        daemon.logs().contains("left the consumer group"),
        "{}",
        daemon.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_named_at_startup() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let config = write_config(
        dir.path(),
        &broker.brokers,
        &["no-such-topic"],
        None,
        admin_port,
        &format!(
            "[channels.email]\ntype = \"file\"\ndir = {:?}\n",
            dir.path().join("outbox").display().to_string()
        ),
    );
    let mut daemon = DaemonProcess::spawn(&config, admin_port, &dir.path().join("run.log"));
    let status = daemon.exits_within(Duration::from_secs(60), "exits").await;
    assert!(!status.success());
    let logs = daemon.logs();
    assert!(
        logs.contains("topic \"no-such-topic\" does not exist"),
        "{logs}"
    );
    assert!(logs.contains("create it first"), "{logs}");
}

#[tokio::test]
async fn invalid_config_and_rules_stop_startup_with_instructions() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[kafka]\nbrokers = \"\"\ntopics = []\n[channels.email]\ntype = \"smtp\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 problems"), "{err}");
    assert!(err.contains("kafka.brokers is empty"), "{err}");
    assert!(err.contains("channels.email.host is missing"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .args(["check", concat!(env!("CARGO_MANIFEST_DIR"), "/rules")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
