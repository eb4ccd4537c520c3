//! A minimal HTTP/1.1 keep-alive client for the load path, in the spirit of wrk: the request is
//! serialized once, each exchange is one write and (usually) one read, responses are parsed with
//! `httparse` and bodies are skipped without copying. HTTP/2 and one-off requests use hyper.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::report::ErrorKind;

const INITIAL_BUF: usize = 16 * 1024;
const MAX_HEAD: usize = 1024 * 1024;
const MAX_HEADERS: usize = 128;

/// Why an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    /// The request failed.
    Kind(ErrorKind),
    /// A reused connection turned out to be closed before any byte of the response arrived
    /// (the server closed an idle keep-alive connection): reconnect and send again.
    Stale,
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// The parsed head of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// Bytes taken by the head.
    pub len: usize,
    /// Body framing.
    pub body: BodyKind,
    /// The connection cannot be reused afterwards.
    pub close: bool,
}

/// Parses a response head from `buf`. `Ok(None)` means more bytes are needed.
pub fn parse_head(buf: &[u8], head_request: bool) -> Result<Option<Head>, ErrorKind> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ErrorKind::Io),
    };
    let status = resp.code.ok_or(ErrorKind::Io)?;
    let mut close = resp.version == Some(0);
    let mut length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| ErrorKind::Io)?;
            length = Some(v.trim().parse::<u64>().map_err(|_| ErrorKind::Io)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for tok in h.value.split(|b| *b == b',') {
                let t = tok.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && resp.version == Some(0) {
                    close = false;
                }
            }
        }
    }
    let body = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        BodyKind::Length(0)
    } else if chunked {
        BodyKind::Chunked
    } else if let Some(n) = length {
        BodyKind::Length(n)
    } else {
        close = true;
        BodyKind::UntilClose
    };
    Ok(Some(Head {
        status,
        len,
        body,
        close,
    }))
}

/// Incremental chunked-body skipper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Chunked {
    /// Data bytes (plus the CRLF after them) still to skip in the current chunk.
    left: u64,
    /// In the trailer section after the last chunk.
    trailers: bool,
}

impl Chunked {
    /// Consumes from `buf`; returns `(consumed, done)`.
    pub fn feed(&mut self, buf: &[u8]) -> Result<(usize, bool), ErrorKind> {
        let mut pos = 0;
        loop {
            if self.left > 0 {
                let take = self.left.min((buf.len() - pos) as u64);
                pos += take as usize;
                self.left -= take;
                if self.left > 0 {
                    return Ok((pos, false));
                }
            }
            let rest = &buf[pos..];
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                if rest.len() > 4096 {
                    return Err(ErrorKind::Io);
                }
                return Ok((pos, false));
            };
            let line = &rest[..eol];
            pos += eol + 2;
            if self.trailers {
                if line.is_empty() {
                    return Ok((pos, true));
                }
                continue;
            }
            let size_txt = line.split(|b| *b == b';').next().unwrap_or(b"");
            let size_txt = std::str::from_utf8(size_txt).map_err(|_| ErrorKind::Io)?;
            let size = u64::from_str_radix(size_txt.trim(), 16).map_err(|_| ErrorKind::Io)?;
            if size == 0 {
                self.trailers = true;
            } else {
                self.left = size + 2;
            }
        }
    }
}

/// An HTTP/1.1 keep-alive connection.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    used: bool,
    closed: bool,
}

impl RawConn {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: vec![0; INITIAL_BUF],
            start: 0,
            end: 0,
            used: false,
            closed: false,
        }
    }

    /// Whether the connection can no longer be used.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Reads more bytes; `Ok(0)` on EOF.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let n = (self.buf.len() * 2).min(MAX_HEAD.max(self.buf.len() + 1));
                self.buf.resize(n, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Sends `request` (already serialized) and reads the whole response; returns the status.
    pub async fn exchange(&mut self, request: &[u8], head_request: bool) -> Result<u16, Fail> {
        let reused = self.used;
        self.used = true;
        // Any bytes left over belong to no request: drop them.
        self.start = 0;
        self.end = 0;
        let res = self.exchange_inner(request, head_request, reused).await;
        if res.is_err() {
            self.closed = true;
        }
        res
    }

    async fn exchange_inner(
        &mut self,
        request: &[u8],
        head_request: bool,
        reused: bool,
    ) -> Result<u16, Fail> {
        let stale_or = |received: bool| {
            if reused && !received {
                Fail::Stale
            } else {
                Fail::Kind(ErrorKind::Io)
            }
        };
        if self.stream.write_all(request).await.is_err() {
            return Err(stale_or(false));
        }
        let mut received = false;
        let head = loop {
            if self.end > self.start {
                if let Some(h) =
                    parse_head(&self.buf[self.start..self.end], head_request).map_err(Fail::Kind)?
                {
                    if (100..200).contains(&h.status) && h.status != 101 {
                        self.start += h.len; // interim response, the real one follows
                        continue;
                    }
                    break h;
                }
                if self.end - self.start >= MAX_HEAD {
                    return Err(Fail::Kind(ErrorKind::Io));
                }
            }
            match self.fill().await {
                Ok(0) | Err(_) => return Err(stale_or(received)),
                Ok(_) => received = true,
            }
        };
        self.start += head.len;
        match head.body {
            BodyKind::Length(mut left) => loop {
                let avail = (self.end - self.start) as u64;
                let take = avail.min(left);
                self.start += take as usize;
                left -= take;
                if left == 0 {
                    break;
                }
                match self.fill().await {
                    Ok(0) | Err(_) => return Err(Fail::Kind(ErrorKind::Io)),
                    Ok(_) => {}
                }
            },
            BodyKind::Chunked => {
                let mut ch = Chunked::default();
                loop {
                    let (used, done) = ch
                        .feed(&self.buf[self.start..self.end])
                        .map_err(Fail::Kind)?;
                    self.start += used;
                    if done {
                        break;
                    }
                    match self.fill().await {
                        Ok(0) | Err(_) => return Err(Fail::Kind(ErrorKind::Io)),
                        Ok(_) => {}
                    }
                }
            }
            BodyKind::UntilClose => loop {
                self.start = self.end;
                match self.fill().await {
                    Ok(0) => break,
                    Err(_) => return Err(Fail::Kind(ErrorKind::Io)),
                    Ok(_) => {}
                }
            },
        }
        if head.close {
            self.closed = true;
        }
        Ok(head.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false)
            .unwrap()
            .unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                len: 38,
                body: BodyKind::Length(2),
                close: false
            }
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le", false),
            Ok(None)
        );
        let h = parse_head(
            b"HTTP/1.1 503 x\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.status, h.body, h.close), (503, BodyKind::Chunked, true));
        let h = parse_head(b"HTTP/1.0 200 OK\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((h.body, h.close), (BodyKind::UntilClose, true));
        let h = parse_head(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!h.close);
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyKind::Length(0), "HEAD has no body");
        let h = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyKind::Length(0));
        assert!(parse_head(b"garbage\r\n\r\n", false).is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
    }

    #[test]
    fn chunked_in_pieces() {
        let body =
            b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\n";
        // Feed byte by byte, the worst case for incremental parsing.
        let mut c = Chunked::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut done = false;
        for (i, b) in body.iter().enumerate() {
            pending.push(*b);
            let (used, d) = c.feed(&pending).unwrap();
            pending.drain(..used);
            if d {
                assert_eq!(i, body.len() - 1, "done exactly at the end");
                done = true;
            }
        }
        assert!(done);
        assert!(pending.is_empty());
        // All at once.
        let mut c = Chunked::default();
        assert_eq!(c.feed(body).unwrap(), (body.len(), true));
        assert!(Chunked::default().feed(b"zz\r\n").is_err());
    }

    #[tokio::test]
    async fn exchanges_over_keep_alive_with_chunked_and_length() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            )
            .await
            .unwrap();
            let _ = s.read(&mut buf).await;
            s.write_all(
                b"HTTP/1.1 404 NF\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let mut c = RawConn::new(TcpStream::connect(addr).await.unwrap());
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(c.exchange(req, false).await, Ok(200));
        assert_eq!(c.exchange(req, false).await, Ok(404));
        assert!(!c.is_closed());
        assert_eq!(c.exchange(req, false).await, Ok(200));
        assert!(c.is_closed(), "Connection: close honoured");
    }
}
