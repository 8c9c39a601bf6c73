//! The guest initramfs: a newc cpio archive (`cpio -o -H newc`), gzip'd as
//! `agent/build-image.sh` makes it (or plain). Its `init` is moat-agent, which embeds
//! `MOAT_AGENT_VERSION=<version>\n` ([`super::AGENT_VERSION_MARKER`]).
//!
//! newc: each entry is a 110-byte ASCII header (`070701` or `070702`, then 13 fields of 8
//! hex digits: ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
//! rdevminor, namesize, check), the NUL-terminated name, padding to 4 bytes, the data,
//! padding to 4 bytes; `TRAILER!!!` ends an archive. The kernel unpacks archives one after
//! another (a later `init` replaces an earlier one), so this reads them all.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::scan::{find_tag, Tag};
use super::{ImageError, AGENT_VERSION_MARKER};

/// The longest entry name read (the kernel's `PATH_MAX`).
const MAX_NAME: u64 = 4096;
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;

/// How the archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (what `agent/build-image.sh` makes).
    Gzip,
    /// None: a plain cpio archive.
    None,
}

/// What the initramfs holds that moat needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initramfs {
    /// Its compression.
    pub compression: Compression,
    /// Its `init` entry, if it has one (the last one, as the kernel unpacks them).
    pub init: Option<InitEntry>,
}

/// The initramfs' `/init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitEntry {
    /// Its file mode (type and permissions).
    pub mode: u32,
    /// Its size, bytes.
    pub size: u64,
    /// The agent version its marker names, if it holds one.
    pub agent_version: Option<String>,
}

impl InitEntry {
    /// Whether it is a regular file with an execute bit.
    pub fn is_executable_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG && self.mode & 0o111 != 0
    }
}

/// The agent's version marker: `MOAT_AGENT_VERSION=<version>\n`.
const AGENT_VERSION: Tag = Tag {
    prefix: AGENT_VERSION_MARKER,
    terminators: b"\n",
    max_len: 64,
    accept: |v| {
        !v.is_empty()
            && v.iter()
                .all(|b| b.is_ascii_alphanumeric() || b".-+_~".contains(b))
    },
};

/// Reads the initramfs at `path`.
pub fn read_initramfs(path: &Path) -> Result<Initramfs, ImageError> {
    let mut file = File::open(path).map_err(|e| ImageError::io(path, e))?;
    let mut magic = [0u8; 6];
    let n = read_full(&mut file, &mut magic).map_err(|e| ImageError::io(path, e))?;
    let not_cpio = |why: String| ImageError::NotCpio {
        path: path.to_path_buf(),
        why,
    };
    let file = File::open(path).map_err(|e| ImageError::io(path, e))?;
    let (compression, reader): (_, Box<dyn Read>) = match &magic[..n] {
        [0x1f, 0x8b, ..] => (
            Compression::Gzip,
            Box::new(MultiGzDecoder::new(BufReader::new(file))),
        ),
        [b'0', b'7', b'0', b'7', b'0', b'1' | b'2'] => {
            (Compression::None, Box::new(BufReader::new(file)))
        }
        _ => return Err(not_cpio("neither gzip nor newc cpio magic".into())),
    };
    let init = read_archive(reader).map_err(|e| match e {
        // An error of the system (not of the data: gzip's, or a cut-short archive).
        ArchiveError::Io(e) if e.raw_os_error().is_some() => ImageError::io(path, e),
        other => not_cpio(other.to_string()),
    })?;
    Ok(Initramfs { compression, init })
}

/// Why an archive could not be read.
#[derive(Debug, thiserror::Error)]
enum ArchiveError {
    /// The stream failed: the file, or its gzip data.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The cpio structure is wrong.
    #[error("{0}")]
    Corrupt(String),
}

/// The last `init` entry of the archives in `r`.
fn read_archive(r: impl Read) -> Result<Option<InitEntry>, ArchiveError> {
    let mut r = Counted { inner: r, pos: 0 };
    let mut init = None;
    let mut entries = 0u64;
    while let Some(header) = next_header(&mut r)? {
        let name = read_name(&mut r, &header)?;
        let mut data = (&mut r).take(header.file_size);
        if name == "TRAILER!!!" && header.file_size == 0 {
            continue;
        }
        entries += 1;
        if matches!(name.as_str(), "init" | "./init" | "/init") {
            let agent_version = if header.mode & S_IFMT == S_IFREG {
                find_tag(&mut data, &AGENT_VERSION)?
            } else {
                None
            };
            init = Some(InitEntry {
                mode: header.mode,
                size: header.file_size,
                agent_version,
            });
        }
        std::io::copy(&mut data, &mut std::io::sink())?;
        // `take` ends early only at the end of the stream.
        if data.limit() != 0 {
            return Err(ArchiveError::Corrupt(format!(
                "entry {name:?} is cut short"
            )));
        }
        skip_padding(&mut r)?;
    }
    if entries == 0 {
        return Err(ArchiveError::Corrupt("no entries".into()));
    }
    Ok(init)
}

/// One newc header's fields moat uses.
struct Header {
    mode: u32,
    file_size: u64,
    name_size: u64,
}

/// The next entry's header, skipping the NUL padding between archives; `None` at the end.
fn next_header(r: &mut Counted<impl Read>) -> Result<Option<Header>, ArchiveError> {
    let mut raw = [0u8; 110];
    loop {
        let mut first = [0u8; 1];
        if r.read(&mut first)? == 0 {
            return Ok(None);
        }
        if first[0] != 0 {
            raw[0] = first[0];
            break;
        }
    }
    exact(r, &mut raw[1..], "a header")?;
    if &raw[..5] != b"07070" || !matches!(raw[5], b'1' | b'2') {
        return Err(ArchiveError::Corrupt(format!(
            "no newc header at byte {} of the archive",
            r.pos - 110
        )));
    }
    let field = |i: usize| -> Result<u64, ArchiveError> {
        let text = std::str::from_utf8(&raw[6 + 8 * i..14 + 8 * i]).unwrap_or("");
        u64::from_str_radix(text, 16)
            .map_err(|_| ArchiveError::Corrupt(format!("header field {i} is not hex: {text:?}")))
    };
    Ok(Some(Header {
        mode: field(1)? as u32,
        file_size: field(6)?,
        name_size: field(11)?,
    }))
}

/// The entry's name, and the padding after it.
fn read_name(r: &mut Counted<impl Read>, h: &Header) -> Result<String, ArchiveError> {
    if h.name_size == 0 || h.name_size > MAX_NAME {
        return Err(ArchiveError::Corrupt(format!(
            "name size {} is not in 1..={MAX_NAME}",
            h.name_size
        )));
    }
    let mut name = vec![0u8; h.name_size as usize];
    exact(r, &mut name, "a name")?;
    skip_padding(r)?;
    if name.pop() != Some(0) {
        return Err(ArchiveError::Corrupt("a name is not NUL-terminated".into()));
    }
    Ok(String::from_utf8_lossy(&name).into_owned())
}

/// Reads up to the next multiple of 4 bytes of the stream.
fn skip_padding(r: &mut Counted<impl Read>) -> Result<(), ArchiveError> {
    let pad = (4 - r.pos % 4) % 4;
    let mut buf = [0u8; 3];
    read_full(r, &mut buf[..pad as usize])?;
    Ok(())
}

/// Fills `buf` from the stream; its end first is a corrupt archive (`what` is cut short).
fn exact(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), ArchiveError> {
    if read_full(r, buf)? < buf.len() {
        return Err(ArchiveError::Corrupt(format!("{what} is cut short")));
    }
    Ok(())
}

/// Reads as much of `buf` as the stream has; how much that was.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A reader that counts what was read (newc pads to the archive's offsets).
struct Counted<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
