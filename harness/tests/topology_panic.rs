//! The panic path of the namespace cleanup, alone in its own process: the panic hook deletes
//! every namespace the process has, which would disturb the other topology tests running in
//! parallel with it. Needs root; skips (with the reason on stderr) without it.

use std::process::Command;

use harness::topology::{self, Netns};

fn listed(name: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn a_panic_deletes_the_namespaces_and_live_handles_keep_working() {
    let p = topology::probe();
    if !p.can_run {
        harness::testing::skip("topology_panic", &p.summary());
        return;
    }
    let ns = Netns::create().expect("netns");
    let name = ns.name().to_string();
    assert!(listed(&name));

    // A panic inside run_in comes out on the calling thread ...
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = ns.run_in(|| panic!("deliberate panic inside the namespace"));
    }));
    assert!(caught.is_err());
    // ... and the hook deleted the namespace's name on the way.
    assert!(!listed(&name), "{name} survived a panic");

    // The handle still enters the (now unnamed) namespace through its descriptor, and the
    // interfaces in it still work.
    let tap = topology::open_tap(&ns, "tap0", 0).expect("tap after the panic");
    let stats = topology::link_stats(&ns, &tap.name).expect("stats");
    assert_eq!(stats.rx_packets, 0);
    drop(tap);
    drop(ns); // nothing left to delete: quiet
    assert!(!listed(&name));
}
