//! moat-vmm confines itself before the guest runs, as Firecracker's jailer and per-thread
//! filters do (the whole contract: `vmm/SPECIFICATION.md`, "Jail"):
//! 1. [`supervisor`]: a new PID namespace (the VMM is PID 1 there; a capability-less parent
//!    waits for it and forwards stop signals);
//! 2. [`root`]: new mount, IPC, UTS and network namespaces and a `pivot_root` into the jail
//!    directory, which holds only read-only binds of what the VM uses;
//! 3. the VM is built (every file, device and socket opened);
//! 4. [`root::seal`] and [`creds::restrict`]: `/proc` gone, root read-only, capabilities cut
//!    to the virtio-fs set (none without a share), rlimits, not dumpable, `no_new_privs`;
//! 5. [`seccomp`]: each thread installs its own allow-list before the first guest
//!    instruction.
//!
//! Steps 1, 2 and 4's `seal` run only with a [`JailConfig`](crate::config::JailConfig);
//! credentials and seccomp always (seccomp unless the configuration turns it off).

pub mod creds;
pub mod root;
pub mod seccomp;
pub mod supervisor;

/// Why the VMM could not confine itself.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A system call failed.
    #[error("jail: {what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A capability operation failed.
    #[error("jail: cannot {what}: {why}")]
    Caps {
        /// What was being done.
        what: &'static str,
        /// The caps crate's error.
        why: String,
    },
    /// A seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
}

impl JailError {
    /// The error of the last failed libc call.
    pub(crate) fn os(what: impl Into<String>) -> Self {
        Self::io(what, std::io::Error::last_os_error())
    }

    /// An I/O error while `what`.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        JailError::Os {
            what: what.into(),
            source,
        }
    }

    /// A nix error while `what`.
    pub(crate) fn nix(what: impl Into<String>, e: nix::Error) -> Self {
        Self::io(what, std::io::Error::from_raw_os_error(e as i32))
    }
}
