//! One app (`apps[i]`): its keys, and its hosts.
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::names::{check_hostname, is_host_root};
use super::*;
use crate::model::*;
use crate::raw::*;

impl Ctx<'_> {
    pub(super) fn app(&mut self, at: &str, raw: RawApp, governor: &Governor) -> App {
        let p = |key: &str| join(at, key);
        let name = match raw.name {
            None => {
                self.missing(at, "name", "every app needs a name");
                String::new()
            }
            Some(name) => {
                if let Err(why) = check_app_name(&name) {
                    self.fault(&p("name"), why);
                }
                name
            }
        };

        let hosts = self.hosts(at, raw.hosts);
        let path_prefix = raw.path_prefix.map(|prefix| {
            let path = p("path_prefix");
            if !prefix.starts_with('/') {
                self.fault(&path, format!("`{prefix}` must start with `/`"));
            } else if prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '?' || c == '#')
            {
                self.fault(
                    &path,
                    format!("`{prefix}` must not contain spaces, `?` or `#`"),
                );
            }
            prefix
        });

        let image = self.app_image(
            at,
            raw.image.as_deref(),
            raw.read_only,
            [
                raw.command.is_some(),
                raw.port.is_some(),
                raw.workdir.is_some(),
                raw.user.is_some(),
            ],
        );
        let rootfs = match raw.rootfs.as_deref() {
            None if raw.image.is_some() => image.clone().map(Rootfs::Image),
            None => {
                self.missing(at, "rootfs", "give a directory, `host` or an `image`");
                None
            }
            Some(_) if raw.image.is_some() => {
                self.fault(
                    &p("image"),
                    "give exactly one of `image` and `rootfs`, not both",
                );
                None
            }
            Some("host") => Some(Rootfs::Host),
            Some("") => {
                self.fault(&p("rootfs"), "must be a directory or `host`");
                None
            }
            Some(dir) => {
                let resolved = self.resolve(dir);
                match std::fs::metadata(&resolved) {
                    // The host's own root cannot be pivoted into (pivot_root answers EBUSY:
                    // the new root would be the current one) and would expose the whole host.
                    Ok(m) if m.is_dir() && is_host_root(&resolved) => {
                        self.fault(
                            &p("rootfs"),
                            format!(
                                "`{dir}` is the host's root directory, which cannot be a \
                                 container's root; use `rootfs: host` for a read-only view of \
                                 the host's /usr, /bin, /lib and /etc"
                            ),
                        );
                        None
                    }
                    Ok(m) if m.is_dir() => {
                        let linked = crate::ROOT_MOUNT_POINTS.into_iter().find(|d| {
                            std::fs::symlink_metadata(resolved.join(d))
                                .is_ok_and(|m| m.file_type().is_symlink())
                        });
                        if let Some(d) = linked {
                            self.fault(
                                &p("rootfs"),
                                format!(
                                    "`{}` is a symlink; hako mounts on /{d}, so it must be a                                      directory (or absent)",
                                    resolved.join(d).display()
                                ),
                            );
                            None
                        } else {
                            Some(Rootfs::Dir(resolved))
                        }
                    }
                    Ok(_) => {
                        self.fault(
                            &p("rootfs"),
                            format!("`{}` is not a directory", resolved.display()),
                        );
                        None
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        self.fault(
                            &p("rootfs"),
                            format!("directory `{}` does not exist", resolved.display()),
                        );
                        None
                    }
                    Err(e) => {
                        self.fault(
                            &p("rootfs"),
                            format!("cannot use `{}`: {e}", resolved.display()),
                        );
                        None
                    }
                }
            }
        };

        let command = match raw.command {
            None if raw.image.is_some() => Vec::new(),
            None => {
                self.missing(
                    at,
                    "command",
                    "every app needs a command (program and arguments)",
                );
                Vec::new()
            }
            Some(cmd) if cmd.is_empty() => {
                self.fault(
                    &p("command"),
                    "must not be empty; give the program and its arguments",
                );
                cmd
            }
            Some(cmd) => {
                for (i, arg) in cmd.iter().enumerate() {
                    if arg.contains('\0') {
                        self.fault(
                            &format!("{}[{i}]", p("command")),
                            "must not contain a NUL byte",
                        );
                    }
                }
                if cmd[0].trim().is_empty() {
                    self.fault(&format!("{}[0]", p("command")), "the program name is empty");
                } else if let (Some(root), true) = (&rootfs, cmd[0].starts_with('/')) {
                    let (inside, shown) = match root {
                        Rootfs::Host => {
                            (PathBuf::from(&cmd[0]), "the host's filesystem".to_owned())
                        }
                        Rootfs::Dir(d) => (
                            d.join(cmd[0].trim_start_matches('/')),
                            format!("rootfs `{}`", d.display()),
                        ),
                        // Checked once the image is pulled.
                        Rootfs::Image(_) => (PathBuf::new(), String::new()),
                    };
                    if !shown.is_empty() && std::fs::symlink_metadata(&inside).is_err() {
                        self.fault(
                            &format!("{}[0]", p("command")),
                            format!("`{}` does not exist in {shown}", cmd[0]),
                        );
                    }
                }
                cmd
            }
        };

        let mut env = BTreeMap::new();
        for (k, v) in raw.env.unwrap_or_default() {
            let path = format!("{}.{k}", p("env"));
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                self.fault_key(
                    &path,
                    "an environment variable name must be non-empty, without `=` or NUL",
                );
            } else if v.contains('\0') {
                self.fault(&path, "must not contain a NUL byte");
            }
            env.insert(k, v);
        }

        let workdir = match raw.workdir {
            None => PathBuf::from("/"),
            Some(w) => {
                if !w.starts_with('/') {
                    self.fault(
                        &p("workdir"),
                        format!("`{w}` must be an absolute path inside the container"),
                    );
                }
                PathBuf::from(w)
            }
        };

        let port = match raw.port {
            None => 8080,
            Some(n) => match u16::try_from(n) {
                Ok(port) if port > 0 => port,
                _ => {
                    self.fault(&p("port"), format!("{n} is out of range (1..=65535)"));
                    8080
                }
            },
        };

        let network = match raw.network {
            None | Some(RawNetwork::Isolated) => Network::Isolated,
            Some(RawNetwork::Host) => Network::Host,
            Some(RawNetwork::Egress) => Network::Egress,
        };
        let egress_allow = self.egress_allow(at, network, raw.egress_allow);
        let seccomp = match raw.seccomp {
            None | Some(RawSeccomp::Default) => SeccompMode::Default,
            Some(RawSeccomp::Unconfined) => SeccompMode::Unconfined,
        };

        let user = match raw.user {
            None => User::default(),
            Some(u) => User {
                uid: self.id(&p("user.uid"), u.uid),
                gid: self.id(&p("user.gid"), u.gid),
            },
        };

        let limits = self.limits(at, raw.limits.unwrap_or_default(), governor);
        let lifetime = self.lifetime(at, raw.lifetime.unwrap_or_default());
        let scaling = self.scaling(at, raw.scaling.unwrap_or_default());
        let readiness = self.readiness(at, raw.readiness.unwrap_or_default());
        let spike = raw.spike.map(|s| self.spike(at, s, &limits, governor));
        let capabilities = raw.capabilities.map(|caps| self.capabilities(at, caps));
        let expose_host_secrets = raw.expose_host_secrets.unwrap_or(false);
        if raw.expose_host_secrets.is_some() && matches!(rootfs, Some(Rootfs::Dir(_))) {
            self.fault(
                &p("expose_host_secrets"),
                "only meaningful with `rootfs: host`; a directory rootfs has no host secrets \
                 to show or hide: remove the key",
            );
        }

        let (volumes, env_file, hooks) = self.app_extras(at, raw.volumes, raw.env_file, raw.hooks);
        App {
            name,
            hosts,
            path_prefix,
            rootfs: rootfs.unwrap_or(Rootfs::Host),
            command,
            env,
            workdir,
            port,
            network,
            egress_allow,
            user,
            limits,
            lifetime,
            scaling,
            readiness,
            spike,
            capabilities,
            seccomp,
            expose_host_secrets,
            user_namespace: raw.user_namespace.unwrap_or(false),
            volumes,
            env_file,
            hooks,
            redirect_https: raw.redirect_https.unwrap_or(false),
        }
    }

    pub(super) fn hosts(&mut self, at: &str, raw: Option<Vec<String>>) -> Vec<String> {
        let path = join(at, "hosts");
        let mut written = Vec::new();
        let Some(list) = raw else {
            self.missing(at, "hosts", "list at least one hostname routed to this app");
            self.host_written.push(written);
            return Vec::new();
        };
        if list.is_empty() {
            self.fault(&path, "must list at least one hostname");
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, host) in list.into_iter().enumerate() {
            let hp = format!("{path}[{i}]");
            let lower = host.trim().to_ascii_lowercase();
            if let Err(why) = check_hostname(&lower) {
                if lower.is_empty() {
                    self.fault(&hp, "must not be empty");
                } else {
                    self.fault(&hp, format!("`{host}` {why}"));
                }
                continue;
            }
            if let Some(first) = seen.get(&lower) {
                self.fault(
                    &hp,
                    format!("`{lower}` is listed twice (also {path}[{first}])"),
                );
                continue;
            }
            seen.insert(lower.clone(), i);
            out.push(lower);
            written.push(i);
        }
        self.host_written.push(written);
        out
    }
}
