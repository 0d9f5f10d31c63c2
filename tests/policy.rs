//! The contact policy end to end (SPEC 4): the real `forewarn` binary, a
//! real broker (Tansu) carrying a profiles topic and the events, and a real
//! SMTP server (aiosmtpd).
//!
//! What it proves, for customers in three time zones:
//! - the profiles topic is read to its end before anything is decided, the
//!   profile wins over the event's own fields (address, time zone,
//!   consent), and a tombstone deletes a profile;
//! - exactly the expected mails go out: marketing ones now, or deferred to
//!   the end of the quiet hours in the one customer's zone that is inside
//!   them; none of marketing to the unsubscribed customer (transactional
//!   still goes), none past the frequency cap, none to the holdout group;
//!   marketing mails carry `List-Unsubscribe` (one-click), transactional
//!   ones do not;
//! - `forewarn explain` (against the running daemon, JSON and text) tells
//!   each customer's story, and the metrics count the suppressions;
//! - the admin API answers 401 without the bearer token (or with a wrong
//!   one), and with it returns only the customer asked for, also for an id
//!   with `@` and `/` (percent-encoded);
//! - a deferred marketing mail is withdrawn when the customer's profile
//!   withdraws consent before it is due (`deferred`, then `unsubscribed`);
//! - `forewarn forget` erases a customer's decision log through the daemon.
//!
//! Quiet hours are judged on the wall clock when a firing is decided, so
//! the window is computed from the current time: it began five minutes ago
//! in Bruno's zone and ends [`QUIET_LEAD`] from now, while the other zones'
//! clocks are outside it for the whole test (checked with jiff first).
//!
//! Timeline (t = when the config is written, `end` = t + QUIET_LEAD):
//! - before t: profiles produced (dora's upserted, then tombstoned);
//! - t: daemon starts, reads the profiles, becomes ready (a few seconds);
//! - events produced; at once: 7 mails (ana, bruno's transactional, chie's
//!   transactional, dora, eve ×2, hugo outside the holdout); bruno's
//!   marketing one is deferred, and so is bianca's (same zone), whose
//!   profile then withdraws her consent; explain, metrics and the admin
//!   API are checked while they wait;
//! - `end`: bruno's marketing mail arrives (the 8th), bianca's is withdrawn;
//! - chie is forgotten; explain shows nothing for her; still 8 mails.

mod harness;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use forewarn::decisions::DecisionRecord;
use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use mailparse::MailHeaderMap;
use serde_json::{json, Value};

use harness::*;

/// How far ahead of the config's writing the quiet hours end.
const QUIET_LEAD: Duration = Duration::from_secs(30);
/// At least this much of the window must be left when the events go out,
/// or the deferral could not be observed.
const QUIET_MARGIN: Duration = Duration::from_secs(12);
const TOKEN_VAR: &str = "FOREWARN_TEST_POLICY_ADMIN_TOKEN";
const UNSUBSCRIBE_URL: &str = "https://acme.example/unsubscribe?c=";

const MARKETING: &str = "pricing-nudge";
const TRANSACTIONAL: &str = "payment-problem";
const HOLDOUT_RULE: &str = "tour-followup";
const HOLDOUT_PERCENT: u64 = 10;

/// Two marketing rules (one with a holdout group) and a transactional
/// one, all `match`: each fires on its event, at once, no cooldown.
fn rules_toml() -> String {
    format!(
        r#"[[rule]]
id      = "{MARKETING}"
kind    = "match"
class   = "marketing"
trigger = {{ event = "page_view", if = 'event.page == "/pricing"' }}
notify  = {{ channel = "email", template = "notice" }}

[[rule]]
id      = "{TRANSACTIONAL}"
kind    = "match"
class   = "transactional"
trigger = {{ event = "payment_failed" }}
notify  = {{ channel = "email", template = "notice" }}

[[rule]]
id              = "{HOLDOUT_RULE}"
kind            = "match"
class           = "marketing"
trigger         = {{ event = "tour_completed" }}
holdout_percent = {HOLDOUT_PERCENT}
notify          = {{ channel = "email", template = "notice" }}
"#
    )
}

fn write_rules(dir: &Path) -> std::path::PathBuf {
    write_rules_dir(
        dir,
        &rules_toml(),
        "Hi {{ customer.name | default(\"there\") }},\n\nnotification {{ notification.id }}.\n",
    )
}

// ------------------------------------------------------------ quiet hours

/// The quiet window and who is in which zone.
struct Quiet {
    /// Ana's zone: outside the window.
    ana_zone: &'static str,
    /// Bruno's zone: inside the window until `end`.
    bruno_zone: &'static str,
    /// Chie's and Eve's zone: outside the window.
    chie_zone: &'static str,
    start: Time,
    end: Time,
    /// The instant the window ends in Bruno's zone (a whole second).
    end_at: Timestamp,
}

fn clock(t: Time) -> String {
    format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
}

/// The window test, written independently of `forewarn::policy`.
fn inside(start: Time, end: Time, t: Time) -> bool {
    if start < end {
        start <= t && t < end
    } else {
        t >= start || t < end
    }
}

/// Picks a window from five minutes ago to `QUIET_LEAD` from now, on the
/// clock of the middle zone of the first trio for which that zone is
/// inside it until it ends and the other two are outside it for the next
/// two minutes. (With zones hours apart the first trio always fits; the
/// others are there should a coincidence say otherwise.)
fn pick_quiet(now: Timestamp) -> Quiet {
    const TRIOS: [[&str; 3]; 3] = [
        ["UTC", "America/New_York", "Asia/Tokyo"],
        ["UTC", "Europe/Paris", "Asia/Tokyo"],
        ["Europe/London", "America/Los_Angeles", "Australia/Sydney"],
    ];
    let lead = SignedDuration::try_from(QUIET_LEAD).expect("a small duration");
    // A whole second, so that "HH:MM:SS" names the instant exactly.
    let end_at =
        Timestamp::from_second((now + lead).as_second() + i64::from(now.subsec_nanosecond() > 0))
            .expect("a valid instant");
    let start_at = now - SignedDuration::from_mins(5);
    for [ana_zone, bruno_zone, chie_zone] in TRIOS {
        let zone = |name| TimeZone::get(name).expect("a known IANA zone");
        let tz = zone(bruno_zone);
        let t = start_at.to_zoned(tz.clone()).time();
        let start = Time::new(t.hour(), t.minute(), t.second(), 0).expect("a time");
        let end_local = end_at.to_zoned(tz.clone());
        let end = end_local.time();
        // The civil end names exactly `end_at` (no DST gap or fold there).
        let back = end_local
            .datetime()
            .to_zoned(tz.clone())
            .expect("a zoned time");
        if back.timestamp() != end_at {
            continue;
        }
        let local = |tz: &TimeZone, s: i64| {
            (now + SignedDuration::from_secs(s))
                .to_zoned(tz.clone())
                .time()
        };
        let until_end = end_at.duration_since(now).as_secs();
        let bruno_inside = (0..until_end).all(|s| inside(start, end, local(&tz, s)));
        let others_outside = [ana_zone, chie_zone].iter().all(|name| {
            let tz = zone(name);
            (0..120).all(|s| !inside(start, end, local(&tz, s)))
        });
        if bruno_inside && others_outside {
            return Quiet {
                ana_zone,
                bruno_zone,
                chie_zone,
                start,
                end,
                end_at,
            };
        }
    }
    panic!("no zone trio puts exactly one zone inside the quiet window at {now}");
}

// ------------------------------------------------------------ helpers

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// One event as the topic carries it (see `write_config`'s `[events]`),
/// with `extra` fields merged in.
fn event(kind: &str, id: &str, customer: &str, extra: Value) -> (String, String) {
    let mut e = json!({
        "type": kind,
        "event_id": id,
        "customer_id": customer,
        "ts": now_ms(),
    });
    if let (Some(e), Value::Object(extra)) = (e.as_object_mut(), extra) {
        e.extend(extra);
    }
    (customer.to_string(), e.to_string())
}

/// (recipient, subject, List-Unsubscribe, List-Unsubscribe-Post) of a mail.
type MailSummary = (String, String, Option<String>, Option<String>);

fn summary(mail: &Mail) -> MailSummary {
    let parsed = mailparse::parse_mail(mail.raw.as_bytes()).expect("a parseable email");
    let rcpt = match mail.rcpt_to.as_slice() {
        [one] => one.clone(),
        other => panic!("one envelope recipient expected, got {other:?}"),
    };
    (
        rcpt,
        mail.subject.clone(),
        parsed.headers.get_first_value("List-Unsubscribe"),
        parsed.headers.get_first_value("List-Unsubscribe-Post"),
    )
}

fn marketing_mail(to: &str, customer: &str, rule: &str) -> MailSummary {
    (
        to.to_string(),
        format!("{rule} for {customer}"),
        // `urlencode`, like Jinja's, keeps `/`.
        Some(format!(
            "<{UNSUBSCRIBE_URL}{}>",
            customer.replace('@', "%40")
        )),
        Some("List-Unsubscribe=One-Click".to_string()),
    )
}

fn transactional_mail(to: &str, customer: &str) -> MailSummary {
    (
        to.to_string(),
        format!("{TRANSACTIONAL} for {customer}"),
        None,
        None,
    )
}

fn sorted(mut v: Vec<MailSummary>) -> Vec<MailSummary> {
    v.sort();
    v
}

/// Waits for `n` mails; on timeout, fails showing those that came.
async fn wait_mails(
    smtp: &SmtpSink,
    daemon: &DaemonProcess,
    n: usize,
    timeout: Duration,
) -> Vec<Mail> {
    let start = Instant::now();
    loop {
        let mails = smtp.messages();
        if mails.len() >= n {
            return mails;
        }
        if start.elapsed() > timeout {
            let got: Vec<MailSummary> = mails.iter().map(summary).collect();
            panic!(
                "{} of {n} mails within {timeout:?}: {got:#?}\n{}",
                mails.len(),
                daemon.logs_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A customer's story: per notification, its rule and its outcomes in
/// order; sorted, since notification ids are hashes.
fn story(records: &[DecisionRecord]) -> Vec<(String, Vec<String>)> {
    let mut by_notification: BTreeMap<&str, (String, Vec<String>)> = BTreeMap::new();
    for r in records {
        by_notification
            .entry(&r.notification_id)
            .or_insert_with(|| (r.rule.clone(), Vec::new()))
            .1
            .push(r.outcome.clone());
    }
    let mut s: Vec<_> = by_notification.into_values().collect();
    s.sort();
    s
}

fn expected(entries: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    let mut s: Vec<_> = entries
        .iter()
        .map(|(rule, outcomes)| {
            (
                rule.to_string(),
                outcomes.iter().map(|o| o.to_string()).collect(),
            )
        })
        .collect();
    s.sort();
    s
}

/// The CLI as an operator runs it, with the admin token in its
/// environment (the config names the variable).
struct Cli<'a> {
    config: &'a Path,
    token: &'a str,
}

impl Cli<'_> {
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_forewarn"))
            .args(args)
            .arg("--config")
            .arg(self.config)
            .env(TOKEN_VAR, self.token)
            .output()
            .await
            .expect("run forewarn");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `forewarn explain --customer ID --json`.
    async fn decisions(&self, customer: &str) -> Vec<DecisionRecord> {
        let (ok, out, err) = self
            .run(&["explain", "--customer", customer, "--json"])
            .await;
        assert!(ok, "forewarn explain --json failed for {customer:?}: {err}");
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("explain --json printed no records ({e}):\n{out}"))
    }

    /// `forewarn explain --customer ID` (text).
    async fn explain_text(&self, customer: &str) -> String {
        let (ok, out, err) = self.run(&["explain", "--customer", customer]).await;
        assert!(ok, "forewarn explain failed for {customer:?}: {err}");
        out
    }

    /// Polls `explain --json` until the customer's story is `want`.
    async fn wait_story(
        &self,
        daemon: &DaemonProcess,
        customer: &str,
        want: &[(String, Vec<String>)],
        timeout: Duration,
    ) -> Vec<DecisionRecord> {
        let start = Instant::now();
        loop {
            let records = self.decisions(customer).await;
            if story(&records) == want {
                return records;
            }
            if start.elapsed() > timeout {
                panic!(
                    "the decision log of {customer:?} did not become {want:?} within {timeout:?}; it is {:?}:\n{records:#?}\n{}",
                    story(&records),
                    daemon.logs_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `GET path` on the admin API with optional `Authorization` value.
fn api_get(admin: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    http_get_with(admin, path, &headers).expect("the admin API answers")
}

// ------------------------------------------------------------ the test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_quiet_hours_consent_cap_and_holdout_end_to_end() {
    let test_start = Instant::now();
    let broker = Broker::start().await;
    let smtp = SmtpSink::start().await;
    let run = free_port();
    let events_topic = format!("behavior-events-{run}");
    let profiles_topic = format!("customer-profiles-{run}");
    broker.create_topic(&events_topic, 2).await;
    broker.create_topic(&profiles_topic, 1).await;
    let dir = tempfile::tempdir().expect("temp dir");

    // Customers. Dora's id has an `@` and a `/` (the admin API needs it
    // percent-encoded). Hugo-in falls in the holdout group of
    // HOLDOUT_RULE, hugo-out does not (the same hash the daemon uses).
    let (ana, bruno, chie, dora, eve) = ("ana", "bruno", "chie", "dora@eu/7", "eve");
    let bianca = "bianca";
    let hugo = |inside: bool| {
        (0..10_000)
            .map(|i| format!("hugo-{i}"))
            .find(|c| {
                let bucket = forewarn::policy::holdout_bucket(HOLDOUT_RULE, c);
                (bucket < HOLDOUT_PERCENT * 100) == inside
            })
            .expect("some id on each side of the holdout split")
    };
    let (hugo_in, hugo_out) = (hugo(true), hugo(false));

    let now = Timestamp::now();
    let quiet = pick_quiet(now);
    let end_ms = quiet.end_at.as_millisecond();
    eprintln!(
        "quiet hours {}..{} in {} (ends {}); ana in {}, chie and eve in {}",
        clock(quiet.start),
        clock(quiet.end),
        quiet.bruno_zone,
        quiet.end_at,
        quiet.ana_zone,
        quiet.chie_zone
    );

    // Profiles, before the daemon starts: it must read them all first.
    let profiles = [
        (
            ana,
            json!({"email": "ana@example.com", "name": "Ana", "locale": "pt-BR",
                   "timezone": quiet.ana_zone, "consent": {"marketing": true}}),
        ),
        (
            bruno,
            json!({"email": "bruno@example.com", "name": "Bruno", "timezone": quiet.bruno_zone}),
        ),
        (
            bianca,
            json!({"email": "bianca@example.com", "timezone": quiet.bruno_zone,
                   "consent": {"marketing": true}}),
        ),
        (
            chie,
            json!({"email": "chie@example.com", "name": "Chie", "timezone": quiet.chie_zone,
                   "consent": {"marketing": false}}),
        ),
        // Deleted below: had it stayed, she would be unsubscribed and
        // mailed at this old address.
        (
            dora,
            json!({"email": "dora.old@example.com", "timezone": quiet.bruno_zone,
                   "consent": {"marketing": false}}),
        ),
        (
            eve,
            json!({"email": "eve@example.com", "timezone": quiet.chie_zone}),
        ),
    ];
    let records: Vec<(String, String)> = profiles
        .iter()
        .map(|(c, p)| (c.to_string(), p.to_string()))
        .collect();
    broker.produce_all(&profiles_topic, &records).await;
    broker.produce_tombstone(&profiles_topic, dora).await;

    // The daemon, with the policy, the profiles topic and an admin token.
    let token = format!("policy-test-token-{run}-{}", now.as_millisecond());
    let rules = write_rules(dir.path());
    let admin_port = free_port();
    let customers_toml = format!(
        "profiles_topic = {profiles_topic:?}\nconsent = \"customer.consent\"\nunsubscribe_url = \"{UNSUBSCRIBE_URL}{{{{ customer.id | urlencode }}}}\"\n"
    );
    let admin_toml = format!("token_env = {TOKEN_VAR:?}\n");
    let policy_toml = format!(
        "[policy]\nmax_per_customer = {{ count = 2, per = \"24h\" }}\nquiet_hours = {{ start = \"{}\", end = \"{}\" }}\ntimezone_field = \"customer.timezone\"\ndefault_timezone = \"UTC\"\n",
        clock(quiet.start),
        clock(quiet.end)
    );
    let config = write_config_with(
        dir.path(),
        &broker.brokers,
        &[&events_topic],
        admin_port,
        &smtp_channel(smtp.port),
        &ConfigOptions {
            rules_dir: Some(&rules),
            customers_toml: &customers_toml,
            admin_toml: &admin_toml,
            extra_toml: &policy_toml,
            ..ConfigOptions::default()
        },
    );
    let daemon = DaemonProcess::spawn_with_env(
        &config,
        admin_port,
        &dir.path().join("daemon.log"),
        &[],
        &[(TOKEN_VAR, &token)],
    );
    daemon.wait_ready(Duration::from_secs(30)).await;
    eprintln!(
        "ready {:?} after the config was written",
        Timestamp::now().duration_since(now)
    );
    let admin = daemon.admin.clone();
    let cli = Cli {
        config: &config,
        token: &token,
    };

    // Ready means the whole profiles topic has been read.
    let (_, m) = http_get(&admin, "/metrics").expect("metrics");
    assert_eq!(
        metric(&m, "forewarn_profiles_total", &[("result", "upserted")]),
        Some(6.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "forewarn_profiles_total", &[("result", "deleted")]),
        Some(1.0),
        "{m}"
    );
    let left = end_ms - now_ms();
    assert!(
        left > QUIET_MARGIN.as_millis() as i64,
        "the daemon took too long to start ({:?} since the test began): only {left} ms of the quiet window are left, too little to see a deferral; log:\n{}",
        test_start.elapsed(),
        daemon.logs_tail(40)
    );

    // The events. The event's own fields lose to the profile: ana's old
    // address, bruno's UTC zone and chie's marketing consent are ignored.
    // Dora has no profile any more: her event's address is used.
    let pricing = |c: &str, n: u32, extra: Value| {
        let mut e = json!({"page": "/pricing"});
        if let (Some(e), Value::Object(extra)) = (e.as_object_mut(), extra) {
            e.extend(extra);
        }
        event("page_view", &format!("pv-{c}-{n}"), c, e)
    };
    let events = vec![
        pricing(
            ana,
            1,
            json!({"customer": {"email": "ana.old@example.com"}}),
        ),
        pricing(bruno, 1, json!({"customer": {"timezone": "UTC"}})),
        pricing(bianca, 1, json!({})),
        event(
            "payment_failed",
            "pf-bruno-1",
            bruno,
            json!({"payment": {"reason": "card_declined"}}),
        ),
        pricing(
            chie,
            1,
            json!({"customer": {"consent": {"marketing": true}}}),
        ),
        event(
            "payment_failed",
            "pf-chie-1",
            chie,
            json!({"payment": {"reason": "expired_card"}}),
        ),
        pricing(dora, 1, json!({"customer": {"email": "dora@example.com"}})),
        pricing(eve, 1, json!({})),
        pricing(eve, 2, json!({})),
        pricing(eve, 3, json!({})),
        // Not the pricing page: no rule fires.
        event("page_view", "pv-eve-blog", eve, json!({"page": "/blog"})),
        event(
            "tour_completed",
            &format!("tour-{hugo_in}"),
            &hugo_in,
            json!({"customer": {"email": "hugo.in@example.com"}}),
        ),
        event(
            "tour_completed",
            &format!("tour-{hugo_out}"),
            &hugo_out,
            json!({"customer": {"email": "hugo.out@example.com"}}),
        ),
    ];
    broker.produce_all(&events_topic, &events).await;

    // At once: seven mails; bruno's and bianca's marketing ones wait for
    // the window's end.
    let immediate = sorted(vec![
        marketing_mail("ana@example.com", ana, MARKETING),
        transactional_mail("bruno@example.com", bruno),
        transactional_mail("chie@example.com", chie),
        marketing_mail("dora@example.com", dora, MARKETING),
        marketing_mail("eve@example.com", eve, MARKETING),
        marketing_mail("eve@example.com", eve, MARKETING),
        marketing_mail("hugo.out@example.com", &hugo_out, HOLDOUT_RULE),
    ]);
    let mails = wait_mails(&smtp, &daemon, 7, Duration::from_secs(20)).await;
    assert!(
        now_ms() < end_ms,
        "the immediate mails took until after the quiet window ended; log:\n{}",
        daemon.logs_tail(40)
    );
    assert_eq!(
        sorted(mails.iter().map(summary).collect()),
        immediate,
        "the mails sent at once; log:\n{}",
        daemon.logs_tail(40)
    );

    // The decision log, customer by customer, through the running daemon.
    let wait = Duration::from_secs(10);
    let fired_sent: &[&str] = &["fired", "sent"];
    let ana_log = cli
        .wait_story(&daemon, ana, &expected(&[(MARKETING, fired_sent)]), wait)
        .await;
    let bruno_log = cli
        .wait_story(
            &daemon,
            bruno,
            &expected(&[(MARKETING, &["deferred"]), (TRANSACTIONAL, fired_sent)]),
            wait,
        )
        .await;
    // Bianca's waits for the window's end too; meanwhile she unsubscribes
    // (a new profile on the topic, read by the running daemon).
    let bianca_log = cli
        .wait_story(
            &daemon,
            bianca,
            &expected(&[(MARKETING, &["deferred"])]),
            wait,
        )
        .await;
    assert_eq!(bianca_log[0].send_at, Some(end_ms), "{bianca_log:#?}");
    let withdrawn = json!({"email": "bianca@example.com", "timezone": quiet.bruno_zone,
                           "consent": {"marketing": false}});
    broker
        .produce(&profiles_topic, Some(bianca), &withdrawn.to_string())
        .await;
    wait_for("the new profile read", Duration::from_secs(10), || {
        let (_, m) = http_get(&admin, "/metrics").ok()?;
        (metric(&m, "forewarn_profiles_total", &[("result", "upserted")]) == Some(7.0))
            .then_some(())
    })
    .await;
    let chie_log = cli
        .wait_story(
            &daemon,
            chie,
            &expected(&[(MARKETING, &["unsubscribed"]), (TRANSACTIONAL, fired_sent)]),
            wait,
        )
        .await;
    let dora_log = cli
        .wait_story(&daemon, dora, &expected(&[(MARKETING, fired_sent)]), wait)
        .await;
    let eve_log = cli
        .wait_story(
            &daemon,
            eve,
            &expected(&[
                (MARKETING, fired_sent),
                (MARKETING, fired_sent),
                (MARKETING, &["capped"]),
            ]),
            wait,
        )
        .await;
    let hugo_in_log = cli
        .wait_story(
            &daemon,
            &hugo_in,
            &expected(&[(HOLDOUT_RULE, &["holdout"])]),
            wait,
        )
        .await;
    cli.wait_story(
        &daemon,
        &hugo_out,
        &expected(&[(HOLDOUT_RULE, fired_sent)]),
        wait,
    )
    .await;

    // Each log holds its own customer only.
    for (c, log) in [
        (ana, &ana_log),
        (bruno, &bruno_log),
        (bianca, &bianca_log),
        (chie, &chie_log),
        (dora, &dora_log),
        (eve, &eve_log),
        (hugo_in.as_str(), &hugo_in_log),
    ] {
        assert!(log.iter().all(|r| r.customer == c), "{c}: {log:#?}");
    }
    // Bruno: the marketing send is due at the window's end; the
    // transactional one went out inside the quiet hours.
    let deferred = bruno_log
        .iter()
        .find(|r| r.outcome == "deferred")
        .expect("a deferred record");
    assert_eq!(deferred.rule, MARKETING);
    assert_eq!(
        deferred.send_at,
        Some(end_ms),
        "deferred to the end of the quiet hours in {}: {deferred:#?}",
        quiet.bruno_zone
    );
    assert!(
        deferred
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("quiet hours")),
        "{deferred:#?}"
    );
    for r in bruno_log.iter().filter(|r| r.rule == TRANSACTIONAL) {
        assert!(r.at < end_ms, "transactional is never deferred: {r:#?}");
        assert_eq!(r.send_at, None, "{r:#?}");
    }
    // The suppressions say why.
    let reason = |log: &[DecisionRecord], outcome: &str| -> String {
        log.iter()
            .find(|r| r.outcome == outcome)
            .and_then(|r| r.reason.clone())
            .unwrap_or_else(|| panic!("no {outcome} record with a reason in {log:#?}"))
    };
    assert!(
        reason(&chie_log, "unsubscribed").contains("marketing"),
        "{chie_log:#?}"
    );
    assert!(
        reason(&eve_log, "capped").contains("max_per_customer allows 2"),
        "{eve_log:#?}"
    );
    assert!(
        reason(&hugo_in_log, "holdout").contains("control group"),
        "{hugo_in_log:#?}"
    );
    // Eve's third firing is the capped one.
    let eve_last_fired = eve_log
        .iter()
        .filter(|r| r.outcome == "fired")
        .map(|r| r.at)
        .max();
    let eve_capped = eve_log.iter().find(|r| r.outcome == "capped").map(|r| r.at);
    assert!(eve_capped >= eve_last_fired, "{eve_log:#?}");

    // The same stories as text.
    for (c, words) in [
        (ana, &["fired", "sent", "decided to send now"][..]),
        (
            bruno,
            &["deferred", "quiet hours: will be sent at", "fired", "sent"][..],
        ),
        (chie, &["unsubscribed", "no consent", "fired", "sent"][..]),
        (dora, &["fired", "sent"][..]),
        (eve, &["fired", "sent", "capped", "frequency cap"][..]),
        (hugo_in.as_str(), &["holdout", "holdout group"][..]),
    ] {
        let text = cli.explain_text(c).await;
        assert!(
            text.contains(&format!("decisions for customer {c:?}")),
            "{text}"
        );
        for w in words {
            assert!(text.contains(w), "explain {c:?} lacks {w:?}:\n{text}");
        }
    }

    // The suppressions are counted.
    let (_, m) = http_get(&admin, "/metrics").expect("metrics");
    for (rule, outcome) in [
        (MARKETING, "capped"),
        (MARKETING, "unsubscribed"),
        (HOLDOUT_RULE, "holdout"),
    ] {
        assert_eq!(
            metric(
                &m,
                "forewarn_notifications_total",
                &[("rule", rule), ("outcome", outcome)]
            ),
            Some(1.0),
            "{rule} {outcome}:\n{m}"
        );
    }
    assert_eq!(
        metric(
            &m,
            "forewarn_notifications_deferred_total",
            &[("rule", MARKETING)]
        ),
        Some(2.0),
        "{m}"
    );

    // The admin API: the token or nothing, and one customer's data only.
    let bearer = format!("Bearer {token}");
    let wrong_same_length = format!("Bearer {}", "x".repeat(token.len()));
    let ana_path = "/api/customers/ana/decisions";
    for auth in [
        None,
        Some("Bearer wrong"),
        Some(wrong_same_length.as_str()),
        Some(token.as_str()),
    ] {
        let (status, body) = api_get(&admin, ana_path, auth);
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert!(!body.contains("notification_id"), "{body}");
    }
    let (status, _) = api_get(&admin, &format!("/api/rules/{MARKETING}/decisions"), None);
    assert_eq!(status, 401, "the rule API needs the token too");
    for open in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(api_get(&admin, open, None).0, 200, "{open} stays open");
    }
    let other_ids: Vec<&str> = bruno_log
        .iter()
        .chain(&eve_log)
        .chain(&chie_log)
        .map(|r| r.notification_id.as_str())
        .collect();
    let (status, body) = api_get(&admin, ana_path, Some(&bearer));
    assert_eq!(status, 200, "{body}");
    let got: Vec<DecisionRecord> = serde_json::from_str(&body).expect("decision records");
    assert_eq!(got, ana_log, "the API and explain agree");
    assert!(got.iter().all(|r| r.customer == ana), "{got:#?}");
    for id in &other_ids {
        assert!(!body.contains(id), "ana's answer carries {id}: {body}");
    }
    for other in [bruno, bianca, chie, eve, "dora", "hugo"] {
        assert!(!body.contains(other), "ana's answer names {other}: {body}");
    }
    // An id with `@` and `/`, percent-encoded.
    let (status, body) = api_get(
        &admin,
        "/api/customers/dora%40eu%2F7/decisions",
        Some(&bearer),
    );
    assert_eq!(status, 200, "{body}");
    let got: Vec<DecisionRecord> = serde_json::from_str(&body).expect("decision records");
    assert_eq!(got, dora_log);
    // Near misses are nobody's data: a prefix, a path trick, an unknown id.
    for path in [
        "/api/customers/an/decisions",
        "/api/customers/ana%2F..%2Fbruno/decisions",
        "/api/customers/ana%00/decisions",
        "/api/customers/nobody/decisions",
    ] {
        let (status, body) = api_get(&admin, path, Some(&bearer));
        assert_eq!((status, body.trim()), (200, "[]"), "{path}");
    }
    let (status, body) = api_get(&admin, "/api/customers/dora@eu/7/decisions", Some(&bearer));
    assert_ne!(status, 200, "an unencoded `/` is another path: {body}");

    // The window ends: bruno's marketing mail, not a moment before, and
    // none for bianca.
    if now_ms() < end_ms - 1000 {
        assert_eq!(
            smtp.messages().len(),
            7,
            "nothing more before the window's end"
        );
    }
    let until_end = Duration::from_millis((end_ms - now_ms()).max(0) as u64);
    let mails = wait_mails(&smtp, &daemon, 8, until_end + Duration::from_secs(20)).await;
    let all = sorted(mails.iter().map(summary).collect());
    let mut want = immediate.clone();
    want.push(marketing_mail("bruno@example.com", bruno, MARKETING));
    assert_eq!(all, sorted(want), "the final mails");
    let bruno_file = smtp
        .files()
        .into_iter()
        .find(|p| summary(&parse_mail(p)) == marketing_mail("bruno@example.com", bruno, MARKETING))
        .expect("bruno's marketing mail");
    let received = std::fs::metadata(&bruno_file)
        .and_then(|m| m.modified())
        .expect("the mail file's time");
    let end_system = SystemTime::UNIX_EPOCH + Duration::from_millis(end_ms as u64);
    assert!(
        received >= end_system,
        "bruno's marketing mail arrived at {received:?}, before the quiet hours ended at {}",
        quiet.end_at
    );
    let bruno_log = cli
        .wait_story(
            &daemon,
            bruno,
            &expected(&[
                (MARKETING, &["deferred", "sent"]),
                (TRANSACTIONAL, fired_sent),
            ]),
            wait,
        )
        .await;
    let sent = bruno_log
        .iter()
        .find(|r| r.rule == MARKETING && r.outcome == "sent")
        .expect("the deferred mail's sent record");
    assert!(sent.at >= end_ms, "sent before send_at: {bruno_log:#?}");
    // Bianca's was withdrawn at send time: no mail (still eight), and
    // her log says why.
    let bianca_log = cli
        .wait_story(
            &daemon,
            bianca,
            &expected(&[(MARKETING, &["deferred", "unsubscribed"])]),
            wait,
        )
        .await;
    assert!(
        reason(&bianca_log, "unsubscribed").contains("withdrew consent"),
        "{bianca_log:#?}"
    );
    wait_for("the withdrawn mail counted", wait, || {
        let (_, m) = http_get(&admin, "/metrics").ok()?;
        let n = metric(
            &m,
            "forewarn_notifications_total",
            &[("rule", MARKETING), ("outcome", "unsubscribed")],
        );
        (n == Some(2.0)).then_some(())
    })
    .await;
    // As text: deferred first, then sent; bianca's withdrawal with its reason.
    let text = cli.explain_text(bruno).await;
    let deferred_at = text.find("quiet hours: will be sent at");
    let sent_at = text.rfind("accepted by the channel");
    assert!(
        deferred_at.is_some() && sent_at.is_some() && deferred_at < sent_at,
        "{text}"
    );
    let text = cli.explain_text(bianca).await;
    for w in ["deferred", "unsubscribed", "withdrew consent"] {
        assert!(text.contains(w), "explain bianca lacks {w:?}:\n{text}");
    }

    // Does the holdout rule help? `forewarn report` against the running
    // daemon (decisions through its admin API) and the broker (events from
    // the topic): hugo-in (holdout) orders, hugo-out (notified) does not.
    broker
        .produce_all(
            &events_topic,
            &[event("order_placed", "order-hugo-in", &hugo_in, json!({}))],
        )
        .await;
    let (ok, out, err) = cli
        .run(&[
            "report",
            "--rule",
            HOLDOUT_RULE,
            "--outcome-event",
            "order_placed",
            "--within",
            "1h",
            "--json",
        ])
        .await;
    assert!(ok, "forewarn report failed: {err}");
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["notified"]["customers"], 1, "{report:#}");
    assert_eq!(report["notified"]["converted"], 0, "{report:#}");
    assert_eq!(report["holdout"]["customers"], 1, "{report:#}");
    assert_eq!(report["holdout"]["converted"], 1, "{report:#}");
    assert_eq!(report["events"]["outcome_events"], 1, "{report:#}");
    assert!(
        report["decisions_from"]
            .as_str()
            .unwrap_or("")
            .contains("running daemon"),
        "{report:#}"
    );
    assert!(
        report["warnings"].as_array().is_some_and(|w| !w.is_empty()),
        "one customer per group must be called too few: {report:#}"
    );

    // GDPR erasure through the running daemon.
    let (ok, out, err) = cli.run(&["forget", "--customer", chie]).await;
    assert!(
        ok,
        "forewarn forget failed: {err}\n{}",
        daemon.logs_tail(40)
    );
    assert!(out.contains("erased customer \"chie\""), "{out}");
    assert!(out.contains("running daemon"), "through the daemon: {out}");
    assert!(cli.decisions(chie).await.is_empty(), "chie is forgotten");
    let text = cli.explain_text(chie).await;
    assert!(text.contains("no decisions recorded"), "{text}");
    // Nobody else was.
    assert_eq!(cli.decisions(ana).await, ana_log);
    assert_eq!(cli.decisions(eve).await, eve_log);

    // Still exactly the eight mails.
    assert_eq!(smtp.messages().len(), 8, "{}", daemon.logs_tail(40));
    eprintln!("policy end to end: {:?}", test_start.elapsed());
}
