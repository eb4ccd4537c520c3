//! The container spec: plain data, sent to the zygote as JSON.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Capabilities a container keeps unless its spec says otherwise (a subset of Docker's default;
/// no `CAP_NET_RAW`, no `CAP_MKNOD`).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
];

/// The `PATH` used when the spec's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What becomes the container's `/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootfsSpec {
    /// A read-only view of the host's `/usr`, `/bin`, `/sbin`, `/lib*` and `/etc`.
    Host,
    /// A directory, bind-mounted read-only.
    Dir(PathBuf),
}

/// The container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// Own network namespace with only `lo`, brought up.
    Isolated,
    /// The host's network namespace.
    Host,
}

/// Everything needed to start one container process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub rootfs: RootfsSpec,
    /// `command[0]` is a path, or a name looked up in the container's `PATH`.
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    pub hostname: String,
    pub network: NetworkMode,
    pub uid: u32,
    pub gid: u32,
    /// `RLIMIT_NOFILE` (soft and hard).
    pub nofile: u64,
    /// `RLIMIT_NPROC` (soft and hard), if any.
    pub nproc: Option<u64>,
    /// Capability names like `CAP_NET_BIND_SERVICE`; everything else is dropped from every set.
    pub capabilities: Vec<String>,
    /// `true`: the default seccomp profile is loaded.
    pub seccomp: bool,
}

impl ContainerSpec {
    /// A spec with every isolation on and the defaults: isolated network, uid 0, default
    /// capabilities, seccomp, `PATH` and `HOME=/`, workdir `/`, hostname `hako`.
    pub fn new(rootfs: RootfsSpec, command: Vec<String>) -> Self {
        Self {
            rootfs,
            command,
            env: vec![
                ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
                ("HOME".to_owned(), "/".to_owned()),
            ],
            workdir: PathBuf::from("/"),
            hostname: "hako".to_owned(),
            network: NetworkMode::Isolated,
            uid: 0,
            gid: 0,
            nofile: 1024,
            nproc: None,
            capabilities: DEFAULT_CAPABILITIES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            seccomp: true,
        }
    }
}
