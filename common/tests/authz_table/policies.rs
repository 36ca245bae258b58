//! The policies of the table in `authz_table.rs`, all in namespace `ns`. Most DENY (and
//! CUSTOM) sets come with an allow-all ALLOW so that only the DENY can refuse.

pub const ALLOW_ALL: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: ns}
spec: {rules: [{}]}
";

macro_rules! with_allow_all {
    ($p:expr) => {
        concat!(
            $p,
            "---",
            "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: ns}
spec: {rules: [{}]}
"
        )
    };
}

pub const ALLOW_PRINCIPAL: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: ns}
spec:
  rules: [{from: [{source: {principals: [cluster.local/ns/client/sa/curl, '*/sa/admin']}}]}]
";
pub const DENY_PLAINTEXT: &str = with_allow_all!(
    "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mtls-only, namespace: ns}
spec:
  action: DENY
  rules: [{from: [{source: {notPrincipals: ['*']}}]}]
"
);
pub const ALLOW_NAMESPACE: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: n, namespace: ns}
spec:
  rules: [{from: [{source: {namespaces: [client], notNamespaces: [blocked]}}]}]
";
pub const ALLOW_PEER_BLOCK: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: peer, namespace: ns}
spec:
  rules: [{from: [{source: {ipBlocks: [10.0.0.0/24]}}]}]
";
pub const ALLOW_REMOTE_BLOCK: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: remote, namespace: ns}
spec:
  rules: [{from: [{source: {remoteIpBlocks: [192.168.1.0/24]}}]}]
";
pub const DENY_REMOTE_WHEN: &str = with_allow_all!(
    "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: remote-when, namespace: ns}
spec:
  action: DENY
  rules: [{when: [{key: remote.ip, values: [192.168.9.9]}, {key: source.ip, notValues: [10.0.0.0/8]}]}]
"
);
pub const ALLOW_PORTS: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ports, namespace: ns}
spec:
  rules:
  - to: [{operation: {ports: ['8080']}}]
  - when: [{key: destination.port, values: ['9443']}, {key: destination.ip, values: [10.0.1.0/24]}]
";
pub const ALLOW_GET: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get, namespace: ns}
spec:
  rules: [{to: [{operation: {methods: [GET]}}]}]
";
pub const DENY_GET_FROM_BAD: &str = with_allow_all!(
    "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-get, namespace: ns}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [bad]}}], to: [{operation: {methods: [GET]}}]}]
"
);
pub const DENY_UNKNOWN_KEY: &str = with_allow_all!(
    "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: unknown, namespace: ns}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [bad]}}], when: [{key: request.magic, values: [x]}]}]
"
);
pub const CUSTOM: &str = with_allow_all!(
    "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: ns}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules: [{from: [{source: {namespaces: [bad]}}]}]
"
);
pub const AUDIT: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: ns}
spec: {action: AUDIT, rules: [{}]}
";
pub const ALLOW_NO_RULES: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: ns}
spec: {}
";
pub const DENY_NO_RULES: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: empty-deny, namespace: ns}
spec: {action: DENY}
";
pub const DENY_ADMIN: &str = with_allow_all!(
    "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: ns}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ['/admin*']}}]}]
"
);
pub const DENY_GET_METHOD: &str = with_allow_all!(
    "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-get, namespace: ns}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [GET]}}]}]
"
);
pub const ALLOW_NOT_DELETE: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-delete, namespace: ns}
spec:
  rules: [{to: [{operation: {notMethods: [DELETE]}}]}]
";
pub const ALLOW_ALICE: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: alice, namespace: ns}
spec:
  rules: [{when: [{key: 'request.headers[X-User]', values: [alice]}]}]
";
pub const DENY_BOB: &str = with_allow_all!(
    "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-bob, namespace: ns}
spec:
  action: DENY
  rules: [{when: [{key: 'request.headers[x-user]', values: [bob]}]}]
"
);
pub const ALLOW_HOST: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: host, namespace: ns}
spec:
  rules: [{to: [{operation: {hosts: ['reviews.default.svc.cluster.local:8080', '*.example.com']}}]}]
";
pub const DENY_HOST: &str = with_allow_all!(
    "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-host, namespace: ns}
spec:
  action: DENY
  rules: [{to: [{operation: {hosts: [internal.example.com]}}]}]
"
);
pub const ALLOW_JWT: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: ns}
spec:
  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]
";
