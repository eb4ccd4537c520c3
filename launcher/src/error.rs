//! Errors of the launcher.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Formats an errno as `description (NAME)`, e.g. `No such file or directory (ENOENT)`.
pub fn errno_text(errno: i32) -> String {
    let e = nix::errno::Errno::from_raw(errno);
    format!("{} ({e:?})", e.desc())
}

/// Why a container could not be started. Serializable: it travels back from the zygote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum LaunchError {
    /// `execve` failed in the child (missing file, permission, bad interpreter, ...).
    #[error("exec {path}: {}", errno_text(*.errno))]
    Exec { path: String, errno: i32 },
    /// The file exists but `execve` could not find its interpreter (`#!` line).
    #[error("exec {path}: bad interpreter: {}", errno_text(*.errno))]
    BadInterpreter { path: String, errno: i32 },
    /// A setup step in the child failed before `execve`.
    #[error("container setup: {step} {path}: {}", errno_text(*.errno))]
    Setup {
        step: String,
        path: String,
        errno: i32,
    },
    /// The listening socket of `ContainerSpec::listen` could not be created (port in use...).
    #[error("listening socket 0.0.0.0:{port}: {step}: {}", errno_text(*.errno))]
    Listen { port: u16, step: String, errno: i32 },
    /// The spec cannot be turned into a process (empty command, NUL byte, unknown capability...).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// Building the seccomp profile failed.
    #[error("seccomp profile: {0}")]
    Seccomp(String),
    /// A system call in the launcher itself failed.
    #[error("{op} {path}: {}", errno_text(*.errno))]
    Sys {
        op: String,
        path: PathBuf,
        errno: i32,
    },
    /// The zygote is gone or answered something unexpected.
    #[error("zygote: {0}")]
    Zygote(String),
    /// The zygote died while it handled the request (transient: a new zygote is started,
    /// and the request may be retried).
    #[error("zygote (pid {pid}) died during the request; it is being restarted")]
    ZygoteDied { pid: i32 },
    /// No zygote can take requests (it could not be restarted, or the launcher is stopping).
    #[error("no zygote: {0}")]
    ZygoteUnavailable(String),
}

impl LaunchError {
    pub(crate) fn sys(op: &str, path: impl Into<PathBuf>, err: nix::errno::Errno) -> Self {
        LaunchError::Sys {
            op: op.to_owned(),
            path: path.into(),
            errno: err as i32,
        }
    }
    pub(crate) fn io(op: &str, path: impl Into<PathBuf>, err: &std::io::Error) -> Self {
        LaunchError::Sys {
            op: op.to_owned(),
            path: path.into(),
            errno: err.raw_os_error().unwrap_or(libc::EIO),
        }
    }
    /// The errno carried by this error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            LaunchError::Exec { errno, .. }
            | LaunchError::BadInterpreter { errno, .. }
            | LaunchError::Setup { errno, .. }
            | LaunchError::Listen { errno, .. }
            | LaunchError::Sys { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_error_names_path_and_errno() {
        let e = LaunchError::Exec {
            path: "/bin/nope".into(),
            errno: libc::ENOENT,
        };
        assert_eq!(
            e.to_string(),
            "exec /bin/nope: No such file or directory (ENOENT)"
        );
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<LaunchError>(&json).unwrap(), e);
    }
}
