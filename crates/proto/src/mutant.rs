//! Test-only protocol mutants: each one breaks exactly one rule, so a test
//! can show that the simulator (or a scenario) catches that class of bug.
//!
//! Compiled in only with the `mutants` cargo feature, which no release
//! build enables (the `concord` binary never turns it on; `concord-sim`'s
//! tests and its `--mutant` flag do). Without the feature, [`active`] is a
//! constant `false` and every mutant branch is dead code the compiler
//! removes. The switch is per thread, so seeds running on other threads
//! (and other tests) are untouched.

/// One deliberately broken rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mutant {
    /// Answers persist first: a participant asked about an xid it never
    /// prepared answers ABORTED before its unilateral abort is durable.
    AnswerBeforePersist,
    /// Persist-then-send: VOTE READY leaves before the READY record is
    /// durable.
    VoteBeforeReadyDurable,
    /// The commit rule: one READY vote is enough to decide COMMIT.
    CommitOnFirstReady,
    /// Recovery: a restarted coordinator forgets committed transactions
    /// that were not ended (no COMMIT re-sent).
    ForgetCommittedOnRecovery,
    /// Key-value resource, business rule: prepare skips the funds check.
    SkipFundsCheck,
    /// Key-value resource, isolation: prepare ignores locks held by other
    /// transactions.
    SkipLockConflict,
    /// Compaction: a participant's snapshot leaves out its in-doubt
    /// branches' READY records.
    CompactionDropsInDoubt,
    /// Compaction: the coordinator's snapshot leaves out committed
    /// transactions that have not ended.
    CompactionDropsUnended,
    /// Resources that answer later: a participant treats a failed resource
    /// commit as done (records COMMITTED and ACKs without the effect).
    AckBeforeApplied,
    /// Resources that answer later: a failed resource commit or abort is
    /// never tried again.
    AbandonFailedApply,
    /// Logical node identity: the directory keeps a node's first address
    /// and never follows it to a new one.
    DirectoryIgnoresMoves,
    /// Epochs: a participant acts on a message from an older coordinator
    /// epoch than its branch has seen.
    AdoptOlderEpoch,
    /// Late paths: a COMMIT re-sent for a branch the participant finished
    /// and forgot long ago is not ACKed (only reached after minutes).
    ForgottenCommitNotAcked,
    /// Late paths: a VOTE ABORT that arrives after the decision COMMIT
    /// makes the coordinator abort.
    LateVoteAbortHonoured,
    /// Bounds: a participant prepares new branches beyond its admission
    /// limit.
    AdmitBeyondLimit,
    /// Node identity: the coordinator welcomes a participant at a new
    /// address before that address is durable in its log.
    WelcomeBeforeDurable,
    /// Cooperative termination as a "watchdog re-vote": a READY
    /// participant whose peers all answer READY commits (as if their
    /// states were a new round of votes).
    WatchdogRevote,
    /// Cooperative termination: a peer with no record of an xid aborts it
    /// and answers ABORTED however old the asker's PREPARE is (so a
    /// branch it committed and forgot is reported aborted).
    ForgottenPeerAborts,
    /// Cooperative termination: a peer still preparing answers INITIAL
    /// and goes on to vote READY (instead of aborting first).
    PreparingPeerKeepsVoting,
    /// Read-only vote: after a restart, a participant with no record of
    /// an xid aborts it for a peer as if it had never prepared it, though
    /// a READ-ONLY vote of its earlier life left no record.
    ReadOnlyForgottenAcrossRestart,
    /// Read-only vote: the coordinator counts READ-ONLY as READY but also
    /// leaves the branch out of the vote count, deciding COMMIT before the
    /// other votes are in.
    ReadOnlySkipsVotes,
    /// One-phase commit: the participant reports COMMITTED before its
    /// one-phase commit record is durable.
    OnePhaseAckBeforeDurable,
    /// Hierarchical 2PC: a sub-coordinator votes READY as soon as its own
    /// part is prepared, without waiting for its children's votes.
    SubtreeVotesBeforeChildren,
    /// Hierarchical 2PC: a sub-coordinator still gathering votes within
    /// its deadline aborts when one of its own children asks (as if the
    /// question were a vote) instead of answering "not decided yet".
    ChildQuestionAbortsGathering,
    /// Operator actions: "retry now" on a transaction still collecting
    /// votes decides COMMIT (as if retrying meant pushing it through).
    RetryCommitsUndecided,
    /// HA (the simulator's shared store): a decision record is appended
    /// whatever the writer's epoch and lease, so an instance that lost its
    /// log still commits in it.
    UnfencedAppend,
    /// HA: a successor's recovery skips the log it took over (every
    /// transaction of the old owner is then presumed aborted, COMMITs
    /// included).
    TakeoverSkipsRecovery,
    /// HA (the lease state machine): an adopter never hands a log back to
    /// its own instance, however long it asks.
    NeverHandBack,
    /// HA lookups at any instance: a log that could not be asked (its
    /// lease ran out, its holder did not answer) counts as having no
    /// record, so "no record" (presumed abort) is said without it.
    LookupIgnoresUnknown,
    /// HA lookups at any instance: "no record" is said from a scan of the
    /// owner table older than the question, which may lack the log that
    /// holds the xid.
    LookupTrustsStaleScan,
}

impl Mutant {
    pub const ALL: [Mutant; 25] = [
        Mutant::AnswerBeforePersist,
        Mutant::VoteBeforeReadyDurable,
        Mutant::CommitOnFirstReady,
        Mutant::ForgetCommittedOnRecovery,
        Mutant::SkipFundsCheck,
        Mutant::SkipLockConflict,
        Mutant::CompactionDropsInDoubt,
        Mutant::CompactionDropsUnended,
        Mutant::AckBeforeApplied,
        Mutant::AbandonFailedApply,
        Mutant::DirectoryIgnoresMoves,
        Mutant::AdoptOlderEpoch,
        Mutant::ForgottenCommitNotAcked,
        Mutant::LateVoteAbortHonoured,
        Mutant::AdmitBeyondLimit,
        Mutant::WelcomeBeforeDurable,
        Mutant::WatchdogRevote,
        Mutant::ForgottenPeerAborts,
        Mutant::PreparingPeerKeepsVoting,
        Mutant::ReadOnlyForgottenAcrossRestart,
        Mutant::ReadOnlySkipsVotes,
        Mutant::OnePhaseAckBeforeDurable,
        Mutant::SubtreeVotesBeforeChildren,
        Mutant::ChildQuestionAbortsGathering,
        Mutant::RetryCommitsUndecided,
    ];

    /// The mutants of the HA world (`concord-sim --ha`), which the main
    /// world never reaches.
    pub const HA: [Mutant; 5] = [
        Mutant::UnfencedAppend,
        Mutant::TakeoverSkipsRecovery,
        Mutant::NeverHandBack,
        Mutant::LookupIgnoresUnknown,
        Mutant::LookupTrustsStaleScan,
    ];

    /// The name used by `concord-sim --mutant`.
    pub fn name(self) -> &'static str {
        match self {
            Mutant::AnswerBeforePersist => "answer-before-persist",
            Mutant::VoteBeforeReadyDurable => "vote-before-ready-durable",
            Mutant::CommitOnFirstReady => "commit-on-first-ready",
            Mutant::ForgetCommittedOnRecovery => "forget-committed-on-recovery",
            Mutant::SkipFundsCheck => "skip-funds-check",
            Mutant::SkipLockConflict => "skip-lock-conflict",
            Mutant::CompactionDropsInDoubt => "compaction-drops-in-doubt",
            Mutant::CompactionDropsUnended => "compaction-drops-unended",
            Mutant::AckBeforeApplied => "ack-before-applied",
            Mutant::AbandonFailedApply => "abandon-failed-apply",
            Mutant::DirectoryIgnoresMoves => "directory-ignores-moves",
            Mutant::AdoptOlderEpoch => "adopt-older-epoch",
            Mutant::ForgottenCommitNotAcked => "forgotten-commit-not-acked",
            Mutant::LateVoteAbortHonoured => "late-vote-abort-honoured",
            Mutant::AdmitBeyondLimit => "admit-beyond-limit",
            Mutant::WelcomeBeforeDurable => "welcome-before-durable",
            Mutant::WatchdogRevote => "watchdog-revote",
            Mutant::ForgottenPeerAborts => "forgotten-peer-aborts",
            Mutant::PreparingPeerKeepsVoting => "preparing-peer-keeps-voting",
            Mutant::ReadOnlyForgottenAcrossRestart => "read-only-forgotten-across-restart",
            Mutant::ReadOnlySkipsVotes => "read-only-skips-votes",
            Mutant::OnePhaseAckBeforeDurable => "one-phase-ack-before-durable",
            Mutant::SubtreeVotesBeforeChildren => "subtree-votes-before-children",
            Mutant::ChildQuestionAbortsGathering => "child-question-aborts-gathering",
            Mutant::RetryCommitsUndecided => "retry-commits-undecided",
            Mutant::UnfencedAppend => "unfenced-append",
            Mutant::TakeoverSkipsRecovery => "takeover-skips-recovery",
            Mutant::NeverHandBack => "never-hand-back",
            Mutant::LookupIgnoresUnknown => "lookup-ignores-unknown",
            Mutant::LookupTrustsStaleScan => "lookup-trusts-stale-scan",
        }
    }

    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL
            .into_iter()
            .chain(Mutant::HA)
            .find(|m| m.name() == name)
    }
}

#[cfg(feature = "mutants")]
thread_local! {
    static ACTIVE: std::cell::Cell<Option<Mutant>> = const { std::cell::Cell::new(None) };
}

/// Whether `mutant` is switched on for this thread.
#[inline(always)]
pub fn active(mutant: Mutant) -> bool {
    #[cfg(feature = "mutants")]
    {
        ACTIVE.with(|a| a.get() == Some(mutant))
    }
    #[cfg(not(feature = "mutants"))]
    {
        let _ = mutant;
        false
    }
}

/// Switch `mutant` on (or all off with `None`) for this thread.
#[cfg(feature = "mutants")]
pub fn set(mutant: Option<Mutant>) {
    ACTIVE.with(|a| a.set(mutant));
}
