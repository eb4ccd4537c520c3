//! Issue 13 item 2: the launcher's zygote killed under load (`kill -9`) is reaped and
//! restarted; boots resume, running instances keep serving, `/healthz` reports a node that
//! cannot boot.
//!
//! Needs root; prints `skipped: needs root` otherwise.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hako_tests::*;

/// Instances replaced every 250 ms (and stopped as soon as idle): boots go on all the time.
const CHURN: &str = "lifetime: {idle_timeout: 0s, max_lifetime: 250ms, stop_timeout: 500ms}";
const STEADY: &str = "lifetime: {stop_timeout: 500ms}";

/// How deep `pid` is nested in pid namespaces (`NSpid:` entries in its status).
fn pid_ns_depth(pid: i32) -> Option<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    Some(line.split_whitespace().count() - 1)
}

/// The zygote: hako's child named `hako-zygote`, in hako's pid namespace. A container is also
/// a child of hako (cloned with `CLONE_PARENT`) named `hako-zygote` until its execve, but it
/// lives in a pid namespace of its own.
fn zygote_of(hako: i32) -> Option<i32> {
    let depth = pid_ns_depth(hako)?;
    let found: Vec<i32> = descendants(hako)
        .into_iter()
        .filter(|p| ppid_and_state(*p).is_some_and(|(pp, st)| pp == hako && st != 'Z'))
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "hako-zygote")
        })
        .filter(|p| pid_ns_depth(*p) == Some(depth))
        .collect();
    match found.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// Children of hako that are zombies (exited, never reaped).
fn zombies_of(hako: i32) -> Vec<(i32, String)> {
    descendants(hako)
        .into_iter()
        .filter(|p| ppid_and_state(*p).is_some_and(|(pp, st)| pp == hako && st == 'Z'))
        .map(|p| (p, cmdline(p)))
        .collect()
}

fn healthz(h: &Hako) -> (u16, String) {
    match request_timeout(
        h.admin,
        &Request::get("admin", "/healthz"),
        Duration::from_secs(2),
    ) {
        Ok(r) => (r.status, r.text()),
        Err(e) => (0, e.to_string()),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn killed_zygote_under_load_is_restarted_and_boots_resume() {
    require_root!();
    let rootfs = Rootfs::new();
    // Load: one client per churning app, so that several boots are often in flight.
    const CLIENTS: usize = 3;
    let mut entries: Vec<String> = (0..CLIENTS)
        .map(|i| httpd_app(&format!("churn{i}"), &rootfs, &[CHURN]))
        .collect();
    entries.push(httpd_app("steady", &rootfs, &[STEADY]));
    let mut h = Hako::start(&apps(&entries), &[&rootfs]);
    let boots_ok = |h: &Hako| {
        let m = h.metrics();
        (0..CLIENTS)
            .map(|i| {
                m.value(
                    "hako_boots_total",
                    &[("app", &format!("churn{i}")), ("result", "ok")],
                )
                .unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    let r = h.get("steady.test", "/");
    assert_eq!(r.status, 200, "{}", r.text());
    let steady = h.the_instance_of("steady");
    let old = wait_for(Duration::from_secs(5), || zygote_of(h.pid()))
        .expect("one hako-zygote child of hako");

    // Results recorded with their times.
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<(Instant, Instant, u16)>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (stop, results, addr) = (stop.clone(), results.clone(), h.listen);
            std::thread::spawn(move || {
                let host = format!("churn{i}.test");
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let status =
                        request_timeout(addr, &Request::get(&host, "/"), Duration::from_secs(10))
                            .map_or(0, |r| r.status);
                    results.lock().unwrap().push((t, Instant::now(), status));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let booted_before = boots_ok(&h);
    assert!(
        booted_before >= 2.0 * CLIENTS as f64,
        "the load boots instances: {booted_before}"
    );

    let killed = Instant::now();
    send_signal(old, libc::SIGKILL).expect("kill the zygote");
    let (new, seen_new) = wait_for(Duration::from_secs(5), || {
        let n = zygote_of(h.pid()).filter(|p| *p != old)?;
        (healthz(&h).0 == 200).then(|| (n, killed.elapsed()))
    })
    .unwrap_or_else(|| panic!("no new zygote within 5 s\n--- log ---\n{}", h.log()));
    let booted_at_restart = boots_ok(&h);
    // Load goes on after the restart.
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    h.track();
    let booted_after = boots_ok(&h) - booted_at_restart;

    let results = results.lock().unwrap().clone();
    let failed: Vec<_> = results.iter().filter(|r| r.2 != 200).collect();
    let after: Vec<_> = results.iter().filter(|r| r.0 > killed + seen_new).collect();
    let log = h.log();
    let took = log
        .lines()
        .find(|l| l.contains("launcher zygote restarted"))
        .and_then(|l| l.split("took_ms=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no restart line in the log:\n{log}"));
    println!(
        "figure: zygote {old} killed -> {new} ready: {took} ms (hako's took_ms: from noticing \
         the death to the new zygote answering); seen by the test {:.1} ms after kill \
         (/healthz 200 with the new zygote, polled); {} requests, {} failed, {} after the \
         restart; {booted_after} boots in the 1.5 s after it",
        ms(seen_new),
        results.len(),
        failed.len(),
        after.len()
    );
    assert!(
        booted_after >= 3.0,
        "boots go on after the restart: {booted_after}"
    );
    // At most the boots in flight on the dead zygote failed: one per client.
    assert!(
        failed.len() <= CLIENTS,
        "{} requests failed: {failed:?}\n--- log ---\n{log}",
        failed.len()
    );
    assert!(
        after.len() >= 3 && after.iter().all(|r| r.2 == 200),
        "boots after the restart succeed: {after:?}\n--- log ---\n{log}"
    );
    assert!(
        log.contains(&format!("old_pid={old}")) && log.contains(&format!("new_pid={new}")),
        "the restart is logged with both pids:\n{log}"
    );
    let m = h.metrics();
    assert_eq!(
        m.value("hako_zygote_restarts_total", &[]),
        Some(1.0),
        "{}",
        m.text
    );
    assert!(
        m.sum("hako_boots_total", &[("result", "failed")]) <= CLIENTS as f64,
        "{}",
        m.text
    );
    // The instance booted before the kill kept serving, as the same instance.
    for _ in 0..5 {
        let r = h.get("steady.test", "/");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(h.the_instance_of("steady")["id"], steady["id"]);
    // The dead zygote was reaped; no child of hako is left a zombie.
    assert!(
        ppid_and_state(old).is_none_or(|(pp, _)| pp != h.pid()),
        "old zygote {old}: {:?}",
        ppid_and_state(old)
    );
    let zombies = wait_for(Duration::from_secs(3), || {
        let z = zombies_of(h.pid());
        z.is_empty().then_some(())
    });
    assert!(zombies.is_some(), "zombies: {:?}", zombies_of(h.pid()));

    let st = h.stop();
    assert!(st.success(), "hako exit: {st}\n{}", h.log());
    h.assert_clean();
}

#[test]
fn zygote_that_keeps_dying_makes_healthz_503_until_one_serves_again() {
    require_root!();
    let rootfs = Rootfs::new();
    let mut h = Hako::start(&apps(&[httpd_app("web", &rootfs, &[CHURN])]), &[&rootfs]);
    assert_eq!(healthz(&h), (200, "ok\n".to_owned()));
    // Five deaths within 10 s: the fifth is not restarted at once.
    let mut pids = Vec::new();
    for i in 0..5 {
        // A zygote that serves (`/healthz` 200 once it is there): one killed while it starts
        // would be a failed start, not a death and a restart.
        let z = wait_for(Duration::from_secs(5), || {
            let z = zygote_of(h.pid()).filter(|p| !pids.contains(p))?;
            (healthz(&h).0 == 200).then_some(z)
        })
        .unwrap_or_else(|| {
            let children: Vec<_> = descendants(h.pid())
                .into_iter()
                .filter(|p| ppid_and_state(*p).is_some_and(|(pp, _)| pp == h.pid()))
                .map(|p| {
                    let comm = std::fs::read_to_string(format!("/proc/{p}/comm"));
                    (
                        p,
                        comm.unwrap_or_default(),
                        ppid_and_state(p),
                        pid_ns_depth(p),
                    )
                })
                .collect();
            panic!(
                "zygote {i} not found serving (killed: {pids:?}); /healthz {:?}; hako's \
                 children: {children:?}\n{}",
                healthz(&h),
                h.log()
            )
        });
        pids.push(z);
        h.track();
        send_signal(z, libc::SIGKILL).expect("kill the zygote");
    }
    // /healthz first says the zygote died and is being restarted (until the keeper has
    // noticed the fifth death), then that it was given up on: wait for the latter.
    const GIVEN_UP: &str = "cannot boot: zygote restart failed: 5 failures within 10 s";
    let mut seen = Vec::new();
    wait_for(Duration::from_secs(5), || {
        let (s, b) = healthz(&h);
        let given_up = s == 503 && b.starts_with(GIVEN_UP);
        if seen.last() != Some(&(s, b.clone())) {
            seen.push((s, b));
        }
        given_up.then_some(())
    })
    .unwrap_or_else(|| panic!("no 503 {GIVEN_UP:?}; /healthz said {seen:?}\n{}", h.log()));
    // Boots fail at once meanwhile (no wait for a zygote that is not coming).
    let t = Instant::now();
    let r = h.get("web.test", "/");
    assert_ne!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Retried: healthy again, and boots work.
    wait_for(Duration::from_secs(5), || {
        (healthz(&h).0 == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("not healthy again: {:?}\n{}", healthz(&h), h.log()));
    let r = h.get("web.test", "/");
    assert_eq!(r.status, 200, "{}", r.text());
    let m = h.metrics();
    assert_eq!(
        m.value("hako_zygote_restarts_total", &[]),
        Some(5.0),
        "{}",
        m.text
    );
    for p in &pids {
        assert!(
            ppid_and_state(*p).is_none_or(|(pp, _)| pp != h.pid()),
            "killed zygote {p} not reaped"
        );
    }
    assert!(zombies_of(h.pid()).is_empty(), "{:?}", zombies_of(h.pid()));
    let st = h.stop();
    assert!(st.success(), "hako exit: {st}\n{}", h.log());
    h.assert_clean();
}

/// `hako --log-format json serve`: a zygote restarted after a `kill -9` logs JSON too (it is a
/// new process, started with no options: it reads the format `hako` put in its environment).
#[test]
fn a_restarted_zygote_logs_in_the_serves_format() {
    require_root!();
    let rootfs = Rootfs::new();
    let h = Hako::start_with_args(
        &apps(&[httpd_app("web", &rootfs, &[])]),
        &[&rootfs],
        "",
        &["--log-format", "json"],
    );
    let old = wait_for(Duration::from_secs(5), || zygote_of(h.pid())).expect("a zygote");
    send_signal(old, libc::SIGKILL).expect("kill the zygote");
    let line = wait_for(Duration::from_secs(5), || {
        h.log()
            .lines()
            .find(|l| l.contains("restarted zygote serving"))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("no line from the restarted zygote:\n{}", h.log()));
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the restarted zygote logged text ({e}): {line}"));
    assert_eq!(v["level"], "INFO", "{line}");
    let log = h.log();
    let not_json: Vec<&str> = log.lines().filter(|l| !l.starts_with('{')).collect();
    assert!(not_json.is_empty(), "lines that are not JSON: {not_json:?}");
}
