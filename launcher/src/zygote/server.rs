//! The zygote process itself: its serving loop, the table of pending (cold) boots, and the
//! entry point of a re-executed zygote ([`zygote_mode`]).
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::protocol::MAX_MESSAGE;
use super::protocol::{recv, send, IdOnly, Reply, Request, SpawnRequest, Tagged, ZygoteStats};
use super::warm::{filler, FillerMsg, Pools};
use super::{ZygoteOptions, ZYGOTE_COMM, ZYGOTE_FD, ZYGOTE_MODE_ARG};
use crate::cgroup::CgroupAttach;
use crate::error::LaunchError;
use crate::prepare::PreparedSpec;
use crate::spawn::{create_warm, start_container, Launch, Started, WarmNs};
use crate::spec::ContainerSpec;

/// The zygote's loop. Never returns.
pub(super) fn zygote_main(sock: OwnedFd, parent: i32, options: ZygoteOptions) -> ! {
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
    if warm.is_none() && prepared.egress.is_some() {
        // An egress container's link is built with its namespaces: none ready, so build a
        // set now (the cost of a cold boot, paid here instead of in the child).
        let t = std::time::Instant::now();
        warm = Some(create_warm(&prepared)?);
        tracing::debug!(
            spec_key = %req.spec_key,
            build_us = t.elapsed().as_micros() as u64,
            "egress boot with no namespace set ready: built one inline"
        );
    }
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
        tracing::info!(
            parent = self.parent,
            pid = std::process::id(),
            "restarted zygote serving"
        );
        zygote_main(sock, self.parent, self.options)
    }
}
