//! Semantic validation: raw configuration → [`Config`], collecting every fault with its position.
use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Diagnostic;
use crate::index::{join, Index, Pos};
use crate::model::*;
use crate::raw::*;
use crate::units::{format_duration, format_size, RawSize};

mod extras;

/// Longest accepted app name (it becomes a cgroup and a directory name, plus a suffix).
pub const MAX_APP_NAME_LEN: usize = 64;
/// Shortest accepted governor sampling interval.
pub const MIN_GOVERNOR_INTERVAL: Duration = Duration::from_millis(10);
/// Default `spike.cpu_above`.
pub const DEFAULT_SPIKE_CPU_ABOVE: f64 = 0.9;
/// Default `spike.for`.
pub const DEFAULT_SPIKE_FOR: Duration = Duration::from_millis(300);

pub(crate) struct Ctx<'a> {
    index: &'a Index,
    file: &'a Path,
    base_dir: &'a Path,
    diags: Vec<Diagnostic>,
    /// Per app, for each accepted host, its index in the file's `hosts` list.
    host_written: Vec<Vec<usize>>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(index: &'a Index, file: &'a Path, base_dir: &'a Path) -> Self {
        Ctx {
            index,
            file,
            base_dir,
            diags: Vec::new(),
            host_written: Vec::new(),
        }
    }

    fn push(&mut self, pos: Pos, path: &str, msg: impl Display) {
        let message = if path.is_empty() {
            msg.to_string()
        } else {
            format!("{path}: {msg}")
        };
        self.diags.push(Diagnostic {
            file: self.file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            message,
        });
    }

    /// A fault in the value at `path` (located at the value, or its nearest written ancestor).
    fn fault(&mut self, path: &str, msg: impl Display) {
        let pos = self.index.value(path);
        self.push(pos, path, msg);
    }

    /// A required key `key` is missing from the mapping at `parent`.
    fn missing(&mut self, parent: &str, key: &str, msg: impl Display) {
        let pos = self.index.value(parent);
        self.push(pos, &join(parent, key), format!("missing; {msg}"));
    }

    /// A fault about the key at `path` itself (duplicates, missing companions).
    fn fault_key(&mut self, path: &str, msg: impl Display) {
        let pos = self.index.key(path);
        self.push(pos, path, msg);
    }

    fn line_of(&self, path: &str) -> usize {
        self.index.value(path).line
    }

    /// Validates everything; `Err` holds every fault, sorted by position.
    pub(crate) fn run(mut self, raw: RawConfig) -> Result<Config, Vec<Diagnostic>> {
        for dup in self.index.duplicates.clone() {
            self.push(
                dup.at,
                &dup.path,
                format!(
                    "duplicate key (first written at line {} column {})",
                    dup.first.line, dup.first.column
                ),
            );
        }
        let config = self.config(raw);
        if self.diags.is_empty() {
            Ok(config)
        } else {
            let mut diags = self.diags;
            diags.sort_by_key(|d| (d.line, d.column));
            Err(diags)
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let allow_public_admin = raw.allow_public_admin.unwrap_or(false);
        let listen = self.addr("listen", raw.listen.as_deref(), DEFAULT_LISTEN);
        let admin = self.addr("admin", raw.admin.as_deref(), DEFAULT_ADMIN);
        if !admin.ip().is_loopback() && !allow_public_admin {
            self.fault(
                "admin",
                format!(
                    "{admin} is not a loopback address; the admin API has no authentication \
                     (set `allow_public_admin: true` to expose it anyway)"
                ),
            );
        }
        if listen.port() == admin.port()
            && listen.port() != 0
            && (listen.ip() == admin.ip()
                || listen.ip().is_unspecified()
                || admin.ip().is_unspecified())
        {
            self.fault("admin", format!("{admin} overlaps with listen {listen}"));
        }
        let state_dir = match raw.state_dir.as_deref() {
            None => PathBuf::from(DEFAULT_STATE_DIR),
            Some("") => {
                self.fault("state_dir", "must not be empty");
                PathBuf::from(DEFAULT_STATE_DIR)
            }
            Some(dir) => self.resolve(dir),
        };
        let cgroup_parent = match raw.cgroup_parent {
            None => DEFAULT_CGROUP_PARENT.to_owned(),
            Some(name) => {
                if let Err(e) = check_app_name(&name) {
                    self.fault("cgroup_parent", e);
                } else if name == RUN_CGROUP_PARENT {
                    self.fault(
                        "cgroup_parent",
                        format!("{name:?} is reserved for the containers of `hako run`"),
                    );
                }
                name
            }
        };
        let governor = self.governor(raw.governor.unwrap_or_default());
        let clients = self.clients(
            raw.client_header_timeout,
            raw.client_idle_timeout,
            raw.max_connections_per_client,
        );
        let mut apps = Vec::new();
        match raw.apps {
            None => self.missing("", "apps", "at least one app is required"),
            Some(list) if list.is_empty() => {
                self.fault("apps", "no apps configured; at least one app is required")
            }
            Some(list) => {
                for (i, raw_app) in list.into_iter().enumerate() {
                    apps.push(self.app(&format!("apps[{i}]"), raw_app, &governor));
                }
            }
        }
        self.cross_app(&apps);
        let tls = self.tls(raw.tls, listen, admin);
        for (i, app) in apps.iter().enumerate() {
            if app.redirect_https && tls.is_none() {
                self.fault(
                    &format!("apps[{i}].redirect_https"),
                    "needs a top-level `tls` listener to redirect to",
                );
            }
        }
        Config {
            listen,
            admin,
            allow_public_admin,
            state_dir,
            cgroup_parent,
            apps,
            governor,
            clients,
            tls,
        }
    }

    fn clients(
        &mut self,
        header: Option<Duration>,
        idle: Option<Duration>,
        per_client: Option<i64>,
    ) -> Clients {
        let d = Clients::default();
        let positive = |ctx: &mut Self, key: &str, v: Option<Duration>, default: Duration| match v {
            Some(v) if v.is_zero() => {
                ctx.fault(key, "must be greater than zero");
                default
            }
            Some(v) => v,
            None => default,
        };
        Clients {
            header_timeout: positive(self, "client_header_timeout", header, d.header_timeout),
            idle_timeout: positive(self, "client_idle_timeout", idle, d.idle_timeout),
            max_connections_per_client: per_client
                .map(|n| self.count("max_connections_per_client", n, 1))
                .unwrap_or(d.max_connections_per_client),
        }
    }

    fn addr(&mut self, path: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let fallback: SocketAddr = default
            .parse()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        let Some(text) = value else { return fallback };
        match text.trim().parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.fault(
                    path,
                    format!("`{text}` is not an IP address with a port, like `{default}`"),
                );
                fallback
            }
        }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            // Lexically drop `.` components so messages show clean paths.
            self.base_dir
                .join(path)
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect()
        }
    }

    fn governor(&mut self, raw: RawGovernor) -> Governor {
        let d = Governor::default();
        let interval = raw.interval.unwrap_or(d.interval);
        if interval < MIN_GOVERNOR_INTERVAL {
            self.fault(
                "governor.interval",
                format!(
                    "{} is too short; the minimum is {}",
                    format_duration(interval),
                    format_duration(MIN_GOVERNOR_INTERVAL)
                ),
            );
        }
        let cpu_pressure = raw.cpu_pressure.unwrap_or(d.cpu_pressure);
        self.percentage("governor.cpu_pressure", cpu_pressure);
        let memory_pressure = raw.memory_pressure.unwrap_or(d.memory_pressure);
        self.percentage("governor.memory_pressure", memory_pressure);
        let relax_step = raw.relax_step.unwrap_or(d.relax_step);
        self.fraction("governor.relax_step", relax_step);
        let floor_cpu = raw.floor_cpu.unwrap_or(d.floor_cpu);
        self.positive_f64("governor.floor_cpu", floor_cpu);
        let floor_memory = self.size("governor.floor_memory", raw.floor_memory, d.floor_memory);
        let max_live_instances = raw
            .max_live_instances
            .map(|n| self.count("governor.max_live_instances", n, 1));
        let max_memory = raw
            .max_memory
            .map(|s| self.size("governor.max_memory", Some(s), 1));
        if let Some(max) = max_memory {
            if max > 0 && max < floor_memory {
                self.fault(
                    "governor.max_memory",
                    format!(
                        "{} is below governor.floor_memory {}",
                        format_size(max),
                        format_size(floor_memory)
                    ),
                );
            }
        }
        Governor {
            enabled: raw.enabled.unwrap_or(d.enabled),
            interval,
            cpu_pressure,
            memory_pressure,
            relax_after: raw.relax_after.unwrap_or(d.relax_after),
            relax_step,
            floor_cpu,
            floor_memory,
            max_live_instances,
            max_memory,
        }
    }

    fn percentage(&mut self, path: &str, v: f64) {
        if !(v > 0.0 && v <= 100.0) {
            self.fault(path, format!("{v} is not a percentage in (0, 100]"));
        }
    }

    fn fraction(&mut self, path: &str, v: f64) {
        if !(v > 0.0 && v <= 1.0) {
            self.fault(path, format!("{v} is not a fraction in (0, 1]"));
        }
    }

    fn positive_f64(&mut self, path: &str, v: f64) {
        if v.is_nan() || v.is_infinite() {
            self.fault(path, format!("{v} is not a finite number"));
        } else if v <= 0.0 {
            self.fault(path, format!("must be greater than zero (got {v})"));
        }
    }

    /// A size that must be > 0; returns `default` when not written.
    fn size(&mut self, path: &str, raw: Option<RawSize>, default: u64) -> u64 {
        match raw {
            None => default,
            Some(RawSize {
                negative: true,
                bytes,
            }) => {
                self.fault(
                    path,
                    format!("must be greater than zero (got -{})", format_size(bytes)),
                );
                default
            }
            Some(RawSize { bytes: 0, .. }) => {
                self.fault(path, "must be greater than zero");
                default
            }
            Some(RawSize { bytes, .. }) => bytes,
        }
    }

    /// An integer that must be ≥ `min` and fit in u32.
    fn count(&mut self, path: &str, v: i64, min: i64) -> u32 {
        if v < min {
            let what = if min == 1 {
                "must be at least 1".to_owned()
            } else {
                format!("must be at least {min}")
            };
            self.fault(path, format!("{what} (got {v})"));
            return min.max(0) as u32;
        }
        match u32::try_from(v) {
            Ok(n) => n,
            Err(_) => {
                self.fault(path, format!("{v} is too large (maximum {})", u32::MAX));
                u32::MAX
            }
        }
    }

    fn app(&mut self, at: &str, raw: RawApp, governor: &Governor) -> App {
        let p = |key: &str| join(at, key);
        let name = match raw.name {
            None => {
                self.missing(at, "name", "every app needs a name");
                String::new()
            }
            Some(name) => {
                if let Err(why) = check_app_name(&name) {
                    self.fault(&p("name"), why);
                }
                name
            }
        };

        let hosts = self.hosts(at, raw.hosts);
        let path_prefix = raw.path_prefix.map(|prefix| {
            let path = p("path_prefix");
            if !prefix.starts_with('/') {
                self.fault(&path, format!("`{prefix}` must start with `/`"));
            } else if prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '?' || c == '#')
            {
                self.fault(
                    &path,
                    format!("`{prefix}` must not contain spaces, `?` or `#`"),
                );
            }
            prefix
        });

        let rootfs = match raw.rootfs.as_deref() {
            None => {
                self.missing(at, "rootfs", "give a directory or `host`");
                None
            }
            Some("host") => Some(Rootfs::Host),
            Some("") => {
                self.fault(&p("rootfs"), "must be a directory or `host`");
                None
            }
            Some(dir) => {
                let resolved = self.resolve(dir);
                match std::fs::metadata(&resolved) {
                    // The host's own root cannot be pivoted into (pivot_root answers EBUSY:
                    // the new root would be the current one) and would expose the whole host.
                    Ok(m) if m.is_dir() && is_host_root(&resolved) => {
                        self.fault(
                            &p("rootfs"),
                            format!(
                                "`{dir}` is the host's root directory, which cannot be a \
                                 container's root; use `rootfs: host` for a read-only view of \
                                 the host's /usr, /bin, /lib and /etc"
                            ),
                        );
                        None
                    }
                    Ok(m) if m.is_dir() => Some(Rootfs::Dir(resolved)),
                    Ok(_) => {
                        self.fault(
                            &p("rootfs"),
                            format!("`{}` is not a directory", resolved.display()),
                        );
                        None
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        self.fault(
                            &p("rootfs"),
                            format!("directory `{}` does not exist", resolved.display()),
                        );
                        None
                    }
                    Err(e) => {
                        self.fault(
                            &p("rootfs"),
                            format!("cannot use `{}`: {e}", resolved.display()),
                        );
                        None
                    }
                }
            }
        };

        let command = match raw.command {
            None => {
                self.missing(
                    at,
                    "command",
                    "every app needs a command (program and arguments)",
                );
                Vec::new()
            }
            Some(cmd) if cmd.is_empty() => {
                self.fault(
                    &p("command"),
                    "must not be empty; give the program and its arguments",
                );
                cmd
            }
            Some(cmd) => {
                for (i, arg) in cmd.iter().enumerate() {
                    if arg.contains('\0') {
                        self.fault(
                            &format!("{}[{i}]", p("command")),
                            "must not contain a NUL byte",
                        );
                    }
                }
                if cmd[0].trim().is_empty() {
                    self.fault(&format!("{}[0]", p("command")), "the program name is empty");
                } else if let (Some(root), true) = (&rootfs, cmd[0].starts_with('/')) {
                    let (inside, shown) = match root {
                        Rootfs::Host => {
                            (PathBuf::from(&cmd[0]), "the host's filesystem".to_owned())
                        }
                        Rootfs::Dir(d) => (
                            d.join(cmd[0].trim_start_matches('/')),
                            format!("rootfs `{}`", d.display()),
                        ),
                    };
                    if std::fs::symlink_metadata(&inside).is_err() {
                        self.fault(
                            &format!("{}[0]", p("command")),
                            format!("`{}` does not exist in {shown}", cmd[0]),
                        );
                    }
                }
                cmd
            }
        };

        let mut env = BTreeMap::new();
        for (k, v) in raw.env.unwrap_or_default() {
            let path = format!("{}.{k}", p("env"));
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                self.fault_key(
                    &path,
                    "an environment variable name must be non-empty, without `=` or NUL",
                );
            } else if v.contains('\0') {
                self.fault(&path, "must not contain a NUL byte");
            }
            env.insert(k, v);
        }

        let workdir = match raw.workdir {
            None => PathBuf::from("/"),
            Some(w) => {
                if !w.starts_with('/') {
                    self.fault(
                        &p("workdir"),
                        format!("`{w}` must be an absolute path inside the container"),
                    );
                }
                PathBuf::from(w)
            }
        };

        let port = match raw.port {
            None => 8080,
            Some(n) => match u16::try_from(n) {
                Ok(port) if port > 0 => port,
                _ => {
                    self.fault(&p("port"), format!("{n} is out of range (1..=65535)"));
                    8080
                }
            },
        };

        let network = match raw.network {
            None | Some(RawNetwork::Isolated) => Network::Isolated,
            Some(RawNetwork::Host) => Network::Host,
        };
        let seccomp = match raw.seccomp {
            None | Some(RawSeccomp::Default) => SeccompMode::Default,
            Some(RawSeccomp::Unconfined) => SeccompMode::Unconfined,
        };

        let user = match raw.user {
            None => User::default(),
            Some(u) => User {
                uid: self.id(&p("user.uid"), u.uid),
                gid: self.id(&p("user.gid"), u.gid),
            },
        };

        let limits = self.limits(at, raw.limits.unwrap_or_default(), governor);
        let lifetime = self.lifetime(at, raw.lifetime.unwrap_or_default());
        let scaling = self.scaling(at, raw.scaling.unwrap_or_default());
        let readiness = self.readiness(at, raw.readiness.unwrap_or_default());
        let spike = raw.spike.map(|s| self.spike(at, s, &limits, governor));
        let capabilities = raw.capabilities.map(|caps| self.capabilities(at, caps));
        let expose_host_secrets = raw.expose_host_secrets.unwrap_or(false);
        if raw.expose_host_secrets.is_some() && matches!(rootfs, Some(Rootfs::Dir(_))) {
            self.fault(
                &p("expose_host_secrets"),
                "only meaningful with `rootfs: host`; a directory rootfs has no host secrets \
                 to show or hide: remove the key",
            );
        }

        let (volumes, env_file, hooks) = self.app_extras(at, raw.volumes, raw.env_file, raw.hooks);
        App {
            name,
            hosts,
            path_prefix,
            rootfs: rootfs.unwrap_or(Rootfs::Host),
            command,
            env,
            workdir,
            port,
            network,
            user,
            limits,
            lifetime,
            scaling,
            readiness,
            spike,
            capabilities,
            seccomp,
            expose_host_secrets,
            user_namespace: raw.user_namespace.unwrap_or(false),
            volumes,
            env_file,
            hooks,
            redirect_https: raw.redirect_https.unwrap_or(false),
        }
    }

    fn tls(
        &mut self,
        raw: Option<crate::tls::RawTls>,
        listen: SocketAddr,
        admin: SocketAddr,
    ) -> Option<crate::Tls> {
        let mut faults = Vec::new();
        let tls = crate::tls::validate(
            raw?,
            &[("listen", listen), ("admin", admin)],
            &|p| self.resolve(p),
            &mut |path, msg| faults.push((path, msg)),
        );
        for (path, msg) in faults {
            self.fault(&path, msg);
        }
        tls
    }

    fn hosts(&mut self, at: &str, raw: Option<Vec<String>>) -> Vec<String> {
        let path = join(at, "hosts");
        let mut written = Vec::new();
        let Some(list) = raw else {
            self.missing(at, "hosts", "list at least one hostname routed to this app");
            self.host_written.push(written);
            return Vec::new();
        };
        if list.is_empty() {
            self.fault(&path, "must list at least one hostname");
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, host) in list.into_iter().enumerate() {
            let hp = format!("{path}[{i}]");
            let lower = host.trim().to_ascii_lowercase();
            if let Err(why) = check_hostname(&lower) {
                if lower.is_empty() {
                    self.fault(&hp, "must not be empty");
                } else {
                    self.fault(&hp, format!("`{host}` {why}"));
                }
                continue;
            }
            if let Some(first) = seen.get(&lower) {
                self.fault(
                    &hp,
                    format!("`{lower}` is listed twice (also {path}[{first}])"),
                );
                continue;
            }
            seen.insert(lower.clone(), i);
            out.push(lower);
            written.push(i);
        }
        self.host_written.push(written);
        out
    }

    fn id(&mut self, path: &str, v: Option<i64>) -> u32 {
        let Some(v) = v else { return 0 };
        match u32::try_from(v) {
            Ok(n) if n != u32::MAX => n,
            _ => {
                self.fault(path, format!("{v} is not a valid id (0..=4294967294)"));
                0
            }
        }
    }

    fn limits(&mut self, at: &str, raw: RawLimits, governor: &Governor) -> Limits {
        let d = Limits::default();
        let path = join(at, "limits");
        let cpu = raw.cpu.unwrap_or(d.cpu);
        self.positive_f64(&join(&path, "cpu"), cpu);
        let burst_cpu = raw.burst_cpu.filter(|&b| {
            let p = join(&path, "burst_cpu");
            if b.is_nan() || b.is_infinite() {
                self.fault(&p, format!("{b} is not a finite number"));
            } else if b < cpu {
                self.fault(&p, format!("{b} must be at least limits.cpu {cpu}"));
            } else {
                return true;
            }
            false
        });
        let mem_path = join(&path, "memory");
        let memory = self.size(&mem_path, raw.memory, d.memory);
        if raw.memory.is_some_and(|m| !m.negative && m.bytes > 0) && memory < MIN_MEMORY {
            self.fault(
                &mem_path,
                format!(
                    "{memory} bytes is below the minimum of 1Mi (a unit is probably missing, e.g. `{memory}Mi`)"
                ),
            );
        }
        if let Some(max) = governor.max_memory {
            if memory > max {
                self.fault(
                    &mem_path,
                    format!(
                        "{} exceeds governor.max_memory {}; no instance could ever boot",
                        format_size(memory),
                        format_size(max)
                    ),
                );
            }
        }
        let pids = match raw.pids {
            None => d.pids,
            Some(n) if n > 0 => n as u64,
            Some(n) => {
                self.fault(
                    &join(&path, "pids"),
                    format!("must be greater than zero (got {n})"),
                );
                d.pids
            }
        };
        let disk = self.disk(&path, raw.disk, d.disk);
        Limits {
            cpu,
            burst_cpu,
            memory,
            pids,
            disk,
        }
    }

    fn lifetime(&mut self, at: &str, raw: RawLifetime) -> Lifetime {
        let d = Lifetime::default();
        let path = join(at, "lifetime");
        let idle_timeout = raw.idle_timeout.unwrap_or(d.idle_timeout);
        let max_lifetime = raw.max_lifetime;
        if let Some(max) = max_lifetime {
            if max.is_zero() {
                self.fault(&join(&path, "max_lifetime"), "must be greater than zero");
            } else if raw.idle_timeout.is_some() && idle_timeout > max {
                // Only an idle_timeout written out is a mistake (likely the two swapped): the
                // default one is simply moot under a shorter lifetime.
                self.fault(
                    &join(&path, "idle_timeout"),
                    format!(
                        "idle_timeout {} is longer than max_lifetime {}",
                        format_duration(idle_timeout),
                        format_duration(max)
                    ),
                );
            }
        }
        let prestart_successor = raw.prestart_successor.unwrap_or(false);
        if prestart_successor && max_lifetime.is_none() {
            self.fault(
                &join(&path, "prestart_successor"),
                "needs lifetime.max_lifetime: a successor is started when the lifetime ends",
            );
        }
        let hibernate_after = raw.hibernate_after;
        if let Some(h) = hibernate_after {
            if h.is_zero() {
                self.fault(&join(&path, "hibernate_after"), "must be greater than zero");
            } else if h >= idle_timeout {
                // The instance would be stopped before it could hibernate.
                self.fault(
                    &join(&path, "hibernate_after"),
                    format!(
                        "hibernate_after {} must be shorter than idle_timeout {}",
                        format_duration(h),
                        format_duration(idle_timeout)
                    ),
                );
            }
        }
        Lifetime {
            hibernate_after,
            idle_timeout,
            max_lifetime,
            grace: raw.grace.unwrap_or(d.grace),
            stop_timeout: raw.stop_timeout.unwrap_or(d.stop_timeout),
            prestart_successor,
        }
    }

    fn scaling(&mut self, at: &str, raw: RawScaling) -> Scaling {
        let d = Scaling::default();
        let path = join(at, "scaling");
        let max_instances = raw.max_instances.map_or(d.max_instances, |n| {
            self.count(&join(&path, "max_instances"), n, 1)
        });
        let concurrency = raw.concurrency.map_or(d.concurrency, |n| {
            self.count(&join(&path, "concurrency"), n, 1)
        });
        let queue = raw
            .queue
            .map_or(d.queue, |n| self.count(&join(&path, "queue"), n, 0));
        let queue_timeout = raw.queue_timeout.unwrap_or(d.queue_timeout);
        if queue_timeout.is_zero() && queue > 0 {
            self.fault(
                &join(&path, "queue_timeout"),
                "must be greater than zero while the queue is enabled (queue > 0)",
            );
        }
        Scaling {
            max_instances,
            concurrency,
            queue,
            queue_timeout,
        }
    }

    fn readiness(&mut self, at: &str, raw: RawReadiness) -> Readiness {
        let d = Readiness::default();
        let path = join(at, "readiness");
        let probe = match raw.probe {
            None | Some(RawProbe::Connect) => Probe::Connect,
            Some(RawProbe::ListenFds) => Probe::ListenFds,
            Some(RawProbe::Http) => {
                let p = raw.path.clone().unwrap_or_else(|| "/".to_owned());
                if !p.starts_with('/') {
                    self.fault(&join(&path, "path"), format!("`{p}` must start with `/`"));
                }
                Probe::Http { path: p }
            }
        };
        if raw.path.is_some() && !matches!(probe, Probe::Http { .. }) {
            self.fault_key(&join(&path, "path"), "is only used with `probe: http`");
        }
        let timeout = raw.timeout.unwrap_or(d.timeout);
        if timeout.is_zero() {
            self.fault(&join(&path, "timeout"), "must be greater than zero");
        }
        Readiness { probe, timeout }
    }

    fn spike(&mut self, at: &str, raw: RawSpike, limits: &Limits, governor: &Governor) -> Spike {
        let path = join(at, "spike");
        let cpu_above = raw.cpu_above.unwrap_or(DEFAULT_SPIKE_CPU_ABOVE);
        self.fraction(&join(&path, "cpu_above"), cpu_above);
        if raw.tighten_cpu.is_none() && raw.tighten_memory_high.is_none() {
            self.fault(
                &path,
                "sets neither tighten_cpu nor tighten_memory_high; nothing would be tightened",
            );
        }
        if let Some(c) = raw.tighten_cpu {
            let p = join(&path, "tighten_cpu");
            if !(c > 0.0 && c.is_finite()) {
                self.fault(&p, format!("must be greater than zero (got {c})"));
            } else if limits.cpu > 0.0 && c >= limits.cpu {
                self.fault(&p, format!("{c} must be below limits.cpu {}", limits.cpu));
            } else if c < governor.floor_cpu {
                self.fault(
                    &p,
                    format!("{c} is below governor.floor_cpu {}", governor.floor_cpu),
                );
            }
        }
        let tighten_memory_high = raw.tighten_memory_high.map(|m| {
            let p = join(&path, "tighten_memory_high");
            let bytes = self.size(&p, Some(m), 0);
            if bytes > 0 && bytes >= limits.memory {
                self.fault(
                    &p,
                    format!(
                        "{} must be below limits.memory {}",
                        format_size(bytes),
                        format_size(limits.memory)
                    ),
                );
            } else if bytes > 0 && bytes < governor.floor_memory {
                self.fault(
                    &p,
                    format!(
                        "{} is below governor.floor_memory {}",
                        format_size(bytes),
                        format_size(governor.floor_memory)
                    ),
                );
            }
            bytes
        });
        Spike {
            cpu_above,
            for_: raw.for_.unwrap_or(DEFAULT_SPIKE_FOR),
            tighten_cpu: raw.tighten_cpu,
            tighten_memory_high,
        }
    }

    fn capabilities(&mut self, at: &str, raw: Vec<String>) -> Vec<String> {
        let path = join(at, "capabilities");
        let mut out: Vec<String> = Vec::new();
        for (i, cap) in raw.iter().enumerate() {
            let cp = format!("{path}[{i}]");
            let upper = cap.trim().to_ascii_uppercase();
            let name = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            if !KNOWN_CAPABILITIES.contains(&name.as_str()) {
                self.fault(
                    &cp,
                    format!("`{cap}` is not a Linux capability (e.g. CAP_NET_BIND_SERVICE)"),
                );
            } else if out.contains(&name) {
                self.fault(&cp, format!("`{name}` is listed twice"));
            } else {
                out.push(name);
            }
        }
        out
    }

    /// Faults that involve several apps: duplicate names, a host routed to two apps.
    fn cross_app(&mut self, apps: &[App]) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut routes: HashMap<(String, String), (usize, usize)> = HashMap::new();
        for (i, app) in apps.iter().enumerate() {
            if !app.name.is_empty() {
                if let Some(&first) = names.get(app.name.as_str()) {
                    let line = self.line_of(&format!("apps[{first}].name"));
                    self.fault(
                        &format!("apps[{i}].name"),
                        format!(
                            "duplicate app name `{}` (also apps[{first}], line {line})",
                            app.name
                        ),
                    );
                } else {
                    names.insert(&app.name, i);
                }
            }
            let prefix = app
                .path_prefix
                .as_deref()
                .unwrap_or("/")
                .trim_end_matches('/')
                .to_owned();
            let written_at = self.host_written.get(i).cloned().unwrap_or_default();
            for (h, host) in app.hosts.iter().enumerate() {
                // `hosts` only holds valid entries; `written` is the index in the file.
                let written = written_at.get(h).copied().unwrap_or(h);
                let key = (host.clone(), prefix.clone());
                if let Some(&(other, other_h)) = routes.get(&key) {
                    let other_name = apps[other].name.clone();
                    let line = self.line_of(&format!("apps[{other}].hosts[{other_h}]"));
                    let route = format!(
                        "{host}{}",
                        if prefix.is_empty() {
                            String::new()
                        } else {
                            prefix.clone()
                        }
                    );
                    self.fault(
                        &format!("apps[{i}].hosts[{written}]"),
                        format!("`{route}` is already routed to app `{other_name}` (apps[{other}].hosts[{other_h}], line {line})"),
                    );
                } else {
                    routes.insert(key, (i, written));
                }
            }
        }
    }
}

/// Whether `name` is usable as a cgroup and directory name.
pub(crate) fn check_app_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > MAX_APP_NAME_LEN {
        return Err(format!(
            "`{name}` is longer than {MAX_APP_NAME_LEN} characters"
        ));
    }
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let all_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !first_ok || !all_ok {
        return Err(format!(
            "`{name}` is not usable as a cgroup or directory name; use letters, digits, `-`, `_`, `.`, starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Whether a lowercased host is a plain hostname without port.
fn check_hostname(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("is empty".to_owned());
    }
    if host.contains("://") || host.contains('/') {
        return Err("must be a bare hostname, without scheme or path".to_owned());
    }
    if let Some((_, port)) = host.rsplit_once(':') {
        if port.chars().all(|c| c.is_ascii_digit()) {
            return Err("must not include a port (hosts are matched without it)".to_owned());
        }
    }
    if host.len() > 253 {
        return Err("is longer than 253 characters".to_owned());
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err("has an empty label".to_owned());
        }
        if label.len() > 63 {
            return Err("has a label longer than 63 characters".to_owned());
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err("is not a valid hostname (letters, digits, `-` and `.`)".to_owned());
        }
    }
    Ok(())
}

/// Whether `dir` is the host's root directory (`/`, `/..`, a symlink to it...).
fn is_host_root(dir: &std::path::Path) -> bool {
    dir.canonicalize()
        .is_ok_and(|p| p.as_os_str() == std::path::Path::new("/").as_os_str())
}
