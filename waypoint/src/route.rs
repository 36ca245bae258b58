//! Compiled routing tables: what the request path consults, built once per model.
//!
//! [`RouteTable`] maps a tunnel's destination (service VIP and port, or the IP of a pod bound
//! to this waypoint; see `destination`) to a [`VirtualHost`]: the ordered `http` rules of the
//! one VirtualService in effect for that service (or a default route to the service or pod
//! itself), and the L7 authorization table. The plaintext listener, a test path, selects by
//! the request's authority instead ([`RouteTable::find_vhost`]). Everything here is immutable
//! except the per-port hosts of directly addressed pods, compiled on first use; a reload
//! builds a new table and swaps it in atomically (see `lib.rs`).

pub mod compile;
pub mod destination;
pub mod match_;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use rand::Rng;
use serde::{Serialize, Serializer};

use crate::authz::AuthzTable;
use crate::cluster::Cluster;
use crate::fault::Fault;
use crate::retry::RetryPolicy;
use crate::workload::{ServiceInfo, WorkloadInfo};
use match_::{MatchInput, RequestMatch, StrMatcher};

/// A configuration problem found while compiling.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("{0}")]
    Invalid(String),
}

/// Everything the request path needs, for one config generation.
#[derive(Serialize)]
pub struct RouteTable {
    pub generation: u64,
    /// Plaintext (test) selection: every name and VIP of a served service.
    #[serde(skip)]
    hosts: HashMap<Box<str>, Vec<(u16, Arc<VirtualHost>)>>,
    /// Tunnel selection: `VIP:port` of every served service port.
    #[serde(skip)]
    by_destination: HashMap<SocketAddr, Arc<VirtualHost>>,
    /// Tunnel selection: pods bound to this waypoint, by each of their IPs.
    pub workload_hosts: HashMap<IpAddr, Arc<destination::WorkloadHost>>,
    pub virtual_hosts: Vec<Arc<VirtualHost>>,
    pub clusters: BTreeMap<Arc<str>, Arc<Cluster>>,
    #[serde(skip)]
    pub workloads_by_ip: HashMap<IpAddr, Arc<WorkloadInfo>>,
    /// Problems found at compile time (each names the resource and field).
    pub warnings: Vec<String>,
}

impl RouteTable {
    /// An empty table (nothing served): every request gets 404 `NR`.
    pub fn empty() -> Self {
        RouteTable {
            generation: 0,
            hosts: HashMap::new(),
            by_destination: HashMap::new(),
            workload_hosts: HashMap::new(),
            virtual_hosts: Vec::new(),
            clusters: BTreeMap::new(),
            workloads_by_ip: HashMap::new(),
            warnings: Vec::new(),
        }
    }

    /// Finds the virtual host for `authority` (`host[:port]`); `dst_port` is used when the
    /// authority has no port (the listener's port). Only the plaintext test listener selects
    /// this way: tunnels select by destination ([`RouteTable::vhost_for_destination`]).
    pub fn find_vhost(&self, authority: &str, dst_port: Option<u16>) -> Option<&Arc<VirtualHost>> {
        let (host, port) = split_authority(authority);
        let entry = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.hosts.get(host.to_ascii_lowercase().as_str())
        } else {
            self.hosts.get(host)
        }?;
        let by_port = |p: u16| entry.iter().find(|(ep, _)| *ep == p).map(|(_, v)| v);
        match port.or(dst_port) {
            Some(p) => by_port(p).or_else(|| {
                // A plain `Host: name` on some other listener port: one-port services still match.
                (port.is_none() && entry.len() == 1).then(|| &entry[0].1)
            }),
            None if entry.len() == 1 => Some(&entry[0].1),
            None => by_port(80),
        }
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<WorkloadInfo>> {
        self.workloads_by_ip.get(&ip)
    }
}

/// Splits `host[:port]`, handling `[v6]:port`.
pub fn split_authority(a: &str) -> (&str, Option<u16>) {
    if let Some(rest) = a.strip_prefix('[') {
        if let Some((h, tail)) = rest.split_once(']') {
            return (h, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(p) => (h, Some(p)),
            Err(_) => (a, None),
        },
        _ => (a, None),
    }
}

/// Routes for one (service, port).
#[derive(Serialize)]
pub struct VirtualHost {
    /// `<fqdn>:<port>`, or `<pod IP>:<port>` for a pod addressed directly.
    pub name: String,
    pub service: Arc<ServiceInfo>,
    /// The pod addressed directly, known before any route runs (telemetry of local replies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<Arc<WorkloadInfo>>,
    pub port: u16,
    pub routes: Vec<Route>,
    pub authz: Arc<AuthzTable>,
}

impl VirtualHost {
    /// First route whose match blocks (ORed) accept the request, with the block that matched.
    pub fn select(&self, input: &MatchInput<'_>) -> Option<(&Route, Option<&RequestMatch>)> {
        self.routes.iter().find_map(|r| {
            if r.matches.is_empty() {
                return Some((r, None));
            }
            r.matches
                .iter()
                .find(|m| m.matches(input))
                .map(|m| (r, Some(m)))
        })
    }
}

/// One Istio `http` rule.
#[derive(Serialize)]
pub struct Route {
    pub name: String,
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RequestMatch>,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    pub headers: HeaderRules,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    Direct(#[serde(serialize_with = "ser_status")] StatusCode),
}

fn ser_status<S: Serializer>(s: &StatusCode, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_u16(s.as_u16())
}

fn ser_cluster<S: Serializer>(c: &Arc<Cluster>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(&c.name)
}

/// Forward to one of several weighted clusters.
#[derive(Serialize)]
pub struct Forward {
    pub clusters: Vec<WeightedCluster>,
    pub total_weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Route timeout over all attempts; `None` = disabled (Istio's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

impl Forward {
    /// Weighted choice; one draw per request.
    pub fn pick(&self, rng: &mut impl Rng) -> &WeightedCluster {
        if self.clusters.len() == 1 || self.total_weight == 0 {
            return &self.clusters[0];
        }
        let mut x = rng.gen_range(0..self.total_weight);
        for c in &self.clusters {
            if x < c.weight {
                return c;
            }
            x -= c.weight;
        }
        &self.clusters[self.clusters.len() - 1]
    }
}

#[derive(Serialize)]
pub struct WeightedCluster {
    pub weight: u32,
    #[serde(serialize_with = "ser_cluster")]
    pub cluster: Arc<Cluster>,
    pub headers: HeaderRules,
}

#[derive(Serialize)]
pub struct Mirror {
    #[serde(serialize_with = "ser_cluster")]
    pub cluster: Arc<Cluster>,
    /// Parts per million of requests mirrored.
    pub ppm: u32,
}

/// Istio `rewrite`.
#[derive(Debug, Serialize)]
pub struct Rewrite {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

impl Rewrite {
    /// The rewritten path+query. Istio semantics: after a prefix match the matched prefix is
    /// replaced; after an exact or regex match the whole path is; with no uri match the
    /// route matched prefix `/`, so that is what gets replaced.
    pub fn apply_uri(
        &self,
        path: &str,
        query: Option<&str>,
        matched: Option<&RequestMatch>,
    ) -> Option<String> {
        let new = self.uri.as_deref()?;
        let rest = match matched.and_then(|m| m.uri.as_ref()) {
            Some(StrMatcher::Prefix(p)) => path.get(p.len()..).unwrap_or(""),
            Some(StrMatcher::Exact(_) | StrMatcher::Regex(_)) => "",
            Some(StrMatcher::Present) | None => path.strip_prefix('/').unwrap_or(path),
        };
        let mut out =
            String::with_capacity(new.len() + rest.len() + query.map_or(0, |q| q.len() + 1));
        out.push_str(new);
        // Avoid `//` when both the replacement ends and the remainder starts with a slash.
        if new.ends_with('/') && rest.starts_with('/') {
            out.push_str(&rest[1..]);
        } else {
            out.push_str(rest);
        }
        if out.is_empty() {
            out.push('/');
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }
}

/// Istio `redirect`.
#[derive(Debug, Serialize)]
pub struct Redirect {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(serialize_with = "ser_status")]
    pub code: StatusCode,
}

impl Redirect {
    /// The `location` value: absolute, keeping what the redirect does not override (and the
    /// query string when the new uri has none, as Envoy's `path_redirect` does).
    pub fn location(
        &self,
        scheme: &str,
        authority: &str,
        path: &str,
        query: Option<&str>,
    ) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let (host, port) = split_authority(authority);
        let host = self.authority.as_deref().unwrap_or(host);
        let port = self.port.or(port);
        let mut loc = format!("{scheme}://{host}");
        if let Some(p) = port {
            let default = matches!((scheme, p), ("http", 80) | ("https", 443));
            if !default {
                loc.push_str(&format!(":{p}"));
            }
        }
        match &self.uri {
            Some(u) => {
                loc.push_str(u);
                if !u.contains('?') {
                    if let Some(q) = query {
                        loc.push('?');
                        loc.push_str(q);
                    }
                }
            }
            None => {
                loc.push_str(path);
                if let Some(q) = query {
                    loc.push('?');
                    loc.push_str(q);
                }
            }
        }
        loc
    }
}

/// Header set/add/remove on requests and responses.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HeaderRules {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct HeaderOps {
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "ser_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "ser_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "ser_names")]
    pub remove: Vec<HeaderName>,
}

fn ser_pairs<S: Serializer>(v: &[(HeaderName, HeaderValue)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(
        v.iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or("<binary>"))),
    )
}
fn ser_names<S: Serializer>(v: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|k| k.as_str()))
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::istio::networking::{HttpMatchRequest, StringMatch};

    fn uri_match(exact: Option<&str>, prefix: Option<&str>) -> RequestMatch {
        RequestMatch::compile(&HttpMatchRequest {
            uri: Some(StringMatch {
                exact: exact.map(Into::into),
                prefix: prefix.map(Into::into),
                regex: None,
            }),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn rewrite_replaces_matched_prefix() {
        let r = Rewrite {
            uri: Some("/v2".into()),
            authority: None,
        };
        let m = uri_match(None, Some("/v1"));
        assert_eq!(
            r.apply_uri("/v1/items", Some("a=1"), Some(&m)).unwrap(),
            "/v2/items?a=1"
        );
        let m = uri_match(Some("/old"), None);
        assert_eq!(r.apply_uri("/old", None, Some(&m)).unwrap(), "/v2");
        let r = Rewrite {
            uri: Some("/final-path".into()),
            authority: None,
        };
        let m = uri_match(None, Some("/final-path"));
        assert_eq!(
            r.apply_uri("/final-path/x", None, Some(&m)).unwrap(),
            "/final-path/x"
        );
        let r = Rewrite {
            uri: Some("/".into()),
            authority: None,
        };
        let m = uri_match(None, Some("/api/"));
        assert_eq!(r.apply_uri("/api/users", None, Some(&m)).unwrap(), "/users");
        let m = uri_match(None, Some("/api"));
        assert_eq!(r.apply_uri("/api/users", None, Some(&m)).unwrap(), "/users");
    }

    #[test]
    fn redirect_location() {
        let r = Redirect {
            uri: Some("/new-path".into()),
            authority: None,
            port: None,
            scheme: None,
            code: StatusCode::MOVED_PERMANENTLY,
        };
        assert_eq!(
            r.location(
                "http",
                "service.example.svc.cluster.local",
                "/old-path",
                None
            ),
            "http://service.example.svc.cluster.local/new-path"
        );
        assert_eq!(
            r.location("http", "svc:8080", "/old-path", Some("q=1")),
            "http://svc:8080/new-path?q=1"
        );
        let r = Redirect {
            uri: None,
            authority: Some("other".into()),
            port: Some(80),
            scheme: Some("https".into()),
            code: StatusCode::FOUND,
        };
        assert_eq!(
            r.location("http", "svc:8080", "/p", None),
            "https://other:80/p"
        );
    }

    #[test]
    fn authority_split() {
        assert_eq!(split_authority("a:80"), ("a", Some(80)));
        assert_eq!(split_authority("a"), ("a", None));
        assert_eq!(split_authority("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_authority("::1"), ("::1", None));
    }
}
