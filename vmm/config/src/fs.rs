//! virtio-fs shares.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_FS_TAG_LEN, MAX_SHARED_DIRS};
use crate::{check_range, ConfigError};

/// A host directory shared with the guest over virtio-fs (`mount -t virtiofs TAG DIR`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedDirConfig {
    /// The mount tag the guest uses: 1..=36 bytes of `[A-Za-z0-9_-]` (see [`valid_tag`]),
    /// unique per VM.
    pub tag: String,
    /// The host directory; the guest sees only what is below it (symlinks are not followed
    /// on the host).
    pub path: PathBuf,
}

/// True if `tag` is a valid virtio-fs tag for moat: 1..=[`MAX_FS_TAG_LEN`] bytes of
/// `[A-Za-z0-9_-]`.
pub fn valid_tag(tag: &str) -> bool {
    (1..=MAX_FS_TAG_LEN).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks the shares (valid unique tags, UTF-8 paths of directories); returns them with
/// canonical paths.
pub(crate) fn check_shared_dirs(
    dirs: &[SharedDirConfig],
) -> Result<Vec<SharedDirConfig>, ConfigError> {
    check_range(
        "shared_dirs (count)",
        dirs.len() as u64,
        0,
        MAX_SHARED_DIRS as u64,
    )?;
    let mut out: Vec<SharedDirConfig> = Vec::with_capacity(dirs.len());
    for dir in dirs {
        let bad = |why: String| ConfigError::SharedDir {
            tag: dir.tag.clone(),
            why,
        };
        if !valid_tag(&dir.tag) {
            return Err(bad("tag must be 1..=36 bytes of [A-Za-z0-9_-]".into()));
        }
        if out.iter().any(|d| d.tag == dir.tag) {
            return Err(bad("tag used twice".into()));
        }
        let path = dir
            .path
            .canonicalize()
            .map_err(|e| bad(format!("{}: {e}", dir.path.display())))?;
        if !path.is_dir() {
            return Err(bad(format!("{} is not a directory", dir.path.display())));
        }
        if path.to_str().is_none() {
            return Err(bad(format!("{} is not valid UTF-8", dir.path.display())));
        }
        out.push(SharedDirConfig {
            tag: dir.tag.clone(),
            path,
        });
    }
    Ok(out)
}
