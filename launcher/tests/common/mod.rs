//! Shared helpers of the launcher integration tests (root only; they skip otherwise).
#![allow(dead_code)]

use std::os::fd::AsFd;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use hako_launcher::{
    spawn_prepared, wait_pidfd, CgroupLimits, CgroupRoot, ContainerSpec, ExitStatusInfo,
    InstanceCgroup, LaunchError, Output, PreparedSpec, RootfsSpec,
};

pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
pub const CGROUP_PARENT: &str = "hako-test";

/// `true` if running as root; otherwise prints why the test is skipped.
pub fn is_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED {test}: needs root (namespaces, mounts, cgroups)");
    }
    root
}

/// A busybox rootfs in a temp dir: /bin/busybox plus one symlink per applet, and a few files
/// for the exec-failure tests.
pub struct Rootfs {
    pub dir: tempfile::TempDir,
}

impl Rootfs {
    pub fn build() -> Rootfs {
        let dir = tempfile::Builder::new()
            .prefix("hako-test-rootfs-")
            .tempdir()
            .unwrap();
        let r = dir.path();
        for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "data"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        // Copied by a separate process: a write descriptor held here could be inherited by a
        // concurrently cloned container of another test and make exec fail with ETXTBSY.
        let st = std::process::Command::new("cp")
            .arg("/usr/bin/busybox")
            .arg(r.join("bin/busybox"))
            .status()
            .unwrap();
        assert!(st.success());
        let list = std::process::Command::new("/usr/bin/busybox")
            .arg("--list-full")
            .output()
            .unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            let link = r.join(applet);
            if !link.exists() {
                symlink("/bin/busybox", &link).unwrap();
            }
        }
        std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
        std::fs::write(r.join("data/not-executable"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::write(
            r.join("data/bad-interpreter"),
            "#!/bin/missing-shell\necho hi\n",
        )
        .unwrap();
        std::fs::set_permissions(
            r.join("data/bad-interpreter"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        Rootfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn spec(&self, script: &str) -> ContainerSpec {
        ContainerSpec::new(
            RootfsSpec::Dir(self.path().to_owned()),
            vec!["/bin/sh".into(), "-c".into(), script.into()],
        )
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A uniquely named instance cgroup, removed on drop (also when the test fails).
pub struct TestCgroup {
    pub cg: Option<InstanceCgroup>,
    pub name: String,
}

impl TestCgroup {
    pub fn new(root: &CgroupRoot, limits: &CgroupLimits) -> TestCgroup {
        let name = format!(
            "hako-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let cg = root.create(&name, limits).unwrap();
        TestCgroup { cg: Some(cg), name }
    }
    pub fn get(&self) -> &InstanceCgroup {
        self.cg.as_ref().unwrap()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Some(cg) = self.cg.take() {
            let dirs = cg.dirs();
            if let Err(e) = cg.remove() {
                eprintln!("cleanup of cgroup {} failed: {e}", self.name);
            }
            if !std::thread::panicking() {
                for d in dirs {
                    assert!(!d.exists(), "cgroup {} left behind", d.display());
                }
            }
        }
    }
}

pub fn cgroup_root() -> CgroupRoot {
    CgroupRoot::detect(Path::new(CGROUP_MOUNT), CGROUP_PARENT).unwrap()
}

/// What a finished container left.
pub struct Finished {
    pub status: ExitStatusInfo,
    pub output: String,
    pub oom_kills: u64,
}

/// Runs `spec` to completion in its own cgroup with `limits`; returns status and output.
pub fn run(spec: &ContainerSpec, limits: &CgroupLimits) -> Result<Finished, LaunchError> {
    let root = cgroup_root();
    let cg = TestCgroup::new(&root, limits);
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("out.log");
    let prepared = PreparedSpec::new(spec)?;
    let spawned = spawn_prepared(
        &prepared,
        Some(&cg.get().attach()),
        &Output::Append(log.clone()),
    )?;
    let status = wait_pidfd(spawned.pidfd.as_fd(), false).unwrap().unwrap();
    let oom_kills = cg.get().stats().unwrap().oom_kills;
    drop(cg);
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    Ok(Finished {
        status,
        output,
        oom_kills,
    })
}

/// Runs a shell script with default isolation and returns `(status, output)`.
pub fn sh(rootfs: &Rootfs, script: &str) -> (ExitStatusInfo, String) {
    let f = run(&rootfs.spec(script), &CgroupLimits::default()).unwrap();
    (f.status, f.output)
}

/// Lines of the host's mountinfo that mention `needle`.
pub fn host_mounts_containing(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// `hako-test-*` groups left under the parent in any hierarchy.
pub fn leftover_test_cgroups() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for h in std::fs::read_dir(CGROUP_MOUNT).unwrap().flatten() {
        for sub in [h.path().join(CGROUP_PARENT), h.path().join("hako-test")] {
            if let Ok(rd) = std::fs::read_dir(&sub) {
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().starts_with("hako-test-") {
                        out.push(e.path());
                    }
                }
            }
        }
    }
    out
}

/// Runs the tests of one binary one at a time. A test that forks a zygote (`Zygote::start`)
/// must not do so while another test thread of the same binary runs: the forked child keeps
/// only the forking thread, and a lock another thread held at that moment (the environment
/// lock of a `Command` spawn, say) stays locked in the child for ever.
#[allow(dead_code)]
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
