//! The production [`Runtime`](crate::instances::Runtime): real containers from the launcher's zygote, one cgroup each,
//! reached inside their own network namespace (or on a per-instance host port).
//!
//! By concern:
//!
//! - this module: the [`ContainerRuntime`] (its cgroup pool, the apps prepared in the zygote
//!   and their preparation again after a zygote restart) and the instance records;
//! - [`spec`]: the launcher's spec, cache key and cgroup limits of an app;
//! - [`spawn`]: the [`Runtime`](crate::instances::Runtime) impl: booting one container, reaping what a dying zygote left;
//! - [`boot_error`]: a failed spawn's class (permanent or transient) and origin;
//! - [`running`]: a live container ([`Running`]): wait, signal, usage, limits, cleanup;
//! - [`oom`]: whether a death was an OOM kill of the instance itself;
//! - [`upstream`]: how the proxy connects to an instance.
//!
//! [`Running`]: crate::instances::Running
mod boot_error;
pub mod hibernate;
mod oom;
mod running;
mod spawn;
pub mod spec;
pub mod upstream;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use hako_launcher::cgroup::pool::{CgroupPool, DEFAULT_MAX_POOLED_APPS};
use hako_launcher::cgroup::{CgroupRoot, InstanceCgroup};
use hako_launcher::spec::ContainerSpec;
use hako_launcher::zygote::{Zygote, ZygoteRestart};
use hako_policies::{App, Network};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::netns::NetnsSockets;

pub use spec::{cgroup_limits, container_spec, spec_key};
pub use upstream::HostUpstream;

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
    /// The supervisor's metrics, once attached ([`Runtime::attach_metrics`](crate::instances::Runtime::attach_metrics)).
    metrics: Arc<OnceLock<Metrics>>,
    /// Where every instance's stdout and stderr go (journald or `state_dir/logs/APP.log`).
    logs: Arc<crate::logs::LogHub>,
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
        let logs = crate::logs::LogHub::start(crate::logs::LogOptions::new(&state_dir))?;
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
            logs,
        };
        runtime.on_zygote_restart();
        Ok(runtime)
    }

    /// The instance log sink (for the admin endpoint's `GET /v1/apps/APP/logs`).
    pub fn logs(&self) -> Arc<crate::logs::LogHub> {
        self.logs.clone()
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
        .filter(|a| matches!(a.network, Network::Isolated | Network::Egress))
        // An image-based instance has a root of its own: nothing to prepare per app.
        .filter(|a| !matches!(a.rootfs, hako_policies::Rootfs::Image(_)))
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

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot).
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}
