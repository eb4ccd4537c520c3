//! `hako run` as a user runs it: the real binary, a busybox rootfs, the host's cgroups. Exit
//! status, output, a missing command, a forwarded SIGTERM, an OOM kill, and that its group
//! is gone afterwards on every path.
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::Duration;

use hako_tests::*;

/// Parent group of `hako run` containers (`hako run --help` and docs/operations.md).
const RUN_PARENT: &str = "hako-run";

fn hako_run(rootfs: &Rootfs, extra: &[&str], cmd: &[&str]) -> Command {
    let mut c = Command::new(hako_bin());
    c.arg("run")
        .arg("--rootfs")
        .arg(rootfs.path())
        .args(extra)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null());
    c
}

/// The serial lock of this file's tests; on release, removes the `hako-run` parent if nothing
/// is left in it (`hako run` keeps it for the next run; the suite leaves nothing behind).
struct Serial {
    _lock: std::sync::MutexGuard<'static, ()>,
}

fn serial_run() -> Serial {
    Serial { _lock: serial() }
}

impl Drop for Serial {
    fn drop(&mut self) {
        remove_empty_cgroup_parent(RUN_PARENT);
    }
}

/// The group directories of the `hako run` process `pid`, in every hierarchy, that exist.
fn groups_of(pid: u32) -> Vec<PathBuf> {
    cgroup_parent_dirs(RUN_PARENT)
        .into_iter()
        .map(|d| d.join(format!("run-{pid}")))
        .filter(|d| d.exists())
        .collect()
}

/// Pids in the groups `groups` (sorted, deduplicated over the hierarchies).
fn pids_in(groups: &[PathBuf]) -> Vec<i32> {
    let mut all: Vec<i32> = groups
        .iter()
        .flat_map(|g| {
            std::fs::read_to_string(g.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// A `hako run` started by a test; if the test fails with it still running, drop kills it
/// (its container follows through its parent-death signal) and removes what is left.
struct Running {
    child: Child,
    pid: u32,
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let groups = groups_of(self.pid);
        for p in pids_in(&groups) {
            let _ = send_signal(p, libc::SIGKILL);
        }
        for g in &groups {
            let _ = wait_for(Duration::from_secs(2), || std::fs::remove_dir(g).ok());
        }
    }
}

/// Starts `hako run` of a shell `script` that prints `ready` first; returns once it has, with
/// the rest of the container's stdout.
fn start_ready(
    rootfs: &Rootfs,
    extra: &[&str],
    script: &str,
) -> (Running, std::io::Lines<BufReader<ChildStdout>>) {
    let mut child = hako_run(rootfs, extra, &["/bin/sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hako run");
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout");
    let run = Running { child, pid };
    let mut lines = BufReader::new(stdout).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"));
    (run, lines)
}

/// Runs to the end; asserts that its group is gone.
fn finish(mut c: Command) -> Output {
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hako run");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait hako run");
    let left = groups_of(pid);
    assert!(
        left.is_empty(),
        "hako run left its cgroup behind: {left:?}\n{}",
        output_text(&out)
    );
    out
}

#[test]
fn exit_status_and_output_pass_through() {
    require_root!();
    let _s = serial_run();
    let fs = Rootfs::new();
    let out = finish(hako_run(
        &fs,
        &["--memory", "64Mi", "--pids", "32", "--cpu", "0.5"],
        &["/bin/sh", "-c", "echo out-$((6*7)); echo err >&2; exit 7"],
    ));
    assert_eq!(out.status.code(), Some(7), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out-42\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    let out = finish(hako_run(&fs, &[], &["/bin/true"]));
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
}

#[test]
fn a_missing_command_is_127_and_named() {
    require_root!();
    let _s = serial_run();
    let fs = Rootfs::new();
    let out = finish(hako_run(&fs, &[], &["/bin/no-such-tool", "x"]));
    assert_eq!(out.status.code(), Some(127), "{}", output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/bin/no-such-tool"), "{err}");
    // Found but not executable: 126.
    fs.write("bin/not-exec", "#!/bin/sh\nexit 0\n");
    let out = finish(hako_run(&fs, &[], &["/bin/not-exec"]));
    assert_eq!(out.status.code(), Some(126), "{}", output_text(&out));
}

#[test]
fn sigterm_reaches_the_container_and_its_status_comes_back() {
    require_root!();
    let _s = serial_run();
    let fs = Rootfs::new();
    let (mut run, mut lines) = start_ready(
        &fs,
        &[],
        "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done",
    );
    let pid = run.pid;
    assert!(
        !groups_of(pid).is_empty(),
        "a running container has its group"
    );
    send_signal(pid as i32, libc::SIGTERM).expect("kill -TERM hako run");
    let status = wait_until("hako run to exit", Duration::from_secs(10), || {
        run.child.try_wait().expect("try_wait")
    });
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("got-term")
    );
    assert_eq!(status.code(), Some(42));
    let left = groups_of(pid);
    assert!(left.is_empty(), "cgroup left behind: {left:?}");
}

#[test]
fn an_oom_kill_is_reported_as_such() {
    require_root!();
    // On v1 without swap accounting a memory hog swaps instead of being killed.
    let swap_on = std::fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1);
    if swap_on
        && !cgroup_v2_unified()
        && !std::path::Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
    {
        println!("skipped: swap without memory+swap accounting (swapaccount=0)");
        return;
    }
    let _s = serial_run();
    let fs = Rootfs::new();
    let out = finish(hako_run(
        &fs,
        &["--memory", "32Mi"],
        &[
            "/bin/awk",
            "BEGIN { s = \"xxxxxxxxxxxxxxxx\"; while (1) s = s s }",
        ],
    ));
    assert_eq!(out.status.code(), Some(137), "{}", output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("out of memory") && err.contains(&(32u64 << 20).to_string()),
        "{err}"
    );

    // A SIGKILL from elsewhere (here: the host, to the container's init) is 128 + 9 too, but
    // not called an OOM kill.
    let (mut run, _lines) = start_ready(&fs, &["--memory", "32Mi"], "echo ready; sleep 30");
    let pid = run.pid;
    let inside = pids_in(&groups_of(pid));
    assert!(
        !inside.is_empty(),
        "the container's processes are in its group"
    );
    for p in inside {
        let _ = send_signal(p, libc::SIGKILL);
    }
    let status = run.child.wait().expect("wait hako run");
    let mut err = String::new();
    let _ = run
        .child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert_eq!(status.code(), Some(137), "{err}");
    assert!(!err.contains("out of memory"), "{err}");
    let left = groups_of(pid);
    assert!(left.is_empty(), "cgroup left behind: {left:?}");
}

#[test]
fn the_container_dies_with_a_killed_hako_run() {
    require_root!();
    let _s = serial_run();
    let fs = Rootfs::new();
    let (mut run, _lines) = start_ready(&fs, &[], "echo ready; sleep 30");
    let pid = run.pid;
    let groups = groups_of(pid);
    let inside = pids_in(&groups);
    assert!(!inside.is_empty(), "the container runs in {groups:?}");
    send_signal(pid as i32, libc::SIGKILL).expect("kill -9 hako run");
    let _ = run.child.wait();
    // Nobody is left to remove the group: the kernel's SIGKILL to the container's init
    // (its parent-death signal) must empty it.
    let emptied = wait_for(Duration::from_secs(5), || {
        pids_in(&groups).is_empty().then_some(())
    });
    let left = pids_in(&groups);
    // (`run`'s drop removes the group.)
    assert!(
        emptied.is_some(),
        "the container outlived hako run: pids {left:?} still in {groups:?}"
    );
}
