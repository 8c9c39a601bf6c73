//! virtio-blk (id 2) backed by a host file or block device, read-only or read-write, with
//! synchronous pread/pwrite. Every request is validated before any I/O: header, direction of
//! each buffer, status byte last and writable, sector range inside the disk, buffers inside
//! guest memory. An invalid request gets an error status, or is dropped (used length 0) when
//! it has no writable status byte.

use std::collections::hash_map::DefaultHasher;
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::queue::{desc_in_memory, write_guest, ActiveQueues, Chain, QueueEvents};
use super::{read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, FEATURE_VERSION_1};
use crate::metrics::{bump, BlkCounters};

/// Bytes per sector (the unit of `capacity` and request offsets).
pub const SECTOR_SIZE: u64 = 512;
/// Queue size offered to the guest.
pub const BLOCK_QUEUE_SIZE: u16 = 256;
/// Data segments per request the guest may use (`seg_max`).
pub const SEG_MAX: u32 = 128;
/// Largest data segment (`size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// Most requests served per queue kick; the rest are served on the next loop turn.
pub const MAX_CHAINS_PER_EVENT: usize = 64;
/// Length of a request header (type, reserved, sector).
const HEADER_LEN: u32 = 16;
/// Descriptors per chain accepted: header + data segments + status.
const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// Size of the bounce buffer between the file and guest memory.
const BOUNCE_LEN: usize = 64 << 10;

/// Errors opening a disk image.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The file could not be opened or sized.
    #[error("block device {path}: {source}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The open backing file of a disk, and its counters.
struct Disk {
    file: File,
    capacity_sectors: u64,
    read_only: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    counters: Arc<BlkCounters>,
}

/// The virtio-blk device.
pub struct Block {
    disk: Disk,
    config: [u8; 16],
    events: QueueEvents,
    active: Option<ActiveQueues>,
    bounce: Vec<u8>,
}

impl Block {
    /// Opens `path` (read-only or read-write) as a disk; its size is rounded down to whole
    /// sectors.
    pub fn open(path: &Path, read_only: bool) -> Result<Block, BlockError> {
        let err = |source| BlockError::Open {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(err)?;
        Block::from_file(file, read_only).map_err(err)
    }

    /// A disk over an already open file.
    pub fn from_file(mut file: File, read_only: bool) -> std::io::Result<Block> {
        // Seeking to the end sizes block devices too (their metadata length is 0).
        let size = file.seek(SeekFrom::End(0))?;
        let meta = file.metadata()?;
        let mut h = DefaultHasher::new();
        (meta.dev(), meta.ino(), meta.rdev()).hash(&mut h);
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let serial = format!("moat-{:015x}", h.finish() >> 4);
        let n = serial.len().min(id.len());
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        let capacity_sectors = size / SECTOR_SIZE;
        let mut config = [0u8; 16];
        config[0..8].copy_from_slice(&capacity_sectors.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        Ok(Block {
            disk: Disk {
                file,
                capacity_sectors,
                read_only,
                id,
                counters: Arc::new(BlkCounters::default()),
            },
            config,
            events: QueueEvents::new(1)?,
            active: None,
            bounce: vec![0; BOUNCE_LEN],
        })
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors
    }

    /// The disk's request counters (shared with the metrics).
    pub fn counters(&self) -> &Arc<BlkCounters> {
        &self.disk.counters
    }

    /// The 20-byte serial returned to GET_ID (NUL-padded).
    pub fn serial(&self) -> &[u8] {
        &self.disk.id
    }

    /// Serves the available requests (bounded by [`MAX_CHAINS_PER_EVENT`]); re-kicks the
    /// queue if it stopped early. Does nothing before activation.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let disk = &mut self.disk;
        let bounce = &mut self.bounce;
        if active.drain(0, MAX_CHAINS_PER_EVENT, |mem, chain| {
            handle_chain(disk, bounce, mem, chain)
        }) {
            self.events.rekick(0);
        }
    }
}

/// Serves one request; returns the used length (bytes written into the chain).
fn handle_chain(
    disk: &mut Disk,
    bounce: &mut [u8],
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
) -> u32 {
    let descs: Vec<Descriptor> = chain.take(MAX_DESCRIPTORS + 1).collect();
    let Some(status) = descs.last().filter(|d| {
        d.is_write_only() && d.len() >= 1 && desc_in_memory(mem, d) && descs.len() >= 2
    }) else {
        tracing::debug!("virtio-blk: request without a writable status byte dropped");
        bump(&disk.counters.errors, 1);
        return 0;
    };
    let (code, written) = if descs.len() > MAX_DESCRIPTORS {
        (VIRTIO_BLK_S_IOERR, 0)
    } else {
        match execute(disk, bounce, mem, &descs[0], &descs[1..descs.len() - 1]) {
            Ok(written) => (VIRTIO_BLK_S_OK, written),
            Err(code) => (code, 0),
        }
    };
    // `code` is 0..=2, the cast cannot truncate.
    let reported = write_guest(mem, status.addr(), &[code as u8]);
    if code != VIRTIO_BLK_S_OK || !reported {
        bump(&disk.counters.errors, 1);
    }
    if !reported {
        return 0;
    }
    written.saturating_add(1)
}

/// Validates and performs one request; `Ok(bytes written to the guest)` or the error status.
fn execute(
    disk: &mut Disk,
    bounce: &mut [u8],
    mem: &GuestMemoryMmap,
    header: &Descriptor,
    data: &[Descriptor],
) -> Result<u32, u32> {
    if header.is_write_only() || header.len() < HEADER_LEN {
        return Err(VIRTIO_BLK_S_IOERR);
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    mem.read_slice(&mut raw, header.addr())
        .map_err(|_| VIRTIO_BLK_S_IOERR)?;
    let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let kind = le32(&raw[0..4]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&raw[8..16]);
    let sector = u64::from_le_bytes(sector);
    let device_writes = kind != VIRTIO_BLK_T_OUT;
    let directions_ok = data.iter().all(|d| d.is_write_only() == device_writes);
    if !directions_ok || !data.iter().all(|d| desc_in_memory(mem, d)) {
        return Err(VIRTIO_BLK_S_IOERR);
    }
    match kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => transfer(disk, bounce, mem, kind, sector, data),
        VIRTIO_BLK_T_FLUSH => {
            if !disk.read_only {
                disk.file.sync_data().map_err(|_| VIRTIO_BLK_S_IOERR)?;
            }
            bump(&disk.counters.flushes, 1);
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => get_id(disk, mem, data),
        _ => Err(VIRTIO_BLK_S_UNSUPP),
    }
}

/// A read (`VIRTIO_BLK_T_IN`) or write (`VIRTIO_BLK_T_OUT`) of `data` at `sector`, counted.
fn transfer(
    disk: &mut Disk,
    bounce: &mut [u8],
    mem: &GuestMemoryMmap,
    kind: u32,
    sector: u64,
    data: &[Descriptor],
) -> Result<u32, u32> {
    if kind == VIRTIO_BLK_T_OUT && disk.read_only {
        return Err(VIRTIO_BLK_S_IOERR);
    }
    let offset = disk_range(disk.capacity_sectors, sector, data)?;
    if kind == VIRTIO_BLK_T_IN {
        let read = read_disk(disk, bounce, mem, offset, data)?;
        bump(&disk.counters.reads, 1);
        bump(&disk.counters.read_bytes, read.into());
        Ok(read)
    } else {
        write_disk(disk, bounce, mem, offset, data)?;
        bump(&disk.counters.writes, 1);
        let bytes = data.iter().map(|d| u64::from(d.len())).sum();
        bump(&disk.counters.write_bytes, bytes);
        Ok(0)
    }
}

/// `VIRTIO_BLK_T_GET_ID`: the disk's id into `data`; the bytes written.
fn get_id(disk: &Disk, mem: &GuestMemoryMmap, data: &[Descriptor]) -> Result<u32, u32> {
    let mut id: &[u8] = &disk.id;
    let mut written = 0u32;
    for d in data {
        let n = id.len().min(d.len() as usize);
        if !write_guest(mem, d.addr(), &id[..n]) {
            return Err(VIRTIO_BLK_S_IOERR);
        }
        id = &id[n..];
        // n <= 20.
        written += n as u32;
    }
    Ok(written)
}

/// Byte offset of a transfer of `data` at `sector`, checked: whole sectors, inside the disk,
/// no overflow.
fn disk_range(capacity_sectors: u64, sector: u64, data: &[Descriptor]) -> Result<u64, u32> {
    let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
    if !total.is_multiple_of(SECTOR_SIZE) {
        return Err(VIRTIO_BLK_S_IOERR);
    }
    let end = sector
        .checked_add(total / SECTOR_SIZE)
        .ok_or(VIRTIO_BLK_S_IOERR)?;
    if end > capacity_sectors {
        return Err(VIRTIO_BLK_S_IOERR);
    }
    // sector < capacity_sectors <= u64::MAX / 512, so this cannot overflow.
    Ok(sector * SECTOR_SIZE)
}

/// Splits each descriptor into bounce-buffer-sized pieces: (guest address, length, file offset).
fn pieces(
    data: &[Descriptor],
    mut offset: u64,
    chunk: usize,
) -> impl Iterator<Item = (GuestAddress, usize, u64)> + '_ {
    data.iter().flat_map(move |d| {
        let len = d.len() as usize;
        let start = offset;
        offset += d.len() as u64;
        (0..len).step_by(chunk.max(1)).map(move |at| {
            (
                GuestAddress(d.addr().0 + at as u64),
                chunk.min(len - at),
                start + at as u64,
            )
        })
    })
}

fn read_disk(
    disk: &Disk,
    bounce: &mut [u8],
    mem: &GuestMemoryMmap,
    offset: u64,
    data: &[Descriptor],
) -> Result<u32, u32> {
    let mut written = 0u32;
    for (addr, len, at) in pieces(data, offset, bounce.len()) {
        let buf = &mut bounce[..len];
        disk.file
            .read_exact_at(buf, at)
            .map_err(|_| VIRTIO_BLK_S_IOERR)?;
        if !write_guest(mem, addr, buf) {
            return Err(VIRTIO_BLK_S_IOERR);
        }
        written = written.saturating_add(len as u32);
    }
    Ok(written)
}

fn write_disk(
    disk: &Disk,
    bounce: &mut [u8],
    mem: &GuestMemoryMmap,
    offset: u64,
    data: &[Descriptor],
) -> Result<(), u32> {
    for (addr, len, at) in pieces(data, offset, bounce.len()) {
        let buf = &mut bounce[..len];
        mem.read_slice(buf, addr).map_err(|_| VIRTIO_BLK_S_IOERR)?;
        disk.file
            .write_all_at(buf, at)
            .map_err(|_| VIRTIO_BLK_S_IOERR)?;
    }
    Ok(())
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[BLOCK_QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        let ro = if self.disk.read_only {
            1 << VIRTIO_BLK_F_RO
        } else {
            0
        };
        FEATURE_VERSION_1
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn queue_events(&self) -> &[EventFd] {
        self.events.fds()
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.active = Some(ActiveQueues::new(mem, interrupt, queues, 1)?);
        self.events.rekick(0);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.events.register(ops);
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if self.events.triggered(&events).is_some() {
            self.process_queue();
        }
    }
}

#[cfg(test)]
mod tests;
