//! The zygote: a process forked from `main()` before any runtime thread exists, with one
//! thread serving requests and one helper thread building warm namespaces. It receives spawn
//! requests over a `SOCK_SEQPACKET` socketpair, keeps one [`PreparedSpec`](crate::PreparedSpec) per `spec_key`,
//! clones each container with `CLONE_PARENT | CLONE_PIDFD` (so the container is a child of
//! the hako process, which reaps it via the pidfd) and answers with the pid and the pidfd
//! (`SCM_RIGHTS`).
//!
//! A warm boot (prepared namespaces: the child only joins them, mounts `/proc`, drops
//! privileges and calls `execve`) is cloned the `posix_spawn` way and holds the serving thread
//! until its `execve`, a fraction of a millisecond; its outcome is then known (an error record
//! in its pipe, or none) and answered at once. A cold boot, whose child builds the whole
//! root and could block on a slow filesystem, is cloned with fork semantics and does not hold
//! it: the zygote keeps such boots in a table of pending boots and polls the request socket
//! together with every pending child's close-on-exec error pipe (EOF: exec'd; a record:
//! failed). Requests and replies carry an `id`; replies go out in completion order, and on the
//! caller's side a reader thread hands each reply (with its pidfd) to the thread waiting for
//! that id.
use std::os::fd::RawFd;

mod client;
mod conn;
mod keeper;
mod protocol;
mod server;
mod warm;

pub use client::{Zygote, ZygoteStatus};
pub use keeper::{
    RestartHook, ZygoteRestart, GIVE_UP_FAILURES, GIVE_UP_RETRY, GIVE_UP_WINDOW, RESTART_DELAY_ENV,
};
pub use protocol::{SpawnRequest, ZygoteStats};
pub use server::{zygote_mode, ZygoteMode};

/// Zygote tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZygoteOptions {
    /// Per app (`spec_key`), how many mount+network namespaces to keep built ahead of boots
    /// (root assembled and pivoted, `lo` up; each used by one container only). 0 disables:
    /// every boot then builds its namespaces itself.
    pub warm_namespaces: usize,
    /// At most this many apps have warm namespaces at any time, which bounds what an idle
    /// hako holds to `max_prepared_apps × warm_namespaces` namespace sets (each a mount
    /// namespace, a network namespace with `lo`, and for socket-activated apps a listening
    /// socket): about 200 KiB of kernel (slab) memory per set, measured on Linux 6.18, so the
    /// default 64 × 2 holds about 25 MiB at idle. [`Zygote::prepare`] only warms an
    /// app while there is room (so at start the first `max_prepared_apps` apps are warmed);
    /// a boot always makes its app the most recently used one and, when full, releases the
    /// warm namespaces of the least recently used app.
    pub max_prepared_apps: usize,
}

/// Default of [`ZygoteOptions::max_prepared_apps`].
pub const DEFAULT_MAX_PREPARED_APPS: usize = 64;

impl Default for ZygoteOptions {
    fn default() -> Self {
        ZygoteOptions {
            warm_namespaces: 2,
            max_prepared_apps: DEFAULT_MAX_PREPARED_APPS,
        }
    }
}

/// The argument that runs a re-exec'd binary as a restarted zygote: `<exe> __zygote PARENT_PID
/// WARM_NAMESPACES MAX_PREPARED_APPS`, its socket on descriptor [`ZYGOTE_FD`]. A binary that
/// starts a [`Zygote`] calls [`zygote_mode`] first thing in `main`, because a dead zygote is
/// restarted from `/proc/self/exe`.
pub const ZYGOTE_MODE_ARG: &str = "__zygote";

/// The zygote's process name (`/proc/PID/comm`).
pub const ZYGOTE_COMM: &std::ffi::CStr = c"hako-zygote";

/// The descriptor a re-exec'd zygote finds its socket on.
pub const ZYGOTE_FD: RawFd = 3;
