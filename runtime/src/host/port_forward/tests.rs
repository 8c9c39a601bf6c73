//! Needs root (network namespaces, iptables): the suite runs as root.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use super::*;

/// A fresh network namespace with loopback up; kept open by the returned descriptor.
fn namespace() -> (OwnedFd, PathBuf) {
    let ((), fd) = netns::with_thread_in(None, |_| ()).unwrap();
    let fd = fd.unwrap();
    let path = netns::fd_path(&fd);
    netns::run_in(&path, || {
        let mut nl = moat_netlink::Netlink::open().unwrap();
        let lo = nl.link_by_name("lo").unwrap().unwrap();
        let up = moat_netlink::LinkChange {
            up: Some(true),
            ..Default::default()
        };
        nl.set_link(lo.index, &up).unwrap();
    })
    .unwrap();
    (fd, path)
}

/// An opener whose "guest" is a unix pair: the port asked for is written to the guest end,
/// then it echoes upper-cased; port 7 is refused.
fn fake_guest() -> Box<Opener> {
    Box::new(|port, _deadline| {
        if port == 7 {
            return Err(StdioOpenError::PortRefused {
                port,
                message: "nothing listens".into(),
            });
        }
        let (host, mut guest) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut req = Vec::new();
            guest.read_to_end(&mut req).unwrap();
            let mut reply = format!("port {port}: ").into_bytes();
            reply.extend(req.to_ascii_uppercase());
            guest.write_all(&reply).unwrap();
        });
        Ok(host)
    })
}

/// Dials `127.0.0.1:port` inside `ns`, sends `req`, returns all it got back.
fn dial(ns: &Path, port: u16, req: &[u8]) -> std::io::Result<Vec<u8>> {
    let req = req.to_vec();
    netns::run_in(ns, move || {
        let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        c.write_all(&req)?;
        c.shutdown(Shutdown::Write)?;
        let mut back = Vec::new();
        c.read_to_end(&mut back)?;
        Ok(back)
    })
    .unwrap()
}

#[test]
fn loopback_connections_reach_the_guest_port_dialled_and_the_rule_goes_at_stop() {
    let (_ns, path) = namespace();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join(RECORD_FILE);
    let fwd = PortForward::start("pod", &path, &record, fake_guest()).unwrap();
    let rec: ForwardRecord = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(rec.listen_port, fwd.listen_port());
    assert_eq!(dial(&path, 8080, b"get /").unwrap(), b"port 8080: GET /");
    assert_eq!(dial(&path, 22, b"x").unwrap(), b"port 22: X");
    // Refused by the guest: the connection is closed without a byte.
    assert_eq!(dial(&path, 7, b"x").unwrap_or_default(), b"");
    fwd.stop();
    assert!(!record.exists());
    assert!(rule::delete(&path, rec.listen_port).is_ok());
    // Without the rule nothing listens on 8080 in the namespace.
    assert!(dial(&path, 8080, b"x").is_err());
}

#[test]
fn a_dead_shims_rule_is_removed_by_its_record() {
    let (_ns, fd_path) = namespace();
    let dir = tempfile::tempdir().unwrap();
    // Named by a path of its own, as CNI's are (a dead shim's own namespace went with it).
    let path = dir.path().join("netns");
    std::fs::write(&path, b"").unwrap();
    nix::mount::mount(
        Some(&fd_path),
        &path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let record = dir.path().join(RECORD_FILE);
    let fwd = PortForward::start("pod", &path, &record, fake_guest()).unwrap();
    let port = fwd.listen_port();
    // As if the shim died: the rule stays, the record tells `delete` about it.
    std::mem::forget(fwd);
    let what = cleanup_recorded(&record).unwrap();
    assert!(what.contains("removed"), "{what}");
    assert!(!record.exists());
    assert_eq!(cleanup_recorded(&record), None);
    // Gone: deleting it again finds nothing (`-C` fails first).
    assert!(rule::iptables(&path, "-C", port).is_err());
    nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH).unwrap();
}

#[test]
fn streams_beyond_the_limit_are_closed_and_the_others_keep_working() {
    let (_ns, path) = namespace();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join(RECORD_FILE);
    // A guest that never answers: each stream stays open.
    let (held_tx, held_rx) = std::sync::mpsc::channel::<UnixStream>();
    let held_tx = Mutex::new(held_tx);
    let opener: Box<Opener> = Box::new(move |_port, _deadline| {
        let (host, guest) = UnixStream::pair().unwrap();
        let _ = lock(&held_tx).send(guest);
        Ok(host)
    });
    let fwd = PortForward::start("pod", &path, &record, opener).unwrap();
    let conns: Vec<TcpStream> = netns::run_in(&path, || {
        (0..MAX_STREAMS + 3)
            .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, 9000)).unwrap())
            .collect()
    })
    .unwrap();
    let held: Vec<UnixStream> = (0..MAX_STREAMS).map(|_| held_rx.recv().unwrap()).collect();
    // The extra connections are closed by the host without reaching the guest.
    for mut c in conns.into_iter().skip(MAX_STREAMS) {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).unwrap_or(0), 0);
    }
    assert!(
        held_rx.try_recv().is_err(),
        "more than {MAX_STREAMS} streams opened"
    );
    fwd.stop();
    drop(held);
}
