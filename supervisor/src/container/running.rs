//! A live container, as the supervisor holds it ([`Running`]): waiting for its exit (and
//! whether it was an OOM kill), signals, usage and limits of its cgroup, cleanup.
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hako_launcher::cgroup::{CgroupError, InstanceCgroup};
use hako_proxy::Upstream;
use tokio::io::unix::AsyncFd;

use super::oom::OomBaseline;
use crate::instances::runtime::SoftLimitError;
use crate::instances::{BoxFuture, EffectiveLimits, ExitInfo, Hibernation, Running, Usage};

pub(super) struct Container {
    pub(super) pid: i32,
    pub(super) pidfd: Arc<AsyncFd<OwnedFd>>,
    pub(super) cgroup: Mutex<Option<Arc<InstanceCgroup>>>,
    pub(super) upstream: Arc<dyn Upstream>,
    pub(super) record: PathBuf,
    /// The readers of its stdout and stderr (taken by `cleanup` for the last output).
    pub(super) output: Mutex<Option<crate::logs::pipe::InstanceOutput>>,
    pub(super) exit: Arc<Mutex<Option<ExitInfo>>>,
    /// The cgroup's OOM-kill count from before the instance's death.
    pub(super) oom_baseline: Arc<Mutex<OomBaseline>>,
    /// An image-based instance's overlay root: unmounted, and its writes discarded, when the
    /// instance is dropped.
    pub(super) _rootfs: Option<hako_launcher::overlay::OverlayRoot>,
}

impl Container {
    fn cgroup(&self) -> Option<Arc<InstanceCgroup>> {
        self.cgroup.lock().expect("cgroup lock").clone()
    }
}

/// The `SigCgt` mask (signals with a handler) of a `/proc/PID/status` text.
fn caught_signals(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

impl Running for Container {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn upstream(&self) -> Arc<dyn Upstream> {
        self.upstream.clone()
    }

    fn wait(&self) -> BoxFuture<'static, ExitInfo> {
        let pidfd = self.pidfd.clone();
        let cgroup = self.cgroup();
        let pid = self.pid;
        let exit_slot = self.exit.clone();
        let baseline = self.oom_baseline.clone();
        Box::pin(async move {
            let status = loop {
                match pidfd.readable().await {
                    Ok(mut guard) => {
                        match hako_launcher::wait_pidfd(pidfd.get_ref().as_fd(), true) {
                            Ok(Some(st)) => break Some(st),
                            Ok(None) => guard.clear_ready(),
                            Err(e) => {
                                tracing::error!(pid, error = %e, "waitid on pidfd failed");
                                break None;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(pid, error = %e, "polling pidfd failed");
                        break None;
                    }
                }
            };
            let oom_kills = cgroup
                .as_ref()
                .and_then(|c| c.stats().ok())
                .map_or(0, |s| s.oom_kills);
            let signal = status.and_then(|st| st.signal());
            let oom = baseline
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .killed_by_oom(oom_kills, signal);
            let info = match status {
                Some(st) => ExitInfo {
                    code: st.code(),
                    signal: st.signal(),
                    oom,
                },
                None => ExitInfo {
                    code: None,
                    signal: None,
                    oom,
                },
            };
            *exit_slot.lock().expect("exit lock") = Some(info);
            info
        })
    }

    fn signal(&self, signal: i32) {
        if let Err(e) = hako_launcher::pidfd_signal(self.pidfd.get_ref().as_raw_fd(), signal) {
            tracing::debug!(pid = self.pid, signal, error = %e, "signal not delivered");
        }
    }

    fn handles_signal(&self, signal: i32) -> Option<bool> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        caught_signals(&status).map(|mask| signal > 0 && mask & (1u64 << (signal - 1)) != 0)
    }

    fn cleanup(&self) -> BoxFuture<'static, ()> {
        let cgroup = self.cgroup.lock().expect("cgroup lock").take();
        let record = self.record.clone();
        let output = self.output.lock().unwrap_or_else(|p| p.into_inner()).take();
        let exit = *self.exit.lock().expect("exit lock");
        let pid = self.pid;
        Box::pin(async move {
            // The last output: once the pipes reached their end (every process of the
            // instance is gone), from the readers' tail.
            let last = async {
                match output {
                    Some(mut o) => o.finish(std::time::Duration::from_millis(500)).await,
                    None => String::new(),
                }
            };
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(mut c) = cgroup {
                    // A sampler reading may hold a clone of the handle for a moment.
                    let mut tries = 0;
                    loop {
                        match Arc::try_unwrap(c) {
                            Ok(c) => {
                                let name = c.name().to_string();
                                if let Err(e) = c.remove() {
                                    tracing::error!(cgroup = %name, error = %e, "cannot remove cgroup");
                                }
                                break;
                            }
                            Err(shared) if tries < 500 => {
                                tries += 1;
                                c = shared;
                                std::thread::sleep(std::time::Duration::from_millis(2));
                            }
                            Err(shared) => {
                                tracing::error!(cgroup = shared.name(), "cgroup still in use after 1 s; not removed");
                                break;
                            }
                        }
                    }
                }
                let _ = std::fs::remove_file(&record);
            })
            .await;
            let abnormal = exit.is_none_or(|e| e.code != Some(0));
            let t = last.await;
            if abnormal && !t.is_empty() {
                tracing::info!(pid, log_tail = %t, "last output of the instance");
            }
        })
    }

    fn usage(&self) -> Option<Usage> {
        let s = self.cgroup()?.stats().ok()?;
        // Alive after the reading (its pidfd is not readable yet): a baseline candidate.
        let mut pfd = [nix::poll::PollFd::new(
            self.pidfd.get_ref().as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let alive = matches!(
            nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO),
            Ok(0)
        );
        if alive {
            self.oom_baseline
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sample(s.oom_kills, tokio::time::Instant::now());
        }
        Some(Usage {
            cpu_usage_usec: s.cpu_usage_usec,
            memory_current: s.memory_current,
        })
    }

    fn limits(&self) -> Option<EffectiveLimits> {
        let l = self.cgroup()?.limits().ok()?;
        Some(EffectiveLimits {
            cpu: l.cpu,
            memory_max: l.memory_max,
            memory_high: l.memory_high,
            pids: l.pids,
        })
    }

    fn hibernate(&self) -> BoxFuture<'static, Result<Hibernation, String>> {
        let cg = self.cgroup();
        Box::pin(async move {
            let cg = cg.ok_or("instance has no cgroup")?;
            tokio::task::spawn_blocking(move || super::hibernate::hibernate(&cg))
                .await
                .map_err(|e| e.to_string())?
        })
    }

    fn wake(&self) -> BoxFuture<'static, Result<(), String>> {
        let (cg, pid) = (self.cgroup(), self.pid);
        Box::pin(async move {
            let cg = cg.ok_or("instance has no cgroup")?;
            tokio::task::spawn_blocking(move || super::hibernate::wake(&cg, pid))
                .await
                .map_err(|e| e.to_string())?
        })
    }

    fn killed_while_frozen(&self) -> bool {
        hako_launcher::cgroup::sigkill_pending(Path::new("/proc"), self.pid)
    }

    fn resident_bytes(&self) -> Option<u64> {
        super::hibernate::resident(&*self.cgroup()?)
    }

    fn reading(&self) -> Option<crate::instances::runtime::Reading> {
        let usage = self.usage()?;
        let cg = self.cgroup()?;
        // cpu.stat a second time (usage() read it too): cheap, and keeps usage() unchanged.
        let throttled_usec = cg.stats().ok().map(|s| s.throttled_usec);
        let cpu_stall_usec = cg.pressure().ok().flatten().map(|p| p.cpu_some_usec);
        Some(crate::instances::runtime::Reading {
            usage,
            throttled_usec,
            cpu_stall_usec,
        })
    }

    fn set_cpu_weight(&self, weight: u32) -> Result<(), String> {
        let cg = self.cgroup().ok_or("instance has no cgroup")?;
        cg.set_cpu_weight(weight).map_err(|e| e.to_string())
    }

    fn set_soft_limits(&self, cpu: f64, memory_high: Option<u64>) -> Result<(), SoftLimitError> {
        let cg = self
            .cgroup()
            .ok_or(SoftLimitError::NoCgroup { pid: self.pid })?;
        let failed = |source: CgroupError| SoftLimitError::Cgroup {
            cgroup: cg.name().to_owned(),
            cpu,
            memory_high,
            source: Box::new(source),
        };
        let mut l = cg.limits().map_err(failed)?;
        l.cpu = Some(cpu);
        l.memory_high = memory_high;
        cg.set_limits(&l).map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caught_signal_mask_is_read_from_proc_status() {
        let status = "Name:\tsh\nSigIgn:\t0000000000000004\nSigCgt:\t0000000000014002\n";
        let mask = caught_signals(status).expect("mask");
        let has = |sig: i32| mask & (1u64 << (sig - 1)) != 0;
        assert!(has(libc::SIGINT));
        assert!(has(libc::SIGTERM));
        assert!(has(libc::SIGCHLD));
        assert!(!has(libc::SIGHUP));
        assert_eq!(caught_signals("Name:\tx\n"), None);
        // Our own process: the test harness has no SIGTERM handler, tokio none here either.
        let own = std::fs::read_to_string("/proc/self/status").expect("status");
        let own = caught_signals(&own).expect("our own mask");
        assert_eq!(own & (1u64 << (libc::SIGTERM - 1)), 0, "{own:#x}");
    }
}
