//! The event trace: a running hash of every event (always on, cheap) and,
//! when asked for, one human-readable line per event.
//!
//! The hash lets the determinism test and `--seed` replays compare whole
//! runs without keeping lines. Lines are only formatted when tracing is on,
//! and tracing must never change what the run does: it draws no randomness
//! and feeds nothing back.

use crate::ids::NodeId;
use crate::report::fmt_time;
use concord_proto::Time;

#[derive(Debug)]
pub struct Trace {
    enabled: bool,
    lines: Vec<String>,
    hash: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Trace {
    pub fn new(enabled: bool) -> Trace {
        Trace {
            enabled,
            lines: Vec::new(),
            hash: FNV_OFFSET,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Mix values that identify an event into the run's hash.
    pub fn mix(&mut self, values: &[u64]) {
        for v in values {
            for byte in v.to_le_bytes() {
                self.hash ^= u64::from(byte);
                self.hash = self.hash.wrapping_mul(FNV_PRIME);
            }
        }
    }

    /// Mix a string (a message kind, say) into the hash.
    pub fn mix_str(&mut self, s: &str) {
        for byte in s.bytes() {
            self.hash ^= u64::from(byte);
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
    }

    /// Add a line; callers check `enabled()` first so that formatting
    /// costs nothing when tracing is off.
    pub fn line(&mut self, now: Time, node: Option<NodeId>, text: String) {
        let who = node.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        self.lines
            .push(format!("{:>12} {:<5} {}", fmt_time(now), who, text));
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    pub fn take_lines(&mut self) -> Vec<String> {
        std::mem::take(&mut self.lines)
    }
}
