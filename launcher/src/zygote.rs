//! The zygote: a single-threaded process forked from `main()` before any runtime thread
//! exists. It receives spawn requests over a `SOCK_SEQPACKET` socketpair, keeps one
//! [`PreparedSpec`] per `spec_key`, clones each container with `CLONE_PARENT | CLONE_PIDFD`
//! (so the container is a child of the hako process, which reaps it via the pidfd) and answers
//! with the pid and the pidfd (`SCM_RIGHTS`).
use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupAttach;
use crate::error::LaunchError;
use crate::prepare::PreparedSpec;
use crate::spawn::{clone_container, create_warm, wait_pidfd, Output, Spawned, WarmNs};
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

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Ok {
        pid: i32,
    },
    /// `pid` is set when a child exists (and is attached as a pidfd) and must be reaped.
    Failed {
        pid: Option<i32>,
        error: LaunchError,
    },
}

/// Zygote tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZygoteOptions {
    /// Per app (`spec_key`), how many mount+network namespaces to keep built ahead of boots
    /// (root assembled and pivoted, `lo` up; each used by one container only). 0 disables:
    /// every boot then builds its namespaces itself.
    pub warm_namespaces: usize,
}

impl Default for ZygoteOptions {
    fn default() -> Self {
        ZygoteOptions { warm_namespaces: 2 }
    }
}

/// Handle on the zygote. `Send + Sync`; calls are blocking and serialized internally.
#[derive(Debug)]
pub struct Zygote {
    sock: Mutex<OwnedFd>,
    pid: i32,
}

impl Zygote {
    /// Forks the single-threaded zygote. MUST be called while the process is single-threaded
    /// (from `main()`, before tokio), and from the thread that lives as long as the process
    /// (the zygote dies with that thread through `PR_SET_PDEATHSIG`).
    pub fn start() -> Result<Zygote, LaunchError> {
        Self::start_with(ZygoteOptions::default())
    }

    /// [`Zygote::start`] with options.
    pub fn start_with(options: ZygoteOptions) -> Result<Zygote, LaunchError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| LaunchError::sys("socketpair", "", e))?;
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
        Ok(Zygote {
            sock: Mutex::new(ours),
            pid,
        })
    }

    /// The zygote's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Spawns one container; blocking. On a setup or exec failure the child has already been
    /// reaped when the error is returned.
    pub fn spawn(&self, req: &SpawnRequest) -> Result<Spawned, LaunchError> {
        let body = serde_json::to_vec(req)
            .map_err(|e| LaunchError::Zygote(format!("encode request: {e}")))?;
        if body.len() > MAX_MESSAGE {
            return Err(LaunchError::InvalidSpec(format!(
                "request of {} bytes is too large",
                body.len()
            )));
        }
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        send(sock.as_raw_fd(), &body, None)
            .map_err(|e| LaunchError::Zygote(format!("send: {e}")))?;
        let (reply, fd) =
            recv(sock.as_raw_fd()).map_err(|e| LaunchError::Zygote(format!("receive: {e}")))?;
        drop(sock);
        let Some(reply) = reply else {
            return Err(LaunchError::Zygote("zygote exited".into()));
        };
        let reply: Reply = serde_json::from_slice(&reply)
            .map_err(|e| LaunchError::Zygote(format!("decode reply: {e}")))?;
        match (reply, fd) {
            (Reply::Ok { pid }, Some(pidfd)) => Ok(Spawned { pid, pidfd }),
            (Reply::Ok { pid }, None) => {
                Err(LaunchError::Zygote(format!("no pidfd for pid {pid}")))
            }
            (Reply::Failed { error, .. }, fd) => {
                if let Some(fd) = fd {
                    let _ = wait_pidfd(fd.as_fd(), false);
                }
                Err(error)
            }
        }
    }
}

impl Drop for Zygote {
    /// Closes the socket (the zygote exits on EOF) and reaps it.
    fn drop(&mut self) {
        let sock = self.sock.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = nix::sys::socket::shutdown(sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.pid), None);
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

/// Receives one message; `None` on EOF.
fn recv(sock: RawFd) -> nix::Result<(Option<Vec<u8>>, Option<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
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
            return Ok((None, None));
        }
        buf.truncate(n);
        return Ok((Some(buf), fd));
    }
}

/// Work for the zygote's helper thread, which keeps the boot path free of namespace creation
/// and teardown.
enum FillerMsg {
    /// Top up the warm namespaces of this app.
    Refill(String, Arc<PreparedSpec>),
    /// This container runs in these warm namespaces; drop our reference once it has exited, so
    /// that the mount namespace teardown (an RCU grace period) is not on its exit path.
    Retire(OwnedFd, WarmNs),
}

type Pools = Arc<Mutex<HashMap<String, Vec<WarmNs>>>>;

fn filler(rx: Receiver<FillerMsg>, pools: Pools, target: usize) {
    let mut wanted: HashMap<String, Arc<PreparedSpec>> = HashMap::new();
    let mut retired: Vec<(OwnedFd, WarmNs)> = Vec::new();
    loop {
        let msg = if retired.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(Duration::from_millis(20))
        };
        match msg {
            Ok(FillerMsg::Refill(key, p)) => {
                wanted.insert(key, p);
            }
            Ok(FillerMsg::Retire(pidfd, ns)) => retired.push((pidfd, ns)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // Containers that exited release their namespaces (a pidfd polls readable on exit).
        retired.retain(|(pidfd, _)| {
            let mut pfd = [nix::poll::PollFd::new(
                pidfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            !matches!(nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
        });
        let mut failed = Vec::new();
        for (key, p) in &wanted {
            loop {
                let have = pools
                    .lock()
                    .map(|m| m.get(key).map_or(0, Vec::len))
                    .unwrap_or(target);
                if have >= target {
                    break;
                }
                match create_warm(p) {
                    Ok(ns) => {
                        if let Ok(mut m) = pools.lock() {
                            m.entry(key.clone()).or_default().push(ns);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(app = %key, %error, "cannot prepare warm namespaces; booting cold");
                        failed.push(key.clone());
                        break;
                    }
                }
            }
        }
        for k in failed {
            wanted.remove(&k);
        }
    }
}

/// The zygote's loop. Never returns.
fn zygote_main(sock: OwnedFd, parent: i32, options: ZygoteOptions) -> ! {
    // SAFETY: prctl/signal/getppid/_exit are plain syscalls on constants.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        // Ctrl-C on the terminal is for the supervisor, which shuts us down by closing the socket.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        // Descriptors inherited from the parent (other than stdio and our socket) are not ours
        // to keep open: a held write descriptor would make exec of that file fail (ETXTBSY).
        let keep = sock.as_raw_fd() as libc::c_uint;
        if keep > 3 {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                keep - 1,
                0 as libc::c_uint,
            );
        }
        libc::syscall(
            libc::SYS_close_range,
            keep + 1,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        );
    }
    let pools: Pools = Arc::new(Mutex::new(HashMap::new()));
    let (tx, rx) = channel();
    let helper = if options.warm_namespaces > 0 {
        let (pools, target) = (pools.clone(), options.warm_namespaces);
        std::thread::Builder::new()
            .name("hako-zygote-ns".into())
            .spawn(move || filler(rx, pools, target))
            .ok()
    } else {
        None
    };
    let tx = helper.as_ref().map(|_| tx);
    let mut cache: HashMap<String, Arc<PreparedSpec>> = HashMap::new();
    loop {
        let body = match recv(sock.as_raw_fd()) {
            Ok((Some(b), _)) => b,
            Ok((None, _)) | Err(_) => break,
        };
        let (reply, fd, retire) = handle(&mut cache, &pools, tx.as_ref(), &body);
        let reply = serde_json::to_vec(&reply).unwrap_or_else(|_| {
            b"{\"Failed\":{\"pid\":null,\"error\":{\"Zygote\":\"encode\"}}}".to_vec()
        });
        let sent = send(sock.as_raw_fd(), &reply, fd.as_ref().map(|f| f.as_raw_fd()));
        if let (Some(tx), Some(ns), Some(pidfd)) = (tx.as_ref(), retire, fd) {
            let _ = tx.send(FillerMsg::Retire(pidfd, ns));
        }
        if sent.is_err() {
            break;
        }
    }
    // SAFETY: leaving the forked process without running the parent's atexit handlers.
    unsafe { libc::_exit(0) }
}

type Handled = (Reply, Option<OwnedFd>, Option<WarmNs>);

fn handle(
    cache: &mut HashMap<String, Arc<PreparedSpec>>,
    pools: &Pools,
    filler: Option<&Sender<FillerMsg>>,
    body: &[u8],
) -> Handled {
    let req: SpawnRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return (
                Reply::Failed {
                    pid: None,
                    error: LaunchError::Zygote(format!("bad request: {e}")),
                },
                None,
                None,
            )
        }
    };
    let prepared = match cache.get(&req.spec_key) {
        Some(p) => p.clone(),
        None => match PreparedSpec::new(&req.spec) {
            Ok(p) => {
                let p = Arc::new(p);
                cache.insert(req.spec_key.clone(), p.clone());
                p
            }
            Err(error) => return (Reply::Failed { pid: None, error }, None, None),
        },
    };
    let mut warm = pools
        .lock()
        .ok()
        .and_then(|mut m| m.get_mut(&req.spec_key).and_then(Vec::pop));
    let result = clone_container(
        &prepared,
        req.cgroup.as_ref(),
        &req.output(),
        true,
        warm.as_ref(),
    );
    // The container holds the listening socket now (fd 3): once it exits, connections must be
    // refused rather than queued on a copy we keep.
    if let Some(w) = warm.as_mut() {
        w.listen = None;
    }
    if let Some(tx) = filler {
        let _ = tx.send(FillerMsg::Refill(req.spec_key.clone(), prepared));
    }
    match result {
        Ok(raw) => match raw.error {
            None => (Reply::Ok { pid: raw.pid }, Some(raw.pidfd), warm),
            Some(error) => (
                Reply::Failed {
                    pid: Some(raw.pid),
                    error,
                },
                Some(raw.pidfd),
                None,
            ),
        },
        Err(error) => (Reply::Failed { pid: None, error }, None, None),
    }
}
