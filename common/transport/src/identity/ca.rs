//! The local mesh CA: a directory with Istio's plugged-in CA file names.
//!
//! `ca-cert.pem` + `ca-key.pem` sign workload certificates, `root-cert.pem` holds the trust
//! anchors and `cert-chain.pem` the chain from `ca-cert.pem` up to the root (sent with every
//! leaf). An empty or missing directory gets a fresh ECDSA P-256 root; an existing root may be
//! RSA or ECDSA, with its key in PKCS#8 or PKCS#1 (`BEGIN RSA PRIVATE KEY`) form.

use super::{Identity, IdentityError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// File name of the certificate that signs workload certificates.
pub const CA_CERT: &str = "ca-cert.pem";
/// File name of the signing key.
pub const CA_KEY: &str = "ca-key.pem";
/// File name of the trust anchors.
pub const ROOT_CERT: &str = "root-cert.pem";
/// File name of the chain from `ca-cert.pem` to the root.
pub const CERT_CHAIN: &str = "cert-chain.pem";

/// A certificate authority able to issue workload certificates.
pub struct CaDir {
    trust_domain: String,
    /// Issuer reconstructed from `ca-cert.pem`; only its subject and key id are used when
    /// signing, the bytes sent on the wire come from `chain`.
    signer: rcgen::Certificate,
    signer_key: KeyPair,
    /// Certificates sent after the leaf (from `cert-chain.pem`, roots removed).
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    root_store: Arc<RootCertStore>,
}

impl std::fmt::Debug for CaDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaDir")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .finish()
    }
}

/// A freshly issued leaf certificate with its key.
#[derive(Debug)]
pub struct IssuedCert {
    pub identity: Identity,
    /// Leaf first, then the CA chain.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl IssuedCert {
    /// The rustls form of this certificate, ready for a resolver.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, IdentityError> {
        let key = rustls::crypto::ring::sign::any_supported_type(&self.key)?;
        Ok(Arc::new(CertifiedKey::new(self.chain.clone(), key)))
    }

    /// Lifetime of the certificate.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

fn ca_err(path: &Path, reason: impl Into<String>) -> IdentityError {
    IdentityError::CaDir {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn write(path: &Path, data: &str) -> Result<(), IdentityError> {
    std::fs::write(path, data).map_err(|source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn parse_certs(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_bytes()).collect();
    let certs = certs.map_err(|e| ca_err(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ca_err(path, "no certificate found"));
    }
    Ok(certs)
}

/// Parses a PEM private key (PKCS#8, or PKCS#1 RSA which is rewrapped as PKCS#8 because ring
/// only reads PKCS#8).
fn parse_key(path: &Path, pem: &str) -> Result<KeyPair, IdentityError> {
    let key = rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| ca_err(path, format!("bad PEM: {e}")))?
        .ok_or_else(|| ca_err(path, "no private key found"))?;
    let pkcs8 = match key {
        PrivateKeyDer::Pkcs8(k) => k,
        PrivateKeyDer::Pkcs1(k) => PrivatePkcs8KeyDer::from(pkcs1_to_pkcs8(k.secret_pkcs1_der())),
        PrivateKeyDer::Sec1(_) => {
            return Err(ca_err(
                path,
                "SEC1 (BEGIN EC PRIVATE KEY) keys are not supported; convert with `openssl pkcs8 -topk8 -nocrypt`",
            ))
        }
        _ => return Err(ca_err(path, "unsupported key format")),
    };
    KeyPair::try_from(&PrivateKeyDer::Pkcs8(pkcs8))
        .map_err(|e| ca_err(path, format!("unusable key: {e}")))
}

fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der_tlv(tag: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    der_len(body.len(), out);
    out.extend_from_slice(body);
}

/// PrivateKeyInfo { version 0, AlgorithmIdentifier { rsaEncryption, NULL }, OCTET STRING pkcs1 }.
fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    const RSA_ALG: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(RSA_ALG);
    der_tlv(0x04, pkcs1, &mut body);
    let mut out = Vec::with_capacity(body.len() + 4);
    der_tlv(0x30, &body, &mut out);
    out
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive INTEGER
    SerialNumber::from_slice(&b)
}

impl CaDir {
    /// Loads the CA from `dir`, generating an ECDSA root there if the directory has no
    /// `ca-cert.pem`/`ca-key.pem`.
    pub fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Self, IdentityError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        if !cert_path.exists() && !key_path.exists() {
            std::fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
                path: dir.display().to_string(),
                source,
            })?;
            let (cert_pem, key_pem) = Self::generate_root_pem(trust_domain)?;
            write(&key_path, &key_pem)?;
            write(&cert_path, &cert_pem)?;
            write(&dir.join(ROOT_CERT), &cert_pem)?;
            write(&dir.join(CERT_CHAIN), &cert_pem)?;
            tracing::info!(dir = %dir.display(), "generated a new ECDSA mesh root CA");
        }
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let root_path = dir.join(ROOT_CERT);
        let root_pem = if root_path.exists() {
            read(&root_path)?
        } else {
            cert_pem.clone()
        };
        let chain_path = dir.join(CERT_CHAIN);
        let chain_pem = if chain_path.exists() {
            read(&chain_path)?
        } else {
            cert_pem.clone()
        };
        let key = parse_key(&key_path, &key_pem)?;
        Self::from_parts(
            trust_domain,
            (&cert_path, &cert_pem),
            key,
            (&root_path, &root_pem),
            (&chain_path, &chain_pem),
        )
    }

    /// A CA that lives only in memory (tests, demos).
    pub fn generate_in_memory(trust_domain: &str) -> Result<Self, IdentityError> {
        let (cert_pem, key_pem) = Self::generate_root_pem(trust_domain)?;
        let p = Path::new("<memory>");
        let key = parse_key(p, &key_pem)?;
        Self::from_parts(
            trust_domain,
            (p, &cert_pem),
            key,
            (p, &cert_pem),
            (p, &cert_pem),
        )
    }

    /// PEM certificate and PKCS#8 key of a new self-signed ECDSA P-256 root.
    pub fn generate_root_pem(trust_domain: &str) -> Result<(String, String), IdentityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "mesh root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    fn from_parts(
        trust_domain: &str,
        (cert_path, cert_pem): (&Path, &str),
        key: KeyPair,
        (root_path, root_pem): (&Path, &str),
        (chain_path, chain_pem): (&Path, &str),
    ) -> Result<Self, IdentityError> {
        let params = CertificateParams::from_ca_cert_pem(cert_pem)
            .map_err(|e| ca_err(cert_path, format!("not a CA certificate: {e}")))?;
        let signer = params.self_signed(&key)?;
        let roots = parse_certs(root_path, root_pem)?;
        let mut store = RootCertStore::empty();
        for r in &roots {
            store
                .add(r.clone())
                .map_err(|e| ca_err(root_path, format!("unusable root: {e}")))?;
        }
        let chain = parse_certs(chain_path, chain_pem)?
            .into_iter()
            .filter(|c| !roots.contains(c))
            .collect();
        Ok(CaDir {
            trust_domain: trust_domain.to_string(),
            signer,
            signer_key: key,
            chain,
            roots,
            root_store: Arc::new(store),
        })
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The mesh trust anchors.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.root_store.clone()
    }

    /// The trust anchors as DER certificates.
    pub fn root_certs(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Issues a certificate for `id` valid from now for `lifetime`.
    pub fn issue(&self, id: &Identity, lifetime: Duration) -> Result<IssuedCert, IdentityError> {
        let now = SystemTime::now();
        self.issue_with_validity(id, now, now + lifetime)
    }

    /// Issues a certificate for `id` with explicit validity (tests use it for expired ones).
    pub fn issue_with_validity(
        &self,
        id: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, IdentityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, id.trust_domain.as_str());
        params.distinguished_name = dn;
        let uri = id
            .to_string()
            .try_into()
            .map_err(|_| IdentityError::InvalidSpiffe(id.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(random_serial());
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.signer, &self.signer_key)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(IssuedCert {
            identity: id.clone(),
            chain,
            key,
            not_before,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_and_reloads_root() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::load_or_generate(dir.path(), "cluster.local").unwrap();
        for f in [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        let again = CaDir::load_or_generate(dir.path(), "cluster.local").unwrap();
        assert_eq!(ca.root_certs(), again.root_certs());
        let id = Identity::new("cluster.local", "ns1", "sa1");
        let cert = again.issue(&id, Duration::from_secs(60)).unwrap();
        assert_eq!(super::super::identity_from_cert(&cert.chain[0]), Some(id));
        assert_eq!(cert.chain.len(), 1, "root is not repeated in the chain");
    }

    #[test]
    fn pkcs1_wrap_is_valid_der() {
        let w = pkcs1_to_pkcs8(&[0x30, 0x03, 0x02, 0x01, 0x00]);
        assert_eq!(w[0], 0x30);
        assert_eq!(w[1] as usize, w.len() - 2);
    }
}
