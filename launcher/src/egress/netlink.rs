//! A few rtnetlink requests, by hand (no async runtime, no allocation beyond one buffer per
//! request): create a veth pair whose peer is born inside another network namespace, add an
//! IPv4 address, bring a link up, add a default route, delete a link. Never used in a
//! container's child path: only by the zygote's helper thread (or its serving thread for a
//! boot that found no warm namespace), and by the supervisor's cleanup.
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::EgressError;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const NLA_F_NESTED: u16 = 1 << 15;

/// A NETLINK_ROUTE socket of the network namespace it was created in.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// One request being built: header, fixed part, attributes (4-byte aligned).
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16, fixed: &[u8]) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0u8; 16]);
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(fixed);
        let mut m = Msg { buf };
        m.pad();
        m
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    fn str_attr(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut d = s.as_bytes().to_vec();
        d.push(0);
        self.attr(kind, &d)
    }

    /// Opens a nested attribute; returns its offset for [`Msg::end`].
    fn begin(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn raw(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// `struct ifinfomsg` with an index and the up flag (set/changed as asked).
fn ifinfomsg(index: i32, up: bool) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = libc::AF_UNSPEC as u8;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    if up {
        b[8..12].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        b[12..16].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    }
    b
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, EgressError> {
        // SAFETY: plain socket(2); the result is checked and owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(EgressError::sys("socket(NETLINK_ROUTE)", "", Errno::last()));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Netlink { fd, seq: 1 })
    }

    /// A socket of the network namespace `netns` (a `/proc/PID/ns/net` descriptor): the calling
    /// thread enters it just long enough to create the socket, then returns (aborting the
    /// process if it cannot: it would run on in the wrong namespace).
    pub fn open_in(netns: RawFd) -> Result<Netlink, EgressError> {
        let home = std::fs::File::open("/proc/thread-self/ns/net")
            .map_err(|e| EgressError::Io("open /proc/thread-self/ns/net".into(), e))?;
        // SAFETY: setns with a namespace descriptor the caller keeps open; only this thread
        // changes namespace.
        if unsafe { libc::setns(netns, libc::CLONE_NEWNET) } != 0 {
            return Err(EgressError::sys(
                "setns",
                "container network namespace",
                Errno::last(),
            ));
        }
        let nl = Netlink::open();
        // SAFETY: as above, back to the namespace this thread came from.
        if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            tracing::error!("cannot return to the host network namespace; aborting");
            std::process::abort();
        }
        nl
    }

    /// Sends one request and waits for its acknowledgement; returns the replies' payloads
    /// of type `want` (for a GET).
    fn call(&mut self, msg: Msg, what: &str) -> Result<Vec<Vec<u8>>, EgressError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = msg.finish(seq);
        // SAFETY: sendto on our socket with a zeroed sockaddr_nl (the kernel, pid 0).
        let sent = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                std::ptr::addr_of!(sa).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(EgressError::sys("netlink send", what, Errno::last()));
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16384];
        loop {
            // SAFETY: recv into our own buffer of the given length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = Errno::last();
                if e == Errno::EINTR {
                    continue;
                }
                return Err(EgressError::sys("netlink recv", what, e));
            }
            let mut off = 0usize;
            let n = n as usize;
            while off + 16 <= n {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or([0; 4])) as usize;
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let rseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap_or([0; 4]));
                if len < 16 || off + len > n {
                    return Err(EgressError::Protocol(format!("{what}: truncated reply")));
                }
                let payload = &buf[off + 16..off + len];
                if rseq == seq {
                    match kind {
                        NLMSG_ERROR => {
                            let code =
                                i32::from_ne_bytes(payload[..4].try_into().unwrap_or([0; 4]));
                            return if code == 0 {
                                Ok(out)
                            } else {
                                Err(EgressError::sys("netlink", what, Errno::from_raw(-code)))
                            };
                        }
                        NLMSG_DONE => return Ok(out),
                        _ => out.push(payload.to_vec()),
                    }
                }
                off += (len + 3) & !3;
            }
        }
    }

    /// Creates the veth pair `host` (in this socket's namespace) / `peer` (born inside
    /// `netns`, a namespace descriptor).
    pub fn add_veth(&mut self, host: &str, peer: &str, netns: RawFd) -> Result<(), EgressError> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifinfomsg(0, false));
        m.str_attr(IFLA_IFNAME, host);
        let info = m.begin(IFLA_LINKINFO);
        m.str_attr(IFLA_INFO_KIND, "veth");
        let data = m.begin(IFLA_INFO_DATA);
        let p = m.begin(VETH_INFO_PEER);
        m.raw(&ifinfomsg(0, false));
        m.str_attr(IFLA_IFNAME, peer);
        m.attr(IFLA_NET_NS_FD, &(netns as u32).to_ne_bytes());
        m.end(p);
        m.end(data);
        m.end(info);
        self.call(m, &format!("create veth {host}")).map(drop)
    }

    /// Adds `addr/prefix` to link `index`.
    pub fn add_addr(&mut self, index: i32, addr: Ipv4Addr, prefix: u8) -> Result<(), EgressError> {
        let mut fixed = [0u8; 8];
        fixed[0] = libc::AF_INET as u8;
        fixed[1] = prefix;
        fixed[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &fixed);
        m.attr(IFA_LOCAL, &addr.octets());
        m.attr(IFA_ADDRESS, &addr.octets());
        self.call(m, &format!("add address {addr}/{prefix}"))
            .map(drop)
    }

    /// Brings link `index` up.
    pub fn set_up(&mut self, index: i32) -> Result<(), EgressError> {
        let m = Msg::new(RTM_NEWLINK, 0, &ifinfomsg(index, true));
        self.call(m, &format!("set link {index} up")).map(drop)
    }

    /// Adds the default route via `gateway` on link `index` (main table).
    pub fn add_default_route(&mut self, index: i32, gateway: Ipv4Addr) -> Result<(), EgressError> {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut fixed = [0u8; 12];
        fixed[0] = libc::AF_INET as u8;
        fixed[4] = libc::RT_TABLE_MAIN;
        fixed[5] = libc::RTPROT_BOOT;
        fixed[6] = libc::RT_SCOPE_UNIVERSE;
        fixed[7] = libc::RTN_UNICAST;
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &fixed);
        m.attr(RTA_GATEWAY, &gateway.octets());
        m.attr(RTA_OIF, &(index as u32).to_ne_bytes());
        self.call(m, &format!("add default route via {gateway}"))
            .map(drop)
    }

    /// The index of the link named `name` in this socket's namespace.
    pub fn index_of(&mut self, name: &str) -> Result<i32, EgressError> {
        let mut m = Msg::new(RTM_GETLINK, 0, &ifinfomsg(0, false));
        m.str_attr(IFLA_IFNAME, name);
        let replies = self.call(m, &format!("find link {name}"))?;
        replies
            .iter()
            .find(|p| p.len() >= 8)
            .map(|p| i32::from_ne_bytes([p[4], p[5], p[6], p[7]]))
            .ok_or_else(|| EgressError::Protocol(format!("no reply describing link {name}")))
    }

    /// Deletes the link named `name` (`Ok(false)`: there was none).
    pub fn del_link(&mut self, name: &str) -> Result<bool, EgressError> {
        let mut m = Msg::new(RTM_DELLINK, 0, &ifinfomsg(0, false));
        m.str_attr(IFLA_IFNAME, name);
        match self.call(m, &format!("delete link {name}")) {
            Ok(_) => Ok(true),
            Err(EgressError::Sys {
                errno: Errno::ENODEV,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
