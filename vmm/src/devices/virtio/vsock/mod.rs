//! virtio-vsock with a hybrid unix-socket backend (Firecracker protocol).
