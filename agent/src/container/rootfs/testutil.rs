//! Helpers for the rootfs tests.

pub(crate) use crate::test_util::TempDir;

/// Parses an OCI spec from JSON.
pub(crate) fn spec(json: &str) -> oci_spec::runtime::Spec {
    serde_json::from_str(json).expect("test spec JSON")
}
