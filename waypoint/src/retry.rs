//! Retry policy: Istio `HTTPRetry` compiled to Envoy's semantics.
//!
//! - `attempts` counts retries, not tries; `retryOn` is Envoy's comma list (named conditions
//!   and bare status codes, which Istio turns into `retriable-status-codes`).
//! - With no `retries` block Istio installs a default: 2 retries on
//!   `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with 503.
//! - Backoff is Envoy's fully jittered exponential: the n-th retry waits a uniform draw in
//!   `[0, min(25ms * 2^(n-1), 250ms))`.
//!
//! Decisions match on [`ErrorKind`], never on error strings.

use std::time::Duration;

use common::istio::networking::HttpRetry;
use rand::Rng;
use serde::Serialize;

use crate::error::{ErrorKind, ProxyError};

/// Envoy's default base retry interval.
pub const BASE_INTERVAL: Duration = Duration::from_millis(25);
/// Envoy's default cap: ten times the base.
pub const MAX_INTERVAL: Duration = Duration::from_millis(250);

/// Named retry conditions (bit set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RetryOn(u16);

impl RetryOn {
    pub const FIVE_XX: RetryOn = RetryOn(1);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    pub const RESET: RetryOn = RetryOn(1 << 2);
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 3);
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 4);
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 5);
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 6);
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 7);
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 8);
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 9);
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 10);
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 11);

    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0
    }
    fn insert(&mut self, other: RetryOn) {
        self.0 |= other.0;
    }
}

/// A compiled retry policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RetryPolicy {
    pub num_retries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
    pub retriable_status_codes: Vec<u16>,
    pub base_interval: Duration,
    pub max_interval: Duration,
}

/// Why a `retryOn` string was rejected.
#[derive(Debug, thiserror::Error)]
#[error("retries.retryOn: unknown condition `{0}`")]
pub struct RetryOnError(pub String);

/// What an attempt produced, as retry logic sees it.
pub enum Outcome<'a> {
    Response {
        status: u16,
        grpc_status: Option<u32>,
    },
    Error(&'a ProxyError),
}

impl RetryPolicy {
    /// Istio's policy when a route has no `retries` block.
    pub fn istio_default() -> Self {
        let mut p = Self::none();
        p.num_retries = 2;
        let (on, codes) = parse_retry_on(DEFAULT_RETRY_ON).expect("static retryOn parses");
        p.retry_on = on;
        p.retriable_status_codes = codes;
        p
    }

    /// No retries at all (`attempts: 0`).
    pub fn none() -> Self {
        RetryPolicy {
            num_retries: 0,
            per_try_timeout: None,
            retry_on: RetryOn::default(),
            retriable_status_codes: Vec::new(),
            base_interval: BASE_INTERVAL,
            max_interval: MAX_INTERVAL,
        }
    }

    /// Compiles a route's `retries` (or Istio's default when absent).
    pub fn compile(r: Option<&HttpRetry>) -> Result<Self, RetryOnError> {
        let Some(r) = r else {
            return Ok(Self::istio_default());
        };
        let mut p = Self::none();
        p.num_retries = u32::try_from(r.attempts.max(0)).unwrap_or(u32::MAX);
        p.per_try_timeout = r
            .per_try_timeout
            .map(|d| d.as_std())
            .filter(|d| !d.is_zero());
        // Istio uses its default condition list when `retryOn` is omitted.
        let (on, codes) = parse_retry_on(r.retry_on.as_deref().unwrap_or(DEFAULT_RETRY_ON))?;
        p.retry_on = on;
        p.retriable_status_codes = codes;
        Ok(p)
    }

    /// Whether an attempt with this outcome may be retried (attempt budget checked by caller).
    pub fn should_retry(&self, outcome: &Outcome<'_>) -> bool {
        let on = self.retry_on;
        match outcome {
            Outcome::Response {
                status,
                grpc_status,
            } => {
                let s = *status;
                (on.contains(RetryOn::FIVE_XX) && (500..600).contains(&s))
                    || (on.contains(RetryOn::GATEWAY_ERROR) && matches!(s, 502..=504))
                    || (on.contains(RetryOn::RETRIABLE_4XX) && s == 409)
                    || (on.contains(RetryOn::RETRIABLE_STATUS_CODES)
                        && self.retriable_status_codes.contains(&s))
                    || grpc_status.is_some_and(|g| {
                        (on.contains(RetryOn::GRPC_CANCELLED) && g == 1)
                            || (on.contains(RetryOn::GRPC_DEADLINE_EXCEEDED) && g == 4)
                            || (on.contains(RetryOn::GRPC_RESOURCE_EXHAUSTED) && g == 8)
                            || (on.contains(RetryOn::GRPC_INTERNAL) && g == 13)
                            || (on.contains(RetryOn::GRPC_UNAVAILABLE) && g == 14)
                    })
            }
            Outcome::Error(e) => {
                if !e.is_retryable() {
                    return false;
                }
                let any_upstream =
                    on.contains(RetryOn::FIVE_XX) || on.contains(RetryOn::GATEWAY_ERROR);
                match e.kind() {
                    ErrorKind::ConnectFailure | ErrorKind::ConnectTimeout => {
                        any_upstream
                            || on.contains(RetryOn::CONNECT_FAILURE)
                            || on.contains(RetryOn::RESET)
                    }
                    ErrorKind::RefusedStream => {
                        any_upstream
                            || on.contains(RetryOn::REFUSED_STREAM)
                            || on.contains(RetryOn::RESET)
                    }
                    ErrorKind::UpstreamReset | ErrorKind::PerTryTimeout => {
                        any_upstream || on.contains(RetryOn::RESET)
                    }
                    _ => false,
                }
            }
        }
    }

    /// Backoff before retry number `n` (1-based): fully jittered exponential.
    pub fn backoff(&self, n: u32, rng: &mut impl Rng) -> Duration {
        let shift = n.saturating_sub(1).min(16);
        let ceiling = self
            .base_interval
            .saturating_mul(1 << shift)
            .min(self.max_interval);
        let ms = ceiling.as_micros() as u64;
        if ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(rng.gen_range(0..ms))
    }
}

const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,503";

/// Parses Envoy's `retry_on` list; bare numbers become retriable status codes.
pub fn parse_retry_on(s: &str) -> Result<(RetryOn, Vec<u16>), RetryOnError> {
    let mut on = RetryOn::default();
    let mut codes = Vec::new();
    for tok in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if let Ok(code) = tok.parse::<u16>() {
            if !(100..600).contains(&code) {
                return Err(RetryOnError(tok.to_string()));
            }
            codes.push(code);
            on.insert(RetryOn::RETRIABLE_STATUS_CODES);
            continue;
        }
        on.insert(match tok {
            "5xx" => RetryOn::FIVE_XX,
            "gateway-error" => RetryOn::GATEWAY_ERROR,
            "reset" | "reset-before-request" => RetryOn::RESET,
            "connect-failure" => RetryOn::CONNECT_FAILURE,
            "retriable-4xx" => RetryOn::RETRIABLE_4XX,
            "refused-stream" => RetryOn::REFUSED_STREAM,
            "retriable-status-codes" => RetryOn::RETRIABLE_STATUS_CODES,
            "cancelled" => RetryOn::GRPC_CANCELLED,
            "deadline-exceeded" => RetryOn::GRPC_DEADLINE_EXCEEDED,
            "internal" => RetryOn::GRPC_INTERNAL,
            "resource-exhausted" => RetryOn::GRPC_RESOURCE_EXHAUSTED,
            "unavailable" => RetryOn::GRPC_UNAVAILABLE,
            // Accepted by Envoy; their predicates (headers, hosts) are not modelled yet and
            // Istio resources rarely use them.
            "retriable-headers" | "envoy-ratelimited" | "http3-post-connect-failure" => continue,
            other => return Err(RetryOnError(other.to_string())),
        });
    }
    Ok((on, codes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn resp(status: u16) -> Outcome<'static> {
        Outcome::Response {
            status,
            grpc_status: None,
        }
    }

    #[test]
    fn default_policy() {
        let p = RetryPolicy::compile(None).unwrap();
        assert_eq!(p.num_retries, 2);
        assert!(p.should_retry(&resp(503)));
        assert!(!p.should_retry(&resp(500)));
        assert!(!p.should_retry(&resp(502)));
        let cf = ProxyError::new(ErrorKind::ConnectFailure);
        assert!(p.should_retry(&Outcome::Error(&cf)));
        let reset = ProxyError::new(ErrorKind::UpstreamReset);
        assert!(!p.should_retry(&Outcome::Error(&reset)));
        assert!(p.should_retry(&Outcome::Response {
            status: 200,
            grpc_status: Some(14)
        }));
    }

    #[test]
    fn conditions() {
        let r = HttpRetry {
            attempts: 3,
            per_try_timeout: Some(common::Duration::from_secs(1)),
            retry_on: Some("5xx,reset,connect-failure,retriable-4xx".into()),
            retry_remote_localities: None,
        };
        let p = RetryPolicy::compile(Some(&r)).unwrap();
        assert_eq!(p.per_try_timeout, Some(Duration::from_secs(1)));
        assert!(p.should_retry(&resp(500)) && p.should_retry(&resp(409)));
        assert!(!p.should_retry(&resp(404)));
        let t = ProxyError::new(ErrorKind::PerTryTimeout);
        assert!(p.should_retry(&Outcome::Error(&t)));
        let o = ProxyError::new(ErrorKind::Overflow);
        assert!(
            !p.should_retry(&Outcome::Error(&o)),
            "overflow is never retried"
        );

        let (on, codes) = parse_retry_on("gateway-error,418").unwrap();
        assert!(
            on.contains(RetryOn::GATEWAY_ERROR) && on.contains(RetryOn::RETRIABLE_STATUS_CODES)
        );
        assert_eq!(codes, vec![418]);
        assert!(parse_retry_on("5xx,bogus").is_err());
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let p = RetryPolicy::istio_default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for n in 1..10u32 {
            let cap = (25u64 << (n - 1)).min(250);
            for _ in 0..200 {
                let d = p.backoff(n, &mut rng);
                assert!(d < Duration::from_millis(cap), "n={n} d={d:?}");
            }
        }
    }
}
