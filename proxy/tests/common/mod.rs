//! Test fixtures: a fake supervisor (Activator), local upstream servers, a client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use hako_proxy::{
    AcquireFuture, ActivateError, Activator, Lease, ProxyOptions, Route, Routes, RoutesHandle,
    ServeReport, Upstream,
};
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// Deterministic test pattern: byte at absolute offset `i`.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ (i as u8)
}

pub const CHUNK: usize = 64 * 1024;

/// A streamed body of `total` pattern bytes, generated chunk by chunk.
pub fn pattern_body(total: u64) -> TestBody {
    let s = stream::unfold(0u64, move |off| async move {
        if off >= total {
            return None;
        }
        let n = (total - off).min(CHUNK as u64);
        let chunk: Vec<u8> = (off..off + n).map(pattern_byte).collect();
        Some((
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(chunk))),
            off + n,
        ))
    });
    StreamBody::new(s).boxed()
}

/// Consumes `body` chunk by chunk, checking the pattern; returns bytes seen or the first bad
/// offset.
pub async fn verify_pattern<B>(mut body: B) -> Result<u64, String>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut off = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body error at {off}: {e}"))?;
        if let Ok(data) = frame.into_data() {
            for b in data.iter() {
                if *b != pattern_byte(off) {
                    return Err(format!("mismatch at offset {off}"));
                }
                off += 1;
            }
        }
    }
    Ok(off)
}

fn query_u64(req: &Request<Incoming>, key: &str, default: u64) -> u64 {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(default)
}

/// The test upstream app (hyper server on 127.0.0.1:0), counting accepted connections.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upstream_handler(req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_string();
    let resp = match path.as_str() {
        "/headers" => {
            let mut text = String::new();
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Response::builder()
                .header("connection", "x-drop-me")
                .header("x-drop-me", "1")
                .header("keep-alive", "timeout=5")
                .header("proxy-agent", "test")
                .header("x-kept", "yes")
                .body(full(text))
                .unwrap()
        }
        "/slow" => {
            let chunks = query_u64(&req, "chunks", 5);
            let ms = query_u64(&req, "ms", 100);
            let s = stream::unfold(0u64, move |i| async move {
                if i >= chunks {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Some((
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(
                        format!("chunk{i};"),
                    ))),
                    i + 1,
                ))
            });
            Response::new(StreamBody::new(s).boxed())
        }
        "/sleep" => {
            tokio::time::sleep(Duration::from_millis(query_u64(&req, "ms", 1000))).await;
            Response::new(full("slept"))
        }
        "/source" => Response::new(pattern_body(query_u64(&req, "bytes", 1024))),
        "/sink" => {
            let text = match verify_pattern(req.into_body()).await {
                Ok(n) => format!("ok {n}"),
                Err(e) => format!("bad {e}"),
            };
            Response::new(full(text))
        }
        _ => Response::new(full(format!("hello {path}"))),
    };
    Ok(resp)
}

impl TestUpstream {
    /// Listens on a fresh loopback port, counts accepted connections and runs `handle` on
    /// each in its own task.
    async fn spawn_counting<F, Fut>(handle: F) -> TestUpstream
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(handle(stream));
            }
        });
        TestUpstream {
            addr,
            accepted,
            task,
        }
    }

    pub async fn start() -> TestUpstream {
        Self::spawn_counting(|stream| async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(upstream_handler))
                .await;
        })
        .await
    }

    /// A hand-written "websocket-ish" upstream: answers the upgrade with 101, then echoes
    /// raw bytes.
    pub async fn start_ws_echo() -> TestUpstream {
        Self::spawn_counting(|mut stream| async move {
            let head = read_head(&mut stream).await;
            let lower = head.to_ascii_lowercase();
            if !lower.contains("upgrade: websocket")
                || !lower.contains("connection: upgrade")
            {
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
                return;
            }
            let _ = stream
                .write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                )
                .await;
            let (mut r, mut w) = stream.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        })
        .await
    }
}

/// How a hand-written misbehaving upstream answers.
#[derive(Clone, Copy)]
pub enum RawMode {
    /// Closes the connection without a response.
    CloseImmediately,
    /// Sends headers announcing 1000 bytes, 10 bytes, then closes.
    Truncate,
    /// A complete response (`ok`) without `Connection: close`, then closes: a pooled
    /// connection to it goes stale.
    OneShot,
    /// A complete keep-alive response (`ok`), then reads the next request head and closes
    /// without answering it: the race of a keep-alive close with a reused connection.
    CloseOnSecond,
}

impl TestUpstream {
    pub async fn start_raw(mode: RawMode) -> TestUpstream {
        Self::spawn_counting(move |mut stream| async move {
            let _ = read_head(&mut stream).await;
            if let RawMode::CloseOnSecond = mode {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = read_head(&mut stream).await;
                return;
            }
            let out: &[u8] = match mode {
                RawMode::CloseImmediately => b"",
                RawMode::Truncate => b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789",
                RawMode::OneShot | RawMode::CloseOnSecond => {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                }
            };
            let _ = stream.write_all(out).await;
            let _ = stream.flush().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        })
        .await
    }
}

/// Reads an HTTP head (up to and including the blank line) byte by byte.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

pub struct TcpUpstream {
    pub id: u64,
    pub addr: SocketAddr,
}

impl Upstream for TcpUpstream {
    fn id(&self) -> u64 {
        self.id
    }
    fn connect(&self) -> hako_proxy::ConnectFuture {
        let addr = self.addr;
        Box::pin(async move { TcpStream::connect(addr).await })
    }
}

#[derive(Clone)]
pub enum Behaviour {
    Serve(Arc<TcpUpstream>),
    Fail(ActivateError),
}

/// Fake supervisor: per-app behaviour, live-lease counter, record log.
#[derive(Default)]
pub struct FakeActivator {
    pub apps: Mutex<HashMap<String, Behaviour>>,
    pub live_leases: Arc<AtomicUsize>,
    pub acquired: AtomicUsize,
    pub records: Mutex<Vec<(Option<String>, u16)>>,
    pub failures: Mutex<Vec<(u64, std::io::ErrorKind)>>,
}

struct LeaseGuard(Arc<AtomicUsize>);
impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FakeActivator {
    pub fn set(&self, app: &str, b: Behaviour) {
        self.apps.lock().unwrap().insert(app.to_string(), b);
    }
    pub fn records(&self) -> Vec<(Option<String>, u16)> {
        self.records.lock().unwrap().clone()
    }
    pub fn live(&self) -> usize {
        self.live_leases.load(Ordering::SeqCst)
    }
}

impl Activator for FakeActivator {
    fn acquire(&self, app: &str) -> AcquireFuture<'_> {
        let b = self.apps.lock().unwrap().get(app).cloned();
        let app = app.to_string();
        Box::pin(async move {
            self.acquired.fetch_add(1, Ordering::SeqCst);
            match b {
                None => Err(ActivateError::UnknownApp(app)),
                Some(Behaviour::Fail(e)) => Err(e),
                Some(Behaviour::Serve(up)) => {
                    self.live_leases.fetch_add(1, Ordering::SeqCst);
                    Ok(Lease {
                        upstream: up,
                        generation: 0,
                        guard: Box::new(LeaseGuard(Arc::clone(&self.live_leases))),
                    })
                }
            }
        })
    }

    fn record(&self, app: Option<&str>, status: u16, _elapsed: Duration) {
        self.records
            .lock()
            .unwrap()
            .push((app.map(str::to_string), status));
    }

    fn upstream_failed(&self, id: u64, error: &std::io::Error) {
        self.failures.lock().unwrap().push((id, error.kind()));
    }
}

/// A running proxy with its fake supervisor.
pub struct Harness {
    pub addr: SocketAddr,
    pub activator: Arc<FakeActivator>,
    pub routes: Arc<RoutesHandle>,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<std::io::Result<ServeReport>>>,
}

pub fn route(app: &str, host: &str, prefix: Option<&str>) -> Route {
    Route {
        app: app.to_string(),
        hosts: vec![host.to_string()],
        path_prefix: prefix.map(str::to_string),
        redirect_https: false,
    }
}

impl Harness {
    pub async fn start(routes: Vec<Route>, opts: ProxyOptions, grace: Duration) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let activator = Arc::new(FakeActivator::default());
        let routes = Arc::new(RoutesHandle::new(Routes::new(routes)));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(hako_proxy::serve(
            listener,
            Arc::clone(&routes),
            Arc::clone(&activator),
            opts,
            async move {
                let _ = rx.await;
            },
            grace,
        ));
        Harness {
            addr,
            activator,
            routes,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn stop(mut self) -> ServeReport {
        self.trigger_shutdown();
        self.task.take().unwrap().await.unwrap().unwrap()
    }

    /// A keep-alive HTTP/1.1 client connection to the proxy.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// One GET on a fresh connection; returns status, headers and the whole body.
    pub async fn get(&self, host: &str, path: &str) -> (StatusCode, http::HeaderMap, String) {
        let mut c = self.client().await;
        let resp = c.send(get_req(host, path)).await;
        collect(resp).await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub fn get_req(host: &str, path: &str) -> Request<TestBody> {
    Request::get(path)
        .header("host", host)
        .body(empty())
        .unwrap()
}

pub async fn collect(resp: Response<Incoming>) -> (StatusCode, http::HeaderMap, String) {
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<TestBody>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { sender }
    }

    pub async fn send(&mut self, req: Request<TestBody>) -> Response<Incoming> {
        self.sender.ready().await.unwrap();
        self.sender.send_request(req).await.unwrap()
    }
}

/// An h2c (prior knowledge) request.
pub async fn h2_get(addr: SocketAddr, uri: &str) -> (StatusCode, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, TestBody>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(Request::get(uri).body(empty()).unwrap())
        .await
        .unwrap();
    let (s, _, b) = collect(resp).await;
    (s, b)
}

/// Polls `cond` every 5 ms for up to 3 s.
pub async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

pub fn serve_up(id: u64, addr: SocketAddr) -> Behaviour {
    Behaviour::Serve(Arc::new(TcpUpstream { id, addr }))
}

/// Reads /proc/self/status field `key` (kB).
pub fn proc_status_kb(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
