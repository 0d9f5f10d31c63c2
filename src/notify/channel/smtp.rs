//! The `smtp` channel, through lettre: plain, STARTTLS (required: never
//! falls back to clear text) or implicit TLS, with optional AUTH.

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::ChannelError;
use crate::config::{SmtpConfig, TlsMode};
use crate::notify::{email, Notification};

pub struct SmtpChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The whole exchange for one message (lettre's own timeout covers
    /// only the connect): a server that greets and then goes silent must
    /// not hold a send, or shutdown, forever.
    timeout: std::time::Duration,
}

impl SmtpChannel {
    pub fn new(cfg: &SmtpConfig) -> Result<SmtpChannel, String> {
        let tls = match cfg.tls {
            TlsMode::None => Tls::None,
            mode => {
                let mut params = TlsParameters::builder(cfg.host.clone());
                if let Some(ca) = &cfg.ca_file {
                    let pem = std::fs::read(ca)
                        .map_err(|e| format!("cannot read ca_file {:?}: {e}", ca.display()))?;
                    let cert = Certificate::from_pem(&pem).map_err(|e| {
                        format!("ca_file {:?} is not a PEM certificate: {e}", ca.display())
                    })?;
                    params = params.add_root_certificate(cert);
                }
                let params = params
                    .build()
                    .map_err(|e| format!("cannot set up TLS for {}: {e}", cfg.host))?;
                if mode == TlsMode::Implicit {
                    Tls::Wrapper(params)
                } else {
                    Tls::Required(params)
                }
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.clone())
            .port(cfg.port)
            .tls(tls)
            .timeout(Some(cfg.timeout));
        if let Some((user, password)) = &cfg.credentials {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        Ok(SmtpChannel {
            transport: builder.build(),
            from: cfg.from.clone(),
            timeout: cfg.timeout,
        })
    }

    pub async fn send(&self, n: &Notification) -> Result<(), ChannelError> {
        let message = email::build(n, &self.from)?;
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(ChannelError::transient(format!(
                "the SMTP server did not complete the session within {} (timeout)",
                humantime::format_duration(self.timeout)
            ))),
        }
    }
}

/// SMTP 5xx, a server without the STARTTLS that `tls = "starttls"`
/// requires, and a certificate that does not verify are permanent: trying
/// again sends nothing but the same refusal, and nothing ever goes out in
/// clear text. 4xx, timeouts and dropped connections are transient.
fn classify(e: &lettre::transport::smtp::Error) -> ChannelError {
    if e.is_permanent() {
        ChannelError::permanent(format!("SMTP server refused the message: {e}"))
    } else if e.is_client() {
        ChannelError::permanent(format!(
            "SMTP session refused by forewarn: {e} (with tls = \"starttls\" the server must offer STARTTLS; nothing was sent in clear text)"
        ))
    } else if e.is_tls() || tls_failure(e) {
        ChannelError::permanent(format!(
            "TLS with the SMTP server failed: {e} (check ca_file and that host matches the server certificate)"
        ))
    } else {
        ChannelError::transient(format!("SMTP delivery failed: {e}"))
    }
}

/// lettre reports a STARTTLS handshake that fails (an untrusted or
/// mismatched certificate) as a connection error; the TLS error is in the
/// source chain.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = e.source();
    while let Some(c) = cause {
        if c.is::<native_tls::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}
