//! The sampling loop: every `governor.interval` it reads host PSI and each instance's cgroup
//! usage, updates the `hako_cgroup_*` metrics, asks the [`Governor`] what to change and applies
//! its decisions to the cgroups (logging and counting each change).
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hako_policies::Config;

use crate::governor::{
    read_host_pressure, Governor, GovernorParams, InstanceSample, Limits, Sample, SpikeRule,
};
use crate::pool::Supervisor;

/// Maps the configuration's governor section onto the governor's parameters.
pub fn params_of(cfg: &Config) -> GovernorParams {
    let g = &cfg.governor;
    GovernorParams {
        interval: g.interval,
        cpu_pressure: g.cpu_pressure,
        memory_pressure: g.memory_pressure,
        relax_after: g.relax_after,
        relax_step: g.relax_step,
        floor_cpu: g.floor_cpu,
        floor_memory: g.floor_memory,
    }
}

/// Runs until `stop` turns true.
pub async fn run(
    sup: Arc<Supervisor>,
    config: Arc<Mutex<Config>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let start = Instant::now();
    let mut params: GovernorParams = params_of(&config.lock().expect("config lock"));
    let mut governor = Governor::new(params.clone());
    // Last cumulative CPU reading per instance, for the cpu seconds counter.
    let mut last_cpu: HashMap<u64, u64> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(params.interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let enabled = {
            let c = config.lock().expect("config lock");
            let p = params_of(&c);
            if p != params {
                params = p;
                governor = Governor::new(params.clone());
            }
            c.governor.enabled
        };
        let running = sup.running_instances();
        let sampled = tokio::task::spawn_blocking(move || {
            let host = read_host_pressure(Path::new("/proc"));
            let mut per_app_mem: HashMap<String, u64> = HashMap::new();
            let mut rows = Vec::with_capacity(running.len());
            for (inst, r, policy) in &running {
                let Some(u) = r.usage() else { continue };
                *per_app_mem.entry(inst.app.clone()).or_default() += u.memory_current;
                rows.push((inst.id, inst.app.clone(), u, policy.clone(), r.clone()));
            }
            (host, per_app_mem, rows)
        })
        .await;
        let Ok((host, per_app_mem, rows)) = sampled else {
            continue;
        };

        let mut cpu_by_app: HashMap<String, f64> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for (id, app, u, _, _) in &rows {
            seen.insert(*id);
            let prev = last_cpu.insert(*id, u.cpu_usage_usec).unwrap_or(0);
            let delta = u.cpu_usage_usec.saturating_sub(prev);
            *cpu_by_app.entry(app.clone()).or_default() += delta as f64 / 1e6;
        }
        last_cpu.retain(|id, _| seen.contains(id));
        for (app, secs) in &cpu_by_app {
            if let Some(m) = sup.app_metrics(app) {
                m.add_cpu_seconds(*secs);
            }
        }
        for (app, bytes) in &per_app_mem {
            if let Some(m) = sup.app_metrics(app) {
                m.set_memory_bytes(*bytes);
            }
        }
        if !enabled {
            continue;
        }
        let sample = Sample {
            now: start.elapsed(),
            host,
            instances: rows
                .iter()
                .map(|(id, app, u, policy, _)| InstanceSample {
                    id: *id,
                    app: app.clone(),
                    cpu_usage_usec: u.cpu_usage_usec,
                    memory_current: u.memory_current,
                    policy: Limits {
                        cpu: policy.limits.cpu,
                        memory_high: None,
                    },
                    spike: policy.spike.as_ref().map(|s| SpikeRule {
                        cpu_above: s.cpu_above,
                        for_: s.for_,
                        tighten_cpu: s.tighten_cpu,
                        tighten_memory_high: s.tighten_memory_high,
                    }),
                })
                .collect(),
        };
        let decisions = governor.observe(&sample);
        for d in decisions {
            let Some((_, _, _, _, r)) = rows.iter().find(|row| row.0 == d.id) else {
                continue;
            };
            let r = r.clone();
            let after = d.after;
            let applied = tokio::task::spawn_blocking(move || {
                r.set_soft_limits(after.cpu, after.memory_high)
            })
            .await;
            match applied {
                Ok(Ok(())) => {
                    tracing::info!(
                        app = %d.app, instance = d.id, direction = d.direction.as_str(),
                        cpu_before = d.before.cpu, cpu_after = d.after.cpu,
                        memory_high_before = ?d.before.memory_high, memory_high_after = ?d.after.memory_high,
                        reason = %d.reason, "limits changed"
                    );
                    if let Some(m) = sup.app_metrics(&d.app) {
                        m.limit_change(d.direction.as_str());
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(app = %d.app, instance = d.id, error = %e, "cannot change limits")
                }
                Err(e) => tracing::warn!(error = %e, "limit change task failed"),
            }
        }
    }
}
