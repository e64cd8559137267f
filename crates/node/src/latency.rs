//! Latency per (peer, phase): an RFC 6298 estimator ([`RttEstimator`]) and
//! an HDR histogram (p50/p99/p999), and deadline propagation (SPEC §3).
//!
//! A *phase* is whatever the caller times: a whole PREPARE → VOTE exchange
//! includes the participant's own work and fsync and so is tracked apart
//! from the COMMIT → ACK round trip. Timeouts come from the estimator, not
//! the histogram: the histogram remembers all of history and would never
//! come back down after a slow spell, while the estimator forgets
//! geometrically (7/8 per sample). The histogram is for people (API,
//! metrics, console).
//!
//! Only samples from messages sent exactly once may be fed in (Karn's
//! algorithm, see [`crate::rtt`]). Pure: no clock, no IO.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::rtt::RttEstimator;

/// Highest value the histograms hold (longer samples are clamped to it).
pub const HISTOGRAM_MAX: Duration = Duration::from_secs(3600);

/// Latency distribution in microseconds, 3 significant digits.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// Quantiles of a histogram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl LatencyHistogram {
    pub fn new() -> Self {
        let max_us = u64::try_from(HISTOGRAM_MAX.as_micros()).unwrap_or(u64::MAX);
        // Bounds are constants known to be valid: 1 <= low, high >= 2*low,
        // sigfig <= 5.
        let hist = Histogram::new_with_bounds(1, max_us, 3).expect("valid histogram bounds");
        LatencyHistogram { hist }
    }

    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(us);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Value at quantile `q` in `0.0..=1.0`.
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.hist.value_at_quantile(q))
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count(),
            p50: self.quantile(0.50),
            p99: self.quantile(0.99),
            p999: self.quantile(0.999),
            max: Duration::from_micros(self.hist.max()),
        }
    }

    /// For a Prometheus histogram: how many samples fell at or below each
    /// of `bounds_us` (ascending) and above the previous one, then above
    /// the last; the sum and the count. At scrape time, not per sample:
    /// the histogram is already kept for the timeouts' sake.
    pub fn buckets(&self, bounds_us: &[u64]) -> (Vec<u64>, f64, u64) {
        let mut counts = Vec::with_capacity(bounds_us.len() + 1);
        let mut below = 0;
        for &bound in bounds_us {
            let upto = self.hist.count_between(0, bound);
            counts.push(upto.saturating_sub(below));
            below = upto;
        }
        counts.push(self.count().saturating_sub(below));
        let sum_us = self.hist.mean() * self.count() as f64;
        (counts, sum_us, self.count())
    }

    pub fn reset(&mut self) {
        self.hist.reset();
    }
}

/// Estimates for one (peer, phase).
#[derive(Debug, Clone, Default)]
pub struct PhaseLatency {
    pub rtt: RttEstimator,
    pub histogram: LatencyHistogram,
    /// Fired timeouts since the last sample.
    pub backoff_level: u32,
}

impl PhaseLatency {
    /// Record a sample from a message sent exactly once. Ends any backoff.
    pub fn observe(&mut self, elapsed: Duration) {
        self.rtt.observe(elapsed);
        self.histogram.record(elapsed);
        self.backoff_level = 0;
    }

    /// The timeout fired: the next one backs off.
    pub fn timeout_fired(&mut self) {
        // Beyond 32 doublings every timeout is at `max` anyway.
        self.backoff_level = (self.backoff_level + 1).min(32);
    }
}

/// Deadline propagation (SPEC §3): a sub-coordinator waits at most its own
/// adaptive timeout, and never past what its parent has left, minus a margin
/// for its answer to travel back. `remaining` is `None` when the parent set
/// no deadline. Returns zero when the parent's deadline is already too close:
/// the caller should give up at once.
pub fn deadline_timeout(
    adaptive: Duration,
    remaining: Option<Duration>,
    margin: Duration,
) -> Duration {
    match remaining {
        Some(r) => adaptive.min(r.saturating_sub(margin)),
        None => adaptive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_place_each_sample_at_its_first_bound() {
        let mut h = LatencyHistogram::new();
        for us in [50, 100, 101, 150, 250, 10_000] {
            h.record(Duration::from_micros(us));
        }
        let (counts, sum_us, count) = h.buckets(&[100, 200, 400]);
        // ≤100: 50, 100; ≤200: 101, 150; ≤400: 250; above: 10,000.
        assert_eq!(counts, vec![2, 2, 1, 1]);
        assert_eq!(count, 6);
        assert!((sum_us - 10_651.0).abs() < 20.0, "{sum_us}");
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = LatencyHistogram::new();
        for i in 1..=1000u64 {
            h.record(Duration::from_micros(i * 100));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        let near = |d: Duration, want_us: u64| {
            let got = d.as_micros() as f64;
            (got - want_us as f64).abs() <= want_us as f64 * 0.01
        };
        assert!(near(s.p50, 50_000), "{:?}", s.p50);
        assert!(near(s.p99, 99_000), "{:?}", s.p99);
        assert!(near(s.p999, 99_900), "{:?}", s.p999);
        assert!(near(s.max, 100_000), "{:?}", s.max);
        // Out-of-range samples are clamped, not lost or panicking.
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(100_000));
        assert_eq!(h.count(), 1002);
    }

    #[test]
    fn deadline_shrinks_by_the_margin_and_never_exceeds_the_adaptive_timeout() {
        let ms = Duration::from_millis;
        assert_eq!(deadline_timeout(ms(50), None, ms(5)), ms(50));
        assert_eq!(deadline_timeout(ms(50), Some(ms(30)), ms(5)), ms(25));
        assert_eq!(deadline_timeout(ms(50), Some(ms(100)), ms(5)), ms(50));
        assert_eq!(deadline_timeout(ms(50), Some(ms(3)), ms(5)), ms(0));
    }
}
