//! An app's sections: `limits`, `lifetime`, `scaling`, `readiness`, `spike`, capabilities.

use super::*;
use crate::model::*;
use crate::raw::*;
use crate::units::{format_duration, format_size};

impl Ctx<'_> {
    pub(super) fn limits(&mut self, at: &str, raw: RawLimits, governor: &Governor) -> Limits {
        let d = Limits::default();
        let path = join(at, "limits");
        let cpu = raw.cpu.unwrap_or(d.cpu);
        self.positive_f64(&join(&path, "cpu"), cpu);
        let burst_cpu = raw.burst_cpu.filter(|&b| {
            let p = join(&path, "burst_cpu");
            if b.is_nan() || b.is_infinite() {
                self.fault(&p, format!("{b} is not a finite number"));
            } else if b < cpu {
                self.fault(&p, format!("{b} must be at least limits.cpu {cpu}"));
            } else {
                return true;
            }
            false
        });
        let mem_path = join(&path, "memory");
        let memory = self.size(&mem_path, raw.memory, d.memory);
        if raw.memory.is_some_and(|m| !m.negative && m.bytes > 0) && memory < MIN_MEMORY {
            self.fault(
                &mem_path,
                format!(
                    "{memory} bytes is below the minimum of 1Mi (a unit is probably missing, e.g. `{memory}Mi`)"
                ),
            );
        }
        if let Some(max) = governor.max_memory {
            if memory > max {
                self.fault(
                    &mem_path,
                    format!(
                        "{} exceeds governor.max_memory {}; no instance could ever boot",
                        format_size(memory),
                        format_size(max)
                    ),
                );
            }
        }
        let pids = match raw.pids {
            None => d.pids,
            Some(n) if n > 0 => n as u64,
            Some(n) => {
                self.fault(
                    &join(&path, "pids"),
                    format!("must be greater than zero (got {n})"),
                );
                d.pids
            }
        };
        let disk = self.disk(&path, raw.disk, d.disk);
        Limits {
            cpu,
            burst_cpu,
            memory,
            pids,
            disk,
        }
    }

    pub(super) fn lifetime(&mut self, at: &str, raw: RawLifetime) -> Lifetime {
        let d = Lifetime::default();
        let path = join(at, "lifetime");
        let idle_timeout = raw.idle_timeout.unwrap_or(d.idle_timeout);
        let max_lifetime = raw.max_lifetime;
        if let Some(max) = max_lifetime {
            if max.is_zero() {
                self.fault(&join(&path, "max_lifetime"), "must be greater than zero");
            } else if raw.idle_timeout.is_some() && idle_timeout > max {
                // Only an idle_timeout written out is a mistake (likely the two swapped): the
                // default one is simply moot under a shorter lifetime.
                self.fault(
                    &join(&path, "idle_timeout"),
                    format!(
                        "idle_timeout {} is longer than max_lifetime {}",
                        format_duration(idle_timeout),
                        format_duration(max)
                    ),
                );
            }
        }
        let prestart_successor = raw.prestart_successor.unwrap_or(false);
        if prestart_successor && max_lifetime.is_none() {
            self.fault(
                &join(&path, "prestart_successor"),
                "needs lifetime.max_lifetime: a successor is started when the lifetime ends",
            );
        }
        let hibernate_after = raw.hibernate_after;
        if let Some(h) = hibernate_after {
            if h.is_zero() {
                self.fault(&join(&path, "hibernate_after"), "must be greater than zero");
            } else if h >= idle_timeout {
                // The instance would be stopped before it could hibernate.
                self.fault(
                    &join(&path, "hibernate_after"),
                    format!(
                        "hibernate_after {} must be shorter than idle_timeout {}",
                        format_duration(h),
                        format_duration(idle_timeout)
                    ),
                );
            }
        }
        Lifetime {
            hibernate_after,
            idle_timeout,
            max_lifetime,
            grace: raw.grace.unwrap_or(d.grace),
            stop_timeout: raw.stop_timeout.unwrap_or(d.stop_timeout),
            prestart_successor,
        }
    }

    pub(super) fn scaling(&mut self, at: &str, raw: RawScaling) -> Scaling {
        let d = Scaling::default();
        let path = join(at, "scaling");
        let max_instances = raw.max_instances.map_or(d.max_instances, |n| {
            self.count(&join(&path, "max_instances"), n, 1)
        });
        let concurrency = raw.concurrency.map_or(d.concurrency, |n| {
            self.count(&join(&path, "concurrency"), n, 1)
        });
        let queue = raw
            .queue
            .map_or(d.queue, |n| self.count(&join(&path, "queue"), n, 0));
        let queue_timeout = raw.queue_timeout.unwrap_or(d.queue_timeout);
        if queue_timeout.is_zero() && queue > 0 {
            self.fault(
                &join(&path, "queue_timeout"),
                "must be greater than zero while the queue is enabled (queue > 0)",
            );
        }
        Scaling {
            max_instances,
            concurrency,
            queue,
            queue_timeout,
        }
    }

    pub(super) fn readiness(&mut self, at: &str, raw: RawReadiness) -> Readiness {
        let d = Readiness::default();
        let path = join(at, "readiness");
        let probe = match raw.probe {
            None | Some(RawProbe::Connect) => Probe::Connect,
            Some(RawProbe::ListenFds) => Probe::ListenFds,
            Some(RawProbe::Http) => {
                let p = raw.path.clone().unwrap_or_else(|| "/".to_owned());
                if !p.starts_with('/') {
                    self.fault(&join(&path, "path"), format!("`{p}` must start with `/`"));
                }
                Probe::Http { path: p }
            }
        };
        if raw.path.is_some() && !matches!(probe, Probe::Http { .. }) {
            self.fault_key(&join(&path, "path"), "is only used with `probe: http`");
        }
        let timeout = raw.timeout.unwrap_or(d.timeout);
        if timeout.is_zero() {
            self.fault(&join(&path, "timeout"), "must be greater than zero");
        }
        Readiness { probe, timeout }
    }

    pub(super) fn spike(
        &mut self,
        at: &str,
        raw: RawSpike,
        limits: &Limits,
        governor: &Governor,
    ) -> Spike {
        let path = join(at, "spike");
        let cpu_above = raw.cpu_above.unwrap_or(DEFAULT_SPIKE_CPU_ABOVE);
        self.fraction(&join(&path, "cpu_above"), cpu_above);
        if raw.tighten_cpu.is_none() && raw.tighten_memory_high.is_none() {
            self.fault(
                &path,
                "sets neither tighten_cpu nor tighten_memory_high; nothing would be tightened",
            );
        }
        if let Some(c) = raw.tighten_cpu {
            let p = join(&path, "tighten_cpu");
            if !(c > 0.0 && c.is_finite()) {
                self.fault(&p, format!("must be greater than zero (got {c})"));
            } else if limits.cpu > 0.0 && c >= limits.cpu {
                self.fault(&p, format!("{c} must be below limits.cpu {}", limits.cpu));
            } else if c < governor.floor_cpu {
                self.fault(
                    &p,
                    format!("{c} is below governor.floor_cpu {}", governor.floor_cpu),
                );
            }
        }
        let tighten_memory_high = raw.tighten_memory_high.map(|m| {
            let p = join(&path, "tighten_memory_high");
            let bytes = self.size(&p, Some(m), 0);
            if bytes > 0 && bytes >= limits.memory {
                self.fault(
                    &p,
                    format!(
                        "{} must be below limits.memory {}",
                        format_size(bytes),
                        format_size(limits.memory)
                    ),
                );
            } else if bytes > 0 && bytes < governor.floor_memory {
                self.fault(
                    &p,
                    format!(
                        "{} is below governor.floor_memory {}",
                        format_size(bytes),
                        format_size(governor.floor_memory)
                    ),
                );
            }
            bytes
        });
        Spike {
            cpu_above,
            for_: raw.for_.unwrap_or(DEFAULT_SPIKE_FOR),
            tighten_cpu: raw.tighten_cpu,
            tighten_memory_high,
        }
    }

    pub(super) fn capabilities(&mut self, at: &str, raw: Vec<String>) -> Vec<String> {
        let path = join(at, "capabilities");
        let mut out: Vec<String> = Vec::new();
        for (i, cap) in raw.iter().enumerate() {
            let cp = format!("{path}[{i}]");
            let upper = cap.trim().to_ascii_uppercase();
            let name = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            if !KNOWN_CAPABILITIES.contains(&name.as_str()) {
                self.fault(
                    &cp,
                    format!("`{cap}` is not a Linux capability (e.g. CAP_NET_BIND_SERVICE)"),
                );
            } else if out.contains(&name) {
                self.fault(&cp, format!("`{name}` is listed twice"));
            } else {
                out.push(name);
            }
        }
        out
    }
}
