//! What the launcher is asked to run for an app: its spec, the spec's cache key and the
//! app's cgroup limits.
use std::collections::BTreeMap;

use hako_launcher::cgroup::CgroupLimits;
use hako_launcher::spec::{ContainerSpec, NetworkMode, RootfsSpec, DEFAULT_PATH};
use hako_policies::{App, Network, Rootfs};

/// Builds the launcher's spec for an app.
pub fn container_spec(app: &App, port: u16) -> ContainerSpec {
    let rootfs = match &app.rootfs {
        Rootfs::Host => RootfsSpec::Host,
        Rootfs::Dir(p) => RootfsSpec::Dir(p.clone()),
        // Replaced by the spawn: `ContainerSpec::image` (the layers, once pulled), or with
        // user_namespace a directory (the instance's overlay, mounted on the host).
        Rootfs::Image(_) => RootfsSpec::Dir(std::path::PathBuf::new()),
    };
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), DEFAULT_PATH.into());
    env.insert("HOME".into(), "/".into());
    // env_file's secrets, then `env` (which wins). Never logged: the spec is only hashed.
    for (k, v) in app.environment() {
        env.insert(k, v);
    }
    env.insert("PORT".into(), port.to_string());
    let mut spec = ContainerSpec::new(rootfs, app.command.clone());
    spec.env = env.into_iter().collect();
    spec.workdir = app.workdir.clone();
    spec.hostname = app.name.clone();
    spec.network = match app.network {
        Network::Isolated => NetworkMode::Isolated,
        Network::Host => NetworkMode::Host,
        // Isolated plus a link out, filled in by the serve's egress host (below).
        Network::Egress => NetworkMode::Isolated,
    };
    spec.uid = app.user.uid;
    spec.gid = app.user.gid;
    spec.nproc = None;
    spec.capabilities = app.effective_capabilities();
    spec.seccomp = matches!(app.seccomp, hako_policies::SeccompMode::Default);
    spec.expose_host_secrets = app.expose_host_secrets;
    spec.user_namespace = app.user_namespace;
    spec.tmp_size = app.limits.disk;
    spec.volumes = app
        .volumes
        .iter()
        .map(|v| match v {
            hako_policies::Volume::Bind {
                source,
                target,
                read_only,
            } => hako_launcher::VolumeSpec::Bind {
                source: source.clone(),
                target: target.clone(),
                read_only: *read_only,
            },
            hako_policies::Volume::Tmpfs { target, size } => hako_launcher::VolumeSpec::Tmpfs {
                target: target.clone(),
                size: *size,
            },
        })
        .collect();
    if matches!(app.readiness.probe, hako_policies::Probe::ListenFds) {
        // Socket activation: the listening socket exists before the app runs, so the
        // instance is ready the moment it is spawned (the kernel queues connections).
        spec.listen = Some(hako_launcher::ListenSpec::new(port));
    }
    crate::egress::apply_to_spec(app, &mut spec);
    spec
}

/// The launcher's cache key for an app's spec: the app name plus a hash of the whole spec, so a
/// changed app (or, for `network: host`, another port) never reuses a stale prepared spec.
pub fn spec_key(app_name: &str, spec: &ContainerSpec) -> String {
    format!(
        "{}:{:016x}",
        app_name,
        fnv1a(&serde_json::to_vec(spec).unwrap_or_default())
    )
}

/// Cgroup limits of an app's policy.
pub fn cgroup_limits(app: &App) -> CgroupLimits {
    CgroupLimits {
        cpu: Some(app.limits.cpu),
        memory_max: Some(app.limits.memory),
        memory_high: None,
        pids: Some(app.limits.pids),
    }
}

/// FNV-1a: a stable cache key for a spec (not security relevant).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
