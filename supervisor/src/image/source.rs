//! Where manifests and blobs come from: a registry, an OCI layout directory or a
//! `docker save` archive. Every byte is verified by the caller against the digests of the
//! manifest that named it.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::registry::{RegistryClient, RegistryError};

/// A content descriptor of a manifest or index.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: Option<String>,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// `platform` of an index entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image manifest or an index (OCI or Docker schema 2).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
}

impl Manifest {
    pub fn is_index(&self) -> bool {
        self.manifests.is_some()
            || matches!(
                self.media_type.as_deref(),
                Some("application/vnd.oci.image.index.v1+json")
                    | Some("application/vnd.docker.distribution.manifest.list.v2+json")
            )
    }
}

/// A source failure.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A `docker save` archive, indexed: where each member's data starts and how long it is.
pub struct DockerArchive {
    pub path: PathBuf,
    members: BTreeMap<String, (u64, u64)>,
    /// `manifest.json`'s bytes.
    pub manifest: Vec<u8>,
}

/// `manifest.json` of a docker archive (first image).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ArchiveManifest {
    pub config: String,
    pub layers: Vec<String>,
}

fn norm(name: &str) -> String {
    name.trim_start_matches("./").to_owned()
}

impl DockerArchive {
    pub fn open(path: &Path) -> Result<DockerArchive, SourceError> {
        let f = File::open(path).map_err(io_at(path))?;
        let mut ar = tar::Archive::new(io::BufReader::new(f));
        let mut members = BTreeMap::new();
        let mut links = Vec::new();
        let mut manifest = None;
        for e in ar.entries().map_err(io_at(path))? {
            let mut e = e.map_err(io_at(path))?;
            let name = norm(&String::from_utf8_lossy(&e.path_bytes()));
            match e.header().entry_type() {
                tar::EntryType::Regular => {
                    if name == "manifest.json" {
                        let mut b = Vec::new();
                        (&mut e)
                            .take(4 << 20)
                            .read_to_end(&mut b)
                            .map_err(io_at(path))?;
                        manifest = Some(b);
                    }
                    members.insert(name, (e.raw_file_position(), e.size()));
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    if let Some(t) = e.link_name_bytes() {
                        let t = String::from_utf8_lossy(&t).into_owned();
                        let t = if e.header().entry_type() == tar::EntryType::Symlink {
                            // Relative to the link's directory.
                            let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                            let mut parts: Vec<&str> =
                                dir.split('/').filter(|p| !p.is_empty()).collect();
                            for c in t.split('/') {
                                match c {
                                    ".." => {
                                        parts.pop();
                                    }
                                    "" | "." => {}
                                    c => parts.push(c),
                                }
                            }
                            parts.join("/")
                        } else {
                            norm(&t)
                        };
                        links.push((name, t));
                    }
                }
                _ => {}
            }
        }
        for (name, target) in links {
            if let Some(v) = members.get(&target).copied() {
                members.insert(name, v);
            }
        }
        let manifest = manifest.ok_or_else(|| SourceError::Invalid {
            path: path.to_owned(),
            reason: "no manifest.json (not a docker save archive)".into(),
        })?;
        Ok(DockerArchive {
            path: path.to_owned(),
            members,
            manifest,
        })
    }

    /// The first image of `manifest.json`.
    pub fn image(&self) -> Result<ArchiveManifest, SourceError> {
        let mut all: Vec<ArchiveManifest> =
            serde_json::from_slice(&self.manifest).map_err(|e| SourceError::Invalid {
                path: self.path.clone(),
                reason: format!("manifest.json: {e}"),
            })?;
        if all.is_empty() {
            return Err(SourceError::Invalid {
                path: self.path.clone(),
                reason: "manifest.json lists no image".into(),
            });
        }
        Ok(all.swap_remove(0))
    }

    /// A reader over one member's data.
    pub fn member(&self, name: &str) -> Result<(io::Take<File>, u64), SourceError> {
        let (off, len) = *self
            .members
            .get(&norm(name))
            .ok_or_else(|| SourceError::Invalid {
                path: self.path.clone(),
                reason: format!("no member {name:?}"),
            })?;
        let mut f = File::open(&self.path).map_err(io_at(&self.path))?;
        f.seek(SeekFrom::Start(off)).map_err(io_at(&self.path))?;
        Ok((f.take(len), len))
    }

    pub fn member_bytes(&self, name: &str, limit: u64) -> Result<Vec<u8>, SourceError> {
        let (r, len) = self.member(name)?;
        if len > limit {
            return Err(SourceError::Invalid {
                path: self.path.clone(),
                reason: format!("{name}: larger than {limit} bytes"),
            });
        }
        let mut b = Vec::new();
        r.take(limit)
            .read_to_end(&mut b)
            .map_err(io_at(&self.path))?;
        Ok(b)
    }
}

/// Where a pull reads from.
pub enum Source {
    Registry(Box<RegistryClient>),
    Layout(PathBuf),
}

/// A readable blob stream for a blocking thread.
pub type BlobReader = Box<dyn Read + Send>;

impl Source {
    fn layout_blob(dir: &Path, digest: &str) -> Result<PathBuf, SourceError> {
        if !super::reference::is_sha256_digest(digest) {
            return Err(SourceError::Invalid {
                path: dir.to_owned(),
                reason: format!("not a sha256 digest: {digest:?}"),
            });
        }
        Ok(dir.join("blobs/sha256").join(&digest[7..]))
    }

    /// A manifest or index by digest.
    pub async fn manifest_by_digest(
        &self,
        digest: &str,
        size: Option<u64>,
    ) -> Result<Vec<u8>, SourceError> {
        match self {
            Source::Registry(c) => Ok(c.manifest(digest).await?.bytes),
            Source::Layout(dir) => self.small_blob_layout(dir, digest, size),
        }
    }

    fn small_blob_layout(
        &self,
        dir: &Path,
        digest: &str,
        size: Option<u64>,
    ) -> Result<Vec<u8>, SourceError> {
        let p = Self::layout_blob(dir, digest)?;
        let f = File::open(&p).map_err(io_at(&p))?;
        let mut b = Vec::new();
        f.take(size.unwrap_or(4 << 20).min(64 << 20) + 1)
            .read_to_end(&mut b)
            .map_err(io_at(&p))?;
        Ok(b)
    }

    /// A config blob.
    pub async fn config(&self, digest: &str, size: u64) -> Result<Vec<u8>, SourceError> {
        if size > 16 << 20 {
            return Err(SourceError::Invalid {
                path: PathBuf::from(digest),
                reason: "image config larger than 16 MiB".into(),
            });
        }
        match self {
            Source::Registry(c) => Ok(c.blob_bytes(digest, size as usize + 1).await?),
            Source::Layout(dir) => self.small_blob_layout(dir, digest, Some(size)),
        }
    }

    /// A layer blob as a stream.
    pub async fn layer(
        &self,
        digest: &str,
        progress: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Result<BlobReader, SourceError> {
        match self {
            Source::Registry(c) => Ok(Box::new(c.blob_reader(digest, progress).await?)),
            Source::Layout(dir) => {
                let p = Self::layout_blob(dir, digest)?;
                let f = File::open(&p).map_err(io_at(&p))?;
                Ok(Box::new(Counting { inner: f, progress }))
            }
        }
    }
}

/// Reports bytes read.
pub struct Counting<R> {
    pub inner: R,
    pub progress: Arc<dyn Fn(u64) + Send + Sync>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.progress)(n as u64);
        Ok(n)
    }
}
