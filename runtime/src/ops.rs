//! The operator's view of a pod, served by its shim.
//!
//! Each shim listens on `<pod dir>/ops.sock` ([`crate::pod::layout::PodDir::ops_socket`];
//! the pod dir is mode 0700, so only root reaches it) and answers a small HTTP/1.1 subset
//! ([`server`]; `curl --unix-socket` works):
//!
//! - `GET /status`: the pod, its VM and containers as JSON ([`status::PodStatus`]);
//! - `GET /metrics`: the pod's metrics in Prometheus text format 0.0.4 ([`metrics`],
//!   [`exposition`]);
//! - `CONNECT /console`: a raw byte stream to the guest's debug console (only for a pod
//!   started with `[debug] console = true`; every use is logged).
//!
//! The `moat` tool (`runtime/ctl/`) is the client ([`client`]).

pub mod client;
pub mod exposition;
pub mod http;
pub mod metrics;
pub mod server;
pub mod status;

/// The file name of a pod's ops socket in its state directory.
pub const OPS_SOCKET: &str = "ops.sock";
