//! The escape battery: from inside containers started by the real `hako` (`hako run`, cold
//! boots; `hako serve`, whose first boot of a prepared app joins warm namespaces), host
//! sysctls cannot be written, masked `/proc` files read empty, the mounts cannot be undone, the
//! host's secrets are hidden with `rootfs: host`, and the probes already denied before (raw
//! sockets, ptrace, mknod, new user namespaces, io_uring) stay denied.
//!
//! Nothing harmful is ever written: a sysctl probe writes back the value it just read; the
//! host's values are compared before and after. Needs root (skipped otherwise).
use std::path::Path;
use std::process::{Command, Stdio};

use hako_tests::*;

/// Parent group of `hako run` containers.
const RUN_PARENT: &str = "hako-run";

/// Host sysctls the probe tries to write (the value read back), compared before and after.
const HOST_SYSCTLS: &[&str] = &[
    "/proc/sys/kernel/core_pattern",
    "/proc/sys/vm/panic_on_oom",
    "/proc/sys/kernel/modprobe",
    "/proc/sys/net/ipv4/tcp_fin_timeout",
];

/// Busybox shell probe: one `key=value` line each.
const PROBE: &str = r#"
w() { [ -e "$1" ] || { echo "$2=denied"; return; }; v=$(cat "$1"); if (echo "$v" > "$1") 2>/dev/null; then echo "$2=writable"; else echo "$2=denied"; fi; }
w /proc/sys/kernel/core_pattern core
w /proc/sys/vm/panic_on_oom oom
w /proc/sys/kernel/modprobe modprobe
w /proc/sys/net/ipv4/tcp_fin_timeout net
(echo > /proc/sysrq-trigger) 2>/dev/null && echo sysrq=writable || echo sysrq=denied
for f in kcore keys timer_list sched_debug latency_stats timer_stats interrupts kpageflags; do
  [ -e /proc/$f ] && echo $f=$(cat /proc/$f 2>/dev/null | wc -c) || echo $f=0
done
[ -d /proc/acpi ] && echo acpi=$(ls -A /proc/acpi | wc -l) || echo acpi=0
[ -e /sys/firmware ] && echo sysfirmware=present || echo sysfirmware=absent
mkdir -p /tmp/p
mount -t proc proc /tmp/p 2>/dev/null && echo mountproc=ok || echo mountproc=denied
umount /proc/sys 2>/dev/null && echo umount=ok || echo umount=denied
mount -o remount,rw /proc/sys 2>/dev/null && echo remount=ok || echo remount=denied
mknod /tmp/sda b 8 0 2>/dev/null && echo mknod=ok || echo mknod=denied
unshare -U true 2>/dev/null && echo userns=ok || echo userns=denied
"#;

/// With an isolated network only: the namespace's own `tcp_fin_timeout` changes.
const OWN_NET: &str = r#"
f=/proc/sys/net/ipv4/tcp_fin_timeout; n=$(cat $f); echo $((n + 1)) > $f
[ "$(cat $f)" = $((n + 1)) ] && echo ownnet=changed || echo ownnet=unchanged
"#;

/// Lines every probe output must hold, whatever the network.
const DENIED: &[&str] = &[
    "core=denied",
    "oom=denied",
    "modprobe=denied",
    "sysrq=denied",
    "kcore=0",
    "keys=0",
    "timer_list=0",
    "sched_debug=0",
    "latency_stats=0",
    "timer_stats=0",
    "interrupts=0",
    "kpageflags=0",
    "acpi=0",
    "sysfirmware=absent",
    "mountproc=denied",
    "umount=denied",
    "remount=denied",
    "mknod=denied",
    "userns=denied",
];

/// Python probe for `rootfs: host` (x86_64 syscall numbers): io_uring, raw sockets, a new user
/// namespace, ptrace, mount, and the size of `/etc/shadow` (never its content).
const PY_PROBE: &str = r#"
import ctypes, errno, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def sc(name, nr, *args):
    r = libc.syscall(nr, *args)
    print(name + "=" + ("ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), "E?")))
sc("io_uring_setup", 425, 8, ctypes.create_string_buffer(120))
sc("unshare_user", 272, 0x10000000)
sc("ptrace_attach", 101, 16, os.getppid() or 1, 0, 0)
sc("mount", 165, b"proc", b"/tmp", b"proc", 0, None)
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    print("raw=ok")
except OSError as e:
    print("raw=" + errno.errorcode.get(e.errno, "E?"))
try:
    print("shadow=%d" % len(open("/etc/shadow", "rb").read()))
except OSError as e:
    print("shadow=" + errno.errorcode.get(e.errno, "E?"))
"#;

fn host_values() -> Vec<(String, Option<String>)> {
    HOST_SYSCTLS
        .iter()
        .map(|p| (p.to_string(), std::fs::read_to_string(p).ok()))
        .collect()
}

/// The serial lock; on release, removes the `hako-run` parent if nothing is left in it.
struct Serial {
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl Drop for Serial {
    fn drop(&mut self) {
        remove_empty_cgroup_parent(RUN_PARENT);
    }
}

/// `hako run ARGS`, to completion (killed after 60 s); returns its exit code and output.
fn hako_run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .arg("-s")
        .arg("KILL")
        .arg("60")
        .arg(hako_bin())
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run hako run");
    (out.status.code(), output_text(&out))
}

fn assert_lines(out: &str, want: &[&str]) {
    for w in want {
        assert!(
            out.lines().any(|l| l.trim() == *w),
            "{w} missing in:\n{out}"
        );
    }
}

#[test]
fn isolated_container_cannot_write_host_sysctls_or_undo_the_masks() {
    require_root!();
    let _s = Serial { _lock: serial() };
    let fs = Rootfs::new();
    let before = host_values();
    let script = format!("{PROBE}{OWN_NET}");
    let (code, out) = hako_run(&[
        "--rootfs",
        fs.path().to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert_eq!(host_values(), before, "a host sysctl changed:\n{out}");
    assert_eq!(code, Some(0), "{out}");
    assert_lines(&out, DENIED);
    // Its own network namespace's sysctls stay settable.
    assert_lines(&out, &["net=writable", "ownnet=changed"]);
}

#[test]
fn host_network_container_keeps_proc_sys_net_read_only() {
    require_root!();
    let _s = Serial { _lock: serial() };
    let fs = Rootfs::new();
    let before = host_values();
    let (code, out) = hako_run(&[
        "--rootfs",
        fs.path().to_str().unwrap(),
        "--network",
        "host",
        "--",
        "/bin/sh",
        "-c",
        PROBE,
    ]);
    assert_eq!(host_values(), before, "a host sysctl changed:\n{out}");
    assert_eq!(code, Some(0), "{out}");
    assert_lines(&out, DENIED);
    assert_lines(&out, &["net=denied"]);
}

/// A configuration with one `rootfs: host` app running `command` (a YAML flow list).
fn host_app_config(dir: &Path, command: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("hako.yaml");
    let yaml = format!(
        "apps:\n  - name: esc\n    hosts: [esc.test]\n    rootfs: host\n    command: {command}\n{extra}"
    );
    std::fs::write(&path, yaml).expect("write config");
    path
}

#[test]
fn host_rootfs_hides_the_secrets_and_denies_the_escape_syscalls() {
    require_root!();
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("SKIPPED host rootfs probes: syscall numbers are x86_64's");
        return;
    }
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("SKIPPED host rootfs probes: no /usr/bin/python3 on the host");
        return;
    }
    let shadow_len = std::fs::metadata("/etc/shadow")
        .map(|m| m.len())
        .unwrap_or(0);
    let _s = Serial { _lock: serial() };
    let dir = tempfile::tempdir().unwrap();
    let before = host_values();
    let cfg = host_app_config(
        dir.path(),
        r#"["/usr/bin/python3", "-c", "print('x')"]"#,
        "",
    );
    let out = Command::new("timeout")
        .args(["-s", "KILL", "60"])
        .arg(hako_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("esc")
        .arg("--")
        .args(["/usr/bin/python3", "-c", PY_PROBE])
        .stdin(Stdio::null())
        .output()
        .expect("hako run");
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_lines(
        &text,
        &[
            "io_uring_setup=EPERM",
            "unshare_user=EPERM",
            "ptrace_attach=EPERM",
            "mount=EPERM",
            "raw=EPERM",
        ],
    );
    if shadow_len > 0 {
        assert_lines(&text, &["shadow=0"]);
    }
    assert_eq!(host_values(), before);

    // Asked for: the host's /etc/shadow as it is (only its size is looked at).
    let exposed = host_app_config(
        dir.path(),
        r#"["/usr/bin/python3", "-c", "print('x')"]"#,
        "    expose_host_secrets: true\n",
    );
    let out = Command::new("timeout")
        .args(["-s", "KILL", "60"])
        .arg(hako_bin())
        .args(["run", "--config"])
        .arg(&exposed)
        .arg("esc")
        .arg("--")
        .args(["/usr/bin/python3", "-c", PY_PROBE])
        .stdin(Stdio::null())
        .output()
        .expect("hako run");
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    if shadow_len > 0 {
        assert_lines(&text, &[&format!("shadow={shadow_len}")]);
    }
    // The rest of the isolation does not depend on the key.
    assert_lines(&text, &["io_uring_setup=EPERM", "raw=EPERM"]);
}

/// `hako serve`: the app is prepared at start, so its first boot joins warm namespaces; the
/// probe runs as a CGI in the booted instance.
#[test]
fn served_container_has_the_same_masks() {
    require_root!();
    let rootfs = Rootfs::new();
    rootfs.cgi("probe", PROBE);
    rootfs.cgi("ownnet", OWN_NET);
    let before = host_values();
    let h = Hako::start_httpd("web", &rootfs, &[]);
    let r = h.get("web.test", "/cgi-bin/probe");
    assert_eq!(r.status, 200, "{}", r.text());
    let out = r.text();
    assert_lines(&out, DENIED);
    assert_lines(&out, &["net=writable"]);
    let r = h.get("web.test", "/cgi-bin/ownnet");
    assert_lines(&r.text(), &["ownnet=changed"]);
    assert_eq!(host_values(), before, "a host sysctl changed:\n{out}");
    drop(h);
}

/// `user_namespace: true` under `hako serve`: the app answers, it is root inside but host uid
/// 100000 outside (every process of its instance), and the masks and denials still hold.
#[test]
fn served_user_namespaced_app_answers_as_host_uid_100000() {
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    let rootfs = Rootfs::new();
    // Host-owned files are "others" to the container's root: the temp dir is 0700.
    std::fs::set_permissions(rootfs.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod rootfs");
    rootfs.cgi("probe", PROBE);
    rootfs.cgi(
        "ids",
        "echo uid_map=$(cat /proc/self/uid_map); echo id=$(id -u):$(id -g)",
    );
    let before = host_values();
    let h = Hako::start_httpd("web", &rootfs, &["user_namespace: true"]);
    let r = h.get("web.test", "/index.html");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), INDEX_BODY);
    let r = h.get("web.test", "/cgi-bin/ids");
    assert_lines(&r.text(), &["uid_map= 0 100000 65536", "id=0:0"]);
    let r = h.get("web.test", "/cgi-bin/probe");
    assert_eq!(r.status, 200, "{}", r.text());
    let out = r.text();
    assert_lines(&out, DENIED);
    assert_eq!(host_values(), before, "a host sysctl changed:\n{out}");
    let procs = processes_in_cgroup_parent(&h.cgroup_parent);
    assert!(!procs.is_empty(), "no process of the instance found");
    for (pid, cmd) in procs {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .map(|u| u.split_whitespace().collect::<Vec<_>>().join(" "));
        assert_eq!(
            uid.as_deref(),
            Some("100000 100000 100000 100000"),
            "{pid} {cmd}"
        );
    }
    drop(h);
}
