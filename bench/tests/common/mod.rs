//! Small in-process servers for the engine tests.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// Listens on a fresh loopback port and runs `handle` on each accepted connection in its own
/// task.
async fn accept_each<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(handle(s));
        }
    });
    addr
}

/// A server answering every request with `status`, counting requests; h1 and h2c.
pub async fn status_server(status: u16) -> (SocketAddr, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let addr = accept_each(move |s| {
        let c = c.clone();
        async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                c.fetch_add(1, Ordering::Relaxed);
                let host = req
                    .headers()
                    .get("host")
                    .map(|h| h.to_str().unwrap_or("").to_string())
                    .or_else(|| req.uri().authority().map(|a| a.to_string()))
                    .unwrap_or_default();
                async move {
                    let mut r = Response::new(Full::new(Bytes::from(host)));
                    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        }
    })
    .await;
    (addr, count)
}

/// A server that reads the request and then resets the connection.
pub async fn reset_server() -> SocketAddr {
    accept_each(|mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = socket_zero_linger(&s);
        drop(s);
    })
    .await
}

#[allow(deprecated)]
fn socket_zero_linger(s: &TcpStream) -> std::io::Result<()> {
    s.set_linger(Some(std::time::Duration::ZERO))
}

/// A server that accepts and reads but never answers.
pub async fn stall_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            held.push(s);
        }
    });
    addr
}

/// An address nobody listens on.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A fake hako: the first request for a host "boots" it (counted in `hako_boots_total{app}`),
/// `GET /metrics` (any host) serves the Prometheus text. Each boot takes `boot_ms`.
pub async fn fake_hako(boot_ms: u64) -> SocketAddr {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    let booted: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    accept_each(move |s| {
        let booted = booted.clone();
        async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let booted = booted.clone();
                async move {
                    if req.uri().path() == "/metrics" {
                        let mut text = String::from("# TYPE hako_boots_total counter\n");
                        let b = booted.lock().unwrap().clone();
                        for (app, requests) in &b {
                            // One boot per host, however many requests it served.
                            text.push_str(&format!(
                                    "hako_boots_total{{app=\"{app}\",result=\"ok\"}} 1\n\
                                     hako_requests_total{{app=\"{app}\",code=\"200\"}} {requests}\n"
                                ));
                            text.push_str(&format!(
                                "hako_instances{{app=\"{app}\",state=\"ready\"}} 1\n"
                            ));
                        }
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))));
                    }
                    let host = req
                        .headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let first = {
                        let mut b = booted.lock().unwrap();
                        let e = b.entry(host.clone()).or_insert(0);
                        *e += 1;
                        *e == 1
                    };
                    if first {
                        tokio::time::sleep(std::time::Duration::from_millis(boot_ms)).await;
                    }
                    Ok(Response::new(Full::new(Bytes::from(host))))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        }
    })
    .await
}

/// Answers 200 only to requests whose Host is `host`, 404 otherwise.
pub async fn host_server(host: &'static str) -> SocketAddr {
    accept_each(move |s| async move {
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
            let got = req
                .headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(String::from)
                .or_else(|| req.uri().host().map(String::from))
                .unwrap_or_default();
            async move {
                let mut r = Response::new(Full::new(Bytes::new()));
                if got != host {
                    *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                }
                Ok::<_, Infallible>(r)
            }
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(s), svc)
            .await;
    })
    .await
}

/// Answers one request per connection (without `Connection: close`), then closes the idle
/// connection shortly after, like a server with a tiny keep-alive timeout.
pub async fn idle_closing_server() -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    accept_each(|mut s| async move {
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        drop(s);
    })
    .await
}
