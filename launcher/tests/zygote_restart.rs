//! A killed zygote is reaped and restarted by re-executing this binary in zygote mode (root
//! only). Its own `main` (no libtest harness): like `hako`, the binary must enter zygote mode
//! first thing when it is re-executed as `<exe> __zygote ...`.
mod common;

use std::os::fd::AsFd;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hako_launcher::{
    wait_pidfd, ExitStatusInfo, LaunchError, SpawnRequest, Zygote, ZygoteOptions, ZygoteRestart,
    ZygoteStatus,
};

fn main() {
    match hako_launcher::zygote_mode() {
        Ok(Some(z)) => z.run(),
        Ok(None) => {}
        Err(e) => panic!("zygote mode: {e}"),
    }
    if !is_root("zygote_restart") {
        return;
    }
    let tests: [(&str, fn()); 3] = [
        (
            "calls_in_flight_on_a_killed_zygote_fail_and_later_calls_succeed",
            calls_in_flight_on_a_killed_zygote_fail_and_later_calls_succeed,
        ),
        (
            "killed_zygote_is_reaped_and_restarted",
            killed_zygote_is_reaped_and_restarted,
        ),
        (
            "zygote_dying_again_and_again_is_given_up_then_retried",
            zygote_dying_again_and_again_is_given_up_then_retried,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        eprintln!("test {name} ...");
        test();
        eprintln!("test {name} ... ok");
    }
}

fn request(fs: &Rootfs, script: &str, key: &str) -> SpawnRequest {
    SpawnRequest {
        spec: fs.spec(script),
        spec_key: key.into(),
        cgroup: None,
        log_path: None,
        stderr_path: None,
    }
}

/// `(ppid, state)` of a live pid, from /proc/PID/stat.
fn ppid_and_state(pid: i32) -> Option<(i32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    Some((it.next()?.parse().ok()?, state))
}

/// The process is gone for good (reaped), not a zombie of ours (nor of anyone).
fn assert_reaped(pid: i32, what: &str) {
    let gone = wait(Duration::from_secs(5), || match ppid_and_state(pid) {
        None => Some(()),
        Some((ppid, _)) if ppid != std::process::id() as i32 => Some(()), // pid reused
        Some(_) => None,
    });
    assert!(
        gone.is_some(),
        "{what} {pid} not reaped: {:?}",
        ppid_and_state(pid)
    );
}

fn wait<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn running_other_than(z: &Zygote, old: i32) -> Option<i32> {
    match z.status() {
        ZygoteStatus::Running { pid } if pid != old => Some(pid),
        _ => None,
    }
}

fn kill9(pid: i32) {
    // SAFETY: kill on plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill {pid}");
}

fn killed_zygote_is_reaped_and_restarted() {
    let fs = Rootfs::build();
    let zygote = Zygote::start_with(ZygoteOptions {
        warm_namespaces: 1,
        max_prepared_apps: 4,
    })
    .unwrap();
    let seen: Arc<Mutex<Vec<ZygoteRestart>>> = Arc::default();
    {
        let seen = seen.clone();
        zygote.on_restart(Arc::new(move |r| seen.lock().unwrap().push(r.clone())));
    }
    zygote.prepare(&fs.spec("exit 7"), "app").unwrap();
    // A container started by the zygote that is about to die keeps running.
    let long = zygote
        .spawn(&request(&fs, "sleep 1; exit 5", "long"))
        .unwrap();
    let old = zygote.pid();
    assert_eq!(zygote.status(), ZygoteStatus::Running { pid: old });
    assert_eq!(zygote.restarts(), 0);

    let killed = Instant::now();
    kill9(old);
    let new = wait(Duration::from_secs(5), || running_other_than(&zygote, old))
        .expect("a new zygote within 5 s");
    eprintln!(
        "zygote {old} killed; {new} serving after {:.1} ms",
        killed.elapsed().as_secs_f64() * 1000.0
    );
    assert_reaped(old, "killed zygote");
    let cmdline = std::fs::read(format!("/proc/{new}/cmdline")).unwrap();
    assert!(
        cmdline.split(|b| *b == 0).any(|a| a == b"__zygote"),
        "the new zygote is this binary in zygote mode: {:?}",
        String::from_utf8_lossy(&cmdline)
    );
    assert_eq!(ppid_and_state(new).unwrap().0, std::process::id() as i32);
    assert_eq!(zygote.restarts(), 1);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "one restart reported: {seen:?}");
        assert_eq!((seen[0].old_pid, seen[0].new_pid), (old, new));
    }

    // Boots work again: a prepared app (cache rebuilt lazily), a new one, and warm ones.
    for _ in 0..3 {
        let s = zygote.spawn(&request(&fs, "exit 7", "app")).unwrap();
        assert_eq!(
            wait_pidfd(s.pidfd.as_fd(), false).unwrap(),
            Some(ExitStatusInfo::Exited(7))
        );
    }
    let s = zygote.spawn(&request(&fs, "exit 3", "other")).unwrap();
    assert_eq!(
        wait_pidfd(s.pidfd.as_fd(), false).unwrap(),
        Some(ExitStatusInfo::Exited(3))
    );
    assert_eq!(zygote.stats().unwrap().prepared_specs, 2);
    // The running container was ours all along: reaped here with its status.
    assert_eq!(
        wait_pidfd(long.pidfd.as_fd(), false).unwrap(),
        Some(ExitStatusInfo::Exited(5))
    );
    drop(zygote);
    assert_reaped(new, "restarted zygote after drop");
}

fn zygote_dying_again_and_again_is_given_up_then_retried() {
    let fs = Rootfs::build();
    let zygote = Zygote::start_with(ZygoteOptions {
        warm_namespaces: 0,
        max_prepared_apps: 4,
    })
    .unwrap();
    let mut pids = Vec::new();
    for i in 0..5 {
        let old = zygote.pid();
        pids.push(old);
        kill9(old);
        if i < 4 {
            wait(Duration::from_secs(5), || running_other_than(&zygote, old)).expect("restarted");
        }
    }
    // The fifth death within 10 s: given up on, with the reason; boots fail at once.
    let reason = wait(Duration::from_secs(2), || match zygote.status() {
        ZygoteStatus::Failed { reason } => Some(reason),
        _ => None,
    })
    .expect("given up on");
    assert!(reason.contains("zygote restart failed"), "{reason}");
    let t = Instant::now();
    match zygote.spawn(&request(&fs, "exit 0", "app")) {
        Err(LaunchError::ZygoteUnavailable(r)) => assert!(r.contains("5 failures"), "{r}"),
        other => panic!("expected ZygoteUnavailable, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "fails without waiting"
    );
    // Still retried: running again, and boots work.
    let last = *pids.last().unwrap();
    wait(Duration::from_secs(5), || running_other_than(&zygote, last))
        .expect("running again after the retry");
    let s = zygote.spawn(&request(&fs, "exit 4", "app")).unwrap();
    assert_eq!(
        wait_pidfd(s.pidfd.as_fd(), false).unwrap(),
        Some(ExitStatusInfo::Exited(4))
    );
    assert_eq!(zygote.restarts(), 5);
    for p in pids {
        assert_reaped(p, "killed zygote");
    }
}

fn calls_in_flight_on_a_killed_zygote_fail_and_later_calls_succeed() {
    const THREADS: usize = 8;
    let fs = Arc::new(Rootfs::build());
    let zygote = Arc::new(Zygote::start().unwrap());
    let dir = tempfile::tempdir().unwrap();
    // A log "file" that is a FIFO without reader: the zygote blocks opening it, so every
    // request sent after it is certainly in flight when the zygote dies.
    let fifo = dir.path().join("stuck.log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Plain threads, not scoped ones: a caller that hangs must fail the test, not block it.
    let (tx, rx) = mpsc::channel::<(usize, Result<(), LaunchError>)>();
    for t in 0..THREADS {
        let (tx, zygote, fs) = (tx.clone(), zygote.clone(), fs.clone());
        std::thread::spawn(move || {
            // Spawn until a call fails; reap what was started.
            let end = loop {
                match zygote.spawn(&request(&fs, &format!("sleep 0.05; exit {t}"), "app")) {
                    Ok(sp) => {
                        let _ = wait_pidfd(sp.pidfd.as_fd(), false);
                    }
                    Err(e) => break Err(e),
                }
            };
            let _ = tx.send((t, end));
        });
    }
    {
        let (tx, zygote, fs, fifo) = (tx.clone(), zygote.clone(), fs.clone(), fifo.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut req = request(&fs, "exit 0", "stuck");
            req.log_path = Some(fifo);
            let _ = tx.send((THREADS, zygote.spawn(&req).map(|_| ())));
        });
    }
    drop(tx);
    std::thread::sleep(Duration::from_millis(300));
    let old = zygote.pid();
    kill9(old);
    let mut ended = vec![false; THREADS + 1];
    for _ in 0..=THREADS {
        let (t, end) = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("callers still blocked (true = returned): {ended:?}"));
        assert_eq!(end, Err(LaunchError::ZygoteDied { pid: old }), "caller {t}");
        ended[t] = true;
    }
    // Later calls go to the new zygote.
    let s = zygote.spawn(&request(&fs, "exit 6", "app")).unwrap();
    assert_eq!(
        wait_pidfd(s.pidfd.as_fd(), false).unwrap(),
        Some(ExitStatusInfo::Exited(6))
    );
    assert_ne!(zygote.pid(), old);
    assert_eq!(zygote.restarts(), 1);
    assert_reaped(old, "killed zygote");
}
