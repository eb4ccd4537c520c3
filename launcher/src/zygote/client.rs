//! The [`Zygote`] handle the supervisor calls.
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::conn::{lock, CallError, Conn, Delivery};
use super::keeper::{
    keeper, pidfd_open, zygote_socketpair, ConnState, RestartHook, Shared, RESTART_DELAY_ENV,
};
use super::protocol::{Reply, Request, SpawnRequest, Tagged, ZygoteStats, MAX_MESSAGE};
use super::server::zygote_main;
use super::ZygoteOptions;
use crate::error::LaunchError;
use crate::spawn::{wait_pidfd, Spawned};
use crate::spec::ContainerSpec;

/// Whether a zygote is there to serve boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZygoteStatus {
    /// Serving, as this pid.
    Running { pid: i32 },
    /// The zygote died (this pid) and a new one is being started.
    Restarting { pid: i32 },
    /// No zygote could be started: failed [`GIVE_UP_FAILURES`](super::GIVE_UP_FAILURES) times within
    /// [`GIVE_UP_WINDOW`](super::GIVE_UP_WINDOW) (still retried every [`GIVE_UP_RETRY`](super::GIVE_UP_RETRY)); the last error.
    Failed { reason: String },
    /// The handle is being dropped.
    Stopped,
}

/// Handle on the zygote. `Send + Sync`; calls are blocking, and calls from several threads are
/// served concurrently (a boot's setup does not hold up the others).
///
/// A keeper thread watches the zygote: when it dies (killed, crashed), the keeper reaps it and
/// starts a new one by re-executing `/proc/self/exe` in zygote mode ([`ZYGOTE_MODE_ARG`](super::ZYGOTE_MODE_ARG)),
/// from the keeper thread itself, which lives as long as the handle (the zygote's
/// `PR_SET_PDEATHSIG` follows the thread that started it). Calls that were in flight on the
/// dead zygote fail with [`LaunchError::ZygoteDied`]; calls made during the restart wait for
/// the new zygote. The new zygote holds no prepared specs nor warm namespaces: boots rebuild
/// them lazily, and [`Zygote::on_restart`] hooks can prepare apps again.
pub struct Zygote {
    shared: Arc<Shared>,
    keeper: Option<JoinHandle<()>>,
    /// Written to stop the keeper.
    stop: Option<OwnedFd>,
}

impl std::fmt::Debug for Zygote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zygote")
            .field("status", &self.status())
            .field("restarts", &self.restarts())
            .finish_non_exhaustive()
    }
}

impl Zygote {
    /// Forks the single-threaded zygote. MUST be called while the process is single-threaded
    /// (from `main()`, before tokio), and from the thread that lives as long as the process
    /// (the first zygote dies with that thread through `PR_SET_PDEATHSIG`). Also starts the
    /// thread that receives the zygote's replies and the keeper thread that restarts it (see
    /// [`Zygote`]): the binary must call [`zygote_mode`](super::zygote_mode) first thing in `main`.
    pub fn start() -> Result<Zygote, LaunchError> {
        Self::start_with(ZygoteOptions::default())
    }

    /// [`Zygote::start`] with options.
    pub fn start_with(options: ZygoteOptions) -> Result<Zygote, LaunchError> {
        let (ours, theirs) = zygote_socketpair()?;
        let parent = std::process::id() as i32;
        // SAFETY: fork in a process the caller guarantees to be single-threaded (and even with
        // other threads, glibc's fork keeps malloc usable in the child).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(LaunchError::sys(
                "fork",
                "zygote",
                nix::errno::Errno::last(),
            ));
        }
        if pid == 0 {
            drop(ours);
            zygote_main(theirs, parent, options);
        }
        drop(theirs);
        tracing::debug!(pid, "zygote started");
        let conn = pidfd_open(pid).and_then(|pidfd| Conn::new(pid, pidfd, ours));
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                // SAFETY: kill and waitpid on the pid of our own unreaped child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                return Err(e);
            }
        };
        let delay = std::env::var(RESTART_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(Duration::ZERO, Duration::from_millis);
        let shared = Arc::new(Shared {
            state: Mutex::new(ConnState::Up(Arc::new(conn))),
            changed: std::sync::Condvar::new(),
            next_id: AtomicU64::new(1),
            restarts: AtomicU64::new(0),
            hooks: Mutex::new(Vec::new()),
        });
        let mut zygote = Zygote {
            shared: shared.clone(),
            keeper: None,
            stop: None,
        };
        let (stop_r, stop_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| LaunchError::sys("pipe2", "zygote keeper", e))?;
        zygote.stop = Some(stop_w);
        let keeper = std::thread::Builder::new()
            .name("hako-zygote-keeper".into())
            .spawn(move || keeper(shared, stop_r, options, delay))
            .map_err(|e| LaunchError::Zygote(format!("start the keeper thread: {e}")))?;
        zygote.keeper = Some(keeper);
        Ok(zygote)
    }

    /// The zygote's pid (the dead one's while a restart is under way; 0 if none).
    pub fn pid(&self) -> i32 {
        match &*lock(&self.shared.state) {
            ConnState::Up(c) => c.pid,
            ConnState::Restarting { pid } => *pid,
            _ => 0,
        }
    }

    /// Whether a zygote serves boots now.
    pub fn status(&self) -> ZygoteStatus {
        match &*lock(&self.shared.state) {
            ConnState::Up(c) if c.exited() => ZygoteStatus::Restarting { pid: c.pid },
            ConnState::Up(c) => ZygoteStatus::Running { pid: c.pid },
            ConnState::Restarting { pid } => ZygoteStatus::Restarting { pid: *pid },
            ConnState::Failed { reason } => ZygoteStatus::Failed {
                reason: reason.clone(),
            },
            ConnState::Stopped => ZygoteStatus::Stopped,
        }
    }

    /// How many times the zygote was restarted.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::SeqCst)
    }

    /// Adds a hook run (on the keeper thread) after every restart.
    pub fn on_restart(&self, hook: RestartHook) {
        lock(&self.shared.hooks).push(hook);
    }

    /// Spawns one container; blocking until it exec'd or failed. On a setup or exec failure
    /// the child has already been reaped when the error is returned.
    pub fn spawn(&self, req: &SpawnRequest) -> Result<Spawned, LaunchError> {
        match self.call(&Request::Spawn(req.clone()))? {
            (Reply::Ok { pid, warm }, Some(pidfd)) => Ok(Spawned { pid, pidfd, warm }),
            (Reply::Ok { pid, .. }, None) => {
                Err(LaunchError::Zygote(format!("no pidfd for pid {pid}")))
            }
            (Reply::Failed { error, .. }, fd) => {
                if let Some(fd) = fd {
                    let _ = wait_pidfd(fd.as_fd(), false);
                }
                Err(error)
            }
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// Readies an app before its first boot; blocking, but returns as soon as the spec is
    /// prepared: its [`PreparedSpec`](crate::PreparedSpec) is built and cached under `spec_key` (the cache
    /// [`Zygote::spawn`] uses), and the helper thread builds its warm namespaces in the
    /// background (subject to [`ZygoteOptions::max_prepared_apps`]). An invalid spec is an
    /// error and changes nothing.
    pub fn prepare(&self, spec: &ContainerSpec, spec_key: &str) -> Result<(), LaunchError> {
        self.call_done(&Request::Prepare {
            spec: spec.clone(),
            spec_key: spec_key.to_owned(),
        })
    }

    /// Drops what the zygote holds for `spec_key` (prepared spec, warm namespaces); for apps
    /// removed or changed. The namespaces are released by the helper thread shortly after the
    /// call returns. Forgetting an unknown key is not an error. Running containers are not
    /// affected.
    pub fn forget(&self, spec_key: &str) -> Result<(), LaunchError> {
        self.call_done(&Request::Forget {
            spec_key: spec_key.to_owned(),
        })
    }

    /// What the zygote holds right now.
    pub fn stats(&self) -> Result<ZygoteStats, LaunchError> {
        match self.call(&Request::Stats)? {
            (Reply::Stats(s), _) => Ok(s),
            (Reply::Failed { error, .. }, _) => Err(error),
            (other, _) => Err(unexpected(&other)),
        }
    }

    fn call_done(&self, req: &Request) -> Result<(), LaunchError> {
        match self.call(req)? {
            (Reply::Done, _) => Ok(()),
            (Reply::Failed { error, .. }, _) => Err(error),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// One request, one reply (with at most one descriptor), which the reader thread hands
    /// over when it arrives. A request that could not reach a dead zygote goes to its
    /// successor; one that reached it fails with [`LaunchError::ZygoteDied`].
    fn call(&self, req: &Request) -> Result<Delivery, LaunchError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::to_vec(&Tagged { id, msg: req })
            .map_err(|e| LaunchError::Zygote(format!("encode request: {e}")))?;
        if body.len() > MAX_MESSAGE {
            return Err(LaunchError::InvalidSpec(format!(
                "request of {} bytes is too large",
                body.len()
            )));
        }
        let mut not = None;
        loop {
            let conn = self.shared.conn(not)?;
            match conn.call(id, &body, None) {
                Ok(d) => return Ok(d),
                Err(CallError::NotSent) => not = Some(conn.pid),
                Err(CallError::Died) => return Err(LaunchError::ZygoteDied { pid: conn.pid }),
                Err(CallError::Other(e)) => return Err(e),
            }
        }
    }
}

fn unexpected(reply: &Reply) -> LaunchError {
    LaunchError::Zygote(format!("unexpected reply {reply:?}"))
}

impl Drop for Zygote {
    /// Stops the keeper, closes the socket (the zygote exits on EOF), reaps the zygote and
    /// stops the reader thread.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = nix::unistd::write(&stop, b"x");
            // The last handle may be dropped by a restart hook's work on the keeper itself.
            if let Some(k) = self
                .keeper
                .take()
                .filter(|k| k.thread().id() != std::thread::current().id())
            {
                let _ = k.join();
            }
        }
        let state = std::mem::replace(&mut *lock(&self.shared.state), ConnState::Stopped);
        self.shared.changed.notify_all();
        if let ConnState::Up(conn) = state {
            let _ =
                nix::sys::socket::shutdown(conn.sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
            let _ = wait_pidfd(conn.pidfd.as_fd(), false);
            conn.close();
        }
    }
}
