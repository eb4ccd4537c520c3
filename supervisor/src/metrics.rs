//! Prometheus metrics of the contract (DESIGN.md): every name is prefixed `hako_`.
//!
//! Handles for hot paths are resolved once per app ([`AppMetrics`]) and cached, so a request
//! does not look labels up in a hash map.
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for cold starts and request latencies: sub-millisecond up to multi-second.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// Reasons an instance stops, as the `reason` label of `hako_instance_stops_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Idle,
    Lifetime,
    Crashed,
    Oom,
    Shutdown,
    Evicted,
    /// The instance never became ready (readiness timeout or boot error after spawn).
    BootFailed,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Idle => "idle",
            StopReason::Lifetime => "lifetime",
            StopReason::Crashed => "crashed",
            StopReason::Oom => "oom",
            StopReason::Shutdown => "shutdown",
            StopReason::Evicted => "evicted",
            StopReason::BootFailed => "boot_failed",
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The registry and every metric family of hako.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    boots: IntCounterVec,
    boot_duration: HistogramVec,
    instances: IntGaugeVec,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    queue_depth: IntGaugeVec,
    stops: IntCounterVec,
    limit_changes: IntCounterVec,
    hook_runs: IntCounterVec,
    cpu_seconds: prometheus::CounterVec,
    memory_bytes: IntGaugeVec,
    zygote_restarts: prometheus::IntCounter,
    wakes: IntCounterVec,
    wake_duration: HistogramVec,
    hibernations: IntCounterVec,
    image_pulls: IntCounterVec,
    image_pull_duration: prometheus::Histogram,
    image_store_bytes: prometheus::IntGauge,
}

const BOOT_RESULTS: [&str; 3] = ["ok", "failed", "not_ready"];
const STOP_REASONS: [StopReason; 7] = [
    StopReason::Idle,
    StopReason::Lifetime,
    StopReason::Crashed,
    StopReason::Oom,
    StopReason::Shutdown,
    StopReason::Evicted,
    StopReason::BootFailed,
];
const WAKE_RESULTS: [&str; 2] = ["ok", "failed"];
const DIRECTIONS: [&str; 3] = ["tighten", "relax", "burst"];
const CACHED_CODES: [u16; 15] = [
    200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404, 500, 502, 503, 504,
];

/// Instance states as the `state` label of `hako_instances`.
pub const INSTANCE_STATES: [&str; 4] = ["booting", "ready", "draining", "hibernated"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let boots = IntCounterVec::new(
            Opts::new(
                "hako_boots_total",
                "Container boots finished, by app and result (ok: ready; failed: could not start or died before ready; not_ready: readiness timeout).",
            ),
            &["app", "result"],
        )
        .expect("valid metric");
        let boot_duration = HistogramVec::new(
            HistogramOpts::new(
                "hako_boot_duration_seconds",
                "Request-visible cold start: from the boot decision until the instance is ready.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["app"],
        )
        .expect("valid metric");
        let instances = IntGaugeVec::new(
            Opts::new("hako_instances", "Live instances by app and state."),
            &["app", "state"],
        )
        .expect("valid metric");
        let requests = IntCounterVec::new(
            Opts::new(
                "hako_requests_total",
                "HTTP requests answered by the proxy, by app and status code.",
            ),
            &["app", "code"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "hako_request_duration_seconds",
                "Time from request received to response body finished, by app.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["app"],
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "hako_queue_depth",
                "Requests waiting for an instance of the app to become available.",
            ),
            &["app"],
        )
        .expect("valid metric");
        let stops = IntCounterVec::new(
            Opts::new(
                "hako_instance_stops_total",
                "Instances stopped, by app and reason (idle, lifetime, crashed, oom, shutdown, \
                 evicted, boot_failed).",
            ),
            &["app", "reason"],
        )
        .expect("valid metric");
        let limit_changes = IntCounterVec::new(
            Opts::new(
                "hako_limit_changes_total",
                "cgroup limit changes made by the governor, by app and direction \
                 (tighten, relax).",
            ),
            &["app", "direction"],
        )
        .expect("valid metric");
        let cpu_seconds = prometheus::CounterVec::new(
            Opts::new(
                "hako_cgroup_cpu_seconds_total",
                "CPU time consumed by the app's instances, read from their cgroups.",
            ),
            &["app"],
        )
        .expect("valid metric");
        let hook_runs = IntCounterVec::new(
            Opts::new(
                "hako_hook_runs_total",
                "Lifecycle hooks run, by app, hook (before_boot, after_ready, before_stop, \
                 after_stop, on_pressure) and result (ok, failed, timeout).",
            ),
            &["app", "hook", "result"],
        )
        .expect("valid metric");
        let memory_bytes = IntGaugeVec::new(
            Opts::new(
                "hako_cgroup_memory_bytes",
                "Memory currently charged to the app's instances' cgroups.",
            ),
            &["app"],
        )
        .expect("valid metric");
        let zygote_restarts = prometheus::IntCounter::with_opts(Opts::new(
            "hako_zygote_restarts_total",
            "Times the launcher's zygote died and was restarted (boots in flight on it fail).",
        ))
        .expect("valid metric");
        let wakes = IntCounterVec::new(
            Opts::new(
                "hako_wakes_total",
                "Hibernated instances woken by a request, by app and result (ok: thawed and \
                 serving; failed: it could not serve, e.g. killed while frozen, and was replaced).",
            ),
            &["app", "result"],
        )
        .expect("valid metric");
        let wake_duration = HistogramVec::new(
            HistogramOpts::new(
                "hako_wake_duration_seconds",
                "Request-visible wake: from the request that found only hibernated instances \
                 until the woken instance takes it.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["app"],
        )
        .expect("valid metric");
        let hibernations = IntCounterVec::new(
            Opts::new(
                "hako_hibernations_total",
                "Idle instances hibernated (frozen, memory reclaimed when the host has swap).",
            ),
            &["app"],
        )
        .expect("valid metric");
        let image_pulls = IntCounterVec::new(
            Opts::new(
                "hako_image_pulls_total",
                "Image pulls (serve's background pulls and retries), by result: ok or failed.",
            ),
            &["result"],
        )
        .expect("valid metric");
        for r in ["ok", "failed"] {
            image_pulls.with_label_values(&[r]);
        }
        let image_pull_duration = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "hako_image_pull_duration_seconds",
                "Duration of image pulls that fetched something (manifest, config, layers).",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
            ]),
        )
        .expect("valid metric");
        let image_store_bytes = prometheus::IntGauge::with_opts(Opts::new(
            "hako_image_store_bytes",
            "Bytes held by the image store: unpacked layers' files plus manifests and configs.",
        ))
        .expect("valid metric");
        for c in [
            Box::new(image_pulls.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(image_pull_duration.clone()),
            Box::new(image_store_bytes.clone()),
            Box::new(zygote_restarts.clone()),
            Box::new(wakes.clone()),
            Box::new(wake_duration.clone()),
            Box::new(hibernations.clone()),
            Box::new(boots.clone()),
            Box::new(boot_duration.clone()),
            Box::new(instances.clone()),
            Box::new(requests.clone()),
            Box::new(request_duration.clone()),
            Box::new(queue_depth.clone()),
            Box::new(stops.clone()),
            Box::new(limit_changes.clone()),
            Box::new(hook_runs.clone()),
            Box::new(cpu_seconds.clone()),
            Box::new(memory_bytes.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            boots,
            boot_duration,
            instances,
            requests,
            request_duration,
            queue_depth,
            stops,
            limit_changes,
            hook_runs,
            cpu_seconds,
            memory_bytes,
            zygote_restarts,
            wakes,
            wake_duration,
            hibernations,
            image_pulls,
            image_pull_duration,
            image_store_bytes,
        }
    }

    /// An image pull ended (`ok` or not) after `seconds`.
    pub fn image_pull(&self, ok: bool, seconds: f64) {
        self.image_pulls
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
        self.image_pull_duration.observe(seconds);
    }

    /// The image store's size.
    pub fn set_image_store_bytes(&self, bytes: u64) {
        self.image_store_bytes.set(bytes as i64);
    }

    /// The launcher's zygote was restarted.
    pub fn zygote_restarted(&self) {
        self.zygote_restarts.inc();
    }

    /// Cached handles for one app.
    pub fn app(&self, app: &str) -> AppMetrics {
        let instances = INSTANCE_STATES.map(|s| self.instances.with_label_values(&[app, s]));
        AppMetrics {
            app: app.to_string(),
            all: self.clone(),
            boot_duration: self.boot_duration.with_label_values(&[app]),
            request_duration: self.request_duration.with_label_values(&[app]),
            queue_depth: self.queue_depth.with_label_values(&[app]),
            instances,
            boots: BOOT_RESULTS.map(|r| self.boots.with_label_values(&[app, r])),
            stops: STOP_REASONS.map(|r| self.stops.with_label_values(&[app, r.as_str()])),
            limit_changes: DIRECTIONS.map(|d| self.limit_changes.with_label_values(&[app, d])),
            requests: Default::default(),
            cpu_seconds: self.cpu_seconds.with_label_values(&[app]),
            memory_bytes: self.memory_bytes.with_label_values(&[app]),
            wakes: WAKE_RESULTS.map(|r| self.wakes.with_label_values(&[app, r])),
            wake_duration: self.wake_duration.with_label_values(&[app]),
            hibernations: self.hibernations.with_label_values(&[app]),
        }
    }

    /// Requests that matched no app.
    pub fn unrouted_request(&self, code: u16) {
        self.requests
            .with_label_values(&["", code_label(code)])
            .inc();
    }

    /// Removes every label set of an app that left the configuration.
    pub fn remove_app(&self, app: &str) {
        for family in [
            &self.boots,
            &self.requests,
            &self.stops,
            &self.limit_changes,
            &self.wakes,
            &self.hibernations,
        ] {
            remove_matching(family, app);
        }
        for state in INSTANCE_STATES {
            let _ = self.instances.remove_label_values(&[app, state]);
        }
        let _ = self.boot_duration.remove_label_values(&[app]);
        let _ = self.request_duration.remove_label_values(&[app]);
        let _ = self.queue_depth.remove_label_values(&[app]);
        let _ = self.cpu_seconds.remove_label_values(&[app]);
        let _ = self.memory_bytes.remove_label_values(&[app]);
        let _ = self.wake_duration.remove_label_values(&[app]);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

fn remove_matching(family: &IntCounterVec, app: &str) {
    use prometheus::core::Collector;
    for mf in family.collect() {
        for m in mf.get_metric() {
            let labels = m.get_label();
            if labels
                .iter()
                .any(|l| l.get_name() == "app" && l.get_value() == app)
            {
                let values: Vec<&str> = labels.iter().map(|l| l.get_value()).collect();
                let _ = family.remove_label_values(&values);
            }
        }
    }
}

fn code_label(code: u16) -> &'static str {
    // Static strings avoid an allocation per request for the common codes.
    match code {
        200 => "200",
        201 => "201",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "other",
    }
}

/// Per-app handles, cached at configuration time.
#[derive(Debug, Clone)]
pub struct AppMetrics {
    app: String,
    all: Metrics,
    boot_duration: prometheus::Histogram,
    request_duration: prometheus::Histogram,
    queue_depth: prometheus::IntGauge,
    instances: [prometheus::IntGauge; 4],
    boots: [prometheus::IntCounter; 3],
    stops: [prometheus::IntCounter; 7],
    limit_changes: [prometheus::IntCounter; 3],
    /// Per status code in [`CACHED_CODES`], created on first use.
    requests: [std::sync::OnceLock<prometheus::IntCounter>; CACHED_CODES.len()],
    cpu_seconds: prometheus::Counter,
    memory_bytes: prometheus::IntGauge,
    wakes: [prometheus::IntCounter; 2],
    wake_duration: prometheus::Histogram,
    hibernations: prometheus::IntCounter,
}

impl AppMetrics {
    pub fn boot(&self, result: &str, elapsed: Option<Duration>) {
        match BOOT_RESULTS.iter().position(|r| *r == result) {
            Some(i) => self.boots[i].inc(),
            None => self.all.boots.with_label_values(&[&self.app, result]).inc(),
        }
        if let Some(d) = elapsed {
            self.boot_duration.observe(d.as_secs_f64());
        }
    }

    pub fn request(&self, code: u16, elapsed: Duration) {
        match CACHED_CODES.iter().position(|c| *c == code) {
            Some(i) => self.requests[i]
                .get_or_init(|| {
                    self.all
                        .requests
                        .with_label_values(&[&self.app, code_label(code)])
                })
                .inc(),
            None => self
                .all
                .requests
                .with_label_values(&[&self.app, &code.to_string()])
                .inc(),
        }
        self.request_duration.observe(elapsed.as_secs_f64());
    }

    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.set(depth as i64);
    }

    /// Sets the `hako_instances` gauges: booting, ready, draining, hibernated.
    pub fn set_instances(&self, counts: [usize; 4]) {
        for (gauge, n) in self.instances.iter().zip(counts) {
            gauge.set(n as i64);
        }
    }

    pub fn stop(&self, reason: StopReason) {
        let i = STOP_REASONS
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is listed");
        self.stops[i].inc();
    }

    pub fn limit_change(&self, direction: &str) {
        match DIRECTIONS.iter().position(|d| *d == direction) {
            Some(i) => self.limit_changes[i].inc(),
            None => self
                .all
                .limit_changes
                .with_label_values(&[&self.app, direction])
                .inc(),
        }
    }

    /// A lifecycle hook ran (`hako_hook_runs_total`).
    pub fn hook_run(&self, hook: &str, result: &str) {
        self.all
            .hook_runs
            .with_label_values(&[&self.app, hook, result])
            .inc();
    }

    pub fn add_cpu_seconds(&self, secs: f64) {
        if secs > 0.0 {
            self.cpu_seconds.inc_by(secs);
        }
    }

    pub fn set_memory_bytes(&self, bytes: u64) {
        self.memory_bytes.set(bytes as i64);
    }

    /// A wake ended: `ok` after `elapsed`, or failed (`None`).
    pub fn wake(&self, elapsed: Option<Duration>) {
        match elapsed {
            Some(d) => {
                self.wakes[0].inc();
                self.wake_duration.observe(d.as_secs_f64());
            }
            None => self.wakes[1].inc(),
        }
    }

    pub fn hibernated(&self) {
        self.hibernations.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_contract_family_with_help() {
        let m = Metrics::new();
        let a = m.app("web");
        a.boot("ok", Some(Duration::from_millis(3)));
        a.request(200, Duration::from_micros(300));
        a.request(418, Duration::from_micros(300));
        a.stop(StopReason::Idle);
        a.limit_change("tighten");
        a.add_cpu_seconds(0.5);
        a.set_memory_bytes(1024);
        a.set_queue_depth(2);
        a.set_instances([0, 1, 0, 1]);
        a.wake(Some(Duration::from_millis(2)));
        a.hibernated();
        let text = m.render();
        for name in [
            "hako_boots_total",
            "hako_boot_duration_seconds",
            "hako_instances",
            "hako_requests_total",
            "hako_request_duration_seconds",
            "hako_queue_depth",
            "hako_instance_stops_total",
            "hako_limit_changes_total",
            "hako_cgroup_cpu_seconds_total",
            "hako_cgroup_memory_bytes",
            "hako_wakes_total",
            "hako_wake_duration_seconds",
            "hako_hibernations_total",
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} missing:\n{text}"
            );
        }
        assert!(text.contains(r#"hako_requests_total{app="web",code="418"} 1"#));
        assert!(text.contains(r#"hako_boots_total{app="web",result="ok"} 1"#));
    }

    #[test]
    fn removing_an_app_drops_its_series() {
        let m = Metrics::new();
        let a = m.app("gone");
        a.boot("ok", None);
        a.stop(StopReason::Crashed);
        m.app("kept").boot("ok", None);
        m.remove_app("gone");
        let text = m.render();
        assert!(!text.contains(r#"app="gone""#), "{text}");
        assert!(text.contains(r#"app="kept""#));
    }
}
