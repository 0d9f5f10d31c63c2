//! `forewarn render`, as a CX lead runs it: the real binary, the shipped
//! rules and their sample events (rules/samples/). The terminal shows the
//! header card and the decoded text, a preview page shows the HTML part
//! exactly as sent, and `--raw` prints the wire.

mod files;
use files::escape;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// (exit ok, stdout, stderr)
fn render(args: &[&str]) -> (bool, String, String) {
    render_in(&root(), args)
}

fn render_in(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .current_dir(dir)
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

/// The value of the first `srcdoc` attribute, decoded as a browser does.
fn srcdoc(page: &str) -> Option<String> {
    let start = page.find(r#"srcdoc=""#)? + r#"srcdoc=""#.len();
    let len = page[start..].find('"')?;
    Some(
        page[start..start + len]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#x27;", "'")
            .replace("&#x2f;", "/")
            .replace("&amp;", "&"),
    )
}

/// The `file://` URL the terminal names, as a path.
fn page_path(stdout: &str) -> PathBuf {
    let url = stdout
        .lines()
        .find_map(|l| l.split_once("file://").map(|(_, p)| p.trim().to_string()))
        .unwrap_or_else(|| panic!("names a file:// page: {stdout}"));
    PathBuf::from(url)
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
        let (ok, stdout, stderr) = render(&["--rule", &rule.id, "--event", &sample, "--raw"]);
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
        let part = |mime: &str| {
            std::iter::once(&mail)
                .chain(mail.subparts.iter())
                .find(|p| p.ctype.mimetype == mime && p.subparts.is_empty())
                // The wire has CRLF line ends; the message itself, LF.
                .map(|p| p.get_body().unwrap().replace("\r\n", "\n"))
        };
        let text = part("text/plain").expect("a text part");

        // Without --raw: the card and the decoded text on the terminal, and
        // a page with the HTML part exactly as on the wire.
        let out = tempfile::tempdir().unwrap();
        let page = out.path().join("preview.html");
        let (ok, card, stderr) = render(&[
            "--rule",
            &rule.id,
            "--event",
            &sample,
            "--out",
            page.to_str().unwrap(),
        ]);
        assert!(ok, "{}: {stderr}", rule.id);
        for line in [
            format!("To          {}", header("To")),
            format!("Subject     {}", header("Subject")),
            // A rule in shadow mode previews as shadow: rendered, never sent.
            format!(
                "outcome     {}",
                match rule.mode {
                    forewarn::rules::Mode::Shadow => "shadow",
                    _ => "sent",
                }
            ),
        ] {
            assert!(card.contains(&line), "{}: {line:?} in {card}", rule.id);
        }
        assert!(card.contains(text.trim_end()), "decoded text: {card}");
        assert!(
            !card.contains("=\r\n") && !card.contains("=C3"),
            "not quoted-printable: {card}"
        );
        assert_eq!(page_path(&card), page.canonicalize().unwrap());
        let html = std::fs::read_to_string(&page).unwrap();
        assert!(html.contains(&escape(&header("Subject"))), "{html}");
        match part("text/html") {
            Some(sent) => assert_eq!(srcdoc(&html).as_deref(), Some(sent.as_str()), "{}", rule.id),
            None => assert!(!html.contains("<iframe"), "{}", rule.id),
        }
        assert!(html.contains("Text part"), "text-only mails get a page too");
    }
}

#[test]
fn the_page_goes_to_render_out_by_default_and_raw_writes_none_or_the_wire_to_out() {
    let cwd = tempfile::tempdir().unwrap();
    let rules = root().join("rules");
    let event = root().join("rules/samples/carrier-delay.json");
    let args = [
        "--rule",
        "carrier-delay",
        "--event",
        event.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
    ];
    let (ok, stdout, stderr) = render_in(cwd.path(), &[&args[..], &["--raw"]].concat());
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Content-Transfer-Encoding"), "{stdout}");
    assert!(
        !cwd.path().join("render-out").exists(),
        "--raw writes no page"
    );

    // --raw --out: the same wire text, in the file instead.
    let eml = cwd.path().join("mail/carrier-delay.eml");
    let (ok, to_file, stderr) = render_in(
        cwd.path(),
        &[&args[..], &["--raw", "--out", eml.to_str().unwrap()]].concat(),
    );
    assert!(ok, "{stderr}");
    assert!(to_file.is_empty(), "nothing on standard output: {to_file}");
    assert!(stderr.contains("carrier-delay.eml"), "{stderr}");
    let written = std::fs::read_to_string(&eml).unwrap();
    // The same message but for the MIME boundary, random per rendering,
    // and the Date header, which is the second each run rendered in.
    let normalized = |s: &str| {
        let boundary = s
            .split_once("boundary=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(b, _)| b.to_string())
            .expect("a multipart email");
        s.replace(&boundary, "BOUNDARY")
            .split("\r\n")
            .map(|line| match line.starts_with("Date: ") {
                true => "Date: DATE",
                false => line,
            })
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    assert_eq!(normalized(&written), normalized(&stdout));
    assert!(
        !cwd.path().join("render-out").exists(),
        "--raw --out writes no page"
    );

    let (ok, stdout, stderr) = render_in(cwd.path(), &args);
    assert!(ok, "{stderr}");
    let page = cwd.path().join("render-out/carrier-delay.html");
    assert_eq!(page_path(&stdout), page.canonicalize().unwrap());
    let html = std::fs::read_to_string(page).unwrap();
    assert!(html.contains("<iframe sandbox=\"\" srcdoc=\""), "{html}");
    assert!(
        srcdoc(&html).unwrap().contains("<strong>A-7781</strong>"),
        "the HTML body, as sent: {html}"
    );

    // --out makes the folder; the link stays one link with a space in it.
    let (ok, stdout, stderr) = render_in(
        cwd.path(),
        &[&args[..], &["--out", "my previews/a.html"]].concat(),
    );
    assert!(ok, "{stderr}");
    assert!(cwd.path().join("my previews/a.html").exists());
    assert!(stdout.contains("/my%20previews/a.html\n"), "{stdout}");
}

#[test]
fn a_profile_is_what_templates_and_consent_see() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("p.html");
    let profile = dir.path().join("fay.json");
    let run = |profile_json: &str| {
        std::fs::write(&profile, profile_json).unwrap();
        render(&[
            "--rule",
            "checkout-dropoff",
            "--event",
            "rules/samples/checkout-dropoff.json",
            "--profile",
            profile.to_str().unwrap(),
            "--out",
            page.to_str().unwrap(),
        ])
    };
    // The sample event says the customer is "Fay"; the profile wins.
    let (ok, without, _) = render(&[
        "--rule",
        "checkout-dropoff",
        "--event",
        "rules/samples/checkout-dropoff.json",
        "--out",
        page.to_str().unwrap(),
    ]);
    assert!(ok && without.contains("Hi Fay,"), "{without}");
    let (ok, stdout, stderr) = run(r#"{"name": "Zoë", "email": "zoe@example.com"}"#);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Hi Zoë,"), "{stdout}");
    assert!(stdout.contains("To          zoe@example.com"), "{stdout}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(srcdoc(&html).unwrap().contains("Hi Zoë,"), "{html}");

    // A customer who said no to marketing gets nothing, and render says so.
    let (ok, _, stderr) = run(r#"{"consent": {"marketing": false}}"#);
    assert!(!ok);
    assert!(
        stderr.contains("nothing would be sent (unsubscribed)"),
        "{stderr}"
    );

    let (ok, _, stderr) = run(r#"["Zoë"]"#);
    assert!(!ok);
    assert!(
        stderr.contains("is not a valid profile: it holds a list, not an object"),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"{"name": "Ana""#),
        "shows an example: {stderr}"
    );
    let (ok, _, stderr) = run("{name: Zoë}");
    assert!(!ok);
    assert!(stderr.contains("it is not JSON"), "{stderr}");
    let (ok, _, stderr) = render(&[
        "--rule",
        "checkout-dropoff",
        "--event",
        "rules/samples/checkout-dropoff.json",
        "--profile",
        "no-such-profile.json",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot read no-such-profile.json"),
        "{stderr}"
    );
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
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_forewarn"))
            .current_dir(root())
            .env(
                "FOREWARN_TEST_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            )
            .args(["render", "--rule", "dropoff-to-cx", "--event"])
            .arg("rules/samples/checkout-dropoff.json")
            .arg("--config")
            .arg(&config)
            .args(extra)
            .output()
            .unwrap()
    };
    // The card: the request line and headers, then the JSON, pretty.
    let page = dir.path().join("cx.html");
    let out = run(&["--out", page.to_str().unwrap()]);
    let card = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{card}");
    assert!(
        card.contains("channel            cx-slack (webhook: an HTTP POST)"),
        "{card}"
    );
    assert!(
        card.contains("POST               https://hooks.example.com/cx"),
        "{card}"
    );
    assert!(
        card.contains("──── JSON payload ────\n{\n  \"data\": {"),
        "{card}"
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("JSON payload") && html.contains("Drop-off: c-200"),
        "{html}"
    );

    let out = run(&["--raw"]);
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

/// `forewarn replay … | head`: when the reader goes away, the tool ends
/// as command-line tools do (SIGPIPE), without a panic and a backtrace.
#[test]
fn a_closed_pipe_ends_a_tool_quietly() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .args(["replay", "--list", "--no-write", "--events"])
        .arg(root().join("rules/samples/week.jsonl.gz"))
        .arg("--rules")
        .arg(root().join("rules"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is gone now; the tool still has thousands of lines to print.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!first.is_empty());
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    const SIGPIPE: i32 = 13; // on Linux
    assert_eq!(out.status.signal(), Some(SIGPIPE), "{:?}", out.status);
}
