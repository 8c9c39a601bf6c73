//! virtio devices over the virtio-mmio transport.

pub mod vsock;
