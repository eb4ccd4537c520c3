//! The container's `/proc`: read-only `/proc/sys` & co., masked `/proc/kcore` & co., on a cold
//! boot (`spawn_prepared`) and on a warm one (the zygote's prepared namespaces), and with
//! `rootfs: host` the host's secrets hidden (root only).
mod common;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::*;
use hako_launcher::{
    wait_pidfd, CgroupLimits, ContainerSpec, ExitStatusInfo, NetworkMode, RootfsSpec, SpawnRequest,
    Zygote,
};

/// Prints one `key=value` line per probe. Writes only the value just read back (harmless if
/// a regression lets it through), except [`OWN_NET`].
const PROBE: &str = r#"
w() { v=$(cat "$1" 2>/dev/null); if (echo "$v" > "$1") 2>/dev/null; then echo "$2=writable"; else echo "$2=denied"; fi; }
w /proc/sys/kernel/core_pattern core
w /proc/sys/vm/panic_on_oom oom
w /proc/sys/net/ipv4/tcp_fin_timeout net
(echo > /proc/sysrq-trigger) 2>/dev/null && echo sysrq=writable || echo sysrq=denied
[ -e /proc/kcore ] && echo kcore=$(wc -c < /proc/kcore) || echo kcore=0
echo keys=$(cat /proc/keys | wc -c)
echo timer_list=$(cat /proc/timer_list | wc -c)
[ -d /proc/acpi ] && echo acpi=$(ls -A /proc/acpi | wc -l) || echo acpi=0
echo status=$(grep -c Name /proc/self/status)
umount /proc/sys 2>/dev/null && echo umount=ok || echo umount=denied
mount -o remount,rw /proc/sys 2>/dev/null && echo remount=ok || echo remount=denied
"#;

/// With an isolated network only: a per-namespace sysctl set to another value than the one
/// read, then read back (`ownnet=changed`); the host's value must stay as it was.
const OWN_NET: &str = r#"
f=/proc/sys/net/ipv4/tcp_fin_timeout; n=$(cat $f); echo $((n + 1)) > $f
[ "$(cat $f)" = $((n + 1)) ] && echo ownnet=changed || echo ownnet=unchanged
"#;

fn host_fin_timeout() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fin_timeout").unwrap()
}

fn assert_masked(out: &str, net: &str) {
    for want in [
        "core=denied",
        "oom=denied",
        "sysrq=denied",
        "kcore=0",
        "keys=0",
        "timer_list=0",
        "acpi=0",
        "status=1",
        "umount=denied",
        "remount=denied",
        net,
    ] {
        assert!(out.lines().any(|l| l == want), "{want} missing in:\n{out}");
    }
}

#[test]
fn cold_boot_proc_is_read_only_and_masked() {
    let _one = one_at_a_time();
    if !is_root("proc masks, cold") {
        return;
    }
    let fs = Rootfs::build();
    let before = host_fin_timeout();
    let f = run(
        &fs.spec(&format!("{PROBE}{OWN_NET}")),
        &CgroupLimits::default(),
    )
    .unwrap();
    assert_eq!(f.status, ExitStatusInfo::Exited(0), "{}", f.output);
    assert_masked(&f.output, "net=writable");
    assert!(f.output.contains("ownnet=changed\n"), "{}", f.output);
    let mut host = fs.spec(PROBE);
    host.network = NetworkMode::Host;
    let f = run(&host, &CgroupLimits::default()).unwrap();
    assert_masked(&f.output, "net=denied");
    assert_eq!(host_fin_timeout(), before);
}

#[test]
fn warm_boot_proc_is_read_only_and_masked() {
    let _one = one_at_a_time();
    if !is_root("proc masks, warm") {
        return;
    }
    let fs = Rootfs::build();
    let zygote = Zygote::start().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let before = host_fin_timeout();
    for (i, (network, net)) in [
        (NetworkMode::Isolated, "net=writable"),
        (NetworkMode::Host, "net=denied"),
    ]
    .into_iter()
    .enumerate()
    {
        let isolated = network == NetworkMode::Isolated;
        let mut spec = fs.spec(&format!("{PROBE}{}", if isolated { OWN_NET } else { "" }));
        spec.network = network;
        let key = format!("masks-{i}");
        zygote.prepare(&spec, &key).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while zygote.stats().unwrap().warm_by_app.get(&key).copied() != Some(2) {
            assert!(Instant::now() < deadline, "no warm namespaces for {key}");
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = logs.path().join(format!("{key}.log"));
        let s = zygote
            .spawn(&SpawnRequest {
                spec: spec.clone(),
                spec_key: key.clone(),
                cgroup: None,
                log_path: Some(log.clone()),
                stderr_path: None,
            })
            .unwrap();
        assert!(s.warm, "the boot of a prepared app must be warm");
        let status = wait_pidfd(s.pidfd.as_fd(), false).unwrap();
        let out = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status, Some(ExitStatusInfo::Exited(0)), "{out}");
        assert_masked(&out, net);
        assert_eq!(out.contains("ownnet=changed\n"), isolated, "{out}");
        zygote.forget(&key).unwrap();
    }
    assert_eq!(host_fin_timeout(), before);
}

#[test]
fn host_rootfs_hides_the_host_secrets_unless_asked() {
    let _one = one_at_a_time();
    if !is_root("host secrets") {
        return;
    }
    if std::fs::metadata("/etc/shadow").map_or(true, |m| m.len() == 0) {
        eprintln!("SKIPPED host secrets: no non-empty /etc/shadow on this host");
        return;
    }
    let script = "echo shadow=$(wc -c < /etc/shadow); echo passwd=$(wc -c < /etc/passwd)";
    let mut spec = ContainerSpec::new(
        RootfsSpec::Host,
        vec!["/bin/sh".into(), "-c".into(), script.into()],
    );
    let f = run(&spec, &CgroupLimits::default()).unwrap();
    assert!(f.output.contains("shadow=0\n"), "{}", f.output);
    assert!(!f.output.contains("passwd=0\n"), "{}", f.output);
    spec.expose_host_secrets = true;
    let f = run(&spec, &CgroupLimits::default()).unwrap();
    assert!(
        f.output
            .lines()
            .any(|l| l.starts_with("shadow=") && l != "shadow=0"),
        "{}",
        f.output
    );
}
