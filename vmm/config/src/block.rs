//! virtio-blk disks.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::limits::MAX_BLOCK_DEVICES;
use crate::{check_range, ConfigError};

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

/// Checks the disks: at most [`MAX_BLOCK_DEVICES`], each a regular file or block device
/// openable with the requested access.
pub(crate) fn check_block_devices(disks: &[BlockDeviceConfig]) -> Result<(), ConfigError> {
    check_range(
        "block_devices (count)",
        disks.len() as u64,
        0,
        MAX_BLOCK_DEVICES as u64,
    )?;
    disks.iter().try_for_each(check_disk)
}

fn check_disk(disk: &BlockDeviceConfig) -> Result<(), ConfigError> {
    let path = &disk.path;
    let unreadable = |source| ConfigError::Unreadable {
        field: "block_devices",
        path: path.clone(),
        source,
    };
    let kind = std::fs::metadata(path).map_err(unreadable)?.file_type();
    if !kind.is_file() && !kind.is_block_device() {
        return Err(ConfigError::NotADisk { path: path.clone() });
    }
    if disk.read_only {
        File::open(path).map_err(unreadable)?;
    } else {
        OpenOptions::new()
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
