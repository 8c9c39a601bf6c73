//! virtio-net seen by the real guest kernel, over a TAP interface of the host (the test
//! host here): the guest configures eth0, pings the host side and moves 4 MiB each way over
//! TCP (busybox nc), byte-exact, checked on both sides with SHA-256. Once with
//! `--net tap=NAME` (a persistent tap made with `ip tuntap`) and default MTU, once with
//! `--net fd=N` (the test opens the tap and hands the queue fd to moat-vmm, as the shim
//! will) and a 9000-byte MTU announced with VIRTIO_NET_F_MTU, so RX uses chained big
//! buffers; that VMM runs without CAP_NET_ADMIN, as a jailed one would.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_tests::guest::{boot_moat, test_initramfs_with, BootRun, BootSpec, GuestImage};
use moat_vmm::devices::virtio::net::Tap;
use tempfile::TempDir;

const HOST_IP: &str = "10.77.0.1";
const GUEST_IP: &str = "10.77.0.2";
const TO_GUEST_PORT: u16 = 5001;
const FROM_GUEST_PORT: u16 = 5002;
const TRANSFER_BYTES: usize = 4 << 20;
/// Budget for the guest's whole run (boot, ping, both transfers) in the nested test host.
const GUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The guest side, run by the test /init as `script /bin/net-test.sh GUEST_IP HOST_IP`.
const GUEST_SCRIPT: &str = r#"
/bin/busybox --install -s /bin
export PATH=/bin
guest=$1 host=$2
ip link set lo up
ip link set eth0 up
ip addr add "$guest/24" dev eth0
echo "net_mac=$(cat /sys/class/net/eth0/address)"
echo "net_mtu=$(cat /sys/class/net/eth0/mtu)"
ping -c 5 -W 10 "$host" > /tmp/ping 2>&1; echo "net_ping=$?"
echo "net_ping_rtt=$(grep round-trip /tmp/ping)"
nc -l -p 5001 < /dev/null > /tmp/h2g; echo "net_h2g_nc=$?"
echo "net_h2g_sha256=$(sha256sum /tmp/h2g | cut -d' ' -f1)"
dd if=/dev/urandom of=/tmp/g2h bs=1024 count=4096 2>/dev/null
echo "net_g2h_sha256=$(sha256sum /tmp/g2h | cut -d' ' -f1)"
nc "$host" 5002 < /tmp/g2h; echo "net_g2h_nc=$?"
echo "net_stats=$(cat /sys/class/net/eth0/statistics/rx_packets) rx, $(cat /sys/class/net/eth0/statistics/tx_packets) tx, $(cat /sys/class/net/eth0/statistics/rx_length_errors) rx_length_errors"
"#;

/// The guest image: the default busybox initramfs plus the script above.
fn image() -> GuestImage {
    let kernel = moat_tests::kernel_path("guest").unwrap_or_else(|e| panic!("guest kernel: {e}"));
    let initrd = test_initramfs_with(
        &moat_tests::target_dir().join("moat-test-images"),
        &[("bin/net-test.sh", GUEST_SCRIPT.as_bytes().to_vec())],
    )
    .unwrap_or_else(|e| panic!("initramfs: {e}"));
    GuestImage { kernel, initrd }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Gives the host end of tap `name` the host address (and `mtu`) and brings it up.
fn configure_host_side(name: &str, mtu: u16) {
    ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", name]);
    ip(&["link", "set", name, "mtu", &mtu.to_string(), "up"]);
}

fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("feed sha256sum");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// 4 MiB of xorshift bytes (every byte value, no repeating blocks).
fn payload() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..TRANSFER_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// What one host-side transfer saw: SHA-256 of the bytes and how long it took.
struct Transfer {
    sha256: String,
    bytes: usize,
    elapsed: Duration,
}

/// Sends the payload to the guest's listener (retrying until it listens), then waits for
/// the guest to close.
fn send_to_guest(deadline: Instant) -> JoinHandle<Result<Transfer, String>> {
    std::thread::spawn(move || {
        let data = payload();
        let sha256 = sha256_hex(&data);
        let addr: SocketAddr = format!("{GUEST_IP}:{TO_GUEST_PORT}").parse().unwrap();
        let mut stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => return Err(format!("connect to the guest: {e}")),
            }
        };
        let start = Instant::now();
        stream
            .set_read_timeout(Some(GUEST_TIMEOUT))
            .map_err(|e| e.to_string())?;
        stream.write_all(&data).map_err(|e| format!("send: {e}"))?;
        stream
            .shutdown(Shutdown::Write)
            .map_err(|e| e.to_string())?;
        let mut rest = Vec::new();
        stream
            .read_to_end(&mut rest)
            .map_err(|e| format!("wait for the guest's close: {e}"))?;
        Ok(Transfer {
            sha256,
            bytes: data.len(),
            elapsed: start.elapsed(),
        })
    })
}

/// Accepts the guest's connection and reads everything it sends.
fn receive_from_guest(
    listener: TcpListener,
    deadline: Instant,
) -> JoinHandle<Result<Transfer, String>> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => return Err(format!("no connection from the guest: {e}")),
            }
        };
        let start = Instant::now();
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(GUEST_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut data = Vec::new();
        stream
            .read_to_end(&mut data)
            .map_err(|e| format!("receive: {e}"))?;
        Ok(Transfer {
            sha256: sha256_hex(&data),
            bytes: data.len(),
            elapsed: start.elapsed(),
        })
    })
}

/// The value of `key=` on the guest console.
fn console_value<'a>(run: &'a BootRun, key: &str) -> Option<&'a str> {
    run.serial
        .lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
}

fn mib_per_s(t: &Transfer) -> f64 {
    t.bytes as f64 / (1 << 20) as f64 / t.elapsed.as_secs_f64().max(1e-6)
}

/// Boots the guest with `net_arg` (the host side of its tap already configured), runs both
/// transfers against it and checks everything; `Err` only when the guest crashed.
fn run_guest(
    vmm: &Path,
    image: &GuestImage,
    net_arg: &str,
    mac: &str,
    mtu: u16,
) -> Result<(), String> {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    let listener = TcpListener::bind((HOST_IP, FROM_GUEST_PORT)).expect("bind host listener");
    let receiver = receive_from_guest(listener, deadline);
    let sender = send_to_guest(deadline);
    let mut spec = BootSpec::new(image.clone());
    spec.append = format!("-- script /bin/net-test.sh {GUEST_IP} {HOST_IP}");
    spec.extra_args = vec![format!("--net={net_arg}")];
    spec.timeout = GUEST_TIMEOUT;
    let run = boot_moat(vmm, &spec).expect("boot");
    if run.status == Some(4) {
        return Err(format!("guest crash: {}", run.describe()));
    }
    let d = run.describe();
    let sent = sender.join().expect("sender thread");
    let received = receiver.join().expect("receiver thread");
    assert_eq!(run.status, Some(0), "{d}");
    assert_eq!(console_value(&run, "net_mac"), Some(mac), "{d}");
    assert_eq!(
        console_value(&run, "net_mtu"),
        Some(mtu.to_string().as_str()),
        "{d}"
    );
    assert_eq!(console_value(&run, "net_ping"), Some("0"), "{d}");
    let sent = sent.unwrap_or_else(|e| panic!("host → guest: {e}\n{d}"));
    let received = received.unwrap_or_else(|e| panic!("guest → host: {e}\n{d}"));
    assert_eq!(console_value(&run, "net_h2g_nc"), Some("0"), "{d}");
    assert_eq!(
        console_value(&run, "net_h2g_sha256"),
        Some(sent.sha256.as_str()),
        "host → guest bytes differ\n{d}"
    );
    assert_eq!(console_value(&run, "net_g2h_nc"), Some("0"), "{d}");
    assert_eq!(received.bytes, TRANSFER_BYTES, "{d}");
    assert_eq!(
        console_value(&run, "net_g2h_sha256"),
        Some(received.sha256.as_str()),
        "guest → host bytes differ\n{d}"
    );
    let net = &run.metrics["net"][0];
    for bad in ["rx_bad_chains", "tx_bad_chains", "tx_dropped"] {
        assert_eq!(net[bad].as_u64(), Some(0), "{bad}: {d}");
    }
    assert!(
        net["rx_bytes"].as_u64() >= Some(TRANSFER_BYTES as u64),
        "{d}"
    );
    assert!(
        net["tx_bytes"].as_u64() >= Some(TRANSFER_BYTES as u64),
        "{d}"
    );
    println!(
        "virtio-net {net_arg} (MTU {mtu}): host → guest {:.2} MiB/s, guest → host {:.2} MiB/s; \
         guest ping {}; guest {}; VMM counters {net}",
        mib_per_s(&sent),
        mib_per_s(&received),
        console_value(&run, "net_ping_rtt").unwrap_or("?"),
        console_value(&run, "net_stats").unwrap_or("?"),
    );
    Ok(())
}

/// Drops CAP_NET_ADMIN from the bounding set (so root gets none after exec).
const DROP_NET_ADMIN: &str = "--bounding-set=-net_admin";

/// A wrapper running moat-vmm without CAP_NET_ADMIN (checked: `ip tuntap add` fails
/// under the same setpriv).
fn vmm_without_net_admin() -> (TempDir, PathBuf) {
    let out = Command::new("setpriv")
        .args([
            DROP_NET_ADMIN,
            "--",
            "ip",
            "tuntap",
            "add",
            "dev",
            "moatnocap",
            "mode",
            "tap",
        ])
        .output()
        .expect("run setpriv");
    assert!(
        !out.status.success(),
        "setpriv {DROP_NET_ADMIN} did not take CAP_NET_ADMIN away"
    );
    let dir = tempfile::Builder::new()
        .prefix("moat-net-")
        .tempdir()
        .expect("scratch dir");
    let wrapper = dir.path().join("moat-vmm-no-net-admin");
    let vmm = moat_tests::cargo_bin("moat-vmm");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv {DROP_NET_ADMIN} -- '{}' \"$@\"\n",
            vmm.display()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (dir, wrapper)
}

#[test]
fn virtio_net_over_a_named_tap() {
    let image = image();
    moat_tests::on_kvm_retrying("virtio_net_over_a_named_tap", 3, || {
        let tap = "moatnet0";
        // A fresh persistent tap (a retry in the same test host would find the old one).
        let _ = Command::new("ip").args(["link", "del", tap]).output();
        ip(&["tuntap", "add", "dev", tap, "mode", "tap"]);
        configure_host_side(tap, 1500);
        let mac = "02:6d:6f:61:74:02";
        let vmm = moat_tests::cargo_bin("moat-vmm");
        let result = run_guest(&vmm, &image, &format!("tap={tap},mac={mac}"), mac, 1500);
        ip(&["link", "del", tap]);
        result
    });
}

#[test]
fn virtio_net_over_an_inherited_tap_fd_with_jumbo_mtu() {
    let image = image();
    moat_tests::on_kvm_retrying(
        "virtio_net_over_an_inherited_tap_fd_with_jumbo_mtu",
        3,
        || {
            // The shim's way: open the queue here, hand moat-vmm the fd.
            let tap = Tap::open("moatnet1").unwrap_or_else(|e| panic!("open tap: {e}"));
            let fd = tap.into_fd();
            // SAFETY: fcntl on an fd this test owns; clears close-on-exec so moat-vmm inherits it.
            let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
            assert_eq!(rc, 0, "clear FD_CLOEXEC");
            configure_host_side("moatnet1", 9000);
            let mac = "02:6d:6f:61:74:03";
            let arg = format!("fd={},mac={mac},mtu=9000", fd.as_raw_fd());
            // The tap (non-persistent) goes away when `fd` and the VMM's copy are closed.
            let (_scratch, vmm) = vmm_without_net_admin();
            run_guest(&vmm, &image, &arg, mac, 9000)
        },
    );
}
