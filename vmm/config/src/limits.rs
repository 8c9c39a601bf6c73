//! Every limit a configuration is checked against, defined once: the VMM's own layout and
//! devices use these same constants (`moat_vmm::arch::layout` re-exports the layout ones).

/// Smallest guest memory moat accepts (a 6.12 kernel with an initramfs needs about this).
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest guest memory moat accepts (1 TiB); the host's own limits apply below that.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Maximum vCPUs moat configures (APIC IDs fit the MP table's u8 fields).
pub const MAX_VCPUS: u8 = 64;
/// Start of the 32-bit MMIO hole in guest physical memory: RAM below it is "low RAM",
/// where the kernel and the initramfs are placed; RAM resumes at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// Largest kernel command line (Linux x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Bytes of [`CMDLINE_MAX_SIZE`] kept free for the device arguments the VMM appends
/// (`virtio_mmio.device=...` for each device); the configured command line gets the rest.
pub const CMDLINE_DEVICE_RESERVE: usize = 512;
/// Largest initramfs accepted (it must fit in low RAM next to the kernel).
pub const MAX_INITRD_BYTES: u64 = 2 << 30;
/// Most virtio-blk disks one VM may have (each takes an MMIO slot, an IRQ and room on the
/// kernel command line).
pub const MAX_BLOCK_DEVICES: usize = 8;
/// Most virtio-fs shares per VM.
pub const MAX_SHARED_DIRS: usize = 4;
/// Most virtio-net devices per VM.
pub const MAX_NET_DEVICES: usize = 4;
/// Smallest MTU that may be announced to the guest (IPv4's minimum).
pub const MIN_MTU: u16 = 68;
/// Largest MTU that may be announced to the guest: a 64 KiB frame (the largest the
/// virtio-net device moves) holds it with an Ethernet header and one VLAN tag.
pub const MAX_MTU: u16 = ((64usize << 10) - 14 - 4) as u16;
/// Default cap on bytes written from the guest's serial port to a file or stdout.
pub const DEFAULT_SERIAL_LIMIT_BYTES: u64 = 64 << 20;
/// Longest network interface name (`IFNAMSIZ` 16 with the NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// Longest virtio-fs tag (the size of the tag field in the device's config space).
pub const MAX_FS_TAG_LEN: usize = 36;
/// Smallest guest CID (0 and 1 are reserved, 2 is the host).
pub const MIN_GUEST_CID: u32 = 3;
/// Largest guest CID (`u32::MAX` is `VMADDR_CID_ANY`).
pub const MAX_GUEST_CID: u32 = u32::MAX - 1;
/// Longest vsock unix socket path: `sun_path` is 108 bytes with the NUL, and guest-initiated
/// connections go to `<path>_<port>` (up to 11 more bytes).
pub const MAX_VSOCK_PATH_LEN: usize = 107 - 11;
/// Smallest inherited fd a configuration may name (0, 1 and 2 are stdio).
pub const MIN_INHERITED_FD: i32 = 3;
/// Shortest interval between two rewrites of the metrics file while the VM runs.
pub const MIN_METRICS_INTERVAL_MS: u64 = 100;
/// Longest interval between two rewrites of the metrics file (one hour).
pub const MAX_METRICS_INTERVAL_MS: u64 = 3_600_000;
/// The interval used when a metrics file is given without one.
pub const DEFAULT_METRICS_INTERVAL_MS: u64 = 5_000;
