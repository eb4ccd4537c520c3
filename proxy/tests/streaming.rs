//! 64 MiB up and 64 MiB down through the proxy: data intact, memory bounded.
//! (Alone in its binary so /proc/self/status reflects only this test: client, proxy and
//! upstream all live in this process, so the growth measured bounds the proxy's own.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use hako_proxy::ProxyOptions;
use http::{Request, StatusCode};

const TOTAL: u64 = 64 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_64_mib_both_ways_without_buffering() {
    let up = TestUpstream::start().await;
    let h = Harness::start(
        vec![route("app", "app.test", None)],
        ProxyOptions::default(),
        Duration::from_secs(5),
    )
    .await;
    h.activator.set("app", serve_up(1, up.addr));
    // Warm up allocator and connections.
    let (s, _, _) = h.get("app.test", "/source?bytes=1048576").await;
    assert_eq!(s, StatusCode::OK);

    let rss0 = proc_status_kb("VmRSS:");
    let hwm0 = proc_status_kb("VmHWM:");

    // Upload: the upstream verifies the pattern byte by byte as it streams in.
    let t = Instant::now();
    let mut c = h.client().await;
    let req = Request::post("/sink")
        .header("host", "app.test")
        .body(pattern_body(TOTAL))
        .unwrap();
    let (s, _, body) = collect(c.send(req).await).await;
    let up_secs = t.elapsed().as_secs_f64();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, format!("ok {TOTAL}"));

    // Download: the client verifies the pattern as it streams out.
    let t = Instant::now();
    let resp = c
        .send(get_req("app.test", &format!("/source?bytes={TOTAL}")))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let n = verify_pattern(resp.into_body()).await.unwrap();
    let down_secs = t.elapsed().as_secs_f64();
    assert_eq!(n, TOTAL);

    let rss1 = proc_status_kb("VmRSS:");
    let hwm1 = proc_status_kb("VmHWM:");
    let peak_growth_kb = hwm1.saturating_sub(hwm0.max(rss0));
    println!(
        "streaming: up {:.1} MiB/s, down {:.1} MiB/s; VmRSS {rss0} -> {rss1} kB, \
         VmHWM {hwm0} -> {hwm1} kB (peak growth {peak_growth_kb} kB for 2 x 64 MiB)",
        64.0 / up_secs,
        64.0 / down_secs
    );
    // Buffering either body whole would grow the peak by >= 64 MiB.
    assert!(
        peak_growth_kb < 32 * 1024,
        "peak RSS grew by {peak_growth_kb} kB: a body was buffered"
    );
    assert!(eventually(|| h.activator.live() == 0).await);
    assert!(eventually(|| h.activator.records().len() == 3).await);
}
