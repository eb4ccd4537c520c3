//! Pulls from OCI layouts and docker archives written by the test.
use super::*;
use std::io::Write;

use crate::image::store::{hex, sha256_digest};

fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

struct Layout {
    dir: PathBuf,
    layer_blobs: Vec<String>,
}

fn put(dir: &std::path::Path, bytes: &[u8]) -> String {
    let d = sha256_digest(bytes);
    std::fs::write(dir.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
    d
}

/// An OCI layout with two gzip layers (the second whites out /a) tagged `v1`.
fn layout(dir: &std::path::Path, arch: &str) -> Layout {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let l1 = tar_of(&[
        ("a", "one"),
        (
            "etc/passwd",
            "root:x:0:0::/:/bin/sh\napp:x:7:8::/:/bin/sh\n",
        ),
    ]);
    let l2 = tar_of(&[(".wh.a", ""), ("b", "two")]);
    let (z1, z2) = (gz(&l1), gz(&l2));
    let (d1, d2) = (put(dir, &z1), put(dir, &z2));
    let cfg = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/app"], "User": "app", "ExposedPorts": {"8000/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&l1), sha256_digest(&l2)]}
    });
    let cfg = serde_json::to_vec(&cfg).unwrap();
    let cd = put(dir, &cfg);
    let man = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cfg.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d1, "size": z1.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d2, "size": z2.len()}
        ]
    });
    let man = serde_json::to_vec(&man).unwrap();
    let md = put(dir, &man);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
            "size": man.len(), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    Layout {
        dir: dir.to_owned(),
        layer_blobs: vec![d1, d2],
    }
}

#[derive(Default)]
struct Count(std::sync::Mutex<(u32, u32)>);
impl PullProgress for Count {
    fn layer_done(&self, _d: &str, cached: bool) {
        let mut c = self.0.lock().unwrap();
        if cached {
            c.1 += 1
        } else {
            c.0 += 1
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn layout_pull_is_verified_shared_and_defaults_resolve() {
    let t = tempfile::tempdir().unwrap();
    let (_, arch) = host_platform();
    let l = layout(&t.path().join("img"), arch);
    let store = Store::open(&t.path().join("state")).unwrap();
    let puller = Puller::new(store.clone(), vec![]);
    let r = ImageRef::parse(&format!("oci:{}:v1", l.dir.display())).unwrap();
    let rt = rt();
    let c = Arc::new(Count::default());
    let img = rt.block_on(puller.pull(&r, c.clone())).unwrap();
    assert_eq!(*c.0.lock().unwrap(), (2, 0));
    assert_eq!(img.layers.len(), 2);
    assert_eq!(
        std::fs::read_to_string(img.layers[0].join("a")).unwrap(),
        "one"
    );
    assert_eq!(
        std::fs::read_to_string(img.layers[1].join("b")).unwrap(),
        "two"
    );
    let d = img.defaults().unwrap();
    assert_eq!(d.command, ["/bin/app"]);
    assert_eq!(d.user, Some((7, 8)));
    assert_eq!(d.port, Some(8000));
    // Again: nothing unpacked; `ensure` does not even read the layout.
    let c2 = Arc::new(Count::default());
    rt.block_on(puller.pull(&r, c2.clone())).unwrap();
    assert_eq!(*c2.0.lock().unwrap(), (0, 2));
    std::fs::rename(&l.dir, t.path().join("moved")).unwrap();
    rt.block_on(puller.ensure(&r)).unwrap();
    assert!(store.bytes() > 0);
    assert_eq!(store.list_refs().unwrap().len(), 1);
    // rm + prune empties the store.
    assert!(store.remove_ref(&r.to_string()).unwrap());
    let (n, _) = store.prune().unwrap();
    assert_eq!(n, 4); // two layers, the config and the manifest
    assert_eq!(store.bytes(), 0);
    assert!(rt.block_on(puller.ensure(&r)).is_err());
}

#[test]
fn tampered_layer_or_missing_tag_or_other_platform_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (_, arch) = host_platform();
    let l = layout(&t.path().join("img"), arch);
    let store = Store::open(&t.path().join("state")).unwrap();
    let puller = Puller::new(store.clone(), vec![]);
    let rt = rt();
    let missing = ImageRef::parse(&format!("oci:{}:nope", l.dir.display())).unwrap();
    let e = rt
        .block_on(puller.pull(&missing, Arc::new(Quiet)))
        .unwrap_err();
    assert!(e.to_string().contains("no tag \"nope\""), "{e}");
    // Flip one byte of the second layer blob.
    let p = l.dir.join("blobs/sha256").join(&l.layer_blobs[1][7..]);
    let mut b = std::fs::read(&p).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0xff;
    std::fs::write(&p, &b).unwrap();
    let r = ImageRef::parse(&format!("oci:{}:v1", l.dir.display())).unwrap();
    let e = rt.block_on(puller.pull(&r, Arc::new(Quiet))).unwrap_err();
    assert!(matches!(e, PullError::Store { .. }), "{e}");
    assert!(store.get_ref(&r.to_string()).unwrap().is_none());
    // Nothing half-done: one good layer, no temp files.
    assert_eq!(
        std::fs::read_dir(store.root().join("layers"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0
    );
    // Another platform only.
    let other = layout(&t.path().join("other"), "s390x-not-this");
    let r = ImageRef::parse(&format!("oci:{}:v1", other.dir.display())).unwrap();
    let e = rt.block_on(puller.pull(&r, Arc::new(Quiet))).unwrap_err();
    assert!(matches!(e, PullError::Platform { .. }), "{e}");
}

#[test]
fn docker_archive_pull() {
    let t = tempfile::tempdir().unwrap();
    let l1 = tar_of(&[("hello", "from archive")]);
    let cfg = serde_json::to_vec(&serde_json::json!({
        "architecture": host_platform().1, "os": "linux",
        "config": {"Entrypoint": ["/x"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&l1)]}
    }))
    .unwrap();
    let cfg_name = format!("{}.json", hex(&sha2::Sha256::digest(&cfg)));
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": cfg_name, "RepoTags": ["x:1"], "Layers": ["abc/layer.tar"]}
    ]))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        (cfg_name.as_str(), &cfg[..]),
        ("abc/layer.tar", &l1[..]),
        ("manifest.json", &manifest[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    }
    let path = t.path().join("img.tar");
    std::fs::write(&path, b.into_inner().unwrap()).unwrap();
    let store = Store::open(&t.path().join("state")).unwrap();
    let puller = Puller::new(store, vec![]);
    let r = ImageRef::parse(&format!("docker-archive:{}", path.display())).unwrap();
    let img = rt().block_on(puller.pull(&r, Arc::new(Quiet))).unwrap();
    assert_eq!(
        std::fs::read_to_string(img.layers[0].join("hello")).unwrap(),
        "from archive"
    );
    assert_eq!(img.defaults().unwrap().command, ["/x"]);
}

#[test]
fn interrupted_work_is_removed_on_open() {
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    Store::open(&state).unwrap();
    // A dead process's half-unpacked layer (pid 2^22+1 cannot exist).
    let stale = state.join("images/tmp/4194305-0/diff");
    std::fs::create_dir_all(&stale).unwrap();
    Store::open(&state).unwrap();
    assert!(!stale.exists());
}

use sha2::Digest as _;
