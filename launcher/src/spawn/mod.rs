//! `clone3` of a container from a [`PreparedSpec`], and reaping through the pidfd.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use crate::cgroup::CgroupAttach;
use crate::error::LaunchError;
use crate::prepare::PreparedSpec;

mod clone;
mod outcome;
mod start;
mod warm;

pub(crate) use outcome::Started;
pub(crate) use start::{start_container, Launch};
pub(crate) use warm::{create_warm, WarmNs};

const P_PIDFD: libc::idtype_t = 3;

/// A started container: its pid (in the caller's pid namespace) and a pidfd for it.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// The container joined namespaces built ahead of time (the zygote's warm pool) instead of
    /// creating its own.
    pub warm: bool,
}

/// Where the container's stdout and stderr go (stdin is always `/dev/null`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// `/dev/null`.
    Null,
    /// Appended to this file (created 0640 if missing).
    Append(PathBuf),
    /// stdout to the first path, stderr to the second, each opened for writing as it is
    /// (e.g. `/proc/PID/fd/N` of a pipe the supervisor reads).
    Split { stdout: PathBuf, stderr: PathBuf },
    /// The caller's own stdout and stderr (`hako run`).
    Inherit,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatusInfo {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatusInfo {
    /// The exit code, if the process exited.
    pub fn code(&self) -> Option<i32> {
        match *self {
            ExitStatusInfo::Exited(c) => Some(c),
            ExitStatusInfo::Signaled(_) => None,
        }
    }

    /// The signal that killed the process, if any.
    pub fn signal(&self) -> Option<i32> {
        match *self {
            ExitStatusInfo::Exited(_) => None,
            ExitStatusInfo::Signaled(s) => Some(s),
        }
    }

    /// Shell convention: the exit code, or 128+signal.
    pub fn shell_code(&self) -> i32 {
        match *self {
            ExitStatusInfo::Exited(c) => c,
            ExitStatusInfo::Signaled(s) => 128 + s,
        }
    }
}

/// Sends `signal` to the process behind `pidfd` (`pidfd_send_signal(2)`: no pid reuse race).
pub fn pidfd_signal(pidfd: impl AsRawFd, signal: i32) -> Result<(), LaunchError> {
    let fd = pidfd.as_raw_fd();
    // SAFETY: pidfd_send_signal with a descriptor number, a signal number and a NULL siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if r != 0 {
        return Err(LaunchError::sys(
            "pidfd_send_signal",
            format!("pidfd {fd} signal {signal}"),
            nix::errno::Errno::last(),
        ));
    }
    Ok(())
}

/// Reaps (or with `nohang`, polls) the child behind `pidfd`. The caller must be its parent.
/// `Ok(None)` only with `nohang` when it is still running.
pub fn wait_pidfd(
    pidfd: BorrowedFd<'_>,
    nohang: bool,
) -> Result<Option<ExitStatusInfo>, LaunchError> {
    loop {
        // SAFETY: siginfo_t is plain data; all-zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | if nohang { libc::WNOHANG } else { 0 };
        // SAFETY: waitid with a valid pidfd and a live siginfo_t out-pointer.
        let r = unsafe { libc::waitid(P_PIDFD, pidfd.as_raw_fd() as libc::id_t, &mut info, flags) };
        if r != 0 {
            let e = nix::errno::Errno::last();
            if e == nix::errno::Errno::EINTR {
                continue;
            }
            return Err(LaunchError::sys(
                "waitid",
                format!("pidfd {}", pidfd.as_raw_fd()),
                e,
            ));
        }
        // SAFETY: waitid filled `info` for a child state change (or left si_pid 0 with WNOHANG).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        return Ok(Some(match info.si_code {
            libc::CLD_EXITED => ExitStatusInfo::Exited(status),
            _ => ExitStatusInfo::Signaled(status),
        }));
    }
}

fn open_fd(path: &Path, flags: OFlag, mode: Mode) -> Result<OwnedFd, LaunchError> {
    let fd = open(path, flags | OFlag::O_CLOEXEC, mode)
        .map_err(|e| LaunchError::sys("open", path, e))?;
    // SAFETY: `open` returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Prepares nothing, spawns directly from the calling process (no zygote): for `hako run`
/// and single-threaded callers. The container is the caller's child, and gets SIGKILL when
/// the calling *thread* exits (`PR_SET_PDEATHSIG`): spawn from a thread that outlives the
/// container (the one that waits for it), not from a short-lived worker.
pub fn spawn_prepared(
    p: &PreparedSpec,
    cgroup: Option<&CgroupAttach>,
    output: &Output,
) -> Result<Spawned, LaunchError> {
    let mut s = start_container(p, cgroup, output, Launch::Direct)?;
    let outcome = match s.outcome_now(p, cgroup) {
        Some(o) => o,
        None => s.pipe.wait(p, cgroup, s.pid),
    };
    match outcome {
        None => Ok(Spawned {
            pid: s.pid,
            pidfd: s.pidfd,
            warm: false,
        }),
        Some(e) => {
            let _ = wait_pidfd(s.pidfd.as_fd(), false);
            Err(e)
        }
    }
}
