//! The zygote: a process forked from `main()` before any runtime thread exists, with one
//! thread serving requests and one helper thread building warm namespaces. It receives spawn
//! requests over a `SOCK_SEQPACKET` socketpair, keeps one [`PreparedSpec`] per `spec_key`,
//! clones each container with `CLONE_PARENT | CLONE_PIDFD` (so the container is a child of
//! the hako process, which reaps it via the pidfd) and answers with the pid and the pidfd
//! (`SCM_RIGHTS`).
//!
//! A warm boot (prepared namespaces: the child only joins them, mounts `/proc`, drops
//! privileges and calls `execve`) is cloned the `posix_spawn` way and holds the serving thread
//! until its `execve`, a fraction of a millisecond; its outcome is then known (an error record
//! in its pipe, or none) and answered at once. A cold boot, whose child builds the whole
//! root and could block on a slow filesystem, is cloned with fork semantics and does not hold
//! it: the zygote keeps such boots in a table of pending boots and polls the request socket
//! together with every pending child's close-on-exec error pipe (EOF: exec'd; a record:
//! failed). Requests and replies carry an `id`; replies go out in completion order, and on the
//! caller's side a reader thread hands each reply (with its pidfd) to the thread waiting for
//! that id.
use std::collections::{BTreeMap, HashMap};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupAttach;
use crate::error::LaunchError;
use crate::prepare::PreparedSpec;
use crate::quiet::{lower_builder_priority, QuietGate};
use crate::spawn::{
    create_warm, start_container, wait_pidfd, Launch, Output, Spawned, Started, WarmNs,
};
use crate::spec::ContainerSpec;

/// Largest request or reply (one datagram).
const MAX_MESSAGE: usize = 1 << 20;

/// One spawn request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnRequest {
    pub spec: ContainerSpec,
    /// Cache key: an identical key reuses the prepared strings, mount table and BPF.
    pub spec_key: String,
    /// Where to place the process before its first instruction ([`crate::InstanceCgroup::attach`]).
    pub cgroup: Option<CgroupAttach>,
    /// stdout and stderr appended here; `None` means `/dev/null`.
    pub log_path: Option<PathBuf>,
}

impl SpawnRequest {
    pub fn output(&self) -> Output {
        self.log_path.clone().map_or(Output::Null, Output::Append)
    }
}

/// One message to the zygote (one datagram, JSON).
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Boot a container.
    Spawn(SpawnRequest),
    /// Build and cache the app's [`PreparedSpec`] and have its warm namespaces built in the
    /// background.
    Prepare {
        spec: ContainerSpec,
        spec_key: String,
    },
    /// Drop the app's prepared spec and release its warm namespaces.
    Forget { spec_key: String },
    /// Report [`ZygoteStats`].
    Stats,
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Ok {
        pid: i32,
        /// The container joined warm namespaces.
        #[serde(default)]
        warm: bool,
    },
    /// A request without a result (prepare, forget) was accepted.
    Done,
    Stats(ZygoteStats),
    /// `pid` is set when a child exists (and is attached as a pidfd) and must be reaped.
    Failed {
        pid: Option<i32>,
        error: LaunchError,
    },
}

/// What the zygote holds right now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZygoteStats {
    /// Apps (`spec_key`s) whose [`PreparedSpec`] is cached.
    pub prepared_specs: usize,
    /// Warm namespace sets ready, over all apps (each: a mount and, for an isolated network, a
    /// network namespace, plus the listening socket if the app is socket-activated).
    pub warm_namespaces: usize,
    /// Warm namespace sets ready per app (`spec_key`), apps with none left out.
    pub warm_by_app: BTreeMap<String, usize>,
}

/// Zygote tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZygoteOptions {
    /// Per app (`spec_key`), how many mount+network namespaces to keep built ahead of boots
    /// (root assembled and pivoted, `lo` up; each used by one container only). 0 disables:
    /// every boot then builds its namespaces itself.
    pub warm_namespaces: usize,
    /// At most this many apps have warm namespaces at any time, which bounds what an idle
    /// hako holds to `max_prepared_apps × warm_namespaces` namespace sets (each a mount
    /// namespace, a network namespace with `lo`, and for socket-activated apps a listening
    /// socket): about 200 KiB of kernel (slab) memory per set, measured on Linux 6.18, so the
    /// default 64 × 2 holds about 25 MiB at idle. [`Zygote::prepare`] only warms an
    /// app while there is room (so at start the first `max_prepared_apps` apps are warmed);
    /// a boot always makes its app the most recently used one and, when full, releases the
    /// warm namespaces of the least recently used app.
    pub max_prepared_apps: usize,
}

/// Default of [`ZygoteOptions::max_prepared_apps`].
pub const DEFAULT_MAX_PREPARED_APPS: usize = 64;

impl Default for ZygoteOptions {
    fn default() -> Self {
        ZygoteOptions {
            warm_namespaces: 2,
            max_prepared_apps: DEFAULT_MAX_PREPARED_APPS,
        }
    }
}

/// One message on the socket, in either direction: replies carry the id of their request and
/// go out in completion order.
#[derive(Debug, Serialize, Deserialize)]
struct Tagged<T> {
    id: u64,
    msg: T,
}

/// The id of a message whose body cannot be decoded.
#[derive(Debug, Deserialize)]
struct IdOnly {
    id: u64,
}

/// A reply as the reader thread hands it to the caller waiting for it.
type Delivery = (Reply, Option<OwnedFd>);

/// Callers waiting for their reply, by request id.
#[derive(Debug, Default)]
struct Waiters {
    by_id: HashMap<u64, Sender<Delivery>>,
    /// The zygote exited: no reply will ever come.
    closed: bool,
}

type SharedWaiters = Arc<Mutex<Waiters>>;

fn lock_waiters(w: &Mutex<Waiters>) -> std::sync::MutexGuard<'_, Waiters> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The argument that runs a re-exec'd binary as a restarted zygote: `<exe> __zygote PARENT_PID
/// WARM_NAMESPACES MAX_PREPARED_APPS`, its socket on descriptor [`ZYGOTE_FD`]. A binary that
/// starts a [`Zygote`] calls [`zygote_mode`] first thing in `main`, because a dead zygote is
/// restarted from `/proc/self/exe`.
pub const ZYGOTE_MODE_ARG: &str = "__zygote";

/// The zygote's process name (`/proc/PID/comm`).
pub const ZYGOTE_COMM: &std::ffi::CStr = c"hako-zygote";

/// The descriptor a re-exec'd zygote finds its socket on.
pub const ZYGOTE_FD: RawFd = 3;

/// A zygote that dies again and again is given up on (calls fail at once, [`Zygote::status`]
/// says why) after this many failures (deaths or failed starts) within [`GIVE_UP_WINDOW`];
/// it is still retried every [`GIVE_UP_RETRY`].
pub const GIVE_UP_FAILURES: usize = 5;
/// See [`GIVE_UP_FAILURES`].
pub const GIVE_UP_WINDOW: Duration = Duration::from_secs(10);
/// See [`GIVE_UP_FAILURES`].
pub const GIVE_UP_RETRY: Duration = Duration::from_secs(1);

/// How long a call made while the zygote is being restarted waits for the new one.
const RESTART_WAIT: Duration = Duration::from_secs(5);

/// How long a restarted zygote may take to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Test-only: delays each restart by this many milliseconds (so that end-to-end tests can
/// observe the gap); read once when the zygote starts.
pub const RESTART_DELAY_ENV: &str = "HAKO_TEST_ZYGOTE_RESTART_DELAY_MS";

/// One zygote process and the connection to it.
#[derive(Debug)]
struct Conn {
    pid: i32,
    /// Readable once the zygote has exited; the keeper reaps it through this.
    pidfd: OwnedFd,
    sock: Arc<OwnedFd>,
    /// Held only while one request datagram is sent.
    send_lock: Mutex<()>,
    waiters: SharedWaiters,
    reader: Mutex<Option<JoinHandle<()>>>,
}

/// What one call on a connection came to.
enum CallError {
    /// The request never reached this zygote (it was gone already): safe to retry elsewhere.
    NotSent,
    /// Sent, but the zygote died before it answered.
    Died,
    Other(LaunchError),
}

impl Conn {
    fn new(pid: i32, pidfd: OwnedFd, sock: OwnedFd) -> Result<Conn, LaunchError> {
        let sock = Arc::new(sock);
        let waiters = SharedWaiters::default();
        let reader = {
            let (sock, waiters) = (sock.clone(), waiters.clone());
            std::thread::Builder::new()
                .name("hako-zygote-rx".into())
                .spawn(move || read_replies(&sock, &waiters))
                .map_err(|e| LaunchError::Zygote(format!("start the reply thread: {e}")))?
        };
        Ok(Conn {
            pid,
            pidfd,
            sock,
            send_lock: Mutex::new(()),
            waiters,
            reader: Mutex::new(Some(reader)),
        })
    }

    fn call(&self, id: u64, body: &[u8], timeout: Option<Duration>) -> Result<Delivery, CallError> {
        let (tx, rx) = channel();
        {
            let mut w = lock_waiters(&self.waiters);
            if w.closed {
                return Err(CallError::NotSent);
            }
            w.by_id.insert(id, tx);
        }
        let sent = {
            let _send = lock(&self.send_lock);
            send(self.sock.as_raw_fd(), body, None)
        };
        if let Err(e) = sent {
            lock_waiters(&self.waiters).by_id.remove(&id);
            return Err(match e {
                nix::errno::Errno::EPIPE
                | nix::errno::Errno::ECONNRESET
                | nix::errno::Errno::ENOTCONN => CallError::NotSent,
                e => CallError::Other(LaunchError::Zygote(format!("send: {e}"))),
            });
        }
        // The reader drops every sender when the zygote is gone.
        match timeout {
            None => rx.recv().map_err(|_| CallError::Died),
            Some(t) => rx.recv_timeout(t).map_err(|e| match e {
                RecvTimeoutError::Timeout => {
                    lock_waiters(&self.waiters).by_id.remove(&id);
                    CallError::Other(LaunchError::Zygote(format!(
                        "no answer within {} ms",
                        t.as_millis()
                    )))
                }
                RecvTimeoutError::Disconnected => CallError::Died,
            }),
        }
    }

    /// Closes our end (the zygote exits on EOF; the reader thread stops) and joins the reader.
    fn close(&self) {
        let _ = nix::sys::socket::shutdown(self.sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(r) = lock(&self.reader).take() {
            let _ = r.join();
        }
    }

    /// Whether the process has exited (its pidfd polls readable).
    fn exited(&self) -> bool {
        let mut pfd = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut pfd, PollTimeout::ZERO), Ok(n) if n > 0)
    }
}

/// Whether a zygote is there to serve boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZygoteStatus {
    /// Serving, as this pid.
    Running { pid: i32 },
    /// The zygote died (this pid) and a new one is being started.
    Restarting { pid: i32 },
    /// No zygote could be started: failed [`GIVE_UP_FAILURES`] times within
    /// [`GIVE_UP_WINDOW`] (still retried every [`GIVE_UP_RETRY`]); the last error.
    Failed { reason: String },
    /// The handle is being dropped.
    Stopped,
}

/// A restart, as reported to [`Zygote::on_restart`] hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZygoteRestart {
    pub old_pid: i32,
    pub new_pid: i32,
    /// From noticing the death to the new zygote answering.
    pub took: Duration,
    /// Restarts so far, this one included.
    pub restarts: u64,
}

/// Called on the keeper thread after each restart: must not block for long.
pub type RestartHook = Arc<dyn Fn(&ZygoteRestart) + Send + Sync>;

#[derive(Debug)]
enum ConnState {
    Up(Arc<Conn>),
    Restarting { pid: i32 },
    Failed { reason: String },
    Stopped,
}

/// What the handle and its keeper thread share.
struct Shared {
    state: Mutex<ConnState>,
    changed: std::sync::Condvar,
    next_id: AtomicU64,
    restarts: AtomicU64,
    hooks: Mutex<Vec<RestartHook>>,
}

impl Shared {
    fn set(&self, s: ConnState) {
        *lock(&self.state) = s;
        self.changed.notify_all();
    }

    /// The live connection other than `not` (a pid that died under a caller): waits while a
    /// restart is under way, up to [`RESTART_WAIT`].
    fn conn(&self, not: Option<i32>) -> Result<Arc<Conn>, LaunchError> {
        let deadline = Instant::now() + RESTART_WAIT;
        let mut st = lock(&self.state);
        loop {
            match &*st {
                ConnState::Up(c) if Some(c.pid) != not => return Ok(c.clone()),
                ConnState::Failed { reason } => {
                    return Err(LaunchError::ZygoteUnavailable(reason.clone()))
                }
                ConnState::Stopped => {
                    return Err(LaunchError::ZygoteUnavailable("shutting down".into()))
                }
                // A restart is under way (or the keeper has not noticed the death yet).
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(LaunchError::ZygoteUnavailable(format!(
                    "no zygote within {} ms of a restart",
                    RESTART_WAIT.as_millis()
                )));
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Handle on the zygote. `Send + Sync`; calls are blocking, and calls from several threads are
/// served concurrently (a boot's setup does not hold up the others).
///
/// A keeper thread watches the zygote: when it dies (killed, crashed), the keeper reaps it and
/// starts a new one by re-executing `/proc/self/exe` in zygote mode ([`ZYGOTE_MODE_ARG`]),
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

fn pidfd_open(pid: i32) -> Result<OwnedFd, LaunchError> {
    // SAFETY: pidfd_open takes plain integers; on success the result is a new descriptor owned
    // by nobody else.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(LaunchError::sys(
            "pidfd_open",
            format!("zygote {pid}"),
            nix::errno::Errno::last(),
        ));
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn zygote_socketpair() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| LaunchError::sys("socketpair", "", e))
}

/// Kills and reaps a zygote that will not be used.
fn discard(pid: i32, pidfd: &OwnedFd) {
    let _ = crate::spawn::pidfd_signal(pidfd.as_raw_fd(), libc::SIGKILL);
    let _ = wait_pidfd(pidfd.as_fd(), false);
    tracing::debug!(pid, "unusable zygote discarded");
}

/// Starts a zygote by re-executing `/proc/self/exe` in zygote mode, from the calling thread
/// (its death signal follows this thread), and waits until it answers.
fn start_exec(options: &ZygoteOptions) -> Result<Conn, LaunchError> {
    use std::os::unix::process::CommandExt;
    let (ours, theirs) = zygote_socketpair()?;
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg(ZYGOTE_MODE_ARG)
        .arg(std::process::id().to_string())
        .arg(options.warm_namespaces.to_string())
        .arg(options.max_prepared_apps.to_string());
    // SAFETY: the closure runs in the forked child before execve and makes only
    // async-signal-safe system calls (prctl, dup2, fcntl) on integers: no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || {
            // Dies with the thread that starts it (again in zygote_main, after the exec).
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            if theirs_fd == ZYGOTE_FD {
                // dup2 onto itself keeps close-on-exec: clear it.
                if libc::fcntl(ZYGOTE_FD, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_fd, ZYGOTE_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| LaunchError::io("exec zygote", "/proc/self/exe", &e))?;
    drop(theirs);
    let pid = child.id() as i32;
    // Reaped through its pidfd (the `Child` is dropped without waiting).
    drop(child);
    let pidfd = pidfd_open(pid)?;
    let conn = match Conn::new(pid, pidfd, ours) {
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
    let body = serde_json::to_vec(&Tagged {
        id: 0,
        msg: Request::Stats,
    })
    .map_err(|e| LaunchError::Zygote(format!("encode request: {e}")))?;
    match conn.call(0, &body, Some(READY_TIMEOUT)) {
        Ok((Reply::Stats(_), _)) => Ok(conn),
        other => {
            let why = match other {
                Ok((r, _)) => format!("unexpected first reply {r:?}"),
                Err(CallError::Other(e)) => e.to_string(),
                Err(_) => "exited before answering".to_owned(),
            };
            conn.close();
            discard(pid, &conn.pidfd);
            Err(LaunchError::Zygote(format!(
                "restarted zygote {pid}: {why}"
            )))
        }
    }
}

/// The keeper thread: waits for the zygote's death (or `stop`), reaps it and starts another.
fn keeper(shared: Arc<Shared>, stop: OwnedFd, options: ZygoteOptions, delay: Duration) {
    let mut failures: std::collections::VecDeque<Instant> = Default::default();
    loop {
        let conn = match &*lock(&shared.state) {
            ConnState::Up(c) => c.clone(),
            _ => return,
        };
        {
            let mut fds = [
                PollFd::new(conn.pidfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "zygote keeper: poll failed; the zygote is no longer watched");
                    return;
                }
            }
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                return;
            }
            if fds[0].revents().is_none_or(|r| r.is_empty()) {
                continue;
            }
        }
        let noticed = Instant::now();
        let old_pid = conn.pid;
        shared.set(ConnState::Restarting { pid: old_pid });
        let status = wait_pidfd(conn.pidfd.as_fd(), false);
        // In-flight calls fail now (their replies will never come).
        conn.close();
        drop(conn);
        tracing::error!(pid = old_pid, status = ?status, "launcher zygote died; restarting it");
        failures.push_back(noticed);
        let mut last = format!("pid {old_pid} exited ({})", describe_exit(&status));
        let mut backoff = Duration::from_millis(10);
        let mut attempt = 0u32;
        let new = loop {
            while failures
                .front()
                .is_some_and(|t| t.elapsed() > GIVE_UP_WINDOW)
            {
                failures.pop_front();
            }
            let given_up = failures.len() >= GIVE_UP_FAILURES;
            if given_up {
                let reason = format!(
                    "zygote restart failed: {} failures within {} s; last: {last}",
                    failures.len(),
                    GIVE_UP_WINDOW.as_secs()
                );
                if attempt == 0 {
                    tracing::error!(%reason, "launcher zygote given up on; retrying every second");
                }
                shared.set(ConnState::Failed { reason });
            }
            let wait = if given_up {
                GIVE_UP_RETRY
            } else if attempt == 0 {
                delay
            } else {
                backoff
            };
            if !wait.is_zero() && wait_stop(&stop, wait) {
                shared.set(ConnState::Stopped);
                return;
            }
            attempt += 1;
            match start_exec(&options) {
                Ok(c) => break c,
                Err(e) => {
                    failures.push_back(Instant::now());
                    backoff = (backoff * 2).min(GIVE_UP_RETRY);
                    tracing::error!(error = %e, failures = failures.len(), "cannot restart the launcher zygote");
                    last = e.to_string();
                }
            }
        };
        let new_pid = new.pid;
        shared.set(ConnState::Up(Arc::new(new)));
        let restarts = shared.restarts.fetch_add(1, Ordering::SeqCst) + 1;
        let took = noticed.elapsed();
        tracing::warn!(
            old_pid,
            new_pid,
            took_ms = took.as_secs_f64() * 1000.0,
            restarts,
            "launcher zygote restarted"
        );
        let info = ZygoteRestart {
            old_pid,
            new_pid,
            took,
            restarts,
        };
        let hooks = lock(&shared.hooks).clone();
        for h in hooks {
            h(&info);
        }
    }
}

fn describe_exit(status: &Result<Option<crate::ExitStatusInfo>, LaunchError>) -> String {
    match status {
        Ok(Some(st)) => format!("{st:?}"),
        Ok(None) => "still running".to_owned(),
        Err(e) => e.to_string(),
    }
}

/// Waits up to `t` for the stop pipe; `true` if stopping.
fn wait_stop(stop: &OwnedFd, t: Duration) -> bool {
    let mut fds = [PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
    let ms = t.as_millis().min(i32::MAX as u128) as i32;
    matches!(poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)), Ok(n) if n > 0)
}

impl Zygote {
    /// Forks the single-threaded zygote. MUST be called while the process is single-threaded
    /// (from `main()`, before tokio), and from the thread that lives as long as the process
    /// (the first zygote dies with that thread through `PR_SET_PDEATHSIG`). Also starts the
    /// thread that receives the zygote's replies and the keeper thread that restarts it (see
    /// [`Zygote`]): the binary must call [`zygote_mode`] first thing in `main`.
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
    /// prepared: its [`PreparedSpec`] is built and cached under `spec_key` (the cache
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

/// The reader thread: hands each reply (and its descriptor) to the caller waiting for its id;
/// when the zygote is gone, wakes every waiter with an error.
fn read_replies(sock: &OwnedFd, waiters: &Mutex<Waiters>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, fd) = match recv(sock.as_raw_fd(), &mut buf) {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "zygote socket");
                break;
            }
        };
        let body = &buf[..n];
        let (id, reply) = match serde_json::from_slice::<Tagged<Reply>>(body) {
            Ok(t) => (t.id, t.msg),
            Err(e) => match serde_json::from_slice::<IdOnly>(body) {
                Ok(t) => (
                    t.id,
                    Reply::Failed {
                        pid: None,
                        error: LaunchError::Zygote(format!("decode reply: {e}")),
                    },
                ),
                Err(_) => {
                    tracing::warn!(error = %e, "undecodable zygote reply dropped");
                    continue;
                }
            },
        };
        let tx = lock_waiters(waiters).by_id.remove(&id);
        match tx {
            // A send error means the caller is gone; the descriptor is closed with the reply.
            Some(tx) => {
                let _ = tx.send((reply, fd));
            }
            None => tracing::warn!(id, "zygote reply for no pending request"),
        }
    }
    let mut w = lock_waiters(waiters);
    w.closed = true;
    w.by_id.clear();
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

fn send(sock: RawFd, body: &[u8], fd: Option<RawFd>) -> nix::Result<()> {
    let iov = [IoSlice::new(body)];
    let fds;
    let cmsgs: Vec<ControlMessage<'_>> = match fd {
        Some(f) => {
            fds = [f];
            vec![ControlMessage::ScmRights(&fds)]
        }
        None => Vec::new(),
    };
    loop {
        match sendmsg::<()>(sock, &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map(|_| ()),
        }
    }
}

/// Receives one message into `buf` (of [`MAX_MESSAGE`] bytes): its length and descriptor;
/// `None` on EOF.
fn recv(sock: RawFd, buf: &mut [u8]) -> nix::Result<Option<(usize, Option<OwnedFd>)>> {
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => r?,
        };
        let mut fd = None;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for f in fds {
                    // SAFETY: SCM_RIGHTS installed this descriptor in our table just now.
                    let owned = unsafe { OwnedFd::from_raw_fd(f) };
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
        }
        let n = msg.bytes;
        if n == 0 && fd.is_none() {
            return Ok(None);
        }
        return Ok(Some((n, fd)));
    }
}

/// Work for the zygote's helper thread, which keeps the boot path free of namespace creation
/// and teardown.
enum FillerMsg {
    /// This app just booted: keep its warm namespaces topped up, as the most recently used app
    /// (releasing the least recently used app's when [`ZygoteOptions::max_prepared_apps`] is
    /// exceeded).
    Refill(String, Arc<PreparedSpec>),
    /// Warm this app ahead of its first boot, if there is room under the cap.
    Prepare(String, Arc<PreparedSpec>),
    /// Release this app's warm namespaces and stop building them.
    Forget(String),
    /// This container runs in these warm namespaces; drop our reference once it has exited, so
    /// that the mount namespace teardown (an RCU grace period) is not on its exit path.
    Retire(OwnedFd, WarmNs),
}

type Pools = Arc<Mutex<HashMap<String, Vec<WarmNs>>>>;

/// The helper thread's state: which apps to keep warm, least recently used first.
struct Filler {
    pools: Pools,
    target: usize,
    cap: usize,
    wanted: Vec<(String, Arc<PreparedSpec>)>,
    retired: Vec<(OwnedFd, WarmNs)>,
    /// Builds wait for quiet after boots ([`FillerMsg::Refill`] reports one).
    quiet: QuietGate,
}

impl Filler {
    fn apply(&mut self, msg: FillerMsg) {
        // A user-namespaced container cannot join namespaces owned by the host's user
        // namespace: its boots are always cold, so nothing is built ahead for it.
        if let FillerMsg::Refill(_, p) | FillerMsg::Prepare(_, p) = &msg {
            if p.user_namespace {
                return;
            }
        }
        match msg {
            FillerMsg::Refill(key, p) => {
                self.quiet.boot(Instant::now());
                self.wanted.retain(|(k, _)| *k != key);
                self.wanted.push((key, p));
                while self.wanted.len() > self.cap {
                    let (old, _) = self.wanted.remove(0);
                    tracing::debug!(app = %old, "warm namespaces released: least recently used");
                    self.release(&old);
                }
            }
            FillerMsg::Prepare(key, p) => {
                if let Some(slot) = self.wanted.iter_mut().find(|(k, _)| *k == key) {
                    slot.1 = p;
                } else if self.wanted.len() < self.cap {
                    self.wanted.push((key, p));
                } else {
                    tracing::debug!(app = %key, cap = self.cap, "not pre-warmed: max_prepared_apps reached");
                }
            }
            FillerMsg::Forget(key) => {
                self.wanted.retain(|(k, _)| *k != key);
                self.release(&key);
            }
            FillerMsg::Retire(pidfd, ns) => self.retired.push((pidfd, ns)),
        }
    }

    /// Drops the app's warm namespaces (outside the lock: a mount namespace teardown waits for
    /// an RCU grace period).
    fn release(&self, key: &str) {
        let pool = self.pools.lock().ok().and_then(|mut m| m.remove(key));
        drop(pool);
    }

    /// The app to build a namespace set for next (its index in `wanted`, and how many sets it
    /// has ready): the one with the fewest ready, the most recently used among equals.
    fn next(&self) -> Option<(usize, usize)> {
        let pools = self.pools.lock().ok()?;
        self.wanted
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (pools.get(k).map_or(0, Vec::len), i))
            .filter(|(have, _)| *have < self.target)
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(have, i)| (i, have))
    }

    /// How long to hold off the next build: not at all when the app next in line has no set
    /// ready (its next boot would be cold anyway), else until the quiet after boots.
    fn hold(&mut self) -> Duration {
        let ready = self.next().map_or(usize::MAX, |(_, have)| have);
        self.quiet.hold(Instant::now(), ready)
    }

    /// Containers that exited release their namespaces (a pidfd polls readable on exit).
    fn reap_retired(&mut self) {
        self.retired.retain(|(pidfd, _)| {
            let mut pfd = [nix::poll::PollFd::new(
                pidfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            !matches!(nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
        });
    }

    /// Builds one namespace set. Between two builds, messages are handled, so a boot's refill
    /// or a forget never waits behind a long pre-warm.
    fn build(&mut self, i: usize) {
        let (key, p) = self.wanted[i].clone();
        match create_warm(&p) {
            Ok(ns) => {
                if let Ok(mut m) = self.pools.lock() {
                    m.entry(key).or_default().push(ns);
                }
            }
            Err(error) => {
                tracing::warn!(app = %key, %error, "cannot prepare warm namespaces; booting cold");
                self.wanted.remove(i);
            }
        }
    }
}

fn filler(rx: Receiver<FillerMsg>, pools: Pools, target: usize, cap: usize) {
    // Building ahead is worth only the CPU that boots leave over: under a boot storm the
    // boots themselves (children of the zygote's main thread) come first.
    lower_builder_priority();
    let mut f = Filler {
        pools,
        target,
        cap,
        wanted: Vec::new(),
        retired: Vec::new(),
        quiet: QuietGate::default(),
    };
    loop {
        let first = if f.next().is_some() {
            match f.hold() {
                wait if wait.is_zero() => match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                },
                wait => match rx.recv_timeout(wait) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            }
        } else if !f.retired.is_empty() {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            }
        };
        if let Some(m) = first {
            f.apply(m);
            while let Ok(m) = rx.try_recv() {
                f.apply(m);
            }
        }
        f.reap_retired();
        if !f.hold().is_zero() {
            continue;
        }
        if let Some((i, _)) = f.next() {
            f.build(i);
        }
    }
}

/// The zygote's loop. Never returns.
fn zygote_main(sock: OwnedFd, parent: i32, options: ZygoteOptions) -> ! {
    // SAFETY: prctl/signal/getppid/_exit/close_range are plain syscalls on constants.
    unsafe {
        crate::child::set_death_signal();
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        // `hako-zygote` in ps/top and /proc/PID/comm, forked or re-executed alike.
        libc::prctl(libc::PR_SET_NAME, ZYGOTE_COMM.as_ptr(), 0, 0, 0);
        // Ctrl-C on the terminal is for the supervisor, which shuts us down by closing the socket.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        // Descriptors inherited from the parent (other than stdio and our socket) are not ours
        // to keep open: a held write descriptor would make exec of that file fail (ETXTBSY).
        crate::child::close_from_except(3, sock.as_raw_fd() as libc::c_uint);
    }
    let pools: Pools = Arc::new(Mutex::new(HashMap::new()));
    let (tx, rx) = channel();
    let helper = if options.warm_namespaces > 0 {
        let (pools, target, cap) = (
            pools.clone(),
            options.warm_namespaces,
            options.max_prepared_apps,
        );
        std::thread::Builder::new()
            .name("hako-zygote-ns".into())
            .spawn(move || filler(rx, pools, target, cap))
            .ok()
    } else {
        None
    };
    let tx = helper.as_ref().map(|_| tx);
    let mut cache: HashMap<String, Arc<PreparedSpec>> = HashMap::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    'serve: loop {
        // Wait for a request or for the outcome of any container still in its setup.
        let (sock_ready, ready) = {
            let mut fds = Vec::with_capacity(1 + pending.len());
            fds.push(PollFd::new(sock.as_fd(), PollFlags::POLLIN));
            fds.extend(
                pending
                    .iter()
                    .map(|p| PollFd::new(p.started.pipe.as_fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
            let fired = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            let ready: Vec<usize> = fds[1..]
                .iter()
                .enumerate()
                .filter(|(_, f)| fired(f))
                .map(|(i, _)| i)
                .collect();
            (fired(&fds[0]), ready)
        };
        // Highest index first, so that `swap_remove` only moves entries already looked at.
        for i in ready.into_iter().rev() {
            let p = &mut pending[i];
            let Some(outcome) =
                p.started
                    .pipe
                    .read_once(&p.prepared, p.cgroup.as_ref(), p.started.pid)
            else {
                continue;
            };
            let p = pending.swap_remove(i);
            if !finish(&sock, tx.as_ref(), p, outcome) {
                break 'serve;
            }
        }
        if !sock_ready {
            continue;
        }
        let body = match recv(sock.as_raw_fd(), &mut buf) {
            Ok(Some((n, _))) => &buf[..n],
            Ok(None) | Err(_) => break,
        };
        let (id, reply) = match handle(&mut cache, &pools, tx.as_ref(), body) {
            Handled::Now(id, reply) => (id, reply),
            Handled::Started(mut p) => {
                match p.started.outcome_now(&p.prepared, p.cgroup.as_ref()) {
                    Some(outcome) => {
                        if !finish(&sock, tx.as_ref(), p, outcome) {
                            break;
                        }
                    }
                    None => pending.push(p),
                }
                continue;
            }
        };
        if reply_to(&sock, id, &reply, None).is_err() {
            break;
        }
    }
    // SAFETY: leaving the forked process without running the parent's atexit handlers.
    unsafe { libc::_exit(0) }
}

/// A container cloned but not yet exec'd: its reply waits for the outcome on its error pipe.
struct Pending {
    id: u64,
    started: Started,
    /// To describe the child's error record.
    prepared: Arc<PreparedSpec>,
    cgroup: Option<CgroupAttach>,
    /// The warm namespaces it joins: released only once its outcome is known.
    warm: Option<WarmNs>,
}

/// Replies for a container whose outcome is known; `false` if the supervisor is gone.
fn finish(
    sock: &OwnedFd,
    filler: Option<&Sender<FillerMsg>>,
    p: Pending,
    outcome: Option<LaunchError>,
) -> bool {
    let Pending {
        id, started, warm, ..
    } = p;
    let reply = match outcome {
        None => Reply::Ok {
            pid: started.pid,
            warm: warm.is_some(),
        },
        Some(error) => Reply::Failed {
            pid: Some(started.pid),
            error,
        },
    };
    let sent = reply_to(sock, id, &reply, Some(started.pidfd.as_raw_fd()));
    if let (Reply::Ok { .. }, Some(tx), Some(ns)) = (&reply, filler, warm) {
        let _ = tx.send(FillerMsg::Retire(started.pidfd, ns));
    }
    sent.is_ok()
}

fn reply_to(sock: &OwnedFd, id: u64, reply: &Reply, fd: Option<RawFd>) -> nix::Result<()> {
    let body = serde_json::to_vec(&Tagged { id, msg: reply }).unwrap_or_else(|_| {
        format!("{{\"id\":{id},\"msg\":{{\"Failed\":{{\"pid\":null,\"error\":{{\"Zygote\":\"encode\"}}}}}}}}")
            .into_bytes()
    });
    send(sock.as_raw_fd(), &body, fd)
}

/// What became of a request: answered now, or a container whose setup is running.
enum Handled {
    Now(u64, Reply),
    Started(Pending),
}

fn failed(error: LaunchError) -> Reply {
    Reply::Failed { pid: None, error }
}

/// The cached [`PreparedSpec`] of `key`, built from `spec` on first use.
fn prepared(
    cache: &mut HashMap<String, Arc<PreparedSpec>>,
    key: &str,
    spec: &ContainerSpec,
) -> Result<Arc<PreparedSpec>, LaunchError> {
    if let Some(p) = cache.get(key) {
        return Ok(p.clone());
    }
    let p = Arc::new(PreparedSpec::new(spec)?);
    cache.insert(key.to_owned(), p.clone());
    Ok(p)
}

fn handle(
    cache: &mut HashMap<String, Arc<PreparedSpec>>,
    pools: &Pools,
    filler: Option<&Sender<FillerMsg>>,
    body: &[u8],
) -> Handled {
    let Tagged { id, msg: req } = match serde_json::from_slice::<Tagged<Request>>(body) {
        Ok(r) => r,
        Err(e) => {
            let id = serde_json::from_slice::<IdOnly>(body).map_or(0, |t| t.id);
            return Handled::Now(id, failed(LaunchError::Zygote(format!("bad request: {e}"))));
        }
    };
    let reply = match req {
        Request::Spawn(req) => match spawn(cache, pools, filler, id, req) {
            Ok(p) => return Handled::Started(p),
            Err(error) => failed(error),
        },
        Request::Prepare { spec, spec_key } => match prepared(cache, &spec_key, &spec) {
            Ok(p) => {
                if let Some(tx) = filler {
                    let _ = tx.send(FillerMsg::Prepare(spec_key, p));
                }
                Reply::Done
            }
            Err(error) => failed(error),
        },
        Request::Forget { spec_key } => {
            cache.remove(&spec_key);
            // Only the helper thread builds warm namespaces: without it there are none.
            if let Some(tx) = filler {
                let _ = tx.send(FillerMsg::Forget(spec_key));
            }
            Reply::Done
        }
        Request::Stats => {
            let warm_by_app: BTreeMap<String, usize> = pools
                .lock()
                .map(|m| {
                    m.iter()
                        .filter(|(_, v)| !v.is_empty())
                        .map(|(k, v)| (k.clone(), v.len()))
                        .collect()
                })
                .unwrap_or_default();
            Reply::Stats(ZygoteStats {
                prepared_specs: cache.len(),
                warm_namespaces: warm_by_app.values().sum(),
                warm_by_app,
            })
        }
    };
    Handled::Now(id, reply)
}

/// Clones the container of `req`; its outcome is read later from the returned entry.
fn spawn(
    cache: &mut HashMap<String, Arc<PreparedSpec>>,
    pools: &Pools,
    filler: Option<&Sender<FillerMsg>>,
    id: u64,
    req: SpawnRequest,
) -> Result<Pending, LaunchError> {
    // An app seen before (prepared, or booted already) is worth keeping warm; one booting for
    // the first time may never boot again (a thousand apps each woken once would otherwise
    // each build namespace sets nobody uses: measured ~30% of the boot rate).
    let seen_before = cache.contains_key(&req.spec_key);
    let prepared = prepared(cache, &req.spec_key, &req.spec)?;
    let mut warm = pools
        .lock()
        .ok()
        .and_then(|mut m| m.get_mut(&req.spec_key).and_then(Vec::pop));
    let result = start_container(
        &prepared,
        req.cgroup.as_ref(),
        &req.output(),
        Launch::Zygote(warm.as_ref()),
    );
    // The container holds the listening socket now (fd 3; clone copied our descriptors): once
    // it exits, connections must be refused rather than queued on a copy we keep.
    if let Some(w) = warm.as_mut() {
        w.listen = None;
    }
    if let Some(tx) = filler.filter(|_| seen_before || warm.is_some()) {
        let _ = tx.send(FillerMsg::Refill(req.spec_key.clone(), prepared.clone()));
    }
    let started = result?;
    Ok(Pending {
        id,
        started,
        prepared,
        cgroup: req.cgroup,
        warm,
    })
}

/// A restarted zygote's command line ([`ZYGOTE_MODE_ARG`]), parsed by [`zygote_mode`].
#[derive(Debug)]
pub struct ZygoteMode {
    parent: i32,
    options: ZygoteOptions,
}

/// `Ok(Some(_))` when this process was started as a restarted zygote (`<exe> __zygote ...`);
/// then the caller runs [`ZygoteMode::run`] before doing anything else (no threads, no
/// runtime). `Ok(None)` for any other command line.
pub fn zygote_mode() -> Result<Option<ZygoteMode>, LaunchError> {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_none_or(|a| a != ZYGOTE_MODE_ARG) {
        return Ok(None);
    }
    let bad = |what: &str| LaunchError::Zygote(format!("{ZYGOTE_MODE_ARG}: bad {what}"));
    let mut num = |what: &str| -> Result<usize, LaunchError> {
        args.next()
            .and_then(|a| a.to_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| bad(what))
    };
    let parent = i32::try_from(num("parent pid")?).map_err(|_| bad("parent pid"))?;
    let warm_namespaces = num("warm_namespaces")?;
    let max_prepared_apps = num("max_prepared_apps")?;
    // SAFETY: F_GETFD on a plain integer only reads the descriptor's flags.
    if unsafe { libc::fcntl(ZYGOTE_FD, libc::F_GETFD) } < 0 {
        return Err(LaunchError::Zygote(format!(
            "{ZYGOTE_MODE_ARG}: no socket on descriptor {ZYGOTE_FD}"
        )));
    }
    Ok(Some(ZygoteMode {
        parent,
        options: ZygoteOptions {
            warm_namespaces,
            max_prepared_apps,
        },
    }))
}

impl ZygoteMode {
    /// Serves as the zygote until the supervisor closes the socket; never returns.
    pub fn run(self) -> ! {
        // SAFETY: descriptor ZYGOTE_FD was checked open by `zygote_mode` and is the socket the
        // starting process placed there for us; nothing else in this process uses it.
        let sock = unsafe { OwnedFd::from_raw_fd(ZYGOTE_FD) };
        zygote_main(sock, self.parent, self.options)
    }
}
