//! The `webhook` channel: a JSON POST signed the Standard Webhooks way
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64
//! HMAC-SHA256 of "id.timestamp.body">`). The webhook-id is the
//! notification id, so a receiver can drop a resend after a crash.
//!
//! `format = "slack"` posts `{"text": …}` instead, for an internal CX
//! channel (Slack, Mattermost and Rocket.Chat incoming webhooks).
//!
//! 2xx is delivered; 408, 429 and 5xx are transient (`Retry-After` is
//! passed on to the dispatcher); any other status is permanent.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use sha2::Sha256;

use super::ChannelError;
use crate::config::{WebhookConfig, WebhookFormat};
use crate::notify::Notification;

pub struct WebhookChannel {
    client: reqwest::Client,
    url: String,
    key: Option<Vec<u8>>,
    format: WebhookFormat,
}

impl WebhookChannel {
    pub fn new(cfg: &WebhookConfig) -> Result<WebhookChannel, String> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        let key = match &cfg.secret {
            Some(s) => Some(
                hex::decode(s.expose())
                    .map_err(|_| "the signing key is not valid hex (internal)".to_string())?,
            ),
            None => None,
        };
        Ok(WebhookChannel {
            client,
            url: cfg.url.clone(),
            key,
            format: cfg.format,
        })
    }

    /// The body and headers of the POST for `n`, signed at `timestamp`
    /// (seconds since the epoch).
    fn request(&self, n: &Notification, timestamp: u64) -> (Vec<u8>, HeaderMap) {
        let body = match self.format {
            WebhookFormat::Standard => n.to_json(),
            WebhookFormat::Slack => serde_json::json!({ "text": slack_text(n) }),
        }
        .to_string()
        .into_bytes();
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("forewarn/", env!("CARGO_PKG_VERSION"))),
        );
        let id = HeaderValue::from_str(&n.id).expect("notification ids are hex");
        headers.insert("webhook-id", id);
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        if let Some(key) = &self.key {
            let sig = sign(key, &n.id, timestamp, &body);
            headers.insert(
                "webhook-signature",
                HeaderValue::from_str(&format!("v1,{sig}")).expect("base64 is a valid header"),
            );
        }
        (body, headers)
    }

    pub async fn send(&self, n: &Notification) -> Result<(), ChannelError> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (body, headers) = self.request(n, now);
        let response = self
            .client
            .post(&self.url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "could not connect"
                } else {
                    "failed"
                };
                // Without the URL: webhook URLs often carry a secret
                // (Slack's do), and this text reaches the logs.
                ChannelError::transient(format!("webhook POST {what}: {}", e.without_url()))
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let message = format!("webhook answered {status}");
        if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            let mut e = ChannelError::transient(message);
            e.retry_after = retry_after;
            Err(e)
        } else {
            Err(ChannelError::permanent(format!(
                "{message}: the receiver rejected the request; fix the receiver or the channel's url, then re-drive it"
            )))
        }
    }

    pub fn preview(&self, n: &Notification) -> Result<String, ChannelError> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (body, headers) = self.request(n, now);
        let mut out = format!("POST {}\n", self.url);
        for (name, value) in &headers {
            out.push_str(&format!(
                "{name}: {}\n",
                value.to_str().unwrap_or("(binary)")
            ));
        }
        out.push('\n');
        let pretty = serde_json::from_slice::<serde_json::Value>(&body)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        out.push_str(&pretty);
        out.push('\n');
        Ok(out)
    }
}

/// Standard Webhooks: base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The text of a Slack-compatible message: the subject in bold, then the
/// plain-text body.
fn slack_text(n: &Notification) -> String {
    format!(
        "*{}*\n{}\n_rule {} · customer {} · notification {}_",
        n.message.subject.trim(),
        n.message.text.trim_end(),
        n.rule_id,
        n.customer,
        n.id
    )
}

/// `Retry-After`: delay-seconds or an HTTP date; capped at one hour so a
/// confused server cannot park a notification for days.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(v).ok()?;
            at.duration_since(SystemTime::now()).unwrap_or_default()
        }
    };
    Some(wait.min(Duration::from_secs(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // From the Standard Webhooks spec's reference test vector.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("99999"), Some(Duration::from_secs(3600)));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let d = parse_retry_after(&soon).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
