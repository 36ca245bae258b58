//! Load balancing over a cluster's endpoints, skipping ejected ones.
//!
//! - `ROUND_ROBIN`: a shared atomic cursor.
//! - `LEAST_REQUEST` (Istio's default, and what `LEAST_CONN` means in Istio): power of two
//!   choices on in-flight requests.
//! - `RANDOM`: uniform.
//! - `PASSTHROUGH`: the endpoint the client addressed, when it is one of ours; otherwise random.
//!
//! Health: ejected endpoints are skipped unless the healthy share is below the panic threshold
//! (`minHealthPercent`), in which case all endpoints are used, as Envoy does. With no healthy
//! endpoint and no panic the pick fails (503 `UH`). Retries pass the endpoints already tried
//! so a retry goes elsewhere when it can (Istio's `previous_hosts` predicate).
//!
//! The common case (nothing ejected, first try) allocates nothing.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use common::istio::networking::SimpleLb;
use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;

use crate::cluster::{Cluster, Endpoint};

/// Compiled `loadBalancer.simple`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
    Passthrough,
}

impl LbPolicy {
    pub fn from_istio(lb: Option<SimpleLb>) -> Self {
        match lb {
            Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
            Some(SimpleLb::Random) => LbPolicy::Random,
            Some(SimpleLb::Passthrough) => LbPolicy::Passthrough,
            Some(SimpleLb::LeastConn | SimpleLb::LeastRequest | SimpleLb::Unspecified) | None => {
                LbPolicy::LeastRequest
            }
        }
    }
}

/// Picks an endpoint, or `None` when no healthy endpoint exists.
pub fn pick<'c>(
    cluster: &'c Cluster,
    tried: &[SocketAddr],
    original_dst: Option<SocketAddr>,
    now: Instant,
) -> Option<&'c Endpoint> {
    let eps = &cluster.endpoints;
    if eps.is_empty() {
        return None;
    }
    if cluster.lb == LbPolicy::Passthrough {
        if let Some(e) = original_dst.and_then(|a| cluster.find_endpoint(a)) {
            return Some(e);
        }
    }
    let state = &*cluster.state;
    let any_ejected = cluster.outlier.is_some() && state.ejected.load(Ordering::Acquire) > 0;
    if !any_ejected && tried.is_empty() {
        return Some(&eps[choose(cluster, eps.len(), |i| &eps[i])]);
    }
    let healthy: Vec<&Endpoint> = eps
        .iter()
        .filter(|e| !any_ejected || !e.state.outlier.is_ejected(now, state))
        .collect();
    let threshold = cluster.outlier.as_ref().map_or(0, |o| o.min_health_percent) as usize;
    let base: Vec<&Endpoint> = if healthy.len() * 100 < threshold * eps.len() {
        eps.iter().collect() // panic mode: health is ignored
    } else if healthy.is_empty() {
        return None;
    } else {
        healthy
    };
    let fresh: Vec<&Endpoint> = base
        .iter()
        .copied()
        .filter(|e| !tried.contains(&e.addr))
        .collect();
    let cands = if fresh.is_empty() { base } else { fresh };
    Some(cands[choose(cluster, cands.len(), |i| cands[i])])
}

fn choose<'a>(cluster: &Cluster, n: usize, get: impl Fn(usize) -> &'a Endpoint) -> usize {
    if n == 1 {
        return 0;
    }
    match cluster.lb {
        LbPolicy::RoundRobin => cluster.state.rr.fetch_add(1, Ordering::Relaxed) % n,
        LbPolicy::Random | LbPolicy::Passthrough => rand::thread_rng().gen_range(0..n),
        LbPolicy::LeastRequest => {
            let mut rng = rand::thread_rng();
            let a = rng.gen_range(0..n);
            let mut b = rng.gen_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let load = |i: usize| get(i).state.active.load(Ordering::Relaxed);
            if load(b) < load(a) {
                b
            } else {
                a
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cluster::{ActiveGuard, ClusterState, EndpointState};
    use crate::outlier::{Observation, OutlierConfig};
    use crate::pool_limits::Limits;
    use crate::workload::{ServiceInfo, WorkloadInfo};
    use std::collections::HashMap;
    use std::sync::Arc;

    pub(crate) fn cluster(n: u8, lb: LbPolicy, outlier: Option<OutlierConfig>) -> Cluster {
        let endpoints = (1..=n)
            .map(|i| Endpoint {
                addr: SocketAddr::from(([127, 0, 0, i], 8080)),
                workload: Arc::new(WorkloadInfo::for_test(
                    &format!("p{i}"),
                    "default",
                    Default::default(),
                )),
                state: Arc::new(EndpointState::default()),
            })
            .collect();
        let state = Arc::new(ClusterState::default());
        state.total.store(n as u32, Ordering::Relaxed);
        Cluster {
            name: "c".into(),
            service: Arc::new(ServiceInfo {
                name: "svc".into(),
                namespace: "default".into(),
                fqdn: "svc.default.svc.cluster.local".into(),
            }),
            subset: None,
            port: 8080,
            endpoints,
            lb,
            limits: Limits::default(),
            outlier,
            http2: false,
            state,
        }
    }

    fn counts(c: &Cluster, n: usize) -> HashMap<u8, usize> {
        let mut m = HashMap::new();
        for _ in 0..n {
            let e = pick(c, &[], None, Instant::now()).unwrap();
            let SocketAddr::V4(a) = e.addr else {
                unreachable!()
            };
            *m.entry(a.ip().octets()[3]).or_default() += 1;
        }
        m
    }

    #[tokio::test]
    async fn round_robin_and_random_spread() {
        let c = cluster(3, LbPolicy::RoundRobin, None);
        assert_eq!(
            counts(&c, 300).values().copied().collect::<Vec<_>>(),
            vec![100; 3]
        );
        let c = cluster(4, LbPolicy::Random, None);
        let m = counts(&c, 4000);
        assert!(m.values().all(|v| (800..1200).contains(v)), "{m:?}");
    }

    #[tokio::test]
    async fn least_request_prefers_idle() {
        let c = cluster(2, LbPolicy::LeastRequest, None);
        let _busy: Vec<_> = (0..5)
            .map(|_| ActiveGuard::new(&c.endpoints[0].state))
            .collect();
        let m = counts(&c, 100);
        assert_eq!(
            m.get(&2),
            Some(&100),
            "two choices among two always sees the idle one"
        );
    }

    #[tokio::test]
    async fn retries_avoid_previous_host() {
        let c = cluster(2, LbPolicy::RoundRobin, None);
        for _ in 0..10 {
            let e = pick(&c, &[c.endpoints[0].addr], None, Instant::now()).unwrap();
            assert_eq!(e.addr, c.endpoints[1].addr);
        }
        let one = cluster(1, LbPolicy::RoundRobin, None);
        assert!(pick(&one, &[one.endpoints[0].addr], None, Instant::now()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_skipped_then_panic_mode() {
        let mut cfg = OutlierConfig::compile(&Default::default());
        cfg.consecutive_5xx = Some(1);
        cfg.max_ejection_percent = 100;
        let c = cluster(2, LbPolicy::RoundRobin, Some(cfg.clone()));
        let now = Instant::now();
        c.endpoints[0]
            .state
            .outlier
            .observe(&cfg, Observation::Status(503), now, &*c.state);
        for _ in 0..10 {
            assert_eq!(pick(&c, &[], None, now).unwrap().addr, c.endpoints[1].addr);
        }
        c.endpoints[1]
            .state
            .outlier
            .observe(&cfg, Observation::Status(503), now, &*c.state);
        assert!(
            pick(&c, &[], None, now).is_none(),
            "all ejected, no panic: UH"
        );

        cfg.min_health_percent = 50;
        let mut p = cluster(2, LbPolicy::RoundRobin, Some(cfg.clone()));
        p.outlier = Some(cfg.clone());
        p.endpoints[0]
            .state
            .outlier
            .observe(&cfg, Observation::Status(503), now, &*p.state);
        // 1 of 2 healthy = 50%: not below the threshold, so the ejected one is skipped.
        assert!((0..10).all(|_| pick(&p, &[], None, now).unwrap().addr == p.endpoints[1].addr));
        p.endpoints[1]
            .state
            .outlier
            .observe(&cfg, Observation::Status(503), now, &*p.state);
        // 0% healthy < 50%: panic, traffic goes everywhere.
        assert!(pick(&p, &[], None, now).is_some());
        tokio::time::advance(std::time::Duration::from_secs(30)).await;
        assert_eq!(
            counts(&c, 10).len(),
            2,
            "both back after base ejection time"
        );
    }
}
