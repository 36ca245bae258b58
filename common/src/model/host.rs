//! Hostname rules: how a short name in a resource or a request becomes a Kubernetes service
//! FQDN, and how Istio's wildcard hosts match.
//!
//! Two rules exist on purpose. Istio resolves hosts *inside resources* (VirtualService hosts,
//! destination hosts, DestinationRule hosts) strictly: a name without a dot is relative to the
//! resource's namespace, anything with a dot is taken as written (so `reviews.default` in a
//! VirtualService does *not* mean the service; `istioctl analyze` flags it). Requests and DNS
//! queries, on the other hand, go through the pod's resolv.conf search path, so
//! [`lookup_candidates`] accepts `reviews`, `reviews.default`, `reviews.default.svc` and the
//! full name.

/// Istio's resolution of a host written in a resource living in `namespace`.
pub fn resolve_resource_host(host: &str, namespace: &str, domain: &str) -> String {
    let host = host.trim_end_matches('.');
    if host == "*" || host.contains('.') {
        host.to_ascii_lowercase()
    } else {
        format!("{}.{namespace}.svc.{domain}", host.to_ascii_lowercase())
    }
}

/// The FQDN a client in `from_namespace` reaches when it asks for `host`, following the
/// Kubernetes search path (`<ns>.svc.<domain>`, `svc.<domain>`, `<domain>`). Returns the
/// service FQDN candidate; names that are not of a service shape are returned lowercased.
pub fn lookup_candidate(host: &str, from_namespace: &str, domain: &str) -> String {
    let host = strip_port(host.trim_end_matches('.')).to_ascii_lowercase();
    let svc_suffix = format!(".svc.{domain}");
    if host.ends_with(&svc_suffix) {
        return host;
    }
    if host.ends_with(".svc") {
        return format!("{host}.{domain}");
    }
    match host.matches('.').count() {
        0 => format!("{host}.{from_namespace}.svc.{domain}"),
        1 => format!("{host}.svc.{domain}"),
        _ => host,
    }
}

/// `Host` headers may carry a port; IPv6 literals in brackets keep theirs.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host;
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Istio host matching: `*` matches everything, `*.example.com` matches any name ending in
/// `.example.com` (at least one more label), anything else matches exactly.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

/// Splits `<name>.<ns>.svc.<domain>` into `(name, ns)`.
pub fn split_service_fqdn<'a>(fqdn: &'a str, domain: &str) -> Option<(&'a str, &'a str)> {
    let rest = fqdn.strip_suffix(domain)?.strip_suffix(".svc.")?;
    let (name, ns) = rest.split_once('.')?;
    (!ns.contains('.')).then_some((name, ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "cluster.local";

    #[test]
    fn resource_hosts_follow_istio() {
        assert_eq!(
            resolve_resource_host("reviews", "default", D),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            resolve_resource_host("reviews.default", "x", D),
            "reviews.default"
        );
        assert_eq!(resolve_resource_host("*", "x", D), "*");
        assert_eq!(
            resolve_resource_host("*.Example.com", "x", D),
            "*.example.com"
        );
    }

    #[test]
    fn lookups_follow_search_path() {
        let want = "reviews.default.svc.cluster.local";
        for h in [
            "reviews",
            "reviews.default",
            "reviews.default.svc",
            "reviews.default.svc.cluster.local",
            "reviews.default.svc.cluster.local.",
            "reviews:9080",
        ] {
            assert_eq!(lookup_candidate(h, "default", D), want, "{h}");
        }
        assert_eq!(lookup_candidate("a.b.c", "default", D), "a.b.c");
    }

    #[test]
    fn wildcards() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("*", "anything"));
        assert!(!host_matches("a.com", "b.com"));
        assert_eq!(
            split_service_fqdn("reviews.default.svc.cluster.local", D),
            Some(("reviews", "default"))
        );
        assert_eq!(split_service_fqdn("bookinfo.example.com", D), None);
    }
}
