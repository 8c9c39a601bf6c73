//! The guest kernel: a 64-bit little-endian vmlinux ELF. moat-vmm boots it at its PVH entry,
//! which the kernel names in an ELF note (owner `Xen`, type 18 `XEN_ELFNOTE_PHYS32_ENTRY`,
//! in a `PT_NOTE` segment or a `SHT_NOTE` section); its `Linux version ...` banner says which
//! kernel it is.

use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::scan::{find_tag, Tag};
use super::ImageError;

/// The note type of the PVH entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// The owner of the PVH entry note.
const XEN_NOTE_OWNER: &[u8] = b"Xen\0";
/// The most of one note segment or section read (the kernel's are a few hundred bytes).
const MAX_NOTES: u64 = 1 << 20;
const PT_NOTE: u32 = 4;
const SHT_NOTE: u32 = 7;

/// What the guest kernel is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The PVH entry point (a guest-physical address).
    pub pvh_entry: u64,
    /// The `Linux version ...` banner, if the file holds one.
    pub linux_version: Option<String>,
}

/// The banner of a Linux kernel: `Linux version 6.12.0 (builder@host) (gcc ...) #1 SMP ...`.
/// A vmlinux also holds a placeholder banner without the build number (`... # SMP `, from
/// `init/version.c`; the real one comes from `init/version-timestamp.c`): a banner counts
/// only with a `#` directly followed by its build version.
const BANNER: Tag = Tag {
    prefix: b"Linux version ",
    terminators: b"\n\0",
    max_len: 512,
    accept: |v| {
        v.first().is_some_and(u8::is_ascii_digit)
            && v.iter().all(|b| (0x20..0x7f).contains(b))
            && v.windows(3)
                .any(|w| w[0] == b' ' && w[1] == b'#' && w[2] != b' ')
    },
};

/// Reads the kernel at `path`: an ELF with the PVH entry note, and its banner.
pub fn read_kernel(path: &Path) -> Result<Kernel, ImageError> {
    let file = File::open(path).map_err(|e| ImageError::io(path, e))?;
    let pvh_entry = pvh_entry(&file, path)?;
    let linux_version = find_tag(BufReader::new(&file), &BANNER)
        .map_err(|e| ImageError::io(path, e))?
        .map(|v| format!("Linux version {}", v.trim_end()));
    Ok(Kernel {
        pvh_entry,
        linux_version,
    })
}

/// The PVH entry point from the file's note segments, else its note sections.
fn pvh_entry(file: &File, path: &Path) -> Result<u64, ImageError> {
    let not_elf = |why: &str| ImageError::NotElf {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    let mut ehdr = [0u8; 64];
    let mut len = 0;
    while len < ehdr.len() {
        match file.read_at(&mut ehdr[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ImageError::io(path, e)),
        }
    }
    if !ehdr[..len].starts_with(b"\x7fELF") {
        return Err(not_elf("no ELF magic"));
    }
    if len < ehdr.len() {
        return Err(not_elf("shorter than an ELF header"));
    }
    if ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(not_elf("not ELFCLASS64 / ELFDATA2LSB"));
    }
    let segments = Table {
        offset: u64_at(&ehdr, 32),
        entry_size: u16_at(&ehdr, 54).into(),
        count: u16_at(&ehdr, 56).into(),
    };
    let sections = Table {
        offset: u64_at(&ehdr, 40),
        entry_size: u16_at(&ehdr, 58).into(),
        count: u16_at(&ehdr, 60).into(),
    };
    // Program header: p_type at 0, p_offset at 8, p_filesz at 32.
    let in_segments = segments.entries(file, 56, |h| (u32_at(h, 0) == PT_NOTE, 8, 32));
    // Section header: sh_type at 4, sh_offset at 24, sh_size at 32.
    let in_sections = sections.entries(file, 64, |h| (u32_at(h, 4) == SHT_NOTE, 24, 32));
    in_segments
        .into_iter()
        .chain(in_sections)
        .find_map(|(offset, size)| pvh_note_in(file, offset, size))
        .ok_or_else(|| ImageError::NoPvhNote(path.to_path_buf()))
}

/// A table of ELF headers (program or section headers).
struct Table {
    offset: u64,
    entry_size: u64,
    count: u64,
}

impl Table {
    /// `(offset, size)` of each entry that `pick` (given the header: whether it is a note,
    /// where its offset and size fields are) says is a note. An unreadable table (or its
    /// unreadable rest) has none.
    fn entries(
        &self,
        file: &File,
        min_size: u64,
        pick: impl Fn(&[u8]) -> (bool, usize, usize),
    ) -> Vec<(u64, u64)> {
        if self.offset == 0 || self.count == 0 || self.entry_size < min_size {
            return Vec::new();
        }
        let mut header = vec![0u8; self.entry_size as usize];
        let mut found = Vec::new();
        for i in 0..self.count {
            let at = self.offset.saturating_add(i * self.entry_size);
            if file.read_exact_at(&mut header, at).is_err() {
                break;
            }
            let (is_note, off_at, size_at) = pick(&header);
            if is_note {
                found.push((u64_at(&header, off_at), u64_at(&header, size_at)));
            }
        }
        found
    }
}

/// The PVH entry in the notes at `offset` (`size` bytes), if one is there (and readable).
fn pvh_note_in(file: &File, offset: u64, size: u64) -> Option<u64> {
    let mut notes = vec![0u8; size.min(MAX_NOTES) as usize];
    file.read_exact_at(&mut notes, offset).ok()?;
    let entry = parse_notes(&notes)
        .find(|n| n.kind == XEN_ELFNOTE_PHYS32_ENTRY && n.name == XEN_NOTE_OWNER)
        .and_then(|n| match n.desc.len() {
            4 => Some(u32_at(n.desc, 0).into()),
            8.. => Some(u64_at(n.desc, 0)),
            _ => None,
        });
    entry
}

/// One ELF note.
struct Note<'a> {
    name: &'a [u8],
    kind: u32,
    desc: &'a [u8],
}

/// The notes in `bytes` (each: namesz, descsz, type, name and desc padded to 4 bytes).
fn parse_notes(bytes: &[u8]) -> impl Iterator<Item = Note<'_>> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.len() < 12 {
            return None;
        }
        let name_size = u32_at(rest, 0) as usize;
        let desc_size = u32_at(rest, 4) as usize;
        let kind = u32_at(rest, 8);
        let name_end = 12usize.checked_add(name_size)?;
        let desc_start = name_end.checked_next_multiple_of(4)?;
        let desc_end = desc_start.checked_add(desc_size)?;
        if desc_end > rest.len() {
            return None;
        }
        let note = Note {
            name: &rest[12..name_end],
            kind,
            desc: &rest[desc_start..desc_end],
        };
        rest = &rest[desc_end.checked_next_multiple_of(4)?.min(rest.len())..];
        Some(note)
    })
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{pvh_elf, ElfNote};

    fn write(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_the_pvh_entry_and_banner() {
        let (_d, path) = write(&pvh_elf(ElfNote::Pvh, Some("6.12.1 (me@here) #1 SMP")));
        let k = read_kernel(&path).unwrap();
        assert_eq!(k.pvh_entry, 0x100_0000);
        assert_eq!(
            k.linux_version.as_deref(),
            Some("Linux version 6.12.1 (me@here) #1 SMP")
        );
        // The placeholder banner before the real one is passed over.
        let mut elf = pvh_elf(ElfNote::Pvh, Some("6.12.1 (me@here) # SMP "));
        elf.extend(b"\0Linux version 6.12.1 (me@here) #7 SMP Sun Dec  6 18:25:35 UTC 2026 \n\0");
        let (_d, path) = write(&elf);
        assert_eq!(
            read_kernel(&path).unwrap().linux_version.as_deref(),
            Some("Linux version 6.12.1 (me@here) #7 SMP Sun Dec  6 18:25:35 UTC 2026")
        );
    }

    #[test]
    fn a_note_section_is_enough_and_the_banner_is_optional() {
        let (_d, path) = write(&pvh_elf(ElfNote::PvhInSectionOnly, None));
        let k = read_kernel(&path).unwrap();
        assert_eq!(k.pvh_entry, 0x100_0000);
        assert_eq!(k.linux_version, None);
    }

    #[test]
    fn faults_are_named() {
        let (_d, path) = write(&pvh_elf(ElfNote::OtherOwner, None));
        assert!(matches!(read_kernel(&path), Err(ImageError::NoPvhNote(_))));
        let (_d, path) = write(b"MZ\x90\0 a bzImage or a PE file");
        let e = read_kernel(&path).unwrap_err();
        assert!(e.to_string().contains("no ELF magic"), "{e}");
        let (_d, path) = write(b"\x7fELF");
        assert!(matches!(read_kernel(&path), Err(ImageError::NotElf { .. })));
        let e = read_kernel(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(matches!(e, ImageError::Absent(_)), "{e}");
    }

    #[test]
    fn hostile_notes_end_the_walk() {
        let mut n = Vec::new();
        n.extend(u32::MAX.to_le_bytes());
        n.extend(4u32.to_le_bytes());
        n.extend(18u32.to_le_bytes());
        assert_eq!(parse_notes(&n).count(), 0);
        assert_eq!(parse_notes(&[0; 11]).count(), 0);
    }
}
