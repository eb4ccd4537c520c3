//! hako launcher: turns a [`ContainerSpec`] into a running, isolated process.
//!
//! - [`PreparedSpec`] computes everything once per app (C strings, mount table, BPF);
//! - [`spawn_prepared`] clones a container directly (single-threaded callers, `hako run`);
//! - [`Zygote`] does the same from a single-threaded helper process, for the supervisor;
//! - [`CgroupRoot`] / [`InstanceCgroup`] manage the per-instance cgroups (v1 and v2), and
//!   [`CgroupPool`] keeps some created ahead of their boots.
pub mod cgroup;
mod child;
pub mod egress;
pub mod error;
pub mod overlay;
pub mod prepare;
mod quiet;
pub mod seccomp;
pub mod spawn;
pub mod spec;
pub mod volumes;
pub mod zygote;

pub use cgroup::pool::{CgroupPool, DEFAULT_MAX_POOLED_APPS};
pub use cgroup::{
    CgroupAttach, CgroupError, CgroupLimits, CgroupOptions, CgroupPressure, CgroupRoot,
    CgroupStats, CgroupVersion, InstanceCgroup,
};
pub use error::LaunchError;
pub use prepare::{PreparedSpec, USERNS_HOST_BASE, USERNS_SIZE};
pub use spawn::{pidfd_signal, spawn_prepared, wait_pidfd, ExitStatusInfo, Output, Spawned};
pub use spec::{
    ContainerSpec, ListenSpec, NetworkMode, RootfsSpec, VolumeSpec, DEFAULT_CAPABILITIES,
    DEFAULT_LISTEN_BACKLOG, DEFAULT_TMP_SIZE,
};
pub use zygote::{
    zygote_mode, SpawnRequest, Zygote, ZygoteMode, ZygoteOptions, ZygoteRestart, ZygoteStats,
    ZygoteStatus, DEFAULT_MAX_PREPARED_APPS,
};
