//! `GET /v1/apps/APP/logs[?since=DURATION][&instance=ID][&follow=1]`: the app's stored lines
//! (oldest first, as `TIMESTAMP INSTANCE STREAM TEXT`), then with `follow=1` new lines as they
//! are written, streamed until the client disconnects.
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{broadcast, mpsc};

use super::record::{format_ts, now_us, to_line, Filter};
use super::{History, LogHub};

/// The query of a logs request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub filter: Filter,
    pub follow: bool,
}

/// Why a query is refused (400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("since={value}: {reason}")]
    Since { value: String, reason: String },
    #[error("follow={0}: expected 1, true, 0 or false")]
    Follow(String),
    #[error("unknown parameter `{0}` (expected since, instance, follow)")]
    Unknown(String),
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl LogQuery {
    /// Parses the query string; `since` is a duration back from `now_us` (`10m`, `1h`, `30s`).
    pub fn parse(query: Option<&str>, now_us: u64) -> Result<LogQuery, QueryError> {
        let mut q = LogQuery::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "since" => {
                    let d =
                        hako_policies::parse_duration(&v).map_err(|reason| QueryError::Since {
                            value: v.clone(),
                            reason,
                        })?;
                    let cutoff = now_us.saturating_sub(d.as_micros() as u64);
                    q.filter.since = Some(format_ts(cutoff));
                }
                "instance" if !v.is_empty() => q.filter.instance = Some(v),
                "instance" => {}
                "follow" => {
                    q.follow = match v.as_str() {
                        "1" | "true" | "" => true,
                        "0" | "false" => false,
                        _ => return Err(QueryError::Follow(v)),
                    }
                }
                other => return Err(QueryError::Unknown(other.to_owned())),
            }
        }
        Ok(q)
    }
}

/// A response body fed by a channel: each message is one chunk (chunked encoding over
/// HTTP/1.1, until the sender is dropped).
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Chunks sent at once while reading the stored lines.
const CHUNK: usize = 32 << 10;

/// Starts streaming `app`'s lines for `q` (inside a tokio runtime); the body ends after the
/// stored lines, or with `follow` when the client goes away.
pub fn stream(hub: &Arc<LogHub>, app: &str, q: LogQuery) -> ChannelBody {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let snap = hub.snapshot(app, q.follow);
    let app = app.to_owned();
    let filter = q.filter.clone();
    tokio::spawn(async move {
        let live = snap.live;
        // The stored lines first.
        let sent = match snap.history {
            History::Files(files) => {
                let tx = tx.clone();
                let app = app.clone();
                let filter = filter.clone();
                tokio::task::spawn_blocking(move || {
                    let mut chunk = String::new();
                    let mut ok = true;
                    super::file::read_lines(files, |line| {
                        if filter.line_matches(&app, line) {
                            chunk.push_str(line);
                            if chunk.len() >= CHUNK {
                                ok = tx
                                    .blocking_send(Bytes::from(std::mem::take(&mut chunk)))
                                    .is_ok();
                            }
                        }
                        ok
                    });
                    ok && (chunk.is_empty() || tx.blocking_send(Bytes::from(chunk)).is_ok())
                })
                .await
                .unwrap_or(false)
            }
            History::Records(records) => {
                let mut chunk = String::new();
                let mut ok = true;
                for r in records.iter().filter(|r| filter.matches(r)) {
                    chunk.push_str(&to_line(r));
                    if chunk.len() >= CHUNK {
                        ok = tx
                            .send(Bytes::from(std::mem::take(&mut chunk)))
                            .await
                            .is_ok();
                        if !ok {
                            break;
                        }
                    }
                }
                ok && (chunk.is_empty() || tx.send(Bytes::from(chunk)).await.is_ok())
            }
        };
        let Some(mut live) = live.filter(|_| sent) else {
            return;
        };
        loop {
            let r = tokio::select! {
                _ = tx.closed() => return,
                r = live.recv() => r,
            };
            let line = match r {
                Ok(rec) if filter.matches(&rec) => to_line(&rec),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => format!(
                    "{} - stderr hako: {n} lines dropped (reader too slow)\n",
                    format_ts(now_us())
                ),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
    });
    ChannelBody { rx }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_bad_ones_are_named() {
        let now = 3_600_000_000 * 10;
        let q = LogQuery::parse(Some("since=10m&instance=web-3&follow=1"), now).expect("ok");
        assert!(q.follow);
        assert_eq!(q.filter.instance.as_deref(), Some("web-3"));
        assert_eq!(q.filter.since, Some(format_ts(now - 600_000_000)));
        assert_eq!(LogQuery::parse(None, now).expect("ok"), LogQuery::default());
        assert_eq!(
            LogQuery::parse(Some("follow=0&instance=%33"), now)
                .expect("ok")
                .filter
                .instance
                .as_deref(),
            Some("3")
        );
        assert!(matches!(
            LogQuery::parse(Some("since=soon"), now),
            Err(QueryError::Since { .. })
        ));
        assert_eq!(
            LogQuery::parse(Some("tail=5"), now),
            Err(QueryError::Unknown("tail".into()))
        );
        assert_eq!(
            LogQuery::parse(Some("follow=yes"), now),
            Err(QueryError::Follow("yes".into()))
        );
    }
}
