//! RFC 5322 messages, shared by the `smtp` and `file` channels so that what
//! a local run writes to disk is byte-for-byte what SMTP would carry.

use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::Message;

use super::channel::ChannelError;
use super::Notification;

/// The Message-ID domain part; the local part is the notification id.
pub const MESSAGE_ID_DOMAIN: &str = "forewarn";

pub fn build(n: &Notification, from: &Mailbox) -> Result<Message, ChannelError> {
    let to: Mailbox = n
        .recipient
        .as_deref()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| {
            ChannelError::permanent("the notification has no valid recipient address")
        })?;
    let mut builder = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(n.message.subject.clone())
        .message_id(Some(format!("<{}@{MESSAGE_ID_DOMAIN}>", n.id)));
    // RFC 2369 and RFC 8058: mail clients show an unsubscribe button, and
    // one-click unsubscribe works without opening a page.
    if let Some(url) = &n.unsubscribe_url {
        builder = builder
            .header(ListUnsubscribe(format!("<{url}>")))
            .header(ListUnsubscribePost);
    }
    let text = SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .body(n.message.text.clone());
    let built = match &n.message.html {
        Some(html) => builder.multipart(
            MultiPart::alternative().singlepart(text).singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_HTML)
                    .body(html.clone()),
            ),
        ),
        None => builder.singlepart(text),
    };
    built.map_err(|e| ChannelError::permanent(format!("cannot build the email: {e}")))
}

/// `List-Unsubscribe: <https://…>` (RFC 2369).
#[derive(Debug, Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribe(s.to_string()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
#[derive(Debug, Clone)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribePost)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_string())
    }
}
