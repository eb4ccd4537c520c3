//! Secrets: an app's `env_file` (`NAME=value` lines), read when the configuration is loaded
//! (and so again on every reload).
//!
//! Format, one variable a line:
//! - `NAME=value`: the value is everything after the first `=`, taken literally (spaces
//!   included, no escapes, no variable expansion); a value written wholly inside matching
//!   double or single quotes (`NAME="a b"`) loses those two quotes;
//! - an optional `export ` before `NAME` is ignored (a file shared with a shell);
//! - blank lines and lines whose first non-blank character is `#` are skipped;
//! - a line without `=`, an empty name or a name with blanks is an error at its line.
//!
//! The file must be a regular file owned by root and not accessible by others (no `o` bits)
//! nor writable by its group: `chmod 600` (or `640` for a group that may read it).
//!
//! Values are held as [`Secret`]s, whose `Debug` and `Display` print `<redacted>`, so that a
//! configuration printed for debugging, a log line or an error message never shows one. An
//! error about a line names the line, never its text.
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Largest accepted env file (1 MiB): secrets are small, and the whole file is read.
pub const MAX_ENV_FILE_BYTES: u64 = 1 << 20;

/// A value that must not be shown: `Debug` and `Display` print `<redacted>`. Read it with
/// [`Secret::expose`] where it is really needed (the container's environment).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself; for the container's environment only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// An app's `env_file`, read: its path and its variables in file order (a name written twice
/// keeps its last value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFile {
    /// Absolute path of the file.
    pub path: PathBuf,
    /// The variables; names are shown, values are [`Secret`]s.
    pub vars: Vec<(String, Secret)>,
}

/// Why an env file cannot be used. Never holds a value or a line's text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvFileError {
    #[error("cannot read env_file {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("env_file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("env_file {path} is owned by uid {uid}, not root; chown root {path}")]
    NotRoot { path: PathBuf, uid: u32 },
    #[error("env_file {path}: mode {mode:04o} is {what}; chmod 600 {path}")]
    Mode {
        path: PathBuf,
        mode: u32,
        what: &'static str,
    },
    #[error("env_file {path} is larger than {MAX_ENV_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("env_file {path}:{line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
}

/// Checks the owner and mode of an env file: owned by root, no access for others, not
/// writable by the group.
pub fn check_owner_and_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), EnvFileError> {
    if !meta.is_file() {
        return Err(EnvFileError::NotAFile {
            path: path.to_owned(),
        });
    }
    if meta.uid() != 0 {
        return Err(EnvFileError::NotRoot {
            path: path.to_owned(),
            uid: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    let what = if mode & 0o004 != 0 {
        "readable by others"
    } else if mode & 0o003 != 0 {
        "accessible by others"
    } else if mode & 0o020 != 0 {
        "writable by its group"
    } else {
        return Ok(());
    };
    Err(EnvFileError::Mode {
        path: path.to_owned(),
        mode,
        what,
    })
}

/// Reads and parses the env file at `path` (absolute), checking its owner and mode first.
pub fn read_env_file(path: &Path) -> Result<EnvFile, EnvFileError> {
    use std::io::Read;
    let io = |e: std::io::Error| EnvFileError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    // O_NOFOLLOW is not used: a symlink owned by anyone may point at a root-owned 0600 file,
    // and the checks below are made on the opened file itself, not on the name.
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    check_owner_and_mode(path, &meta)?;
    if meta.len() > MAX_ENV_FILE_BYTES {
        return Err(EnvFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_ENV_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_ENV_FILE_BYTES {
        return Err(EnvFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    let vars = parse(&bytes).map_err(|(line, reason)| EnvFileError::Line {
        path: path.to_owned(),
        line,
        reason,
    })?;
    Ok(EnvFile {
        path: path.to_owned(),
        vars,
    })
}

/// Parses env file text; an error is `(line number, reason)`.
pub(crate) fn parse(bytes: &[u8]) -> Result<Vec<(String, Secret)>, (usize, &'static str)> {
    let mut vars: Vec<(String, Secret)> = Vec::new();
    for (i, raw_line) in bytes.split(|b| *b == b'\n').enumerate() {
        let line_no = i + 1;
        let Ok(line) = std::str::from_utf8(raw_line) else {
            return Err((line_no, "not valid UTF-8"));
        };
        let line = line.strip_suffix('\r').unwrap_or(line);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let trimmed = trimmed.strip_prefix("export ").unwrap_or(trimmed);
        let Some((name, value)) = trimmed.split_once('=') else {
            return Err((line_no, "no `=`; write NAME=value"));
        };
        let name = name.trim_end();
        if name.is_empty() {
            return Err((line_no, "empty variable name before `=`"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        {
            return Err((
                line_no,
                "the variable name may hold only letters, digits, `_`, `.` and `-`",
            ));
        }
        if value.contains('\0') {
            return Err((line_no, "the value holds a NUL byte"));
        }
        let value = unquote(value);
        vars.retain(|(n, _)| n != name);
        vars.push((name.to_owned(), Secret::new(value)));
    }
    Ok(vars)
}

/// `"x"` or `'x'` → `x`; anything else as it is.
fn unquote(v: &str) -> &str {
    let b = v.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lines_comments_quotes_and_repeats() {
        let text = b"# a comment\n\n  # indented comment\nA=1\nexport B = two words \nC=\"quoted = x\"\r\nD='single'\nE=\nA=again\nF=\"unbalanced\n";
        let vars = parse(text).unwrap();
        let got: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (n.as_str(), v.expose())).collect();
        assert_eq!(
            got,
            [
                ("B", " two words "),
                ("C", "quoted = x"),
                ("D", "single"),
                ("E", ""),
                ("A", "again"),
                ("F", "\"unbalanced"),
            ]
        );
    }

    #[test]
    fn a_line_without_equals_is_named_by_number_and_not_echoed() {
        let err = parse(b"A=1\n# c\nhunter2\n").unwrap_err();
        assert_eq!(err.0, 3);
        let err = parse(b"=x\n").unwrap_err();
        assert_eq!(err.0, 1);
        let err = parse(b"A B=x\n").unwrap_err();
        assert_eq!(err.0, 1);
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        let f = EnvFile {
            path: "/x".into(),
            vars: vec![("TOKEN".into(), s)],
        };
        let shown = format!("{f:?}");
        assert!(
            shown.contains("TOKEN") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn mode_and_owner_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        std::fs::write(&path, "TOKEN=hunter2\n").unwrap();
        let chmod = |m| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m));
        chmod(0o644).unwrap();
        let root = nix_is_root();
        let err = read_env_file(&path).unwrap_err();
        if root {
            assert!(
                matches!(err, EnvFileError::Mode { mode: 0o644, .. }),
                "{err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains("mode 0644 is readable by others; chmod 600"),
                "{msg}"
            );
            chmod(0o620).unwrap();
            assert!(read_env_file(&path)
                .unwrap_err()
                .to_string()
                .contains("writable by its group"));
            chmod(0o600).unwrap();
            let f = read_env_file(&path).unwrap();
            assert_eq!(f.vars[0].1.expose(), "hunter2");
            chmod(0o640).unwrap();
            assert!(read_env_file(&path).is_ok());
        } else {
            assert!(matches!(err, EnvFileError::NotRoot { .. }), "{err}");
        }
        let missing = read_env_file(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }

    fn nix_is_root() -> bool {
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }
}
