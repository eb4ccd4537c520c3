//! What `network: egress` changes on the host, owned by one `hako serve`: its nftables table
//! ([`nft`]), the host's IPv4 forwarding (turned on only while an egress app exists, and only
//! turned off again if this hako turned it on and no other hako table remains), and the host
//! ends of the instances' veth pairs (made by the launcher's zygote with the warm namespaces,
//! named after the serve: [`hako_policies::serve_veth_prefix`]). Everything is removed at
//! shutdown and, after a `kill -9`, by [`recover`] at the next start.
pub mod nft;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use hako_launcher::egress::{self as link, EgressSpec};
use hako_launcher::spec::ContainerSpec;
use hako_launcher::VolumeSpec;
use hako_policies::{serve_veth_prefix, App, Config, Ipv4Cidr, Network};

/// Where the host's IPv4 forwarding switch lives.
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The marker (in `state_dir`) saying that this serve turned forwarding on: kept across a
/// `kill -9`, so that the next start knows to turn it off again.
pub const FORWARD_MARKER: &str = "egress-ip_forward-was-off";

/// Failures of the host-side egress setup.
#[derive(Debug, thiserror::Error)]
pub enum EgressHostError {
    #[error("nft ({what}): {message}")]
    Nft { what: String, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("egress link: {0}")]
    Link(#[from] link::EgressError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EgressHostError + '_ {
    move |source| EgressHostError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Paths of the host, behind parameters for tests.
#[derive(Debug, Clone)]
pub struct HostPaths {
    pub ip_forward: PathBuf,
    pub sys_class_net: PathBuf,
    pub resolv_conf: PathBuf,
    pub resolved_upstreams: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            ip_forward: PathBuf::from(IP_FORWARD),
            sys_class_net: PathBuf::from("/sys/class/net"),
            resolv_conf: PathBuf::from(link::HOST_RESOLV_CONF),
            resolved_upstreams: PathBuf::from(link::RESOLVED_UPSTREAMS),
        }
    }
}

struct Inner {
    subnet: Ipv4Cidr,
    /// App name -> its index in link names (3 hex digits), stable for the serve's life.
    index: HashMap<String, u16>,
    next: u16,
    /// The table is installed.
    installed: bool,
    /// This serve (or the one it recovered from) turned forwarding on.
    turned_forwarding_on: bool,
    resolver: Option<PathBuf>,
}

/// The host side of `network: egress` for one serve.
pub struct EgressHost {
    table: String,
    serve_prefix: String,
    state_dir: PathBuf,
    paths: HostPaths,
    inner: Mutex<Inner>,
}

/// The serve's [`EgressHost`], consulted when the launcher's spec of an app is built.
static CURRENT: RwLock<Option<Arc<EgressHost>>> = RwLock::new(None);

/// Removes what a previous serve with this `cgroup_parent` left (its table, its links; its
/// forwarding switch stays as it is until [`EgressHost::shutdown`] decides, the marker says
/// who turned it on). Returns how many things were removed.
pub fn recover(cgroup_parent: &str, paths: &HostPaths) -> usize {
    let mut removed = 0;
    let table = nft::table_name(cgroup_parent);
    match nft::delete(&table) {
        Ok(true) => {
            tracing::warn!(table = %table, "removed the nftables table of a previous hako");
            removed += 1;
        }
        Ok(false) => {}
        Err(error) => tracing::debug!(%error, "no nftables table to recover"),
    }
    let prefix = serve_veth_prefix(cgroup_parent);
    match link::remove_links(&prefix, &paths.sys_class_net) {
        Ok(links) if !links.is_empty() => {
            tracing::warn!(links = ?links, "removed the veth links of a previous hako");
            removed += links.len();
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot remove the veth links of a previous hako"),
    }
    removed
}

impl EgressHost {
    /// Recovers what a killed predecessor left, then applies `cfg` (a table and forwarding
    /// only when an app uses `network: egress`) and becomes the serve's egress host.
    pub fn start(cfg: &Config, paths: HostPaths) -> Result<Arc<EgressHost>, EgressHostError> {
        recover(&cfg.cgroup_parent, &paths);
        let marker = cfg.state_dir.join(FORWARD_MARKER);
        let host = Arc::new(EgressHost {
            table: nft::table_name(&cfg.cgroup_parent),
            serve_prefix: serve_veth_prefix(&cfg.cgroup_parent),
            state_dir: cfg.state_dir.clone(),
            paths,
            inner: Mutex::new(Inner {
                subnet: cfg.egress.subnet,
                index: HashMap::new(),
                next: 0,
                installed: false,
                turned_forwarding_on: marker.exists(),
                resolver: None,
            }),
        });
        host.apply(&cfg.apps)?;
        *CURRENT.write().unwrap_or_else(|p| p.into_inner()) = Some(host.clone());
        Ok(host)
    }

    /// The table's name (`nft list table ip NAME`).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Brings the host in line with `apps` (at start and at every reload): app indexes,
    /// forwarding, the table. Nothing is done while no app uses `network: egress`.
    pub fn apply(&self, apps: &[App]) -> Result<(), EgressHostError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let egress: Vec<&App> = apps
            .iter()
            .filter(|a| a.network == Network::Egress)
            .collect();
        for a in &egress {
            if !inner.index.contains_key(&a.name) {
                let i = inner.next;
                inner.next = inner.next.wrapping_add(1) & 0xfff;
                inner.index.insert(a.name.clone(), i);
            }
        }
        if egress.is_empty() && !inner.installed {
            return Ok(());
        }
        inner.resolver =
            link::host_resolver(&self.paths.resolv_conf, &self.paths.resolved_upstreams);
        if inner.resolver.is_none() {
            tracing::warn!(path = %self.paths.resolv_conf.display(), "no usable resolver configuration: egress apps get none");
        }
        let nameservers: Vec<Ipv4Addr> = inner
            .resolver
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| link::nameservers(&t))
            .unwrap_or_default();
        if nameservers.iter().any(|n| n.is_loopback()) {
            tracing::warn!("the host's resolver is on a loopback address, which an egress app cannot reach (docs/operations.md)");
        }
        self.ensure_forwarding(&mut inner)?;
        let rules: Vec<nft::AppRules> = egress
            .iter()
            .map(|a| nft::AppRules {
                name: a.name.clone(),
                veth_prefix: format!("{}{:03x}", self.serve_prefix, inner.index[&a.name]),
                allow: a.egress_allow.clone(),
            })
            .collect();
        let script = nft::script(
            &self.table,
            &self.serve_prefix,
            &inner.subnet,
            &rules,
            &nameservers,
            inner.turned_forwarding_on,
        );
        nft::install(&self.table, &script)?;
        if !inner.installed {
            tracing::info!(table = %self.table, subnet = %inner.subnet, links = %format!("{}*", self.serve_prefix), "egress: nftables table installed");
        }
        inner.installed = true;
        Ok(())
    }

    fn ensure_forwarding(&self, inner: &mut Inner) -> Result<(), EgressHostError> {
        let path = &self.paths.ip_forward;
        let now = std::fs::read_to_string(path).map_err(io(path))?;
        if now.trim() == "1" {
            return Ok(());
        }
        let marker = self.state_dir.join(FORWARD_MARKER);
        std::fs::write(&marker, b"hako turned net.ipv4.ip_forward on\n").map_err(io(&marker))?;
        std::fs::write(path, b"1").map_err(io(path))?;
        inner.turned_forwarding_on = true;
        tracing::warn!("egress: turned net.ipv4.ip_forward on (off again at shutdown); forwarding of anything but hako's links is dropped by hako's table meanwhile");
        Ok(())
    }

    /// The launcher's egress spec of `app` and its resolver volume (`None` for other apps).
    pub fn spec_for(
        &self,
        app: &App,
        rootfs_root: &Path,
    ) -> Option<(EgressSpec, Option<VolumeSpec>)> {
        if app.network != Network::Egress {
            return None;
        }
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let index = *inner.index.get(&app.name)?;
        let spec = EgressSpec {
            veth_prefix: format!("{}{index:03x}", self.serve_prefix),
            subnet: inner.subnet.addr,
            prefix: inner.subnet.prefix,
        };
        let volume = inner.resolver.clone().map(|source| VolumeSpec::Bind {
            source,
            target: link::resolver_target(rootfs_root),
            read_only: true,
        });
        Some((spec, volume))
    }

    /// Removes the table and the links; turns forwarding off again if this serve turned it on
    /// and no other hako table remains (another serve may still need it).
    pub fn shutdown(&self) {
        {
            let mut current = CURRENT.write().unwrap_or_else(|p| p.into_inner());
            if current
                .as_ref()
                .is_some_and(|c| std::ptr::eq(c.as_ref(), self))
            {
                *current = None;
            }
        }
        if let Err(error) = nft::delete(&self.table) {
            tracing::warn!(table = %self.table, %error, "cannot delete the nftables table");
        }
        match link::remove_links(&self.serve_prefix, &self.paths.sys_class_net) {
            Ok(links) if !links.is_empty() => {
                tracing::debug!(count = links.len(), "egress links removed")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot remove the egress links"),
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.installed = false;
        if !inner.turned_forwarding_on {
            return;
        }
        let others = nft::tables()
            .map(|t| t.iter().any(|n| n.starts_with("hako-")))
            .unwrap_or(true);
        if others {
            tracing::info!("egress: leaving net.ipv4.ip_forward on for another hako's table");
            return;
        }
        match std::fs::write(&self.paths.ip_forward, b"0") {
            Ok(()) => {
                tracing::info!("egress: net.ipv4.ip_forward turned off again");
                let _ = std::fs::remove_file(self.state_dir.join(FORWARD_MARKER));
                inner.turned_forwarding_on = false;
            }
            Err(error) => tracing::warn!(%error, "cannot turn net.ipv4.ip_forward off again"),
        }
    }
}

/// The serve's egress host, if one was started.
pub fn current() -> Option<Arc<EgressHost>> {
    CURRENT.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Fills in `spec`'s egress part for `app` from the serve's [`EgressHost`] (nothing without
/// one, e.g. in `hako run`, or for other network modes).
pub fn apply_to_spec(app: &App, spec: &mut ContainerSpec) {
    let host = CURRENT.read().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(host) = host else {
        return;
    };
    let root = match &spec.rootfs {
        hako_launcher::spec::RootfsSpec::Host => PathBuf::from("/"),
        // An image's root is only known per instance: its resolver file goes to the usual
        // place.
        hako_launcher::spec::RootfsSpec::Dir(d) if d.as_os_str().is_empty() => {
            PathBuf::from("/nonexistent")
        }
        hako_launcher::spec::RootfsSpec::Dir(d) => d.clone(),
    };
    if let Some((egress, volume)) = host.spec_for(app, &root) {
        spec.egress = Some(egress);
        if let Some(v) = volume {
            spec.volumes.push(v);
        }
    }
}
