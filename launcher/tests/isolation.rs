//! Every isolation property, observed from inside the container (root only).
mod common;

use common::*;
use hako_launcher::prepare::capability_mask;
use hako_launcher::{
    CgroupLimits, ExitStatusInfo, LaunchError, NetworkMode, RootfsSpec, DEFAULT_CAPABILITIES,
};

macro_rules! root_only {
    ($name:expr) => {
        if !is_root($name) {
            return;
        }
    };
}

#[test]
fn pid_namespace_shows_only_own_processes_with_app_as_pid_1() {
    root_only!("pid namespace");
    let fs = Rootfs::build();
    let (st, out) = sh(
        &fs,
        "echo self=$$; for p in /proc/[0-9]*; do echo pid=${p#/proc/}; done",
    );
    assert_eq!(st, ExitStatusInfo::Exited(0), "{out}");
    assert!(out.contains("self=1\n"), "{out}");
    let pids: Vec<u32> = out
        .lines()
        .filter_map(|l| l.strip_prefix("pid="))
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids, vec![1], "only the shell itself may be visible: {out}");
}

#[test]
fn uts_namespace_has_its_own_hostname() {
    root_only!("hostname");
    let fs = Rootfs::build();
    let mut spec = fs.spec("hostname");
    spec.hostname = "box-under-test".into();
    let f = run(&spec, &CgroupLimits::default()).unwrap();
    assert_eq!(f.output, "box-under-test\n");
    assert_ne!(nix::unistd::gethostname().unwrap(), "box-under-test");
}

#[test]
fn no_host_mounts_are_visible() {
    root_only!("mounts");
    let fs = Rootfs::build();
    let (st, out) = sh(&fs, "cat /proc/self/mountinfo");
    assert_eq!(st, ExitStatusInfo::Exited(0), "{out}");
    let points: Vec<&str> = out.lines().map(|l| l.split(' ').nth(4).unwrap()).collect();
    let allowed = ["/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/tmp", "/run"];
    for p in &points {
        // Besides: the read-only and masked /proc entries (see tests/proc_masks.rs).
        assert!(
            allowed.contains(p) || p.starts_with("/proc/"),
            "unexpected mount {p} in\n{out}"
        );
    }
    assert!(
        points.contains(&"/proc") && points.contains(&"/dev/pts"),
        "{out}"
    );
    // No cgroup filesystem (`/proc/kpagecgroup`, masked, is no cgroup mount).
    assert!(!out.contains(" - cgroup"), "{out}");
}

#[test]
fn rootfs_is_read_only_but_tmp_and_run_are_writable() {
    root_only!("read-only rootfs");
    let fs = Rootfs::build();
    let (st, out) =
        sh(&fs, "touch /etc/x 2>&1; echo etc=$?; touch /tmp/y && echo tmp=$?; touch /run/z && echo run=$?; ls /dev");
    assert_eq!(st, ExitStatusInfo::Exited(0), "{out}");
    assert!(
        out.contains("Read-only file system") && out.contains("etc=1"),
        "{out}"
    );
    assert!(out.contains("tmp=0") && out.contains("run=0"), "{out}");
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx",
    ] {
        assert!(out.lines().any(|l| l == dev), "/dev/{dev} missing: {out}");
    }
    assert!(!fs.path().join("etc/x").exists());
    let (_, out) = sh(
        &fs,
        "head -c 4 /dev/zero | od -An -tx1; echo x > /dev/null && echo null-ok",
    );
    assert!(
        out.contains("00 00 00 00") && out.contains("null-ok"),
        "{out}"
    );
}

#[test]
fn isolated_network_has_only_loopback_and_it_is_up() {
    root_only!("network");
    let fs = Rootfs::build();
    let (st, out) = sh(
        &fs,
        "tail -n +3 /proc/net/dev | cut -d: -f1; ip link show lo",
    );
    assert_eq!(st, ExitStatusInfo::Exited(0), "{out}");
    let ifaces: Vec<&str> = out
        .lines()
        .take_while(|l| !l.contains("<"))
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, vec!["lo"], "{out}");
    assert!(out.contains("UP"), "lo must be up: {out}");
}

#[test]
fn host_network_mode_sees_the_host_interfaces() {
    root_only!("host network");
    let fs = Rootfs::build();
    let mut spec = fs.spec("tail -n +3 /proc/net/dev | cut -d: -f1");
    spec.network = NetworkMode::Host;
    let f = run(&spec, &CgroupLimits::default()).unwrap();
    let host = std::fs::read_to_string("/proc/net/dev").unwrap();
    let mut host_ifaces: Vec<String> = host
        .lines()
        .skip(2)
        .map(|l| l.split(':').next().unwrap().trim().to_owned())
        .collect();
    let mut inside: Vec<String> = f.output.lines().map(|l| l.trim().to_owned()).collect();
    host_ifaces.sort();
    inside.sort();
    assert_eq!(inside, host_ifaces);
}

fn status_field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} missing in {out}"))
        .trim()
        .to_owned()
}

#[test]
fn capabilities_seccomp_and_no_new_privs_are_as_configured() {
    root_only!("capabilities");
    let fs = Rootfs::build();
    let (st, out) = sh(&fs, "cat /proc/self/status");
    assert_eq!(st, ExitStatusInfo::Exited(0), "{out}");
    let defaults: Vec<String> = DEFAULT_CAPABILITIES
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let want = format!("{:016x}", capability_mask(&defaults).unwrap());
    assert_eq!(status_field(&out, "CapEff:"), want);
    assert_eq!(status_field(&out, "CapPrm:"), want);
    assert_eq!(status_field(&out, "CapBnd:"), want);
    assert_eq!(status_field(&out, "Seccomp:"), "2");
    assert_eq!(status_field(&out, "NoNewPrivs:"), "1");

    let mut spec = fs.spec("cat /proc/self/status");
    spec.capabilities = vec!["CAP_NET_BIND_SERVICE".into()];
    spec.uid = 1000;
    spec.gid = 1000;
    let f = run(&spec, &CgroupLimits::default()).unwrap();
    for k in ["CapEff:", "CapPrm:", "CapBnd:", "CapInh:", "CapAmb:"] {
        assert_eq!(
            status_field(&f.output, k),
            "0000000000000400",
            "{k}\n{}",
            f.output
        );
    }
    assert!(
        f.output
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("1000")),
        "{}",
        f.output
    );
}

#[test]
fn seccomp_denies_with_eperm_even_with_all_capabilities() {
    root_only!("seccomp");
    let fs = Rootfs::build();
    let all: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    // unshare(2) is allowed by the capabilities here, so only the profile can refuse it.
    let mut spec = fs.spec("unshare -u true 2>&1; echo rc=$?; linux32 true 2>&1; echo rc32=$?");
    spec.capabilities = all.clone();
    let f = run(&spec, &CgroupLimits::default()).unwrap();
    assert!(
        f.output.contains("Operation not permitted") && f.output.contains("rc=1"),
        "{}",
        f.output
    );
    assert!(
        f.output.contains("rc32=1"),
        "personality is denied: {}",
        f.output
    );
    // Control: the same without seccomp succeeds, so the EPERM above came from the profile.
    spec.seccomp = false;
    let f = run(&spec, &CgroupLimits::default()).unwrap();
    assert!(
        f.output.contains("rc=0") && f.output.contains("rc32=0"),
        "{}",
        f.output
    );
}

#[test]
fn mount_fails_inside_the_container() {
    root_only!("mount");
    let fs = Rootfs::build();
    let (_, out) = sh(
        &fs,
        "mount -t tmpfs none /tmp 2>&1; echo rc=$?; umount /proc 2>&1; echo urc=$?",
    );
    assert!(out.contains("rc=1") && out.contains("urc=1"), "{out}");
    assert!(
        out.contains("Operation not permitted") || out.contains("Permission denied"),
        "{out}"
    );
}

#[test]
fn memory_hog_is_oom_killed_and_reported() {
    root_only!("oom");
    let fs = Rootfs::build();
    let spec = fs.spec("awk 'BEGIN { s = \"xxxxxxxxxxxxxxxx\"; while (1) s = s s }'");
    let f = run(
        &spec,
        &CgroupLimits {
            memory_max: Some(32 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        f.status,
        ExitStatusInfo::Signaled(libc::SIGKILL),
        "{}",
        f.output
    );
    assert_eq!(f.status.shell_code(), 137);
    assert!(f.oom_kills >= 1, "the cgroup must record the OOM kill");
}

#[test]
fn fork_bomb_stops_at_the_pids_limit() {
    root_only!("pids");
    let fs = Rootfs::build();
    let spec = fs.spec(
        "(for i in $(seq 1 60); do sleep 5 & done) 2>/dev/null; n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo procs=$n",
    );
    let f = run(
        &spec,
        &CgroupLimits {
            pids: Some(12),
            ..Default::default()
        },
    )
    .unwrap();
    let n: u32 = f
        .output
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .expect(&f.output)
        .parse()
        .unwrap();
    assert!(n <= 12, "{n} processes despite pids.max 12");
    assert!(
        n >= 5,
        "the loop should have forked up to the limit, saw {n}"
    );
    assert_eq!(f.status, ExitStatusInfo::Exited(0));
}

#[test]
fn exit_status_propagates() {
    root_only!("exit status");
    let fs = Rootfs::build();
    assert_eq!(sh(&fs, "exit 7").0, ExitStatusInfo::Exited(7));
    assert_eq!(sh(&fs, "true").0, ExitStatusInfo::Exited(0));
    // A signal from the supervisor's side: pid 1 killed by SIGKILL shows as 128+9.
    let root = cgroup_root();
    let cg = TestCgroup::new(&root, &CgroupLimits::default());
    let p = hako_launcher::PreparedSpec::new(&fs.spec("sleep 30")).unwrap();
    let s =
        hako_launcher::spawn_prepared(&p, Some(&cg.get().attach()), &hako_launcher::Output::Null)
            .unwrap();
    hako_launcher::pidfd_signal(std::os::fd::AsRawFd::as_raw_fd(&s.pidfd), libc::SIGKILL).unwrap();
    let st = hako_launcher::wait_pidfd(std::os::fd::AsFd::as_fd(&s.pidfd), false)
        .unwrap()
        .unwrap();
    assert_eq!(st, ExitStatusInfo::Signaled(9));
    assert_eq!(
        (st.code(), st.signal(), st.shell_code()),
        (None, Some(9), 137)
    );
}

#[test]
fn exec_failures_carry_errno_and_path() {
    root_only!("exec failures");
    let fs = Rootfs::build();
    let run_cmd = |cmd: &str| {
        let mut spec = fs.spec("");
        spec.command = vec![cmd.to_owned()];
        run(&spec, &CgroupLimits::default())
            .err()
            .expect("must fail")
    };
    let e = run_cmd("/bin/nope");
    assert_eq!(
        e,
        LaunchError::Exec {
            path: "/bin/nope".into(),
            errno: libc::ENOENT
        }
    );
    assert_eq!(
        e.to_string(),
        "exec /bin/nope: No such file or directory (ENOENT)"
    );
    assert_eq!(
        run_cmd("nope-in-path"),
        LaunchError::Exec {
            path: "nope-in-path".into(),
            errno: libc::ENOENT
        }
    );
    assert_eq!(
        run_cmd("/data/not-executable"),
        LaunchError::Exec {
            path: "/data/not-executable".into(),
            errno: libc::EACCES
        }
    );
    let e = run_cmd("/data/bad-interpreter");
    assert_eq!(
        e,
        LaunchError::BadInterpreter {
            path: "/data/bad-interpreter".into(),
            errno: libc::ENOENT
        }
    );
    // A bad workdir is reported as such.
    let mut spec = fs.spec("true");
    spec.workdir = "/does/not/exist".into();
    let e = run(&spec, &CgroupLimits::default()).err().unwrap();
    assert!(e.to_string().contains("chdir /does/not/exist"), "{e}");
}

#[test]
fn env_workdir_and_rlimits_are_applied() {
    root_only!("env");
    let fs = Rootfs::build();
    let mut spec = fs.spec("echo v=$HAKO_VAR; pwd; ulimit -n");
    spec.env.push(("HAKO_VAR".into(), "hello world".into()));
    spec.workdir = "/etc".into();
    spec.nofile = 77;
    let f = run(&spec, &CgroupLimits::default()).unwrap();
    assert_eq!(f.output, "v=hello world\n/etc\n77\n");
}

#[test]
fn host_rootfs_is_a_read_only_view_of_the_host() {
    root_only!("host rootfs");
    let mut spec = hako_launcher::ContainerSpec::new(
        RootfsSpec::Host,
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "ls / ; touch /usr/hako-x 2>&1; echo rc=$?; echo $$".into(),
        ],
    );
    spec.seccomp = true;
    let f = run(&spec, &CgroupLimits::default()).unwrap();
    assert!(
        f.output.contains("usr") && f.output.contains("etc"),
        "{}",
        f.output
    );
    assert!(
        !f.output
            .lines()
            .any(|l| l == "home" || l == "root" || l == "var"),
        "{}",
        f.output
    );
    assert!(
        f.output.contains("rc=1") && f.output.contains("Read-only"),
        "{}",
        f.output
    );
    assert!(f.output.ends_with("\n1\n"), "{}", f.output);
    assert!(!std::path::Path::new("/usr/hako-x").exists());
}

/// A container that changes uid/gid before `execve` shares our memory map until then (vfork
/// path); the kernel marks that map non-dumpable on the id change, and the launcher must hand
/// it back dumpable (else no core dumps for hako, and forked helpers inherit the flag).
#[test]
fn spawning_a_non_root_container_keeps_the_caller_dumpable() {
    if !is_root("dumpable") {
        return;
    }
    let fs = Rootfs::build();
    // SAFETY: prctl query, no pointers.
    let before = unsafe { libc::prctl(libc::PR_GET_DUMPABLE) };
    let mut spec = fs.spec("id -u");
    spec.uid = 1000;
    spec.gid = 1000;
    let out = run(&spec, &CgroupLimits::default()).unwrap();
    assert_eq!(out.output.trim(), "1000", "{}", out.output);
    // SAFETY: as above.
    let after = unsafe { libc::prctl(libc::PR_GET_DUMPABLE) };
    assert_eq!(before, 1, "the test process starts dumpable");
    assert_eq!(after, before, "dumpable before {before}, after {after}");
}
