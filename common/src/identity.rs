//! SPIFFE workload identities: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The trust domain used when none is configured (Istio's default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SPIFFE identity `{0}`: expected spiffe://<trust domain>/ns/<namespace>/sa/<service account>")]
pub struct IdentityError(pub String);

impl Identity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Identity {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }

    /// The principal form AuthorizationPolicy uses: `<td>/ns/<ns>/sa/<sa>` (no scheme).
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
        let err = || IdentityError(s.to_string());
        let rest = s.strip_prefix("spiffe://").ok_or_else(err)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(Identity::new(td, ns, sa))
            }
            _ => Err(err()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
            .parse()
            .unwrap();
        assert_eq!(id.namespace, "default");
        assert_eq!(
            id.principal(),
            "cluster.local/ns/default/sa/bookinfo-productpage"
        );
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        );
        assert!("spiffe://td/ns/a".parse::<Identity>().is_err());
        assert!("http://td/ns/a/sa/b".parse::<Identity>().is_err());
    }
}
