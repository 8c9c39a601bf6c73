//! What the shim knows of one process (a container's init or an exec): containerd's view of
//! its state, stdio and exit.

use std::time::SystemTime;

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

use crate::pod::io::{ProcessIo, StdioPaths};

/// The exit status reported for a process whose VM died under it.
pub const VM_DIED_STATUS: u32 = 255;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal.
    pub status: u32,
    /// When the shim learnt it.
    pub at: SystemTime,
}

impl Exit {
    /// An exit now.
    pub fn now(status: u32) -> Exit {
        Exit {
            status,
            at: SystemTime::now(),
        }
    }

    /// `at` as a protobuf timestamp.
    pub fn timestamp(&self) -> Timestamp {
        timestamp(self.at)
    }
}

/// A protobuf timestamp of `t`.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// One process.
pub struct Process {
    /// Its pid in the guest (0 until created), as the agent reported it: for the agent only
    /// (e.g. the namespaces of a pod's sandbox), never reported to containerd, which gets
    /// the VMM's pid ([`super::state::State::host_pid`]).
    pub pid: u32,
    /// containerd's state.
    pub status: Status,
    /// Its stdio as containerd gave it.
    pub stdio: StdioPaths,
    /// The OCI process JSON of an exec not yet started.
    pub pending_exec: Option<String>,
    /// Its running stdio.
    pub io: Option<ProcessIo>,
    /// How it ended.
    pub exit: Option<Exit>,
}

impl Process {
    /// A process not yet running.
    pub fn new(stdio: StdioPaths) -> Process {
        Process {
            pid: 0,
            status: Status::CREATED,
            stdio,
            pending_exec: None,
            io: None,
            exit: None,
        }
    }

    /// Records the exit; false if one was already recorded (the first one wins).
    pub fn set_exit(&mut self, exit: Exit) -> bool {
        if self.exit.is_some() {
            return false;
        }
        self.exit = Some(exit);
        self.status = Status::STOPPED;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_exit_wins() {
        let mut p = Process::new(StdioPaths::default());
        assert_eq!(p.status, Status::CREATED);
        assert!(p.set_exit(Exit::now(3)));
        assert!(!p.set_exit(Exit::now(VM_DIED_STATUS)));
        assert_eq!(p.exit.unwrap().status, 3);
        assert_eq!(p.status, Status::STOPPED);
        let ts = timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::new(5, 7));
        assert_eq!((ts.seconds, ts.nanos), (5, 7));
    }
}
