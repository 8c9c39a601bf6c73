//! What a TAP backend must be, checked without changing it: interface names, and inherited
//! `/dev/net/tun` queue fds (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, attached to an interface).
//! The VMM's TAP backend opens and configures queues with the same [`IfReq`].

use std::ffi::CStr;
use std::io;
use std::os::unix::io::RawFd;

use crate::limits::MAX_IFNAME_LEN;

/// The clone device every TAP queue is opened from.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// The flags moat needs on a TAP queue.
pub const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
/// `/dev/net/tun` is character device 10:200.
const TUN_MAJOR: u32 = 10;
const TUN_MINOR: u32 = 200;

/// An fd that is not a TAP queue moat can use.
#[derive(Debug, thiserror::Error)]
#[error("fd {fd}: {why}")]
pub struct NotATap {
    /// The fd number.
    pub fd: RawFd,
    /// What is wrong with it.
    pub why: String,
}

/// `struct ifreq` as the tun ioctls use it: the name and the flags word.
#[repr(C)]
pub struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    /// A request for interface `name` (cut to [`MAX_IFNAME_LEN`] bytes) with `flags`.
    pub fn new(name: &str, flags: libc::c_int) -> IfReq {
        let mut req = IfReq {
            name: [0; 16],
            // The TAP flags all fit in the kernel's 16-bit field.
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        let n = name.len().min(MAX_IFNAME_LEN);
        req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        req
    }

    /// The interface name (as the kernel filled it in, after an ioctl).
    pub fn name(&self) -> String {
        CStr::from_bytes_until_nul(&self.name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The flags word (`IFF_*`).
    pub fn flags(&self) -> libc::c_int {
        libc::c_int::from(self.flags) & 0xffff
    }

    /// `TUNSETIFF`: attaches the tun queue `fd` to this interface (creating it if allowed);
    /// the kernel writes the final name back.
    pub fn set_iff(&mut self, fd: RawFd) -> io::Result<()> {
        self.ioctl(fd, libc::TUNSETIFF)
    }

    /// `TUNGETIFF`: the interface the tun queue `fd` is attached to, with its flags.
    pub fn get_iff(fd: RawFd) -> io::Result<IfReq> {
        let mut req = IfReq::new("", 0);
        req.ioctl(fd, libc::TUNGETIFF)?;
        Ok(req)
    }

    /// Runs a tun ioctl that takes a `struct ifreq` pointer.
    fn ioctl(&mut self, fd: RawFd, request: libc::Ioctl) -> io::Result<()> {
        // SAFETY: TUNSETIFF and TUNGETIFF (the only requests passed) read and write one
        // `struct ifreq`, which `IfReq` lays out (repr(C), 40 bytes); `self` is exclusively
        // borrowed for the call.
        let rc = unsafe { libc::ioctl(fd, request, self as *mut IfReq) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Whether `name` is a valid Linux interface name (1..=15 bytes, not `.`/`..`, no `/`,
/// `:` or whitespace).
pub fn valid_ifname(name: &str) -> bool {
    (1..=MAX_IFNAME_LEN).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// Checks that `fd` is an open `/dev/net/tun` queue attached to a TAP interface with
/// `IFF_NO_PI` and `IFF_VNET_HDR`; returns the interface name. Changes nothing.
pub fn check_tap_fd(fd: RawFd) -> Result<String, NotATap> {
    let not_tap = |why: String| NotATap { fd, why };
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat only writes the stat buffer we pass; an invalid fd is reported as EBADF.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(not_tap(format!(
            "not an open file descriptor ({})",
            io::Error::last_os_error()
        )));
    }
    let is_tun = st.st_mode & libc::S_IFMT == libc::S_IFCHR
        && libc::major(st.st_rdev) == TUN_MAJOR
        && libc::minor(st.st_rdev) == TUN_MINOR;
    if !is_tun {
        return Err(not_tap(format!("not a {TUN_DEVICE} file descriptor")));
    }
    let req = IfReq::get_iff(fd).map_err(|e| {
        not_tap(format!(
            "not attached to an interface (TUNGETIFF: {e}); open it with TUNSETIFF first"
        ))
    })?;
    let flags = req.flags();
    if flags & TAP_FLAGS != TAP_FLAGS {
        return Err(not_tap(format!(
            "interface {} has flags {flags:#x}; moat needs IFF_TAP|IFF_NO_PI|IFF_VNET_HDR \
             ({TAP_FLAGS:#x})",
            req.name()
        )));
    }
    Ok(req.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        for good in ["tap0", "a", "moat-pod-123456"] {
            assert!(valid_ifname(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "eth0:1",
            "has space",
            "sixteen-bytes-xx",
        ] {
            assert!(!valid_ifname(bad), "{bad}");
        }
    }

    #[test]
    fn fds_that_are_not_tap_queues_are_refused_with_a_reason() {
        let null = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&null);
        let err = check_tap_fd(fd).unwrap_err().to_string();
        assert_eq!(err, format!("fd {fd}: not a /dev/net/tun file descriptor"));
        let err = check_tap_fd(987_654).unwrap_err().to_string();
        assert!(
            err.starts_with("fd 987654: not an open file descriptor"),
            "{err}"
        );
    }
}
