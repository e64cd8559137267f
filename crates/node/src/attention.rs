//! Decision delivery and *needs attention* (SPEC §8): a COMMIT is re-sent
//! for as long as it takes (a decided transaction cannot be undone), and a
//! branch that has not acknowledged it after `attention_after_ms` is
//! flagged, with the reason, the attempt count and the last error. It is
//! never deleted because of the flag; the flag is cleared when the branch
//! acknowledges.
//!
//! This is the node layer's, not the server's, so the simulator makes the
//! same call under every seed. It only tracks what the core already does
//! (the core re-sends; this counts the sends and remembers errors the
//! transport reported), so no protocol rule is copied here.

use concord_proto::{NodeId, Time, Xid};
use std::collections::HashMap;

/// Default of `--attention-after`: five minutes.
pub const ATTENTION_AFTER_MS_DEFAULT: u64 = 5 * 60 * 1000;

/// Longest last-error text kept per branch (a peer's error body can be
/// anything).
const ERROR_BYTES_MAX: usize = 512;

/// One branch's delivery of a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// When the decision was first sent to it (in this life).
    pub first_sent: Time,
    pub attempts: u32,
    /// The last failure the transport reported (HTTP status, connection
    /// refused…), if any.
    pub last_error: Option<String>,
    /// When it was flagged as needing attention.
    pub flagged_at: Option<Time>,
}

/// A branch that started or stopped needing attention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttentionChange {
    Flagged {
        xid: Xid,
        participant: NodeId,
        attempts: u32,
        last_error: Option<String>,
        pending_ms: u64,
    },
    Cleared {
        xid: Xid,
        participant: NodeId,
        attempts: u32,
    },
}

/// Every decision still being delivered.
#[derive(Debug)]
pub struct Deliveries {
    attention_after_ms: u64,
    pending: HashMap<Xid, HashMap<NodeId, Delivery>>,
    flagged: usize,
    /// Every decision message sent, over the node's life (a counter).
    attempts_total: u64,
}

impl Deliveries {
    pub fn new(attention_after_ms: u64) -> Deliveries {
        Deliveries {
            attention_after_ms,
            pending: HashMap::new(),
            flagged: 0,
            attempts_total: 0,
        }
    }

    /// The COMMIT for `xid` was (re-)sent to `to`.
    pub fn sent(&mut self, now: Time, xid: Xid, to: &NodeId) -> Option<AttentionChange> {
        self.attempts_total += 1;
        let delivery = self
            .pending
            .entry(xid)
            .or_default()
            .entry(to.clone())
            .or_insert(Delivery {
                first_sent: now,
                attempts: 0,
                last_error: None,
                flagged_at: None,
            });
        delivery.attempts += 1;
        self.check(now, xid, to)
    }

    /// The transport could not deliver the decision for `xid` to `to`.
    /// Only remembered while a delivery is pending (a failed PREPARE is
    /// the phase-1 timeout's business).
    pub fn failed(
        &mut self,
        now: Time,
        xid: Xid,
        to: &NodeId,
        error: &str,
    ) -> Option<AttentionChange> {
        let delivery = self.pending.get_mut(&xid)?.get_mut(to)?;
        let mut error = error.to_string();
        if error.len() > ERROR_BYTES_MAX {
            let mut cut = ERROR_BYTES_MAX;
            while !error.is_char_boundary(cut) {
                cut -= 1;
            }
            error.truncate(cut);
        }
        delivery.last_error = Some(error);
        self.check(now, xid, to)
    }

    /// `from` acknowledged the decision for `xid`.
    pub fn acked(&mut self, xid: Xid, from: &NodeId) -> Option<AttentionChange> {
        let branches = self.pending.get_mut(&xid)?;
        let delivery = branches.remove(from)?;
        if branches.is_empty() {
            self.pending.remove(&xid);
        }
        self.cleared(xid, from.clone(), delivery)
    }

    /// The core stopped delivering `xid` (every branch acknowledged).
    pub fn finished(&mut self, xid: Xid) -> Vec<AttentionChange> {
        let Some(branches) = self.pending.remove(&xid) else {
            return Vec::new();
        };
        // In participant order, so the events (and a seed's trace) do
        // not depend on the map's order.
        let mut branches: Vec<(NodeId, Delivery)> = branches.into_iter().collect();
        branches.sort_by(|a, b| a.0.cmp(&b.0));
        branches
            .into_iter()
            .filter_map(|(participant, d)| self.cleared(xid, participant, d))
            .collect()
    }

    pub fn get(&self, xid: Xid, participant: &NodeId) -> Option<&Delivery> {
        self.pending.get(&xid)?.get(participant)
    }

    /// Whether a branch of `xid` needs attention.
    pub fn is_flagged(&self, xid: Xid) -> bool {
        self.pending
            .get(&xid)
            .is_some_and(|b| b.values().any(|d| d.flagged_at.is_some()))
    }

    /// Branches needing attention now.
    pub fn flagged(&self) -> usize {
        self.flagged
    }

    /// Every decision message sent so far.
    pub fn attempts_total(&self) -> u64 {
        self.attempts_total
    }

    /// Xids with a branch needing attention, oldest flag first.
    pub fn flagged_xids(&self) -> Vec<Xid> {
        let mut xids: Vec<(Time, Xid)> = self
            .pending
            .iter()
            .filter_map(|(xid, branches)| {
                let at = branches.values().filter_map(|d| d.flagged_at).min()?;
                Some((at, *xid))
            })
            .collect();
        xids.sort();
        xids.into_iter().map(|(_, xid)| xid).collect()
    }

    fn check(&mut self, now: Time, xid: Xid, to: &NodeId) -> Option<AttentionChange> {
        let delivery = self.pending.get_mut(&xid)?.get_mut(to)?;
        let pending_ms = now.ms_since(delivery.first_sent);
        if delivery.flagged_at.is_some() || pending_ms < self.attention_after_ms {
            return None;
        }
        delivery.flagged_at = Some(now);
        self.flagged += 1;
        Some(AttentionChange::Flagged {
            xid,
            participant: to.clone(),
            attempts: delivery.attempts,
            last_error: delivery.last_error.clone(),
            pending_ms,
        })
    }

    fn cleared(
        &mut self,
        xid: Xid,
        participant: NodeId,
        delivery: Delivery,
    ) -> Option<AttentionChange> {
        delivery.flagged_at?;
        self.flagged -= 1;
        Some(AttentionChange::Cleared {
            xid,
            participant,
            attempts: delivery.attempts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Time {
        Time(0).plus_ms(ms)
    }

    #[test]
    fn a_branch_is_flagged_once_past_the_threshold_and_cleared_by_its_ack() {
        let mut d = Deliveries::new(1000);
        let (xid, p) = (Xid(7), NodeId::from("inventory"));
        assert_eq!(d.sent(at(0), xid, &p), None);
        assert_eq!(d.failed(at(10), xid, &p, "connection refused"), None);
        assert_eq!(d.sent(at(999), xid, &p), None, "not yet past the threshold");
        let flagged = d.sent(at(1000), xid, &p);
        assert_eq!(
            flagged,
            Some(AttentionChange::Flagged {
                xid,
                participant: p.clone(),
                attempts: 3,
                last_error: Some("connection refused".into()),
                pending_ms: 1000,
            })
        );
        assert_eq!(d.sent(at(2000), xid, &p), None, "flagged only once");
        assert_eq!(d.flagged(), 1);
        assert_eq!(d.flagged_xids(), vec![xid]);
        assert_eq!(
            d.acked(xid, &p),
            Some(AttentionChange::Cleared {
                xid,
                participant: p,
                attempts: 4
            })
        );
        assert_eq!(d.flagged(), 0);
        assert_eq!(d.attempts_total(), 4);
        assert!(d.flagged_xids().is_empty());
    }

    #[test]
    fn an_error_for_a_branch_not_being_delivered_is_not_kept() {
        let mut d = Deliveries::new(0);
        assert_eq!(d.failed(at(0), Xid(1), &NodeId::from("a"), "refused"), None);
        assert!(d.get(Xid(1), &NodeId::from("a")).is_none());
    }

    #[test]
    fn finishing_clears_every_flag_of_the_transaction() {
        let mut d = Deliveries::new(0);
        let xid = Xid(3);
        assert!(d.sent(at(0), xid, &NodeId::from("a")).is_some());
        assert!(d.sent(at(0), xid, &NodeId::from("b")).is_some());
        assert_eq!(d.flagged(), 2);
        assert_eq!(d.finished(xid).len(), 2);
        assert_eq!(d.flagged(), 0);
    }
}
