//! Images end to end: one image built offline (busybox rootfs + a layer with a whiteout and an
//! opaque directory) pushed to a real registry (Debian's docker-registry on loopback) and
//! written as an OCI layout and a docker archive, served by `hako serve` from all three;
//! writes of one instance invisible to the next; `limits.disk` enforced inside.
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hako_tests::*;

const REGISTRY: &str = "/usr/bin/docker-registry";

fn tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a tool");
    assert!(out.status.success(), "{cmd:?}: {}", output_text(&out));
}

/// A docker-registry on a free loopback port with its own storage; killed on drop.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let child = Command::new(REGISTRY)
            .args(["serve", &cfg.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The image: the e2e busybox rootfs with two CGIs, `/etc/gone` and `/data/old`, then a layer
/// that removes `/etc/gone` (whiteout) and replaces `/data` (opaque) with `/data/new`.
fn build_image(work: &Path) -> PathBuf {
    let root = Rootfs::new();
    root.cgi(
        "probe",
        "test -e /etc/gone && echo gone-visible\nls /data\ncat /marker 2>/dev/null || echo no-marker\necho written > /marker",
    );
    root.cgi(
        "fill",
        "dd if=/dev/zero of=/fill bs=1024 count=8192 2>&1 | head -1\nrm -f /fill",
    );
    root.write("etc/gone", "old\n");
    root.write("data/old", "old\n");
    let layout = work.join("layout");
    let img = format!("{}:v1", layout.display());
    run(Command::new("umoci").args(["init", "--layout", &layout.to_string_lossy()]));
    run(Command::new("umoci").args(["new", "--image", &img]));
    run(Command::new("umoci").args([
        "insert",
        "--image",
        &img,
        &root.path().to_string_lossy(),
        "/",
    ]));
    run(Command::new("umoci").args(["insert", "--image", &img, "--whiteout", "/etc/gone"]));
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("new"), "new\n").unwrap();
    run(Command::new("umoci").args([
        "insert",
        "--image",
        &img,
        "--opaque",
        &data.to_string_lossy(),
        "/data",
    ]));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &img,
        "--config.cmd",
        "/bin/httpd",
        "--config.cmd",
        "-f",
        "--config.cmd",
        "-p",
        "--config.cmd",
        "8080",
        "--config.cmd",
        "-h",
        "--config.cmd",
        "/www",
        "--config.exposedports",
        "8080/tcp",
    ]));
    layout
}

#[test]
fn one_image_from_registry_layout_and_archive() {
    if skip_unless_root() {
        return;
    }
    for t in [REGISTRY, "skopeo", "umoci"] {
        if !tool(t) {
            println!("SKIP: {t} is not installed (apt-get install docker-registry skopeo umoci)");
            return;
        }
    }
    let work = tempfile::tempdir().expect("tempdir");
    let layout = build_image(work.path());
    let registry = Registry::start();
    let pushed = format!("docker://127.0.0.1:{}/hako/e2e:v1", registry.port);
    run(Command::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &pushed,
    ]));
    let archive = work.path().join("image.tar");
    run(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker-archive:{}", archive.display()),
    ]));
    let app = |name: &str, image: &str, extra: &str| {
        format!(
            "  - name: {name}\n    hosts: [{name}.test]\n    image: {image}\n    limits: {{disk: 2Mi}}\n    lifetime: {{idle_timeout: 1s}}\n{extra}"
        )
    };
    let apps_yaml = format!(
        "apps:\n{}{}{}",
        app("reg", &pushed, ""),
        app("oci", &format!("oci:{}:v1", layout.display()), ""),
        app(
            "arch",
            &format!("docker-archive:{}", archive.display()),
            "    read_only: true\n"
        ),
    );
    let top = format!(
        "governor: {{enabled: false}}\nregistries:\n  - host: 127.0.0.1:{}\n    insecure: true\n",
        registry.port
    );
    let mut hako = Hako::start_with(&apps_yaml, &[], &top);

    // The same image from the three sources: the image config's command and port, the
    // busybox layer's files, the whiteout and the opaque directory applied.
    for name in ["reg", "oci", "arch"] {
        let r = hako.get(&format!("{name}.test"), "/index.html");
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(r.text(), INDEX_BODY, "{name}");
    }
    let r = hako.get("reg.test", "/cgi-bin/probe");
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.text();
    assert!(
        !first.contains("gone-visible"),
        "the whiteout hides /etc/gone: {first}"
    );
    assert!(
        first.contains("new") && !first.contains("old"),
        "/data is opaque: {first}"
    );
    assert!(first.contains("no-marker"), "{first}");

    // The read-only one cannot write its root.
    let r = hako.get("arch.test", "/cgi-bin/probe");
    assert!(r.text().contains("no-marker"), "{}", r.text());
    let r = hako.get("arch.test", "/cgi-bin/probe");
    assert!(
        r.text().contains("no-marker"),
        "read_only: the root is not writable: {}",
        r.text()
    );

    // The next instance of `reg` does not see the first one's write.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !hako.instances_of("reg").is_empty() {
        assert!(
            Instant::now() < deadline,
            "reg's instance did not stop when idle"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = hako.get("reg.test", "/cgi-bin/probe");
    assert!(
        r.text().contains("no-marker"),
        "a new instance starts from the image: {}",
        r.text()
    );
    // Within one instance, the write is there.
    let r = hako.get("reg.test", "/cgi-bin/probe");
    assert!(r.text().contains("written"), "{}", r.text());

    // limits.disk: 8 MiB do not fit in 2Mi; hako keeps serving.
    let r = hako.get("oci.test", "/cgi-bin/fill");
    assert!(r.text().contains("No space left"), "{}", r.text());
    assert_eq!(hako.get("oci.test", "/index.html").status, 200);

    // Layers shared: one store, each layer once.
    let layers = std::fs::read_dir(hako.state_dir().join("images/layers"))
        .unwrap()
        .count();
    assert_eq!(
        layers, 3,
        "three distinct layers for three apps of one image"
    );
    let m = hako.metrics();
    assert!(m.sum("hako_image_pulls_total", &[("result", "ok")]) >= 3.0);
    assert!(m.value("hako_image_store_bytes", &[]).unwrap_or(0.0) > 1e6);
    hako.stop();
}

#[test]
fn a_missing_tag_answers_502_naming_the_reference() {
    if skip_unless_root() {
        return;
    }
    if !tool(REGISTRY) {
        println!("SKIP: docker-registry is not installed");
        return;
    }
    let registry = Registry::start();
    let image = format!("docker://127.0.0.1:{}/hako/none:nope", registry.port);
    let apps_yaml = format!("apps:\n  - name: gone\n    hosts: [gone.test]\n    image: {image}\n");
    let top = format!(
        "governor: {{enabled: false}}\nregistries:\n  - host: 127.0.0.1:{}\n    insecure: true\n",
        registry.port
    );
    let mut hako = Hako::start_with(&apps_yaml, &[], &top);
    let r = hako.get("gone.test", "/");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains(&image), "{}", r.text());
    assert!(r.text().contains("no such tag"), "{}", r.text());
    assert_eq!(hako.get("gone.test", "/").status, 502);
    hako.stop();
}
