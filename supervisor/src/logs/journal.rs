//! The journald sink: native journal protocol datagrams on `/run/systemd/journal/socket`
//! (`KEY=value\n` fields; a value holding a newline as `KEY\n`, its length as a little-endian
//! u64, the bytes, `\n`). A line is at most [`MAX_LINE`](super::frame::MAX_LINE) bytes, so an
//! entry is at most ~17 KiB: one datagram, no memfd needed.
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::record::Record;

/// Where journald listens for native protocol datagrams.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Appends one field in the native protocol's form.
pub fn push_field(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    out.extend_from_slice(key.as_bytes());
    if value.contains(&b'\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        out.extend_from_slice(value);
    } else {
        out.push(b'=');
        out.extend_from_slice(value);
    }
    out.push(b'\n');
}

/// One journal entry for `r`: `MESSAGE`, `PRIORITY` (6 stdout, 3 stderr),
/// `SYSLOG_IDENTIFIER=hako`, `HAKO_APP`, `HAKO_INSTANCE`, `HAKO_STREAM`.
pub fn encode(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(r.text.len() + 128);
    push_field(&mut out, "MESSAGE", r.text.as_bytes());
    push_field(&mut out, "PRIORITY", &[b'0' + r.stream.priority()]);
    push_field(&mut out, "SYSLOG_IDENTIFIER", b"hako");
    push_field(&mut out, "HAKO_APP", r.app.as_bytes());
    push_field(&mut out, "HAKO_INSTANCE", r.instance.as_bytes());
    push_field(&mut out, "HAKO_STREAM", r.stream.as_str().as_bytes());
    out
}

/// A connection to journald.
#[derive(Debug)]
pub struct Journal {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Journal {
    /// `Some` when `path` is a socket (journald runs); sends wait at most 1 s.
    pub fn detect(path: &Path) -> Option<Journal> {
        use std::os::unix::fs::FileTypeExt;
        let meta = std::fs::metadata(path).ok()?;
        if !meta.file_type().is_socket() {
            return None;
        }
        let sock = UnixDatagram::unbound().ok()?;
        sock.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
        Some(Journal {
            sock,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn send(&self, r: &Record) -> io::Result<()> {
        self.sock.send_to(&encode(r), &self.path).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::Stream;
    use super::*;

    /// Parses a native-protocol datagram back into (key, value) pairs.
    fn decode(mut b: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let nl = b.iter().position(|&c| c == b'\n').expect("newline");
            let head = &b[..nl];
            if let Some(eq) = head.iter().position(|&c| c == b'=') {
                out.push((
                    String::from_utf8_lossy(&head[..eq]).into(),
                    head[eq + 1..].to_vec(),
                ));
                b = &b[nl + 1..];
            } else {
                let key = String::from_utf8_lossy(head).into_owned();
                let len = u64::from_le_bytes(b[nl + 1..nl + 9].try_into().expect("len")) as usize;
                let val = b[nl + 9..nl + 9 + len].to_vec();
                assert_eq!(b[nl + 9 + len], b'\n');
                out.push((key, val));
                b = &b[nl + 10 + len..];
            }
        }
        out
    }

    #[test]
    fn entries_reach_a_socket_in_the_native_protocol() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.sock");
        assert!(Journal::detect(&path).is_none(), "no socket: no journald");
        std::fs::write(dir.path().join("plain"), "x").expect("write");
        assert!(Journal::detect(&dir.path().join("plain")).is_none());
        let server = UnixDatagram::bind(&path).expect("bind");
        let j = Journal::detect(&path).expect("a socket: journald");
        let rec = Record {
            ts_us: 1,
            app: "web".into(),
            instance: "web-7".into(),
            stream: Stream::Stderr,
            text: "boom = bad".into(),
        };
        j.send(&rec).expect("send");
        let mut buf = vec![0u8; 65536];
        let n = server.recv(&mut buf).expect("recv");
        let fields = decode(&buf[..n]);
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(get("MESSAGE").as_deref(), Some("boom = bad"));
        assert_eq!(get("PRIORITY").as_deref(), Some("3"));
        assert_eq!(get("SYSLOG_IDENTIFIER").as_deref(), Some("hako"));
        assert_eq!(get("HAKO_APP").as_deref(), Some("web"));
        assert_eq!(get("HAKO_INSTANCE").as_deref(), Some("web-7"));
        assert_eq!(get("HAKO_STREAM").as_deref(), Some("stderr"));

        let out = Record {
            stream: Stream::Stdout,
            text: "x".repeat(super::super::frame::MAX_LINE),
            ..rec
        };
        j.send(&out).expect("a full-size line fits one datagram");
        let n = server.recv(&mut buf).expect("recv");
        let fields = decode(&buf[..n]);
        assert_eq!(fields[0].1.len(), super::super::frame::MAX_LINE);
        assert_eq!(fields[1], ("PRIORITY".to_owned(), b"6".to_vec()));
    }

    #[test]
    fn a_value_with_a_newline_uses_the_binary_form() {
        let mut out = Vec::new();
        push_field(&mut out, "MESSAGE", b"a\nb");
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\n");
        assert_eq!(out, want);
        assert_eq!(decode(&out), [("MESSAGE".to_owned(), b"a\nb".to_vec())]);
    }
}
