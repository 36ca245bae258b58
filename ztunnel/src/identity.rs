//! Workload identity: SPIFFE names, the mesh CA and the per-identity certificate manager.
//!
//! This module is usable on its own (the waypoint uses it): build a [`CaDir`] from a directory,
//! wrap it in a [`CertManager`] and ask it for an [`IdentityCert`] per SPIFFE identity.

mod ca;
mod manager;

pub use ca::{CaDir, IssuedCert, CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
pub use manager::{CertManager, IdentityCert};

use std::fmt;
use std::str::FromStr;

/// Errors from identity parsing, the CA and certificate issuance.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid SPIFFE identity {0:?}: expected spiffe://<trust domain>/ns/<ns>/sa/<sa>")]
    InvalidSpiffe(String),
    #[error("CA directory {path}: {reason}")]
    CaDir { path: String, reason: String },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS key error: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A SPIFFE workload identity `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    /// Builds an identity from its parts.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Identity {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }

    /// The identity as an Istio "principal" (the SPIFFE URI without `spiffe://`).
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdentityError::InvalidSpiffe(s.to_string());
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(Identity::new(td, ns, sa))
            }
            _ => Err(bad()),
        }
    }
}

/// Reads the URI SANs of a DER certificate and returns the first one that parses as a SPIFFE
/// identity. Returns `None` for unparsable certificates or certificates without one.
pub fn identity_from_cert(der: &[u8]) -> Option<Identity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => u.parse().ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_round_trip() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/bookinfo".parse().unwrap();
        assert_eq!(id.namespace, "default");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/bookinfo");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/bookinfo");
        for bad in [
            "cluster.local/ns/a/sa/b",
            "spiffe://td/ns/a",
            "spiffe://td/ns//sa/b",
            "spiffe://td/ns/a/sa/b/c",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }
}
