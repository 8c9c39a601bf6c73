//! The devices' counters: each device owns an `Arc` of its `…Counters` (one `AtomicU64` per
//! value, bumped with `Relaxed` stores on the device's own path, never a lock) and registers
//! a clone with [`super::Metrics`]; at a flush each becomes its serializable `…Snapshot`.
//! `counters!` defines both structs from one field list, so they cannot drift apart.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Adds `n` to a counter (`Relaxed`: counters order nothing).
pub fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Defines a `…Counters` struct of `AtomicU64`s and its `…Snapshot` of `u64`s with the same
/// fields and docs, with `values()` (a snapshot) and `add()` (summing snapshots).
macro_rules! counters {
    (
        $(#[$cdoc:meta])* $counters:ident;
        $(#[$sdoc:meta])* $snapshot:ident {
            $($(#[$fdoc:meta])* $field:ident,)*
        }
    ) => {
        $(#[$cdoc])*
        #[derive(Debug, Default)]
        pub struct $counters {
            $($(#[$fdoc])* pub $field: AtomicU64,)*
        }

        $(#[$sdoc])*
        #[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
        pub struct $snapshot {
            $($(#[$fdoc])* pub $field: u64,)*
        }

        impl $counters {
            /// The current values.
            pub fn values(&self) -> $snapshot {
                $snapshot {
                    $($field: self.$field.load(Ordering::Relaxed),)*
                }
            }
        }

        impl $snapshot {
            /// Adds `other`'s values to these (several devices summed).
            pub fn add(&mut self, other: &$snapshot) {
                $(self.$field = self.$field.saturating_add(other.$field);)*
            }
        }
    };
}

counters! {
    /// Frame counters of one virtio-net device, updated by the device as it runs.
    NetCounters;
    /// The values of [`NetCounters`] (labelled in [`NetSnapshot`]).
    NetCounts {
        /// Frames delivered into guest RX buffers.
        rx_frames,
        /// Bytes of those frames (Ethernet frame, virtio header not counted).
        rx_bytes,
        /// Frames read from the backend and dropped: larger than the posted chain, or runts.
        rx_dropped,
        /// Malformed RX chains (readable or out-of-memory descriptors, too small), used with 0.
        rx_bad_chains,
        /// Frames the guest sent that reached the backend.
        tx_frames,
        /// Bytes of those frames (virtio header not counted).
        tx_bytes,
        /// Well-formed guest frames the backend refused (write error).
        tx_dropped,
        /// Malformed TX chains (writable or out-of-memory descriptors, over 64 KiB, runts).
        tx_bad_chains,
    }
}

/// A serializable view of one virtio-net device's counters.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct NetSnapshot {
    /// The backend (e.g. `tap:tap0`).
    pub backend: String,
    /// The guest's MAC address.
    pub mac: String,
    /// The counters, as fields of this object.
    #[serde(flatten)]
    pub counts: NetCounts,
}

impl NetCounters {
    /// The current values, labelled with the device's backend and MAC.
    pub fn snapshot(&self, backend: &str, mac: &str) -> NetSnapshot {
        NetSnapshot {
            backend: backend.to_string(),
            mac: mac.to_string(),
            counts: self.values(),
        }
    }
}

counters! {
    /// Counters of one virtio-blk disk, updated by the device as it serves requests.
    BlkCounters;
    /// A serializable view of one disk's [`BlkCounters`].
    BlkSnapshot {
        /// Read (IN) requests completed.
        reads,
        /// Write (OUT) requests completed.
        writes,
        /// Bytes read into guest buffers.
        read_bytes,
        /// Bytes written to the disk.
        write_bytes,
        /// FLUSH requests completed.
        flushes,
        /// Requests that failed (I/O error, invalid or unsupported request, or no status
        /// byte to report in).
        errors,
    }
}

counters! {
    /// Counters of the virtio-vsock device and its hybrid unix-socket backend.
    VsockCounters;
    /// A serializable view of [`VsockCounters`].
    VsockSnapshot {
        /// Packets put into guest rx buffers (data and control).
        rx_packets,
        /// Payload bytes of those packets (headers not counted).
        rx_bytes,
        /// Packets read from the guest's tx queue (unreadable chains not included).
        tx_packets,
        /// Payload bytes of the guest's data packets.
        tx_bytes,
        /// Connections opened (guest-initiated and host-initiated).
        connections_opened,
        /// Connections refused or reset by the host side: RST packets sent to the guest.
        connections_reset,
        /// Guest packets dropped as malformed (unreadable chain, wrong CIDs).
        dropped_malformed,
    }
}

counters! {
    /// Counters of the virtio-fs devices (FUSE requests served).
    FsCounters;
    /// A serializable view of [`FsCounters`], summed over every share.
    FsSnapshot {
        /// FUSE requests taken off the queues.
        requests,
        /// Requests answered with an error (e.g. ENOENT of a LOOKUP) or that could not be
        /// served (malformed buffers or message).
        errors,
        /// Bytes read from the share (READ replies).
        read_bytes,
        /// Bytes written to the share (WRITE requests).
        write_bytes,
    }
}

counters! {
    /// Counters of the virtio-rng device.
    RngCounters;
    /// A serializable view of [`RngCounters`].
    RngSnapshot {
        /// Requests (descriptor chains) served.
        requests,
        /// Random bytes given to the guest.
        bytes,
    }
}
