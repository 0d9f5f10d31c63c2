//! Hot reload, as ops use it: the real binary, a rules folder edited under
//! it, and SIGHUP. A valid change takes effect without a restart (episodes
//! of a kept rule keep their deadline, those of a removed rule are
//! dropped); an invalid change is refused with `forewarn check`'s
//! diagnostics (file:line:column) and the active rules stay.

mod harness;

use std::path::Path;
use std::time::Duration;

use harness::*;

const TEMPLATE_SUBJECT: &str = "About your {{ rule.id }}";
const TEMPLATE_TEXT: &str = "Hello from {{ rule.id }}.";

/// A rule on `event` with id `id` that notifies at once.
fn match_rule(id: &str, event: &str) -> String {
    format!(
        "[[rule]]\nid = \"{id}\"\nkind = \"match\"\ntrigger = {{ event = \"{event}\" }}\nnotify = {{ channel = \"email\", template = \"t\" }}\n"
    )
}

/// An absence rule: `start` and no `done` within an hour (event time).
fn absence_rule(id: &str, start: &str) -> String {
    format!(
        "[[rule]]\nid = \"{id}\"\nkind = \"absence\"\ntrigger = {{ event = \"{start}\" }}\nuntil = {{ event = \"done\" }}\nwithin = \"1h\"\nnotify = {{ channel = \"email\", template = \"t\" }}\n"
    )
}

fn event(kind: &str, n: usize) -> String {
    event_at(kind, n, jiff::Timestamp::now().as_millisecond())
}

fn event_at(kind: &str, n: usize, now: i64) -> String {
    format!(
        r#"{{"type":"{kind}","event_id":"{kind}-{n}","customer_id":"c-{n}","ts":{now},"customer":{{"email":"c{n}@example.com"}}}}"#
    )
}

fn write_rules(dir: &Path, body: &str) {
    // Written aside and renamed in, as editors and config management do.
    let tmp = dir.join(".rules.toml.tmp");
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, dir.join("rules.toml")).unwrap();
}

fn reloads(admin: &str, result: &str) -> f64 {
    http_get(admin, "/metrics")
        .ok()
        .and_then(|(_, m)| metric(&m, "forewarn_rule_reloads_total", &[("result", result)]))
        .unwrap_or(0.0)
}

async fn wait_reloads(admin: &str, result: &str, n: f64) {
    wait_for(
        &format!("{n} {result} rule reloads"),
        Duration::from_secs(20),
        || (reloads(admin, result) >= n).then_some(()),
    )
    .await;
}

fn subjects(smtp: &SmtpSink) -> Vec<String> {
    let mut s: Vec<String> = smtp.messages().iter().map(|m| m.subject.clone()).collect();
    s.sort();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_on_change_and_sighup_and_a_bad_change_keeps_the_old_rules() {
    let broker = Broker::start().await;
    let smtp = SmtpSink::start().await;
    let topic = format!("events-{}", free_port());
    broker.create_topic(&topic, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(rules.join("templates")).unwrap();
    std::fs::write(rules.join("templates/t.subject"), TEMPLATE_SUBJECT).unwrap();
    std::fs::write(rules.join("templates/t.txt"), TEMPLATE_TEXT).unwrap();
    write_rules(
        &rules,
        &format!(
            "{}\n{}\n{}",
            match_rule("alpha", "a"),
            absence_rule("kept", "k"),
            absence_rule("removed", "r")
        ),
    );
    let admin_port = free_port();
    let config = write_config_with(
        dir.path(),
        &broker.brokers,
        &[&topic],
        admin_port,
        &smtp_channel(smtp.port),
        &ConfigOptions {
            rules_dir: Some(&rules),
            allowed_lateness: Some("0s"),
            ..ConfigOptions::default()
        },
    );
    let mut daemon = DaemonProcess::spawn(&config, admin_port, &dir.path().join("daemon.log"));
    daemon.wait_ready(Duration::from_secs(60)).await;
    let admin = format!("127.0.0.1:{admin_port}");

    // alpha works; "beta" events do nothing yet. Two episodes open.
    broker.produce(&topic, Some("c-1"), &event("a", 1)).await;
    broker.produce(&topic, Some("c-2"), &event("b", 2)).await;
    broker.produce(&topic, Some("c-3"), &event("k", 3)).await;
    broker.produce(&topic, Some("c-4"), &event("r", 4)).await;
    smtp.wait_for_count(1, Duration::from_secs(30)).await;
    wait_for("two open episodes", Duration::from_secs(20), || {
        let (_, m) = http_get(&admin, "/metrics").ok()?;
        (metric(&m, "forewarn_open_episodes", &[]) == Some(2.0)).then_some(())
    })
    .await;

    // A valid change in the folder: beta added, "removed" gone, "kept" kept.
    write_rules(
        &rules,
        &format!(
            "{}\n{}\n{}",
            match_rule("alpha", "a"),
            match_rule("beta", "b"),
            absence_rule("kept", "k")
        ),
    );
    wait_reloads(&admin, "applied", 1.0).await;
    assert!(
        daemon.logs().contains("rules reloaded"),
        "{}",
        daemon.logs_tail(20)
    );
    let (_, m) = http_get(&admin, "/metrics").unwrap();
    assert_eq!(metric(&m, "forewarn_rules_loaded", &[]), Some(3.0));
    assert_eq!(
        metric(&m, "forewarn_open_episodes", &[]),
        Some(1.0),
        "the removed rule's episode is dropped, the kept rule's stays"
    );
    broker.produce(&topic, Some("c-5"), &event("b", 5)).await;
    // The kept episode fires once the watermark passes its deadline: an
    // event two hours on (in event time) moves it there.
    let later = jiff::Timestamp::now().as_millisecond() + 2 * 3_600_000;
    broker
        .produce(&topic, Some("c-6"), &event_at("x", 6, later))
        .await;
    smtp.wait_for_count(3, Duration::from_secs(30)).await;
    assert_eq!(
        subjects(&smtp),
        vec!["About your alpha", "About your beta", "About your kept"],
        "beta took effect without a restart; the removed rule's episode never fired"
    );

    // An invalid change: refused with diagnostics, the active rules stay.
    write_rules(
        &rules,
        &format!(
            "{}\n{}",
            match_rule("alpha", "a"),
            match_rule("broken", "a").replace("\"match\"", "\"sometimes\"")
        ),
    );
    wait_reloads(&admin, "rejected", 1.0).await;
    let logs = daemon.logs();
    assert!(logs.contains("rules_reload_rejected"), "{logs}");
    assert!(
        logs.contains("rules.toml:"),
        "the diagnostics name the file and line: {logs}"
    );
    assert!(logs.contains("sometimes"), "{logs}");
    broker.produce(&topic, Some("c-7"), &event("b", 7)).await;
    smtp.wait_for_count(4, Duration::from_secs(30)).await;
    assert_eq!(
        subjects(&smtp)
            .iter()
            .filter(|s| *s == "About your beta")
            .count(),
        2,
        "beta is still active after the refused change"
    );

    // Fixed again (beta removed), and applied by SIGHUP: the folder is
    // written and the signal sent at once, before the watcher settles.
    write_rules(&rules, &match_rule("alpha", "a"));
    daemon.signal("HUP");
    wait_reloads(&admin, "applied", 2.0).await;
    assert!(daemon.logs().contains("SIGHUP: reloading the rules"));
    broker.produce(&topic, Some("c-8"), &event("b", 8)).await;
    broker.produce(&topic, Some("c-9"), &event("a", 9)).await;
    smtp.wait_for_count(5, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = subjects(&smtp);
    assert_eq!(s.len(), 5, "{s:?}");
    assert_eq!(
        s.iter().filter(|s| *s == "About your beta").count(),
        2,
        "beta is gone: {s:?}"
    );
    // The watcher saw the same folder the signal loaded: no second reload.
    assert_eq!(reloads(&admin, "applied"), 2.0);

    daemon.signal("TERM");
    let status = daemon.exits_within(Duration::from_secs(30), "exits").await;
    assert!(status.success(), "{}", daemon.logs_tail(30));
}
