//! The validated configuration: what the rest of hako codes against.
//!
//! Every value here has passed validation: limits are positive, names are usable as cgroup and
//! directory names, hosts are lowercased, relative paths are resolved against the directory of
//! the configuration file.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default proxy address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin endpoint address (loopback only).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9090";
/// Default directory for runtime state.
pub const DEFAULT_STATE_DIR: &str = "/run/hako";
/// Default name of the cgroup under which every instance cgroup is created.
pub const DEFAULT_CGROUP_PARENT: &str = "hako";
/// Parent cgroup of `hako run` containers (and `hako bench-spawn`'s groups), reserved: a
/// `hako serve` using it as its `cgroup_parent` would remove their groups at start-up as
/// orphans, killing the running containers.
pub const RUN_CGROUP_PARENT: &str = "hako-run";
/// Default memory limit of an instance (256Mi).
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// Smallest accepted memory limit (1Mi): below it no program starts, and `memory: 256`
/// (bytes) is almost always a forgotten `Mi`.
pub const MIN_MEMORY: u64 = 1 << 20;

/// Capabilities an app keeps when its configuration has no `capabilities` key: enough to
/// run ordinary servers as root inside the container (own files, switch user, bind low ports),
/// nothing that reaches the host (no `CAP_SYS_ADMIN`, `CAP_NET_ADMIN`, `CAP_SYS_PTRACE`,
/// `CAP_MKNOD`, `CAP_NET_RAW`, ...).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_NET_BIND_SERVICE",
];

/// Every capability name Linux knows (as of 6.x), in the kernel's numbering order.
pub const KNOWN_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address of the HTTP front proxy.
    pub listen: SocketAddr,
    /// Address of the admin endpoint (`/metrics`, `/healthz`, `/v1/instances`).
    pub admin: SocketAddr,
    /// Whether `admin` may be a non-loopback address.
    pub allow_public_admin: bool,
    /// Directory for runtime state (absolute).
    pub state_dir: PathBuf,
    /// Name of the cgroup (under each hierarchy's root) that holds this hako's instance
    /// cgroups. Owned exclusively: at start-up everything below it is an orphan and removed.
    pub cgroup_parent: String,
    /// The apps, in file order.
    pub apps: Vec<App>,
    /// The spike governor.
    pub governor: Governor,
    /// Outbound networking of `network: egress` apps (`egress`).
    pub egress: crate::Egress,
    /// Defences against slow, silent and greedy clients of the proxy.
    pub clients: Clients,
    /// TLS termination (`tls`); `None`: plain HTTP only.
    pub tls: Option<crate::Tls>,
    /// How to reach image registries (`registries`).
    pub registries: Vec<crate::Registry>,
    /// This node's name in logs and `/v1/instances` (`node_name`); `None`: the host name.
    pub node_name: Option<String>,
    /// How long `hako drain` waits for the node to empty before it exits anyway.
    pub drain_timeout: Duration,
}

/// Default `drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Default `client_header_timeout`.
pub const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `client_idle_timeout`.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `max_connections_per_client`.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: u32 = 1024;

/// Top-level `client_*` keys: how the proxy treats client connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clients {
    /// Time a client has to send a complete request head (from accept for the first request,
    /// from its first byte for later HTTP/1 requests).
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections one client IP address may hold; more are closed at accept.
    pub max_connections_per_client: u32,
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            header_timeout: DEFAULT_CLIENT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_CLIENT_IDLE_TIMEOUT,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
        }
    }
}

impl Config {
    /// The app named `name`.
    pub fn app(&self, name: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.name == name)
    }
}

/// One app: how to boot it, route to it, limit it and retire it.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// Unique name; safe as a cgroup and directory name (`[A-Za-z0-9][A-Za-z0-9_.-]*`).
    pub name: String,
    /// Hostnames routed to this app, lowercased, without port.
    pub hosts: Vec<String>,
    /// Optional path prefix (starts with `/`) further restricting the route.
    pub path_prefix: Option<String>,
    /// The root filesystem.
    pub rootfs: Rootfs,
    /// Program and arguments (never empty).
    pub command: Vec<String>,
    /// Environment of the app.
    pub env: BTreeMap<String, String>,
    /// Working directory inside the container (absolute).
    pub workdir: PathBuf,
    /// Port the app listens on inside its network namespace.
    pub port: u16,
    /// Network mode.
    pub network: Network,
    /// With `network: egress`: where the app may connect (`egress_allow`); `None`: anywhere.
    /// DNS to the host's resolvers stays allowed.
    pub egress_allow: Option<Vec<crate::EgressRule>>,
    /// User the app runs as.
    pub user: User,
    /// Resource limits of each instance.
    pub limits: Limits,
    /// When instances are retired.
    pub lifetime: Lifetime,
    /// How many instances and requests.
    pub scaling: Scaling,
    /// How readiness is detected.
    pub readiness: Readiness,
    /// Optional per-app tightening policy under spikes.
    pub spike: Option<Spike>,
    /// Capabilities kept (normalized `CAP_*` names); `None` means [`DEFAULT_CAPABILITIES`].
    pub capabilities: Option<Vec<String>>,
    /// Seccomp mode.
    pub seccomp: SeccompMode,
    /// With `rootfs: host`: show the host's `/etc/shadow`, `/etc/gshadow` (and their `-`
    /// backups), SSH host private keys and `/etc/ssl/private` instead of masking them.
    pub expose_host_secrets: bool,
    /// Run in a user namespace of its own: container ids 0-65535 are host ids 100000-165535.
    pub user_namespace: bool,
    /// Host paths and tmpfs mounts inside the container, in file order.
    pub volumes: Vec<crate::Volume>,
    /// Secrets read from `env_file` (at load and at every reload); `env` wins over a name
    /// also written there.
    pub env_file: Option<crate::EnvFile>,
    /// Commands run on the host at points of an instance's life.
    pub hooks: crate::Hooks,
    /// Plain-HTTP requests are answered `308` to the same URL over https (`redirect_https`).
    pub redirect_https: bool,
}

impl App {
    /// An app with every optional setting at its default; for `hako run --rootfs DIR -- CMD`.
    pub fn with_defaults(name: impl Into<String>, rootfs: Rootfs, command: Vec<String>) -> App {
        App {
            name: name.into(),
            hosts: Vec::new(),
            path_prefix: None,
            rootfs,
            command,
            env: BTreeMap::new(),
            workdir: PathBuf::from("/"),
            port: 8080,
            network: Network::default(),
            egress_allow: None,
            user: User::default(),
            limits: Limits::default(),
            lifetime: Lifetime::default(),
            scaling: Scaling::default(),
            readiness: Readiness::default(),
            spike: None,
            capabilities: None,
            seccomp: SeccompMode::default(),
            expose_host_secrets: false,
            user_namespace: false,
            volumes: Vec::new(),
            env_file: None,
            hooks: crate::Hooks::default(),
            redirect_https: false,
        }
    }

    /// The container's environment: `env_file`'s variables, then `env` (which wins over a
    /// name written in both), sorted by name. Holds secrets: never log it.
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut all: BTreeMap<String, String> = BTreeMap::new();
        if let Some(f) = &self.env_file {
            for (k, v) in &f.vars {
                all.insert(k.clone(), v.expose().to_owned());
            }
        }
        for (k, v) in &self.env {
            all.insert(k.clone(), v.clone());
        }
        all.into_iter().collect()
    }

    /// The capabilities the app keeps: its own list or [`DEFAULT_CAPABILITIES`].
    pub fn effective_capabilities(&self) -> Vec<String> {
        match &self.capabilities {
            Some(list) => list.clone(),
            None => DEFAULT_CAPABILITIES
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
        }
    }
}

/// Root filesystem of an app.
#[derive(Debug, Clone, PartialEq)]
pub enum Rootfs {
    /// A read-only view of the host's own filesystem.
    Host,
    /// A directory (absolute; it existed when the configuration was loaded).
    Dir(PathBuf),
    /// An OCI image (`image`): its layers under an overlay per instance.
    Image(crate::ImageSource),
}

/// Network mode of an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// Own network namespace with loopback only.
    #[default]
    Isolated,
    /// The host's network; the port is assigned per instance and given as `PORT`.
    Host,
    /// Like `Isolated`, plus outbound connectivity: a veth pair to the host, an address from
    /// `egress.subnet`, masquerading, the host's resolver configuration.
    Egress,
}

/// User and group ids the app runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Resource limits of one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// CPU in cores (`0.5` = half a core), > 0.
    pub cpu: f64,
    /// CPU in cores the governor may lend the instance while the host has spare CPU and the
    /// instance hits its quota (`limits.burst_cpu`, >= `cpu`); `None`: no lending.
    pub burst_cpu: Option<f64>,
    /// Memory in bytes, > 0.
    pub memory: u64,
    /// Maximum number of tasks, > 0.
    pub pids: u64,
    /// Bytes of the container's writable space: the size of its `/tmp` tmpfs (and of the
    /// writable layer of an image rootfs).
    pub disk: u64,
}

/// Default `limits.disk` (64Mi).
pub const DEFAULT_DISK: u64 = 64 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu: 1.0,
            burst_cpu: None,
            memory: DEFAULT_MEMORY,
            pids: 256,
            disk: DEFAULT_DISK,
        }
    }
}

/// When instances are retired.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifetime {
    /// Stop an instance after this long without requests.
    pub idle_timeout: Duration,
    /// Stop an instance this long after its boot, busy or not.
    pub max_lifetime: Option<Duration>,
    /// Drain period: in-flight requests may finish before SIGTERM.
    pub grace: Duration,
    /// SIGTERM → SIGKILL delay.
    pub stop_timeout: Duration,
    /// Boot the successor before a lifetime-expired instance drains.
    pub prestart_successor: bool,
    /// Hibernate an instance idle this long (frozen, memory reclaimed into swap), shorter
    /// than `idle_timeout`; `None`: never.
    pub hibernate_after: Option<Duration>,
}

impl Default for Lifetime {
    fn default() -> Self {
        Lifetime {
            idle_timeout: Duration::from_secs(60),
            max_lifetime: None,
            grace: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            prestart_successor: false,
            hibernate_after: None,
        }
    }
}

/// Scaling of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaling {
    /// Maximum number of live instances (≥ 1).
    pub max_instances: u32,
    /// Concurrent requests per instance (≥ 1).
    pub concurrency: u32,
    /// Length of the bounded wait queue (0 = reject at once when saturated).
    pub queue: u32,
    /// How long a request may wait in the queue.
    pub queue_timeout: Duration,
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            max_instances: 1,
            concurrency: 50,
            queue: 1000,
            queue_timeout: Duration::from_secs(30),
        }
    }
}

/// Readiness probe kinds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Probe {
    /// TCP connect to the app's port.
    #[default]
    Connect,
    /// HTTP GET of `path`, ready on any non-5xx answer.
    Http {
        /// Path requested (starts with `/`).
        path: String,
    },
    /// The app inherits the listening socket (LISTEN_FDS/LISTEN_PID); nothing to poll.
    ListenFds,
}

/// How readiness is detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// The probe.
    pub probe: Probe,
    /// Boot fails if the app is not ready within this time.
    pub timeout: Duration,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            probe: Probe::Connect,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Per-app tightening policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Spike {
    /// An instance is spiking when it uses more than this fraction of its CPU limit (0 < x ≤ 1)
    pub cpu_above: f64,
    /// ... for at least this long.
    pub for_: Duration,
    /// CPU limit (cores) applied while spiking; below `limits.cpu`.
    pub tighten_cpu: Option<f64>,
    /// `memory.high` (bytes) applied while spiking; below `limits.memory`.
    pub tighten_memory_high: Option<u64>,
}

/// Seccomp mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// hako's default filter.
    #[default]
    Default,
    /// No filter.
    Unconfined,
}

/// The host-wide spike governor.
#[derive(Debug, Clone, PartialEq)]
pub struct Governor {
    /// Whether the governor runs.
    pub enabled: bool,
    /// Sampling period.
    pub interval: Duration,
    /// Share of each sampling interval (percent) during which some task waited for CPU (host
    /// PSI `some` total, or `/proc/stat` busy time without PSI) that counts as contention.
    pub cpu_pressure: f64,
    /// The same for memory (host PSI memory `some` total over the interval).
    pub memory_pressure: f64,
    /// Calm time before relaxing starts.
    pub relax_after: Duration,
    /// Fraction of the tightened amount restored per step (0 < x ≤ 1).
    pub relax_step: f64,
    /// Never tighten CPU below this many cores.
    pub floor_cpu: f64,
    /// Never tighten memory below this many bytes.
    pub floor_memory: u64,
    /// Host-wide budget of live instances.
    pub max_live_instances: Option<u32>,
    /// Host-wide memory budget in bytes (sum of instance limits).
    pub max_memory: Option<u64>,
}

impl Default for Governor {
    fn default() -> Self {
        Governor {
            enabled: true,
            interval: Duration::from_millis(100),
            cpu_pressure: 20.0,
            memory_pressure: 10.0,
            relax_after: Duration::from_secs(2),
            relax_step: 0.25,
            floor_cpu: 0.05,
            floor_memory: 32 << 20,
            max_live_instances: None,
            max_memory: None,
        }
    }
}
