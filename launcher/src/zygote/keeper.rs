//! The keeper thread: watches the zygote, reaps it when it dies and starts a new one by
//! re-executing `/proc/self/exe` in zygote mode; what the handle and the keeper share.
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::conn::{lock, CallError, Conn};
use super::protocol::{Reply, Request, Tagged};
use super::{ZygoteOptions, ZYGOTE_FD, ZYGOTE_MODE_ARG};
use crate::error::LaunchError;
use crate::spawn::wait_pidfd;

/// A zygote that dies again and again is given up on (calls fail at once, [`Zygote::status`](super::Zygote::status)
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

/// A restart, as reported to [`Zygote::on_restart`](super::Zygote::on_restart) hooks.
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
pub(super) enum ConnState {
    Up(Arc<Conn>),
    Restarting { pid: i32 },
    Failed { reason: String },
    Stopped,
}

/// What the handle and its keeper thread share.
pub(super) struct Shared {
    pub(super) state: Mutex<ConnState>,
    pub(super) changed: std::sync::Condvar,
    pub(super) next_id: AtomicU64,
    pub(super) restarts: AtomicU64,
    pub(super) hooks: Mutex<Vec<RestartHook>>,
}

impl Shared {
    pub(super) fn set(&self, s: ConnState) {
        *lock(&self.state) = s;
        self.changed.notify_all();
    }

    /// The live connection other than `not` (a pid that died under a caller): waits while a
    /// restart is under way, up to [`RESTART_WAIT`].
    pub(super) fn conn(&self, not: Option<i32>) -> Result<Arc<Conn>, LaunchError> {
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

pub(super) fn pidfd_open(pid: i32) -> Result<OwnedFd, LaunchError> {
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

pub(super) fn zygote_socketpair() -> Result<(OwnedFd, OwnedFd), LaunchError> {
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
pub(super) fn keeper(shared: Arc<Shared>, stop: OwnedFd, options: ZygoteOptions, delay: Duration) {
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
