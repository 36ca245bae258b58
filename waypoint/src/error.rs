//! The one error type of the L7 request path.
//!
//! Every failure between accepting a request and finishing its response is a [`ProxyError`]:
//! it records *where* it came from (downstream client, upstream endpoint, or the proxy itself),
//! *what* happened as a closed [`ErrorKind`], and derives from that the status code and the
//! Envoy response flag the access log and metrics report. Retry and outlier logic match on
//! [`ErrorKind`], never on message strings, so a reworded message cannot change behaviour.

use std::fmt;

use http::StatusCode;

/// Which side of the proxy an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client that sent us the request.
    Downstream,
    /// The endpoint we forwarded to (or tried to reach).
    Upstream,
    /// The proxy's own decision (limits, config, policy).
    Internal,
}

/// What went wrong. Closed set: retry/outlier code relies on exhaustive matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP (or tunnel) connect refused or failed.
    ConnectFailure,
    /// Connect did not finish within `connectTimeout`.
    ConnectTimeout,
    /// The upstream reset or closed before sending response headers.
    UpstreamReset,
    /// HTTP/2 stream refused by the upstream (REFUSED_STREAM): safe to retry anywhere.
    RefusedStream,
    /// `perTryTimeout` expired before response headers.
    PerTryTimeout,
    /// Route `timeout` expired (covers all attempts).
    RouteTimeout,
    /// A connection-pool limit (circuit breaker) was exceeded.
    Overflow,
    /// Every endpoint of the cluster is ejected or the cluster is empty.
    NoHealthyUpstream,
    /// No route matched the request.
    NoRoute,
    /// The client went away before the response was complete.
    DownstreamDisconnect,
    /// Malformed request from the client.
    BadRequest,
    /// Bug or impossible state in the proxy.
    Internal,
}

/// An error on the L7 path, with origin and retry eligibility.
#[derive(Debug)]
pub struct ProxyError {
    kind: ErrorKind,
    source: ErrorSource,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind) -> Self {
        let source = match kind {
            ErrorKind::ConnectFailure
            | ErrorKind::ConnectTimeout
            | ErrorKind::UpstreamReset
            | ErrorKind::RefusedStream
            | ErrorKind::PerTryTimeout
            | ErrorKind::RouteTimeout => ErrorSource::Upstream,
            ErrorKind::DownstreamDisconnect | ErrorKind::BadRequest => ErrorSource::Downstream,
            ErrorKind::Overflow
            | ErrorKind::NoHealthyUpstream
            | ErrorKind::NoRoute
            | ErrorKind::Internal => ErrorSource::Internal,
        };
        ProxyError {
            kind,
            source,
            cause: None,
        }
    }

    /// Attaches the underlying error for logs.
    #[must_use]
    pub fn with_cause(
        mut self,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        self.cause = Some(cause.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn source_side(&self) -> ErrorSource {
        self.source
    }

    /// True when the request never reached the upstream application, so repeating it cannot
    /// duplicate side effects (Envoy's "local origin" failures).
    pub fn is_pre_request(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::ConnectFailure | ErrorKind::ConnectTimeout | ErrorKind::RefusedStream
        )
    }

    /// Whether any retry policy may consider this error; policy conditions decide the rest.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::ConnectFailure
                | ErrorKind::ConnectTimeout
                | ErrorKind::UpstreamReset
                | ErrorKind::RefusedStream
                | ErrorKind::PerTryTimeout
                | ErrorKind::Overflow
        )
    }

    /// Whether the failure counts against the endpoint for outlier detection (as a 5xx and a
    /// gateway error, as Envoy does when local-origin errors are not split out).
    pub fn counts_for_outlier(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::ConnectFailure
                | ErrorKind::ConnectTimeout
                | ErrorKind::UpstreamReset
                | ErrorKind::PerTryTimeout
        )
    }

    /// Status code sent downstream.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::PerTryTimeout | ErrorKind::RouteTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::ConnectFailure
            | ErrorKind::ConnectTimeout
            | ErrorKind::UpstreamReset
            | ErrorKind::RefusedStream
            | ErrorKind::Overflow
            | ErrorKind::NoHealthyUpstream
            | ErrorKind::DownstreamDisconnect => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Envoy response flag (`%RESPONSE_FLAGS%`).
    pub fn response_flag(&self) -> &'static str {
        match self.kind {
            ErrorKind::ConnectFailure | ErrorKind::ConnectTimeout => "UF",
            ErrorKind::UpstreamReset | ErrorKind::RefusedStream => "UC",
            ErrorKind::PerTryTimeout | ErrorKind::RouteTimeout => "UT",
            ErrorKind::Overflow => "UO",
            ErrorKind::NoHealthyUpstream => "UH",
            ErrorKind::NoRoute => "NR",
            ErrorKind::DownstreamDisconnect => "DC",
            ErrorKind::BadRequest | ErrorKind::Internal => "-",
        }
    }

    /// Short body Envoy sends for locally generated errors.
    pub fn body(&self) -> &'static str {
        match self.kind {
            ErrorKind::ConnectFailure | ErrorKind::ConnectTimeout => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
            }
            ErrorKind::UpstreamReset | ErrorKind::RefusedStream => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
            }
            ErrorKind::PerTryTimeout | ErrorKind::RouteTimeout => "upstream request timeout",
            ErrorKind::Overflow => "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            ErrorKind::NoHealthyUpstream => "no healthy upstream",
            ErrorKind::NoRoute => "",
            ErrorKind::DownstreamDisconnect => "downstream disconnect",
            ErrorKind::BadRequest => "bad request",
            ErrorKind::Internal => "internal error",
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({:?})", self.kind, self.source)?;
        if let Some(c) = &self.cause {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_status() {
        let e = ProxyError::new(ErrorKind::Overflow);
        assert_eq!(e.status(), 503);
        assert_eq!(e.response_flag(), "UO");
        assert_eq!(e.source_side(), ErrorSource::Internal);
        let e = ProxyError::new(ErrorKind::RouteTimeout);
        assert_eq!((e.status().as_u16(), e.response_flag()), (504, "UT"));
        assert!(ProxyError::new(ErrorKind::ConnectFailure).is_pre_request());
        assert!(!ProxyError::new(ErrorKind::UpstreamReset).is_pre_request());
    }
}
