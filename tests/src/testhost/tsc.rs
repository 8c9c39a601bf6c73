//! The host's TSC frequency, passed to the test host's L1 kernel as
//! `tsc_early_khz`: under qemu TCG the guest's TSC is the host's, and
//! telling L1 its frequency avoids a rare hang while it calibrates.

use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The host's TSC frequency in kHz, passed to L1 as `tsc_early_khz` (under
/// TCG the guest's TSC is the host's), which avoids a rare L1 hang while
/// calibrating. From `$MOAT_TSC_KHZ`, the kernel log, or `/proc/cpuinfo`.
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(|| {
        if let Some(k) = std::env::var("MOAT_TSC_KHZ")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            return Some(k);
        }
        let dmesg = Command::new("dmesg")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        tsc_khz_from(&dmesg, &cpuinfo)
    })
}

fn tsc_khz_from(dmesg: &str, cpuinfo: &str) -> Option<u64> {
    let mhz_to_khz = |s: &str| -> Option<u64> {
        let mhz: f64 = s.trim().parse().ok()?;
        (mhz > 1.0).then(|| (mhz * 1000.0).round() as u64)
    };
    let from_dmesg = |marker: &str, end: &str| {
        dmesg.lines().rev().find_map(|l| {
            let rest = &l[l.find(marker)? + marker.len()..];
            mhz_to_khz(&rest[..rest.find(end)?])
        })
    };
    from_dmesg("tsc: Refined TSC clocksource calibration: ", " MHz")
        .or_else(|| from_dmesg("tsc: Detected ", " MHz"))
        .or_else(|| {
            cpuinfo
                .lines()
                .filter(|l| l.starts_with("cpu MHz"))
                .find_map(|l| mhz_to_khz(l.split_once(':')?.1))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_parsing() {
        let dmesg = "[0.0] tsc: Detected 2445.410 MHz processor\n";
        assert_eq!(tsc_khz_from(dmesg, ""), Some(2_445_410));
        let refined = "[0.0] tsc: Detected 2445.410 MHz processor\n\
                       [1.0] tsc: Refined TSC clocksource calibration: 2445.399 MHz\n";
        assert_eq!(tsc_khz_from(refined, ""), Some(2_445_399));
        assert_eq!(tsc_khz_from("", "cpu MHz\t\t: 2000.5\n"), Some(2_000_500));
        assert_eq!(tsc_khz_from("", ""), None);
    }
}
