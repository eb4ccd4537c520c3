//! One `hako serve` per cgroup parent and per state directory: a second one refuses to start,
//! naming the first's pid, and never touches the first's cgroups; after a kill -9 of the
//! first, a new serve takes over and recovers its orphans.
//!
//! Needs root; prints `skipped: needs root` otherwise.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hako_tests::*;

/// A second `hako serve` started by the test; killed on drop if it is still running.
struct Second(Option<Child>);

impl Drop for Second {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `hako serve --config <config>` and expects it to exit within 15 s; returns
/// (success, stderr).
fn serve_expecting_exit(config: &Path) -> (bool, String) {
    let log = config.with_extension("log");
    let out = std::fs::File::create(&log).expect("create log");
    let child = Command::new(hako_bin())
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(out))
        .spawn()
        .expect("spawn the second hako");
    let mut second = Second(Some(child));
    let end = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let c = second.0.as_mut().expect("child");
        if let Some(st) = c.try_wait().expect("wait") {
            second.0 = None;
            break st;
        }
        assert!(
            Instant::now() < end,
            "the second hako serve is still running after 15 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.success(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

/// The first hako's configuration with other ports, and `state_dir` replaced if given.
fn second_config(h: &Hako, dir: &Path, name: &str, state_dir: Option<&Path>) -> PathBuf {
    let text = std::fs::read_to_string(&h.config_path).expect("read config");
    let mut out = String::new();
    for line in text.lines() {
        let line = if line.starts_with("listen:") {
            format!("listen: 127.0.0.1:{}", free_port())
        } else if line.starts_with("admin:") {
            format!("admin: 127.0.0.1:{}", free_port())
        } else if let (true, Some(s)) = (line.starts_with("state_dir:"), state_dir) {
            format!("state_dir: {}", s.display())
        } else {
            line.to_owned()
        };
        out.push_str(&line);
        out.push('\n');
    }
    let path = dir.join(name);
    std::fs::write(&path, out).expect("write config");
    path
}

fn lock_file(parent: &str) -> PathBuf {
    Path::new("/run/hako-locks").join(format!("cgroup-{parent}.lock"))
}

#[test]
fn a_second_serve_on_the_same_cgroup_parent_refuses_and_a_kill9_hands_over() {
    require_root!();
    let rootfs = Rootfs::new();
    let mut h = Hako::start_httpd("web", &rootfs, &["scaling: {max_instances: 2}"]);
    let r = h.get("web.test", "/");
    assert_eq!(r.status, 200, "{}", r.text());
    let first_pid = h.pid();
    let cgroups_before = child_cgroups(&h.cgroup_parent);
    assert!(
        !cgroups_before.is_empty(),
        "instance cgroups expected under {}",
        h.cgroup_parent
    );
    let lock = lock_file(&h.cgroup_parent);
    assert_eq!(
        std::fs::read_to_string(&lock).expect("the cgroup parent lock file"),
        format!("{first_pid}\n")
    );

    // The first keeps serving while the others try to start.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let addr = h.listen;
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                match request(addr, &Request::get("web.test", "/")) {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        })
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let expected = format!(
        "cgroup parent \"{}\" is in use by another hako serve (pid {first_pid})",
        h.cgroup_parent
    );
    // The same configuration on other ports (same cgroup parent and state_dir).
    let same = second_config(&h, dir.path(), "same.yaml", None);
    let (ok, log) = serve_expecting_exit(&same);
    assert!(!ok, "the second serve must fail:\n{log}");
    assert!(log.contains(&expected), "expected `{expected}` in:\n{log}");
    // Another state_dir, the same cgroup parent.
    let other_state = dir.path().join("other-state");
    let other = second_config(&h, dir.path(), "other.yaml", Some(&other_state));
    let (ok, log) = serve_expecting_exit(&other);
    assert!(!ok, "the serve with another state_dir must fail:\n{log}");
    assert!(log.contains(&expected), "expected `{expected}` in:\n{log}");
    assert!(
        !other_state.exists(),
        "the refused serve must not even create its state_dir"
    );

    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = poller.join().expect("poller");
    assert!(ok > 0, "the poller made no request");
    assert!(
        failed.is_empty(),
        "the first serve failed {} of {} requests while others tried to start: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    for cg in &cgroups_before {
        assert!(
            cg.exists(),
            "{} of the first serve was removed by another",
            cg.display()
        );
    }
    let r = h.get("web.test", "/");
    assert_eq!(r.status, 200, "{}", r.text());

    // kill -9: the kernel drops the lock; a new serve takes over and removes the orphans.
    let old = h.the_instance_of("web");
    let old_pid = old["pid"].as_i64().expect("pid") as i32;
    let old_start = start_time(old_pid);
    h.kill9();
    h.spawn();
    assert_eq!(
        std::fs::read_to_string(&lock).expect("lock file"),
        format!("{}\n", h.pid())
    );
    wait_until(
        "the orphaned instance is killed",
        Duration::from_secs(5),
        || (!alive(old_pid, old_start)).then_some(()),
    );
    assert!(
        h.log().contains("removed orphaned cgroup"),
        "no orphan recovery in the log:\n{}",
        h.log()
    );
    let r = h.get("web.test", "/");
    assert_eq!(r.status, 200, "the new serve serves: {}", r.text());
    h.stop();
    h.assert_clean();
    assert!(
        !lock.exists(),
        "{} left behind after a clean stop",
        lock.display()
    );
}

#[test]
fn a_second_serve_on_the_same_state_dir_refuses() {
    require_root!();
    let rootfs = Rootfs::new();
    let mut h = Hako::start_httpd("web", &rootfs, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    // Another cgroup parent, the same state_dir.
    let parent = format!("{}-other", h.cgroup_parent);
    let text = std::fs::read_to_string(second_config(&h, dir.path(), "x.yaml", None))
        .expect("read")
        .replace(
            &format!("cgroup_parent: {}\n", h.cgroup_parent),
            &format!("cgroup_parent: {parent}\n"),
        );
    let config = dir.path().join("other-parent.yaml");
    std::fs::write(&config, text).expect("write");
    let (ok, log) = serve_expecting_exit(&config);
    assert!(!ok, "the second serve must fail:\n{log}");
    let expected = format!(
        "state_dir {} is in use by another hako serve (pid {})",
        h.state_dir().display(),
        h.pid()
    );
    assert!(log.contains(&expected), "expected `{expected}` in:\n{log}");
    assert!(
        !lock_file(&parent).exists(),
        "the refused serve left its cgroup parent lock"
    );
    assert!(cgroup_parent_dirs(&parent).iter().all(|d| !d.exists()));
    let r = h.get("web.test", "/");
    assert_eq!(r.status, 200, "{}", r.text());
    h.stop();
    h.assert_clean();
}

/// The proxy's worker threads share one listening socket (no `SO_REUSEPORT`): a second serve
/// on the same `listen` address, with its own cgroup parent and state_dir, fails at start
/// saying which address is taken, and the first keeps serving.
#[test]
fn a_second_serve_on_the_same_listen_port_refuses() {
    require_root!();
    let rootfs = Rootfs::new();
    let mut h = Hako::start_httpd("web", &rootfs, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let parent = format!("{}-port", h.cgroup_parent);
    // Removes what the refused serve may have created under its own cgroup parent.
    struct Parent(String);
    impl Drop for Parent {
        fn drop(&mut self) {
            for d in cgroup_parent_dirs(&self.0) {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
    let _parent = Parent(parent.clone());
    let state = dir.path().join("state");
    let mut text = String::new();
    for line in std::fs::read_to_string(&h.config_path)
        .expect("read config")
        .lines()
    {
        let line = if line.starts_with("admin:") {
            format!("admin: 127.0.0.1:{}", free_port())
        } else if line.starts_with("state_dir:") {
            format!("state_dir: {}", state.display())
        } else if line.starts_with("cgroup_parent:") {
            format!("cgroup_parent: {parent}")
        } else {
            line.to_owned()
        };
        text.push_str(&line);
        text.push('\n');
    }
    let config = dir.path().join("same-port.yaml");
    std::fs::write(&config, text).expect("write");
    let (ok, log) = serve_expecting_exit(&config);
    assert!(!ok, "the second serve must fail:\n{log}");
    let expected = format!("listen on {}", h.listen);
    assert!(log.contains(&expected), "expected `{expected}` in:\n{log}");
    assert!(
        log.contains("Address already in use"),
        "expected the bind error in:\n{log}"
    );
    let r = h.get("web.test", "/");
    assert_eq!(r.status, 200, "{}", r.text());
    h.stop();
    h.assert_clean();
}
