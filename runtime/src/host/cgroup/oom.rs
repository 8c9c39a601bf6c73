//! The VMM's `oom_score_adj`: the pod's, `process.oomScoreAdj` of its sandbox (or lone)
//! container's spec, which CRI sets on the pause container (-998, or containerd's own value
//! with `restrict_oom_score_adj`). The VMM child writes it to `/proc/self/oom_score_adj`
//! before exec; lowering it below what the shim has needs `CAP_SYS_RESOURCE`, and without it
//! the write is refused and the VMM keeps the shim's (higher) value: the shim then logs that
//! the pod's value was not applied. That is not a failure.

use serde_json::Value;

use super::CgroupError;

/// The kernel's range of `oom_score_adj`.
const RANGE: std::ops::RangeInclusive<i64> = -1000..=1000;

/// An `oom_score_adj` value, formatted in advance for the VMM child (which must not allocate
/// between fork and exec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OomScoreAdj {
    value: i32,
    text: [u8; 8],
    len: usize,
}

impl OomScoreAdj {
    /// `value`, if it is in -1000..=1000.
    pub fn new(value: i64) -> Option<OomScoreAdj> {
        if !RANGE.contains(&value) {
            return None;
        }
        let digits = value.to_string();
        let mut text = [0u8; 8];
        text[..digits.len()].copy_from_slice(digits.as_bytes());
        Some(OomScoreAdj {
            value: value as i32,
            text,
            len: digits.len(),
        })
    }

    /// The pod's value in OCI spec `spec` (`process.oomScoreAdj`), if it sets one.
    pub fn of_spec(spec: &Value) -> Result<Option<OomScoreAdj>, CgroupError> {
        let Some(v) = spec.pointer("/process/oomScoreAdj") else {
            return Ok(None);
        };
        if v.is_null() {
            return Ok(None);
        }
        v.as_i64()
            .and_then(OomScoreAdj::new)
            .map(Some)
            .ok_or_else(|| CgroupError::BadOomScoreAdj(v.to_string()))
    }

    /// Gives the serving shim `pid` containerd's value plus one (at most 1000), as
    /// containerd's own shims do: the node's OOM killer takes a shim before containerd, and
    /// what the shim's containers inherit (see [`OomScoreAdj::of_self`]) is what a runc
    /// container gets. Runs in `start`, whose parent is containerd; a failure is returned for
    /// the log.
    pub fn adjust_shim(pid: u32) -> std::io::Result<()> {
        let parent = std::os::unix::process::parent_id();
        let text = std::fs::read_to_string(format!("/proc/{parent}/oom_score_adj"))?;
        let containerd: i64 = text
            .trim()
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let shim = (containerd + 1).min(*RANGE.end());
        std::fs::write(format!("/proc/{pid}/oom_score_adj"), shim.to_string())
    }

    /// The shim's own value (what its children inherit), if readable.
    pub fn of_self() -> Option<i32> {
        let text = std::fs::read_to_string("/proc/self/oom_score_adj").ok()?;
        let value = text.trim().parse().ok()?;
        OomScoreAdj::new(value).map(|o| o.value)
    }

    /// The value.
    pub fn value(&self) -> i32 {
        self.value
    }

    /// In the VMM child between fork and exec: writes the value to
    /// `/proc/self/oom_score_adj`. A refusal keeps the inherited value ([`Self::check`] logs
    /// it). Only open(2), write(2) and close(2): async-signal-safe.
    pub fn apply_in_child(&self) {
        let path = c"/proc/self/oom_score_adj";
        // SAFETY: open(2) of a NUL-terminated static path.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return;
        }
        // SAFETY: write(2) of `len` initialised bytes of our own buffer to the fd just opened;
        // close(2) of that fd, which nothing else uses.
        unsafe {
            libc::write(fd, self.text.as_ptr().cast(), self.len);
            libc::close(fd);
        }
    }

    /// After the spawn: logs whether process `pid` (the VMM) runs with the value, and why not.
    pub fn check(&self, pid: i32) {
        let file = format!("/proc/{pid}/oom_score_adj");
        let got = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        match got {
            Some(v) if v == self.value => {
                crate::plog!(Info, "moat-vmm {pid}: oom_score_adj {v} (the pod's)");
            }
            Some(v) => crate::plog!(
                Warn,
                "moat-vmm {pid}: the pod's oom_score_adj {} could not be applied (lowering it \
                 below the shim's needs CAP_SYS_RESOURCE); it runs with {v}",
                self.value
            ),
            None => crate::plog!(Debug, "moat-vmm {pid}: {file} unreadable (exited already?)"),
        }
    }
}
