//! `hako run`: one container in the foreground, with the same launcher code path as `serve`
//! (spawned directly: this process is single-threaded, no zygote needed).
//!
//! Forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT to the container (a second SIGINT/SIGTERM kills it:
//! an app running as pid 1 without handlers ignores them), exits with its status (128+signal if
//! killed; 127/126 when the command is missing/not executable), reports an OOM kill (exit
//! 137), removes its cgroup on every path. Its mounts live in
//! its own mount namespace and vanish with it.
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use hako_launcher::{
    pidfd_signal, spawn_prepared, wait_pidfd, CgroupLimits, CgroupRoot, ContainerSpec,
    ExitStatusInfo, InstanceCgroup, LaunchError, NetworkMode, Output, PreparedSpec, RootfsSpec,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

// Parent group of `hako run` containers (one group `run-<pid>` each), not `hako serve`'s.
use hako_policies::RUN_CGROUP_PARENT;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    /// Own network namespace with loopback only.
    Isolated,
    /// The host's network.
    Host,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file; run the app named APP from it.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        requires = "app",
        conflicts_with = "rootfs"
    )]
    pub config: Option<PathBuf>,
    /// Root filesystem: a directory (bind-mounted read-only), or `host` for a read-only view of
    /// the host's /usr, /bin, /sbin, /lib* and /etc.
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<String>,
    /// Memory limit, like 128Mi or 1G.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPU limit in cores (0.5 = half a core).
    #[arg(long, value_name = "CORES")]
    pub cpu: Option<f64>,
    /// Maximum number of processes and threads.
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// Network mode.
    #[arg(long, value_enum)]
    pub network: Option<NetworkArg>,
    /// Extra environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Hostname inside the container.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Run in a user namespace of its own (container ids 0-65535 are host ids
    /// 100000-165535), as the per-app key `user_namespace: true`.
    #[arg(long)]
    pub userns: bool,
    /// App to run from --config.
    #[arg(value_name = "APP")]
    pub app: Option<String>,
    /// Command to run (after `--`); with --config it replaces the app's command.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Builds the spec and limits from the command line.
fn build(args: &RunArgs) -> anyhow::Result<(ContainerSpec, CgroupLimits)> {
    let (mut spec, mut limits) = if let Some(config) = &args.config {
        let app_name = args
            .app
            .as_deref()
            .context("APP is required with --config")?;
        let cfg = hako_policies::load_file(config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let app = cfg
            .app(app_name)
            .with_context(|| format!("{}: no app named {app_name:?}", config.display()))?;
        if matches!(app.rootfs, hako_policies::Rootfs::Image(_)) {
            bail!("{app_name}: `hako run` does not run image-based apps yet; use `hako serve`");
        }
        if app.network == hako_policies::Network::Egress && args.network.is_none() {
            // Its link out needs the serve's nftables table (masquerading, egress_allow) and
            // forwarding: running it isolated without saying so would look like a broken network.
            bail!(
                "{app_name}: `hako run` does not give `network: egress` its outbound link (it \
                 needs `hako serve`'s nftables table); use `hako serve`, or run it without one \
                 with --network isolated (or --network host)"
            );
        }
        let spec = crate::container::container_spec(app, app.port);
        (spec, crate::container::cgroup_limits(app))
    } else {
        let Some(rootfs) = &args.rootfs else {
            bail!("either --config FILE APP or --rootfs DIR -- CMD... is required");
        };
        if args.app.is_some() {
            bail!("APP is only valid with --config; put the command after `--`");
        }
        if args.command.is_empty() {
            bail!("no command: use `hako run --rootfs DIR -- CMD...`");
        }
        let rootfs = if rootfs == "host" {
            RootfsSpec::Host
        } else {
            let p = Path::new(rootfs);
            if !p.is_dir() {
                bail!("--rootfs {rootfs}: not a directory");
            }
            RootfsSpec::Dir(p.to_owned())
        };
        (
            ContainerSpec::new(rootfs, args.command.clone()),
            CgroupLimits::default(),
        )
    };
    if args.config.is_some() && !args.command.is_empty() {
        spec.command = args.command.clone();
    }
    if args.userns {
        spec.user_namespace = true;
    }
    if let Some(m) = &args.memory {
        limits.memory_max =
            Some(hako_policies::parse_size(m).map_err(|e| anyhow::anyhow!("--memory {m}: {e}"))?);
    }
    if let Some(c) = args.cpu {
        if !(c > 0.0 && c.is_finite()) {
            bail!("--cpu {c}: must be a positive number of cores");
        }
        limits.cpu = Some(c);
    }
    if let Some(p) = args.pids {
        if p == 0 {
            bail!("--pids 0: must be at least 1");
        }
        limits.pids = Some(p);
    }
    if let Some(n) = args.network {
        spec.network = match n {
            NetworkArg::Isolated => NetworkMode::Isolated,
            NetworkArg::Host => NetworkMode::Host,
        };
    }
    if let Some(h) = &args.hostname {
        spec.hostname = h.clone();
    }
    for kv in &args.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env {kv}: expected KEY=VALUE");
        };
        spec.env.retain(|(ek, _)| ek != k);
        spec.env.push((k.to_owned(), v.to_owned()));
    }
    Ok((spec, limits))
}

/// Removes the instance cgroup on every exit path.
struct CgroupGuard(Option<InstanceCgroup>);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take() {
            let name = cg.name().to_owned();
            if let Err(e) = cg.remove() {
                eprintln!("hako: removing cgroup {name}: {e}");
            }
        }
    }
}

pub(super) fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let (spec, limits) = build(&args)?;
    let prepared = PreparedSpec::new(&spec)?;
    let root = CgroupRoot::detect(
        Path::new(hako_launcher::cgroup::SYS_FS_CGROUP),
        RUN_CGROUP_PARENT,
    )
    .context("cgroups")?;
    let name = format!("run-{}", std::process::id());
    // A stale group of a previous process with our pid would hold wrong limits.
    if let Some(old) = root.open(&name)? {
        old.remove()?;
    }
    let guard = CgroupGuard(Some(root.create(&name, &limits)?));
    let cg = guard.0.as_ref().context("cgroup")?;

    // Signals become readable events; the child resets its mask before exec.
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        mask.add(s);
    }
    mask.thread_block().context("sigprocmask")?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")?;

    let spawned = match spawn_prepared(&prepared, Some(&cg.attach()), &Output::Inherit) {
        Ok(s) => s,
        // Shell convention: 127 command not found, 126 found but not executable.
        Err(
            e @ LaunchError::Exec {
                errno: libc::ENOENT,
                ..
            },
        ) => {
            eprintln!("hako: {e}");
            return Ok(ExitCode::from(127));
        }
        Err(e @ (LaunchError::Exec { .. } | LaunchError::BadInterpreter { .. })) => {
            eprintln!("hako: {e}");
            return Ok(ExitCode::from(126));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::debug!(pid = spawned.pid, cgroup = %name, "container started");
    let mut stops = 0;
    let status: ExitStatusInfo = loop {
        let mut fds = [
            PollFd::new(spawned.pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        while let Ok(Some(info)) = sfd.read_signal() {
            let mut sig = info.ssi_signo as i32;
            if sig == libc::SIGINT || sig == libc::SIGTERM {
                stops += 1;
                if stops > 1 {
                    eprintln!("hako: second stop signal: killing the container");
                    sig = libc::SIGKILL;
                }
            }
            if let Err(e) = pidfd_signal(spawned.pidfd.as_raw_fd(), sig) {
                tracing::debug!(error = %e, "forwarding signal");
            }
        }
        if let Some(st) = wait_pidfd(spawned.pidfd.as_fd(), true)? {
            break st;
        }
    };
    // Only a SIGKILL can be the OOM killer's: other endings skip reading the counters.
    let oom = status.signal() == Some(libc::SIGKILL)
        && cg.stats().map(|s| s.oom_kills > 0).unwrap_or(false);
    let code = if oom {
        let limit = cg
            .limits()
            .ok()
            .and_then(|l| l.memory_max)
            .or(limits.memory_max);
        match limit {
            Some(n) => eprintln!("hako: container killed: out of memory (memory limit {n} bytes)"),
            None => eprintln!("hako: container killed: out of memory"),
        }
        137
    } else {
        status.shell_code()
    };
    drop(guard);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn rootfs_form_builds_spec_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let cli = Cli::try_parse_from([
            "run",
            "--rootfs",
            root,
            "--memory",
            "64Mi",
            "--cpu",
            "0.5",
            "--pids",
            "20",
            "--network",
            "host",
            "-e",
            "A=b",
            "--",
            "/bin/sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
        let (spec, limits) = build(&cli.run).unwrap();
        assert_eq!(spec.command, vec!["/bin/sh", "-c", "exit 3"]);
        assert_eq!(spec.rootfs, RootfsSpec::Dir(dir.path().to_owned()));
        assert_eq!(spec.network, NetworkMode::Host);
        assert!(spec.env.contains(&("A".into(), "b".into())));
        assert_eq!(
            limits,
            CgroupLimits {
                cpu: Some(0.5),
                memory_max: Some(64 << 20),
                memory_high: None,
                pids: Some(20)
            }
        );
    }

    #[test]
    fn bad_arguments_are_explained() {
        let cli =
            Cli::try_parse_from(["run", "--rootfs", "/nonexistent-dir", "--", "true"]).unwrap();
        assert!(build(&cli.run)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
        let cli = Cli::try_parse_from(["run", "--rootfs", "host"]).unwrap();
        assert!(build(&cli.run)
            .unwrap_err()
            .to_string()
            .contains("no command"));
        let cli =
            Cli::try_parse_from(["run", "--rootfs", "host", "--memory", "lots", "--", "true"])
                .unwrap();
        assert!(build(&cli.run)
            .unwrap_err()
            .to_string()
            .contains("--memory lots"));
        assert!(
            Cli::try_parse_from(["run", "--config", "x.yaml"]).is_err(),
            "APP is required"
        );
    }

    /// An egress app's link out needs `hako serve`: `hako run` says so instead of running it
    /// isolated, unless the network is chosen on the command line.
    #[test]
    fn egress_apps_are_refused_unless_the_network_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("hako.yaml");
        std::fs::write(
            &cfg,
            "apps:\n  - name: out\n    hosts: [out.test]\n    rootfs: host\n    command: [/bin/true]\n    network: egress\n",
        )
        .unwrap();
        let cfg = cfg.to_str().unwrap();
        let cli = Cli::try_parse_from(["run", "--config", cfg, "out"]).unwrap();
        let err = build(&cli.run).unwrap_err().to_string();
        assert!(
            err.contains("network: egress") && err.contains("hako serve"),
            "{err}"
        );
        let cli =
            Cli::try_parse_from(["run", "--config", cfg, "--network", "isolated", "out"]).unwrap();
        let (spec, _) = build(&cli.run).unwrap();
        assert_eq!(spec.network, NetworkMode::Isolated);
        assert!(spec.egress.is_none());
    }
}
