//! RFC 5322 messages, shared by the `smtp` and `file` channels so that what
//! a local run writes to disk is byte-for-byte what SMTP would carry.

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
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
    let builder = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(n.message.subject.clone())
        .message_id(Some(format!("<{}@{MESSAGE_ID_DOMAIN}>", n.id)));
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
