//! The zygote path and cgroup placement (root only).
mod common;

use std::os::fd::AsFd;

use common::*;
use hako_launcher::{
    spawn_prepared, wait_pidfd, CgroupLimits, CgroupRoot, CgroupVersion, ExitStatusInfo,
    LaunchError, Output, PreparedSpec, SpawnRequest, Spawned, Zygote,
};

#[test]
fn zygote_spawns_children_of_the_caller_and_reports_exec_errors() {
    let _one = one_at_a_time();
    if !is_root("zygote") {
        return;
    }
    let fs = Rootfs::build();
    let zygote = Zygote::start().unwrap();
    let root = cgroup_root();
    let logs = tempfile::tempdir().unwrap();
    for i in 0..3 {
        let cg = TestCgroup::new(
            &root,
            &CgroupLimits {
                pids: Some(8),
                ..Default::default()
            },
        );
        let log = logs.path().join(format!("{i}.log"));
        let req = SpawnRequest {
            spec: fs.spec("echo hello $$; exit 3"),
            spec_key: "same-app".into(),
            cgroup: Some(cg.get().attach()),
            log_path: Some(log.clone()),
            stderr_path: None,
        };
        let s = zygote.spawn(&req).unwrap();
        // The container is our child: we can reap it through the pidfd.
        let st = wait_pidfd(s.pidfd.as_fd(), false).unwrap().unwrap();
        assert_eq!(st, ExitStatusInfo::Exited(3));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "hello 1\n");
    }
    // stdout and stderr apart, into pipes opened through /proc (as the supervisor does).
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let (err_r, err_w) = nix::unistd::pipe().unwrap();
    let fd_path = |fd: &std::os::fd::OwnedFd| {
        use std::os::fd::AsRawFd;
        std::path::PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            fd.as_raw_fd()
        ))
    };
    let s = zygote
        .spawn(&SpawnRequest {
            spec: fs.spec("echo to-out; echo to-err >&2"),
            spec_key: "split".into(),
            cgroup: None,
            log_path: Some(fd_path(&out_w)),
            stderr_path: Some(fd_path(&err_w)),
        })
        .unwrap();
    drop((out_w, err_w));
    let st = wait_pidfd(s.pidfd.as_fd(), false).unwrap().unwrap();
    assert_eq!(st, ExitStatusInfo::Exited(0));
    let read_all = |fd: std::os::fd::OwnedFd| {
        use std::io::Read;
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        s
    };
    assert_eq!(read_all(out_r), "to-out\n");
    assert_eq!(read_all(err_r), "to-err\n");
    let mut spec = fs.spec("");
    spec.command = vec!["/bin/nope".into()];
    let err = zygote
        .spawn(&SpawnRequest {
            spec,
            spec_key: "nope".into(),
            cgroup: None,
            log_path: None,
            stderr_path: None,
        })
        .unwrap_err();
    assert_eq!(
        err,
        LaunchError::Exec {
            path: "/bin/nope".into(),
            errno: libc::ENOENT
        }
    );
    // Invalid specs come back as errors too, and the zygote keeps serving.
    let mut spec = fs.spec("");
    spec.capabilities = vec!["CAP_BOGUS".into()];
    let err = zygote.spawn(&SpawnRequest {
        spec,
        spec_key: "bogus".into(),
        cgroup: None,
        log_path: None,
        stderr_path: None,
    });
    assert!(matches!(err, Err(LaunchError::InvalidSpec(_))), "{err:?}");
    let s = zygote
        .spawn(&SpawnRequest {
            spec: fs.spec("true"),
            spec_key: "t".into(),
            cgroup: None,
            log_path: None,
            stderr_path: None,
        })
        .unwrap();
    assert_eq!(
        wait_pidfd(s.pidfd.as_fd(), false).unwrap(),
        Some(ExitStatusInfo::Exited(0))
    );
    let zpid = zygote.pid();
    drop(zygote);
    assert!(
        !std::path::Path::new(&format!("/proc/{zpid}")).exists(),
        "zygote must be gone after drop"
    );
}

#[test]
fn zygote_is_usable_from_many_threads() {
    let _one = one_at_a_time();
    if !is_root("zygote threads") {
        return;
    }
    let fs = Rootfs::build();
    let zygote = Zygote::start().unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (z, fs) = (&zygote, &fs);
            s.spawn(move || {
                for _ in 0..5 {
                    // A uid change in the child: glibc's setresuid would deadlock here, since the
                    // zygote has a helper thread (regression test).
                    let mut spec = fs.spec(&format!("exit {t}"));
                    spec.uid = 1000 + t as u32;
                    spec.gid = 1000;
                    let req = SpawnRequest {
                        spec,
                        spec_key: format!("k{t}"),
                        cgroup: None,
                        log_path: None,
                        stderr_path: None,
                    };
                    let sp = z.spawn(&req).unwrap();
                    assert_eq!(
                        wait_pidfd(sp.pidfd.as_fd(), false).unwrap(),
                        Some(ExitStatusInfo::Exited(t))
                    );
                }
            });
        }
    });
}

fn wait_for_output(path: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) == 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Spawns `cat /proc/self/cgroup; sleep 5` in `cg`, logging to a temporary file; returns the
/// container, the log and the host's view of its `/proc/PID/cgroup`.
fn spawn_cgroup_reader(fs: &Rootfs, cg: &TestCgroup) -> (Spawned, tempfile::NamedTempFile, String) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let p = PreparedSpec::new(&fs.spec("cat /proc/self/cgroup; sleep 5")).unwrap();
    let s = spawn_prepared(
        &p,
        Some(&cg.get().attach()),
        &Output::Append(log.path().to_owned()),
    )
    .unwrap();
    let host_view = std::fs::read_to_string(format!("/proc/{}/cgroup", s.pid)).unwrap();
    (s, log, host_view)
}

/// The process is in its group (all hierarchies) before it runs, and its cgroup namespace is
/// rooted there.
#[test]
fn container_runs_in_its_cgroup_with_its_own_cgroup_namespace() {
    let _one = one_at_a_time();
    if !is_root("cgroup placement") {
        return;
    }
    let fs = Rootfs::build();
    let root = cgroup_root();
    let cg = TestCgroup::new(
        &root,
        &CgroupLimits {
            memory_max: Some(64 << 20),
            ..Default::default()
        },
    );
    let (s, log, host_view) = spawn_cgroup_reader(&fs, &cg);
    assert!(cg.get().pids().unwrap().contains(&s.pid));
    wait_for_output(log.path());
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(s.pid), nix::sys::signal::SIGKILL);
    wait_pidfd(s.pidfd.as_fd(), false).unwrap();
    let inside = std::fs::read_to_string(log.path()).unwrap();
    match root.version() {
        CgroupVersion::V1 => {
            for c in ["memory", "pids", "cpu"] {
                let line = host_view
                    .lines()
                    .find(|l| l.split(':').nth(1) == Some(c))
                    .unwrap();
                assert!(
                    line.ends_with(&format!("/{}/{}", CGROUP_PARENT, cg.name)),
                    "{host_view}"
                );
                let inner = inside
                    .lines()
                    .find(|l| l.split(':').nth(1) == Some(c))
                    .unwrap();
                assert!(
                    inner.ends_with(":/"),
                    "cgroup namespace must be rooted at the group: {inside}"
                );
            }
        }
        CgroupVersion::V2 => {
            assert!(
                host_view.contains(&format!("0::/{}/{}", CGROUP_PARENT, cg.name)),
                "{host_view}"
            );
            assert!(inside.contains("0::/\n"), "{inside}");
        }
    }
}

/// `CLONE_INTO_CGROUP` on a real cgroup v2 hierarchy: on a hybrid host the (controller-less)
/// unified mount; on a pure v2 host the main one.
#[test]
fn clone_into_cgroup_places_the_child_on_v2() {
    let _one = one_at_a_time();
    if !is_root("v2 placement") {
        return;
    }
    let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .find(|m| std::path::Path::new(m).join("cgroup.controllers").exists());
    let Some(mount) = mount else {
        eprintln!("SKIPPED v2 placement: no cgroup2 mount");
        return;
    };
    let fs = Rootfs::build();
    let root = CgroupRoot::detect(std::path::Path::new(mount), "hako-test").unwrap();
    assert_eq!(root.version(), CgroupVersion::V2);
    let cg = TestCgroup::new(&root, &CgroupLimits::default());
    let (s, _log, host_view) = spawn_cgroup_reader(&fs, &cg);
    assert!(
        host_view.contains(&format!("0::/hako-test/{}\n", cg.name)),
        "{host_view}"
    );
    assert!(cg.get().pids().unwrap().contains(&s.pid));
    cg.get().kill_all().unwrap();
    assert_eq!(
        wait_pidfd(s.pidfd.as_fd(), false).unwrap(),
        Some(ExitStatusInfo::Signaled(9))
    );
    drop(cg);
    let _ = std::fs::remove_dir(std::path::Path::new(mount).join("hako-test"));
}

/// Boots from pre-built (warm) namespaces isolate exactly like cold boots, and no two
/// containers share a namespace (all four run at the same time, so a namespace's inode number
/// cannot have been freed and reused between them).
#[test]
fn warm_namespaces_are_fresh_and_fully_isolated() {
    let _one = one_at_a_time();
    if !is_root("warm namespaces") {
        return;
    }
    let fs = Rootfs::build();
    let zygote = Zygote::start_with(hako_launcher::ZygoteOptions {
        warm_namespaces: 2,
        ..Default::default()
    })
    .unwrap();
    let root = cgroup_root();
    let logs = tempfile::tempdir().unwrap();
    let script = "echo self=$$; ls /tmp; touch /tmp/mark; hostname; tail -n +3 /proc/net/dev | cut -d: -f1; \
                  ip link show lo | grep -c UP; for p in /proc/[0-9]*; do echo pid=${p#/proc/}; done; \
                  cut -d' ' -f5 /proc/self/mountinfo; touch /etc/x 2>/dev/null || echo ro; \
                  grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status | tr -d '\\t'; \
                  readlink /proc/self/ns/uts; readlink /proc/self/ns/ipc; sleep 1";
    let mut spec = fs.spec(script);
    spec.hostname = "warm".into();
    let host_ns: Vec<String> = ["uts", "ipc"]
        .iter()
        .map(|k| {
            std::fs::read_link(format!("/proc/self/ns/{k}"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    let mut running = Vec::new();
    for i in 0..4 {
        // Let the helper thread build the namespaces after the first (cold) boot.
        std::thread::sleep(std::time::Duration::from_millis(150));
        let cg = TestCgroup::new(&root, &CgroupLimits::default());
        let log = logs.path().join(format!("{i}.log"));
        let req = SpawnRequest {
            spec: spec.clone(),
            spec_key: "warm-app".into(),
            cgroup: Some(cg.get().attach()),
            log_path: Some(log.clone()),
            stderr_path: None,
        };
        running.push((zygote.spawn(&req).unwrap(), cg, log));
    }
    let mut seen_ns: Vec<String> = Vec::new();
    let mut warm_boots = 0;
    for (i, (s, _cg, log)) in running.iter().enumerate() {
        warm_boots += usize::from(s.warm);
        assert_eq!(
            wait_pidfd(s.pidfd.as_fd(), false).unwrap(),
            Some(ExitStatusInfo::Exited(0))
        );
        let out = std::fs::read_to_string(log).unwrap();
        let is_ns = |l: &str| l.starts_with("uts:") || l.starts_with("ipc:");
        let ns: Vec<&str> = out.lines().filter(|l| is_ns(l)).collect();
        assert_eq!(ns.len(), 2, "boot {i}: {out}");
        for n in ns {
            assert!(
                !host_ns.iter().any(|h| h == n) && !seen_ns.iter().any(|o| o == n),
                "boot {i}: namespace {n} is the host's or another container's: {out}"
            );
            seen_ns.push(n.to_owned());
        }
        let mounts: Vec<&str> = out.lines().filter(|l| l.starts_with('/')).collect();
        assert_eq!(
            out.lines()
                .filter(|l| !l.starts_with('/') && !is_ns(l))
                .map(str::trim)
                .collect::<Vec<_>>(),
            vec![
                "self=1",
                "warm",
                "lo",
                "1",
                "pid=1",
                "ro",
                "NoNewPrivs:1",
                "Seccomp:2"
            ],
            "boot {i}: {out}"
        );
        // The read-only and masked /proc entries (tests/proc_masks.rs) besides.
        assert!(mounts.contains(&"/proc/sys"), "boot {i}: {out}");
        let mut sorted: Vec<&str> = mounts
            .iter()
            .copied()
            .filter(|m| !m.starts_with("/proc/"))
            .collect();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            vec!["/", "/dev", "/dev/pts", "/dev/shm", "/proc", "/run", "/tmp"],
            "boot {i}: {out}"
        );
    }
    assert!(
        warm_boots >= 2,
        "only {warm_boots} of 4 boots took warm namespaces"
    );
}
