//! The cgroups-rs backend against the file layer on the host's real hierarchy (root only; the
//! tests skip otherwise): same kernel files, same read-backs, live changes, statistics of real
//! processes, OOM kills, removal of populated groups, and the cost of create + remove.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hako_launcher::cgroup::{CgroupBackend, SYS_FS_CGROUP};
use hako_launcher::{
    CgroupAttach, CgroupError, CgroupLimits, CgroupRoot, CgroupStats, CgroupVersion, InstanceCgroup,
};

const PARENT: &str = "hako-test";
const BUSYBOX: &str = "/usr/bin/busybox";

/// Interface files holding limits, v1 and v2 (those absent on the host are skipped).
const LIMIT_FILES: &[&str] = &[
    "cpu.cfs_quota_us",
    "cpu.cfs_period_us",
    "memory.limit_in_bytes",
    "memory.soft_limit_in_bytes",
    "memory.memsw.limit_in_bytes",
    "cpu.max",
    "memory.max",
    "memory.high",
    "memory.swap.max",
    "pids.max",
];

fn is_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED {test}: needs root (cgroups)");
    }
    root
}

/// Both backends on the real hierarchy, or `None` (skip) when not root.
fn roots(test: &str) -> Option<(CgroupRoot, CgroupRoot)> {
    if !is_root(test) {
        return None;
    }
    let mount = Path::new(SYS_FS_CGROUP);
    let rs = CgroupRoot::detect_with_backend(mount, PARENT, CgroupBackend::CgroupsRs)
        .expect("cgroups-rs backend on the real hierarchy");
    let files = CgroupRoot::detect_with_backend(mount, PARENT, CgroupBackend::Files).unwrap();
    assert_eq!(rs.backend(), CgroupBackend::CgroupsRs);
    assert_eq!(files.backend(), CgroupBackend::Files);
    assert_eq!(rs.version(), files.version());
    Some((rs, files))
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique_name() -> String {
    format!(
        "hako-test-cgrs-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A uniquely named group, removed on drop (also when the test fails).
struct Group {
    cg: Option<InstanceCgroup>,
    dirs: Vec<PathBuf>,
}

impl Group {
    fn new(root: &CgroupRoot, limits: &CgroupLimits) -> Group {
        let cg = root.create(&unique_name(), limits).unwrap();
        assert_eq!(cg.backend(), root.backend());
        Group {
            dirs: cg.dirs(),
            cg: Some(cg),
        }
    }
    fn get(&self) -> &InstanceCgroup {
        self.cg.as_ref().unwrap()
    }
    /// Removes the group now; asserts that every directory is gone.
    fn remove(mut self) {
        self.cg.take().unwrap().remove().unwrap();
        for d in &self.dirs {
            assert!(!d.exists(), "{} left behind", d.display());
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(cg) = self.cg.take() {
            if let Err(e) = cg.remove() {
                eprintln!("cleanup of {:?} failed: {e}", self.dirs);
            }
            if !std::thread::panicking() {
                for d in &self.dirs {
                    assert!(!d.exists(), "{} left behind", d.display());
                }
            }
        }
    }
}

/// A busybox shell script that waits for one line on stdin before it runs, so that it can be
/// moved into a group first. Killed and reaped on drop.
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(script: &str) -> Proc {
        let child = Command::new(BUSYBOX)
            .args(["sh", "-c", &format!("read go; {script}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Proc { child }
    }
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// Moves the process into `cg` (every hierarchy) and lets the script start.
    fn enter_and_go(&mut self, cg: &InstanceCgroup) {
        let procs = match cg.attach() {
            CgroupAttach::V1 { procs } => procs,
            CgroupAttach::V2 { dir } => vec![dir.join("cgroup.procs")],
        };
        for p in procs {
            std::fs::write(&p, self.pid().to_string()).unwrap();
        }
        // stdin stays open: the scripts block in `read` (a builtin: one pid) when done.
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }
    /// Waits up to `timeout` for the exit; the terminating signal, if any.
    fn wait_signal(&mut self, timeout: Duration) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.signal();
            }
            assert!(
                Instant::now() < deadline,
                "process {} still running",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_owned()
}

/// The limit files of one group, per hierarchy, keyed by the hierarchy (group name removed).
fn limit_files(cg: &InstanceCgroup) -> Vec<(PathBuf, String, String)> {
    let mut out = Vec::new();
    for d in cg.dirs() {
        let hierarchy = d.parent().unwrap().to_owned();
        for f in LIMIT_FILES {
            let p = d.join(f);
            if p.exists() {
                out.push((hierarchy.clone(), (*f).to_owned(), read(&p)));
            }
        }
    }
    out
}

fn file_of(cg: &InstanceCgroup, file: &str) -> String {
    let p = cg
        .dirs()
        .into_iter()
        .map(|d| d.join(file))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{file} not found in {:?}", cg.dirs()));
    read(&p)
}

/// Both groups hold the same values in the same files and read back the same.
fn assert_same(a: &InstanceCgroup, b: &InstanceCgroup, expected: &CgroupLimits) {
    let (fa, fb) = (limit_files(a), limit_files(b));
    assert!(!fa.is_empty());
    assert_eq!(fa, fb, "kernel files differ (cgroups-rs vs files)");
    assert_eq!(a.limits().unwrap(), *expected, "cgroups-rs read-back");
    assert_eq!(b.limits().unwrap(), *expected, "file layer read-back");
    assert_eq!(a.stats().unwrap(), b.stats().unwrap());
    assert_eq!(a.version(), b.version());
    let parents = |cg: &InstanceCgroup| -> Vec<PathBuf> {
        cg.dirs()
            .iter()
            .map(|d| d.parent().unwrap().to_owned())
            .collect()
    };
    assert_eq!(parents(a), parents(b));
    match (a.attach(), b.attach()) {
        (CgroupAttach::V1 { procs: pa }, CgroupAttach::V1 { procs: pb }) => {
            assert_eq!(pa.len(), pb.len())
        }
        (CgroupAttach::V2 { .. }, CgroupAttach::V2 { .. }) => {}
        other => panic!("attach differs: {other:?}"),
    }
}

/// Waits until `p` is alone in `cg` and asleep (its script blocked in `read`), with usage
/// satisfying `ready`; returns the statistics seen then.
fn settled(cg: &InstanceCgroup, p: &Proc, ready: impl Fn(&CgroupStats) -> bool) -> CgroupStats {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = cg.stats().unwrap();
        let asleep = std::fs::read_to_string(format!("/proc/{}/stat", p.pid()))
            .is_ok_and(|s| s.contains(") S "));
        if asleep && st.pids_current == 1 && cg.pids().unwrap() == vec![p.pid()] && ready(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "not settled: {st:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn detect_uses_cgroups_rs_on_the_real_hierarchy() {
    let Some((rs, _)) = roots("detect_uses_cgroups_rs_on_the_real_hierarchy") else {
        return;
    };
    let auto = CgroupRoot::detect(Path::new(SYS_FS_CGROUP), PARENT).unwrap();
    assert_eq!(auto.backend(), CgroupBackend::CgroupsRs);
    assert_eq!(auto.version(), rs.version());
    // A fake tree is never handed to cgroups-rs.
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("memory")).unwrap();
    assert_eq!(
        CgroupRoot::detect(t.path(), PARENT).unwrap().backend(),
        CgroupBackend::Files
    );
    assert!(matches!(
        CgroupRoot::detect_with_backend(t.path(), PARENT, CgroupBackend::CgroupsRs),
        Err(CgroupError::BackendUnavailable { .. })
    ));
}

#[test]
fn both_backends_write_the_same_files_and_read_back_the_same() {
    let Some((rs, files)) = roots("both_backends_write_the_same_files") else {
        return;
    };
    let cases = [
        CgroupLimits {
            cpu: Some(0.5),
            memory_max: Some(64 * MIB),
            memory_high: Some(48 * MIB),
            pids: Some(32),
        },
        CgroupLimits::default(),
        CgroupLimits {
            cpu: Some(1.5),
            memory_max: None,
            memory_high: Some(8 * MIB),
            pids: Some(7),
        },
        CgroupLimits {
            cpu: None,
            memory_max: Some(16 * MIB),
            memory_high: None,
            pids: None,
        },
    ];
    for (i, limits) in cases.iter().enumerate() {
        let a = Group::new(&rs, limits);
        let b = Group::new(&files, limits);
        assert_same(a.get(), b.get(), limits);
        // Live changes to every other case (raising and lowering the memory limit, which on v1
        // orders the memsw and memory writes) keep them identical.
        for next in cases.iter().cycle().skip(i + 1).take(cases.len()) {
            a.get().set_limits(next).unwrap();
            b.get().set_limits(next).unwrap();
            assert_same(a.get(), b.get(), next);
        }
        a.remove();
        b.remove();
    }
}

#[test]
fn governor_live_changes_go_through_cgroups_rs() {
    let Some((rs, _)) = roots("governor_live_changes_go_through_cgroups_rs") else {
        return;
    };
    let policy = CgroupLimits {
        cpu: Some(0.5),
        memory_max: Some(64 * MIB),
        memory_high: None,
        pids: Some(64),
    };
    let g = Group::new(&rs, &policy);
    let cg = g.get();
    // A tenant inside, using memory, while the limits change.
    let mut p = Proc::spawn("x=$(head -c 2000000 /dev/zero | tr '\\0' a); read done");
    p.enter_and_go(cg);
    settled(cg, &p, |st| st.memory_current > 2_000_000);
    let v1 = cg.version() == CgroupVersion::V1;
    let (quota, max, high) = if v1 {
        (
            "cpu.cfs_quota_us",
            "memory.limit_in_bytes",
            "memory.soft_limit_in_bytes",
        )
    } else {
        ("cpu.max", "memory.max", "memory.high")
    };
    let fmt_quota = |q: &str| {
        if v1 {
            q.to_owned()
        } else {
            format!("{q} {}", hako_launcher::cgroup::CPU_PERIOD_US)
        }
    };
    assert_eq!(file_of(cg, quota), fmt_quota("10000"));

    // What the supervisor's set_soft_limits does: read back, change cpu and memory_high, write.
    let soft = |cpu: f64, memory_high: Option<u64>| {
        let mut l = cg.limits().unwrap();
        l.cpu = Some(cpu);
        l.memory_high = memory_high;
        cg.set_limits(&l).unwrap();
    };
    soft(0.2, Some(32 * MIB));
    assert_eq!(file_of(cg, quota), fmt_quota("4000"));
    assert_eq!(file_of(cg, high), (32 * MIB).to_string());
    assert_eq!(file_of(cg, max), (64 * MIB).to_string(), "hard limit kept");
    let tightened = cg.limits().unwrap();
    assert_eq!(tightened.cpu, Some(0.2));
    assert_eq!(tightened.memory_high, Some(32 * MIB));
    assert_eq!(tightened.memory_max, Some(64 * MIB));
    assert_eq!(tightened.pids, Some(64));

    soft(0.5, None);
    assert_eq!(file_of(cg, quota), fmt_quota("10000"));
    assert_eq!(cg.limits().unwrap(), policy);
    assert_eq!(cg.pids().unwrap(), vec![p.pid()]);
    assert!(cg.stats().unwrap().memory_current > 0);

    g.remove();
    assert_eq!(
        p.wait_signal(Duration::from_secs(5)),
        Some(9),
        "killed by remove"
    );
}

/// Statistics of a process that burned some CPU and holds memory, through `cg`.
fn busy_stats(root: &CgroupRoot) -> CgroupStats {
    let g = Group::new(root, &CgroupLimits::default());
    let mut p = Proc::spawn(
        "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; \
         x=$(head -c 4000000 /dev/zero | tr '\\0' a); read done",
    );
    p.enter_and_go(g.get());
    let st = settled(g.get(), &p, |st| {
        st.cpu_usage_usec > 1000 && st.memory_current > 4_000_000
    });
    assert_eq!(g.get().pids().unwrap(), vec![p.pid()]);
    assert_eq!(st.pids_current, 1);
    assert_eq!(st.oom_kills, 0);
    // Removal of a populated group kills the tenant first.
    g.remove();
    assert_eq!(p.wait_signal(Duration::from_secs(5)), Some(9));
    st
}

#[test]
fn stats_pids_and_removal_of_a_populated_group_through_both_backends() {
    let Some((rs, files)) = roots("stats_pids_and_removal") else {
        return;
    };
    for root in [&rs, &files] {
        let st = busy_stats(root);
        eprintln!("{:?}: {st:?}", root.backend());
    }
}

#[test]
fn oom_kills_are_counted_through_both_backends() {
    let Some((rs, files)) = roots("oom_kills_are_counted") else {
        return;
    };
    for root in [&rs, &files] {
        let g = Group::new(
            root,
            &CgroupLimits {
                memory_max: Some(16 * MIB),
                ..Default::default()
            },
        );
        let mut p = Proc::spawn("s=aaaaaaaaaaaaaaaa; while :; do s=\"$s$s\"; done");
        p.enter_and_go(g.get());
        assert_eq!(p.wait_signal(Duration::from_secs(20)), Some(9));
        let st = g.get().stats().unwrap();
        assert!(st.oom_kills >= 1, "{:?}: {st:?}", root.backend());
        g.remove();
    }
}

fn percentile(v: &mut [Duration], pct: usize) -> Duration {
    v.sort();
    v[(v.len() * pct / 100).min(v.len() - 1)]
}

/// Not a pass/fail test: prints the cost of both backends (run with `--nocapture`).
#[test]
fn timing_create_remove_and_stats() {
    let Some((rs, files)) = roots("timing_create_remove_and_stats") else {
        return;
    };
    let limits = CgroupLimits {
        cpu: Some(0.5),
        memory_max: Some(64 * MIB),
        memory_high: Some(48 * MIB),
        pids: Some(64),
    };
    const N: usize = 200;
    let backends = [("cgroups-rs", &rs), ("files", &files)];
    let mut create = [Vec::new(), Vec::new()];
    let mut remove = [Vec::new(), Vec::new()];
    let mut stats = [Vec::new(), Vec::new()];
    let mut soft = [Vec::new(), Vec::new()];
    for i in 0..N + 20 {
        for (k, (_, root)) in backends.iter().enumerate() {
            let name = unique_name();
            let t0 = Instant::now();
            let cg = root.create(&name, &limits).unwrap();
            let t1 = Instant::now();
            let mut guard = Group {
                dirs: cg.dirs(),
                cg: Some(cg),
            };
            let t2 = Instant::now();
            guard.get().stats().unwrap();
            let t3 = Instant::now();
            guard
                .get()
                .set_limits(&CgroupLimits {
                    cpu: Some(0.2),
                    ..limits.clone()
                })
                .unwrap();
            let t4 = Instant::now();
            let cg = guard.cg.take().unwrap();
            let t5 = Instant::now();
            cg.remove().unwrap();
            let t6 = Instant::now();
            if i >= 20 {
                create[k].push(t1 - t0);
                stats[k].push(t3 - t2);
                soft[k].push(t4 - t3);
                remove[k].push(t6 - t5);
            }
        }
    }
    for (k, (label, _)) in backends.iter().enumerate() {
        let both: Vec<Duration> = create[k]
            .iter()
            .zip(&remove[k])
            .map(|(c, r)| *c + *r)
            .collect();
        eprintln!(
            "TIMING {label:>10} (p50/p90 over {N}): create {:?}/{:?}  remove {:?}/{:?}  \
             create+remove {:?}/{:?}  stats {:?}/{:?}  set_limits {:?}/{:?}",
            percentile(&mut create[k], 50),
            percentile(&mut create[k], 90),
            percentile(&mut remove[k], 50),
            percentile(&mut remove[k], 90),
            percentile(&mut both.clone(), 50),
            percentile(&mut both.clone(), 90),
            percentile(&mut stats[k], 50),
            percentile(&mut stats[k], 90),
            percentile(&mut soft[k], 50),
            percentile(&mut soft[k], 90),
        );
    }
}
