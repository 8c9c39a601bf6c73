//! Defences against a hostile guest. Everything inside the VM is untrusted: a container that
//! escaped to guest root controls the guest kernel and the agent, so every agent reply, event,
//! stdio stream, console line and VMM message it can provoke is attacker input.
//!
//! - [`limits`]: every deadline and cap applied to that input, in one place.
//! - [`text`]: the one escaping function for guest text on its way to a log or to containerd.
//! - [`rate`]: token buckets, throttled logging and per-key deduplication.

pub mod limits;
pub mod rate;
pub mod text;
