//! Workload identity: SPIFFE names, the mesh CA and the per-identity certificate manager.
//!
//! Build a [`CaDir`] from a directory, wrap it in a [`CertManager`] and ask it for an
//! [`IdentityCert`] per SPIFFE identity.

mod ca;
mod manager;

pub use ca::{CaDir, IssuedCert, CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
pub use manager::{CertManager, IdentityCert};

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

pub use common::Identity;

/// Reads the URI SANs of a DER certificate and returns the first one that parses as a SPIFFE
/// identity. Returns `None` for unparsable certificates or certificates without one.
pub fn identity_from_cert(der: &[u8]) -> Option<Identity> {
    use std::str::FromStr;
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => Identity::from_str(u).ok(),
        _ => None,
    })
}
