//! The guest kernel command line: moat's default, how the configured parts combine, and
//! where the VMM's own kernel arguments go.

use crate::limits::{CMDLINE_DEVICE_RESERVE, CMDLINE_MAX_SIZE};
use crate::ConfigError;

/// Kernel command line moat uses when the configuration gives none.
///
/// `reboot=k,c,panic_w`: the guest resets through the i8042 controller; a clean reboot or
/// poweroff marks a *cold* reset and a panic a *warm* one (0x1234 at 0x472), which is how the
/// VMM tells them apart. `tsc=reliable no_timer_check` with kvm-clock make boot deterministic
/// (no calibration spin), `pci=off` because all devices are virtio-mmio.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k,c,panic_w panic=-1 pci=off \
     tsc=reliable no_timer_check noreplace-smp cryptomgr.notests rcupdate.rcu_expedited=1 \
     8250.nr_uarts=1 quiet";

/// Builds the final command line from the base (or [`DEFAULT_CMDLINE`]) plus extra
/// arguments; refuses a NUL byte and a line that leaves no room for the VMM's device
/// arguments ([`CMDLINE_DEVICE_RESERVE`] of [`CMDLINE_MAX_SIZE`]).
pub fn build_cmdline(base: Option<&str>, extra: Option<&str>) -> Result<String, ConfigError> {
    let mut cmdline = base.unwrap_or(DEFAULT_CMDLINE).trim().to_string();
    if let Some(extra) = extra.map(str::trim).filter(|e| !e.is_empty()) {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(extra);
    }
    if cmdline.contains('\0') {
        return Err(ConfigError::Cmdline("contains a NUL byte".into()));
    }
    let budget = CMDLINE_MAX_SIZE - CMDLINE_DEVICE_RESERVE;
    if cmdline.len() > budget {
        return Err(ConfigError::Cmdline(format!(
            "{} bytes is longer than the {budget} allowed",
            cmdline.len()
        )));
    }
    Ok(cmdline)
}

/// Checks arguments meant for `extra_cmdline` (`--append`): they must fit after
/// [`DEFAULT_CMDLINE`] (see [`build_cmdline`]).
pub fn check_extra_cmdline(extra: &str) -> Result<(), ConfigError> {
    build_cmdline(None, Some(extra)).map(drop)
}

/// Inserts kernel parameters `args` into `cmdline` before the first `--` (everything after
/// it goes to init, not to the kernel), or at the end.
pub fn insert_kernel_args(cmdline: &str, args: &[String]) -> String {
    if args.is_empty() {
        return cmdline.to_string();
    }
    let extra = args.join(" ");
    let mut offset = 0;
    for word in cmdline.split(' ') {
        if word == "--" {
            let (kernel, init) = cmdline.split_at(offset);
            return format!("{kernel}{extra} {init}");
        }
        offset += word.len() + 1;
    }
    if cmdline.is_empty() {
        extra
    } else {
        format!("{cmdline} {extra}")
    }
}
