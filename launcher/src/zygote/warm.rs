//! The zygote's helper thread, which builds warm namespaces ahead of boots and releases them.
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::prepare::PreparedSpec;
use crate::quiet::{lower_builder_priority, QuietGate};
use crate::spawn::{create_warm, WarmNs};

/// Work for the zygote's helper thread, which keeps the boot path free of namespace creation
/// and teardown.
pub(super) enum FillerMsg {
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

pub(super) type Pools = Arc<Mutex<HashMap<String, Vec<WarmNs>>>>;

/// The helper thread's state: which apps to keep warm, least recently used first.
struct Filler {
    pools: Pools,
    target: usize,
    cap: usize,
    wanted: Vec<(String, Arc<PreparedSpec>)>,
    retired: Vec<(OwnedFd, WarmNs)>,
    /// The dropper thread: released namespace sets are dropped there, not here (see
    /// [`dropper`]). `None` if it could not be started: they are dropped here.
    dropper: Option<Sender<WarmNs>>,
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

    /// Releases the app's warm namespaces: taken out of the pool under its lock, dropped on
    /// the dropper thread (a teardown waits for RCU: see [`dropper`]).
    fn release(&self, key: &str) {
        let pool = self.pools.lock().ok().and_then(|mut m| m.remove(key));
        for ns in pool.into_iter().flatten() {
            self.discard(ns);
        }
    }

    /// Drops a namespace set on the dropper thread (here if there is none).
    fn discard(&self, ns: WarmNs) {
        // A failed send hands the set back inside the error, dropped here.
        if let Some(tx) = &self.dropper {
            let _ = tx.send(ns);
        }
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
        let (exited, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|(pidfd, _)| {
                let mut pfd = [nix::poll::PollFd::new(
                    pidfd.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                matches!(nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
            });
        self.retired = running;
        for (_, ns) in exited {
            self.discard(ns);
        }
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

/// Drops released namespace sets. Deleting an egress veth pair waits in the kernel for RCU
/// callbacks (`rcu_barrier` after `RTM_DELLINK`: 18 ms on average on the 2-core test VM,
/// `perf record -e sched:sched_switch -g`); on the builder thread that wait left the warm pool
/// empty under one boot every 20 ms, and boots built their sets inline (egress p50 3.6 ms
/// against isolated 1.3 ms). Here it only delays the release.
fn dropper(rx: Receiver<WarmNs>) {
    lower_builder_priority();
    for ns in rx {
        drop(ns);
    }
}

pub(super) fn filler(rx: Receiver<FillerMsg>, pools: Pools, target: usize, cap: usize) {
    // Building ahead is worth only the CPU that boots leave over: under a boot storm the
    // boots themselves (children of the zygote's main thread) come first.
    lower_builder_priority();
    let (drop_tx, drop_rx) = std::sync::mpsc::channel();
    let dropper = std::thread::Builder::new()
        .name("hako-zygote-rm".into())
        .spawn(move || dropper(drop_rx))
        .map_err(|error| {
            tracing::warn!(%error, "no dropper thread: the builder releases namespace sets");
        })
        .ok()
        .map(|_| drop_tx);
    let mut f = Filler {
        pools,
        target,
        cap,
        wanted: Vec::new(),
        retired: Vec::new(),
        dropper,
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
