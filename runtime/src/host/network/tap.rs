//! Creating the pod's TAP queue: `/dev/net/tun` in `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` mode,
//! what `moat-vmm --net fd=N` adopts. The interface is created in the network namespace of
//! the calling thread and lives as long as a queue fd is open (not persistent): when the VMM
//! and the shim have both closed theirs, the kernel removes it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags (the union's first
/// member), padded to the kernel's 40 bytes.
#[repr(C)]
struct TunRequest {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens a TAP queue named `name` (close-on-exec; the VMM's spawn clears that for its copy).
pub fn create(name: &str) -> std::io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other(format!("bad tap name {name:?}")));
    }
    let path = CString::new("/dev/net/tun").expect("no NUL");
    // SAFETY: open(2) of a NUL-terminated path; the fd is owned below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = TunRequest {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads (and writes back the name of) a struct ifreq-sized buffer.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut TunRequest) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Clears close-on-exec on `fd`: for the child between fork and exec (async-signal-safe).
pub fn inheritable(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl(2) with integer arguments.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_the_kernel_layout() {
        assert_eq!(size_of::<TunRequest>(), 40);
        assert!(create("").is_err());
        assert!(create("a-name-far-too-long").is_err());
    }
}
