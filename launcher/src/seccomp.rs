//! The default seccomp profile, in the spirit of Docker's: allow by default, deny with EPERM the
//! system calls a web workload never needs and that widen the kernel attack surface (the rules
//! are in `seccomp_profile.rs`). Compiled with libseccomp into classic BPF ahead of time by the
//! build script when building for the host's architecture, else once per process at run time;
//! loaded in the child with the raw `seccomp` syscall.
use crate::error::LaunchError;

// With the build script's program, the run-time compiler is only used by a test.
#[cfg_attr(all(hako_prebuilt_seccomp, not(test)), allow(dead_code))]
mod profile {
    include!("seccomp_profile.rs");
}
pub use profile::{DENIED_SYSCALLS, NS_FLAGS};

/// The profile compiled by the build script, when it could (see `build.rs`).
#[cfg(hako_prebuilt_seccomp)]
const PREBUILT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_default.bpf"));

/// Builds the default profile and returns it as BPF instructions for `SECCOMP_SET_MODE_FILTER`.
///
/// The build script's program when there is one (no libseccomp work at run time: it cost
/// `hako run` about 0.2 ms), else compiled once per process and cached: every app with the
/// default profile gets the same program.
pub fn default_profile_bpf() -> Result<Vec<libc::sock_filter>, LaunchError> {
    static CACHE: std::sync::OnceLock<Vec<libc::sock_filter>> = std::sync::OnceLock::new();
    if let Some(bpf) = CACHE.get() {
        return Ok(bpf.clone());
    }
    #[cfg(hako_prebuilt_seccomp)]
    let bpf = decode(PREBUILT)?;
    #[cfg(not(hako_prebuilt_seccomp))]
    let bpf = decode(&profile::compile_profile_bytes().map_err(LaunchError::Seccomp)?)?;
    Ok(CACHE.get_or_init(|| bpf).clone())
}

/// `sock_filter` records from exported bytes.
fn decode(bytes: &[u8]) -> Result<Vec<libc::sock_filter>, LaunchError> {
    let size = std::mem::size_of::<libc::sock_filter>();
    if bytes.is_empty() || bytes.len() % size != 0 {
        return Err(LaunchError::Seccomp(format!(
            "BPF program of {} bytes",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(size)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_exports_nonempty_bpf_ending_in_a_return() {
        let bpf = default_profile_bpf().unwrap();
        assert!(
            bpf.len() > DENIED_SYSCALLS.len() / 2,
            "{} instructions",
            bpf.len()
        );
        // BPF_RET | BPF_K
        assert_eq!(bpf.last().unwrap().code, 0x06);
    }

    /// The program the build script embedded is the one libseccomp makes now from the same
    /// rules.
    #[cfg(hako_prebuilt_seccomp)]
    #[test]
    fn prebuilt_program_matches_a_fresh_compile() {
        assert!(
            PREBUILT == profile::compile_profile_bytes().unwrap().as_slice(),
            "the embedded program differs from what libseccomp {:?} makes now: \
             rebuild after a libseccomp upgrade",
            libseccomp::ScmpVersion::current().ok()
        );
    }
}
