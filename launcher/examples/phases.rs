//! Boot-cost breakdown: spawns `/bin/true` N times per variant and prints p50 (µs).
//! Usage: phases ROOTFS [N]
use std::os::fd::AsFd;
use std::time::Instant;

use hako_launcher::{
    spawn_prepared, wait_pidfd, ContainerSpec, NetworkMode, Output, PreparedSpec, RootfsSpec,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = std::path::PathBuf::from(&args[1]);
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let base = ContainerSpec::new(RootfsSpec::Dir(root), vec!["/bin/true".into()]);
    let variants: Vec<(&str, ContainerSpec)> = vec![
        ("all", base.clone()),
        (
            "no-net",
            ContainerSpec {
                network: NetworkMode::Host,
                ..base.clone()
            },
        ),
        (
            "no-seccomp",
            ContainerSpec {
                seccomp: false,
                ..base.clone()
            },
        ),
        (
            "no-net-no-seccomp",
            ContainerSpec {
                seccomp: false,
                network: NetworkMode::Host,
                ..base.clone()
            },
        ),
    ];
    for (name, spec) in variants {
        let p = PreparedSpec::new(&spec).unwrap();
        let mut s = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            let sp = spawn_prepared(&p, None, &Output::Null).unwrap();
            let t_exec = t.elapsed().as_micros() as u64;
            wait_pidfd(sp.pidfd.as_fd(), false).unwrap();
            s.push((t.elapsed().as_micros() as u64, t_exec));
        }
        s.sort_unstable();
        let mut e: Vec<u64> = s.iter().map(|x| x.1).collect();
        e.sort_unstable();
        println!(
            "{name:20} p50 total {:6} us   p50 to-exec {:6} us",
            s[n / 2].0,
            e[n / 2]
        );
    }
}
