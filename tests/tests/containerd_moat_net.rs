//! Pod networking through containerd: a container of a moat pod is reachable at the IP its
//! pod's network namespace was given, as with runc.
//!
//! The test plays CNI: a network namespace (`ip netns add`) with a veth end as `eth0`
//! (10.231.7.2/24, default route via the host end 10.231.7.1). `ctr run --with-ns
//! network:/run/netns/<name>` hands it to the shim, which bridges eth0 to a TAP of the VM and
//! moves eth0's address and route into the guest. From the test host the container's busybox
//! httpd answers at 10.231.7.2; in the container, eth0 has that address and eth0's original
//! MAC; after kill/delete the namespace is as the test made it (no bridge, no tap, eth0's
//! MAC and address back) and nothing of moat is left. A namespace moat cannot use (it already
//! has a `moat-br0`) fails the create with that said, leaving nothing behind. When the shim
//! is killed, containerd's `delete` restores the namespace from the pod's record.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use moat_netlink::testing::TestNetns;
use moat_tests::containerd::moat_stack::{sigkill, with_stack, Stack};

/// How many fresh test hosts the flow may use when the guest crashes.
const ATTEMPTS: usize = 4;
const HOST_IP: &str = "10.231.7.1";
const POD_IP: &str = "10.231.7.2";
/// The page the container serves.
const PAGE: &str = "hello from a moat pod\n";
/// The size of the big file fetched to time the path.
const BIG_BYTES: usize = 2 << 20;

/// The pod's network namespace as CNI would leave it.
fn pod_netns(name: &str) -> TestNetns {
    TestNetns::new(
        name,
        &format!("{POD_IP}/24"),
        HOST_IP,
        1500,
        Some(&format!("{HOST_IP}/24")),
    )
}

/// `GET path` from the pod over HTTP/1.0, retried until `deadline`; the body.
fn http_get(path: &str, deadline: Instant) -> Vec<u8> {
    let addr: SocketAddr = format!("{POD_IP}:80").parse().unwrap();
    let mut last = String::new();
    while Instant::now() < deadline {
        let got = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: {POD_IP}\r\n\r\n")?;
            let mut all = Vec::new();
            s.read_to_end(&mut all)?;
            Ok(all)
        });
        match got {
            Ok(all) => {
                let split = all
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .unwrap_or_else(|| panic!("no HTTP header end in {all:?}"));
                let head = String::from_utf8_lossy(&all[..split]);
                assert!(
                    head.starts_with("HTTP/1.") && head.contains(" 200 "),
                    "{head}"
                );
                return all[split + 4..].to_vec();
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no answer from http://{POD_IP}{path}: {last}");
}

/// The container's script: the page, a big file, then busybox httpd in the foreground.
fn serve_script() -> String {
    format!(
        "mkdir -p /tmp/www && printf '{}' > /tmp/www/index.html \
         && dd if=/dev/zero of=/tmp/www/big bs=1024 count={} 2>/dev/null \
         && exec httpd -f -p 80 -h /tmp/www",
        PAGE.replace('\n', "\\n"),
        BIG_BYTES / 1024
    )
}

fn run_web(s: &Stack, ns: &TestNetns, id: &str) -> moat_tests::containerd::CtrOutput {
    let with_ns = format!("network:{}", ns.path().display());
    let script = serve_script();
    s.try_run_detached_with(&["--with-ns", &with_ns], id, &["sh", "-c", &script])
}

#[test]
fn pod_ip_reaches_the_container() {
    moat_tests::on_kvm_retrying("pod_ip_reaches_the_container", ATTEMPTS, || {
        let ns = pod_netns("moatnet1");
        let before = ns.snapshot();
        let mac = ns.eth0_mac();
        with_stack(|s| {
            let t = Instant::now();
            let o = run_web(s, &ns, "web");
            assert_eq!(o.code(), Some(0), "{}\n{}", o.stderr_str(), s.log());
            let page = http_get("/", Instant::now() + Duration::from_secs(120));
            println!(
                "ctr run -d → first HTTP answer from the pod IP: {:?}",
                t.elapsed()
            );
            assert_eq!(String::from_utf8_lossy(&page), PAGE);
            // What the network costs the pod's boot, as the shim logs it.
            for l in s.log().lines() {
                if l.contains("bridged to") || l.contains("route(s)") {
                    println!("shim: {}", l.trim());
                }
            }

            // The netns while the pod runs: eth0 is a bridge port with a new MAC, no address.
            let links = ns.ip("-d link show");
            assert!(
                links.contains("moat-br0") && links.contains("moat-tap0"),
                "{links}"
            );
            assert!(!ns.ip("-4 addr show eth0").contains(POD_IP));

            let o = s.ctr_ok(&[
                "task",
                "exec",
                "--exec-id",
                "ip",
                "web",
                "sh",
                "-c",
                "ip addr show eth0; ip route; cat /sys/class/net/eth0/mtu",
            ]);
            let out = o.stdout_str();
            println!("in the container:\n{out}");
            assert!(out.contains(&format!("inet {POD_IP}/24")), "{out}");
            assert!(out.contains(&format!("link/ether {mac}")), "{out}");
            assert!(
                out.contains(&format!("default via {HOST_IP} dev eth0")),
                "{out}"
            );

            let t = Instant::now();
            let big = http_get("/big", Instant::now() + Duration::from_secs(60));
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(big.len(), BIG_BYTES);
            assert!(big.iter().all(|&b| b == 0));
            println!(
                "pod → test host over HTTP: {} KiB in {secs:.2} s ({:.2} MiB/s)",
                BIG_BYTES / 1024,
                BIG_BYTES as f64 / (1 << 20) as f64 / secs
            );

            s.kill_and_delete("web", Duration::from_secs(30));
            s.assert_no_leftovers();
            assert_eq!(ns.snapshot(), before, "the pod netns was not restored");

            // A netns moat cannot use: refused, said why, nothing left (the bridge is ours).
            ns.ip("link add moat-br0 type bridge");
            let o = run_web(s, &ns, "busy");
            assert_ne!(o.code(), Some(0));
            assert!(
                o.stderr_str().contains("already has a moat-br0"),
                "{}",
                o.stderr_str()
            );
            let _ = s.ctr(&["container", "delete", "busy"]);
            ns.ip("link del moat-br0");
            s.assert_no_leftovers();
            assert_eq!(ns.snapshot(), before, "a refused create changed the netns");
        })
    });
}

/// `kill -9` of the shim of a networked pod: its VMM dies with it (the tap goes), and the
/// `containerd-shim-moat-v2 delete` containerd runs restores the namespace from the record.
#[test]
fn shim_killed_netns_restored() {
    moat_tests::on_kvm_retrying("shim_killed_netns_restored", ATTEMPTS, || {
        let ns = pod_netns("moatnet2");
        let before = ns.snapshot();
        with_stack(|s| {
            let o = run_web(s, &ns, "web2");
            assert_eq!(o.code(), Some(0), "{}\n{}", o.stderr_str(), s.log());
            let page = http_get("/", Instant::now() + Duration::from_secs(120));
            assert_eq!(String::from_utf8_lossy(&page), PAGE);
            assert!(s.pod_dir("web2").network_record().is_file());
            let (shim, _) = s.shim_process("web2").expect("the shim of web2");
            let killed = Instant::now();
            sigkill(shim);
            s.assert_no_leftovers();
            println!(
                "shim killed: pod and netns cleaned up after {:?}",
                killed.elapsed()
            );
            assert_eq!(
                ns.snapshot(),
                before,
                "the dead shim's netns was not restored"
            );
            s.ctr_ok(&["container", "delete", "web2"]);
        })
    });
}
