//! Which VirtualService and which DestinationRule take effect for a host, decided once here
//! for every proxy.
//!
//! - **Order of precedence.** When resources conflict, Istio orders them by
//!   `metadata.creationTimestamp` (oldest first; an object without one counts as the oldest),
//!   then by name, then by namespace (pilot's `sortConfigByCreationTime`). Load order (file
//!   names) never decides.
//! - **VirtualService.** Only one VirtualService takes effect per host for mesh traffic: the
//!   first in precedence order among those bound to the mesh (no `gateways`, or `mesh` among
//!   them) whose hosts match, exactly or by wildcard. At a waypoint Istio also restricts the
//!   candidates to the waypoint's and the service's namespaces and skips VirtualServices
//!   without `http` routes ([`Model::virtual_service_for_waypoint`]).
//! - **DestinationRule.** A client in namespace N uses the rule for the host from N, else from
//!   the service's namespace, else from the root namespace; inside one namespace an exact host
//!   beats the most specific wildcard. Rules for the same host in the same namespace are
//!   merged in precedence order: subsets are appended (the first definition of a name wins)
//!   and the first rule that has a traffic policy supplies it.

use std::cmp::Ordering;

use super::{host, Model, Service};
use crate::k8s::ObjectMeta;
use crate::resource::{DestinationRule, VirtualService};

/// Istio's order of precedence between conflicting resources (see the module docs).
pub fn precedence(a: &ObjectMeta, b: &ObjectMeta) -> Ordering {
    a.creation_time()
        .cmp(&b.creation_time())
        .then_with(|| a.name.cmp(&b.name))
        .then_with(|| a.namespace_or_default().cmp(b.namespace_or_default()))
}

/// The order of `metas` by [`precedence`] (indices, first to last) and each index's rank.
fn ranks<'a>(metas: impl Iterator<Item = &'a ObjectMeta>) -> (Vec<u32>, Vec<u32>) {
    let metas: Vec<&ObjectMeta> = metas.collect();
    let mut order: Vec<u32> = (0..metas.len() as u32).collect();
    order.sort_by(|a, b| precedence(metas[*a as usize], metas[*b as usize]));
    let mut rank = vec![0; metas.len()];
    for (r, i) in order.iter().enumerate() {
        rank[*i as usize] = r as u32;
    }
    (order, rank)
}

fn binds_mesh(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == "mesh")
}

/// Wildcard patterns most specific first (a longer suffix is more specific; `*` is last).
fn most_specific_first(patterns: &mut [String]) {
    patterns.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
}

pub(super) fn index_virtual_services(m: &mut Model) {
    let (order, rank) = ranks(m.virtual_services.iter().map(|v| &v.metadata));
    m.vs_rank = rank;
    for i in order {
        let vs = &m.virtual_services[i as usize];
        if !binds_mesh(&vs.spec.gateways) {
            continue;
        }
        for h in &vs.spec.hosts {
            let fqdn = host::resolve_resource_host(h, vs.namespace(), &m.cluster_domain);
            if fqdn.starts_with('*') {
                if !m.vs_wildcard.iter().any(|(p, j)| *p == fqdn && *j == i) {
                    m.vs_wildcard.push((fqdn, i));
                }
            } else {
                let list = m.vs_by_host.entry(fqdn).or_default();
                if !list.contains(&i) {
                    list.push(i);
                }
            }
        }
    }
}

pub(super) fn merge_destination_rules(m: &mut Model) {
    let (order, _) = ranks(m.destination_rules.iter().map(|d| &d.metadata));
    for i in order {
        let dr = &m.destination_rules[i as usize];
        let host = host::resolve_resource_host(&dr.spec.host, dr.namespace(), &m.cluster_domain);
        if host.starts_with('*') {
            let list = m
                .dr_wildcards
                .entry(dr.namespace().to_string())
                .or_default();
            if !list.contains(&host) {
                list.push(host.clone());
            }
        }
        let key = (dr.namespace().to_string(), host);
        match m.merged_drs.get_mut(&key) {
            None => {
                m.merged_drs.insert(key, dr.clone());
            }
            Some(merged) => merge_into(merged, dr),
        }
    }
    for list in m.dr_wildcards.values_mut() {
        most_specific_first(list);
    }
}

fn merge_into(merged: &mut DestinationRule, dr: &DestinationRule) {
    if merged.spec.traffic_policy.is_none() {
        merged.spec.traffic_policy = dr.spec.traffic_policy.clone();
    }
    for s in &dr.spec.subsets {
        if !merged.spec.subsets.iter().any(|ms| ms.name == s.name) {
            merged.spec.subsets.push(s.clone());
        }
    }
}

impl Model {
    /// Every mesh-bound VirtualService whose hosts match `fqdn` (exactly or by wildcard), in
    /// Istio's order of precedence: the first is the one in effect, the others conflict.
    pub fn virtual_services_for_host(&self, fqdn: &str) -> Vec<&VirtualService> {
        let mut idx: Vec<u32> = self.vs_by_host.get(fqdn).cloned().unwrap_or_default();
        for (pattern, i) in &self.vs_wildcard {
            if host::host_matches(pattern, fqdn) && !idx.contains(i) {
                idx.push(*i);
            }
        }
        idx.sort_by_key(|i| self.vs_rank[*i as usize]);
        idx.iter()
            .map(|i| &self.virtual_services[*i as usize])
            .collect()
    }

    /// The one VirtualService that takes effect for mesh traffic to `fqdn` (see the module
    /// docs), if any.
    pub fn virtual_service_for_host(&self, fqdn: &str) -> Option<&VirtualService> {
        self.virtual_services_for_host(fqdn).into_iter().next()
    }

    /// The VirtualService a waypoint in `waypoint_namespace` applies to traffic for `service`:
    /// the first in precedence order that lives in the waypoint's or the service's namespace
    /// and has HTTP routes.
    pub fn virtual_service_for_waypoint(
        &self,
        service: &Service,
        waypoint_namespace: &str,
    ) -> Option<&VirtualService> {
        self.virtual_services_for_host(&service.hostname)
            .into_iter()
            .find(|vs| {
                (vs.namespace() == waypoint_namespace || vs.namespace() == service.namespace)
                    && !vs.spec.http.is_empty()
            })
    }

    /// The DestinationRule a client in `from_namespace` uses for `fqdn`: one in the client's
    /// namespace, else in the service's namespace, else in the root namespace (an exact host
    /// before the most specific wildcard in each). Rules for the same host in one namespace
    /// come merged (see the module docs).
    pub fn destination_rule_for_host(
        &self,
        fqdn: &str,
        from_namespace: &str,
    ) -> Option<&DestinationRule> {
        let service_ns = host::split_service_fqdn(fqdn, &self.cluster_domain).map(|(_, ns)| ns);
        [
            Some(from_namespace),
            service_ns,
            Some(self.root_namespace.as_str()),
        ]
        .into_iter()
        .flatten()
        .find_map(|ns| self.destination_rule_in(ns, fqdn))
    }

    fn destination_rule_in(&self, ns: &str, fqdn: &str) -> Option<&DestinationRule> {
        let key = (ns.to_string(), fqdn.to_string());
        if let Some(dr) = self.merged_drs.get(&key) {
            return Some(dr);
        }
        let pattern = self
            .dr_wildcards
            .get(ns)?
            .iter()
            .find(|p| host::host_matches(p, fqdn))?;
        self.merged_drs.get(&(ns.to_string(), pattern.clone()))
    }
}
