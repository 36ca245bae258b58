//! The policy table: every case runs against both layers (L4 as ztunnel evaluates a
//! connection, L7 as the waypoint evaluates a request whose path it normalised first) with the
//! decision expected at each. Policies are applied as given (no scoping: that is tested with
//! the model). Then, for every AuthorizationPolicy of the repository's Istio fixtures that has
//! only L4 attributes, both layers must decide alike over a grid of connections.

use std::path::Path;

use common::authz::{Attributes, Authorizer, Layer, PathNormalization, RequestAttributes};
use common::resource::{AuthorizationPolicy, Resource};
use common::Identity;
use http::HeaderMap;
use serde::Deserialize;

use Expect::{Allow as A, BadRequest as Bad, Deny as D};

#[path = "authz_table/policies.rs"]
mod policies;
use policies::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Allow,
    Deny,
    /// The path cannot be normalised: the waypoint answers 400 before authorization.
    BadRequest,
}

/// A connection, and the request it carries at L7.
#[derive(Clone)]
struct Req {
    /// `namespace/serviceaccount` in trust domain `cluster.local`; `None`: plaintext.
    src: Option<&'static str>,
    peer: &'static str,
    remote: &'static str,
    dst: &'static str,
    host: &'static str,
    method: &'static str,
    /// As received: path plus optional query.
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    mode: PathNormalization,
}

fn req() -> Req {
    Req {
        src: Some("client/curl"),
        peer: "10.0.0.5",
        remote: "10.0.0.5",
        dst: "10.0.1.1:8080",
        host: "reviews.default.svc.cluster.local:8080",
        method: "GET",
        path: "/",
        headers: Vec::new(),
        mode: PathNormalization::Base,
    }
}

impl Req {
    fn src(mut self, s: Option<&'static str>) -> Self {
        self.src = s;
        self
    }
    fn ips(mut self, peer: &'static str, remote: &'static str) -> Self {
        self.peer = peer;
        self.remote = remote;
        self
    }
    fn dst(mut self, d: &'static str) -> Self {
        self.dst = d;
        self
    }
    fn host(mut self, h: &'static str) -> Self {
        self.host = h;
        self
    }
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn path(mut self, p: &'static str) -> Self {
        self.path = p;
        self
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.push((k, v));
        self
    }
    fn mode(mut self, m: PathNormalization) -> Self {
        self.mode = m;
        self
    }
}

struct Case {
    name: &'static str,
    policies: &'static str,
    req: Req,
    l4: Expect,
    l7: Expect,
}

fn case(name: &'static str, policies: &'static str, req: Req, l4: Expect, l7: Expect) -> Case {
    Case {
        name,
        policies,
        req,
        l4,
        l7,
    }
}

fn parse(yaml: &str) -> Vec<AuthorizationPolicy> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(
            |doc| match Resource::deserialize(doc).expect("valid resource") {
                Resource::AuthorizationPolicy(p) => Some(p),
                _ => None,
            },
        )
        .collect()
}

fn identity(src: &str) -> Identity {
    let (ns, sa) = src.split_once('/').expect("ns/sa");
    Identity::new("cluster.local", ns, sa)
}

/// Evaluates `r` against `policies` at `layer`: `Some(allowed)`, or `None` for a 400.
fn decide(policies: &Authorizer, r: &Req) -> Option<bool> {
    let id = r.src.map(identity);
    let dst: std::net::SocketAddr = r.dst.parse().unwrap();
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        headers.append(*k, v.parse().unwrap());
    }
    let normalised = match policies.layer() {
        Layer::L4 => None,
        Layer::L7 => Some(r.mode.apply(r.path).ok()?),
    };
    let request = normalised.as_deref().map(|pq| RequestAttributes {
        host: r.host,
        method: r.method,
        path: pq.split('?').next().unwrap(),
        headers: &headers,
        request_principal: None,
    });
    let attrs = Attributes {
        source: id.as_ref(),
        source_ip: r.peer.parse().unwrap(),
        remote_ip: r.remote.parse().unwrap(),
        destination_ip: dst.ip(),
        destination_port: dst.port(),
        request,
    };
    Some(policies.evaluate(&attrs).is_allowed())
}

fn expect(d: Option<bool>) -> Expect {
    match d {
        Some(true) => A,
        Some(false) => D,
        None => Bad,
    }
}

fn cases() -> Vec<Case> {
    use PathNormalization::{DecodeAndMergeSlashes, MergeSlashes};
    vec![
        // Identity.
        case("principal listed", ALLOW_PRINCIPAL, req(), A, A),
        case(
            "principal suffix",
            ALLOW_PRINCIPAL,
            req().src(Some("other/admin")),
            A,
            A,
        ),
        case(
            "principal not listed",
            ALLOW_PRINCIPAL,
            req().src(Some("client/x")),
            D,
            D,
        ),
        case(
            "principal: plaintext",
            ALLOW_PRINCIPAL,
            req().src(None),
            D,
            D,
        ),
        case(
            "notPrincipals *: plaintext",
            DENY_PLAINTEXT,
            req().src(None),
            D,
            D,
        ),
        case("notPrincipals *: mTLS", DENY_PLAINTEXT, req(), A, A),
        case("namespace listed", ALLOW_NAMESPACE, req(), A, A),
        case(
            "namespace not listed",
            ALLOW_NAMESPACE,
            req().src(Some("other/curl")),
            D,
            D,
        ),
        case(
            "namespace: plaintext",
            ALLOW_NAMESPACE,
            req().src(None),
            D,
            D,
        ),
        // Peer (ipBlocks) versus original client (remoteIpBlocks).
        case(
            "ipBlocks: peer in",
            ALLOW_PEER_BLOCK,
            req().ips("10.0.0.7", "192.168.1.1"),
            A,
            A,
        ),
        case(
            "ipBlocks: only client in",
            ALLOW_PEER_BLOCK,
            req().ips("10.9.0.7", "10.0.0.7"),
            D,
            D,
        ),
        case(
            "remoteIpBlocks: client in",
            ALLOW_REMOTE_BLOCK,
            req().ips("10.0.0.7", "192.168.1.1"),
            A,
            A,
        ),
        case(
            "remoteIpBlocks: only peer in",
            ALLOW_REMOTE_BLOCK,
            req().ips("192.168.1.1", "10.0.0.7"),
            D,
            D,
        ),
        case(
            "remote.ip when: denied client",
            DENY_REMOTE_WHEN,
            req().ips("172.16.0.1", "192.168.9.9"),
            D,
            D,
        ),
        case(
            "remote.ip when: in-cluster peer",
            DENY_REMOTE_WHEN,
            req().ips("10.0.0.1", "192.168.9.9"),
            A,
            A,
        ),
        // Destination.
        case("ports: listed", ALLOW_PORTS, req(), A, A),
        case(
            "ports: other",
            ALLOW_PORTS,
            req().dst("10.0.1.1:9090"),
            D,
            D,
        ),
        case(
            "destination.port and ip",
            ALLOW_PORTS,
            req().dst("10.0.1.9:9443"),
            A,
            A,
        ),
        case(
            "destination.ip elsewhere",
            ALLOW_PORTS,
            req().dst("10.0.2.9:9443"),
            D,
            D,
        ),
        // HTTP attributes at L4: an ALLOW never matches, a DENY matches on its L4 parts.
        case("ALLOW methods at L4", ALLOW_GET, req(), D, A),
        case(
            "DENY methods+namespace: bad GET",
            DENY_GET_FROM_BAD,
            req().src(Some("bad/x")),
            D,
            D,
        ),
        case(
            "DENY methods+namespace: bad POST",
            DENY_GET_FROM_BAD,
            req().src(Some("bad/x")).method("POST"),
            D,
            A,
        ),
        case(
            "DENY methods+namespace: good GET",
            DENY_GET_FROM_BAD,
            req(),
            A,
            A,
        ),
        // Not understood: fails closed at both layers.
        case(
            "DENY unknown when key: bad",
            DENY_UNKNOWN_KEY,
            req().src(Some("bad/x")),
            D,
            D,
        ),
        case("DENY unknown when key: good", DENY_UNKNOWN_KEY, req(), A, A),
        case("ALLOW requestPrincipals (no JWT)", ALLOW_JWT, req(), D, D),
        // Actions.
        case(
            "CUSTOM is a DENY: matched",
            CUSTOM,
            req().src(Some("bad/x")),
            D,
            D,
        ),
        case("CUSTOM is a DENY: not matched", CUSTOM, req(), A, A),
        case("AUDIT alone", AUDIT, req().src(None), A, A),
        case("ALLOW without rules", ALLOW_NO_RULES, req(), D, D),
        case("rules: [{}]", ALLOW_ALL, req().src(None), A, A),
        case("DENY without rules", DENY_NO_RULES, req(), A, A),
        // Paths are normalised before authorization (L4 has no path: the DENY holds there).
        case("path /admin", DENY_ADMIN, req().path("/admin/x"), D, D),
        case("path /public", DENY_ADMIN, req().path("/public"), D, A),
        case(
            "path /x/../admin",
            DENY_ADMIN,
            req().path("/x/../admin"),
            D,
            D,
        ),
        case("path /./admin", DENY_ADMIN, req().path("/./admin"), D, D),
        case("path //admin BASE", DENY_ADMIN, req().path("//admin"), D, A),
        case(
            "path //admin MERGE_SLASHES",
            DENY_ADMIN,
            req().path("//admin").mode(MergeSlashes),
            D,
            D,
        ),
        case("path %2e%2e", DENY_ADMIN, req().path("/%2e%2e/admin"), D, D),
        case(
            "path %2E%2e",
            DENY_ADMIN,
            req().path("/x/%2E%2e/admin"),
            D,
            D,
        ),
        case("path %2E.", DENY_ADMIN, req().path("/%2E./admin"), D, D),
        case(
            "path backslash",
            DENY_ADMIN,
            req().path("/x\\..\\admin"),
            D,
            D,
        ),
        case(
            "path encoded slash BASE",
            DENY_ADMIN,
            req().path("/x%2F..%2Fadmin"),
            D,
            A,
        ),
        case(
            "path encoded slash DECODE_AND_MERGE_SLASHES",
            DENY_ADMIN,
            req().path("/x%2F..%2Fadmin").mode(DecodeAndMergeSlashes),
            D,
            D,
        ),
        case("path %61dmin", DENY_ADMIN, req().path("/%61dmin"), D, D),
        case(
            "query untouched",
            DENY_ADMIN,
            req().path("/public?next=/admin"),
            D,
            A,
        ),
        case("path with %00", DENY_ADMIN, req().path("/admin%00"), D, Bad),
        // Methods: ALLOW exact, DENY any case.
        case("DENY GET: get", DENY_GET_METHOD, req().method("get"), D, D),
        case(
            "DENY GET: POST",
            DENY_GET_METHOD,
            req().method("POST"),
            D,
            A,
        ),
        case("ALLOW GET: GET", ALLOW_GET, req(), D, A),
        case("ALLOW GET: get", ALLOW_GET, req().method("get"), D, D),
        case(
            "ALLOW notMethods DELETE: delete",
            ALLOW_NOT_DELETE,
            req().method("delete"),
            D,
            D,
        ),
        case(
            "ALLOW notMethods DELETE: GET",
            ALLOW_NOT_DELETE,
            req(),
            D,
            A,
        ),
        // Repeated headers: ALLOW sees the joined value, DENY also each value.
        case(
            "ALLOW header: single",
            ALLOW_ALICE,
            req().header("x-user", "alice"),
            D,
            A,
        ),
        case(
            "ALLOW header: repeated",
            ALLOW_ALICE,
            req().header("x-user", "alice").header("x-user", "bob"),
            D,
            D,
        ),
        case("ALLOW header: absent", ALLOW_ALICE, req(), D, D),
        case(
            "DENY header: second value",
            DENY_BOB,
            req().header("x-user", "alice").header("x-user", "bob"),
            D,
            D,
        ),
        case(
            "DENY header: other",
            DENY_BOB,
            req().header("x-user", "alice"),
            D,
            A,
        ),
        // Hosts: case-insensitive; a DENY also matches the host without its port.
        case(
            "ALLOW host: any case",
            ALLOW_HOST,
            req().host("Reviews.Default.SVC.cluster.local:8080"),
            D,
            A,
        ),
        case(
            "ALLOW host: suffix",
            ALLOW_HOST,
            req().host("api.Example.com"),
            D,
            A,
        ),
        case(
            "ALLOW host: without port",
            ALLOW_HOST,
            req().host("reviews.default.svc.cluster.local"),
            D,
            D,
        ),
        case(
            "DENY host: with port",
            DENY_HOST,
            req().host("internal.example.com:80"),
            D,
            D,
        ),
        case(
            "DENY host: other",
            DENY_HOST,
            req().host("public.example.com"),
            D,
            A,
        ),
    ]
}

#[test]
fn every_case_at_both_layers() {
    let mut failures = Vec::new();
    let cases = cases();
    for c in &cases {
        let policies = parse(c.policies);
        assert!(!policies.is_empty(), "{}: no policy parsed", c.name);
        for (layer, want) in [(Layer::L4, c.l4), (Layer::L7, c.l7)] {
            let a = Authorizer::compile(layer, &policies);
            let got = expect(decide(&a, &c.req));
            if got != want {
                failures.push(format!(
                    "{} at {layer:?}: got {got:?}, want {want:?}",
                    c.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(cases.len() >= 60);
}

#[test]
fn warnings_name_the_policy_and_field() {
    let a = Authorizer::compile(Layer::L4, &parse(DENY_GET_FROM_BAD));
    let w: Vec<String> = a.warnings().iter().map(|w| w.to_string()).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("AuthorizationPolicy ns/no-get: spec.rules[0].to[0].operation.methods: "),
        "{}",
        w[0]
    );
    let a = Authorizer::compile(Layer::L7, &parse(DENY_UNKNOWN_KEY));
    assert_eq!(a.warnings().len(), 1);
    assert_eq!(
        a.warnings()[0].field,
        "spec.rules[0].when[0] (key `request.magic`)"
    );
    assert!(Authorizer::compile(Layer::L7, &parse(CUSTOM)).warnings()[0]
        .message
        .contains("CUSTOM"));
}

fn fixture_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/istio")
}

/// Every fixture policy without HTTP attributes decides the same at L4 and L7, alone and
/// together with the other such policies of its file.
#[test]
fn fixture_l4_policies_agree_across_layers() {
    let mut files: Vec<_> = std::fs::read_dir(fixture_dir())
        .expect("fixtures")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut checked = 0;
    for f in files {
        let all = parse(&std::fs::read_to_string(&f).unwrap());
        let l4_only: Vec<_> = all
            .into_iter()
            .filter(|p| {
                Authorizer::compile(Layer::L4, std::iter::once(p))
                    .warnings()
                    .is_empty()
            })
            .collect();
        if l4_only.is_empty() {
            continue;
        }
        let mut sets: Vec<Vec<AuthorizationPolicy>> =
            l4_only.iter().map(|p| vec![p.clone()]).collect();
        sets.push(l4_only.clone());
        for set in sets {
            let l4 = Authorizer::compile(Layer::L4, &set);
            let l7 = Authorizer::compile(Layer::L7, &set);
            for r in grid() {
                assert_eq!(
                    decide(&l4, &r),
                    decide(&l7, &r),
                    "{}: {:?} from {:?} {} to {} {} {}",
                    f.display(),
                    set.iter().map(|p| p.name()).collect::<Vec<_>>(),
                    r.src,
                    r.peer,
                    r.dst,
                    r.method,
                    r.path
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "only {checked} decisions compared");
}

fn grid() -> Vec<Req> {
    let mut out = Vec::new();
    for src in [
        None,
        Some("production/productpage"),
        Some("default/bookinfo-productpage"),
        Some("production/evil"),
        Some("istio-system/ingress"),
    ] {
        for (peer, remote) in [("10.0.0.5", "10.0.0.5"), ("192.168.1.9", "10.0.0.5")] {
            for dst in ["10.0.1.1:9080", "10.0.1.2:80"] {
                for (method, path) in [("GET", "/reviews/1"), ("POST", "/admin")] {
                    out.push(
                        req()
                            .src(src)
                            .ips(peer, remote)
                            .dst(dst)
                            .method(method)
                            .path(path),
                    );
                }
            }
        }
    }
    out
}
