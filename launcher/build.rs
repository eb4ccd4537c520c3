//! Compiles the default seccomp profile with libseccomp ahead of time (the issue's "built with
//! libseccomp ahead of time, exported as BPF"), so that no process pays for it at run time.
//! Only when building for the host's own target: libseccomp here knows the host's syscall
//! numbers. Otherwise, or if compiling fails, the launcher compiles the profile at run time.

#[allow(dead_code)]
mod profile {
    include!("src/seccomp_profile.rs");
}

fn main() {
    println!("cargo:rerun-if-changed=src/seccomp_profile.rs");
    // libseccomp-sys links what these point at, for this script too.
    println!("cargo:rerun-if-env-changed=LIBSECCOMP_LIB_PATH");
    println!("cargo:rerun-if-env-changed=LIBSECCOMP_LINK_TYPE");
    println!("cargo:rustc-check-cfg=cfg(hako_prebuilt_seccomp)");
    let host = std::env::var("HOST").unwrap_or_default();
    let target = std::env::var("TARGET").unwrap_or_default();
    if host != target {
        println!(
            "cargo:warning=seccomp profile compiled at run time (cross build {host} -> {target})"
        );
        return;
    }
    let Ok(out) = std::env::var("OUT_DIR") else {
        return;
    };
    match profile::compile_profile_bytes() {
        Ok(bytes) => {
            let path = std::path::Path::new(&out).join("seccomp_default.bpf");
            if let Err(e) = std::fs::write(&path, bytes) {
                println!("cargo:warning=cannot write {}: {e}", path.display());
                return;
            }
            println!("cargo:rustc-cfg=hako_prebuilt_seccomp");
        }
        Err(e) => println!("cargo:warning=seccomp profile compiled at run time: {e}"),
    }
}
