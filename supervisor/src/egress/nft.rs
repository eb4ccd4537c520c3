//! hako's nftables table for `network: egress`: one table per serve (`ip hako-<cgroup_parent>`),
//! written whole and replaced atomically (`nft -f -`, one transaction), deleted at shutdown and
//! by orphan recovery. Rules match the host end of each instance's veth by name: the serve's
//! prefix, then the app's three hex digits, so the table changes only when apps change, never
//! per instance.
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use hako_policies::{EgressRule, Ipv4Cidr, VETH_PREFIX};

use super::EgressHostError;

/// The table of the serve whose `cgroup_parent` is `cgroup_parent`.
pub fn table_name(cgroup_parent: &str) -> String {
    format!("hako-{cgroup_parent}")
}

/// One egress app's part of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRules {
    pub name: String,
    /// Its links' name prefix (the serve's prefix and the app's index).
    pub veth_prefix: String,
    /// `None`: anywhere.
    pub allow: Option<Vec<EgressRule>>,
}

/// The whole table as an `nft -f` script: created empty if missing, deleted, written again,
/// all in one transaction. `guard`: hako turned the host's forwarding on, so everything
/// forwarded that does not come from or go to a hako link is dropped (the host stays no
/// router for anything else).
pub fn script(
    table: &str,
    serve_prefix: &str,
    subnet: &Ipv4Cidr,
    apps: &[AppRules],
    nameservers: &[Ipv4Addr],
    guard: bool,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table ip {table} {{}}");
    let _ = writeln!(s, "delete table ip {table}");
    let _ = writeln!(s, "table ip {table} {{");
    let _ = writeln!(s, "  chain postrouting {{");
    let _ = writeln!(
        s,
        "    type nat hook postrouting priority srcnat; policy accept;"
    );
    let _ = writeln!(
        s,
        "    ip saddr {subnet} oifname != \"{serve_prefix}*\" masquerade"
    );
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "  chain forward {{");
    let _ = writeln!(
        s,
        "    type filter hook forward priority filter; policy accept;"
    );
    let _ = writeln!(
        s,
        "    oifname \"{serve_prefix}*\" ct state established,related accept"
    );
    let _ = writeln!(s, "    oifname \"{serve_prefix}*\" drop");
    let _ = writeln!(s, "    iifname \"{serve_prefix}*\" jump egress");
    if guard {
        let _ = writeln!(
            s,
            "    iifname != \"{VETH_PREFIX}*\" oifname != \"{VETH_PREFIX}*\" drop"
        );
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "  chain input {{");
    let _ = writeln!(
        s,
        "    type filter hook input priority filter; policy accept;"
    );
    let _ = writeln!(s, "    iifname \"{serve_prefix}*\" jump egress");
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "  chain egress {{");
    let _ = writeln!(s, "    ip saddr != {subnet} drop");
    for app in apps {
        let Some(allow) = &app.allow else {
            continue;
        };
        let iif = format!("iifname \"{}*\"", app.veth_prefix);
        let _ = writeln!(s, "    # app {}", app.name.replace(['\n', '\r'], " "));
        for ns in nameservers {
            let _ = writeln!(
                s,
                "    {iif} ip daddr {ns} meta l4proto {{ tcp, udp }} th dport 53 accept"
            );
        }
        for rule in allow {
            let daddr = if rule.net.prefix == 32 {
                rule.net.addr.to_string()
            } else {
                rule.net.to_string()
            };
            match rule.port {
                Some(p) => {
                    let _ = writeln!(
                        s,
                        "    {iif} ip daddr {daddr} meta l4proto {{ tcp, udp }} th dport {p} accept"
                    );
                }
                None => {
                    let _ = writeln!(s, "    {iif} ip daddr {daddr} accept");
                }
            }
        }
        let _ = writeln!(s, "    {iif} drop");
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    s
}

fn nft(args: &[&str], stdin: Option<&str>, what: &str) -> Result<String, EgressHostError> {
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| EgressHostError::Nft {
        what: what.to_owned(),
        message: format!("cannot run nft: {e} (install the nftables package)"),
    })?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        let _ = w.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| EgressHostError::Nft {
        what: what.to_owned(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(EgressHostError::Nft {
            what: what.to_owned(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs (or replaces) the table.
pub fn install(table: &str, script: &str) -> Result<(), EgressHostError> {
    nft(
        &["-f", "-"],
        Some(script),
        &format!("install table ip {table}"),
    )
    .map(drop)
}

/// Checks a script without applying it (`nft -c`).
pub fn check(table: &str, script: &str) -> Result<(), EgressHostError> {
    nft(
        &["-c", "-f", "-"],
        Some(script),
        &format!("check table ip {table}"),
    )
    .map(drop)
}

/// Deletes the table if it exists (`Ok(true)`: it did).
pub fn delete(table: &str) -> Result<bool, EgressHostError> {
    if !tables()?.iter().any(|t| t == table) {
        return Ok(false);
    }
    nft(
        &["delete", "table", "ip", table],
        None,
        &format!("delete table ip {table}"),
    )
    .map(|_| true)
}

/// The names of the host's `ip` family tables.
pub fn tables() -> Result<Vec<String>, EgressHostError> {
    let out = nft(&["list", "tables", "ip"], None, "list tables")?;
    Ok(out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table ip "))
        .map(|t| t.trim().to_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<AppRules> {
        vec![
            AppRules {
                name: "free".into(),
                veth_prefix: "hk1a2b000".into(),
                allow: None,
            },
            AppRules {
                name: "db-only".into(),
                veth_prefix: "hk1a2b001".into(),
                allow: Some(vec![
                    "192.0.2.0/24".parse().unwrap(),
                    "198.51.100.7:5432".parse().unwrap(),
                ]),
            },
        ]
    }

    #[test]
    fn the_script_filters_only_restricted_apps() {
        let subnet: Ipv4Cidr = "10.213.0.0/16".parse().unwrap();
        let s = script(
            "hako-t",
            "hk1a2b",
            &subnet,
            &rules(),
            &[Ipv4Addr::new(10, 255, 255, 53)],
            true,
        );
        assert!(s.starts_with("table ip hako-t {}\ndelete table ip hako-t\n"));
        assert!(s.contains("ip saddr 10.213.0.0/16 oifname != \"hk1a2b*\" masquerade"));
        assert!(s.contains("iifname \"hk1a2b001*\" ip daddr 192.0.2.0/24 accept"));
        assert!(s.contains(
            "iifname \"hk1a2b001*\" ip daddr 198.51.100.7 meta l4proto { tcp, udp } th dport 5432 accept"
        ));
        assert!(s.contains("iifname \"hk1a2b001*\" ip daddr 10.255.255.53 meta l4proto { tcp, udp } th dport 53 accept"));
        assert!(s.contains("iifname \"hk1a2b001*\" drop"));
        assert!(!s.contains("hk1a2b000"), "an unrestricted app has no rules");
        assert!(s.contains("iifname != \"hk*\" oifname != \"hk*\" drop"));
        let unguarded = script("hako-t", "hk1a2b", &subnet, &rules(), &[], false);
        assert!(!unguarded.contains("iifname != \"hk*\""));
    }

    /// The kernel's own parser accepts the script (`nft -c`: nothing is applied).
    #[test]
    fn nft_accepts_the_script() {
        if !nix::unistd::geteuid().is_root() || Command::new("nft").arg("-v").output().is_err() {
            eprintln!("SKIPPED nft check: needs root and the nft command");
            return;
        }
        let subnet: Ipv4Cidr = "10.213.0.0/16".parse().unwrap();
        let table = format!("hako-unit-{}", std::process::id());
        let s = script(
            &table,
            "hk1a2b",
            &subnet,
            &rules(),
            &[Ipv4Addr::new(10, 255, 255, 53)],
            true,
        );
        check(&table, &s).unwrap();
        assert!(
            !tables().unwrap().contains(&table),
            "a check applies nothing"
        );
    }
}
