//! The harness itself: pods on different nodes reach each other over the fabric, and dropping
//! the topology removes every namespace and cgroup it made.

use mesh_tests::netns::{run, Proc};
use mesh_tests::topology::Topology;

#[test]
fn pods_on_two_nodes_talk_and_nothing_is_left_behind() {
    let (names, cgroup) = {
        let mut t = Topology::new(2).expect("topology");
        t.add_pod("a", "node1").unwrap();
        t.add_pod("b", "node2").unwrap();
        let b = t.pod("b");
        let logs = tempfile::tempdir().unwrap();
        let argv: Vec<String> = ["python3", "-m", "http.server", "--bind", "0.0.0.0", "8000"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let _srv = Proc::spawn(
            "srv",
            Some(&b.ns.name),
            Some(&b.cgroup.path),
            &argv,
            &[],
            logs.path(),
        )
        .unwrap();
        let url = format!("http://{}:8000/", b.ip);
        let a = t.pod("a");
        let mut ok = false;
        for _ in 0..100 {
            if a.ns
                .exec(&["curl", "-sf", "-o", "/dev/null", "--max-time", "1", &url])
                .is_ok()
            {
                ok = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(ok, "pod a could not reach pod b at {url}");
        assert_eq!(
            b.cgroup.procs().len(),
            1,
            "server runs inside pod b's cgroup"
        );
        let names: Vec<String> = t
            .pods
            .iter()
            .map(|p| p.ns.name.clone())
            .chain(t.nodes.iter().map(|n| n.ns.name.clone()))
            .collect();
        (names, t.cgroup_parent())
    };
    let list = run("ip", &["netns", "list"]).unwrap();
    for n in names {
        assert!(!list.contains(&n), "netns {n} left behind");
    }
    assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
}
