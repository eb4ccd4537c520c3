//! Per-instance cgroups, v1 and v2, as a thin file layer parameterized by the mount root
//! (normally `/sys/fs/cgroup`), so that the v2 paths can be tested against a fake tree.
//!
//! cgroups-rs hard-codes `/sys/fs/cgroup` and cannot place a child with `CLONE_INTO_CGROUP`,
//! so the launcher writes the interface files itself; the formats follow the kernel's
//! `Documentation/admin-guide/cgroup-v2.rst` and the v1 controller documents.
use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// CPU period written with every quota, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Limits of one instance; `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CgroupLimits {
    /// CPU bandwidth in cores (0.5 = half a core).
    pub cpu: Option<f64>,
    pub memory_max: Option<u64>,
    /// v2 `memory.high`; v1 `memory.soft_limit_in_bytes`.
    pub memory_high: Option<u64>,
    pub pids: Option<u64>,
}

/// Usage counters of one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStats {
    pub cpu_usage_usec: u64,
    pub memory_current: u64,
    pub oom_kills: u64,
    pub pids_current: u64,
}

/// Which cgroup hierarchy the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Where a new process must be placed before its first instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupAttach {
    /// The group directory, opened and passed to `clone3(CLONE_INTO_CGROUP)`.
    V2 { dir: PathBuf },
    /// One `cgroup.procs` per hierarchy; the child writes `0` to each first thing.
    V1 { procs: Vec<PathBuf> },
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy under {0}")]
    NoHierarchy(PathBuf),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path}: cannot parse {value:?}")]
    Parse { path: PathBuf, value: String },
    #[error("invalid cgroup name {0:?}")]
    InvalidName(String),
    #[error("{path}: processes still present after kill")]
    Busy { path: PathBuf },
    #[error("limit {what} needs the {controller} controller, which is not available")]
    NoController {
        what: &'static str,
        controller: &'static str,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;

/// `true` if `path` is on a real cgroup filesystem (false for a fake tree in a temp dir).
fn is_cgroupfs(path: &Path) -> bool {
    match nix::sys::statfs::statfs(path) {
        Ok(s) => {
            #[allow(clippy::unnecessary_cast)] // the field type differs between architectures
            let t = s.filesystem_type().0 as i64;
            t == CGROUP2_SUPER_MAGIC || t == CGROUP_SUPER_MAGIC
        }
        Err(_) => false,
    }
}

/// v1 controllers hako uses, in the order they are attached.
const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids", "freezer"];
const V2_CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

#[derive(Debug, Clone)]
struct Layout {
    version: CgroupVersion,
    /// (controller, directory of the parent group in that controller's hierarchy); on v2 one
    /// entry with controller `""`.
    parents: Vec<(String, PathBuf)>,
    /// Real cgroupfs (false: a fake tree, where `rmdir` must remove the plain files too).
    real: bool,
}

impl Layout {
    fn unique_dirs(&self, name: &str) -> Vec<PathBuf> {
        let set: BTreeSet<PathBuf> = self.parents.iter().map(|(_, p)| p.join(name)).collect();
        set.into_iter().collect()
    }
}

/// The parent group under which hako creates one group per instance.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    layout: Layout,
    mount_root: PathBuf,
    parent: String,
}

fn validate_name(name: &str) -> Result<(), CgroupError> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.contains('\n')
    {
        return Err(CgroupError::InvalidName(name.to_owned()));
    }
    Ok(())
}

impl CgroupRoot {
    /// Detects v2 (`<mount_root>/cgroup.controllers` exists) or v1 (`<mount_root>/<controller>`
    /// directories) and creates the parent group `parent` (e.g. `hako`) in every hierarchy.
    pub fn detect(mount_root: &Path, parent: &str) -> Result<Self, CgroupError> {
        validate_name(parent)?;
        let layout = if mount_root.join("cgroup.controllers").exists() {
            let available = fs::read_to_string(mount_root.join("cgroup.controllers"))
                .map_err(io_err("read", &mount_root.join("cgroup.controllers")))?;
            let enable: Vec<String> = available
                .split_whitespace()
                .filter(|c| V2_CONTROLLERS.contains(c))
                .map(|c| format!("+{c}"))
                .collect();
            let dir = mount_root.join(parent);
            create_dir(&dir)?;
            if !enable.is_empty() {
                let line = enable.join(" ");
                for d in [mount_root, dir.as_path()] {
                    let f = d.join("cgroup.subtree_control");
                    fs::write(&f, &line).map_err(io_err("write", &f))?;
                }
            }
            Layout {
                version: CgroupVersion::V2,
                parents: vec![(String::new(), dir)],
                real: is_cgroupfs(mount_root),
            }
        } else {
            let mut parents = Vec::new();
            let mut real = true;
            for c in V1_CONTROLLERS {
                let h = mount_root.join(c);
                if !h.is_dir() {
                    continue;
                }
                let h = h.canonicalize().map_err(io_err("canonicalize", &h))?;
                real &= is_cgroupfs(&h);
                let dir = h.join(parent);
                create_dir(&dir)?;
                parents.push(((*c).to_owned(), dir));
            }
            if parents.is_empty() {
                return Err(CgroupError::NoHierarchy(mount_root.to_owned()));
            }
            Layout {
                version: CgroupVersion::V1,
                parents,
                real,
            }
        };
        tracing::debug!(root = %mount_root.display(), parent, version = ?layout.version, "cgroup root");
        Ok(Self {
            layout,
            mount_root: mount_root.to_owned(),
            parent: parent.to_owned(),
        })
    }

    pub fn version(&self) -> CgroupVersion {
        self.layout.version
    }

    /// The parent group name (e.g. `hako`).
    pub fn parent(&self) -> &str {
        &self.parent
    }

    pub fn mount_root(&self) -> &Path {
        &self.mount_root
    }

    fn instance(&self, name: &str) -> InstanceCgroup {
        InstanceCgroup {
            name: name.to_owned(),
            layout: self.layout.clone(),
        }
    }

    /// Creates the group `name` in every hierarchy and writes `limits`.
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<InstanceCgroup, CgroupError> {
        validate_name(name)?;
        let inst = self.instance(name);
        for d in self.layout.unique_dirs(name) {
            create_dir(&d)?;
        }
        if let Err(e) = inst.set_limits(limits) {
            let _ = inst.remove();
            return Err(e);
        }
        Ok(inst)
    }

    /// An existing group (for orphan cleanup); `None` if it does not exist.
    pub fn open(&self, name: &str) -> Result<Option<InstanceCgroup>, CgroupError> {
        validate_name(name)?;
        let exists = self.layout.unique_dirs(name).iter().any(|d| d.is_dir());
        Ok(exists.then(|| self.instance(name)))
    }

    /// Names of the groups under the parent, in every hierarchy.
    pub fn list(&self) -> Result<Vec<String>, CgroupError> {
        let mut names = BTreeSet::new();
        for (_, p) in &self.layout.parents {
            for entry in fs::read_dir(p).map_err(io_err("read_dir", p))? {
                let entry = entry.map_err(io_err("read_dir", p))?;
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    names.insert(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        Ok(names.into_iter().collect())
    }
}

fn create_dir(d: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(CgroupError::Io {
            op: "mkdir",
            path: d.to_owned(),
            source: e,
        }),
    }
}

/// One instance's group.
#[derive(Debug)]
pub struct InstanceCgroup {
    name: String,
    layout: Layout,
}

fn fmt_limit(v: Option<u64>) -> String {
    v.map_or_else(|| "max".to_owned(), |v| v.to_string())
}

fn parse_limit(path: &Path, s: &str) -> Result<Option<u64>, CgroupError> {
    let s = s.trim();
    if s == "max" || s == "-1" {
        return Ok(None);
    }
    let v: u64 = s.parse().map_err(|_| CgroupError::Parse {
        path: path.to_owned(),
        value: s.to_owned(),
    })?;
    // v1 reports "unlimited" memory as a huge page-aligned number.
    Ok((v < (1u64 << 62)).then_some(v))
}

/// `quota period` for `cpu.max` (quota at least 1 ms, the kernel's minimum).
fn cpu_quota(cores: f64) -> u64 {
    ((cores * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

fn keyed_value(path: &Path, text: &str, key: &str) -> Result<Option<u64>, CgroupError> {
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if it.next() == Some(key) {
            let v = it.next().unwrap_or("");
            return v.parse().map(Some).map_err(|_| CgroupError::Parse {
                path: path.to_owned(),
                value: line.to_owned(),
            });
        }
    }
    Ok(None)
}

impl InstanceCgroup {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> CgroupVersion {
        self.layout.version
    }

    /// Directories of this group, one per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.layout.unique_dirs(&self.name)
    }

    /// What the launcher needs to place a child into this group.
    pub fn attach(&self) -> CgroupAttach {
        match self.layout.version {
            CgroupVersion::V2 => CgroupAttach::V2 {
                dir: self.dirs().remove(0),
            },
            CgroupVersion::V1 => CgroupAttach::V1 {
                procs: self
                    .dirs()
                    .into_iter()
                    .map(|d| d.join("cgroup.procs"))
                    .collect(),
            },
        }
    }

    /// Path of an interface file: on v1 in the hierarchy of the controller named by its prefix.
    fn file(&self, file: &str) -> Option<PathBuf> {
        match self.layout.version {
            CgroupVersion::V2 => Some(self.layout.parents[0].1.join(&self.name).join(file)),
            CgroupVersion::V1 => {
                let ctrl = file.split('.').next().unwrap_or("");
                self.layout
                    .parents
                    .iter()
                    .find(|(c, _)| c == ctrl)
                    .map(|(_, p)| p.join(&self.name).join(file))
            }
        }
    }

    fn need(
        &self,
        file: &str,
        what: &'static str,
        controller: &'static str,
    ) -> Result<PathBuf, CgroupError> {
        self.file(file)
            .ok_or(CgroupError::NoController { what, controller })
    }

    fn write(&self, path: &Path, value: &str) -> Result<(), CgroupError> {
        tracing::trace!(path = %path.display(), value, "cgroup write");
        fs::write(path, value).map_err(io_err("write", path))
    }

    fn read(&self, path: &Path) -> Result<String, CgroupError> {
        fs::read_to_string(path).map_err(io_err("read", path))
    }

    /// Writes the limits (used at creation and live by the governor).
    pub fn set_limits(&self, l: &CgroupLimits) -> Result<(), CgroupError> {
        match self.layout.version {
            CgroupVersion::V2 => {
                if l.cpu.is_some() || self.file("cpu.max").is_some_and(|p| p.exists()) {
                    let p = self.need("cpu.max", "cpu", "cpu")?;
                    let q = l
                        .cpu
                        .map_or_else(|| "max".to_owned(), |c| cpu_quota(c).to_string());
                    self.write(&p, &format!("{q} {CPU_PERIOD_US}"))?;
                }
                for (file, v) in [("memory.max", l.memory_max), ("memory.high", l.memory_high)] {
                    let p = self.need(file, "memory", "memory")?;
                    if v.is_some() || p.exists() {
                        self.write(&p, &fmt_limit(v))?;
                    }
                }
                // No swapping around the memory limit: a hog is killed, not slowed to a crawl.
                if let Some(p) = self.file("memory.swap.max").filter(|p| p.exists()) {
                    self.write(&p, if l.memory_max.is_some() { "0" } else { "max" })?;
                }
                let p = self.need("pids.max", "pids", "pids")?;
                if l.pids.is_some() || p.exists() {
                    self.write(&p, &fmt_limit(l.pids))?;
                }
            }
            CgroupVersion::V1 => {
                if let Some(p) = self.file("cpu.cfs_quota_us") {
                    self.write(
                        &p.with_file_name("cpu.cfs_period_us"),
                        &CPU_PERIOD_US.to_string(),
                    )?;
                    let q = l
                        .cpu
                        .map_or_else(|| "-1".to_owned(), |c| cpu_quota(c).to_string());
                    self.write(&p, &q)?;
                } else if l.cpu.is_some() {
                    return Err(CgroupError::NoController {
                        what: "cpu",
                        controller: "cpu",
                    });
                }
                let v1mem = |v: Option<u64>| v.map_or_else(|| "-1".to_owned(), |v| v.to_string());
                if l.memory_max.is_some()
                    || l.memory_high.is_some()
                    || self.file("memory.limit_in_bytes").is_some()
                {
                    let p = self.need("memory.limit_in_bytes", "memory", "memory")?;
                    self.write(&p, &v1mem(l.memory_max))?;
                    let p = self.need("memory.soft_limit_in_bytes", "memory", "memory")?;
                    self.write(&p, &v1mem(l.memory_high))?;
                }
                if l.pids.is_some() || self.file("pids.max").is_some() {
                    let p = self.need("pids.max", "pids", "pids")?;
                    self.write(&p, &fmt_limit(l.pids))?;
                }
            }
        }
        Ok(())
    }

    /// Reads back the effective limits from the interface files.
    pub fn limits(&self) -> Result<CgroupLimits, CgroupError> {
        let mut l = CgroupLimits::default();
        let read_opt = |file: &str| -> Result<Option<(PathBuf, String)>, CgroupError> {
            match self.file(file) {
                Some(p) if p.exists() => {
                    let s = self.read(&p)?;
                    Ok(Some((p, s)))
                }
                _ => Ok(None),
            }
        };
        match self.layout.version {
            CgroupVersion::V2 => {
                if let Some((p, s)) = read_opt("cpu.max")? {
                    let mut it = s.split_whitespace();
                    let (q, per) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
                    let per: f64 = per.parse().map_err(|_| CgroupError::Parse {
                        path: p.clone(),
                        value: s.clone(),
                    })?;
                    l.cpu = parse_limit(&p, q)?.map(|q| q as f64 / per);
                }
                if let Some((p, s)) = read_opt("memory.max")? {
                    l.memory_max = parse_limit(&p, &s)?;
                }
                if let Some((p, s)) = read_opt("memory.high")? {
                    l.memory_high = parse_limit(&p, &s)?;
                }
            }
            CgroupVersion::V1 => {
                if let (Some((p, q)), Some((pp, per))) = (
                    read_opt("cpu.cfs_quota_us")?,
                    read_opt("cpu.cfs_period_us")?,
                ) {
                    let per: f64 = per.trim().parse().map_err(|_| CgroupError::Parse {
                        path: pp,
                        value: per.clone(),
                    })?;
                    l.cpu = parse_limit(&p, &q)?.map(|q| q as f64 / per);
                }
                if let Some((p, s)) = read_opt("memory.limit_in_bytes")? {
                    l.memory_max = parse_limit(&p, &s)?;
                }
                if let Some((p, s)) = read_opt("memory.soft_limit_in_bytes")? {
                    l.memory_high = parse_limit(&p, &s)?;
                }
            }
        }
        if let Some((p, s)) = read_opt("pids.max")? {
            l.pids = parse_limit(&p, &s)?;
        }
        Ok(l)
    }

    /// Usage counters.
    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let mut st = CgroupStats::default();
        let read_num = |file: &str| -> Result<Option<u64>, CgroupError> {
            match self.file(file) {
                Some(p) if p.exists() => {
                    let s = self.read(&p)?;
                    s.trim()
                        .parse()
                        .map(Some)
                        .map_err(|_| CgroupError::Parse { path: p, value: s })
                }
                _ => Ok(None),
            }
        };
        let read_key = |file: &str, key: &str| -> Result<Option<u64>, CgroupError> {
            match self.file(file) {
                Some(p) if p.exists() => {
                    let s = self.read(&p)?;
                    keyed_value(&p, &s, key)
                }
                _ => Ok(None),
            }
        };
        match self.layout.version {
            CgroupVersion::V2 => {
                st.cpu_usage_usec = read_key("cpu.stat", "usage_usec")?.unwrap_or(0);
                st.memory_current = read_num("memory.current")?.unwrap_or(0);
                st.oom_kills = read_key("memory.events", "oom_kill")?.unwrap_or(0);
            }
            CgroupVersion::V1 => {
                st.cpu_usage_usec = read_num("cpuacct.usage")?.unwrap_or(0) / 1000;
                st.memory_current = read_num("memory.usage_in_bytes")?.unwrap_or(0);
                st.oom_kills = match read_key("memory.oom_control", "oom_kill")? {
                    Some(n) => n,
                    None => read_num("memory.failcnt")?.map_or(0, |f| u64::from(f > 0)),
                };
            }
        }
        st.pids_current = read_num("pids.current")?.unwrap_or(0);
        Ok(st)
    }

    /// Pids in the group (all hierarchies).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut set = BTreeSet::new();
        for d in self.dirs() {
            let p = d.join("cgroup.procs");
            let s = match fs::read_to_string(&p) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(CgroupError::Io {
                        op: "read",
                        path: p,
                        source: e,
                    })
                }
            };
            for line in s.lines().filter(|l| !l.trim().is_empty()) {
                let pid = line.trim().parse().map_err(|_| CgroupError::Parse {
                    path: p.clone(),
                    value: line.to_owned(),
                })?;
                set.insert(pid);
            }
        }
        Ok(set.into_iter().collect())
    }

    /// Kills every process: `cgroup.kill` on v2 when present, else SIGKILL to each pid
    /// (v1: under the freezer, when that hierarchy is available, so nothing forks meanwhile).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        if let Some(p) = self
            .file("cgroup.kill")
            .filter(|p| p.exists() && self.layout.real)
        {
            return self.write(&p, "1");
        }
        let freezer = self
            .file("freezer.state")
            .filter(|p| p.exists() && self.layout.real);
        let pids = self.pids()?;
        if pids.is_empty() {
            return Ok(());
        }
        if let Some(f) = &freezer {
            let _ = self.write(f, "FROZEN");
        }
        for pid in self.pids()? {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
        if let Some(f) = &freezer {
            let _ = self.write(f, "THAWED");
        }
        Ok(())
    }

    /// Kills leftovers, waits for them to leave (up to 2 s), removes the group everywhere.
    pub fn remove(self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut killed = false;
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Busy {
                    path: self.dirs().remove(0),
                });
            }
            if !killed {
                self.kill_all()?;
                killed = true;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        for d in self.dirs() {
            let res = if self.layout.real {
                rmdir_retry(&d, deadline)
            } else {
                fs::remove_dir_all(&d)
            };
            match res {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(CgroupError::Io {
                        op: "rmdir",
                        path: d,
                        source: e,
                    })
                }
            }
        }
        tracing::debug!(name = %self.name, "cgroup removed");
        Ok(())
    }
}

/// rmdir, retrying while the kernel still counts exiting tasks (EBUSY).
fn rmdir_retry(d: &Path, deadline: Instant) -> io::Result<()> {
    loop {
        match fs::remove_dir(d) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200));
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_v2() -> (tempfile::TempDir, CgroupRoot) {
        let t = tempfile::tempdir().unwrap();
        fs::write(
            t.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma\n",
        )
        .unwrap();
        let root = CgroupRoot::detect(t.path(), "hako").unwrap();
        (t, root)
    }

    fn read(p: PathBuf) -> String {
        fs::read_to_string(p).unwrap()
    }

    #[test]
    fn v2_detect_enables_controllers_in_root_and_parent() {
        let (t, root) = fake_v2();
        assert_eq!(root.version(), CgroupVersion::V2);
        assert_eq!(
            read(t.path().join("cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert_eq!(
            read(t.path().join("hako/cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
    }

    #[test]
    fn v2_create_writes_limits_in_kernel_formats_and_reads_them_back() {
        let (t, root) = fake_v2();
        let limits = CgroupLimits {
            cpu: Some(0.5),
            memory_max: Some(64 << 20),
            memory_high: Some(48 << 20),
            pids: Some(32),
        };
        let cg = root.create("app-1", &limits).unwrap();
        let d = t.path().join("hako/app-1");
        assert_eq!(read(d.join("cpu.max")), "50000 100000");
        assert_eq!(read(d.join("memory.max")), "67108864");
        assert_eq!(read(d.join("memory.high")), "50331648");
        assert_eq!(read(d.join("pids.max")), "32");
        assert_eq!(cg.limits().unwrap(), limits);
        assert_eq!(cg.attach(), CgroupAttach::V2 { dir: d.clone() });

        // Relaxing to unlimited writes "max".
        cg.set_limits(&CgroupLimits::default()).unwrap();
        assert_eq!(read(d.join("cpu.max")), "max 100000");
        assert_eq!(read(d.join("memory.max")), "max");
        assert_eq!(read(d.join("memory.high")), "max");
        assert_eq!(read(d.join("pids.max")), "max");
        assert_eq!(cg.limits().unwrap(), CgroupLimits::default());
    }

    #[test]
    fn v2_swap_is_disabled_with_a_memory_limit_when_the_file_exists() {
        let (t, root) = fake_v2();
        let d = t.path().join("hako/s");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("memory.swap.max"), "max").unwrap();
        let cg = root
            .create(
                "s",
                &CgroupLimits {
                    memory_max: Some(1 << 20),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(read(d.join("memory.swap.max")), "0");
        cg.remove().unwrap();
    }

    #[test]
    fn v2_stats_parse_kernel_files() {
        let (t, root) = fake_v2();
        let cg = root.create("st", &CgroupLimits::default()).unwrap();
        let d = t.path().join("hako/st");
        fs::write(
            d.join("cpu.stat"),
            "usage_usec 12345\nuser_usec 10000\nsystem_usec 2345\n",
        )
        .unwrap();
        fs::write(d.join("memory.current"), "4096000\n").unwrap();
        fs::write(
            d.join("memory.events"),
            "low 0\nhigh 3\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        fs::write(d.join("pids.current"), "3\n").unwrap();
        fs::write(d.join("cgroup.procs"), "42\n7\n").unwrap();
        assert_eq!(
            cg.stats().unwrap(),
            CgroupStats {
                cpu_usage_usec: 12345,
                memory_current: 4_096_000,
                oom_kills: 1,
                pids_current: 3
            }
        );
        assert_eq!(cg.pids().unwrap(), vec![7, 42]);
        fs::write(d.join("memory.current"), "garbage").unwrap();
        assert!(matches!(cg.stats(), Err(CgroupError::Parse { .. })));
    }

    #[test]
    fn v2_list_open_remove() {
        let (t, root) = fake_v2();
        root.create("a", &CgroupLimits::default()).unwrap();
        root.create(
            "b",
            &CgroupLimits {
                pids: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(root.list().unwrap(), vec!["a".to_owned(), "b".to_owned()]);
        assert!(root.open("zzz").unwrap().is_none());
        let b = root.open("b").unwrap().unwrap();
        assert_eq!(b.limits().unwrap().pids, Some(5));
        b.remove().unwrap();
        assert!(!t.path().join("hako/b").exists());
        assert_eq!(root.list().unwrap(), vec!["a".to_owned()]);
        assert!(matches!(
            root.create("../x", &CgroupLimits::default()),
            Err(CgroupError::InvalidName(_))
        ));
    }

    #[test]
    fn v1_layout_uses_one_hierarchy_per_controller() {
        let t = tempfile::tempdir().unwrap();
        for c in ["cpu", "memory", "pids"] {
            fs::create_dir(t.path().join(c)).unwrap();
        }
        let root = CgroupRoot::detect(t.path(), "hako").unwrap();
        assert_eq!(root.version(), CgroupVersion::V1);
        let limits = CgroupLimits {
            cpu: Some(1.5),
            memory_max: Some(1 << 30),
            memory_high: None,
            pids: Some(9),
        };
        let cg = root.create("i", &limits).unwrap();
        assert_eq!(read(t.path().join("cpu/hako/i/cpu.cfs_quota_us")), "150000");
        assert_eq!(
            read(t.path().join("cpu/hako/i/cpu.cfs_period_us")),
            "100000"
        );
        assert_eq!(
            read(t.path().join("memory/hako/i/memory.limit_in_bytes")),
            "1073741824"
        );
        assert_eq!(
            read(t.path().join("memory/hako/i/memory.soft_limit_in_bytes")),
            "-1"
        );
        assert_eq!(read(t.path().join("pids/hako/i/pids.max")), "9");
        assert_eq!(cg.limits().unwrap(), limits);
        match cg.attach() {
            CgroupAttach::V1 { procs } => assert_eq!(procs.len(), 3),
            other => panic!("unexpected {other:?}"),
        }
        cg.remove().unwrap();
        assert!(!t.path().join("memory/hako/i").exists());
    }

    #[test]
    fn v1_without_pids_controller_rejects_a_pids_limit() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("memory")).unwrap();
        let root = CgroupRoot::detect(t.path(), "hako").unwrap();
        let err = root
            .create(
                "p",
                &CgroupLimits {
                    pids: Some(3),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                CgroupError::NoController {
                    controller: "pids",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            !t.path().join("memory/hako/p").exists(),
            "failed create must clean up"
        );
    }

    #[test]
    fn empty_root_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        assert!(matches!(
            CgroupRoot::detect(t.path(), "hako"),
            Err(CgroupError::NoHierarchy(_))
        ));
    }
}
