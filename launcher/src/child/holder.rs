//! Async-signal-safe (child only): the namespace holder that builds warm namespaces.
use std::ffi::c_int;

use super::net::{listen_socket, loopback_up};
use super::records::{stage, ChildFds, HOLDER_READY_SIZE};
use super::root::{build_root, set_hostname};
use super::sys::{close_from_except, fail, set_death_signal, sys_write};
use crate::prepare::PreparedSpec;

/// A namespace holder: cloned with `CLONE_NEWNS`, `CLONE_NEWUTS`, `CLONE_NEWIPC` (and
/// `CLONE_NEWNET`), it builds the root (everything but `/proc`), sets the hostname, brings up
/// `lo` and makes the listening socket if any, reports readiness with a
/// [`HOLDER_READY_SIZE`] record on the error pipe, then
/// waits to be killed once the zygote has opened `/proc/PID/ns/{mnt,uts,ipc,net}`. Never
/// returns.
///
/// # Safety
/// Child only (see the module documentation).
pub(crate) unsafe fn run_holder(p: &PreparedSpec, fds: &ChildFds) -> ! {
    // SAFETY: raw system calls only, as in `run`.
    unsafe {
        set_death_signal();
        // The zygote may have died before the line above ran: then nobody would kill us.
        if libc::getppid() != fds.parent {
            libc::_exit(0);
        }
        // Forked while a vfork child of the zygote had made the shared memory map
        // non-dumpable, we would keep that flag, and the zygote could not open our
        // /proc/PID/ns files without CAP_SYS_PTRACE. We never change ids: be dumpable.
        libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
        // Keep nothing of the zygote's open (its socket, other warm namespaces) but the pipe.
        close_from_except(0, fds.err_pipe as libc::c_uint);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        build_root(p, fds, true);
        set_hostname(p, fds);
        if p.loopback {
            loopback_up(fds);
        }
        // Ready: `R` and the number of the listening socket made in this network namespace
        // (-1 if none), which the zygote copies with pidfd_getfd before killing us.
        let mut ready = [0u8; HOLDER_READY_SIZE];
        let (tag, num) = ready.split_at_mut(1);
        tag[0] = b'R';
        let mut sock: c_int = -1;
        if let (Some(l), true) = (p.listen, p.loopback) {
            match listen_socket(l.port, l.backlog) {
                Ok(s) => sock = s,
                Err((step, e)) => fail(fds, stage::LISTEN, step, e),
            }
        }
        num.copy_from_slice(&sock.to_ne_bytes());
        sys_write(fds.err_pipe, &ready);
        loop {
            libc::pause();
        }
    }
}
