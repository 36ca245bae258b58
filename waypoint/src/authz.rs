//! L7 AuthorizationPolicy: a thin adapter over `common::authz` compiled for `Layer::L7`, one
//! table per served service.
//!
//! Which policies apply is decided in `common` (`authz::scope`), as Istio attaches policies to
//! a waypoint: those whose `targetRef(s)` name this waypoint's Gateway, the destination
//! Service, or (from the root namespace) the `istio-waypoint` GatewayClass. Selector and
//! namespace-wide policies are ztunnel's and never apply here. The semantics (Istio's order,
//! value forms, method case, repeated headers, fail-closed handling of what is not understood)
//! are the engine's; the request path is normalised by the proxy before it gets here. Denials
//! answer 403 `RBAC: access denied`.

use std::net::IpAddr;

use common::authz::{Attributes, Authorizer, Layer, RequestAttributes};
use common::resource::AuthorizationPolicy;
use common::Identity;
use http::{HeaderMap, Method};
use serde::Serialize;

/// What a policy may look at for one request.
pub struct AuthzInput<'a> {
    pub method: &'a Method,
    /// The normalised path, without the query string.
    pub path: &'a str,
    /// `:authority` as sent.
    pub host: &'a str,
    /// The service port the request was addressed to.
    pub port: u16,
    pub headers: &'a HeaderMap,
    /// The direct peer (the client the tunnel names, or the TCP peer).
    pub source_ip: IpAddr,
    /// The original client; the direct peer, as Envoy's default trusts no forwarding hops.
    pub remote_ip: IpAddr,
    /// The peer identity proven by mTLS; `None` on plaintext, which no principal matches.
    pub source: Option<&'a Identity>,
    pub destination_ip: IpAddr,
}

/// The outcome of evaluation.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, naming the deciding policy and rule (or that no ALLOW policy matched).
    Deny(String),
}

/// Compiled policies for one service.
#[derive(Clone, Debug, Serialize)]
pub struct AuthzTable {
    authorizer: Authorizer,
}

impl Default for AuthzTable {
    fn default() -> Self {
        AuthzTable {
            authorizer: Authorizer::empty(Layer::L7),
        }
    }
}

impl AuthzTable {
    /// Compiles policies already selected for one service (such as
    /// `Model::authorization_policies_for_waypoint` returns).
    pub fn compile<'a>(
        policies: impl IntoIterator<Item = &'a AuthorizationPolicy>,
        warnings: &mut Vec<String>,
    ) -> Self {
        let authorizer = Authorizer::compile(Layer::L7, policies);
        for w in authorizer.warnings() {
            let w = w.to_string();
            // A Gateway-attached policy is compiled once per service; say it once.
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
        AuthzTable { authorizer }
    }

    /// True when no policy can change a decision.
    pub fn is_empty(&self) -> bool {
        self.authorizer.is_empty()
    }

    pub fn evaluate(&self, r: &AuthzInput<'_>) -> Decision {
        let attrs = Attributes {
            source: r.source,
            source_ip: r.source_ip,
            remote_ip: r.remote_ip,
            destination_ip: r.destination_ip,
            destination_port: r.port,
            request: Some(RequestAttributes {
                host: r.host,
                method: r.method.as_str(),
                path: r.path,
                headers: r.headers,
                request_principal: None,
            }),
        };
        let d = self.authorizer.evaluate(&attrs);
        if d.is_allowed() {
            Decision::Allow
        } else {
            Decision::Deny(d.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn input<'a>(
        h: &'a HeaderMap,
        m: &'a Method,
        path: &'a str,
        source: Option<&'a Identity>,
    ) -> AuthzInput<'a> {
        AuthzInput {
            method: m,
            path,
            host: "reviews:9080",
            port: 9080,
            headers: h,
            source_ip: "10.0.0.1".parse().unwrap(),
            remote_ip: "10.0.0.1".parse().unwrap(),
            source,
            destination_ip: "10.0.0.2".parse().unwrap(),
        }
    }

    /// The table of the waypoint `default/waypoint` for service `reviews` in namespace `ns`,
    /// with the policies of `yaml` attached as the model decides.
    fn table(yaml: &str, ns: &str, w: &mut Vec<String>) -> AuthzTable {
        let text = format!(
            "{yaml}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: reviews, namespace: {ns}}}\nspec: {{selector: {{app: reviews}}, ports: [{{port: 9080}}]}}\n"
        );
        let model = crate::config::tests::model(&text, Path::new("x.yaml")).unwrap();
        let svc = model
            .service_by_fqdn(&format!("reviews.{ns}.svc.cluster.local"))
            .unwrap();
        AuthzTable::compile(
            model.authorization_policies_for_waypoint("default", "waypoint", Some(svc)),
            w,
        )
    }

    #[test]
    fn selector_and_namespace_policies_are_not_the_waypoints() {
        // The bookinfo fixture binds its policies by selector and namespace: ztunnel's, not ours.
        let yaml = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/istio/authz-reviews.yaml"
        ))
        .unwrap();
        let t = table(&yaml, "default", &mut Vec::new());
        assert!(t.is_empty());
    }

    #[test]
    fn service_and_gateway_targets_apply() {
        let y = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/reviews/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
  - when: [{key: "request.headers[x-block]", values: ["yes"]}]
"#;
        let t = table(y, "default", &mut Vec::new());
        let mut h = HeaderMap::new();
        let pp: Identity = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
            .parse()
            .unwrap();
        let other: Identity = "spiffe://cluster.local/ns/default/sa/x".parse().unwrap();
        let pp = Some(&pp);
        assert_eq!(
            t.evaluate(&input(&h, &Method::GET, "/reviews/1", pp)),
            Decision::Allow
        );
        assert_eq!(
            t.evaluate(&input(&h, &Method::POST, "/reviews/1", pp)),
            Decision::Deny("denied: no ALLOW policy matched".into())
        );
        assert!(matches!(
            t.evaluate(&input(&h, &Method::GET, "/reviews/1", Some(&other))),
            Decision::Deny(_)
        ));
        assert!(matches!(
            t.evaluate(&input(&h, &Method::GET, "/reviews/1", None)),
            Decision::Deny(_)
        ));
        assert_eq!(
            t.evaluate(&input(&h, &Method::GET, "/admin/x", pp)),
            Decision::Deny("denied by DENY policy default/no-admin rule 0".into())
        );
        h.insert("x-block", "yes".parse().unwrap());
        assert_eq!(
            t.evaluate(&input(&h, &Method::GET, "/reviews/1", pp)),
            Decision::Deny("denied by DENY policy default/no-admin rule 1".into())
        );
        // Only the Gateway policy follows the waypoint to another namespace's service.
        let t = table(y, "prod", &mut Vec::new());
        assert_eq!(
            t.evaluate(&input(&HeaderMap::new(), &Method::POST, "/x", None)),
            Decision::Allow
        );
    }

    #[test]
    fn warnings_are_reported_once() {
        let y = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: default}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
"#;
        let mut w = Vec::new();
        table(y, "default", &mut w);
        table(y, "prod", &mut w);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("default/jwt") && w[0].contains("requestPrincipals"));
    }
}
