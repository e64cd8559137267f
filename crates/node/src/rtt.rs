//! Round-trip time estimation in the style of TCP's retransmission timer
//! (RFC 6298): a smoothed mean (SRTT) and mean deviation (RTTVAR), giving
//! `RTO = SRTT + max(G, 4 * RTTVAR)`.
//!
//! # Samples from re-sent messages must not be fed in (Karn's algorithm)
//! When a message was sent more than once, a reply cannot be matched to the
//! send it answers: measuring from the first send inflates the estimate,
//! from the last send deflates it. Callers therefore feed a sample only for
//! messages sent exactly once. The estimator cannot check this itself; it
//! only sees durations.
//!
//! The RFC's 1 s lower bound on RTO is for the internet-wide TCP case; here
//! bounds come from the phase settings in [`crate::timeouts`].

use std::time::Duration;

/// Gain of a new sample on SRTT (RFC 6298 alpha).
pub const ALPHA: f64 = 1.0 / 8.0;
/// Gain of a new sample on RTTVAR (RFC 6298 beta).
pub const BETA: f64 = 1.0 / 4.0;
/// Deviation multiplier in the RTO (RFC 6298 K).
pub const K: f64 = 4.0;
/// Clock granularity G: the smallest deviation term.
pub const GRANULARITY: Duration = Duration::from_micros(1);

/// SRTT/RTTVAR estimator for one path (or one phase of one peer).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RttEstimator {
    /// Seconds; meaningful once `samples > 0`.
    srtt: f64,
    rttvar: f64,
    samples: u64,
}

impl RttEstimator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one measurement (from a message sent exactly once; see the
    /// module docs).
    pub fn observe(&mut self, rtt: Duration) {
        let r = rtt.as_secs_f64();
        if self.samples == 0 {
            // RFC 6298 (2.2)
            self.srtt = r;
            self.rttvar = r / 2.0;
        } else {
            // RFC 6298 (2.3): RTTVAR first, with the old SRTT.
            self.rttvar = (1.0 - BETA) * self.rttvar + BETA * (self.srtt - r).abs();
            self.srtt = (1.0 - ALPHA) * self.srtt + ALPHA * r;
        }
        self.samples = self.samples.saturating_add(1);
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    pub fn srtt(&self) -> Option<Duration> {
        (self.samples > 0).then(|| secs(self.srtt))
    }

    pub fn rttvar(&self) -> Option<Duration> {
        (self.samples > 0).then(|| secs(self.rttvar))
    }

    /// `SRTT + max(G, K * RTTVAR)`, once there is a sample.
    pub fn rto(&self) -> Option<Duration> {
        (self.samples > 0).then(|| {
            let dev = (K * self.rttvar).max(GRANULARITY.as_secs_f64());
            secs(self.srtt + dev)
        })
    }
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn close(a: Duration, b: Duration) -> bool {
        let (a, b) = (a.as_secs_f64(), b.as_secs_f64());
        (a - b).abs() <= 1e-6 + 1e-3 * b
    }

    #[test]
    fn empty_has_no_estimate() {
        let e = RttEstimator::new();
        assert_eq!(e.rto(), None);
        assert_eq!(e.srtt(), None);
    }

    #[test]
    fn first_sample_per_rfc() {
        let mut e = RttEstimator::new();
        e.observe(ms(100));
        assert!(close(e.srtt().expect("srtt"), ms(100)));
        assert!(close(e.rttvar().expect("rttvar"), ms(50)));
        assert!(close(e.rto().expect("rto"), ms(300)));
    }

    #[test]
    fn second_sample_per_rfc() {
        let mut e = RttEstimator::new();
        e.observe(ms(100));
        e.observe(ms(200));
        // RTTVAR = 3/4*50 + 1/4*|100-200| = 62.5; SRTT = 7/8*100 + 1/8*200 = 112.5
        assert!(close(
            e.rttvar().expect("rttvar"),
            Duration::from_micros(62_500)
        ));
        assert!(close(
            e.srtt().expect("srtt"),
            Duration::from_micros(112_500)
        ));
        assert!(close(e.rto().expect("rto"), Duration::from_micros(362_500)));
    }

    #[test]
    fn converges_to_a_steady_rtt() {
        let mut e = RttEstimator::new();
        for _ in 0..100 {
            e.observe(ms(10));
        }
        assert!(close(e.srtt().expect("srtt"), ms(10)));
        let rto = e.rto().expect("rto");
        assert!(
            rto >= ms(10) && rto < Duration::from_micros(10_100),
            "{rto:?}"
        );
    }

    #[test]
    fn tracks_variance() {
        let mut e = RttEstimator::new();
        for i in 0..200 {
            e.observe(if i % 2 == 0 { ms(5) } else { ms(15) });
        }
        let srtt = e.srtt().expect("srtt");
        assert!(srtt > ms(8) && srtt < ms(12), "{srtt:?}");
        // Mean deviation about 5 ms: RTO about 10 + 4*5 = 30 ms.
        let rto = e.rto().expect("rto");
        assert!(rto > ms(25) && rto < ms(35), "{rto:?}");
    }
}
