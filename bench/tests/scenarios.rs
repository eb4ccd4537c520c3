//! Scenarios against a fake hako (boots per host, /metrics).

mod common;

use std::time::Duration;

use hako_bench::engine::RequestSpec;
use hako_bench::scenarios::{self, HostsSpec, SpikeSpec};

fn hosts_spec(addr: std::net::SocketAddr, hosts: Vec<String>, c: usize) -> HostsSpec {
    HostsSpec {
        url: format!("http://{addr}/"),
        hosts,
        concurrency: c,
        request: RequestSpec::default(),
        timeout: Duration::from_secs(5),
        scrape: Some(format!("http://{addr}/metrics")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_hits_each_host_once_and_reports_boots() {
    let addr = common::fake_hako(20).await;
    let hosts = scenarios::expand_hosts(None, Some("app{i}.local"), Some(5)).unwrap();
    let r = scenarios::cold(&hosts_spec(addr, hosts, 2)).await.unwrap();
    assert_eq!(r.apps, 5);
    assert_eq!(r.summary.successes, 5);
    assert_eq!(r.per_host[3].host, "app3.local");
    // Every request paid the 20 ms boot.
    assert!(
        r.summary.latency_ms.min >= 20.0,
        "{:?}",
        r.summary.latency_ms
    );
    let d = r.scrape.unwrap();
    assert_eq!(d[0].name, "hako_boots_total");
    assert_eq!(d[0].total, 5.0);
    assert_eq!(d[0].by_labels.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_reports_successes_and_boot_delta() {
    let addr = common::fake_hako(50).await;
    let r = scenarios::burst(
        &format!("http://{addr}/"),
        "cold.local",
        20,
        &RequestSpec::default(),
        Duration::from_secs(5),
        Some(&format!("http://{addr}/metrics")),
    )
    .await
    .unwrap();
    assert_eq!(r.summary.requests, 20);
    assert_eq!(r.summary.successes, 20);
    // One request for this host was first (the fake boots once per host).
    assert_eq!(r.scrape.unwrap()[0].total, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn density_reports_instances_rss_and_rate() {
    let addr = common::fake_hako(1).await;
    let hosts = scenarios::expand_hosts(None, Some("d{i}.local"), Some(8)).unwrap();
    let r = scenarios::density(
        &hosts_spec(addr, hosts, 4),
        Some(std::process::id()),
        std::path::Path::new("/proc"),
    )
    .await
    .unwrap();
    assert_eq!(r.booted, 8);
    assert_eq!(r.live_instances, Some(8.0));
    assert!(r.boots_per_s > 0.0);
    assert!(r.rss_kib_after.unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spike_reports_phase_p99s() {
    let addr = common::fake_hako(0).await;
    let spec = SpikeSpec {
        url: format!("http://{addr}/"),
        quiet_host: "quiet.local".into(),
        quiet_rate: 100.0,
        noisy_host: "noisy.local".into(),
        noisy_rate: Some(200.0),
        noisy_connections: 2,
        phases: [
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
        ],
        request: RequestSpec::default(),
        timeout: Duration::from_secs(5),
        scrape: None,
    };
    let r = scenarios::spike(&spec).await.unwrap();
    assert!(r.quiet_p99_calm_ms > 0.0);
    assert!(r.quiet_p99_burst_ms > 0.0);
    assert!(r.ratio > 0.0);
    assert_eq!(r.quiet.sent + r.quiet.unsent, 300);
    assert!(r.noisy.responses > 150, "noisy {}", r.noisy.responses);
}
