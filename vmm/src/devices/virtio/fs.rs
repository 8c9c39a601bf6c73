//! virtio-fs (device id 26), served inline in the VMM: the guest's FUSE requests are handled
//! by `fuse-backend-rs`'s [`PassthroughFs`] over one host directory (the share).
//!
//! Queues: 0 is the high-priority queue (FORGET, INTERRUPT), 1 the single request queue. Both
//! are served the same way: each descriptor chain holds one FUSE request (device-readable part)
//! and room for its reply (device-writable part); the reply length goes to the used ring.
//!
//! Confinement (see [`passthrough_config`]): every inode is an `O_PATH` fd opened with
//! `openat(parent_fd, name, O_NOFOLLOW)`, so host symlinks are never followed on the host side
//! (the guest reads their text with READLINK and resolves them in its own namespace); `..`
//! looked up from the root inode is the root itself; names containing `/` are refused; only
//! regular files and directories can be opened.
//!
//! No device nodes: the passthrough runs each request with the guest caller's uid, and guest
//! root is host root to it, so the device serves it through [`ConfinedFs`], which refuses
//! MKNOD of block and character devices (and `RENAME_WHITEOUT`, which makes one) with `EPERM`
//! before the host sees the request; FIFOs, sockets and regular files are still created. No
//! other request can create a device node (see [`confined`]). setuid/setgid bits are kept
//! (images ship setuid binaries): the host mounts under a pod's directory `nosuid,nodev` and
//! keeps that directory 0700, so such files never run with privilege on the host.

use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::server::{MetricsHook, Server};
use fuse_backend_rs::passthrough::{CachePolicy, Config as PassthroughConfig, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::queue::{ActiveQueues, Chain, QueueEvents};
use super::{read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, FEATURE_VERSION_1};
use crate::metrics::{bump, FsCounters};

/// Size of the tag field in config space (NUL-padded, not necessarily NUL-terminated): the
/// longest tag a configuration may give.
pub use moat_vmm_config::limits::MAX_FS_TAG_LEN as TAG_LEN;
/// The configuration's tag rule, which the device enforces too.
pub use moat_vmm_config::valid_tag;

pub mod confined;
#[cfg(test)]
mod tests;

pub use confined::ConfinedFs;

/// The virtio device id of virtio-fs.
pub const VIRTIO_ID_FS: u32 = 26;
/// Queue size of the high-priority queue.
pub const HIPRIO_QUEUE_SIZE: u16 = 128;
/// Queue size of the request queue.
pub const REQUEST_QUEUE_SIZE: u16 = 256;
/// Number of request queues offered (config `num_request_queues`).
pub const NUM_REQUEST_QUEUES: u32 = 1;
/// Most chains served per queue kick; the rest are served on the next loop turn.
pub const MAX_CHAINS_PER_EVENT: usize = 32;

/// The passthrough file system over the share (guest memory has no dirty bitmap, hence `()`).
type Passthrough = PassthroughFs<()>;
/// The file system the device serves: the passthrough, confined.
type Fs = ConfinedFs<Passthrough>;

/// Why a virtio-fs device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty, too long or has characters outside `[A-Za-z0-9_-]`.
    #[error("virtio-fs tag {0:?}: must be 1..=36 bytes of [A-Za-z0-9_-]")]
    BadTag(String),
    /// The share path is not valid UTF-8 or contains a NUL byte.
    #[error("virtio-fs share {0}: path must be UTF-8 without NUL bytes")]
    BadPath(String),
    /// The queue kick event fds could not be created.
    #[error("virtio-fs event fds: {0}")]
    EventFd(std::io::Error),
    /// fuse-backend-rs could not set up the passthrough file system over the share.
    #[error("virtio-fs share {path}: {source}")]
    Passthrough {
        /// The shared directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The passthrough options moat uses for a share rooted at `root_dir` (already canonical).
///
/// - `do_import`: the root inode is created at construction (we use no VFS layer); it also
///   turns on fuse-backend-rs's own validation of new names (no `/`, `.`, `..`).
/// - `xattr` off: the guest cannot read or set host extended attributes (security labels,
///   capabilities) through the share.
/// - `inode_file_handles` off: handles would need `open_by_handle_at` (CAP_DAC_READ_SEARCH)
///   and can name files outside the share; `O_PATH` fds pin inodes inside it instead.
/// - `writeback` off and `cache_policy` auto (close-to-open consistency, 1 s attribute and
///   entry timeouts): the host may change files behind the guest's back.
/// - no DAX, `seal_size` off, `killpriv_v2` off (features moat's guests don't negotiate).
pub fn passthrough_config(root_dir: String) -> PassthroughConfig {
    PassthroughConfig {
        root_dir,
        do_import: true,
        xattr: false,
        inode_file_handles: false,
        writeback: false,
        cache_policy: CachePolicy::Auto,
        attr_timeout: std::time::Duration::from_secs(1),
        entry_timeout: std::time::Duration::from_secs(1),
        dax_file_size: None,
        killpriv_v2: false,
        no_open: false,
        no_opendir: false,
        ..PassthroughConfig::default()
    }
}

/// Builds (and imports the root of) the passthrough file system over `share`.
pub fn new_passthrough(share: &Path) -> Result<Passthrough, FsError> {
    let display = share.display().to_string();
    let root = share
        .to_str()
        .filter(|s| !s.contains('\0'))
        .ok_or_else(|| FsError::BadPath(display.clone()))?;
    let passthrough_err = |source| FsError::Passthrough {
        path: display.clone(),
        source,
    };
    let fs = Passthrough::new(passthrough_config(root.to_string())).map_err(passthrough_err)?;
    fs.import().map_err(passthrough_err)?;
    Ok(fs)
}

/// What the device serves over `share`: [`new_passthrough`] wrapped in [`ConfinedFs`].
pub fn new_confined(share: &Path) -> Result<Fs, FsError> {
    new_passthrough(share).map(ConfinedFs::new)
}

/// The virtio-fs device serving one shared host directory under a tag.
pub struct VirtioFs {
    config: [u8; TAG_LEN + 4],
    events: QueueEvents,
    active: Option<ActiveQueues>,
    server: Server<Fs>,
    counters: Arc<FsCounters>,
}

impl VirtioFs {
    /// A new, inactive virtio-fs device sharing `share` (a host directory, canonicalized
    /// here) as `tag`.
    pub fn new(tag: &str, share: &Path) -> Result<VirtioFs, FsError> {
        if !valid_tag(tag) {
            return Err(FsError::BadTag(tag.to_string()));
        }
        let share = share
            .canonicalize()
            .map_err(|source| FsError::Passthrough {
                path: share.display().to_string(),
                source,
            })?;
        // The open fds this server may hold are bounded by RLIMIT_NOFILE, which
        // `jail::creds` sizes per share.
        let fs = new_confined(&share)?;
        let mut config = [0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        Ok(VirtioFs {
            config,
            events: QueueEvents::new(2).map_err(FsError::EventFd)?,
            active: None,
            server: Server::new(fs),
            counters: Arc::new(FsCounters::default()),
        })
    }

    /// The device's request counters (shared with the metrics).
    pub fn counters(&self) -> &Arc<FsCounters> {
        &self.counters
    }

    /// Serves the available requests of queue `index` (bounded by
    /// [`MAX_CHAINS_PER_EVENT`]); re-kicks the queue if it stopped early. Does nothing
    /// before activation.
    pub fn process_queue(&mut self, index: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (server, counters) = (&self.server, &*self.counters);
        if active.drain(index, MAX_CHAINS_PER_EVENT, |mem, chain| {
            serve_chain(server, counters, mem, chain)
        }) {
            self.events.rekick(index);
        }
    }
}

/// Serves the FUSE request in `chain` (see [`handle_chain`]) and counts it; returns the
/// reply length.
fn serve_chain(
    server: &Server<Fs>,
    counters: &FsCounters,
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
) -> u32 {
    bump(&counters.requests, 1);
    let reply = chain.clone();
    let hook = OpcodeHook::default();
    match handle_chain(server, &hook, mem, chain) {
        Some(written) => {
            count_reply(counters, mem, reply, hook.0.get(), written);
            u32::try_from(written).unwrap_or(0)
        }
        None => {
            bump(&counters.errors, 1);
            0
        }
    }
}

/// Runs the FUSE request in `chain` and writes the reply into it; returns the reply length
/// (0 for requests without a reply), or `None` for malformed chains and messages, which
/// are only logged.
fn handle_chain(
    server: &Server<Fs>,
    hook: &OpcodeHook,
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
) -> Option<usize> {
    let reader = Reader::from_descriptor_chain(mem, chain.clone())
        .inspect_err(|e| tracing::debug!("virtio-fs: bad request buffers: {e}"))
        .ok()?;
    let writer = VirtioFsWriter::new(mem, chain)
        .inspect_err(|e| tracing::debug!("virtio-fs: bad reply buffers: {e}"))
        .ok()?;
    server
        .handle_message(reader, writer.into(), None, Some(hook))
        .inspect_err(|e| tracing::debug!("virtio-fs: request failed: {e}"))
        .ok()
}

/// Remembers the opcode of the request being served (the FUSE server's metrics hook).
#[derive(Default)]
struct OpcodeHook(Cell<u32>);

impl MetricsHook for OpcodeHook {
    fn collect(&self, ih: &InHeader) {
        self.0.set(ih.opcode);
    }

    fn release(&self, _oh: Option<&OutHeader>) {}
}

/// Length of a FUSE reply header (`len`, `error`, `unique`).
const OUT_HEADER_LEN: usize = size_of::<OutHeader>();

/// Counts a served request from its reply (`written` bytes in `chain`'s device-writable
/// buffers): an error reply, or the bytes a READ returned or a WRITE wrote.
fn count_reply(
    counters: &FsCounters,
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    opcode: u32,
    written: usize,
) {
    if written < OUT_HEADER_LEN {
        return; // no reply (FORGET, BATCH_FORGET)
    }
    // The header, then WRITE's `fuse_write_out.size`.
    let mut raw = [0u8; OUT_HEADER_LEN + 4];
    let got = read_reply(mem, chain, &mut raw);
    let le32 = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    if got < OUT_HEADER_LEN {
        return;
    }
    if le32(4) != 0 {
        bump(&counters.errors, 1);
    } else if opcode == Opcode::Read as u32 {
        bump(&counters.read_bytes, (written - OUT_HEADER_LEN) as u64);
    } else if opcode == Opcode::Write as u32 && got == raw.len() {
        bump(&counters.write_bytes, le32(OUT_HEADER_LEN).into());
    }
}

/// Copies the start of the reply in `chain`'s device-writable buffers into `buf`; returns
/// the bytes copied.
fn read_reply(mem: &GuestMemoryMmap, chain: Chain<'_>, buf: &mut [u8]) -> usize {
    let mut got = 0;
    for desc in chain.filter(|d| d.is_write_only()) {
        let n = (desc.len() as usize).min(buf.len() - got);
        if n == 0 || mem.read_slice(&mut buf[got..got + n], desc.addr()).is_err() {
            break;
        }
        got += n;
    }
    got
}

impl VirtioDevice for VirtioFs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[HIPRIO_QUEUE_SIZE, REQUEST_QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        FEATURE_VERSION_1
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
        self.active = Some(ActiveQueues::new(mem, interrupt, queues, 2)?);
        // Requests may have been posted before DRIVER_OK.
        self.events.rekick(0);
        self.events.rekick(1);
        Ok(())
    }

    fn reset(&mut self) {
        // The FUSE session state (inodes, handles) stays; a new driver starts with INIT, and
        // fuse-backend-rs keeps serving the same share.
        self.active = None;
    }
}

impl MutEventSubscriber for VirtioFs {
    fn init(&mut self, ops: &mut EventOps) {
        self.events.register(ops);
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if let Some(index) = self.events.triggered(&events) {
            self.process_queue(index);
        }
    }
}
