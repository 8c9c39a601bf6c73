//! Rate limits for guest-driven work: a [`TokenBucket`], a [`Throttle`] for log lines (which
//! counts what it suppressed, to say so), and [`Dedup`] (one event per key per interval).
//!
//! Every type has `*_at(now)` forms for tests; the plain forms read the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A sustained rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per second (at least 1 is used).
    pub per_sec: u32,
    /// Most tokens held (the burst; at least 1 is used).
    pub burst: u32,
}

/// A token bucket, full at first.
#[derive(Debug)]
pub struct TokenBucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate`.
    pub fn new(rate: Rate) -> TokenBucket {
        let burst = f64::from(rate.burst.max(1));
        TokenBucket {
            per_sec: f64::from(rate.per_sec.max(1)),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.last = self.last.max(now);
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    /// [`try_take`](Self::try_take) at `now`.
    pub fn try_take_at(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long from `now` until a token is there (zero if one is).
    pub fn wait_at(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec)
    }

    /// Takes a token, sleeping until there is one.
    pub fn take(&mut self) {
        loop {
            let wait = self.wait_at(Instant::now());
            if wait.is_zero() && self.try_take() {
                return;
            }
            std::thread::sleep(wait.max(Duration::from_millis(1)));
        }
    }
}

/// Lets lines through at a [`Rate`] and counts those it suppressed, so that the next line let
/// through can say how many were lost.
#[derive(Debug)]
pub struct Throttle {
    bucket: TokenBucket,
    suppressed: u64,
}

impl Throttle {
    /// A throttle at `rate`.
    pub fn new(rate: Rate) -> Throttle {
        Throttle {
            bucket: TokenBucket::new(rate),
            suppressed: 0,
        }
    }

    /// Whether the next line may be written: `Some(k)`, with `k` lines suppressed since the
    /// last one written (to report first), or `None` (suppressed, and counted).
    pub fn admit(&mut self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// [`admit`](Self::admit) at `now`.
    pub fn admit_at(&mut self, now: Instant) -> Option<u64> {
        if self.bucket.try_take_at(now) {
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// The lines suppressed and not yet reported (at the end of a stream); resets the count.
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// Lets one event per key through per interval.
#[derive(Debug)]
pub struct Dedup {
    interval: Duration,
    seen: HashMap<String, Instant>,
}

/// Keys [`Dedup`] holds before it forgets those older than its interval.
const DEDUP_PRUNE_AT: usize = 1024;

impl Dedup {
    /// One event per key per `interval`.
    pub fn new(interval: Duration) -> Dedup {
        Dedup {
            interval,
            seen: HashMap::new(),
        }
    }

    /// Whether an event for `key` at `now` is the first within the interval (then recorded).
    pub fn first_at(&mut self, key: &str, now: Instant) -> bool {
        if let Some(&at) = self.seen.get(key) {
            if now.saturating_duration_since(at) < self.interval {
                return false;
            }
        }
        if self.seen.len() >= DEDUP_PRUNE_AT {
            let interval = self.interval;
            self.seen
                .retain(|_, at| now.saturating_duration_since(*at) < interval);
        }
        self.seen.insert(key.to_string(), now);
        true
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut b = TokenBucket::new(Rate {
            per_sec: 10,
            burst: 3,
        });
        let t0 = b.last;
        assert!((0..3).all(|_| b.try_take_at(t0)));
        assert!(!b.try_take_at(t0));
        assert_eq!(b.wait_at(t0), 100 * MS);
        assert!(!b.try_take_at(t0 + 50 * MS));
        assert!(b.try_take_at(t0 + 100 * MS));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.try_take_at(later)).count(), 3);
        // Time going backwards takes nothing away and adds nothing.
        assert!(!b.try_take_at(t0));
    }

    #[test]
    fn take_waits_for_a_token() {
        let mut b = TokenBucket::new(Rate {
            per_sec: 20,
            burst: 1,
        });
        let start = Instant::now();
        b.take();
        b.take();
        b.take();
        let took = start.elapsed();
        assert!(took >= 90 * MS && took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn a_throttle_reports_what_it_suppressed() {
        let mut t = Throttle::new(Rate {
            per_sec: 1,
            burst: 2,
        });
        let t0 = t.bucket.last;
        assert_eq!(t.admit_at(t0), Some(0));
        assert_eq!(t.admit_at(t0), Some(0));
        for _ in 0..1000 {
            assert_eq!(t.admit_at(t0), None);
        }
        assert_eq!(t.admit_at(t0 + Duration::from_secs(1)), Some(1000));
        assert_eq!(t.admit_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.take_suppressed(), 1);
        assert_eq!(t.take_suppressed(), 0);
    }

    #[test]
    fn dedup_lets_one_event_per_key_and_interval() {
        let mut d = Dedup::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(d.first_at("a", t0));
        assert!(!d.first_at("a", t0 + 999 * MS));
        assert!(d.first_at("b", t0 + 999 * MS));
        assert!(d.first_at("a", t0 + Duration::from_secs(1)));
        // Old keys are forgotten once many are held.
        let later = t0 + Duration::from_secs(10);
        for i in 0..DEDUP_PRUNE_AT + 10 {
            assert!(d.first_at(&format!("k{i}"), later));
        }
        assert!(d.len() <= DEDUP_PRUNE_AT + 10 && !d.is_empty());
        assert!(!d.seen.contains_key("a"));
    }
}
