//! Per-request telemetry completion: one access-log line and the Istio metrics, emitted when
//! the response body is finished (or abandoned), so sizes and durations are the real ones.
//!
//! # Access log format
//!
//! Close to Istio's default (Envoy text) format, one line per request on stdout:
//!
//! ```text
//! [START_TIME] "METHOD PATH PROTOCOL" RESPONSE_CODE RESPONSE_FLAGS DETAILS "-" BYTES_RECEIVED
//! BYTES_SENT DURATION_MS UPSTREAM_SERVICE_TIME_MS "X-FORWARDED-FOR" "USER-AGENT" "X-REQUEST-ID"
//! "AUTHORITY" "UPSTREAM_HOST" UPSTREAM_CLUSTER DOWNSTREAM_LOCAL DOWNSTREAM_REMOTE ROUTE_NAME
//! ATTEMPTS
//! ```
//!
//! (all on one line). `START_TIME` is RFC 3339 UTC with milliseconds; absent values are `-`;
//! `RESPONSE_FLAGS` are Envoy's (`UO`, `URX`, `UF`, `UH`, `NR`, `FI`, `DI`, `UT`, `DC`, `UC`,
//! comma-joined); `DETAILS` is Envoy-style response code details (`via_upstream`,
//! `rbac_access_denied_matched_policy[...]`, ...). A request that the client abandoned before
//! the response finished additionally carries `DC`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use common::telemetry::{ResponseFlag, ResponseFlags};
use tokio::time::Instant;

use crate::metrics::{Metrics, RequestLabels};

/// Where telemetry goes.
pub struct Telemetry {
    pub metrics: Metrics,
    pub access_log: bool,
}

/// Facts gathered along the request path.
pub struct RequestRecord {
    pub start: Instant,
    pub start_wall: SystemTime,
    pub method: http::Method,
    pub path: String,
    pub protocol: &'static str,
    pub authority: String,
    pub user_agent: Option<String>,
    pub request_id: String,
    pub forwarded_for: Option<String>,
    pub downstream_local: SocketAddr,
    pub downstream_remote: SocketAddr,
    pub status: u16,
    pub flags: Vec<&'static str>,
    pub details: &'static str,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<Arc<str>>,
    pub upstream_time_ms: Option<u64>,
    pub route_name: Option<String>,
    pub attempts: u32,
    pub request_bytes: u64,
    pub request_bytes_counter: Option<Arc<std::sync::atomic::AtomicU64>>,
    pub labels: RequestLabels,
}

/// Finishes a request's telemetry exactly once.
pub struct Completion {
    pub record: RequestRecord,
    pub telemetry: Arc<Telemetry>,
}

impl Completion {
    /// Called by the response body when it ends (`complete`) or is dropped early.
    pub fn complete(self, response_bytes: u64, complete: bool) {
        let mut r = self.record;
        if !complete && !r.flags.contains(&"DC") {
            r.flags.push("DC");
        }
        if let Some(c) = &r.request_bytes_counter {
            r.request_bytes = c.load(std::sync::atomic::Ordering::Relaxed);
        }
        let duration = r.start.elapsed();
        let flags = join_flags(&mut r.flags);
        let mut labels = r.labels.clone();
        labels.response_code = r.status;
        labels.response_flags = Arc::from(flags.as_str());
        let ms = duration.as_secs_f64() * 1000.0;
        self.telemetry
            .metrics
            .record(&labels, ms, r.request_bytes, response_bytes);
        if self.telemetry.access_log {
            let line = format_line(&r, &flags, response_bytes, duration.as_millis() as u64);
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        }
    }
}

/// Envoy prints flags in a fixed order regardless of when they were raised.
fn join_flags(flags: &mut [&'static str]) -> String {
    if flags.is_empty() {
        return ResponseFlags::NONE.to_string();
    }
    flags
        .sort_by_key(|f| ResponseFlag::from_label(f).map_or(usize::MAX, ResponseFlag::print_order));
    flags.join(",")
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Renders one access-log line (with trailing newline).
pub fn format_line(r: &RequestRecord, flags: &str, sent: u64, duration_ms: u64) -> String {
    let mut s = String::with_capacity(256);
    let _ = writeln!(
        s,
        "[{}] \"{} {} {}\" {} {} {} \"-\" {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} {} {} {} {}",
        rfc3339(r.start_wall),
        r.method,
        r.path,
        r.protocol,
        r.status,
        flags,
        r.details,
        r.request_bytes,
        sent,
        duration_ms,
        opt(&r.upstream_time_ms),
        r.forwarded_for.as_deref().unwrap_or("-"),
        r.user_agent.as_deref().unwrap_or("-"),
        r.request_id,
        r.authority,
        opt(&r.upstream_host),
        r.upstream_cluster.as_deref().unwrap_or("-"),
        r.downstream_local,
        r.downstream_remote,
        r.route_name.as_deref().unwrap_or("-"),
        r.attempts,
    );
    s
}

/// RFC 3339 UTC with milliseconds, without a date crate (civil-from-days, H. Hinnant).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn flags_in_envoy_order() {
        assert_eq!(join_flags(&mut ["URX", "UF"]), "UF,URX");
        assert_eq!(join_flags(&mut ["FI", "DI"]), "DI,FI");
        assert_eq!(join_flags(&mut []), "-");
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }
}
