//! Async-signal-safe (child only): `lo` up, and the inherited listening socket (created, then
//! installed on fd 3).
use std::ffi::{c_int, c_void};

use super::records::{listen_step, stage, ChildFds, LISTEN_FD};
use super::sys::{errno, fail, sys_close};

#[repr(C)]
struct Ifreq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Brings up `lo` in the current network namespace.
///
/// # Safety
/// Child only (see the module documentation).
pub(super) unsafe fn loopback_up(fds: &ChildFds) {
    // SAFETY: socket/ioctl/close on a local socket and a stack `Ifreq`.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            fail(fds, stage::LOOPBACK, 0, errno());
        }
        let mut req = Ifreq {
            name: [0; 16],
            flags: 0,
            _pad: [0; 22],
        };
        req.name[0] = b'l';
        req.name[1] = b'o';
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req as *mut Ifreq as *mut c_void) != 0 {
            fail(fds, stage::LOOPBACK, 1, errno());
        }
        req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(s, libc::SIOCSIFFLAGS, &mut req as *mut Ifreq as *mut c_void) != 0 {
            fail(fds, stage::LOOPBACK, 2, errno());
        }
        sys_close(s);
    }
}

/// Creates a TCP socket listening on `0.0.0.0:port` in the caller's network namespace
/// (`SO_REUSEADDR`, `SOCK_CLOEXEC`). On failure returns the [`listen_step`] and the errno,
/// with nothing left open. Async-signal-safe: raw system calls on stack values only, so the
/// child, the holder and the parent all use it.
///
/// # Safety
/// None beyond the system calls themselves; `unsafe` because it is called in the child.
pub(crate) unsafe fn listen_socket(port: u16, backlog: u32) -> Result<c_int, (u32, i32)> {
    // SAFETY: socket/setsockopt/bind/listen/close on a descriptor we own and on stack values
    // whose sizes are passed along.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err((listen_step::SOCKET, errno()));
        }
        let one: c_int = 1;
        if libc::setsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const c_int).cast(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        ) != 0
        {
            let e = errno();
            sys_close(s);
            return Err((listen_step::REUSEADDR, e));
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = port.to_be();
        addr.sin_addr.s_addr = libc::INADDR_ANY.to_be();
        if libc::bind(
            s,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            let e = errno();
            sys_close(s);
            return Err((listen_step::BIND, e));
        }
        let backlog = backlog.min(c_int::MAX as u32) as c_int;
        if libc::listen(s, backlog) != 0 {
            let e = errno();
            sys_close(s);
            return Err((listen_step::LISTEN, e));
        }
        Ok(s)
    }
}

/// Moves the listening socket `sock` onto fd 3 without `FD_CLOEXEC` and closes the original.
/// The error pipe is moved first if it occupies fd 3 (hence `fds` is mutable).
///
/// # Safety
/// Child only (see the module documentation), after stdio is in place.
pub(super) unsafe fn install_listen_fd(fds: &mut ChildFds, sock: c_int) {
    // SAFETY: fcntl/dup2/close on descriptors of our own table.
    unsafe {
        if fds.err_pipe == LISTEN_FD {
            let moved = libc::fcntl(fds.err_pipe, libc::F_DUPFD_CLOEXEC, LISTEN_FD + 1);
            if moved < 0 {
                fail(fds, stage::LISTEN, listen_step::MOVE_PIPE, errno());
            }
            fds.err_pipe = moved;
        }
        if sock == LISTEN_FD {
            // dup2(3, 3) would keep FD_CLOEXEC: clear it explicitly.
            if libc::fcntl(LISTEN_FD, libc::F_SETFD, 0) != 0 {
                fail(fds, stage::LISTEN, listen_step::CLEAR_CLOEXEC, errno());
            }
        } else {
            if libc::dup2(sock, LISTEN_FD) < 0 {
                fail(fds, stage::LISTEN, listen_step::DUP2, errno());
            }
            sys_close(sock);
        }
    }
}
