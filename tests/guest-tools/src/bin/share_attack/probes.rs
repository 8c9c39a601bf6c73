//! The one-shot attacks: mounting the share, filling a directory, making device nodes, planting
//! a setuid-root copy of this program, and saying who runs it.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{check, errno_name, outcome, PREFIX};

/// The size of each file `fill` writes first.
const FILL_CHUNK: usize = 1 << 20;

/// `path` as a C string (paths here never hold NUL bytes; one that does is refused).
fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

/// Mounts virtio-fs tag `tag` at `dir` (created first). Returns the lines to print and
/// whether the mount worked.
pub fn mount_share(dir: &Path, tag: &str) -> (Vec<String>, bool) {
    let mounted = std::fs::create_dir_all(dir).and_then(|()| {
        let (source, target) = (CString::new(tag)?, c_path(dir)?);
        // SAFETY: mount(2) with valid NUL-terminated strings and no data; result checked.
        check(unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                c"virtiofs".as_ptr(),
                0,
                std::ptr::null(),
            )
        })
    });
    let names: Vec<String> = match &mounted {
        Ok(()) => std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let lines = vec![
        format!("mount-share: {} holds {}", dir.display(), names.join(" ")),
        format!(
            "{PREFIX} mount-share dir={} tag={tag} result={} entries={}",
            dir.display(),
            outcome(&mounted),
            names.len()
        ),
    ];
    (lines, mounted.is_ok())
}

/// Optional limits of [`fill`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FillCaps {
    /// Stop writing data after this many MiB.
    pub mib: Option<u64>,
    /// Stop making files (data or empty) after this many.
    pub files: Option<u64>,
}

/// What [`fill`] did.
#[derive(Debug, Default)]
pub struct FillReport {
    /// The directory filled.
    pub dir: PathBuf,
    /// Bytes written.
    pub bytes: u64,
    /// Files created (with data or empty).
    pub files: u64,
    /// The errno that ended the data phase (`None`: a cap did).
    pub data_errno: Option<i32>,
    /// The errno that ended the empty-file phase (`None`: a cap did).
    pub errno: Option<i32>,
    /// Whether a cap stopped a phase.
    pub capped: bool,
    /// Files removed afterwards.
    pub removed: u64,
}

impl FillReport {
    /// The final line.
    pub fn report(&self) -> Vec<String> {
        let name = |e: Option<i32>| e.map_or("none".into(), errno_name);
        vec![format!(
            "{PREFIX} fill dir={} bytes={} files={} data_errno={} errno={} capped={} removed={}",
            self.dir.display(),
            self.bytes,
            self.files,
            name(self.data_errno),
            name(self.errno),
            u8::from(self.capped),
            self.removed
        )]
    }
}

/// Writes `data` to a new file at `path`; returns the bytes written and the error that
/// stopped it, if any (the file exists whenever any byte was written).
fn write_file(path: &Path, data: &[u8]) -> (u64, Option<io::Error>, bool) {
    let mut f = match File::create(path) {
        Ok(f) => f,
        Err(e) => return (0, Some(e), false),
    };
    let mut written = 0;
    while written < data.len() {
        match f.write(&data[written..]) {
            Ok(0) => return (written as u64, Some(io::ErrorKind::WriteZero.into()), true),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (written as u64, Some(e), true),
        }
    }
    match f.sync_all() {
        Ok(()) => (written as u64, None, true),
        Err(e) => (written as u64, Some(e), true),
    }
}

/// Fills `dir` with 1 MiB files until an error (or `caps.mib`), then with empty files until
/// an error (or `caps.files`), then removes them all.
pub fn fill(dir: &Path, caps: FillCaps) -> FillReport {
    let mut r = FillReport {
        dir: dir.to_path_buf(),
        ..FillReport::default()
    };
    let data = vec![0x5au8; FILL_CHUNK];
    let mut made = Vec::new();
    let files_left = |r: &FillReport| caps.files.is_none_or(|max| r.files < max);
    let mut phase = |r: &mut FillReport, chunk: &[u8], mib_cap: Option<u64>| loop {
        let bytes_left = mib_cap.is_none_or(|mib| r.bytes < mib << 20);
        if !bytes_left || !files_left(r) {
            r.capped = true;
            return None;
        }
        let path = dir.join(format!(".moat-fill-{}-{}", std::process::id(), made.len()));
        let (n, err, exists) = write_file(&path, chunk);
        r.bytes += n;
        if exists {
            r.files += 1;
            made.push(path);
        }
        if let Some(e) = err {
            return Some(e.raw_os_error().unwrap_or(libc::EIO));
        }
    };
    r.data_errno = phase(&mut r, &data, caps.mib);
    r.errno = phase(&mut r, &[], None);
    r.removed = made
        .iter()
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count() as u64;
    r
}

/// Tries a char device 1,1, a block device 8,0 and a FIFO in `dir` (created first); removes
/// whatever was made.
pub fn mknod(dir: &Path) -> Vec<String> {
    let made_dir = std::fs::create_dir_all(dir);
    let mut lines = vec![format!(
        "mknod: mkdir -p {}: {}",
        dir.display(),
        outcome(&made_dir)
    )];
    let mut results = Vec::new();
    for (key, kind, major, minor) in [
        ("chr", libc::S_IFCHR, 1, 1),
        ("blk", libc::S_IFBLK, 8, 0),
        ("fifo", libc::S_IFIFO, 0, 0),
    ] {
        let path = dir.join(format!("moat-attack-{key}"));
        let r = c_path(&path).and_then(|p| {
            // SAFETY: mknod(2) with a valid NUL-terminated path; result checked.
            check(unsafe { libc::mknod(p.as_ptr(), kind | 0o666, libc::makedev(major, minor)) })
        });
        let removed = r.is_ok() && std::fs::remove_file(&path).is_ok();
        lines.push(format!(
            "mknod: {} ({key} {major},{minor}): {} (removed: {removed})",
            path.display(),
            outcome(&r)
        ));
        results.push(format!("{key}={}", outcome(&r)));
    }
    lines.push(format!(
        "{PREFIX} mknod dir={} {}",
        dir.display(),
        results.join(" ")
    ));
    lines
}

/// Copies this program to `path`, chowns it 0:0 and chmods it 04755, stopping at the first
/// failure (later steps are `skipped`); reports each step and the file's mode and owner.
pub fn setuid(path: &Path) -> Vec<String> {
    let copy = std::fs::copy("/proc/self/exe", path).map(drop);
    let chown = copy
        .is_ok()
        .then(|| std::os::unix::fs::chown(path, Some(0), Some(0)));
    let chmod = chown
        .as_ref()
        .is_some_and(Result::is_ok)
        .then(|| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o4755)));
    let step = |r: &Option<io::Result<()>>| r.as_ref().map_or("skipped".into(), outcome);
    let (mode, uid) = match std::fs::symlink_metadata(path) {
        Ok(m) => (format!("{:o}", m.mode() & 0o7777), m.uid().to_string()),
        Err(e) => (
            errno_name(e.raw_os_error().unwrap_or(libc::EIO)),
            "none".into(),
        ),
    };
    vec![format!(
        "{PREFIX} setuid path={} copy={} chown={} chmod={} mode={mode} uid={uid}",
        path.display(),
        outcome(&copy),
        step(&chown),
        step(&chmod)
    )]
}

/// `ATTACK whoami euid=<n> uid=<n>`.
pub fn whoami() -> String {
    // SAFETY: geteuid(2) and getuid(2) cannot fail.
    let (euid, uid) = unsafe { (libc::geteuid(), libc::getuid()) };
    format!("{PREFIX} whoami euid={euid} uid={uid}")
}
