//! Test fixtures: hand-made guest images (a vmlinux-like ELF with or without the PVH note, a
//! newc cpio) and a [`Host`] whose every path is in a temporary directory.

use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use tempfile::TempDir;

use super::host::Host;

/// The PVH entry the fixture ELF names.
pub const PVH_ENTRY: u64 = 0x100_0000;

/// Which note the fixture ELF has.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ElfNote {
    /// The PVH note in a `PT_NOTE` segment.
    Pvh,
    /// The PVH note only in a `SHT_NOTE` section (no `PT_NOTE` segment).
    PvhInSectionOnly,
    /// A type-18 note whose owner is not `Xen`: not a PVH note.
    OtherOwner,
}

/// A minimal ELF64 like a vmlinux: one program header, the note, optionally the Linux
/// banner (`Linux version <banner>`), and for [`ElfNote::PvhInSectionOnly`] a section table.
pub fn pvh_elf(kind: ElfNote, banner: Option<&str>) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let owner: &[u8] = if kind == ElfNote::OtherOwner {
        b"Foo\0"
    } else {
        b"Xen\0"
    };
    let mut note = Vec::new();
    note.extend(4u32.to_le_bytes()); // namesz
    note.extend(8u32.to_le_bytes()); // descsz
    note.extend(18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend(owner);
    note.extend(PVH_ENTRY.to_le_bytes());
    let note_off = EHDR + PHDR;

    let mut elf = vec![0u8; EHDR];
    elf[0..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // ELFCLASS64
    elf[5] = 1; // little endian
    elf[6] = 1;
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
    elf[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    elf[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
    elf[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
    elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let p_type: u32 = if kind == ElfNote::PvhInSectionOnly {
        1
    } else {
        4
    };
    elf.extend(p_type.to_le_bytes());
    elf.extend(4u32.to_le_bytes()); // p_flags
    elf.extend((note_off as u64).to_le_bytes()); // p_offset
    elf.extend([0u8; 16]); // p_vaddr, p_paddr
    elf.extend((note.len() as u64).to_le_bytes()); // p_filesz
    elf.extend((note.len() as u64).to_le_bytes()); // p_memsz
    elf.extend(4u64.to_le_bytes()); // p_align
    elf.extend(&note);
    if let Some(b) = banner {
        elf.extend(b"\0Linux version ");
        elf.extend(b.as_bytes());
        elf.extend(b"\n\0");
    }
    if kind == ElfNote::PvhInSectionOnly {
        let shoff = elf.len().next_multiple_of(8);
        elf.resize(shoff + 64, 0); // section 0: SHT_NULL
        let mut sh = [0u8; 64];
        sh[4..8].copy_from_slice(&7u32.to_le_bytes()); // SHT_NOTE
        sh[24..32].copy_from_slice(&(note_off as u64).to_le_bytes());
        sh[32..40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        elf.extend(sh);
        elf[40..48].copy_from_slice(&(shoff as u64).to_le_bytes()); // e_shoff
        elf[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        elf[60..62].copy_from_slice(&2u16.to_le_bytes()); // e_shnum
    }
    elf
}

/// A newc cpio archive, written by hand.
#[derive(Default)]
pub struct Cpio(Vec<u8>);

impl Cpio {
    /// An entry `name` with `mode` (type and permissions) and `data`.
    pub fn entry(mut self, name: &str, mode: u32, data: &[u8]) -> Self {
        let ino = self.0.len() as u32 + 1;
        let header = format!(
            "070701{ino:08X}{mode:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
        );
        self.0.extend(header.as_bytes());
        self.0.extend(name.as_bytes());
        self.0.push(0);
        self.pad();
        self.0.extend(data);
        self.pad();
        self
    }

    /// A regular executable file.
    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, 0o100755, data)
    }

    /// A directory.
    pub fn dir(self, name: &str) -> Self {
        self.entry(name, 0o040755, b"")
    }

    /// The archive with its trailer.
    pub fn finish(self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, b"").0
    }

    fn pad(&mut self) {
        self.0.resize(self.0.len().next_multiple_of(4), 0);
    }
}

/// `bytes` gzip'd.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// An agent binary's stand-in: some bytes with the version marker for `version`.
pub fn agent_with_marker(version: &str) -> Vec<u8> {
    let mut agent = b"\x7fELF\x02\x01\x01 a static moat-agent ".to_vec();
    agent.extend(vec![0xa5u8; 5000]);
    agent.extend(format!("MOAT_AGENT_VERSION={version}\n").as_bytes());
    agent.extend(vec![0x5au8; 3000]);
    agent
}

/// The initramfs `agent/build-image.sh` makes, around `init` (gzip'd).
pub fn initramfs(init: &[u8]) -> Vec<u8> {
    gzip(
        &Cpio::default()
            .dir("dev")
            .dir("proc")
            .file("init", init)
            .dir("tmp")
            .finish(),
    )
}

/// Writes `bytes` to `dir/name` with `mode`; its path.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A [`Host`] whose paths all lie in `dir` (none of them exists yet), with an empty `$PATH`
/// of its own (`dir/bin`, made) and no executable of its own.
pub fn temp_host(dir: &TempDir) -> Host {
    let d = dir.path();
    std::fs::create_dir_all(d.join("bin")).unwrap();
    Host {
        dev_kvm: d.join("dev/kvm"),
        dev_tun: d.join("dev/net/tun"),
        sys_module: d.join("sys/module"),
        proc_cpuinfo: d.join("proc/cpuinfo"),
        proc_meminfo: d.join("proc/meminfo"),
        sys_fs_cgroup: d.join("sys/fs/cgroup"),
        mountinfo: d.join("proc/self/mountinfo"),
        containerd_config: d.join("etc/containerd/config.toml"),
        path: d.join("bin").into_os_string(),
        self_exe: None,
    }
}

/// Makes at `path` a character device that does not open (an unassigned major, 240:
/// local/experimental); false, with the reason printed, where this host does not let us.
pub fn unopenable_char_device(path: &Path) -> bool {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let made = std::process::Command::new("mknod")
        .arg(path)
        .args(["c", "240", "0"])
        .output();
    match made {
        Ok(out) if out.status.success() => true,
        other => {
            eprintln!(
                "SKIPPED: cannot mknod {} here (not root?): {other:?}",
                path.display()
            );
            false
        }
    }
}
