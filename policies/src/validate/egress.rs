//! Validation of `network: egress`: an app's `egress_allow` and the top-level `egress.subnet`
//! (which must not clash with a route of the host).
use std::path::Path;

use super::Ctx;
use crate::egress::{self, Egress, EgressRule, Ipv4Cidr, RawEgress, MAX_EGRESS_PREFIX};
use crate::index::join;
use crate::model::{App, Network};

impl Ctx<'_> {
    /// `egress_allow` of the app at `at` (meaningful with `network: egress` only).
    pub(super) fn egress_allow(
        &mut self,
        at: &str,
        network: Network,
        raw: Option<Vec<String>>,
    ) -> Option<Vec<EgressRule>> {
        let list = raw?;
        let path = join(at, "egress_allow");
        if network != Network::Egress {
            self.fault(
                &path,
                "only meaningful with `network: egress` (an isolated app has no way out, a \
                 host-network app is not filtered)",
            );
            return None;
        }
        let mut out = Vec::with_capacity(list.len());
        for (i, entry) in list.iter().enumerate() {
            match entry.parse::<EgressRule>() {
                Ok(rule) => out.push(rule),
                Err(e) => self.fault(&format!("{path}[{i}]"), e),
            }
        }
        Some(out)
    }

    /// The top-level `egress` section. When an app uses `network: egress`, the subnet is
    /// checked against the host's routes (`route_table`), ignoring this serve's own links
    /// (named after `cgroup_parent`).
    pub(super) fn egress(
        &mut self,
        raw: Option<RawEgress>,
        apps: &[App],
        cgroup_parent: &str,
        route_table: &Path,
    ) -> Egress {
        let mut out = Egress::default();
        let written = raw.as_ref().and_then(|r| r.subnet.clone());
        if let Some(s) = &written {
            match s.parse::<Ipv4Cidr>() {
                Ok(c) if c.prefix > MAX_EGRESS_PREFIX => self.fault(
                    "egress.subnet",
                    format!(
                        "{c} is too small: at most /{MAX_EGRESS_PREFIX} (each instance takes \
                         two addresses)"
                    ),
                ),
                Ok(c) if c.prefix < 8 => self.fault(
                    "egress.subnet",
                    format!("{c} is implausibly large: at least /8"),
                ),
                Ok(c) => out.subnet = c,
                Err(e) => {
                    self.fault("egress.subnet", e);
                    return out;
                }
            }
        }
        if apps.iter().any(|a| a.network == Network::Egress) {
            let own = egress::serve_veth_prefix(cgroup_parent);
            if let Some(route) = egress::clashing_route(&out.subnet, route_table, &own) {
                let which = if written.is_some() {
                    ""
                } else {
                    " (the default)"
                };
                self.fault(
                    "egress.subnet",
                    format!(
                        "{}{which} overlaps the host route {route}; choose a free range with \
                         `egress: {{subnet: CIDR}}`",
                        out.subnet
                    ),
                );
            }
        }
        out
    }
}
