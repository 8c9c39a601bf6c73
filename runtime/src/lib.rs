//! moat's containerd shim v2 as a library; `containerd-shim-moat-v2` (`src/main.rs`) is a
//! thin binary over it. Each pod runs in its own moat microVM (moat-vmm + moat-agent).
//!
//! - [`shim`]: containerd's `start` / `delete` verbs and the serving process.
//! - [`task`]: the Task API service, a thin translation of each RPC onto the pod and its
//!   containers, with one typed error ([`TaskError`]) mapped to ttrpc codes in one place.
//! - [`pod`]: a pod's life on the host: boot, containers' host side, spec translation,
//!   stdio, state layout, teardown (also after a dead shim).
//! - [`host`]: host resources a pod uses: mounts into the share, the network namespace,
//!   VM sizing.
//! - [`vm`]: the pod's `moat-vmm` process, started from a typed
//!   [`moat_vmm_config::VmConfig`], and the agent client.
//! - [`config`]: the shim's TOML configuration.
//! - [`guard`]: what the shim does against a hostile guest: deadlines, caps, rate limits and
//!   the escaping of guest text.

pub mod config;
pub mod error;
pub mod guard;
pub mod host;
pub mod logctx;
pub mod ops;
pub mod pod;
pub mod shim;
pub mod task;
pub mod util;
pub mod vm;

pub use config::{Config, DEFAULT_STATE_DIR};
pub use error::TaskError;
pub use pod::layout::PodDir;
pub use shim::RUNTIME_ID;
