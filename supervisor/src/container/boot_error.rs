//! A failed spawn as the supervisor sees it: a [`BootError`] with its class and origin.
use hako_launcher::LaunchError;

use crate::instances::BootError;
use crate::instances::BootErrorSource::{Launcher, Zygote as ZygoteSource};

/// The class of a failed spawn, for the crash-loop backoff and the error page: what the
/// host runs short of for a moment (EAGAIN, ENOMEM, descriptors, a busy resource, a port
/// still held by the previous instance, the zygote restarting) is transient; what the same
/// spawn would hit again (a missing or unexecutable program, a bad rootfs, an invalid spec or
/// seccomp profile) is permanent.
pub(super) fn boot_error(e: &LaunchError) -> BootError {
    const TRANSIENT_ERRNOS: [i32; 7] = [
        libc::EAGAIN,
        libc::ENOMEM,
        libc::EBUSY,
        libc::EINTR,
        libc::ENFILE,
        libc::EMFILE,
        libc::EADDRINUSE,
    ];
    let reason = e.to_string();
    match e {
        // The zygote died under this boot: the keeper is already starting a new one, and the
        // next boot waits for it (no crash-loop backoff: only the boots in flight fail).
        LaunchError::ZygoteDied { .. } => BootError::interrupted(ZygoteSource, reason),
        LaunchError::Zygote(_) | LaunchError::ZygoteUnavailable(_) => {
            BootError::transient(ZygoteSource, reason)
        }
        LaunchError::InvalidSpec(_) | LaunchError::Seccomp(_) => {
            BootError::permanent(Launcher, reason)
        }
        _ => match e.errno() {
            Some(errno) if TRANSIENT_ERRNOS.contains(&errno) => {
                BootError::transient(Launcher, reason)
            }
            _ => BootError::permanent(Launcher, reason),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_errors_are_classed_permanent_or_transient() {
        use crate::instances::{BootErrorClass::*, BootErrorSource};
        let exec = |errno| LaunchError::Exec {
            path: "/bin/app".into(),
            errno,
        };
        let setup = |errno| LaunchError::Setup {
            step: "pivot_root".into(),
            path: "/srv/rootfs".into(),
            errno,
        };
        let cases = [
            (exec(libc::ENOENT), Permanent, BootErrorSource::Launcher),
            (exec(libc::EACCES), Permanent, BootErrorSource::Launcher),
            (exec(libc::EAGAIN), Transient, BootErrorSource::Launcher),
            (exec(libc::ENOMEM), Transient, BootErrorSource::Launcher),
            (setup(libc::ENOENT), Permanent, BootErrorSource::Launcher),
            (setup(libc::ENOTDIR), Permanent, BootErrorSource::Launcher),
            (
                LaunchError::InvalidSpec("empty command".into()),
                Permanent,
                BootErrorSource::Launcher,
            ),
            (
                LaunchError::ZygoteDied { pid: 7 },
                Interrupted,
                BootErrorSource::Zygote,
            ),
            (
                LaunchError::Zygote("zygote exited".into()),
                Transient,
                BootErrorSource::Zygote,
            ),
            (
                LaunchError::ZygoteUnavailable("zygote restart failed".into()),
                Transient,
                BootErrorSource::Zygote,
            ),
        ];
        for (e, class, origin) in cases {
            let b = boot_error(&e);
            assert_eq!((b.class, b.origin), (class, origin), "{e}");
            assert_eq!(b.reason, e.to_string());
        }
    }
}
