//! A small writer (and reader, for checking) of gzip'd "newc" cpio archives,
//! the format the Linux kernel unpacks as an initramfs.
//!
//! The test host builds its L1 initramfs with this module, so the harness
//! needs no external `cpio` or `gzip` tool.

use std::io::{self, Read, Write};
use std::path::Path;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

/// Magic number at the start of every newc header (no CRC variant).
const NEWC_MAGIC: &[u8; 6] = b"070701";
/// Name of the entry that terminates an archive.
const TRAILER: &str = "TRAILER!!!";
/// File type bits of `st_mode`.
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Errors from building or parsing a cpio archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// An entry name is empty, absolute, contains `..`/NUL, or was added twice.
    #[error("invalid cpio entry name {name:?}: {reason}")]
    BadName {
        /// The offending name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The bytes being parsed are not a well-formed newc archive.
    #[error("malformed cpio archive: {0}")]
    Malformed(String),
    /// Reading or writing failed.
    #[error("cpio I/O error: {0}")]
    Io(#[from] io::Error),
}

/// What kind of file an [`Entry`] describes, with its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file and its contents.
    File(Vec<u8>),
    /// A symbolic link and its target.
    Symlink(String),
    /// A character device node with its major and minor numbers.
    CharDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

/// One member of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, relative (no leading `/`), e.g. `bin/sh`.
    pub name: String,
    /// Permission bits (`0o755`, ...), without the file-type bits.
    pub perm: u32,
    /// The entry's type and payload.
    pub kind: EntryKind,
}

impl Entry {
    /// Full `st_mode`: type bits plus permission bits.
    fn mode(&self) -> u32 {
        let ty = match self.kind {
            EntryKind::Dir => S_IFDIR,
            EntryKind::File(_) => S_IFREG,
            EntryKind::Symlink(_) => S_IFLNK,
            EntryKind::CharDevice { .. } => S_IFCHR,
        };
        ty | (self.perm & 0o7777)
    }

    /// The bytes stored after the header: file contents or link target.
    fn data(&self) -> &[u8] {
        match &self.kind {
            EntryKind::File(data) => data,
            EntryKind::Symlink(target) => target.as_bytes(),
            EntryKind::Dir | EntryKind::CharDevice { .. } => &[],
        }
    }
}

/// An in-memory list of entries, written out as a newc cpio archive.
///
/// Entries are written in the order they were added; add parent directories
/// before their contents (the kernel creates them in order).
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: Vec<Entry>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entries added so far, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Adds a directory with permission bits `perm`.
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<&mut Self, CpioError> {
        self.push(name, perm, EntryKind::Dir)
    }

    /// Adds a regular file with permission bits `perm` and contents `data`.
    pub fn file(
        &mut self,
        name: &str,
        perm: u32,
        data: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, CpioError> {
        self.push(name, perm, EntryKind::File(data.into()))
    }

    /// Adds a symbolic link `name` pointing at `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<&mut Self, CpioError> {
        self.push(name, 0o777, EntryKind::Symlink(target.to_owned()))
    }

    /// Adds a character device node (e.g. `dev/console`, 5:1).
    pub fn char_device(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, CpioError> {
        self.push(name, perm, EntryKind::CharDevice { major, minor })
    }

    fn push(&mut self, name: &str, perm: u32, kind: EntryKind) -> Result<&mut Self, CpioError> {
        let bad = |reason| CpioError::BadName {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.starts_with('/') {
            return Err(bad("must be relative"));
        }
        if name.contains('\0') {
            return Err(bad("contains NUL"));
        }
        if name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad("has an empty, `.` or `..` component"));
        }
        if self.entries.iter().any(|e| e.name == name) {
            return Err(bad("added twice"));
        }
        self.entries.push(Entry {
            name: name.to_owned(),
            perm,
            kind,
        });
        Ok(self)
    }

    /// Writes the uncompressed newc archive (with trailer) to `out`.
    pub fn write_newc<W: Write>(&self, mut out: W) -> Result<W, CpioError> {
        let mut offset = 0usize;
        for (i, e) in self.entries.iter().enumerate() {
            let (rmaj, rmin) = match e.kind {
                EntryKind::CharDevice { major, minor } => (major, minor),
                _ => (0, 0),
            };
            let nlink = if matches!(e.kind, EntryKind::Dir) {
                2
            } else {
                1
            };
            let ino = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let header = Header {
                ino,
                mode: e.mode(),
                nlink,
                filesize: len_u32(e.data().len())?,
                rdevmajor: rmaj,
                rdevminor: rmin,
            };
            offset += write_member(&mut out, &header, &e.name, e.data())?;
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            filesize: 0,
            rdevmajor: 0,
            rdevminor: 0,
        };
        offset += write_member(&mut out, &trailer, TRAILER, &[])?;
        // Pad the whole archive to 512 bytes, as cpio(1) does.
        out.write_all(&vec![0u8; (512 - offset % 512) % 512])?;
        Ok(out)
    }

    /// Returns the archive as gzip'd newc bytes (what `-initrd` takes).
    pub fn to_gzip(&self) -> Result<Vec<u8>, CpioError> {
        let enc = GzEncoder::new(Vec::new(), Compression::fast());
        Ok(self.write_newc(enc)?.finish()?)
    }

    /// Writes the gzip'd archive to `path` atomically (temp file + rename),
    /// so concurrent writers and readers never see a partial file.
    pub fn write_gzip_file(&self, path: &Path) -> Result<(), CpioError> {
        let bytes = self.to_gzip()?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        Ok(())
    }

    /// Parses an uncompressed newc archive (stops at the trailer).
    pub fn parse_newc(bytes: &[u8]) -> Result<Self, CpioError> {
        let mut entries = Vec::new();
        let mut pos = 0usize;
        loop {
            let hdr = bytes
                .get(pos..pos + 110)
                .ok_or_else(|| CpioError::Malformed(format!("truncated header at {pos}")))?;
            if &hdr[..6] != NEWC_MAGIC {
                return Err(CpioError::Malformed(format!("bad magic at {pos}")));
            }
            let field = |i: usize| -> Result<u32, CpioError> {
                let s = std::str::from_utf8(&hdr[6 + 8 * i..14 + 8 * i])
                    .map_err(|_| CpioError::Malformed("non-ASCII header".into()))?;
                u32::from_str_radix(s, 16)
                    .map_err(|_| CpioError::Malformed(format!("bad hex field {s:?}")))
            };
            let mode = field(1)?;
            let filesize = field(6)? as usize;
            let (rmaj, rmin) = (field(9)?, field(10)?);
            let namesize = field(11)? as usize;
            let name_start = pos + 110;
            let name_bytes = bytes
                .get(name_start..name_start + namesize)
                .ok_or_else(|| CpioError::Malformed("truncated name".into()))?;
            let name = std::str::from_utf8(name_bytes.strip_suffix(&[0]).unwrap_or(name_bytes))
                .map_err(|_| CpioError::Malformed("non-UTF-8 name".into()))?
                .to_owned();
            let data_start = align4(name_start + namesize);
            let data = bytes
                .get(data_start..data_start + filesize)
                .ok_or_else(|| CpioError::Malformed(format!("truncated data of {name}")))?;
            pos = align4(data_start + filesize);
            if name == TRAILER {
                break;
            }
            let kind = match mode & S_IFMT {
                S_IFDIR => EntryKind::Dir,
                S_IFREG => EntryKind::File(data.to_vec()),
                S_IFLNK => EntryKind::Symlink(
                    String::from_utf8(data.to_vec())
                        .map_err(|_| CpioError::Malformed("non-UTF-8 link".into()))?,
                ),
                S_IFCHR => EntryKind::CharDevice {
                    major: rmaj,
                    minor: rmin,
                },
                other => return Err(CpioError::Malformed(format!("unsupported type {other:o}"))),
            };
            entries.push(Entry {
                name,
                perm: mode & 0o7777,
                kind,
            });
        }
        Ok(Self { entries })
    }

    /// Parses a gzip'd newc archive.
    pub fn parse_gzip(bytes: &[u8]) -> Result<Self, CpioError> {
        let mut raw = Vec::new();
        GzDecoder::new(bytes).read_to_end(&mut raw)?;
        Self::parse_newc(&raw)
    }
}

/// The variable fields of one newc header (the rest are zero).
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdevmajor: u32,
    rdevminor: u32,
}

/// Writes header + name + data with newc padding; returns bytes written.
fn write_member<W: Write>(
    out: &mut W,
    h: &Header,
    name: &str,
    data: &[u8],
) -> Result<usize, CpioError> {
    let namesize = len_u32(name.len() + 1)?;
    let fields = [
        h.ino,
        h.mode,
        0, // uid
        0, // gid
        h.nlink,
        0, // mtime: fixed, so archives are reproducible
        h.filesize,
        0, // devmajor
        0, // devminor
        h.rdevmajor,
        h.rdevminor,
        namesize,
        0, // check
    ];
    let mut head = Vec::with_capacity(110 + name.len() + 4);
    head.extend_from_slice(NEWC_MAGIC);
    for f in fields {
        head.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    head.extend_from_slice(name.as_bytes());
    head.push(0);
    head.resize(align4(head.len()), 0);
    out.write_all(&head)?;
    out.write_all(data)?;
    let pad = align4(data.len()) - data.len();
    out.write_all(&[0u8; 3][..pad])?;
    Ok(head.len() + data.len() + pad)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn len_u32(n: usize) -> Result<u32, CpioError> {
    u32::try_from(n)
        .map_err(|_| CpioError::Io(io::Error::new(io::ErrorKind::InvalidInput, "entry > 4 GiB")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.dir("bin", 0o755).unwrap();
        a.file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n".to_vec())
            .unwrap();
        a.file("empty", 0o600, Vec::new()).unwrap();
        a.file("odd", 0o644, vec![7u8; 5]).unwrap();
        a.symlink("bin/sh", "hello").unwrap();
        a.char_device("console", 0o600, 5, 1).unwrap();
        a
    }

    #[test]
    fn round_trips_through_gzip() {
        let a = sample();
        let gz = a.to_gzip().unwrap();
        let back = Archive::parse_gzip(&gz).unwrap();
        assert_eq!(back.entries(), a.entries());
    }

    #[test]
    fn archive_is_padded_to_512() {
        let raw = sample().write_newc(Vec::new()).unwrap();
        assert_eq!(raw.len() % 512, 0);
        assert!(raw.starts_with(NEWC_MAGIC));
    }

    #[test]
    fn rejects_bad_names() {
        let mut a = Archive::new();
        assert!(a.dir("/abs", 0o755).is_err());
        assert!(a.dir("a/../b", 0o755).is_err());
        assert!(a.dir("", 0o755).is_err());
        a.dir("x", 0o755).unwrap();
        assert!(a.dir("x", 0o755).is_err());
    }

    /// Cross-checks against the system `cpio` tool (`tests/scripts/setup-host.sh` installs it;
    /// a machine without it fails here, never skips).
    #[test]
    fn system_cpio_lists_it() {
        use std::process::{Command, Stdio};
        let raw = sample().write_newc(Vec::new()).unwrap();
        let child = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = child.unwrap_or_else(|e| {
            panic!("cpio(1) cannot run ({e}): install it (tests/scripts/setup-host.sh does)")
        });
        child.stdin.take().unwrap().write_all(&raw).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        let names: Vec<&str> = listing
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .map(|f| {
                // `-> target` follows symlink names.
                let end = f.iter().position(|w| *w == "->").unwrap_or(f.len());
                f[end - 1]
            })
            .collect();
        assert_eq!(
            names,
            ["bin", "bin/hello", "empty", "odd", "bin/sh", "console"]
        );
        assert!(listing.contains("bin/sh -> hello"), "{listing}");
        assert!(listing.lines().next().unwrap().starts_with("drwxr-xr-x"));
        assert!(listing.lines().last().unwrap().starts_with("crw-------"));
    }
}
