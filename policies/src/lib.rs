//! hako's configuration: the YAML contract as typed Rust, with defaults, validation and errors
//! located as `FILE:LINE:COLUMN: message`.
//!
//! Loading happens in two passes:
//! 1. serde_yaml deserializes the text into a permissive "raw" shape (every key optional, unknown
//!    keys rejected at every depth). A syntax or type error stops here, located by serde_yaml.
//! 2. Every semantic rule is checked and *all* faults are collected. Their positions come from
//!    a key path → line:column index built from the YAML events (saphyr-parser).
//!
//! Relative `rootfs` and `state_dir` paths are resolved against the directory of the
//! configuration file (made absolute with the current directory if needed).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

mod error;
mod index;
mod model;
mod raw;
mod units;
mod validate;

pub use error::{Diagnostic, LoadError};
pub use model::*;
pub use units::{format_duration, format_size, parse_duration, parse_size};
pub use validate::{
    DEFAULT_SPIKE_CPU_ABOVE, DEFAULT_SPIKE_FOR, MAX_APP_NAME_LEN, MIN_GOVERNOR_INTERVAL,
};

/// Reads and validates the configuration file at `path`.
pub fn load_file(path: &Path) -> Result<Config, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_slice(&bytes, path)
}

/// Validates configuration bytes; `file_name` is used in diagnostics and to resolve relative
/// paths. Text that is not UTF-8 is reported at the first invalid byte.
pub fn load_slice(bytes: &[u8], file_name: &Path) -> Result<Config, LoadError> {
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
