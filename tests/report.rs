//! `forewarn replay --report`, as a CX lead runs it: the real binary on
//! events written here, with a contact policy that caps, defers and
//! honours consent. The page must stand alone (nothing to load), agree
//! with the terminal table, and show sample messages.

mod files;
use files::escape;
use std::path::Path;
use std::process::Command;

const RULES: &str = r#"
[[rule]]
id       = "promo"
kind     = "match"
class    = "marketing"
trigger  = { event = "page_view" }
notify   = { channel = "email", template = "promo" }

[[rule]]
id       = "order-help"
kind     = "match"
class    = "transactional"
trigger  = { event = "order_failed" }
notify   = { channel = "email", template = "help" }

[[rule]]
id       = "never"
kind     = "match"
trigger  = { event = "no_such_event" }
notify   = { channel = "email", template = "help" }
"#;

fn write_rules(dir: &Path) {
    let t = dir.join("templates");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(dir.join("rules.toml"), RULES).unwrap();
    std::fs::write(t.join("promo.subject"), "A treat for {{ customer.name }}").unwrap();
    std::fs::write(
        t.join("promo.txt"),
        "Hi {{ customer.name }}, see what is new.",
    )
    .unwrap();
    std::fs::write(
        t.join("promo.html"),
        r#"<p>Hi <b>{{ customer.name }}</b>, <img src="https://cdn.acme.example/logo.png"> see <a href="https://acme.example/new">what is new</a>.</p>"#,
    )
    .unwrap();
    std::fs::write(t.join("help.subject"), "About your order {{ event.order }}").unwrap();
    std::fs::write(t.join("help.txt"), "We saw order {{ event.order }} fail.").unwrap();
}

fn event(kind: &str, customer: &str, at: &str, extra: &str) -> String {
    format!(
        r#"{{"type":"{kind}","event_id":"{kind}-{customer}-{at}","customer_id":"{customer}","ts":"2026-03-02T{at}:00Z","customer":{{"email":"{customer}@example.com","name":"{}"{extra}}}{}}}"#,
        customer.to_uppercase(),
        if kind == "order_failed" {
            format!(r#","order":"O-{customer}""#)
        } else {
            String::new()
        }
    )
}

/// The cells of each `<tr>` of the table that follows `marker`.
fn table_rows(page: &str, marker: &str) -> Vec<Vec<String>> {
    let start = page.find(marker).expect("the table is there");
    let table = &page[start..start + page[start..].find("</table>").unwrap()];
    table
        .split("<tr")
        .skip(1)
        .filter(|row| row.contains("<td"))
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let text = &cell[cell.find('>').unwrap() + 1..];
                    text[..text.find("</td>").unwrap()].to_string()
                })
                .collect()
        })
        .collect()
}

/// `page` without the values of its `srcdoc` attributes (the messages'
/// HTML, which only the sandboxed iframes see).
fn outside_iframes(page: &str) -> String {
    let mut out = String::new();
    let mut rest = page;
    while let Some(i) = rest.find(r#"srcdoc=""#) {
        out.push_str(&rest[..i]);
        let after = &rest[i + r#"srcdoc=""#.len()..];
        rest = &after[after.find('"').unwrap() + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_report_stands_alone_agrees_with_the_table_and_shows_samples() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    write_rules(&rules);
    let no = r#","consent":{"marketing":false}"#;
    let events = [
        event("page_view", "ana", "12:00", ""),    // sent
        event("order_failed", "ana", "12:05", ""), // transactional: no cap
        event("page_view", "ana", "12:30", ""),    // capped: one a day
        event("page_view", "cy", "13:00", no),     // unsubscribed
        event("page_view", "dee", "14:00", ""),    // sent
        event("page_view", "eli", "15:00", ""),    // sent
        event("order_failed", "fay", "22:00", ""), // …and no quiet hours
        "{not json".to_string(),
        event("page_view", "bo", "23:00", ""), // deferred to 08:00
        event("page_view", "gus", "23:30", ""), // deferred to 08:00
    ];
    let events_file = dir.path().join("events.jsonl");
    std::fs::write(&events_file, events.join("\n") + "\n").unwrap();
    let config = dir.path().join("forewarn.toml");
    std::fs::write(
        &config,
        format!(
            r#"[kafka]
brokers = "127.0.0.1:9092"
topics = ["behavior-events"]
[rules]
dir = {:?}
[customers]
unsubscribe_url = "https://acme.example/unsubscribe/{{{{ customer.id }}}}"
[policy]
max_per_customer = {{ count = 1, per = "24h" }}
quiet_hours      = {{ start = "21:00", end = "08:00" }}
[channels.email]
type = "file"
dir  = "./outbox"
from = "Acme Care <care@acme.example>"
"#,
            rules.display().to_string()
        ),
    )
    .unwrap();
    let page = dir.path().join("out/report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .current_dir(dir.path())
        .args(["replay", "--events"])
        .arg(&events_file)
        .arg("--config")
        .arg(&config)
        .arg("--report")
        .arg(&page)
        .arg("--out")
        .arg(dir.path().join("messages"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "report: file://{}",
            page.canonicalize().unwrap().display()
        )),
        "{stdout}"
    );
    // The would-be messages carry the configured channel's sender.
    let written: Vec<_> = std::fs::read_dir(dir.path().join("messages"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(!written.is_empty());
    for eml in &written {
        assert!(
            eml.contains("From: \"Acme Care\" <care@acme.example>"),
            "{eml}"
        );
    }
    let html = std::fs::read_to_string(&page).unwrap();

    // The terminal's table, row by row, is the page's.
    let terminal: Vec<Vec<String>> = stdout
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert_eq!(terminal.len(), 3, "{stdout}");
    let mut page_rows = table_rows(&html, r#"<table class="outcomes">"#);
    let total = page_rows.pop().unwrap();
    assert_eq!(page_rows, terminal, "{stdout}");
    assert_eq!(total[..2], ["all rules".to_string(), "9".to_string()]);
    let promo = &terminal.iter().find(|r| r[0] == "promo").unwrap();
    // fired, sent, deferred, shadow, holdout, capped, unsubscribed
    assert_eq!(promo[1..8], ["7", "3", "2", "0", "0", "1", "1"], "{stdout}");

    // What was held back: the cap, consent, and two deferrals of 9 h and
    // 8.5 h (23:00 and 23:30 to 08:00).
    let held = table_rows(&html, "<h2>What was held back</h2>");
    let promo_held = held.iter().find(|r| r[0] == "promo").unwrap();
    let header_start = html.find("<h2>What was held back</h2>").unwrap();
    let headers: Vec<&str> = html[header_start..]
        .split("</thead>")
        .next()
        .unwrap()
        .split("<th>")
        .skip(1)
        .map(|h| &h[..h.find("</th>").unwrap()])
        .collect();
    let cell = |name: &str| {
        let i = headers.iter().position(|h| *h == name).unwrap();
        promo_held[i].as_str()
    };
    assert_eq!(
        (cell("capped"), cell("unsubscribed"), cell("cooldown")),
        ("1", "1", "0")
    );
    assert_eq!(
        (
            cell("held back"),
            cell("deferred"),
            cell("delay, total"),
            cell("delay, median")
        ),
        ("2", "2", "17.5 h", "8.5 h")
    );

    // Trigger to send: two sends at once, two after the night.
    let delays = table_rows(&html, "<th>90% within</th>");
    assert!(
        delays.contains(&vec![
            "promo".into(),
            "5".into(),
            "at once".into(),
            "9 h".into(),
            "9 h".into()
        ]),
        "{delays:?}"
    );

    // One chart each: outcomes, sends per hour, trigger to send.
    assert_eq!(html.matches("<svg").count(), 3, "{html}");
    assert!(
        html.contains("promo: 5 messages"),
        "the sends panel of promo"
    );

    // It loads nothing: a strict policy, and no script, stylesheet link or
    // remote resource outside the sandboxed message frames.
    assert!(
        html.contains(r#"<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">"#),
        "{html}"
    );
    let outside = outside_iframes(&html);
    for banned in [
        "<script", "<link", "src=", "url(", "@import", "<object", "<embed", "href=",
    ] {
        assert!(
            !outside.contains(banned),
            "{banned} outside the message frames"
        );
    }
    assert!(!outside.contains("<img") && html.contains("cdn.acme.example"));
    assert!(html.contains(r#"<iframe sandbox="" srcdoc=""#));

    // Samples: at most three per rule, as sent (subject, deferral note).
    for subject in [
        "A treat for ANA",
        "A treat for BO",
        "About your order O-fay",
    ] {
        assert!(html.contains(subject), "sample {subject:?}");
    }
    assert_eq!(html.matches("rule <strong>promo</strong>").count(), 3);
    assert!(
        html.contains("waits until 2026-03-03T08:00:00Z"),
        "the deferred sample says when it goes"
    );
    assert!(html.contains("List-Unsubscribe"));
    assert!(html.contains("It never fired on these events."));

    // The facts of the replay.
    for fact in [
        "9 replayed from",
        "2026-03-02T12:00:00Z to 2026-03-02T23:30:00Z",
        "<dt>Invalid lines</dt><dd>1",
        "line 8: ",
        &escape(config.to_str().unwrap()),
    ] {
        assert!(html.contains(fact), "{fact}: {html}");
    }
}
