//! The three seed scenarios customers feel, end to end through a real
//! broker and a real SMTP server with the shipped rules: a checkout with no
//! order, a known bug, a parcel past its promised time (plus the payment
//! threshold). Then `replay` over the same events must decide the same.

mod harness;

use std::collections::BTreeSet;
use std::time::Duration;

use forewarn::replay::{replay, ReplayOptions};
use harness::*;
use serde_json::{json, Value};

const MIN: i64 = 60_000;

fn at(ms: i64) -> String {
    forewarn::event::format_time(ms)
}

fn scenario_events(now: i64) -> Vec<Value> {
    let person = |c: &str| json!({"email": format!("{c}@example.com"), "name": c.to_uppercase()});
    let ev = |kind: &str, c: &str, t: i64, extra: Value| {
        let mut v = json!({"type": kind, "customer_id": c, "ts": at(t), "event_id": format!("{kind}-{c}-{t}"), "customer": person(c)});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let cart = |total: f64| json!({"cart": {"total": total, "items": 2, "currency": "EUR"}});
    let ship = |id: &str, promised: i64| json!({"shipment": {"id": id, "carrier": "DPD", "promised_delivery_at": at(promised)}});
    let bug = |platform: &str, version: &str, os: &str, screen: &str, code: &str| json!({"app": {"platform": platform, "version": version}, "device": {"os_version": os}, "error": {"screen": screen, "code": code}});
    let mut events = vec![
        // Checkout drop-off.
        ev("checkout_started", "ana", now - 40 * MIN, cart(54.9)), // no order: mail
        ev("checkout_started", "ben", now - 40 * MIN, cart(80.0)),
        ev("order_placed", "ben", now - 35 * MIN, json!({})), // ordered: nothing
        ev("checkout_started", "cat", now - 40 * MIN, cart(5.0)), // basket too small: nothing
        ev("checkout_started", "dan", now - 40 * MIN, cart(30.0)),
        ev("support_ticket_opened", "dan", now - 38 * MIN, json!({})), // cancel_on: nothing
        ev("checkout_started", "eve", now - 180 * MIN, cart(30.0)),    // deadline 2.5 h ago: stale
        // Known bugs.
        ev(
            "app_error",
            "fay",
            now - 20 * MIN,
            bug("ios", "4.2.1", "17.1", "payment", "SHEET_TIMEOUT"),
        ), // BUG-1423
        ev(
            "app_error",
            "fay",
            now - 19 * MIN,
            bug("ios", "4.2.1", "17.1", "payment", "SHEET_TIMEOUT"),
        ), // duplicate
        ev(
            "app_error",
            "gus",
            now - 18 * MIN,
            bug("android", "4.2.9", "14.0", "gallery", "UPLOAD_EACCES"),
        ), // BUG-1501
        ev(
            "app_error",
            "hal",
            now - 17 * MIN,
            bug("ios", "4.2.3", "17.1", "payment", "SHEET_TIMEOUT"),
        ), // fixed version: nothing
        // Delayed shipments.
        ev(
            "shipment_dispatched",
            "ivy",
            now - 2 * 24 * 60 * MIN,
            ship("SHP-1", now - 180 * MIN),
        ), // late: mail
        ev(
            "shipment_dispatched",
            "jon",
            now - 2 * 24 * 60 * MIN,
            ship("SHP-2", now - 180 * MIN),
        ),
        ev(
            "shipment_delivered",
            "jon",
            now - 240 * MIN,
            json!({"shipment": {"id": "SHP-2"}}),
        ), // delivered: nothing
        ev(
            "shipment_dispatched",
            "kim",
            now - 60 * MIN,
            ship("SHP-3", now + 24 * 60 * MIN),
        ), // not due yet
        // Payment failures: three in five minutes.
        ev(
            "payment_failed",
            "lea",
            now - 9 * MIN,
            json!({"payment": {"kind": "checkout", "reason": "card_declined"}}),
        ),
        ev(
            "payment_failed",
            "lea",
            now - 7 * MIN,
            json!({"payment": {"kind": "checkout", "reason": "card_declined"}}),
        ),
        ev(
            "payment_failed",
            "lea",
            now - 5 * MIN,
            json!({"payment": {"kind": "checkout", "reason": "do_not_honor"}}),
        ),
    ];
    events.sort_by_key(|e| forewarn::event::parse_time(&e["ts"]).unwrap());
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenarios_send_exactly_the_expected_mails_and_replay_agrees() {
    let broker = Broker::start().await;
    let smtp = SmtpSink::start().await;
    let topic = format!("events-{}", free_port());
    broker.create_topic(&topic, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let (daemon, admin, shutdown) = start_daemon(
        dir.path(),
        &broker.brokers,
        &[&topic],
        None,
        &smtp_channel(smtp.port),
    )
    .await;

    let now = jiff::Timestamp::now().as_millisecond();
    let events = scenario_events(now);
    let jsonl = dir.path().join("events.jsonl");
    std::fs::write(
        &jsonl,
        events.iter().map(|e| format!("{e}\n")).collect::<String>(),
    )
    .unwrap();
    for e in &events {
        broker
            .produce(&topic, e["customer_id"].as_str(), &e.to_string())
            .await;
    }

    let mails = smtp.wait_for_count(5, Duration::from_secs(60)).await;
    // Everything else is decided once the partitions go idle (1 s).
    let metrics = wait_for(
        "the stale and duplicate decisions",
        Duration::from_secs(30),
        || {
            let body = http_get(&admin, "/metrics").ok()?.1;
            let stale = metric(
                &body,
                "forewarn_notifications_total",
                &[("rule", "checkout-dropoff"), ("outcome", "stale")],
            )?;
            let dup = metric(
                &body,
                "forewarn_notifications_total",
                &[("rule", "known-bug-exposure"), ("outcome", "duplicate")],
            )?;
            (stale == 1.0 && dup == 1.0).then_some(body)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails_now = smtp.messages();
    assert_eq!(
        mails_now.len(),
        5,
        "{:#?}",
        mails_now
            .iter()
            .map(|m| (&m.to, &m.subject))
            .collect::<Vec<_>>()
    );
    let by = |who: &str| {
        mails
            .iter()
            .find(|m| m.to == format!("{who}@example.com"))
            .unwrap_or_else(|| panic!("no mail to {who}"))
    };
    assert_eq!(by("ana").subject, "You left 2 items in your basket");
    assert!(by("ana").text.contains("EUR 54.90"), "{}", by("ana").text);
    assert_eq!(
        by("fay").subject,
        "We know about \"The payment sheet freezes on iOS\", and here is a way round it"
    );
    assert!(
        by("fay").text.contains("Update the app to 4.2.3"),
        "{}",
        by("fay").text
    );
    assert!(by("gus")
        .subject
        .contains("Photos fail to upload on Android 14"));
    assert_eq!(by("ivy").subject, "Your parcel SHP-1 is running late");
    assert_eq!(by("lea").subject, "Having trouble paying? We can help");
    assert!(
        by("lea").text.contains("do not honor"),
        "{}",
        by("lea").text
    );

    assert!(metric(
        &metrics,
        "forewarn_detection_delay_seconds_count",
        &[("rule", "checkout-dropoff")]
    )
    .is_some());
    // Idle partitions follow the wall clock: the watermark reaches "now"
    // although the newest event is five minutes old.
    let metrics = wait_for(
        "the idle watermark to follow the clock",
        Duration::from_secs(20),
        || {
            let body = http_get(&admin, "/metrics").ok()?.1;
            let wm = metric(&body, "forewarn_watermark_seconds", &[])?;
            (wm * 1000.0 > (now - 30_000) as f64).then_some(body)
        },
    )
    .await;
    assert_eq!(
        metric(&metrics, "forewarn_open_episodes", &[]),
        Some(1.0),
        "kim's parcel is not due yet"
    );

    // Replay decides the same on the same events. The one difference is by
    // definition: staleness is judged by the wall clock live, and in
    // virtual time (never stale) in a replay.
    let report = replay(&ReplayOptions {
        events: jsonl,
        rules_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"),
        schema: forewarn::event::EventSchema {
            kind: forewarn::event::FieldPath::parse("type").unwrap(),
            customer: forewarn::event::FieldPath::parse("customer_id").unwrap(),
            time: forewarn::event::FieldPath::parse("ts").unwrap(),
            id: Some(forewarn::event::FieldPath::parse("event_id").unwrap()),
        },
        email: forewarn::event::FieldPath::parse("customer.email").unwrap(),
        engine: forewarn::engine::EngineConfig::default(),
        out_dir: None,
        from: "a@b.example".parse().unwrap(),
        senders: Default::default(),
        until: None,
        addressless_channels: Default::default(),
        policy: Default::default(),
        unsubscribe_url: None,
    })
    .await
    .unwrap();
    let replay_sent: BTreeSet<String> = report
        .decisions
        .iter()
        .filter(|d| d.outcome == "sent" && d.customer != "eve")
        .map(|d| format!("<{}@forewarn>", d.notification_id))
        .collect();
    let live_sent: BTreeSet<String> = mails.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(replay_sent, live_sent);
    assert!(report
        .decisions
        .iter()
        .any(|d| d.customer == "eve" && d.outcome == "sent"));
    assert!(report
        .decisions
        .iter()
        .any(|d| d.customer == "fay" && d.outcome == "duplicate"));
    assert_eq!(
        report.still_open, 1,
        "kim's parcel is due after the last event"
    );

    shutdown.cancel();
    daemon.wait().await.unwrap();
}
