//! The container spec: plain data, sent to the zygote as JSON.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Capabilities a container keeps unless its spec says otherwise: the configuration's default
/// (one list for `hako serve` and `hako run`; a subset of Docker's, without `CAP_NET_RAW`,
/// `CAP_MKNOD`, `CAP_SETPCAP`, `CAP_SYS_CHROOT`).
pub use hako_policies::DEFAULT_CAPABILITIES;

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

/// A volume of the container (see [`crate::volumes`] for where its mount point comes from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeSpec {
    /// `source` (an absolute, symlink-free host directory or file) bind-mounted on `target`,
    /// `nosuid,nodev`, and `ro` when `read_only`.
    Bind {
        source: PathBuf,
        target: PathBuf,
        read_only: bool,
    },
    /// A tmpfs of `size` bytes, `nosuid,nodev`, mode 1777.
    Tmpfs { target: PathBuf, size: u64 },
}

/// Size of the container's `/tmp` unless the spec says otherwise (64Mi, the default
/// `limits.disk`).
pub const DEFAULT_TMP_SIZE: u64 = 64 << 20;

/// Largest size of the container's `/run` (it holds sockets and pid files, not data); smaller
/// when `tmp_size` is.
pub const MAX_RUN_SIZE: u64 = 16 << 20;

fn default_tmp_size() -> u64 {
    DEFAULT_TMP_SIZE
}

/// The backlog of a listening socket the launcher creates, unless the spec says otherwise.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 1024;

/// The name given to the inherited socket in `LISTEN_FDNAMES`.
pub const LISTEN_FD_NAME: &str = "http";

/// A listening TCP socket created by the launcher and inherited by the app as descriptor 3
/// (the systemd socket-activation protocol: `LISTEN_FDS=1`, `LISTEN_PID`, `LISTEN_FDNAMES`).
///
/// The socket is bound to `0.0.0.0:port` in the container's network namespace and listens
/// before the app runs, so a connection made as soon as the spawn returns is queued by the
/// kernel until the app accepts it: there is nothing to poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenSpec {
    pub port: u16,
    /// `listen(2)` backlog (the kernel caps it at `net.core.somaxconn`).
    #[serde(default = "default_backlog")]
    pub backlog: u32,
}

fn default_backlog() -> u32 {
    DEFAULT_LISTEN_BACKLOG
}

impl ListenSpec {
    /// A socket on `port` with the default backlog ([`DEFAULT_LISTEN_BACKLOG`]).
    pub fn new(port: u16) -> Self {
        ListenSpec {
            port,
            backlog: DEFAULT_LISTEN_BACKLOG,
        }
    }
}

/// An image's root, built in the container's own mount namespace (by a warm namespace holder
/// ahead of the boot, or by the child of a cold boot): a fresh tmpfs at
/// [`crate::prepare::IMAGE_ROOT_STAGING`] holding the overlay's upper and work directories,
/// and the overlay of `layers` on it. Each mount namespace gets its own tmpfs, so each
/// instance's writes are its own and vanish with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRootSpec {
    /// The unpacked layers, lowest first (absolute host paths without `,`, `:` or `\\`).
    pub layers: Vec<PathBuf>,
    /// Size in bytes of the tmpfs holding the writable layer (`limits.disk`).
    pub disk: u64,
    /// `true`: the root is read-only (the tmpfs, 1 MiB, then only holds the mount points the
    /// launcher needs: `/proc`, `/dev`, `/tmp`, `/run`, the volumes' targets).
    pub read_only: bool,
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
    /// A listening socket handed to the app as fd 3 (`LISTEN_FDS`), if any.
    #[serde(default)]
    pub listen: Option<ListenSpec>,
    /// With [`RootfsSpec::Host`]: `false` (the default) masks the host's secrets
    /// ([`crate::prepare::HOST_SECRETS`]: `/etc/shadow`, SSH host keys, ...) with an empty
    /// file; `true` shows them as they are. Meaningless with a directory rootfs.
    #[serde(default)]
    pub expose_host_secrets: bool,
    /// `true`: the container gets a user namespace of its own, its uids and gids 0-65535
    /// mapped to host ids [`crate::prepare::USERNS_HOST_BASE`] and up (the same range for
    /// every such container), so its root is an unprivileged user on the host. Its device
    /// nodes are bind mounts of the host's (no `mknod` in a user namespace), host files show
    /// as owned by `nobody` unless mapped, and it boots without warm namespaces.
    #[serde(default)]
    pub user_namespace: bool,
    /// Volumes, mounted in this order (targets never nest).
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    /// Size in bytes of the container's `/tmp` tmpfs (never unbounded); `/run` gets the same,
    /// at most [`MAX_RUN_SIZE`].
    #[serde(default = "default_tmp_size")]
    pub tmp_size: u64,
    /// With [`RootfsSpec::Dir`]: leave the root writable (an image's overlay whose writable
    /// layer is a tmpfs of `limits.disk`) instead of remounting it read-only.
    #[serde(default)]
    pub writable_root: bool,
    /// An image's overlay as the root, mounted in the container's own mount namespace;
    /// replaces `rootfs` (which is then ignored). Not with `user_namespace`.
    #[serde(default)]
    pub image: Option<ImageRootSpec>,
    /// With [`NetworkMode::Isolated`]: outbound connectivity (`network: egress`), a veth pair
    /// to the host built with the warm namespaces (see [`crate::egress`]). `None`: loopback
    /// only.
    #[serde(default)]
    pub egress: Option<crate::egress::EgressSpec>,
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
            listen: None,
            expose_host_secrets: false,
            user_namespace: false,
            volumes: Vec::new(),
            tmp_size: DEFAULT_TMP_SIZE,
            writable_root: false,
            image: None,
            egress: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_without_listen_still_parse_and_backlog_defaults() {
        let spec = ContainerSpec::new(RootfsSpec::Host, vec!["x".into()]);
        let mut json: serde_json::Value = serde_json::to_value(&spec).unwrap();
        json.as_object_mut().unwrap().remove("listen");
        json.as_object_mut().unwrap().remove("expose_host_secrets");
        json.as_object_mut().unwrap().remove("user_namespace");
        json.as_object_mut().unwrap().remove("volumes");
        json.as_object_mut().unwrap().remove("tmp_size");
        let back: ContainerSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec);
        assert_eq!(back.listen, None);
        assert!(!back.expose_host_secrets);
        assert!(!back.user_namespace);
        let l: ListenSpec = serde_json::from_str(r#"{"port": 8080}"#).unwrap();
        assert_eq!(l, ListenSpec::new(8080));
        assert_eq!(l.backlog, DEFAULT_LISTEN_BACKLOG);
    }
}
