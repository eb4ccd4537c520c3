//! Giving a frozen instance's memory back (hibernation): the anonymous memory goes to swap,
//! the file cache (the runtime's shared text: `python3`, `node`, their libraries) stays, so a
//! wake does not read the runtime back from disk.
//!
//! Two methods, measured against each other with `hako-bench wake --reclaim` (figures in
//! `docs/benchmarks.md`):
//! - [`InstanceCgroup::reclaim_anon`], the cgroup's own reclaim: v2 `memory.reclaim` asked
//!   for the group's anonymous bytes with `swappiness=max` (anonymous pages only; kernels
//!   without that argument get `swappiness=200`, then none); v1 by lowering
//!   `memory.limit_in_bytes` for a moment to the file cache + [`V1_SQUEEZE_SLACK`] with the
//!   group's `memory.swappiness` at 100, then restoring both (the limit write fails with
//!   EBUSY when the kernel cannot get that low; what it reclaimed on the way stays
//!   reclaimed);
//! - [`pageout_anon`]: `process_madvise(MADV_PAGEOUT)` over each process's private writable
//!   mappings (Linux 5.10+, on either cgroup version).
//!
//! Both only move memory when the host has swap ([`host_swap_bytes`]); without it a frozen
//! instance keeps its memory.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::common::{io_err, read_key, read_num, read_opt, write};
use super::types::{CgroupError, CgroupVersion};
use super::InstanceCgroup;

/// What the v1 squeeze leaves above the group's file cache.
pub const V1_SQUEEZE_SLACK: u64 = 2 << 20;

/// Where an instance's memory is, from its group's `memory.stat` (and v2
/// `memory.swap.current`), in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryBreakdown {
    /// Anonymous memory in RAM (v1 `total_rss`, v2 `anon`).
    pub anon: u64,
    /// Page cache charged to the group (v1 `total_cache`, v2 `file`).
    pub file: u64,
    /// Swapped out (v1 `total_swap`, v2 `memory.swap.current`); 0 without swap accounting.
    pub swap: u64,
}

impl MemoryBreakdown {
    /// Memory the instance holds in RAM.
    pub fn resident(&self) -> u64 {
        self.anon + self.file
    }
}

/// Total swap of the host (`SwapTotal` of `<proc_root>/meminfo`), 0 without swap.
pub fn host_swap_bytes(proc_root: &Path) -> Result<u64, CgroupError> {
    let p = proc_root.join("meminfo");
    let text = fs::read_to_string(&p).map_err(io_err("read", &p))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("SwapTotal:") {
            let kib = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| CgroupError::Parse {
                    path: p.clone(),
                    value: line.to_owned(),
                })?;
            return Ok(kib * 1024);
        }
    }
    Ok(0)
}

impl InstanceCgroup {
    /// The group's directory in the memory hierarchy (v1), or its directory (v2).
    fn memory_dir(&self) -> Option<PathBuf> {
        let dirs = self.dirs();
        match self.version() {
            CgroupVersion::V2 => dirs.into_iter().next(),
            CgroupVersion::V1 => dirs
                .into_iter()
                .find(|d| d.join("memory.limit_in_bytes").exists()),
        }
    }

    /// Where the group's memory is (anonymous, file cache, swap).
    pub fn memory_breakdown(&self) -> Result<MemoryBreakdown, CgroupError> {
        let Some(d) = self.memory_dir() else {
            return Err(CgroupError::NoController {
                what: "memory breakdown",
                controller: "memory",
            });
        };
        let stat = d.join("memory.stat");
        Ok(match self.version() {
            CgroupVersion::V1 => MemoryBreakdown {
                anon: read_key(&stat, "total_rss")?.unwrap_or(0),
                file: read_key(&stat, "total_cache")?.unwrap_or(0),
                swap: read_key(&stat, "total_swap")?.unwrap_or(0),
            },
            CgroupVersion::V2 => MemoryBreakdown {
                anon: read_key(&stat, "anon")?.unwrap_or(0),
                file: read_key(&stat, "file")?.unwrap_or(0),
                swap: read_num(&d.join("memory.swap.current"))?.unwrap_or(0),
            },
        })
    }

    /// Pushes the group's anonymous memory to swap and keeps its file cache (see the module
    /// doc for how, per version). Meant for a frozen group: nothing faults the pages back in
    /// meanwhile. Returns the breakdown after. A reclaim that gets less than asked is not an
    /// error (the kernel moved what it could).
    pub fn reclaim_anon(&self) -> Result<MemoryBreakdown, CgroupError> {
        let before = self.memory_breakdown()?;
        let d = self.memory_dir().expect("memory_breakdown found it");
        match self.version() {
            CgroupVersion::V2 => v2_reclaim(&d, before.anon)?,
            CgroupVersion::V1 => v1_squeeze(&d, before.file + V1_SQUEEZE_SLACK)?,
        }
        self.memory_breakdown()
    }
}

/// v2: `memory.reclaim` of `amount` anonymous bytes.
fn v2_reclaim(dir: &Path, amount: u64) -> Result<(), CgroupError> {
    if amount == 0 {
        return Ok(());
    }
    let p = dir.join("memory.reclaim");
    for arg in [" swappiness=max", " swappiness=200", ""] {
        match fs::write(&p, format!("{amount}{arg}")) {
            Ok(()) => return Ok(()),
            // Less than asked could be reclaimed: what was, was.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(()),
            // An argument this kernel does not know: try the next spelling.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !arg.is_empty() => continue,
            Err(e) => return Err(io_err("write", &p)(e)),
        }
    }
    Ok(())
}

/// v1: limit to `target` bytes for a moment with swappiness 100, then restore both.
fn v1_squeeze(dir: &Path, target: u64) -> Result<(), CgroupError> {
    let limit = dir.join("memory.limit_in_bytes");
    let swappiness = dir.join("memory.swappiness");
    let old_limit = read_opt(&limit)?.unwrap_or_else(|| "-1".into());
    let old_swappiness = read_opt(&swappiness)?;
    if old_swappiness.is_some() {
        write(&swappiness, "100")?;
    }
    // The memsw limit (with swap accounting) is left alone: it counts memory + swap, which
    // the squeeze does not change, and it stays >= the lowered limit.
    let squeezed = match fs::write(&limit, target.to_string()) {
        Ok(()) => Ok(()),
        // The kernel could not reclaim down to the target; it reclaimed what it could.
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        Err(e) => Err(io_err("write", &limit)(e)),
    };
    let restored = write(&limit, old_limit.trim());
    if let Some(s) = old_swappiness {
        write(&swappiness, s.trim())?;
    }
    squeezed.and(restored)
}

/// What [`pageout_anon`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pageout {
    /// Mappings advised.
    pub mappings: usize,
    /// Their total size (advised, not necessarily resident or paged out).
    pub bytes: u64,
}

/// Errors of [`pageout_anon`].
#[derive(Debug, thiserror::Error)]
pub enum PageoutError {
    #[error("read {path}: {source}")]
    Maps { path: PathBuf, source: io::Error },
    #[error("{op} pid {pid}: {source}")]
    Syscall {
        op: &'static str,
        pid: i32,
        source: io::Error,
    },
}

/// The private writable mappings of a `/proc/PID/maps` text (the heap, the stacks, anonymous
/// mappings and the writable data of files: what can hold anonymous pages), as (start, len).
/// Shared and read-only mappings (the runtime's text, shared memory) are left out.
pub fn private_writable_ranges(maps: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut it = line.split_whitespace();
        let (Some(range), Some(perms)) = (it.next(), it.next()) else {
            continue;
        };
        let path = line.split_whitespace().nth(5).unwrap_or("");
        if !perms.starts_with("rw") || perms.as_bytes().get(3) != Some(&b'p') {
            continue;
        }
        if matches!(path, "[vvar]" | "[vdso]" | "[vsyscall]" | "[vvar_vclock]") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
            if b > a {
                out.push((a, b - a));
            }
        }
    }
    out
}

/// `process_madvise(MADV_PAGEOUT)` over the private writable mappings of `pid` (read from
/// `<proc_root>/PID/maps`): their pages go to swap (anonymous) or are dropped (clean file
/// pages of writable private mappings). Needs `CAP_SYS_NICE` over the target.
pub fn pageout_anon(proc_root: &Path, pid: i32) -> Result<Pageout, PageoutError> {
    let path = proc_root.join(pid.to_string()).join("maps");
    let maps = fs::read_to_string(&path).map_err(|source| PageoutError::Maps {
        path: path.clone(),
        source,
    })?;
    let ranges = private_writable_ranges(&maps);
    let sys = |op: &'static str| move |source: io::Error| PageoutError::Syscall { op, pid, source };
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(sys("pidfd_open")(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let mut done = Pageout::default();
    let iovs: Vec<libc::iovec> = ranges
        .iter()
        .map(|&(a, len)| libc::iovec {
            iov_base: a as *mut libc::c_void,
            iov_len: len as usize,
        })
        .collect();
    // UIO_MAXIOV per call.
    for chunk in iovs.chunks(1024) {
        // SAFETY: the iovecs describe ranges of the target's address space (never
        // dereferenced here); the pointer and count describe `chunk`, alive for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                chunk.as_ptr(),
                chunk.len(),
                libc::MADV_PAGEOUT,
                0u32,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            // A mapping that went away meanwhile (the range is stale): skip the chunk.
            if e.raw_os_error() == Some(libc::ENOMEM) {
                continue;
            }
            return Err(sys("process_madvise")(e));
        }
        done.mappings += chunk.len();
        done.bytes += r as u64;
    }
    Ok(done)
}

/// Whether `pid` has a SIGKILL pending (`SigPnd`/`ShdPnd` of `<proc_root>/PID/status`): a
/// task frozen by the v1 freezer gets a SIGKILL only once thawed, so a frozen instance that
/// was killed shows here. `false` when the process is gone (its exit is seen elsewhere).
pub fn sigkill_pending(proc_root: &Path, pid: i32) -> bool {
    let p = proc_root.join(pid.to_string()).join("status");
    let Ok(Some(text)) = read_opt(&p) else {
        return false;
    };
    let bit = 1u64 << (libc::SIGKILL - 1);
    text.lines().any(|l| {
        let v = l
            .strip_prefix("SigPnd:")
            .or_else(|| l.strip_prefix("ShdPnd:"));
        v.and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|m| m & bit != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeTree;
    use super::super::tests::V2_HOST;
    use super::*;

    #[test]
    fn host_swap_is_read_from_meminfo() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("meminfo"),
            "MemTotal: 100 kB\nSwapTotal:       2048 kB\nSwapFree: 1 kB\n",
        )
        .unwrap();
        assert_eq!(host_swap_bytes(d.path()).unwrap(), 2 << 20);
        fs::write(d.path().join("meminfo"), "SwapTotal: 0 kB\n").unwrap();
        assert_eq!(host_swap_bytes(d.path()).unwrap(), 0);
    }

    #[test]
    fn only_private_writable_mappings_are_paged_out() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 fe:01 123 /usr/bin/node
55d0c0001000-55d0c0800000 r-xp 00001000 fe:01 123 /usr/bin/node
55d0c0900000-55d0c0901000 rw-p 00900000 fe:01 123 /usr/bin/node
55d0c1000000-55d0c2000000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
7f0000100000-7f0000200000 rw-s 00000000 00:01 9 /dev/shm/x
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
7ffc00100000-7ffc00104000 r--p 00000000 00:00 0 [vvar]
7ffc00104000-7ffc00106000 r-xp 00000000 00:00 0 [vdso]
";
        assert_eq!(
            private_writable_ranges(maps),
            vec![
                (0x55d0c0900000, 0x1000),
                (0x55d0c1000000, 0x1000000),
                (0x7f0000000000, 0x100000),
                (0x7ffc00000000, 0x21000),
            ]
        );
    }

    /// v2: the anonymous bytes are asked of `memory.reclaim`, anonymous pages only.
    #[test]
    fn v2_reclaims_the_anonymous_bytes() {
        let t = FakeTree::v2(V2_HOST);
        let root = t.root("hako");
        let cg = root.create("web-1", &Default::default()).unwrap();
        t.write(
            "hako/web-1/memory.stat",
            "anon 36700160\nfile 8388608\nkernel 1\n",
        );
        t.write("hako/web-1/memory.swap.current", "4096\n");
        t.write("hako/web-1/memory.reclaim", "");
        let b = cg.memory_breakdown().unwrap();
        assert_eq!(
            b,
            MemoryBreakdown {
                anon: 36_700_160,
                file: 8_388_608,
                swap: 4096
            }
        );
        assert_eq!(b.resident(), 45_088_768);
        cg.reclaim_anon().unwrap();
        assert_eq!(
            t.read("hako/web-1/memory.reclaim"),
            "36700160 swappiness=max"
        );
    }

    /// v1: the limit goes down to cache + slack with swappiness 100, then both are restored.
    #[test]
    fn v1_squeezes_to_the_cache_and_restores_the_limit() {
        let t = FakeTree::v1(&["cpu", "cpuacct", "memory", "pids"]);
        let root = t.root("hako");
        let cg = root.create("web-1", &Default::default()).unwrap();
        t.write(
            "memory/hako/web-1/memory.stat",
            "cache 1\nrss 2\ntotal_cache 8388608\ntotal_rss 36700160\ntotal_swap 0\n",
        );
        t.write("memory/hako/web-1/memory.limit_in_bytes", "268435456\n");
        t.write("memory/hako/web-1/memory.swappiness", "60\n");
        // A file that records every write, to see the squeeze happen.
        let log = t.join("memory/hako/web-1/memory.limit_in_bytes");
        let b = cg.memory_breakdown().unwrap();
        assert_eq!((b.anon, b.file, b.swap), (36_700_160, 8_388_608, 0));
        cg.reclaim_anon().unwrap();
        assert_eq!(fs::read_to_string(log).unwrap(), "268435456");
        assert_eq!(t.read("memory/hako/web-1/memory.swappiness"), "60");
    }

    #[test]
    fn a_pending_sigkill_is_seen_in_status() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("7")).unwrap();
        let status = |shd: &str| {
            fs::write(
                d.path().join("7/status"),
                format!("Name: x\nSigPnd: 0000000000000000\nShdPnd: {shd}\n"),
            )
            .unwrap()
        };
        status("0000000000000000");
        assert!(!sigkill_pending(d.path(), 7));
        status("0000000000000100");
        assert!(sigkill_pending(d.path(), 7));
        assert!(!sigkill_pending(d.path(), 8), "a gone process");
    }
}
