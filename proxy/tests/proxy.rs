//! End-to-end behaviour of the proxy against local upstreams and a fake supervisor.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use hako_proxy::{ActivateError, ProxyOptions};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GRACE: Duration = Duration::from_secs(5);

async fn harness_with_app() -> (Harness, TestUpstream) {
    let up = TestUpstream::start().await;
    let h = Harness::start(
        vec![route("app", "app.test", None)],
        ProxyOptions::default(),
        GRACE,
    )
    .await;
    h.activator.set("app", serve_up(1, up.addr));
    (h, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_to_routed_app() {
    let (h, _up) = harness_with_app().await;
    let (status, _, body) = h.get("App.Test:8080", "/some/path?q=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello /some/path");
    assert!(eventually(|| h.activator.records() == vec![(Some("app".into()), 200)]).await);
    assert_eq!(h.activator.live(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_routed_by_authority() {
    let (h, _up) = harness_with_app().await;
    let (status, body) = h2_get(h.addr, "http://app.test/h2path").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello /h2path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_host_is_400_and_unknown_host_404() {
    let (h, _up) = harness_with_app().await;
    let mut c = h.client().await;
    let resp = c.send(Request::get("/").body(empty()).unwrap()).await;
    let (status, headers, body) = collect(resp).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("Host"), "{body}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));

    let (status, _, body) = h.get("nobody.test", "/x").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("nobody.test"), "{body}");

    // Neither request reached the supervisor; both were recorded without an app.
    assert_eq!(h.activator.acquired.load(Ordering::SeqCst), 0);
    assert!(eventually(|| h.activator.records() == vec![(None, 400), (None, 404)]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activate_errors_map_to_statuses() {
    let h = Harness::start(
        vec![
            route("gone", "gone.test", None),
            route("boot", "boot.test", None),
            route("busy", "busy.test", None),
            route("slow", "slow.test", None),
            route("bye", "bye.test", None),
        ],
        ProxyOptions::default(),
        GRACE,
    )
    .await;
    let a = &h.activator;
    a.set(
        "boot",
        Behaviour::Fail(ActivateError::BootFailed {
            app: "boot".into(),
            reason: "exec /app: no such file".into(),
        }),
    );
    a.set(
        "busy",
        Behaviour::Fail(ActivateError::QueueFull {
            app: "busy".into(),
            retry_after: Duration::from_millis(1200),
        }),
    );
    a.set(
        "slow",
        Behaviour::Fail(ActivateError::NotReady {
            app: "slow".into(),
            waited: Duration::from_secs(3),
        }),
    );
    a.set("bye", Behaviour::Fail(ActivateError::ShuttingDown));

    let (s, _, body) = h.get("gone.test", "/").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");

    let (s, _, body) = h.get("boot.test", "/").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(
        body.contains("boot") && body.contains("exec /app: no such file"),
        "{body}"
    );

    let (s, headers, body) = h.get("busy.test", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "2", "{body}");

    let (s, _, body) = h.get("slow.test", "/").await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains("slow"), "{body}");

    let (s, _, _) = h.get("bye.test", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);

    assert!(
        eventually(|| {
            h.activator.records()
                == vec![
                    (Some("gone".into()), 404),
                    (Some("boot".into()), 502),
                    (Some("busy".into()), 503),
                    (Some("slow".into()), 504),
                    (Some("bye".into()), 503),
                ]
        })
        .await,
        "{:?}",
        h.activator.records()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_failure_is_502_and_reported() {
    // A port with nothing listening: bind, note the address, close.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let h = Harness::start(
        vec![route("down", "down.test", None)],
        ProxyOptions::default(),
        GRACE,
    )
    .await;
    h.activator.set("down", serve_up(77, addr));
    let (s, _, body) = h.get("down.test", "/").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(body.contains("down") && body.contains("connect"), "{body}");
    let failures = h.activator.failures.lock().unwrap().clone();
    // A refused connect is retried once with a fresh lease (the instance may just have died);
    // this activator hands out the same dead upstream again, so both attempts are reported.
    assert_eq!(
        failures,
        vec![
            (77, std::io::ErrorKind::ConnectionRefused),
            (77, std::io::ErrorKind::ConnectionRefused)
        ]
    );
    assert!(eventually(|| h.activator.records() == vec![(Some("down".into()), 502)]).await);
    assert_eq!(h.activator.live(), 0);
}

/// One app on a fresh upstream, with `upstream_timeout` set to `timeout`.
async fn harness_with_upstream_timeout(timeout: Duration) -> (Harness, TestUpstream) {
    let up = TestUpstream::start().await;
    let opts = ProxyOptions {
        upstream_timeout: timeout,
        ..ProxyOptions::default()
    };
    let h = Harness::start(vec![route("app", "app.test", None)], opts, GRACE).await;
    h.activator.set("app", serve_up(1, up.addr));
    (h, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_header_timeout_is_504() {
    let (h, _up) = harness_with_upstream_timeout(Duration::from_millis(200)).await;
    let (s, _, body) = h.get("app.test", "/sleep?ms=2000").await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains("app"), "{body}");
    assert!(eventually(|| h.activator.live() == 0).await);
    // A timeout is not a crash: the supervisor is not told the instance failed.
    assert!(h.activator.failures.lock().unwrap().is_empty());
}

/// `total` pattern bytes in `chunks` chunks, `gap` apart; with `stall`, the body never ends
/// after the first chunk (a client that stops sending mid-upload).
fn paced_body(total: u64, chunks: u64, gap: Duration, stall: bool) -> TestBody {
    let size = total / chunks;
    let s = futures_util::stream::unfold(0u64, move |i| async move {
        if i >= chunks {
            return None;
        }
        if i > 0 {
            if stall {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(gap).await;
        }
        let chunk: Vec<u8> = (i * size..(i + 1) * size).map(pattern_byte).collect();
        Some((
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(
                bytes::Bytes::from(chunk),
            )),
            i + 1,
        ))
    });
    http_body_util::StreamBody::new(s).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_longer_than_the_upstream_timeout_passes_while_it_moves() {
    // upstream_timeout bounds the time without progress, not the exchange: ten chunks 100 ms
    // apart take about 1 s, over three times the timeout, and must reach the app whole.
    let (h, _up) = harness_with_upstream_timeout(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let mut c = h.client().await;
    let req = Request::post("/sink")
        .header("host", "app.test")
        .body(paced_body(10 * 1000, 10, Duration::from_millis(100), false))
        .unwrap();
    let (s, _, body) = collect(c.send(req).await).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body, "ok 10000");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(h.activator.failures.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_its_upload_gets_408_and_the_app_is_not_blamed() {
    let (h, _up) = harness_with_upstream_timeout(Duration::from_millis(300)).await;
    let mut c = h.client().await;
    let req = Request::post("/sink")
        .header("host", "app.test")
        .body(paced_body(10 * 1000, 10, Duration::from_millis(100), true))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.send(req))
        .await
        .expect("no answer to a stalled upload");
    let (s, headers, body) = collect(resp).await;
    assert_eq!(s, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert!(body.contains("no request body bytes"), "{body}");
    assert_eq!(
        headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    assert!(eventually(|| h.activator.records() == vec![(Some("app".into()), 408)]).await);
    assert!(eventually(|| h.activator.live() == 0).await);
    // The client stalled, not the app: the supervisor hears nothing about the instance.
    assert!(h.activator.failures.lock().unwrap().is_empty());
}

/// `workers` proxy workers, one app on a fresh upstream.
async fn harness_with_workers(workers: usize) -> (Harness, TestUpstream) {
    let up = TestUpstream::start().await;
    let opts = ProxyOptions {
        workers,
        ..ProxyOptions::default()
    };
    let h = Harness::start(vec![route("app", "app.test", None)], opts, GRACE).await;
    h.activator.set("app", serve_up(1, up.addr));
    (h, up)
}

/// Ten requests on one client connection, then ten on fresh client connections.
async fn sequential_requests(h: &Harness) {
    // Same client connection...
    let mut c = h.client().await;
    for i in 0..10 {
        let resp = c.send(get_req("app.test", &format!("/n{i}"))).await;
        let (s, _, body) = collect(resp).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body, format!("hello /n{i}"));
    }
    // ...and fresh client connections.
    for i in 0..10 {
        let (s, _, _) = h.get("app.test", &format!("/m{i}")).await;
        assert_eq!(s, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_upstream_connection() {
    let (h, up) = harness_with_workers(1).await;
    sequential_requests(&h).await;
    // One worker: every request went over the one pooled upstream connection.
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    assert!(eventually(|| h.activator.records().len() == 20).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_reuses_its_own_upstream_connection() {
    let (h, up) = harness_with_workers(3).await;
    sequential_requests(&h).await;
    // Every worker pools its own connections: sequential requests spread over the workers
    // open at most one upstream connection each, and all are answered.
    let opened = up.accepted.load(Ordering::SeqCst);
    assert!((1..=3).contains(&opened), "{opened} upstream connections");
    assert!(eventually(|| h.activator.records().len() == 20).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_open_parallel_connections_then_reuse_them() {
    let (h, up) = harness_with_app().await;
    let addr = h.addr;
    let run = |n: usize| async move {
        let mut tasks = Vec::new();
        for i in 0..n {
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                let resp = c
                    .send(get_req("app.test", &format!("/slow?chunks=2&ms=100&i={i}")))
                    .await;
                collect(resp).await.0
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), StatusCode::OK);
        }
    };
    run(4).await;
    let first = up.accepted.load(Ordering::SeqCst);
    assert_eq!(
        first, 4,
        "4 overlapping requests need 4 upstream connections"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    run(4).await;
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        4,
        "second wave reuses the pool"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_and_hop_by_hop_stripping() {
    let (h, _up) = harness_with_app().await;
    let mut c = h.client().await;
    let req = Request::get("/headers")
        .header("host", "app.test:8080")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-secret-hop")
        .header("x-secret-hop", "must-not-pass")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9v")
        .header("te", "trailers")
        .header("x-end-to-end", "passes")
        .body(empty())
        .unwrap();
    let (s, headers, body) = collect(c.send(req).await).await;
    assert_eq!(s, StatusCode::OK);
    let seen: Vec<&str> = body.lines().collect();
    assert!(
        seen.contains(&"x-forwarded-for: 203.0.113.9, 127.0.0.1"),
        "{body}"
    );
    assert!(seen.contains(&"x-forwarded-proto: http"), "{body}");
    assert!(seen.contains(&"x-forwarded-host: app.test:8080"), "{body}");
    assert!(seen.contains(&"host: app.test:8080"), "{body}");
    assert!(seen.contains(&"x-end-to-end: passes"), "{body}");
    for hop in [
        "x-secret-hop",
        "keep-alive",
        "proxy-authorization",
        "te:",
        "upgrade",
    ] {
        assert!(!body.contains(hop), "{hop} reached upstream: {body}");
    }
    // Response side: the upstream's hop-by-hop headers do not reach the client.
    assert_eq!(headers["x-kept"], "yes");
    assert!(!headers.contains_key("x-drop-me"), "{headers:?}");
    assert!(!headers.contains_key("keep-alive"), "{headers:?}");
    assert!(!headers.contains_key("proxy-agent"), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_held_until_streamed_body_finished() {
    let (h, _up) = harness_with_app().await;
    let mut c = h.client().await;
    let resp = c.send(get_req("app.test", "/slow?chunks=5&ms=150")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = String::new();
    let mut frames = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            got.push_str(std::str::from_utf8(&d).unwrap());
            frames += 1;
            if !got.ends_with("chunk4;") {
                assert_eq!(
                    h.activator.live(),
                    1,
                    "lease released before the body ended"
                );
                assert!(
                    h.activator.records().is_empty(),
                    "recorded before the body ended"
                );
            }
        }
    }
    assert!(frames >= 2);
    assert_eq!(got, "chunk0;chunk1;chunk2;chunk3;chunk4;");
    assert!(eventually(|| h.activator.live() == 0).await);
    assert!(eventually(|| h.activator.records() == vec![(Some("app".into()), 200)]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_going_away_releases_lease_and_records_once() {
    let (h, _up) = harness_with_app().await;
    {
        let mut c = h.client().await;
        let resp = c.send(get_req("app.test", "/slow?chunks=50&ms=50")).await;
        let mut body = resp.into_body();
        let _ = body.frame().await;
        assert_eq!(h.activator.live(), 1);
        // Dropping body and client closes the connection mid-stream.
    }
    assert!(eventually(|| h.activator.live() == 0).await, "lease leaked");
    assert!(eventually(|| h.activator.records().len() == 1).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.activator.records(), vec![(Some("app".into()), 200)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_tunnel_echoes_and_holds_lease() {
    let ws = TestUpstream::start_ws_echo().await;
    let h = Harness::start(
        vec![route("ws", "ws.test", None)],
        ProxyOptions::default(),
        GRACE,
    )
    .await;
    h.activator.set("ws", serve_up(9, ws.addr));

    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    for msg in [&b"ping"[..], b"hello tunnel", &[0u8, 255, 10, 13][..]] {
        s.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg);
    }
    assert_eq!(
        h.activator.live(),
        1,
        "lease must be held while the tunnel is open"
    );
    assert!(h.activator.records().is_empty());
    drop(s);
    assert!(eventually(|| h.activator.live() == 0).await);
    assert!(eventually(|| h.activator.records() == vec![(Some("ws".into()), 101)]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_and_refuses_new() {
    let (mut h, _up) = harness_with_app().await;
    let addr = h.addr;
    let mut c = h.client().await;
    let resp = c.send(get_req("app.test", "/slow?chunks=6&ms=100")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // An idle keep-alive client connection, open before shutdown.
    let mut idle = h.client().await;
    let _ = collect(idle.send(get_req("app.test", "/warm")).await).await;

    h.trigger_shutdown();
    let refused = eventually(|| {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_err()
    })
    .await;
    assert!(
        refused,
        "new connections must be refused once shutdown began"
    );

    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"chunk0;chunk1;chunk2;chunk3;chunk4;chunk5;");
    let report = tokio::time::timeout(Duration::from_secs(4), h.task.take().unwrap())
        .await
        .expect("serve returns once in-flight work is done, before grace")
        .unwrap()
        .unwrap();
    assert_eq!(report.forced_closes, 0, "{report:?}");
    assert_eq!(report.completed_during_drain, 1, "{report:?}");
    assert_eq!(report.requests, 2, "{report:?}");
    assert_eq!(report.connections, 2, "{report:?}");
    assert_eq!(h.activator.live(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_force_closes_after_grace() {
    let up = TestUpstream::start().await;
    let mut h = Harness::start(
        vec![route("app", "app.test", None)],
        ProxyOptions::default(),
        Duration::from_millis(200),
    )
    .await;
    h.activator.set("app", serve_up(1, up.addr));
    let mut c = h.client().await;
    let resp = c.send(get_req("app.test", "/slow?chunks=100&ms=100")).await;
    h.trigger_shutdown();
    let report = h.task.take().unwrap().await.unwrap().unwrap();
    assert_eq!(report.forced_closes, 1, "{report:?}");
    // The client sees a truncated body (error), not a complete one.
    assert!(resp.into_body().collect().await.is_err());
    assert!(eventually(|| h.activator.live() == 0).await);
    assert!(eventually(|| h.activator.records().len() == 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_without_response_is_502_and_reported() {
    let up = TestUpstream::start_raw(RawMode::CloseImmediately).await;
    let h = Harness::start(
        vec![route("app", "app.test", None)],
        ProxyOptions::default(),
        GRACE,
    )
    .await;
    h.activator.set("app", serve_up(5, up.addr));
    let (s, _, body) = h.get("app.test", "/").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(body.contains("app"), "{body}");
    assert_eq!(h.activator.failures.lock().unwrap().len(), 1);
    assert_eq!(h.activator.failures.lock().unwrap()[0].0, 5);
    assert!(eventually(|| h.activator.records() == vec![(Some("app".into()), 502)]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dying_mid_body_truncates_and_is_reported() {
    let up = TestUpstream::start_raw(RawMode::Truncate).await;
    let h = Harness::start(
        vec![route("app", "app.test", None)],
        ProxyOptions::default(),
        GRACE,
    )
    .await;
    h.activator.set("app", serve_up(6, up.addr));
    let mut c = h.client().await;
    let resp = c.send(get_req("app.test", "/")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.into_body().collect().await.is_err(),
        "truncation must reach the client"
    );
    assert!(eventually(|| h.activator.live() == 0).await);
    assert!(eventually(|| h.activator.records() == vec![(Some("app".into()), 200)]).await);
    let failures = h.activator.failures.lock().unwrap().clone();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].0, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_is_not_an_error() {
    let up = TestUpstream::start_raw(RawMode::OneShot).await;
    let h = Harness::start(
        vec![route("app", "app.test", None)],
        ProxyOptions::default(),
        GRACE,
    )
    .await;
    h.activator.set("app", serve_up(7, up.addr));
    for _ in 0..5 {
        let (s, _, body) = h.get("app.test", "/").await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "ok"));
        // Let the upstream's close land, so the pooled connection is stale, not busy.
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 5);
    assert!(h.activator.failures.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connection_closed_as_the_request_arrives_is_retried_on_a_fresh_one() {
    let up = TestUpstream::start_raw(RawMode::CloseOnSecond).await;
    let h = Harness::start(
        vec![route("app", "app.test", None)],
        ProxyOptions {
            workers: 1,
            ..ProxyOptions::default()
        },
        GRACE,
    )
    .await;
    h.activator.set("app", serve_up(7, up.addr));
    for _ in 0..4 {
        // Every request after the first goes out on the pooled connection, which the app
        // closes on reading it: the proxy retries on a new connection, unseen by the client.
        let (s, _, body) = h.get("app.test", "/").await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "ok"));
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 4);
    assert!(h.activator.failures.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_headers_are_cut_off() {
    let opts = ProxyOptions {
        header_read_timeout: Duration::from_millis(300),
        ..ProxyOptions::default()
    };
    let h = Harness::start(vec![route("app", "app.test", None)], opts, GRACE).await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app.te")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "connection with incomplete headers must be closed"
    );
    assert_eq!(h.activator.acquired.load(Ordering::SeqCst), 0);
}
