//! Reconciliation: `pg_prepared_xacts` against what this participant
//! knows, at start-up and every `--reconcile-interval`. It decides, and
//! the driver only lists and resolves:
//!
//! - a gid this participant holds (a branch prepared or READY) is left to
//!   the protocol, which resolves it in phase 2;
//! - one of its own gids whose xid it knows the outcome of is resolved to
//!   that outcome;
//! - one of its own gids with no READY record, whose hold (in the gid)
//!   ran out by the database's clock, is rolled back: presumed abort. It
//!   cannot have voted READY, so no coordinator can have decided COMMIT
//!   with it;
//! - every other prepared transaction (another participant's gids, a
//!   foreign tool's, another database's) is reported with its age and
//!   left alone.
//!
//! While the database cannot be listed, nothing is decided: the listing is
//! retried with backoff.

use crate::pg::gid::Gid;
use crate::pg::resource::PgNotice;
use concord_proto::{Decision, Time, Xid};

/// First retry after a failed listing; doubled up to the interval.
pub const LIST_RETRY_MS_MIN: u64 = 500;
/// Warn at this share of `max_prepared_transactions` (percent).
pub const NEAR_LIMIT_PERCENT: u64 = 80;
/// Most unresolved gids a report lists (the counts are complete).
pub const REPORT_GIDS_MAX: usize = 100;

/// One row of `pg_prepared_xacts`.
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedRow {
    pub gid: String,
    /// Seconds since `PREPARE TRANSACTION`, by the database's clock.
    pub age_s: f64,
    /// In the database this participant is connected to (only those can
    /// be resolved from its connections).
    pub here: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreparedList {
    pub rows: Vec<PreparedRow>,
    pub max_prepared: u64,
}

/// Whose a prepared transaction is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GidOwner {
    /// This participant's, waiting for its PREPARE (within its hold), or
    /// in another database of the cluster.
    Mine,
    /// Another concord participant's (the name in the gid).
    OtherParticipant(String),
    /// Not a concord gid.
    Foreign,
}

/// A prepared transaction this participant does not resolve (yet).
#[derive(Clone, Debug, PartialEq)]
pub struct Unresolved {
    pub gid: String,
    pub age_s: f64,
    pub owner: GidOwner,
}

/// The last reconciliation's findings, for status and metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreparedReport {
    /// When the last listing succeeded.
    pub reconciled_at: Option<Time>,
    /// Prepared transactions in the whole cluster.
    pub prepared: usize,
    pub max_prepared: u64,
    /// Held by this participant's branches.
    pub held: usize,
    /// Its own, within their hold.
    pub waiting: usize,
    /// Not this participant's to resolve.
    pub unresolvable: usize,
    /// The oldest of `waiting` and `unresolvable`.
    pub oldest_unresolved_s: f64,
    /// Up to [`REPORT_GIDS_MAX`] of them, oldest first.
    pub unresolved: Vec<Unresolved>,
    pub last_error: Option<String>,
    /// Resolved by reconciliation since start.
    pub commits: u64,
    pub rollbacks: u64,
}

/// What one listing asks for.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// (gid, commit?, why)
    pub resolve: Vec<(String, bool, String)>,
    pub notices: Vec<PgNotice>,
}

/// When to list, and what was found.
#[derive(Debug)]
pub struct Reconciler {
    interval_ms: u64,
    /// `None` while a listing runs.
    next_at: Option<Time>,
    retry_ms: u64,
    report: PreparedReport,
}

impl Reconciler {
    /// The first listing is due at once (start-up).
    pub fn new(interval_ms: u64) -> Reconciler {
        Reconciler {
            interval_ms: interval_ms.max(1),
            next_at: Some(Time(0)),
            retry_ms: LIST_RETRY_MS_MIN,
            report: PreparedReport::default(),
        }
    }

    pub fn report(&self) -> &PreparedReport {
        &self.report
    }

    pub fn next_at(&self) -> Option<Time> {
        self.next_at
    }

    pub(crate) fn due(&self, now: Time) -> bool {
        self.next_at.is_some_and(|at| at <= now)
    }

    pub(crate) fn listing_started(&mut self) {
        self.next_at = None;
    }

    /// Returns the delay before the next try.
    pub(crate) fn list_failed(&mut self, now: Time, error: String) -> u64 {
        let retry_ms = self.retry_ms.min(self.interval_ms);
        self.retry_ms = (self.retry_ms * 2).min(self.interval_ms);
        self.report.last_error = Some(error);
        self.next_at = Some(now.plus_ms(retry_ms));
        retry_ms
    }

    pub(crate) fn resolved(&mut self, commit: bool) {
        if commit {
            self.report.commits += 1;
        } else {
            self.report.rollbacks += 1;
        }
    }

    /// Decide on each prepared transaction (the rules are the module's).
    pub(crate) fn plan(
        &mut self,
        now: Time,
        list: &PreparedList,
        participant: &str,
        is_held: &dyn Fn(&str) -> bool,
        outcome_of: &dyn Fn(Xid) -> Option<Decision>,
    ) -> Plan {
        self.next_at = Some(now.plus_ms(self.interval_ms));
        self.retry_ms = LIST_RETRY_MS_MIN;
        let mut plan = Plan::default();
        let mut held = 0;
        let mut waiting = Vec::new();
        let mut unresolvable = Vec::new();
        for row in &list.rows {
            let unresolved = |owner| Unresolved {
                gid: row.gid.clone(),
                age_s: row.age_s,
                owner,
            };
            let Some(gid) = Gid::parse(&row.gid) else {
                unresolvable.push(unresolved(GidOwner::Foreign));
                continue;
            };
            if gid.participant != participant {
                unresolvable.push(unresolved(GidOwner::OtherParticipant(gid.participant)));
                continue;
            }
            if !row.here {
                unresolvable.push(unresolved(GidOwner::Mine));
                continue;
            }
            if is_held(&row.gid) {
                held += 1;
                continue;
            }
            match outcome_of(gid.xid) {
                Some(Decision::Commit) => plan.resolve.push((
                    row.gid.clone(),
                    true,
                    format!("the outcome of {} is COMMIT", gid.xid),
                )),
                Some(Decision::Abort) => plan.resolve.push((
                    row.gid.clone(),
                    false,
                    format!("the outcome of {} is ABORT", gid.xid),
                )),
                None if row.age_s >= gid.hold_s as f64 => plan.resolve.push((
                    row.gid.clone(),
                    false,
                    format!(
                        "presumed abort: no READY record, and its hold of {} s ran out \
                         (prepared {:.1} s ago)",
                        gid.hold_s, row.age_s
                    ),
                )),
                None => waiting.push(unresolved(GidOwner::Mine)),
            }
        }
        let prepared = list.rows.len();
        if list.max_prepared > 0 && prepared as u64 * 100 >= list.max_prepared * NEAR_LIMIT_PERCENT
        {
            plan.notices.push(PgNotice::NearLimit {
                prepared,
                max: list.max_prepared,
            });
        }
        let oldest = |rows: &[Unresolved]| rows.iter().map(|u| u.age_s).fold(0.0, f64::max);
        if !unresolvable.is_empty() {
            plan.notices.push(PgNotice::Unresolvable {
                count: unresolvable.len(),
                oldest_s: oldest(&unresolvable),
            });
        }
        let (waiting_count, unresolvable_count) = (waiting.len(), unresolvable.len());
        let mut unresolved: Vec<Unresolved> = waiting.into_iter().chain(unresolvable).collect();
        unresolved.sort_by(|a, b| b.age_s.total_cmp(&a.age_s));
        let oldest_unresolved_s = oldest(&unresolved);
        unresolved.truncate(REPORT_GIDS_MAX);
        self.report = PreparedReport {
            reconciled_at: Some(now),
            prepared,
            max_prepared: list.max_prepared,
            held,
            waiting: waiting_count,
            unresolvable: unresolvable_count,
            oldest_unresolved_s,
            unresolved,
            last_error: None,
            commits: self.report.commits,
            rollbacks: self.report.rollbacks,
        };
        plan
    }
}

/// Refuse a database without two-phase commit, naming the setting.
pub fn check_max_prepared(max_prepared: u64) -> Result<(), String> {
    if max_prepared == 0 {
        return Err(
            "PostgreSQL has max_prepared_transactions = 0, so PREPARE TRANSACTION is off: set \
             max_prepared_transactions (in postgresql.conf, or ALTER SYSTEM SET \
             max_prepared_transactions = 100) to at least the number of branches that may be \
             prepared at once, and restart PostgreSQL"
                .into(),
        );
    }
    Ok(())
}
