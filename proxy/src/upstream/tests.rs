//! The client against a scripted HTTP/1.1 server on loopback.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// The idle timeout of exchanges in these tests (none of them is meant to reach it).
const IDLE: Duration = Duration::from_secs(30);

/// Sends with `idle`, the rest of an answered upload on `tasks`, the phase at `phase`.
async fn send_in<B>(
    conn: UpstreamConn,
    head: &RequestHead,
    body: &mut RequestBody<B>,
    tasks: &TaskTracker,
    idle: Duration,
    phase: &watch::Receiver<Phase>,
) -> Result<Exchange, SendError<B::Error>>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display + Send,
{
    let ctx = Ctx { tasks, idle, phase };
    send(conn, head, body, &ctx).await
}

/// The idle timeout of the tests that are meant to reach it.
const SHORT_IDLE: Duration = Duration::from_millis(200);

/// An app that accepts one connection and then neither reads nor answers (for 30 s).
async fn silent_app() -> std::net::SocketAddr {
    let (listener, addr) = loopback().await;
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.expect("accept");
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    });
    addr
}

/// An app that reads one request head, answers `response` at once and then reads nothing,
/// holding the connection until the sender is used or dropped.
async fn answering_app(
    response: &'static [u8],
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (listener, addr) = loopback().await;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 4096];
        while find(&got, b"\r\n\r\n").is_none() {
            let n = s.read(&mut chunk).await.expect("read");
            got.extend_from_slice(&chunk[..n]);
        }
        s.write_all(response).await.expect("head");
        let _ = done_rx.await;
    });
    (addr, done_tx)
}

/// Sends `parts` with `body` to `addr` on a fresh connection, with [`SHORT_IDLE`].
async fn send_short_idle<B>(
    addr: std::net::SocketAddr,
    parts: &http::request::Parts,
    body: B,
) -> Result<Exchange, SendError<B::Error>>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display + Send,
{
    let c = UpstreamConn::new(TcpStream::connect(addr).await.expect("connect"));
    let mut body = RequestBody::new(body);
    let head = RequestHead::encode(parts, &body, false);
    send_in(
        c,
        &head,
        &mut body,
        &TaskTracker::new(),
        SHORT_IDLE,
        &running(),
    )
    .await
}

/// A phase channel that stays at `Running`.
fn running() -> watch::Receiver<Phase> {
    let (tx, rx) = watch::channel(Phase::Running);
    // Dropping the sender would look like `serve` gone (every phase reached).
    std::mem::forget(tx);
    rx
}

/// What the scripted server does with one request on a connection.
#[derive(Clone)]
enum Step {
    /// Reads a request, writes these bytes (one write).
    Respond(&'static [u8]),
    /// Reads a request, writes the first bytes, waits a little, writes the second.
    RespondThen(&'static [u8], &'static [u8]),
    /// Reads a request and closes without an answer.
    Hangup,
}

struct Script {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Every request received, as raw bytes.
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// A server whose n-th accepted connection plays `conns[n]`, then closes.
async fn scripted(conns: Vec<Vec<Step>>) -> Script {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (acc, reqs) = (Arc::clone(&accepted), Arc::clone(&requests));
    tokio::spawn(async move {
        for steps in conns {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            acc.fetch_add(1, Ordering::SeqCst);
            let reqs = Arc::clone(&reqs);
            tokio::spawn(async move {
                for step in steps {
                    let Some(req) = read_request(&mut s).await else {
                        return;
                    };
                    reqs.lock().unwrap().push(req);
                    match step {
                        Step::Respond(out) => s.write_all(out).await.expect("write"),
                        Step::RespondThen(first, then) => {
                            s.write_all(first).await.expect("write");
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            s.write_all(then).await.expect("write");
                        }
                        Step::Hangup => return,
                    }
                }
                // Let the client read everything before the close.
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    Script {
        addr,
        accepted,
        requests,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request (head, then a Content-Length or chunked body).
async fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&got, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|v| v.trim().parse::<usize>().expect("length"));
            let done = match length {
                Some(n) => got.len() >= end + 4 + n,
                None if head.contains("transfer-encoding: chunked") => {
                    got[end + 4..].ends_with(b"0\r\n\r\n")
                }
                None => true,
            };
            if done {
                return Some(got);
            }
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&chunk[..n]);
    }
}

/// A listener on a fresh loopback port, and its address.
async fn loopback() -> (TcpListener, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

async fn conn(script: &Script) -> UpstreamConn {
    UpstreamConn::new(TcpStream::connect(script.addr).await.expect("connect"))
}

fn parts(method: Method, upgrade: bool) -> http::request::Parts {
    let mut b = Request::builder()
        .method(method)
        .uri("/x?y=1")
        .header("host", "app.test");
    if upgrade {
        b = b.header("connection", "upgrade").header("upgrade", "test");
    }
    b.body(()).expect("request").into_parts().0
}

async fn send_with<B>(
    conn: UpstreamConn,
    method: Method,
    body: B,
) -> Result<Exchange, SendError<B::Error>>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display + Send,
{
    let mut body = RequestBody::new(body);
    let head = RequestHead::encode(&parts(method, false), &body, false);
    send_in(
        conn,
        &head,
        &mut body,
        &TaskTracker::new(),
        IDLE,
        &running(),
    )
    .await
}

async fn get(conn: UpstreamConn, method: Method) -> Result<Exchange, SendError<Infallible>> {
    send_with(conn, method, Empty::<Bytes>::new()).await
}

fn response<E: std::fmt::Debug>(x: Result<Exchange, SendError<E>>) -> Response<UpstreamBody> {
    match x.expect("exchange") {
        Exchange::Response(r) => r,
        Exchange::Switched(r, _) => panic!("unexpected switch: {}", r.status()),
    }
}

fn upstream_error<E: std::fmt::Debug>(x: Result<Exchange, SendError<E>>) -> UpstreamError {
    match x {
        Err(SendError::Upstream(e)) => e,
        Err(other) => panic!("expected an upstream error, got {other:?}"),
        Ok(_) => panic!("expected an upstream error, got a response"),
    }
}

/// The whole body and its trailers.
async fn collect(body: &mut UpstreamBody) -> Result<(Vec<u8>, Option<HeaderMap>), UpstreamError> {
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    Ok((data, trailers))
}

#[tokio::test]
async fn chunked_response_with_extensions_and_trailers_then_reuse() {
    let srv = scripted(vec![vec![
        Step::Respond(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-Sum: abc\r\n\r\n",
        ),
        Step::Respond(b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n0\r\n\r\n"),
    ]])
    .await;
    let mut resp = response(get(conn(&srv).await, Method::GET).await);
    assert_eq!(resp.status(), StatusCode::OK);
    let (data, trailers) = collect(resp.body_mut()).await.expect("body");
    assert_eq!(data, b"hello world");
    assert_eq!(trailers.expect("trailers")["x-sum"], "abc");
    let again = resp.body_mut().take_reusable().expect("reusable");
    let mut resp = response(get(again, Method::GET).await);
    let (data, trailers) = collect(resp.body_mut()).await.expect("body");
    assert!(data.is_empty() && trailers.is_none());
    assert!(resp.body_mut().take_reusable().is_some());
    assert_eq!(srv.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn hop_by_hop_response_fields_are_left_out_and_close_ends_reuse() {
    let srv = scripted(vec![vec![Step::Respond(
        b"HTTP/1.1 200 OK\r\nX-Drop: 1\r\nConnection: close, X-Drop\r\nKeep-Alive: timeout=5\r\nProxy-Agent: p\r\nX-Kept: yes\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )]])
    .await;
    let mut resp = response(get(conn(&srv).await, Method::GET).await);
    let names: Vec<&str> = resp.headers().keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-kept"], "hop-by-hop fields passed");
    assert_eq!(collect(resp.body_mut()).await.expect("body").0, b"ok");
    assert!(
        resp.body_mut().take_reusable().is_none(),
        "a `Connection: close` response was reused"
    );
}

#[tokio::test]
async fn content_length_response_and_the_request_as_written() {
    let srv = scripted(vec![vec![
        Step::Respond(
            b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello",
        ),
        Step::Respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ]])
    .await;
    let mut resp = response(get(conn(&srv).await, Method::GET).await);
    assert_eq!(resp.status(), StatusCode::CREATED);
    let xa: Vec<_> = resp.headers().get_all("x-a").iter().collect();
    assert_eq!(xa, ["1", "2"]);
    assert_eq!(resp.body().size_hint().exact(), Some(5));
    assert_eq!(collect(resp.body_mut()).await.expect("body").0, b"hello");
    let again = resp.body_mut().take_reusable().expect("reusable");
    let mut resp = response(get(again, Method::GET).await);
    assert_eq!(collect(resp.body_mut()).await.expect("body").0, b"ok");
    assert_eq!(srv.accepted.load(Ordering::SeqCst), 1);
    let reqs = srv.requests.lock().unwrap().clone();
    assert_eq!(reqs[0], b"GET /x?y=1 HTTP/1.1\r\nhost: app.test\r\n\r\n");
}

#[tokio::test]
async fn close_delimited_body_reads_to_close_and_is_not_reused() {
    let srv = scripted(vec![vec![Step::Respond(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it",
    )]])
    .await;
    let mut resp = response(get(conn(&srv).await, Method::GET).await);
    assert_eq!(
        collect(resp.body_mut()).await.expect("body").0,
        b"all of it"
    );
    assert!(resp.body_mut().take_reusable().is_none());
}

#[tokio::test]
async fn connection_close_and_http10_responses_are_not_reused() {
    let srv = scripted(vec![
        vec![Step::Respond(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        )],
        vec![Step::Respond(
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )],
    ])
    .await;
    for _ in 0..2 {
        let mut resp = response(get(conn(&srv).await, Method::GET).await);
        assert_eq!(collect(resp.body_mut()).await.expect("body").0, b"ok");
        assert!(resp.body_mut().take_reusable().is_none());
    }
}

#[tokio::test]
async fn head_204_and_304_have_no_body() {
    let srv = scripted(vec![vec![
        Step::Respond(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        Step::Respond(b"HTTP/1.1 204 No Content\r\n\r\n"),
        Step::Respond(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
        Step::Respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ]])
    .await;
    let mut c = conn(&srv).await;
    for (method, status) in [(Method::HEAD, 200), (Method::GET, 204), (Method::GET, 304)] {
        let mut resp = response(get(c, method).await);
        assert_eq!(resp.status().as_u16(), status);
        assert!(resp.body().is_end_stream(), "{status} has a body");
        c = resp.body_mut().take_reusable().expect("reusable");
    }
    // Nothing of the bodiless responses was taken for the next one.
    let mut resp = response(get(c, Method::GET).await);
    assert_eq!(collect(resp.body_mut()).await.expect("body").0, b"ok");
    assert_eq!(srv.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn interim_100_continue_is_skipped() {
    let srv = scripted(vec![vec![Step::RespondThen(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )]])
    .await;
    let mut resp = response(get(conn(&srv).await, Method::GET).await);
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("link").is_none());
    assert_eq!(collect(resp.body_mut()).await.expect("body").0, b"ok");
}

#[tokio::test]
async fn ambiguous_framing_is_refused() {
    let cases: [&'static [u8]; 5] = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    ];
    let srv = scripted(cases.iter().map(|c| vec![Step::Respond(c)]).collect()).await;
    for case in cases {
        let err = upstream_error(get(conn(&srv).await, Method::GET).await);
        assert!(
            matches!(err, UpstreamError::Framing(_)),
            "{}: {err}",
            String::from_utf8_lossy(case)
        );
        assert!(err.connection_failure().is_none());
    }
    // Repeated equal lengths are one length.
    let srv = scripted(vec![vec![Step::Respond(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
    )]])
    .await;
    let mut resp = response(get(conn(&srv).await, Method::GET).await);
    assert_eq!(collect(resp.body_mut()).await.expect("body").0, b"ok");
}

#[tokio::test]
async fn malformed_chunks_fail_the_body() {
    let srv = scripted(vec![
        vec![Step::Respond(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        )],
        vec![Step::Respond(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        )],
    ])
    .await;
    for _ in 0..2 {
        let mut resp = response(get(conn(&srv).await, Method::GET).await);
        let err = collect(resp.body_mut()).await.expect_err("bad chunks");
        assert!(matches!(err, UpstreamError::Framing(_)), "{err}");
        assert!(resp.body_mut().take_reusable().is_none());
    }
}

#[tokio::test]
async fn bytes_after_the_response_mean_the_connection_is_not_reused() {
    let srv = scripted(vec![
        vec![Step::Respond(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno",
        )],
        vec![Step::RespondThen(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"garbage",
        )],
    ])
    .await;
    // Arriving with the response.
    let mut resp = response(get(conn(&srv).await, Method::GET).await);
    assert_eq!(collect(resp.body_mut()).await.expect("body").0, b"ok");
    assert!(resp.body_mut().take_reusable().is_none());
    // Arriving later, while the connection idles in the pool.
    let mut resp = response(get(conn(&srv).await, Method::GET).await);
    assert_eq!(collect(resp.body_mut()).await.expect("body").0, b"ok");
    let mut idle = resp.body_mut().take_reusable().expect("clean so far");
    assert!(idle.is_idle_usable());
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert!(!idle.is_idle_usable(), "unsolicited bytes went unnoticed");
}

#[tokio::test]
async fn reused_connection_closed_by_the_app_is_stale_not_failed() {
    let srv = scripted(vec![
        // Closed while idle.
        vec![Step::Respond(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )],
        // Closed as the next request arrives (the keep-alive race).
        vec![
            Step::Respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            Step::Hangup,
        ],
        // Same, with a request body: that body is gone, no retry.
        vec![
            Step::Respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            Step::Hangup,
        ],
        // The fresh connection the request is retried on.
        vec![Step::Respond(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnew",
        )],
    ])
    .await;
    let reused = |srv: &Script| {
        let addr = srv.addr;
        async move {
            let c = UpstreamConn::new(TcpStream::connect(addr).await.expect("connect"));
            let mut resp = response(get(c, Method::GET).await);
            assert_eq!(collect(resp.body_mut()).await.expect("body").0, b"ok");
            resp.body_mut().take_reusable().expect("reusable")
        }
    };
    let mut idle = reused(&srv).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!idle.is_idle_usable(), "a closed connection looked usable");

    let raced = reused(&srv).await;
    assert!(matches!(
        get(raced, Method::GET).await,
        Err(SendError::Stale)
    ));

    let raced = reused(&srv).await;
    let err = upstream_error(send_with(raced, Method::POST, Full::new(Bytes::from("data"))).await);
    assert!(err.connection_failure().is_some(), "{err}");

    // A fresh connection answers the retried request.
    let mut resp = response(get(conn(&srv).await, Method::GET).await);
    assert_eq!(collect(resp.body_mut()).await.expect("body").0, b"new");
    assert_eq!(srv.accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn request_bodies_are_framed_by_length_or_chunked() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let srv = scripted(vec![vec![
        Step::Respond(ok),
        Step::Respond(ok),
        Step::Respond(ok),
    ]])
    .await;
    let mut c = conn(&srv).await;
    let mut resp = response(send_with(c, Method::PUT, Full::new(Bytes::from("abc"))).await);
    collect(resp.body_mut()).await.expect("body");
    c = resp.body_mut().take_reusable().expect("reusable");
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from("hello "))),
        Ok(Frame::data(Bytes::from("world"))),
    ];
    let stream = StreamBody::new(futures_util::stream::iter(frames));
    let mut resp = response(send_with(c, Method::POST, stream).await);
    collect(resp.body_mut()).await.expect("body");
    c = resp.body_mut().take_reusable().expect("reusable");
    let mut resp = response(get(c, Method::POST).await);
    collect(resp.body_mut()).await.expect("body");
    let reqs = srv.requests.lock().unwrap().clone();
    assert_eq!(
        String::from_utf8_lossy(&reqs[0]),
        "PUT /x?y=1 HTTP/1.1\r\nhost: app.test\r\ncontent-length: 3\r\n\r\nabc"
    );
    assert_eq!(
        String::from_utf8_lossy(&reqs[1]),
        "POST /x?y=1 HTTP/1.1\r\nhost: app.test\r\ntransfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&reqs[2]),
        "POST /x?y=1 HTTP/1.1\r\nhost: app.test\r\ncontent-length: 0\r\n\r\n"
    );
}

#[tokio::test]
async fn switching_protocols_keeps_the_bytes_after_the_head() {
    let srv = scripted(vec![
        vec![Step::Respond(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: upgrade\r\n\r\nEARLY",
        )],
        vec![Step::Respond(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")],
    ])
    .await;
    let mut body = RequestBody::new(Empty::<Bytes>::new());
    let head = RequestHead::encode(&parts(Method::GET, true), &body, true);
    match send_in(
        conn(&srv).await,
        &head,
        &mut body,
        &TaskTracker::new(),
        IDLE,
        &running(),
    )
    .await
    {
        Ok(Exchange::Switched(resp, c)) => {
            assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
            let (_, early) = c.into_parts().expect("whole connection");
            assert_eq!(&early[..], b"EARLY");
        }
        _ => panic!("no switch"),
    }
    // Not asked for: refused.
    let err = upstream_error(get(conn(&srv).await, Method::GET).await);
    assert!(matches!(err, UpstreamError::UnexpectedSwitch), "{err}");
}

#[tokio::test]
async fn oversized_head_and_early_close_are_errors() {
    static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let big = BIG.get_or_init(|| {
        let mut v = b"HTTP/1.1 200 OK\r\n".to_vec();
        while v.len() <= MAX_HEAD {
            v.extend_from_slice(b"X-Filler: ");
            v.extend_from_slice(&[b'a'; 2000]);
            v.extend_from_slice(b"\r\n");
        }
        v
    });
    let srv = scripted(vec![
        vec![Step::Respond(big)],
        vec![Step::Respond(b"HTTP/1.1 200 OK\r\nContent-Le")],
        vec![Step::Respond(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        )],
    ])
    .await;
    let err = upstream_error(get(conn(&srv).await, Method::GET).await);
    assert!(matches!(err, UpstreamError::HeadTooLarge { .. }), "{err}");
    // A fresh connection closed mid-head: a failure, not a stale connection.
    let err = upstream_error(get(conn(&srv).await, Method::GET).await);
    assert!(matches!(err, UpstreamError::Closed { .. }), "{err}");
    assert!(err.connection_failure().is_some());
    let mut resp = response(get(conn(&srv).await, Method::GET).await);
    let err = collect(resp.body_mut()).await.expect_err("truncated");
    assert!(matches!(err, UpstreamError::Closed { .. }), "{err}");
}

#[tokio::test]
async fn an_app_answering_before_the_body_is_sent_streams_both_ways() {
    // A full-duplex echo: the response head goes out at once, then every byte of the request
    // body comes back as it arrives. 16 MiB is far more than the sockets buffer, so sending
    // the whole body before reading the response would never finish.
    const TOTAL: usize = 16 << 20;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 << 10).expect("rcvbuf");
    socket.set_send_buffer_size(64 << 10).expect("sndbuf");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(8).expect("listen");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        let body_start = loop {
            let n = s.read(&mut chunk).await.expect("read");
            got.extend_from_slice(&chunk[..n]);
            if let Some(end) = find(&got, b"\r\n\r\n") {
                break end + 4;
            }
        };
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.expect("head");
        s.write_all(&got[body_start..]).await.expect("echo");
        let mut echoed = got.len() - body_start;
        while echoed < TOTAL {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "body cut short");
            s.write_all(&chunk[..n]).await.expect("echo");
            echoed += n;
        }
    });
    let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    let c = UpstreamConn::new(TcpStream::connect(addr).await.expect("connect"));
    let run = async {
        let mut resp =
            response(send_with(c, Method::POST, Full::new(Bytes::from(data.clone()))).await);
        assert_eq!(resp.status(), StatusCode::OK);
        let (echo, _) = collect(resp.body_mut()).await.expect("body");
        assert!(resp.body_mut().take_reusable().is_none());
        echo
    };
    let echo = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the exchange stalled");
    assert_eq!(echo.len(), TOTAL);
    assert!(echo == data, "echo differs");
}

#[tokio::test]
async fn the_rest_of_an_answered_upload_is_a_tracked_task() {
    // The app answers (a complete, empty response) as soon as the head arrives, then reads
    // the body. The proxy's shutdown waits on its tracker: the rest of the upload must be a
    // task there, or a shutdown would cut the body the app is still reading.
    const TOTAL: usize = 4 << 20;
    let (listener, addr) = loopback().await;
    let (got_tx, got_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        let body_start = loop {
            let n = s.read(&mut chunk).await.expect("read");
            got.extend_from_slice(&chunk[..n]);
            if let Some(end) = find(&got, b"\r\n\r\n") {
                break end + 4;
            }
        };
        s.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
            .await
            .expect("head");
        let mut read = got.len() - body_start;
        while read < TOTAL {
            // A slow reader: the upload outlives the response.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let n = s.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            read += n;
        }
        let _ = got_tx.send(read);
    });
    let data = Bytes::from(vec![7u8; TOTAL]);
    let tasks = TaskTracker::new();
    let c = UpstreamConn::new(TcpStream::connect(addr).await.expect("connect"));
    let mut body = RequestBody::new(Full::new(data));
    let head = RequestHead::encode(&parts(Method::POST, false), &body, false);
    let resp = response(send_in(c, &head, &mut body, &tasks, IDLE, &running()).await);
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    drop(resp);
    assert_eq!(tasks.len(), 1, "the upload is not on the tracker");
    tasks.close();
    tokio::time::timeout(Duration::from_secs(20), tasks.wait())
        .await
        .expect("the upload stalled");
    let read = tokio::time::timeout(Duration::from_secs(5), got_rx)
        .await
        .expect("the app did not finish")
        .expect("app task");
    assert_eq!(read, TOTAL, "the app got part of the body");
}

#[tokio::test]
async fn the_rest_of_an_answered_upload_is_dropped_when_the_app_stops_reading() {
    // The app answers at once and never reads the body. 32 MiB is far more than the sockets
    // buffer, so the upload task blocks on the write; after the idle timeout without progress
    // it must give up, or it (and a graceful shutdown waiting for it) would hang for ever.
    const TOTAL: usize = 32 << 20;
    let (addr, done_tx) =
        answering_app(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n").await;
    let tasks = TaskTracker::new();
    let c = UpstreamConn::new(TcpStream::connect(addr).await.expect("connect"));
    let mut body = RequestBody::new(Full::new(Bytes::from(vec![1u8; TOTAL])));
    let head = RequestHead::encode(&parts(Method::POST, false), &body, false);
    let resp = response(send_in(c, &head, &mut body, &tasks, SHORT_IDLE, &running()).await);
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    drop(resp);
    assert_eq!(tasks.len(), 1);
    tasks.close();
    tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .expect("the stalled upload was not dropped");
    let _ = done_tx.send(());
}

#[tokio::test]
async fn a_stalled_exchange_times_out_and_says_who_stalled() {
    // An app that reads the head and then nothing, answering never: the upload stops on the
    // app (its window full), so the timeout is the app's.
    let body = Full::new(Bytes::from(vec![1u8; 32 << 20]));
    let r = send_short_idle(silent_app().await, &parts(Method::POST, false), body).await;
    assert!(
        matches!(r, Err(SendError::TimedOut(Stall::AppReading))),
        "{:?}",
        r.err()
    );

    // A client whose body yields one chunk and then nothing: the timeout is the client's.
    let (listener, addr) = loopback().await;
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut sink = vec![0u8; 4096];
        while s.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    });
    let stalled = StreamBody::new(Box::pin(futures_util::stream::unfold(
        0u8,
        |i| async move {
            if i > 0 {
                std::future::pending::<()>().await;
            }
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"first"))),
                i + 1,
            ))
        },
    )));
    let r = send_short_idle(addr, &parts(Method::POST, false), stalled).await;
    assert!(
        matches!(r, Err(SendError::TimedOut(Stall::Client))),
        "{:?}",
        r.err()
    );
}

#[tokio::test]
async fn a_head_the_app_does_not_read_times_out_too() {
    // A head larger than the sockets' buffers (hyper's server accepts heads of hundreds of
    // KiB) to an app that reads nothing: the head's write is under the idle timeout too.
    let mut b = Request::builder().method(Method::GET).uri("/");
    let big = "x".repeat(8000);
    for i in 0..4000 {
        b = b.header(format!("x-big-{i}"), big.as_str());
    }
    let parts = b.body(()).expect("request").into_parts().0;
    let size = RequestHead::encode(&parts, &RequestBody::new(Empty::<Bytes>::new()), false)
        .bytes()
        .len();
    assert!(size > 30 << 20, "the head must outgrow the buffers");
    let r = send_short_idle(silent_app().await, &parts, Empty::<Bytes>::new()).await;
    assert!(
        matches!(r, Err(SendError::TimedOut(Stall::AppReading))),
        "{:?}",
        r.err()
    );
}

#[tokio::test]
async fn the_rest_of_an_answered_upload_stops_when_the_shutdown_grace_is_over() {
    // The app answers and stops reading; the idle timeout is long. At `Phase::Force` the
    // upload task must end at once, not hold the shutdown for the idle timeout.
    let (addr, done_tx) =
        answering_app(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n").await;
    let (phase_tx, phase) = watch::channel(Phase::Running);
    let tasks = TaskTracker::new();
    let c = UpstreamConn::new(TcpStream::connect(addr).await.expect("connect"));
    let mut body = RequestBody::new(Full::new(Bytes::from(vec![1u8; 32 << 20])));
    let head = RequestHead::encode(&parts(Method::POST, false), &body, false);
    let resp = response(send_in(c, &head, &mut body, &tasks, IDLE, &phase).await);
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    drop(resp);
    assert_eq!(tasks.len(), 1);
    tasks.close();
    phase_tx.send(Phase::Draining).expect("phase");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), tasks.wait())
            .await
            .is_err(),
        "the upload ended before the grace was over"
    );
    phase_tx.send(Phase::Force).expect("phase");
    tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .expect("the upload outlived the shutdown grace");
    let _ = done_tx.send(());
}
