//! Recorded events on disk: JSONL files, one JSON object per line, plain
//! or gzip-compressed. Every command that reads recorded events (`replay`,
//! `report --events`, `test`'s `events_file`, `produce`) opens them here,
//! so a `.jsonl.gz` works wherever a `.jsonl` does.
//!
//! Compression is recognised by the file's first bytes (the gzip magic
//! number), never by its name: a renamed or extension-less export still
//! reads, and a plain file called `.gz` is read as plain text.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

/// The first two bytes of every gzip member (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A recorded-events file that cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {error}", path.display())]
pub struct OpenError {
    pub path: PathBuf,
    pub error: io::Error,
}

/// Opens `path` for reading line by line, gunzipping it when it starts
/// with the gzip magic number (concatenated gzip members are read one
/// after the other, as `zcat` does). Data that turns out not to be valid
/// gzip fails on read, with an [`io::ErrorKind::InvalidData`] error that
/// says so; the caller names the file.
pub fn open(path: &Path) -> Result<Box<dyn BufRead + Send>, OpenError> {
    let fail = |error| OpenError {
        path: path.to_path_buf(),
        error,
    };
    let mut file = File::open(path).map_err(fail)?;
    let mut head = [0u8; 2];
    let mut seen = 0;
    while seen < head.len() {
        match file.read(&mut head[seen..]) {
            Ok(0) => break,
            Ok(n) => seen += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(e)),
        }
    }
    file.rewind().map_err(fail)?;
    if seen == head.len() && head == GZIP_MAGIC {
        Ok(Box::new(BufReader::new(Gunzip(MultiGzDecoder::new(
            BufReader::new(file),
        )))))
    } else {
        Ok(Box::new(BufReader::new(file)))
    }
}

/// A gzip stream whose decoding errors say that the gzip data is bad, so
/// that "corrupt deflate stream" reads as a fact about the file.
struct Gunzip<R>(MultiGzDecoder<R>);

impl<R: BufRead> Read for Gunzip<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidInput
            | io::ErrorKind::InvalidData
            | io::ErrorKind::UnexpectedEof => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the file starts like gzip but is not valid gzip data ({e})"),
            ),
            _ => e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    const EVENTS: &str = "{\"type\":\"login\",\"customer_id\":\"c-1\",\"ts\":\"2026-11-16T08:00:00Z\"}\n\
                          {\"type\":\"page_viewed\",\"customer_id\":\"c-1\",\"ts\":\"2026-11-16T08:00:05Z\"}\n";

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn read_lines(path: &Path) -> io::Result<Vec<String>> {
        open(path)
            .map_err(|e| e.error)?
            .lines()
            .collect::<io::Result<Vec<_>>>()
    }

    fn expected() -> Vec<String> {
        EVENTS.lines().map(str::to_string).collect()
    }

    #[test]
    fn plain_files_are_read_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("events.jsonl");
        std::fs::write(&plain, EVENTS).unwrap();
        assert_eq!(read_lines(&plain).unwrap(), expected());
        // A plain file named .gz is still plain text.
        let misnamed = dir.path().join("events.jsonl.gz");
        std::fs::write(&misnamed, EVENTS).unwrap();
        assert_eq!(read_lines(&misnamed).unwrap(), expected());
        // Shorter than the magic number: empty, or one byte.
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "").unwrap();
        assert!(read_lines(&empty).unwrap().is_empty());
        let one = dir.path().join("one.jsonl");
        std::fs::write(&one, [0x1f]).unwrap();
        let mut bytes = Vec::new();
        open(&one).unwrap().read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes, [0x1f]);
    }

    #[test]
    fn gzip_is_recognised_by_its_content_not_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("events.jsonl.gz");
        std::fs::write(&gz, gzip(EVENTS.as_bytes())).unwrap();
        assert_eq!(read_lines(&gz).unwrap(), expected());
        let renamed = dir.path().join("events.jsonl");
        std::fs::write(&renamed, gzip(EVENTS.as_bytes())).unwrap();
        assert_eq!(read_lines(&renamed).unwrap(), expected());
        // Two gzip members back to back (`cat a.gz b.gz`) read as one file.
        let (a, b) = EVENTS.split_at(EVENTS.find('\n').unwrap() + 1);
        let joined = dir.path().join("joined.gz");
        std::fs::write(&joined, [gzip(a.as_bytes()), gzip(b.as_bytes())].concat()).unwrap();
        assert_eq!(read_lines(&joined).unwrap(), expected());
    }

    #[test]
    fn corrupt_gzip_is_an_error_that_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let good = gzip(EVENTS.repeat(50).as_bytes());
        // Damaged in the middle of the compressed data.
        let mut damaged = good.clone();
        for b in &mut damaged[12..40] {
            *b ^= 0x5a;
        }
        // Cut short, as an interrupted download leaves it.
        let truncated = good[..good.len() / 2].to_vec();
        for (name, bytes) in [("damaged.gz", damaged), ("truncated.gz", truncated)] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let e = read_lines(&path).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{name}: {e}");
            assert!(e.to_string().contains("not valid gzip data"), "{name}: {e}");
        }
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nowhere.jsonl.gz");
        let e = open(&path).err().expect("no such file");
        assert_eq!(e.error.kind(), io::ErrorKind::NotFound);
        let text = e.to_string();
        assert!(
            text.starts_with("cannot read ") && text.contains("nowhere.jsonl.gz"),
            "{text}"
        );
    }
}
