//! The PostgreSQL resource: phase 1 and 2 of a branch as commands for a
//! driver to run against the database, and the answers turned back into
//! the branch's results. Sans-IO: it never touches a connection. The
//! driver takes [`PgResource::take_commands`], runs each, and hands the
//! [`PgReply`] to [`PgResource::finish`]; what a reply means (a missing
//! gid votes ABORT, "does not exist" on COMMIT PREPARED is a commit that
//! already happened) is decided here.
//!
//! One rule makes reconciliation safe: a gid is worked on by one command
//! at a time (`busy`), and a gid this participant holds (prepared for a
//! branch that may have voted READY) is never rolled back by
//! reconciliation. A PREPARE for a gid that reconciliation is rolling
//! back votes ABORT.

use crate::kv::KvStore;
use crate::pg::reconcile::{PreparedList, PreparedReport, Reconciler};
use crate::pg::work::{BranchGids, PgStatement, PgWork};
use crate::resource::{Accounts, Answer, Resource, ResourceOp};
use concord_proto::{Decision, NodeId, Time, Xid};
use std::collections::{HashMap, HashSet};

/// One thing to do in the database.
#[derive(Clone, Debug, PartialEq)]
pub struct PgCommand {
    pub id: u64,
    pub kind: PgCommandKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PgCommandKind {
    /// Phase 1. Check that every gid of `check` is prepared in this
    /// database; then, if `shipped` is set, run its statements in one
    /// transaction and `PREPARE TRANSACTION` it under its gid. Stop at the
    /// first failure, and leave nothing prepared under the shipped gid
    /// when reporting one (a connection lost mid-way may leave it
    /// prepared: reconciliation rolls it back).
    Prepare {
        check: Vec<String>,
        shipped: Option<(String, Vec<PgStatement>)>,
    },
    /// `COMMIT PREPARED` (or `ROLLBACK PREPARED`) each gid, with each
    /// one's own result.
    Resolve { gids: Vec<String>, commit: bool },
    /// Read `pg_prepared_xacts` and `max_prepared_transactions`.
    List,
}

/// What the database said.
#[derive(Clone, Debug, PartialEq)]
pub enum PgReply {
    Prepare(PrepareReply),
    Resolve(Vec<(String, Resolution)>),
    List(Result<PreparedList, String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrepareReply {
    Prepared,
    /// These gids of `check` are not prepared here.
    Missing(Vec<String>),
    /// A statement failed, touched other rows than expected, or the
    /// database could not be reached.
    Failed(String),
}

/// The result of `COMMIT PREPARED` / `ROLLBACK PREPARED` on one gid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Done,
    /// "prepared transaction … does not exist" (SQLSTATE 42704).
    Gone,
    Failed(String),
}

/// What the driver logs.
#[derive(Clone, Debug, PartialEq)]
pub enum PgNotice {
    /// Phase 2 found a gid gone: resolved before a crash, by an earlier
    /// attempt (only this participant resolves its gids).
    AlreadyResolved {
        gid: String,
        commit: bool,
    },
    /// Reconciliation resolved a gid.
    Reconciled {
        gid: String,
        commit: bool,
        why: String,
    },
    ReconcileFailed {
        gid: String,
        error: String,
    },
    /// `pg_prepared_xacts` could not be read; nothing is decided until it
    /// can.
    ListFailed {
        error: String,
        retry_in_ms: u64,
    },
    /// At or above 80 % of `max_prepared_transactions`.
    NearLimit {
        prepared: usize,
        max: u64,
    },
    /// Prepared transactions this participant does not resolve.
    Unresolvable {
        count: usize,
        oldest_s: f64,
    },
}

/// What one running command is for.
#[derive(Debug)]
enum Running {
    Prepare {
        xid: Xid,
        gids: BranchGids,
    },
    Phase2 {
        xid: Xid,
        op: ResourceOp,
    },
    Reconcile {
        gid: String,
        commit: bool,
        why: String,
    },
    List,
}

pub struct PgResource {
    participant: String,
    /// The coordinator of each branch about to be prepared or restored.
    coordinators: HashMap<Xid, NodeId>,
    /// Branches prepared (READY or about to be) or restored after a
    /// restart: what phase 2 resolves.
    held: HashMap<Xid, BranchGids>,
    /// Gids a command is working on.
    busy: HashSet<String>,
    running: HashMap<u64, Running>,
    commands: Vec<PgCommand>,
    next_id: u64,
    notices: Vec<PgNotice>,
    reconciler: Reconciler,
}

impl PgResource {
    /// The resource of participant `participant` (its `--name`, which its
    /// gids carry), reconciling every `reconcile_ms`.
    pub fn new(participant: impl Into<String>, reconcile_ms: u64) -> PgResource {
        PgResource {
            participant: participant.into(),
            coordinators: HashMap::new(),
            held: HashMap::new(),
            busy: HashSet::new(),
            running: HashMap::new(),
            commands: Vec::new(),
            next_id: 1,
            notices: Vec::new(),
            reconciler: Reconciler::new(reconcile_ms),
        }
    }

    /// Commands started since the last call, oldest first.
    pub fn take_commands(&mut self) -> Vec<PgCommand> {
        std::mem::take(&mut self.commands)
    }

    pub fn take_notices(&mut self) -> Vec<PgNotice> {
        std::mem::take(&mut self.notices)
    }

    pub fn reconciler(&self) -> &Reconciler {
        &self.reconciler
    }

    /// Branches whose gids phase 2 will resolve.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Start a reconciliation if one is due.
    pub fn tick(&mut self, now: Time) {
        if self.reconciler.due(now) {
            self.reconciler.listing_started();
            self.start(Running::List, PgCommandKind::List);
        }
    }

    /// When [`PgResource::tick`] wants to run next.
    pub fn next_tick(&self) -> Option<Time> {
        self.reconciler.next_at()
    }

    /// The database answered command `id`. A branch's result comes back
    /// for `ParticipantNode::on_resource_done`; a reconciliation's does
    /// not. `outcome_of` is what the protocol knows of an xid this
    /// participant no longer holds (its finished outcome).
    pub fn finish(
        &mut self,
        now: Time,
        id: u64,
        reply: PgReply,
        outcome_of: &dyn Fn(Xid) -> Option<Decision>,
    ) -> Option<(Xid, ResourceOp, Result<(), String>)> {
        let running = self.running.remove(&id)?;
        match (running, reply) {
            (Running::Prepare { xid, gids }, PgReply::Prepare(reply)) => {
                for gid in gids.all() {
                    self.busy.remove(&gid);
                }
                let result = match reply {
                    PrepareReply::Prepared => {
                        self.held.insert(xid, gids);
                        Ok(())
                    }
                    PrepareReply::Missing(missing) => Err(format!(
                        "not prepared in this database: {} (the application must PREPARE \
                         TRANSACTION each gid before it registers the branch)",
                        missing.join(", ")
                    )),
                    PrepareReply::Failed(error) => Err(error),
                };
                Some((xid, ResourceOp::Prepare, result))
            }
            (Running::Phase2 { xid, op }, PgReply::Resolve(results)) => {
                let commit = op == ResourceOp::Commit;
                let mut failure = None;
                for (gid, result) in results {
                    self.busy.remove(&gid);
                    match result {
                        Resolution::Done => {}
                        Resolution::Gone => {
                            self.notices.push(PgNotice::AlreadyResolved { gid, commit })
                        }
                        Resolution::Failed(error) => {
                            failure.get_or_insert(format!("{gid}: {error}"));
                        }
                    }
                }
                let result = match failure {
                    // Kept: the core asks again, and the retry resolves
                    // every gid again (a done one is then gone).
                    Some(error) => Err(error),
                    None => {
                        self.held.remove(&xid);
                        Ok(())
                    }
                };
                Some((xid, op, result))
            }
            (Running::Reconcile { gid, commit, why }, PgReply::Resolve(results)) => {
                self.busy.remove(&gid);
                for (gid, result) in results {
                    match result {
                        Resolution::Done => {
                            self.reconciler.resolved(commit);
                            self.notices.push(PgNotice::Reconciled {
                                gid,
                                commit,
                                why: why.clone(),
                            })
                        }
                        Resolution::Gone => {}
                        Resolution::Failed(error) => {
                            self.notices.push(PgNotice::ReconcileFailed { gid, error })
                        }
                    }
                }
                None
            }
            (Running::List, PgReply::List(listed)) => {
                self.listed(now, listed, outcome_of);
                None
            }
            (running, reply) => {
                // A driver bug: say so, and free what the command held.
                self.notices.push(PgNotice::ReconcileFailed {
                    gid: String::new(),
                    error: format!("reply {reply:?} does not answer {running:?}"),
                });
                None
            }
        }
    }

    fn start(&mut self, running: Running, kind: PgCommandKind) {
        let id = self.next_id;
        self.next_id += 1;
        self.running.insert(id, running);
        self.commands.push(PgCommand { id, kind });
    }

    /// The gids of branch `xid`'s work, checked.
    fn branch_gids(&mut self, xid: Xid, work: &[u8]) -> Result<(PgWork, BranchGids), String> {
        let coordinator = self
            .coordinators
            .remove(&xid)
            .ok_or_else(|| format!("no coordinator is known for branch {xid}"))?;
        let work = PgWork::decode(work)?;
        let gids = work.branch_gids(&self.participant, &coordinator, xid)?;
        Ok((work, gids))
    }

    /// Phase 2 of a held branch.
    fn phase2(&mut self, xid: Xid, op: ResourceOp) -> Answer {
        let Some(gids) = self.held.get(&xid) else {
            // Nothing prepared (read-only, or already resolved).
            return Answer::Now(Ok(()));
        };
        let gids = gids.all();
        if let Some(gid) = gids.iter().find(|g| self.busy.contains(*g)) {
            return Answer::Now(Err(format!("{gid} is being resolved; trying again")));
        }
        self.busy.extend(gids.iter().cloned());
        let commit = op == ResourceOp::Commit;
        self.start(
            Running::Phase2 { xid, op },
            PgCommandKind::Resolve { gids, commit },
        );
        Answer::Later
    }

    /// Act on a fresh `pg_prepared_xacts`: see [`Reconciler::plan`].
    fn listed(
        &mut self,
        now: Time,
        listed: Result<PreparedList, String>,
        outcome_of: &dyn Fn(Xid) -> Option<Decision>,
    ) {
        let list = match listed {
            Ok(list) => list,
            Err(error) => {
                let retry_in_ms = self.reconciler.list_failed(now, error.clone());
                self.notices
                    .push(PgNotice::ListFailed { error, retry_in_ms });
                return;
            }
        };
        let held: HashSet<String> = self.held.values().flat_map(|g| g.all()).collect();
        let plan = self.reconciler.plan(
            now,
            &list,
            &self.participant,
            &|gid: &str| held.contains(gid) || self.busy.contains(gid),
            outcome_of,
        );
        self.notices.extend(plan.notices);
        for (gid, commit, why) in plan.resolve {
            self.busy.insert(gid.clone());
            self.start(
                Running::Reconcile {
                    gid: gid.clone(),
                    commit,
                    why,
                },
                PgCommandKind::Resolve {
                    gids: vec![gid],
                    commit,
                },
            );
        }
    }
}

impl Resource for PgResource {
    fn note_coordinator(&mut self, xid: Xid, coordinator: &NodeId) {
        self.coordinators.insert(xid, coordinator.clone());
    }

    fn prepare(&mut self, xid: Xid, work: &[u8]) -> Answer {
        let (work, gids) = match self.branch_gids(xid, work) {
            Ok(found) => found,
            Err(e) => return Answer::Now(Err(e)),
        };
        if let Some(gid) = gids.all().iter().find(|g| self.busy.contains(*g)) {
            return Answer::Now(Err(format!(
                "{gid} is being resolved (reconciliation rolls back orphans): vote ABORT"
            )));
        }
        self.busy.extend(gids.all());
        let check = gids.application.clone();
        let shipped = gids.shipped.clone().map(|gid| (gid, work.statements));
        self.start(
            Running::Prepare { xid, gids },
            PgCommandKind::Prepare { check, shipped },
        );
        Answer::Later
    }

    fn commit(&mut self, xid: Xid) -> Answer {
        self.phase2(xid, ResourceOp::Commit)
    }

    fn abort(&mut self, xid: Xid) -> Answer {
        self.phase2(xid, ResourceOp::Abort)
    }

    fn is_read_only(&self, work: &[u8]) -> bool {
        PgWork::decode(work).is_ok_and(|w| w.gids.is_empty() && w.statements.is_empty())
    }

    fn restore(&mut self, xid: Xid, work: &[u8]) {
        match self.branch_gids(xid, work) {
            Ok((_, gids)) => {
                self.held.insert(xid, gids);
            }
            // It was checked when it was prepared: only a changed
            // participant name makes it fail now.
            Err(error) => self.notices.push(PgNotice::ReconcileFailed {
                gid: String::new(),
                error: format!("in-doubt branch {xid} cannot be restored: {error}"),
            }),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        // The data is in the database; in-doubt branches come back from
        // their READY records.
        Vec::new()
    }
}

impl Accounts for PgResource {
    fn accounts(&self) -> Option<&KvStore> {
        None
    }

    fn prepared(&self) -> Option<&PreparedReport> {
        Some(self.reconciler.report())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::gid::Gid;
    use crate::pg::reconcile::{GidOwner, PreparedRow};

    const ME: &str = "pg1";

    fn coordinator() -> NodeId {
        "coord".into()
    }

    fn app_gid(xid: Xid, hold_s: u64) -> String {
        Gid::new("coord", ME, xid, "app", hold_s)
            .unwrap()
            .to_string()
    }

    fn no_outcome(_: Xid) -> Option<Decision> {
        None
    }

    fn resource() -> PgResource {
        let mut r = PgResource::new(ME, 30_000);
        // Start-up's first listing: nothing prepared yet.
        r.tick(Time(0));
        let [list] = r.take_commands().try_into().unwrap();
        assert_eq!(list.kind, PgCommandKind::List);
        r.finish(
            Time(0),
            list.id,
            PgReply::List(Ok(PreparedList::default())),
            &no_outcome,
        );
        r
    }

    fn prepare(r: &mut PgResource, xid: Xid, work: &PgWork) -> PgCommand {
        r.note_coordinator(xid, &coordinator());
        assert_eq!(r.prepare(xid, &work.encode()), Answer::Later);
        let [command] = r.take_commands().try_into().unwrap();
        command
    }

    fn list(r: &mut PgResource, now: Time, rows: Vec<PreparedRow>) -> Vec<PgCommand> {
        r.tick(now);
        let [command] = r.take_commands().try_into().unwrap();
        assert_eq!(command.kind, PgCommandKind::List);
        let list = PreparedList {
            rows,
            max_prepared: 10,
        };
        assert_eq!(
            r.finish(now, command.id, PgReply::List(Ok(list)), &no_outcome),
            None
        );
        r.take_commands()
    }

    fn row(gid: &str, age_s: f64) -> PreparedRow {
        PreparedRow {
            gid: gid.into(),
            age_s,
            here: true,
        }
    }

    #[test]
    fn an_application_branch_is_checked_then_committed_and_a_gone_gid_is_a_done_commit() {
        let mut r = resource();
        let xid = Xid(1);
        let gid = app_gid(xid, 30);
        let work = PgWork {
            gids: vec![gid.clone()],
            statements: vec![],
        };
        let command = prepare(&mut r, xid, &work);
        assert_eq!(
            command.kind,
            PgCommandKind::Prepare {
                check: vec![gid.clone()],
                shipped: None
            }
        );
        let done = r.finish(
            Time(1),
            command.id,
            PgReply::Prepare(PrepareReply::Prepared),
            &no_outcome,
        );
        assert_eq!(done, Some((xid, ResourceOp::Prepare, Ok(()))));
        assert_eq!(r.commit(xid), Answer::Later);
        let [command] = r.take_commands().try_into().unwrap();
        assert_eq!(
            command.kind,
            PgCommandKind::Resolve {
                gids: vec![gid.clone()],
                commit: true
            }
        );
        // Crash between COMMIT PREPARED and the outcome record: the retry
        // finds it gone, which is the commit that already happened.
        let reply = PgReply::Resolve(vec![(gid.clone(), Resolution::Gone)]);
        let done = r.finish(Time(2), command.id, reply, &no_outcome);
        assert_eq!(done, Some((xid, ResourceOp::Commit, Ok(()))));
        assert_eq!(
            r.take_notices(),
            vec![PgNotice::AlreadyResolved { gid, commit: true }]
        );
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn a_missing_gid_votes_abort_and_a_failed_commit_keeps_the_branch() {
        let mut r = resource();
        let xid = Xid(2);
        let gid = app_gid(xid, 30);
        let work = PgWork {
            gids: vec![gid.clone()],
            statements: vec![],
        };
        let command = prepare(&mut r, xid, &work);
        let reply = PgReply::Prepare(PrepareReply::Missing(vec![gid.clone()]));
        let Some((_, ResourceOp::Prepare, Err(why))) =
            r.finish(Time(1), command.id, reply, &no_outcome)
        else {
            panic!("a missing gid must vote ABORT");
        };
        assert!(why.contains(&gid), "{why}");
        assert_eq!(r.held(), 0);

        let xid = Xid(3);
        let work = PgWork {
            gids: vec![],
            statements: vec![PgStatement::new("update t set v = 1", vec![])],
        };
        let command = prepare(&mut r, xid, &work);
        let shipped = Gid::shipped("coord", ME, xid).unwrap().to_string();
        assert!(
            matches!(&command.kind, PgCommandKind::Prepare { shipped: Some((g, _)), .. } if *g == shipped)
        );
        r.finish(
            Time(1),
            command.id,
            PgReply::Prepare(PrepareReply::Prepared),
            &no_outcome,
        );
        assert_eq!(r.commit(xid), Answer::Later);
        let [command] = r.take_commands().try_into().unwrap();
        let reply = PgReply::Resolve(vec![(
            shipped.clone(),
            Resolution::Failed("connection closed".into()),
        )]);
        let Some((_, ResourceOp::Commit, Err(_))) =
            r.finish(Time(2), command.id, reply, &no_outcome)
        else {
            panic!("a failed COMMIT PREPARED is a transient failure");
        };
        assert_eq!(r.held(), 1, "the branch keeps its gid for the retry");
    }

    #[test]
    fn a_restored_branch_resolves_its_shipped_and_application_gids() {
        let mut r = resource();
        let xid = Xid(4);
        let gid = app_gid(xid, 30);
        let work = PgWork {
            gids: vec![gid.clone()],
            statements: vec![PgStatement::new("update t set v = 1", vec![])],
        };
        r.note_coordinator(xid, &coordinator());
        r.restore(xid, &work.encode());
        assert_eq!(r.abort(xid), Answer::Later);
        let [command] = r.take_commands().try_into().unwrap();
        let shipped = Gid::shipped("coord", ME, xid).unwrap().to_string();
        assert_eq!(
            command.kind,
            PgCommandKind::Resolve {
                gids: vec![shipped, gid],
                commit: false
            }
        );
    }

    /// Reconciliation: what is held is left alone, an own orphan past its
    /// hold is rolled back, one within it waits, others are reported.
    #[test]
    fn reconciliation_rolls_back_only_own_orphans_past_their_hold() {
        let mut r = resource();
        let held_xid = Xid(5);
        let held = app_gid(held_xid, 0);
        let work = PgWork {
            gids: vec![held.clone()],
            statements: vec![],
        };
        let command = prepare(&mut r, held_xid, &work);
        r.finish(
            Time(1),
            command.id,
            PgReply::Prepare(PrepareReply::Prepared),
            &no_outcome,
        );
        let orphan = app_gid(Xid(6), 10);
        let young = app_gid(Xid(7), 10);
        let other = Gid::new("coord", "pg2", Xid(8), "app", 0)
            .unwrap()
            .to_string();
        let elsewhere = app_gid(Xid(9), 0);
        let rows = vec![
            row(&held, 100.0),
            row(&orphan, 10.5),
            row(&young, 9.0),
            row(&other, 50.0),
            row("pgbench-orphan", 60.0),
            PreparedRow {
                here: false,
                ..row(&elsewhere, 5.0)
            },
        ];
        let commands = list(&mut r, Time(0).plus_ms(31_000), rows);
        let [rollback] = commands.try_into().unwrap();
        assert_eq!(
            rollback.kind,
            PgCommandKind::Resolve {
                gids: vec![orphan.clone()],
                commit: false
            }
        );
        let report = r.reconciler().report().clone();
        assert_eq!(
            (report.held, report.waiting, report.unresolvable),
            (1, 1, 3)
        );
        assert_eq!(report.oldest_unresolved_s, 60.0);
        assert_eq!(report.unresolved[0].owner, GidOwner::Foreign);
        assert!(r
            .take_notices()
            .iter()
            .any(|n| matches!(n, PgNotice::Unresolvable { count: 3, .. })));

        // A PREPARE naming the gid being rolled back votes ABORT.
        r.note_coordinator(Xid(6), &coordinator());
        let work = PgWork {
            gids: vec![orphan.clone()],
            statements: vec![],
        };
        let Answer::Now(Err(why)) = r.prepare(Xid(6), &work.encode()) else {
            panic!("must vote ABORT");
        };
        assert!(why.contains("being resolved"), "{why}");
        let reply = PgReply::Resolve(vec![(orphan.clone(), Resolution::Done)]);
        assert_eq!(
            r.finish(Time(0).plus_ms(31_001), rollback.id, reply, &no_outcome),
            None
        );
        assert_eq!(r.reconciler().report().rollbacks, 1);
    }

    #[test]
    fn a_known_outcome_is_applied_and_a_failed_listing_decides_nothing() {
        let mut r = resource();
        let committed = app_gid(Xid(10), 1000);
        r.tick(Time(0).plus_ms(30_000));
        let [command] = r.take_commands().try_into().unwrap();
        let reply = PgReply::List(Err("connection refused".into()));
        r.finish(Time(0).plus_ms(30_000), command.id, reply, &no_outcome);
        assert!(r.take_commands().is_empty());
        assert!(matches!(
            r.take_notices()[..],
            [PgNotice::ListFailed {
                retry_in_ms: 500,
                ..
            }]
        ));
        assert_eq!(r.next_tick(), Some(Time(0).plus_ms(30_500)));
        r.tick(Time(0).plus_ms(30_500));
        let [command] = r.take_commands().try_into().unwrap();
        let list = PreparedList {
            rows: vec![row(&committed, 1.0)],
            max_prepared: 1,
        };
        let outcome = |xid: Xid| (xid == Xid(10)).then_some(Decision::Commit);
        r.finish(
            Time(0).plus_ms(30_500),
            command.id,
            PgReply::List(Ok(list)),
            &outcome,
        );
        let [commit] = r.take_commands().try_into().unwrap();
        assert_eq!(
            commit.kind,
            PgCommandKind::Resolve {
                gids: vec![committed],
                commit: true
            }
        );
        assert!(r.take_notices().contains(&PgNotice::NearLimit {
            prepared: 1,
            max: 1
        }));
    }
}
