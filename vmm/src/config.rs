//! Typed VM configuration: parsed once (JSON file and/or CLI flags), validated before any
//! KVM object is created, so a bad value is a clear error and never a panic.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::arch::layout::{CMDLINE_MAX_SIZE, MAX_VCPUS, MMIO_GAP_START};
use crate::devices::virtio::net::{tap, MacAddr, MAX_MTU, MIN_MTU};

/// Smallest guest memory moat accepts (a 6.12 kernel with an initramfs needs about this).
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest guest memory moat accepts (1 TiB); the host's own limits apply below that.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Largest initramfs accepted (it must fit in low RAM next to the kernel).
pub const MAX_INITRD_BYTES: u64 = 2 << 30;
/// Most virtio-blk disks one VM may have (each takes an MMIO slot, an IRQ and room on the
/// kernel command line).
pub const MAX_BLOCK_DEVICES: usize = 8;
/// Most virtio-fs shares per VM.
pub const MAX_SHARED_DIRS: usize = 4;
/// Most virtio-net devices per VM.
pub const MAX_NET_DEVICES: usize = 4;
/// Default cap on bytes written from the guest's serial port to a file or stdout.
pub const DEFAULT_SERIAL_LIMIT_BYTES: u64 = 64 << 20;

/// Kernel command line moat uses when the configuration gives none.
///
/// `reboot=k,c,panic_w`: the guest resets through the i8042 controller; a clean reboot or
/// poweroff marks a *cold* reset and a panic a *warm* one (0x1234 at 0x472), which is how the
/// VMM tells them apart. `tsc=reliable no_timer_check` with kvm-clock make boot deterministic
/// (no calibration spin), `pci=off` because all devices are virtio-mmio.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k,c,panic_w panic=-1 pci=off \
     tsc=reliable no_timer_check noreplace-smp cryptomgr.notests rcupdate.rcu_expedited=1 \
     8250.nr_uarts=1 quiet";

/// Errors found while reading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// Path of the file.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The configuration file is not valid JSON of the expected shape.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// Path of the file.
        path: PathBuf,
        /// Underlying parse error (names the field and position).
        source: serde_json::Error,
    },
    /// No kernel was given.
    #[error("kernel: no kernel image given (use --kernel or \"kernel\" in the config file)")]
    MissingKernel,
    /// A file named in the configuration is missing or unreadable.
    #[error("{field}: cannot open {path}: {source}")]
    Unreadable {
        /// Name of the configuration field.
        field: &'static str,
        /// Path that was given.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// A file named in the configuration is not a regular file.
    #[error("{field}: {path} is not a regular file")]
    NotAFile {
        /// Name of the configuration field.
        field: &'static str,
        /// Path that was given.
        path: PathBuf,
    },
    /// The kernel image is not a 64-bit x86 ELF (moat boots an uncompressed vmlinux).
    #[error("kernel: {path} is not an x86_64 ELF vmlinux ({why})")]
    NotElf {
        /// Path that was given.
        path: PathBuf,
        /// What was wrong with it.
        why: &'static str,
    },
    /// The initramfs is larger than moat can place in guest memory.
    #[error("initrd: {path} is {size} bytes, more than the {max} bytes allowed")]
    InitrdTooLarge {
        /// Path that was given.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A numeric value is outside its allowed range.
    #[error("{field}: {value} is out of range ({min}..={max})")]
    OutOfRange {
        /// Name of the configuration field.
        field: &'static str,
        /// The value given.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// A disk image is neither a regular file nor a block device.
    #[error("block_devices: {path} is not a regular file or a block device")]
    NotADisk {
        /// Path that was given.
        path: PathBuf,
    },
    /// A disk image given read-write cannot be opened for writing.
    #[error(
        "block_devices: {path} cannot be opened read-write ({source}); \
         give it read-only (`--block {path},ro` or \"read_only\": true)"
    )]
    DiskNotWritable {
        /// Path that was given.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The vsock socket path is unusable.
    #[error("vsock.uds_path: {path}: {why}")]
    VsockPath {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The kernel command line is too long or contains a NUL byte.
    #[error("cmdline: {0}")]
    Cmdline(String),
    /// A virtio-fs share is unusable (bad or duplicate tag, not a directory).
    #[error("shared_dirs: {tag:?}: {why}")]
    SharedDir {
        /// The share's tag.
        tag: String,
        /// What is wrong with it.
        why: String,
    },
    /// A virtio-net device is misconfigured.
    #[error("net_devices[{index}].{field}: {why}")]
    Net {
        /// Position of the device (command-line devices follow the config file's).
        index: usize,
        /// The field at fault (`tap`, `fd`, `mac`, `mtu`).
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

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

/// One virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDeviceConfig {
    /// Backing file or host block device; the guest sees its size rounded down to 512 bytes.
    pub path: PathBuf,
    /// Offer the disk read-only (VIRTIO_BLK_F_RO; guest writes fail).
    #[serde(default)]
    pub read_only: bool,
}

/// The hybrid vsock device: guest CID and the host unix socket (Firecracker's protocol:
/// `CONNECT <port>` on `uds_path` reaches guest port `<port>`; guest connects to host port P
/// reach a listener at `<uds_path>_<P>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockDeviceConfig {
    /// The guest's context id (3 ..= 2^32-2).
    pub guest_cid: u32,
    /// Host unix socket the VMM listens on (removed when the VMM exits).
    pub uds_path: PathBuf,
}

/// A host directory shared with the guest over virtio-fs (`mount -t virtiofs TAG DIR`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedDirConfig {
    /// The mount tag the guest uses: 1..=36 bytes of `[A-Za-z0-9_-]`, unique per VM.
    pub tag: String,
    /// The host directory; the guest sees only what is below it (symlinks are not followed
    /// on the host).
    pub path: PathBuf,
}

/// One virtio-net device with a host TAP backend: exactly one of `tap` (an interface name,
/// opened by the VMM) or `fd` (an inherited fd of a TAP queue opened with
/// `IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`, so the VMM needs no CAP_NET_ADMIN). Command-line form:
/// `tap=NAME[,mac=02:..][,mtu=N]` or `fd=N[,mac=..][,mtu=N]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetDeviceConfig {
    /// The TAP interface to attach to (created, transient, if missing and the VMM has
    /// CAP_NET_ADMIN).
    pub tap: Option<String>,
    /// An inherited TAP queue fd (3 or more); the VMM takes it over.
    pub fd: Option<i32>,
    /// The guest's MAC address (unicast); a random locally administered one when absent.
    pub mac: Option<MacAddr>,
    /// MTU announced to the guest with VIRTIO_NET_F_MTU (68..=65518); not announced
    /// when absent (the guest uses 1500).
    pub mtu: Option<u16>,
}

impl FromStr for NetDeviceConfig {
    type Err = String;

    /// Parses the command-line form `tap=NAME|fd=N[,mac=MAC][,mtu=N]`.
    fn from_str(s: &str) -> Result<NetDeviceConfig, String> {
        fn set<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), String> {
            match slot.replace(value) {
                Some(_) => Err(format!("net option {key} given twice")),
                None => Ok(()),
            }
        }
        let mut cfg = NetDeviceConfig::default();
        for opt in s.split(',') {
            let (key, value) = opt
                .split_once('=')
                .ok_or_else(|| format!("expected KEY=VALUE, got {opt:?}"))?;
            let number = |what| format!("net {key}: {value:?} is not a valid {what}");
            match key {
                "tap" => set(&mut cfg.tap, key, value.to_string())?,
                "fd" => set(&mut cfg.fd, key, value.parse().map_err(|_| number("fd"))?)?,
                "mac" => set(
                    &mut cfg.mac,
                    key,
                    value.parse().map_err(|e| format!("{e}"))?,
                )?,
                "mtu" => set(&mut cfg.mtu, key, value.parse().map_err(|_| number("MTU"))?)?,
                _ => {
                    return Err(format!(
                        "unknown net option {key:?} (expected tap, fd, mac or mtu)"
                    ))
                }
            }
        }
        Ok(cfg)
    }
}

/// Full configuration of one microVM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmConfig {
    /// Uncompressed guest kernel (`vmlinux`, ELF with a PVH note).
    pub kernel: Option<PathBuf>,
    /// Optional initramfs (cpio, possibly compressed) handed to the kernel.
    pub initrd: Option<PathBuf>,
    /// Kernel command line; `DEFAULT_CMDLINE` when absent.
    pub cmdline: Option<String>,
    /// Extra arguments appended to the command line.
    pub extra_cmdline: Option<String>,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Serial console settings.
    pub serial: SerialConfig,
    /// File that receives the boot metrics as JSON when the VMM exits.
    pub metrics_file: Option<PathBuf>,
    /// virtio-blk disks, in order (`/dev/vda`, `/dev/vdb`, ... in the guest).
    pub block_devices: Vec<BlockDeviceConfig>,
    /// Give the guest a virtio-rng entropy device.
    pub rng: bool,
    /// A virtio-vsock device with a hybrid unix-socket backend.
    pub vsock: Option<VsockDeviceConfig>,
    /// virtio-fs shares (at most [`MAX_SHARED_DIRS`]).
    pub shared_dirs: Vec<SharedDirConfig>,
    /// virtio-net devices (at most [`MAX_NET_DEVICES`]; `eth0`, `eth1`, ... in the guest).
    pub net_devices: Vec<NetDeviceConfig>,
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
            block_devices: Vec::new(),
            rng: true,
            vsock: None,
            shared_dirs: Vec::new(),
            net_devices: Vec::new(),
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
    /// Number of vCPUs (1..=MAX_VCPUS).
    pub vcpus: u8,
    /// Guest memory in bytes.
    pub memory_bytes: u64,
    /// Serial console settings.
    pub serial: SerialConfig,
    /// Where to write metrics at exit.
    pub metrics_file: Option<PathBuf>,
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
            Some(path) => {
                let size = regular_file_size("initrd", path)?;
                if size > MAX_INITRD_BYTES {
                    return Err(ConfigError::InitrdTooLarge {
                        path: path.clone(),
                        size,
                        max: MAX_INITRD_BYTES,
                    });
                }
                Some((path.clone(), size))
            }
            None => None,
        };
        check_range("vcpus", self.vcpus.into(), 1, MAX_VCPUS.into())?;
        check_range(
            "memory_mib",
            self.memory_mib,
            MIN_MEMORY_MIB,
            MAX_MEMORY_MIB,
        )?;
        let memory_bytes = self.memory_mib << 20;
        if let Some((path, size)) = &initrd {
            // The initramfs goes in low RAM, with room left for the kernel and its early allocations.
            let low_ram = memory_bytes.min(MMIO_GAP_START);
            if size.saturating_mul(2) > low_ram {
                return Err(ConfigError::InitrdTooLarge {
                    path: path.clone(),
                    size: *size,
                    max: low_ram / 2,
                });
            }
        }
        check_range("serial.limit_bytes", self.serial.limit_bytes, 0, u64::MAX)?;
        let cmdline = build_cmdline(self.cmdline.as_deref(), self.extra_cmdline.as_deref())?;
        check_range(
            "block_devices (count)",
            self.block_devices.len() as u64,
            0,
            MAX_BLOCK_DEVICES as u64,
        )?;
        for disk in &self.block_devices {
            check_disk(disk)?;
        }
        if let Some(vsock) = &self.vsock {
            check_vsock(vsock)?;
        }
        let shared_dirs = check_shared_dirs(&self.shared_dirs)?;
        check_net_devices(&self.net_devices)?;
        Ok(ValidConfig {
            kernel,
            initrd,
            cmdline,
            vcpus: self.vcpus,
            memory_bytes,
            serial: self.serial.clone(),
            metrics_file: self.metrics_file.clone(),
            block_devices: self.block_devices.clone(),
            rng: self.rng,
            vsock: self.vsock.clone(),
            shared_dirs,
            net_devices: self.net_devices.clone(),
        })
    }
}

/// Checks the virtio-net devices (see [`ValidConfig::net_devices`]).
fn check_net_devices(devices: &[NetDeviceConfig]) -> Result<(), ConfigError> {
    check_range(
        "net_devices (count)",
        devices.len() as u64,
        0,
        MAX_NET_DEVICES as u64,
    )?;
    for (index, dev) in devices.iter().enumerate() {
        let bad = |field, why: String| ConfigError::Net { index, field, why };
        let earlier = &devices[..index];
        match (&dev.tap, dev.fd) {
            (Some(name), None) => {
                if !tap::valid_ifname(name) {
                    return Err(bad(
                        "tap",
                        format!("{name:?} must be 1..=15 bytes without '/', ':' or spaces"),
                    ));
                }
                if earlier.iter().any(|d| d.tap.as_ref() == Some(name)) {
                    return Err(bad("tap", format!("{name} used twice")));
                }
            }
            (None, Some(fd)) => {
                if fd < 3 {
                    return Err(bad("fd", format!("{fd} is stdio; give an fd of 3 or more")));
                }
                if earlier.iter().any(|d| d.fd == Some(fd)) {
                    return Err(bad("fd", format!("{fd} used twice")));
                }
                tap::check_tap_fd(fd).map_err(|e| bad("fd", e.to_string()))?;
            }
            (Some(_), Some(_)) => return Err(bad("tap", "give tap or fd, not both".into())),
            (None, None) => return Err(bad("tap", "give tap=NAME or fd=N".into())),
        }
        if let Some(mac) = dev.mac {
            mac.check_unicast().map_err(|e| bad("mac", e.to_string()))?;
        }
        if let Some(mtu) = dev.mtu.filter(|m| !(MIN_MTU..=MAX_MTU).contains(m)) {
            return Err(bad(
                "mtu",
                format!("{mtu} is out of range ({MIN_MTU}..={MAX_MTU})"),
            ));
        }
    }
    Ok(())
}

/// Checks the virtio-fs shares; returns them with canonical paths.
fn check_shared_dirs(dirs: &[SharedDirConfig]) -> Result<Vec<SharedDirConfig>, ConfigError> {
    check_range(
        "shared_dirs (count)",
        dirs.len() as u64,
        0,
        MAX_SHARED_DIRS as u64,
    )?;
    let mut out: Vec<SharedDirConfig> = Vec::with_capacity(dirs.len());
    for dir in dirs {
        let bad = |why: String| ConfigError::SharedDir {
            tag: dir.tag.clone(),
            why,
        };
        if !crate::devices::virtio::fs::valid_tag(&dir.tag) {
            return Err(bad("tag must be 1..=36 bytes of [A-Za-z0-9_-]".into()));
        }
        if out.iter().any(|d| d.tag == dir.tag) {
            return Err(bad("tag used twice".into()));
        }
        let path = dir
            .path
            .canonicalize()
            .map_err(|e| bad(format!("{}: {e}", dir.path.display())))?;
        if !path.is_dir() {
            return Err(bad(format!("{} is not a directory", dir.path.display())));
        }
        if path.to_str().is_none() {
            return Err(bad(format!("{} is not valid UTF-8", dir.path.display())));
        }
        out.push(SharedDirConfig {
            tag: dir.tag.clone(),
            path,
        });
    }
    Ok(out)
}

/// Longest unix socket path (`sun_path` is 108 bytes with the NUL) leaving room for the
/// `_<port>` suffix of guest-initiated connections.
const MAX_VSOCK_PATH: usize = 107 - 11;

fn check_vsock(vsock: &VsockDeviceConfig) -> Result<(), ConfigError> {
    check_range(
        "vsock.guest_cid",
        vsock.guest_cid.into(),
        3,
        u64::from(u32::MAX) - 1,
    )?;
    let path = &vsock.uds_path;
    let len = path.as_os_str().len();
    if len == 0 || len > MAX_VSOCK_PATH {
        return Err(ConfigError::VsockPath {
            path: path.clone(),
            why: format!("must be 1..={MAX_VSOCK_PATH} bytes long"),
        });
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if parent.is_some_and(|p| !p.is_dir()) {
        return Err(ConfigError::VsockPath {
            path: path.clone(),
            why: "its directory does not exist".into(),
        });
    }
    Ok(())
}

fn check_disk(disk: &BlockDeviceConfig) -> Result<(), ConfigError> {
    let path = &disk.path;
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Unreadable {
        field: "block_devices",
        path: path.clone(),
        source,
    })?;
    let kind = meta.file_type();
    if !kind.is_file() && !kind.is_block_device() {
        return Err(ConfigError::NotADisk { path: path.clone() });
    }
    if disk.read_only {
        File::open(path).map_err(|source| ConfigError::Unreadable {
            field: "block_devices",
            path: path.clone(),
            source,
        })?;
    } else {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| ConfigError::DiskNotWritable {
                path: path.clone(),
                source,
            })?;
    }
    Ok(())
}

fn check_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::OutOfRange {
            field,
            value,
            min,
            max,
        });
    }
    Ok(())
}

fn regular_file_size(field: &'static str, path: &Path) -> Result<u64, ConfigError> {
    let file = File::open(path).map_err(|source| ConfigError::Unreadable {
        field,
        path: path.to_owned(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| ConfigError::Unreadable {
        field,
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ConfigError::NotAFile {
            field,
            path: path.to_owned(),
        });
    }
    Ok(meta.len())
}

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

/// Builds the final command line from the base (or the default) plus extra arguments.
pub fn build_cmdline(base: Option<&str>, extra: Option<&str>) -> Result<String, ConfigError> {
    let mut cmdline = base.unwrap_or(DEFAULT_CMDLINE).trim().to_string();
    if let Some(extra) = extra.map(str::trim).filter(|e| !e.is_empty()) {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(extra);
    }
    if cmdline.contains('\0') {
        return Err(ConfigError::Cmdline("contains a NUL byte".into()));
    }
    // Leave room for the virtio-mmio device arguments the VMM appends.
    let budget = CMDLINE_MAX_SIZE - 512;
    if cmdline.len() > budget {
        return Err(ConfigError::Cmdline(format!(
            "{} bytes is longer than the {budget} allowed",
            cmdline.len()
        )));
    }
    Ok(cmdline)
}

/// Inserts kernel parameters `args` into `cmdline` before the first `--` (everything after
/// it goes to init, not to the kernel), or at the end.
pub fn insert_kernel_args(cmdline: &str, args: &[String]) -> String {
    if args.is_empty() {
        return cmdline.to_string();
    }
    let extra = args.join(" ");
    let mut offset = 0;
    for word in cmdline.split(' ') {
        if word == "--" {
            let (kernel, init) = cmdline.split_at(offset);
            return format!("{kernel}{extra} {init}");
        }
        offset += word.len() + 1;
    }
    if cmdline.is_empty() {
        extra
    } else {
        format!("{cmdline} {extra}")
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
