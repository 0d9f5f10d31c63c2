//! What a person sees of one message: who it is from and to, its subject
//! and notable headers, what its outcome means, its text part, its HTML
//! part exactly as sent, or the JSON a webhook or Kafka channel carries.
//!
//! `forewarn render` prints it on the terminal and writes it as a preview
//! page; `forewarn replay --report` shows sample messages with the same
//! card (the `card` macro of `preview/card.html`), so a message looks the
//! same in both. Pages are minijinja templates embedded in the binary,
//! with HTML autoescaping on: event data reaches the page as text. The
//! HTML part is shown in an `<iframe sandbox srcdoc=…>`, where it cannot
//! run scripts, submit forms or reach the page around it.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::{AutoEscape, Environment};
use serde::Serialize;

use crate::config::{ChannelConfig, ChannelKind, FileConfig, RetryPolicy, DEFAULT_FROM};
use crate::event::format_time;
use crate::notify::channel::{self, ChannelError};
use crate::notify::Notification;

/// The stylesheet every page shares (inlined: pages load nothing).
pub const STYLE: &str = include_str!("preview/style.css");

/// One message, ready to show.
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub rule: String,
    pub customer: String,
    /// The channel's name in the config (`email`, `cx-slack`, …).
    pub channel: String,
    /// How that channel delivers, in words.
    pub transport: &'static str,
    /// `sent`, `deferred`, `shadow` or `holdout`.
    pub outcome: &'static str,
    /// What the outcome means for this message (none for a plain send).
    pub note: Option<String>,
    /// Header lines in the order a person reads them: From, To, Subject,
    /// List-Unsubscribe, Message-ID for an email; the request line and
    /// headers of a webhook; topic, key and headers of a Kafka record.
    pub headers: Vec<(String, String)>,
    pub subject: String,
    /// The plain-text part of an email, as the customer reads it.
    pub text: Option<String>,
    /// The HTML part of an email, exactly as sent.
    pub html: Option<String>,
    /// The JSON body of a webhook request or Kafka record, pretty-printed.
    pub payload: Option<String>,
    /// Exactly what goes on the wire.
    #[serde(skip)]
    pub wire: String,
}

/// The channel `name` of the daemon config, or (without a config, or for
/// a name it lacks) an email written to files from the default sender, as
/// `forewarn render` and `replay` show messages without `--config`.
pub fn channel_or_default(
    channels: Option<&BTreeMap<String, ChannelConfig>>,
    name: &str,
) -> ChannelConfig {
    channels
        .and_then(|c| c.get(name).cloned())
        .unwrap_or_else(|| ChannelConfig {
            name: name.to_string(),
            kind: ChannelKind::File(FileConfig {
                dir: Path::new("outbox").to_path_buf(),
                from: DEFAULT_FROM.parse().expect("valid default sender"),
            }),
            retry: RetryPolicy::default(),
            concurrency: 1,
            rate_limit: None,
        })
}

/// What an outcome other than `sent` means for the message shown.
fn outcome_note(n: &Notification, outcome: &str, holdout_percent: Option<f64>) -> Option<String> {
    match outcome {
        "shadow" => Some(
            "Shadow mode: this message is rendered and logged, never sent. Remove mode = \"shadow\" from the rule to send it."
                .into(),
        ),
        "holdout" => Some(format!(
            "Holdout: this customer is in the rule's {}% control group and gets nothing; every other customer gets this message.",
            holdout_percent.unwrap_or_default()
        )),
        "deferred" => Some(match n.not_before {
            Some(t) => format!(
                "Deferred: the decision fell in the customer's quiet hours, so the message waits until {}.",
                format_time(t)
            ),
            None => "Deferred by quiet hours.".into(),
        }),
        _ => None,
    }
}

impl MessageView {
    /// `n` as channel `cfg` would deliver it. `holdout_percent`: the
    /// rule's, for the note of a `holdout` outcome.
    pub fn new(
        n: &Notification,
        cfg: &ChannelConfig,
        outcome: &'static str,
        holdout_percent: Option<f64>,
    ) -> Result<MessageView, ChannelError> {
        let wire = channel::preview(cfg, n)?;
        let mut view = MessageView {
            rule: n.rule_id.clone(),
            customer: n.customer.clone(),
            channel: cfg.name.clone(),
            transport: match &cfg.kind {
                ChannelKind::Smtp(_) => "email over SMTP",
                ChannelKind::File(_) => "email, written as .eml files",
                ChannelKind::Webhook(_) => "webhook: an HTTP POST",
                ChannelKind::Kafka(_) => "Kafka record",
            },
            outcome,
            note: outcome_note(n, outcome, holdout_percent),
            headers: Vec::new(),
            subject: n.message.subject.clone(),
            text: None,
            html: None,
            payload: None,
            wire: String::new(),
        };
        match &cfg.kind {
            ChannelKind::Smtp(c) => view.email(n, &c.from),
            ChannelKind::File(c) => view.email(n, &c.from),
            ChannelKind::Webhook(_) | ChannelKind::Kafka(_) => {
                // "request line or topic\nname: value…\n\nJSON body".
                let (head, body) = wire.split_once("\n\n").unwrap_or((wire.as_str(), ""));
                for (i, line) in head.lines().enumerate() {
                    match line.split_once(": ") {
                        Some((name, value)) => view.headers.push((name.into(), value.into())),
                        None if i == 0 => match line.split_once(' ') {
                            Some((method, url)) => view.headers.push((method.into(), url.into())),
                            None => view.headers.push((String::new(), line.into())),
                        },
                        None => view.headers.push((String::new(), line.into())),
                    }
                }
                view.payload = Some(body.trim_end().to_string());
            }
        }
        view.wire = wire;
        Ok(view)
    }

    fn email(&mut self, n: &Notification, from: &lettre::message::Mailbox) {
        let mut h = vec![
            ("From".to_string(), from.to_string()),
            ("To".to_string(), n.recipient.clone().unwrap_or_default()),
            ("Subject".to_string(), n.message.subject.clone()),
        ];
        if let Some(url) = &n.unsubscribe_url {
            h.push(("List-Unsubscribe".into(), format!("<{url}>")));
            h.push((
                "List-Unsubscribe-Post".into(),
                "List-Unsubscribe=One-Click".into(),
            ));
        }
        h.push((
            "Message-ID".into(),
            format!("<{}@{}>", n.id, crate::notify::email::MESSAGE_ID_DOMAIN),
        ));
        self.headers = h;
        self.text = Some(n.message.text.clone());
        self.html = n.message.html.clone();
    }

    /// For the terminal: the header card, then the text part (or the JSON
    /// payload) as the recipient reads it.
    pub fn terminal(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let mut rows: Vec<(&str, String)> = vec![
            ("rule", self.rule.clone()),
            ("channel", format!("{} ({})", self.channel, self.transport)),
            ("outcome", self.outcome.to_string()),
        ];
        rows.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &rows {
            let _ = writeln!(s, "{k:<width$}  {v}");
        }
        if let Some(note) = &self.note {
            let _ = writeln!(s, "\nnote: {note}");
        }
        if let Some(text) = &self.text {
            let _ = writeln!(s, "\n──── text part ────");
            s.push_str(text.trim_end());
            s.push('\n');
        }
        if self.html.is_some() {
            let _ = writeln!(
                s,
                "\n──── HTML part: open the preview page below to see it as sent ────"
            );
        }
        if let Some(p) = &self.payload {
            let _ = writeln!(s, "\n──── JSON payload ────");
            s.push_str(p);
            s.push('\n');
        }
        s
    }
}

/// The templates every page uses: the stylesheet, the message card and
/// the render preview page. Callers add their own page templates.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    env.add_template("style.css", STYLE)
        .expect("the stylesheet is a valid template");
    env.add_template("card.html", include_str!("preview/card.html"))
        .expect("the card template is valid");
    env.add_template("preview.html", include_str!("preview/page.html"))
        .expect("the preview page template is valid");
    env
}

/// What the preview page shows of `messages`, in words for the terminal.
pub fn page_shows(messages: &[MessageView]) -> &'static str {
    if messages.iter().any(|m| m.html.is_some()) {
        "the HTML part as sent, and the text"
    } else if messages.iter().any(|m| m.payload.is_some()) {
        "the request and its JSON"
    } else {
        "the text; this message has no HTML part"
    }
}

/// The self-contained page `forewarn render` writes: one card per message.
pub fn page(title: &str, messages: &[MessageView]) -> Result<String, minijinja::Error> {
    let env = environment();
    env.get_template("preview.html")?
        .render(minijinja::context! { title, messages })
}

/// A marketing notification for unit tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use crate::notify::template::Rendered;
    use crate::notify::{EpisodeInfo, Notification};
    use crate::rules::Class;

    pub fn notification(id: &str) -> Notification {
        Notification {
            id: id.into(),
            rule_id: "promo".into(),
            channel: "email".into(),
            class: Class::Marketing,
            customer: "c-1".into(),
            recipient: Some("ana@example.com".into()),
            message: Rendered {
                subject: "Größe <M> ist zurück".into(),
                text: "Hallo Ana,\nlange Zeilen mit Umlauten: äöü ß — und = Zeichen.".into(),
                html: None,
            },
            episode: EpisodeInfo {
                key: vec!["c-1".into()],
                start: 0,
                deadline: None,
                partition: 0,
            },
            event: serde_json::json!({}),
            entry: None,
            unsubscribe_url: Some("https://acme.example/u/c-1".into()),
            not_before: Some(8 * 3_600_000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(html: Option<&str>) -> Notification {
        let mut n = tests_support::notification("n1");
        n.message.html = html.map(str::to_string);
        n
    }

    #[test]
    fn an_email_card_shows_headers_text_and_the_html_as_sent_in_a_sandbox() {
        let html = r#"<p onclick="x()">Hi <b>Ana</b> & "you"</p><script>alert(1)</script>"#;
        let n = notification(Some(html));
        let v = MessageView::new(&n, &channel_or_default(None, "email"), "deferred", None).unwrap();
        let t = v.terminal();
        assert!(t.contains("To                     ana@example.com"), "{t}");
        assert!(
            t.contains("Subject                Größe <M> ist zurück"),
            "{t}"
        );
        assert!(
            t.contains("List-Unsubscribe       <https://acme.example/u/c-1>"),
            "{t}"
        );
        assert!(t.contains("äöü ß — und = Zeichen."), "decoded text: {t}");
        assert!(t.contains("waits until 1970-01-01T08:00:00Z"), "{t}");
        assert!(v.wire.contains("Content-Transfer-Encoding"), "{}", v.wire);

        let page = page("preview", &[v]).unwrap();
        // The HTML part is in the iframe's srcdoc, escaped once: a browser
        // decodes the attribute back to exactly `html`.
        let escaped = html
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#x27;")
            .replace('/', "&#x2f;");
        assert!(
            page.contains(&format!(r#"<iframe sandbox="" srcdoc="{escaped}""#)),
            "{page}"
        );
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("Größe &lt;M&gt; ist zurück"), "{page}");
        assert!(page.contains("Content-Security-Policy"), "{page}");
    }

    #[test]
    fn a_text_only_email_still_gets_a_page_with_its_text() {
        let mut n = notification(None);
        n.unsubscribe_url = None;
        let v = MessageView::new(&n, &channel_or_default(None, "email"), "sent", None).unwrap();
        assert_eq!(v.note, None);
        assert!(!v.terminal().contains("List-Unsubscribe"));
        let page = page("preview", &[v]).unwrap();
        assert!(!page.contains("<iframe"), "{page}");
        assert!(page.contains("lange Zeilen mit Umlauten"), "{page}");
    }
}
