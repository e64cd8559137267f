//! Recent outcomes: a bounded memory of decided transactions, so `status`
//! can answer after a transaction left the core (aborted, or ended) and
//! after a restart. Filled from what the core's recovery found, never by
//! replaying the log a second time.

use concord_proto::{Decision, NodeId, RecoveredOutcome, Shape, Time, Xid};
use std::collections::{HashMap, VecDeque};

/// Outcome of a finished (or deciding) transaction, kept for `status`.
#[derive(Clone, Debug)]
pub struct RecentTxn {
    pub decision: Decision,
    pub reason: Option<String>,
    pub participants: Vec<NodeId>,
    pub ended: bool,
    /// How it ran, when this life began it (a recovered outcome's log
    /// does not say): the shape, and for a tree each participant's
    /// parent as `Request::Begin.parents` gives it (0: the coordinator,
    /// `k`: `participants[k - 1]`).
    pub shape: Option<Shape>,
    pub parents: Vec<u32>,
    /// When it began, if this life saw it begin.
    pub began_at: Option<Time>,
}

/// A bounded memory of recent outcomes, oldest forgotten first. Filled
/// from the log at start-up so that `status` survives restarts.
pub struct RecentOutcomes {
    txns: HashMap<Xid, RecentTxn>,
    order: VecDeque<Xid>,
    max: usize,
}

impl RecentOutcomes {
    /// The outcomes recovery found in the log (the log is replayed once,
    /// by the core), the newest `max` of them kept.
    pub fn from_recovered(outcomes: Vec<RecoveredOutcome>, max: usize) -> RecentOutcomes {
        let mut recent = RecentOutcomes {
            txns: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
        };
        for outcome in outcomes {
            let reason = match (outcome.decision, outcome.aborted_by_recovery) {
                (Decision::Commit, _) => None,
                (Decision::Abort, true) => {
                    Some("coordinator restarted before deciding (presumed abort)".into())
                }
                (Decision::Abort, false) => {
                    Some("aborted before the coordinator's last restart".into())
                }
            };
            recent.insert(
                outcome.xid,
                RecentTxn {
                    decision: outcome.decision,
                    reason,
                    participants: outcome.participants,
                    ended: outcome.ended,
                    shape: None,
                    parents: Vec::new(),
                    began_at: None,
                },
            );
        }
        recent
    }

    /// Every outcome kept, the most recently decided first.
    pub fn newest_first(&self) -> impl Iterator<Item = (Xid, &RecentTxn)> {
        self.order
            .iter()
            .rev()
            .filter_map(|xid| self.txns.get(xid).map(|t| (*xid, t)))
    }

    pub fn insert(&mut self, xid: Xid, txn: RecentTxn) {
        if self.txns.insert(xid, txn).is_none() {
            self.order.push_back(xid);
            while self.order.len() > self.max {
                if let Some(old) = self.order.pop_front() {
                    self.txns.remove(&old);
                }
            }
        }
    }

    pub fn mark_ended(&mut self, xid: Xid) {
        if let Some(txn) = self.txns.get_mut(&xid) {
            txn.ended = true;
        }
    }

    pub fn get(&self, xid: Xid) -> Option<&RecentTxn> {
        self.txns.get(&xid)
    }

    pub fn contains(&self, xid: Xid) -> bool {
        self.txns.contains_key(&xid)
    }

    pub fn len(&self) -> usize {
        self.txns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::CoordinatorRecord;

    #[test]
    fn recent_outcomes_come_from_the_log_and_stay_bounded() {
        let p = vec!["a".to_string()];
        let log = vec![
            CoordinatorRecord::Epoch { epoch: 1 },
            CoordinatorRecord::Begin {
                xid: Xid(1),
                participants: p.clone(),
            },
            CoordinatorRecord::Decision {
                xid: Xid(1),
                decision: Decision::Commit,
                participants: p.clone(),
            },
            CoordinatorRecord::End { xid: Xid(1) },
            CoordinatorRecord::Begin {
                xid: Xid(2),
                participants: p.clone(),
            },
        ];
        // The log is replayed once, by the core's recovery.
        let mut core = concord_proto::Coordinator::recover(
            concord_proto::CoordinatorConfig {
                id: "c".into(),
                resend_ms_initial: 10,
                resend_ms_max: 100,
                one_phase: true,
                two_phase_only: Vec::new(),
            },
            log,
            concord_proto::Time(0),
        );
        let mut recent = RecentOutcomes::from_recovered(core.take_recovered_outcomes(), 2);
        let one = recent.get(Xid(1)).expect("xid 1");
        assert!(one.ended && one.decision == Decision::Commit);
        let two = recent.get(Xid(2)).expect("xid 2");
        assert_eq!(two.decision, Decision::Abort, "undecided = presumed abort");
        recent.insert(
            Xid(3),
            RecentTxn {
                decision: Decision::Commit,
                reason: None,
                participants: p,
                ended: false,
                shape: Some(Shape::Centralized),
                parents: Vec::new(),
                began_at: None,
            },
        );
        assert!(!recent.contains(Xid(1)), "oldest forgotten past the bound");
        assert!(recent.contains(Xid(3)));
    }
}
