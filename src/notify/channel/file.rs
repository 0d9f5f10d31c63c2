//! The `file` channel: one RFC 5322 `.eml` file per notification, named by
//! the notification id, so a resend overwrites instead of duplicating. The
//! default for local runs; open the files with any mail client.

use std::path::{Path, PathBuf};

use lettre::message::Mailbox;

use super::ChannelError;
use crate::config::FileConfig;
use crate::notify::{email, Notification};

pub struct FileChannel {
    dir: PathBuf,
    from: Mailbox,
}

impl FileChannel {
    pub fn new(cfg: &FileConfig) -> Result<FileChannel, String> {
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| format!("cannot create the folder {:?}: {e}", cfg.dir.display()))?;
        Ok(FileChannel {
            dir: cfg.dir.clone(),
            from: cfg.from.clone(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub async fn send(&self, n: &Notification) -> Result<(), ChannelError> {
        let bytes = email::build(n, &self.from)?.formatted();
        write_atomically(&self.dir, &format!("{}.eml", n.id), &bytes)
            .await
            .map_err(|e| {
                ChannelError::transient(format!("cannot write to {}: {e}", self.dir.display()))
            })
    }
}

/// Writes `name` in `dir` through a temporary file and a rename, so a
/// reader never sees half a message.
pub async fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, dir.join(name)).await
}
