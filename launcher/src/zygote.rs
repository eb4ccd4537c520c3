//! The zygote: a single-threaded process forked from `main()` before any runtime thread
//! exists. It receives spawn requests over a `SOCK_SEQPACKET` socketpair, keeps one
//! [`PreparedSpec`] per `spec_key`, clones each container with `CLONE_PARENT | CLONE_PIDFD`
//! (so the container is a child of the hako process, which reaps it via the pidfd) and answers
//! with the pid and the pidfd (`SCM_RIGHTS`).
use std::collections::{BTreeMap, HashMap};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
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

    /// One request, one reply (with at most one descriptor).
    fn call(&self, req: &Request) -> Result<(Reply, Option<OwnedFd>), LaunchError> {
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
        Ok((reply, fd))
    }
}

fn unexpected(reply: &Reply) -> LaunchError {
    LaunchError::Zygote(format!("unexpected reply {reply:?}"))
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
}

impl Filler {
    fn apply(&mut self, msg: FillerMsg) {
        match msg {
            FillerMsg::Refill(key, p) => {
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

    /// The app to build a namespace set for next: the one with the fewest ready, the most
    /// recently used among equals.
    fn next(&self) -> Option<usize> {
        let pools = self.pools.lock().ok()?;
        self.wanted
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (pools.get(k).map_or(0, Vec::len), i))
            .filter(|(have, _)| *have < self.target)
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, i)| i)
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
    let mut f = Filler {
        pools,
        target,
        cap,
        wanted: Vec::new(),
        retired: Vec::new(),
    };
    loop {
        let first = if f.next().is_some() {
            match rx.try_recv() {
                Ok(m) => Some(m),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => return,
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
        if let Some(i) = f.next() {
            f.build(i);
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

fn done(reply: Reply) -> Handled {
    (reply, None, None)
}

fn failed(error: LaunchError) -> Handled {
    done(Reply::Failed { pid: None, error })
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
    let req: Request = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return failed(LaunchError::Zygote(format!("bad request: {e}"))),
    };
    match req {
        Request::Spawn(req) => spawn(cache, pools, filler, &req),
        Request::Prepare { spec, spec_key } => match prepared(cache, &spec_key, &spec) {
            Ok(p) => {
                if let Some(tx) = filler {
                    let _ = tx.send(FillerMsg::Prepare(spec_key, p));
                }
                done(Reply::Done)
            }
            Err(error) => failed(error),
        },
        Request::Forget { spec_key } => {
            cache.remove(&spec_key);
            match filler {
                Some(tx) => {
                    let _ = tx.send(FillerMsg::Forget(spec_key));
                }
                None => {
                    let pool = pools.lock().ok().and_then(|mut m| m.remove(&spec_key));
                    drop(pool);
                }
            }
            done(Reply::Done)
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
            done(Reply::Stats(ZygoteStats {
                prepared_specs: cache.len(),
                warm_namespaces: warm_by_app.values().sum(),
                warm_by_app,
            }))
        }
    }
}

fn spawn(
    cache: &mut HashMap<String, Arc<PreparedSpec>>,
    pools: &Pools,
    filler: Option<&Sender<FillerMsg>>,
    req: &SpawnRequest,
) -> Handled {
    let prepared = match prepared(cache, &req.spec_key, &req.spec) {
        Ok(p) => p,
        Err(error) => return failed(error),
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
            None => (
                Reply::Ok {
                    pid: raw.pid,
                    warm: warm.is_some(),
                },
                Some(raw.pidfd),
                warm,
            ),
            Some(error) => (
                Reply::Failed {
                    pid: Some(raw.pid),
                    error,
                },
                Some(raw.pidfd),
                None,
            ),
        },
        Err(error) => failed(error),
    }
}
