//! Unit tests of the pod network: the pure choices, and setup/teardown for real in a private
//! network namespace made with `ip netns` (this runs as root, as the shim does).

use moat_netlink::testing::TestNetns;

use super::*;

fn link(index: u32, name: &str) -> Link {
    Link {
        index,
        name: name.into(),
        mac: Some([2, 0, 0, 0, 0, index as u8]),
        mtu: 1500,
        up: true,
        loopback: name == "lo",
        master: None,
        kind: None,
    }
}

#[test]
fn picks_eth0_or_the_only_one() {
    let ns = Path::new("/run/netns/x");
    let lo = Link {
        mac: None,
        ..link(1, "lo")
    };
    assert_eq!(pick_interface(ns, std::slice::from_ref(&lo)).unwrap(), None);
    let one = [lo.clone(), link(2, "net1")];
    assert_eq!(pick_interface(ns, &one).unwrap().unwrap().name, "net1");
    let two = [lo.clone(), link(2, "net1"), link(3, "eth0")];
    assert_eq!(pick_interface(ns, &two).unwrap().unwrap().name, "eth0");
    let e = pick_interface(ns, &[lo.clone(), link(2, "a"), link(3, "b")]).unwrap_err();
    assert!(e.to_string().contains("a, b"), "{e}");
    let e = pick_interface(ns, &[lo, link(2, "eth0"), link(3, BRIDGE_NAME)]).unwrap_err();
    assert!(matches!(e, NetworkError::Busy(_)), "{e}");
}

fn route(dst: Option<(&str, u8)>, gw: Option<&str>, oif: u32, kernel: bool) -> Route {
    Route {
        dst: dst.map(|(a, p)| (a.parse().unwrap(), p)),
        gateway: gw.map(|g| g.parse().unwrap()),
        oif: Some(oif),
        scope: RouteScope::Universe,
        ipv6: false,
        kernel,
        table: 254,
    }
}

#[test]
fn moves_global_addresses_and_non_kernel_routes() {
    let eth = link(2, "eth0");
    let addr = |index, a: &str, p, local_scope| Address {
        index,
        addr: a.parse().unwrap(),
        prefix: p,
        local_scope,
    };
    let addrs = vec![
        addr(2, "10.9.0.2", 24, false),
        addr(2, "fe80::1", 64, true),
        addr(1, "127.0.0.1", 8, true),
        addr(3, "10.8.0.2", 24, false),
    ];
    let routes = vec![
        route(None, Some("10.9.0.1"), 2, false),
        route(Some(("10.9.0.0", 24)), None, 2, true),
        route(Some(("192.168.0.0", 16)), Some("10.9.0.254"), 2, false),
        route(None, Some("10.8.0.1"), 3, false),
        Route {
            dst: Some(("fe80::".parse().unwrap(), 64)),
            ipv6: true,
            ..route(None, None, 2, false)
        },
    ];
    let (a, r) = what_moves(&eth, addrs, routes);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].addr.to_string(), "10.9.0.2");
    assert_eq!(r.len(), 2, "{r:?}");
    let record = NetRecord {
        netns: "/run/netns/x".into(),
        interface: "eth0".into(),
        index: 2,
        mac: [2, 0, 0, 0, 0, 2],
        mtu: 1450,
        addresses: a,
        routes: r,
    };
    let g = guest_of(&record).unwrap();
    assert_eq!((g.mac, g.mtu), ([2, 0, 0, 0, 0, 2], 1450));
    assert_eq!(g.interface.new_name, "eth0");
    assert_eq!(g.interface.addresses[0].to_string(), "10.9.0.2/24");
    assert_eq!(g.routes[0].to_string(), "default via 10.9.0.1 dev eth0");
    assert_eq!(
        g.routes[1].to_string(),
        "192.168.0.0/16 via 10.9.0.254 dev eth0"
    );
    let json = serde_json::to_string(&record).unwrap();
    assert_eq!(serde_json::from_str::<NetRecord>(&json).unwrap(), record);
}

/// A namespace with eth0 at 10.213.`tag`.2/24 (MTU 1400), default route via .1.
fn test_netns(tag: u8) -> TestNetns {
    let name = format!("mu{}t{tag}", std::process::id() % 100_000);
    TestNetns::new(
        &name,
        &format!("10.213.{tag}.2/24"),
        &format!("10.213.{tag}.1"),
        1400,
        None,
    )
}

#[test]
fn setup_and_teardown_in_a_real_netns() {
    let ns = test_netns(1);
    let before = ns.snapshot();
    let mac = ns.eth0_mac();
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = tmp.path();
    let record_path = dir.join(RECORD_FILE);

    let mut net = PodNetwork::setup(&ns.path(), &record_path)
        .unwrap()
        .expect("eth0 found");
    assert!(record_path.is_file());
    assert_eq!(pnet::format_mac(&net.guest.mac), mac);
    assert_eq!(net.guest.mtu, 1400);
    assert_eq!(
        net.guest.interface.addresses[0].to_string(),
        "10.213.1.2/24"
    );
    assert_eq!(
        net.guest
            .routes
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>(),
        ["default via 10.213.1.1 dev eth0"]
    );
    let mtu = net.guest.mtu;
    let nic = net.take_nic().expect("a NIC");
    assert_eq!((nic.mac, nic.mtu), (net.record.mac, mtu));
    assert!(net.take_nic().is_none(), "the TAP queue is handed out once");
    let fd = nic.tap;
    let links = ns.ip("-d link show");
    assert!(
        links.contains(BRIDGE_NAME) && links.contains(TAP_NAME),
        "{links}"
    );
    let eth = ns.ip("-d link show eth0");
    assert!(eth.contains(&format!("master {BRIDGE_NAME}")), "{eth}");
    assert!(!eth.contains(&mac), "eth0 kept its MAC: {eth}");
    assert!(!ns.ip("-4 addr show eth0").contains("10.213.1.2"));
    assert!(ns.ip("-d link show moat-tap0").contains("mtu 1400"));
    drop(fd);

    net.teardown();
    assert!(!record_path.exists());
    let links = ns.ip("link show");
    assert!(
        !links.contains(BRIDGE_NAME) && !links.contains(TAP_NAME),
        "{links}"
    );
    assert_eq!(ns.snapshot(), before);
}

#[test]
fn a_busy_netns_is_refused_untouched_and_a_record_is_replayed() {
    let ns = test_netns(2);
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = tmp.path();
    let record_path = dir.join(RECORD_FILE);
    ns.ip(&format!("link add {BRIDGE_NAME} type bridge"));
    let before = ns.ip("addr show");
    let e = PodNetwork::setup(&ns.path(), &record_path).unwrap_err();
    assert!(matches!(e, NetworkError::Busy(_)), "{e}");
    assert!(!record_path.exists());
    assert_eq!(ns.ip("addr show"), before);
    ns.ip(&format!("link del {BRIDGE_NAME}"));

    // A dead shim's pod: set up, never torn down, then cleaned up from the record alone.
    let net = PodNetwork::setup(&ns.path(), &record_path)
        .unwrap()
        .unwrap();
    drop(net);
    let what = cleanup_recorded(&record_path).expect("a record");
    assert!(what.contains("eth0"), "{what}");
    assert!(!ns.ip("link show").contains(BRIDGE_NAME));
    assert!(ns.ip("-4 addr show eth0").contains("10.213.2.2/24"));
    assert!(cleanup_recorded(&record_path).is_none());

    let e = PodNetwork::setup(Path::new("/run/netns/no-such-moat-ns"), &record_path).unwrap_err();
    assert!(e.to_string().contains("no-such-moat-ns"), "{e}");
    // The shim's own (host) namespace is never touched.
    let e = PodNetwork::setup(Path::new("/proc/self/ns/net"), &record_path).unwrap_err();
    assert!(matches!(e, NetworkError::HostNetns(_)), "{e}");
    assert!(!record_path.exists());
}
