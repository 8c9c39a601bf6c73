//! The whole VM: [`VmConfig`] as written (JSON and/or flags), [`ValidConfig`] as checked,
//! and the checks of the VM-wide values (kernel, initramfs, vCPUs, memory).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::block::check_block_devices;
use crate::fs::check_shared_dirs;
use crate::jail::check_jail;
use crate::limits::{
    DEFAULT_METRICS_INTERVAL_MS, DEFAULT_SERIAL_LIMIT_BYTES, MAX_INITRD_BYTES, MAX_MEMORY_MIB,
    MAX_METRICS_INTERVAL_MS, MAX_VCPUS, MIN_MEMORY_MIB, MIN_METRICS_INTERVAL_MS, MMIO_GAP_START,
};
use crate::net::check_net_devices;
use crate::vsock::check_vsock;
use crate::{
    build_cmdline, check_range, BlockDeviceConfig, ConfigError, JailConfig, NetDeviceConfig,
    SeccompMode, SharedDirConfig, VsockDeviceConfig,
};

/// Where the guest's serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SerialOutput {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// A file (created or truncated).
    File(PathBuf),
    /// Discarded.
    Null,
}

/// Configuration of the guest's serial console (COM1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SerialConfig {
    /// Where guest output goes.
    pub output: SerialOutput,
    /// Feed the VMM's standard input to the guest's console.
    pub stdin: bool,
    /// Bytes of guest output written at most; later output is dropped (a guest can't fill the disk).
    pub limit_bytes: u64,
}

impl Default for SerialConfig {
    fn default() -> Self {
        SerialConfig {
            output: SerialOutput::Stdout,
            stdin: false,
            limit_bytes: DEFAULT_SERIAL_LIMIT_BYTES,
        }
    }
}

/// Full configuration of one microVM: what `moat-vmm --config FILE` reads (every field
/// optional in the file; absent ones take the [`Default`] values).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmConfig {
    /// Uncompressed guest kernel (`vmlinux`, ELF with a PVH note).
    pub kernel: Option<PathBuf>,
    /// Optional initramfs (cpio, possibly compressed) handed to the kernel.
    pub initrd: Option<PathBuf>,
    /// Kernel command line; [`crate::DEFAULT_CMDLINE`] when absent.
    pub cmdline: Option<String>,
    /// Extra arguments appended to the command line.
    pub extra_cmdline: Option<String>,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Serial console settings.
    pub serial: SerialConfig,
    /// File that receives the metrics as JSON: rewritten in place while the VM runs (every
    /// `metrics_interval_ms`, and on SIGUSR1) and a last time when the VMM exits.
    pub metrics_file: Option<PathBuf>,
    /// Milliseconds between two rewrites of `metrics_file` while the VM runs
    /// ([`MIN_METRICS_INTERVAL_MS`]..=[`MAX_METRICS_INTERVAL_MS`]); absent:
    /// [`DEFAULT_METRICS_INTERVAL_MS`].
    pub metrics_interval_ms: Option<u64>,
    /// virtio-blk disks, in order (`/dev/vda`, `/dev/vdb`, ... in the guest).
    pub block_devices: Vec<BlockDeviceConfig>,
    /// Give the guest a virtio-rng entropy device.
    pub rng: bool,
    /// A virtio-vsock device with a hybrid unix-socket backend.
    pub vsock: Option<VsockDeviceConfig>,
    /// virtio-fs shares (at most [`crate::limits::MAX_SHARED_DIRS`]).
    pub shared_dirs: Vec<SharedDirConfig>,
    /// virtio-net devices (at most [`crate::limits::MAX_NET_DEVICES`]; `eth0`, `eth1`, ...
    /// in the guest).
    pub net_devices: Vec<NetDeviceConfig>,
    /// Run jailed (own namespaces and root); the shim always sets it.
    pub jail: Option<JailConfig>,
    /// The per-thread seccomp filters' mode (on by default).
    pub seccomp: SeccompMode,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: None,
            initrd: None,
            cmdline: None,
            extra_cmdline: None,
            vcpus: 1,
            memory_mib: 128,
            serial: SerialConfig::default(),
            metrics_file: None,
            metrics_interval_ms: None,
            block_devices: Vec::new(),
            rng: true,
            vsock: None,
            shared_dirs: Vec::new(),
            net_devices: Vec::new(),
            jail: None,
            seccomp: SeccompMode::Enforce,
        }
    }
}

/// A configuration that passed validation; the only kind the VMM builder accepts.
#[derive(Clone, Debug)]
pub struct ValidConfig {
    /// The kernel image path (checked: readable x86_64 ELF).
    pub kernel: PathBuf,
    /// The initramfs path and size, if any.
    pub initrd: Option<(PathBuf, u64)>,
    /// The complete kernel command line.
    pub cmdline: String,
    /// Number of vCPUs (1..=[`MAX_VCPUS`]).
    pub vcpus: u8,
    /// Guest memory in bytes.
    pub memory_bytes: u64,
    /// Serial console settings.
    pub serial: SerialConfig,
    /// Where to write the metrics (while the VM runs and at exit).
    pub metrics_file: Option<PathBuf>,
    /// Milliseconds between two rewrites of the metrics file while the VM runs: present
    /// exactly when `metrics_file` is (the configured value, or
    /// [`DEFAULT_METRICS_INTERVAL_MS`]).
    pub metrics_interval_ms: Option<u64>,
    /// virtio-blk disks (checked: openable with the requested access, file or block device).
    pub block_devices: Vec<BlockDeviceConfig>,
    /// Whether the guest gets a virtio-rng device.
    pub rng: bool,
    /// The vsock device (checked: valid CID, socket path fits `sun_path`, parent exists).
    pub vsock: Option<VsockDeviceConfig>,
    /// virtio-fs shares (checked: valid unique tags, paths are directories; canonical paths).
    pub shared_dirs: Vec<SharedDirConfig>,
    /// virtio-net devices (checked: one backend each, valid unique interface names, fds
    /// that are TAP queues with a vnet header, unicast MACs, MTUs in range).
    pub net_devices: Vec<NetDeviceConfig>,
    /// The jail (checked: an empty absolute directory; the vsock socket in a directory of
    /// its own; no tap by name).
    pub jail: Option<JailConfig>,
    /// The seccomp filters' mode.
    pub seccomp: SeccompMode,
}

impl VmConfig {
    /// Reads a JSON configuration file.
    pub fn from_json_file(path: &Path) -> Result<VmConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Checks every value and the files it names; returns the configuration the VMM runs.
    pub fn validate(&self) -> Result<ValidConfig, ConfigError> {
        let kernel = self.kernel.clone().ok_or(ConfigError::MissingKernel)?;
        check_elf_kernel(&kernel)?;
        let initrd = match &self.initrd {
            Some(path) => Some((path.clone(), check_initrd(path)?)),
            None => None,
        };
        check_vcpus(self.vcpus.into())?;
        check_memory_mib(self.memory_mib)?;
        if let Some(ms) = self.metrics_interval_ms {
            check_metrics_interval_ms(ms)?;
        }
        let memory_bytes = self.memory_mib << 20;
        if let Some((path, size)) = &initrd {
            check_initrd_fits(path, *size, memory_bytes)?;
        }
        let cmdline = build_cmdline(self.cmdline.as_deref(), self.extra_cmdline.as_deref())?;
        check_block_devices(&self.block_devices)?;
        if let Some(vsock) = &self.vsock {
            check_vsock(vsock)?;
        }
        let shared_dirs = check_shared_dirs(&self.shared_dirs)?;
        check_net_devices(&self.net_devices)?;
        if let Some(jail) = &self.jail {
            check_jail(jail, self.vsock.as_ref(), &self.net_devices)?;
        }
        Ok(ValidConfig {
            kernel,
            initrd,
            cmdline,
            vcpus: self.vcpus,
            memory_bytes,
            serial: self.serial.clone(),
            metrics_file: self.metrics_file.clone(),
            metrics_interval_ms: self.metrics_file.as_ref().map(|_| {
                self.metrics_interval_ms
                    .unwrap_or(DEFAULT_METRICS_INTERVAL_MS)
            }),
            block_devices: self.block_devices.clone(),
            rng: self.rng,
            vsock: self.vsock.clone(),
            shared_dirs,
            net_devices: self.net_devices.clone(),
            jail: self.jail.clone(),
            seccomp: self.seccomp,
        })
    }
}

/// Checks a vCPU count: 1..=[`MAX_VCPUS`] (error field `vcpus`).
pub fn check_vcpus(vcpus: u64) -> Result<(), ConfigError> {
    check_range("vcpus", vcpus, 1, MAX_VCPUS.into())
}

/// Checks a guest memory size: [`MIN_MEMORY_MIB`]..=[`MAX_MEMORY_MIB`] (error field
/// `memory_mib`).
pub fn check_memory_mib(memory_mib: u64) -> Result<(), ConfigError> {
    check_range("memory_mib", memory_mib, MIN_MEMORY_MIB, MAX_MEMORY_MIB)
}

/// Checks the interval between two rewrites of the metrics file:
/// [`MIN_METRICS_INTERVAL_MS`]..=[`MAX_METRICS_INTERVAL_MS`] (error field
/// `metrics_interval_ms`).
pub fn check_metrics_interval_ms(ms: u64) -> Result<(), ConfigError> {
    check_range(
        "metrics_interval_ms",
        ms,
        MIN_METRICS_INTERVAL_MS,
        MAX_METRICS_INTERVAL_MS,
    )
}

/// Checks the initramfs file on its own (a regular file of at most [`MAX_INITRD_BYTES`]);
/// returns its size.
fn check_initrd(path: &Path) -> Result<u64, ConfigError> {
    let size = regular_file_size("initrd", path)?;
    if size > MAX_INITRD_BYTES {
        return Err(ConfigError::InitrdTooLarge {
            path: path.to_owned(),
            size,
            max: MAX_INITRD_BYTES,
        });
    }
    Ok(size)
}

/// Checks that an initramfs of `size` bytes fits in the low RAM of a guest of
/// `memory_bytes`, with as much room again left for the kernel and its early allocations.
fn check_initrd_fits(path: &Path, size: u64, memory_bytes: u64) -> Result<(), ConfigError> {
    let low_ram = memory_bytes.min(MMIO_GAP_START);
    if size.saturating_mul(2) > low_ram {
        return Err(ConfigError::InitrdTooLarge {
            path: path.to_owned(),
            size,
            max: low_ram / 2,
        });
    }
    Ok(())
}

fn regular_file_size(field: &'static str, path: &Path) -> Result<u64, ConfigError> {
    let unreadable = |source| ConfigError::Unreadable {
        field,
        path: path.to_owned(),
        source,
    };
    let meta = File::open(path)
        .and_then(|file| file.metadata())
        .map_err(unreadable)?;
    if !meta.is_file() {
        return Err(ConfigError::NotAFile {
            field,
            path: path.to_owned(),
        });
    }
    Ok(meta.len())
}

/// Checks that `path` is a readable 64-bit x86 ELF (moat boots an uncompressed vmlinux).
fn check_elf_kernel(path: &Path) -> Result<(), ConfigError> {
    regular_file_size("kernel", path)?;
    let mut header = [0u8; 20];
    let mut file = File::open(path).map_err(|source| ConfigError::Unreadable {
        field: "kernel",
        path: path.to_owned(),
        source,
    })?;
    let not_elf = |why| ConfigError::NotElf {
        path: path.to_owned(),
        why,
    };
    file.read_exact(&mut header)
        .map_err(|_| not_elf("shorter than an ELF header"))?;
    if &header[0..4] != b"\x7fELF" {
        return Err(not_elf(
            "no ELF magic; a bzImage is not accepted, use vmlinux",
        ));
    }
    if header[4] != 2 {
        return Err(not_elf("not a 64-bit ELF"));
    }
    if u16::from_le_bytes([header[18], header[19]]) != 62 {
        return Err(not_elf("machine is not x86_64"));
    }
    Ok(())
}
