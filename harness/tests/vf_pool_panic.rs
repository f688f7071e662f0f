//! A VF pool on the panic path, alone in its own process (the panic hook deletes every
//! namespace the process has, which would disturb other topology tests running alongside):
//! no veth survives in the namespace or appears in the host's. Needs root; skips (with the
//! reason on stderr) without it.

use std::process::Command;

use harness::topology::{self, veths, Netns, VfPool};

fn listed(name: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// Veths named `<pf>v*`/`<pf>w*` in the calling process's (host) namespace.
fn host_veths(pf: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-j", "link", "show", "type", "veth"])
        .output()
        .expect("ip link show");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("ifname")?.as_str().map(str::to_owned))
        .filter(|n| n.starts_with(pf))
        .collect()
}

#[test]
fn a_panic_with_vfs_taken_leaves_no_veth_behind() {
    let p = topology::probe();
    if !p.can_run {
        harness::testing::skip("vf_pool_panic", &p.summary());
        return;
    }
    let pf = format!("vp{}", std::process::id() % 100_000);
    let ns = Netns::create().expect("netns");
    let name = ns.name().to_string();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let pool = VfPool::create(&ns, &pf, 2).expect("pool");
        let _vf = pool.take().expect("vf");
        assert_eq!(veths(&ns).expect("veths").len(), 4);
        assert!(
            host_veths(&pf).is_empty(),
            "VFs are not in the host's namespace"
        );
        panic!("deliberate panic with a VF taken");
    }));
    assert!(caught.is_err());
    // The hook deleted the namespace's name, the unwinding dropped the pool: nothing left in
    // the namespace (still reachable through its descriptor), nothing in the host's.
    assert!(!listed(&name), "{name} survived a panic");
    assert!(veths(&ns).expect("veths").is_empty());
    assert!(host_veths(&pf).is_empty());
    drop(ns);
    assert!(host_veths(&pf).is_empty());
}
