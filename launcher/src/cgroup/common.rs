//! Helpers shared by the v1 and v2 managers: names, limit formats, reads of interface files,
//! directory creation and removal, the kill and wait loops.
use std::collections::BTreeSet;
use std::error::Error as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::types::{CgroupError, CgroupManager, CPU_PERIOD_US};

pub(super) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

pub(super) fn rs_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(cgroups_rs::error::Error) -> CgroupError + 'a {
    move |source| CgroupError::CgroupsRs {
        op,
        path: path.to_owned(),
        source,
    }
}

/// `Ok(None)` when a cgroups-rs read failed because the file is missing (a group removed
/// meanwhile, a controller the group lacks), the error otherwise: missing files are absent
/// values, as in the file layer.
pub(super) fn rs_opt<T>(
    r: cgroups_rs::error::Result<T>,
    op: &'static str,
    path: &Path,
) -> Result<Option<T>, CgroupError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e)
            if e.source()
                .and_then(|s| s.downcast_ref::<io::Error>())
                .is_some_and(absent) =>
        {
            Ok(None)
        }
        Err(e) => Err(rs_err(op, path)(e)),
    }
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;

/// `true` if `path` is on a real cgroup filesystem (false for a fake tree in a temp dir).
pub(super) fn is_cgroupfs(path: &Path) -> bool {
    match nix::sys::statfs::statfs(path) {
        Ok(s) => {
            #[allow(clippy::unnecessary_cast)] // the field type differs between architectures
            let t = s.filesystem_type().0 as i64;
            t == CGROUP2_SUPER_MAGIC || t == CGROUP_SUPER_MAGIC
        }
        Err(_) => false,
    }
}

pub(super) fn validate_name(name: &str) -> Result<(), CgroupError> {
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

/// `max` for unlimited, the number otherwise (v2 limits, `pids.max`).
pub(super) fn fmt_limit(v: Option<u64>) -> String {
    v.map_or_else(|| "max".to_owned(), |v| v.to_string())
}

/// A limit as the kernel shows it: `max` (v2), `-1` or a huge page-aligned number (v1) are
/// unlimited (`None`).
pub(super) fn parse_limit(path: &Path, s: &str) -> Result<Option<u64>, CgroupError> {
    let s = s.trim();
    if s == "max" || s == "-1" {
        return Ok(None);
    }
    let v: u64 = s.parse().map_err(|_| CgroupError::Parse {
        path: path.to_owned(),
        value: s.to_owned(),
    })?;
    Ok(unhuge(v))
}

/// v1 reports "unlimited" memory as a huge page-aligned number.
pub(super) fn unhuge(v: u64) -> Option<u64> {
    (v < (1u64 << 62)).then_some(v)
}

/// The CFS quota for `cores` over [`CPU_PERIOD_US`] (at least 1 ms, the kernel's minimum).
pub(super) fn cpu_quota(cores: f64) -> u64 {
    ((cores * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

/// A limit for cgroups-rs' signed setters: `-1` is unlimited.
pub(super) fn rs_i64(v: Option<u64>) -> i64 {
    v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// The value of `key` in a flat keyed file (`cpu.stat`, `memory.events`, ...).
pub(super) fn keyed_value(path: &Path, text: &str, key: &str) -> Result<Option<u64>, CgroupError> {
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

/// An interface file's content, `None` if it is absent. One `open`, no `stat` first (the
/// statistics are a hot path).
pub(super) fn read_opt(p: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(p) {
        Ok(s) => Ok(Some(s)),
        Err(e) if absent(&e) => Ok(None),
        Err(e) => Err(io_err("read", p)(e)),
    }
}

pub(super) fn read_num(p: &Path) -> Result<Option<u64>, CgroupError> {
    match read_opt(p)? {
        Some(s) => s.trim().parse().map(Some).map_err(|_| CgroupError::Parse {
            path: p.to_owned(),
            value: s,
        }),
        None => Ok(None),
    }
}

pub(super) fn read_key(p: &Path, key: &str) -> Result<Option<u64>, CgroupError> {
    match read_opt(p)? {
        Some(s) => keyed_value(p, &s, key),
        None => Ok(None),
    }
}

pub(super) fn read_limit(p: &Path) -> Result<Option<u64>, CgroupError> {
    match read_opt(p)? {
        Some(s) => parse_limit(p, &s),
        None => Ok(None),
    }
}

pub(super) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    tracing::trace!(path = %path.display(), value, "cgroup write");
    fs::write(path, value).map_err(io_err("write", path))
}

/// `mkdir`; an existing directory is fine. `true` if this call made it.
pub(super) fn create_dir(d: &Path) -> Result<bool, CgroupError> {
    match fs::create_dir(d) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err("mkdir", d)(e)),
    }
}

/// The group is not there: the path, or a directory on it, does not exist (a creation that
/// failed halfway may leave a hierarchy without the group).
pub(super) fn absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// rmdir, retrying while the kernel still counts exiting tasks (EBUSY).
pub(super) fn rmdir_retry(d: &Path, deadline: Instant) -> io::Result<()> {
    loop {
        match fs::remove_dir(d) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200));
            }
            r => return r,
        }
    }
}

/// Pids listed in the `cgroup.procs` of `dirs`, sorted, without duplicates.
pub(super) fn procs(dirs: &[PathBuf]) -> Result<Vec<i32>, CgroupError> {
    let mut set = BTreeSet::new();
    for d in dirs {
        let p = d.join("cgroup.procs");
        let Some(s) = read_opt(&p)? else { continue };
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

/// SIGKILL to each pid of `m`, between `freeze(true)` and `freeze(false)`.
pub(super) fn kill_each(
    m: &dyn CgroupManager,
    freeze: impl Fn(bool) -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    if m.pids()?.is_empty() {
        return Ok(());
    }
    // Best effort: the signals are sent either way.
    let _ = freeze(true);
    for pid in m.pids()? {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
    let _ = freeze(false);
    Ok(())
}

/// Removes a group: kills leftovers, waits for them to leave (up to 2 s), removes its
/// directory in every hierarchy. `real`: on cgroupfs (a fake tree's directories hold plain
/// files, removed with them).
pub(super) fn remove_group(m: &dyn CgroupManager, real: bool) -> Result<(), CgroupError> {
    let dirs = m.dirs();
    // Usually the group is empty already (its container has been reaped): try the rmdirs
    // first and list, kill and wait only if one is refused.
    if real
        && dirs.iter().all(|d| match fs::remove_dir(d) {
            Ok(()) => true,
            Err(e) => absent(&e),
        })
    {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut killed = false;
    loop {
        if m.pids()?.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(CgroupError::Busy {
                path: dirs[0].clone(),
            });
        }
        if !killed {
            m.kill_all()?;
            killed = true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    for d in &dirs {
        let res = if real {
            rmdir_retry(d, deadline)
        } else {
            fs::remove_dir_all(d)
        };
        match res {
            Ok(()) => {}
            Err(e) if absent(&e) => {}
            Err(e) => return Err(io_err("rmdir", d)(e)),
        }
    }
    Ok(())
}

/// Polls `done` until it returns `true` (freezer state changes: the kernel applies them
/// asynchronously), up to `timeout`; then [`CgroupError::Timeout`] naming `path`.
pub(super) fn wait_until(
    path: &Path,
    what: &'static str,
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool, CgroupError>,
) -> Result<(), CgroupError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(100);
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::Timeout {
                path: path.to_owned(),
                what,
                timeout,
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_in_every_kernel_spelling() {
        let p = Path::new("f");
        assert_eq!(parse_limit(p, "max\n").unwrap(), None);
        assert_eq!(parse_limit(p, "-1").unwrap(), None);
        assert_eq!(parse_limit(p, "9223372036854771712").unwrap(), None);
        assert_eq!(parse_limit(p, "4096\n").unwrap(), Some(4096));
        assert!(matches!(
            parse_limit(p, "lots"),
            Err(CgroupError::Parse { .. })
        ));
        assert_eq!(fmt_limit(None), "max");
        assert_eq!(fmt_limit(Some(7)), "7");
        assert_eq!(cpu_quota(0.5), 10_000);
        assert_eq!(cpu_quota(0.001), 1000, "the kernel's minimum");
        assert_eq!(rs_i64(None), -1);
        assert_eq!(rs_i64(Some(u64::MAX)), i64::MAX);
    }

    #[test]
    fn names_that_leave_the_parent_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\nb", "a\0b"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        validate_name("web-12").unwrap();
    }

    #[test]
    fn wait_until_returns_once_done_and_times_out_otherwise() {
        let mut n = 0;
        wait_until(Path::new("x"), "frozen", Duration::from_secs(5), || {
            n += 1;
            Ok(n == 3)
        })
        .unwrap();
        assert_eq!(n, 3, "polled until done, not once more");
        let err = wait_until(Path::new("x"), "frozen", Duration::from_millis(20), || {
            Ok(false)
        })
        .unwrap_err();
        assert!(
            matches!(err, CgroupError::Timeout { what: "frozen", .. }),
            "{err}"
        );
    }
}
