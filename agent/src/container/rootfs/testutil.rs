//! Helpers for the rootfs tests.

use std::fs;
use std::path::PathBuf;

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/moat-rootfs-<tag>-<pid>-<nanos>`.
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("moat-rootfs-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&p).expect("creating a temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Parses an OCI spec from JSON.
pub(crate) fn spec(json: &str) -> oci_spec::runtime::Spec {
    serde_json::from_str(json).expect("test spec JSON")
}
