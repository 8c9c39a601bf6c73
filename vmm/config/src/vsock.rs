//! The hybrid vsock device.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_GUEST_CID, MAX_VSOCK_PATH_LEN, MIN_GUEST_CID};
use crate::{check_range, ConfigError};

/// The hybrid vsock device: guest CID and the host unix socket (Firecracker's protocol:
/// `CONNECT <port>` on `uds_path` reaches guest port `<port>`; guest connects to host port P
/// reach a listener at `<uds_path>_<P>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockDeviceConfig {
    /// The guest's context id ([`MIN_GUEST_CID`]..=[`MAX_GUEST_CID`]).
    pub guest_cid: u32,
    /// Host unix socket the VMM listens on (removed when the VMM exits).
    pub uds_path: PathBuf,
}

/// Checks the CID and that the socket path fits `sun_path` and its directory exists.
pub(crate) fn check_vsock(vsock: &VsockDeviceConfig) -> Result<(), ConfigError> {
    check_range(
        "vsock.guest_cid",
        vsock.guest_cid.into(),
        MIN_GUEST_CID.into(),
        MAX_GUEST_CID.into(),
    )?;
    let path = &vsock.uds_path;
    let bad = |why: String| ConfigError::VsockPath {
        path: path.clone(),
        why,
    };
    let len = path.as_os_str().len();
    if len == 0 || len > MAX_VSOCK_PATH_LEN {
        return Err(bad(format!("must be 1..={MAX_VSOCK_PATH_LEN} bytes long")));
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if parent.is_some_and(|p| !p.is_dir()) {
        return Err(bad("its directory does not exist".into()));
    }
    Ok(())
}
