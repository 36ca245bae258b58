//! Fault injection (Istio `HTTPFaultInjection`): a fixed delay and/or an abort, each applied
//! to its own percentage of requests with an *independent* draw, as Envoy's fault filter
//! does: a request may be delayed, aborted, both (delay first), or neither.
//!
//! A missing `percentage` means every request (Istio's translation); the legacy integer
//! `percent` on delays is honoured when `percentage` is absent.

use std::time::Duration;

use common::istio::networking::{HttpFaultInjection, Percent};
use http::StatusCode;
use rand::Rng;
use serde::Serialize;

/// Fractions are kept in parts per million so a draw is one integer compare.
const MILLION: u32 = 1_000_000;

/// What an abort answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AbortKind {
    Http(#[serde(serialize_with = "ser_status")] StatusCode),
    /// gRPC status code, answered as a trailers-only HTTP 200 response.
    Grpc(u32),
}

fn ser_status<S: serde::Serializer>(s: &StatusCode, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_u16(s.as_u16())
}

/// A compiled fault policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fault {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<(Duration, u32)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<(AbortKind, u32)>,
}

/// The faults drawn for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultDecision {
    pub delay: Option<Duration>,
    pub abort: Option<AbortKind>,
}

/// Why a fault block was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("fault.abort: httpStatus {0} is not a valid status code")]
    BadStatus(u32),
    #[error("fault.abort: unknown grpcStatus `{0}`")]
    BadGrpc(String),
    #[error("fault: percentage {0} outside [0, 100]")]
    BadPercent(f64),
    #[error("fault.delay: fixedDelay is required")]
    NoDelay,
    #[error("fault.abort: one of httpStatus or grpcStatus is required")]
    NoAbort,
}

fn ppm(p: Option<&Percent>, legacy: Option<i64>) -> Result<u32, FaultError> {
    let v = match (p, legacy) {
        (Some(p), _) => p.value,
        (None, Some(l)) => l as f64,
        (None, None) => 100.0,
    };
    if !(0.0..=100.0).contains(&v) {
        return Err(FaultError::BadPercent(v));
    }
    Ok((v * 10_000.0).round() as u32)
}

/// gRPC status names Istio accepts in `grpcStatus`.
fn grpc_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .map(|i| i as u32)
        .or_else(|| name.parse().ok().filter(|c| *c <= 16))
}

impl Fault {
    pub fn compile(f: &HttpFaultInjection) -> Result<Option<Self>, FaultError> {
        let delay = match &f.delay {
            None => None,
            Some(d) => {
                let fixed = d.fixed_delay.ok_or(FaultError::NoDelay)?;
                Some((fixed.as_std(), ppm(d.percentage.as_ref(), d.percent)?))
            }
        };
        let abort = match &f.abort {
            None => None,
            Some(a) => {
                let kind = if let Some(s) = a.http_status {
                    let code = u16::try_from(s)
                        .ok()
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .filter(|c| c.as_u16() >= 200)
                        .ok_or(FaultError::BadStatus(s))?;
                    AbortKind::Http(code)
                } else if let Some(g) = &a.grpc_status {
                    AbortKind::Grpc(grpc_code(g).ok_or_else(|| FaultError::BadGrpc(g.clone()))?)
                } else {
                    return Err(FaultError::NoAbort);
                };
                Some((kind, ppm(a.percentage.as_ref(), None)?))
            }
        };
        Ok((delay.is_some() || abort.is_some()).then_some(Fault { delay, abort }))
    }

    /// Draws delay and abort independently.
    pub fn decide(&self, rng: &mut impl Rng) -> FaultDecision {
        let hit = |ppm: u32, rng: &mut dyn rand::RngCore| {
            ppm >= MILLION || (ppm > 0 && rng.gen_range(0..MILLION) < ppm)
        };
        FaultDecision {
            delay: self.delay.and_then(|(d, p)| hit(p, rng).then_some(d)),
            abort: self.abort.and_then(|(a, p)| hit(p, rng).then_some(a)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::istio::networking::{FaultAbort, FaultDelay};
    use rand::SeedableRng;

    fn fault(delay_pct: f64, abort_pct: f64) -> Fault {
        Fault::compile(&HttpFaultInjection {
            delay: Some(FaultDelay {
                fixed_delay: Some(common::Duration::from_secs(3)),
                percentage: Some(Percent { value: delay_pct }),
                ..Default::default()
            }),
            abort: Some(FaultAbort {
                http_status: Some(503),
                percentage: Some(Percent { value: abort_pct }),
                ..Default::default()
            }),
        })
        .unwrap()
        .unwrap()
    }

    #[test]
    fn draws_are_independent() {
        // 50% abort and 30% delay: the four combinations appear in product proportions.
        let f = fault(30.0, 50.0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let n = 100_000;
        let (mut both, mut d, mut a) = (0, 0, 0);
        for _ in 0..n {
            let x = f.decide(&mut rng);
            d += x.delay.is_some() as u32;
            a += x.abort.is_some() as u32;
            both += (x.delay.is_some() && x.abort.is_some()) as u32;
        }
        let frac = |c: u32| c as f64 / n as f64;
        assert!((frac(d) - 0.30).abs() < 0.01, "delay {}", frac(d));
        assert!((frac(a) - 0.50).abs() < 0.01, "abort {}", frac(a));
        assert!((frac(both) - 0.15).abs() < 0.01, "both {}", frac(both));
    }

    #[test]
    fn extremes_and_defaults() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let f = fault(100.0, 0.0);
        for _ in 0..1000 {
            let x = f.decide(&mut rng);
            assert_eq!(x.delay, Some(Duration::from_secs(3)));
            assert_eq!(x.abort, None);
        }
        let f = Fault::compile(&HttpFaultInjection {
            abort: Some(FaultAbort {
                grpc_status: Some("UNAVAILABLE".into()),
                ..Default::default()
            }),
            delay: None,
        })
        .unwrap()
        .unwrap();
        assert_eq!(f.decide(&mut rng).abort, Some(AbortKind::Grpc(14)));
        assert!(Fault::compile(&HttpFaultInjection::default())
            .unwrap()
            .is_none());
    }
}
