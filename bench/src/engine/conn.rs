//! Client connections (HTTP/1.1 or h2c) and single request/response exchanges on them.
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::request::{RequestSpec, Target, Template};
use crate::h1::{Fail, RawConn};
use crate::report::ErrorKind;

/// An open client connection.
pub enum Conn {
    /// HTTP/1.1 keep-alive (the lean client of [`crate::h1`]).
    H1(RawConn),
    /// HTTP/2 (h2c prior knowledge); clones share the connection, driven by its own task.
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    /// Whether the connection can no longer be used.
    pub fn is_closed(&self) -> bool {
        match self {
            Conn::H1(c) => c.is_closed(),
            Conn::H2(s) => s.is_closed(),
        }
    }
}

/// Opens a TCP connection and performs the HTTP handshake, within `timeout`.
pub async fn connect(addr: SocketAddr, http2: bool, timeout: Duration) -> Result<Conn, ErrorKind> {
    let fut = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        let _ = stream.set_nodelay(true);
        if http2 {
            let (s, c) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|_| ErrorKind::Connect)?;
            tokio::spawn(async move {
                let _ = c.await;
            });
            Ok(Conn::H2(s))
        } else {
            Ok(Conn::H1(RawConn::new(stream)))
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or(Err(ErrorKind::Connect))
}

/// Sends one request and reads the whole response body; returns the status.
pub async fn exchange(
    conn: &mut Conn,
    tpl: &Template,
    timeout: Duration,
) -> Result<u16, ErrorKind> {
    match try_exchange(conn, tpl, timeout, None).await {
        Ok(s) => Ok(s),
        Err(Fail::Kind(k)) => Err(k),
        Err(Fail::Stale) => Err(ErrorKind::Io),
    }
}

pub(super) async fn try_exchange(
    conn: &mut Conn,
    tpl: &Template,
    timeout: Duration,
    timer: Option<&mut Timer>,
) -> Result<u16, Fail> {
    let fut = async {
        match conn {
            Conn::H1(c) => c.exchange(&tpl.raw, tpl.method == Method::HEAD).await,
            Conn::H2(s) => {
                s.ready().await.map_err(|_| Fail::Stale)?;
                let resp = s
                    .send_request(tpl.build())
                    .await
                    .map_err(|_| Fail::Kind(ErrorKind::Io))?;
                read_response(resp).await.map_err(Fail::Kind)
            }
        }
    };
    let Some(timer) = timer else {
        return tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or(Err(Fail::Kind(ErrorKind::Timeout)));
    };
    // A lazily re-armed timer: armed once, re-armed only when it fires before the current
    // request's deadline. This avoids touching the shared timer wheel on every request.
    let deadline = Instant::now() + timeout;
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            _ = timer.as_mut() => {
                if Instant::now() >= deadline {
                    return Err(Fail::Kind(ErrorKind::Timeout));
                }
                timer.as_mut().reset(deadline);
            }
        }
    }
}

/// A worker's reusable timeout timer.
pub(super) type Timer = Pin<Box<tokio::time::Sleep>>;

/// Reads the whole body; returns the status.
async fn read_response(resp: http::Response<hyper::body::Incoming>) -> Result<u16, ErrorKind> {
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        frame.map_err(|_| ErrorKind::Io)?;
    }
    Ok(status)
}

/// One request on a fresh connection: connect + exchange, all within `timeout`.
/// Returns the elapsed time (from before connect to the end of the body) and the outcome.
pub async fn one_shot(
    addr: SocketAddr,
    tpl: &Template,
    timeout: Duration,
) -> (Duration, Result<u16, ErrorKind>) {
    let start = Instant::now();
    let res = match connect(addr, tpl.http2, timeout).await {
        Ok(mut c) => {
            let left = timeout.saturating_sub(start.elapsed());
            exchange(&mut c, tpl, left).await
        }
        Err(e) => Err(e),
    };
    (start.elapsed(), res)
}

/// GETs `url` on a fresh HTTP/1.1 connection and returns the body of a 2xx response.
pub async fn get_body(url: &str, timeout: Duration) -> Result<Bytes, String> {
    let target = Target::resolve(url).await.map_err(|e| e.to_string())?;
    let tpl = Template::new(&target, &RequestSpec::default()).map_err(|e| e.to_string())?;
    let fut = async {
        let stream = TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", target.addr))?;
        let (mut s, c) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = c.await;
        });
        let resp = s
            .send_request(tpl.build())
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        Ok(body)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
}
