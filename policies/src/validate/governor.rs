//! The `governor` section.

use super::*;
use crate::model::*;
use crate::raw::*;
use crate::units::{format_duration, format_size};

impl Ctx<'_> {
    pub(super) fn governor(&mut self, raw: RawGovernor) -> Governor {
        let d = Governor::default();
        let interval = raw.interval.unwrap_or(d.interval);
        if interval < MIN_GOVERNOR_INTERVAL {
            self.fault(
                "governor.interval",
                format!(
                    "{} is too short; the minimum is {}",
                    format_duration(interval),
                    format_duration(MIN_GOVERNOR_INTERVAL)
                ),
            );
        }
        let cpu_pressure = raw.cpu_pressure.unwrap_or(d.cpu_pressure);
        self.percentage("governor.cpu_pressure", cpu_pressure);
        let memory_pressure = raw.memory_pressure.unwrap_or(d.memory_pressure);
        self.percentage("governor.memory_pressure", memory_pressure);
        let relax_step = raw.relax_step.unwrap_or(d.relax_step);
        self.fraction("governor.relax_step", relax_step);
        let floor_cpu = raw.floor_cpu.unwrap_or(d.floor_cpu);
        self.positive_f64("governor.floor_cpu", floor_cpu);
        let floor_memory = self.size("governor.floor_memory", raw.floor_memory, d.floor_memory);
        let max_live_instances = raw
            .max_live_instances
            .map(|n| self.count("governor.max_live_instances", n, 1));
        let max_memory = raw
            .max_memory
            .map(|s| self.size("governor.max_memory", Some(s), 1));
        if let Some(max) = max_memory {
            if max > 0 && max < floor_memory {
                self.fault(
                    "governor.max_memory",
                    format!(
                        "{} is below governor.floor_memory {}",
                        format_size(max),
                        format_size(floor_memory)
                    ),
                );
            }
        }
        Governor {
            enabled: raw.enabled.unwrap_or(d.enabled),
            interval,
            cpu_pressure,
            memory_pressure,
            relax_after: raw.relax_after.unwrap_or(d.relax_after),
            relax_step,
            floor_cpu,
            floor_memory,
            max_live_instances,
            max_memory,
        }
    }
}
