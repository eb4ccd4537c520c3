//! The seam between the supervisor's decisions and the processes: a [`Runtime`] starts
//! instances and hands back a [`Running`] handle. Production uses containers
//! (`crate::container`), tests plain in-process servers.
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use hako_policies::App;
use hako_proxy::Upstream;
use serde::Serialize;

/// A boxed future, the currency of the [`Runtime`] seam.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How an instance's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExitInfo {
    /// Exit code when the process exited normally.
    pub code: Option<i32>,
    /// Signal number when it was killed by a signal.
    pub signal: Option<i32>,
    /// The cgroup recorded an OOM kill.
    pub oom: bool,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (_, Some(s)) if self.oom => write!(f, "killed by signal {s} (out of memory)"),
            (_, Some(s)) => write!(f, "killed by signal {s}"),
            (Some(c), _) => write!(f, "exited with status {c}"),
            _ => f.write_str("exited"),
        }
    }
}

/// Effective resource limits of an instance, as shown by `/v1/instances`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EffectiveLimits {
    pub cpu: Option<f64>,
    pub memory_max: Option<u64>,
    pub memory_high: Option<u64>,
    pub pids: Option<u64>,
}

/// Resource usage sampled from an instance's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub cpu_usage_usec: u64,
    pub memory_current: u64,
}

/// What hibernating an instance did to its memory (resident: in RAM, anonymous + file cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Hibernation {
    pub resident_before: u64,
    pub resident_after: u64,
    /// Memory was pushed to swap (false: frozen only, e.g. the host has no swap).
    pub reclaimed: bool,
}

/// One governor reading of an instance's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    pub usage: Usage,
    /// Cumulative time the group was throttled at its quota (`cpu.stat`), µs.
    pub throttled_usec: Option<u64>,
    /// Cumulative `some` stall of the group's own `cpu.pressure` (v2 only), µs.
    pub cpu_stall_usec: Option<u64>,
}

/// What the caller of a failed boot should do: try again soon, or stop trying for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootErrorClass {
    /// The same spawn will fail the same way (missing executable, bad rootfs, invalid spec):
    /// the crash-loop backoff goes to its maximum at once and requests get 502 with the
    /// reason.
    Permanent,
    /// The host was momentarily short of something (EAGAIN, ENOMEM, the zygote restarting):
    /// the next boot is tried soon and requests get 503 with `Retry-After`.
    Transient,
    /// The boot was cut short by a launcher fault that is already being repaired (the zygote
    /// died under it; a new one is being started and boots made meanwhile wait for it): this
    /// request gets 503 with `Retry-After`, but the app is not put in its crash-loop backoff:
    /// the next request boots at once.
    Interrupted,
}

/// Which part of a boot failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootErrorSource {
    /// Creating the container (cgroup, namespaces, mounts, exec).
    Launcher,
    /// The launcher's zygote process (gone, restarting).
    Zygote,
    /// The app's process exited before it was ready.
    AppExit,
    /// The app did not become ready in time.
    Readiness,
    /// The app's `before_boot` hook failed or timed out.
    Hook,
}

/// Why an instance could not be booted: a reason for humans, a class the supervisor acts on
/// and the part that failed (after pingora-error's error source + retry type).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct BootError {
    pub class: BootErrorClass,
    pub origin: BootErrorSource,
    pub reason: String,
}

impl BootError {
    pub fn permanent(origin: BootErrorSource, reason: impl Into<String>) -> Self {
        BootError {
            class: BootErrorClass::Permanent,
            origin,
            reason: reason.into(),
        }
    }

    pub fn transient(origin: BootErrorSource, reason: impl Into<String>) -> Self {
        BootError {
            class: BootErrorClass::Transient,
            origin,
            reason: reason.into(),
        }
    }

    pub fn interrupted(origin: BootErrorSource, reason: impl Into<String>) -> Self {
        BootError {
            class: BootErrorClass::Interrupted,
            origin,
            reason: reason.into(),
        }
    }

    /// Worth retrying soon: [`BootErrorClass::Transient`] or [`BootErrorClass::Interrupted`].
    pub fn is_transient(&self) -> bool {
        matches!(
            self.class,
            BootErrorClass::Transient | BootErrorClass::Interrupted
        )
    }
}

/// Why [`Running::set_soft_limits`] did not change an instance's limits.
#[derive(Debug, thiserror::Error)]
pub enum SoftLimitError {
    /// The runtime cannot change the limits of a live instance.
    #[error("not supported by this runtime")]
    Unsupported,
    /// The instance has no cgroup (cgroups are off, or it was removed at the instance's end).
    #[error("instance {pid} has no cgroup")]
    NoCgroup { pid: i32 },
    /// Reading the instance's limits back or writing the new ones failed.
    #[error("cgroup {cgroup}: cannot set cpu {cpu} and memory.high {memory_high:?}: {source}")]
    Cgroup {
        cgroup: String,
        cpu: f64,
        memory_high: Option<u64>,
        #[source]
        source: Box<hako_launcher::cgroup::CgroupError>,
    },
}

/// A process started by a [`Runtime`].
pub trait Running: Send + Sync + 'static {
    fn pid(&self) -> i32;
    fn upstream(&self) -> Arc<dyn Upstream>;
    /// Resolves when the process has exited and was reaped. Called exactly once.
    fn wait(&self) -> BoxFuture<'static, ExitInfo>;
    /// Sends a signal to the process (it is not reaped before `wait` resolved, so the pid is
    /// still ours).
    fn signal(&self, signal: i32);
    /// Removes what the instance left behind (cgroup, state record). Called after `wait`.
    fn cleanup(&self) -> BoxFuture<'static, ()>;
    /// Current usage; `None` when unavailable.
    fn usage(&self) -> Option<Usage> {
        None
    }
    /// Effective limits read back from the kernel.
    fn limits(&self) -> Option<EffectiveLimits> {
        None
    }
    /// Whether the process has a handler for `signal` (`None`: unknown). PID 1 of a pid
    /// namespace never gets a signal it does not handle, so SIGTERM to an app without a
    /// handler is pointless and the stop goes straight to SIGKILL.
    fn handles_signal(&self, signal: i32) -> Option<bool> {
        let _ = signal;
        None
    }
    /// Freezes the process (no CPU) and, when the host has swap, pushes its anonymous memory
    /// out (hibernation). Resolves once done; an error leaves the process running.
    fn hibernate(&self) -> BoxFuture<'static, Result<Hibernation, String>> {
        Box::pin(async { Err("hibernation is not supported by this runtime".to_string()) })
    }
    /// Thaws a hibernated process. An error means it cannot serve (e.g. it was killed while
    /// frozen: on cgroup v1 a frozen task dies only once thawed); it is then thawed anyway.
    fn wake(&self) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Err("hibernation is not supported by this runtime".to_string()) })
    }
    /// Whether the frozen process was killed meanwhile (a SIGKILL waits for the thaw).
    fn killed_while_frozen(&self) -> bool {
        false
    }
    /// Memory the instance holds in RAM (bytes); `None` when unknown.
    fn resident_bytes(&self) -> Option<u64> {
        self.usage().map(|u| u.memory_current)
    }
    /// Changes cpu quota (cores) and memory.high (bytes) live; used by the governor.
    fn set_soft_limits(&self, cpu: f64, memory_high: Option<u64>) -> Result<(), SoftLimitError> {
        let _ = (cpu, memory_high);
        Err(SoftLimitError::Unsupported)
    }
    /// What the governor reads every tick: usage plus the CPU contention counters (throttled
    /// time, the group's own CPU stall on v2). The default knows only [`Running::usage`].
    fn reading(&self) -> Option<Reading> {
        self.usage().map(|usage| Reading {
            usage,
            ..Default::default()
        })
    }
    /// Changes the CPU weight live (v2 scale 1..=10000, default 100: v2 `cpu.weight`, v1
    /// `cpu.shares`); used by the governor.
    fn set_cpu_weight(&self, weight: u32) -> Result<(), String> {
        let _ = weight;
        Err("not supported by this runtime".into())
    }
}

/// Creates instance processes: real containers in production, plain processes in tests.
pub trait Runtime: Send + Sync + 'static {
    /// Starts an instance of `app`. Resolves once the process exists (it may not be ready).
    fn spawn(
        &self,
        app: Arc<App>,
        id: u64,
    ) -> BoxFuture<'static, Result<Arc<dyn Running>, BootError>>;

    /// The counter instance ids are taken from, when the runtime reserves ids ahead of boots
    /// (see [`Runtime::claim_id`]); `None`: the supervisor keeps its own.
    fn instance_ids(&self) -> Option<Arc<AtomicU64>> {
        None
    }

    /// An id reserved ahead for the next instance of `app` (the runtime prepared resources
    /// named after it, e.g. a cgroup), or `None` to take a fresh one. Called with the app's
    /// pool locked: must not block.
    fn claim_id(&self, app: &App) -> Option<u64> {
        let _ = app;
        None
    }

    /// Why no instance can boot right now (e.g. the launcher's zygote is being restarted or
    /// could not be), one line each; empty when boots can start. Served by `/healthz`.
    fn cannot_boot(&self) -> Vec<String> {
        Vec::new()
    }

    /// Called once by [`crate::instances::Supervisor::new`] with the supervisor's metrics, for
    /// the runtime's own (e.g. `hako_zygote_restarts_total`).
    fn attach_metrics(&self, metrics: &crate::metrics::Metrics) {
        let _ = metrics;
    }
}
