//! Faults, retries, timeouts, outlier ejection and circuit breaking, end to end over loopback.
//! Durations are measured on the real clock here; the same logic is unit-tested on tokio's
//! paused clock beside the code.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

fn dr_subsets(ns: &str, host: &str, extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {host}, namespace: {ns}}}\nspec:\n  host: {host}\n{extra}  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_delay_delays_every_request() {
    let _b = backend("127.0.20.1:8080", "ratings-v1", always(Behavior::Ok)).await;
    let svc = service_yaml(
        "default",
        "ratings",
        9080,
        8080,
        &[("ratings-v1-x", "127.0.20.1", "v1")],
    );
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - fault:
      delay: {percentage: {value: 100.0}, fixedDelay: 2s}
    route: [{destination: {host: ratings, subset: v1}}]
"#;
    let m = model(&[&svc, &dr_subsets("default", "ratings", ""), vs]);
    let (wp, addr) = waypoint(&m).await;
    let c = client();
    let t = Instant::now();
    let g = get(&c, addr, "ratings:9080", "/", &[]).await;
    let e = t.elapsed();
    assert_eq!(g.status, 200);
    assert!(
        e >= Duration::from_secs(2) && e < Duration::from_secs(3),
        "{e:?}"
    );
    assert!(metrics(&wp).contains("response_flags=\"DI\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_half_with_independent_delay() {
    let _b = backend("127.0.21.1:8080", "inventory-v1", always(Behavior::Ok)).await;
    let svc = service_yaml(
        "staging",
        "inventory-svc",
        80,
        8080,
        &[("inventory-v1-x", "127.0.21.1", "v1")],
    );
    let m = model(&[
        &svc,
        &dr_subsets("staging", "inventory-svc", ""),
        &fixture("fault-abort-delay.yaml"),
    ]);
    let (_wp, addr) = waypoint(&m).await;
    let c = client();
    let n = 400;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let g = get(&c, addr, "inventory-svc.staging:80", "/", &[]).await;
                (g.status, t.elapsed() >= Duration::from_secs(3))
            })
        })
        .collect();
    let (mut aborted, mut delayed, mut both) = (0, 0, 0);
    for t in tasks {
        let (status, slow) = t.await.unwrap();
        assert!(status == 200 || status == 503);
        aborted += (status == 503) as u32;
        delayed += slow as u32;
        both += (status == 503 && slow) as u32;
    }
    // Binomial bounds at ±5 sd: abort 50% (sd 10), delay 30% (sd 9.2).
    assert!((150..=250).contains(&aborted), "aborted {aborted}/{n}");
    assert!((74..=166).contains(&delayed), "delayed {delayed}/{n}");
    // Independence: delayed-and-aborted ≈ 15% (sd 7.1); a shared draw would give 30% or 0%.
    assert!((25..=95).contains(&both), "both {both}/{n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_flaky_backend_and_stop_at_attempts() {
    // Fails two of every three requests.
    let flaky = backend(
        "127.0.22.1:8080",
        "flaky",
        Arc::new(|n| {
            if n % 3 == 2 {
                Behavior::Ok
            } else {
                Behavior::Status(503)
            }
        }),
    )
    .await;
    let svc = service_yaml(
        "default",
        "flaky",
        80,
        8080,
        &[("flaky-1", "127.0.22.1", "v1")],
    );
    let vs = |attempts: u32| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: flaky, namespace: default}}\nspec:\n  hosts: [flaky]\n  http:\n  - route: [{{destination: {{host: flaky}}}}]\n    retries: {{attempts: {attempts}, perTryTimeout: 1s, retryOn: 5xx}}\n"
        )
    };
    let (wp, addr) = waypoint(&model(&[&svc, &vs(3)])).await;
    let c = client();
    for i in 0..10 {
        let g = get(&c, addr, "flaky", "/", &[]).await;
        assert_eq!(g.status, 200, "request {i}");
    }
    assert_eq!(flaky.hits(), 30, "each request took exactly three tries");

    // Always failing, 2 retries: three tries, then the 503 comes back flagged URX.
    let bad = backend("127.0.22.2:8080", "bad", always(Behavior::Status(503))).await;
    let svc2 = service_yaml(
        "default",
        "flaky",
        80,
        8080,
        &[("bad-1", "127.0.22.2", "v1")],
    );
    wp.update(&model(&[&svc2, &vs(2)]));
    let g = get(&c, addr, "flaky", "/", &[]).await;
    assert_eq!(g.status, 503);
    assert_eq!(bad.hits(), 3);
    assert!(metrics(&wp).contains("response_flags=\"URX\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_fires_with_ut() {
    let slow = backend(
        "127.0.23.1:8080",
        "slow",
        always(Behavior::Delay(Duration::from_secs(3))),
    )
    .await;
    let svc = service_yaml(
        "default",
        "slow",
        80,
        8080,
        &[("slow-1", "127.0.23.1", "v1")],
    );
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: slow, namespace: default}\nspec:\n  hosts: [slow]\n  http:\n  - route: [{destination: {host: slow}}]\n    timeout: 500ms\n    retries: {attempts: 0}\n";
    let (wp, addr) = waypoint(&model(&[&svc, vs])).await;
    let c = client();
    let t = Instant::now();
    let g = get(&c, addr, "slow", "/", &[]).await;
    let e = t.elapsed();
    assert_eq!(
        (g.status, g.body.as_str()),
        (504, "upstream request timeout")
    );
    assert!(
        e >= Duration::from_millis(500) && e < Duration::from_millis(1500),
        "{e:?}"
    );
    assert!(metrics(&wp).contains("response_flags=\"UT\""));
    assert_eq!(slow.hits(), 1);

    // Per-try timeout with retries: 3 tries of 300 ms each, all inside a 2 s route timeout.
    let vs2 = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: slow, namespace: default}\nspec:\n  hosts: [slow]\n  http:\n  - route: [{destination: {host: slow}}]\n    timeout: 2s\n    retries: {attempts: 2, perTryTimeout: 300ms, retryOn: reset}\n";
    wp.update(&model(&[&svc, vs2]));
    let t = Instant::now();
    let g = get(&c, addr, "slow", "/", &[]).await;
    let e = t.elapsed();
    assert_eq!(g.status, 504);
    assert!(
        e >= Duration::from_millis(900) && e < Duration::from_millis(1900),
        "{e:?}"
    );
    assert_eq!(slow.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_ejects_grows_and_returns() {
    let good = backend("127.0.24.1:8080", "good", always(Behavior::Ok)).await;
    let bad = backend("127.0.24.2:8080", "bad", always(Behavior::Status(500))).await;
    let svc = service_yaml(
        "default",
        "web",
        80,
        8080,
        &[
            ("good-1", "127.0.24.1", "v1"),
            ("bad-1", "127.0.24.2", "v1"),
        ],
    );
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web, namespace: default}\nspec:\n  host: web\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}\n";
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: default}\nspec:\n  hosts: [web]\n  http:\n  - route: [{destination: {host: web}}]\n    retries: {attempts: 0}\n";
    let (_wp, addr) = waypoint(&model(&[&svc, dr, vs])).await;
    let c = client();
    let run = |n: usize| {
        let c = c.clone();
        async move {
            let mut bad = 0;
            for _ in 0..n {
                bad += (get(&c, addr, "web", "/", &[]).await.status == 500) as u32;
            }
            bad
        }
    };
    // First round: at most one 500 before the bad endpoint is ejected.
    assert_eq!(run(20).await, 1);
    assert_eq!(bad.hits(), 1);
    // After the 1 s base ejection it returns, fails once, and is ejected for 2 s this time.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(run(4).await, 1);
    assert_eq!(bad.hits(), 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        run(4).await,
        0,
        "still ejected: second ejection lasts 2 × base"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(run(4).await, 1, "back after 2 s");
    assert!(good.hits() > 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httpbin_circuit_breaker_overflows_with_uo() {
    let slow = backend(
        "127.0.25.1:8080",
        "httpbin",
        always(Behavior::Delay(Duration::from_millis(300))),
    )
    .await;
    let svc = service_yaml(
        "default",
        "httpbin",
        8000,
        8080,
        &[("httpbin-1", "127.0.25.1", "v1")],
    );
    let m = model(&[&svc, &fixture("circuit-breaker-httpbin.yaml")]);
    let (wp, addr) = waypoint(&m).await;
    let c = client();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { get(&c, addr, "httpbin:8000", "/get", &[]).await })
        })
        .collect();
    let (mut ok, mut overflow) = (0, 0);
    for t in tasks {
        let g = t.await.unwrap();
        match g.status {
            200 => ok += 1,
            503 => {
                assert!(g.body.contains("overflow"), "{}", g.body);
                overflow += 1
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert!(ok >= 2 && overflow >= 10, "ok {ok} overflow {overflow}");
    assert!(slow.hits() >= 2);
    assert!(metrics(&wp).contains("response_flags=\"UO\""));
}
