//! One enum over every object kind the mesh reads, with the `kind namespace/name` key that
//! errors, warnings and the analyzer use to name a resource.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::istio::networking::{DestinationRuleSpec, IstioGatewaySpec, VirtualServiceSpec};
use crate::istio::security::{AuthorizationPolicySpec, PeerAuthenticationSpec};
use crate::k8s::{Gateway, Namespace, ObjectMeta, Pod, Service};

/// The kinds the model understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    Gateway,
    VirtualService,
    DestinationRule,
    PeerAuthentication,
    AuthorizationPolicy,
    /// `networking.istio.io` Gateway (ingress). Parsed so bookinfo exports load; not served.
    IstioGateway,
}

impl Kind {
    /// Maps `apiVersion` + `kind` to a known kind. `None` for anything else (skipped with a
    /// warning by the loader). Accepts the API versions Istio serves.
    pub fn from_api(api_version: &str, kind: &str) -> Option<Kind> {
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let version = api_version.rsplit('/').next().unwrap_or("");
        let istio_net =
            group == "networking.istio.io" && matches!(version, "v1" | "v1beta1" | "v1alpha3");
        let istio_sec = group == "security.istio.io" && matches!(version, "v1" | "v1beta1");
        let gw_api = group == "gateway.networking.k8s.io" && matches!(version, "v1" | "v1beta1");
        match (kind, group) {
            ("Namespace", "") if version == "v1" => Some(Kind::Namespace),
            ("Pod", "") if version == "v1" => Some(Kind::Pod),
            ("Service", "") if version == "v1" => Some(Kind::Service),
            ("Gateway", _) if gw_api => Some(Kind::Gateway),
            ("Gateway", _) if istio_net => Some(Kind::IstioGateway),
            ("VirtualService", _) if istio_net => Some(Kind::VirtualService),
            ("DestinationRule", _) if istio_net => Some(Kind::DestinationRule),
            ("PeerAuthentication", _) if istio_sec => Some(Kind::PeerAuthentication),
            ("AuthorizationPolicy", _) if istio_sec => Some(Kind::AuthorizationPolicy),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::Gateway => "Gateway",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::IstioGateway => "Gateway.networking.istio.io",
        }
    }

    /// Cluster-scoped kinds have no namespace in their key.
    pub fn is_namespaced(&self) -> bool {
        !matches!(self, Kind::Namespace)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `kind namespace/name`, the name of one resource in every message.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.is_namespaced() {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        } else {
            write!(f, "{} {}", self.kind, self.name)
        }
    }
}

/// An Istio resource: metadata plus its typed spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IstioObject<S> {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: S,
}

impl<S> IstioObject<S> {
    pub fn namespace(&self) -> &str {
        self.metadata.namespace_or_default()
    }
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

pub type VirtualService = IstioObject<VirtualServiceSpec>;
pub type DestinationRule = IstioObject<DestinationRuleSpec>;
pub type PeerAuthentication = IstioObject<PeerAuthenticationSpec>;
pub type AuthorizationPolicy = IstioObject<AuthorizationPolicySpec>;
pub type IstioGateway = IstioObject<IstioGatewaySpec>;

/// Any object the model holds.
// Variants differ in size (96 to ~360 bytes), but resources live in one Vec during a load
// and are then moved into the model's typed lists; boxing every variant would only add an
// allocation per object. The one field that made a variant huge (a DestinationRule's
// `TrafficPolicy`) is boxed where it is declared.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Resource {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    Gateway(Gateway),
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    PeerAuthentication(PeerAuthentication),
    AuthorizationPolicy(AuthorizationPolicy),
    IstioGateway(IstioGateway),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Namespace(_) => Kind::Namespace,
            Resource::Pod(_) => Kind::Pod,
            Resource::Service(_) => Kind::Service,
            Resource::Gateway(_) => Kind::Gateway,
            Resource::VirtualService(_) => Kind::VirtualService,
            Resource::DestinationRule(_) => Kind::DestinationRule,
            Resource::PeerAuthentication(_) => Kind::PeerAuthentication,
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Resource::IstioGateway(_) => Kind::IstioGateway,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::Namespace(o) => &o.metadata,
            Resource::Pod(o) => &o.metadata,
            Resource::Service(o) => &o.metadata,
            Resource::Gateway(o) => &o.metadata,
            Resource::VirtualService(o) => &o.metadata,
            Resource::DestinationRule(o) => &o.metadata,
            Resource::PeerAuthentication(o) => &o.metadata,
            Resource::AuthorizationPolicy(o) => &o.metadata,
            Resource::IstioGateway(o) => &o.metadata,
        }
    }

    pub fn key(&self) -> ResourceKey {
        let meta = self.metadata();
        let kind = self.kind();
        ResourceKey {
            kind,
            namespace: if kind.is_namespaced() {
                meta.namespace_or_default().to_string()
            } else {
                String::new()
            },
            name: meta.name.clone(),
        }
    }
}
