//! `hako bench-spawn` (hidden): launcher boot latency. Starts a zygote (unless --no-zygote),
//! prepares the spec once, then N times: take the instance cgroup (by default from a
//! [`CgroupPool`] refilled in the background, as `hako serve` does; or created in the sample,
//! or none), spawn `/bin/true` with all isolation on (pid/mount/uts/ipc/cgroup/net
//! namespaces, read-only rootfs, seccomp, reduced capabilities), reap it. Each sample is
//! spawn request → exit reaped, including taking or creating the cgroup; the cgroup is
//! removed after the sample (off the measured path).
//!
//! stdout: one JSON line `{"runtime":"hako-launcher","samples_us":[...]}`; a summary on stderr.
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use clap::ValueEnum;
use hako_launcher::{
    spawn_prepared, wait_pidfd, CgroupLimits, CgroupPool, CgroupRoot, ContainerSpec,
    ExitStatusInfo, InstanceCgroup, Output, PreparedSpec, RootfsSpec, SpawnRequest, Zygote,
    ZygoteOptions,
};

/// Where each boot's cgroup comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CgroupMode {
    /// Taken from a pool refilled in the background between boots (what `hako serve` does).
    Pool,
    /// Created inside each sample.
    PerBoot,
    /// No cgroup at all (isolates the cgroup's cost).
    None,
}

#[derive(Debug, Args)]
pub struct BenchSpawnArgs {
    /// Root filesystem directory containing the command (default /bin/true).
    #[arg(long, value_name = "DIR")]
    pub rootfs: PathBuf,
    /// Number of recorded spawns (after 3 unrecorded warm-up boots of a fresh process).
    #[arg(short = 'n', long, default_value_t = 200)]
    pub n: usize,
    /// Spawn directly from this process instead of through the zygote.
    #[arg(long)]
    pub no_zygote: bool,
    /// Where each boot's cgroup comes from.
    #[arg(long, value_enum, default_value_t = CgroupMode::Pool)]
    pub cgroups: CgroupMode,
    /// Pause between iterations (lets the zygote's helper rebuild warm namespaces, as between
    /// real cold starts); not part of any sample.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub interval_ms: u64,
    /// Warm mount+network namespaces kept per app by the zygote (0: build them in each boot).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub warm: usize,
    /// Boot in a user namespace of its own (`user_namespace: true`: always cold, no warm
    /// namespaces). The rootfs must be searchable by others.
    #[arg(long)]
    pub userns: bool,
    /// Boot as `network: egress`: each warm namespace set (or, with none ready, the boot
    /// itself) gets a veth pair with a /31 of --egress-subnet and a default route, as under
    /// `hako serve` (no nftables table: the boot path never touches it). Every link is
    /// removed at the end.
    #[arg(long, conflicts_with_all = ["userns", "no_zygote"])]
    pub egress: bool,
    /// The subnet of --egress links (apart from `hako serve`'s default 10.213.0.0/16).
    #[arg(long, value_name = "CIDR", default_value = "10.214.0.0/16")]
    pub egress_subnet: hako_policies::Ipv4Cidr,
    /// Command to run.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Instance groups removed on drop (error paths) or explicitly.
struct Groups(Vec<InstanceCgroup>);

impl Groups {
    /// Removes every group; `true` if there was any.
    fn remove_all(mut self) -> anyhow::Result<bool> {
        let any = !self.0.is_empty();
        for cg in self.0.drain(..) {
            cg.remove()?;
        }
        Ok(any)
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        for cg in self.0.drain(..) {
            let _ = cg.remove();
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Deletes the benchmark's egress links (normally gone with their namespaces already) on
/// every path out of [`run`].
struct EgressLinks(Option<String>);

impl Drop for EgressLinks {
    fn drop(&mut self) {
        let Some(prefix) = self.0.take() else {
            return;
        };
        match hako_launcher::egress::remove_links(&prefix, Path::new("/sys/class/net")) {
            Ok(left) if !left.is_empty() => {
                tracing::debug!(links = ?left, "removed egress links left by the benchmark")
            }
            Ok(_) => {}
            Err(e) => eprintln!("hako bench-spawn: cannot remove egress links {prefix}*: {e}"),
        }
    }
}

/// Boots run before the recorded ones (see the loop in [`run`]).
const WARMUP_BOOTS: usize = 3;

pub fn run(args: BenchSpawnArgs) -> anyhow::Result<ExitCode> {
    // The zygote first, while this process is still single-threaded.
    let zygote = if args.no_zygote {
        None
    } else {
        Some(Zygote::start_with(ZygoteOptions {
            warm_namespaces: args.warm,
            ..ZygoteOptions::default()
        })?)
    };
    let command = if args.command.is_empty() {
        vec!["/bin/true".to_owned()]
    } else {
        args.command.clone()
    };
    let mut spec = ContainerSpec::new(RootfsSpec::Dir(args.rootfs.clone()), command);
    spec.user_namespace = args.userns;
    // `z` is never a hex digit: no serve's link prefix (`hk` + 4 hex digits) matches these.
    let egress_links = EgressLinks(args.egress.then(|| {
        let prefix = format!("hkz{:04x}", std::process::id() & 0xffff);
        spec.egress = Some(hako_launcher::egress::EgressSpec {
            veth_prefix: prefix.clone(),
            subnet: args.egress_subnet.addr,
            prefix: args.egress_subnet.prefix,
        });
        prefix
    }));
    let prepared = PreparedSpec::new(&spec)?;
    // Beside `hako run`'s groups: under `hako serve`'s parent, a serve starting meanwhile
    // would remove the benchmark's groups as orphans.
    let root = CgroupRoot::detect(
        Path::new(hako_launcher::cgroup::SYS_FS_CGROUP),
        hako_policies::RUN_CGROUP_PARENT,
    )
    .context("cgroups")?;
    let limits = CgroupLimits {
        cpu: Some(1.0),
        memory_max: Some(64 << 20),
        memory_high: None,
        pids: Some(64),
    };
    let root = Arc::new(root);
    let base = format!("bench-{}", std::process::id());
    let ids = Arc::new(AtomicU64::new(1));
    // Two groups kept ready, as for every app of `hako serve`; dropped (and its groups
    // removed) on every path out of this function.
    let pool = match args.cgroups {
        CgroupMode::Pool => {
            let p = CgroupPool::start(root.clone(), ids.clone(), 2, 1)?;
            p.want(&base, &limits);
            Some(p)
        }
        _ => None,
    };
    let req_base = SpawnRequest {
        spec: spec.clone(),
        spec_key: "bench".into(),
        cgroup: None,
        log_path: None,
        stderr_path: None,
    };
    // Warm-up: prepares the zygote's cache and faults in the code paths.
    if let Some(z) = &zygote {
        let s = z.spawn(&req_base)?;
        wait_pidfd(s.pidfd.as_fd(), false)?;
    }
    let mut samples = Vec::with_capacity(args.n);
    let mut warm_boots = 0usize;
    let mut pooled = 0usize;
    let mut removal_us = Vec::with_capacity(args.n);
    let mut create_us = Vec::with_capacity(args.n);
    // The first boots of a fresh process take paths nothing has taken yet (the vfork child
    // stack, the first pooled group, cold code pages): 3-8 ms each, not the steady state of a
    // running hako. They are run like the others and not recorded.
    for i in 0..args.n + WARMUP_BOOTS {
        let record = i >= WARMUP_BOOTS;
        if args.interval_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(args.interval_ms));
        }
        let t0 = Instant::now();
        let claimed = pool.as_ref().and_then(|p| p.claim(&base, &limits));
        pooled += usize::from(record && claimed.is_some());
        let cg = match (claimed, args.cgroups) {
            (_, CgroupMode::None) => None,
            (Some((_, cg)), _) => Some(cg),
            (None, _) => {
                let t = Instant::now();
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let cg = root.create(&format!("{base}-{id}"), &limits)?;
                if record {
                    create_us.push(t.elapsed().as_micros() as u64);
                }
                Some(cg)
            }
        };
        let cg = Groups(cg.into_iter().collect());
        let attach = cg.0.first().map(InstanceCgroup::attach);
        let spawned = match &zygote {
            Some(z) => z.spawn(&SpawnRequest {
                cgroup: attach,
                ..req_base.clone()
            })?,
            None => spawn_prepared(&prepared, attach.as_ref(), &Output::Null)?,
        };
        let status = wait_pidfd(spawned.pidfd.as_fd(), false)?;
        if record {
            samples.push(t0.elapsed().as_micros() as u64);
            warm_boots += usize::from(spawned.warm);
        }
        if status != Some(ExitStatusInfo::Exited(0)) {
            anyhow::bail!("iteration {i}: container ended with {status:?}");
        }
        let t1 = Instant::now();
        if cg.remove_all()? && record {
            removal_us.push(t1.elapsed().as_micros() as u64);
        }
    }
    drop(pool);
    // The zygote's namespace sets (and their links) first, then whatever link is left.
    let used_zygote = zygote.is_some();
    drop(zygote);
    drop(egress_links);
    println!(
        "{}",
        serde_json::json!({"runtime": "hako-launcher", "samples_us": samples})
    );
    let mut sorted = samples.clone();
    sorted.sort_unstable();
    removal_us.sort_unstable();
    create_us.sort_unstable();
    eprintln!(
        "hako-launcher n={} zygote={} warm={}{} ({} boots took warm namespaces) interval={}ms cgroups={:?} ({} from the pool): p50 {} us, p90 {} us, p99 {} us, min {} us; cgroup creation p50 {} us (in the samples), removal p50 {} us (not)",
        args.n,
        used_zygote,
        args.warm,
        if args.egress { " egress" } else { "" },
        warm_boots,
        args.interval_ms,
        args.cgroups,
        pooled,
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.9),
        percentile(&sorted, 0.99),
        sorted.first().copied().unwrap_or(0),
        percentile(&create_us, 0.5),
        percentile(&removal_us, 0.5),
    );
    Ok(ExitCode::SUCCESS)
}
