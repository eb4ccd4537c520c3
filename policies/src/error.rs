//! Located diagnostics and the loader's error type.
use std::fmt;
use std::path::PathBuf;

/// One fault in a configuration file, located by 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The configuration file as it was named to the loader.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong; starts with the key path (`apps[2].limits.memory: ...`).
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration: every fault found, in file order.
    #[error("{}", DisplayAll(.0))]
    Invalid(Vec<Diagnostic>),
}

impl LoadError {
    /// The diagnostics of an invalid file (empty for I/O errors).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            LoadError::Invalid(d) => d,
            LoadError::Io { .. } => &[],
        }
    }
}

struct DisplayAll<'a>(&'a [Diagnostic]);

impl fmt::Display for DisplayAll<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Turns a serde_yaml error into (line, column, message), the message naming the key.
pub(crate) fn from_serde(err: &serde_yaml::Error) -> (usize, usize, String) {
    let text = err.to_string();
    let (line, column, message) = match err.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            let message = match text.find(&suffix) {
                Some(at) => format!("{}{}", &text[..at], &text[at + suffix.len()..]),
                None => text,
            };
            (loc.line().max(1), loc.column().max(1), message)
        }
        None => (1, 1, text),
    };
    let message = match message.as_str() {
        "EOF while parsing a value" => {
            "the file is empty; expected a mapping with at least `apps`".to_owned()
        }
        m if m.starts_with("invalid type: unit value, expected struct RawConfig")
            || m.starts_with("invalid type: null, expected struct RawConfig") =>
        {
            "the file is empty; expected a mapping with at least `apps`".to_owned()
        }
        "deserializing from YAML containing more than one document is not supported" => {
            "the file holds more than one YAML document (`---`); hako reads exactly one".to_owned()
        }
        _ => rewrite_duplicate_field(&rewrite_unknown_field(&message)),
    };
    (line, column, tidy_type_names(&message))
}

/// `apps[0].limits: unknown field `cpus`, expected one of `cpu`, ...` becomes
/// `apps[0].limits.cpus: unknown key; expected one of `cpu`, ... (did you mean `cpu`?)`.
fn rewrite_unknown_field(message: &str) -> String {
    let Some((path, key, after)) = field_path(message, "unknown field `") else {
        return message.to_owned();
    };
    let tail = after.trim_start_matches(',').trim();
    let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    let suggestion = expected
        .iter()
        .map(|cand| (edit_distance(key, cand), *cand))
        .filter(|(d, cand)| *d <= 2.max(cand.len() / 3))
        .min()
        .map(|(_, cand)| format!(" (did you mean `{cand}`?)"))
        .unwrap_or_default();
    if tail.is_empty() {
        format!("{path}: unknown key{suggestion}")
    } else {
        format!("{path}: unknown key; {tail}{suggestion}")
    }
}

/// `apps[0]: duplicate field `name`` becomes `apps[0].name: duplicate key`.
fn rewrite_duplicate_field(message: &str) -> String {
    match field_path(message, "duplicate field `") {
        Some((path, _, _)) => format!("{path}: duplicate key"),
        None => message.to_owned(),
    }
}

/// Splits `<parent>: <mark><key>`<after>` into the dotted path `<parent>.<key>` (just `<key>`
/// at the top level), the key and what follows its closing backtick.
fn field_path<'m>(message: &'m str, mark: &str) -> Option<(String, &'m str, &'m str)> {
    let at = message.find(mark)?;
    let parent = message[..at].trim_end_matches(": ").trim_end();
    let rest = &message[at + mark.len()..];
    let end = rest.find('`')?;
    let key = &rest[..end];
    let path = if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    };
    Some((path, key, &rest[end + 1..]))
}

/// Internal type names must not leak into user messages.
fn tidy_type_names(message: &str) -> String {
    let mut out = message.to_owned();
    for (from, to) in [
        ("struct RawConfig", "a mapping of settings"),
        ("struct RawApp", "a mapping describing an app"),
        ("struct RawUser", "a mapping with `uid` and `gid`"),
        ("struct RawLimits", "a mapping with `cpu`, `memory`, `pids`"),
        ("struct RawLifetime", "a mapping of lifetime settings"),
        ("struct RawScaling", "a mapping of scaling settings"),
        ("struct RawReadiness", "a mapping of readiness settings"),
        ("struct RawSpike", "a mapping of spike settings"),
        ("struct RawGovernor", "a mapping of governor settings"),
        ("enum RawNetwork", "`isolated` or `host`"),
        ("enum RawSeccomp", "`default` or `unconfined`"),
        ("enum RawProbe", "`connect`, `http` or `listen_fds`"),
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected u64", "expected a non-negative integer"),
    ] {
        out = out.replace(from, to);
    }
    out
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_is_named_with_its_path_and_a_suggestion() {
        let m = rewrite_unknown_field(
            "apps[0].limits: unknown field `cpus`, expected one of `cpu`, `memory`, `pids`",
        );
        assert_eq!(
            m,
            "apps[0].limits.cpus: unknown key; expected one of `cpu`, `memory`, `pids` \
             (did you mean `cpu`?)"
        );
        let m = rewrite_unknown_field("unknown field `zzz`, expected `a` or `b`");
        assert_eq!(m, "zzz: unknown key; expected `a` or `b`");
    }

    #[test]
    fn diagnostics_display_as_file_line_column() {
        let d = Diagnostic {
            file: PathBuf::from("x.yaml"),
            line: 3,
            column: 7,
            message: "apps[0].port: out of range".into(),
        };
        assert_eq!(d.to_string(), "x.yaml:3:7: apps[0].port: out of range");
        let e = LoadError::Invalid(vec![d.clone(), d]);
        assert_eq!(e.to_string().lines().count(), 2);
    }
}
