//! Issue "mortal containers": idle and lifetime stops, crashes, OOM, hako crash recovery,
//! configuration reload.
//!
//! Needs root; prints `skipped: needs root` otherwise. Build the binary first:
//! `cargo build -p hako-supervisor && cargo test -p hako-tests`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hako_tests::*;

fn stops(h: &Hako, app: &str, reason: &str) -> f64 {
    h.metrics().sum(
        "hako_instance_stops_total",
        &[("app", app), ("reason", reason)],
    )
}

/// idle_timeout 1s: the instance stops about 1 s after its last request; the next request
/// boots a new one.
#[test]
fn idle_instance_stops_and_next_request_boots_again() {
    require_root!();
    let rootfs = Rootfs::new();
    let h = Hako::start_httpd(
        "web",
        &rootfs,
        &["lifetime: {idle_timeout: 1s, stop_timeout: 500ms}"],
    );
    let r = h.get("web.test", "/");
    assert_eq!(r.status, 200);
    let last = Instant::now();
    let first = h.instances_of("web");
    assert_eq!(first.len(), 1, "{first:?}");
    let first_id = first[0]["id"].clone();

    let mut left_ready = None;
    let gone = wait_for(Duration::from_secs(10), || {
        let inst = h.instances_of("web");
        if left_ready.is_none() && !inst.iter().any(|i| i["state"] == "ready") {
            left_ready = Some(last.elapsed());
        }
        inst.is_empty().then(|| last.elapsed())
    });
    let gone = gone.expect("the idle instance was not stopped within 10 s");
    let left_ready = left_ready.expect("set when gone");
    println!(
        "figure: idle_timeout 1s → instance left `ready` after {:.0} ms, gone after {:.0} ms",
        left_ready.as_secs_f64() * 1e3,
        gone.as_secs_f64() * 1e3
    );
    assert!(
        left_ready >= Duration::from_millis(900) && left_ready <= Duration::from_secs(3),
        "idle stop after {left_ready:?}, expected about 1 s"
    );
    assert_eq!(stops(&h, "web", "idle"), 1.0, "{}", h.metrics().text);

    let r = h.get("web.test", "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), INDEX_BODY);
    let second = h.instances_of("web");
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(
        second[0]["id"], first_id,
        "the next request must boot a new instance"
    );
    let m = h.metrics();
    assert_eq!(
        m.value("hako_boots_total", &[("app", "web"), ("result", "ok")]),
        Some(2.0),
        "{}",
        m.text
    );
}

/// max_lifetime 2s with a prestarted successor under continuous traffic: instances are
/// replaced several times and not one request fails.
#[test]
fn lifetime_replacement_loses_no_request() {
    require_root!();
    let rootfs = Rootfs::with_cgi("slow", "sleep 0.1\necho slept");
    let h = Hako::start_httpd("web", &rootfs, &["lifetime: {idle_timeout: 2s, max_lifetime: 2s, grace: 5s, stop_timeout: 500ms, prestart_successor: true}"]);
    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::<String>::new());
    let ids = Mutex::new(Vec::<String>::new());
    let addr = h.listen;
    let start = Instant::now();
    let total: usize = std::thread::scope(|s| {
        let clients: Vec<_> = (0..8)
            .map(|c| {
                let (stop, failures) = (&stop, &failures);
                s.spawn(move || {
                    let mut n = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        let (path, want) = if (n + c) % 2 == 0 {
                            ("/", INDEX_BODY)
                        } else {
                            ("/cgi-bin/slow", "slept\n")
                        };
                        match request(addr, &Request::get("web.test", path)) {
                            Ok(r) if r.status == 200 && r.text() == want => {}
                            Ok(r) => failures.lock().expect("lock").push(format!(
                                "{:.2}s {path}: {} {}",
                                start.elapsed().as_secs_f64(),
                                r.status,
                                r.text().trim()
                            )),
                            Err(e) => failures
                                .lock()
                                .expect("lock")
                                .push(format!("{:.2}s {path}: {e}", start.elapsed().as_secs_f64())),
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        while start.elapsed() < Duration::from_secs(10) {
            for i in h.instances_of("web") {
                let id = i["id"].as_str().unwrap_or_default().to_string();
                let mut v = ids.lock().expect("lock");
                if !v.contains(&id) {
                    v.push(id);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::SeqCst);
        clients.into_iter().map(|c| c.join().expect("client")).sum()
    });
    let failures = failures.into_inner().expect("lock");
    let lifetime_stops = stops(&h, "web", "lifetime");
    let ids = ids.into_inner().expect("lock");
    println!(
        "figure: 10 s of 8 clients, max_lifetime 2s: {total} requests, {} failed, {lifetime_stops} lifetime stops, \
         instances seen {ids:?}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
    assert!(
        lifetime_stops >= 3.0,
        "expected ≥ 3 lifetime stops in 10 s, got {lifetime_stops}: {}",
        h.metrics().text
    );
}

/// The app of items 10a/10c: its main process dies on `GET /cgi-bin/die`.
///
/// busybox httpd as PID 1 of its pid namespace cannot be killed from inside (the kernel ignores
/// signals to a namespace init from within), so the app's main process is a shell running
/// httpd as a child; the CGI SIGKILLs every httpd, the shell (PID 1) then exits with 137 and the
/// kernel tears down the namespace: a crash as a user sees it.
fn start_crashy() -> (Rootfs, Hako) {
    let rootfs = Rootfs::with_cgi("die", "echo dying\nkill -9 $(pidof httpd)");
    let h = Hako::start(
        &apps(&[app_with_command(
            "crashy",
            &rootfs,
            r#"["/bin/sh", "-c", "/bin/httpd -f -p 8080 -h /www; exit $?"]"#,
            &["lifetime: {stop_timeout: 500ms}"],
        )]),
        &[&rootfs],
    );
    (rootfs, h)
}

/// Boots an instance of `crashy` and returns its id and pid.
fn boot_crashy(h: &Hako) -> (String, i32) {
    let r = h.get("crashy.test", "/");
    assert_eq!(r.status, 200, "{}", r.text());
    let inst = h.instances_of("crashy");
    assert_eq!(inst.len(), 1, "{inst:?}");
    (
        inst[0]["id"].as_str().expect("id").to_string(),
        inst[0]["pid"].as_i64().expect("pid") as i32,
    )
}

/// An app whose main process dies on a request: the crash is counted and the next
/// request is served by a new instance.
#[test]
fn crashed_instance_is_counted_and_replaced() {
    require_root!();
    let (_rootfs, h) = start_crashy();
    let (first_id, first_pid) = boot_crashy(&h);

    let r = request(h.listen, &Request::get("crashy.test", "/cgi-bin/die"));
    println!(
        "the crashing request got: {:?}",
        r.as_ref().map(|r| (r.status, r.text()))
    );
    let dead = wait_for(Duration::from_secs(5), || {
        (!alive(first_pid, None)).then_some(())
    });
    assert!(
        dead.is_some(),
        "the CGI did not kill the app (pid {first_pid} still alive)"
    );
    // Wait until hako has handled the death (see item 10c for the request racing it).
    let crashed = wait_for(Duration::from_secs(5), || {
        let n = stops(&h, "crashy", "crashed");
        (n > 0.0
            && !h
                .instances_of("crashy")
                .iter()
                .any(|i| i["id"] == first_id.as_str()))
        .then_some(n)
    });
    assert_eq!(
        crashed,
        Some(1.0),
        "crash not counted (or the dead instance still listed): {}\n{:?}",
        h.metrics().text,
        h.instances()
    );

    let r = h.get("crashy.test", "/");
    assert_eq!(r.status, 200, "request after the crash: {}", r.text());
    assert_eq!(r.text(), INDEX_BODY);
    let now = h.instances_of("crashy");
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(
        now[0]["id"],
        first_id.as_str(),
        "served by the crashed instance?"
    );
    assert_eq!(stops(&h, "crashy", "crashed"), 1.0, "{}", h.metrics().text);
    assert_eq!(stops(&h, "crashy", "oom"), 0.0);
    let m = h.metrics();
    assert_eq!(
        m.value("hako_boots_total", &[("app", "crashy"), ("result", "ok")]),
        Some(2.0),
        "{}",
        m.text
    );
}

/// A request sent the moment the app's process has died (before hako noticed) is
/// still served, by a new instance: a refused connection to a dead upstream carries no request
/// bytes, so it is safe to retry. Five crash cycles, the request racing each death.
#[test]
fn request_racing_a_crash_is_served_by_a_new_instance() {
    require_root!();
    let (_rootfs, h) = start_crashy();
    let mut failures = Vec::new();
    for cycle in 0..5 {
        let (_, pid) = boot_crashy(&h);
        let _ = request(h.listen, &Request::get("crashy.test", "/cgi-bin/die"));
        let end = Instant::now() + Duration::from_secs(5);
        while alive(pid, None) {
            assert!(
                Instant::now() < end,
                "cycle {cycle}: the app (pid {pid}) did not die"
            );
            std::hint::spin_loop();
        }
        match request(h.listen, &Request::get("crashy.test", "/")) {
            Ok(r) if r.status == 200 && r.text() == INDEX_BODY => {}
            Ok(r) => failures.push(format!("cycle {cycle}: {} {}", r.status, r.text().trim())),
            Err(e) => failures.push(format!("cycle {cycle}: {e}")),
        }
        // Let hako finish the stop before the next cycle.
        let settled = wait_for(Duration::from_secs(5), || {
            let n = h.instances_of("crashy");
            (n.iter().all(|i| i["pid"].as_i64() != Some(i64::from(pid)))).then_some(())
        });
        assert!(
            settled.is_some(),
            "cycle {cycle}: dead instance still listed"
        );
    }
    assert!(
        failures.is_empty(),
        "requests racing a crash failed: {failures:?}"
    );
}

/// An instance whose main process exceeds the memory limit is counted as `oom`.
///
/// The OOM killer picks the biggest task of the cgroup, so the hog must be the main process
/// itself: PID 1 is a shell that runs httpd in the background and waits for a marker file; a
/// CGI creates the marker, and PID 1 execs `dd bs=64M` (a 64 MiB buffer filled from /dev/zero)
/// under a 16 MiB limit, which gets it (PID 1) OOM-killed.
#[test]
fn oom_killed_instance_is_counted() {
    require_root!();
    let rootfs = Rootfs::with_cgi("hog", "touch /tmp/oom\necho armed");
    let h = Hako::start(
        &apps(&[app_with_command(
            "hog",
            &rootfs,
            r#"["/bin/sh", "-c", "/bin/httpd -f -p 8080 -h /www & while [ ! -e /tmp/oom ]; do sleep 0.05; done; exec /bin/dd if=/dev/zero of=/dev/null bs=64M count=1"]"#,
            &["lifetime: {stop_timeout: 500ms}", "limits: {memory: 16Mi}"],
        )]),
        &[&rootfs],
    );
    assert_eq!(h.get("hog.test", "/").status, 200);
    let first = h.instances_of("hog");
    assert_eq!(first.len(), 1);
    let first_pid = first[0]["pid"].as_i64().expect("pid") as i32;
    let r = h.get("hog.test", "/cgi-bin/hog");
    assert_eq!(r.status, 200, "{}", r.text());
    let dead = wait_for(Duration::from_secs(5), || {
        (!alive(first_pid, None)).then_some(())
    });
    assert!(dead.is_some(), "the hog (pid {first_pid}) was not killed");
    let oom = wait_for(Duration::from_secs(3), || {
        let n = stops(&h, "hog", "oom");
        (n >= 1.0).then_some(n)
    });
    let m = h.metrics();
    assert!(oom.is_some(), "OOM kill not counted as oom: {}", m.text);
    assert_eq!(
        m.sum(
            "hako_instance_stops_total",
            &[("app", "hog"), ("reason", "crashed")]
        ),
        0.0
    );
    let r = h.get("hog.test", "/");
    assert_eq!(r.status, 200, "request after the OOM kill: {}", r.text());
}

/// kill -9 of hako with 5 live instances, then a restart with the same config: within 2 s
/// no orphan remains and the new hako serves.
#[test]
fn restart_after_kill9_removes_orphans() {
    require_root!();
    let rootfs = Rootfs::with_cgi("slow", "sleep 1\necho slept");
    let mut h = Hako::start_httpd(
        "web",
        &rootfs,
        &[
            "lifetime: {stop_timeout: 500ms}",
            "scaling: {max_instances: 5, concurrency: 1}",
        ],
    );
    let addr = h.listen;
    let res = concurrently(5, move |_| {
        request(addr, &Request::get("web.test", "/cgi-bin/slow"))
    });
    for r in &res {
        let r = r.as_ref().expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let inst = h.instances_of("web");
    assert_eq!(inst.len(), 5, "five live instances: {inst:?}");
    let old: Vec<(i32, Option<u64>)> = inst
        .iter()
        .map(|i| {
            let p = i["pid"].as_i64().expect("pid") as i32;
            (p, start_time(p))
        })
        .collect();
    let old_cgroups = child_cgroups(&h.cgroup_parent);
    assert!(
        !old_cgroups.is_empty(),
        "instance cgroups expected under {}",
        h.cgroup_parent
    );

    h.kill9();
    let survivors = old.iter().filter(|(p, s)| alive(*p, *s)).count();
    println!("figure: after kill -9 of hako, {survivors} of 5 instance processes still alive");

    let t = Instant::now();
    h.spawn();
    let clean = wait_for(Duration::from_secs(2).saturating_sub(t.elapsed()), || {
        let live: Vec<i32> = old
            .iter()
            .filter(|(p, s)| alive(*p, *s))
            .map(|(p, _)| *p)
            .collect();
        // The restarted hako makes new groups ahead of boots; none may be an old one.
        let old_left: Vec<PathBuf> = child_cgroups(&h.cgroup_parent)
            .into_iter()
            .filter(|c| old_cgroups.contains(c))
            .collect();
        (live.is_empty() && old_left.is_empty()).then_some(())
    });
    let took = t.elapsed();
    println!(
        "figure: restart to clean state in {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    assert!(
        clean.is_some(),
        "2 s after the restart: old pids alive {:?}, cgroups {:?} (before the kill: {:?})",
        old.iter()
            .filter(|(p, s)| alive(*p, *s))
            .collect::<Vec<_>>(),
        child_cgroups(&h.cgroup_parent),
        old_cgroups
    );
    let r = h.get("web.test", "/");
    assert_eq!(r.status, 200, "the restarted hako serves: {}", r.text());
    assert_eq!(r.text(), INDEX_BODY);
}

/// SIGHUP with a broken file keeps the old configuration; a valid change applies to new
/// instances; serving never stops.
#[test]
fn sighup_reload_rejects_broken_and_applies_valid_config() {
    require_root!();
    let rootfs = Rootfs::new();
    let app = |mem: &str| {
        apps(&[httpd_app(
            "web",
            &rootfs,
            &[
                "lifetime: {idle_timeout: 1s, stop_timeout: 500ms}",
                &format!("limits: {{memory: {mem}}}"),
            ],
        )])
    };
    let mut h = Hako::start(&app("64Mi"), &[&rootfs]);
    assert_eq!(h.get("web.test", "/").status, 200);
    let inst = h.instances_of("web");
    assert_eq!(
        inst[0]["limits"]["memory_max"].as_u64(),
        Some(64 << 20),
        "{inst:?}"
    );
    let id = inst[0]["id"].as_str().expect("id").to_string();
    assert_eq!(cgroup_memory_limit(&h.cgroup_parent, &id), Some(64 << 20));
    let good = std::fs::read_to_string(&h.config_path).expect("config");

    let stop = AtomicBool::new(false);
    let bad = Mutex::new(Vec::<String>::new());
    let addr = h.listen;
    let served = std::thread::scope(|s| {
        let traffic = s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                match request(addr, &Request::get("web.test", "/")) {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => {
                        bad.lock()
                            .expect("lock")
                            .push(format!("{} {}", r.status, r.text().trim()))
                    }
                    Err(e) => bad.lock().expect("lock").push(e.to_string()),
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            n
        });
        // Broken file: rejected, old config stays.
        h.write_config_raw(&format!("{good}\n  - name: [this is not valid\n"));
        h.signal(libc::SIGHUP);
        let rejected = wait_for(Duration::from_secs(5), || {
            h.log().contains("reload rejected").then_some(())
        });
        assert!(
            rejected.is_some(),
            "no `reload rejected` in the log:\n{}",
            h.log()
        );
        let out = std::process::Command::new(hako_bin())
            .args(["reload", "--admin", &h.admin.to_string()])
            .output()
            .expect("run hako reload");
        assert!(
            !out.status.success(),
            "`hako reload` of a broken file must fail"
        );
        std::thread::sleep(Duration::from_millis(300));

        // Valid change: 64Mi → 96Mi.
        h.rewrite_apps(&app("96Mi"));
        let before = h.log().matches("configuration reloaded").count();
        h.signal(libc::SIGHUP);
        let applied = wait_for(Duration::from_secs(5), || {
            (h.log().matches("configuration reloaded").count() > before).then_some(())
        });
        assert!(
            applied.is_some(),
            "no `configuration reloaded` in the log:\n{}",
            h.log()
        );
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        traffic.join().expect("traffic")
    });
    let bad = bad.into_inner().expect("lock");
    assert!(served > 5, "traffic thread made only {served} requests");
    assert!(
        bad.is_empty(),
        "requests failed around the reloads: {bad:?}"
    );

    // Let the old instance go idle, then boot a fresh one.
    let idle = wait_for(Duration::from_secs(10), || {
        h.instances_of("web").is_empty().then_some(())
    });
    assert!(
        idle.is_some(),
        "the old instance did not stop: {:?}",
        h.instances()
    );
    let r = h.get("web.test", "/");
    assert_eq!(r.status, 200, "{}", r.text());
    let inst = h.instances_of("web");
    assert_eq!(inst.len(), 1, "{inst:?}");
    assert_eq!(
        inst[0]["limits"]["memory_max"].as_u64(),
        Some(96 << 20),
        "new limits not applied: {inst:?}"
    );
    let id = inst[0]["id"].as_str().expect("id").to_string();
    assert_eq!(
        cgroup_memory_limit(&h.cgroup_parent, &id),
        Some(96 << 20),
        "cgroup memory limit of {id}"
    );
}
