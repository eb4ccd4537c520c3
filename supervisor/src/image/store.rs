//! The content-addressed image store under `state_dir/images`:
//!
//! ```text
//! blobs/sha256/HEX          manifests and configs, verified against digest and size
//! layers/sha256-HEX/diff/   an unpacked layer, named by its diff_id (uncompressed digest)
//! layers/sha256-HEX/size    bytes of its files, for hako_image_store_bytes
//! refs/HEX.json             one pulled reference (HEX: sha256 of the reference text)
//! tmp/PID-N/                work in progress; renamed into place when complete
//! lock                      flock: pulls shared, prune exclusive
//! ```
//!
//! Every file and directory appears by `rename` once complete and verified, so an interrupted
//! pull leaves only `tmp/` entries (removed when their process is gone) and a later pull
//! starts over.
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::extract::{self, ExtractError, ExtractStats};
use super::reference::is_sha256_digest;

/// A store failure; carries the path or digest involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {expected}: content has digest {actual}")]
    DigestMismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{what} {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: &'static str,
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("not a sha256 digest: {0:?}")]
    BadDigest(String),
    #[error("layer {digest}: {source}")]
    Extract {
        digest: String,
        #[source]
        source: ExtractError,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One layer of a pulled image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    /// Digest of the blob as shipped (compressed); for docker archives, the diff_id.
    pub digest: String,
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
}

/// A pulled reference: what `hako image ls` lists and instances start from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    pub reference: String,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Lowest first.
    pub layers: Vec<LayerRecord>,
    /// Seconds since the epoch.
    pub pulled_at: u64,
}

/// Lowercase hex of a digest's bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:HEX` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// A reader hashing and counting what passes; fails as soon as more than `limit` bytes come.
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: Option<u64>,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R, limit: Option<u64>) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
            limit,
        }
    }
    /// Reads to the end, then returns (`sha256:HEX`, bytes).
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex(&self.hasher.finalize())),
            self.count,
        ))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.limit.is_some_and(|l| self.count > l) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more data than the manifest's size",
            ));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A temporary path under `tmp/`, removed on drop unless kept.
struct TmpGuard(Option<PathBuf>);
impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
        }
    }
}

/// A held store lock (flock), released on drop.
pub struct StoreLock(#[allow(dead_code)] File);

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating) the store in `state_dir/images` and removes the work of dead pulls.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let root = state_dir.join("images");
        for d in ["blobs/sha256", "layers", "refs", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        let store = Store { root };
        store.clean_tmp();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Removes `tmp/` entries of processes that no longer run (an interrupted pull).
    fn clean_tmp(&self) {
        let Ok(rd) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                tracing::info!(path = %e.path().display(), "removing an interrupted pull's files");
                let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
            }
        }
    }

    fn tmp_path(&self) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()))
    }

    fn lock(&self, op: i32) -> Result<StoreLock, StoreError> {
        let p = self.root.join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_at(&p))?;
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
                return Ok(StoreLock(f));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(StoreError::Io { path: p, source: e });
            }
        }
    }
    /// Held by a pull: prune waits for it.
    pub fn lock_shared(&self) -> Result<StoreLock, StoreError> {
        self.lock(libc::LOCK_SH)
    }
    /// Held by prune and rm.
    pub fn lock_exclusive(&self) -> Result<StoreLock, StoreError> {
        self.lock(libc::LOCK_EX)
    }

    fn hex_of(digest: &str) -> Result<&str, StoreError> {
        if !is_sha256_digest(digest) {
            return Err(StoreError::BadDigest(digest.to_owned()));
        }
        Ok(&digest[7..])
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("blobs/sha256").join(Self::hex_of(digest)?))
    }

    /// A stored blob, verified again against its digest.
    pub fn read_blob(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let p = self.blob_path(digest)?;
        match fs::read(&p) {
            Ok(b) => {
                let actual = sha256_digest(&b);
                if actual != digest {
                    let _ = fs::remove_file(&p);
                    return Err(StoreError::DigestMismatch {
                        what: "stored blob",
                        expected: digest.to_owned(),
                        actual,
                    });
                }
                Ok(Some(b))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path: p, source: e }),
        }
    }

    /// Verifies `bytes` against `digest` (and `size` when known) and stores them.
    pub fn put_blob(
        &self,
        what: &'static str,
        digest: &str,
        size: Option<u64>,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        verify_bytes(what, digest, size, bytes)?;
        let dst = self.blob_path(digest)?;
        if dst.exists() {
            return Ok(());
        }
        let tmp = self.tmp_path();
        let mut guard = TmpGuard(Some(tmp.clone()));
        let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
        f.write_all(bytes).map_err(io_at(&tmp))?;
        f.sync_all().map_err(io_at(&tmp))?;
        fs::rename(&tmp, &dst).map_err(io_at(&dst))?;
        guard.0 = None;
        Ok(())
    }

    pub fn layer_dir(&self, diff_id: &str) -> Result<PathBuf, StoreError> {
        Ok(self
            .root
            .join("layers")
            .join(format!("sha256-{}", Self::hex_of(diff_id)?)))
    }

    /// The directory of an unpacked layer's files (a lower directory of the overlay).
    pub fn layer_files(&self, diff_id: &str) -> Result<PathBuf, StoreError> {
        Ok(self.layer_dir(diff_id)?.join("diff"))
    }

    pub fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_dir(diff_id)
            .map(|d| d.join("diff").is_dir() && d.join("size").is_file())
            .unwrap_or(false)
    }

    /// Unpacks a layer blob read from `blob` (compressed or not), verifying the blob against
    /// `digest`/`size` and the uncompressed stream against `diff_id`, both while streaming;
    /// the layer appears in the store only when everything matched.
    pub fn unpack_layer<R: Read>(
        &self,
        blob: R,
        digest: &str,
        size: Option<u64>,
        diff_id: &str,
    ) -> Result<ExtractStats, StoreError> {
        let dst = self.layer_dir(diff_id)?;
        let tmp = self.tmp_path();
        let mut guard = TmpGuard(Some(tmp.clone()));
        let files = tmp.join("diff");
        fs::create_dir_all(&files).map_err(io_at(&files))?;
        let outer = Hashing::new(blob, size);
        let mut outer_buf = BufReader::with_capacity(256 << 10, outer);
        let head_err = |e: io::Error| StoreError::Io {
            path: PathBuf::from(digest),
            source: e,
        };
        let inner = {
            let dec = extract::decompress(&mut outer_buf).map_err(head_err)?;
            Hashing::new(dec, None)
        };
        let mut inner_r = inner;
        let stats =
            extract::extract_layer(&mut inner_r, &files).map_err(|e| StoreError::Extract {
                digest: digest.to_owned(),
                source: e,
            })?;
        let (diff_actual, _) = inner_r.finish().map_err(head_err)?;
        // Whatever follows the compressed stream still counts for the blob digest.
        io::copy(&mut outer_buf, &mut io::sink()).map_err(head_err)?;
        let outer = outer_buf.into_inner();
        let (blob_actual, blob_len) = outer.finish().map_err(head_err)?;
        if let Some(s) = size {
            if blob_len != s {
                return Err(StoreError::SizeMismatch {
                    what: "layer",
                    digest: digest.to_owned(),
                    expected: s,
                    actual: blob_len,
                });
            }
        }
        if blob_actual != digest {
            return Err(StoreError::DigestMismatch {
                what: "layer",
                expected: digest.to_owned(),
                actual: blob_actual,
            });
        }
        if diff_actual != diff_id {
            return Err(StoreError::DigestMismatch {
                what: "layer diff_id",
                expected: diff_id.to_owned(),
                actual: diff_actual,
            });
        }
        let size_file = tmp.join("size");
        fs::write(&size_file, stats.bytes.to_string()).map_err(io_at(&size_file))?;
        if let Ok(d) = File::open(&tmp) {
            // SAFETY: syncfs on the descriptor of an open directory.
            unsafe { libc::syncfs(d.as_raw_fd()) };
        }
        match fs::rename(&tmp, &dst) {
            Ok(()) => guard.0 = None,
            // Another pull finished the same layer first: keep theirs.
            Err(e) if dst.join("size").is_file() => {
                tracing::debug!(layer = diff_id, error = %e, "layer already unpacked");
            }
            Err(e) => {
                return Err(StoreError::Io {
                    path: dst,
                    source: e,
                })
            }
        }
        Ok(stats)
    }

    fn ref_path(&self, reference: &str) -> PathBuf {
        self.root.join("refs").join(format!(
            "{}.json",
            hex(&Sha256::digest(reference.as_bytes()))
        ))
    }

    /// Records a pulled reference (last: its presence means the image is complete).
    pub fn put_ref(&self, rec: &ImageRecord) -> Result<(), StoreError> {
        let dst = self.ref_path(&rec.reference);
        let tmp = self.tmp_path();
        let mut guard = TmpGuard(Some(tmp.clone()));
        let body = serde_json::to_vec_pretty(rec).expect("a record serialises");
        fs::write(&tmp, body).map_err(io_at(&tmp))?;
        fs::rename(&tmp, &dst).map_err(io_at(&dst))?;
        guard.0 = None;
        Ok(())
    }

    /// The record of `reference` if it was pulled and all its parts are still there.
    pub fn get_ref(&self, reference: &str) -> Result<Option<ImageRecord>, StoreError> {
        let p = self.ref_path(reference);
        let body = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io { path: p, source: e }),
        };
        let rec: ImageRecord = serde_json::from_slice(&body).map_err(|e| StoreError::Corrupt {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        let complete = rec.layers.iter().all(|l| self.has_layer(&l.diff_id))
            && self
                .blob_path(&rec.config_digest)
                .map(|b| b.is_file())
                .unwrap_or(false);
        Ok(complete.then_some(rec))
    }

    /// Every recorded reference.
    pub fn list_refs(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.root.join("refs");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_at(&dir))?.flatten() {
            if let Ok(b) = fs::read(e.path()) {
                if let Ok(r) = serde_json::from_slice::<ImageRecord>(&b) {
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Forgets a reference; `false` when it was not there.
    pub fn remove_ref(&self, reference: &str) -> Result<bool, StoreError> {
        let p = self.ref_path(reference);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io { path: p, source: e }),
        }
    }

    /// Bytes of one layer's files.
    pub fn layer_bytes(&self, diff_id: &str) -> u64 {
        self.layer_dir(diff_id)
            .ok()
            .and_then(|d| fs::read_to_string(d.join("size")).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Bytes held: unpacked layers' files plus blobs.
    pub fn bytes(&self) -> u64 {
        let mut total = 0;
        if let Ok(rd) = fs::read_dir(self.root.join("layers")) {
            for e in rd.flatten() {
                if let Ok(s) = fs::read_to_string(e.path().join("size")) {
                    total += s.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
        if let Ok(rd) = fs::read_dir(self.root.join("blobs/sha256")) {
            for e in rd.flatten() {
                total += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        total
    }

    /// Removes layers and blobs no recorded reference (nor `keep`, the manifests and configs
    /// of references in use) needs; returns (items removed, bytes freed). Call with the
    /// exclusive lock held.
    pub fn prune(&self) -> Result<(u64, u64), StoreError> {
        let refs = self.list_refs()?;
        let mut blobs = std::collections::HashSet::new();
        let mut layers = std::collections::HashSet::new();
        for r in &refs {
            blobs.insert(Self::hex_of(&r.manifest_digest)?.to_owned());
            blobs.insert(Self::hex_of(&r.config_digest)?.to_owned());
            for l in &r.layers {
                layers.insert(format!("sha256-{}", Self::hex_of(&l.diff_id)?));
            }
        }
        let (mut n, mut bytes) = (0, 0);
        let dir = self.root.join("layers");
        for e in fs::read_dir(&dir).map_err(io_at(&dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !layers.contains(&name) {
                bytes += fs::read_to_string(e.path().join("size"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                // Renamed away first so a half-removed layer is never taken for complete.
                let doomed = self.tmp_path();
                fs::rename(e.path(), &doomed).map_err(io_at(&e.path()))?;
                fs::remove_dir_all(&doomed).map_err(io_at(&doomed))?;
                n += 1;
            }
        }
        let dir = self.root.join("blobs/sha256");
        for e in fs::read_dir(&dir).map_err(io_at(&dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !blobs.contains(&name) {
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(e.path()).map_err(io_at(&e.path()))?;
                n += 1;
            }
        }
        Ok((n, bytes))
    }
}

/// Checks bytes against a digest and a size.
pub fn verify_bytes(
    what: &'static str,
    digest: &str,
    size: Option<u64>,
    bytes: &[u8],
) -> Result<(), StoreError> {
    if !is_sha256_digest(digest) {
        return Err(StoreError::BadDigest(digest.to_owned()));
    }
    if let Some(s) = size {
        if s != bytes.len() as u64 {
            return Err(StoreError::SizeMismatch {
                what,
                digest: digest.to_owned(),
                expected: s,
                actual: bytes.len() as u64,
            });
        }
    }
    let actual = sha256_digest(bytes);
    if actual != digest {
        return Err(StoreError::DigestMismatch {
            what,
            expected: digest.to_owned(),
            actual,
        });
    }
    Ok(())
}
