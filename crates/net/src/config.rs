//! Transport configuration: every bound and timer of the network layer in
//! one place, so the ones that must agree with each other are set together.
//!
//! # How the idle timers and heartbeats relate
//!
//! A connection can sit idle for a long time (a participant in READY waiting
//! for the decision). Three timers govern it:
//!
//! * `heartbeat_interval` — each end writes a [`KIND_HEARTBEAT`] frame when it
//!   has written nothing for this long. Heartbeats are checked on a tick of
//!   half the interval, so the real gap between two heartbeats is between 1×
//!   and 1.5× the interval.
//! * `dead_after_missed` — an end that has *read* nothing (heartbeats count)
//!   for `heartbeat_interval × dead_after_missed` declares the peer dead,
//!   closes the connection and reconnects. Because of the 1.5× above this must
//!   be at least 2; 3–5 tolerates a loaded peer.
//! * `server_idle_timeout` — a server closes an accepted connection that has
//!   read nothing for this long. It exists for clients that do not heartbeat
//!   (or are gone without a FIN). For heartbeating clients it must be larger
//!   than the heartbeat gap, or the server closes healthy connections:
//!   `server_idle_timeout ≥ 2 × heartbeat_interval` is enforced by
//!   [`NetConfig::validate`].
//! * `client_idle_timeout` — a client closes a pooled connection that carried
//!   no application frame (heartbeats do not count) for this long, to give
//!   back file descriptors; the next send reconnects. `None` keeps
//!   connections forever.
//!
//! Whatever these are set to, a pooled connection the other side closed (for
//! its own idle timeout, a middlebox's, or a restart) never surfaces as an
//! error to a caller of `send`: the connection is re-established and the
//! frames not yet written are sent again. Heartbeats only make that rarer and
//! make dead peers visible sooner.
//!
//! Both ends of a connection must agree on whether heartbeats are on: an end
//! that expects heartbeats declares a silent peer dead.
//!
//! [`KIND_HEARTBEAT`]: crate::frame::KIND_HEARTBEAT

use std::time::Duration;

use crate::frame::FRAME_BYTES_MAX_DEFAULT;

/// Settings of a [`Network`](crate::conn::Network). Durations are wall-clock
/// (tokio) time.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Largest frame body accepted or sent, in bytes.
    pub frame_bytes_max: usize,
    /// Bound on one TCP connect attempt.
    pub connect_timeout: Duration,
    /// Bound on writing one coalesced batch; a peer that stops reading (its
    /// receive window stays full) is treated as dead after this long.
    pub write_timeout: Duration,
    /// Send a heartbeat after this long without writing; `None` disables
    /// heartbeats and dead-peer detection.
    pub heartbeat_interval: Option<Duration>,
    /// Silent heartbeat intervals after which the peer is declared dead.
    pub dead_after_missed: u32,
    /// Servers close accepted connections that read nothing for this long.
    pub server_idle_timeout: Option<Duration>,
    /// Clients close pooled connections without application frames for this
    /// long (they reconnect on the next send).
    pub client_idle_timeout: Option<Duration>,
    /// First reconnect backoff; doubles per consecutive failure.
    pub reconnect_backoff_min: Duration,
    /// Cap on the reconnect backoff.
    pub reconnect_backoff_max: Duration,
    /// Frames queued per connection before `send` waits (backpressure).
    pub send_queue_frames_max: usize,
    /// Frames received from all peers and not yet taken by the application
    /// before readers stop reading (TCP flow control pushes back).
    pub incoming_queue_frames_max: usize,
    /// Upper bound on the bytes coalesced into one write.
    pub write_bytes_max: usize,
    /// Accepted connections alive at once; more are closed on accept.
    pub connections_max: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            connect_timeout: Duration::from_secs(3),
            write_timeout: Duration::from_secs(10),
            heartbeat_interval: Some(Duration::from_secs(1)),
            dead_after_missed: 5,
            server_idle_timeout: Some(Duration::from_secs(30)),
            client_idle_timeout: None,
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(5),
            send_queue_frames_max: 4096,
            incoming_queue_frames_max: 16 * 1024,
            write_bytes_max: 256 * 1024,
            connections_max: 16 * 1024,
        }
    }
}

/// A configuration whose settings contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network configuration: {0}")]
pub struct ConfigError(pub String);

impl NetConfig {
    /// Time without reading anything after which the peer is declared dead
    /// (`None` when heartbeats are off).
    pub fn dead_after(&self) -> Option<Duration> {
        self.heartbeat_interval
            .map(|hb| hb.saturating_mul(self.dead_after_missed))
    }

    /// Check that the settings are usable together (see the module docs).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        if self.frame_bytes_max == 0 || self.frame_bytes_max > u32::MAX as usize {
            return fail(format!(
                "frame_bytes_max {} must be in 1..=u32::MAX",
                self.frame_bytes_max
            ));
        }
        if self.connect_timeout.is_zero() || self.write_timeout.is_zero() {
            return fail("connect_timeout and write_timeout must be positive".into());
        }
        if let Some(hb) = self.heartbeat_interval {
            if hb.is_zero() {
                return fail("heartbeat_interval must be positive (use None to disable)".into());
            }
            if self.dead_after_missed < 2 {
                return fail(format!(
                    "dead_after_missed {} must be at least 2 (heartbeats are sent 1x-1.5x the interval apart)",
                    self.dead_after_missed
                ));
            }
            if let Some(idle) = self.server_idle_timeout {
                if idle < hb.saturating_mul(2) {
                    return fail(format!(
                        "server_idle_timeout {idle:?} must be at least 2 x heartbeat_interval {hb:?}, \
                         or the server closes connections of healthy heartbeating clients"
                    ));
                }
            }
        }
        for (name, d) in [
            ("server_idle_timeout", self.server_idle_timeout),
            ("client_idle_timeout", self.client_idle_timeout),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                return fail(format!("{name} must be positive (use None to disable)"));
            }
        }
        if self.reconnect_backoff_min.is_zero()
            || self.reconnect_backoff_min > self.reconnect_backoff_max
        {
            return fail(format!(
                "reconnect backoff must satisfy 0 < min ({:?}) <= max ({:?})",
                self.reconnect_backoff_min, self.reconnect_backoff_max
            ));
        }
        if self.send_queue_frames_max == 0
            || self.incoming_queue_frames_max == 0
            || self.write_bytes_max == 0
            || self.connections_max == 0
        {
            return fail(
                "queue sizes, write_bytes_max and connections_max must be positive".into(),
            );
        }
        Ok(())
    }

    /// Period of the per-connection timer that sends heartbeats and checks the
    /// idle and dead timers: a quarter of the shortest of them (half of the
    /// heartbeat interval), so each fires at most that late.
    pub(crate) fn tick(&self) -> Option<Duration> {
        let candidates = [
            self.heartbeat_interval.map(|d| d / 2),
            self.dead_after().map(|d| d / 4),
            self.server_idle_timeout.map(|d| d / 4),
            self.client_idle_timeout.map(|d| d / 4),
        ];
        candidates
            .into_iter()
            .flatten()
            .min()
            .map(|d| d.max(Duration::from_millis(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        NetConfig::default().validate().expect("valid");
    }

    #[test]
    fn server_idle_shorter_than_heartbeats_is_rejected() {
        let c = NetConfig {
            heartbeat_interval: Some(Duration::from_secs(10)),
            server_idle_timeout: Some(Duration::from_secs(15)),
            ..NetConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert!(e.0.contains("server_idle_timeout"), "{e}");
    }

    #[test]
    fn dead_after_missed_at_least_two() {
        let c = NetConfig {
            dead_after_missed: 1,
            ..NetConfig::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn tick_follows_the_shortest_timer() {
        let c = NetConfig {
            heartbeat_interval: Some(Duration::from_millis(100)),
            server_idle_timeout: None,
            ..NetConfig::default()
        };
        assert_eq!(c.tick(), Some(Duration::from_millis(50)));
        let c = NetConfig {
            heartbeat_interval: None,
            server_idle_timeout: None,
            client_idle_timeout: None,
            ..NetConfig::default()
        };
        assert_eq!(c.tick(), None);
    }
}
