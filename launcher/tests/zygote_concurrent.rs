//! Concurrent callers of one zygote (root only): each gets its own outcome. (Callers in flight
//! when the zygote dies: `zygote_restart.rs`, whose binary can be re-executed as a zygote.)
mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use common::*;
use hako_launcher::{
    wait_pidfd, ExitStatusInfo, LaunchError, SpawnRequest, Spawned, Zygote, ZygoteOptions,
};

const THREADS: usize = 8;
const PER_THREAD: usize = 8;

/// The pid the kernel says `pidfd` refers to (`Pid:` in its fdinfo).
fn pidfd_pid(pidfd: &OwnedFd) -> i32 {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .expect("a pidfd")
        .trim()
        .parse()
        .unwrap()
}

/// The request of thread `t`, spawn `i`: an exit code unique to it, or a missing binary of a
/// path unique to it.
fn request(fs: &Rootfs, t: usize, i: usize, fail: bool) -> SpawnRequest {
    let mut spec = fs.spec(&format!("sleep 0.05; exit {}", t * PER_THREAD + i));
    if fail {
        spec.command = vec![format!("/bin/missing-{t}-{i}")];
    }
    SpawnRequest {
        spec,
        // The key names the spec: one app per request.
        spec_key: format!("app-{t}-{i}-{fail}"),
        cgroup: None,
        log_path: None,
        stderr_path: None,
    }
}

/// Spawns from [`THREADS`] threads at once; `fail(t, i)` picks the requests that must fail.
/// Returns every successful spawn's pid.
fn spawn_concurrently(zygote: &Zygote, fs: &Rootfs, fail: fn(usize, usize) -> bool) -> Vec<i32> {
    let mut pids: Vec<i32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    let mut pids = Vec::new();
                    let mut running: Vec<(usize, Spawned)> = Vec::new();
                    for i in 0..PER_THREAD {
                        let result = zygote.spawn(&request(fs, t, i, fail(t, i)));
                        if fail(t, i) {
                            assert_eq!(
                                result.unwrap_err(),
                                LaunchError::Exec {
                                    path: format!("/bin/missing-{t}-{i}"),
                                    errno: libc::ENOENT
                                },
                                "thread {t} spawn {i}"
                            );
                        } else {
                            let sp = result.unwrap_or_else(|e| panic!("thread {t} spawn {i}: {e}"));
                            assert_eq!(pidfd_pid(&sp.pidfd), sp.pid, "thread {t} spawn {i}");
                            running.push((i, sp));
                        }
                    }
                    for (i, sp) in running {
                        assert_eq!(
                            wait_pidfd(sp.pidfd.as_fd(), false).unwrap(),
                            Some(ExitStatusInfo::Exited((t * PER_THREAD + i) as i32)),
                            "thread {t} spawn {i} (pid {})",
                            sp.pid
                        );
                        pids.push(sp.pid);
                    }
                    pids
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let n = pids.len();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), n, "a pid was handed to two callers");
    pids
}

#[test]
fn concurrent_spawns_each_get_their_own_child_and_exit_status() {
    let _one = one_at_a_time();
    if !is_root("concurrent spawns") {
        return;
    }
    let fs = Rootfs::build();
    let zygote = Zygote::start().unwrap();
    let pids = spawn_concurrently(&zygote, &fs, |_, _| false);
    assert_eq!(pids.len(), THREADS * PER_THREAD);
    // Many boots of one app at once (its warm namespaces are shared out one per boot).
    let mut shared: Vec<i32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    let sp = zygote
                        .spawn(&SpawnRequest {
                            spec: fs.spec("sleep 0.05; exit 7"),
                            spec_key: "shared".into(),
                            cgroup: None,
                            log_path: None,
                            stderr_path: None,
                        })
                        .unwrap();
                    assert_eq!(pidfd_pid(&sp.pidfd), sp.pid);
                    assert_eq!(
                        wait_pidfd(sp.pidfd.as_fd(), false).unwrap(),
                        Some(ExitStatusInfo::Exited(7))
                    );
                    sp.pid
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    shared.sort_unstable();
    shared.dedup();
    assert_eq!(shared.len(), THREADS);
    // Cold boots too (no warm namespaces): a different path through the zygote.
    let cold = Zygote::start_with(ZygoteOptions {
        warm_namespaces: 0,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        spawn_concurrently(&cold, &fs, |_, _| false).len(),
        THREADS * PER_THREAD
    );
}

#[test]
fn concurrent_failures_reach_their_own_caller_only() {
    let _one = one_at_a_time();
    if !is_root("concurrent failures") {
        return;
    }
    let fs = Rootfs::build();
    let zygote = Zygote::start().unwrap();
    // Every other request fails, interleaved differently per thread.
    let pids = spawn_concurrently(&zygote, &fs, |t, i| (t + i) % 2 == 0);
    assert_eq!(pids.len(), THREADS * PER_THREAD / 2);
    // The zygote still serves (and its bookkeeping is intact).
    let stats = zygote.stats().unwrap();
    assert_eq!(stats.prepared_specs, THREADS * PER_THREAD);
}
