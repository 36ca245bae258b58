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

/// One side's workload labels; source and destination carry the same set.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PeerLabels {
    pub workload: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub workload_namespace: String,
    pub principal: String,
    pub app: String,
    pub version: String,
    pub cluster: String,
}

impl PeerLabels {
    fn write(&self, names: &label::PeerNames, w: &mut LabelWriter) -> Result<(), std::fmt::Error> {
        w.label(names.workload, self.workload.as_str())?
            .label(names.canonical_service, self.canonical_service.as_str())?
            .label(names.canonical_revision, self.canonical_revision.as_str())?
            .label(names.workload_namespace, self.workload_namespace.as_str())?
            .label(names.principal, self.principal.as_str())?
            .label(names.app, self.app.as_str())?
            .label(names.version, self.version.as_str())?
            .label(names.cluster, self.cluster.as_str())?;
        Ok(())
    }
}

/// Istio's TCP telemetry labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source: PeerLabels,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination: PeerLabels,
    pub request_protocol: RequestProtocol,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let mut w = LabelWriter::new(encoder);
        w.label(label::REPORTER, self.reporter)?;
        self.source.write(&label::SOURCE, &mut w)?;
        w.label(
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
        )?;
        self.destination.write(&label::DESTINATION, &mut w)?;
        w.label(label::REQUEST_PROTOCOL, self.request_protocol)?
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition is what dashboards and the e2e checks read: pin the label order and the
    /// spelling of every typed value.
    #[test]
    fn tcp_series_keep_istio_labels_and_order() {
        let s = |v: &str| v.to_string();
        let peer = |p: &str| PeerLabels {
            workload: format!("{p}w"),
            canonical_service: format!("{p}cs"),
            canonical_revision: format!("{p}cr"),
            workload_namespace: format!("{p}wn"),
            principal: format!("{p}p"),
            app: format!("{p}a"),
            version: format!("{p}v"),
            cluster: format!("{p}c"),
        };
        let labels = TcpLabels {
            reporter: Reporter::Destination,
            source: peer("s"),
            destination_service: s("ds"),
            destination_service_namespace: s("dsns"),
            destination_service_name: s("dsn"),
            destination: peer("d"),
            request_protocol: RequestProtocol::Tcp,
            response_flags: ResponseFlags::NONE,
            connection_security_policy: SecurityPolicy::MutualTls,
        };
        let m = Metrics::new();
        drop(m.connection(labels));
        let expected = "istio_tcp_connections_closed_total{reporter=\"destination\",\
            source_workload=\"sw\",source_canonical_service=\"scs\",\
            source_canonical_revision=\"scr\",source_workload_namespace=\"swn\",\
            source_principal=\"sp\",source_app=\"sa\",source_version=\"sv\",source_cluster=\"sc\",\
            destination_service=\"ds\",destination_service_namespace=\"dsns\",\
            destination_service_name=\"dsn\",destination_workload=\"dw\",\
            destination_canonical_service=\"dcs\",destination_canonical_revision=\"dcr\",\
            destination_workload_namespace=\"dwn\",destination_principal=\"dp\",\
            destination_app=\"da\",destination_version=\"dv\",destination_cluster=\"dc\",\
            request_protocol=\"tcp\",response_flags=\"-\",\
            connection_security_policy=\"mutual_tls\"} 1";
        let text = m.encode();
        assert!(text.contains(expected), "{text}");
    }
}
