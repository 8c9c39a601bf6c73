//! What can be wrong with a configuration.

use std::path::PathBuf;

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
    /// The jail cannot be used as configured.
    #[error("jail.{field}: {why}")]
    Jail {
        /// The jail field (or the device) at fault.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
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
