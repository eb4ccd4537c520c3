//! The load engine: one task per connection (or per HTTP/2 stream), closed or open loop.
//!
//! Open loop follows wrk2: request `i` (over all workers) has the intended send time
//! `t0 + i / rate`; worker `k` of `W` sends requests `k, k+W, k+2W, ...`. Latency is measured
//! from the intended send time, so a stalled server shows up in the latencies instead of
//! silently lowering the sending rate (no coordinated omission).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::h1::{Fail, RawConn};
use crate::report::{ErrorKind, Recorder, Report, ReportMeta, Second, SharedTimeline};

/// Errors before any load is generated (bad URL, header, ...).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The URL cannot be used.
    #[error("invalid URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// The host name does not resolve.
    #[error("cannot resolve {authority:?}: {source}")]
    Resolve {
        /// host:port.
        authority: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A `-H` header is malformed.
    #[error("invalid header {header:?}: expected 'Name: value'")]
    Header {
        /// The header as given.
        header: String,
    },
    /// A request option is out of range.
    #[error("invalid option {what}: {reason}")]
    Option {
        /// Which option.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// Where to connect and what to ask for.
#[derive(Debug, Clone)]
pub struct Target {
    /// Resolved socket address of the URL's host.
    pub addr: SocketAddr,
    /// `host[:port]` of the URL.
    pub authority: String,
    /// Path and query (at least `/`).
    pub path: String,
}

impl Target {
    /// Parses an `http://host[:port]/path` URL and resolves its address.
    pub async fn resolve(url: &str) -> Result<Self, EngineError> {
        let bad = |reason: &str| EngineError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(bad(&format!("scheme {other} not supported (http only)"))),
            None => return Err(bad("missing scheme, expected http://")),
        }
        let auth = uri.authority().ok_or_else(|| bad("missing host"))?;
        let port = auth.port_u16().unwrap_or(80);
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        let lookup = format!("{host}:{port}");
        let addr = tokio::net::lookup_host(lookup.clone())
            .await
            .map_err(|source| EngineError::Resolve {
                authority: lookup.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| EngineError::Resolve {
                authority: lookup,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            })?;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        Ok(Self {
            addr,
            authority: auth.as_str().to_string(),
            path,
        })
    }
}

/// What every request looks like.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// Method (`-X`).
    pub method: Method,
    /// Extra headers (`-H`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body (`--body` / `--body-file`).
    pub body: Bytes,
    /// Host header override (`--host`); the connection still goes to the URL's address.
    pub host: Option<String>,
    /// h2c with prior knowledge instead of HTTP/1.1.
    pub http2: bool,
}

impl Default for RequestSpec {
    fn default() -> Self {
        Self {
            method: Method::GET,
            headers: Vec::new(),
            body: Bytes::new(),
            host: None,
            http2: false,
        }
    }
}

/// Parses `Name: value`.
pub fn parse_header(h: &str) -> Result<(HeaderName, HeaderValue), EngineError> {
    let bad = || EngineError::Header {
        header: h.to_string(),
    };
    let (k, v) = h.split_once(':').ok_or_else(bad)?;
    let name = HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| bad())?;
    let value = HeaderValue::from_str(v.trim()).map_err(|_| bad())?;
    Ok((name, value))
}

/// Serializes an HTTP/1.1 request (Host first, then the other headers, then Content-Length when
/// there is a body or the method usually carries one).
pub fn serialize_h1(method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut put = |k: &str, v: &[u8]| {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    };
    if let Some(h) = headers.get(HOST) {
        put("Host", h.as_bytes());
    }
    for (k, v) in headers.iter().filter(|(k, _)| *k != HOST) {
        put(k.as_str(), v.as_bytes());
    }
    let needs_length =
        !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    if needs_length && !headers.contains_key(http::header::CONTENT_LENGTH) {
        put("content-length", body.len().to_string().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A prepared request: cheap to clone per send.
#[derive(Debug, Clone)]
pub struct Template {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    http2: bool,
    /// The whole HTTP/1.1 request, serialized once.
    raw: Bytes,
}

impl Template {
    /// Prepares requests for `target` as described by `spec`.
    pub fn new(target: &Target, spec: &RequestSpec) -> Result<Self, EngineError> {
        let authority = spec
            .host
            .clone()
            .unwrap_or_else(|| target.authority.clone());
        let bad_host = || EngineError::Option {
            what: "host",
            reason: format!("{authority:?} is not a valid authority"),
        };
        let uri: Uri = if spec.http2 {
            format!("http://{authority}{}", target.path)
                .parse()
                .map_err(|_| bad_host())?
        } else {
            target.path.parse().map_err(|_| EngineError::Url {
                url: target.path.clone(),
                reason: "invalid path".into(),
            })?
        };
        let mut headers = HeaderMap::new();
        if !spec.http2 {
            headers.insert(
                HOST,
                HeaderValue::from_str(&authority).map_err(|_| bad_host())?,
            );
        }
        for (k, v) in &spec.headers {
            if k == HOST {
                // -H 'Host: x' is the same as --host x.
                if !spec.http2 {
                    headers.insert(HOST, v.clone());
                }
                continue;
            }
            headers.append(k.clone(), v.clone());
        }
        let raw = serialize_h1(&spec.method, &target.path, &headers, &spec.body);
        Ok(Self {
            method: spec.method.clone(),
            uri,
            headers,
            body: spec.body.clone(),
            http2: spec.http2,
            raw,
        })
    }

    /// Builds one request.
    pub fn build(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }

    /// The serialized HTTP/1.1 request.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Whether requests are sent over h2c.
    pub fn is_http2(&self) -> bool {
        self.http2
    }
}

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

async fn try_exchange(
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
type Timer = Pin<Box<tokio::time::Sleep>>;

/// Sends on `slot`'s connection, reconnecting (once) if it was found closed before sending.
async fn send_with_reconnect(
    slot: &mut Option<Conn>,
    spec: &LoadSpec,
    tpl: &Template,
    timer: &mut Timer,
) -> Result<u16, ErrorKind> {
    for _ in 0..2 {
        let c = ensure_conn(slot, spec, tpl).await?;
        match try_exchange(c, tpl, spec.timeout, Some(timer)).await {
            Ok(s) => return Ok(s),
            Err(Fail::Kind(k)) => {
                *slot = None;
                return Err(k);
            }
            Err(Fail::Stale) => *slot = None,
        }
    }
    Err(ErrorKind::Io)
}

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

/// When the run stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this long (measured window, excluding warm-up).
    Duration(Duration),
    /// After this many requests (excluding warm-up).
    Requests(u64),
}

/// A load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Original URL (for the report).
    pub url: String,
    /// Resolved target.
    pub target: Target,
    /// Request shape.
    pub request: RequestSpec,
    /// Connections.
    pub connections: usize,
    /// HTTP/2 concurrent streams per connection (1 for HTTP/1.1).
    pub streams: usize,
    /// When to stop.
    pub stop: Stop,
    /// Open loop rate per second (None = closed loop).
    pub rate: Option<f64>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Warm-up, excluded from results.
    pub warmup: Duration,
    /// Print a live progress line on stderr (only when stdout is a terminal).
    pub progress: bool,
}

impl LoadSpec {
    /// A closed-loop spec with defaults (GET, 1 connection, 10 s, timeout 10 s).
    pub fn new(url: &str, target: Target) -> Self {
        Self {
            url: url.to_string(),
            target,
            request: RequestSpec::default(),
            connections: 1,
            streams: 1,
            stop: Stop::Duration(Duration::from_secs(10)),
            rate: None,
            timeout: Duration::from_secs(10),
            warmup: Duration::ZERO,
            progress: false,
        }
    }

    fn workers(&self) -> usize {
        let streams = if self.request.http2 {
            self.streams.max(1)
        } else {
            1
        };
        self.connections.max(1) * streams
    }
}

/// Open loop schedule: intended offset (from the schedule start) of global request `i`.
pub fn intended_offset(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// Open loop schedule: the request indices worker `k` of `workers` owns, below `limit`.
pub fn worker_indices(k: usize, workers: usize, limit: u64) -> impl Iterator<Item = u64> {
    (k as u64..limit).step_by(workers.max(1))
}

/// Number of requests in an open-loop window of `secs` seconds at `rate` (those with an intended
/// time strictly inside the window).
pub fn scheduled_in(window: Duration, rate: f64) -> u64 {
    (window.as_secs_f64() * rate).ceil() as u64
}

struct Shared {
    t0: Instant,
    measure_start: Instant,
    timeline: SharedTimeline,
    claimed: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
}

/// Runs the load and returns the report.
pub async fn run_load(spec: LoadSpec) -> Result<Report, EngineError> {
    Ok(run_load_detailed(spec).await?.0)
}

/// Runs the load and returns the report and the raw per-second data (with full histograms).
pub async fn run_load_detailed(spec: LoadSpec) -> Result<(Report, Vec<Second>), EngineError> {
    if spec.connections == 0 {
        return Err(EngineError::Option {
            what: "connections",
            reason: "must be at least 1".into(),
        });
    }
    if let Some(r) = spec.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(EngineError::Option {
                what: "rate",
                reason: format!("{r} is not a positive number"),
            });
        }
    }
    let tpl = Arc::new(Template::new(&spec.target, &spec.request)?);
    let workers = spec.workers();
    let t0 = Instant::now();
    // Open loop: the warm-up is a whole number of scheduled requests.
    let (warm_count, measure_start) = match spec.rate {
        Some(rate) => {
            let n = scheduled_in(spec.warmup, rate);
            (n, t0 + intended_offset(n, rate))
        }
        None => (0, t0 + spec.warmup),
    };
    let shared = Arc::new(Shared {
        t0,
        measure_start,
        timeline: Arc::default(),
        claimed: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let progress = if spec.progress && std::io::stdout().is_terminal() {
        Some(tokio::spawn(progress_line(shared.clone())))
    } else {
        None
    };
    let spec = Arc::new(spec);
    let mut tasks = Vec::with_capacity(workers);
    let mut h2_conns: Vec<Option<http2::SendRequest<Full<Bytes>>>> = vec![None; spec.connections];
    for k in 0..workers {
        let (spec, tpl, shared) = (spec.clone(), tpl.clone(), shared.clone());
        // HTTP/2: streams of one connection share it; it is opened lazily by its first worker.
        let conn_idx = k % spec.connections;
        let pre = if tpl.http2 && spec.streams > 1 {
            if h2_conns[conn_idx].is_none() {
                if let Ok(Conn::H2(s)) = connect(spec.target.addr, true, spec.timeout).await {
                    h2_conns[conn_idx] = Some(s);
                }
            }
            h2_conns[conn_idx].clone().map(Conn::H2)
        } else {
            None
        };
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::new(shared.timeline.clone());
            match spec.rate {
                None => closed_worker(&spec, &tpl, &shared, &mut rec, pre).await,
                Some(rate) => {
                    open_worker(
                        &spec, &tpl, &shared, &mut rec, pre, k, workers, rate, warm_count,
                    )
                    .await
                }
            }
            rec.flush();
            flush_progress(&shared, &mut rec);
            (rec, Instant::now())
        }));
    }
    let mut total = Recorder::new(shared.timeline.clone());
    let mut last = measure_start;
    for t in tasks {
        if let Ok((rec, end)) = t.await {
            total.merge(&rec);
            last = last.max(end);
        }
    }
    if let Some(p) = progress {
        p.abort();
        eprint!("\r\x1b[2K");
    }
    let window = match (spec.rate, spec.stop) {
        // Open loop with a duration: the schedule window, plus the drain of the last requests.
        (Some(_), Stop::Duration(d)) => d.max(last.saturating_duration_since(measure_start)),
        _ => last.saturating_duration_since(measure_start),
    };
    let timeline = shared
        .timeline
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let meta = ReportMeta {
        mode: if spec.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        url: spec.url.clone(),
        protocol: if tpl.http2 { "h2c" } else { "http/1.1" }.into(),
        connections: spec.connections,
        rate: spec.rate,
    };
    let report = Report::build(meta, &total, &timeline, window);
    Ok((report, timeline))
}

async fn progress_line(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut prev = 0;
    loop {
        tick.tick().await;
        let done = shared.done.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let el = shared.t0.elapsed().as_secs();
        let phase = if Instant::now() < shared.measure_start {
            " (warm-up)"
        } else {
            ""
        };
        eprint!(
            "\r\x1b[2K[{el:>4}s] {done} responses, {} req/s, {failed} errors{phase}",
            done - prev
        );
        prev = done;
    }
}

/// Records an outcome measured from `from` (start or intended time) to now.
fn record(
    shared: &Shared,
    rec: &mut Recorder,
    res: &Result<u16, ErrorKind>,
    from: Instant,
    measured: bool,
) {
    let now = Instant::now();
    // Progress counters are shared: update them in batches to keep cache lines quiet.
    match res {
        Ok(_) => rec.pending_done += 1,
        Err(_) => rec.pending_failed += 1,
    }
    if rec.pending_done + rec.pending_failed >= 64
        || now.saturating_duration_since(rec.progress_flushed) >= Duration::from_millis(200)
    {
        rec.progress_flushed = now;
        flush_progress(shared, rec);
    }
    if !measured {
        return;
    }
    let at = now.saturating_duration_since(shared.measure_start);
    match res {
        Ok(status) => rec.response(*status, now.saturating_duration_since(from), at),
        Err(kind) => rec.error(*kind, at),
    }
}

fn flush_progress(shared: &Shared, rec: &mut Recorder) {
    shared.done.fetch_add(rec.pending_done, Ordering::Relaxed);
    shared
        .failed
        .fetch_add(rec.pending_failed, Ordering::Relaxed);
    rec.pending_done = 0;
    rec.pending_failed = 0;
}

/// Gets a usable connection, opening one if needed.
async fn ensure_conn<'a>(
    slot: &'a mut Option<Conn>,
    spec: &LoadSpec,
    tpl: &Template,
) -> Result<&'a mut Conn, ErrorKind> {
    if slot.as_ref().is_some_and(|c| c.is_closed()) {
        *slot = None;
    }
    if slot.is_none() {
        *slot = Some(connect(spec.target.addr, tpl.http2, spec.timeout).await?);
    }
    Ok(slot.as_mut().expect("just set"))
}

const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

async fn closed_worker(
    spec: &LoadSpec,
    tpl: &Template,
    shared: &Shared,
    rec: &mut Recorder,
    mut conn: Option<Conn>,
) {
    let end = match spec.stop {
        Stop::Duration(d) => Some(shared.measure_start + d),
        Stop::Requests(_) => None,
    };
    let mut timer: Timer = Box::pin(tokio::time::sleep(spec.timeout));
    loop {
        let start = Instant::now();
        let measured = start >= shared.measure_start;
        if let Some(end) = end {
            if start >= end {
                break;
            }
        }
        if measured {
            if let Stop::Requests(n) = spec.stop {
                if shared.claimed.fetch_add(1, Ordering::Relaxed) >= n {
                    break;
                }
            }
        }
        if let Err(kind) = ensure_conn(&mut conn, spec, tpl).await {
            record(shared, rec, &Err(kind), start, measured);
            tokio::time::sleep(CONNECT_BACKOFF).await;
            continue;
        }
        if measured {
            rec.sent += 1;
        }
        let res = send_with_reconnect(&mut conn, spec, tpl, &mut timer).await;
        record(shared, rec, &res, start, measured);
    }
}

#[allow(clippy::too_many_arguments)]
async fn open_worker(
    spec: &LoadSpec,
    tpl: &Template,
    shared: &Shared,
    rec: &mut Recorder,
    mut conn: Option<Conn>,
    k: usize,
    workers: usize,
    rate: f64,
    warm_count: u64,
) {
    let limit = match spec.stop {
        Stop::Requests(n) => warm_count + n,
        Stop::Duration(d) => warm_count + scheduled_in(d, rate),
    };
    let deadline = match spec.stop {
        Stop::Duration(d) => Some(shared.measure_start + d),
        Stop::Requests(_) => None,
    };
    let mut timer: Timer = Box::pin(tokio::time::sleep(spec.timeout));
    let mut first = true;
    let mut indices = worker_indices(k, workers, limit);
    while let Some(i) = indices.next() {
        let intended = shared.t0 + intended_offset(i, rate);
        let measured = i >= warm_count;
        let now = Instant::now();
        if let Some(dl) = deadline {
            if now >= dl {
                // Out of time: everything left in our schedule was never sent.
                let left = 1 + indices.count() as u64;
                rec.unsent += left;
                break;
            }
        }
        if now < intended {
            tokio::time::sleep_until(intended).await;
        } else if !first && measured {
            // The previous request on this worker was still running at our intended time.
            rec.late += 1;
        }
        first = false;
        if let Err(kind) = ensure_conn(&mut conn, spec, tpl).await {
            record(shared, rec, &Err(kind), intended, measured);
            continue;
        }
        if measured {
            rec.sent += 1;
        }
        let res = send_with_reconnect(&mut conn, spec, tpl, &mut timer).await;
        record(shared, rec, &res, intended, measured);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_evenly_spaced_and_partitioned() {
        let rate = 2000.0;
        assert_eq!(intended_offset(0, rate), Duration::ZERO);
        assert_eq!(intended_offset(2000, rate), Duration::from_secs(1));
        assert_eq!(intended_offset(1, rate), Duration::from_micros(500));
        // 3 workers own disjoint, complete sets of indices.
        let mut all: Vec<u64> = (0..3).flat_map(|k| worker_indices(k, 3, 10)).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(worker_indices(1, 3, 10).collect::<Vec<_>>(), vec![1, 4, 7]);
        assert_eq!(scheduled_in(Duration::from_secs(2), 2000.0), 4000);
        assert_eq!(scheduled_in(Duration::from_millis(1), 1500.0), 2);
    }

    #[test]
    fn header_parsing() {
        let (k, v) = parse_header("X-Test:  hello world ").unwrap();
        assert_eq!(k.as_str(), "x-test");
        assert_eq!(v, "hello world");
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("bad name: x").is_err());
    }

    #[tokio::test]
    async fn h1_serialization() {
        let t = Target::resolve("http://127.0.0.1:8080/p?q=1")
            .await
            .unwrap();
        let spec = RequestSpec {
            headers: vec![
                parse_header("X-A: 1").unwrap(),
                parse_header("Host: other.local").unwrap(),
            ],
            ..Default::default()
        };
        let tpl = Template::new(&t, &spec).unwrap();
        assert_eq!(
            tpl.raw(),
            b"GET /p?q=1 HTTP/1.1\r\nHost: other.local\r\nx-a: 1\r\n\r\n"
        );
        let spec = RequestSpec {
            method: Method::POST,
            body: Bytes::from_static(b"{}"),
            ..Default::default()
        };
        let tpl = Template::new(&t, &spec).unwrap();
        assert_eq!(
            tpl.raw(),
            b"POST /p?q=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\ncontent-length: 2\r\n\r\n{}"
        );
    }

    #[tokio::test]
    async fn url_parsing() {
        let t = Target::resolve("http://127.0.0.1:8080/a?b=1")
            .await
            .unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/a?b=1");
        let t = Target::resolve("http://127.0.0.1").await.unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.path, "/");
        assert!(Target::resolve("https://127.0.0.1/").await.is_err());
        assert!(Target::resolve("127.0.0.1:80").await.is_err());
    }

    #[tokio::test]
    async fn template_sets_host_override() {
        let t = Target::resolve("http://127.0.0.1:8080/x").await.unwrap();
        let spec = RequestSpec {
            host: Some("app.local".into()),
            method: Method::POST,
            body: Bytes::from_static(b"hi"),
            ..Default::default()
        };
        let req = Template::new(&t, &spec).unwrap().build();
        assert_eq!(req.headers()[HOST], "app.local");
        assert_eq!(req.uri(), "/x");
        assert_eq!(req.method(), Method::POST);
        let spec2 = RequestSpec {
            http2: true,
            ..spec
        };
        let req = Template::new(&t, &spec2).unwrap().build();
        assert_eq!(req.uri(), "http://app.local/x");
        assert!(req.headers().get(HOST).is_none());
    }
}
