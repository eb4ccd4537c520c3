//! Image references: `docker://HOST[:PORT]/NAME[:TAG|@sha256:DIGEST]`, `oci:PATH[:TAG]`,
//! `docker-archive:PATH`.
use std::fmt;
use std::path::PathBuf;

/// A reference that could not be parsed; carries the reference text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("image reference {0:?}: unknown scheme (expected docker://, oci: or docker-archive:)")]
    UnknownScheme(String),
    #[error("image reference {reference:?}: {reason}")]
    Invalid { reference: String, reason: String },
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// A registry speaking the OCI distribution API.
    Registry {
        /// `HOST[:PORT]`.
        host: String,
        /// The repository (`library/alpine`).
        name: String,
        /// A tag or a `sha256:` digest.
        reference: RegistryRef,
    },
    /// An OCI image layout directory with an optional tag (`org.opencontainers.image.ref.name`).
    OciLayout { path: PathBuf, tag: Option<String> },
    /// A `docker save` tarball.
    DockerArchive { path: PathBuf },
}

/// A tag or a digest inside a repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegistryRef {
    Tag(String),
    Digest(String),
}

fn invalid(reference: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError::Invalid {
        reference: reference.to_owned(),
        reason: reason.into(),
    }
}

/// Whether `d` is `sha256:` followed by 64 lowercase hex digits.
pub fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl ImageRef {
    /// Parses a reference written in a config or on the command line.
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        if let Some(rest) = s.strip_prefix("docker://") {
            let (host, path) = rest
                .split_once('/')
                .ok_or_else(|| invalid(s, "expected docker://HOST[:PORT]/NAME[:TAG]"))?;
            if host.is_empty()
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
            {
                return Err(invalid(s, format!("bad registry host {host:?}")));
            }
            let (name, reference) = if let Some((n, d)) = path.split_once('@') {
                if !is_sha256_digest(d) {
                    return Err(invalid(
                        s,
                        "a digest is sha256: and 64 lowercase hex digits",
                    ));
                }
                (n, RegistryRef::Digest(d.to_owned()))
            } else {
                // The tag follows the last ':' after the last '/'.
                let last = path.rfind('/').map_or(0, |i| i + 1);
                match path[last..].rfind(':') {
                    Some(i) => (
                        &path[..last + i],
                        RegistryRef::Tag(path[last + i + 1..].to_owned()),
                    ),
                    None => (path, RegistryRef::Tag("latest".to_owned())),
                }
            };
            if name.is_empty()
                || name.split('/').any(|c| {
                    c.is_empty()
                        || !c.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                        })
                })
            {
                return Err(invalid(s, format!("bad repository name {name:?}")));
            }
            if let RegistryRef::Tag(t) = &reference {
                if t.is_empty()
                    || t.len() > 128
                    || !t
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    return Err(invalid(s, format!("bad tag {t:?}")));
                }
            }
            return Ok(ImageRef::Registry {
                host: host.to_owned(),
                name: name.to_owned(),
                reference,
            });
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            if rest.is_empty() {
                return Err(invalid(s, "expected oci:PATH[:TAG]"));
            }
            let (path, tag) = match rest.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') && !p.is_empty() => (p, Some(t.to_owned())),
                _ => (rest, None),
            };
            return Ok(ImageRef::OciLayout {
                path: PathBuf::from(path),
                tag,
            });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            if rest.is_empty() {
                return Err(invalid(s, "expected docker-archive:PATH"));
            }
            return Ok(ImageRef::DockerArchive {
                path: PathBuf::from(rest),
            });
        }
        Err(ReferenceError::UnknownScheme(s.to_owned()))
    }

    /// The registry host, for registry references.
    pub fn registry_host(&self) -> Option<&str> {
        match self {
            ImageRef::Registry { host, .. } => Some(host),
            _ => None,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry {
                host,
                name,
                reference: RegistryRef::Tag(t),
            } => write!(f, "docker://{host}/{name}:{t}"),
            ImageRef::Registry {
                host,
                name,
                reference: RegistryRef::Digest(d),
            } => write!(f, "docker://{host}/{name}@{d}"),
            ImageRef::OciLayout { path, tag: None } => write!(f, "oci:{}", path.display()),
            ImageRef::OciLayout { path, tag: Some(t) } => write!(f, "oci:{}:{t}", path.display()),
            ImageRef::DockerArchive { path } => write!(f, "docker-archive:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_references() {
        let r = ImageRef::parse("docker://127.0.0.1:5000/app/web:v1").unwrap();
        assert_eq!(
            r,
            ImageRef::Registry {
                host: "127.0.0.1:5000".into(),
                name: "app/web".into(),
                reference: RegistryRef::Tag("v1".into())
            }
        );
        assert_eq!(r.to_string(), "docker://127.0.0.1:5000/app/web:v1");
        let r = ImageRef::parse("docker://reg.example/web").unwrap();
        assert_eq!(r.to_string(), "docker://reg.example/web:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("docker://reg.example/web@{d}")).unwrap();
        assert!(
            matches!(r, ImageRef::Registry { reference: RegistryRef::Digest(x), .. } if x == d)
        );
    }

    #[test]
    fn layout_and_archive_references() {
        assert_eq!(
            ImageRef::parse("oci:/srv/img:v2").unwrap(),
            ImageRef::OciLayout {
                path: "/srv/img".into(),
                tag: Some("v2".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci:/srv/img").unwrap(),
            ImageRef::OciLayout {
                path: "/srv/img".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageRef::parse("docker-archive:/tmp/a.tar").unwrap(),
            ImageRef::DockerArchive {
                path: "/tmp/a.tar".into()
            }
        );
    }

    #[test]
    fn bad_references_are_refused() {
        assert!(matches!(
            ImageRef::parse("http://x/y"),
            Err(ReferenceError::UnknownScheme(_))
        ));
        assert!(matches!(
            ImageRef::parse("alpine:3"),
            Err(ReferenceError::UnknownScheme(_))
        ));
        for bad in [
            "docker://",
            "docker://host",
            "docker://host/Upper",
            "docker://host/a@sha256:xyz",
            "docker://host/a:",
            "docker://host/a//b",
            "oci:",
            "docker-archive:",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
