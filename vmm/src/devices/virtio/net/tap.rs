//! The TAP backend of virtio-net: a `/dev/net/tun` queue of a TAP interface, in
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` mode with a 12-byte vnet header and every offload
//! off, non-blocking.
//!
//! Two ways in: [`Tap::open`] attaches to (or, with CAP_NET_ADMIN, creates) the interface
//! by name; [`Tap::from_fd`] adopts a queue fd opened by someone else (the shim, in the
//! pod's network namespace), so the jailed VMM needs neither CAP_NET_ADMIN nor the netns.
//! [`check_tap_fd`] validates such an fd without changing it.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::RawFd;

use super::{NetBackend, VNET_HDR_LEN};

/// The clone device every TAP queue is opened from.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// Longest interface name (`IFNAMSIZ` 16 with the NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// The flags moat needs on a TAP queue.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
/// `/dev/net/tun` is character device 10:200.
const TUN_MAJOR: u32 = 10;
const TUN_MINOR: u32 = 200;

/// Errors opening or adopting a TAP queue.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened.
    #[error("tap {name}: cannot open {TUN_DEVICE}: {error}")]
    OpenTun {
        /// The interface asked for.
        name: String,
        /// The OS error (in the message, not a separate source: said once).
        error: io::Error,
    },
    /// A tun ioctl (or fcntl) failed.
    #[error("tap {name}: {call}: {error}{hint}")]
    Ioctl {
        /// The interface (or `fd N`).
        name: String,
        /// The call that failed.
        call: &'static str,
        /// The OS error (in the message, not a separate source: said once).
        error: io::Error,
        /// What usually causes it.
        hint: &'static str,
    },
    /// An inherited fd is not a usable TAP queue.
    #[error("fd {fd}: {why}")]
    NotATap {
        /// The fd number.
        fd: RawFd,
        /// What is wrong with it.
        why: String,
    },
}

/// `struct ifreq` as the tun ioctls use it: the name and the flags word.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_int) -> IfReq {
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

    fn name(&self) -> String {
        CStr::from_bytes_until_nul(&self.name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
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

/// Runs a tun ioctl whose argument is a pointer.
fn ioctl_ptr<T>(fd: RawFd, request: libc::Ioctl, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a live, exclusively borrowed value of the type the request expects
    // (checked at each call site); the kernel reads or writes only that object.
    let rc = unsafe { libc::ioctl(fd, request, arg as *mut T) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Checks that `fd` is an open `/dev/net/tun` queue attached to a TAP interface with
/// `IFF_NO_PI` and `IFF_VNET_HDR`; returns the interface name. Changes nothing.
pub fn check_tap_fd(fd: RawFd) -> Result<String, TapError> {
    let not_tap = |why: String| TapError::NotATap { fd, why };
    // SAFETY: fstat only writes the stat buffer we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; an invalid fd is reported as EBADF.
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
    let mut req = IfReq::new("", 0);
    ioctl_ptr(fd, libc::TUNGETIFF, &mut req).map_err(|e| {
        not_tap(format!(
            "not attached to an interface (TUNGETIFF: {e}); open it with TUNSETIFF first"
        ))
    })?;
    let flags = libc::c_int::from(req.flags) & 0xffff;
    if flags & TAP_FLAGS != TAP_FLAGS {
        return Err(not_tap(format!(
            "interface {} has flags {flags:#x}; moat needs IFF_TAP|IFF_NO_PI|IFF_VNET_HDR \
             ({TAP_FLAGS:#x})",
            req.name()
        )));
    }
    Ok(req.name())
}

/// One queue of a TAP interface.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Attaches to TAP interface `name` (creating a transient one if it does not exist and
    /// the caller has CAP_NET_ADMIN) and configures the queue.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|error| TapError::OpenTun {
                name: name.to_string(),
                error,
            })?;
        let fd = OwnedFd::from(file);
        let mut req = IfReq::new(name, TAP_FLAGS);
        ioctl_ptr(fd.as_raw_fd(), libc::TUNSETIFF, &mut req).map_err(|error| TapError::Ioctl {
            name: name.to_string(),
            call: "TUNSETIFF",
            error,
            hint: " (EPERM: the interface is missing or owned by another user and moat \
                       lacks CAP_NET_ADMIN; EBUSY: another process has it open; EINVAL: it \
                       is not a TAP interface)",
        })?;
        let tap = Tap {
            fd,
            name: req.name(),
        };
        tap.configure()?;
        Ok(tap)
    }

    /// Adopts an inherited TAP queue fd (see [`check_tap_fd`]); makes it non-blocking and
    /// configures it.
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, TapError> {
        let name = check_tap_fd(fd.as_raw_fd())?;
        let raw = fd.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL on a valid fd we own; no pointers involved.
        let ok = unsafe {
            let flags = libc::fcntl(raw, libc::F_GETFL);
            flags >= 0 && libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) >= 0
        };
        if !ok {
            return Err(TapError::Ioctl {
                name,
                call: "fcntl(O_NONBLOCK)",
                error: io::Error::last_os_error(),
                hint: "",
            });
        }
        let tap = Tap { fd, name };
        tap.configure()?;
        Ok(tap)
    }

    /// Adopts inherited fd number `fd`.
    ///
    /// # Safety
    /// `fd` must be open and owned by nobody else in this process: the tap closes it.
    pub unsafe fn from_raw_fd(fd: RawFd) -> Result<Tap, TapError> {
        check_tap_fd(fd)?;
        // SAFETY: the caller hands over ownership; check_tap_fd confirmed it is open.
        Tap::from_fd(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Sets the 12-byte vnet header and turns every offload off (a previous owner of an
    /// inherited fd may have enabled some; the guest is offered none).
    fn configure(&self) -> Result<(), TapError> {
        let err = |call, error| TapError::Ioctl {
            name: self.name.clone(),
            call,
            error,
            hint: "",
        };
        let mut len = VNET_HDR_LEN as libc::c_int;
        ioctl_ptr(self.fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &mut len)
            .map_err(|e| err("TUNSETVNETHDRSZ", e))?;
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0
        {
            return Err(err("TUNSETOFFLOAD", io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The vnet header length the kernel uses on this queue (TUNGETVNETHDRSZ).
    pub fn vnet_hdr_len(&self) -> io::Result<usize> {
        let mut len: libc::c_int = 0;
        ioctl_ptr(self.fd.as_raw_fd(), libc::TUNGETVNETHDRSZ, &mut len)?;
        usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
    }

    /// Gives up the queue fd (e.g. to hand it to a child process).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

/// Retries `op` while it fails with EINTR; returns the byte count.
fn retry_eintr(mut op: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = op();
        if n >= 0 {
            // n >= 0 was just checked.
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl NetBackend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: read(2) writes at most `buf.len()` bytes into `buf`.
        retry_eintr(|| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: write(2) reads at most `frame.len()` bytes from `frame`.
        let n = retry_eintr(|| unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) })?;
        if n != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write to the tap: {n} of {} bytes", frame.len()),
            ));
        }
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn describe(&self) -> String {
        format!("tap:{}", self.name)
    }
}

#[cfg(test)]
#[path = "tap_tests.rs"]
mod tests;
