//! The `waypoint` binary: starts from a config directory, serves readiness, metrics and
//! `/config_dump`, and hot-reloads the directory without failing an in-flight request.

mod support;

use std::time::Duration;

use support::*;

async fn http_get(url: &str) -> Option<(u16, String)> {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", url])
        .output()
        .await
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = s.rsplit_once('\n')?;
    Some((code.parse().ok()?, body.to_string()))
}

fn vs(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{{destination: {{host: reviews, subset: {subset}}}}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_hot_reloads() {
    let _v1 = backend(
        "127.0.50.1:8080",
        "reviews-v1",
        always(Behavior::Delay(Duration::from_millis(800))),
    )
    .await;
    let _v2 = backend("127.0.50.2:8080", "reviews-v2", always(Behavior::Ok)).await;
    let dir = tempfile::tempdir().unwrap();
    let svc = service_yaml(
        "default",
        "reviews",
        9080,
        8080,
        &[
            ("reviews-v1-a", "127.0.50.1", "v1"),
            ("reviews-v2-a", "127.0.50.2", "v2"),
        ],
    );
    std::fs::write(dir.path().join("svc.yaml"), svc).unwrap();
    std::fs::write(
        dir.path().join("dr.yaml"),
        fixture("bookinfo-destination-rules.yaml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("vs.yaml"), vs("v1")).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let offset = 1000 + (port % 500);
    let _child = tokio::process::Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args([
            "--config",
            dir.path().to_str().unwrap(),
            "--all-services",
            "--no-access-log",
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--port-offset",
            &offset.to_string(),
        ])
        .kill_on_drop(true)
        .spawn()
        .expect("waypoint binary starts");
    let ready = format!("http://127.0.0.1:{}/healthz/ready", 15021 + offset);
    let mut ok = false;
    for _ in 0..100 {
        if http_get(&ready).await.is_some_and(|(c, _)| c == 200) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "readiness never reported ready");

    let c = client();
    let wp: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        get(&c, wp, "reviews:9080", "/", &[]).await.body,
        "reviews-v1"
    );

    // Start a slow request on v1, then switch the route to v2 while it is in flight.
    let c2 = c.clone();
    let inflight = tokio::spawn(async move { get(&c2, wp, "reviews:9080", "/", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(dir.path().join("vs.yaml"), vs("v2")).unwrap();
    let mut switched = false;
    for _ in 0..50 {
        if get(&c, wp, "reviews:9080", "/", &[]).await.body == "reviews-v2" {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(switched, "reload did not take effect");
    let g = inflight.await.unwrap();
    assert_eq!(
        (g.status, g.body.as_str()),
        (200, "reviews-v1"),
        "in-flight request survived the reload"
    );

    // An invalid config is rejected and the last good one keeps serving.
    std::fs::write(dir.path().join("vs.yaml"), "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - {destination: {host: reviews, subset: v1}, weight: -5}\n").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        get(&c, wp, "reviews:9080", "/", &[]).await.body,
        "reviews-v2"
    );

    let (code, dump) = http_get(&format!("http://127.0.0.1:{}/config_dump", 15000 + offset))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        dump.contains("outbound|9080|v2|reviews.default.svc.cluster.local"),
        "{dump}"
    );
    let (code, m) = http_get(&format!("http://127.0.0.1:{}/metrics", 15020 + offset))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        m.contains("istio_requests_total{") && m.contains("destination_version=\"v2\""),
        "{m}"
    );
    assert!(m.contains("istio_request_duration_milliseconds_bucket"));
}
