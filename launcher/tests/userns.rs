//! User namespaces (`ContainerSpec::user_namespace`): the container's root is host uid
//! 100000, on a direct (cold) boot and from the zygote, in its cgroup, with `/proc` still
//! masked and the device nodes working (root only).
mod common;

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use hako_launcher::{
    pidfd_signal, spawn_prepared, wait_pidfd, CgroupLimits, ContainerSpec, ExitStatusInfo, Output,
    PreparedSpec, RootfsSpec, SpawnRequest, Zygote, USERNS_HOST_BASE,
};

/// Prints what the container sees of its ids and devices, tries the host-wide sysctl, then
/// says `ready` and waits to be looked at from the host.
const PROBE: &str = r#"
echo uid_map=$(cat /proc/self/uid_map)
echo gid_map=$(cat /proc/self/gid_map)
echo id=$(id -u):$(id -g)
echo groups=$(cat /proc/self/status | grep '^Groups:' | cut -f2)
v=$(cat /proc/sys/kernel/core_pattern)
(echo "$v" > /proc/sys/kernel/core_pattern) 2>/dev/null && echo core=writable || echo core=denied
echo zero=$(head -c 5 /dev/zero | wc -c)
echo urandom=$(head -c 7 /dev/urandom | wc -c)
echo null=$(echo hi > /dev/null && cat /dev/null | wc -c)
[ -e /proc/kcore ] && echo kcore=$(wc -c < /proc/kcore) || echo kcore=0
mknod /tmp/sda b 8 0 2>/dev/null && echo mknod=ok || echo mknod=denied
echo ready
sleep 30
"#;

/// A busybox rootfs the container's root (host uid 100000, "others" for host-owned files) can
/// search: a temp dir is 0700.
fn rootfs() -> Rootfs {
    let fs = Rootfs::build();
    std::fs::set_permissions(fs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    fs
}

fn userns_spec(fs: &Rootfs) -> ContainerSpec {
    let mut spec = fs.spec(PROBE);
    spec.user_namespace = true;
    spec
}

fn wait_ready(log: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = std::fs::read_to_string(log).unwrap_or_default();
        if out.lines().any(|l| l == "ready") {
            return out;
        }
        assert!(Instant::now() < deadline, "no `ready` in:\n{out}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_inside(out: &str) {
    let map = format!("0 {USERNS_HOST_BASE} 65536");
    for want in [
        format!("uid_map= {map}"),
        format!("gid_map= {map}"),
        "id=0:0".to_owned(),
        "groups=".to_owned(),
        "core=denied".to_owned(),
        "zero=5".to_owned(),
        "urandom=7".to_owned(),
        "null=0".to_owned(),
        "kcore=0".to_owned(),
        "mknod=denied".to_owned(),
    ] {
        assert!(
            out.lines().any(|l| l.trim() == want),
            "{want} missing in:\n{out}"
        );
    }
}

/// `Uid:` and `Gid:` of a host process: real, effective, saved, filesystem.
fn host_ids(pid: i32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    (field("Uid:"), field("Gid:"))
}

fn assert_host_ids(pid: i32) {
    let all = format!("{0} {0} {0} {0}", USERNS_HOST_BASE);
    assert_eq!(host_ids(pid), (all.clone(), all));
}

#[test]
fn direct_boot_runs_as_root_inside_and_uid_100000_outside() {
    let _one = one_at_a_time();
    if !is_root("userns, direct") {
        return;
    }
    let fs = rootfs();
    let root = cgroup_root();
    let cg = TestCgroup::new(&root, &CgroupLimits::default());
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("out.log");
    let before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let p = PreparedSpec::new(&userns_spec(&fs)).unwrap();
    let s = spawn_prepared(&p, Some(&cg.get().attach()), &Output::Append(log.clone())).unwrap();
    let out = wait_ready(&log);
    assert_inside(&out);
    assert_host_ids(s.pid);
    // It is in its cgroup.
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", s.pid)).unwrap();
    assert!(cgroups.contains(&cg.name), "{cgroups}");
    pidfd_signal(s.pidfd.as_fd(), libc::SIGKILL).unwrap();
    let status = wait_pidfd(s.pidfd.as_fd(), false).unwrap();
    assert_eq!(status, Some(ExitStatusInfo::Signaled(libc::SIGKILL)));
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        before
    );
}

#[test]
fn zygote_boots_are_cold_and_mapped() {
    let _one = one_at_a_time();
    if !is_root("userns, zygote") {
        return;
    }
    let fs = rootfs();
    let zygote = Zygote::start().unwrap();
    let root = cgroup_root();
    let logs = tempfile::tempdir().unwrap();
    let spec = userns_spec(&fs);
    let key = "userns-zygote";
    zygote.prepare(&spec, key).unwrap();
    for i in 0..2 {
        let cg = TestCgroup::new(&root, &CgroupLimits::default());
        let log = logs.path().join(format!("{i}.log"));
        let s = zygote
            .spawn(&SpawnRequest {
                spec: spec.clone(),
                spec_key: key.to_owned(),
                cgroup: Some(cg.get().attach()),
                log_path: Some(log.clone()),
                stderr_path: None,
            })
            .unwrap();
        assert!(
            !s.warm,
            "a user-namespaced boot cannot join warm namespaces"
        );
        let out = wait_ready(&log);
        assert_inside(&out);
        assert_host_ids(s.pid);
        let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", s.pid)).unwrap();
        assert!(cgroups.contains(&cg.name), "{cgroups}");
        pidfd_signal(s.pidfd.as_fd(), libc::SIGKILL).unwrap();
        wait_pidfd(s.pidfd.as_fd(), false).unwrap();
    }
    assert_eq!(zygote.stats().unwrap().warm_by_app.get(key), None);
    zygote.forget(key).unwrap();
}

#[test]
fn host_rootfs_in_a_user_namespace_still_hides_the_secrets() {
    let _one = one_at_a_time();
    if !is_root("userns, host rootfs") {
        return;
    }
    let script = "echo id=$(id -u); echo shadow=$(wc -c < /etc/shadow); \
                  echo passwd=$(wc -c < /etc/passwd)";
    let mut spec = ContainerSpec::new(
        RootfsSpec::Host,
        vec!["/bin/sh".into(), "-c".into(), script.into()],
    );
    spec.user_namespace = true;
    let f = run(&spec, &CgroupLimits::default()).unwrap();
    assert_eq!(f.status, ExitStatusInfo::Exited(0), "{}", f.output);
    assert!(f.output.contains("id=0\n"), "{}", f.output);
    assert!(f.output.contains("shadow=0\n"), "{}", f.output);
    assert!(!f.output.contains("passwd=0\n"), "{}", f.output);
}
