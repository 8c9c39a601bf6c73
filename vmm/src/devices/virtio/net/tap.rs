//! The TAP backend of virtio-net: a `/dev/net/tun` queue of a TAP interface, in
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` mode with a 12-byte vnet header and every offload
//! off, non-blocking.
//!
//! Two ways in: [`Tap::open`] attaches to (or, with CAP_NET_ADMIN, creates) the interface
//! by name; [`Tap::from_fd`] adopts a queue fd opened by someone else (the shim, in the
//! pod's network namespace), so the jailed VMM needs neither CAP_NET_ADMIN nor the netns.
//! [`check_tap_fd`] validates such an fd without changing it.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::RawFd;

pub use moat_vmm_config::tap::{check_tap_fd, valid_ifname, TUN_DEVICE};
use moat_vmm_config::tap::{IfReq, NotATap, TAP_FLAGS};

use super::{NetBackend, VNET_HDR_LEN};

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
    #[error(transparent)]
    NotATap(#[from] NotATap),
}

/// Runs a tun ioctl whose argument is a pointer to a C `int`.
fn ioctl_int(fd: RawFd, request: libc::Ioctl, arg: &mut libc::c_int) -> io::Result<()> {
    // SAFETY: the requests passed (TUNSETVNETHDRSZ, TUNGETVNETHDRSZ) read or write one
    // `int`, and `arg` is a live, exclusively borrowed `c_int`.
    let rc = unsafe { libc::ioctl(fd, request, arg as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
        req.set_iff(fd.as_raw_fd())
            .map_err(|error| TapError::Ioctl {
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
        ioctl_int(self.fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &mut len)
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
        ioctl_int(self.fd.as_raw_fd(), libc::TUNGETVNETHDRSZ, &mut len)?;
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
mod tests;
