//! Typed forms of the guest RPCs' replies.

use std::time::Duration;

use crate::agent::GuestStatsResponse;

/// The guest's memory, load and uptime (`GetGuestStats`), as its kernel reports them.
///
/// The host cannot check these: a hostile guest may claim anything (each value is bounded by
/// its type, no more), so derived figures saturate instead of overflowing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// `MemTotal` of `/proc/meminfo`, KiB.
    pub mem_total_kib: u64,
    /// `MemFree`, KiB.
    pub mem_free_kib: u64,
    /// `MemAvailable`, KiB.
    pub mem_available_kib: u64,
    /// The 1-minute load average × 1000.
    pub load1_milli: u64,
    /// The 5-minute load average × 1000.
    pub load5_milli: u64,
    /// The 15-minute load average × 1000.
    pub load15_milli: u64,
    /// Runnable scheduling entities (`N` of `N/M` in `/proc/loadavg`).
    pub procs_running: u32,
    /// Scheduling entities in the guest (`M` of `N/M`).
    pub procs_total: u32,
    /// Time since the guest booted, milliseconds.
    pub uptime_ms: u64,
}

impl GuestStats {
    /// The protocol message.
    pub fn to_proto(&self) -> GuestStatsResponse {
        let mut m = GuestStatsResponse::new();
        m.mem_total_kib = self.mem_total_kib;
        m.mem_free_kib = self.mem_free_kib;
        m.mem_available_kib = self.mem_available_kib;
        m.load1_milli = self.load1_milli;
        m.load5_milli = self.load5_milli;
        m.load15_milli = self.load15_milli;
        m.procs_running = self.procs_running;
        m.procs_total = self.procs_total;
        m.uptime_ms = self.uptime_ms;
        m
    }

    /// The typed form of the agent's reply.
    pub fn from_proto(m: &GuestStatsResponse) -> Self {
        GuestStats {
            mem_total_kib: m.mem_total_kib,
            mem_free_kib: m.mem_free_kib,
            mem_available_kib: m.mem_available_kib,
            load1_milli: m.load1_milli,
            load5_milli: m.load5_milli,
            load15_milli: m.load15_milli,
            procs_running: m.procs_running,
            procs_total: m.procs_total,
            uptime_ms: m.uptime_ms,
        }
    }

    /// Memory in use: `MemTotal - MemAvailable`, KiB (0 if the guest claims more available
    /// than total).
    pub fn mem_used_kib(&self) -> u64 {
        self.mem_total_kib.saturating_sub(self.mem_available_kib)
    }

    /// Time since the guest booted.
    pub fn uptime(&self) -> Duration {
        Duration::from_millis(self.uptime_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_saturates() {
        let s = GuestStats {
            mem_total_kib: 1000,
            mem_free_kib: 200,
            mem_available_kib: 600,
            load1_milli: 520,
            load5_milli: 1,
            load15_milli: 12_050,
            procs_running: 2,
            procs_total: 123,
            uptime_ms: 1_500,
        };
        assert_eq!(GuestStats::from_proto(&s.to_proto()), s);
        assert_eq!(s.mem_used_kib(), 400);
        assert_eq!(s.uptime(), Duration::from_millis(1_500));
        let lying = GuestStats {
            mem_available_kib: u64::MAX,
            ..s
        };
        assert_eq!(lying.mem_used_kib(), 0);
    }
}
