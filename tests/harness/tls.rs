//! A throwaway self-signed certificate for TLS tests, made with the
//! `openssl` command (`deploy/test.sh` installs it on a fresh machine).

use std::path::PathBuf;
use std::process::Command;

/// A certificate for `localhost` and `127.0.0.1`, valid for one day, and
/// its unencrypted key, in a temp dir that goes away with it.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCert {
    pub fn generate() -> TestCert {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run openssl ({e}): install it, e.g. with deploy/test.sh")
            });
        assert!(
            out.status.success(),
            "openssl could not make a test certificate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestCert {
            cert,
            key,
            _dir: dir,
        }
    }

    /// An SMTP sink that offers STARTTLS with this certificate, with
    /// `more` smtp_sink.py arguments.
    pub async fn start_sink(&self, more: &[&str]) -> super::SmtpSink {
        let cert = self.cert.display().to_string();
        let key = self.key.display().to_string();
        let mut args = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
        args.extend_from_slice(more);
        super::SmtpSink::start_with(&args).await
    }
}
