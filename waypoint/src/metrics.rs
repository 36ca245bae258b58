//! Istio's standard request metrics, served in Prometheus text format on 15020.
//!
//! `istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes` and
//! `istio_response_bytes`, with Istio's label names and typed values from `common::telemetry`
//! (shared with ztunnel) and `reporter="waypoint"`. Label values are `Arc<str>` shared with the
//! compiled tables, so recording a request clones pointers, not strings.

use std::sync::Arc;

use common::telemetry::{label, LabelWriter, Reporter, SecurityPolicy, DEFAULT_CLUSTER};
use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Istio's duration buckets (milliseconds).
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Labels of every request metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RequestLabels {
    pub source_workload: Arc<str>,
    pub source_workload_namespace: Arc<str>,
    pub source_principal: Arc<str>,
    pub source_app: Arc<str>,
    pub source_version: Arc<str>,
    pub destination_workload: Arc<str>,
    pub destination_workload_namespace: Arc<str>,
    pub destination_principal: Arc<str>,
    pub destination_app: Arc<str>,
    pub destination_version: Arc<str>,
    pub destination_service: Arc<str>,
    pub destination_service_name: Arc<str>,
    pub destination_service_namespace: Arc<str>,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: Arc<str>,
    pub response_flags: Arc<str>,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        LabelWriter::new(encoder)
            .label(label::REPORTER, Reporter::Waypoint)?
            .label(label::SOURCE_WORKLOAD, &*self.source_workload)?
            .label(
                label::SOURCE_WORKLOAD_NAMESPACE,
                &*self.source_workload_namespace,
            )?
            .label(label::SOURCE_PRINCIPAL, &*self.source_principal)?
            .label(label::SOURCE_APP, &*self.source_app)?
            .label(label::SOURCE_VERSION, &*self.source_version)?
            .label(label::SOURCE_CLUSTER, DEFAULT_CLUSTER)?
            .label(label::DESTINATION_WORKLOAD, &*self.destination_workload)?
            .label(
                label::DESTINATION_WORKLOAD_NAMESPACE,
                &*self.destination_workload_namespace,
            )?
            .label(label::DESTINATION_PRINCIPAL, &*self.destination_principal)?
            .label(label::DESTINATION_APP, &*self.destination_app)?
            .label(label::DESTINATION_VERSION, &*self.destination_version)?
            .label(label::DESTINATION_SERVICE, &*self.destination_service)?
            .label(
                label::DESTINATION_SERVICE_NAME,
                &*self.destination_service_name,
            )?
            .label(
                label::DESTINATION_SERVICE_NAMESPACE,
                &*self.destination_service_namespace,
            )?
            .label(label::DESTINATION_CLUSTER, DEFAULT_CLUSTER)?
            .label(label::REQUEST_PROTOCOL, self.request_protocol)?
            .label(label::RESPONSE_CODE, self.response_code)?
            .label(label::GRPC_RESPONSE_STATUS, &*self.grpc_response_status)?
            .label(label::RESPONSE_FLAGS, &*self.response_flags)?
            .label(label::CONNECTION_SECURITY_POLICY, SecurityPolicy::MutualTls)?;
        Ok(())
    }
}

fn histogram_ms() -> Histogram {
    Histogram::new(DURATION_BUCKETS.iter().copied())
}

fn histogram_bytes() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 10.0, 10,
    ))
}

/// The waypoint's metric families.
pub struct Metrics {
    pub registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    request_bytes: Family<RequestLabels, Histogram, fn() -> Histogram>,
    response_bytes: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::new_with_constructor(histogram_ms as fn() -> Histogram);
        let request_bytes = Family::new_with_constructor(histogram_bytes as fn() -> Histogram);
        let response_bytes = Family::new_with_constructor(histogram_bytes as fn() -> Histogram);
        // prometheus-client appends `_total` to counters.
        registry.register(
            "istio_requests",
            "Requests handled by the waypoint",
            requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration",
            duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body size",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body size",
            response_bytes.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
        }
    }
}

impl Metrics {
    pub fn record(
        &self,
        labels: &RequestLabels,
        duration_ms: f64,
        req_bytes: u64,
        resp_bytes: u64,
    ) {
        self.requests.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(duration_ms);
        self.request_bytes
            .get_or_create(labels)
            .observe(req_bytes as f64);
        self.response_bytes
            .get_or_create(labels)
            .observe(resp_bytes as f64);
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}
