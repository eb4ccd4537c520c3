//! Hostile clients: silent and slow connections, too many connections, broken framing,
//! absolute-form targets that disagree with `Host`, `CONNECT`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use hako_proxy::ProxyOptions;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const GRACE: Duration = Duration::from_secs(5);

async fn start(opts: ProxyOptions) -> (Harness, TestUpstream) {
    let up = TestUpstream::start().await;
    let h = Harness::start(vec![route("app", "app.test", None)], opts, GRACE).await;
    h.activator.set("app", serve_up(1, up.addr));
    (h, up)
}

/// Reads until the proxy closes the connection (or `limit` passes); returns what was read
/// and whether it was closed.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `raw` on a fresh connection and returns everything the proxy answered before it
/// closed the connection (at most 5 s).
async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    read_to_close(&mut s, Duration::from_secs(5)).await.0
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn connect_from(source: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(format!("{source}:0").parse().unwrap())?;
    sock.connect(to).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_after_the_header_timeout() {
    let (h, _up) = start(ProxyOptions {
        header_read_timeout: Duration::from_millis(300),
        ..ProxyOptions::default()
    })
    .await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let t = Instant::now();
    let (got, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "a connection that sends nothing must be closed");
    assert!(got.is_empty(), "{got}");
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    let report = h.stop().await;
    assert_eq!(report.timed_out, 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_head_is_closed_after_the_header_timeout() {
    let (h, up) = start(ProxyOptions {
        header_read_timeout: Duration::from_millis(500),
        ..ProxyOptions::default()
    })
    .await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let head = b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let t = Instant::now();
    let mut closed_after = None;
    for b in head.iter() {
        if s.write_all(&[*b]).await.is_err() {
            closed_after = Some(t.elapsed());
            break;
        }
        let mut probe = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(50), s.read(&mut probe)).await
        {
            closed_after = Some(t.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the trickled head was accepted in full");
    assert!(
        closed_after >= Duration::from_millis(450),
        "{closed_after:?}"
    );
    assert!(closed_after < Duration::from_secs(3), "{closed_after:?}");
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_idles_for_the_idle_timeout_not_the_header_timeout() {
    let (h, _up) = start(ProxyOptions {
        header_read_timeout: Duration::from_millis(300),
        client_idle_timeout: Duration::from_millis(1500),
        ..ProxyOptions::default()
    })
    .await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let req = b"GET /one HTTP/1.1\r\nHost: app.test\r\n\r\n";
    s.write_all(req).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = [0u8; 9];
    s.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"hello /on");
    let mut rest = [0u8; 1];
    s.read_exact(&mut rest).await.unwrap();
    // Longer than the header timeout, shorter than the idle timeout: still open.
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.write_all(b"GET /two HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "second request on the idle connection: {head:?}"
    );
    let mut body = [0u8; 10];
    s.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"hello /two");
    let t = Instant::now();
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "idle keep-alive connection must be closed");
    assert!(
        t.elapsed() >= Duration::from_millis(1300),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connection_is_closed() {
    let (h, _up) = start(ProxyOptions {
        header_read_timeout: Duration::from_millis(300),
        client_idle_timeout: Duration::from_millis(600),
        ..ProxyOptions::default()
    })
    .await;
    let stream = TcpStream::connect(h.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::get("http://app.test/h2")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let (status, _, body) = collect(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello /h2");
    // The connection ends by itself once it has had no stream for the idle timeout.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "idle h2 connection still open after 5 s");
    let report = h.stop().await;
    assert_eq!(report.timed_out, 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_client_limit_are_closed_while_others_are_served() {
    let (h, _up) = start(ProxyOptions {
        max_connections_per_client: 3,
        ..ProxyOptions::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.1", h.addr).await.unwrap());
    }
    // The fourth from the same address is closed at once.
    let mut extra = connect_from("127.0.0.1", h.addr).await.unwrap();
    let _ = extra
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let (got, closed) = read_to_close(&mut extra, Duration::from_secs(5)).await;
    assert!(closed && got.is_empty(), "closed={closed} got={got:?}");

    // Another address is served meanwhile.
    let mut other = connect_from("127.0.0.2", h.addr).await.unwrap();
    other
        .write_all(b"GET /other HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (got, _) = read_to_close(&mut other, Duration::from_secs(5)).await;
    assert_eq!(status_of(&got), 200, "{got}");
    assert!(got.ends_with("hello /other"), "{got}");

    // A held connection is served, and closing one makes room again.
    let mut first = held.remove(0);
    first
        .write_all(b"GET /held HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (got, _) = read_to_close(&mut first, Duration::from_secs(5)).await;
    assert_eq!(status_of(&got), 200, "{got}");
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        let mut s = connect_from("127.0.0.1", h.addr).await.unwrap();
        s.write_all(b"GET /again HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (got, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
        if status_of(&got) == 200 {
            again = Some(got);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        again.is_some(),
        "a slot freed by a closed connection is reused"
    );
    drop(held);
    let report = h.stop().await;
    assert!(report.refused >= 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_body_is_400_and_not_an_upstream_failure() {
    let (h, _up) = start(ProxyOptions::default()).await;
    let answer = exchange(
        h.addr,
        b"POST /sink HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          4\r\nabcd\r\nzz-not-hex\r\nxxxx\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(answer.contains("invalid request body"), "{answer}");
    assert!(
        eventually(|| h.activator.records() == vec![(Some("app".into()), 400)]).await,
        "{:?}",
        h.activator.records()
    );
    assert!(
        h.activator.failures.lock().unwrap().is_empty(),
        "the instance was blamed: {:?}",
        h.activator.failures.lock().unwrap()
    );
    // The app still serves.
    let (status, _, body) = h.get("app.test", "/after").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello /after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_authority_replaces_host() {
    let up = TestUpstream::start().await;
    let h = Harness::start(
        vec![
            route("app", "app.test", None),
            route("other", "other.test", None),
        ],
        ProxyOptions::default(),
        GRACE,
    )
    .await;
    h.activator.set("app", serve_up(1, up.addr));
    let answer = exchange(
        h.addr,
        b"GET http://app.test/headers HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("\nhost: app.test\n"), "{answer}");
    assert!(!lower.contains("other.test"), "{answer}");
    assert_eq!(
        h.activator.records(),
        vec![(Some("app".into()), 200)],
        "routed by the authority"
    );

    // userinfo in the authority is refused.
    let answer = exchange(
        h.addr,
        b"GET http://other.test@app.test/ HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_405_with_allow_and_never_forwarded() {
    let (h, up) = start(ProxyOptions::default()).await;
    let answer = exchange(
        h.addr,
        b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 405, "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("\r\nallow: get, head, post"), "{answer}");
    assert_eq!(h.activator.acquired.load(Ordering::SeqCst), 0);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 0);
}
