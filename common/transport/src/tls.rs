//! rustls configuration for mesh mTLS: TLS 1.3 only, AES-GCM suites, ALPN `h2`, no SNI.
//!
//! The client verifies the server chain against the mesh roots and the server's URI SAN
//! against the expected destination identities (never a hostname). The server demands a client
//! certificate chained to the mesh roots, in its own trust domain; the peer identity is read
//! from that certificate only ([`peer_identity`]).

use crate::identity::{identity_from_cert, Identity, IdentityCert};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use std::sync::Arc;

/// ALPN protocol of HBONE.
pub const ALPN_H2: &[u8] = b"h2";

/// Reasons a peer certificate is refused (carried inside `rustls::Error`).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("peer identity mismatch: expected one of [{expected}], got {got}")]
    IdentityMismatch { expected: String, got: String },
    #[error("peer certificate has no SPIFFE URI SAN")]
    NoIdentity,
    #[error("peer trust domain {got:?} is not {expected:?}")]
    TrustDomain { expected: String, got: String },
    #[error("building TLS config: {0}")]
    Config(String),
}

fn reject(e: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// The crypto provider of the mesh: ring with the two AES-GCM TLS 1.3 suites only.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring as r;
    Arc::new(CryptoProvider {
        // AES-128-GCM first: 10 AES rounds instead of 14 for the same GHASH, and AES is the
        // largest user-space cost of a bulk transfer after copies. Both suites stay offered
        // and accepted, so a peer (e.g. Istio's ztunnel) that prefers AES-256 still agrees.
        cipher_suites: vec![
            r::cipher_suite::TLS13_AES_128_GCM_SHA256,
            r::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ],
        ..r::default_provider()
    })
}

impl ResolvesServerCert for IdentityCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

impl ResolvesClientCert for IdentityCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Client side: verifies the server chain and its URI SAN.
#[derive(Debug)]
struct MeshServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<Identity>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let got = identity_from_cert(end_entity).ok_or_else(|| reject(TlsError::NoIdentity))?;
        if self.expected.contains(&got) {
            Ok(ServerCertVerified::assertion())
        } else {
            let expected: Vec<String> = self.expected.iter().map(|i| i.to_string()).collect();
            Err(reject(TlsError::IdentityMismatch {
                expected: expected.join(", "),
                got: got.to_string(),
            }))
        }
    }

    fn verify_tls12_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Server side: webpki client verification plus the trust-domain check.
#[derive(Debug)]
struct MeshClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = identity_from_cert(end_entity).ok_or_else(|| reject(TlsError::NoIdentity))?;
        if id.trust_domain != self.trust_domain {
            return Err(reject(TlsError::TrustDomain {
                expected: self.trust_domain.clone(),
                got: id.trust_domain,
            }));
        }
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server config presenting the certificate(s) chosen by `resolver` and requiring a mesh
/// client certificate from `trust_domain`.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    roots: Arc<RootCertStore>,
    trust_domain: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier = Arc::new(MeshClientVerifier {
        inner,
        trust_domain: trust_domain.to_string(),
    });
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No tickets and no session cache: like Istio, every connection is a full handshake.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// Client config presenting `cert` and accepting a server whose identity is in `expected`.
pub fn client_config(
    cert: Arc<IdentityCert>,
    roots: Arc<RootCertStore>,
    expected: Vec<Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(MeshServerVerifier {
        roots,
        expected,
        provider: provider.clone(),
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(cert);
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.enable_sni = false;
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// The server name passed to rustls; never sent (SNI is off) and never verified.
pub fn dummy_server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
}

/// The identity of the peer of an established TLS connection, from its leaf certificate.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<Identity> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| identity_from_cert(c))
}

/// Applies the data-path settings to an established HBONE TLS connection: a larger send
/// buffer limit ([`crate::hbone::TLS_SEND_BUFFER`]) so a large DATA frame is one `writev`.
pub fn tune<D>(conn: &mut rustls::ConnectionCommon<D>) {
    conn.set_buffer_limit(Some(crate::hbone::TLS_SEND_BUFFER));
}
