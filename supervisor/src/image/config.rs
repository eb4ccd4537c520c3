//! The image config (`application/vnd.oci.image.config.v1+json`): what it says about the
//! platform, the layers' diff_ids, and the defaults it gives an app.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The parts of an image config hako reads.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// `config` of an image config (Docker's capitalised names).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

/// What an image config supplies to an app that does not say otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    /// Entrypoint followed by Cmd.
    pub command: Vec<String>,
    /// `Env`, in image order.
    pub env: Vec<(String, String)>,
    pub workdir: Option<PathBuf>,
    /// `User` resolved to numeric ids.
    pub user: Option<(u32, u32)>,
    /// The single `ExposedPorts` entry (tcp).
    pub port: Option<u16>,
}

/// A `User` that cannot be resolved in the image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("image user {user:?}: {reason}")]
pub struct UserError {
    pub user: String,
    pub reason: String,
}

impl ImageConfig {
    /// The defaults for an app; `layers` are the unpacked layers, lowest first, where a
    /// user or group name is looked up in `/etc/passwd` and `/etc/group`.
    pub fn defaults(&self, layers: &[PathBuf]) -> Result<ImageDefaults, UserError> {
        let Some(c) = &self.config else {
            return Ok(ImageDefaults::default());
        };
        let mut command = c.entrypoint.clone().unwrap_or_default();
        command.extend(c.cmd.clone().unwrap_or_default());
        let env = c
            .env
            .iter()
            .flatten()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        let workdir = c
            .working_dir
            .as_deref()
            .filter(|w| w.starts_with('/'))
            .map(PathBuf::from);
        let user = match c.user.as_deref() {
            None | Some("") => None,
            Some(u) => Some(resolve_user(u, layers)?),
        };
        let port = match &c.exposed_ports {
            Some(p) if p.len() == 1 => p.keys().next().and_then(|k| {
                let (n, proto) = k.split_once('/').unwrap_or((k, "tcp"));
                if proto == "tcp" {
                    n.parse().ok()
                } else {
                    None
                }
            }),
            _ => None,
        };
        Ok(ImageDefaults {
            command,
            env,
            workdir,
            user,
            port,
        })
    }
}

/// Reads `rel` from the topmost layer that has it as a regular file (never through a
/// symlink: each component is checked with lstat).
fn read_in_layers(layers: &[PathBuf], rel: &[&str]) -> Option<String> {
    'layers: for layer in layers.iter().rev() {
        let mut p: PathBuf = layer.clone();
        for (i, c) in rel.iter().enumerate() {
            p.push(c);
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue 'layers;
            };
            let last = i == rel.len() - 1;
            if (last && !m.is_file()) || (!last && !m.is_dir()) {
                // A whiteout (char device) or anything else hides lower layers' file.
                return None;
            }
        }
        let meta = std::fs::metadata(&p).ok()?;
        if meta.len() > 4 << 20 {
            return None;
        }
        return std::fs::read_to_string(&p).ok();
    }
    None
}

fn lookup(table: &str, name: &str) -> Option<(u32, u32)> {
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 3 && f[0] == name {
            let id = f[2].parse().ok()?;
            let gid = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(id);
            Some((id, gid))
        } else {
            None
        }
    })
}

/// `USER`, `UID`, `USER:GROUP`, `UID:GID` (names looked up in the image).
pub fn resolve_user(spec: &str, layers: &[PathBuf]) -> Result<(u32, u32), UserError> {
    let err = |reason: &str| UserError {
        user: spec.to_owned(),
        reason: reason.to_owned(),
    };
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => {
            let passwd = read_in_layers(layers, &["etc", "passwd"]).unwrap_or_default();
            let gid = passwd
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 4 && f[2].parse() == Ok(n)).then(|| f[3].parse().ok())?
                })
                .unwrap_or(n);
            (n, gid)
        }
        Err(_) => {
            let passwd = read_in_layers(layers, &["etc", "passwd"])
                .ok_or_else(|| err("the image has no /etc/passwd"))?;
            lookup(&passwd, u).ok_or_else(|| err("no such user in the image's /etc/passwd"))?
        }
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let group = read_in_layers(layers, &["etc", "group"])
                    .ok_or_else(|| err("the image has no /etc/group"))?;
                lookup(&group, g)
                    .map(|(id, _)| id)
                    .ok_or_else(|| err("no such group in the image's /etc/group"))?
            }
        },
    };
    Ok((uid, gid))
}

/// Whether an image config's platform is this host's.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "arm" => "arm",
        other => other,
    };
    ("linux", arch)
}

/// Path of an unpacked layer's files inside the store.
pub fn layer_diff(dir: &Path) -> PathBuf {
    dir.join("diff")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_from_config() {
        let t = tempfile::tempdir().unwrap();
        let l1 = t.path().join("l1");
        std::fs::create_dir_all(l1.join("etc")).unwrap();
        std::fs::write(
            l1.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:33:34::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(l1.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let cfg: ImageConfig = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux",
            "config":{"Entrypoint":["/bin/httpd"],"Cmd":["-f","-p","80"],"Env":["PATH=/bin","A=b=c"],
            "WorkingDir":"/srv","User":"web:staff","ExposedPorts":{"80/tcp":{}}},
            "rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        let d = cfg.defaults(std::slice::from_ref(&l1)).unwrap();
        assert_eq!(d.command, ["/bin/httpd", "-f", "-p", "80"]);
        assert_eq!(
            d.env,
            [("PATH".into(), "/bin".into()), ("A".into(), "b=c".into())]
        );
        assert_eq!(d.workdir, Some(PathBuf::from("/srv")));
        assert_eq!(d.user, Some((33, 50)));
        assert_eq!(d.port, Some(80));
        assert_eq!(
            resolve_user("web", std::slice::from_ref(&l1)).unwrap(),
            (33, 34)
        );
        assert_eq!(
            resolve_user("1000:1000", std::slice::from_ref(&l1)).unwrap(),
            (1000, 1000)
        );
        assert!(resolve_user("nobody", std::slice::from_ref(&l1)).is_err());
        // A higher layer's whiteout hides /etc/passwd.
        let l2 = t.path().join("l2");
        std::fs::create_dir_all(l2.join("etc")).unwrap();
        nix::sys::stat::mknod(
            &l2.join("etc/passwd"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        assert!(resolve_user("web", &[l1, l2]).is_err());
    }
}
