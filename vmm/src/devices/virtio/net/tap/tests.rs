//! The TAP backend against the real `/dev/net/tun`, each test in a private network
//! namespace of its own thread (root needed, as for the VMM's other host-resource tests on
//! this machine; a missing permission fails the test, it never skips).

use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// Runs `f` on a thread moved into a fresh network namespace (so interface names and
/// addresses cannot collide with the host's or another test's).
fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare(CLONE_NEWNET) changes only this thread's network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) failed (the tap tests need root): {}",
            io::Error::last_os_error()
        );
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Opens /dev/net/tun and attaches it to TAP `name` with `flags` (no moat configuration).
fn raw_tun(name: &str, flags: libc::c_int) -> OwnedFd {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .expect("open /dev/net/tun");
    let fd = OwnedFd::from(file);
    if flags != 0 {
        let mut req = IfReq::new(name, flags);
        req.set_iff(fd.as_raw_fd()).expect("TUNSETIFF");
    }
    fd
}

#[test]
fn open_by_name_sets_a_12_byte_vnet_header_and_no_pi() {
    in_private_netns(|| {
        let tap = Tap::open("moattest0").unwrap();
        assert_eq!(tap.name(), "moattest0");
        assert_eq!(tap.vnet_hdr_len().unwrap(), VNET_HDR_LEN);
        assert_eq!(check_tap_fd(tap.raw_fd()).unwrap(), "moattest0");
        assert_eq!(tap.describe(), "tap:moattest0");
    });
}

#[test]
fn inherited_fds_are_adopted_or_refused_with_a_reason() {
    in_private_netns(|| {
        let fd = Tap::open("moattest1").unwrap().into_fd();
        let tap = Tap::from_fd(fd).unwrap();
        assert_eq!(tap.name(), "moattest1");
        assert_eq!(tap.vnet_hdr_len().unwrap(), VNET_HDR_LEN);

        let no_vnet = raw_tun("moattest2", libc::IFF_TAP | libc::IFF_NO_PI);
        let err = Tap::from_fd(no_vnet).unwrap_err().to_string();
        assert!(err.contains("IFF_VNET_HDR"), "{err}");
        let tun = raw_tun(
            "moattest3",
            libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
        );
        assert!(check_tap_fd(tun.as_raw_fd()).is_err());
        let unattached = raw_tun("", 0);
        let err = check_tap_fd(unattached.as_raw_fd())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not attached"), "{err}");
    });
    let null = std::fs::File::open("/dev/null").unwrap();
    let err = check_tap_fd(null.as_raw_fd()).unwrap_err().to_string();
    assert!(err.contains("not a /dev/net/tun"), "{err}");
    let err = check_tap_fd(987_654).unwrap_err().to_string();
    assert!(err.contains("not an open file descriptor"), "{err}");
}

/// An ARP request written into the tap (behind a zero vnet header) is answered by the
/// host kernel, and the reply comes back out with a vnet header in front.
#[test]
fn frames_cross_the_tap_with_the_vnet_header() {
    in_private_netns(|| {
        let mut tap = Tap::open("moattest4").unwrap();
        ip("addr add 10.199.0.1/24 dev moattest4");
        ip("link set moattest4 up");
        let guest_mac = [0x02, 0, 0, 0, 0, 0x02];
        let mut req = vec![0u8; VNET_HDR_LEN];
        req.extend([0xff; 6]); // broadcast
        req.extend(guest_mac);
        req.extend([0x08, 0x06]); // ARP
        req.extend([0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
        req.extend(guest_mac);
        req.extend([10, 199, 0, 2]);
        req.extend([0; 6]);
        req.extend([10, 199, 0, 1]);
        tap.send(&req).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; VNET_HDR_LEN + super::super::MAX_FRAME_LEN];
        loop {
            assert!(Instant::now() < deadline, "no ARP reply from the host");
            let n = match tap.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => panic!("tap read: {e}"),
            };
            let f = &buf[VNET_HDR_LEN..n];
            // Skip IPv6 chatter and anything else that is not our ARP reply.
            if f.len() < 42 || f[12..14] != [0x08, 0x06] || f[20..22] != [0, 2] {
                continue;
            }
            assert_eq!(&buf[..10], &[0u8; 10], "offload flags in the vnet header");
            assert_eq!(&f[..6], &guest_mac);
            assert_eq!(&f[28..32], &[10, 199, 0, 1]);
            break;
        }
    });
}
