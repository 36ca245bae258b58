//! Outlier detection (passive health checking) with Envoy's semantics.
//!
//! - Consecutive 5xx and consecutive gateway errors (502/503/504) are counted per endpoint;
//!   local-origin failures (connect failure, reset, timeout) count as both, as Envoy does when
//!   `split_external_local_origin_errors` is off. Reaching a threshold ejects at once.
//! - Ejection lasts `baseEjectionTime × n` where `n` counts consecutive ejections (capped at
//!   Envoy's `max_ejection_time`, 300 s, or the base when larger); `n` decays by one for every
//!   `interval` the endpoint spends healthy.
//! - No more than `maxEjectionPercent` of the cluster is ejected at once (checked before the
//!   ejection, as Envoy does).
//! - Below `minHealthPercent` healthy endpoints the balancer enters panic mode and ignores
//!   health (see `balance`).
//!
//! Istio's legacy `consecutiveErrors` maps to consecutive gateway errors. Time is
//! `tokio::time::Instant`, so tests run on a paused clock. Un-ejection is evaluated lazily when
//! the balancer looks at an endpoint, instead of on an interval timer: the endpoint returns
//! exactly when its ejection expires rather than at the next interval tick.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use common::istio::networking::OutlierDetection;
use serde::Serialize;
use tokio::time::Instant;

/// Envoy's default `max_ejection_time`.
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// Compiled outlier detection settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutlierConfig {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway: Option<u32>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// Panic threshold: below this share of healthy endpoints, health is ignored.
    pub min_health_percent: u32,
}

impl OutlierConfig {
    /// Istio defaults: 5 consecutive 5xx, 10 s interval, 30 s base ejection, 10 % max ejected,
    /// panic threshold 0 % (off).
    pub fn compile(o: &OutlierDetection) -> Self {
        let pos = |v: Option<i64>| v.filter(|v| *v > 0).map(|v| v.min(u32::MAX as i64) as u32);
        let (c5xx, cgw) = match (o.consecutive_5xx_errors, o.consecutive_errors) {
            // The deprecated field alone means gateway errors, and disables the 5xx detector.
            (None, Some(legacy)) => (None, pos(Some(legacy))),
            (c5, _) => (
                if c5 == Some(0) {
                    None
                } else {
                    pos(c5).or(Some(5))
                },
                pos(o.consecutive_gateway_errors),
            ),
        };
        let cgw = cgw.or(pos(o.consecutive_gateway_errors));
        OutlierConfig {
            consecutive_5xx: c5xx,
            consecutive_gateway: cgw,
            interval: o
                .interval
                .map(|d| d.as_std())
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(10)),
            base_ejection_time: o
                .base_ejection_time
                .map(|d| d.as_std())
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(30)),
            max_ejection_percent: o
                .max_ejection_percent
                .map(|v| v.clamp(0, 100) as u32)
                .unwrap_or(10),
            min_health_percent: o
                .min_health_percent
                .map(|v| v.clamp(0, 100) as u32)
                .unwrap_or(0),
        }
    }
}

/// What one attempt told us about an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// An HTTP response with this status.
    Status(u16),
    /// Connect failure, reset, or per-try timeout.
    LocalFailure,
}

/// Per-endpoint detector state. All fields are atomics: reporting happens on many tasks.
#[derive(Debug)]
pub struct OutlierState {
    base: Instant,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Milliseconds since `base` until which the endpoint is ejected; negative = not ejected.
    ejected_until_ms: AtomicI64,
    /// When the endpoint last became healthy again (ms since `base`), for multiplier decay.
    healthy_since_ms: AtomicI64,
    /// Consecutive ejections (Envoy's ejection multiplier).
    ejections: AtomicU32,
}

impl Default for OutlierState {
    fn default() -> Self {
        OutlierState {
            base: Instant::now(),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            ejected_until_ms: AtomicI64::new(-1),
            healthy_since_ms: AtomicI64::new(0),
            ejections: AtomicU32::new(0),
        }
    }
}

/// The cluster-wide facts an ejection decision needs.
pub trait EjectionBudget {
    /// Endpoints currently ejected and total endpoints.
    fn ejected_and_total(&self) -> (u32, u32);
    fn on_eject(&self);
    fn on_return(&self);
}

impl OutlierState {
    fn ms(&self, now: Instant) -> i64 {
        now.saturating_duration_since(self.base).as_millis() as i64
    }

    /// True while ejected. Lazily returns an expired endpoint to service.
    pub fn is_ejected(&self, now: Instant, budget: &dyn EjectionBudget) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Acquire);
        if until < 0 {
            return false;
        }
        if self.ms(now) < until {
            return true;
        }
        // Exactly one caller wins the return and fixes the cluster's ejected count.
        if self
            .ejected_until_ms
            .compare_exchange(until, -1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.healthy_since_ms.store(until, Ordering::Release);
            budget.on_return();
        }
        false
    }

    /// Current ejection multiplier (for tests and `/config_dump`).
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Records an attempt's result; may eject the endpoint. Returns true when it ejected.
    pub fn observe(
        &self,
        cfg: &OutlierConfig,
        obs: Observation,
        now: Instant,
        budget: &dyn EjectionBudget,
    ) -> bool {
        let (is_5xx, is_gw) = match obs {
            Observation::Status(s) => (s >= 500, matches!(s, 502..=504)),
            Observation::LocalFailure => (true, true),
        };
        let c5 = if is_5xx {
            self.consecutive_5xx.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.consecutive_5xx.store(0, Ordering::Release);
            0
        };
        let cg = if is_gw {
            self.consecutive_gateway.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.consecutive_gateway.store(0, Ordering::Release);
            0
        };
        let tripped = cfg.consecutive_5xx.is_some_and(|t| c5 >= t)
            || cfg.consecutive_gateway.is_some_and(|t| cg >= t);
        tripped && self.try_eject(cfg, now, budget)
    }

    fn try_eject(&self, cfg: &OutlierConfig, now: Instant, budget: &dyn EjectionBudget) -> bool {
        if self.is_ejected(now, budget) {
            return false;
        }
        let (ejected, total) = budget.ejected_and_total();
        if total == 0
            || (ejected as u64) * 100 >= (cfg.max_ejection_percent as u64) * (total as u64)
        {
            return false;
        }
        let now_ms = self.ms(now);
        // Decay the multiplier by the whole intervals spent healthy since the last return.
        let healthy = (now_ms - self.healthy_since_ms.load(Ordering::Acquire)).max(0) as u128;
        let decay = (healthy / cfg.interval.as_millis().max(1)) as u32;
        let prev = self.ejections.load(Ordering::Acquire);
        let n = prev.saturating_sub(decay) + 1;
        let cap = MAX_EJECTION_TIME.max(cfg.base_ejection_time);
        let dur = cfg.base_ejection_time.saturating_mul(n).min(cap);
        if self
            .ejected_until_ms
            .compare_exchange(
                -1,
                now_ms + dur.as_millis() as i64,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return false; // another task ejected it first
        }
        self.ejections.store(n, Ordering::Release);
        self.consecutive_5xx.store(0, Ordering::Release);
        self.consecutive_gateway.store(0, Ordering::Release);
        budget.on_eject();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    struct Budget {
        ejected: AtomicU32,
        total: u32,
    }
    impl EjectionBudget for Budget {
        fn ejected_and_total(&self) -> (u32, u32) {
            (self.ejected.load(Ordering::Relaxed), self.total)
        }
        fn on_eject(&self) {
            self.ejected.fetch_add(1, Ordering::Relaxed);
        }
        fn on_return(&self) {
            self.ejected.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn cfg() -> OutlierConfig {
        OutlierConfig::compile(&OutlierDetection {
            consecutive_5xx_errors: Some(3),
            interval: Some(common::Duration::from_secs(1)),
            base_ejection_time: Some(common::Duration::from_secs(30)),
            max_ejection_percent: Some(100),
            ..Default::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_grows_and_returns() {
        let c = cfg();
        let b = Budget {
            ejected: AtomicU32::new(0),
            total: 2,
        };
        let s = OutlierState::default();
        let fail = |s: &OutlierState| {
            (0..3).any(|_| s.observe(&c, Observation::Status(503), Instant::now(), &b))
        };
        assert!(!s.observe(&c, Observation::Status(500), Instant::now(), &b));
        assert!(
            !s.observe(&c, Observation::Status(200), Instant::now(), &b),
            "success resets"
        );
        assert!(fail(&s));
        assert!(s.is_ejected(Instant::now(), &b));
        assert_eq!(b.ejected_and_total().0, 1);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(s.is_ejected(Instant::now(), &b));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!s.is_ejected(Instant::now(), &b), "back after 30s");
        assert_eq!(b.ejected_and_total().0, 0);

        // Fails again right away: second consecutive ejection lasts 2 × 30 s.
        assert!(fail(&s));
        assert_eq!(s.ejections(), 2);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(s.is_ejected(Instant::now(), &b));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!s.is_ejected(Instant::now(), &b));

        // A long healthy spell decays the multiplier back to the base time.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(fail(&s));
        assert_eq!(s.ejections(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_and_legacy_field() {
        let mut c = cfg();
        c.max_ejection_percent = 50;
        let b = Budget {
            ejected: AtomicU32::new(0),
            total: 2,
        };
        let (s1, s2) = (OutlierState::default(), OutlierState::default());
        for _ in 0..3 {
            s1.observe(&c, Observation::LocalFailure, Instant::now(), &b);
            s2.observe(&c, Observation::LocalFailure, Instant::now(), &b);
        }
        assert!(s1.is_ejected(Instant::now(), &b));
        assert!(
            !s2.is_ejected(Instant::now(), &b),
            "50% cap keeps one in service"
        );

        let legacy = OutlierConfig::compile(&OutlierDetection {
            consecutive_errors: Some(5),
            ..Default::default()
        });
        assert_eq!(
            (legacy.consecutive_5xx, legacy.consecutive_gateway),
            (None, Some(5))
        );
        let s = OutlierState::default();
        let b = Budget {
            ejected: AtomicU32::new(0),
            total: 1,
        };
        let mut legacy = legacy;
        legacy.max_ejection_percent = 100;
        for _ in 0..10 {
            assert!(
                !s.observe(&legacy, Observation::Status(500), Instant::now(), &b),
                "500 is not a gateway error"
            );
        }
        let ejected =
            (0..5).any(|_| s.observe(&legacy, Observation::Status(502), Instant::now(), &b));
        assert!(ejected);
    }
}
