//! moat agent protocol.
