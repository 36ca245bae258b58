//! Routing end to end: real hyper backends on loopback "pod" IPs, the waypoint's plaintext
//! listener, real clients (hyper, and curl for one test).

mod support;

use std::collections::HashMap;

use support::*;

/// reviews v1/v2/v3 pods in `default` at 127.0.<net>.{1,2,3}:8080 behind service port 9080.
async fn reviews(net: u8) -> (Vec<Backend>, String) {
    let mut bs = Vec::new();
    let names = ["reviews-v1", "reviews-v2", "reviews-v3"];
    for (i, n) in names.iter().enumerate() {
        bs.push(
            backend(
                &format!("127.0.{net}.{}:8080", i + 1),
                n,
                always(Behavior::Ok),
            )
            .await,
        );
    }
    let ips: Vec<String> = (1..=3).map(|i| format!("127.0.{net}.{i}")).collect();
    let y = service_yaml(
        "default",
        "reviews",
        9080,
        8080,
        &[
            ("reviews-v1-abc", &ips[0], "v1"),
            ("reviews-v2-abc", &ips[1], "v2"),
            ("reviews-v3-abc", &ips[2], "v3"),
        ],
    );
    (bs, y)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_90_10_split_within_tolerance() {
    let (_bs, svc) = reviews(10).await;
    let m = model(&[
        &svc,
        &fixture("bookinfo-destination-rules.yaml"),
        &fixture("canary-90-10.yaml"),
    ]);
    let (_wp, addr) = waypoint(&m).await;
    let c = client();
    let n = 2000;
    let mut counts: HashMap<String, u32> = HashMap::new();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut m: HashMap<String, u32> = HashMap::new();
            for _ in 0..n / 8 {
                let g = get(&c, addr, "reviews:9080", "/reviews/1", &[]).await;
                assert_eq!(g.status, 200);
                *m.entry(g.body).or_default() += 1;
            }
            m
        }));
    }
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *counts.entry(k).or_default() += v;
        }
    }
    let v1 = counts.get("reviews-v1").copied().unwrap_or(0);
    let v2 = counts.get("reviews-v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, n, "{counts:?}");
    // Binomial(2000, 0.1): sd ≈ 13.4; ±5 sd.
    assert!((133..=267).contains(&v2), "v2 got {v2} of {n}: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_pick_subset() {
    let (_bs, svc) = reviews(11).await;
    let m = model(&[
        &svc,
        &fixture("bookinfo-destination-rules.yaml"),
        &fixture("header-routing-test-canary.yaml"),
    ]);
    let (_wp, addr) = waypoint(&m).await;
    let c = client();
    for _ in 0..20 {
        assert_eq!(
            get(&c, addr, "reviews:9080", "/", &[("x-test-user", "true")])
                .await
                .body,
            "reviews-v3"
        );
        assert_eq!(
            get(&c, addr, "reviews:9080", "/", &[("x-canary", "true")])
                .await
                .body,
            "reviews-v2"
        );
        assert_eq!(get(&c, addr, "reviews", "/", &[]).await.body, "reviews-v1");
        assert_eq!(
            get(
                &c,
                addr,
                "reviews.default.svc.cluster.local:9080",
                "/",
                &[("x-canary", "false")]
            )
            .await
            .body,
            "reviews-v1"
        );
    }
    // The jason fixture too, swapped in by hot reload.
    let m2 = model(&[
        &svc,
        &fixture("bookinfo-destination-rules.yaml"),
        &fixture("header-routing-jason.yaml"),
    ]);
    _wp.update(&m2);
    assert_eq!(
        get(&c, addr, "reviews:9080", "/", &[("end-user", "jason")])
            .await
            .body,
        "reviews-v2"
    );
    assert_eq!(
        get(&c, addr, "reviews:9080", "/", &[("end-user", "json")])
            .await
            .body,
        "reviews-v1"
    );
    // Unknown host: no route.
    assert_eq!(get(&c, addr, "nope:9080", "/", &[]).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_and_prefix_rewrite() {
    let _b = backend("127.0.12.1:8080", "svc", always(Behavior::Ok)).await;
    let svc = service_yaml(
        "example",
        "service",
        80,
        8080,
        &[("service-1", "127.0.12.1", "v1")],
    );
    // The fixture has no namespace: it lands in `default` but names the FQDN explicitly.
    let m = model(&[&svc, &fixture("redirect-rewrite.yaml")]);
    let (_wp, addr) = waypoint(&m).await;
    let c = client();
    let host = "service.example.svc.cluster.local";
    let g = get(&c, addr, host, "/old-path", &[]).await;
    assert_eq!(g.status, 301);
    assert_eq!(
        g.header("location"),
        "http://service.example.svc.cluster.local/new-path"
    );
    let g = get(&c, addr, host, "/final-path/x?y=1", &[]).await;
    assert_eq!((g.status, g.header("x-path")), (200, "/final-path/x?y=1"));
    // Not matched by any rule: 404 NR.
    assert_eq!(get(&c, addr, host, "/elsewhere", &[]).await.status, 404);

    // A rewrite that changes the prefix, and request/response header rules.
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: rw, namespace: example}
spec:
  hosts: [service]
  http:
  - match: [{uri: {prefix: /api/v1}}]
    rewrite: {uri: /v2, authority: internal.example}
    headers:
      response: {set: {x-served-by: waypoint}, remove: [x-backend]}
    route: [{destination: {host: service}}]
"#;
    _wp.update(&model(&[&svc, vs]));
    let g = get(&c, addr, "service.example:80", "/api/v1/users", &[]).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.header("x-path"), "/v2/users");
    assert_eq!(g.header("x-host"), "internal.example");
    assert_eq!(g.header("x-served-by"), "waypoint");
    assert_eq!(g.header("x-backend"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_attached_to_the_service() {
    let _b = backend("127.0.13.1:8080", "reviews-v1", always(Behavior::Ok)).await;
    let svc = service_yaml(
        "default",
        "reviews",
        9080,
        8080,
        &[("reviews-v1-x", "127.0.13.1", "v1")],
    );
    // The client (127.0.0.1) is a pod with the productpage identity, but on the plaintext
    // listener it proves none.
    let pp = "apiVersion: v1\nkind: Pod\nmetadata: {name: productpage-v1-x, namespace: default, labels: {app: productpage}}\nspec: {serviceAccountName: bookinfo-productpage}\nstatus: {phase: Running, podIP: 127.0.0.1}\n";
    // Selector and namespace-wide policies are ztunnel's: Istio never applies them at a
    // waypoint, so the bookinfo fixture changes nothing here.
    let m = model(&[&svc, pp, &fixture("authz-reviews.yaml")]);
    let (wp, addr) = waypoint(&m).await;
    let c = client();
    assert_eq!(
        get(&c, addr, "reviews:9080", "/ratings/1", &[])
            .await
            .status,
        200
    );

    let attached = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  rules:
  - from: [{source: {ipBlocks: ["127.0.0.1/32"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/reviews/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: principal-only, namespace: default}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]}}]
    to: [{operation: {paths: ["/principal/*"]}}]
"#;
    wp.update(&model(&[&svc, pp, attached]));
    assert_eq!(
        get(&c, addr, "reviews:9080", "/reviews/1", &[])
            .await
            .status,
        200
    );
    let g = get(&c, addr, "reviews:9080", "/ratings/1", &[]).await;
    assert_eq!((g.status, g.body.as_str()), (403, "RBAC: access denied"));
    // The path is normalised before authorization: `..` cannot climb out of `/reviews/`.
    for path in ["/reviews/../ratings/1", "/reviews/%2e%2e/ratings/1"] {
        assert_eq!(
            get(&c, addr, "reviews:9080", path, &[]).await.status,
            403,
            "{path}"
        );
    }
    // Methods are exact in an ALLOW.
    let lowercase_get = {
        let req = hyper::Request::builder()
            .method("get")
            .uri(format!("http://{addr}/reviews/1"))
            .header("host", "reviews:9080")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        c.request(req).await.unwrap().status().as_u16()
    };
    assert_eq!(lowercase_get, 403);
    // A principal needs a proven identity; the client's IP is not one.
    assert_eq!(
        get(&c, addr, "reviews:9080", "/principal/x", &[])
            .await
            .status,
        403
    );

    // ALLOW without rules on the Service: deny-all.
    let deny_all = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: default}\nspec: {targetRefs: [{kind: Service, group: '', name: reviews}]}\n";
    wp.update(&model(&[&svc, pp, deny_all]));
    assert_eq!(
        get(&c, addr, "reviews:9080", "/reviews/1", &[])
            .await
            .status,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_before_routing_and_upstream() {
    let _b = backend("127.0.14.1:8080", "reviews-v1", always(Behavior::Ok)).await;
    let svc = service_yaml(
        "default",
        "reviews",
        9080,
        8080,
        &[("reviews-v1-x", "127.0.14.1", "v1")],
    );
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /api/}}]
    route: [{destination: {host: reviews}}]
"#;
    let (_wp, addr) = waypoint(&model(&[&svc, vs])).await;
    let c = client();
    let g = get(&c, addr, "reviews:9080", "/x/../api/./v1/%61?q=/../y", &[]).await;
    assert_eq!((g.status, g.header("x-path")), (200, "/api/v1/a?q=/../y"));
    // BASE keeps `//` and escaped slashes as they are.
    let g = get(&c, addr, "reviews:9080", "/api//a%2Fb", &[]).await;
    assert_eq!((g.status, g.header("x-path")), (200, "/api//a%2Fb"));
    // Not routable once normalised.
    assert_eq!(
        get(&c, addr, "reviews:9080", "/api/../x", &[]).await.status,
        404
    );
    // A path Envoy refuses to normalise.
    let g = get(&c, addr, "reviews:9080", "/api/a%00", &[]).await;
    assert_eq!(g.status, 400);

    let cfg = waypoint::config::WaypointConfig {
        path_normalization: common::authz::PathNormalization::MergeSlashes,
        ..test_config()
    };
    let (_wp, addr) = waypoint_with(cfg, &model(&[&svc, vs])).await;
    let g = get(&c, addr, "reviews:9080", "//api//a", &[]).await;
    assert_eq!((g.status, g.header("x-path")), (200, "/api/a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http1_and_h2_prior_knowledge() {
    let (_bs, svc) = reviews(14).await;
    let m = model(&[
        &svc,
        &fixture("bookinfo-destination-rules.yaml"),
        &fixture("header-routing-jason.yaml"),
    ]);
    let (_wp, addr) = waypoint(&m).await;
    for extra in [&[][..], &["--http2-prior-knowledge"][..]] {
        let out = tokio::process::Command::new("curl")
            .args([
                "-s",
                "-H",
                "Host: reviews:9080",
                "-H",
                "end-user: jason",
                "-w",
                " %{http_code} %{http_version}",
            ])
            .args(extra)
            .arg(format!("http://{addr}/reviews/0"))
            .output()
            .await
            .expect("curl runs");
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(s.starts_with("reviews-v2 200"), "curl {extra:?}: {s}");
        if !extra.is_empty() {
            assert!(s.ends_with(" 2"), "{s}");
        }
    }
}
