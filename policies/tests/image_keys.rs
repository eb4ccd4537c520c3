//! `image`, `read_only` and `registries`: values, defaults taken from the image, and faults
//! at their position.
use std::path::Path;

use hako_policies::{load_str, ImageRef, LoadError, RegistryRef, Rootfs};

fn faults(yaml: &str) -> Vec<(usize, usize, String)> {
    let err = load_str(yaml, Path::new("t.yaml")).unwrap_err();
    let LoadError::Invalid(diags) = err else {
        panic!("expected validation errors, got {err}");
    };
    diags
        .iter()
        .map(|d| (d.line, d.column, d.message.clone()))
        .collect()
}

#[test]
fn an_image_app_needs_no_command() {
    let yaml = "registries:\n  - host: 127.0.0.1:5000\n    insecure: true\napps:\n  - name: web\n    hosts: [web.test]\n    image: docker://127.0.0.1:5000/team/web:v2\n    read_only: true\n";
    let cfg = load_str(yaml, Path::new("/etc/hako/t.yaml")).unwrap();
    let Rootfs::Image(src) = &cfg.apps[0].rootfs else {
        panic!("not an image app: {:?}", cfg.apps[0].rootfs);
    };
    assert_eq!(
        src.reference,
        ImageRef::Registry {
            host: "127.0.0.1:5000".into(),
            name: "team/web".into(),
            reference: RegistryRef::Tag("v2".into())
        }
    );
    assert!(src.read_only && !src.command_set && !src.port_set);
    assert!(cfg.apps[0].command.is_empty());
    assert_eq!(cfg.registries.len(), 1);
    assert!(cfg.registries[0].insecure);
    // A relative layout path is resolved against the configuration's directory.
    let yaml = "apps:\n  - name: web\n    hosts: [web.test]\n    image: oci:images/web:v1\n    command: [/bin/web]\n";
    let cfg = load_str(yaml, Path::new("/etc/hako/t.yaml")).unwrap();
    let Rootfs::Image(src) = &cfg.apps[0].rootfs else {
        panic!()
    };
    assert_eq!(src.reference.to_string(), "oci:/etc/hako/images/web:v1");
    assert!(src.command_set);
}

#[test]
fn bad_image_keys_are_faults_at_their_line() {
    let got = faults(
        "apps:\n  - name: a\n    hosts: [a.test]\n    image: http://x/y\n  - name: b\n    hosts: [b.test]\n    image: oci:/x\n    rootfs: host\n  - name: c\n    hosts: [c.test]\n    rootfs: host\n    command: [sh]\n    read_only: true\n",
    );
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!((got[0].0, got[0].1), (4, 12), "{got:?}");
    assert!(got[0].2.contains("unknown scheme"), "{got:?}");
    assert_eq!(got[1].0, 7, "{got:?}");
    assert!(
        got[1].2.contains("exactly one of `image` and `rootfs`"),
        "{got:?}"
    );
    assert_eq!(got[2].0, 13, "{got:?}");
    assert!(got[2].2.contains("only meaningful with `image`"), "{got:?}");
}

#[test]
fn bad_registries_are_faults_at_their_line() {
    let got = faults(
        "registries:\n  - host: \"bad host\"\n  - host: r.example\n    username: me\n  - host: s.example\n    password_file: /nonexistent/pw\n    username: me\napps:\n  - name: a\n    hosts: [a.test]\n    image: docker://r.example/a\n",
    );
    let lines: Vec<usize> = got.iter().map(|g| g.0).collect();
    assert_eq!(lines, vec![2, 3, 6], "{got:?}");
    assert!(got[1].2.contains("go together"), "{got:?}");
    assert!(got[2].2.contains("does not exist"), "{got:?}");
}
