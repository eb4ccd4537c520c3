//! Issue "on-demand boot": real `hako serve` processes booting busybox containers per request.
//!
//! Needs root; prints `skipped: needs root` otherwise. Build the binary first:
//! `cargo build -p hako-supervisor && cargo test -p hako-tests`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hako_tests::*;

const STOP_FAST: &str = "lifetime: {stop_timeout: 500ms}";

/// Asserts that app `web` was booted exactly once.
fn assert_one_boot(m: &Metrics) {
    assert_eq!(
        m.sum("hako_boots_total", &[("app", "web")]),
        1.0,
        "exactly one boot: {}",
        m.text
    );
}

/// The first request to a cold app returns the app's body; later ones reuse the instance.
#[test]
fn cold_request_boots_then_instance_is_reused() {
    require_root!();
    let rootfs = Rootfs::new();
    let h = Hako::start_httpd("web", &rootfs, &[STOP_FAST]);
    assert!(
        h.instances().is_empty(),
        "no instance may exist before the first request"
    );

    let t = Instant::now();
    let r = h.get("web.test", "/");
    let cold = t.elapsed();
    assert_eq!(r.status, 200, "first request: {}", r.text());
    assert_eq!(r.text(), INDEX_BODY);

    let t = Instant::now();
    for i in 1..20 {
        let r = h.get("web.test", "/");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), INDEX_BODY);
    }
    let warm = t.elapsed() / 19;
    println!(
        "figure: cold first request {:.1} ms, warm request mean {:.2} ms",
        ms(cold),
        ms(warm)
    );

    let m = h.metrics();
    assert_eq!(
        m.value("hako_boots_total", &[("app", "web"), ("result", "ok")]),
        Some(1.0),
        "{}",
        m.text
    );
    assert_one_boot(&m);
    assert_eq!(
        m.sum("hako_requests_total", &[("app", "web"), ("code", "200")]),
        20.0,
        "{}",
        m.text
    );
    let inst = h.instances_of("web");
    assert_eq!(inst.len(), 1, "one instance: {inst:?}");
    assert_eq!(inst[0]["state"], "ready", "{inst:?}");
    assert_eq!(inst[0]["requests"].as_u64(), Some(20), "{inst:?}");
    let pid = inst[0]["pid"].as_i64().expect("pid") as i32;
    assert!(alive(pid, None), "instance pid {pid} is not alive");

    // `hako ps` shows the same instance.
    let out = std::process::Command::new(hako_bin())
        .args(["ps", "--admin", &h.admin.to_string()])
        .output()
        .expect("run hako ps");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hako ps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("web") && table.contains(&pid.to_string()),
        "hako ps output:\n{table}"
    );
}

/// 500 concurrent requests to a cold app all succeed with exactly one boot.
#[test]
fn five_hundred_concurrent_cold_requests_share_one_boot() {
    require_root!();
    let rootfs = Rootfs::new();
    let h = Hako::start_httpd(
        "web",
        &rootfs,
        &[
            STOP_FAST,
            "limits: {memory: 512Mi, pids: 4096}",
            "scaling: {max_instances: 1, concurrency: 500}",
        ],
    );
    let addr = h.listen;
    let t = Instant::now();
    let results = concurrently(500, move |_| {
        let t = Instant::now();
        let r = request(addr, &Request::get("web.test", "/"));
        (t.elapsed(), r)
    });
    let took = t.elapsed();
    let mut lat: Vec<Duration> = results.iter().map(|(d, _)| *d).collect();
    lat.sort();
    let results: Vec<_> = results.into_iter().map(|(_, r)| r).collect();
    let mut failures = Vec::new();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(r) if r.status == 200 && r.text() == INDEX_BODY => {}
            Ok(r) => failures.push(format!("#{i}: {} {}", r.status, r.text().trim())),
            Err(e) => failures.push(format!("#{i}: {e}")),
        }
    }
    println!(
        "figure: 500 concurrent cold requests finished in {:.0} ms (latency p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms)",
        ms(took),
        ms(lat[250]),
        ms(lat[450]),
        ms(lat[499])
    );
    assert!(
        failures.is_empty(),
        "{} of 500 failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let m = h.metrics();
    assert_one_boot(&m);
    assert_eq!(
        m.value("hako_boots_total", &[("app", "web"), ("result", "ok")]),
        Some(1.0)
    );
    assert_eq!(h.instances_of("web").len(), 1);
}

/// concurrency 10, max_instances 3: a burst scales to exactly 3 instances, never more.
#[test]
fn burst_scales_to_max_instances_and_no_further() {
    require_root!();
    let rootfs = Rootfs::with_cgi("slow", "sleep 0.3\necho slept");
    let h = Hako::start_httpd(
        "web",
        &rootfs,
        &[STOP_FAST, "scaling: {max_instances: 3, concurrency: 10}"],
    );
    let done = AtomicBool::new(false);
    let max_seen = AtomicUsize::new(0);
    let addr = h.listen;
    let results = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                let n = h.instances_of("web").len();
                max_seen.fetch_max(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let r = concurrently(60, move |_| {
            request(addr, &Request::get("web.test", "/cgi-bin/slow"))
        });
        done.store(true, Ordering::SeqCst);
        watcher.join().expect("watcher");
        r
    });
    let failures: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Ok(r) if r.status == 200 && r.text() == "slept\n" => None,
            Ok(r) => Some(format!("#{i}: {} {}", r.status, r.text().trim())),
            Err(e) => Some(format!("#{i}: {e}")),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of 60 failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let max_seen = max_seen.load(Ordering::SeqCst);
    let m = h.metrics();
    println!("figure: burst of 60 → at most {max_seen} instances listed");
    assert!(
        max_seen <= 3,
        "saw {max_seen} instances, max_instances is 3"
    );
    assert_eq!(
        m.sum("hako_boots_total", &[("app", "web")]),
        3.0,
        "boots: {}",
        m.text
    );
    assert_eq!(
        m.value("hako_boots_total", &[("app", "web"), ("result", "ok")]),
        Some(3.0)
    );
    assert_eq!(
        h.instances_of("web").len(),
        3,
        "three instances after the burst"
    );
}

/// A missing program gives 502 naming it, with few boots; an app that never listens gives
/// 504 after readiness.timeout and is killed.
#[test]
fn boot_failures_are_reported_and_cleaned_up() {
    require_root!();
    let rootfs = Rootfs::new();
    // `hako` validates that an absolute program exists in the rootfs at load time, so the
    // program exists when hako starts and disappears afterwards.
    let nope = rootfs.write_exec("bin/nope", "#!/bin/sh\nexit 1\n");
    let h = Hako::start(
        &apps(&[
            app_with_command("nope", &rootfs, r#"["/bin/nope"]"#, &[STOP_FAST]),
            app_with_command(
                "mute",
                &rootfs,
                r#"["/bin/sleep", "1000"]"#,
                &[STOP_FAST, "readiness: {timeout: 1s}"],
            ),
        ]),
        &[&rootfs],
    );
    std::fs::remove_file(&nope).expect("remove /bin/nope");

    let r = h.get("nope.test", "/");
    assert_eq!(r.status, 502, "missing program: {}", r.text());
    assert!(
        r.text().contains("/bin/nope"),
        "the 502 body should name the program: {:?}",
        r.text()
    );
    for i in 0..10 {
        let r = h.get("nope.test", "/");
        assert!(
            r.status >= 500,
            "request {i} to a broken app got {}: {}",
            r.status,
            r.text()
        );
    }
    let m = h.metrics();
    let failed = m.sum("hako_boots_total", &[("app", "nope"), ("result", "failed")]);
    println!("figure: 11 requests to a broken app → {failed} failed boots");
    assert!(
        (1.0..=2.0).contains(&failed),
        "failed boots should be 1..=2 (back-off): {}",
        m.text
    );
    assert_eq!(
        m.sum("hako_boots_total", &[("app", "nope"), ("result", "ok")]),
        0.0
    );

    // The app that never listens.
    let done = AtomicBool::new(false);
    let seen = std::sync::Mutex::new(Vec::<i32>::new());
    // Instance names, which are their cgroups' names (other `mute-*` groups may be made ahead
    // of the next boots).
    let seen_ids = std::sync::Mutex::new(Vec::<String>::new());
    let (r, took) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                for i in h.instances_of("mute") {
                    if let Some(p) = i["pid"].as_i64() {
                        let mut v = seen.lock().expect("lock");
                        if p > 0 && !v.contains(&(p as i32)) {
                            v.push(p as i32);
                        }
                    }
                    if let Some(id) = i["id"].as_str() {
                        let mut v = seen_ids.lock().expect("lock");
                        if !v.iter().any(|x| x == id) {
                            v.push(id.to_owned());
                        }
                    }
                }
                for (p, cmd) in h.descendants() {
                    if cmd.contains("sleep 1000") {
                        let mut v = seen.lock().expect("lock");
                        if !v.contains(&p) {
                            v.push(p);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let t = Instant::now();
        let r = h.get("mute.test", "/");
        let took = t.elapsed();
        done.store(true, Ordering::SeqCst);
        watcher.join().expect("watcher");
        (r, took)
    });
    println!(
        "figure: never-listening app answered {} after {:.0} ms",
        r.status,
        ms(took)
    );
    assert_eq!(r.status, 504, "never-listening app: {}", r.text());
    assert!(
        took >= Duration::from_millis(900),
        "504 came before readiness.timeout (1s): {took:?}"
    );
    let pids = seen.lock().expect("lock").clone();
    assert!(!pids.is_empty(), "never saw the booting instance's process");
    let ids = seen_ids.lock().expect("lock").clone();
    assert!(!ids.is_empty(), "never saw the booting instance");
    let gone = wait_for(Duration::from_secs(5), || {
        let live: Vec<i32> = pids.iter().copied().filter(|p| alive(*p, None)).collect();
        let cgs: Vec<_> = child_cgroups(&h.cgroup_parent)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| ids.iter().any(|id| n.to_string_lossy() == *id))
            })
            .collect();
        (live.is_empty() && cgs.is_empty() && h.instances_of("mute").is_empty()).then_some(())
    });
    assert!(
        gone.is_some(),
        "the timed-out instance {ids:?} was not killed: pids alive {:?}, cgroups {:?}, instances {:?}",
        pids.iter().filter(|p| alive(**p, None)).collect::<Vec<_>>(),
        child_cgroups(&h.cgroup_parent),
        h.instances_of("mute")
    );
    let m = h.metrics();
    assert_eq!(
        m.sum("hako_boots_total", &[("app", "mute"), ("result", "ok")]),
        0.0,
        "{}",
        m.text
    );
    assert!(
        m.sum("hako_boots_total", &[("app", "mute")]) >= 1.0,
        "{}",
        m.text
    );
}

/// Unknown Host → 404 (nothing booted); no Host → 400; a Host with a port still routes.
#[test]
fn routing_errors() {
    require_root!();
    let rootfs = Rootfs::new();
    let h = Hako::start_httpd("web", &rootfs, &[STOP_FAST]);
    let r = h.get("unknown.test", "/");
    assert_eq!(r.status, 404, "unknown host: {}", r.text());
    let raw = raw_exchange(h.listen, b"GET / HTTP/1.0\r\n\r\n").expect("raw request");
    let head = String::from_utf8_lossy(&raw);
    assert!(
        head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("400"),
        "missing Host: {head:?}"
    );
    let m = h.metrics();
    assert_eq!(
        m.sum("hako_boots_total", &[]),
        0.0,
        "nothing may boot: {}",
        m.text
    );
    assert!(h.instances().is_empty());

    let r = h.get(&format!("WEB.test:{}", h.listen.port()), "/");
    assert_eq!(r.status, 200, "Host with port and other case: {}", r.text());
    assert_eq!(r.text(), INDEX_BODY);
}

/// 100 MiB down and up through the proxy, streamed: intact, and hako's RSS barely grows.
#[test]
fn large_bodies_stream_through_the_proxy() {
    require_root!();
    const SIZE: u64 = 100 << 20;
    let rootfs = Rootfs::new();
    let want_hash = rootfs.write_random("www/big.bin", SIZE, 0x5eed);
    rootfs.cgi("count", "wc -c");
    let h = Hako::start_httpd("web", &rootfs, &[STOP_FAST]);
    assert_eq!(h.get("web.test", "/").status, 200, "warm-up");
    let pid = h.pid();
    let before = vm_hwm_kib(pid).expect("VmHWM");

    let mut hash = Fnv::new();
    let t = Instant::now();
    let got =
        get_streaming(h.listen, "web.test", "/big.bin", &mut |c| hash.update(c)).expect("download");
    let took = t.elapsed();
    let after_down = vm_hwm_kib(pid).expect("VmHWM");
    assert_eq!(got.status, 200);
    assert_eq!(got.body_len, SIZE, "downloaded length");
    assert_eq!(
        hash.finish(),
        want_hash,
        "downloaded content differs from the file"
    );
    let growth_down = after_down.saturating_sub(before);
    println!(
        "figure: 100 MiB download in {:.0} ms; hako VmHWM {before} KiB → {after_down} KiB (+{growth_down} KiB)",
        ms(took)
    );

    let mut gen = PseudoRandom::new(7);
    let t = Instant::now();
    let r = post_streaming(h.listen, "web.test", "/cgi-bin/count", SIZE, &mut |b| {
        gen.fill(b)
    })
    .expect("upload");
    let took = t.elapsed();
    let after_up = vm_hwm_kib(pid).expect("VmHWM");
    assert_eq!(r.status, 200, "upload: {}", r.text());
    assert_eq!(
        r.text().trim(),
        SIZE.to_string(),
        "the CGI counted a different number of bytes"
    );
    let growth_up = after_up.saturating_sub(after_down);
    println!(
        "figure: 100 MiB upload in {:.0} ms; hako VmHWM {after_down} KiB → {after_up} KiB (+{growth_up} KiB)",
        ms(took)
    );
    assert!(
        growth_down < 32 * 1024,
        "hako's RSS grew by {growth_down} KiB during a 100 MiB download"
    );
    assert!(
        growth_up < 32 * 1024,
        "hako's RSS grew by {growth_up} KiB during a 100 MiB upload"
    );
}

/// SIGTERM under load: every request sent before the signal gets its 200; hako exits 0 and
/// leaves nothing behind.
#[test]
fn sigterm_under_load_drains_in_flight_requests() {
    require_root!();
    let rootfs = Rootfs::with_cgi("slow", "sleep 0.2\necho slept");
    let mut h = Hako::start_httpd(
        "web",
        &rootfs,
        &[
            "lifetime: {grace: 5s, stop_timeout: 500ms}",
            "scaling: {concurrency: 100}",
        ],
    );
    assert_eq!(h.get("web.test", "/cgi-bin/slow").status, 200, "warm-up");
    let stop = AtomicBool::new(false);
    let addr = h.listen;
    type Outcome = (Option<Instant>, Instant, Result<Response, RequestError>);
    let (records, signal_at, status) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..20)
            .map(|_| {
                let stop = &stop;
                s.spawn(move || {
                    let mut out: Vec<Outcome> = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let (sent, r) =
                            request_timed(addr, &Request::get("web.test", "/cgi-bin/slow"));
                        let refused = matches!(r, Err(RequestError::Connect(_)));
                        out.push((sent, Instant::now(), r));
                        if refused {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    out
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        let signal_at = Instant::now();
        h.signal(libc::SIGTERM);
        let status = h.wait_exit(Duration::from_secs(20));
        stop.store(true, Ordering::SeqCst);
        let records: Vec<Outcome> = clients
            .into_iter()
            .flat_map(|c| c.join().expect("client"))
            .collect();
        (records, signal_at, status)
    });
    let mut before_ok = 0;
    let mut in_flight_at_signal = 0;
    let mut dropped = Vec::new();
    let (mut after_ok, mut after_failed, mut refused) = (0, 0, 0);
    for (sent, finished, r) in &records {
        match sent {
            Some(sent) if *sent < signal_at => match r {
                Ok(resp) if resp.status == 200 => {
                    before_ok += 1;
                    if *finished > signal_at {
                        in_flight_at_signal += 1;
                    }
                }
                Ok(resp) => dropped.push(format!("{} {}", resp.status, resp.text().trim())),
                Err(e) => dropped.push(e.to_string()),
            },
            Some(_) => match r {
                Ok(resp) if resp.status == 200 => after_ok += 1,
                _ => after_failed += 1,
            },
            None => refused += 1,
        }
    }
    println!(
        "figure: SIGTERM under load: {before_ok} requests sent before the signal got 200 \
         ({in_flight_at_signal} of them in flight at the signal); after: {after_ok} ok, \
         {after_failed} failed, {refused} connections refused/unsent; hako exit {status}"
    );
    assert!(
        dropped.is_empty(),
        "{} in-flight requests were dropped: {:?}",
        dropped.len(),
        dropped
    );
    assert!(
        in_flight_at_signal > 0,
        "no request was in flight at the signal: the test proved nothing"
    );
    assert!(
        status.success(),
        "hako exited with {status} after SIGTERM\n{}",
        h.log()
    );
    h.assert_clean();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// An HTTP upgrade (101 Switching Protocols) is tunnelled both ways through hako.
///
/// The app is `nc -ll -e /bin/upgrade`: the script reads the request head, answers 101 and then
/// echoes every byte (`cat`).
#[test]
fn upgrade_is_tunnelled_both_ways() {
    require_root!();
    use std::io::{Read, Write};
    let rootfs = Rootfs::new();
    rootfs.write_exec(
        "bin/upgrade",
        "#!/bin/sh\nwhile read -r line; do\n  line=$(printf '%s' \"$line\" | tr -d '\\r')\n  [ -z \"$line\" ] && break\ndone\n\
         printf 'HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: echo\\r\\nConnection: Upgrade\\r\\n\\r\\n'\nexec cat\n",
    );
    let h = Hako::start(
        &apps(&[app_with_command(
            "echo",
            &rootfs,
            r#"["/bin/nc", "-ll", "-p", "8080", "-e", "/bin/upgrade"]"#,
            &[STOP_FAST],
        )]),
        &[&rootfs],
    );
    let mut s = std::net::TcpStream::connect(h.listen).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(
        b"GET /tunnel HTTP/1.1\r\nHost: echo.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .expect("send");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b).expect("read head");
        assert!(
            n == 1,
            "connection closed during the response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "expected 101: {head:?}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head:?}"
    );
    for msg in ["ping\n", "a longer message through the tunnel\n"] {
        s.write_all(msg.as_bytes()).expect("write tunnel");
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).expect("read tunnel");
        assert_eq!(String::from_utf8_lossy(&back), msg);
    }
    drop(s);
}

/// `readiness: {probe: listen_fds}`: hako hands the app a listening socket as fd 3 (the systemd
/// protocol: LISTEN_FDS=1, LISTEN_PID=1), so the instance is ready the moment it is spawned and
/// the first request is queued by the kernel until the app accepts it. The app here checks the
/// protocol and serves only on the inherited socket (it never binds a port itself).
#[test]
fn socket_activated_app_is_served_through_the_inherited_socket() {
    require_root!();
    if !std::path::Path::new("/usr/bin/python3").exists() {
        println!("skipped: needs /usr/bin/python3 for the socket-activated test app");
        return;
    }
    let app = r#"import os, socket, http.server
assert os.environ['LISTEN_FDS'] == '1' and os.environ['LISTEN_PID'] == str(os.getpid()), dict(os.environ)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'activated'
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
s = http.server.HTTPServer(('0.0.0.0', 8080), H, bind_and_activate=False)
s.socket.close()
s.socket = socket.socket(fileno=3)
s.serve_forever()
"#;
    let yaml = format!(
        "apps:\n  - name: act\n    hosts: [act.test]\n    rootfs: host\n    command: [/usr/bin/python3, -I, -S, -c, {}]\n    port: 8080\n    readiness: {{probe: listen_fds, timeout: 10s}}\n    {STOP_FAST}\n",
        serde_json::to_string(app).expect("quote")
    );
    let h = Hako::start(&yaml, &[]);
    let t = Instant::now();
    let r = h.get("act.test", "/");
    let cold = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "activated");
    let r = h.get("act.test", "/again");
    assert_eq!(r.status, 200, "{}", r.text());
    let m = h.metrics();
    assert_eq!(
        m.value("hako_boots_total", &[("app", "act"), ("result", "ok")]),
        Some(1.0),
        "{}",
        m.text
    );
    println!(
        "figure: socket-activated cold request (python app) {:.1} ms",
        ms(cold)
    );
}
