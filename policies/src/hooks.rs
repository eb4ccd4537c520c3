//! Per-app lifecycle `hooks`: commands run on the host (not in the container) at five points
//! of an instance's life.
//!
//! ```yaml
//! hooks:
//!   before_boot: [/usr/local/bin/migrate, --check]        # short form: a command list
//!   after_ready: {command: [notify-send, up], timeout: 10s} # long form with a timeout
//! ```
//!
//! The default timeout is [`DEFAULT_HOOK_TIMEOUT`]. A hook's program must exist when the
//! configuration is loaded: an absolute path to an executable file, or a name found in the
//! `PATH` of `hako` itself.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::units::{de_opt_duration, format_duration};
use crate::volumes::Fault;

/// Timeout of a hook without its own.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest accepted hook timeout.
pub const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(600);

/// Where in an instance's life a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookPoint {
    /// Before the container is created; a failure fails the boot.
    BeforeBoot,
    /// Once the instance is ready (it is already serving).
    AfterReady,
    /// When the instance is asked to stop, before it drains and gets SIGTERM.
    BeforeStop,
    /// After the process has ended and its cgroup is removed.
    AfterStop,
    /// When the governor tightens the instance's limits.
    OnPressure,
}

impl HookPoint {
    /// Every hook point, in life order.
    pub const ALL: [HookPoint; 5] = [
        HookPoint::BeforeBoot,
        HookPoint::AfterReady,
        HookPoint::BeforeStop,
        HookPoint::AfterStop,
        HookPoint::OnPressure,
    ];

    /// The configuration key, also the `hook` label of `hako_hook_runs_total` and `HAKO_HOOK`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookPoint::BeforeBoot => "before_boot",
            HookPoint::AfterReady => "after_ready",
            HookPoint::BeforeStop => "before_stop",
            HookPoint::AfterStop => "after_stop",
            HookPoint::OnPressure => "on_pressure",
        }
    }
}

impl std::fmt::Display for HookPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One hook: a command (program and arguments) and its timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub command: Vec<String>,
    pub timeout: Duration,
}

/// An app's hooks, each optional.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hooks {
    pub before_boot: Option<Hook>,
    pub after_ready: Option<Hook>,
    pub before_stop: Option<Hook>,
    pub after_stop: Option<Hook>,
    pub on_pressure: Option<Hook>,
}

impl Hooks {
    /// The hook at `point`, if any.
    pub fn get(&self, point: HookPoint) -> Option<&Hook> {
        match point {
            HookPoint::BeforeBoot => self.before_boot.as_ref(),
            HookPoint::AfterReady => self.after_ready.as_ref(),
            HookPoint::BeforeStop => self.before_stop.as_ref(),
            HookPoint::AfterStop => self.after_stop.as_ref(),
            HookPoint::OnPressure => self.on_pressure.as_ref(),
        }
    }

    fn slot(&mut self, point: HookPoint) -> &mut Option<Hook> {
        match point {
            HookPoint::BeforeBoot => &mut self.before_boot,
            HookPoint::AfterReady => &mut self.after_ready,
            HookPoint::BeforeStop => &mut self.before_stop,
            HookPoint::AfterStop => &mut self.after_stop,
            HookPoint::OnPressure => &mut self.on_pressure,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawHookLong {
    pub command: Option<Vec<String>>,
    #[serde(deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
}

/// A hook as written: a command list, or `{command, timeout}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawHook {
    Command(Vec<String>),
    Long(RawHookLong),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawHooks {
    pub before_boot: Option<RawHook>,
    pub after_ready: Option<RawHook>,
    pub before_stop: Option<RawHook>,
    pub after_stop: Option<RawHook>,
    pub on_pressure: Option<RawHook>,
}

/// Whether `program` can be run on the host: an absolute path to an executable regular file,
/// or a name found in `path_var` (hako's own `PATH`). Returns the path found.
pub fn find_program(program: &str, path_var: Option<&std::ffi::OsStr>) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        if !program.starts_with('/') {
            return Err(format!(
                "`{program}` must be an absolute path or a program name found in PATH"
            ));
        }
        let p = PathBuf::from(program);
        if executable(&p) {
            return Ok(p);
        }
        return Err(if p.exists() {
            format!("`{program}` is not an executable file")
        } else {
            format!("`{program}` does not exist")
        });
    }
    let path_var = path_var.unwrap_or(std::ffi::OsStr::new("/usr/sbin:/usr/bin:/sbin:/bin"));
    for dir in std::env::split_paths(path_var) {
        let p = dir.join(program);
        if dir.is_absolute() && executable(&p) {
            return Ok(p);
        }
    }
    Err(format!("`{program}` is not found in PATH"))
}

/// Validates an app's `hooks` (written at `at`, e.g. `apps[0].hooks`).
pub(crate) fn validate(at: &str, raw: RawHooks) -> (Hooks, Vec<Fault>) {
    let mut hooks = Hooks::default();
    let mut faults = Vec::new();
    let path_var = std::env::var_os("PATH");
    let written = [
        (HookPoint::BeforeBoot, raw.before_boot),
        (HookPoint::AfterReady, raw.after_ready),
        (HookPoint::BeforeStop, raw.before_stop),
        (HookPoint::AfterStop, raw.after_stop),
        (HookPoint::OnPressure, raw.on_pressure),
    ];
    for (point, raw) in written {
        let Some(raw) = raw else { continue };
        let hp = format!("{at}.{point}");
        let (command, timeout, cmd_path) = match raw {
            RawHook::Command(c) => (Some(c), None, hp.clone()),
            RawHook::Long(l) => (l.command, l.timeout, format!("{hp}.command")),
        };
        let Some(command) = command else {
            faults.push(Fault {
                path: format!("{hp}.command"),
                message: "missing; give the program and its arguments".into(),
            });
            continue;
        };
        if command.is_empty() || command[0].trim().is_empty() {
            faults.push(Fault {
                path: cmd_path,
                message: "must name a program (a list: program and arguments)".into(),
            });
            continue;
        }
        if let Some(i) = command.iter().position(|a| a.contains('\0')) {
            faults.push(Fault {
                path: format!("{cmd_path}[{i}]"),
                message: "must not contain a NUL byte".into(),
            });
            continue;
        }
        if let Err(e) = find_program(&command[0], path_var.as_deref()) {
            faults.push(Fault {
                path: format!("{cmd_path}[0]"),
                message: format!("{e} (hooks run on the host)"),
            });
        }
        let timeout = timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT);
        if timeout.is_zero() || timeout > MAX_HOOK_TIMEOUT {
            faults.push(Fault {
                path: format!("{hp}.timeout"),
                message: format!(
                    "{} is out of range (more than zero, at most {})",
                    format_duration(timeout),
                    format_duration(MAX_HOOK_TIMEOUT)
                ),
            });
        }
        *hooks.slot(point) = Some(Hook { command, timeout });
    }
    (hooks, faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_by_path_or_in_path() {
        assert!(find_program("/bin/sh", None).is_ok());
        assert!(find_program("sh", Some("/usr/bin:/bin".as_ref())).is_ok());
        assert!(find_program("no-such-hako-hook", None)
            .unwrap_err()
            .contains("not found in PATH"));
        assert!(find_program("/no/such", None)
            .unwrap_err()
            .contains("does not exist"));
        assert!(find_program("bin/sh", None)
            .unwrap_err()
            .contains("absolute"));
        let f = tempfile::NamedTempFile::new().unwrap();
        let plain = f.path().to_str().unwrap();
        assert!(find_program(plain, None)
            .unwrap_err()
            .contains("not an executable"));
    }

    #[test]
    fn short_and_long_forms() {
        let raw: RawHooks = serde_yaml::from_str(
            "before_boot: [/bin/true]\nafter_stop: {command: [sh, -c, 'exit 0'], timeout: 10s}\non_pressure: {timeout: 1s}\nbefore_stop: [/nope]\n",
        )
        .unwrap();
        let (hooks, faults) = validate("h", raw);
        assert_eq!(
            hooks.before_boot.as_ref().unwrap().timeout,
            DEFAULT_HOOK_TIMEOUT
        );
        assert_eq!(
            hooks.get(HookPoint::AfterStop).unwrap().timeout,
            Duration::from_secs(10)
        );
        let paths: Vec<&str> = faults.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["h.before_stop[0]", "h.on_pressure.command"]);
    }
}
