//! What the parent and the child exchange: the descriptors it gets ([`ChildFds`]) and the
//! records it reports back ([`ChildError`], its [`stage`]s, the holder's readiness). Plain
//! data, read in the child without allocation.
use std::ffi::c_int;

/// Steps reported back to the parent in [`ChildError::stage`].
pub(crate) mod stage {
    pub const CGROUP: u32 = 1;
    pub const UNSHARE_CGROUP: u32 = 2;
    pub const STDIO: u32 = 3;
    pub const MOUNT: u32 = 4;
    pub const PIVOT: u32 = 5;
    pub const HOSTNAME: u32 = 6;
    pub const LOOPBACK: u32 = 7;
    pub const RLIMIT: u32 = 8;
    pub const WORKDIR: u32 = 9;
    pub const IDS: u32 = 10;
    pub const CAPS: u32 = 11;
    pub const NO_NEW_PRIVS: u32 = 12;
    pub const SECCOMP: u32 = 13;
    pub const EXEC: u32 = 14;
    pub const INTERPRETER: u32 = 15;
    pub const SIGNALS: u32 = 16;
    pub const WARM_NS: u32 = 17;
    /// `index` is a [`super::listen_step`] value.
    pub const LISTEN: u32 = 18;
    /// The parent could not set up the user namespace; `index`: 0 `uid_map`, 1 `gid_map`,
    /// 2 `prlimit`, 3 the release read.
    pub const USERNS: u32 = 19;
}

/// Steps of creating and installing the listening socket (the `index` of a
/// [`stage::LISTEN`] error).
pub(crate) mod listen_step {
    pub const SOCKET: u32 = 0;
    pub const REUSEADDR: u32 = 1;
    pub const BIND: u32 = 2;
    pub const LISTEN: u32 = 3;
    pub const DUP2: u32 = 4;
    pub const MOVE_PIPE: u32 = 5;
    pub const CLEAR_CLOEXEC: u32 = 6;

    /// Human name of a step, for [`crate::LaunchError::Listen`].
    pub fn name(step: u32) -> &'static str {
        match step {
            SOCKET => "socket",
            REUSEADDR => "setsockopt SO_REUSEADDR",
            BIND => "bind",
            LISTEN => "listen",
            DUP2 => "dup2 to fd 3",
            MOVE_PIPE => "move error pipe off fd 3",
            CLEAR_CLOEXEC => "clear FD_CLOEXEC on fd 3",
            _ => "listening socket",
        }
    }
}

/// The descriptor number the app finds its listening socket on (`SD_LISTEN_FDS_START`).
pub(crate) const LISTEN_FD: c_int = 3;

/// The record the child writes on failure: native-endian `stage, index, errno`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChildError {
    pub stage: u32,
    pub index: u32,
    pub errno: i32,
}

impl ChildError {
    pub const SIZE: usize = 12;
    pub fn decode(b: &[u8; Self::SIZE]) -> Self {
        Self {
            stage: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            index: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            errno: i32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
}

/// Maximum number of v1 `cgroup.procs` files (one per hierarchy).
pub(crate) const MAX_PROCS_FDS: usize = 8;

/// Per-boot file descriptors, opened by the parent before `clone3`.
#[derive(Clone, Copy)]
pub(crate) struct ChildFds {
    pub stdin: c_int,
    pub stdout: c_int,
    pub stderr: c_int,
    pub err_pipe: c_int,
    pub procs: [c_int; MAX_PROCS_FDS],
    pub nprocs: usize,
    /// Warm namespaces (prepared by a holder, see `run_holder`), or -1 for a cold boot.
    pub netns: c_int,
    pub mntns: c_int,
    /// Warm UTS (hostname already set) and IPC namespaces, or -1 (joined only with `mntns`).
    pub utsns: c_int,
    pub ipcns: c_int,
    /// The listening socket to install as fd 3 (from a warm namespace or, for host networking,
    /// created by the parent), or -1: then the child creates it if the spec asks for one.
    pub listen: c_int,
    /// Pid of the process cloning us (holders check it after setting their death signal).
    pub parent: libc::pid_t,
    /// SIGKILL when the cloning thread dies (`PR_SET_PDEATHSIG`): a foreground container
    /// (`hako run`) must not outlive a `hako run` killed with SIGKILL.
    pub die_with_parent: bool,
    /// With `die_with_parent`: a pidfd of the cloning process (readable once it has exited),
    /// to catch a parent that died before the death signal was set; else -1.
    pub parent_pidfd: c_int,
    /// With a user namespace: the read end of the release pipe (the parent writes the id maps,
    /// then a [`USERNS_RELEASE_SIZE`] record), and the write end, which the child closes so
    /// that a dead parent reads as EOF; else -1.
    pub userns_sync: c_int,
    pub userns_sync_w: c_int,
}

/// The parent's release record for a user-namespaced child: native-endian `index, errno`
/// (a [`stage::USERNS`] failure), all zero when the id maps are written.
pub(crate) const USERNS_RELEASE_SIZE: usize = 8;

/// Size of a holder's readiness record: `R` and a native-endian `c_int` (the listening socket).
pub(crate) const HOLDER_READY_SIZE: usize = 5;
