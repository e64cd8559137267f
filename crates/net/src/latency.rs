//! Latency tracking per peer and per phase, and timeouts computed from it
//! (SPEC §3).
//!
//! A *phase* is whatever the caller times: the network round trip of a ping,
//! or a whole PREPARE → VOTE exchange, which includes the participant's own
//! work and fsync and so must be tracked apart from network RTT. This module
//! only sees names and durations.
//!
//! For each (peer, phase) it keeps an RFC 6298 estimator
//! ([`RttEstimator`]) and an HDR histogram (p50/p99/p999). The timeout comes
//! from the estimator, not the histogram: the histogram remembers all of
//! history and would never come back down after a slow spell, while the
//! estimator forgets geometrically (7/8 per sample), so the timeout follows
//! latency down within a bounded number of samples. The histogram is for
//! people (API, metrics, console).
//!
//! Like the estimator, the tracker must only be fed samples from messages
//! sent exactly once (Karn's algorithm, see [`crate::rtt`]).

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::time::Duration;

use hdrhistogram::Histogram;
use tracing::info;

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

    pub fn reset(&mut self) {
        self.hist.reset();
    }
}

/// How a phase timeout is computed from the estimates.
///
/// * until `samples_needed` samples exist: `default`;
/// * then: the estimator's RTO (`SRTT + 4 * RTTVAR`);
/// * either way multiplied by `backoff^level`, where the level goes up by one
///   each time the timeout fires and back to 0 at the next sample (as TCP
///   does after a retransmission timeout);
/// * clamped to `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeoutPolicy {
    pub min: Duration,
    pub max: Duration,
    pub default: Duration,
    pub samples_needed: u64,
    /// Factor applied per fired timeout (2.0 doubles).
    pub backoff: f64,
}

impl Default for TimeoutPolicy {
    fn default() -> Self {
        TimeoutPolicy {
            min: Duration::from_millis(10),
            max: Duration::from_secs(30),
            default: Duration::from_secs(1),
            samples_needed: 8,
            backoff: 2.0,
        }
    }
}

/// Which bound, if any, limited a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clamp {
    Min,
    Max,
}

/// What a timeout was computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeoutBasis {
    /// Not enough samples yet: the configured default.
    Default { samples: u64, needed: u64 },
    /// From the estimator.
    Estimate {
        srtt: Duration,
        rttvar: Duration,
        rto: Duration,
        samples: u64,
    },
}

/// A computed timeout with the estimate behind it, for logs and the console
/// (SPEC §3: every timeout that fired is logged with the estimate that set
/// it). `Display` gives a one-line explanation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeoutDecision {
    pub timeout: Duration,
    pub basis: TimeoutBasis,
    pub backoff_level: u32,
    pub clamped: Option<Clamp>,
}

impl fmt::Display for TimeoutDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timeout {:?} from ", self.timeout)?;
        match self.basis {
            TimeoutBasis::Default { samples, needed } => {
                write!(f, "default ({samples}/{needed} samples)")?
            }
            TimeoutBasis::Estimate {
                srtt,
                rttvar,
                rto,
                samples,
            } => write!(
                f,
                "rto {rto:?} = srtt {srtt:?} + 4 x rttvar {rttvar:?} ({samples} samples)"
            )?,
        }
        if self.backoff_level > 0 {
            write!(f, ", backed off x{}", self.backoff_level)?;
        }
        match self.clamped {
            Some(Clamp::Min) => write!(f, ", raised to min"),
            Some(Clamp::Max) => write!(f, ", capped at max"),
            None => Ok(()),
        }
    }
}

impl TimeoutPolicy {
    /// The timeout for an estimator in the given backoff level.
    pub fn timeout(&self, est: &RttEstimator, backoff_level: u32) -> TimeoutDecision {
        let (base, basis) = match (est.samples() >= self.samples_needed, est.rto()) {
            (true, Some(rto)) => (
                rto,
                TimeoutBasis::Estimate {
                    srtt: est.srtt().unwrap_or_default(),
                    rttvar: est.rttvar().unwrap_or_default(),
                    rto,
                    samples: est.samples(),
                },
            ),
            _ => (
                self.default,
                TimeoutBasis::Default {
                    samples: est.samples(),
                    needed: self.samples_needed,
                },
            ),
        };
        let factor = self
            .backoff
            .max(1.0)
            .powi(i32::try_from(backoff_level).unwrap_or(i32::MAX));
        let raw = base.as_secs_f64() * factor;
        let (timeout, clamped) = if raw >= self.max.as_secs_f64() {
            (self.max, Some(Clamp::Max))
        } else if raw <= self.min.as_secs_f64() {
            (self.min, Some(Clamp::Min))
        } else {
            (Duration::from_secs_f64(raw), None)
        };
        TimeoutDecision {
            timeout,
            basis,
            backoff_level,
            clamped,
        }
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

/// Everything known about one (peer, phase), for the API and console.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseSnapshot {
    pub samples: u64,
    pub srtt: Option<Duration>,
    pub rttvar: Option<Duration>,
    pub rto: Option<Duration>,
    pub latency: LatencySummary,
    pub backoff_level: u32,
    pub timeout: TimeoutDecision,
}

/// Estimates and timeouts for every peer and phase. Not synchronized: wrap
/// it in a mutex or keep it in one task.
#[derive(Debug, Clone)]
pub struct LatencyTracker<K> {
    default_policy: TimeoutPolicy,
    policies: HashMap<&'static str, TimeoutPolicy>,
    peers: HashMap<K, HashMap<&'static str, PhaseLatency>>,
}

impl<K: Hash + Eq + Clone + fmt::Debug> LatencyTracker<K> {
    /// `default_policy` applies to phases without a policy of their own.
    pub fn new(default_policy: TimeoutPolicy) -> Self {
        LatencyTracker {
            default_policy,
            policies: HashMap::new(),
            peers: HashMap::new(),
        }
    }

    /// Use `policy` for `phase` (e.g. a longer default for "prepare", which
    /// includes remote fsyncs).
    pub fn set_policy(&mut self, phase: &'static str, policy: TimeoutPolicy) {
        self.policies.insert(phase, policy);
    }

    pub fn policy(&self, phase: &str) -> &TimeoutPolicy {
        self.policies.get(phase).unwrap_or(&self.default_policy)
    }

    /// Record how long `phase` took with `peer`. Only for messages sent
    /// exactly once (Karn's algorithm).
    pub fn observe(&mut self, peer: &K, phase: &'static str, elapsed: Duration) {
        self.peers
            .entry(peer.clone())
            .or_default()
            .entry(phase)
            .or_default()
            .observe(elapsed);
    }

    /// The timeout to use now for `phase` with `peer`.
    pub fn timeout(&self, peer: &K, phase: &'static str) -> TimeoutDecision {
        let policy = self.policy(phase);
        match self.peers.get(peer).and_then(|p| p.get(phase)) {
            Some(pl) => policy.timeout(&pl.rtt, pl.backoff_level),
            None => policy.timeout(&RttEstimator::new(), 0),
        }
    }

    /// A timeout for `phase` with `peer` fired: log it with the estimate that
    /// set it, back off, and return the next timeout.
    pub fn timeout_fired(&mut self, peer: &K, phase: &'static str) -> TimeoutDecision {
        let fired = self.timeout(peer, phase);
        self.peers
            .entry(peer.clone())
            .or_default()
            .entry(phase)
            .or_default()
            .timeout_fired();
        let next = self.timeout(peer, phase);
        info!(peer = ?peer, phase, fired = %fired, next = %next, "timeout fired");
        next
    }

    pub fn snapshot(&self, peer: &K, phase: &'static str) -> Option<PhaseSnapshot> {
        let pl = self.peers.get(peer)?.get(phase)?;
        Some(self.snapshot_of(phase, pl))
    }

    /// All (peer, phase) estimates.
    pub fn snapshots(&self) -> Vec<(K, &'static str, PhaseSnapshot)> {
        let mut out = Vec::new();
        for (peer, phases) in &self.peers {
            for (phase, pl) in phases {
                out.push((peer.clone(), *phase, self.snapshot_of(phase, pl)));
            }
        }
        out
    }

    /// Drop everything about `peer` (it left the cluster).
    pub fn forget(&mut self, peer: &K) {
        self.peers.remove(peer);
    }

    fn snapshot_of(&self, phase: &str, pl: &PhaseLatency) -> PhaseSnapshot {
        PhaseSnapshot {
            samples: pl.rtt.samples(),
            srtt: pl.rtt.srtt(),
            rttvar: pl.rtt.rttvar(),
            rto: pl.rtt.rto(),
            latency: pl.histogram.summary(),
            backoff_level: pl.backoff_level,
            timeout: self.policy(phase).timeout(&pl.rtt, pl.backoff_level),
        }
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

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn policy() -> TimeoutPolicy {
        TimeoutPolicy {
            min: ms(2),
            max: ms(2000),
            default: ms(500),
            samples_needed: 5,
            backoff: 2.0,
        }
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
    fn default_until_enough_samples() {
        let mut t = LatencyTracker::<u32>::new(policy());
        assert_eq!(t.timeout(&1, "rtt").timeout, ms(500));
        for i in 0..4 {
            t.observe(&1, "rtt", ms(10));
            let d = t.timeout(&1, "rtt");
            assert_eq!(d.timeout, ms(500), "after {} samples", i + 1);
            assert!(matches!(d.basis, TimeoutBasis::Default { .. }));
        }
        t.observe(&1, "rtt", ms(10));
        let d = t.timeout(&1, "rtt");
        assert!(matches!(d.basis, TimeoutBasis::Estimate { samples: 5, .. }));
        assert!(d.timeout < ms(50), "{d}");
    }

    #[test]
    fn converges_to_measured_latency() {
        let mut t = LatencyTracker::<u32>::new(policy());
        for _ in 0..200 {
            t.observe(&1, "rtt", ms(20));
        }
        let d = t.timeout(&1, "rtt");
        assert!(d.timeout >= ms(20) && d.timeout <= ms(21), "{d}");
        let s = t.snapshot(&1, "rtt").expect("snapshot");
        assert_eq!(s.samples, 200);
        assert_eq!(s.latency.p50.as_millis(), 20);
    }

    #[test]
    fn clamped_to_min_and_max() {
        let mut t = LatencyTracker::<u32>::new(policy());
        for _ in 0..50 {
            t.observe(&1, "fast", Duration::from_micros(50));
            t.observe(&1, "slow", Duration::from_secs(10));
        }
        let fast = t.timeout(&1, "fast");
        assert_eq!((fast.timeout, fast.clamped), (ms(2), Some(Clamp::Min)));
        let slow = t.timeout(&1, "slow");
        assert_eq!((slow.timeout, slow.clamped), (ms(2000), Some(Clamp::Max)));
    }

    #[test]
    fn backs_off_when_fired_and_recovers_on_next_sample() {
        let mut t = LatencyTracker::<u32>::new(policy());
        for _ in 0..50 {
            t.observe(&1, "prepare", ms(40));
        }
        let base = t.timeout(&1, "prepare").timeout;
        let first = t.timeout_fired(&1, "prepare");
        assert_eq!(first.backoff_level, 1);
        assert_eq!(first.timeout, base * 2);
        let second = t.timeout_fired(&1, "prepare");
        assert_eq!(second.timeout, base * 4);
        for _ in 0..10 {
            t.timeout_fired(&1, "prepare");
        }
        assert_eq!(t.timeout(&1, "prepare").timeout, ms(2000), "capped at max");
        // A fresh (non-re-sent) sample ends the backoff.
        t.observe(&1, "prepare", ms(40));
        let after = t.timeout(&1, "prepare");
        assert_eq!(after.backoff_level, 0);
        assert!(after.timeout <= base + ms(1), "{after} vs {base:?}");
    }

    #[test]
    fn default_backs_off_too() {
        let mut t = LatencyTracker::<u32>::new(policy());
        assert_eq!(t.timeout_fired(&1, "prepare").timeout, ms(1000));
        assert_eq!(t.timeout_fired(&1, "prepare").timeout, ms(2000));
    }

    /// After latency drops, the timeout comes back down within a bounded
    /// number of samples. For RFC 6298 gains, after a drop from L to l the
    /// RTO is about `l + 8 (L - l) (7/8)^k` after k samples (RTTVAR briefly
    /// grows first), so from 100 ms to 5 ms it is under 2 x 5 ms after about
    /// 38 samples; allow 45.
    #[test]
    fn timeout_comes_back_down_after_latency_drops() {
        let mut t = LatencyTracker::<u32>::new(TimeoutPolicy {
            min: Duration::from_micros(100),
            ..policy()
        });
        for _ in 0..200 {
            t.observe(&1, "rtt", ms(100));
        }
        let high = t.timeout(&1, "rtt").timeout;
        assert!(high >= ms(100), "{high:?}");
        let mut samples_to_recover = None;
        for k in 1..=200 {
            t.observe(&1, "rtt", ms(5));
            if t.timeout(&1, "rtt").timeout <= ms(10) {
                samples_to_recover = Some(k);
                break;
            }
        }
        let k = samples_to_recover.expect("timeout never came back down");
        assert!(k <= 45, "took {k} samples");
        // And it keeps converging towards the new latency.
        for _ in 0..100 {
            t.observe(&1, "rtt", ms(5));
        }
        let d = t.timeout(&1, "rtt").timeout;
        assert!(d >= ms(5) && d < Duration::from_micros(5_100), "{d:?}");
    }

    #[test]
    fn per_phase_policies_and_peers_are_separate() {
        let mut t = LatencyTracker::<&str>::new(policy());
        t.set_policy(
            "prepare",
            TimeoutPolicy {
                default: ms(1500),
                ..policy()
            },
        );
        assert_eq!(t.timeout(&"a", "prepare").timeout, ms(1500));
        assert_eq!(t.timeout(&"a", "rtt").timeout, ms(500));
        for _ in 0..10 {
            t.observe(&"a", "rtt", ms(1));
        }
        assert!(t.timeout(&"a", "rtt").timeout < ms(500));
        assert_eq!(t.timeout(&"b", "rtt").timeout, ms(500), "other peer");
        assert_eq!(t.snapshots().len(), 1);
        t.forget(&"a");
        assert!(t.snapshot(&"a", "rtt").is_none());
    }

    #[test]
    fn decision_explains_itself() {
        let mut t = LatencyTracker::<u32>::new(policy());
        let d = t.timeout(&1, "rtt").to_string();
        assert_eq!(d, "timeout 500ms from default (0/5 samples)");
        for _ in 0..5 {
            t.observe(&1, "rtt", ms(10));
        }
        t.timeout_fired(&1, "rtt");
        let d = t.timeout(&1, "rtt").to_string();
        assert!(
            d.contains("srtt") && d.contains("rttvar") && d.contains("backed off x1"),
            "{d}"
        );
    }

    #[test]
    fn deadline_propagation() {
        assert_eq!(deadline_timeout(ms(100), None, ms(5)), ms(100));
        assert_eq!(deadline_timeout(ms(100), Some(ms(50)), ms(5)), ms(45));
        assert_eq!(deadline_timeout(ms(10), Some(ms(50)), ms(5)), ms(10));
        assert_eq!(deadline_timeout(ms(10), Some(ms(3)), ms(5)), Duration::ZERO);
    }
}
