//! Hierarchical 2PC (SPEC §1.7): a participant that is the sub-coordinator
//! of its children.
//!
//! A TREE PREPARE brings the subtree below this participant. It prepares
//! its own work and, at the same time, sends each child its PREPARE (a
//! TREE PREPARE if the child has children) with a shorter deadline. Its
//! vote waits for all of them: once its own part is prepared (state
//! GATHERING) and every child voted, it forces its `SubtreeReady` record,
//! naming the children that voted READY, and votes READY upward (or
//! READ-ONLY, if it and every child only read). A VOTE ABORT from a child,
//! or a child silent at the deadline, aborts the whole subtree.
//!
//! In phase 2 it passes the decision down. A COMMIT is applied to its own
//! resource only once every READY child ACKed (state RELAYING until then),
//! and ACKed upward after its own COMMITTED record: so it never forgets a
//! commit a child may still ask about, and a compaction never snapshots
//! its own commit while the log still says READY. Its children name it as
//! their coordinator and ask it with CHAIN INQUIRE; a sub-coordinator with
//! no record of an xid never voted READY on it (it forgets a commit only
//! after every child ACKed), so it aborts that xid and answers ABORTED.

use super::{Branch, BranchState, Participant, ParticipantAction, ParticipantNotice};
use crate::ids::{Epoch, LatencyPhase, NodeId, Time, TimerKey, TimerKind, Xid};
use crate::message::{Body, Decision, Vote};
use crate::mutant::{self, Mutant};
use crate::tree::{self, TreeEntry};

/// The children of a sub-coordinator's branch and what each said.
#[derive(Debug, Clone)]
pub(super) struct Subtree {
    pub(super) kids: Vec<Kid>,
    /// Its own resource voted READ-ONLY (nothing to change here).
    pub(super) own_read_only: bool,
    /// When PREPARE went to the children (for their latency samples).
    sent_at: Option<Time>,
    /// Re-send delay of an un-ACKed COMMIT to the children; doubles.
    resend_ms: u64,
    resend_at: Option<Time>,
}

#[derive(Debug, Clone)]
pub(super) struct Kid {
    pub(super) node: NodeId,
    pub(super) vote: KidVote,
    pub(super) acked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KidVote {
    Waiting,
    Ready,
    ReadOnly,
}

impl Subtree {
    /// Children recovered from a `SubtreeReady` record: each voted READY.
    pub(super) fn recovered(children: Vec<NodeId>, resend_ms: u64) -> Subtree {
        Subtree {
            kids: children
                .into_iter()
                .map(|node| Kid {
                    node,
                    vote: KidVote::Ready,
                    acked: false,
                })
                .collect(),
            own_read_only: false,
            sent_at: None,
            resend_ms,
            resend_at: None,
        }
    }

    /// The children that voted READY: they get phase 2.
    pub(super) fn ready_kids(&self) -> Vec<NodeId> {
        self.kids
            .iter()
            .filter(|k| k.vote == KidVote::Ready)
            .map(|k| k.node.clone())
            .collect()
    }

    fn all_voted(&self) -> bool {
        self.kids.iter().all(|k| k.vote != KidVote::Waiting)
    }

    fn all_acked(&self) -> bool {
        self.kids
            .iter()
            .all(|k| k.vote != KidVote::Ready || k.acked)
    }
}

/// The timer of a sub-coordinator's vote collection (its deadline) and of
/// its COMMIT re-sends to its children.
fn votes_timer(xid: Xid) -> TimerKey {
    TimerKey::new(xid, TimerKind::Votes)
}

fn resend_timer(xid: Xid) -> TimerKey {
    TimerKey::new(xid, TimerKind::Resend)
}

impl Participant {
    /// A TREE PREPARE: prepare like any branch, and become the
    /// sub-coordinator of the children in `tree`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_tree_prepare(
        &mut self,
        now: Time,
        xid: Xid,
        epoch: Epoch,
        from: NodeId,
        participants: Vec<NodeId>,
        work: Vec<u8>,
        tree: Vec<TreeEntry>,
        deadline_ms: u64,
    ) {
        let me = self.config.id.clone();
        // At least one level sits above us (whoever sent it).
        let bad = tree::check(&tree, &me, 1)
            .err()
            .map(|e| e.to_string())
            .or_else(|| {
                tree.iter()
                    .find(|e| e.node == me || e.node == from)
                    .map(|e| format!("{} is in its own subtree", e.node))
            })
            .or_else(|| tree.is_empty().then(|| "an empty subtree".to_string()));
        let known = self.branches.contains_key(&xid)
            || self.finished.contains_key(&xid)
            || self.read_only.contains_key(&xid);
        if let (Some(reason), false) = (bad, known) {
            return self.vote_abort(now, xid, from, epoch, reason, false);
        }
        self.on_prepare(
            now,
            xid,
            epoch,
            from,
            participants,
            work,
            deadline_ms,
            false,
            false,
        );
        if known {
            return; // a duplicate: answered like any PREPARE
        }
        let Some(branch) = self.branches.get_mut(&xid) else {
            return; // refused (busy, not listed, too large)
        };
        let roots = tree::children_of(&tree, 0);
        let kids: Vec<Kid> = roots
            .iter()
            .map(|&i| Kid {
                node: tree[i].node.clone(),
                vote: KidVote::Waiting,
                acked: false,
            })
            .collect();
        let mut siblings = vec![me];
        siblings.extend(kids.iter().map(|k| k.node.clone()));
        branch.subtree = Some(Subtree {
            kids,
            own_read_only: false,
            sent_at: Some(now),
            resend_ms: self.config.inquire_ms_initial.max(1),
            resend_at: None,
        });
        let deadline = branch.deadline;
        let epoch = branch.epoch;
        // Deadlines shrink on the way down: a child gets the time left
        // less a margin for its vote to come back and our READY record to
        // be forced (an eighth of it), and no more than the timeout
        // measured for it.
        let remaining = deadline.ms_since(now);
        let margin = remaining / 8 + 1;
        for &i in &roots {
            let kid = &tree[i];
            let cap = self
                .child_timeouts
                .get(&kid.node)
                .copied()
                .unwrap_or(u64::MAX);
            let deadline_ms = remaining.saturating_sub(margin).min(cap).max(1);
            let below = tree::subtree(&tree, i);
            let (participants, work) = (siblings.clone(), kid.work.clone());
            let body = Body::prepare_below(participants, work, below, deadline_ms);
            let message = self.message(xid, epoch, body);
            self.actions.push(ParticipantAction::Send {
                to: kid.node.clone(),
                message,
            });
        }
        self.actions.push(ParticipantAction::SetTimer {
            key: votes_timer(xid),
            at: deadline,
        });
    }

    /// The timeout a sub-coordinator gives `child` at most from now on
    /// (from its measured PREPARE → VOTE time); `None`: not measured, only
    /// the deadline less the margin bounds it.
    pub fn set_child_timeout_ms(&mut self, child: NodeId, timeout_ms: Option<u64>) {
        match timeout_ms {
            Some(ms) => {
                self.child_timeouts.insert(child, ms.max(1));
            }
            None => {
                self.child_timeouts.remove(&child);
            }
        }
    }

    /// Whether `from` is a child of this participant's branch of `xid`.
    pub(super) fn is_child(&self, xid: Xid, from: &NodeId) -> bool {
        self.branches
            .get(&xid)
            .and_then(|b| b.subtree.as_ref())
            .is_some_and(|s| s.kids.iter().any(|k| k.node == *from))
    }

    /// Own part prepared: wait for the children's votes.
    pub(super) fn own_part_prepared(&mut self, now: Time, xid: Xid) {
        if let Some(branch) = self.branches.get_mut(&xid) {
            branch.state = BranchState::Gathering;
        }
        self.vote_if_gathered(now, xid);
    }

    /// Every vote is in and the own part prepared: vote upward.
    fn vote_if_gathered(&mut self, now: Time, xid: Xid) {
        let Some(branch) = self.branches.get(&xid) else {
            return;
        };
        let Some(subtree) = &branch.subtree else {
            return;
        };
        let early = mutant::active(Mutant::SubtreeVotesBeforeChildren);
        if branch.state != BranchState::Gathering || !(subtree.all_voted() || early) {
            return;
        }
        if subtree.own_read_only && subtree.ready_kids().is_empty() {
            // Nothing below changes anything either: READ-ONLY for all.
            let Some(branch) = self.branches.remove(&xid) else {
                return;
            };
            self.remember_read_only(now, xid);
            let message = self.message(xid, branch.epoch, Body::Vote(Vote::ReadOnly));
            self.actions.push(ParticipantAction::Send {
                to: branch.coordinator,
                message,
            });
            return;
        }
        self.force_ready(now, xid);
    }

    /// A child's vote.
    pub(super) fn on_child_vote(&mut self, now: Time, xid: Xid, from: NodeId, vote: Vote) {
        let Some(branch) = self.branches.get_mut(&xid) else {
            return;
        };
        let Some(subtree) = branch.subtree.as_mut() else {
            return;
        };
        let Some(kid) = subtree.kids.iter_mut().find(|k| k.node == from) else {
            return;
        };
        if kid.vote != KidVote::Waiting {
            return; // a duplicate
        }
        let gathering = matches!(
            branch.state,
            BranchState::Preparing { .. } | BranchState::Gathering
        );
        match vote {
            Vote::Ready | Vote::ReadOnly if gathering => {
                kid.vote = if vote == Vote::Ready {
                    KidVote::Ready
                } else {
                    KidVote::ReadOnly
                };
                let sample = match (vote, subtree.sent_at) {
                    (Vote::Ready, Some(sent)) => Some(ParticipantNotice::LatencySample {
                        xid,
                        peer: from,
                        phase: LatencyPhase::Prepare,
                        elapsed_us: now.us_since(sent),
                    }),
                    _ => None,
                };
                if let Some(sample) = sample {
                    self.actions.push(ParticipantAction::Notice(sample));
                }
                self.vote_if_gathered(now, xid);
            }
            // Too late (we aborted, or voted without it: impossible): a
            // READY child learns ABORT from us now or by asking.
            Vote::Ready | Vote::ReadOnly => {}
            Vote::Abort { reason } if gathering => {
                if let Some(sent) = subtree.sent_at {
                    // For the timeout policy: a child that used up its
                    // time (a timeout further down) is backed off.
                    self.actions
                        .push(ParticipantAction::Notice(ParticipantNotice::ChildAborted {
                            xid,
                            child: from.clone(),
                            elapsed_us: now.us_since(sent),
                        }));
                }
                let reason = format!("{from}: {reason}");
                self.abort_unvoted(now, xid, reason, true);
            }
            Vote::Abort { .. } => {}
        }
    }

    /// A child ACKed the COMMIT: once all READY children did, commit our
    /// own part (then our COMMITTED record, then our ACK upward).
    pub(super) fn on_child_ack(&mut self, xid: Xid, from: NodeId) {
        let Some(branch) = self.branches.get_mut(&xid) else {
            return;
        };
        let Some(subtree) = branch.subtree.as_mut() else {
            return;
        };
        if let Some(kid) = subtree.kids.iter_mut().find(|k| k.node == from) {
            kid.acked = true;
        }
        self.apply_if_relayed(xid);
    }

    fn apply_if_relayed(&mut self, xid: Xid) {
        let Some(branch) = self.branches.get_mut(&xid) else {
            return;
        };
        let relayed = branch.subtree.as_ref().is_some_and(|s| s.all_acked());
        if branch.state != BranchState::Relaying || !relayed {
            return;
        }
        branch.state = BranchState::Applying {
            decision: Decision::Commit,
        };
        if let Some(subtree) = branch.subtree.as_mut() {
            subtree.resend_at = None;
        }
        self.start_apply(xid, Decision::Commit);
    }

    /// The decision reached a READY sub-coordinator: pass it down. A
    /// COMMIT is applied here only once the children ACKed it.
    pub(super) fn relay_decision(&mut self, now: Time, xid: Xid, decision: Decision) {
        let Some(branch) = self.branches.get_mut(&xid) else {
            return;
        };
        let epoch = branch.epoch;
        let Some(subtree) = branch.subtree.as_mut() else {
            return;
        };
        let to = match decision {
            Decision::Commit => subtree.ready_kids(),
            // Everyone who may hold anything: those not yet voted too.
            Decision::Abort => subtree
                .kids
                .iter()
                .filter(|k| k.vote != KidVote::ReadOnly)
                .map(|k| k.node.clone())
                .collect(),
        };
        if decision == Decision::Commit {
            branch.state = BranchState::Relaying;
            branch.timer_at = None;
            let at = now.plus_ms(subtree.resend_ms);
            subtree.resend_at = Some(at);
            self.actions.push(ParticipantAction::SetTimer {
                key: resend_timer(xid),
                at,
            });
        }
        for to in to {
            let message = self.message(xid, epoch, Body::Decision(decision));
            self.actions.push(ParticipantAction::Send { to, message });
        }
        if decision == Decision::Commit {
            self.apply_if_relayed(xid);
        }
    }

    /// Abort a sub-coordinator's branch that has not voted (a child voted
    /// ABORT, a child was silent at the deadline, or someone asked before
    /// the vote): ABORT to the children, the prepare released, VOTE ABORT
    /// upward if `tell_coordinator`. A leaf's branch is only dropped.
    pub(super) fn abort_unvoted(
        &mut self,
        now: Time,
        xid: Xid,
        reason: String,
        tell_coordinator: bool,
    ) -> Option<Branch> {
        let branch = self.branches.remove(&xid)?;
        if branch.state == BranchState::Gathering {
            // Our own prepare succeeded: release it. (One still running
            // is released when it returns, finding the branch aborted.)
            self.start_apply(xid, Decision::Abort);
        }
        let kids: Vec<NodeId> = branch
            .subtree
            .iter()
            .flat_map(|s| s.kids.iter())
            .filter(|k| k.vote != KidVote::ReadOnly)
            .map(|k| k.node.clone())
            .collect();
        let coordinator = branch.coordinator.clone();
        if !tell_coordinator {
            // The abort came from above (decided there, or forced by a
            // sub-coordinator above): pass it down as it is.
            self.remember(now, xid, Decision::Abort);
            for to in kids {
                let message = self.message(xid, branch.epoch, Body::Decision(Decision::Abort));
                self.actions.push(ParticipantAction::Send { to, message });
            }
        } else if kids.is_empty() {
            self.vote_abort(now, xid, coordinator, branch.epoch, reason, false);
        } else {
            // Our own abort, which the children may tell their peers:
            // durable first (a crash must not let a re-sent TREE PREPARE
            // prepare it again), then the ABORTs and our vote.
            self.remember(now, xid, Decision::Abort);
            self.force_abort(xid, Some(coordinator), branch.epoch, reason, kids);
        }
        Some(branch)
    }

    /// The vote collection's deadline passed with a child still silent.
    pub(super) fn votes_timer_fired(&mut self, now: Time, xid: Xid) {
        let Some(branch) = self.branches.get(&xid) else {
            return;
        };
        let Some(subtree) = &branch.subtree else {
            return;
        };
        let gathering = matches!(
            branch.state,
            BranchState::Preparing { .. } | BranchState::Gathering
        );
        if !gathering || now < branch.deadline {
            return;
        }
        let silent: Vec<NodeId> = subtree
            .kids
            .iter()
            .filter(|k| k.vote == KidVote::Waiting)
            .map(|k| k.node.clone())
            .collect();
        if silent.is_empty() {
            return; // our own prepare is late: on_prepared votes ABORT
        }
        let timeout_ms = branch.deadline.ms_since(branch.prepared_at.unwrap_or(now));
        let reason = format!(
            "{}: no vote from {} within {timeout_ms} ms",
            self.config.id,
            silent.join(", ")
        );
        self.actions.push(ParticipantAction::Notice(
            ParticipantNotice::ChildrenSilent {
                xid,
                silent,
                timeout_ms,
            },
        ));
        self.abort_unvoted(now, xid, reason, true);
    }

    /// Re-send COMMIT to the children that have not ACKed, with backoff,
    /// for as long as it takes.
    pub(super) fn resend_timer_fired(&mut self, now: Time, xid: Xid) {
        let inquire_ms_max = self.config.inquire_ms_max.max(1);
        let Some(branch) = self.branches.get_mut(&xid) else {
            return;
        };
        let epoch = branch.epoch;
        let Some(subtree) = branch.subtree.as_mut() else {
            return;
        };
        match subtree.resend_at {
            Some(at) if now >= at && branch.state == BranchState::Relaying => {}
            _ => return,
        }
        subtree.resend_ms = subtree.resend_ms.saturating_mul(2).min(inquire_ms_max);
        let at = now.plus_ms(subtree.resend_ms);
        subtree.resend_at = Some(at);
        let waiting: Vec<NodeId> = subtree
            .kids
            .iter()
            .filter(|k| k.vote == KidVote::Ready && !k.acked)
            .map(|k| k.node.clone())
            .collect();
        for to in waiting {
            let message = self.message(xid, epoch, Body::Decision(Decision::Commit));
            self.actions.push(ParticipantAction::Send { to, message });
        }
        self.actions.push(ParticipantAction::SetTimer {
            key: resend_timer(xid),
            at,
        });
    }
}
