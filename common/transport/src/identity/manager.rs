//! One certificate per identity, issued on demand and renewed at half its lifetime.
//!
//! Renewal swaps the certificate in an [`ArcSwap`]; TLS resolvers read it at each handshake,
//! so open connections are untouched and new handshakes get the new certificate.

use super::{CaDir, Identity, IdentityError, IssuedCert};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

/// The current certificate of one identity.
#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// A renewable certificate for one identity; cheap to read on every handshake.
#[derive(Debug)]
pub struct IdentityCert {
    identity: Identity,
    current: ArcSwap<Current>,
    renewals: AtomicU64,
}

impl IdentityCert {
    /// Wraps an already issued certificate (no automatic renewal).
    pub fn from_issued(issued: &IssuedCert) -> Result<Arc<Self>, IdentityError> {
        Ok(Arc::new(IdentityCert {
            identity: issued.identity.clone(),
            current: ArcSwap::from_pointee(Current {
                key: issued.certified_key()?,
                not_before: issued.not_before,
                not_after: issued.not_after,
            }),
            renewals: AtomicU64::new(0),
        }))
    }

    /// The identity this certificate asserts.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The certificate and key to present right now.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.current.load().key.clone()
    }

    /// Expiry of the current certificate.
    pub fn not_after(&self) -> SystemTime {
        self.current.load().not_after
    }

    /// How many times this certificate was renewed.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    fn replace(&self, issued: &IssuedCert) -> Result<(), IdentityError> {
        self.current.store(Arc::new(Current {
            key: issued.certified_key()?,
            not_before: issued.not_before,
            not_after: issued.not_after,
        }));
        self.renewals.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Time until half of the current certificate's lifetime has passed.
    fn until_renewal(&self) -> Duration {
        let cur = self.current.load();
        let life = cur
            .not_after
            .duration_since(cur.not_before)
            .unwrap_or_default();
        let due = cur.not_before + life / 2;
        due.duration_since(SystemTime::now()).unwrap_or_default()
    }
}

/// Serializable summary for `/config_dump`.
#[derive(Debug, serde::Serialize)]
pub struct CertSummary {
    pub identity: String,
    pub not_after_unix: u64,
    pub renewals: u64,
}

/// Issues and renews workload certificates from a [`CaDir`].
#[derive(Debug)]
pub struct CertManager {
    ca: Arc<CaDir>,
    lifetime: Duration,
    certs: Mutex<HashMap<Identity, Arc<IdentityCert>>>,
}

impl CertManager {
    /// A manager issuing certificates valid for `lifetime` (renewed at half of it).
    pub fn new(ca: Arc<CaDir>, lifetime: Duration) -> Arc<Self> {
        Arc::new(CertManager {
            ca,
            lifetime,
            certs: Mutex::new(HashMap::new()),
        })
    }

    /// The CA behind this manager.
    pub fn ca(&self) -> &Arc<CaDir> {
        &self.ca
    }

    /// The mesh trust anchors.
    pub fn roots(&self) -> Arc<rustls::RootCertStore> {
        self.ca.roots()
    }

    /// The mesh trust domain.
    pub fn trust_domain(&self) -> &str {
        self.ca.trust_domain()
    }

    /// Returns the certificate for `id`, issuing it (and starting its renewal task) the first
    /// time. Must be called inside a tokio runtime.
    pub fn fetch(self: &Arc<Self>, id: &Identity) -> Result<Arc<IdentityCert>, IdentityError> {
        let mut certs = self.certs.lock();
        if let Some(c) = certs.get(id) {
            return Ok(c.clone());
        }
        let issued = self.ca.issue(id, self.lifetime)?;
        let cert = IdentityCert::from_issued(&issued)?;
        certs.insert(id.clone(), cert.clone());
        drop(certs);
        tracing::info!(identity = %id, expires_in = ?self.lifetime, "issued workload certificate");
        tokio::spawn(renew_loop(Arc::downgrade(self), Arc::downgrade(&cert)));
        Ok(cert)
    }

    /// Stops managing `id` (its last pod left the node); the renewal task ends.
    pub fn forget(&self, id: &Identity) {
        self.certs.lock().remove(id);
    }

    /// Identities currently held, for `/config_dump`.
    pub fn summary(&self) -> Vec<CertSummary> {
        let mut v: Vec<_> = self
            .certs
            .lock()
            .values()
            .map(|c| CertSummary {
                identity: c.identity.to_string(),
                not_after_unix: c
                    .not_after()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default(),
                renewals: c.renewals(),
            })
            .collect();
        v.sort_by(|a, b| a.identity.cmp(&b.identity));
        v
    }
}

async fn renew_loop(mgr: Weak<CertManager>, cert: Weak<IdentityCert>) {
    loop {
        let wait = match cert.upgrade() {
            Some(c) => c.until_renewal(),
            None => return,
        };
        tokio::time::sleep(wait).await;
        let (Some(mgr), Some(cert)) = (mgr.upgrade(), cert.upgrade()) else {
            return;
        };
        let still_managed = mgr
            .certs
            .lock()
            .get(&cert.identity)
            .is_some_and(|c| Arc::ptr_eq(c, &cert));
        if !still_managed {
            return;
        }
        match mgr
            .ca
            .issue(&cert.identity, mgr.lifetime)
            .and_then(|i| cert.replace(&i))
        {
            Ok(()) => tracing::info!(identity = %cert.identity, "renewed workload certificate"),
            Err(e) => {
                tracing::warn!(identity = %cert.identity, error = %e, "certificate renewal failed, retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renews_at_half_life() {
        let ca = Arc::new(CaDir::generate_in_memory("cluster.local").unwrap());
        let mgr = CertManager::new(ca, Duration::from_secs(2));
        let id = Identity::new("cluster.local", "a", "b");
        let c = mgr.fetch(&id).unwrap();
        assert!(Arc::ptr_eq(&c, &mgr.fetch(&id).unwrap()));
        let first = c.certified_key();
        tokio::time::sleep(Duration::from_millis(2300)).await;
        assert!(c.renewals() >= 1, "renewed after half life");
        assert!(!Arc::ptr_eq(&first, &c.certified_key()));
        mgr.forget(&id);
        assert!(mgr.summary().is_empty());
    }
}
