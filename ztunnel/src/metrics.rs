//! Prometheus metrics with Istio's names and labels (`istio_tcp_*`), served on 15020.
//!
//! Per-connection counters are resolved once when the connection is admitted ([`ConnMetrics`]);
//! the data path then only does relaxed atomic adds. Label names and the typed values come from
//! `common::telemetry`, shared with the waypoint.

use common::telemetry::{
    label, LabelWriter, Reporter, RequestProtocol, ResponseFlags, SecurityPolicy,
};
use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Istio's TCP telemetry labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: RequestProtocol,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        LabelWriter::new(encoder)
            .label(label::REPORTER, self.reporter)?
            .label(label::SOURCE_WORKLOAD, self.source_workload.as_str())?
            .label(
                label::SOURCE_CANONICAL_SERVICE,
                self.source_canonical_service.as_str(),
            )?
            .label(
                label::SOURCE_CANONICAL_REVISION,
                self.source_canonical_revision.as_str(),
            )?
            .label(
                label::SOURCE_WORKLOAD_NAMESPACE,
                self.source_workload_namespace.as_str(),
            )?
            .label(label::SOURCE_PRINCIPAL, self.source_principal.as_str())?
            .label(label::SOURCE_APP, self.source_app.as_str())?
            .label(label::SOURCE_VERSION, self.source_version.as_str())?
            .label(label::SOURCE_CLUSTER, self.source_cluster.as_str())?
            .label(
                label::DESTINATION_SERVICE,
                self.destination_service.as_str(),
            )?
            .label(
                label::DESTINATION_SERVICE_NAMESPACE,
                self.destination_service_namespace.as_str(),
            )?
            .label(
                label::DESTINATION_SERVICE_NAME,
                self.destination_service_name.as_str(),
            )?
            .label(
                label::DESTINATION_WORKLOAD,
                self.destination_workload.as_str(),
            )?
            .label(
                label::DESTINATION_CANONICAL_SERVICE,
                self.destination_canonical_service.as_str(),
            )?
            .label(
                label::DESTINATION_CANONICAL_REVISION,
                self.destination_canonical_revision.as_str(),
            )?
            .label(
                label::DESTINATION_WORKLOAD_NAMESPACE,
                self.destination_workload_namespace.as_str(),
            )?
            .label(
                label::DESTINATION_PRINCIPAL,
                self.destination_principal.as_str(),
            )?
            .label(label::DESTINATION_APP, self.destination_app.as_str())?
            .label(
                label::DESTINATION_VERSION,
                self.destination_version.as_str(),
            )?
            .label(
                label::DESTINATION_CLUSTER,
                self.destination_cluster.as_str(),
            )?
            .label(label::REQUEST_PROTOCOL, self.request_protocol)?
            .label(label::RESPONSE_FLAGS, self.response_flags)?
            .label(
                label::CONNECTION_SECURITY_POLICY,
                self.connection_security_policy,
            )?;
        Ok(())
    }
}

/// All of ztunnel's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub opened: Family<TcpLabels, Counter>,
    pub closed: Family<TcpLabels, Counter>,
    pub sent: Family<TcpLabels, Counter>,
    pub received: Family<TcpLabels, Counter>,
    /// Connections refused before any byte reached the destination (TLS, policy, bad request).
    pub refused: Family<RefusedLabels, Counter>,
}

/// Labels of `ztunnel_refused_connections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub listener: String,
    pub reason: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers the metric families.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let opened = Family::<TcpLabels, Counter>::default();
        let closed = Family::<TcpLabels, Counter>::default();
        let sent = Family::<TcpLabels, Counter>::default();
        let received = Family::<TcpLabels, Counter>::default();
        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "istio_tcp_connections_opened",
            "The total number of TCP connections opened",
            opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "The total number of TCP connections closed",
            closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "The size of total bytes sent during response in case of a TCP connection",
            sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
            received.clone(),
        );
        registry.register(
            "ztunnel_refused_connections",
            "Connections refused by ztunnel, by listener and reason",
            refused.clone(),
        );
        Metrics {
            registry,
            opened,
            closed,
            sent,
            received,
            refused,
        }
    }

    /// Counts a refusal.
    pub fn refuse(&self, listener: &str, reason: &str) {
        self.refused
            .get_or_create(&RefusedLabels {
                listener: listener.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Opens a connection record: increments `opened` and resolves the byte counters.
    pub fn connection(&self, labels: TcpLabels) -> ConnMetrics {
        self.opened.get_or_create(&labels).inc();
        ConnMetrics {
            sent: self.sent.get_or_create(&labels).clone(),
            received: self.received.get_or_create(&labels).clone(),
            closed: self.closed.get_or_create(&labels).clone(),
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

/// Counters of one connection; `closed` is incremented on drop.
#[derive(Debug)]
pub struct ConnMetrics {
    /// Bytes from the destination back to the source.
    pub sent: Counter<u64, AtomicU64>,
    /// Bytes from the source to the destination.
    pub received: Counter<u64, AtomicU64>,
    closed: Counter<u64, AtomicU64>,
}

impl Drop for ConnMetrics {
    fn drop(&mut self) {
        self.closed.inc();
    }
}
