//! The production [`Runtime`]: real containers from the launcher's zygote, one cgroup each,
//! reached inside their own network namespace (or on a per-instance host port).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use hako_launcher::cgroup::pool::{CgroupPool, DEFAULT_MAX_POOLED_APPS};
use hako_launcher::cgroup::{CgroupLimits, CgroupRoot, InstanceCgroup};
use hako_launcher::spec::{ContainerSpec, NetworkMode, RootfsSpec, DEFAULT_PATH};
use hako_launcher::zygote::{SpawnRequest, Zygote, ZygoteRestart, ZygoteStatus};
use hako_launcher::LaunchError;
use hako_policies::{App, Network, Rootfs};
use hako_proxy::{ConnectFuture, Upstream};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use crate::instances::BootErrorSource::{Launcher, Zygote as ZygoteSource};
use crate::instances::{BootError, BoxFuture, EffectiveLimits, ExitInfo, Running, Runtime, Usage};
use crate::metrics::Metrics;
use crate::netns::{NetnsSockets, NetnsTarget};

/// What `state_dir/instances/<name>.json` records about a live instance, so that a restart
/// after `kill -9` can find and remove what the previous process left.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub app: String,
    pub id: u64,
    pub pid: i32,
    /// Process start time (field 22 of /proc/PID/stat), to tell a reused pid apart.
    pub start_time: Option<u64>,
    pub cgroup: Option<String>,
    pub created_unix: u64,
}

/// Builds the launcher's spec for an app.
pub fn container_spec(app: &App, port: u16) -> ContainerSpec {
    let rootfs = match &app.rootfs {
        Rootfs::Host => RootfsSpec::Host,
        Rootfs::Dir(p) => RootfsSpec::Dir(p.clone()),
    };
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), DEFAULT_PATH.into());
    env.insert("HOME".into(), "/".into());
    for (k, v) in &app.env {
        env.insert(k.clone(), v.clone());
    }
    env.insert("PORT".into(), port.to_string());
    let mut spec = ContainerSpec::new(rootfs, app.command.clone());
    spec.env = env.into_iter().collect();
    spec.workdir = app.workdir.clone();
    spec.hostname = app.name.clone();
    spec.network = match app.network {
        Network::Isolated => NetworkMode::Isolated,
        Network::Host => NetworkMode::Host,
    };
    spec.uid = app.user.uid;
    spec.gid = app.user.gid;
    spec.nproc = None;
    spec.capabilities = app.effective_capabilities();
    spec.seccomp = matches!(app.seccomp, hako_policies::SeccompMode::Default);
    spec.expose_host_secrets = app.expose_host_secrets;
    spec.user_namespace = app.user_namespace;
    if matches!(app.readiness.probe, hako_policies::Probe::ListenFds) {
        // Socket activation: the listening socket exists before the app runs, so the
        // instance is ready the moment it is spawned (the kernel queues connections).
        spec.listen = Some(hako_launcher::ListenSpec::new(port));
    }
    spec
}

/// The launcher's cache key for an app's spec: the app name plus a hash of the whole spec, so a
/// changed app (or, for `network: host`, another port) never reuses a stale prepared spec.
pub fn spec_key(app_name: &str, spec: &ContainerSpec) -> String {
    format!(
        "{}:{:016x}",
        app_name,
        fnv1a(&serde_json::to_vec(spec).unwrap_or_default())
    )
}

/// Cgroup limits of an app's policy.
pub fn cgroup_limits(app: &App) -> CgroupLimits {
    CgroupLimits {
        cpu: Some(app.limits.cpu),
        memory_max: Some(app.limits.memory),
        memory_high: None,
        pids: Some(app.limits.pids),
    }
}

/// Instance cgroups kept ready per app by the [`CgroupPool`] (a burst's first two boots find
/// theirs made).
const POOLED_CGROUPS_PER_APP: usize = 2;

/// Real containers.
pub struct ContainerRuntime {
    zygote: Arc<Zygote>,
    cgroups: Option<Arc<CgroupRoot>>,
    /// Instance ids: shared with the supervisor, so that pooled cgroups can be named after the
    /// instance that will take them.
    ids: Arc<AtomicU64>,
    cgroup_pool: Option<CgroupPool>,
    /// Pooled groups claimed for an instance id whose spawn has not taken them yet.
    claimed: Arc<Mutex<HashMap<u64, InstanceCgroup>>>,
    sockets: NetnsSockets,
    state_dir: PathBuf,
    /// Spec keys the zygote holds for us (prepared or booted), to forget on reload.
    held: Arc<Mutex<HeldKeys>>,
    /// Generation of the latest [`ContainerRuntime::prepare_apps`] call.
    prepare_gen: Arc<AtomicU64>,
    /// The apps of the latest [`ContainerRuntime::prepare_apps`] call, prepared again in a
    /// restarted zygote.
    apps: Arc<Mutex<Vec<App>>>,
    /// The supervisor's metrics, once attached ([`Runtime::attach_metrics`]).
    metrics: Arc<OnceLock<Metrics>>,
}

/// What [`ContainerRuntime::prepare_apps`] left in the zygote.
#[derive(Debug, Default)]
struct HeldKeys {
    keys: HashSet<String>,
    /// Generation applied last: an older call that runs late changes nothing.
    applied: u64,
}

impl std::fmt::Debug for ContainerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerRuntime")
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl ContainerRuntime {
    /// `first_id`: the first instance id to hand out (above those of a previous hako, see
    /// `serve::recover_orphans`).
    pub fn new(
        zygote: Arc<Zygote>,
        cgroups: Option<Arc<CgroupRoot>>,
        state_dir: PathBuf,
        first_id: u64,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(state_dir.join("instances"))?;
        std::fs::create_dir_all(state_dir.join("logs"))?;
        let ids = Arc::new(AtomicU64::new(first_id.max(1)));
        let cgroup_pool = match &cgroups {
            Some(root) => Some(CgroupPool::start(
                root.clone(),
                ids.clone(),
                POOLED_CGROUPS_PER_APP,
                DEFAULT_MAX_POOLED_APPS,
            )?),
            None => None,
        };
        let runtime = ContainerRuntime {
            zygote,
            cgroups,
            ids,
            cgroup_pool,
            claimed: Arc::default(),
            sockets: NetnsSockets::start()?,
            state_dir,
            held: Arc::default(),
            prepare_gen: Arc::default(),
            apps: Arc::default(),
            metrics: Arc::default(),
        };
        runtime.on_zygote_restart();
        Ok(runtime)
    }

    /// After a zygote restart (the keeper thread logged it): count it, and prepare the apps
    /// again in the new zygote, which holds nothing (boots meanwhile rebuild what they need).
    /// The cgroup pool lives in this process and is not affected.
    fn on_zygote_restart(&self) {
        let zygote = Arc::downgrade(&self.zygote);
        let (held, gen, apps, metrics) = (
            self.held.clone(),
            self.prepare_gen.clone(),
            self.apps.clone(),
            self.metrics.clone(),
        );
        let handle = tokio::runtime::Handle::try_current().ok();
        self.zygote.on_restart(Arc::new(move |r: &ZygoteRestart| {
            if let Some(m) = metrics.get() {
                m.zygote_restarted();
            }
            let Some(zygote) = zygote.upgrade() else {
                return;
            };
            held.lock().unwrap_or_else(|p| p.into_inner()).keys.clear();
            let generation = gen.fetch_add(1, Ordering::SeqCst) + 1;
            let apps = apps.lock().unwrap_or_else(|p| p.into_inner()).clone();
            tracing::info!(
                new_pid = r.new_pid,
                apps = apps.len(),
                "preparing the apps again in the restarted zygote"
            );
            let work = prepare_work(zygote, held.clone(), generation, &apps);
            match &handle {
                Some(h) => {
                    h.spawn_blocking(work);
                }
                None => {
                    let _ = std::thread::Builder::new()
                        .name("hako-prepare".into())
                        .spawn(work);
                }
            }
        }));
    }

    /// Readies the launcher for the first boot of every isolated app in `apps` (prepared spec
    /// and warm namespaces, see [`Zygote::prepare`]; the zygote warms at most
    /// `ZygoteOptions::max_prepared_apps` apps, the first ones in `apps` order), and releases
    /// what it holds for apps no longer in `apps` or changed. `network: host` apps are skipped:
    /// their spec (port) differs for every instance. Runs on a blocking thread and returns at
    /// once; failures are logged with the app name and otherwise ignored (the app then boots
    /// cold).
    pub fn prepare_apps(&self, apps: &[App]) {
        if let Some(pool) = &self.cgroup_pool {
            let names: HashSet<&str> = apps.iter().map(|a| a.name.as_str()).collect();
            for gone in pool.ready().keys().filter(|k| !names.contains(k.as_str())) {
                pool.forget(gone);
            }
            for app in apps.iter().take(DEFAULT_MAX_POOLED_APPS) {
                pool.want(&app.name, &cgroup_limits(app));
            }
        }
        *self.apps.lock().unwrap_or_else(|p| p.into_inner()) = apps.to_vec();
        let generation = self.prepare_gen.fetch_add(1, Ordering::SeqCst) + 1;
        let work = prepare_work(self.zygote.clone(), self.held.clone(), generation, apps);
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(work);
            }
            Err(_) => work(),
        }
    }
}

/// The launcher's part of [`ContainerRuntime::prepare_apps`] (generation `generation`), to run
/// on a blocking thread: forgets what the zygote holds for apps no longer wanted, prepares the
/// others.
fn prepare_work(
    zygote: Arc<Zygote>,
    held: Arc<Mutex<HeldKeys>>,
    generation: u64,
    apps: &[App],
) -> impl FnOnce() + Send + 'static {
    let wanted: Vec<(String, String, ContainerSpec)> = apps
        .iter()
        .filter(|a| matches!(a.network, Network::Isolated))
        .map(|a| {
            let spec = container_spec(a, a.port);
            (a.name.clone(), spec_key(&a.name, &spec), spec)
        })
        .collect();
    move || {
        let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
        if held.applied > generation {
            return;
        }
        held.applied = generation;
        let keep: HashSet<&str> = wanted.iter().map(|(_, k, _)| k.as_str()).collect();
        let stale: Vec<String> = held
            .keys
            .iter()
            .filter(|k| !keep.contains(k.as_str()))
            .cloned()
            .collect();
        for key in stale {
            match zygote.forget(&key) {
                Ok(()) => {
                    tracing::debug!(spec_key = %key, "released the launcher state of a removed or changed app")
                }
                Err(e) => {
                    tracing::warn!(spec_key = %key, error = %e, "cannot release the launcher state of an app")
                }
            }
            held.keys.remove(&key);
        }
        let mut prepared = 0usize;
        for (app, key, spec) in &wanted {
            if held.keys.contains(key) {
                continue;
            }
            match zygote.prepare(spec, key) {
                Ok(()) => {
                    held.keys.insert(key.clone());
                    prepared += 1;
                }
                Err(e) => {
                    tracing::warn!(app = %app, error = %e, "cannot pre-warm the app; its first boot will be cold")
                }
            }
        }
        tracing::debug!(
            prepared,
            apps = wanted.len(),
            "apps prepared for their first boot"
        );
    }
}

impl Drop for ContainerRuntime {
    fn drop(&mut self) {
        self.release_cgroups();
    }
}

impl ContainerRuntime {
    /// Removes the cgroups made ahead of boots (pooled, or claimed by a boot that never
    /// spawned), at shutdown, before the cgroup parent is removed.
    pub fn release_cgroups(&self) {
        if let Some(pool) = &self.cgroup_pool {
            pool.shutdown();
        }
        let claimed: Vec<InstanceCgroup> = self
            .claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, cg)| cg)
            .collect();
        for cg in claimed {
            let name = cg.name().to_owned();
            if let Err(e) = cg.remove() {
                tracing::warn!(cgroup = %name, error = %e, "cannot remove a claimed cgroup");
            }
        }
    }
}

fn record_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("instances").join(format!("{name}.json"))
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot).
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn free_host_port() -> io::Result<u16> {
    let l = std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

/// The class of a failed spawn, for the crash-loop backoff and the error page: what the
/// host runs short of for a moment (EAGAIN, ENOMEM, descriptors, a busy resource, a port
/// still held by the previous instance, the zygote restarting) is transient; what the same
/// spawn would hit again (a missing or unexecutable program, a bad rootfs, an invalid spec or
/// seccomp profile) is permanent.
fn boot_error(e: &LaunchError) -> BootError {
    const TRANSIENT_ERRNOS: [i32; 7] = [
        libc::EAGAIN,
        libc::ENOMEM,
        libc::EBUSY,
        libc::EINTR,
        libc::ENFILE,
        libc::EMFILE,
        libc::EADDRINUSE,
    ];
    let reason = e.to_string();
    match e {
        LaunchError::Zygote(_)
        | LaunchError::ZygoteDied { .. }
        | LaunchError::ZygoteUnavailable(_) => BootError::transient(ZygoteSource, reason),
        LaunchError::InvalidSpec(_) | LaunchError::Seccomp(_) => {
            BootError::permanent(Launcher, reason)
        }
        _ => match e.errno() {
            Some(errno) if TRANSIENT_ERRNOS.contains(&errno) => {
                BootError::transient(Launcher, reason)
            }
            _ => BootError::permanent(Launcher, reason),
        },
    }
}

impl Runtime for ContainerRuntime {
    fn instance_ids(&self) -> Option<Arc<AtomicU64>> {
        Some(self.ids.clone())
    }

    fn cannot_boot(&self) -> Vec<String> {
        match self.zygote.status() {
            ZygoteStatus::Running { .. } => Vec::new(),
            ZygoteStatus::Restarting { pid } => {
                vec![format!(
                    "cannot boot: zygote (pid {pid}) died; restarting it"
                )]
            }
            ZygoteStatus::Failed { reason } => vec![format!("cannot boot: {reason}")],
            ZygoteStatus::Stopped => vec!["cannot boot: the launcher is stopping".to_owned()],
        }
    }

    fn attach_metrics(&self, metrics: &Metrics) {
        let _ = self.metrics.set(metrics.clone());
    }

    fn claim_id(&self, app: &App) -> Option<u64> {
        let (id, cg) = self
            .cgroup_pool
            .as_ref()?
            .claim(&app.name, &cgroup_limits(app))?;
        self.claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, cg);
        Some(id)
    }

    fn spawn(
        &self,
        app: Arc<App>,
        id: u64,
    ) -> BoxFuture<'static, Result<Arc<dyn Running>, BootError>> {
        let zygote = self.zygote.clone();
        let cgroups = self.cgroups.clone();
        let sockets = self.sockets.clone();
        let state_dir = self.state_dir.clone();
        let held = self.held.clone();
        let claimed_map = self.claimed.clone();
        Box::pin(async move {
            let name = format!("{}-{}", app.name, id);
            let port = match app.network {
                Network::Isolated => app.port,
                Network::Host => free_host_port().map_err(|e| {
                    BootError::transient(Launcher, format!("no free host port: {e}"))
                })?,
            };
            let spec = container_spec(&app, port);
            let spec_key = spec_key(&app.name, &spec);
            let per_instance_key = matches!(app.network, Network::Host);
            let log_path = state_dir.join("logs").join(format!("{name}.log"));
            let limits = cgroup_limits(&app);
            let req_name = name.clone();
            let setup = tokio::task::spawn_blocking(move || {
                // A group made ahead (named after this instance), or one made now. Taken from
                // the map only here, where every path below removes it on failure; left in
                // the map, `release_cgroups` removes it at shutdown.
                let claimed = claimed_map
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                let cgroup = match (claimed, &cgroups) {
                    (Some(cg), _) => Some(cg),
                    (None, Some(root)) => Some(
                        root.create(&req_name, &limits)
                            .map_err(|e| {
                                BootError::transient(Launcher, format!("cgroup {req_name}: {e}"))
                            })?,
                    ),
                    (None, None) => None,
                };
                let req = SpawnRequest {
                    spec,
                    spec_key,
                    cgroup: cgroup.as_ref().map(|c| c.attach()),
                    log_path: Some(log_path.clone()),
                };
                let spawned = zygote.spawn(&req);
                if per_instance_key {
                    // A key used once (its port is this instance's): nothing to keep warm.
                    if let Err(e) = zygote.forget(&req.spec_key) {
                        tracing::debug!(spec_key = %req.spec_key, error = %e, "cannot release a one-off spec");
                    }
                } else {
                    // Booted apps keep their warm namespaces; a reload that removes or changes
                    // the app releases them.
                    held.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .keys
                        .insert(req.spec_key.clone());
                }
                match spawned {
                    Ok(s) => {
                        tracing::debug!(instance = %req_name, pid = s.pid, warm = s.warm, "container spawned");
                        Ok((s, cgroup, log_path))
                    }
                    Err(e) => {
                        if let Some(c) = cgroup {
                            // The zygote died during the boot: the container may exist,
                            // a child of ours nobody else knows about. Killed with its
                            // group, then reaped here.
                            let orphans = match e {
                                LaunchError::ZygoteDied { .. } => c.pids().unwrap_or_default(),
                                _ => Vec::new(),
                            };
                            let _ = c.remove();
                            reap_orphans(&orphans);
                        }
                        let _ = std::fs::remove_file(&log_path);
                        Err(boot_error(&e))
                    }
                }
            })
            .await
            .map_err(|e| BootError::transient(Launcher, format!("spawn task failed: {e}")))?;
            let (spawned, cgroup, log_path) = setup?;
            let pid = spawned.pid;
            let record = InstanceRecord {
                app: app.name.clone(),
                id,
                pid,
                start_time: process_start_time(pid),
                cgroup: cgroup.as_ref().map(|c| c.name().to_string()),
                created_unix: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            };
            let rec_path = record_path(&state_dir, &name);
            if let Ok(bytes) = serde_json::to_vec(&record) {
                if let Err(e) = std::fs::write(&rec_path, bytes) {
                    tracing::warn!(path = %rec_path.display(), error = %e, "cannot write instance record");
                }
            }
            let upstream: Arc<dyn Upstream> = match app.network {
                Network::Isolated => {
                    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
                        .map_err(|e| format!("open /proc/{pid}/ns/net: {e}"));
                    match ns {
                        Ok(f) => Arc::new(NetnsUpstream {
                            id,
                            target: NetnsTarget::new(OwnedFd::from(f)),
                            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                            sockets,
                        }),
                        Err(e) => {
                            // The process died already; the exit watcher will report how.
                            tracing::debug!(error = %e, "instance gone before its namespace was opened");
                            Arc::new(HostUpstream {
                                id,
                                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                            })
                        }
                    }
                }
                Network::Host => Arc::new(HostUpstream {
                    id,
                    addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                }),
            };
            // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and
            // `as_raw_fd` returns the same number for the AsyncFd's whole lifetime.
            let pidfd = unsafe {
                AsyncFd::register_with_interest(spawned.pidfd, tokio::io::Interest::READABLE)
            }
            .map_err(|e| BootError::transient(Launcher, format!("register pidfd of {pid}: {e}")))?;
            Ok(Arc::new(Container {
                pid,
                pidfd: Arc::new(pidfd),
                cgroup: Mutex::new(cgroup.map(Arc::new)),
                upstream,
                record: rec_path,
                log_path,
                exit: Arc::new(Mutex::new(None)),
                oom_baseline: Arc::default(),
            }) as Arc<dyn Running>)
        })
    }
}

/// Reaps those of `pids` that are our children (a boot's container whose zygote died before
/// handing it over), once they have exited (up to 2 s each); others are ignored (`ECHILD`).
fn reap_orphans(pids: &[i32]) {
    for &pid in pids {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            match nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG | nix::sys::wait::WaitPidFlag::__WALL),
            ) {
                Ok(nix::sys::wait::WaitStatus::StillAlive)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                    tracing::warn!(pid, "orphaned container did not exit; not reaped");
                    break;
                }
                Ok(_) => {
                    tracing::info!(pid, "reaped a container whose zygote died during its boot");
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// FNV-1a: a stable cache key for a spec (not security relevant).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

struct Container {
    pid: i32,
    pidfd: Arc<AsyncFd<OwnedFd>>,
    cgroup: Mutex<Option<Arc<InstanceCgroup>>>,
    upstream: Arc<dyn Upstream>,
    record: PathBuf,
    log_path: PathBuf,
    exit: Arc<Mutex<Option<ExitInfo>>>,
    /// The cgroup's OOM-kill count from before the instance's death.
    oom_baseline: Arc<Mutex<OomBaseline>>,
}

/// How long an instance must be seen alive after a reading of its cgroup's OOM-kill counter
/// before that reading counts as "before its death": an OOM-killed process may still be
/// exiting when the counter has already risen.
const OOM_CONFIRM: Duration = Duration::from_millis(200);

/// The cgroup's OOM-kill counter as it was earlier in the instance's life, so that its death
/// is reported as an OOM kill only when the counter rose since: an earlier OOM kill of another
/// process inside the instance must not turn a later SIGKILL from the host into `oom`.
/// Readings come from the sampler ([`Running::usage`]); one counts once the instance was still
/// alive [`OOM_CONFIRM`] after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct OomBaseline {
    /// OOM kills known to predate the instance's death.
    confirmed: u64,
    /// The oldest unconfirmed reading and when it was taken (the process was alive then).
    pending: Option<(u64, tokio::time::Instant)>,
}

impl OomBaseline {
    /// A reading of the counter at `now`, taken while the instance was alive.
    fn sample(&mut self, count: u64, now: tokio::time::Instant) {
        self.confirm(now);
        if self.pending.is_none() {
            self.pending = Some((count, now));
        }
    }

    /// Promotes the pending reading once the instance was alive [`OOM_CONFIRM`] after it.
    fn confirm(&mut self, alive_at: tokio::time::Instant) {
        if let Some((count, at)) = self.pending {
            if alive_at.saturating_duration_since(at) >= OOM_CONFIRM {
                self.confirmed = self.confirmed.max(count);
                self.pending = None;
            }
        }
    }

    /// Whether a death by `signal` with the counter at `count` now was an OOM kill: the
    /// kernel's OOM killer sends SIGKILL, and counts it.
    fn killed_by_oom(&self, count: u64, signal: Option<i32>) -> bool {
        signal == Some(libc::SIGKILL) && count > self.confirmed
    }
}

impl Container {
    fn cgroup(&self) -> Option<Arc<InstanceCgroup>> {
        self.cgroup.lock().expect("cgroup lock").clone()
    }
}

/// The `SigCgt` mask (signals with a handler) of a `/proc/PID/status` text.
fn caught_signals(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Last `max` bytes of a file, lossily decoded, for crash reports.
fn tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_string()
}

impl Running for Container {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn upstream(&self) -> Arc<dyn Upstream> {
        self.upstream.clone()
    }

    fn wait(&self) -> BoxFuture<'static, ExitInfo> {
        let pidfd = self.pidfd.clone();
        let cgroup = self.cgroup();
        let pid = self.pid;
        let exit_slot = self.exit.clone();
        let baseline = self.oom_baseline.clone();
        Box::pin(async move {
            let status = loop {
                match pidfd.readable().await {
                    Ok(mut guard) => {
                        match hako_launcher::wait_pidfd(pidfd.get_ref().as_fd(), true) {
                            Ok(Some(st)) => break Some(st),
                            Ok(None) => guard.clear_ready(),
                            Err(e) => {
                                tracing::error!(pid, error = %e, "waitid on pidfd failed");
                                break None;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(pid, error = %e, "polling pidfd failed");
                        break None;
                    }
                }
            };
            let oom_kills = cgroup
                .as_ref()
                .and_then(|c| c.stats().ok())
                .map_or(0, |s| s.oom_kills);
            let signal = status.and_then(|st| st.signal());
            let oom = baseline
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .killed_by_oom(oom_kills, signal);
            let info = match status {
                Some(st) => ExitInfo {
                    code: st.code(),
                    signal: st.signal(),
                    oom,
                },
                None => ExitInfo {
                    code: None,
                    signal: None,
                    oom,
                },
            };
            *exit_slot.lock().expect("exit lock") = Some(info);
            info
        })
    }

    fn signal(&self, signal: i32) {
        if let Err(e) = hako_launcher::pidfd_signal(self.pidfd.get_ref().as_raw_fd(), signal) {
            tracing::debug!(pid = self.pid, signal, error = %e, "signal not delivered");
        }
    }

    fn handles_signal(&self, signal: i32) -> Option<bool> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        caught_signals(&status).map(|mask| signal > 0 && mask & (1u64 << (signal - 1)) != 0)
    }

    fn cleanup(&self) -> BoxFuture<'static, ()> {
        let cgroup = self.cgroup.lock().expect("cgroup lock").take();
        let record = self.record.clone();
        let log = self.log_path.clone();
        let exit = *self.exit.lock().expect("exit lock");
        let pid = self.pid;
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(mut c) = cgroup {
                    // A sampler reading may hold a clone of the handle for a moment.
                    let mut tries = 0;
                    loop {
                        match Arc::try_unwrap(c) {
                            Ok(c) => {
                                let name = c.name().to_string();
                                if let Err(e) = c.remove() {
                                    tracing::error!(cgroup = %name, error = %e, "cannot remove cgroup");
                                }
                                break;
                            }
                            Err(shared) if tries < 500 => {
                                tries += 1;
                                c = shared;
                                std::thread::sleep(std::time::Duration::from_millis(2));
                            }
                            Err(shared) => {
                                tracing::error!(cgroup = shared.name(), "cgroup still in use after 1 s; not removed");
                                break;
                            }
                        }
                    }
                }
                let abnormal = exit.is_none_or(|e| e.code != Some(0));
                if abnormal {
                    let t = tail(&log, 2048);
                    if !t.is_empty() {
                        tracing::info!(pid, log_tail = %t, "last output of the instance");
                    }
                }
                let _ = std::fs::remove_file(&log);
                let _ = std::fs::remove_file(&record);
            })
            .await;
        })
    }

    fn usage(&self) -> Option<Usage> {
        let s = self.cgroup()?.stats().ok()?;
        // Alive after the reading (its pidfd is not readable yet): a baseline candidate.
        let mut pfd = [nix::poll::PollFd::new(
            self.pidfd.get_ref().as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let alive = matches!(
            nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO),
            Ok(0)
        );
        if alive {
            self.oom_baseline
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sample(s.oom_kills, tokio::time::Instant::now());
        }
        Some(Usage {
            cpu_usage_usec: s.cpu_usage_usec,
            memory_current: s.memory_current,
        })
    }

    fn limits(&self) -> Option<EffectiveLimits> {
        let l = self.cgroup()?.limits().ok()?;
        Some(EffectiveLimits {
            cpu: l.cpu,
            memory_max: l.memory_max,
            memory_high: l.memory_high,
            pids: l.pids,
        })
    }

    fn set_soft_limits(&self, cpu: f64, memory_high: Option<u64>) -> Result<(), String> {
        let cg = self.cgroup().ok_or("instance has no cgroup")?;
        let mut l = cg.limits().map_err(|e| e.to_string())?;
        l.cpu = Some(cpu);
        l.memory_high = memory_high;
        cg.set_limits(&l).map_err(|e| e.to_string())
    }
}

/// Connects with short per-attempt timeouts. Small apps listen with tiny backlogs (busybox
/// httpd: 9); when a burst overflows the accept queue the kernel drops the SYN and a plain
/// connect waits for the retransmission a full second later. A fresh SYN after 20, 40, 80 ms
/// ... gets in as soon as the app has accepted, so a burst costs milliseconds, not seconds.
async fn connect_retrying<F, Fut>(mut attempt: F) -> io::Result<tokio::net::TcpStream>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<tokio::net::TcpStream>>,
{
    let mut timeout = std::time::Duration::from_millis(20);
    for _ in 0..8 {
        match tokio::time::timeout(timeout, attempt()).await {
            Ok(result) => return result,
            Err(_) => timeout = (timeout * 2).min(std::time::Duration::from_millis(500)),
        }
    }
    // Last try without a short timeout: the kernel's own retransmissions apply.
    attempt().await
}

/// An app inside its own network namespace.
struct NetnsUpstream {
    id: u64,
    target: Arc<NetnsTarget>,
    addr: SocketAddr,
    sockets: NetnsSockets,
}

impl Upstream for NetnsUpstream {
    fn id(&self) -> u64 {
        self.id
    }

    fn connect(&self) -> ConnectFuture {
        let sockets = self.sockets.clone();
        let target = self.target.clone();
        let addr = self.addr;
        Box::pin(connect_retrying(move || {
            let sockets = sockets.clone();
            let target = target.clone();
            async move { sockets.connect(&target, addr).await }
        }))
    }
}

/// An app on the host network (or, in tests, any TCP address).
pub struct HostUpstream {
    pub id: u64,
    pub addr: SocketAddr,
}

impl Upstream for HostUpstream {
    fn id(&self) -> u64 {
        self.id
    }

    fn connect(&self) -> ConnectFuture {
        let addr = self.addr;
        Box::pin(connect_retrying(move || async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(s)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_sigkill_after_an_earlier_oom_kill_inside_is_not_oom() {
        let t0 = tokio::time::Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut b = OomBaseline::default();
        // Nothing sampled: a SIGKILL with an OOM kill counted is one.
        assert!(b.killed_by_oom(1, Some(libc::SIGKILL)));
        assert!(!b.killed_by_oom(0, Some(libc::SIGKILL)));
        // A worker inside was OOM-killed (count 1), the instance lived on (sampled again
        // later), then the host SIGKILLed it: crashed, not oom. The old rule (count > 0)
        // said oom.
        b.sample(1, ms(0));
        b.sample(1, ms(100));
        assert!(
            b.killed_by_oom(1, Some(libc::SIGKILL)),
            "not yet confirmed alive long enough after the reading"
        );
        b.sample(1, ms(250));
        assert_eq!(b.confirmed, 1);
        assert!(!b.killed_by_oom(1, Some(libc::SIGKILL)));
        // The instance itself OOM-killed later: the count rose since.
        assert!(b.killed_by_oom(2, Some(libc::SIGKILL)));
        // Only SIGKILL deaths are OOM kills.
        assert!(!b.killed_by_oom(2, None));
        assert!(!b.killed_by_oom(2, Some(libc::SIGSEGV)));
    }

    #[test]
    fn an_oom_kill_counted_just_before_the_death_is_not_taken_as_earlier() {
        // The sampler read the counter after the OOM kill but before the process had exited:
        // that reading is never confirmed (the process is not seen alive 200 ms later).
        let t0 = tokio::time::Instant::now();
        let mut b = OomBaseline::default();
        b.sample(0, t0);
        b.sample(0, t0 + Duration::from_millis(300));
        b.sample(1, t0 + Duration::from_millis(310));
        assert_eq!(b.confirmed, 0);
        assert!(b.killed_by_oom(1, Some(libc::SIGKILL)));
    }

    #[test]
    fn caught_signal_mask_is_read_from_proc_status() {
        let status = "Name:\tsh\nSigIgn:\t0000000000000004\nSigCgt:\t0000000000014002\n";
        let mask = caught_signals(status).expect("mask");
        let has = |sig: i32| mask & (1u64 << (sig - 1)) != 0;
        assert!(has(libc::SIGINT));
        assert!(has(libc::SIGTERM));
        assert!(has(libc::SIGCHLD));
        assert!(!has(libc::SIGHUP));
        assert_eq!(caught_signals("Name:\tx\n"), None);
        // Our own process: the test harness has no SIGTERM handler, tokio none here either.
        let own = std::fs::read_to_string("/proc/self/status").expect("status");
        let own = caught_signals(&own).expect("our own mask");
        assert_eq!(own & (1u64 << (libc::SIGTERM - 1)), 0, "{own:#x}");
    }

    #[test]
    fn launch_errors_are_classed_permanent_or_transient() {
        use crate::instances::{BootErrorClass::*, BootErrorSource};
        let exec = |errno| LaunchError::Exec {
            path: "/bin/app".into(),
            errno,
        };
        let setup = |errno| LaunchError::Setup {
            step: "pivot_root".into(),
            path: "/srv/rootfs".into(),
            errno,
        };
        let cases = [
            (exec(libc::ENOENT), Permanent, BootErrorSource::Launcher),
            (exec(libc::EACCES), Permanent, BootErrorSource::Launcher),
            (exec(libc::EAGAIN), Transient, BootErrorSource::Launcher),
            (exec(libc::ENOMEM), Transient, BootErrorSource::Launcher),
            (setup(libc::ENOENT), Permanent, BootErrorSource::Launcher),
            (setup(libc::ENOTDIR), Permanent, BootErrorSource::Launcher),
            (
                LaunchError::InvalidSpec("empty command".into()),
                Permanent,
                BootErrorSource::Launcher,
            ),
            (
                LaunchError::ZygoteDied { pid: 7 },
                Transient,
                BootErrorSource::Zygote,
            ),
            (
                LaunchError::Zygote("zygote exited".into()),
                Transient,
                BootErrorSource::Zygote,
            ),
        ];
        for (e, class, origin) in cases {
            let b = boot_error(&e);
            assert_eq!((b.class, b.origin), (class, origin), "{e}");
            assert_eq!(b.reason, e.to_string());
        }
    }
}
