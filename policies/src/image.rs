//! `image`, `read_only` (per app) and `registries` (top level).
use std::path::PathBuf;

use serde::Deserialize;

pub use crate::image_ref::{is_sha256_digest, ImageRef, ReferenceError, RegistryRef};

/// An app's rootfs from an image (`image: REF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    /// The reference, canonical (`docker://HOST/NAME:TAG`, `oci:PATH[:TAG]`,
    /// `docker-archive:PATH`; relative paths resolved against the config's directory).
    pub reference: ImageRef,
    /// `read_only: true`: the image's layers without a writable layer.
    pub read_only: bool,
    /// Which of `command`, `port`, `workdir`, `user` the app wrote itself (else the image's
    /// config supplies them).
    pub command_set: bool,
    pub port_set: bool,
    pub workdir_set: bool,
    pub user_set: bool,
}

/// One entry of `registries`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// `HOST[:PORT]` as written in `docker://` references.
    pub host: String,
    /// Plain HTTP instead of TLS.
    pub insecure: bool,
    /// A PEM file of extra CA certificates.
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    /// A file holding the password (read at each pull, never logged).
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRegistry {
    pub host: Option<String>,
    pub insecure: Option<bool>,
    pub ca_file: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<String>,
}

/// Validates `registries`; faults go to `fault(path, message)`.
pub(crate) fn validate_registries(
    raw: Vec<RawRegistry>,
    resolve: &dyn Fn(&str) -> PathBuf,
    fault: &mut dyn FnMut(String, String),
) -> Vec<Registry> {
    let mut out: Vec<Registry> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let at = format!("registries[{i}]");
        let host = match r.host.as_deref().map(str::trim) {
            None | Some("") => {
                fault(
                    at.clone(),
                    "missing `host`, like `registry.example:5000`".into(),
                );
                continue;
            }
            Some(h) => {
                if ImageRef::parse(&format!("docker://{h}/x")).is_err() {
                    fault(
                        format!("{at}.host"),
                        format!("`{h}` is not a registry HOST[:PORT]"),
                    );
                    continue;
                }
                h.to_owned()
            }
        };
        if out.iter().any(|o| o.host == host) {
            fault(format!("{at}.host"), format!("`{host}` is listed twice"));
        }
        let file = |key: &str, v: Option<String>, fault: &mut dyn FnMut(String, String)| {
            let v = v?;
            let p = resolve(&v);
            if !p.is_file() {
                fault(
                    format!("{at}.{key}"),
                    format!("file `{}` does not exist", p.display()),
                );
            }
            Some(p)
        };
        let ca_file = file("ca_file", r.ca_file, fault);
        let password_file = file("password_file", r.password_file, fault);
        if r.username.is_some() != password_file.is_some() {
            fault(
                at.clone(),
                "`username` and `password_file` go together".into(),
            );
        }
        let insecure = r.insecure.unwrap_or(false);
        if insecure && ca_file.is_some() {
            fault(
                format!("{at}.ca_file"),
                "meaningless with `insecure: true` (plain HTTP has no certificates)".into(),
            );
        }
        out.push(Registry {
            host,
            insecure,
            ca_file,
            username: r.username,
            password_file,
        });
    }
    out
}
