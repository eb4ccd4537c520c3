//! Outbound networking (`network: egress`): the top-level `egress: {subnet}`, an app's
//! `egress_allow` rules, the names hako gives its host-side interfaces, and the check that the
//! subnet does not clash with a route of the host.
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::Deserialize;

/// Default `egress.subnet`: a /16 of the private 10/8 that home routers, cloud VPCs and
/// container engines (Docker: 172.17/16, libvirt: 192.168.122/24, Kubernetes pods: usually
/// 10.42-10.244) rarely use.
pub const DEFAULT_EGRESS_SUBNET: Ipv4Cidr = Ipv4Cidr {
    addr: Ipv4Addr::new(10, 213, 0, 0),
    prefix: 16,
};

/// Longest accepted `egress.subnet` prefix: a /29 holds four instance links.
pub const MAX_EGRESS_PREFIX: u8 = 29;

/// Where the host's IPv4 routes are read from.
pub const PROC_NET_ROUTE: &str = "/proc/net/route";

/// Every host-side interface hako creates starts with this (`ip link show | grep hk`).
pub const VETH_PREFIX: &str = "hk";

/// An IPv4 network: `addr` has no bits set beyond `prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The network mask as a host-order integer.
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        let m = self.mask() & other.mask();
        (u32::from(self.addr) & m) == (u32::from(other.addr) & m)
    }

    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(ip) & self.mask()) == u32::from(self.addr)
    }

    /// Number of addresses.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;

    /// `A.B.C.D/N` (or `A.B.C.D`, a /32); host bits beyond the prefix are refused.
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("`{s}` is not an IPv4 address or CIDR like 10.0.0.0/8"))?;
        let prefix = match p {
            None => 32,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= 32 && !p.starts_with('+') => n,
                _ => return Err(format!("`{s}`: the prefix length must be 0 to 32")),
            },
        };
        let c = Ipv4Cidr { addr, prefix };
        let net = Ipv4Addr::from(u32::from(addr) & c.mask());
        if net != addr {
            return Err(format!(
                "`{s}` has host bits set beyond /{prefix} (did you mean {net}/{prefix}?)"
            ));
        }
        Ok(c)
    }
}

/// One `egress_allow` entry: a network, and optionally one port (TCP and UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EgressRule {
    pub net: Ipv4Cidr,
    pub port: Option<u16>,
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.net),
            None => write!(f, "{}", self.net),
        }
    }
}

impl std::str::FromStr for EgressRule {
    type Err = String;

    /// `CIDR` or `CIDR:PORT` (`10.0.0.0/8`, `192.0.2.7:5432`, `198.51.100.0/24:443`).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (net, port) = match s.rsplit_once(':') {
            Some((n, p)) => {
                let port = match p.parse::<u16>() {
                    Ok(n) if n > 0 && !p.starts_with('+') => n,
                    _ => {
                        return Err(format!(
                            "`{s}`: the port after `:` must be 1 to 65535 (write CIDR or CIDR:PORT)"
                        ))
                    }
                };
                (n, Some(port))
            }
            None => (s, None),
        };
        let net = net
            .parse::<Ipv4Cidr>()
            .map_err(|e| format!("{e}; an egress_allow entry is CIDR or CIDR:PORT (IPv4)"))?;
        Ok(EgressRule { net, port })
    }
}

/// The top-level `egress` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Egress {
    /// Addresses of the instance links (`subnet`); each `egress` instance takes a /31 of it.
    pub subnet: Ipv4Cidr,
}

impl Default for Egress {
    fn default() -> Self {
        Egress {
            subnet: DEFAULT_EGRESS_SUBNET,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawEgress {
    pub subnet: Option<String>,
}

/// The interface-name prefix of one `hako serve`'s host-side veths: [`VETH_PREFIX`] and four
/// hex digits derived from its `cgroup_parent` (unique per serve on a host), so that each
/// serve finds and removes its own and never another's.
pub fn serve_veth_prefix(cgroup_parent: &str) -> String {
    // FNV-1a, folded to 16 bits.
    let mut h: u32 = 0x811c_9dc5;
    for b in cgroup_parent.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{VETH_PREFIX}{:04x}", (h ^ (h >> 16)) & 0xffff)
}

/// A route of the host that clashes with the egress subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    pub iface: String,
    pub dest: Ipv4Cidr,
}

impl fmt::Display for HostRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dev {}", self.dest, self.iface)
    }
}

/// Parses `/proc/net/route` text: (interface, destination) of every route except default
/// routes (which cover everything and clash with nothing in particular).
pub fn parse_routes(text: &str) -> Vec<HostRoute> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // The kernel prints the network-order word as a native integer: its native bytes are
        // the address bytes.
        let (Ok(dest), Ok(mask)) = (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
        else {
            continue;
        };
        let dest = u32::from_be_bytes(dest.to_ne_bytes());
        let mask = u32::from_be_bytes(mask.to_ne_bytes());
        if mask == 0 {
            continue;
        }
        let prefix = mask.count_ones() as u8;
        out.push(HostRoute {
            iface: f[0].to_owned(),
            dest: Ipv4Cidr {
                addr: Ipv4Addr::from(dest & mask),
                prefix,
            },
        });
    }
    out
}

/// The first host route (read from `route_table`, usually [`PROC_NET_ROUTE`]) overlapping
/// `subnet`, ignoring the interfaces of this serve (`own_prefix`, from
/// [`serve_veth_prefix`]). An unreadable table clashes with nothing.
pub fn clashing_route(
    subnet: &Ipv4Cidr,
    route_table: &Path,
    own_prefix: &str,
) -> Option<HostRoute> {
    let text = std::fs::read_to_string(route_table).ok()?;
    parse_routes(&text)
        .into_iter()
        .find(|r| !r.iface.starts_with(own_prefix) && r.dest.overlaps(subnet))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_and_rules_parse_or_say_why() {
        let c: Ipv4Cidr = "10.213.0.0/16".parse().unwrap();
        assert_eq!(c, DEFAULT_EGRESS_SUBNET);
        assert_eq!("192.0.2.7".parse::<Ipv4Cidr>().unwrap().prefix, 32);
        assert!("10.213.0.1/16"
            .parse::<Ipv4Cidr>()
            .unwrap_err()
            .contains("did you mean 10.213.0.0/16"));
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("example.com".parse::<Ipv4Cidr>().is_err());
        let r: EgressRule = "198.51.100.0/24:443".parse().unwrap();
        assert_eq!(r.port, Some(443));
        assert_eq!(r.to_string(), "198.51.100.0/24:443");
        assert_eq!("1.2.3.4:5432".parse::<EgressRule>().unwrap().net.prefix, 32);
        assert!("1.2.3.4:0".parse::<EgressRule>().is_err());
        assert!("1.2.3.4:http".parse::<EgressRule>().is_err());
        assert!("::1".parse::<EgressRule>().is_err());
    }

    #[test]
    fn overlap_and_routes() {
        let a: Ipv4Cidr = "10.213.0.0/16".parse().unwrap();
        assert!(a.overlaps(&"10.0.0.0/8".parse().unwrap()));
        assert!(a.overlaps(&"10.213.7.0/24".parse().unwrap()));
        assert!(!a.overlaps(&"10.214.0.0/16".parse().unwrap()));
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            hk1234\t0000D50A\t00000000\t0001\t0\t0\t0\tFEFFFFFF\t0\t0\t0\n\
            wg0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n";
        let routes = parse_routes(table);
        assert_eq!(routes.len(), 3, "the default route is skipped");
        assert_eq!(routes[0].dest.to_string(), "192.0.2.0/24");
        assert_eq!(routes[1].dest.to_string(), "10.213.0.0/31");
        let dir = std::env::temp_dir().join(format!("hako-routes-{}", std::process::id()));
        std::fs::write(&dir, table).unwrap();
        let hit = clashing_route(&a, &dir, "hk1234").unwrap();
        assert_eq!(hit.to_string(), "10.0.0.0/8 dev wg0");
        assert!(clashing_route(&"172.31.0.0/16".parse().unwrap(), &dir, "hk1234").is_none());
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn veth_prefixes_differ_per_serve() {
        let a = serve_veth_prefix("hako");
        assert_eq!(a.len(), 6);
        assert!(a.starts_with(VETH_PREFIX));
        assert_ne!(a, serve_veth_prefix("hako-test-1"));
        assert_eq!(a, serve_veth_prefix("hako"));
    }
}
