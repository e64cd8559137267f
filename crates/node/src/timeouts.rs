//! Timeouts from measured latency (SPEC §3): the one timeout policy, used
//! by the coordinator and participant nodes (and so by both the servers and
//! the simulator).
//!
//! The protocol core takes its timeouts from outside; this module turns
//! the latency samples the cores report (`LatencySample` notices: they know
//! when a request went out and whether it went out once) into timeouts. It
//! keeps no copy of protocol state: per transaction only the timeouts it
//! chose and the backoff levels they were chosen at. It never touches IO.
//!
//! # What is measured
//! Coordinator, per participant:
//! * **prepare** — PREPARE sent → that participant's VOTE READY received.
//!   It includes the participant's own work and its forced READY write, so
//!   it is tracked apart from the decision round trip. VOTE ABORT gives no
//!   sample: a participant that refuses answers without the fsync, and its
//!   quick answers would pull the timeout below what a READY needs.
//! * **decision** — COMMIT sent → ACK received, only for a COMMIT sent
//!   exactly once (Karn's rule: the ACK of a re-sent COMMIT cannot be
//!   matched to the send it answers).
//!
//! Participant, per coordinator:
//! * **vote→decision** — VOTE READY sent → COMMIT/ABORT received, only when
//!   the vote went out once and no INQUIRE was needed (Karn again).
//!
//! Network round trips on their own (heartbeats) are not measured here: the
//! two phases above are what the timers wait for.
//!
//! # How a timeout is computed (one (peer, phase))
//! 1. Fewer than `samples_min` samples: the configured default.
//! 2. Otherwise `factor × RTO`, with the RFC 6298 `RTO = SRTT + 4·RTTVAR`
//!    ([`RttEstimator`](crate::rtt::RttEstimator)).
//! 3. Multiplied by `2^level`, where the level goes up when a timeout that
//!    was set at the current level fires and back to 0 with the next sample.
//!    Many transactions time out together when a participant dies; counting
//!    only the first of them per level keeps 50 concurrent timeouts from
//!    backing off 50 times.
//! 4. Clamped to `min..=max`.
//!
//! The **prepare** factor is [`PREPARE_SAFETY_FACTOR`] (2): unlike TCP,
//! where an early retransmission costs one duplicate segment, an early
//! phase-1 timeout aborts a transaction that would have committed, so the
//! costs are asymmetric. Twice the RTO still gives up on a dead participant
//! in a few round trips instead of the fixed 1–30 s it replaces; the
//! `--prepare-timeout-ms-min` floor (100 ms by default) absorbs scheduler
//! and fsync hiccups on loopback, where the RTO alone can be 2 ms. The
//! decision and inquire timers only cause an idempotent re-send, so they
//! use the RTO as it is (factor 1).
//!
//! The histograms (p50/p99/p999) are for people; timeouts come from the
//! estimator, which forgets (7/8 per sample) and so comes back down after a
//! slow spell, which a histogram of all history would not.

use crate::latency::PhaseLatency;
pub use concord_api::PhaseEstimate;
use concord_proto::{LatencyPhase, NodeId, Time, Xid};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// Coordinator: PREPARE sent → VOTE READY received.
pub const PHASE_PREPARE: &str = "prepare";
/// Coordinator: COMMIT sent (once) → ACK received.
pub const PHASE_DECISION: &str = "decision";
/// Participant: VOTE READY sent (once) → decision received.
pub const PHASE_VOTE_TO_DECISION: &str = "vote→decision";

/// Multiplier on the RTO for the phase-1 timeout (see the module docs).
pub const PREPARE_SAFETY_FACTOR: f64 = 2.0;
/// Each fired timeout doubles the next one.
pub const BACKOFF: f64 = 2.0;
/// Participant: branches tracked at once; beyond it new branches are not
/// measured (their inquire delay still comes from the estimate).
pub const BRANCHES_TRACKED_MAX: usize = 100_000;
/// Participant: a tracked branch older than this is dropped when the table
/// is full (it never got a decision we could measure).
const BRANCH_TRACKED_MS_MAX: u64 = 60_000;

/// Bounds and defaults of one phase's timeout, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PhaseSettings {
    pub min_ms: u64,
    pub max_ms: u64,
    /// Used until `samples_min` samples exist.
    pub default_ms: u64,
    pub samples_min: u64,
    /// Multiplier on the RTO.
    pub factor: f64,
    /// Flag prefix of the bounds in the explanation ("--prepare-timeout-ms"
    /// for `-min`/`-max`), and the flag of the default.
    pub flag: &'static str,
    pub default_flag: &'static str,
}

/// What a timeout was computed from.
#[derive(Clone, Debug, PartialEq)]
pub enum Basis {
    /// Not enough samples yet.
    Default { samples: u64, needed: u64 },
    /// `factor × (srtt + 4·rttvar)`.
    Estimate {
        srtt: Duration,
        rttvar: Duration,
        rto: Duration,
        factor: f64,
        samples: u64,
    },
    /// A client asked for this transaction's timeout.
    Requested,
}

/// A computed timeout and the estimate behind it; `Display` is the
/// one-line explanation logged when it fires and shown by `status`.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeoutChoice {
    pub timeout_ms: u64,
    pub phase: &'static str,
    /// The peer whose estimate set it (the largest, for a max over peers).
    pub peer: Option<NodeId>,
    pub basis: Basis,
    pub backoff_level: u32,
    /// `Some("min")`/`Some("max")` when a bound limited it.
    pub clamped: Option<&'static str>,
    pub flag: &'static str,
    pub default_flag: &'static str,
}

impl fmt::Display for TimeoutChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} timeout {} ms", self.phase, self.timeout_ms)?;
        // "for ADDR =": the driver's log swaps bare addresses for names.
        if let Some(peer) = self.peer.as_ref().filter(|p| !p.is_empty()) {
            write!(f, " for {peer}")?;
        }
        write!(f, " = ")?;
        match &self.basis {
            Basis::Default { samples, needed } => write!(
                f,
                "default {} ({samples}/{needed} samples)",
                self.default_flag
            )?,
            Basis::Estimate {
                srtt,
                rttvar,
                rto,
                factor,
                samples,
            } => {
                if (*factor - 1.0).abs() > f64::EPSILON {
                    write!(f, "{factor} × ")?;
                }
                write!(
                    f,
                    "rto {} (srtt {} + 4·rttvar {}, {samples} samples)",
                    fmt_ms(*rto),
                    fmt_ms(*srtt),
                    fmt_ms(*rttvar)
                )?
            }
            Basis::Requested => write!(f, "requested by the client")?,
        }
        if self.backoff_level > 0 {
            write!(f, " × 2^{} backoff", self.backoff_level)?;
        }
        match self.clamped {
            Some("min") => write!(f, ", raised to {}-min", self.flag),
            Some("deadline") => write!(f, ", capped at the PREPARE deadline"),
            Some(_) => write!(f, ", capped at {}-max", self.flag),
            None => Ok(()),
        }
    }
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

impl PhaseSettings {
    /// The timeout for one peer's estimates (`None`: never measured).
    pub fn choose(
        &self,
        phase: &'static str,
        peer: &NodeId,
        latency: Option<&PhaseLatency>,
    ) -> TimeoutChoice {
        let samples = latency.map_or(0, |l| l.rtt.samples());
        let level = latency.map_or(0, |l| l.backoff_level);
        let estimate = latency
            .filter(|_| samples >= self.samples_min.max(1))
            .and_then(|l| Some((l.rtt.srtt()?, l.rtt.rttvar()?, l.rtt.rto()?)));
        let (base_ms, basis) = match estimate {
            Some((srtt, rttvar, rto)) => (
                rto.as_secs_f64() * 1000.0 * self.factor,
                Basis::Estimate {
                    srtt,
                    rttvar,
                    rto,
                    factor: self.factor,
                    samples,
                },
            ),
            None => (
                self.default_ms as f64,
                Basis::Default {
                    samples,
                    needed: self.samples_min,
                },
            ),
        };
        let raw = base_ms * BACKOFF.powi(i32::try_from(level).unwrap_or(i32::MAX));
        let min = self.min_ms.max(1);
        let max = self.max_ms.max(min);
        let (timeout_ms, clamped) = if raw >= max as f64 {
            (max, (raw > max as f64).then_some("max"))
        } else if raw <= min as f64 {
            (min, (raw < min as f64).then_some("min"))
        } else {
            (raw.ceil() as u64, None)
        };
        TimeoutChoice {
            timeout_ms,
            phase,
            peer: Some(peer.clone()),
            basis,
            backoff_level: level,
            clamped,
            flag: self.flag,
            default_flag: self.default_flag,
        }
    }
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn estimate_of(
    peer: String,
    peer_id: &NodeId,
    choice: &TimeoutChoice,
    latency: Option<&PhaseLatency>,
) -> PhaseEstimate {
    let summary = latency.map(|l| l.histogram.summary()).unwrap_or_default();
    PhaseEstimate {
        peer,
        peer_id: peer_id.clone(),
        phase: choice.phase.to_string(),
        samples: latency.map_or(0, |l| l.rtt.samples()),
        srtt_us: latency.and_then(|l| l.rtt.srtt()).map(us),
        rttvar_us: latency.and_then(|l| l.rtt.rttvar()).map(us),
        rto_us: latency.and_then(|l| l.rtt.rto()).map(us),
        p50_us: us(summary.p50),
        p99_us: us(summary.p99),
        p999_us: us(summary.p999),
        max_us: us(summary.max),
        backoff_level: choice.backoff_level,
        timeout_ms: choice.timeout_ms,
        basis: choice.to_string(),
    }
}

/// Latency of every (peer, phase) seen so far.
#[derive(Debug, Default)]
struct Estimates {
    phases: HashMap<(NodeId, &'static str), PhaseLatency>,
}

impl Estimates {
    /// Every (peer, phase) measured, sorted.
    fn all(&self) -> Vec<(&NodeId, &'static str, &PhaseLatency)> {
        let mut all: Vec<_> = self
            .phases
            .iter()
            .map(|((peer, phase), latency)| (peer, *phase, latency))
            .collect();
        all.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        all
    }

    fn get(&self, peer: &NodeId, phase: &'static str) -> Option<&PhaseLatency> {
        self.phases.get(&(peer.clone(), phase))
    }

    fn observe(&mut self, peer: &NodeId, phase: &'static str, elapsed: Duration) {
        self.phases
            .entry((peer.clone(), phase))
            .or_default()
            .observe(elapsed);
    }

    fn level(&self, peer: &NodeId, phase: &'static str) -> u32 {
        self.get(peer, phase).map_or(0, |l| l.backoff_level)
    }

    /// A timeout set at `level_when_set` fired: back off, unless another
    /// timeout of the same round already did.
    fn fired(&mut self, peer: &NodeId, phase: &'static str, level_when_set: u32) {
        let latency = self.phases.entry((peer.clone(), phase)).or_default();
        if latency.backoff_level == level_when_set {
            latency.timeout_fired();
        }
    }
}

/// The timeouts the coordinator driver gives one new transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct BeginTimeouts {
    pub prepare: TimeoutChoice,
    pub resend: TimeoutChoice,
}

/// The timeouts chosen for one transaction at the coordinator, and the
/// backoff level of each participant when they were chosen (so that a
/// round of timeouts backs off once, see the module docs).
#[derive(Debug)]
struct CoordinatorTxn {
    timeouts: BeginTimeouts,
    /// (participant, prepare level, decision level) at begin.
    levels: Vec<(NodeId, u32, u32)>,
}

/// Coordinator side: measures the participants, and computes each new
/// transaction's phase-1 timeout and first COMMIT resend delay.
#[derive(Debug)]
pub struct CoordinatorTimeouts {
    prepare: PhaseSettings,
    decision: PhaseSettings,
    estimates: Estimates,
    txns: HashMap<Xid, CoordinatorTxn>,
}

/// The timeout-policy phase name of a core's sample.
fn phase_name(phase: LatencyPhase) -> &'static str {
    match phase {
        LatencyPhase::Prepare => PHASE_PREPARE,
        LatencyPhase::Decision => PHASE_DECISION,
        LatencyPhase::VoteToDecision => PHASE_VOTE_TO_DECISION,
    }
}

impl CoordinatorTimeouts {
    pub fn new(prepare: PhaseSettings, decision: PhaseSettings) -> Self {
        CoordinatorTimeouts {
            prepare,
            decision,
            estimates: Estimates::default(),
            txns: HashMap::new(),
        }
    }

    /// The phase-1 timeout `participant` alone would get now.
    pub fn prepare_timeout(&self, participant: &NodeId) -> TimeoutChoice {
        self.prepare.choose(
            PHASE_PREPARE,
            participant,
            self.estimates.get(participant, PHASE_PREPARE),
        )
    }

    /// The first COMMIT resend delay `participant` alone would get now.
    pub fn decision_timeout(&self, participant: &NodeId) -> TimeoutChoice {
        self.decision.choose(
            PHASE_DECISION,
            participant,
            self.estimates.get(participant, PHASE_DECISION),
        )
    }

    /// Timeouts for a new transaction: the largest over its participants
    /// (the slowest one must be given time to vote), or the client's own
    /// phase-1 timeout, bounded by the maximum. Remembers them for `xid`
    /// until [`finish`](Self::finish).
    pub fn begin(
        &mut self,
        xid: Xid,
        participants: &[NodeId],
        requested_ms: Option<u64>,
    ) -> BeginTimeouts {
        let largest = |choices: Vec<TimeoutChoice>, fallback: TimeoutChoice| {
            choices
                .into_iter()
                .max_by_key(|c| c.timeout_ms)
                .unwrap_or(fallback)
        };
        let none = String::new();
        let prepare = match requested_ms {
            Some(ms) => {
                let max = self.prepare.max_ms.max(1);
                TimeoutChoice {
                    timeout_ms: ms.clamp(1, max),
                    phase: PHASE_PREPARE,
                    peer: None,
                    basis: Basis::Requested,
                    backoff_level: 0,
                    clamped: (ms > max).then_some("max"),
                    flag: self.prepare.flag,
                    default_flag: self.prepare.default_flag,
                }
            }
            None => largest(
                participants
                    .iter()
                    .map(|p| self.prepare_timeout(p))
                    .collect(),
                self.prepare.choose(PHASE_PREPARE, &none, None),
            ),
        };
        let resend = largest(
            participants
                .iter()
                .map(|p| self.decision_timeout(p))
                .collect(),
            self.decision.choose(PHASE_DECISION, &none, None),
        );
        let levels = participants
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    self.estimates.level(p, PHASE_PREPARE),
                    self.estimates.level(p, PHASE_DECISION),
                )
            })
            .collect();
        let timeouts = BeginTimeouts { prepare, resend };
        self.txns.insert(
            xid,
            CoordinatorTxn {
                timeouts: timeouts.clone(),
                levels,
            },
        );
        timeouts
    }

    /// A sample the core measured (a `LatencySample` notice).
    pub fn observe(&mut self, peer: &NodeId, phase: LatencyPhase, elapsed_us: u64) {
        self.estimates
            .observe(peer, phase_name(phase), Duration::from_micros(elapsed_us));
    }

    /// The latency histogram of every (participant, phase) measured, for
    /// metrics.
    pub fn histograms(&self) -> Vec<(&NodeId, &'static str, &crate::latency::LatencyHistogram)> {
        self.estimates
            .all()
            .into_iter()
            .map(|(peer, phase, latency)| (peer, phase, &latency.histogram))
            .collect()
    }

    /// The phase-1 timer of `xid` fired while waiting for `waiting_for`:
    /// back those participants off and return the explanation of the
    /// timeout that fired.
    pub fn prepare_fired(&mut self, xid: Xid, waiting_for: &[NodeId]) -> Option<String> {
        let txn = self.txns.get(&xid)?;
        for (peer, level, _) in txn.levels.iter().filter(|(p, ..)| waiting_for.contains(p)) {
            self.estimates.fired(peer, PHASE_PREPARE, *level);
        }
        Some(txn.timeouts.prepare.to_string())
    }

    /// The COMMIT resend timer of `xid` fired (the core re-sends and
    /// doubles): back the un-ACKed participants off once and return the
    /// explanation of the first resend delay.
    pub fn resend_fired(&mut self, xid: Xid, waiting_for: &[NodeId]) -> Option<String> {
        let txn = self.txns.get(&xid)?;
        for (peer, _, level) in txn.levels.iter().filter(|(p, ..)| waiting_for.contains(p)) {
            self.estimates.fired(peer, PHASE_DECISION, *level);
        }
        Some(format!(
            "first resend after {} (later resends double)",
            txn.timeouts.resend
        ))
    }

    /// `xid` was decided ABORT or ended: forget its timeouts.
    pub fn finish(&mut self, xid: Xid) {
        self.txns.remove(&xid);
    }

    /// Transactions whose timeouts are remembered (for tests and bounds).
    pub fn tracked(&self) -> usize {
        self.txns.len()
    }

    /// Estimates for `participants` (label for humans, id), both phases.
    pub fn report(&self, participants: &[(String, NodeId)]) -> Vec<PhaseEstimate> {
        let mut out = Vec::new();
        for (label, id) in participants {
            for (phase, choice) in [
                (PHASE_PREPARE, self.prepare_timeout(id)),
                (PHASE_DECISION, self.decision_timeout(id)),
            ] {
                out.push(estimate_of(
                    label.clone(),
                    id,
                    &choice,
                    self.estimates.get(id, phase),
                ));
            }
        }
        out
    }
}

/// The inquire delay chosen for one branch at a participant.
#[derive(Debug)]
struct ParticipantBranch {
    coordinator: NodeId,
    inquire: TimeoutChoice,
    level: u32,
    created_at: Time,
    /// The inquire timer fired at least once.
    fired: bool,
    /// A sub-coordinator's branch: each child's cap when the branch
    /// began (the choice, and the backoff level it was chosen at).
    kids: Vec<(NodeId, TimeoutChoice, u32)>,
}

/// Participant side: turns vote → decision samples per coordinator into the
/// READY inquire delay, and, at a sub-coordinator of hierarchical 2PC,
/// PREPARE → VOTE samples per child into the most each child is given to
/// vote (SPEC §1.7: min(its adaptive timeout, remaining − margin); the
/// core applies the second bound).
#[derive(Debug)]
pub struct ParticipantTimeouts {
    inquire: PhaseSettings,
    child_prepare: PhaseSettings,
    estimates: Estimates,
    branches: HashMap<Xid, ParticipantBranch>,
}

impl ParticipantTimeouts {
    pub fn new(inquire: PhaseSettings, child_prepare: PhaseSettings) -> Self {
        ParticipantTimeouts {
            inquire,
            child_prepare,
            estimates: Estimates::default(),
            branches: HashMap::new(),
        }
    }

    /// The most `child` may be given to vote now: `None` until measured
    /// (then only the deadline bounds it). A default is no cap: the
    /// parent's own deadline already came from a measured timeout above.
    pub fn child_cap(&self, child: &NodeId) -> (Option<u64>, TimeoutChoice) {
        let latency = self.estimates.get(child, PHASE_PREPARE);
        let choice = self.child_prepare.choose(PHASE_PREPARE, child, latency);
        let cap = matches!(choice.basis, Basis::Estimate { .. }).then_some(choice.timeout_ms);
        (cap, choice)
    }

    /// A new sub-coordinator branch `xid` forwards PREPARE to `kids`: the
    /// cap of each, remembered so that a timeout backs them off once.
    pub fn on_children(&mut self, xid: Xid, kids: &[NodeId]) -> Vec<(NodeId, Option<u64>)> {
        let mut caps = Vec::with_capacity(kids.len());
        let mut chosen = Vec::with_capacity(kids.len());
        for kid in kids {
            let (cap, choice) = self.child_cap(kid);
            caps.push((kid.clone(), cap));
            chosen.push((
                kid.clone(),
                choice,
                self.estimates.level(kid, PHASE_PREPARE),
            ));
        }
        if let Some(branch) = self.branches.get_mut(&xid) {
            branch.kids = chosen;
        }
        caps
    }

    /// `child` of `xid` voted ABORT `elapsed_us` after its PREPARE went
    /// out. If that is at least the cap it was given, it ran out of time
    /// (a timeout further down its subtree, which only it saw): back it
    /// off as if it had been silent. An earlier ABORT (a lock conflict, a
    /// refusal) says nothing about time. Returns whether it backed off.
    pub fn child_aborted(&mut self, xid: Xid, child: &NodeId, elapsed_us: u64) -> bool {
        let Some(branch) = self.branches.get(&xid) else {
            return false;
        };
        let out_of_time =
            branch
                .kids
                .iter()
                .find(|(k, ..)| k == child)
                .and_then(|(_, choice, level)| {
                    let capped = matches!(choice.basis, Basis::Estimate { .. });
                    (capped && elapsed_us >= choice.timeout_ms.saturating_mul(1000))
                        .then_some(*level)
                });
        match out_of_time {
            Some(level) => {
                self.estimates.fired(child, PHASE_PREPARE, level);
                true
            }
            None => false,
        }
    }

    /// The children's votes of `xid` did not all come in time: back the
    /// silent ones off (once per round) and explain the caps that were in
    /// force.
    pub fn children_silent(&mut self, xid: Xid, silent: &[NodeId]) -> String {
        let Some(branch) = self.branches.get(&xid) else {
            return "caps not tracked (the branch table was full)".into();
        };
        let mut why = Vec::new();
        for (kid, choice, level) in branch.kids.iter().filter(|(k, ..)| silent.contains(k)) {
            self.estimates.fired(kid, PHASE_PREPARE, *level);
            why.push(match choice.basis {
                Basis::Estimate { .. } => choice.to_string(),
                _ => format!("{kid} not measured yet: no cap below the deadline"),
            });
        }
        why.join("; ")
    }

    /// The inquire delay for a branch of `coordinator` prepared now. It is
    /// counted from the PREPARE deadline (the core never inquires before
    /// it), and never longer than the deadline the PREPARE carried: a
    /// coordinator that gave its participants `deadline_ms` to vote
    /// decides within about that much.
    pub fn inquire_delay(&self, coordinator: &NodeId, deadline_ms: u64) -> TimeoutChoice {
        let mut choice = self.inquire.choose(
            PHASE_VOTE_TO_DECISION,
            coordinator,
            self.estimates.get(coordinator, PHASE_VOTE_TO_DECISION),
        );
        let cap = deadline_ms.max(self.inquire.min_ms).max(1);
        if choice.timeout_ms > cap {
            choice.timeout_ms = cap;
            choice.clamped = Some("deadline");
        }
        choice
    }

    /// A PREPARE for `xid` from `coordinator` arrives at `now`. For a new
    /// branch, returns the inquire delay the driver must give the core
    /// before feeding it the PREPARE; `None` for a duplicate.
    pub fn on_prepare(
        &mut self,
        now: Time,
        xid: Xid,
        coordinator: &NodeId,
        deadline_ms: u64,
    ) -> Option<u64> {
        if self.branches.contains_key(&xid) {
            return None; // duplicate PREPARE: already chosen
        }
        let choice = self.inquire_delay(coordinator, deadline_ms);
        let delay = choice.timeout_ms;
        if self.make_room(now) {
            self.branches.insert(
                xid,
                ParticipantBranch {
                    coordinator: coordinator.clone(),
                    level: self.estimates.level(coordinator, PHASE_VOTE_TO_DECISION),
                    inquire: choice,
                    created_at: now,
                    fired: false,
                    kids: Vec::new(),
                },
            );
        }
        Some(delay)
    }

    /// A sample the core measured (a `LatencySample` notice).
    pub fn observe(&mut self, peer: &NodeId, phase: LatencyPhase, elapsed_us: u64) {
        self.estimates
            .observe(peer, phase_name(phase), Duration::from_micros(elapsed_us));
    }

    /// The READY timer of `xid` fired (an INQUIRE goes out): back off once
    /// per round and return the explanation of the delay that was in force.
    pub fn inquire_fired(&mut self, xid: Xid) -> Option<String> {
        let branch = self.branches.get_mut(&xid)?;
        // Later firings of the same branch are the core's own doubling.
        if !branch.fired {
            branch.fired = true;
            self.estimates
                .fired(&branch.coordinator, PHASE_VOTE_TO_DECISION, branch.level);
        }
        Some(format!(
            "inquire delay past the deadline: {}",
            branch.inquire
        ))
    }

    /// A branch finished (outcome known, or it voted ABORT): forget it.
    pub fn finish(&mut self, xid: Xid) {
        self.branches.remove(&xid);
    }

    pub fn tracked(&self) -> usize {
        self.branches.len()
    }

    /// Estimates for every coordinator measured so far.
    pub fn report(&self) -> Vec<PhaseEstimate> {
        let mut coordinators: Vec<&NodeId> = self
            .estimates
            .phases
            .keys()
            .filter(|(_, phase)| *phase == PHASE_VOTE_TO_DECISION)
            .map(|(peer, _)| peer)
            .collect();
        coordinators.sort();
        coordinators
            .into_iter()
            .map(|c| {
                let latency = self.estimates.get(c, PHASE_VOTE_TO_DECISION);
                let choice = self.inquire.choose(PHASE_VOTE_TO_DECISION, c, latency);
                estimate_of(c.clone(), c, &choice, latency)
            })
            .collect()
    }

    /// Keep the table bounded: when full, drop branches older than
    /// `BRANCH_TRACKED_MS_MAX` (their timer backs off anyway). Returns
    /// whether there is room for one more.
    fn make_room(&mut self, now: Time) -> bool {
        if self.branches.len() < BRANCHES_TRACKED_MAX {
            return true;
        }
        self.branches
            .retain(|_, b| now.ms_since(b.created_at) < BRANCH_TRACKED_MS_MAX);
        self.branches.len() < BRANCHES_TRACKED_MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "127.0.0.1:1";
    const B: &str = "127.0.0.1:2";
    const C: &str = "127.0.0.1:9";

    fn ms(v: u64) -> Time {
        Time(v * 1000)
    }

    fn prepare_settings() -> PhaseSettings {
        PhaseSettings {
            min_ms: 10,
            max_ms: 30_000,
            default_ms: 1000,
            samples_min: 4,
            factor: PREPARE_SAFETY_FACTOR,
            flag: "--prepare-timeout-ms",
            default_flag: "--prepare-timeout-ms",
        }
    }

    fn decision_settings() -> PhaseSettings {
        PhaseSettings {
            min_ms: 5,
            max_ms: 5000,
            default_ms: 100,
            samples_min: 4,
            factor: 1.0,
            flag: "--resend-ms",
            default_flag: "--resend-ms-initial",
        }
    }

    fn coordinator() -> CoordinatorTimeouts {
        CoordinatorTimeouts::new(prepare_settings(), decision_settings())
    }

    /// One transaction over `peers` where each votes READY after the given
    /// ms and ACKs after the given ms (the samples the core would report).
    fn run_txn(
        t: &mut CoordinatorTimeouts,
        xid: u128,
        _t0: u64,
        peers: &[(&str, u64, u64)],
    ) -> BeginTimeouts {
        let addrs: Vec<NodeId> = peers.iter().map(|(p, _, _)| p.to_string()).collect();
        let begun = t.begin(Xid(xid), &addrs, None);
        for (p, vote, ack) in peers {
            t.observe(&p.to_string(), LatencyPhase::Prepare, vote * 1000);
            t.observe(&p.to_string(), LatencyPhase::Decision, ack * 1000);
        }
        t.finish(Xid(xid));
        begun
    }

    fn samples(t: &CoordinatorTimeouts, peer: &str, phase: &'static str) -> u64 {
        t.estimates
            .get(&peer.to_string(), phase)
            .map_or(0, |l| l.rtt.samples())
    }

    #[test]
    fn default_until_enough_samples_then_from_the_estimate() {
        let mut t = coordinator();
        for i in 0..4 {
            let begun = run_txn(&mut t, i, i as u64 * 100, &[(A, 50, 60)]);
            assert_eq!(begun.prepare.timeout_ms, 1000, "default before 4 samples");
            assert_eq!(begun.resend.timeout_ms, 100);
        }
        assert_eq!(samples(&t, A, PHASE_PREPARE), 4);
        let choice = t.prepare_timeout(&A.to_string());
        // Steady 50 ms: RTO = 50 + 4·rttvar (rttvar 25·(3/4)^3 ≈ 10.5) ≈ 92 ms; × 2.
        assert!(
            matches!(choice.basis, Basis::Estimate { samples: 4, .. }),
            "{choice}"
        );
        assert!(
            (150..=220).contains(&choice.timeout_ms),
            "2 × rto: {choice}"
        );
        let text = choice.to_string();
        assert!(
            text.starts_with("prepare timeout ")
                && text.contains("= 2 × rto")
                && text.contains("srtt 50.0 ms"),
            "{text}"
        );
        // Decision phase: factor 1, ACK after 60 ms.
        let resend = t.decision_timeout(&A.to_string());
        assert!((60..=130).contains(&resend.timeout_ms), "{resend}");
    }

    #[test]
    fn prepare_timeout_is_the_max_over_the_participants() {
        let mut t = coordinator();
        for i in 0..20 {
            run_txn(&mut t, i, i as u64 * 1000, &[(A, 5, 6), (B, 200, 210)]);
        }
        let a = t.prepare_timeout(&A.to_string()).timeout_ms;
        let b = t.prepare_timeout(&B.to_string()).timeout_ms;
        assert!(a < 50 && b > 300, "a {a} b {b}");
        let begun = t.begin(Xid(99), &[A.into(), B.into()], None);
        assert_eq!(begun.prepare.timeout_ms, b);
        assert_eq!(begun.prepare.peer.as_deref(), Some(B));
        let resend_b = t.decision_timeout(&B.to_string()).timeout_ms;
        assert_eq!(begun.resend.timeout_ms, resend_b);
        // A transaction with only the fast participant gets its own.
        let only_a = t.begin(Xid(100), &[A.into()], None);
        assert_eq!(only_a.prepare.timeout_ms, a);
        // A new participant without samples brings the default in.
        let with_new = t.begin(Xid(101), &[A.into(), "127.0.0.1:3".into()], None);
        assert_eq!(with_new.prepare.timeout_ms, 1000);
    }

    #[test]
    fn client_requested_timeout_wins_bounded_by_the_max() {
        let mut t = coordinator();
        for i in 0..10 {
            run_txn(&mut t, i, i as u64 * 100, &[(A, 5, 6)]);
        }
        let begun = t.begin(Xid(50), &[A.into()], Some(7000));
        assert_eq!(begun.prepare.timeout_ms, 7000);
        assert_eq!(begun.prepare.basis, Basis::Requested);
        let begun = t.begin(Xid(51), &[A.into()], Some(90_000));
        assert_eq!(begun.prepare.timeout_ms, 30_000);
        assert!(
            begun.prepare.to_string().contains("capped at"),
            "{}",
            begun.prepare
        );
    }

    #[test]
    fn a_round_of_timeouts_backs_off_once_and_fresh_samples_bring_it_back() {
        let mut t = coordinator();
        for i in 0..20 {
            run_txn(&mut t, i, i as u64 * 100, &[(A, 20, 21), (B, 20, 21)]);
        }
        let base = t.prepare_timeout(&B.to_string()).timeout_ms;
        // 50 transactions in flight when B dies; all their timers fire.
        for x in 100..150 {
            t.begin(Xid(x), &[A.into(), B.into()], None);
        }
        for x in 100..150 {
            let why = t.prepare_fired(Xid(x), &[B.into()]).expect("timed");
            assert!(why.contains("prepare timeout"), "{why}");
            t.finish(Xid(x));
        }
        let after = t.prepare_timeout(&B.to_string());
        assert_eq!(after.backoff_level, 1, "one round, one doubling");
        assert!(
            after.timeout_ms >= base * 2 - 1 && after.timeout_ms <= base * 2 + 1,
            "{after} vs {base}"
        );
        assert_eq!(
            t.prepare_timeout(&A.to_string()).backoff_level,
            0,
            "A answered"
        );
        // The next round (begun at level 1) doubles again.
        t.begin(Xid(200), &[B.into()], None);
        t.prepare_fired(Xid(200), &[B.into()]);
        assert_eq!(t.prepare_timeout(&B.to_string()).backoff_level, 2);
        // A fresh sample ends the backoff.
        run_txn(&mut t, 300, 10_000, &[(B, 20, 21)]);
        let back = t.prepare_timeout(&B.to_string());
        assert_eq!(back.backoff_level, 0);
        assert!(back.timeout_ms <= base + 1, "{back} vs {base}");
    }

    #[test]
    fn clamps_to_min_and_max() {
        let mut t = coordinator();
        for i in 0..10 {
            run_txn(&mut t, i, i as u64 * 100, &[(A, 0, 0)]);
        }
        let fast = t.prepare_timeout(&A.to_string());
        assert_eq!((fast.timeout_ms, fast.clamped), (10, Some("min")));
        assert!(
            fast.to_string()
                .ends_with("raised to --prepare-timeout-ms-min"),
            "{fast}"
        );
        for _ in 0..40 {
            t.begin(Xid(500), &[A.into()], None);
            t.prepare_fired(Xid(500), &[A.into()]);
            t.finish(Xid(500));
        }
        let slow = t.prepare_timeout(&A.to_string());
        assert_eq!((slow.timeout_ms, slow.clamped), (30_000, Some("max")));
    }

    #[test]
    fn report_lists_every_configured_participant_and_phase() {
        let mut t = coordinator();
        for i in 0..10 {
            run_txn(&mut t, i, i as u64 * 100, &[(A, 30, 31)]);
        }
        let report = t.report(&[("a".into(), A.into()), ("b".into(), B.into())]);
        assert_eq!(report.len(), 4);
        let a = &report[0];
        assert_eq!((a.peer.as_str(), a.phase.as_str()), ("a", "prepare"));
        assert_eq!(a.samples, 10);
        assert_eq!(a.p50_us / 1000, 30);
        assert_eq!(a.srtt_us.map(|v| v / 1000), Some(30));
        assert!(a.basis.contains("srtt"), "{}", a.basis);
        let b = &report[2];
        assert_eq!((b.samples, b.timeout_ms, b.srtt_us), (0, 1000, None));
        assert!(
            b.basis.contains("default --prepare-timeout-ms (0/4"),
            "{}",
            b.basis
        );
    }

    fn inquire_settings() -> PhaseSettings {
        PhaseSettings {
            min_ms: 5,
            max_ms: 5000,
            default_ms: 200,
            samples_min: 3,
            factor: 1.0,
            flag: "--inquire-ms",
            default_flag: "--inquire-ms-initial",
        }
    }

    /// A participant branch: PREPARE at t0, and the core's vote → decision
    /// sample of `d - 1` ms.
    fn participant_txn(p: &mut ParticipantTimeouts, xid: u128, t0: u64, d: u64) -> Option<u64> {
        let delay = p.on_prepare(ms(t0), Xid(xid), &C.to_string(), 1000);
        p.observe(&C.to_string(), LatencyPhase::VoteToDecision, (d - 1) * 1000);
        p.finish(Xid(xid));
        delay
    }

    fn child_settings() -> PhaseSettings {
        PhaseSettings {
            min_ms: 20,
            max_ms: 3_600_000,
            default_ms: 3_600_000,
            samples_min: 3,
            factor: PREPARE_SAFETY_FACTOR,
            flag: "--child-prepare-timeout-ms",
            default_flag: "--child-prepare-timeout-ms",
        }
    }

    fn participant_timeouts() -> ParticipantTimeouts {
        ParticipantTimeouts::new(inquire_settings(), child_settings())
    }

    #[test]
    fn a_child_is_capped_at_its_measured_timeout_and_backs_off_when_silent() {
        let mut p = participant_timeouts();
        let kid = B.to_string();
        let kids = [kid.clone()];
        // Not measured: no cap (the core gives the time left less a margin).
        assert_eq!(p.on_prepare(ms(0), Xid(1), &C.to_string(), 1000), Some(200));
        assert_eq!(p.on_children(Xid(1), &kids), vec![(kid.clone(), None)]);
        for _ in 0..3 {
            p.observe(&kid, LatencyPhase::Prepare, 30_000);
        }
        // 30 ms steady: 2 × (30 + 4·rttvar 15·(3/4)^2) ≈ 128 ms.
        p.on_prepare(ms(10), Xid(2), &C.to_string(), 1000);
        let caps = p.on_children(Xid(2), &kids);
        let cap = caps[0].1.expect("measured");
        assert!((110..=140).contains(&cap), "{cap}");
        // Silent: the next cap doubles, once per round of timeouts.
        p.on_prepare(ms(20), Xid(3), &C.to_string(), 1000);
        p.on_children(Xid(3), &kids);
        let why = p.children_silent(Xid(2), &kids);
        assert!(
            why.contains(&format!("prepare timeout {cap} ms for {kid}")),
            "{why}"
        );
        p.children_silent(Xid(3), &kids);
        let doubled = p.child_cap(&kid).0.expect("measured");
        assert!(
            (cap * 2 - 1..=cap * 2).contains(&doubled),
            "{cap} → {doubled}"
        );
        // An ABORT before the cap ran out is no timeout; one after it is.
        p.on_prepare(ms(30), Xid(4), &C.to_string(), 1000);
        p.on_children(Xid(4), &kids);
        assert!(!p.child_aborted(Xid(4), &kid, 1_000));
        assert_eq!(p.child_cap(&kid).0, Some(doubled));
        assert!(p.child_aborted(Xid(4), &kid, doubled * 1000));
        let quadrupled = p.child_cap(&kid).0.expect("measured");
        assert!(quadrupled >= doubled * 2 - 1, "{doubled} → {quadrupled}");
        let doubled = quadrupled;
        // A child that is not silent is not backed off.
        let other = A.to_string();
        p.children_silent(Xid(2), std::slice::from_ref(&other));
        assert_eq!(p.child_cap(&kid).0, Some(doubled));
    }

    #[test]
    fn participant_inquire_delay_follows_vote_to_decision() {
        let mut p = participant_timeouts();
        for i in 0..3 {
            assert_eq!(participant_txn(&mut p, i, i as u64 * 100, 41), Some(200));
        }
        let delay = participant_txn(&mut p, 10, 1000, 41).expect("new branch");
        // 40 ms steady: rto = 40 + 4·rttvar (20·(3/4)^2 = 11.25) = 85.
        assert!((80..=90).contains(&delay), "{delay}");
        assert_eq!(p.tracked(), 0, "finished branches are dropped");
        // Never longer than the deadline PREPARE carried.
        let capped = p.inquire_delay(&C.to_string(), 30);
        assert_eq!((capped.timeout_ms, capped.clamped), (30, Some("deadline")));
        let report = p.report();
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].samples, 4);
    }

    #[test]
    fn participant_duplicate_prepare_keeps_the_first_choice_and_fired_explains_it() {
        let mut p = participant_timeouts();
        assert_eq!(p.on_prepare(ms(0), Xid(1), &C.to_string(), 1000), Some(200));
        assert_eq!(p.on_prepare(ms(1), Xid(1), &C.to_string(), 1000), None);
        let why = p.inquire_fired(Xid(1)).expect("tracked");
        assert!(why.contains("vote→decision timeout 200 ms"), "{why}");
        // One round of firing backs off once.
        p.inquire_fired(Xid(1));
        assert_eq!(p.inquire_delay(&C.to_string(), 10_000).backoff_level, 1);
        p.finish(Xid(1));
        assert_eq!(p.tracked(), 0);
    }
}
