//! Lifecycle hooks (`hooks:` of an app): commands run on the host, never in the container, at
//! five points of an instance's life (see [`HookPoint`]).
//!
//! A hook runs with hako's own environment plus `HAKO_HOOK` (the hook point), `HAKO_APP`,
//! `HAKO_INSTANCE` (the instance id), `HAKO_PID` (the container's pid as the host sees it;
//! empty before the container exists) and `HAKO_REASON` (why: `boot`, `ready`, the stop
//! reason such as `idle` or `crashed`, the governor's reason for `on_pressure`). Its standard
//! input is `/dev/null`, its working directory `/`. It runs in a process group of its own:
//! at its timeout the whole group gets SIGKILL. Up to [`OUTPUT_LIMIT`] bytes of its stdout
//! and of its stderr are kept and logged; the rest is read and dropped, so a chatty hook never
//! blocks on a full pipe. Each run is counted in `hako_hook_runs_total{app,hook,result}`
//! (result `ok`, `failed` or `timeout`).
use std::process::Stdio;
use std::time::Duration;

use hako_policies::{Hook, HookPoint};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::metrics::AppMetrics;

/// Bytes of a hook's stdout, and of its stderr, kept for the log.
pub const OUTPUT_LIMIT: usize = 4096;

/// How long the pipes are still read once the hook has exited (a background child of the
/// hook may hold them open).
const PIPE_GRACE: Duration = Duration::from_millis(100);

/// Who a hook runs for.
#[derive(Debug, Clone)]
pub struct HookContext {
    pub app: String,
    pub instance: u64,
    pub pid: Option<i32>,
    pub reason: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookResult {
    Ok,
    /// It could not be started, exited non-zero or was killed; the text says which.
    Failed(String),
    Timeout,
}

impl HookResult {
    /// The `result` label of `hako_hook_runs_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            HookResult::Ok => "ok",
            HookResult::Failed(_) => "failed",
            HookResult::Timeout => "timeout",
        }
    }
}

/// One finished run: the result and the (bounded) output.
#[derive(Debug, Clone)]
pub struct HookRun {
    pub result: HookResult,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl HookRun {
    /// A one-line description for errors: `hook before_boot failed: exited with status 3:
    /// <last line of stderr>`.
    pub fn describe(&self, point: HookPoint, hook: &Hook) -> String {
        let what = match &self.result {
            HookResult::Ok => "succeeded".to_owned(),
            HookResult::Failed(why) => format!("failed: {why}"),
            HookResult::Timeout => {
                format!(
                    "timed out after {}",
                    hako_policies::format_duration(hook.timeout)
                )
            }
        };
        let last = self
            .stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default();
        format!("hook {point} ({}) {what}{last}", hook.command[0])
    }
}

/// Reads `r` to its end, keeping the first [`OUTPUT_LIMIT`] bytes.
async fn read_bounded(mut r: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Runs `hook` for `ctx` at `point`, waits for it (at most its timeout) and returns how it
/// ended. Logs nothing: see [`run_and_record`].
pub async fn run(point: HookPoint, hook: &Hook, ctx: &HookContext) -> HookRun {
    let start = Instant::now();
    let mut cmd = tokio::process::Command::new(&hook.command[0]);
    cmd.args(&hook.command[1..])
        .env("HAKO_HOOK", point.as_str())
        .env("HAKO_APP", &ctx.app)
        .env("HAKO_INSTANCE", ctx.instance.to_string())
        .env(
            "HAKO_PID",
            ctx.pid.map(|p| p.to_string()).unwrap_or_default(),
        )
        .env("HAKO_REASON", &ctx.reason)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return HookRun {
                result: HookResult::Failed(format!("cannot start {}: {e}", hook.command[0])),
                stdout: String::new(),
                stderr: String::new(),
                took: start.elapsed(),
            }
        }
    };
    let pgid = child.id().map(|p| p as i32);
    let out = child.stdout.take().map(|s| tokio::spawn(read_bounded(s)));
    let err = child.stderr.take().map(|s| tokio::spawn(read_bounded(s)));
    let result = match tokio::time::timeout(hook.timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => HookResult::Ok,
        Ok(Ok(status)) => HookResult::Failed(match (status.code(), status.signal_number()) {
            (Some(c), _) => format!("exited with status {c}"),
            (_, Some(s)) => format!("killed by signal {s}"),
            _ => "ended abnormally".to_owned(),
        }),
        Ok(Err(e)) => HookResult::Failed(format!("wait: {e}")),
        Err(_) => {
            if let Some(pgid) = pgid {
                // SAFETY: kill(2) on the hook's own process group (it was made its leader by
                // process_group(0) and is not reaped yet, so the id is still ours).
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            let _ = child.wait().await;
            HookResult::Timeout
        }
    };
    let collect = |h: Option<tokio::task::JoinHandle<Vec<u8>>>| async move {
        let Some(mut h) = h else {
            return String::new();
        };
        match tokio::time::timeout(PIPE_GRACE, &mut h).await {
            Ok(Ok(v)) => String::from_utf8_lossy(&v).into_owned(),
            _ => {
                h.abort();
                String::new()
            }
        }
    };
    let stdout = collect(out).await;
    let stderr = collect(err).await;
    HookRun {
        result,
        stdout,
        stderr,
        took: start.elapsed(),
    }
}

/// Exit status helper: the signal that ended a process, if any.
trait SignalNumber {
    fn signal_number(&self) -> Option<i32>;
}

impl SignalNumber for std::process::ExitStatus {
    fn signal_number(&self) -> Option<i32> {
        std::os::unix::process::ExitStatusExt::signal(self)
    }
}

/// Runs the app's hook at `point` if it has one, logs and counts the run; `None` when the
/// app has no such hook.
pub async fn run_and_record(
    point: HookPoint,
    hook: Option<&Hook>,
    ctx: &HookContext,
    metrics: &AppMetrics,
) -> Option<HookRun> {
    let hook = hook?;
    let run = run(point, hook, ctx).await;
    metrics.hook_run(point.as_str(), run.result.as_str());
    let took_ms = run.took.as_secs_f64() * 1e3;
    match &run.result {
        HookResult::Ok => tracing::info!(app = %ctx.app, instance = ctx.instance,
            hook = %point, reason = %ctx.reason, took_ms, stdout = %run.stdout.trim_end(),
            stderr = %run.stderr.trim_end(), "hook ran"),
        _ => tracing::warn!(app = %ctx.app, instance = ctx.instance, hook = %point,
            reason = %ctx.reason, took_ms, result = run.result.as_str(),
            error = %run.describe(point, hook), stdout = %run.stdout.trim_end(),
            stderr = %run.stderr.trim_end(), "hook failed"),
    }
    Some(run)
}

/// Runs `app`'s hook at `point` for an instance (if the app has one), logs and counts it.
/// `Err` holds a one-line description when it did not succeed.
pub async fn fire(
    app: &hako_policies::App,
    point: HookPoint,
    instance: u64,
    pid: Option<i32>,
    reason: &str,
    metrics: &AppMetrics,
) -> Result<(), String> {
    let Some(hook) = app.hooks.get(point) else {
        return Ok(());
    };
    let ctx = HookContext {
        app: app.name.clone(),
        instance,
        pid,
        reason: reason.to_owned(),
    };
    match run_and_record(point, Some(hook), &ctx, metrics).await {
        Some(run) if run.result != HookResult::Ok => Err(run.describe(point, hook)),
        _ => Ok(()),
    }
}

/// [`fire`] as an owned future, to be spawned (after_ready, after_stop, on_pressure): the
/// caller never waits for it. `None` when the app has no hook at `point`.
pub fn fire_later(
    app: &std::sync::Arc<hako_policies::App>,
    point: HookPoint,
    instance: u64,
    pid: Option<i32>,
    reason: String,
    metrics: &AppMetrics,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    app.hooks.get(point)?;
    let (app, metrics) = (app.clone(), metrics.clone());
    Some(async move {
        let _ = fire(&app, point, instance, pid, &reason, &metrics).await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> HookContext {
        HookContext {
            app: "web".into(),
            instance: 7,
            pid: Some(1234),
            reason: "idle".into(),
        }
    }

    fn sh(script: &str, timeout: Duration) -> Hook {
        Hook {
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout,
        }
    }

    #[tokio::test]
    async fn the_environment_names_the_hook_app_instance_pid_and_reason() {
        let h = sh(
            "echo $HAKO_HOOK $HAKO_APP $HAKO_INSTANCE $HAKO_PID $HAKO_REASON",
            Duration::from_secs(5),
        );
        let r = run(HookPoint::BeforeStop, &h, &ctx()).await;
        assert_eq!(r.result, HookResult::Ok);
        assert_eq!(r.stdout, "before_stop web 7 1234 idle\n");
        let mut c = ctx();
        c.pid = None;
        let r = run(
            HookPoint::BeforeBoot,
            &sh("echo \"[$HAKO_PID]\"", Duration::from_secs(5)),
            &c,
        )
        .await;
        assert_eq!(r.stdout, "[]\n");
    }

    #[tokio::test]
    async fn failures_name_the_status_and_the_last_line_of_stderr() {
        let h = sh(
            "echo one >&2; echo 'db unreachable' >&2; exit 3",
            Duration::from_secs(5),
        );
        let r = run(HookPoint::BeforeBoot, &h, &ctx()).await;
        assert_eq!(r.result, HookResult::Failed("exited with status 3".into()));
        let d = r.describe(HookPoint::BeforeBoot, &h);
        assert_eq!(
            d,
            "hook before_boot (/bin/sh) failed: exited with status 3: db unreachable"
        );
        let missing = Hook {
            command: vec!["/nonexistent/hook".into()],
            timeout: Duration::from_secs(1),
        };
        let r = run(HookPoint::AfterStop, &missing, &ctx()).await;
        assert!(matches!(r.result, HookResult::Failed(ref m) if m.contains("cannot start")));
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let h = sh(&script, Duration::from_millis(300));
        let r = run(HookPoint::OnPressure, &h, &ctx()).await;
        assert_eq!(r.result, HookResult::Timeout);
        assert!(r.took < Duration::from_secs(5), "{:?}", r.took);
        let child: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background sleep was in the hook's process group: killed too (a zombie of
        // init at most, never running).
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{child}/stat")).ok();
            let alive = state.as_deref().is_some_and(|s| {
                let st = s.rsplit(") ").next().unwrap_or("");
                !st.starts_with('Z') && !st.starts_with('X')
            });
            if !alive {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sleep {child} still runs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn output_is_bounded_and_a_flood_does_not_block_the_hook() {
        let h = sh(
            "head -c 1000000 /dev/zero | tr '\\0' x; exit 0",
            Duration::from_secs(10),
        );
        let r = run(HookPoint::AfterReady, &h, &ctx()).await;
        assert_eq!(r.result, HookResult::Ok);
        assert_eq!(r.stdout.len(), OUTPUT_LIMIT);
    }
}
