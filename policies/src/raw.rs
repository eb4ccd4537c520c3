//! The configuration exactly as written: every key optional, numbers wide, so that syntax and
//! type errors come from serde (located by serde_yaml) and everything else is checked, all at
//! once, by `validate`.
use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::units::{de_opt_duration, de_opt_size, RawSize};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConfig {
    pub listen: Option<String>,
    pub admin: Option<String>,
    pub allow_public_admin: Option<bool>,
    pub state_dir: Option<String>,
    pub cgroup_parent: Option<String>,
    pub apps: Option<Vec<RawApp>>,
    pub governor: Option<RawGovernor>,
    pub egress: Option<crate::egress::RawEgress>,
    #[serde(deserialize_with = "de_opt_duration")]
    pub client_header_timeout: Option<Duration>,
    #[serde(deserialize_with = "de_opt_duration")]
    pub client_idle_timeout: Option<Duration>,
    pub max_connections_per_client: Option<i64>,
    pub tls: Option<crate::tls::RawTls>,
    pub registries: Option<Vec<crate::image::RawRegistry>>,
    pub node_name: Option<String>,
    #[serde(deserialize_with = "de_opt_duration")]
    pub drain_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawApp {
    pub name: Option<String>,
    pub hosts: Option<Vec<String>>,
    pub path_prefix: Option<String>,
    pub rootfs: Option<String>,
    pub image: Option<String>,
    pub read_only: Option<bool>,
    pub command: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub workdir: Option<String>,
    pub port: Option<i64>,
    pub network: Option<RawNetwork>,
    pub egress_allow: Option<Vec<String>>,
    pub user: Option<RawUser>,
    pub limits: Option<RawLimits>,
    pub lifetime: Option<RawLifetime>,
    pub scaling: Option<RawScaling>,
    pub readiness: Option<RawReadiness>,
    pub spike: Option<RawSpike>,
    pub capabilities: Option<Vec<String>>,
    pub seccomp: Option<RawSeccomp>,
    pub expose_host_secrets: Option<bool>,
    pub user_namespace: Option<bool>,
    pub volumes: Option<Vec<crate::volumes::RawVolume>>,
    pub env_file: Option<String>,
    pub hooks: Option<crate::hooks::RawHooks>,
    pub redirect_https: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawNetwork {
    Isolated,
    Host,
    Egress,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawSeccomp {
    Default,
    Unconfined,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawProbe {
    Connect,
    Http,
    ListenFds,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawUser {
    pub uid: Option<i64>,
    pub gid: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLimits {
    pub cpu: Option<f64>,
    pub burst_cpu: Option<f64>,
    #[serde(deserialize_with = "de_opt_size")]
    pub memory: Option<RawSize>,
    pub pids: Option<i64>,
    #[serde(deserialize_with = "de_opt_size")]
    pub disk: Option<RawSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLifetime {
    #[serde(deserialize_with = "de_opt_duration")]
    pub idle_timeout: Option<Duration>,
    #[serde(deserialize_with = "de_opt_duration")]
    pub max_lifetime: Option<Duration>,
    #[serde(deserialize_with = "de_opt_duration")]
    pub grace: Option<Duration>,
    #[serde(deserialize_with = "de_opt_duration")]
    pub stop_timeout: Option<Duration>,
    pub prestart_successor: Option<bool>,
    #[serde(deserialize_with = "de_opt_duration")]
    pub hibernate_after: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawScaling {
    pub max_instances: Option<i64>,
    pub concurrency: Option<i64>,
    pub queue: Option<i64>,
    #[serde(deserialize_with = "de_opt_duration")]
    pub queue_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawReadiness {
    pub probe: Option<RawProbe>,
    pub path: Option<String>,
    #[serde(deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSpike {
    pub cpu_above: Option<f64>,
    #[serde(rename = "for", deserialize_with = "de_opt_duration")]
    pub for_: Option<Duration>,
    pub tighten_cpu: Option<f64>,
    #[serde(deserialize_with = "de_opt_size")]
    pub tighten_memory_high: Option<RawSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawGovernor {
    pub enabled: Option<bool>,
    #[serde(deserialize_with = "de_opt_duration")]
    pub interval: Option<Duration>,
    pub cpu_pressure: Option<f64>,
    pub memory_pressure: Option<f64>,
    #[serde(deserialize_with = "de_opt_duration")]
    pub relax_after: Option<Duration>,
    pub relax_step: Option<f64>,
    pub floor_cpu: Option<f64>,
    #[serde(deserialize_with = "de_opt_size")]
    pub floor_memory: Option<RawSize>,
    pub max_live_instances: Option<i64>,
    #[serde(deserialize_with = "de_opt_size")]
    pub max_memory: Option<RawSize>,
}
