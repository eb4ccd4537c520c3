//! The cgroup managers against the host's real hierarchy (root only; the tests skip
//! otherwise): the kernel's formats in the limit files, read-backs, live changes, statistics of
//! real processes, OOM kills, freeze and thaw, pressure, removal of populated (and frozen)
//! groups, and the cost of create + remove. On a hybrid v1 host the v2 paths run against the
//! unified hierarchy at `/sys/fs/cgroup/unified` as well.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hako_launcher::cgroup::{CPU_PERIOD_US, SYS_FS_CGROUP};
use hako_launcher::{
    CgroupAttach, CgroupError, CgroupLimits, CgroupOptions, CgroupRoot, CgroupStats, CgroupVersion,
    InstanceCgroup,
};

const PARENT: &str = "hako-test";
const BUSYBOX: &str = "/usr/bin/busybox";

fn is_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED {test}: needs root (cgroups)");
    }
    root
}

/// The root on the real hierarchy, or `None` (skip) when not root.
fn real_root(test: &str) -> Option<CgroupRoot> {
    if !is_root(test) {
        return None;
    }
    Some(CgroupRoot::detect(Path::new(SYS_FS_CGROUP), PARENT).expect("the host's hierarchy"))
}

/// A root under its own parent group (other options, another hierarchy), whose parent is
/// removed on drop (also when the test fails).
struct OwnParent(CgroupRoot);

impl OwnParent {
    fn new(mount: &Path, opts: &CgroupOptions) -> OwnParent {
        let parent = format!(
            "hako-test-own-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        OwnParent(CgroupRoot::detect_with(mount, &parent, opts).unwrap())
    }
}

impl Drop for OwnParent {
    fn drop(&mut self) {
        let gone = self.0.remove_parent_if_empty();
        if !std::thread::panicking() {
            assert!(gone.unwrap(), "parent {} not empty", self.0.parent());
        }
    }
}

/// The hybrid host's unified (v2) hierarchy, if there is one besides the v1 hierarchies.
fn unified() -> Option<PathBuf> {
    let u = Path::new(SYS_FS_CGROUP).join("unified");
    u.join("cgroup.controllers").exists().then_some(u)
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

fn file_of(cg: &InstanceCgroup, file: &str) -> String {
    let p = cg
        .dirs()
        .into_iter()
        .map(|d| d.join(file))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{file} not found in {:?}", cg.dirs()));
    read(&p)
}

/// `true` if the kernel shows `s` as unlimited (`max`, `-1`, or v1's huge page-aligned number).
fn unlimited(s: &str) -> bool {
    s == "max" || s == "-1" || s.parse::<u64>().is_ok_and(|v| v >= 1 << 62)
}

/// The group's limit files hold `l` in the kernel's formats, and read back as `l`.
fn assert_in_kernel(cg: &InstanceCgroup, l: &CgroupLimits) {
    let num = |v: Option<u64>, f: &str| {
        let got = file_of(cg, f);
        match v {
            Some(v) => assert_eq!(got, v.to_string(), "{f}"),
            None => assert!(unlimited(&got), "{f}: {got}"),
        }
    };
    let quota = l.cpu.map(|c| (c * CPU_PERIOD_US as f64).round() as u64);
    match cg.version() {
        CgroupVersion::V1 => {
            num(quota, "cpu.cfs_quota_us");
            if l.cpu.is_some() {
                assert_eq!(file_of(cg, "cpu.cfs_period_us"), CPU_PERIOD_US.to_string());
            }
            num(l.memory_max, "memory.limit_in_bytes");
            num(l.memory_high, "memory.soft_limit_in_bytes");
            if cg
                .dirs()
                .iter()
                .any(|d| d.join("memory.memsw.limit_in_bytes").exists())
            {
                num(l.memory_max, "memory.memsw.limit_in_bytes");
            }
        }
        CgroupVersion::V2 => {
            let q = quota.map_or_else(|| "max".to_owned(), |q| q.to_string());
            if l.cpu.is_some() {
                assert_eq!(file_of(cg, "cpu.max"), format!("{q} {CPU_PERIOD_US}"));
            } else {
                assert!(file_of(cg, "cpu.max").starts_with("max "));
            }
            num(l.memory_max, "memory.max");
            num(l.memory_high, "memory.high");
            if cg.dirs()[0].join("memory.swap.max").exists() {
                let want = if l.memory_max.is_some() { "0" } else { "max" };
                assert_eq!(file_of(cg, "memory.swap.max"), want);
            }
        }
    }
    num(l.pids, "pids.max");
    assert_eq!(cg.limits().unwrap(), *l, "read-back");
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
fn detect_finds_the_hosts_hierarchy_and_fake_trees_work_alike() {
    let Some(root) = real_root("detect_finds_the_hosts_hierarchy") else {
        return;
    };
    let v2 = Path::new(SYS_FS_CGROUP).join("cgroup.controllers").exists();
    let want = if v2 {
        CgroupVersion::V2
    } else {
        CgroupVersion::V1
    };
    assert_eq!(root.version(), want);
    for d in Group::new(&root, &CgroupLimits::default()).dirs.iter() {
        assert!(d.starts_with(SYS_FS_CGROUP), "{}", d.display());
    }
    // The same code on a fake tree (no cgroupfs): detection and creation work there too.
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("memory")).unwrap();
    let fake = CgroupRoot::detect(t.path(), PARENT).unwrap();
    assert_eq!(fake.version(), CgroupVersion::V1);
    let cg = fake.create("x", &CgroupLimits::default()).unwrap();
    assert_eq!(
        cg.dirs(),
        vec![t
            .path()
            .canonicalize()
            .unwrap()
            .join("memory")
            .join(PARENT)
            .join("x")]
    );
    cg.remove().unwrap();
}

#[test]
fn limits_reach_the_kernel_files_and_read_back() {
    let Some(root) = real_root("limits_reach_the_kernel_files") else {
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
        let g = Group::new(&root, limits);
        assert_in_kernel(g.get(), limits);
        // Live changes to every other case (raising and lowering the memory limit, which on v1
        // orders the memsw and memory writes).
        for next in cases.iter().cycle().skip(i + 1).take(cases.len()) {
            g.get().set_limits(next).unwrap();
            assert_in_kernel(g.get(), next);
        }
        g.remove();
    }
}

#[test]
fn governor_live_changes_reach_the_kernel() {
    let Some(root) = real_root("governor_live_changes_reach_the_kernel") else {
        return;
    };
    let policy = CgroupLimits {
        cpu: Some(0.5),
        memory_max: Some(64 * MIB),
        memory_high: None,
        pids: Some(64),
    };
    let g = Group::new(&root, &policy);
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
            format!("{q} {CPU_PERIOD_US}")
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
fn stats_pids_and_removal_of_a_populated_group() {
    let Some(root) = real_root("stats_pids_and_removal") else {
        return;
    };
    let st = busy_stats(&root);
    eprintln!("{:?}: {st:?}", root.version());
}

#[test]
fn oom_kills_are_counted() {
    let Some(root) = real_root("oom_kills_are_counted") else {
        return;
    };
    let g = Group::new(
        &root,
        &CgroupLimits {
            memory_max: Some(16 * MIB),
            ..Default::default()
        },
    );
    let mut p = Proc::spawn("s=aaaaaaaaaaaaaaaa; while :; do s=\"$s$s\"; done");
    p.enter_and_go(g.get());
    assert_eq!(p.wait_signal(Duration::from_secs(20)), Some(9));
    let st = g.get().stats().unwrap();
    assert!(st.oom_kills >= 1, "{:?}: {st:?}", root.version());
    g.remove();
}

/// CPU time of `pid` (utime + stime, clock ticks) from `/proc/<pid>/stat`.
fn cpu_ticks(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = s.rsplit_once(") ").unwrap().1;
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A spinning tenant stops using CPU while its group is frozen, runs again once thawed, and
/// removing the frozen group kills it.
fn freeze_thaw_remove(root: &CgroupRoot) {
    let g = Group::new(root, &CgroupLimits::default());
    let cg = g.get();
    let mut p = Proc::spawn("while :; do :; done");
    p.enter_and_go(cg);
    let deadline = Instant::now() + Duration::from_secs(10);
    while cpu_ticks(p.pid()) < 2 {
        assert!(Instant::now() < deadline, "the tenant does not run");
        std::thread::sleep(Duration::from_millis(10));
    }
    cg.freeze().unwrap();
    if cg.version() == CgroupVersion::V2 {
        assert!(file_of(cg, "cgroup.events").contains("frozen 1"));
    } else {
        assert_eq!(file_of(cg, "freezer.state"), "FROZEN");
    }
    let frozen_at = cpu_ticks(p.pid());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cpu_ticks(p.pid()), frozen_at, "a frozen task ran");
    cg.thaw().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cpu_ticks(p.pid()) <= frozen_at {
        assert!(Instant::now() < deadline, "the thawed tenant does not run");
        std::thread::sleep(Duration::from_millis(10));
    }
    cg.freeze().unwrap();
    g.remove();
    assert_eq!(
        p.wait_signal(Duration::from_secs(5)),
        Some(9),
        "killed while frozen"
    );
}

#[test]
fn freeze_and_thaw_on_the_real_hierarchy() {
    let Some(root) = real_root("freeze_and_thaw") else {
        return;
    };
    match root.version() {
        CgroupVersion::V2 => freeze_thaw_remove(&root),
        CgroupVersion::V1 => {
            // The default v1 layout has no freezer: refused, nothing frozen.
            let g = Group::new(&root, &CgroupLimits::default());
            assert!(matches!(
                g.get().freeze(),
                Err(CgroupError::NoController {
                    controller: "freezer",
                    ..
                })
            ));
            g.remove();
            if !Path::new(SYS_FS_CGROUP).join("freezer").is_dir() {
                eprintln!("SKIPPED v1 freezer: no freezer hierarchy");
                return;
            }
            let own = OwnParent::new(
                Path::new(SYS_FS_CGROUP),
                &CgroupOptions { v1_freezer: true },
            );
            freeze_thaw_remove(&own.0);
        }
    }
}

#[test]
fn v2_paths_on_the_unified_hierarchy_of_a_hybrid_host() {
    if !is_root("v2_paths_on_the_unified_hierarchy") {
        return;
    }
    let Some(u) = unified() else {
        eprintln!("SKIPPED: no separate unified hierarchy");
        return;
    };
    let own = OwnParent::new(&u, &CgroupOptions::default());
    assert_eq!(own.0.version(), CgroupVersion::V2);
    freeze_thaw_remove(&own.0);
    // Pressure: PSI totals per group when the kernel has PSI.
    let g = Group::new(&own.0, &CgroupLimits::default());
    let mut p = Proc::spawn("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; read done");
    p.enter_and_go(g.get());
    let first = g.get().pressure().unwrap();
    if Path::new("/proc/pressure/cpu").exists() {
        let first = first.expect("PSI files in a v2 group");
        // No pids controller in the unified hierarchy of a hybrid host: wait on cpu.stat.
        let deadline = Instant::now() + Duration::from_secs(10);
        while g.get().stats().unwrap().cpu_usage_usec == 0 {
            assert!(Instant::now() < deadline, "no cpu usage seen");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(g.get().pids().unwrap(), vec![p.pid()]);
        let later = g.get().pressure().unwrap().unwrap();
        assert!(later.cpu_some_usec >= first.cpu_some_usec);
        assert!(later.memory_some_usec >= first.memory_some_usec);
    } else {
        assert_eq!(first, None);
    }
    g.remove();
    assert_eq!(p.wait_signal(Duration::from_secs(5)), Some(9));
}

#[test]
fn v1_has_no_pressure() {
    let Some(root) = real_root("v1_has_no_pressure") else {
        return;
    };
    let g = Group::new(&root, &CgroupLimits::default());
    let p = g.get().pressure().unwrap();
    match root.version() {
        CgroupVersion::V1 => assert_eq!(p, None),
        CgroupVersion::V2 => assert_eq!(p.is_some(), Path::new("/proc/pressure/cpu").exists()),
    }
    g.remove();
}

fn percentile(v: &mut [Duration], pct: usize) -> Duration {
    v.sort();
    v[(v.len() * pct / 100).min(v.len() - 1)]
}

/// Not a pass/fail test: prints the cost of create + remove and of the hot calls, with the
/// default layout and (v1) with the freezer hierarchy added (run with `--nocapture`).
#[test]
fn timing_create_remove_and_stats() {
    let Some(root) = real_root("timing_create_remove_and_stats") else {
        return;
    };
    let freezer = (root.version() == CgroupVersion::V1
        && Path::new(SYS_FS_CGROUP).join("freezer").is_dir())
    .then(|| {
        OwnParent::new(
            Path::new(SYS_FS_CGROUP),
            &CgroupOptions { v1_freezer: true },
        )
    });
    let limits = CgroupLimits {
        cpu: Some(0.5),
        memory_max: Some(64 * MIB),
        memory_high: Some(48 * MIB),
        pids: Some(64),
    };
    const N: usize = 200;
    let mut layouts = vec![("default", &root)];
    if let Some(f) = &freezer {
        layouts.push(("v1_freezer", &f.0));
    }
    for (label, root) in layouts {
        let (mut create, mut remove, mut stats, mut soft) = (vec![], vec![], vec![], vec![]);
        for i in 0..N + 20 {
            let t0 = Instant::now();
            let cg = root.create(&unique_name(), &limits).unwrap();
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
                create.push(t1 - t0);
                stats.push(t3 - t2);
                soft.push(t4 - t3);
                remove.push(t6 - t5);
            }
        }
        let mut both: Vec<Duration> = create.iter().zip(&remove).map(|(c, r)| *c + *r).collect();
        eprintln!(
            "TIMING {label:>10} (p50/p90 over {N}): create {:?}/{:?}  remove {:?}/{:?}  \
             create+remove {:?}/{:?}  stats {:?}/{:?}  set_limits {:?}/{:?}",
            percentile(&mut create, 50),
            percentile(&mut create, 90),
            percentile(&mut remove, 50),
            percentile(&mut remove, 90),
            percentile(&mut both, 50),
            percentile(&mut both, 90),
            percentile(&mut stats, 50),
            percentile(&mut stats, 90),
            percentile(&mut soft, 50),
            percentile(&mut soft, 90),
        );
    }
}
