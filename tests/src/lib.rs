//! moat's integration-test support, chiefly the nested-KVM **test host**.
//!
//! Real-VM tests wrap their body in [`on_kvm`] (or declare themselves with
//! [`kvm_test!`]): on a machine with hardware KVM the body runs directly;
//! elsewhere (PVM `/dev/kvm`, or none) the test binary re-runs that one test
//! inside an L1 Linux booted in qemu TCG with nested SVM (see [`testhost`]).
//!
//! The modules, by what they own:
//!
//! - [`testhost`]: the nested test host, KVM detection and [`on_kvm`];
//! - [`guest`]: booting a real guest kernel under moat-vmm (images, boots, the agent VM);
//! - [`agent`]: moat-agent without the shim (in host namespaces, or in a guest) and the
//!   container flows run against it;
//! - [`containerd`]: a private containerd, `ctr`, the CRI client, OCI images and the whole
//!   moat stack behind containerd;
//! - [`bench`](mod@bench): the benchmarks' measurements and reports;
//! - [`hostile`]: the host side of the hostile-guest test (attack tool output, canary);
//! - [`artifacts`] and [`process`]: where built binaries and images are; child processes.

pub mod agent;
pub mod artifacts;
pub mod bench;
pub mod containerd;
pub mod docker;
pub mod guest;
pub mod hostile;
pub mod jail;
pub mod ops;
pub mod process;
pub mod soak;
pub mod testhost;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use artifacts::{
    agent_initramfs_path, cargo_bin, kernel_path, target_dir, try_cargo_bin, vsock_echo_bin_path,
    workspace_root, BinMissing,
};
pub use testhost::kvm::{detect, KvmKind};
pub use testhost::on_kvm::{
    in_test_host, main_on_kvm, needs_test_host, on_kvm, on_kvm_retrying, on_kvm_with, test_path,
    GUEST_CRASH_STATUS, IN_TEST_HOST_ENV, TIMEOUT_ENV,
};
pub use testhost::retries;
pub use testhost::{RunOutput, TestHost, TestHostBuilder, TestHostError};

/// A string unique within this process (a counter plus the time), for
/// naming scratch files and directories (add the pid for cross-process).
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` when `deadline` passes first
/// (a deadline on a condition, for tests that would otherwise sleep and hope).
pub fn wait_until(what: &str, deadline: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + deadline;
    while !cond() {
        assert!(
            std::time::Instant::now() < end,
            "{what}: not so after {deadline:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
