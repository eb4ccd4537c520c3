//! Per-instance cgroups, v1 and v2, with two interchangeable backends chosen by
//! [`CgroupRoot::detect`]:
//!
//! - [`CgroupBackend::CgroupsRs`] on the real hierarchy (mount root `/sys/fs/cgroup`, which the
//!   cgroups-rs crate hard-codes): groups are created, limited, read, emptied and deleted through
//!   cgroups-rs controllers;
//! - [`CgroupBackend::Files`] everywhere else (a fake tree in a temp dir in tests): a thin layer
//!   writing the interface files under the mount root itself.
//!
//! Both write the same values to the same kernel files and read them back the same way (a test on
//! the real hierarchy compares them). Some things cgroups-rs cannot do stay in the file layer for
//! both: placing a child with `CLONE_INTO_CGROUP` / `cgroup.procs` ([`CgroupAttach`]), listing
//! the groups under the parent, v2 `memory.events` (OOM kills) and `memory.current`, v1 memory
//! limits read-back (its `memory_stat` reads eleven files and turns read errors into zeros), and
//! the existence checks of optional files (`memory.swap.max`, `memory.memsw.limit_in_bytes`).
//! The formats follow the kernel's `Documentation/admin-guide/cgroup-v2.rst` and the v1
//! controller documents.
use std::collections::BTreeSet;
use std::error::Error as _;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use cgroups_rs::cpu::CpuController;
use cgroups_rs::error::ErrorKind as RsErrorKind;
use cgroups_rs::freezer::FreezerController;
use cgroups_rs::memory::{MemController, SetMemory};
use cgroups_rs::pid::PidController;
use cgroups_rs::{Cgroup, CgroupPid, Controller, MaxValue};
use serde::{Deserialize, Serialize};

pub mod pool;

/// CPU period written with every quota, in microseconds. 20 ms rather than the kernel's
/// default 100 ms: a throttled tenant then runs in short slices instead of monopolising a core
/// for up to 100 ms at a time, which is what its neighbours' tail latency feels (measured
/// with `hako-bench spike`: quiet's p99 during a noisy burst 1.3-1.7x its calm p99 with 20 ms,
/// 3.4x with 100 ms).
pub const CPU_PERIOD_US: u64 = 20_000;

/// The only mount root cgroups-rs works with (`cgroups_rs::hierarchies::UNIFIED_MOUNTPOINT`).
pub const SYS_FS_CGROUP: &str = cgroups_rs::hierarchies::UNIFIED_MOUNTPOINT;

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

/// Which implementation manages the instance groups (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupBackend {
    /// The cgroups-rs crate; only on the real hierarchy at [`SYS_FS_CGROUP`].
    CgroupsRs,
    /// Plain interface-file reads and writes under any mount root.
    Files,
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
    /// A cgroups-rs operation failed (v1: lowering `memory.limit_in_bytes` below what the
    /// kernel can reclaim fails here with EBUSY).
    #[error("{op} {path} (cgroups-rs): {source}")]
    CgroupsRs {
        op: &'static str,
        path: PathBuf,
        source: cgroups_rs::error::Error,
    },
    /// The cgroups-rs backend was requested where it cannot work.
    #[error("cgroups-rs backend unavailable for {path}: {reason}")]
    BackendUnavailable { path: PathBuf, reason: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn rs_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(cgroups_rs::error::Error) -> CgroupError + 'a {
    move |source| CgroupError::CgroupsRs {
        op,
        path: path.to_owned(),
        source,
    }
}

/// `true` if a cgroups-rs error was caused by a missing file (a group removed meanwhile): the
/// file layer treats missing files as absent values, and so does the cgroups-rs backend.
fn rs_not_found(e: &cgroups_rs::error::Error) -> bool {
    e.source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .is_some_and(|io| io.kind() == io::ErrorKind::NotFound)
}

/// `Ok(None)` for a missing file, the error otherwise.
fn rs_opt<T>(
    r: cgroups_rs::error::Result<T>,
    op: &'static str,
    path: &Path,
) -> Result<Option<T>, CgroupError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if rs_not_found(&e) => Ok(None),
        Err(e) => Err(rs_err(op, path)(e)),
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

/// v1 controllers hako uses, in the order they are attached. No freezer: every container is
/// the init of its own pid namespace, so killing it kills every process of the group at once
/// (nothing can fork meanwhile), and each hierarchy costs every boot a directory to create,
/// join and remove.
const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids"];
const V2_CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

/// The cgroups-rs hierarchy handle kept by a root (cloned into every instance handle, so
/// `/proc/self/mountinfo` is parsed once, in `detect`).
#[derive(Debug, Clone)]
enum RsHier {
    V1(cgroups_rs::hierarchies::V1),
    V2,
}

impl RsHier {
    fn boxed(&self) -> Box<dyn cgroups_rs::Hierarchy> {
        match self {
            RsHier::V1(h) => Box::new(h.clone()),
            RsHier::V2 => Box::new(cgroups_rs::hierarchies::V2::new()),
        }
    }
}

#[derive(Debug, Clone)]
struct Layout {
    version: CgroupVersion,
    /// (controller, directory of the parent group in that controller's hierarchy); on v2 one
    /// entry with controller `""`.
    parents: Vec<(String, PathBuf)>,
    /// Controllers hako uses in this layout (v1: one per entry of `parents`; v2: the ones
    /// enabled in the parent's `cgroup.subtree_control`).
    controllers: Vec<String>,
    /// Real cgroupfs (false: a fake tree, where `rmdir` must remove the plain files too).
    real: bool,
    /// `Some` when the cgroups-rs backend manages the groups.
    rs: Option<RsHier>,
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

/// Why cgroups-rs cannot manage `layout` under `mount_root`, or its hierarchy handle.
fn rs_hierarchy(mount_root: &Path, parent: &str, layout: &Layout) -> Result<RsHier, String> {
    if mount_root != Path::new(SYS_FS_CGROUP) {
        return Err(format!("cgroups-rs only works under {SYS_FS_CGROUP}"));
    }
    if !layout.real {
        return Err("not a cgroup filesystem".into());
    }
    let unified = cgroups_rs::hierarchies::is_cgroup2_unified_mode();
    match layout.version {
        CgroupVersion::V2 if unified => Ok(RsHier::V2),
        CgroupVersion::V1 if !unified => {
            let h = RsHier::V1(cgroups_rs::hierarchies::V1::new());
            // cgroups-rs finds each controller's mount point in /proc/self/mountinfo; it must be
            // the directory the file layer (and the `CgroupAttach` data) uses, controller by
            // controller, or the two would manage different groups.
            let probe = Cgroup::load_with_specified_controllers(
                h.boxed(),
                parent,
                layout.controllers.clone(),
            );
            let mut found = Vec::new();
            for s in probe.subsystems() {
                let c = s.to_controller();
                let dir = c
                    .path()
                    .canonicalize()
                    .map_err(|e| format!("{}: {e}", c.path().display()))?;
                found.push((s.controller_name(), dir));
            }
            found.sort();
            let mut want = layout.parents.clone();
            want.sort();
            if found != want {
                return Err(format!(
                    "cgroups-rs sees the hierarchies {found:?}, the mount root has {want:?}"
                ));
            }
            Ok(h)
        }
        v => Err(format!(
            "{SYS_FS_CGROUP} has a {v:?} layout but cgroups-rs sees unified mode = {unified}"
        )),
    }
}

impl CgroupRoot {
    /// Detects v2 (`<mount_root>/cgroup.controllers` exists) or v1 (`<mount_root>/<controller>`
    /// directories) and creates the parent group `parent` (e.g. `hako`) in every hierarchy.
    ///
    /// On the real hierarchy (`mount_root` = [`SYS_FS_CGROUP`]) the groups are managed through
    /// cgroups-rs, elsewhere through the file layer; should cgroups-rs not see the same
    /// hierarchies, the file layer is used and a warning logged.
    pub fn detect(mount_root: &Path, parent: &str) -> Result<Self, CgroupError> {
        let want = if mount_root == Path::new(SYS_FS_CGROUP) {
            CgroupBackend::CgroupsRs
        } else {
            CgroupBackend::Files
        };
        Self::detect_inner(mount_root, parent, want, false)
    }

    /// [`detect`](Self::detect) with an explicit backend: `Files` works on any root,
    /// `CgroupsRs` fails with [`CgroupError::BackendUnavailable`] where it cannot work.
    pub fn detect_with_backend(
        mount_root: &Path,
        parent: &str,
        backend: CgroupBackend,
    ) -> Result<Self, CgroupError> {
        Self::detect_inner(mount_root, parent, backend, true)
    }

    fn detect_inner(
        mount_root: &Path,
        parent: &str,
        backend: CgroupBackend,
        strict: bool,
    ) -> Result<Self, CgroupError> {
        validate_name(parent)?;
        let mut layout = if mount_root.join("cgroup.controllers").exists() {
            let available = fs::read_to_string(mount_root.join("cgroup.controllers"))
                .map_err(io_err("read", &mount_root.join("cgroup.controllers")))?;
            let controllers: Vec<String> = available
                .split_whitespace()
                .filter(|c| V2_CONTROLLERS.contains(c))
                .map(str::to_owned)
                .collect();
            let dir = mount_root.join(parent);
            let _ = create_dir(&dir)?;
            if !controllers.is_empty() {
                let line = controllers
                    .iter()
                    .map(|c| format!("+{c}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                for d in [mount_root, dir.as_path()] {
                    let f = d.join("cgroup.subtree_control");
                    fs::write(&f, &line).map_err(io_err("write", &f))?;
                }
            }
            Layout {
                version: CgroupVersion::V2,
                parents: vec![(String::new(), dir)],
                controllers,
                real: is_cgroupfs(mount_root),
                rs: None,
            }
        } else {
            let mut parents = Vec::new();
            let mut real = true;
            // Resolved once; each hierarchy below is then one `readlink` away.
            let root = mount_root
                .canonicalize()
                .map_err(io_err("canonicalize", mount_root))?;
            for c in V1_CONTROLLERS {
                let Some(h) = hierarchy_dir(&root, c)? else {
                    continue;
                };
                real &= is_cgroupfs(&h);
                let dir = h.join(parent);
                let _ = create_dir(&dir)?;
                parents.push(((*c).to_owned(), dir));
            }
            if parents.is_empty() {
                return Err(CgroupError::NoHierarchy(mount_root.to_owned()));
            }
            Layout {
                version: CgroupVersion::V1,
                controllers: parents.iter().map(|(c, _)| c.clone()).collect(),
                parents,
                real,
                rs: None,
            }
        };
        if backend == CgroupBackend::CgroupsRs {
            match rs_hierarchy(mount_root, parent, &layout) {
                Ok(h) => layout.rs = Some(h),
                Err(reason) if strict => {
                    return Err(CgroupError::BackendUnavailable {
                        path: mount_root.to_owned(),
                        reason,
                    })
                }
                Err(reason) => {
                    tracing::warn!(root = %mount_root.display(), %reason, "cgroups-rs unusable; using the file layer")
                }
            }
        }
        let root = Self {
            layout,
            mount_root: mount_root.to_owned(),
            parent: parent.to_owned(),
        };
        tracing::debug!(root = %mount_root.display(), parent, version = ?root.version(), backend = ?root.backend(), "cgroup root");
        Ok(root)
    }

    pub fn version(&self) -> CgroupVersion {
        self.layout.version
    }

    /// Which implementation manages the groups.
    pub fn backend(&self) -> CgroupBackend {
        if self.layout.rs.is_some() {
            CgroupBackend::CgroupsRs
        } else {
            CgroupBackend::Files
        }
    }

    /// The parent group name (e.g. `hako`).
    pub fn parent(&self) -> &str {
        &self.parent
    }

    pub fn mount_root(&self) -> &Path {
        &self.mount_root
    }

    fn instance(&self, name: &str) -> InstanceCgroup {
        let rs = self.layout.rs.as_ref().map(|h| {
            let mut controllers = self.layout.controllers.clone();
            if let RsHier::V2 = h {
                // cgroups-rs lists a group's processes through its first controller handle;
                // on v2 it always provides "freezer" (core `cgroup.freeze`), so a group
                // without cpu, memory or pids controllers still has one.
                controllers.push("freezer".to_owned());
            }
            Cgroup::load_with_specified_controllers(
                h.boxed(),
                format!("{}/{name}", self.parent),
                controllers,
            )
        });
        InstanceCgroup {
            name: name.to_owned(),
            layout: self.layout.clone(),
            rs,
        }
    }

    /// Creates the group `name` in every hierarchy and writes `limits`. On failure nothing of
    /// it is left (directories already made in other hierarchies are removed).
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<InstanceCgroup, CgroupError> {
        validate_name(name)?;
        let inst = self.instance(name);
        // A group that existed already (a leftover) has its limits rewritten in full.
        let made = self
            .make_dirs(&inst, name)
            .and_then(|fresh| inst.write_limits(limits, fresh));
        if let Err(e) = made {
            let _ = inst.remove();
            return Err(e);
        }
        Ok(inst)
    }

    /// Makes the group's directories; `true` if none of them existed before (a fresh group,
    /// whose limits are all still the kernel's defaults).
    fn make_dirs(&self, inst: &InstanceCgroup, name: &str) -> Result<bool, CgroupError> {
        // cgroups-rs treats an existing directory as made: look first.
        let existed = || inst.dirs().iter().any(|d| d.exists());
        match (&inst.rs, &self.layout.rs) {
            (Some(cg), Some(RsHier::V1(_))) => {
                let fresh = !existed();
                // v1 `Cgroup::create` logs and swallows mkdir errors: check, and redo a failed
                // mkdir to report its real error.
                cg.create().map_err(rs_err("create", &inst.dirs()[0]))?;
                for s in cg.subsystems() {
                    let p = s.to_controller().path();
                    if !p.is_dir() {
                        let _ = create_dir(p)?;
                    }
                }
                Ok(fresh)
            }
            (Some(_), _) => {
                let fresh = !existed();
                // v2: an empty controller list creates the directory only; the parent's
                // `cgroup.subtree_control` was written once by `detect` (a list would rewrite
                // the root's and the parent's on every creation).
                let path = format!("{}/{name}", self.parent);
                Cgroup::new_with_specified_controllers(RsHier::V2.boxed(), &path, Some(Vec::new()))
                    .map_err(rs_err("create", &inst.dirs()[0]))?;
                Ok(fresh)
            }
            (None, _) => {
                let mut fresh = true;
                for d in self.layout.unique_dirs(name) {
                    fresh &= create_dir(&d)?;
                }
                Ok(fresh)
            }
        }
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

    /// Removes the parent group from every hierarchy if no instance group is left in it (at
    /// shutdown, so a stopped hako leaves no cgroup behind). Returns whether it is gone.
    pub fn remove_parent_if_empty(&self) -> Result<bool, CgroupError> {
        if !self.list()?.is_empty() {
            return Ok(false);
        }
        for (_, p) in &self.layout.parents {
            match fs::remove_dir(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Busy: someone else (another process) put something there.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(false),
                Err(e) => {
                    return Err(CgroupError::Io {
                        op: "rmdir",
                        path: p.clone(),
                        source: e,
                    })
                }
            }
        }
        Ok(true)
    }
}

/// The directory of the v1 hierarchy `controller` under the canonical mount root `root`, with
/// the usual symlink there (`cpu -> cpu,cpuacct`) resolved, so that controllers sharing a
/// hierarchy share a directory; `None` if there is no such hierarchy.
fn hierarchy_dir(root: &Path, controller: &str) -> Result<Option<PathBuf>, CgroupError> {
    let h = root.join(controller);
    let dir = match fs::read_link(&h) {
        // A sibling name (the common case): no further lookups needed.
        Ok(t)
            if matches!(
                t.components().collect::<Vec<_>>()[..],
                [Component::Normal(_)]
            ) =>
        {
            root.join(t)
        }
        Ok(_) => match h.canonicalize() {
            Ok(d) => d,
            Err(e) if absent(&e) => return Ok(None),
            Err(e) => return Err(io_err("canonicalize", &h)(e)),
        },
        // Not a symlink.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => h,
        Err(e) if absent(&e) => return Ok(None),
        Err(e) => return Err(io_err("readlink", &h)(e)),
    };
    Ok(dir.is_dir().then_some(dir))
}

/// `mkdir`; an existing directory is fine. `true` if this call made it.
fn create_dir(d: &Path) -> Result<bool, CgroupError> {
    match fs::create_dir(d) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
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
    /// The cgroups-rs handle, when that backend manages the group.
    rs: Option<Cgroup>,
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
    Ok(unhuge(v))
}

fn unhuge(v: u64) -> Option<u64> {
    (v < (1u64 << 62)).then_some(v)
}

/// `quota period` for `cpu.max` (quota at least 1 ms, the kernel's minimum).
fn cpu_quota(cores: f64) -> u64 {
    ((cores * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

/// A limit for cgroups-rs' signed setters: `-1` is unlimited.
fn rs_i64(v: Option<u64>) -> i64 {
    v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn rs_max(v: Option<u64>) -> MaxValue {
    v.map_or(MaxValue::Max, |v| MaxValue::Value(rs_i64(Some(v))))
}

fn from_rs_max(v: MaxValue) -> Option<u64> {
    match v {
        MaxValue::Max => None,
        MaxValue::Value(v) => u64::try_from(v).ok().and_then(unhuge),
    }
}

/// v1 keeps `memory.memsw.limit_in_bytes >= memory.limit_in_bytes` at all times (EINVAL
/// otherwise): when the limit goes up (or to unlimited) memsw is written first, when it goes
/// down the limit is written first. `None` = unlimited.
fn memsw_first(current: Option<u64>, new: Option<u64>) -> bool {
    match (current, new) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(c), Some(n)) => n >= c,
    }
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

    /// Which implementation manages this group.
    pub fn backend(&self) -> CgroupBackend {
        if self.rs.is_some() {
            CgroupBackend::CgroupsRs
        } else {
            CgroupBackend::Files
        }
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

    /// An interface file's content, `None` if the file (or its controller) is absent. One
    /// `open` (no `stat` first): [`stats`](Self::stats) is a hot path.
    fn read_opt(&self, file: &str) -> Result<Option<(PathBuf, String)>, CgroupError> {
        let Some(p) = self.file(file) else {
            return Ok(None);
        };
        match fs::read_to_string(&p) {
            Ok(s) => Ok(Some((p, s))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &p)(e)),
        }
    }

    fn read_num(&self, file: &str) -> Result<Option<u64>, CgroupError> {
        match self.read_opt(file)? {
            Some((p, s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| CgroupError::Parse { path: p, value: s }),
            None => Ok(None),
        }
    }

    fn read_key(&self, file: &str, key: &str) -> Result<Option<u64>, CgroupError> {
        match self.read_opt(file)? {
            Some((p, s)) => keyed_value(&p, &s, key),
            None => Ok(None),
        }
    }

    /// The current v1 `memory.limit_in_bytes` and the memsw file, when swap accounting exists
    /// (the ordering of the two writes depends on the current limit).
    fn v1_memsw(&self) -> Result<Option<(PathBuf, Option<u64>)>, CgroupError> {
        let Some(sw) = self
            .file("memory.memsw.limit_in_bytes")
            .filter(|p| p.exists())
        else {
            return Ok(None);
        };
        let cur = match self.read_opt("memory.limit_in_bytes")? {
            Some((p, s)) => parse_limit(&p, &s)?,
            None => None,
        };
        Ok(Some((sw, cur)))
    }

    fn rs_ctrl<'a, T>(&'a self) -> Option<&'a T>
    where
        &'a T: From<&'a cgroups_rs::Subsystem>,
        T: Controller + cgroups_rs::ControllIdentifier,
    {
        self.rs.as_ref().and_then(|cg| cg.controller_of::<T>())
    }

    /// Writes the limits (used at creation and live by the governor).
    ///
    /// v1: `memory.limit_in_bytes` cannot go below what the kernel can reclaim (the write fails
    /// with EBUSY, reported as an error, nothing else changed); with swap accounting the memsw
    /// limit follows the memory limit (no swapping around it, as `memory.swap.max = 0` on v2),
    /// written in the order the kernel accepts.
    pub fn set_limits(&self, l: &CgroupLimits) -> Result<(), CgroupError> {
        self.write_limits(l, false)
    }

    /// `fresh`: the group was just made, so every limit is still the kernel's "unlimited" and
    /// an unset one needs no write (up to 8 fewer writes when a group is made).
    fn write_limits(&self, l: &CgroupLimits, fresh: bool) -> Result<(), CgroupError> {
        if self.rs.is_some() {
            return self.rs_set_limits(l, fresh);
        }
        let stale = !fresh;
        match self.layout.version {
            CgroupVersion::V2 => {
                if l.cpu.is_some() || stale && self.file("cpu.max").is_some_and(|p| p.exists()) {
                    let p = self.need("cpu.max", "cpu", "cpu")?;
                    let q = l
                        .cpu
                        .map_or_else(|| "max".to_owned(), |c| cpu_quota(c).to_string());
                    self.write(&p, &format!("{q} {CPU_PERIOD_US}"))?;
                }
                for (file, v) in [("memory.max", l.memory_max), ("memory.high", l.memory_high)] {
                    if v.is_none() && fresh {
                        continue;
                    }
                    let p = self.need(file, "memory", "memory")?;
                    if v.is_some() || p.exists() {
                        self.write(&p, &fmt_limit(v))?;
                    }
                }
                // No swapping around the memory limit: a hog is killed, not slowed to a crawl.
                if l.memory_max.is_some() || stale {
                    if let Some(p) = self.file("memory.swap.max").filter(|p| p.exists()) {
                        self.write(&p, if l.memory_max.is_some() { "0" } else { "max" })?;
                    }
                }
                if l.pids.is_some() || stale {
                    let p = self.need("pids.max", "pids", "pids")?;
                    if l.pids.is_some() || p.exists() {
                        self.write(&p, &fmt_limit(l.pids))?;
                    }
                }
            }
            CgroupVersion::V1 => {
                if l.cpu.is_none() && fresh {
                    // Unlimited already.
                } else if let Some(p) = self.file("cpu.cfs_quota_us") {
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
                    || stale && self.file("memory.limit_in_bytes").is_some()
                {
                    let p = self.need("memory.limit_in_bytes", "memory", "memory")?;
                    match self.v1_memsw()? {
                        None => self.write(&p, &v1mem(l.memory_max))?,
                        Some((sw, cur)) if memsw_first(cur, l.memory_max) => {
                            self.write(&sw, &v1mem(l.memory_max))?;
                            self.write(&p, &v1mem(l.memory_max))?;
                        }
                        Some((sw, _)) => {
                            self.write(&p, &v1mem(l.memory_max))?;
                            self.write(&sw, &v1mem(l.memory_max))?;
                        }
                    }
                    let p = self.need("memory.soft_limit_in_bytes", "memory", "memory")?;
                    self.write(&p, &v1mem(l.memory_high))?;
                }
                if l.pids.is_some() || stale && self.file("pids.max").is_some() {
                    let p = self.need("pids.max", "pids", "pids")?;
                    self.write(&p, &fmt_limit(l.pids))?;
                }
            }
        }
        Ok(())
    }

    /// [`set_limits`](Self::set_limits) through cgroups-rs: the same values to the same files.
    fn rs_set_limits(&self, l: &CgroupLimits, fresh: bool) -> Result<(), CgroupError> {
        let v2 = self.layout.version == CgroupVersion::V2;
        tracing::trace!(name = %self.name, limits = ?l, "cgroups-rs set limits");
        match self.rs_ctrl::<CpuController>() {
            Some(_) if fresh && l.cpu.is_none() => {}
            Some(c) => {
                let q = l.cpu.map_or(-1, |c| rs_i64(Some(cpu_quota(c))));
                let p = c.path();
                if v2 {
                    c.set_cfs_quota_and_period(Some(q), Some(CPU_PERIOD_US))
                        .map_err(rs_err("write cpu.max", p))?;
                } else {
                    c.set_cfs_period(CPU_PERIOD_US)
                        .map_err(rs_err("write cpu.cfs_period_us", p))?;
                    c.set_cfs_quota(q)
                        .map_err(rs_err("write cpu.cfs_quota_us", p))?;
                }
            }
            None if l.cpu.is_some() => {
                return Err(CgroupError::NoController {
                    what: "cpu",
                    controller: "cpu",
                })
            }
            None => {}
        }
        match self.rs_ctrl::<MemController>() {
            Some(_) if fresh && l.memory_max.is_none() && l.memory_high.is_none() => {}
            Some(m) => {
                let p = m.path();
                if v2 {
                    m.set_mem(SetMemory {
                        max: Some(rs_max(l.memory_max)),
                        high: Some(rs_max(l.memory_high)),
                        low: None,
                        min: None,
                    })
                    .map_err(rs_err("write memory.max/memory.high", p))?;
                    if p.join("memory.swap.max").exists() {
                        let swap = if l.memory_max.is_some() { 0 } else { -1 };
                        m.set_memswap_limit(swap)
                            .map_err(rs_err("write memory.swap.max", p))?;
                    }
                } else {
                    let max = rs_i64(l.memory_max);
                    let limit = |m: &MemController| {
                        m.set_limit(max)
                            .map_err(rs_err("write memory.limit_in_bytes", p))
                    };
                    let memsw = |m: &MemController| {
                        m.set_memswap_limit(max)
                            .map_err(rs_err("write memory.memsw.limit_in_bytes", p))
                    };
                    match self.v1_memsw()? {
                        None => limit(m)?,
                        Some((_, cur)) if memsw_first(cur, l.memory_max) => {
                            memsw(m)?;
                            limit(m)?;
                        }
                        Some(_) => {
                            limit(m)?;
                            memsw(m)?;
                        }
                    }
                    m.set_soft_limit(rs_i64(l.memory_high))
                        .map_err(rs_err("write memory.soft_limit_in_bytes", p))?;
                }
            }
            None if l.memory_max.is_some() || l.memory_high.is_some() => {
                return Err(CgroupError::NoController {
                    what: "memory",
                    controller: "memory",
                })
            }
            None => {}
        }
        match self.rs_ctrl::<PidController>() {
            Some(_) if fresh && l.pids.is_none() => {}
            Some(c) => c
                .set_pid_max(rs_max(l.pids))
                .map_err(rs_err("write pids.max", c.path()))?,
            None if l.pids.is_some() => {
                return Err(CgroupError::NoController {
                    what: "pids",
                    controller: "pids",
                })
            }
            None => {}
        }
        Ok(())
    }

    /// Reads back the effective limits from the interface files.
    pub fn limits(&self) -> Result<CgroupLimits, CgroupError> {
        if self.rs.is_some() {
            return self.rs_limits();
        }
        let mut l = CgroupLimits::default();
        match self.layout.version {
            CgroupVersion::V2 => {
                if let Some((p, s)) = self.read_opt("cpu.max")? {
                    let mut it = s.split_whitespace();
                    let (q, per) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
                    let per: f64 = per.parse().map_err(|_| CgroupError::Parse {
                        path: p.clone(),
                        value: s.clone(),
                    })?;
                    l.cpu = parse_limit(&p, q)?.map(|q| q as f64 / per);
                }
                if let Some((p, s)) = self.read_opt("memory.max")? {
                    l.memory_max = parse_limit(&p, &s)?;
                }
                if let Some((p, s)) = self.read_opt("memory.high")? {
                    l.memory_high = parse_limit(&p, &s)?;
                }
            }
            CgroupVersion::V1 => {
                if let (Some((p, q)), Some((pp, per))) = (
                    self.read_opt("cpu.cfs_quota_us")?,
                    self.read_opt("cpu.cfs_period_us")?,
                ) {
                    let per: f64 = per.trim().parse().map_err(|_| CgroupError::Parse {
                        path: pp,
                        value: per.clone(),
                    })?;
                    l.cpu = parse_limit(&p, &q)?.map(|q| q as f64 / per);
                }
                self.v1_memory_limits(&mut l)?;
            }
        }
        if let Some((p, s)) = self.read_opt("pids.max")? {
            l.pids = parse_limit(&p, &s)?;
        }
        Ok(l)
    }

    /// v1 memory limits, by the file layer for both backends (cgroups-rs reads them only as
    /// part of `memory_stat`, eleven files, with read errors turned into zero limits).
    fn v1_memory_limits(&self, l: &mut CgroupLimits) -> Result<(), CgroupError> {
        if let Some((p, s)) = self.read_opt("memory.limit_in_bytes")? {
            l.memory_max = parse_limit(&p, &s)?;
        }
        if let Some((p, s)) = self.read_opt("memory.soft_limit_in_bytes")? {
            l.memory_high = parse_limit(&p, &s)?;
        }
        Ok(())
    }

    fn rs_limits(&self) -> Result<CgroupLimits, CgroupError> {
        let mut l = CgroupLimits::default();
        if let Some(c) = self.rs_ctrl::<CpuController>() {
            let p = c.path();
            if let (Some(q), Some(per)) = (
                rs_opt(c.cfs_quota(), "read cpu quota", p)?,
                rs_opt(c.cfs_period(), "read cpu period", p)?,
            ) {
                l.cpu = (q >= 0).then(|| q as f64 / per as f64);
            }
        }
        match self.layout.version {
            CgroupVersion::V2 => {
                if let Some(m) = self.rs_ctrl::<MemController>() {
                    if let Some(set) = rs_opt(m.get_mem(), "read memory limits", m.path())? {
                        l.memory_max = set.max.and_then(from_rs_max);
                        l.memory_high = set.high.and_then(from_rs_max);
                    }
                }
            }
            CgroupVersion::V1 => self.v1_memory_limits(&mut l)?,
        }
        if let Some(c) = self.rs_ctrl::<PidController>() {
            if let Some(v) = rs_opt(c.get_pid_max(), "read pids.max", c.path())? {
                l.pids = from_rs_max(v);
            }
        }
        Ok(l)
    }

    /// Usage counters.
    ///
    /// This is the governor's hot path (every instance, every ~100 ms), so it reads the four
    /// small files it needs directly on both backends: cgroups-rs's v1 readers open 19 files
    /// (`memory.stat`, `numa_stat`, ...) and measured 255 µs per call against 59 µs here.
    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let mut st = CgroupStats::default();
        match self.layout.version {
            CgroupVersion::V2 => {
                st.cpu_usage_usec = self.read_key("cpu.stat", "usage_usec")?.unwrap_or(0);
                st.memory_current = self.read_num("memory.current")?.unwrap_or(0);
                st.oom_kills = self.read_key("memory.events", "oom_kill")?.unwrap_or(0);
            }
            CgroupVersion::V1 => {
                st.cpu_usage_usec = self.read_num("cpuacct.usage")?.unwrap_or(0) / 1000;
                st.memory_current = self.read_num("memory.usage_in_bytes")?.unwrap_or(0);
                st.oom_kills = match self.read_key("memory.oom_control", "oom_kill")? {
                    Some(n) => n,
                    None => self
                        .read_num("memory.failcnt")?
                        .map_or(0, |f| u64::from(f > 0)),
                };
            }
        }
        st.pids_current = self.read_num("pids.current")?.unwrap_or(0);
        Ok(st)
    }

    /// Pids in the group (all hierarchies).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        if let Some(cg) = &self.rs {
            // Sorted and deduplicated over the hierarchies by cgroups-rs.
            return Ok(cg
                .procs()
                .into_iter()
                .filter_map(|CgroupPid { pid }| i32::try_from(pid).ok().filter(|p| *p > 0))
                .collect());
        }
        let mut set = BTreeSet::new();
        for d in self.dirs() {
            let p = d.join("cgroup.procs");
            let s = match fs::read_to_string(&p) {
                Ok(s) => s,
                Err(e) if absent(&e) => continue,
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

    /// Kills every process: `cgroup.kill` on v2 when present, else SIGKILL to each pid (under
    /// the freezer when the group has one; hako's v1 groups do not, see `V1_CONTROLLERS`).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        if let Some(cg) = &self.rs {
            if cg.v2() {
                match cg.kill() {
                    Ok(()) => return Ok(()),
                    // No cgroup.kill before Linux 5.14: signal each pid below.
                    Err(e) if *e.kind() == RsErrorKind::InvalidOperation => {}
                    Err(e) => return Err(rs_err("write cgroup.kill", &self.dirs()[0])(e)),
                }
            }
            let freezer = self
                .rs_ctrl::<FreezerController>()
                .filter(|_| !cg.v2() && self.layout.real);
            return self.kill_each(|frozen| {
                if let Some(f) = freezer {
                    let _ = if frozen { f.freeze() } else { f.thaw() };
                }
            });
        }
        if let Some(p) = self
            .file("cgroup.kill")
            .filter(|p| p.exists() && self.layout.real)
        {
            return self.write(&p, "1");
        }
        let freezer = self
            .file("freezer.state")
            .filter(|p| p.exists() && self.layout.real);
        self.kill_each(|frozen| {
            if let Some(f) = &freezer {
                let _ = self.write(f, if frozen { "FROZEN" } else { "THAWED" });
            }
        })
    }

    /// SIGKILL to each pid, between `freeze(true)` and `freeze(false)`.
    fn kill_each(&self, freeze: impl Fn(bool)) -> Result<(), CgroupError> {
        if self.pids()?.is_empty() {
            return Ok(());
        }
        freeze(true);
        for pid in self.pids()? {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
        freeze(false);
        Ok(())
    }

    /// One `rmdir` per hierarchy; `true` if the group is gone from all of them.
    fn try_rmdir_all(&self) -> bool {
        let mut gone = true;
        for d in self.dirs() {
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if absent(&e) => {}
                Err(_) => gone = false,
            }
        }
        gone
    }

    /// Kills leftovers, waits for them to leave (up to 2 s), removes the group everywhere.
    pub fn remove(self) -> Result<(), CgroupError> {
        // Usually the group is empty already (its container has been reaped): try the rmdirs
        // first and list, kill and wait only if one is refused.
        if self.rs.is_none() && self.layout.real && self.try_rmdir_all() {
            tracing::debug!(name = %self.name, "cgroup removed");
            return Ok(());
        }
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
        if let Some(cg) = &self.rs {
            // v1 `delete` retries each rmdir itself (10 to 80 ms apart); v2 tries once, and
            // exiting tasks may still pin the group for a moment (EBUSY).
            loop {
                match cg.delete() {
                    Ok(()) => break,
                    Err(e) if rs_not_found(&e) => break,
                    Err(e)
                        if cg.v2()
                            && Instant::now() < deadline
                            && e.source()
                                .and_then(|s| s.downcast_ref::<io::Error>())
                                .and_then(io::Error::raw_os_error)
                                == Some(libc::EBUSY) =>
                    {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(e) => return Err(rs_err("rmdir", &self.dirs()[0])(e)),
                }
            }
            tracing::debug!(name = %self.name, "cgroup removed (cgroups-rs)");
            return Ok(());
        }
        for d in self.dirs() {
            let res = if self.layout.real {
                rmdir_retry(&d, deadline)
            } else {
                fs::remove_dir_all(&d)
            };
            match res {
                Ok(()) => {}
                Err(e) if absent(&e) => {}
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

/// The group is not there: the path, or a directory on it, does not exist (a creation that
/// failed halfway may leave a hierarchy without the group).
fn absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
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
        assert_eq!(read(d.join("cpu.max")), "10000 20000");
        assert_eq!(read(d.join("memory.max")), "67108864");
        assert_eq!(read(d.join("memory.high")), "50331648");
        assert_eq!(read(d.join("pids.max")), "32");
        assert_eq!(cg.limits().unwrap(), limits);
        assert_eq!(cg.attach(), CgroupAttach::V2 { dir: d.clone() });

        // Relaxing to unlimited writes "max".
        cg.set_limits(&CgroupLimits::default()).unwrap();
        assert_eq!(read(d.join("cpu.max")), "max 20000");
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

    /// A group that already existed (left over) gets every limit rewritten, the unset ones to
    /// "unlimited"; a fresh one only the limits that are set.
    #[test]
    fn create_resets_a_leftover_group_in_full() {
        let (t, root) = fake_v2();
        let old = t.path().join("hako/left");
        fs::create_dir(&old).unwrap();
        for (f, v) in [
            ("memory.max", "1234"),
            ("pids.max", "7"),
            ("cpu.max", "1000 20000"),
        ] {
            fs::write(old.join(f), v).unwrap();
        }
        let cg = root.create("left", &CgroupLimits::default()).unwrap();
        assert_eq!(cg.limits().unwrap(), CgroupLimits::default());
        assert_eq!(read(old.join("memory.max")), "max");
        assert_eq!(read(old.join("pids.max")), "max");
        assert!(read(old.join("cpu.max")).starts_with("max "));

        root.create(
            "new",
            &CgroupLimits {
                pids: Some(9),
                ..Default::default()
            },
        )
        .unwrap();
        let new = t.path().join("hako/new");
        assert_eq!(read(new.join("pids.max")), "9");
        assert!(
            !new.join("memory.max").exists(),
            "an unset limit is not written"
        );
    }

    /// A creation that fails in one hierarchy leaves nothing in the others.
    #[test]
    fn failed_v1_creation_leaves_no_directory_behind() {
        let t = tempfile::tempdir().unwrap();
        for c in ["cpu", "cpuacct", "memory", "pids"] {
            fs::create_dir(t.path().join(c)).unwrap();
        }
        let root = CgroupRoot::detect(t.path(), "hako").unwrap();
        // The memory hierarchy's parent turns into a regular file: mkdir fails there.
        fs::remove_dir(t.path().join("memory/hako")).unwrap();
        fs::write(t.path().join("memory/hako"), "").unwrap();
        assert!(root.create("app-1", &CgroupLimits::default()).is_err());
        for c in ["cpu", "cpuacct", "pids"] {
            let d = t.path().join(c).join("hako/app-1");
            assert!(!d.exists(), "{} left behind", d.display());
        }
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
        assert_eq!(read(t.path().join("cpu/hako/i/cpu.cfs_quota_us")), "30000");
        assert_eq!(read(t.path().join("cpu/hako/i/cpu.cfs_period_us")), "20000");
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
    fn fake_trees_use_the_file_layer_and_refuse_cgroups_rs() {
        let (t, root) = fake_v2();
        assert_eq!(root.backend(), CgroupBackend::Files);
        let cg = root.create("f", &CgroupLimits::default()).unwrap();
        assert_eq!(cg.backend(), CgroupBackend::Files);
        let err = CgroupRoot::detect_with_backend(t.path(), "hako", CgroupBackend::CgroupsRs)
            .unwrap_err();
        assert!(
            matches!(err, CgroupError::BackendUnavailable { .. }),
            "{err}"
        );
    }

    #[test]
    fn v1_memsw_follows_the_memory_limit_when_swap_accounting_exists() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("memory")).unwrap();
        let root = CgroupRoot::detect(t.path(), "hako").unwrap();
        let d = t.path().join("memory/hako/m");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("memory.memsw.limit_in_bytes"), "9223372036854771712").unwrap();
        let limits = CgroupLimits {
            memory_max: Some(32 << 20),
            ..Default::default()
        };
        let cg = root.create("m", &limits).unwrap();
        assert_eq!(read(d.join("memory.memsw.limit_in_bytes")), "33554432");
        assert_eq!(read(d.join("memory.limit_in_bytes")), "33554432");
        cg.set_limits(&CgroupLimits::default()).unwrap();
        assert_eq!(read(d.join("memory.memsw.limit_in_bytes")), "-1");
        assert_eq!(cg.limits().unwrap(), CgroupLimits::default());
    }

    #[test]
    fn memsw_is_written_first_exactly_when_the_limit_does_not_go_down() {
        let mib = |n: u64| Some(n << 20);
        assert!(memsw_first(mib(16), mib(64)), "raise");
        assert!(memsw_first(mib(16), mib(16)), "same");
        assert!(memsw_first(mib(16), None), "to unlimited");
        assert!(memsw_first(None, None));
        assert!(!memsw_first(mib(64), mib(16)), "lower");
        assert!(!memsw_first(None, mib(16)), "from unlimited");
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
