//! The top-level keys (listen addresses, state directory, clients, ...) and the faults that
//! involve several apps.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::model::*;
use crate::raw::*;

impl Ctx<'_> {
    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
        let allow_public_admin = raw.allow_public_admin.unwrap_or(false);
        let listen = self.addr("listen", raw.listen.as_deref(), DEFAULT_LISTEN);
        let admin = self.addr("admin", raw.admin.as_deref(), DEFAULT_ADMIN);
        if !admin.ip().is_loopback() && !allow_public_admin {
            self.fault(
                "admin",
                format!(
                    "{admin} is not a loopback address; the admin API has no authentication \
                     (set `allow_public_admin: true` to expose it anyway)"
                ),
            );
        }
        if listen.port() == admin.port()
            && listen.port() != 0
            && (listen.ip() == admin.ip()
                || listen.ip().is_unspecified()
                || admin.ip().is_unspecified())
        {
            self.fault("admin", format!("{admin} overlaps with listen {listen}"));
        }
        let state_dir = match raw.state_dir.as_deref() {
            None => PathBuf::from(DEFAULT_STATE_DIR),
            Some("") => {
                self.fault("state_dir", "must not be empty");
                PathBuf::from(DEFAULT_STATE_DIR)
            }
            Some(dir) => self.resolve(dir),
        };
        let cgroup_parent = match raw.cgroup_parent {
            None => DEFAULT_CGROUP_PARENT.to_owned(),
            Some(name) => {
                if let Err(e) = check_app_name(&name) {
                    self.fault("cgroup_parent", e);
                } else if name == RUN_CGROUP_PARENT {
                    self.fault(
                        "cgroup_parent",
                        format!("{name:?} is reserved for the containers of `hako run`"),
                    );
                }
                name
            }
        };
        let governor = self.governor(raw.governor.unwrap_or_default());
        let clients = self.clients(
            raw.client_header_timeout,
            raw.client_idle_timeout,
            raw.max_connections_per_client,
        );
        let node_name = raw.node_name.filter(|n| self.node_name_ok(n));
        let drain_timeout = match raw.drain_timeout {
            Some(d) if d.is_zero() => {
                self.fault("drain_timeout", "must be greater than zero");
                DEFAULT_DRAIN_TIMEOUT
            }
            Some(d) => d,
            None => DEFAULT_DRAIN_TIMEOUT,
        };
        let mut apps = Vec::new();
        match raw.apps {
            None => self.missing("", "apps", "at least one app is required"),
            Some(list) if list.is_empty() => {
                self.fault("apps", "no apps configured; at least one app is required")
            }
            Some(list) => {
                for (i, raw_app) in list.into_iter().enumerate() {
                    apps.push(self.app(&format!("apps[{i}]"), raw_app, &governor));
                }
            }
        }
        self.cross_app(&apps);
        let egress = self.egress(
            raw.egress,
            &apps,
            &cgroup_parent,
            std::path::Path::new(crate::PROC_NET_ROUTE),
        );
        let tls = self.tls(raw.tls, listen, admin);
        let registries = self.registries(raw.registries);
        for (i, app) in apps.iter().enumerate() {
            if app.redirect_https && tls.is_none() {
                self.fault(
                    &format!("apps[{i}].redirect_https"),
                    "needs a top-level `tls` listener to redirect to",
                );
            }
        }
        Config {
            listen,
            admin,
            allow_public_admin,
            state_dir,
            cgroup_parent,
            apps,
            governor,
            egress,
            clients,
            tls,
            registries,
            node_name,
            drain_timeout,
        }
    }

    /// `node_name`: 1 to 64 characters of letters, digits, `.`, `-` and `_` (a host name's
    /// alphabet), so that it is safe in log fields, JSON and metric label values.
    fn node_name_ok(&mut self, name: &str) -> bool {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !ok {
            self.fault(
                "node_name",
                format!("`{name}` is not a node name: 1 to 64 letters, digits, `.`, `-` or `_`"),
            );
        }
        ok
    }

    pub(super) fn clients(
        &mut self,
        header: Option<Duration>,
        idle: Option<Duration>,
        per_client: Option<i64>,
    ) -> Clients {
        let d = Clients::default();
        let positive = |ctx: &mut Self, key: &str, v: Option<Duration>, default: Duration| match v {
            Some(v) if v.is_zero() => {
                ctx.fault(key, "must be greater than zero");
                default
            }
            Some(v) => v,
            None => default,
        };
        Clients {
            header_timeout: positive(self, "client_header_timeout", header, d.header_timeout),
            idle_timeout: positive(self, "client_idle_timeout", idle, d.idle_timeout),
            max_connections_per_client: per_client
                .map(|n| self.count("max_connections_per_client", n, 1))
                .unwrap_or(d.max_connections_per_client),
        }
    }

    pub(super) fn addr(&mut self, path: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let fallback: SocketAddr = default
            .parse()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        let Some(text) = value else { return fallback };
        match text.trim().parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.fault(
                    path,
                    format!("`{text}` is not an IP address with a port, like `{default}`"),
                );
                fallback
            }
        }
    }

    pub(super) fn resolve(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            // Lexically drop `.` components so messages show clean paths.
            self.base_dir
                .join(path)
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect()
        }
    }

    pub(super) fn tls(
        &mut self,
        raw: Option<crate::tls::RawTls>,
        listen: SocketAddr,
        admin: SocketAddr,
    ) -> Option<crate::Tls> {
        let mut faults = Vec::new();
        let tls = crate::tls::validate(
            raw?,
            &[("listen", listen), ("admin", admin)],
            &|p| self.resolve(p),
            &mut |path, msg| faults.push((path, msg)),
        );
        for (path, msg) in faults {
            self.fault(&path, msg);
        }
        tls
    }

    /// Faults that involve several apps: duplicate names, a host routed to two apps.
    pub(super) fn cross_app(&mut self, apps: &[App]) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut routes: HashMap<(String, String), (usize, usize)> = HashMap::new();
        for (i, app) in apps.iter().enumerate() {
            if !app.name.is_empty() {
                if let Some(&first) = names.get(app.name.as_str()) {
                    let line = self.line_of(&format!("apps[{first}].name"));
                    self.fault(
                        &format!("apps[{i}].name"),
                        format!(
                            "duplicate app name `{}` (also apps[{first}], line {line})",
                            app.name
                        ),
                    );
                } else {
                    names.insert(&app.name, i);
                }
            }
            let prefix = app
                .path_prefix
                .as_deref()
                .unwrap_or("/")
                .trim_end_matches('/')
                .to_owned();
            let written_at = self.host_written.get(i).cloned().unwrap_or_default();
            for (h, host) in app.hosts.iter().enumerate() {
                // `hosts` only holds valid entries; `written` is the index in the file.
                let written = written_at.get(h).copied().unwrap_or(h);
                let key = (host.clone(), prefix.clone());
                if let Some(&(other, other_h)) = routes.get(&key) {
                    let other_name = apps[other].name.clone();
                    let line = self.line_of(&format!("apps[{other}].hosts[{other_h}]"));
                    let route = format!(
                        "{host}{}",
                        if prefix.is_empty() {
                            String::new()
                        } else {
                            prefix.clone()
                        }
                    );
                    self.fault(
                        &format!("apps[{i}].hosts[{written}]"),
                        format!("`{route}` is already routed to app `{other_name}` (apps[{other}].hosts[{other_h}], line {line})"),
                    );
                } else {
                    routes.insert(key, (i, written));
                }
            }
        }
    }
}
