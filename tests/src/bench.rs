//! What the benchmark binaries measure and how they report it: [`pod`] is `moat-bench pod`
//! (the whole stack through containerd against runc); [`ops`] is `moat-bench ops` (the CPU
//! the metrics path costs a pod); [`docker`] is `moat-bench docker` (Docker with moat against
//! runc); [`report`] holds the statistics and
//! number formatting every benchmark (and the soak) prints with. The boot benchmarks
//! themselves are in `src/bin/bench.rs`, over [`crate::guest`].

pub mod crash_ab;
pub mod docker;
pub mod ops;
pub mod pod;
pub mod report;
