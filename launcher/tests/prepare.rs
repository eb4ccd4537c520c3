//! `Zygote::prepare` / `Zygote::forget`: first boots from warm namespaces, released
//! namespaces, the cap on warm apps (root only).
mod common;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::*;
use hako_launcher::{
    wait_pidfd, ContainerSpec, ExitStatusInfo, LaunchError, SpawnRequest, Spawned, Zygote,
    ZygoteOptions,
};

fn request(spec: &ContainerSpec, key: &str, log: Option<&std::path::Path>) -> SpawnRequest {
    SpawnRequest {
        spec: spec.clone(),
        spec_key: key.into(),
        cgroup: None,
        log_path: log.map(ToOwned::to_owned),
        stderr_path: None,
    }
}

fn exit_status(s: &Spawned) -> Option<ExitStatusInfo> {
    wait_pidfd(s.pidfd.as_fd(), false).unwrap()
}

/// Mount and network namespaces the zygote (any of its threads) holds open as descriptors.
fn ns_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| {
            let t = t.to_string_lossy();
            t.starts_with("mnt:[") || t.starts_with("net:[")
        })
        .count()
}

/// Polls `cond` for up to 10 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn warm_of(z: &Zygote, key: &str) -> usize {
    z.stats()
        .unwrap()
        .warm_by_app
        .get(key)
        .copied()
        .unwrap_or(0)
}

#[test]
fn first_boot_after_prepare_is_warm() {
    let _one = one_at_a_time();
    if !is_root("prepare warm first boot") {
        return;
    }
    let fs = Rootfs::build();
    let zygote = Zygote::start().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut spec = fs.spec("hostname; ip link show lo | grep -c UP; exit 7");
    spec.hostname = "prepared".into();
    zygote.prepare(&spec, "pre-app").unwrap();
    assert_eq!(zygote.stats().unwrap().prepared_specs, 1);
    eventually("the warm pool of pre-app", || {
        warm_of(&zygote, "pre-app") == 2
    });
    let log = logs.path().join("pre.log");
    let s = zygote
        .spawn(&request(&spec, "pre-app", Some(&log)))
        .unwrap();
    assert!(s.warm, "the first boot of a prepared app must be warm");
    assert_eq!(exit_status(&s), Some(ExitStatusInfo::Exited(7)));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "prepared\n1\n");

    // Without prepare, the first boot is cold and builds nothing ahead (the app may never
    // boot again); from its second boot on it is kept warm.
    let other = fs.spec("exit 0");
    let s = zygote.spawn(&request(&other, "other-app", None)).unwrap();
    assert!(!s.warm, "an app never prepared boots cold the first time");
    assert_eq!(exit_status(&s), Some(ExitStatusInfo::Exited(0)));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        warm_of(&zygote, "other-app"),
        0,
        "nothing is built for a one-off boot"
    );
    let s = zygote.spawn(&request(&other, "other-app", None)).unwrap();
    assert!(!s.warm);
    assert_eq!(exit_status(&s), Some(ExitStatusInfo::Exited(0)));
    eventually("the warm pool of other-app", || {
        warm_of(&zygote, "other-app") == 2
    });
    let s = zygote.spawn(&request(&other, "other-app", None)).unwrap();
    assert!(s.warm);
    assert_eq!(exit_status(&s), Some(ExitStatusInfo::Exited(0)));
}

#[test]
fn forget_releases_the_warm_namespaces() {
    let _one = one_at_a_time();
    if !is_root("forget") {
        return;
    }
    let fs = Rootfs::build();
    let zygote = Zygote::start().unwrap();
    let zpid = zygote.pid();
    let base = ns_fds(zpid);
    let (a, b) = (fs.spec("exit 1"), fs.spec("exit 2"));
    zygote.prepare(&a, "a").unwrap();
    zygote.prepare(&b, "b").unwrap();
    eventually("both pools full", || {
        zygote.stats().unwrap().warm_namespaces == 4
    });
    // Isolated network: each warm set is one mount and one network namespace.
    assert_eq!(ns_fds(zpid), base + 8);

    zygote.forget("a").unwrap();
    eventually("a's namespaces released", || ns_fds(zpid) == base + 4);
    let st = zygote.stats().unwrap();
    assert_eq!(st.prepared_specs, 1);
    assert_eq!(st.warm_by_app.keys().collect::<Vec<_>>(), vec!["b"]);

    zygote.forget("b").unwrap();
    eventually("b's namespaces released", || ns_fds(zpid) == base);
    let st = zygote.stats().unwrap();
    assert_eq!((st.prepared_specs, st.warm_namespaces), (0, 0));
    // They stay released: nothing rebuilds them.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(ns_fds(zpid), base);
    zygote.forget("never-prepared").unwrap();

    // A forgotten app still boots (cold, from the spec in the request).
    let s = zygote.spawn(&request(&a, "a", None)).unwrap();
    assert!(!s.warm);
    assert_eq!(exit_status(&s), Some(ExitStatusInfo::Exited(1)));
}

#[test]
fn at_most_max_prepared_apps_are_warm_most_recently_used_first() {
    let _one = one_at_a_time();
    if !is_root("max_prepared_apps") {
        return;
    }
    let fs = Rootfs::build();
    let zygote = Zygote::start_with(ZygoteOptions {
        warm_namespaces: 1,
        max_prepared_apps: 2,
    })
    .unwrap();
    let zpid = zygote.pid();
    let base = ns_fds(zpid);
    let spec = |n: i32| fs.spec(&format!("exit {n}"));
    for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
        zygote.prepare(&spec(i as i32), key).unwrap();
    }
    eventually("two apps warm", || {
        zygote.stats().unwrap().warm_namespaces == 2
    });
    std::thread::sleep(Duration::from_millis(200));
    let st = zygote.stats().unwrap();
    assert_eq!(st.prepared_specs, 3, "every spec is prepared");
    assert_eq!(
        st.warm_by_app.keys().collect::<Vec<_>>(),
        vec!["a", "b"],
        "only the first two are warmed"
    );
    assert_eq!(ns_fds(zpid), base + 4);

    // Booting c makes it the most recently used app; a, the least recently used, is released.
    let s = zygote.spawn(&request(&spec(2), "c", None)).unwrap();
    assert!(!s.warm);
    assert_eq!(exit_status(&s), Some(ExitStatusInfo::Exited(2)));
    eventually("c warm, a released", || {
        zygote
            .stats()
            .unwrap()
            .warm_by_app
            .keys()
            .collect::<Vec<_>>()
            == vec!["b", "c"]
    });
    eventually("a's namespaces closed", || ns_fds(zpid) == base + 4);
    for (n, key, warm) in [(2, "c", true), (1, "b", true), (0, "a", false)] {
        let s = zygote.spawn(&request(&spec(n), key, None)).unwrap();
        assert_eq!(s.warm, warm, "boot of {key}");
        assert_eq!(exit_status(&s), Some(ExitStatusInfo::Exited(n)));
    }
}

#[test]
fn prepare_of_an_invalid_spec_fails_and_changes_nothing() {
    let _one = one_at_a_time();
    if !is_root("prepare invalid") {
        return;
    }
    let fs = Rootfs::build();
    let zygote = Zygote::start().unwrap();
    let mut bad = fs.spec("exit 0");
    bad.capabilities = vec!["CAP_BOGUS".into()];
    let err = zygote.prepare(&bad, "bad");
    assert!(matches!(err, Err(LaunchError::InvalidSpec(_))), "{err:?}");
    let st = zygote.stats().unwrap();
    assert_eq!((st.prepared_specs, st.warm_namespaces), (0, 0));
    // The zygote keeps serving: a valid app under the same key prepares and boots warm.
    let good = fs.spec("exit 5");
    zygote.prepare(&good, "bad").unwrap();
    eventually("the warm pool", || warm_of(&zygote, "bad") == 2);
    let s = zygote.spawn(&request(&good, "bad", None)).unwrap();
    assert!(s.warm);
    assert_eq!(exit_status(&s), Some(ExitStatusInfo::Exited(5)));
    let s = zygote.spawn(&request(&good, "other", None)).unwrap();
    assert_eq!(exit_status(&s), Some(ExitStatusInfo::Exited(5)));
}
