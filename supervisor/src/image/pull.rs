//! Pulling an image into the store: resolve the manifest (an index to the host's platform),
//! verify and keep the config, stream every missing layer through verification into its
//! unpacked directory, record the reference last.
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::config::{host_platform, ImageConfig, ImageDefaults, UserError};
use super::reference::{ImageRef, ReferenceError, RegistryRef};
use super::registry::{RegistryClient, RegistryError, RegistrySettings};
use super::source::{DockerArchive, Manifest, Source, SourceError};
use super::store::{sha256_digest, verify_bytes, ImageRecord, LayerRecord, Store, StoreError};

/// Why a pull failed; the message names the reference.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{reference}: {source}")]
    Source {
        reference: String,
        #[source]
        source: SourceError,
    },
    #[error("{reference}: {source}")]
    Store {
        reference: String,
        #[source]
        source: StoreError,
    },
    #[error("{reference}: {reason}")]
    Manifest { reference: String, reason: String },
    #[error("{reference}: no manifest for {wanted}; the image has {available}")]
    Platform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("{reference}: {source}")]
    User {
        reference: String,
        #[source]
        source: UserError,
    },
    #[error("{reference}: the pull task failed: {reason}")]
    Task { reference: String, reason: String },
}

/// Follows a pull, for progress bars.
pub trait PullProgress: Send + Sync {
    /// A layer will be fetched (`size` as the manifest says; `None` for archives).
    fn layer_start(&self, _digest: &str, _size: Option<u64>) {}
    fn layer_bytes(&self, _digest: &str, _n: u64) {}
    /// `cached`: the layer was already in the store.
    fn layer_done(&self, _digest: &str, _cached: bool) {}
}

/// No progress reports.
pub struct Quiet;
impl PullProgress for Quiet {}

/// An image ready to start: its record, its config and its layers' directories.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub record: ImageRecord,
    pub config: ImageConfig,
    /// Unpacked layer directories, lowest first.
    pub layers: Vec<PathBuf>,
}

impl ResolvedImage {
    /// The defaults the image's config gives an app.
    pub fn defaults(&self) -> Result<ImageDefaults, PullError> {
        self.config
            .defaults(&self.layers)
            .map_err(|source| PullError::User {
                reference: self.record.reference.clone(),
                source,
            })
    }
}

/// Pulls images into a store; shared by the CLI and `hako serve`.
pub struct Puller {
    store: Store,
    registries: Vec<RegistrySettings>,
    insecure_logged: Mutex<HashSet<String>>,
    /// One unpack per layer at a time in this process.
    layer_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Runs `f` (file system work) on tokio's blocking pool: a task that panicked becomes
/// [`PullError::Task`], `f`'s own error goes through `err`; both name `reference`.
async fn blocking<T, E>(
    reference: &str,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
    err: impl FnOnce(E) -> PullError,
) -> Result<T, PullError>
where
    T: Send + 'static,
    E: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PullError::Task {
            reference: reference.to_owned(),
            reason: e.to_string(),
        })?
        .map_err(err)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

const MAX_LAYERS: usize = 256;

impl Puller {
    pub fn new(store: Store, registries: Vec<RegistrySettings>) -> Puller {
        Puller {
            store,
            registries,
            insecure_logged: Mutex::new(HashSet::new()),
            layer_locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The image from the store, or `None` when it was never pulled (or is incomplete).
    pub fn cached(&self, r: &ImageRef) -> Result<Option<ResolvedImage>, PullError> {
        let reference = r.to_string();
        let se = |source| PullError::Store {
            reference: reference.clone(),
            source,
        };
        let Some(record) = self.store.get_ref(&reference).map_err(se)? else {
            return Ok(None);
        };
        self.resolve_record(record).map(Some)
    }

    fn resolve_record(&self, record: ImageRecord) -> Result<ResolvedImage, PullError> {
        let reference = record.reference.clone();
        let se = |source| PullError::Store {
            reference: reference.clone(),
            source,
        };
        let bytes = self
            .store
            .read_blob(&record.config_digest)
            .map_err(se)?
            .ok_or_else(|| PullError::Manifest {
                reference: reference.clone(),
                reason: "config missing from the store".into(),
            })?;
        let config: ImageConfig =
            serde_json::from_slice(&bytes).map_err(|e| PullError::Manifest {
                reference: reference.clone(),
                reason: format!("image config: {e}"),
            })?;
        let layers = record
            .layers
            .iter()
            .map(|l| self.store.layer_files(&l.diff_id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(se)?;
        Ok(ResolvedImage {
            record,
            config,
            layers,
        })
    }

    /// The store's copy if complete, else a pull.
    pub async fn ensure(&self, r: &ImageRef) -> Result<ResolvedImage, PullError> {
        if let Some(img) = self.cached(r)? {
            return Ok(img);
        }
        self.pull(r, Arc::new(Quiet)).await
    }

    fn settings_for(&self, host: &str) -> RegistrySettings {
        let s = self
            .registries
            .iter()
            .find(|s| s.host == host)
            .cloned()
            .unwrap_or_else(|| RegistrySettings {
                host: host.to_owned(),
                ..Default::default()
            });
        if s.insecure
            && self
                .insecure_logged
                .lock()
                .expect("lock")
                .insert(host.to_owned())
        {
            tracing::warn!(registry = host, "pulling over plain HTTP (insecure: true)");
        }
        s
    }

    /// Pulls `r` (re-reading its manifest; layers already in the store are not fetched).
    pub async fn pull(
        &self,
        r: &ImageRef,
        progress: Arc<dyn PullProgress>,
    ) -> Result<ResolvedImage, PullError> {
        let reference = r.to_string();
        let store = self.store.clone();
        let lock = blocking(
            &reference,
            move || store.lock_shared(),
            |source| PullError::Store {
                reference: reference.clone(),
                source,
            },
        )
        .await?;
        let rec = match r {
            ImageRef::DockerArchive { path } => {
                self.pull_archive(&reference, path.clone(), progress)
                    .await?
            }
            ImageRef::OciLayout { path, tag } => {
                let src = Source::Layout(path.clone());
                let index = path.join("index.json");
                let bytes = std::fs::read(&index).map_err(|e| PullError::Source {
                    reference: reference.clone(),
                    source: SourceError::Io {
                        path: index.clone(),
                        source: e,
                    },
                })?;
                let root = pick_tag(&reference, &bytes, tag.as_deref())?;
                self.pull_manifests(&reference, &src, root, progress)
                    .await?
            }
            ImageRef::Registry {
                host,
                name,
                reference: rr,
            } => {
                let client = RegistryClient::new(name, self.settings_for(host)).map_err(|e| {
                    PullError::Source {
                        reference: reference.clone(),
                        source: e.into(),
                    }
                })?;
                let src = Source::Registry(Box::new(client));
                let (tag_or_digest, pinned) = match rr {
                    RegistryRef::Tag(t) => (t.clone(), None),
                    RegistryRef::Digest(d) => (d.clone(), Some(d.clone())),
                };
                let Source::Registry(c) = &src else {
                    unreachable!()
                };
                let fetched = c.manifest(&tag_or_digest).await.map_err(|e| match e {
                    RegistryError::NotFound { .. } => PullError::Manifest {
                        reference: reference.clone(),
                        reason: format!("no such tag or digest {tag_or_digest:?} in the registry"),
                    },
                    e => PullError::Source {
                        reference: reference.clone(),
                        source: e.into(),
                    },
                })?;
                let digest = sha256_digest(&fetched.bytes);
                if let Some(p) = pinned {
                    if p != digest {
                        return Err(PullError::Store {
                            reference: reference.clone(),
                            source: StoreError::DigestMismatch {
                                what: "manifest",
                                expected: p,
                                actual: digest,
                            },
                        });
                    }
                }
                self.pull_manifests(&reference, &src, (digest, fetched.bytes), progress)
                    .await?
            }
        };
        drop(lock);
        self.resolve_record(rec)
    }

    /// From a root manifest or index (digest, bytes) to a recorded image.
    async fn pull_manifests(
        &self,
        reference: &str,
        src: &Source,
        root: (String, Vec<u8>),
        progress: Arc<dyn PullProgress>,
    ) -> Result<ImageRecord, PullError> {
        let mf = |reason: String| PullError::Manifest {
            reference: reference.to_owned(),
            reason,
        };
        let se = |source| PullError::Source {
            reference: reference.to_owned(),
            source,
        };
        let st = |source| PullError::Store {
            reference: reference.to_owned(),
            source,
        };
        let (mut digest, mut bytes) = root;
        let mut manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| mf(format!("manifest: {e}")))?;
        let mut depth = 0;
        while manifest.is_index() {
            depth += 1;
            if depth > 3 {
                return Err(mf("indexes nested too deep".into()));
            }
            let (os, arch) = host_platform();
            let list = manifest.manifests.clone().unwrap_or_default();
            let chosen = list.iter().find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == os && p.architecture == arch)
            });
            let chosen = match chosen {
                Some(c) => c.clone(),
                None if list.len() == 1 && list[0].platform.is_none() => list[0].clone(),
                None => {
                    let available: Vec<String> = list
                        .iter()
                        .filter_map(|d| d.platform.as_ref())
                        .map(|p| match &p.variant {
                            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                            None => format!("{}/{}", p.os, p.architecture),
                        })
                        .collect();
                    return Err(PullError::Platform {
                        reference: reference.to_owned(),
                        wanted: format!("{os}/{arch}"),
                        available: if available.is_empty() {
                            "no platform listed".into()
                        } else {
                            available.join(", ")
                        },
                    });
                }
            };
            bytes = src
                .manifest_by_digest(&chosen.digest, Some(chosen.size))
                .await
                .map_err(se)?;
            verify_bytes("manifest", &chosen.digest, Some(chosen.size), &bytes).map_err(st)?;
            digest = chosen.digest.clone();
            manifest = serde_json::from_slice(&bytes).map_err(|e| mf(format!("manifest: {e}")))?;
        }
        let cfg_desc = manifest
            .config
            .clone()
            .ok_or_else(|| mf("manifest without config".into()))?;
        let layers = manifest.layers.clone().unwrap_or_default();
        if layers.len() > MAX_LAYERS {
            return Err(mf(format!("more than {MAX_LAYERS} layers")));
        }
        let cfg_bytes = match self.store.read_blob(&cfg_desc.digest).map_err(st)? {
            Some(b) => b,
            None => {
                let b = src
                    .config(&cfg_desc.digest, cfg_desc.size)
                    .await
                    .map_err(se)?;
                self.store
                    .put_blob("config", &cfg_desc.digest, Some(cfg_desc.size), &b)
                    .map_err(st)?;
                b
            }
        };
        let config: ImageConfig =
            serde_json::from_slice(&cfg_bytes).map_err(|e| mf(format!("image config: {e}")))?;
        check_platform(reference, &config)?;
        if config.rootfs.diff_ids.len() != layers.len() {
            return Err(mf(format!(
                "{} layers but {} diff_ids in the config",
                layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut records = Vec::new();
        for (desc, diff_id) in layers.iter().zip(&config.rootfs.diff_ids) {
            if let Some(mt) = &desc.media_type {
                if mt.contains("foreign") || mt.contains("nondistributable") {
                    return Err(mf(format!(
                        "layer {} is non-distributable ({mt})",
                        desc.digest
                    )));
                }
            }
            let d = desc.digest.clone();
            let size = desc.size;
            let reader_src = src;
            self.unpack_once(
                reference,
                diff_id,
                Some(size),
                &desc.digest,
                progress.clone(),
                |p| async move { reader_src.layer(&d, p).await },
            )
            .await?;
            records.push(LayerRecord {
                digest: desc.digest.clone(),
                size: desc.size,
                diff_id: diff_id.clone(),
            });
        }
        self.store
            .put_blob("manifest", &digest, None, &bytes)
            .map_err(st)?;
        let rec = ImageRecord {
            reference: reference.to_owned(),
            manifest_digest: digest,
            config_digest: cfg_desc.digest,
            layers: records,
            pulled_at: now(),
        };
        self.store.put_ref(&rec).map_err(st)?;
        Ok(rec)
    }

    /// Unpacks one layer unless the store has it; one unpack per diff_id at a time.
    async fn unpack_once<F, Fut>(
        &self,
        reference: &str,
        diff_id: &str,
        size: Option<u64>,
        digest: &str,
        progress: Arc<dyn PullProgress>,
        open: F,
    ) -> Result<(), PullError>
    where
        F: FnOnce(Arc<dyn Fn(u64) + Send + Sync>) -> Fut,
        Fut: std::future::Future<Output = Result<super::source::BlobReader, SourceError>>,
    {
        let lock = {
            let mut m = self.layer_locks.lock().expect("lock");
            m.entry(diff_id.to_owned()).or_default().clone()
        };
        let _held = lock.lock().await;
        if self.store.has_layer(diff_id) {
            progress.layer_done(digest, true);
            return Ok(());
        }
        progress.layer_start(digest, size);
        let pd = digest.to_owned();
        let pp = progress.clone();
        let reader = open(Arc::new(move |n| pp.layer_bytes(&pd, n)))
            .await
            .map_err(|source| PullError::Source {
                reference: reference.to_owned(),
                source,
            })?;
        let store = self.store.clone();
        let (d, di) = (digest.to_owned(), diff_id.to_owned());
        // Archives give the uncompressed tar whose digest is the diff_id itself.
        let stats = blocking(
            reference,
            move || store.unpack_layer(reader, &d, size, &di),
            |source| PullError::Store {
                reference: reference.to_owned(),
                source,
            },
        )
        .await?;
        tracing::info!(
            image = reference,
            layer = diff_id,
            files = stats.entries,
            bytes = stats.bytes,
            skipped_devices = stats.skipped_devices,
            dropped_xattrs = stats.dropped_xattrs,
            stripped_setid = stats.stripped_setid,
            "layer unpacked"
        );
        progress.layer_done(digest, false);
        Ok(())
    }

    async fn pull_archive(
        &self,
        reference: &str,
        path: PathBuf,
        progress: Arc<dyn PullProgress>,
    ) -> Result<ImageRecord, PullError> {
        let se = |source| PullError::Source {
            reference: reference.to_owned(),
            source,
        };
        let st = |source| PullError::Store {
            reference: reference.to_owned(),
            source,
        };
        let p2 = path.clone();
        let archive = blocking(reference, move || DockerArchive::open(&p2), se).await?;
        let archive = Arc::new(archive);
        let image = archive.image().map_err(se)?;
        let cfg_bytes = archive.member_bytes(&image.config, 16 << 20).map_err(se)?;
        let cfg_digest = sha256_digest(&cfg_bytes);
        self.store
            .put_blob("config", &cfg_digest, None, &cfg_bytes)
            .map_err(st)?;
        let config: ImageConfig =
            serde_json::from_slice(&cfg_bytes).map_err(|e| PullError::Manifest {
                reference: reference.to_owned(),
                reason: format!("image config: {e}"),
            })?;
        check_platform(reference, &config)?;
        if config.rootfs.diff_ids.len() != image.layers.len() {
            return Err(PullError::Manifest {
                reference: reference.to_owned(),
                reason: "layer count and diff_ids differ".into(),
            });
        }
        let mut records = Vec::new();
        for (member, diff_id) in image.layers.iter().zip(&config.rootfs.diff_ids) {
            let (_, len) = archive.member(member).map_err(se)?;
            let a = archive.clone();
            let m = member.clone();
            self.unpack_once(
                reference,
                diff_id,
                Some(len),
                diff_id,
                progress.clone(),
                |p| async move {
                    let (r, _) = a.member(&m)?;
                    Ok(Box::new(super::source::Counting {
                        inner: r,
                        progress: p,
                    }) as _)
                },
            )
            .await?;
            records.push(LayerRecord {
                digest: diff_id.clone(),
                size: len,
                diff_id: diff_id.clone(),
            });
        }
        let manifest_digest = sha256_digest(&archive.manifest);
        self.store
            .put_blob("manifest", &manifest_digest, None, &archive.manifest)
            .map_err(st)?;
        let rec = ImageRecord {
            reference: reference.to_owned(),
            manifest_digest,
            config_digest: cfg_digest,
            layers: records,
            pulled_at: now(),
        };
        self.store.put_ref(&rec).map_err(st)?;
        Ok(rec)
    }
}

fn check_platform(reference: &str, config: &ImageConfig) -> Result<(), PullError> {
    let (os, arch) = host_platform();
    let cos = config.os.as_deref().unwrap_or(os);
    let carch = config.architecture.as_deref().unwrap_or(arch);
    if cos != os || carch != arch {
        return Err(PullError::Platform {
            reference: reference.to_owned(),
            wanted: format!("{os}/{arch}"),
            available: format!("{cos}/{carch}"),
        });
    }
    Ok(())
}

/// Picks a manifest of an OCI layout's index.json by its `org.opencontainers.image.ref.name`
/// (or the only one when no tag is given); returns (digest, index bytes re-rooted).
fn pick_tag(
    reference: &str,
    index: &[u8],
    tag: Option<&str>,
) -> Result<(String, Vec<u8>), PullError> {
    let mf = |reason: String| PullError::Manifest {
        reference: reference.to_owned(),
        reason,
    };
    let idx: Manifest =
        serde_json::from_slice(index).map_err(|e| mf(format!("index.json: {e}")))?;
    let list = idx.manifests.unwrap_or_default();
    let found: Vec<_> = match tag {
        Some(t) => list
            .iter()
            .filter(|d| {
                d.annotations
                    .as_ref()
                    .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                    .is_some_and(|n| n == t)
            })
            .collect(),
        None => list.iter().collect(),
    };
    match found.as_slice() {
        [one] => {
            // A one-entry index: resolved like any index (platform checked on the config).
            let single = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{
                    "mediaType": one.media_type,
                    "digest": one.digest,
                    "size": one.size,
                }]
            });
            Ok((String::new(), serde_json::to_vec(&single).expect("json")))
        }
        [] => Err(mf(match tag {
            Some(t) => format!("no tag {t:?} in the layout"),
            None => "the layout has no image".into(),
        })),
        _ => Err(mf(
            "the layout holds several images: name one with oci:PATH:TAG".into(),
        )),
    }
}

#[cfg(test)]
#[path = "pull_tests.rs"]
mod tests;
