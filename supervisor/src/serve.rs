//! `hako serve`: wires the proxy, the supervisor, the governor and the admin endpoint together,
//! and owns startup recovery, reload and graceful shutdown.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hako_launcher::cgroup::CgroupRoot;
use hako_launcher::zygote::Zygote;
use hako_policies::{Config, LoadError};
use hako_proxy::{ProxyOptions, Route, Routes, RoutesHandle};
use tokio::signal::unix::{signal, SignalKind};

use crate::container::{ContainerRuntime, InstanceRecord};
use crate::instances::{Supervisor, SupervisorOptions};
use crate::metrics::Metrics;

/// The built-in demo: one app, busybox httpd on a read-only view of the host, booted on the
/// first request to http://127.0.0.1:8080/.
pub const DEMO_CONFIG: &str = r#"# hako's built-in demo configuration (`hako serve` without --config).
listen: 127.0.0.1:8080
admin: 127.0.0.1:9090
state_dir: /run/hako-demo
apps:
  - name: demo
    hosts: [localhost, 127.0.0.1, demo.localhost]
    rootfs: host
    command:
      - /bin/busybox
      - sh
      - -c
      - >-
        mkdir -p /tmp/www &&
        echo "hello from hako: this page was served by container $(hostname), booted on demand" > /tmp/www/index.html &&
        exec /bin/busybox httpd -f -p 8080 -h /tmp/www
    port: 8080
    limits: { cpu: 0.5, memory: 64Mi, pids: 64 }
    lifetime: { idle_timeout: 30s, max_lifetime: 10m }
    scaling: { max_instances: 2, concurrency: 64 }
"#;

/// Where a configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Demo,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, LoadError> {
        match self {
            ConfigSource::File(p) => hako_policies::load_file(p),
            ConfigSource::Demo => {
                hako_policies::load_str(DEMO_CONFIG, Path::new("<built-in demo>"))
            }
        }
    }
}

fn routes_of(cfg: &Config) -> Routes {
    Routes::new(
        cfg.apps
            .iter()
            .map(|a| Route {
                app: a.name.clone(),
                hosts: a.hosts.clone(),
                path_prefix: a.path_prefix.clone(),
                redirect_https: a.redirect_https,
            })
            .collect(),
    )
}

fn supervisor_options(cfg: &Config) -> SupervisorOptions {
    SupervisorOptions {
        max_live_instances: cfg.governor.max_live_instances.map(|n| n as usize),
        max_memory: cfg.governor.max_memory,
        ..SupervisorOptions::default()
    }
}

/// Removes everything a previous hako left behind after a crash or `kill -9`: the recorded
/// processes (if the pid still names the same process), and every instance cgroup (including
/// those made ahead of boots). Returns how many orphans were removed and the next free
/// instance id.
pub fn recover_orphans(state_dir: &Path, cgroups: Option<&CgroupRoot>) -> Recovered {
    let mut removed = 0;
    let mut last_id = 0;
    let dir = state_dir.join("instances");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let path = e.path();
            let rec: Option<InstanceRecord> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(rec) = rec {
                last_id = last_id.max(rec.id);
                let same = rec.start_time.is_some()
                    && crate::container::process_start_time(rec.pid) == rec.start_time;
                if same {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(rec.pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    tracing::warn!(app = %rec.app, instance = rec.id, pid = rec.pid, "killed orphaned instance of a previous hako");
                    removed += 1;
                }
            }
            let _ = std::fs::remove_file(&path);
        }
    }
    if let Some(root) = cgroups {
        match root.list() {
            Ok(names) => {
                for name in names {
                    if let Some(id) = name.rsplit_once('-').and_then(|(_, n)| n.parse().ok()) {
                        last_id = last_id.max(id);
                    }
                    if let Ok(Some(cg)) = root.open(&name) {
                        // A hibernated orphan is frozen: its processes die only once thawed.
                        let _ = cg.thaw();
                        match cg.remove() {
                            Ok(()) => {
                                tracing::warn!(cgroup = %name, "removed orphaned cgroup of a previous hako");
                                removed += 1;
                            }
                            Err(e) => {
                                tracing::error!(cgroup = %name, error = %e, "cannot remove orphaned cgroup")
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list cgroups for orphan recovery"),
        }
    }
    // state_dir/logs holds the apps' logs (kept across restarts, rotated by size).
    Recovered {
        removed,
        next_id: last_id.saturating_add(1),
    }
}

/// What [`recover_orphans`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Processes killed and cgroups removed.
    pub removed: usize,
    /// Above every instance id the previous hako used (records and cgroup names), so that new
    /// instances and their cgroups never take an old instance's name.
    pub next_id: u64,
}

/// Every proxied request holds two descriptors and every instance a few (pidfd, namespace,
/// spare sockets): lift the soft limit to the hard one, as servers do. Logged once.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(limit = hard, was = soft, "open files limit raised"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit"),
        },
        Ok((soft, _)) => {
            tracing::info!(limit = soft, "open files limit (already at the hard limit)")
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

/// Client connections the proxy holds at most, below the open-files limit: the rest stays
/// for upstream connections, instances and logs, so that at the cap the proxy still refuses
/// cleanly instead of failing `accept` with EMFILE.
fn max_client_connections() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    let reserve = (soft / 4).max(256).min(soft / 2);
    usize::try_from(soft - reserve).unwrap_or(usize::MAX)
}

/// Accept queue of the proxy's listener (the kernel caps it at `net.core.somaxconn`). std's
/// 128 overflows under a burst of new connections while a worker is busy for a few
/// milliseconds, and every overflow costs the client a one-second SYN retransmission.
const PROXY_LISTEN_BACKLOG: u32 = 4096;

fn bind_proxy_listener(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(PROXY_LISTEN_BACKLOG)
}

/// The proxy's tunables: the `client_*` keys and the connection cap. Read at start; a reload
/// does not change them.
fn proxy_options(cfg: &Config) -> ProxyOptions {
    ProxyOptions {
        header_read_timeout: cfg.clients.header_timeout,
        client_idle_timeout: cfg.clients.idle_timeout,
        max_connections_per_client: cfg.clients.max_connections_per_client as usize,
        max_connections: max_client_connections(),
        workers: proxy_workers(),
        ..ProxyOptions::default()
    }
}

/// The proxy's worker threads: `HAKO_PROXY_WORKERS` if set to a positive number, else one per
/// CPU available to the process.
fn proxy_workers() -> usize {
    std::env::var(PROXY_WORKERS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(hako_proxy::default_workers)
}

/// Environment variable that overrides the number of proxy worker threads.
const PROXY_WORKERS_ENV: &str = "HAKO_PROXY_WORKERS";

/// glibc gives every thread that allocates its own arena; with tokio's workers and blocking
/// threads that fragments memory (measured: 73 MiB RSS with 1000 idle instances, 47 MiB with
/// two arenas). Two arenas are plenty for a proxy whose hot path barely allocates.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator tunable; called from main while the process is
    // still single-threaded, before any runtime thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Runs `hako serve` to completion. Must be called from `main` while the process is still
/// single-threaded (it forks the launcher's zygote before the tokio runtime starts).
pub fn run(source: ConfigSource) -> anyhow::Result<()> {
    use anyhow::Context;
    let cfg = source.load().map_err(|e| anyhow::anyhow!("{e}"))?;
    raise_nofile_limit();
    limit_malloc_arenas();
    let zygote = Arc::new(Zygote::start().context("start the launcher zygote")?);
    // Before anything touches the cgroup parent or the state directory (orphan recovery
    // removes every cgroup in the parent). After the zygote's fork, so that it does not
    // inherit the locks and keep them after a kill -9 of this process.
    let _locks = crate::exclusive::ServeLocks::acquire(
        Path::new(crate::exclusive::LOCK_DIR),
        &cfg.cgroup_parent,
        &cfg.state_dir,
    )?;
    let node = node_name(&cfg);
    // Every log line of this node carries `node`: the span is entered on the main thread and
    // on every runtime thread for the life of the process (spawned tasks do not inherit a
    // span), so instance and request logs of a fleet can be told apart once shipped.
    let span = tracing::info_span!("hako", node = %node);
    let thread_span = span.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hako-worker")
        .on_thread_start(move || {
            // Never exited: the thread lives as long as the runtime.
            std::mem::forget(thread_span.clone().entered());
        })
        .build()
        .context("start the tokio runtime")?;
    let _entered = span.enter();
    rt.block_on(serve(source, cfg, zygote, node))
}

/// `node_name`, or the host name (`localhost` if even that is unknown).
pub fn node_name(cfg: &Config) -> String {
    cfg.node_name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned())
    })
}

async fn serve(
    source: ConfigSource,
    cfg: Config,
    zygote: Arc<Zygote>,
    node: String,
) -> anyhow::Result<()> {
    use anyhow::Context;
    // v1: groups in the freezer hierarchy too, always: hibernation freezes them, and orphan
    // recovery must be able to thaw what a previous hako froze (cost: create + remove p50
    // 291 -> 338 us, see `CgroupOptions::v1_freezer`).
    let cgroups = match CgroupRoot::detect_with(
        Path::new(hako_launcher::cgroup::SYS_FS_CGROUP),
        &cfg.cgroup_parent,
        &hako_launcher::cgroup::CgroupOptions { v1_freezer: true },
    ) {
        Ok(root) => {
            tracing::info!(version = ?root.version(), "cgroups detected");
            Some(Arc::new(root))
        }
        Err(e) => {
            tracing::warn!(error = %e, "no usable cgroup hierarchy: instances run without resource limits");
            None
        }
    };
    let recovered = recover_orphans(&cfg.state_dir, cgroups.as_deref());
    // `network: egress`: this serve's nftables table, forwarding and links, after removing
    // what a killed predecessor left; before any spec is built (specs name the links).
    let egress = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            crate::egress::EgressHost::start(&cfg, crate::egress::HostPaths::default())
        })
        .await
        .context("egress setup task")?
        .context("set up network: egress on the host")?
    };
    if cfg
        .apps
        .iter()
        .any(|a| a.lifetime.hibernate_after.is_some())
        && !crate::container::hibernate::host_has_swap()
    {
        tracing::warn!("the host has no swap: hibernated instances are frozen but keep their memory (docs/operations.md: compressed swap for hibernation)");
    }
    if recovered.removed > 0 {
        tracing::warn!(
            orphans = recovered.removed,
            "cleaned up after a previous hako"
        );
    }
    let runtime = Arc::new(
        ContainerRuntime::new(
            zygote,
            cgroups.clone(),
            cfg.state_dir.clone(),
            recovered.next_id,
        )
        .with_context(|| format!("prepare state_dir {}", cfg.state_dir.display()))?,
    );
    let metrics = Metrics::new();
    let options = supervisor_options(&cfg);
    let tick = options.tick;
    let sup = Supervisor::new(runtime.clone(), metrics, options.clone());
    sup.node().set_name(&node);
    // Unhealthy until the proxy listens.
    sup.node().set_listening(false);
    sup.apply_apps(&cfg.apps, options);
    // First boots from warm namespaces: prepared in the background, never blocking startup.
    runtime.prepare_apps(&cfg.apps);
    // Images of image-based apps: pulled in the background, never on the request path.
    let images = crate::image::Images::for_state_dir(&cfg.state_dir)
        .with_context(|| format!("open the image store in {}", cfg.state_dir.display()))?;
    {
        let m = sup.metrics().clone();
        let store = images.store().clone();
        m.set_image_store_bytes(store.bytes());
        images.set_observer(Arc::new(move |ok, secs| {
            m.image_pull(ok, secs);
            m.set_image_store_bytes(store.bytes());
        }));
    }
    images.configure(&cfg.registries, &cfg.apps);
    let routes = Arc::new(RoutesHandle::new(routes_of(&cfg)));

    let listener =
        bind_proxy_listener(cfg.listen).with_context(|| format!("listen on {}", cfg.listen))?;
    let tls = match &cfg.tls {
        None => None,
        Some(t) => {
            let handle =
                hako_proxy::TlsHandle::new(&load_certificates(t)?).context("TLS configuration")?;
            let l = bind_proxy_listener(t.listen)
                .with_context(|| format!("tls listen on {}", t.listen))?;
            Some((l, Arc::new(handle)))
        }
    };
    let tls_handle = tls.as_ref().map(|(_, h)| Arc::clone(h));
    let admin_listener = tokio::net::TcpListener::bind(cfg.admin)
        .await
        .with_context(|| format!("admin endpoint on {}", cfg.admin))?;
    sup.node().set_listening(true);
    tracing::info!(listen = %cfg.listen, admin = %cfg.admin, apps = cfg.apps.len(), "hako serving");

    // Reload: SIGHUP or POST /v1/reload, coalesced, run on a blocking thread. A broken file
    // keeps the old configuration.
    let current = Arc::new(Mutex::new(cfg.clone()));
    let reload: crate::admin::ReloadHook = {
        let sup = sup.clone();
        let routes = routes.clone();
        let current = current.clone();
        let source = source.clone();
        let runtime = runtime.clone();
        crate::reload::Reloader::new(Arc::new(move || {
            reload(
                &source,
                &sup,
                &runtime,
                &routes,
                &current,
                tls_handle.as_deref(),
            )
        }))
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = {
        let sup = sup.clone();
        let logs = Some(runtime.logs());
        let mut rx = stop_rx.clone();
        let hook = reload.clone();
        tokio::spawn(async move {
            crate::admin::serve(admin_listener, sup, Some(hook), logs, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        })
    };
    let ticker = {
        let sup = sup.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(tick);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = iv.tick() => sup.tick(),
                    _ = rx.wait_for(|s| *s) => return,
                }
            }
        })
    };
    let governor_task = {
        let sup = sup.clone();
        let rx = stop_rx.clone();
        let current = current.clone();
        tokio::spawn(crate::sampler::run(sup, current, rx))
    };

    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;
    let (first_signal_tx, first_signal_rx) = tokio::sync::oneshot::channel::<&'static str>();
    let signals = {
        let sup = sup.clone();
        let reload = reload.clone();
        tokio::spawn(async move {
            let mut first = Some(first_signal_tx);
            loop {
                let name = tokio::select! {
                    _ = sigterm.recv() => "SIGTERM",
                    _ = sigint.recv() => "SIGINT",
                    _ = sighup.recv() => {
                        tracing::info!("SIGHUP: reloading the configuration");
                        // Logged by the reloader; not awaited here, so that SIGTERM is
                        // still handled while it runs.
                        let reload = reload.clone();
                        tokio::spawn(async move { reload.reload().await });
                        continue;
                    }
                };
                match first.take() {
                    Some(tx) => {
                        tracing::info!(
                            signal = name,
                            "shutting down gracefully (send it again to force)"
                        );
                        let _ = tx.send(name);
                    }
                    None => {
                        tracing::warn!(signal = name, "forced shutdown: killing every instance");
                        sup.kill_all();
                    }
                }
            }
        })
    };

    // `hako drain`: once the node is empty (or at drain_timeout), the same graceful shutdown
    // as SIGTERM, then exit 0.
    let drain = {
        let sup = sup.clone();
        let current = current.clone();
        tokio::spawn(crate::drain::run(sup, move || {
            current
                .lock()
                .map_or(hako_policies::DEFAULT_DRAIN_TIMEOUT, |c| c.drain_timeout)
        }))
    };
    let grace = cfg
        .apps
        .iter()
        .map(|a| a.lifetime.grace)
        .max()
        .unwrap_or(Duration::from_secs(10));
    let report = hako_proxy::serve_listeners(
        hako_proxy::Listeners {
            plain: Some(listener),
            tls,
        },
        routes,
        sup.clone(),
        proxy_options(&cfg),
        async move {
            tokio::select! {
                _ = first_signal_rx => {}
                _ = drain => {}
            }
        },
        grace,
    )
    .await
    .context("proxy failed")?;
    sup.node().set_listening(false);
    tracing::info!(
        requests = report.requests,
        completed_during_drain = report.completed_during_drain,
        forced_closes = report.forced_closes,
        "proxy stopped; stopping instances"
    );
    let stop_deadline = cfg
        .apps
        .iter()
        .map(|a| a.lifetime.grace + a.lifetime.stop_timeout)
        .max()
        .unwrap_or(Duration::from_secs(15))
        + Duration::from_secs(5);
    sup.shutdown(stop_deadline).await;
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    let _ = ticker.await;
    let _ = governor_task.await;
    signals.abort();
    runtime.release_cgroups();
    egress.shutdown();
    if let Some(root) = &cgroups {
        match root.remove_parent_if_empty() {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                cgroup = root.parent(),
                "cgroup parent not empty; left in place"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot remove the cgroup parent"),
        }
    }
    tracing::info!("hako stopped; every instance and cgroup removed");
    Ok(())
}

/// Reads the PEM files of every `tls.certificates` entry.
fn load_certificates(
    tls: &hako_policies::Tls,
) -> Result<Vec<hako_proxy::TlsCertificate>, hako_proxy::TlsError> {
    tls.certificates
        .iter()
        .map(|c| hako_proxy::TlsCertificate::from_pem_files(c.hosts.clone(), &c.cert, &c.key))
        .collect()
}

fn reload(
    source: &ConfigSource,
    sup: &Arc<Supervisor>,
    runtime: &ContainerRuntime,
    routes: &RoutesHandle,
    current: &Mutex<Config>,
    tls: Option<&hako_proxy::TlsHandle>,
) -> Result<String, String> {
    let new = source.load().map_err(|e| e.to_string())?;
    // Certificates are read again at every reload (an ACME client renews them in place); a
    // file that fails keeps the whole old configuration.
    let certificates = match (&new.tls, tls) {
        (Some(t), Some(_)) => Some(load_certificates(t).map_err(|e| e.to_string())?),
        _ => None,
    };
    let mut cur = current.lock().expect("config lock");
    let mut notes = Vec::new();
    match (&new.tls, tls, &certificates) {
        (Some(t), Some(handle), Some(certs)) => {
            handle.store(certs);
            if cur.tls.as_ref().map(|c| c.listen) != Some(t.listen) {
                notes.push(format!("tls listen change to {} needs a restart", t.listen));
            }
        }
        (Some(_), None, _) => notes.push("turning tls on needs a restart".to_string()),
        (None, Some(_), _) => notes.push("turning tls off needs a restart".to_string()),
        _ => {}
    }
    if new.listen != cur.listen {
        notes.push(format!("listen change to {} needs a restart", new.listen));
    }
    if new.admin != cur.admin {
        notes.push(format!("admin change to {} needs a restart", new.admin));
    }
    if new.state_dir != cur.state_dir {
        notes.push("state_dir change needs a restart".to_string());
    }
    if new.node_name != cur.node_name {
        notes.push("node_name change needs a restart".to_string());
    }
    if new.clients != cur.clients {
        notes.push("client_* and max_connections_per_client changes need a restart".to_string());
    }
    if new.egress != cur.egress {
        notes.push("egress.subnet change needs a restart".to_string());
    }
    if let Some(egress) = crate::egress::current() {
        // Before the apps: a new egress app's specs name its links, its rules must exist.
        egress
            .apply(&new.apps)
            .map_err(|e| format!("egress: {e}"))?;
    }
    sup.apply_apps(&new.apps, supervisor_options(&new));
    runtime.prepare_apps(&new.apps);
    if let Ok(images) = crate::image::Images::for_state_dir(&cur.state_dir) {
        images.configure(&new.registries, &new.apps);
    }
    routes.store(routes_of(&new));
    let summary = format!(
        "{} apps{}{}",
        new.apps.len(),
        if notes.is_empty() { "" } else { "; " },
        notes.join("; ")
    );
    *cur = new;
    Ok(summary)
}
