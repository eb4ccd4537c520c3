//! Outbound connectivity for a container network namespace (`network: egress`): a veth pair
//! whose host end is named `<veth_prefix><6 hex digits>` and whose container end is `eth0`,
//! a /31 of the egress subnet on the pair (host end even, container end odd), the default
//! route through the host end. Built ahead of the boot, together with the warm namespaces
//! (off the boot path, by rtnetlink: see [`netlink`]); removed when the namespace is released.
//! Masquerading and filtering are the supervisor's (its own nftables table, matching the host
//! end's name).
use std::collections::{HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

pub mod netlink;

use netlink::Netlink;

/// The name of the container's end of the pair.
pub const CONTAINER_IF: &str = "eth0";

/// Longest accepted [`EgressSpec::veth_prefix`]: with the 6 hex digits appended, a name fits
/// the kernel's 15 characters.
pub const MAX_VETH_PREFIX: usize = 9;

/// Where the host's resolver configuration is read from.
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// The resolver list of systemd-resolved (its real upstreams), used when `/etc/resolv.conf`
/// points at the stub `127.0.0.53`, which a container's own network namespace cannot reach.
pub const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";

/// A container's outbound link, part of its [`crate::ContainerSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressSpec {
    /// Host ends are named this plus 6 hex digits (at most [`MAX_VETH_PREFIX`] characters;
    /// the supervisor's nftables rules match it).
    pub veth_prefix: String,
    /// The subnet the /31 of each link is taken from (network address and prefix length).
    pub subnet: Ipv4Addr,
    pub prefix: u8,
}

/// Errors of the egress setup, naming the step and the interface or address.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("{op} {what}: {errno}")]
    Sys {
        op: &'static str,
        what: String,
        errno: Errno,
    },
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("netlink: {0}")]
    Protocol(String),
    #[error("egress subnet {0} has no free /31 left (every address is in use)")]
    Exhausted(String),
    #[error("invalid egress spec: {0}")]
    Invalid(String),
}

impl EgressError {
    pub(crate) fn sys(op: &'static str, what: impl Into<String>, errno: Errno) -> Self {
        EgressError::Sys {
            op,
            what: what.into(),
            errno,
        }
    }

    /// The errno, when the failure was a system call's.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            EgressError::Sys { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Free /31 pairs of one subnet, in this process.
struct Pairs {
    subnet: u32,
    prefix: u8,
    /// Pairs never handed out: `next..end`.
    next: u32,
    end: u32,
    /// Released pairs, reused oldest first (the kernel may still be tearing down a link).
    free: VecDeque<u32>,
    used: HashSet<u32>,
}

struct Allocator {
    pairs: Vec<Pairs>,
    /// Link name counter (6 hex digits), started from the clock so that a restarted zygote
    /// does not retry the names of its predecessor's links.
    counter: u32,
}

static ALLOC: Mutex<Option<Allocator>> = Mutex::new(None);

/// The pair indexes the host already routes under `prefix`-named links (links of a
/// predecessor zygote of this serve, still alive with their containers).
fn pairs_in_use(veth_prefix: &str, subnet: u32, prefix: u8) -> HashSet<u32> {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let mut out = HashSet::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || !f[0].starts_with(veth_prefix) {
            continue;
        }
        if let Ok(d) = u32::from_str_radix(f[1], 16) {
            let d = u32::from_be_bytes(d.to_ne_bytes());
            if d & mask == subnet {
                out.insert((d - subnet) / 2);
            }
        }
    }
    out
}

fn take_pair(spec: &EgressSpec) -> Result<(u32, u32), EgressError> {
    let subnet = u32::from(spec.subnet);
    let mut guard = ALLOC.lock().unwrap_or_else(|p| p.into_inner());
    let alloc = guard.get_or_insert_with(|| Allocator {
        pairs: Vec::new(),
        counter: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
            .unwrap_or(0)
            & 0xff_ffff,
    });
    if !alloc
        .pairs
        .iter()
        .any(|p| p.subnet == subnet && p.prefix == spec.prefix)
    {
        let size = 1u64 << (32 - u32::from(spec.prefix));
        alloc.pairs.push(Pairs {
            subnet,
            prefix: spec.prefix,
            // Pair 0 holds the network address, the last one the broadcast address of the
            // subnet: both are left out, so every address looks ordinary.
            next: 1,
            end: (size / 2).saturating_sub(1) as u32,
            free: VecDeque::new(),
            used: pairs_in_use(
                &spec.veth_prefix[..spec.veth_prefix.len().min(6)],
                subnet,
                spec.prefix,
            ),
        });
    }
    alloc.counter = (alloc.counter + 1) & 0xff_ffff;
    let counter = alloc.counter;
    let pairs = alloc
        .pairs
        .iter_mut()
        .find(|p| p.subnet == subnet && p.prefix == spec.prefix)
        .ok_or_else(|| EgressError::Invalid("allocator lost its subnet".into()))?;
    let pair = loop {
        let candidate = if let Some(p) = pairs.free.pop_front() {
            p
        } else if pairs.next < pairs.end {
            pairs.next += 1;
            pairs.next - 1
        } else {
            return Err(EgressError::Exhausted(format!(
                "{}/{}",
                spec.subnet, spec.prefix
            )));
        };
        if pairs.used.insert(candidate) {
            break candidate;
        }
    };
    Ok((pair, counter))
}

fn give_back(spec_subnet: u32, prefix: u8, pair: u32) {
    let mut guard = ALLOC.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = guard.as_mut().and_then(|a| {
        a.pairs
            .iter_mut()
            .find(|p| p.subnet == spec_subnet && p.prefix == prefix)
    }) {
        if p.used.remove(&pair) {
            p.free.push_back(pair);
        }
    }
}

/// A live link: the host end `host_if` (address `host_addr`), the container's `eth0`
/// (`container_addr`). Dropping it deletes the pair and returns its addresses.
#[derive(Debug)]
pub struct EgressLink {
    pub host_if: String,
    pub host_addr: Ipv4Addr,
    pub container_addr: Ipv4Addr,
    subnet: u32,
    prefix: u8,
    pair: u32,
}

impl Drop for EgressLink {
    fn drop(&mut self) {
        match Netlink::open().and_then(|mut nl| nl.del_link(&self.host_if)) {
            Ok(_) => give_back(self.subnet, self.prefix, self.pair),
            Err(error) => {
                // Its address stays taken: reusing it could clash with the old link.
                tracing::warn!(link = %self.host_if, %error, "cannot delete an egress link");
            }
        }
    }
}

/// Checks what the kernel would refuse later.
pub fn check_spec(spec: &EgressSpec) -> Result<(), EgressError> {
    if spec.veth_prefix.is_empty()
        || spec.veth_prefix.len() > MAX_VETH_PREFIX
        || !spec.veth_prefix.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(EgressError::Invalid(format!(
            "veth prefix {:?}: 1 to {MAX_VETH_PREFIX} letters or digits",
            spec.veth_prefix
        )));
    }
    if !(8..=29).contains(&spec.prefix) {
        return Err(EgressError::Invalid(format!(
            "subnet {}/{}: the prefix length must be 8 to 29",
            spec.subnet, spec.prefix
        )));
    }
    Ok(())
}

/// Gives the network namespace `netns` (a descriptor of it) its outbound link.
pub fn setup(netns: RawFd, spec: &EgressSpec) -> Result<EgressLink, EgressError> {
    check_spec(spec)?;
    let mut host = Netlink::open()?;
    let mut tries = 0;
    let (pair, name) = loop {
        let (pair, counter) = take_pair(spec)?;
        let name = format!("{}{counter:06x}", spec.veth_prefix);
        match host.add_veth(&name, CONTAINER_IF, netns) {
            Ok(()) => break (pair, name),
            // A name left by a predecessor: take the next one.
            Err(e) if e.errno() == Some(Errno::EEXIST) && tries < 8 => {
                give_back(u32::from(spec.subnet), spec.prefix, pair);
                tries += 1;
            }
            Err(e) => {
                give_back(u32::from(spec.subnet), spec.prefix, pair);
                return Err(e);
            }
        }
    };
    let base = u32::from(spec.subnet) + pair * 2;
    let link = EgressLink {
        host_if: name,
        host_addr: Ipv4Addr::from(base),
        container_addr: Ipv4Addr::from(base + 1),
        subnet: u32::from(spec.subnet),
        prefix: spec.prefix,
        pair,
    };
    // From here on, a failure drops `link`, which deletes the pair.
    let host_index = host.index_of(&link.host_if)?;
    host.add_addr(host_index, link.host_addr, 31)?;
    host.set_up(host_index)?;
    let mut inside = Netlink::open_in(netns)?;
    let index = inside.index_of(CONTAINER_IF)?;
    inside.add_addr(index, link.container_addr, 31)?;
    inside.set_up(index)?;
    inside.add_default_route(index, link.host_addr)?;
    Ok(link)
}

/// Deletes every link whose name starts with `veth_prefix` (what a killed serve left); returns
/// their names.
pub fn remove_links(veth_prefix: &str, sys_class_net: &Path) -> Result<Vec<String>, EgressError> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(sys_class_net) {
        Ok(e) => e,
        Err(e) => return Err(EgressError::Io(sys_class_net.display().to_string(), e)),
    };
    let mut nl = Netlink::open()?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(veth_prefix) && nl.del_link(&name)? {
            removed.push(name);
        }
    }
    Ok(removed)
}

/// The host file to show as the container's resolver configuration: `resolv` (normally
/// [`HOST_RESOLV_CONF`]) with its symlinks resolved, or systemd-resolved's upstream list
/// `resolved` when every nameserver of `resolv` is a loopback address (the stub
/// `127.0.0.53`, a local dnsmasq...), unreachable from a container. `None`: no usable file.
pub fn host_resolver(resolv: &Path, resolved: &Path) -> Option<PathBuf> {
    let real = resolv.canonicalize().ok()?;
    let text = std::fs::read_to_string(&real).ok()?;
    let servers = nameservers(&text);
    if !servers.is_empty() && servers.iter().all(|s| s.is_loopback()) {
        return resolved.canonicalize().ok();
    }
    Some(real)
}

/// The IPv4 `nameserver` lines of a resolv.conf text.
pub fn nameservers(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|a| a.parse().ok())
        })
        .collect()
}

/// The path at which the container's `/etc/resolv.conf` resolves inside `root` (following a
/// symlink chain within the container's view, e.g. `../run/systemd/resolve/stub-resolv.conf`,
/// whose target lies on the instance's own `/run`): the volume target for the resolver file.
pub fn resolver_target(root: &Path) -> PathBuf {
    let mut path = PathBuf::from("/etc/resolv.conf");
    for _ in 0..8 {
        let on_host = root.join(path.strip_prefix("/").unwrap_or(&path));
        match std::fs::read_link(&on_host) {
            Ok(to) => {
                let next = if to.is_absolute() {
                    to
                } else {
                    path.parent().unwrap_or(Path::new("/")).join(to)
                };
                // Normalise `..` lexically (inside the container's root).
                let mut norm = PathBuf::from("/");
                for c in next.components() {
                    match c {
                        std::path::Component::ParentDir => {
                            norm.pop();
                        }
                        std::path::Component::Normal(n) => norm.push(n),
                        _ => {}
                    }
                }
                path = norm;
            }
            Err(_) => return path,
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_files_and_targets() {
        let dir = std::env::temp_dir().join(format!("hako-resolv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::create_dir_all(dir.join("up")).unwrap();
        let stub = dir.join("etc/stub.conf");
        std::fs::write(&stub, "nameserver 127.0.0.53\noptions edns0\n").unwrap();
        let up = dir.join("up/resolv.conf");
        std::fs::write(&up, "nameserver 192.0.2.53\n").unwrap();
        std::os::unix::fs::symlink("stub.conf", dir.join("etc/resolv.conf")).unwrap();
        // The stub is replaced by resolved's upstream list.
        assert_eq!(
            host_resolver(&dir.join("etc/resolv.conf"), &up),
            Some(up.canonicalize().unwrap())
        );
        assert_eq!(
            host_resolver(&up, &dir.join("none")),
            Some(up.canonicalize().unwrap())
        );
        assert_eq!(
            nameservers("nameserver 10.0.0.1\nnameserver ::1\n"),
            [Ipv4Addr::new(10, 0, 0, 1)]
        );
        // Targets: a plain file, a symlink into /run.
        assert_eq!(
            resolver_target(&dir.join("up")),
            PathBuf::from("/etc/resolv.conf")
        );
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(
            "../run/systemd/resolve/stub-resolv.conf",
            root.join("etc/resolv.conf"),
        )
        .unwrap();
        assert_eq!(
            resolver_target(&root),
            PathBuf::from("/run/systemd/resolve/stub-resolv.conf")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn specs_are_checked() {
        let ok = EgressSpec {
            veth_prefix: "hk12ab001".into(),
            subnet: Ipv4Addr::new(10, 213, 0, 0),
            prefix: 16,
        };
        assert!(check_spec(&ok).is_ok());
        let long = EgressSpec {
            veth_prefix: "hk12ab0012".into(),
            ..ok.clone()
        };
        assert!(check_spec(&long).is_err());
    }

    /// A namespace made by a thread of ours gets its link: the address and default route are
    /// there inside, the host end exists on the host; dropping the link removes the pair.
    #[test]
    fn a_namespace_gets_its_link_and_loses_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED egress link: needs root");
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let ns = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
            tx.send(ns).unwrap();
            done_rx.recv().unwrap();
            std::fs::read_to_string("/proc/thread-self/net/route").unwrap()
        });
        let ns = rx.recv().unwrap();
        use std::os::fd::AsRawFd;
        let spec = EgressSpec {
            veth_prefix: format!("hkt{:04x}", std::process::id() & 0xffff),
            subnet: Ipv4Addr::new(10, 199, 0, 0),
            prefix: 24,
        };
        let link = setup(ns.as_raw_fd(), &spec).unwrap();
        assert!(link.host_if.starts_with(&spec.veth_prefix) && link.host_if.len() <= 15);
        assert_eq!(
            u32::from(link.container_addr),
            u32::from(link.host_addr) + 1
        );
        let sys = PathBuf::from("/sys/class/net").join(&link.host_if);
        assert!(sys.exists(), "host end {} exists", link.host_if);
        done_tx.send(()).unwrap();
        let routes = t.join().unwrap();
        // A default route through eth0 inside.
        assert!(
            routes.lines().any(|l| l.starts_with("eth0\t00000000")),
            "{routes}"
        );
        drop(link);
        assert!(!sys.exists(), "host end removed");
        assert!(remove_links(&spec.veth_prefix, Path::new("/sys/class/net"))
            .unwrap()
            .is_empty());
    }
}
