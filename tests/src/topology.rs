//! The local cluster shape shared by the end-to-end tests, the demo and the benchmarks.
//!
//! A *node* is a network namespace holding one ztunnel; a *pod* is a network namespace joined
//! to its node's bridge by a veth pair, plus a cgroup v2 directory for its processes. Nodes
//! reach each other through a bridge in a separate *fabric* namespace:
//!
//! ```text
//!  pod 10.1.N.k/24 ──veth── [node N: br0 10.1.N.1/24, up0 10.0.0.N/24] ──veth── fabric br0
//! ```
//! Every node routes `10.1.M.0/24` via `10.0.0.M`. Nothing here touches the root namespace's
//! addresses or routes, so a mistake cannot send traffic off the machine.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::netns::{ip, unique_id, Cgroup, Netns, PREFIX};

/// One node: its namespace and addresses.
#[derive(Debug)]
pub struct Node {
    pub index: u8,
    pub name: String,
    pub ns: Netns,
    /// Address on the fabric (node-to-node) network.
    pub ip: Ipv4Addr,
}

/// One pod: namespace, cgroup and address.
#[derive(Debug)]
pub struct PodNet {
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub ns: Netns,
    pub cgroup: Cgroup,
}

/// A set of nodes and pods; dropping it removes every namespace and cgroup it made.
#[derive(Debug)]
pub struct Topology {
    pub id: String,
    pub pods: Vec<PodNet>,
    pub nodes: Vec<Node>,
    // Dropped last: nodes hold the fabric's peer interfaces.
    fabric: Netns,
    cgroup_parent: String,
    next_pod: Vec<u8>,
}

impl Topology {
    /// Creates `nodes` nodes named `node1..nodeN` on a shared fabric.
    pub fn new(nodes: u8) -> Result<Topology> {
        Self::with_id(&unique_id(), nodes)
    }

    /// Like [`Topology::new`] with a fixed id (the demo's config names `mt-demo-*`). Fails if a
    /// namespace of that name already exists (another demo is running).
    pub fn with_id(id: &str, nodes: u8) -> Result<Topology> {
        let id = id.to_string();
        let fabric = Netns::create(&format!("{PREFIX}-{id}-fabric"))?;
        ip(&fabric.name, &["link", "add", "br0", "type", "bridge"])?;
        ip(&fabric.name, &["link", "set", "br0", "up"])?;
        let mut topo = Topology {
            cgroup_parent: format!("{PREFIX}-{id}"),
            id,
            pods: Vec::new(),
            nodes: Vec::new(),
            fabric,
            next_pod: vec![10; nodes as usize + 1],
        };
        for i in 1..=nodes {
            topo.add_node(i)?;
        }
        for n in &topo.nodes {
            for m in &topo.nodes {
                if n.index != m.index {
                    let cidr = format!("10.1.{}.0/24", m.index);
                    ip(
                        &n.ns.name,
                        &["route", "add", &cidr, "via", &m.ip.to_string()],
                    )?;
                }
            }
        }
        Ok(topo)
    }

    fn add_node(&mut self, i: u8) -> Result<()> {
        let name = format!("node{i}");
        let ns = Netns::create(&format!("{PREFIX}-{}-{name}", self.id))?;
        let node_ip = Ipv4Addr::new(10, 0, 0, i);
        let peer = format!("n{i}");
        ip(
            "",
            &[
                "link",
                "add",
                "up0",
                "netns",
                &ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                &self.fabric.name,
            ],
        )
        .context("creating node uplink")?;
        ip(
            &self.fabric.name,
            &["link", "set", &peer, "master", "br0", "up"],
        )?;
        ip(
            &ns.name,
            &["addr", "add", &format!("{node_ip}/24"), "dev", "up0"],
        )?;
        ip(&ns.name, &["link", "set", "up0", "up"])?;
        ip(&ns.name, &["link", "add", "br0", "type", "bridge"])?;
        ip(
            &ns.name,
            &["addr", "add", &format!("10.1.{i}.1/24"), "dev", "br0"],
        )?;
        ip(&ns.name, &["link", "set", "br0", "up"])?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        self.nodes.push(Node {
            index: i,
            name,
            ns,
            ip: node_ip,
        });
        Ok(())
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn pod(&self, name: &str) -> &PodNet {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Adds a pod on `node` with the next free address of that node's pod range.
    pub fn add_pod(&mut self, name: &str, node: &str) -> Result<&PodNet> {
        let idx = self.node(node).index;
        let k = self.next_pod[idx as usize];
        self.next_pod[idx as usize] += 1;
        self.add_pod_with_ip(name, node, Ipv4Addr::new(10, 1, idx, k))
    }

    /// Adds a pod at a given address, which must lie in the node's `10.1.N.0/24`.
    pub fn add_pod_with_ip(&mut self, name: &str, node: &str, pod_ip: Ipv4Addr) -> Result<&PodNet> {
        let n = self.node(node);
        let idx = n.index;
        let node_ns = n.ns.name.clone();
        anyhow::ensure!(
            pod_ip.octets()[..3] == [10, 1, idx],
            "pod {name}: address {pod_ip} is not in {node}'s range 10.1.{idx}.0/24"
        );
        let k = pod_ip.octets()[3];
        let ns = Netns::create(&format!("{PREFIX}-{}-{name}", self.id))?;
        let peer = format!("p{k}");
        ip(
            "",
            &[
                "link", "add", "eth0", "netns", &ns.name, "type", "veth", "peer", "name", &peer,
                "netns", &node_ns,
            ],
        )
        .with_context(|| format!("creating veth for pod {name}"))?;
        ip(&node_ns, &["link", "set", &peer, "master", "br0", "up"])?;
        ip(
            &ns.name,
            &["addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"],
        )?;
        ip(&ns.name, &["link", "set", "eth0", "up"])?;
        ip(
            &ns.name,
            &["route", "add", "default", "via", &format!("10.1.{idx}.1")],
        )?;
        let cgroup = Cgroup::create(&format!("{}/{name}", self.cgroup_parent))?;
        self.pods.push(PodNet {
            name: name.to_string(),
            node: node.to_string(),
            ip: pod_ip,
            ns,
            cgroup,
        });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Path of the cgroup parent directory holding every pod's cgroup.
    pub fn cgroup_parent(&self) -> PathBuf {
        PathBuf::from(crate::netns::CGROUP2_ROOT).join(&self.cgroup_parent)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Pods first (their veths end in node namespaces), then nodes, then the fabric.
        self.pods.clear();
        self.nodes.clear();
        let _ = std::fs::remove_dir(self.cgroup_parent());
    }
}
