//! KVM state of a microVM: the VM file descriptor with its memory slots and in-kernel
//! interrupt controllers (`vm`), and the vCPUs with their run loop (`vcpu`).

pub mod vcpu;
pub mod vm;
