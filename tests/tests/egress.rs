//! `network: egress` end to end: the test builds its own "outside" (a network namespace with a
//! veth to the host and busybox httpd servers on addresses of the 198.18.0.0/15 benchmarking
//! range), then an `egress` app reaches it, an `isolated` app cannot, an `egress_allow` app
//! reaches only what it allows. No packet leaves the machine. Afterwards nothing of hako's is
//! left in the nftables ruleset, in the links or in `net.ipv4.ip_forward`.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hako_tests::*;

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{args:?}: {}", output_text(&out)))
    }
}

/// The test's outside world: namespace `ns`, host end `link` (198.18.K.1/24), servers on
/// 198.18.K.2 ports 80 and 8081. Removed on drop.
struct Outside {
    ns: String,
    link: String,
    k: u32,
    servers: Vec<Child>,
    _www: tempfile::TempDir,
}

impl Outside {
    fn new() -> Outside {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pid = std::process::id();
        let k = (pid * 2 + n) % 200 + 20;
        let ns = format!("hako-test-out-{pid}-{n}");
        let link = format!("hto{:x}{n}", pid & 0xfffff);
        let www = tempfile::tempdir().expect("tempdir");
        std::fs::write(www.path().join("index.html"), "hello from outside\n").unwrap();
        let mut o = Outside {
            ns: ns.clone(),
            link: link.clone(),
            k,
            servers: Vec::new(),
            _www: www,
        };
        let steps: Vec<Vec<String>> = vec![
            vec!["ip", "netns", "add", &ns],
            vec![
                "ip", "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
            vec![
                "ip",
                "addr",
                "add",
                &format!("198.18.{k}.1/24"),
                "dev",
                &link,
            ],
            vec!["ip", "link", "set", &link, "up"],
            vec![
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("198.18.{k}.2/24"),
                "dev",
                "eth0",
            ],
            vec!["ip", "-n", &ns, "link", "set", "eth0", "up"],
            vec!["ip", "-n", &ns, "link", "set", "lo", "up"],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(str::to_owned).collect())
        .collect();
        for s in &steps {
            let args: Vec<&str> = s.iter().map(String::as_str).collect();
            sh(&args).unwrap_or_else(|e| panic!("{e}"));
        }
        for port in ["80", "8081"] {
            let c = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    HOST_BUSYBOX,
                    "httpd",
                    "-f",
                    "-p",
                    port,
                    "-h",
                ])
                .arg(o._www.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start httpd in the outside namespace");
            o.servers.push(c);
        }
        o
    }

    fn server(&self) -> String {
        format!("198.18.{}.2", self.k)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = sh(&["ip", "link", "del", &self.link]);
        let _ = sh(&["ip", "netns", "del", &self.ns]);
    }
}

/// The documented name prefix of a serve's links: `hk` and 4 hex digits of FNV-1a of its
/// `cgroup_parent` folded to 16 bits (docs/operations.md).
fn serve_veth_prefix(cgroup_parent: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in cgroup_parent.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("hk{:04x}", (h ^ (h >> 16)) & 0xffff)
}

fn hako_links(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn egress_reaches_out_isolated_does_not_allow_list_filters_and_nothing_remains() {
    hako_tests::require_root!();
    if sh(&["nft", "--version"]).is_err() {
        eprintln!("SKIPPED: needs nft (apt-get install nftables)");
        return;
    }
    let forward_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let outside = Outside::new();
    let server = outside.server();
    let rootfs = Rootfs::new();
    rootfs.cgi(
        "fetch",
        // nc, not wget: a static busybox wget looks up the `http` service (NSS: a crash in a
        // rootfs without glibc's NSS modules). QUERY_STRING is `ADDR:PORT`.
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 ${QUERY_STRING%:*} ${QUERY_STRING#*:} 2>&1 | grep -q 'from outside' && echo 'hello from outside' || echo FAILED",
    );
    rootfs.cgi("resolv", "cat /etc/resolv.conf 2>&1");
    let allow = format!("egress_allow: ['{server}/32:80']");
    let yaml = apps(&[
        httpd_app("out", &rootfs, &["network: egress"]),
        httpd_app("iso", &rootfs, &["network: isolated"]),
        httpd_app("allow", &rootfs, &["network: egress", &allow]),
    ]);
    let subnet = format!("egress: {{subnet: 198.19.{}.0/24}}", outside.k);
    let mut h = Hako::start_with(
        &yaml,
        &[&rootfs],
        &format!("governor:\n  enabled: false\n{subnet}"),
    );
    let prefix = serve_veth_prefix(&h.cgroup_parent);
    let table = format!("hako-{}", h.cgroup_parent);

    let fetch = |h: &Hako, app: &str, target: &str| {
        h.get(&format!("{app}.test"), &format!("/cgi-bin/fetch?{target}"))
            .text()
    };
    // An egress app reaches the outside; an isolated one cannot.
    let got = fetch(&h, "out", &format!("{server}:80"));
    assert!(got.contains("hello from outside"), "egress app: {got}");
    let got = fetch(&h, "iso", &format!("{server}:80"));
    assert!(got.contains("FAILED"), "isolated app reached out: {got}");
    // The allow list: port 80 of the server, nothing else.
    let got = fetch(&h, "allow", &format!("{server}:80"));
    assert!(got.contains("hello from outside"), "allowed target: {got}");
    let got = fetch(&h, "allow", &format!("{server}:8081"));
    assert!(got.contains("FAILED"), "not allowed target reached: {got}");
    // The unrestricted app reaches the other port too.
    let got = fetch(&h, "out", &format!("{server}:8081"));
    assert!(
        got.contains("hello from outside"),
        "egress app, port 8081: {got}"
    );
    // The host's resolver configuration is in the container.
    let host_ns = std::fs::read_to_string(
        std::fs::canonicalize("/etc/resolv.conf").unwrap_or("/etc/resolv.conf".into()),
    )
    .unwrap_or_default();
    if let Some(line) = host_ns
        .lines()
        .find(|l| l.starts_with("nameserver") && !l.contains("127."))
    {
        let got = h.get("out.test", "/cgi-bin/resolv").text();
        assert!(
            got.contains(line.trim()),
            "resolv.conf in the container: {got}"
        );
    }
    // While serving: the table and the links exist, named after this serve.
    let ruleset = sh(&["nft", "list", "table", "ip", &table]).expect("hako's table");
    assert!(ruleset.contains("masquerade"), "{ruleset}");
    assert!(
        !hako_links(&prefix).is_empty(),
        "no {prefix}* link while serving"
    );

    h.stop();
    // Nothing of hako's remains (a namespace's links go with it, asynchronously: wait a bit).
    let end = Instant::now() + Duration::from_secs(5);
    while !hako_links(&prefix).is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        hako_links(&prefix),
        Vec::<String>::new(),
        "links left behind"
    );
    let ruleset = sh(&["nft", "list", "ruleset"]).unwrap();
    assert!(!ruleset.contains(&table), "table left behind:\n{ruleset}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        forward_before,
        "ip_forward not restored"
    );
}

#[test]
fn a_subnet_clashing_with_a_host_route_is_refused_at_its_line() {
    hako_tests::require_root!();
    let outside = Outside::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hako.yaml");
    std::fs::write(
        &cfg,
        format!(
            "egress:\n  subnet: 198.18.{}.0/25\napps:\n  - name: a\n    hosts: [a.test]\n    \
             rootfs: host\n    command: [sh]\n    network: egress\n    egress_allow: [nonsense]\n",
            outside.k
        ),
    )
    .unwrap();
    let out = Command::new(hako_bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(":2:")
            && text.contains(&format!(
                "overlaps the host route 198.18.{}.0/24 dev {}",
                outside.k, outside.link
            )),
        "{text}"
    );
    assert!(
        text.contains(":9:") && text.contains("egress_allow[0]"),
        "{text}"
    );
}
