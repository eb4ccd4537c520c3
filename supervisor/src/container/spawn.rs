//! The [`Runtime`] impl of [`ContainerRuntime`]: booting one container (cgroup, zygote spawn,
//! instance record, upstream) and reaping the containers a zygote died with.
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hako_launcher::zygote::{SpawnRequest, ZygoteStatus};
use hako_launcher::LaunchError;
use hako_policies::{App, Network};
use hako_proxy::Upstream;
use tokio::io::unix::AsyncFd;

use super::boot_error::boot_error;
use super::running::Container;
use super::spec::{cgroup_limits, container_spec, spec_key};
use super::upstream::{HostUpstream, NetnsUpstream};
use super::{process_start_time, ContainerRuntime, InstanceRecord};
use crate::instances::BootErrorSource::Launcher;
use crate::instances::{BootError, BoxFuture, Running, Runtime};
use crate::metrics::Metrics;
use crate::netns::NetnsTarget;

fn record_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("instances").join(format!("{name}.json"))
}

fn free_host_port() -> io::Result<u16> {
    let l = std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
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
        let logs = self.logs.clone();
        Box::pin(async move {
            let name = format!("{}-{}", app.name, id);
            // An image-based app: its image (awaited if still pulling), its config's
            // defaults, and its overlay root: built in the container's own mount namespace
            // (ahead of the boot when warm), or with user_namespace mounted here for this
            // instance.
            let (app, image, rootfs) = match image_root(&app, &state_dir, &name).await? {
                Some((effective, image, root)) => (Arc::new(effective), Some(image), root),
                None => (app, None, None),
            };
            let port = match app.network {
                Network::Isolated | Network::Egress => app.port,
                Network::Host => free_host_port().map_err(|e| {
                    BootError::transient(Launcher, format!("no free host port: {e}"))
                })?,
            };
            let mut spec = container_spec(&app, port);
            if let Some(root) = &rootfs {
                spec.rootfs = hako_launcher::spec::RootfsSpec::Dir(root.merged().to_owned());
                spec.writable_root = !root.read_only();
            } else {
                spec.image = image;
            }
            let spec_key = spec_key(&app.name, &spec);
            // A key used once: a host port, or an instance's own overlay root (user_namespace).
            let per_instance_key = matches!(app.network, Network::Host) || rootfs.is_some();
            // stdout and stderr: a pipe each, drained from now on (what a failing boot
            // prints is kept too). The zygote opens our write ends through /proc (the
            // container gets its own copies as fds 1 and 2); ours close after the spawn.
            let (output, out_w, err_w) = crate::logs::pipe::Pipes::new()
                .and_then(|p| p.attach(&logs, &app.name, &name))
                .map_err(|e| BootError::transient(Launcher, format!("output pipes: {e}")))?;
            let fd_path = |fd: &OwnedFd| {
                PathBuf::from(format!(
                    "/proc/{}/fd/{}",
                    std::process::id(),
                    fd.as_raw_fd()
                ))
            };
            let (stdout_path, stderr_path) = (fd_path(&out_w), fd_path(&err_w));
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
                    log_path: Some(stdout_path),
                    stderr_path: Some(stderr_path),
                };
                let spawned = zygote.spawn(&req);
                drop((out_w, err_w));
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
                        Ok((s, cgroup))
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
                        Err(boot_error(&e))
                    }
                }
            })
            .await
            .map_err(|e| BootError::transient(Launcher, format!("spawn task failed: {e}")))?;
            let (spawned, cgroup) = setup?;
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
                Network::Isolated | Network::Egress => {
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
                output: Mutex::new(Some(output)),
                exit: Arc::new(Mutex::new(None)),
                oom_baseline: Arc::default(),
                _rootfs: rootfs,
            }) as Arc<dyn Running>)
        })
    }
}

/// For an image-based app: the app with its image's defaults and its overlay root, built by
/// the launcher in the container's mount namespace; with `user_namespace` (whose mount
/// namespace cannot mount it from the host's layers), mounted here for instance `name` (a pull
/// failure or a mount failure is a permanent boot error naming the reference and the reason:
/// 502).
async fn image_root(
    app: &App,
    state_dir: &Path,
    name: &str,
) -> Result<
    Option<(
        App,
        hako_launcher::spec::ImageRootSpec,
        Option<hako_launcher::overlay::OverlayRoot>,
    )>,
    BootError,
> {
    let hako_policies::Rootfs::Image(src) = &app.rootfs else {
        return Ok(None);
    };
    let fail = |reason: String| {
        BootError::permanent(Launcher, format!("image {}: {reason}", src.reference))
    };
    let images = crate::image::Images::for_state_dir(state_dir).map_err(|e| fail(e.to_string()))?;
    let img = images.get(&src.reference.to_string()).await.map_err(fail)?;
    let effective = crate::image::service::effective_app(app, src, &img).map_err(fail)?;
    let image = hako_launcher::spec::ImageRootSpec {
        layers: img.layers.clone(),
        disk: app.limits.disk,
        read_only: src.read_only,
    };
    if !app.user_namespace {
        return Ok(Some((effective, image, None)));
    }
    let base = state_dir.join("rootfs").join(name);
    let layers = img.layers.clone();
    let (disk, read_only) = (app.limits.disk, src.read_only);
    let root = tokio::task::spawn_blocking(move || {
        // A leftover of an earlier instance with the same name.
        hako_launcher::overlay::OverlayRoot::clean_stale_one(&base);
        hako_launcher::overlay::OverlayRoot::mount(&base, &layers, disk, read_only)
    })
    .await
    .map_err(|e| BootError::transient(Launcher, format!("mount task failed: {e}")))?
    .map_err(|e| fail(e.to_string()))?;
    Ok(Some((effective, image, Some(root))))
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
