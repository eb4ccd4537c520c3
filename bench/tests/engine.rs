//! Engine behaviour against in-process servers: counts, error kinds, open-loop rate.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use hako_bench::engine::{run_load, LoadSpec, Stop, Target};

async fn spec(addr: std::net::SocketAddr) -> LoadSpec {
    let url = format!("http://{addr}/");
    let t = Target::resolve(&url).await.unwrap();
    LoadSpec::new(&url, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_counts_exact_requests() {
    let (addr, served) = common::status_server(200).await;
    let mut s = spec(addr).await;
    s.connections = 4;
    s.stop = Stop::Requests(500);
    let r = run_load(s).await.unwrap();
    assert_eq!(r.requests, 500);
    assert_eq!(r.responses, 500);
    assert_eq!(r.errors, 0);
    assert_eq!(r.status_counts["200"], 500);
    assert_eq!(served.load(Ordering::Relaxed), 500);
    assert!(r.rps > 0.0);
    assert!(r.latency_ms.p50 > 0.0 && r.latency_ms.p50 <= r.latency_ms.p99);
    assert!(r.latency_ms.p99 <= r.latency_ms.max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_is_excluded() {
    let (addr, served) = common::status_server(200).await;
    let mut s = spec(addr).await;
    s.connections = 2;
    s.warmup = Duration::from_millis(300);
    s.stop = Stop::Requests(200);
    let r = run_load(s).await.unwrap();
    assert_eq!(r.responses, 200);
    // The server saw the warm-up requests too.
    assert!(served.load(Ordering::Relaxed) > 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_5xx_and_4xx() {
    let (addr, _) = common::status_server(500).await;
    let mut s = spec(addr).await;
    s.connections = 2;
    s.stop = Stop::Requests(100);
    let r = run_load(s).await.unwrap();
    assert_eq!(r.responses, 100);
    assert_eq!(r.errors, 100);
    assert_eq!(r.errors_by_kind.status_5xx, 100);
    assert_eq!(r.status_counts["500"], 100);

    let (addr, _) = common::status_server(404).await;
    let mut s = spec(addr).await;
    s.stop = Stop::Requests(10);
    let r = run_load(s).await.unwrap();
    assert_eq!(r.errors_by_kind.status_4xx, 10);
    assert_eq!(r.errors_by_kind.status_5xx, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_resets_as_io_errors() {
    let addr = common::reset_server().await;
    let mut s = spec(addr).await;
    s.connections = 2;
    s.stop = Stop::Requests(50);
    let r = run_load(s).await.unwrap();
    assert_eq!(r.requests, 50);
    assert_eq!(r.responses, 0);
    assert_eq!(r.errors_by_kind.io, 50, "{:?}", r.errors_by_kind);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stalls_as_timeouts() {
    let addr = common::stall_server().await;
    let mut s = spec(addr).await;
    s.connections = 3;
    s.timeout = Duration::from_millis(200);
    s.stop = Stop::Requests(6);
    let r = run_load(s).await.unwrap();
    assert_eq!(r.requests, 6);
    assert_eq!(r.errors_by_kind.timeout, 6);
    assert_eq!(r.responses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_connect_errors() {
    let addr = common::closed_port().await;
    let mut s = spec(addr).await;
    s.stop = Stop::Requests(5);
    let r = run_load(s).await.unwrap();
    assert_eq!(r.errors_by_kind.connect, 5);
    assert_eq!(r.errors, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_rate_matches_schedule() {
    let (addr, served) = common::status_server(200).await;
    let mut s = spec(addr).await;
    s.connections = 8;
    s.rate = Some(2000.0);
    s.stop = Stop::Duration(Duration::from_secs(2));
    let r = run_load(s).await.unwrap();
    // The schedule is deterministic: 2 s at 2000/s is 4000 intended sends.
    assert_eq!(
        r.sent + r.unsent,
        4000,
        "sent {} unsent {}",
        r.sent,
        r.unsent
    );
    assert_eq!(r.responses, r.sent);
    assert_eq!(served.load(Ordering::Relaxed), r.sent);
    let achieved = r.responses as f64 / r.duration_s;
    assert!(
        (achieved - 2000.0).abs() / 2000.0 < 0.05,
        "achieved {achieved}/s over {}s",
        r.duration_s
    );
    assert_eq!(r.mode, "open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_latency_includes_stall_time() {
    // One connection, 100/s, server stalls: every request after the first waits for the
    // previous one's timeout, so latencies from the intended time grow beyond the timeout.
    let addr = common::stall_server().await;
    let mut s = spec(addr).await;
    s.rate = Some(100.0);
    s.timeout = Duration::from_millis(100);
    s.stop = Stop::Requests(5);
    let r = run_load(s).await.unwrap();
    assert_eq!(r.errors_by_kind.timeout, 5);
    assert_eq!(r.late, 4, "requests that could not start on time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_host_override() {
    let (addr, served) = common::status_server(200).await;
    let mut s = spec(addr).await;
    s.request.http2 = true;
    s.request.host = Some("app.local".into());
    s.connections = 2;
    s.streams = 4;
    s.stop = Stop::Requests(200);
    let r = run_load(s).await.unwrap();
    assert_eq!(r.responses, 200, "{:?}", r.errors_by_kind);
    assert_eq!(r.protocol, "h2c");
    assert_eq!(served.load(Ordering::Relaxed), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_override_reaches_server_h1_and_h2() {
    let addr = common::host_server("app.local").await;
    for http2 in [false, true] {
        let mut s = spec(addr).await;
        s.request.http2 = http2;
        s.stop = Stop::Requests(20);
        let r = run_load(s.clone()).await.unwrap();
        assert_eq!(
            r.errors_by_kind.status_4xx, 20,
            "no override, http2={http2}"
        );
        s.request.host = Some("app.local".into());
        let r = run_load(s).await.unwrap();
        assert_eq!(r.status_counts["200"], 20, "override, http2={http2}");
        assert_eq!(r.errors, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_closed_connections_are_reopened_not_errors() {
    let addr = common::idle_closing_server().await;
    let mut s = spec(addr).await;
    s.rate = Some(50.0);
    s.stop = Stop::Requests(10);
    let r = run_load(s).await.unwrap();
    assert_eq!(r.responses, 10, "{:?}", r.errors_by_kind);
    assert_eq!(r.errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_body_and_headers_are_sent() {
    let (addr, served) = common::status_server(200).await;
    let mut s = spec(addr).await;
    s.request.method = http::Method::POST;
    s.request.body = bytes::Bytes::from_static(b"hello");
    s.request.headers = vec![hako_bench::engine::parse_header("X-A: b").unwrap()];
    s.stop = Stop::Requests(3);
    let r = run_load(s).await.unwrap();
    assert_eq!(r.responses, 3);
    assert_eq!(served.load(Ordering::Relaxed), 3);
}
