//! moat's containerd shim v2 as a library: `containerd-shim-moat-v2` (`src/main.rs`) is a
//! thin binary over it. Each pod runs in its own moat microVM (moat-vmm + moat-agent); see
//! `runtime/README.md`.

pub mod config;
pub mod events;
pub mod io;
pub mod layout;
pub mod metrics;
pub mod mounts;
pub mod network;
pub mod options;
pub mod pod;
pub mod process;
pub mod service;
pub mod shim;
pub mod sizing;
pub mod spec;
pub mod vm;

pub use config::{Config, DEFAULT_STATE_DIR};
pub use layout::PodDir;
pub use shim::RUNTIME_ID;
