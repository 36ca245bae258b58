//! Istio's standard metric vocabulary, defined once for both proxies: the label names of
//! `istio_tcp_*` (ztunnel) and `istio_requests_total` and friends (the waypoint), and the
//! values with a fixed set of spellings as enums, so a dashboard written for Istio reads this
//! mesh's series unchanged.
//!
//! Free-form values (workload names, principals) stay strings; [`LabelWriter`] encodes a label
//! set whose values have different types, in the order the caller writes them.

use std::fmt;

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};

/// The value of a label the reporter could not determine (Istio's spelling).
pub const UNKNOWN: &str = "unknown";

/// The cluster name reported when none is configured (Istio's default cluster ID).
pub const DEFAULT_CLUSTER: &str = "Kubernetes";

/// Istio's standard label names.
pub mod label {
    /// Which proxy reported the series: see [`super::Reporter`].
    pub const REPORTER: &str = "reporter";

    /// Name of the client workload (its Deployment, or the pod when it has no owner).
    pub const SOURCE_WORKLOAD: &str = "source_workload";
    /// Namespace of the client workload.
    pub const SOURCE_WORKLOAD_NAMESPACE: &str = "source_workload_namespace";
    /// SPIFFE identity the client presented (`unknown` without mTLS).
    pub const SOURCE_PRINCIPAL: &str = "source_principal";
    /// The client's `app` label.
    pub const SOURCE_APP: &str = "source_app";
    /// The client's `version` label.
    pub const SOURCE_VERSION: &str = "source_version";
    /// The client's canonical service (`service.istio.io/canonical-name`, else `app`).
    pub const SOURCE_CANONICAL_SERVICE: &str = "source_canonical_service";
    /// The client's canonical revision (`service.istio.io/canonical-revision`, else
    /// `version`).
    pub const SOURCE_CANONICAL_REVISION: &str = "source_canonical_revision";
    /// Cluster the client runs in.
    pub const SOURCE_CLUSTER: &str = "source_cluster";

    /// Name of the server workload.
    pub const DESTINATION_WORKLOAD: &str = "destination_workload";
    /// Namespace of the server workload.
    pub const DESTINATION_WORKLOAD_NAMESPACE: &str = "destination_workload_namespace";
    /// SPIFFE identity of the server.
    pub const DESTINATION_PRINCIPAL: &str = "destination_principal";
    /// The server's `app` label.
    pub const DESTINATION_APP: &str = "destination_app";
    /// The server's `version` label.
    pub const DESTINATION_VERSION: &str = "destination_version";
    /// The server's canonical service.
    pub const DESTINATION_CANONICAL_SERVICE: &str = "destination_canonical_service";
    /// The server's canonical revision.
    pub const DESTINATION_CANONICAL_REVISION: &str = "destination_canonical_revision";
    /// Cluster the server runs in.
    pub const DESTINATION_CLUSTER: &str = "destination_cluster";
    /// Host of the service addressed (`<name>.<namespace>.svc.<domain>`).
    pub const DESTINATION_SERVICE: &str = "destination_service";
    /// Short name of the service addressed.
    pub const DESTINATION_SERVICE_NAME: &str = "destination_service_name";
    /// Namespace of the service addressed.
    pub const DESTINATION_SERVICE_NAMESPACE: &str = "destination_service_namespace";

    /// Protocol of the request: see [`super::RequestProtocol`].
    pub const REQUEST_PROTOCOL: &str = "request_protocol";
    /// HTTP status of the response (`0` when none was sent).
    pub const RESPONSE_CODE: &str = "response_code";
    /// gRPC status of the response (empty for plain HTTP).
    pub const GRPC_RESPONSE_STATUS: &str = "grpc_response_status";
    /// Envoy's response flags: see [`super::ResponseFlags`].
    pub const RESPONSE_FLAGS: &str = "response_flags";
    /// How the connection was secured: see [`super::SecurityPolicy`].
    pub const CONNECTION_SECURITY_POLICY: &str = "connection_security_policy";

    /// The names of one side's workload labels, so code that writes both sides writes them
    /// once.
    #[derive(Clone, Copy, Debug)]
    pub struct PeerNames {
        /// `*_workload`.
        pub workload: &'static str,
        /// `*_workload_namespace`.
        pub workload_namespace: &'static str,
        /// `*_principal`.
        pub principal: &'static str,
        /// `*_app`.
        pub app: &'static str,
        /// `*_version`.
        pub version: &'static str,
        /// `*_canonical_service`.
        pub canonical_service: &'static str,
        /// `*_canonical_revision`.
        pub canonical_revision: &'static str,
        /// `*_cluster`.
        pub cluster: &'static str,
    }

    /// The client side's workload label names.
    pub const SOURCE: PeerNames = PeerNames {
        workload: SOURCE_WORKLOAD,
        workload_namespace: SOURCE_WORKLOAD_NAMESPACE,
        principal: SOURCE_PRINCIPAL,
        app: SOURCE_APP,
        version: SOURCE_VERSION,
        canonical_service: SOURCE_CANONICAL_SERVICE,
        canonical_revision: SOURCE_CANONICAL_REVISION,
        cluster: SOURCE_CLUSTER,
    };

    /// The server side's workload label names.
    pub const DESTINATION: PeerNames = PeerNames {
        workload: DESTINATION_WORKLOAD,
        workload_namespace: DESTINATION_WORKLOAD_NAMESPACE,
        principal: DESTINATION_PRINCIPAL,
        app: DESTINATION_APP,
        version: DESTINATION_VERSION,
        canonical_service: DESTINATION_CANONICAL_SERVICE,
        canonical_revision: DESTINATION_CANONICAL_REVISION,
        cluster: DESTINATION_CLUSTER,
    };
}

/// Defines a label-value enum: each variant with the exact spelling Istio exports, shown by
/// `Display` and written by prometheus-client's `EncodeLabelValue`.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value as Istio spells it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value spelled `text`, if it is one.
            pub fn from_label(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == text)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
                fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label_values! {
    /// Which proxy reported a series; each hop of a request is counted once per reporter.
    Reporter {
        /// The client's ztunnel.
        Source => "source",
        /// The server's ztunnel.
        Destination => "destination",
        /// The waypoint the request went through.
        Waypoint => "waypoint",
    }
}

label_values! {
    /// How the reported connection was secured.
    SecurityPolicy {
        /// Mutual TLS with mesh identities on both ends.
        MutualTls => "mutual_tls",
        /// The reporter cannot tell (a source reporter sending to a destination outside the
        /// mesh, whose side decides).
        Unknown => "unknown",
        /// Plaintext.
        None => "none",
    }
}

label_values! {
    /// The protocol of a reported request or connection.
    RequestProtocol {
        /// HTTP/1.1 or HTTP/2 requests.
        Http => "http",
        /// gRPC requests (`content-type: application/grpc*`).
        Grpc => "grpc",
        /// Opaque TCP connections.
        Tcp => "tcp",
    }
}

label_values! {
    /// One of Envoy's response flags, which say why a request or connection ended the way it
    /// did. Declared in the order Envoy prints them when several are raised.
    ResponseFlag {
        /// No healthy upstream host.
        NoHealthyUpstream => "UH",
        /// Upstream request timeout.
        UpstreamRequestTimeout => "UT",
        /// Upstream connection failure.
        UpstreamConnectionFailure => "UF",
        /// Upstream connection termination.
        UpstreamConnectionTermination => "UC",
        /// Upstream overflow (circuit breaker).
        UpstreamOverflow => "UO",
        /// No route matched.
        NoRouteFound => "NR",
        /// Request delayed by fault injection.
        DelayInjected => "DI",
        /// Request aborted by fault injection.
        FaultInjected => "FI",
        /// The downstream connection ended before the response did.
        DownstreamConnectionTermination => "DC",
        /// Upstream retry limit exceeded.
        UpstreamRetryLimitExceeded => "URX",
        /// Denied by an authorization policy.
        RbacAccessDenied => "RBAC",
        /// No cluster for the route.
        NoClusterFound => "NC",
        /// Reset locally.
        LocalReset => "LR",
        /// Reset by the upstream.
        UpstreamRemoteReset => "UR",
    }
}

impl ResponseFlag {
    /// Where this flag stands when several are printed together.
    pub fn print_order(self) -> usize {
        self as usize
    }
}

// The set below is a bitmask over the flags' print order.
const _: () = assert!(ResponseFlag::ALL.len() <= u16::BITS as usize);

/// A set of [`ResponseFlag`]s: `-` when empty, else the flags comma-joined in Envoy's order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u16);

impl ResponseFlags {
    /// No flag raised.
    pub const NONE: ResponseFlags = ResponseFlags(0);

    /// Raises `flag`.
    pub fn insert(&mut self, flag: ResponseFlag) {
        self.0 |= 1 << flag.print_order();
    }

    /// Whether `flag` was raised.
    pub fn contains(self, flag: ResponseFlag) -> bool {
        self.0 & (1 << flag.print_order()) != 0
    }

    /// Whether no flag was raised.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The raised flags, in Envoy's print order.
    pub fn iter(self) -> impl Iterator<Item = ResponseFlag> {
        ResponseFlag::ALL
            .iter()
            .copied()
            .filter(move |f| self.contains(*f))
    }
}

impl FromIterator<ResponseFlag> for ResponseFlags {
    fn from_iter<I: IntoIterator<Item = ResponseFlag>>(iter: I) -> Self {
        let mut flags = ResponseFlags::NONE;
        for f in iter {
            flags.insert(f);
        }
        flags
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (i, flag) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(flag.as_str())?;
        }
        Ok(())
    }
}

impl EncodeLabelValue for ResponseFlags {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        fmt::Write::write_fmt(encoder, format_args!("{self}"))
    }
}

/// Writes a label set one label at a time, each value in its own type (strings, the enums
/// above, numbers), in the order written: a hand-written `EncodeLabelSet` uses it to spell
/// Istio's label names from [`label`] instead of repeating them as field names.
pub struct LabelWriter<'a>(LabelSetEncoder<'a>);

impl<'a> LabelWriter<'a> {
    /// Wraps the encoder prometheus-client hands to `EncodeLabelSet::encode`.
    pub fn new(encoder: LabelSetEncoder<'a>) -> Self {
        LabelWriter(encoder)
    }

    /// Writes one label.
    pub fn label(
        &mut self,
        name: &str,
        value: impl EncodeLabelValue,
    ) -> Result<&mut Self, fmt::Error> {
        (name, value).encode(self.0.encode_label())?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    #[derive(Clone, Debug, Hash, PartialEq, Eq)]
    struct Sample {
        reporter: Reporter,
        flags: ResponseFlags,
        code: u16,
    }

    impl EncodeLabelSet for Sample {
        fn encode(&self, encoder: LabelSetEncoder) -> fmt::Result {
            LabelWriter::new(encoder)
                .label(label::REPORTER, self.reporter)?
                .label(label::RESPONSE_FLAGS, self.flags)?
                .label(label::RESPONSE_CODE, self.code)?
                .label(label::CONNECTION_SECURITY_POLICY, SecurityPolicy::MutualTls)?;
            Ok(())
        }
    }

    #[test]
    fn encodes_labels_in_written_order() {
        let mut registry = Registry::default();
        let family = Family::<Sample, Counter>::default();
        registry.register("x", "x", family.clone());
        let flags = [
            ResponseFlag::UpstreamRetryLimitExceeded,
            ResponseFlag::UpstreamConnectionFailure,
        ];
        family
            .get_or_create(&Sample {
                reporter: Reporter::Waypoint,
                flags: flags.into_iter().collect(),
                code: 503,
            })
            .inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "x_total{reporter=\"waypoint\",response_flags=\"UF,URX\",response_code=\"503\",\
                 connection_security_policy=\"mutual_tls\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn spells_values_like_istio() {
        assert_eq!(ResponseFlags::NONE.to_string(), "-");
        assert_eq!(Reporter::Destination.to_string(), "destination");
        assert_eq!(SecurityPolicy::None.as_str(), "none");
        assert_eq!(RequestProtocol::Grpc.as_str(), "grpc");
        assert_eq!(
            ResponseFlag::from_label("URX"),
            Some(ResponseFlag::UpstreamRetryLimitExceeded)
        );
        assert_eq!(ResponseFlag::from_label("XX"), None);
        assert!(ResponseFlag::LocalReset.print_order() > ResponseFlag::NoRouteFound.print_order());
    }
}
