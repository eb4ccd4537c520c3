//! hako's configuration: the YAML contract as typed Rust, with defaults, validation and errors
//! located as `FILE:LINE:COLUMN: message`.
//!
//! Loading is bounded first (file size, nesting depth, alias expansion: see `limits`), then
//! happens in two passes:
//! 1. serde_yaml deserializes the text into a permissive "raw" shape (every key optional, unknown
//!    keys rejected at every depth). A syntax or type error stops here, located by serde_yaml.
//! 2. Every semantic rule is checked and *all* faults are collected. Their positions come from
//!    a key path → line:column index built from the YAML events (saphyr-parser).
//!
//! Relative `rootfs` and `state_dir` paths are resolved against the directory of the
//! configuration file (made absolute with the current directory if needed).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

mod egress;
mod env_file;
mod error;
mod hooks;
mod image;
mod image_ref;
mod index;
mod limits;
mod model;
mod raw;
mod tls;
mod units;
mod validate;
mod volumes;

pub use egress::{
    clashing_route, parse_routes, serve_veth_prefix, Egress, EgressRule, HostRoute, Ipv4Cidr,
    DEFAULT_EGRESS_SUBNET, MAX_EGRESS_PREFIX, PROC_NET_ROUTE, VETH_PREFIX,
};
pub use env_file::{read_env_file, EnvFile, EnvFileError, Secret, MAX_ENV_FILE_BYTES};
pub use error::{Diagnostic, LoadError};
pub use hooks::{find_program, Hook, HookPoint, Hooks, DEFAULT_HOOK_TIMEOUT, MAX_HOOK_TIMEOUT};
pub use image::{is_sha256_digest, ImageRef, ImageSource, ReferenceError, Registry, RegistryRef};
pub use limits::{MAX_ALIAS_EXPANSION, MAX_CONFIG_BYTES, MAX_NESTING_DEPTH};
pub use model::*;
pub use tls::{check_files as check_tls_files, Tls, TlsCertificate};
pub use units::{format_duration, format_size, parse_duration, parse_size};
pub use validate::{
    DEFAULT_SPIKE_CPU_ABOVE, DEFAULT_SPIKE_FOR, MAX_APP_NAME_LEN, MIN_GOVERNOR_INTERVAL,
};
pub use volumes::{Volume, DEFAULT_TMPFS_VOLUME_SIZE, RESERVED_TARGETS, ROOT_MOUNT_POINTS};

/// Reads and validates the configuration file at `path`. A file larger than
/// [`MAX_CONFIG_BYTES`] is refused before it is read whole.
pub fn load_file(path: &Path) -> Result<Config, LoadError> {
    use std::io::Read;
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    if let Ok(meta) = file.metadata() {
        if meta.is_file() && meta.len() > MAX_CONFIG_BYTES {
            return Err(too_large(meta.len(), path));
        }
    }
    let mut bytes = Vec::new();
    // One byte more than the limit tells a file that is too large (even one still growing, or
    // a pipe) without reading it all.
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    load_slice(&bytes, path)
}

/// The diagnostic for a text over [`MAX_CONFIG_BYTES`].
fn too_large(len: u64, file_name: &Path) -> LoadError {
    LoadError::Invalid(vec![Diagnostic {
        file: file_name.to_path_buf(),
        line: 1,
        column: 1,
        message: format!(
            "the file is too large ({len} bytes); a configuration may be at most \
             {MAX_CONFIG_BYTES} bytes (4 MiB)"
        ),
    }])
}

/// Validates configuration bytes; `file_name` is used in diagnostics and to resolve relative
/// paths. Text that is not UTF-8 is reported at the first invalid byte.
pub fn load_slice(bytes: &[u8], file_name: &Path) -> Result<Config, LoadError> {
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large(bytes.len() as u64, file_name));
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => load_str(text, file_name),
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
            let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            let column = String::from_utf8_lossy(&valid[line_start..])
                .chars()
                .count()
                + 1;
            Err(LoadError::Invalid(vec![Diagnostic {
                file: file_name.to_path_buf(),
                line,
                column,
                message: "the file is not valid UTF-8".to_owned(),
            }]))
        }
    }
}

/// Validates configuration text. `file_name` names the file in diagnostics, and relative
/// `rootfs`/`state_dir` paths are resolved against its directory; `rootfs` directories are
/// checked on the real filesystem.
pub fn load_str(text: &str, file_name: &Path) -> Result<Config, LoadError> {
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large(text.len() as u64, file_name));
    }
    if let Err((at, message)) = limits::check(text) {
        return Err(LoadError::Invalid(vec![Diagnostic {
            file: file_name.to_path_buf(),
            line: at.line,
            column: at.column,
            message,
        }]));
    }
    let raw: raw::RawConfig = match serde_yaml::from_str(text) {
        Ok(raw) => raw,
        Err(err) => return Err(LoadError::Invalid(vec![first_stop(text, &err, file_name)])),
    };
    let index = index::Index::build(text);
    let base_dir = base_dir(file_name);
    validate::Ctx::new(&index, file_name, &base_dir)
        .run(raw)
        .map_err(LoadError::Invalid)
}

/// The diagnostic for a file that serde could not deserialize: a syntax error if the text is
/// not YAML at all (checked by deserializing it into `IgnoredAny`), otherwise the type error.
fn first_stop(text: &str, err: &serde_yaml::Error, file_name: &Path) -> Diagnostic {
    let diagnostic = |(line, column, message): (usize, usize, String)| Diagnostic {
        file: file_name.to_path_buf(),
        line,
        column,
        message,
    };
    if let Err(syntax) = serde_yaml::from_str::<serde::de::IgnoredAny>(text) {
        let (line, column, message) = error::from_serde(&syntax);
        let message = if message.starts_with("YAML syntax error") {
            message
        } else {
            format!("YAML syntax error: {message}")
        };
        return diagnostic((line, column, message));
    }
    let (line, column, message) = error::from_serde(err);
    // serde locates a repeated struct key at its mapping; the index knows the repetition.
    if let Some(path) = message.strip_suffix(": duplicate key") {
        let index = index::Index::build(text);
        if let Some(dup) = index.duplicates.iter().find(|d| d.path == path) {
            return diagnostic((
                dup.at.line,
                dup.at.column,
                format!(
                    "{path}: duplicate key (first written at line {} column {})",
                    dup.first.line, dup.first.column
                ),
            ));
        }
    }
    diagnostic((line, column, message))
}

/// The absolute directory of `file`.
fn base_dir(file: &Path) -> PathBuf {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dir.is_absolute() {
        dir
    } else {
        match std::env::current_dir() {
            Ok(cwd) => normalize(&cwd.join(dir)),
            Err(_) => dir,
        }
    }
}

/// Removes `.` components and resolves `..` lexically (no filesystem access).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
