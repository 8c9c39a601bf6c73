//! The guest's memory, load and uptime for `GetGuestStats`, from `/proc/meminfo`,
//! `/proc/loadavg` and `/proc/uptime`.

use moat_agent_protocol::GuestStats;

use crate::guest_info::{meminfo_kib, GuestInfoError, MEMINFO};

/// The load averages and task counts.
const LOADAVG: &str = "/proc/loadavg";
/// Seconds since boot.
const UPTIME: &str = "/proc/uptime";

/// Reads and parses the three files.
pub fn read() -> Result<GuestStats, GuestInfoError> {
    let read = |path: &'static str| {
        std::fs::read_to_string(path).map_err(|source| GuestInfoError::Read { path, source })
    };
    parse(&read(MEMINFO)?, &read(LOADAVG)?, &read(UPTIME)?)
}

/// Parses the texts of `/proc/meminfo` (`MemTotal`, `MemFree`, `MemAvailable`),
/// `/proc/loadavg` and `/proc/uptime`; the error names the file and what is wrong.
pub fn parse(meminfo: &str, loadavg: &str, uptime: &str) -> Result<GuestStats, GuestInfoError> {
    let mem = |key: &str| {
        meminfo_kib(meminfo, key).ok_or_else(|| GuestInfoError::Parse {
            path: MEMINFO,
            detail: format!("no `{key}: N kB` line"),
        })
    };
    let bad = |path: &'static str, text: &str| GuestInfoError::Parse {
        path,
        detail: format!("unexpected content {:?}", cut(text)),
    };
    let ([load1, load5, load15], (running, total)) =
        parse_loadavg(loadavg).ok_or_else(|| bad(LOADAVG, loadavg))?;
    let uptime_ms = parse_uptime_ms(uptime).ok_or_else(|| bad(UPTIME, uptime))?;
    Ok(GuestStats {
        mem_total_kib: mem("MemTotal")?,
        mem_free_kib: mem("MemFree")?,
        mem_available_kib: mem("MemAvailable")?,
        load1_milli: load1,
        load5_milli: load5,
        load15_milli: load15,
        procs_running: running,
        procs_total: total,
        uptime_ms,
    })
}

/// `/proc/loadavg` (`0.52 0.58 0.59 2/1234 56789`): the three load averages × 1000 and the
/// runnable/total task counts.
fn parse_loadavg(text: &str) -> Option<([u64; 3], (u32, u32))> {
    let mut it = text.split_whitespace();
    let mut loads = [0u64; 3];
    for load in &mut loads {
        *load = parse_milli(it.next()?)?;
    }
    let (running, total) = it.next()?.split_once('/')?;
    let procs = (running.parse().ok()?, total.parse().ok()?);
    it.next()?.parse::<u64>().ok()?; // the last pid: present, unused
    Some((loads, procs))
}

/// `/proc/uptime` (`12345.67 23456.78`): the first field (seconds since boot) in ms.
fn parse_uptime_ms(text: &str) -> Option<u64> {
    let mut it = text.split_whitespace();
    let ms = parse_milli(it.next()?)?;
    parse_milli(it.next()?)?; // idle time: present, unused
    Some(ms)
}

/// A non-negative decimal (`12.05`, `3`) × 1000, without floating point; fraction digits past
/// the third are dropped. `None` for anything else or an overflow.
fn parse_milli(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (s.contains('.') && frac.is_empty()) {
        return None;
    }
    let milli = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
    int.parse::<u64>()
        .ok()?
        .checked_mul(1000)?
        .checked_add(milli)
}

/// At most 100 bytes of `text`, for messages.
fn cut(text: &str) -> &str {
    let mut end = text.len().min(100);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO_TEXT: &str = "MemTotal:        2014564 kB\nMemFree:         1650340 kB\n\
        MemAvailable:    1795432 kB\nBuffers:            2124 kB\nCached:           180348 kB\n\
        SwapCached:            0 kB\nHugePages_Total:       0\nHugepagesize:       2048 kB\n";
    const LOADAVG_TEXT: &str = "0.52 1.05 12.30 3/187 4121\n";
    const UPTIME_TEXT: &str = "3541.27 6950.81\n";

    #[test]
    fn parses_real_looking_proc_files() {
        let s = parse(MEMINFO_TEXT, LOADAVG_TEXT, UPTIME_TEXT).unwrap();
        assert_eq!(
            s,
            GuestStats {
                mem_total_kib: 2_014_564,
                mem_free_kib: 1_650_340,
                mem_available_kib: 1_795_432,
                load1_milli: 520,
                load5_milli: 1_050,
                load15_milli: 12_300,
                procs_running: 3,
                procs_total: 187,
                uptime_ms: 3_541_270,
            }
        );
    }

    #[test]
    fn malformed_files_are_named_in_the_error() {
        let no_available = MEMINFO_TEXT.replace("MemAvailable:", "MemAvail:");
        let e = parse(&no_available, LOADAVG_TEXT, UPTIME_TEXT).unwrap_err();
        assert_eq!(
            e.to_string(),
            "parsing /proc/meminfo: no `MemAvailable: N kB` line"
        );
        let bad_unit = MEMINFO_TEXT.replace("1650340 kB", "1650340 MB");
        assert!(parse(&bad_unit, LOADAVG_TEXT, UPTIME_TEXT).is_err());
        for loadavg in [
            "",
            "0.52 1.05 12.30 3/187",
            "0.52 1.05 3/187 4121",
            "0.52 1.05 -1.00 3/187 4121",
            "0.52 1.05 12.30 3-187 4121",
            "0.52 1.05 1e3 3/187 4121",
            "0.52 1.05 18446744073709551.616 3/187 4121",
        ] {
            let e = parse(MEMINFO_TEXT, loadavg, UPTIME_TEXT).unwrap_err();
            assert!(
                e.to_string().starts_with("parsing /proc/loadavg: "),
                "{loadavg:?}: {e}"
            );
        }
        for uptime in ["", "3541.27", "abc 1.0", "3541. 1.0", ".5 1.0"] {
            let e = parse(MEMINFO_TEXT, LOADAVG_TEXT, uptime).unwrap_err();
            assert!(
                e.to_string().starts_with("parsing /proc/uptime: "),
                "{uptime:?}: {e}"
            );
        }
    }

    #[test]
    fn decimals_become_thousandths() {
        assert_eq!(parse_milli("0.00"), Some(0));
        assert_eq!(parse_milli("7"), Some(7_000));
        assert_eq!(parse_milli("0.5"), Some(500));
        assert_eq!(parse_milli("1.2345"), Some(1_234));
        assert_eq!(parse_milli("18446744073709551.615"), Some(u64::MAX));
        assert_eq!(parse_milli("1.+5"), None);
    }

    #[test]
    fn this_machine() {
        let s = read().unwrap();
        assert!(s.mem_total_kib >= s.mem_available_kib && s.mem_total_kib >= s.mem_free_kib);
        assert!(s.procs_total >= 1 && s.uptime_ms > 0);
    }
}
