//! Capability names and masks: what a container keeps, bounded by what this process holds.
use std::str::FromStr;

use crate::error::LaunchError;

/// Capability names to a bit mask.
pub fn capability_mask(names: &[String]) -> Result<u64, LaunchError> {
    let mut mask = 0u64;
    for n in names {
        let upper = n.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        let cap = caps::Capability::from_str(&full)
            .map_err(|_| LaunchError::InvalidSpec(format!("unknown capability {n:?}")))?;
        mask |= 1u64 << cap.index();
    }
    Ok(mask)
}

/// Capabilities this process holds: a container cannot get more (a sandboxed host may lack
/// some, e.g. `CAP_SYS_RESOURCE`); asking for more is not an error, the rest is dropped.
pub(super) fn available_capabilities() -> u64 {
    match caps::read(None, caps::CapSet::Permitted) {
        Ok(set) => set.iter().fold(0u64, |m, c| m | (1u64 << c.index())),
        Err(_) => u64::MAX,
    }
}

pub(super) fn cap_last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}
