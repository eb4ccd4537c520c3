//! The routing table: `Host` (+ optional path prefix) → app name.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A routable app: name, hosts (lowercase, no port), optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The app name handed to [`crate::Activator::acquire`].
    pub app: String,
    /// Host names this app answers for (matched case-insensitively, port ignored).
    pub hosts: Vec<String>,
    /// Optional path prefix, matched on a segment boundary (`/api` matches `/api` and
    /// `/api/x`, not `/apix`). `None` or `/` matches every path.
    pub path_prefix: Option<String>,
    /// Requests that arrive over plain HTTP are answered `308` to the same URL over https
    /// (the TLS listener's port when it is not 443) instead of reaching the app.
    pub redirect_https: bool,
}

/// One entry of a host's list: normalised prefix ("" = every path) and app.
#[derive(Debug, Clone)]
struct Entry {
    prefix: String,
    app: Arc<str>,
    redirect_https: bool,
}

/// Immutable routing table; the supervisor swaps a new one in on reload (see [`RoutesHandle`]).
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// Normalised host → entries sorted by prefix length, longest first.
    by_host: HashMap<String, Vec<Entry>>,
}

impl Routes {
    /// Builds the table. Hosts are normalised (lowercase, port and trailing dot removed);
    /// prefixes lose their trailing `/`. When two routes claim the same host and prefix, the
    /// first one wins.
    pub fn new(routes: Vec<Route>) -> Self {
        let mut by_host: HashMap<String, Vec<Entry>> = HashMap::new();
        for route in routes {
            let prefix = normalize_prefix(route.path_prefix.as_deref());
            let app: Arc<str> = Arc::from(route.app.as_str());
            for host in &route.hosts {
                let host = normalize_host(host).into_owned();
                if host.is_empty() {
                    continue;
                }
                let entries = by_host.entry(host).or_default();
                if entries.iter().any(|e| e.prefix == prefix) {
                    tracing::warn!(app = %route.app, prefix = %prefix, "duplicate route ignored");
                    continue;
                }
                entries.push(Entry {
                    prefix: prefix.clone(),
                    app: Arc::clone(&app),
                    redirect_https: route.redirect_https,
                });
            }
        }
        for entries in by_host.values_mut() {
            entries.sort_by_key(|e| std::cmp::Reverse(e.prefix.len()));
        }
        Routes { by_host }
    }

    /// The app serving `host` (any case, with or without `:port`) and `path`, if any.
    /// Among the routes for that host, the longest matching path prefix wins.
    pub fn resolve(&self, host: &str, path: &str) -> Option<&str> {
        self.resolve_shared(host, path).map(|app| &**app)
    }

    /// [`Routes::resolve`] as a shared name, so a request can keep it without copying.
    pub(crate) fn resolve_shared(&self, host: &str, path: &str) -> Option<&Arc<str>> {
        self.resolve_entry(host, path).map(|(app, _)| app)
    }

    /// [`Routes::resolve_shared`] with the route's `redirect_https`.
    pub(crate) fn resolve_entry(&self, host: &str, path: &str) -> Option<(&Arc<str>, bool)> {
        let entries = self.by_host.get(normalize_host(host).as_ref())?;
        entries
            .iter()
            .find(|e| prefix_matches(&e.prefix, path))
            .map(|e| (&e.app, e.redirect_https))
    }

    /// Number of distinct hosts in the table.
    pub fn host_count(&self) -> usize {
        self.by_host.len()
    }
}

/// Shared, swappable handle on the current [`Routes`]; readers take a cheap `Arc` snapshot.
#[derive(Debug, Default)]
pub struct RoutesHandle {
    current: RwLock<Arc<Routes>>,
}

impl RoutesHandle {
    /// A handle holding `routes`.
    pub fn new(routes: Routes) -> Self {
        RoutesHandle {
            current: RwLock::new(Arc::new(routes)),
        }
    }

    /// Replaces the table; requests already routed keep their decision.
    pub fn store(&self, routes: Routes) {
        let new = Arc::new(routes);
        match self.current.write() {
            Ok(mut guard) => *guard = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    /// A snapshot of the current table.
    pub fn load(&self) -> Arc<Routes> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

/// Lowercases, strips a `:port` (IPv6 literals keep their brackets) and a trailing dot.
/// Borrows when nothing needs lowercasing (the usual case on the request path).
pub(crate) fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
            _ => host,
        }
    };
    let without_dot = without_port.strip_suffix('.').unwrap_or(without_port);
    if without_dot.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(without_dot.to_ascii_lowercase())
    } else {
        Cow::Borrowed(without_dot)
    }
}

fn normalize_prefix(prefix: Option<&str>) -> String {
    let p = prefix.unwrap_or("").trim();
    let p = p.trim_end_matches('/');
    if p.is_empty() {
        String::new()
    } else if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("localhost"), "localhost");
    }

    #[test]
    fn prefix_segment_boundary() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(!prefix_matches("/api", "/"));
        assert!(prefix_matches("", "/anything"));
        assert_eq!(normalize_prefix(Some("/api/")), "/api");
        assert_eq!(normalize_prefix(Some("api")), "/api");
        assert_eq!(normalize_prefix(Some("/")), "");
    }
}
