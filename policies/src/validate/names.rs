//! Names the configuration gives: app names, hostnames, and whether a rootfs is the host's root.
use super::MAX_APP_NAME_LEN;

/// Whether `name` is usable as a cgroup and directory name.
pub(crate) fn check_app_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > MAX_APP_NAME_LEN {
        return Err(format!(
            "`{name}` is longer than {MAX_APP_NAME_LEN} characters"
        ));
    }
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let all_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !first_ok || !all_ok {
        return Err(format!(
            "`{name}` is not usable as a cgroup or directory name; use letters, digits, `-`, `_`, `.`, starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Whether a lowercased host is a plain hostname without port.
pub(super) fn check_hostname(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("is empty".to_owned());
    }
    if host.contains("://") || host.contains('/') {
        return Err("must be a bare hostname, without scheme or path".to_owned());
    }
    if let Some((_, port)) = host.rsplit_once(':') {
        if port.chars().all(|c| c.is_ascii_digit()) {
            return Err("must not include a port (hosts are matched without it)".to_owned());
        }
    }
    if host.len() > 253 {
        return Err("is longer than 253 characters".to_owned());
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err("has an empty label".to_owned());
        }
        if label.len() > 63 {
            return Err("has a label longer than 63 characters".to_owned());
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err("is not a valid hostname (letters, digits, `-` and `.`)".to_owned());
        }
    }
    Ok(())
}

/// Whether `dir` is the host's root directory (`/`, `/..`, a symlink to it...).
pub(super) fn is_host_root(dir: &std::path::Path) -> bool {
    dir.canonicalize()
        .is_ok_and(|p| p.as_os_str() == std::path::Path::new("/").as_os_str())
}
