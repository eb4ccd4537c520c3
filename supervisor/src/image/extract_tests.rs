//! The extractor against layers built in memory, hostile ones included.
use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// A tar entry written with raw header fields, so hostile names survive.
struct E {
    name: Vec<u8>,
    kind: tar::EntryType,
    mode: u32,
    link: Vec<u8>,
    data: Vec<u8>,
    pax: Vec<(&'static str, Vec<u8>)>,
}

fn e(name: &str, kind: tar::EntryType) -> E {
    E {
        name: name.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        link: Vec::new(),
        data: Vec::new(),
        pax: Vec::new(),
    }
}
fn file(name: &str, data: &str) -> E {
    E {
        data: data.as_bytes().to_vec(),
        ..e(name, tar::EntryType::Regular)
    }
}
fn dir(name: &str) -> E {
    E {
        mode: 0o755,
        ..e(name, tar::EntryType::Directory)
    }
}
fn link(name: &str, kind: tar::EntryType, target: &str) -> E {
    E {
        link: target.as_bytes().to_vec(),
        ..e(name, kind)
    }
}

fn build(entries: Vec<E>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for en in entries {
        if !en.pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in &en.pax {
                let mut rec = Vec::new();
                rec.extend_from_slice(b" ");
                rec.extend_from_slice(k.as_bytes());
                rec.push(b'=');
                rec.extend_from_slice(v);
                rec.push(b'\n');
                // The length prefix counts itself.
                let mut len = rec.len() + 1;
                while len.to_string().len() + rec.len() != len {
                    len = len.to_string().len() + rec.len();
                }
                body.extend_from_slice(len.to_string().as_bytes());
                body.extend_from_slice(&rec);
            }
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_size(body.len() as u64);
            h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
            h.set_cksum();
            b.append(&h, &body[..]).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..en.name.len()].copy_from_slice(&en.name);
        h.as_old_mut().linkname[..en.link.len()].copy_from_slice(&en.link);
        h.set_entry_type(en.kind);
        h.set_mode(en.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(en.data.len() as u64);
        h.set_cksum();
        b.append(&h, &en.data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

struct Host {
    _t: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn host() -> Host {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("layer");
    let outside = t.path().join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "host").unwrap();
    Host {
        root,
        outside,
        _t: t,
    }
}

fn run(h: &Host, entries: Vec<E>) -> Result<ExtractStats, ExtractError> {
    extract_layer(&build(entries)[..], &h.root)
}

fn host_untouched(h: &Host) {
    assert_eq!(
        std::fs::read_to_string(h.outside.join("secret")).unwrap(),
        "host"
    );
    assert_eq!(std::fs::read_dir(&h.outside).unwrap().count(), 1);
}

#[test]
fn ordinary_layer() {
    let h = host();
    let mut exe = file("bin/app", "#!/bin/sh\n");
    exe.mode = 0o755;
    run(
        &h,
        vec![
            dir("bin/"),
            exe,
            file("./etc/motd", "hi"),
            link("bin/sh", tar::EntryType::Symlink, "/bin/busybox"),
            link("bin/app2", tar::EntryType::Link, "bin/app"),
        ],
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(h.root.join("etc/motd")).unwrap(),
        "hi"
    );
    let m = std::fs::metadata(h.root.join("bin/app")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o755);
    assert_eq!(m.nlink(), 2);
    assert_eq!(
        std::fs::read_link(h.root.join("bin/sh")).unwrap(),
        PathBuf::from("/bin/busybox")
    );
}

#[test]
fn dotdot_is_refused() {
    let h = host();
    let err = run(&h, vec![file("a/../../outside/secret", "pwned")]).unwrap_err();
    assert!(matches!(err, ExtractError::Refused { .. }), "{err}");
    host_untouched(&h);
}

#[test]
fn absolute_paths_land_inside() {
    let h = host();
    let abs = format!("{}/x", h.outside.display());
    run(&h, vec![file(&abs, "pwned")]).unwrap();
    host_untouched(&h);
    let inside = h.root.join(abs.trim_start_matches('/'));
    assert_eq!(std::fs::read_to_string(inside).unwrap(), "pwned");
}

#[test]
fn symlink_as_path_component_is_refused() {
    let h = host();
    let target = h.outside.display().to_string();
    let err = run(
        &h,
        vec![
            link("escape", tar::EntryType::Symlink, &target),
            file("escape/secret", "pwned"),
        ],
    )
    .unwrap_err();
    assert!(matches!(err, ExtractError::Refused { .. }), "{err}");
    host_untouched(&h);
    // A relative one too.
    let h = host();
    let err = run(
        &h,
        vec![
            link("up", tar::EntryType::Symlink, "../outside"),
            file("up/new", "pwned"),
        ],
    )
    .unwrap_err();
    assert!(matches!(err, ExtractError::Refused { .. }), "{err}");
    host_untouched(&h);
}

#[test]
fn symlink_then_file_of_same_name_replaces_the_link() {
    let h = host();
    let target = h.outside.join("secret").display().to_string();
    run(
        &h,
        vec![
            link("s", tar::EntryType::Symlink, &target),
            file("s", "mine"),
        ],
    )
    .unwrap();
    host_untouched(&h);
    assert_eq!(std::fs::read_to_string(h.root.join("s")).unwrap(), "mine");
    assert!(!std::fs::symlink_metadata(h.root.join("s"))
        .unwrap()
        .is_symlink());
}

#[test]
fn hardlinks_outside_or_to_symlinks_are_refused() {
    let h = host();
    let abs = h.outside.join("secret").display().to_string();
    let err = run(&h, vec![link("l", tar::EntryType::Link, &abs)]).unwrap_err();
    assert!(matches!(err, ExtractError::Refused { .. }), "{err}");
    let err = run(
        &h,
        vec![link("l", tar::EntryType::Link, "../outside/secret")],
    )
    .unwrap_err();
    assert!(matches!(err, ExtractError::Refused { .. }), "{err}");
    let h2 = host();
    let err = run(
        &h2,
        vec![
            link("s", tar::EntryType::Symlink, &abs),
            link("l", tar::EntryType::Link, "s"),
        ],
    )
    .unwrap_err();
    assert!(matches!(err, ExtractError::Refused { .. }), "{err}");
    host_untouched(&h);
    host_untouched(&h2);
    // Writing through a hardlink never reaches the host file.
    assert_eq!(
        std::fs::metadata(h.outside.join("secret")).unwrap().nlink(),
        1
    );
}

#[test]
fn devices_skipped_setid_stripped_xattrs_filtered() {
    let h = host();
    let mut suid = file("bin/su", "x");
    suid.mode = 0o6755;
    let mut x = file("f", "x");
    x.pax = vec![
        ("SCHILY.xattr.trusted.overlay.opaque", b"y".to_vec()),
        ("SCHILY.xattr.security.capability", vec![1, 2, 3]),
        ("SCHILY.xattr.user.note", b"kept".to_vec()),
    ];
    let stats = run(
        &h,
        vec![
            e("dev/sda", tar::EntryType::Block),
            e("dev/null", tar::EntryType::Char),
            e("fifo", tar::EntryType::Fifo),
            suid,
            x,
        ],
    )
    .unwrap();
    assert_eq!(stats.skipped_devices, 3);
    assert!(!h.root.join("dev/sda").exists() && !h.root.join("fifo").exists());
    let m = std::fs::metadata(h.root.join("bin/su")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o755);
    assert_eq!(stats.dropped_xattrs, 2);
    let f = File::open(h.root.join("f")).unwrap();
    let mut buf = [0u8; 16];
    let name = CString::new("user.note").unwrap();
    // SAFETY: valid descriptor, NUL-terminated name, live buffer.
    let n = unsafe { libc::fgetxattr(f.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), 16) };
    assert_eq!(&buf[..n as usize], b"kept");
    let name = CString::new("trusted.overlay.opaque").unwrap();
    // SAFETY: as above.
    let n = unsafe { libc::fgetxattr(f.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), 16) };
    assert_eq!(n, -1);
}

#[test]
fn pax_size_larger_than_the_data_is_an_error() {
    let h = host();
    let mut f = file("a", "short");
    f.pax = vec![("size", b"1000000".to_vec())];
    assert!(run(&h, vec![f, file("b", "next")]).is_err());
    host_untouched(&h);
}

#[test]
fn pax_path_with_dotdot_is_refused() {
    let h = host();
    let mut f = file("innocent", "pwned");
    f.pax = vec![("path", b"../outside/evil".to_vec())];
    let err = run(&h, vec![f]).unwrap_err();
    assert!(matches!(err, ExtractError::Refused { .. }), "{err}");
    host_untouched(&h);
}

#[test]
fn duplicates_last_wins() {
    let h = host();
    run(
        &h,
        vec![
            file("a", "one"),
            file("a", "two"),
            dir("d/"),
            file("d/x", "x"),
            file("d", "now a file"),
            file("e", "file first"),
            dir("e/"),
            file("e/inner", "ok"),
        ],
    )
    .unwrap();
    assert_eq!(std::fs::read_to_string(h.root.join("a")).unwrap(), "two");
    assert_eq!(
        std::fs::read_to_string(h.root.join("d")).unwrap(),
        "now a file"
    );
    assert_eq!(
        std::fs::read_to_string(h.root.join("e/inner")).unwrap(),
        "ok"
    );
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let h = host();
    let stats = run(
        &h,
        vec![
            file("etc/.wh.motd", ""),
            dir("var/"),
            file("var/.wh..wh..opq", ""),
            file("var/new", "n"),
            file("keep", "k"),
            file(".wh.keep", ""),
        ],
    )
    .unwrap();
    assert_eq!(stats.whiteouts, 2);
    let m = std::fs::symlink_metadata(h.root.join("etc/motd")).unwrap();
    assert_eq!(m.mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(m.rdev(), 0);
    assert!(!h.root.join("etc/.wh.motd").exists());
    let d = File::open(h.root.join("var")).unwrap();
    let mut buf = [0u8; 4];
    let name = CString::new("trusted.overlay.opaque").unwrap();
    // SAFETY: valid descriptor, NUL-terminated name, live buffer.
    let n = unsafe { libc::fgetxattr(d.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), 4) };
    assert_eq!(&buf[..n as usize], b"y");
    assert_eq!(
        std::fs::read_to_string(h.root.join("var/new")).unwrap(),
        "n"
    );
    // Same-layer entry wins over its whiteout.
    assert_eq!(std::fs::read_to_string(h.root.join("keep")).unwrap(), "k");
}

#[test]
fn compressed_layers() {
    use std::io::Write;
    let tar = build(vec![file("a", "gz")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let h = host();
    extract_layer(decompress(&gz[..]).unwrap(), &h.root).unwrap();
    assert_eq!(std::fs::read_to_string(h.root.join("a")).unwrap(), "gz");
    let zs = zstd::stream::encode_all(&tar[..], 1).unwrap();
    let h = host();
    extract_layer(decompress(&zs[..]).unwrap(), &h.root).unwrap();
    assert_eq!(std::fs::read_to_string(h.root.join("a")).unwrap(), "gz");
}

#[test]
fn unpadded_last_entry_is_accepted() {
    // Some writers (umoci) end the stream right after the last entry's data, without the
    // block padding and the end-of-archive blocks.
    let mut t = build(vec![file("a", "x"), file("b", "twelve bytes")]);
    let end = t.len() - 1024 - (512 - 12);
    t.truncate(end);
    let h = host();
    extract_layer(&t[..], &h.root).unwrap();
    assert_eq!(
        std::fs::read_to_string(h.root.join("b")).unwrap(),
        "twelve bytes"
    );
}
