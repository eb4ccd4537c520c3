//! Hibernation of a container (blocking; run on a blocking thread): freeze its cgroup, push
//! its anonymous memory to swap when the host has some, and thaw it again on a wake.
//!
//! Two reclaim methods (`hako_launcher::cgroup`'s module `reclaim` says how each works):
//! the cgroup's own (v2 `memory.reclaim`, v1 limit squeeze; the default) and
//! `process_madvise(MADV_PAGEOUT)` over each process's private writable mappings, chosen
//! with the environment variable `HAKO_RECLAIM=madvise` (read once; for measurements, see
//! `hako-bench wake` in `docs/benchmarks.md`).
use std::path::Path;
use std::sync::OnceLock;

use hako_launcher::cgroup::{host_swap_bytes, pageout_anon, sigkill_pending, InstanceCgroup};

use crate::instances::Hibernation;

/// Where the kernel's process information is.
const PROC: &str = "/proc";

/// How a hibernating instance's memory is pushed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReclaimMethod {
    /// v2 `memory.reclaim`, v1 `memory.limit_in_bytes` squeeze.
    Cgroup,
    /// `process_madvise(MADV_PAGEOUT)`.
    Madvise,
}

/// The method in use (`HAKO_RECLAIM`: `cgroup`, the default, or `madvise`).
pub fn reclaim_method() -> ReclaimMethod {
    static M: OnceLock<ReclaimMethod> = OnceLock::new();
    *M.get_or_init(|| match std::env::var("HAKO_RECLAIM").as_deref() {
        Ok("madvise") => ReclaimMethod::Madvise,
        _ => ReclaimMethod::Cgroup,
    })
}

/// Whether the host has swap right now (hibernated memory has somewhere to go).
pub fn host_has_swap() -> bool {
    host_swap_bytes(Path::new(PROC)).is_ok_and(|b| b > 0)
}

/// Memory of the group in RAM (anonymous + file cache), else its usage.
pub(super) fn resident(cg: &InstanceCgroup) -> Option<u64> {
    match cg.memory_breakdown() {
        Ok(b) => Some(b.resident()),
        Err(_) => cg.stats().ok().map(|s| s.memory_current),
    }
}

/// Freezes the group, then reclaims its anonymous memory if the host has swap. A failed
/// freeze leaves it running (error); a failed reclaim leaves it frozen with its memory.
pub(super) fn hibernate(cg: &InstanceCgroup) -> Result<Hibernation, String> {
    let resident_before = resident(cg).unwrap_or(0);
    cg.freeze().map_err(|e| e.to_string())?;
    let mut reclaimed = false;
    if host_has_swap() {
        let res = match reclaim_method() {
            ReclaimMethod::Cgroup => cg.reclaim_anon().map(drop).map_err(|e| e.to_string()),
            ReclaimMethod::Madvise => cg.pids().map_err(|e| e.to_string()).and_then(|pids| {
                pids.into_iter().try_for_each(|pid| {
                    pageout_anon(Path::new(PROC), pid)
                        .map(drop)
                        .map_err(|e| e.to_string())
                })
            }),
        };
        match res {
            Ok(()) => reclaimed = true,
            Err(e) => {
                tracing::warn!(cgroup = cg.name(), error = %e, "reclaim failed; instance frozen with its memory")
            }
        }
    }
    Ok(Hibernation {
        resident_before,
        resident_after: resident(cg).unwrap_or(resident_before),
        reclaimed,
    })
}

/// Thaws the group. `pid`: the container's init; if it was killed while frozen (the SIGKILL
/// waits for the thaw on cgroup v1), the group is thawed so it dies, and the wake fails.
pub(super) fn wake(cg: &InstanceCgroup, pid: i32) -> Result<(), String> {
    let killed = sigkill_pending(Path::new(PROC), pid);
    cg.thaw().map_err(|e| e.to_string())?;
    if killed {
        return Err(format!("pid {pid} was killed while hibernated"));
    }
    Ok(())
}
