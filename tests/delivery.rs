//! The delivery stage against real servers, at the library level: a
//! [`Dispatcher`] over a real outbox (redb in a temp dir) sends to aiosmtpd
//! (plain, STARTTLS with a certificate made per run, AUTH, refusals, a hung
//! server), to an HTTP receiver (axum) with scripted answers, and to a
//! Kafka-compatible broker (Tansu). Each test asserts what the server
//! received, what the outbox kept, and what the metrics counted.

mod harness;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use forewarn::config::{ChannelConfig, Config};
use forewarn::engine::Firing;
use forewarn::event::{Event, FieldPath};
use forewarn::metrics::Metrics;
use forewarn::notify::dispatcher::{Dispatcher, Settled};
use forewarn::notify::outbox::{Enqueued, Outbox};
use forewarn::notify::template::{RenderError, Rendered, Templates};
use forewarn::notify::{compose, ComposeError, EpisodeInfo, Notification};
use forewarn::rules::load::{load_rules, LoadOptions};
use forewarn::rules::Class;
use forewarn::state::Store;

use harness::tls::TestCert;
use harness::webhook::{Reply, WebhookReceiver};
use harness::*;

const RECIPIENT: &str = "ana@example.com";
const SUBJECT: &str = "Your order A-7781 is running late";

/// Runs a test on a two-thread runtime, like `#[tokio::test(flavor =
/// "multi_thread", worker_threads = 2)]`, but on a thread of its own that
/// the test waits for at most 60 s: a deadlock in the code under test (one
/// that blocks runtime threads, so no tokio timer fires any more) fails the
/// test instead of hanging the whole run. The stuck runtime is left behind.
fn run(test: impl Future<Output = ()> + Send + 'static) {
    let name = std::thread::current()
        .name()
        .unwrap_or("delivery test")
        .to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(test)));
            rt.shutdown_timeout(Duration::from_secs(5));
            let _ = tx.send(result);
        })
        .expect("spawn the test thread");
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => {
            panic!("{name} did not finish within 60 s: the code under test is probably deadlocked")
        }
    }
}

/// The `[channels.*]` tables in `toml`, validated by the daemon's own config loader.
fn channels(dir: &Path, toml: &str) -> BTreeMap<String, ChannelConfig> {
    let path = write_config(dir, "127.0.0.1:9", &["events"], None, 0, toml);
    match Config::load_with_env(&path, vec![]) {
        Ok(c) => c.channels,
        Err(e) => panic!("the test channel config is invalid: {e}\n{toml}"),
    }
}

/// A dispatcher over the outbox in `dir/state`, with its own metrics.
struct Rig {
    dispatcher: Dispatcher,
    settled: UnboundedReceiver<Settled>,
    workers: JoinSet<()>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Rig {
    fn start(dir: &Path, toml: &str) -> Rig {
        let channels = channels(dir, toml);
        let store = Store::open(&dir.join("state")).expect("open the state store");
        let outbox = Outbox::open(store).expect("open the outbox");
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let (dispatcher, settled, workers) =
            Dispatcher::start(&channels, outbox, Arc::clone(&metrics), shutdown.clone())
                .expect("the dispatcher starts");
        Rig {
            dispatcher,
            settled,
            workers,
            shutdown,
            metrics,
        }
    }

    fn enqueue(&self, n: Notification) -> Enqueued {
        let out = self.dispatcher.enqueue(vec![n]).expect("enqueue");
        assert_eq!(out.len(), 1);
        out[0].1
    }

    /// The next final outcome reported by the dispatcher.
    async fn next_settled(&mut self, timeout: Duration) -> Settled {
        tokio::time::timeout(timeout, self.settled.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no notification settled within {timeout:?}; metrics:\n{}",
                    self.metrics.render()
                )
            })
            .expect("the dispatcher is running")
    }

    /// `forewarn_delivery_attempts_total{channel, result}` (0 when absent).
    fn attempts(&self, channel: &str, result: &str) -> f64 {
        metric(
            &self.metrics.render(),
            "forewarn_delivery_attempts_total",
            &[("channel", channel), ("result", result)],
        )
        .unwrap_or(0.0)
    }

    fn notifications(&self, channel: &str, outcome: &str) -> f64 {
        metric(
            &self.metrics.render(),
            "forewarn_notifications_total",
            &[("channel", channel), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    }

    /// Shuts down the way the daemon does: cancel, then let the workers finish.
    async fn stop(mut self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.workers.join_next().await.is_some() {}
        })
        .await
        .expect("the workers stop within 10 s");
    }
}

/// A notification as `compose` would make it, for channel `channel`.
fn notification(id: &str, channel: &str) -> Notification {
    Notification {
        id: id.to_string(),
        rule_id: "carrier-delay".into(),
        channel: channel.to_string(),
        class: Class::Transactional,
        customer: "c-1".into(),
        recipient: Some(RECIPIENT.into()),
        message: Rendered {
            subject: SUBJECT.into(),
            text: "Hi Ana,\n\nDHL told us your parcel is delayed.\n".into(),
            html: Some(
                "<p>Hi Ana,</p><p><strong>DHL</strong> told us your parcel is delayed.</p>".into(),
            ),
        },
        episode: EpisodeInfo {
            key: vec!["c-1".into(), "A-7781".into()],
            start: 1_795_518_900_000,
            deadline: None,
            partition: 0,
        },
        event: json!({"type": "carrier_delay_reported", "customer_id": "c-1", "order_id": "A-7781"}),
        entry: None,
        unsubscribe_url: None,
        not_before: None,
    }
}

fn smtp(name: &str, port: u16, extra: &str) -> String {
    format!(
        "[channels.{name}]\ntype = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\nfrom = \"Acme Care <care@acme.example>\"\ntimeout = \"5s\"\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\n{extra}\n"
    )
}

/// The envelope files (`*.json`) the SMTP sink wrote beside each message.
fn envelopes(sink: &SmtpSink) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&sink.dir)
        .expect("mail dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

fn write_secret(dir: &Path, name: &str, value: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).expect("write a secret file");
    path
}

/// Sends nothing more: waits `quiet` and checks the count did not move.
async fn stays(what: &str, quiet: Duration, count: impl Fn() -> usize, expected: usize) {
    tokio::time::sleep(quiet).await;
    assert_eq!(count(), expected, "{what}");
}

// ---------------------------------------------------------------- SMTP

#[test]
fn smtp_plain_delivery_is_one_multipart_message() {
    run(async {
        let sink = SmtpSink::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut rig = Rig::start(dir.path(), &smtp("email", sink.port, "tls = \"none\""));
        let id = "0a1b2c3d4e5f6071";
        assert_eq!(rig.enqueue(notification(id, "email")), Enqueued::Queued);

        let s = rig.next_settled(Duration::from_secs(10)).await;
        assert_eq!((s.id.as_str(), s.outcome), (id, "sent"));
        let mails = sink.wait_for_count(1, Duration::from_secs(5)).await;
        assert_eq!(mails.len(), 1);
        let m = &mails[0];
        assert_eq!(m.rcpt_to, vec![RECIPIENT.to_string()]);
        assert!(m.to.contains(RECIPIENT), "To: {}", m.to);
        assert!(m.from.contains("care@acme.example"), "From: {}", m.from);
        assert_eq!(m.subject, SUBJECT);
        assert_eq!(m.message_id, format!("<{id}@forewarn>"));
        assert!(
            m.raw.to_ascii_lowercase().contains("multipart/alternative"),
            "{}",
            m.raw
        );
        assert!(
            m.text.contains("DHL told us your parcel is delayed."),
            "{}",
            m.text
        );
        let html = m.html.as_deref().expect("an HTML part");
        assert!(html.contains("<strong>DHL</strong>"), "{html}");
        assert_eq!(envelopes(&sink)[0]["tls"], false);

        assert_eq!(rig.attempts("email", "ok"), 1.0);
        assert_eq!(rig.notifications("email", "sent"), 1.0);
        assert_eq!(rig.dispatcher.pending(), 0);
        assert!(rig.dispatcher.outbox().dead_letters().unwrap().is_empty());
        let duration = metric(
            &rig.metrics.render(),
            "forewarn_delivery_duration_seconds_count",
            &[("rule", "carrier-delay"), ("channel", "email")],
        );
        assert_eq!(duration, Some(1.0));
        rig.stop().await;
    });
}

#[test]
fn smtp_starttls_with_a_trusted_self_signed_certificate() {
    run(async {
        let cert = TestCert::generate();
        let sink = cert.start_sink(&["--require-starttls"]).await;
        let dir = tempfile::tempdir().unwrap();
        let tls = format!(
            "tls = \"starttls\"\nca_file = {:?}",
            cert.cert.display().to_string()
        );
        let mut rig = Rig::start(dir.path(), &smtp("email", sink.port, &tls));
        let id = "1a1b2c3d4e5f6071";
        rig.enqueue(notification(id, "email"));

        let s = rig.next_settled(Duration::from_secs(10)).await;
        assert_eq!(
            s.outcome,
            "sent",
            "dead letters: {:?}",
            rig.dispatcher.outbox().dead_letters().unwrap()
        );
        let mails = sink.wait_for_count(1, Duration::from_secs(5)).await;
        assert_eq!(mails[0].message_id, format!("<{id}@forewarn>"));
        assert_eq!(envelopes(&sink)[0]["tls"], true, "delivered over TLS");
        rig.stop().await;
    });
}

#[test]
fn smtp_starttls_with_an_untrusted_certificate_sends_nothing_and_dead_letters() {
    run(async {
        let cert = TestCert::generate();
        let sink = cert.start_sink(&[]).await;
        let dir = tempfile::tempdir().unwrap();
        // No ca_file: the self-signed certificate is not trusted.
        // max_attempts = 1, so that a misclassified (transient) failure
        // dead-letters at once too; the reason and the `permanent` attempt
        // below tell the two apart.
        let mut rig = Rig::start(
            dir.path(),
            &smtp("email", sink.port, "tls = \"starttls\"\nmax_attempts = 1"),
        );
        let id = "2a1b2c3d4e5f6071";
        rig.enqueue(notification(id, "email"));

        let s = rig.next_settled(Duration::from_secs(10)).await;
        assert_eq!(s.outcome, "dead_letter");
        let dead = rig.dispatcher.outbox().dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].notification.id, id);
        assert_eq!(dead[0].attempts, 1);
        assert!(
            dead[0].reason.starts_with("permanent failure") && dead[0].reason.contains("TLS"),
            "{}",
            dead[0].reason
        );
        assert_eq!(rig.attempts("email", "permanent"), 1.0);
        assert!(sink.messages().is_empty(), "nothing delivered");
        rig.stop().await;
    });
}

/// A STARTTLS sink that wants user "forewarn" with password "s3cret-pw",
/// and a rig whose channel logs in with `password` (from a file). The
/// certificate and the temp dir must outlive the test.
async fn auth_rig(password: &str) -> (SmtpSink, Rig, (TestCert, tempfile::TempDir)) {
    let cert = TestCert::generate();
    let sink = cert
        .start_sink(&["--auth-user", "forewarn", "--auth-password", "s3cret-pw"])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let pw = write_secret(dir.path(), "smtp-password", password);
    let cfg = format!(
        "tls = \"starttls\"\nca_file = {:?}\nusername = \"forewarn\"\npassword_file = {:?}",
        cert.cert.display().to_string(),
        pw.display().to_string()
    );
    let rig = Rig::start(dir.path(), &smtp("email", sink.port, &cfg));
    (sink, rig, (cert, dir))
}

#[test]
fn smtp_auth_with_the_right_password_delivers() {
    run(async {
        let (sink, mut rig, _keep) = auth_rig("s3cret-pw").await;
        rig.enqueue(notification("3a1b2c3d4e5f6071", "email"));

        let s = rig.next_settled(Duration::from_secs(10)).await;
        assert_eq!(
            s.outcome,
            "sent",
            "dead letters: {:?}",
            rig.dispatcher.outbox().dead_letters().unwrap()
        );
        sink.wait_for_count(1, Duration::from_secs(5)).await;
        let env = &envelopes(&sink)[0];
        assert_eq!(env["auth_user"], "forewarn", "{env}");
        assert_eq!(env["tls"], true, "{env}");
        rig.stop().await;
    });
}

#[test]
fn smtp_auth_with_a_wrong_password_dead_letters() {
    run(async {
        let (sink, mut rig, _keep) = auth_rig("not-the-password").await;
        let id = "4a1b2c3d4e5f6071";
        rig.enqueue(notification(id, "email"));

        let s = rig.next_settled(Duration::from_secs(10)).await;
        assert_eq!(s.outcome, "dead_letter");
        let dead = rig.dispatcher.outbox().dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].notification.id, id);
        assert_eq!(dead[0].attempts, 1, "535 is permanent: {}", dead[0].reason);
        assert!(dead[0].reason.contains("535"), "{}", dead[0].reason);
        assert!(
            !dead[0].reason.contains("not-the-password"),
            "{}",
            dead[0].reason
        );
        assert!(sink.messages().is_empty(), "nothing delivered");
        rig.stop().await;
    });
}

#[test]
fn smtp_starttls_required_but_not_offered_fails_closed() {
    run(async {
        let sink = SmtpSink::start().await; // no certificate: no STARTTLS in EHLO
        let dir = tempfile::tempdir().unwrap();
        let mut rig = Rig::start(dir.path(), &smtp("email", sink.port, "tls = \"starttls\""));
        let id = "5a1b2c3d4e5f6071";
        rig.enqueue(notification(id, "email"));

        let s = rig.next_settled(Duration::from_secs(10)).await;
        assert_eq!(s.outcome, "dead_letter");
        let dead = rig.dispatcher.outbox().dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].attempts, 1);
        assert!(dead[0].reason.contains("STARTTLS"), "{}", dead[0].reason);
        assert_eq!(rig.attempts("email", "permanent"), 1.0);
        assert!(sink.messages().is_empty(), "nothing sent in clear text");
        rig.stop().await;
    });
}

#[test]
fn smtp_temporary_refusals_are_retried_until_accepted() {
    run(async {
        let sink = SmtpSink::start_with(&["--fail-first", "2"]).await; // 451 twice
        let dir = tempfile::tempdir().unwrap();
        let mut rig = Rig::start(dir.path(), &smtp("email", sink.port, "tls = \"none\""));
        let id = "6a1b2c3d4e5f6071";
        rig.enqueue(notification(id, "email"));

        let s = rig.next_settled(Duration::from_secs(10)).await;
        assert_eq!((s.id.as_str(), s.outcome), (id, "sent"));
        let mails = sink.wait_for_count(1, Duration::from_secs(5)).await;
        assert_eq!(mails[0].message_id, format!("<{id}@forewarn>"));
        assert_eq!(rig.attempts("email", "transient"), 2.0);
        assert_eq!(rig.attempts("email", "ok"), 1.0);
        assert_eq!(rig.attempts("email", "permanent"), 0.0);
        stays(
            "exactly one message",
            Duration::from_millis(500),
            || sink.messages().len(),
            1,
        )
        .await;
        rig.stop().await;
    });
}

#[test]
fn smtp_hanging_server_times_out_retries_and_dead_letters() {
    run(async {
        let sink = SmtpSink::start_with(&["--hang"]).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            "[channels.email]\ntype = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\ntimeout = \"1s\"\nmax_attempts = 2\nretry_initial = \"50ms\"\nretry_max = \"100ms\"\n",
            sink.port
        );
        let mut rig = Rig::start(dir.path(), &cfg);
        let id = "7a1b2c3d4e5f6071";
        let t0 = Instant::now();
        rig.enqueue(notification(id, "email"));

        let s = rig.next_settled(Duration::from_secs(15)).await;
        let elapsed = t0.elapsed();
        assert_eq!(s.outcome, "dead_letter");
        assert!(
            elapsed >= Duration::from_millis(1900),
            "two 1 s timeouts take about 2 s, not {elapsed:?}"
        );
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
        assert_eq!(rig.attempts("email", "transient"), 2.0);
        let dead = rig.dispatcher.outbox().dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].attempts, 2);
        assert!(
            dead[0].reason.contains("gave up after 2 attempts"),
            "{}",
            dead[0].reason
        );
        rig.stop().await;
    });
}

// ---------------------------------------------------------------- webhook

/// 32 fixed key bytes, as `whsec_<base64>`.
fn webhook_secret() -> (Vec<u8>, String) {
    let key: Vec<u8> = (0u8..32)
        .map(|b| b.wrapping_mul(37).wrapping_add(11))
        .collect();
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(&key)
    );
    (key, secret)
}

fn webhook(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[channels.{name}]\ntype = \"webhook\"\nurl = {url:?}\ntimeout = \"5s\"\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\n{extra}\n"
    )
}

/// Checks the Standard Webhooks signature of `r` with an HMAC computed
/// here, independently of forewarn's own signing code.
fn assert_signed(r: &webhook::Request, key: &[u8]) {
    let id = r.header("webhook-id").expect("webhook-id");
    let ts = r.header("webhook-timestamp").expect("webhook-timestamp");
    let sigs = r.header("webhook-signature").expect("webhook-signature");
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&r.body);
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert!(
        sigs.split(' ').any(|s| s == format!("v1,{want}")),
        "signature {sigs:?} does not verify (expected v1,{want})"
    );
    let ts: u64 = ts.parse().expect("webhook-timestamp is unix seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(ts.abs_diff(now) < 60, "timestamp {ts} vs now {now}");
}

#[test]
fn webhook_5xx_is_retried_with_the_same_signed_id() {
    run(async {
        let receiver = WebhookReceiver::start(vec![Reply::status(500), Reply::status(500)]).await;
        let dir = tempfile::tempdir().unwrap();
        let (key, secret) = webhook_secret();
        let secret_file = write_secret(dir.path(), "webhook-secret", &secret);
        let cfg = format!("secret_file = {:?}", secret_file.display().to_string());
        let mut rig = Rig::start(dir.path(), &webhook("hook", &receiver.url, &cfg));
        let id = "8a1b2c3d4e5f6071";
        rig.enqueue(notification(id, "hook"));

        let s = rig.next_settled(Duration::from_secs(10)).await;
        assert_eq!((s.id.as_str(), s.outcome), (id, "sent"));
        let reqs = receiver.requests();
        assert_eq!(
            reqs.iter().map(|r| r.answered).collect::<Vec<_>>(),
            vec![500, 500, 200]
        );
        for r in &reqs {
            assert_eq!(r.header("webhook-id"), Some(id), "same id on every attempt");
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_signed(r, &key);
            let body = r.json();
            assert_eq!(body["type"], "forewarn.notification");
            assert_eq!(body["data"]["id"], id);
            assert_eq!(body["data"]["subject"], SUBJECT);
            assert_eq!(body["data"]["customer"]["email"], RECIPIENT);
        }
        // The body is the same on every attempt (the timestamp is the episode's).
        assert!(reqs.iter().all(|r| r.body == reqs[0].body));
        let accepted: Vec<&str> = reqs
            .iter()
            .filter(|r| r.answered == 200)
            .filter_map(|r| r.header("webhook-id"))
            .collect();
        assert_eq!(accepted, vec![id], "exactly one accepted delivery");
        assert_eq!(rig.attempts("hook", "transient"), 2.0);
        assert_eq!(rig.attempts("hook", "ok"), 1.0);
        stays(
            "no request after the 200",
            Duration::from_millis(400),
            || receiver.requests().len(),
            3,
        )
        .await;
        rig.stop().await;
    });
}

#[test]
fn webhook_4xx_is_permanent_and_a_redrive_delivers() {
    run(async {
        let receiver = WebhookReceiver::start(vec![Reply::status(400)]).await;
        let dir = tempfile::tempdir().unwrap();
        let mut rig = Rig::start(dir.path(), &webhook("hook", &receiver.url, ""));
        let id = "9a1b2c3d4e5f6071";
        rig.enqueue(notification(id, "hook"));

        let s = rig.next_settled(Duration::from_secs(10)).await;
        assert_eq!(s.outcome, "dead_letter");
        stays(
            "a 400 is not retried",
            Duration::from_millis(400),
            || receiver.requests().len(),
            1,
        )
        .await;
        let dead = rig.dispatcher.outbox().dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].notification.id, id);
        assert_eq!(dead[0].attempts, 1);
        assert!(dead[0].reason.contains("400"), "{}", dead[0].reason);
        assert_eq!(rig.attempts("hook", "permanent"), 1.0);
        assert_eq!(
            metric(&rig.metrics.render(), "forewarn_dead_letters", &[]),
            Some(1.0)
        );

        // The receiver is fixed (it answers 200 now): re-drive.
        let moved = rig.dispatcher.redrive(&[id.to_string()]).unwrap();
        assert_eq!(moved, vec![id.to_string()]);
        let s = rig.next_settled(Duration::from_secs(10)).await;
        assert_eq!((s.id.as_str(), s.outcome), (id, "sent"));
        let reqs = receiver.requests();
        assert_eq!(
            reqs.iter().map(|r| r.answered).collect::<Vec<_>>(),
            vec![400, 200]
        );
        assert_eq!(reqs[1].header("webhook-id"), Some(id));
        assert!(
            reqs[1].header("webhook-signature").is_none(),
            "no secret, no signature"
        );
        assert!(rig.dispatcher.outbox().dead_letters().unwrap().is_empty());
        assert_eq!(
            metric(&rig.metrics.render(), "forewarn_dead_letters", &[]),
            Some(0.0)
        );
        rig.stop().await;
    });
}

#[test]
fn webhook_retry_after_overrides_the_backoff() {
    run(async {
        let receiver = WebhookReceiver::start(vec![Reply::retry_after(429, "2")]).await;
        let dir = tempfile::tempdir().unwrap();
        let mut rig = Rig::start(dir.path(), &webhook("hook", &receiver.url, ""));
        let id = "aa1b2c3d4e5f6071";
        rig.enqueue(notification(id, "hook"));

        let s = rig.next_settled(Duration::from_secs(10)).await;
        assert_eq!(s.outcome, "sent");
        let reqs = receiver.requests();
        assert_eq!(
            reqs.iter().map(|r| r.answered).collect::<Vec<_>>(),
            vec![429, 200]
        );
        let gap = reqs[1].at - reqs[0].at;
        assert!(
            gap >= Duration::from_millis(1950),
            "Retry-After: 2 was honoured over retry_initial = 50ms: the retry came after {gap:?}"
        );
        assert!(gap < Duration::from_secs(4), "{gap:?}");
        rig.stop().await;
    });
}

#[test]
fn retries_stop_at_max_age_and_the_notification_is_dead_lettered() {
    run(async {
        // Always 503: only max_age (not max_attempts = 100) can end it.
        let receiver = WebhookReceiver::start(vec![Reply::status(503); 100]).await;
        let dir = tempfile::tempdir().unwrap();
        let mut rig = Rig::start(
            dir.path(),
            &webhook(
                "hook",
                &receiver.url,
                "max_attempts = 100\nmax_age = \"1500ms\"",
            ),
        );
        let started = Instant::now();
        rig.enqueue(notification("ca1b2c3d4e5f6071", "hook"));
        let s = rig.next_settled(Duration::from_secs(10)).await;
        assert_eq!(s.outcome, "dead_letter");
        // Timed at the attempts themselves, not at the settlement after
        // them: on a loaded machine (the whole suite on two cores) the
        // dead letter may be recorded a while after the last attempt.
        let reqs = receiver.requests();
        let last = reqs.last().expect("attempted").at - started;
        assert!(
            last <= Duration::from_millis(1500) + Duration::from_millis(500),
            "no attempt is made past max_age: the last came {last:?} after enqueueing"
        );
        let dead = rig.dispatcher.outbox().dead_letters().unwrap();
        assert!(dead[0].reason.contains("max_age"), "{}", dead[0].reason);
        let n = reqs.len();
        assert!(n >= 2, "retried first: {n}");
        rig.stop().await;
    });
}

#[test]
fn a_rate_limited_channel_spaces_its_sends() {
    run(async {
        let receiver = WebhookReceiver::start(vec![]).await;
        let dir = tempfile::tempdir().unwrap();
        let mut rig = Rig::start(
            dir.path(),
            &webhook(
                "hook",
                &receiver.url,
                "rate_limit = \"4/s\"\nconcurrency = 8",
            ),
        );
        for i in 0..8 {
            rig.enqueue(notification(&format!("da1b2c3d4e5f60{i:02}"), "hook"));
        }
        for _ in 0..8 {
            assert_eq!(
                rig.next_settled(Duration::from_secs(10)).await.outcome,
                "sent"
            );
        }
        let reqs = receiver.requests();
        assert_eq!(reqs.len(), 8);
        // A burst of 4, then one every 250 ms: the 8th comes ~1 s after the first.
        let span = reqs[7].at - reqs[0].at;
        assert!(
            span >= Duration::from_millis(900),
            "8 sends at 4/s took {span:?}"
        );
        assert!(span < Duration::from_secs(3), "{span:?}");
        rig.stop().await;
    });
}

#[test]
fn webhook_slack_format_posts_a_text_message() {
    run(async {
        let receiver = WebhookReceiver::start(vec![]).await;
        let dir = tempfile::tempdir().unwrap();
        let mut rig = Rig::start(
            dir.path(),
            &webhook("cx", &receiver.url, "format = \"slack\""),
        );
        let id = "ba1b2c3d4e5f6071";
        rig.enqueue(notification(id, "cx"));

        let s = rig.next_settled(Duration::from_secs(10)).await;
        assert_eq!(s.outcome, "sent");
        let reqs = receiver.requests();
        assert_eq!(reqs.len(), 1);
        let body = reqs[0].json();
        let obj = body.as_object().expect("a JSON object");
        assert_eq!(obj.keys().collect::<Vec<_>>(), vec!["text"], "{body}");
        let text = body["text"].as_str().unwrap();
        assert!(text.contains(SUBJECT), "{text}");
        assert!(text.contains(id), "{text}");
        rig.stop().await;
    });
}

// ---------------------------------------------------------------- kafka

/// Every record in `topic` from the beginning: (key, value).
async fn read_keyed(brokers: &str, topic: &str, expected: usize) -> Vec<(String, String)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message};
    let brokers = brokers.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("delivery-reader-{}", free_port()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        c.subscribe(&[&topic]).expect("subscribe");
        let start = Instant::now();
        let mut out = Vec::new();
        while out.len() < expected && start.elapsed() < Duration::from_secs(20) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                out.push((
                    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                ));
            }
        }
        out
    })
    .await
    .expect("reader task")
}

#[test]
fn kafka_channel_record_is_keyed_by_the_notification_id() {
    run(async {
        let broker = Broker::start().await;
        let topic = format!("notifications-{}", free_port());
        broker.create_topic(&topic, 1).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            "[channels.bus]\ntype = \"kafka\"\ntopic = {topic:?}\nbrokers = {:?}\ntimeout = \"10s\"\nretry_initial = \"100ms\"\nretry_max = \"500ms\"\n",
            broker.brokers
        );
        let mut rig = Rig::start(dir.path(), &cfg);
        let id = "ca1b2c3d4e5f6071";
        rig.enqueue(notification(id, "bus"));

        let s = rig.next_settled(Duration::from_secs(20)).await;
        assert_eq!(
            s.outcome,
            "sent",
            "dead letters: {:?}",
            rig.dispatcher.outbox().dead_letters().unwrap()
        );
        let records = read_keyed(&broker.brokers, &topic, 1).await;
        assert_eq!(records.len(), 1, "{records:?}");
        let (key, value) = &records[0];
        assert_eq!(key, id);
        let value: Value = serde_json::from_str(value).expect("a JSON value");
        assert_eq!(value["data"]["id"], id);
        assert_eq!(value["data"]["rule"], "carrier-delay");
        assert_eq!(value, notification(id, "bus").to_json());
        // Headers, through the harness reader.
        let with_headers = broker.read_all(&topic, 1, Duration::from_secs(10)).await;
        let headers = &with_headers[0].1;
        assert!(
            headers.contains(&("forewarn.rule".into(), "carrier-delay".into())),
            "{headers:?}"
        );
        rig.stop().await;
    });
}

// ---------------------------------------------------------------- hostile fields

const HOSTILE_RULE: &str = r#"
[[rule]]
id          = "order-note"
description = "Echoes customer-controlled fields into every part"
kind        = "match"
class       = "transactional"
trigger     = { event = "order_note" }
notify      = { channel = "email", template = "order_note" }
"#;

/// A rules folder with one rule whose template puts customer-controlled
/// fields in the subject, the text and the HTML.
fn hostile_rules(dir: &Path) -> forewarn::rules::load::Loaded {
    let rules = dir.join("rules");
    let templates = rules.join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(rules.join("order-note.toml"), HOSTILE_RULE).unwrap();
    for (name, body) in [
        ("order_note.subject", "Hello {{ customer.name }}\n"),
        (
            "order_note.txt",
            "Dear {{ customer.name }},\nyour note: {{ event.note }}\n",
        ),
        (
            "order_note.html",
            "<p>Dear {{ customer.name }},</p><p>your note: {{ event.note }}</p>\n",
        ),
    ] {
        std::fs::write(templates.join(name), body).unwrap();
    }
    load_rules(&rules, &LoadOptions::default())
        .unwrap_or_else(|d| panic!("the test rules do not load: {d:?}"))
}

fn firing(loaded: &forewarn::rules::load::Loaded, id: &str, name: &str, note: &str) -> Firing {
    let payload = json!({
        "type": "order_note",
        "customer_id": "c-9",
        "ts": 1_795_518_900_000i64,
        "customer": {"email": RECIPIENT, "name": name},
        "note": note,
    });
    Firing {
        rule: Arc::clone(&loaded.rules.rules[0]),
        event: Arc::new(Event::new(
            "order_note",
            "c-9",
            1_795_518_900_000,
            None,
            payload,
        )),
        entry: None,
        key: vec!["c-9".into()],
        episode_start: 1_795_518_900_000,
        deadline: None,
        fired_at: 1_795_518_900_000,
        partition: 0,
        notification_id: id.into(),
    }
}

#[test]
fn hostile_fields_are_escaped_not_evaluated_and_line_breaks_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = hostile_rules(dir.path());
    let email = FieldPath::parse("customer.email").unwrap();

    // Straight through the templates.
    let mut diags = Vec::new();
    let templates = Templates::load(&dir.path().join("rules/templates"), &mut diags);
    assert!(diags.is_empty(), "{diags:?}");
    let ctx = |name: &str, note: &str| json!({"customer": {"name": name}, "event": {"note": note}});
    let r = templates
        .render("order_note", &ctx("<script>alert(1)</script>", "{{ 7*7 }}"))
        .unwrap();
    let html = r.html.unwrap();
    assert!(html.contains("&lt;script&gt;alert(1)&lt;"), "{html}");
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("{{ 7*7 }}") && !html.contains("49"), "{html}");
    assert!(r.text.contains("your note: {{ 7*7 }}"), "{}", r.text);
    let err = templates
        .render("order_note", &ctx("Ada\r\nBcc: x@evil.example", "hi"))
        .unwrap_err();
    assert!(matches!(err, RenderError::HeaderInjection(_)), "{err:?}");
    let err = templates
        .render("order_note", &ctx("Ada\nBcc: x@evil.example", "hi"))
        .unwrap_err();
    assert!(matches!(err, RenderError::HeaderInjection(_)), "{err:?}");

    // Through compose, as the pipeline does it.
    let n = compose(
        &firing(&loaded, "da01", "{{ 7*7 }}", "ok"),
        &loaded.templates,
        &forewarn::notify::Recipient::from_event(&email),
        true,
    )
    .unwrap();
    assert_eq!(n.message.subject, "Hello {{ 7*7 }}");
    assert!(!n.message.text.contains("49"), "{}", n.message.text);
    let err = compose(
        &firing(&loaded, "da02", "Ada\r\nBcc: x@evil.example", "ok"),
        &loaded.templates,
        &forewarn::notify::Recipient::from_event(&email),
        true,
    )
    .unwrap_err();
    assert!(
        matches!(err, ComposeError::Render(RenderError::HeaderInjection(_))),
        "{err:?}"
    );
    assert_eq!(err.outcome(), "render_failed");
}

#[test]
fn hostile_fields_end_to_end_to_a_real_smtp_server() {
    run(async {
        let sink = SmtpSink::start().await;
        let dir = tempfile::tempdir().unwrap();
        let loaded = hostile_rules(dir.path());
        let email = FieldPath::parse("customer.email").unwrap();
        let mut rig = Rig::start(dir.path(), &smtp("email", sink.port, "tls = \"none\""));

        let composed: Vec<Result<Notification, ComposeError>> = [
            ("ea01", "<script>alert(1)</script>", "{{ 7*7 }}"),
            ("ea02", "{{ 7*7 }}", "{% raw %}x"),
            ("ea03", "Ada\r\nBcc: x@evil.example", "hi"),
        ]
        .iter()
        .map(|(id, name, note)| {
            compose(
                &firing(&loaded, id, name, note),
                &loaded.templates,
                &forewarn::notify::Recipient::from_event(&email),
                true,
            )
        })
        .collect();
        assert!(
            matches!(
                composed[2],
                Err(ComposeError::Render(RenderError::HeaderInjection(_)))
            ),
            "{:?}",
            composed[2]
        );
        let ok: Vec<Notification> = composed.into_iter().filter_map(Result::ok).collect();
        assert_eq!(ok.len(), 2);
        rig.dispatcher.enqueue(ok).unwrap();
        for _ in 0..2 {
            let s = rig.next_settled(Duration::from_secs(10)).await;
            assert_eq!(s.outcome, "sent", "{s:?}");
        }

        let mails = sink.wait_for_count(2, Duration::from_secs(5)).await;
        let by_id = |id: &str| {
            mails
                .iter()
                .find(|m| m.message_id == format!("<{id}@forewarn>"))
                .unwrap_or_else(|| panic!("no mail {id} in {mails:?}"))
        };
        let script = by_id("ea01");
        let html = script.html.as_deref().expect("an HTML part");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("{{ 7*7 }}"), "{html}");
        assert!(
            script.text.contains("your note: {{ 7*7 }}"),
            "{}",
            script.text
        );

        let braces = by_id("ea02");
        assert_eq!(braces.subject, "Hello {{ 7*7 }}");
        assert!(braces.text.contains("Dear {{ 7*7 }},"), "{}", braces.text);
        assert!(braces.text.contains("{% raw %}x"), "{}", braces.text);
        // What was rendered must not hold 49. The raw message is not the
        // place to look: its random MIME boundary and its Date header may.
        let html = braces.html.as_deref().expect("an HTML part");
        for part in [braces.subject.as_str(), braces.text.as_str(), html] {
            assert!(!part.contains("49"), "{part}");
        }

        for m in &mails {
            assert_eq!(m.rcpt_to, vec![RECIPIENT.to_string()]);
            // No header is a Bcc. (The raw text is not searched: its random
            // MIME boundary may spell "bcc" by chance.)
            let parsed = mailparse::parse_mail(m.raw.as_bytes()).expect("a parseable email");
            assert!(
                !parsed
                    .headers
                    .iter()
                    .any(|h| h.get_key().eq_ignore_ascii_case("bcc")),
                "{}",
                m.raw
            );
        }
        stays(
            "the rejected one is never sent",
            Duration::from_millis(300),
            || sink.messages().len(),
            2,
        )
        .await;
        rig.stop().await;
    });
}

// ---------------------------------------------------------------- outbox

#[test]
fn outbox_keeps_a_pending_notification_across_a_restart_and_sends_it_once() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port(); // nothing listens there yet: connection refused
        let cfg = format!(
            "[channels.email]\ntype = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\ntimeout = \"2s\"\nretry_initial = \"1s\"\nretry_max = \"1s\"\n"
        );
        let id = "fa1b2c3d4e5f6071";

        let rig = Rig::start(dir.path(), &cfg);
        assert_eq!(rig.enqueue(notification(id, "email")), Enqueued::Queued);
        wait_for("a failed first attempt", Duration::from_secs(10), || {
            (rig.attempts("email", "transient") >= 1.0).then_some(())
        })
        .await;
        assert_eq!(rig.attempts("email", "ok"), 0.0);
        rig.stop().await; // drops the dispatcher, its outbox and the store

        // What the outbox holds on disk between the two runs.
        {
            let outbox = Outbox::open(Store::open(&dir.path().join("state")).unwrap()).unwrap();
            let pending = outbox.pending().unwrap();
            assert_eq!(pending.len(), 1, "{pending:?}");
            assert_eq!(pending[0].notification, notification(id, "email"));
            assert_eq!(pending[0].attempts, 1);
            assert!(pending[0].last_error.is_some());
            assert!(outbox.dead_letters().unwrap().is_empty());
        }

        // The server comes up; a new dispatcher on the same store sends it.
        let sink = SmtpSink::start_on(port, &[]).await;
        let mut rig = Rig::start(dir.path(), &cfg);
        let s = rig.next_settled(Duration::from_secs(10)).await;
        assert_eq!((s.id.as_str(), s.outcome), (id, "sent"));
        let mails = sink.wait_for_count(1, Duration::from_secs(5)).await;
        assert_eq!(mails[0].message_id, format!("<{id}@forewarn>"));

        // Decided again (its event read again after a restart): a duplicate.
        assert_eq!(rig.enqueue(notification(id, "email")), Enqueued::Duplicate);
        assert_eq!(rig.dispatcher.pending(), 0);
        stays(
            "delivered exactly once",
            Duration::from_millis(500),
            || sink.messages().len(),
            1,
        )
        .await;
        assert_eq!(rig.attempts("email", "ok"), 1.0);
        rig.stop().await;
    });
}

/// The crash window the outbox exists for: a notification written to the
/// outbox while no worker runs (decided, then a crash before any send) is
/// sent by the next dispatcher on the same store, once.
#[test]
fn outbox_sends_what_was_enqueued_before_a_restart_exactly_once() {
    run(async {
        let sink = SmtpSink::start().await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = smtp("email", sink.port, "tls = \"none\"");
        let id = "fb1b2c3d4e5f6071";

        let rig = Rig::start(dir.path(), &cfg);
        let handle = rig.dispatcher.clone();
        rig.stop().await; // no worker left to send anything
        let out = handle.enqueue(vec![notification(id, "email")]).unwrap();
        assert_eq!(out, vec![(id.to_string(), Enqueued::Queued)]);
        drop(handle); // closes the store
        assert!(sink.messages().is_empty());

        let mut rig = Rig::start(dir.path(), &cfg);
        let s = rig.next_settled(Duration::from_secs(10)).await;
        assert_eq!((s.id.as_str(), s.outcome), (id, "sent"));
        let mails = sink.wait_for_count(1, Duration::from_secs(5)).await;
        assert_eq!(mails[0].message_id, format!("<{id}@forewarn>"));
        assert_eq!(rig.enqueue(notification(id, "email")), Enqueued::Duplicate);
        rig.stop().await;

        // A third start finds nothing left to send.
        let mut rig = Rig::start(dir.path(), &cfg);
        assert_eq!(rig.dispatcher.pending(), 0);
        assert!(rig.dispatcher.outbox().pending().unwrap().is_empty());
        assert_eq!(rig.enqueue(notification(id, "email")), Enqueued::Duplicate);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), rig.settled.recv())
                .await
                .is_err(),
            "nothing settles: nothing was pending"
        );
        assert_eq!(sink.messages().len(), 1, "delivered exactly once");
        rig.stop().await;
    });
}
