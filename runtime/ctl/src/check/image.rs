//! Readers of the guest images, shared by `moat check` and `moat env`: the guest kernel (a
//! vmlinux ELF: its PVH entry note and its `Linux version` banner, [`elf`]) and the
//! initramfs (a gzip'd newc cpio: its `init` entry and the agent version marker inside it,
//! [`cpio`]). Both stream the files: a vmlinux with debug info is hundreds of MiB.

pub mod cpio;
pub mod elf;
pub mod scan;

use std::path::{Path, PathBuf};

pub use cpio::{read_initramfs, Compression};
pub use elf::read_kernel;

/// The marker the agent embeds in its binary: `MOAT_AGENT_VERSION=<version>\n`.
pub const AGENT_VERSION_MARKER: &[u8] = b"MOAT_AGENT_VERSION=";

/// Why a guest image could not be read as what it should be.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file does not exist.
    #[error("{0}: absent")]
    Absent(PathBuf),
    /// The file exists but could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not an ELF file of the kind a vmlinux is (64-bit, little-endian).
    #[error("{path}: not a 64-bit little-endian ELF file ({why})")]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// An ELF file without the PVH entry note.
    #[error(
        "{0}: no PVH entry note (ELF note owner \"Xen\", type 18 XEN_ELFNOTE_PHYS32_ENTRY): \
         moat-vmm cannot boot it"
    )]
    NoPvhNote(PathBuf),
    /// Not a gzip'd (or plain) newc cpio archive.
    #[error("{path}: not a gzip'd newc cpio archive ({why})")]
    NotCpio {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl ImageError {
    /// The error for an I/O failure on `path`: [`ImageError::Absent`] when it is missing.
    pub fn io(path: &Path, source: std::io::Error) -> ImageError {
        if source.kind() == std::io::ErrorKind::NotFound {
            ImageError::Absent(path.to_path_buf())
        } else {
            ImageError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}
