//! Relax steps and small helpers of the decision engine.
use super::{GovernorParams, Limits, State, SNAP_FRACTION};

/// `relax_step` clamped into (0, 1].
pub(super) fn clamp_params(mut params: GovernorParams) -> GovernorParams {
    if !(params.relax_step > 0.0 && params.relax_step <= 1.0) {
        params.relax_step = if params.relax_step > 1.0 { 1.0 } else { 0.25 };
    }
    params
}

/// The id with the largest value (ties → lowest id).
pub(super) fn heaviest(items: impl Iterator<Item = (u64, f64)>) -> Option<u64> {
    let mut best: Option<(u64, f64)> = None;
    for (id, value) in items {
        best = match best {
            Some((bid, bv)) if bv > value || (bv == value && bid < id) => Some((bid, bv)),
            _ => Some((id, value)),
        };
    }
    best.map(|(id, _)| id)
}

/// `min` over `memory.high` values where `None` means unlimited.
pub(super) fn min_mem(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (Some(x), None) | (None, Some(x)) => Some(x),
        (None, None) => None,
    }
}

/// One relax step of `state.current` toward `state.policy`: a tightened CPU quota and
/// `memory.high` move `step` of the remaining gap, lent CPU and a lowered weight go back at
/// once (a weight costs nothing without contention; lent CPU is unused by then).
pub(super) fn relax_step(state: &State, step: f64) -> Limits {
    let policy = state.policy;
    let cur = state.current;
    let cpu = if cur.cpu >= policy.cpu {
        policy.cpu
    } else {
        let next = cur.cpu + (policy.cpu - cur.cpu) * step;
        if policy.cpu - next <= policy.cpu * SNAP_FRACTION {
            policy.cpu
        } else {
            next
        }
    };
    let memory_high = match (cur.memory_high, policy.memory_high) {
        (None, _) => policy.memory_high,
        (Some(c), Some(target)) => Some(step_toward(c, target, step).unwrap_or(target)),
        (Some(c), None) => {
            let ceiling = state.mem_tightened_to.unwrap_or(c).saturating_mul(2);
            step_toward(c, ceiling, step)
        }
    };
    Limits {
        cpu,
        memory_high,
        weight: policy.weight,
    }
}

/// `cur` moved `step` of the way to `target`; `None` when it lands within the snap distance
/// (or was already there).
fn step_toward(cur: u64, target: u64, step: f64) -> Option<u64> {
    if cur >= target {
        return None;
    }
    let gap = (target - cur) as f64;
    let next = cur + (gap * step) as u64;
    let remaining = (target - next) as f64;
    if remaining <= target as f64 * SNAP_FRACTION {
        None
    } else {
        Some(next)
    }
}
