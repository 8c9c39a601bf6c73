//! Loading the guest: the vmlinux ELF (PVH entry), the kernel command line and the
//! initramfs, then the PVH start_info and MP table that describe the machine.

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch;
use crate::arch::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use crate::vstate::vcpu::BootEntry;

/// Errors loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The kernel ELF could not be loaded.
    #[error("cannot load kernel {path}: {source}")]
    Kernel {
        /// The file.
        path: String,
        /// The loader's error.
        source: linux_loader::loader::Error,
    },
    /// The kernel has no PVH entry point.
    #[error("kernel {0} has no PVH entry note (build it with CONFIG_PVH=y)")]
    NoPvhEntry(String),
    /// The command line could not be built or written.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// The initramfs could not be placed or read.
    #[error("initrd {path}: {why}")]
    Initrd {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// Writing the PVH boot structures failed.
    #[error(transparent)]
    Boot(#[from] arch::BootError),
    /// Writing the MP table failed.
    #[error(transparent)]
    Mptable(#[from] arch::MptableError),
}

/// Loads kernel, command line and initramfs into `mem` and writes the boot structures.
pub fn load_guest(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<(&Path, u64)>,
    cmdline: &str,
    num_cpus: u8,
) -> Result<BootEntry, LoadError> {
    let kernel_name = kernel.display().to_string();
    let mut kernel_file = File::open(kernel).map_err(|source| LoadError::Open {
        path: kernel_name.clone(),
        source,
    })?;
    let loaded = Elf::load(mem, None, &mut kernel_file, Some(GuestAddress(HIMEM_START))).map_err(
        |source| LoadError::Kernel {
            path: kernel_name.clone(),
            source,
        },
    )?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr,
        _ => return Err(LoadError::NoPvhEntry(kernel_name)),
    };

    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| LoadError::Cmdline(e.to_string()))?;
    cl.insert_str(cmdline)
        .map_err(|e| LoadError::Cmdline(e.to_string()))?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(|e| LoadError::Cmdline(e.to_string()))?;

    let initrd = match initrd {
        Some((path, size)) => Some(load_initrd(mem, path, size, loaded.kernel_end)?),
        None => None,
    };
    let start_info = arch::configure_pvh(mem, GuestAddress(CMDLINE_START), initrd)?;
    arch::setup_mptable(mem, num_cpus)?;
    Ok(BootEntry { entry, start_info })
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    size: u64,
    kernel_end: u64,
) -> Result<(GuestAddress, usize), LoadError> {
    let err = |why: String| LoadError::Initrd {
        path: path.display().to_string(),
        why,
    };
    let size = usize::try_from(size).map_err(|_| err("too large".into()))?;
    let addr = arch::initrd_load_addr(mem, size, GuestAddress(kernel_end))?;
    let mut file = File::open(path).map_err(|e| err(e.to_string()))?;
    mem.read_exact_volatile_from(addr, &mut file, size)
        .map_err(|e| err(format!("read failed (file changed size?): {e}")))?;
    Ok((addr, size))
}
