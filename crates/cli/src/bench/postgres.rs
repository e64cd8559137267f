//! `concord bench --resource postgres`: concord with PostgreSQL
//! participants against bare PostgreSQL two-phase commit, in one run, on
//! the same throwaway databases.
//!
//! The two sides do the same work per branch, statement for statement:
//! `BEGIN; SET LOCAL lock_timeout`, one `UPDATE accounts …` per move (a
//! prepared statement, exactly one row expected), `PREPARE TRANSACTION`,
//! all pipelined in one round trip, then `COMMIT PREPARED`. The bare client ([`BarePg`]) runs phase 1 on
//! every database at once, then phase 2 on every database at once, over
//! its own connection per database, and keeps no log of its own: it is
//! what an application doing 2PC by hand gets, without any recovery.
//! concord's side is the same workload through a coordinator and one
//! `concord pg-participant` per database (shipped SQL).
//!
//! Levels alternate (bare, then concord, at each concurrency) so that a
//! noisy machine drifts both alike, and between runs the databases are
//! drained: no prepared transaction may be left before the next starts.
//! At the end money must be conserved and nothing left prepared, checked
//! by SQL, or the benchmark fails.

use super::cluster::{Cluster, PgParticipants};
use super::report::{BenchReport, Machine, PgComparison, RunResult};
use super::{sweep, BenchOptions, Branches, Via, BALANCE};
use crate::pgbank::{connect, describe, PgBank, UPDATE_SQL};
use anyhow::{bail, Context};
use concord_api::Outcome;
use concord_participant::kv::KvOp;
use concord_pgcluster::ClusterOptions;
use futures::future::join_all;
use std::path::Path;
use std::time::Duration;
use tokio_postgres::{Client, Statement};

/// What both sides set at the start of each branch (concord's participant
/// sets its `--lock-timeout`, whose default this is).
const BEGIN_SQL: &str = "BEGIN; SET LOCAL lock_timeout = 10000";
/// Longest wait for the databases to hold no prepared transaction after a
/// run (concord's phase 2 goes on after the client has its outcome).
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// A load-generator task's error on the bare side.
#[derive(Debug)]
pub struct BareError {
    pub class: String,
    /// The task cannot go on (a connection is gone).
    pub fatal: bool,
}

/// One task of the bare baseline: a connection to every database.
pub struct BarePg {
    dbs: Vec<BareConn>,
    task: usize,
    next: u64,
}

struct BareConn {
    client: Client,
    update: Statement,
}

impl BarePg {
    pub async fn connect(dsns: &[String], task: usize) -> anyhow::Result<BarePg> {
        let mut dbs = Vec::new();
        for dsn in dsns {
            let client = connect(dsn).await?;
            let update = client
                .prepare(UPDATE_SQL)
                .await
                .with_context(|| format!("prepare the benchmark UPDATE on {dsn}"))?;
            dbs.push(BareConn { client, update });
        }
        Ok(BarePg { dbs, task, next: 0 })
    }

    /// One global transaction: `plan` is (database index, moves) per
    /// branch. Committed only once every COMMIT PREPARED has returned.
    pub async fn transact(&mut self, plan: &[(usize, Vec<KvOp>)]) -> Result<Outcome, BareError> {
        self.next += 1;
        let gids: Vec<String> = (0..plan.len())
            .map(|b| format!("bare-{}-{}-{b}", self.task, self.next))
            .collect();
        let mut branches = Vec::new();
        for ((i, ops), gid) in plan.iter().zip(&gids) {
            let db = self.dbs.get(*i).ok_or_else(|| BareError {
                class: format!("no database for participant {i}"),
                fatal: true,
            })?;
            branches.push((db, ops, gid));
        }
        let votes = join_all(branches.iter().map(|(db, ops, gid)| db.prepare(ops, gid))).await;
        let refusal = votes.iter().find_map(|v| v.as_ref().err()).cloned();
        let verb = match refusal {
            None => "COMMIT",
            Some(_) => "ROLLBACK",
        };
        let phase2 = branches
            .iter()
            .zip(&votes)
            .filter(|(_, vote)| vote.is_ok())
            .map(|((db, _, gid), _)| {
                let sql = format!("{verb} PREPARED '{gid}'");
                async move { db.client.batch_execute(&sql).await }
            });
        for result in join_all(phase2).await {
            if let Err(e) = result {
                return Err(BareError {
                    class: format!("{verb} PREPARED failed: {}", describe(&e)),
                    fatal: true,
                });
            }
        }
        if self.dbs.iter().any(|db| db.client.is_closed()) {
            return Err(BareError {
                class: "connection to PostgreSQL lost".into(),
                fatal: true,
            });
        }
        Ok(match refusal {
            None => Outcome::Committed,
            Some(reason) => Outcome::Aborted { reason },
        })
    }
}

impl BareConn {
    /// Phase 1 of one branch; on failure its transaction is rolled back.
    async fn prepare(&self, ops: &[KvOp], gid: &str) -> Result<(), String> {
        let result = self.run_and_prepare(ops, gid).await;
        if result.is_err() {
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        result
    }

    /// BEGIN, the UPDATEs and PREPARE TRANSACTION pipelined in one round
    /// trip, as concord's participant runs shipped SQL.
    async fn run_and_prepare(&self, ops: &[KvOp], gid: &str) -> Result<(), String> {
        let failed = |what: &str, e: tokio_postgres::Error| format!("{what}: {}", describe(&e));
        let prepare_sql = format!("PREPARE TRANSACTION '{gid}'");
        let updates = ops.iter().map(|op| async move {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&op.delta, &op.account];
            self.client.execute(&self.update, &params).await
        });
        let (begun, ran, prepared) = tokio::join!(
            self.client.batch_execute(BEGIN_SQL),
            join_all(updates),
            self.client.batch_execute(&prepare_sql)
        );
        // As in concord's participant: with the gid prepared, any failure
        // before it rolls the gid back at once.
        let failure = begun.map_err(|e| failed("BEGIN", e)).and_then(|()| {
            for rows in ran {
                match rows.map_err(|e| failed("UPDATE", e))? {
                    1 => {}
                    rows => return Err(format!("UPDATE touched {rows} rows, expected 1")),
                }
            }
            Ok(())
        });
        let prepared = prepared.map_err(|e| failed("PREPARE TRANSACTION", e));
        match (failure, prepared) {
            (Ok(()), prepared) => prepared,
            (Err(failure), Err(_)) => Err(failure),
            (Err(failure), Ok(())) => {
                let _ = self
                    .client
                    .batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
                    .await;
                Err(failure)
            }
        }
    }
}

/// The whole `--resource postgres` run.
pub(super) async fn measure(options: &BenchOptions, root: &Path) -> anyhow::Result<BenchReport> {
    let max = options.concurrency.iter().copied().max().unwrap_or(1);
    let accounts = options.accounts();
    std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
    // Both sides' connections (concord's two lanes, the bare tasks') and
    // prepared transactions in flight, with room to spare: concord's phase
    // 2 trails the outcomes, so prepared ones pile up.
    let cluster_options = ClusterOptions {
        max_prepared_transactions: (4 * max + 64) as u32,
        max_connections: (2 * max + 60).max(100) as u32,
        extra_config: Vec::new(),
    };
    let dbs = PgBank::start(options.participants, &cluster_options, accounts, BALANCE).await?;
    let result = compare(options, root, &dbs, max).await;
    dbs.save_logs(root);
    let (concord, bare) = result?;
    // The checks: by SQL, on the databases themselves.
    let prepared_left = dbs.prepared().await?;
    let total: i64 = dbs.totals().await?.iter().sum();
    let expected = BALANCE * (accounts * dbs.len()) as i64;
    if prepared_left != 0 || total != expected {
        bail!(
            "after the runs: {prepared_left} prepared transactions left, total balance {total} \
             (expected {expected})"
        );
    }
    let pg_durable = dbs.durable().await?;
    let version = dbs.version().await;
    dbs.stop().await;
    let mark = |mut runs: Vec<RunResult>, servers_durable: bool| -> Vec<RunResult> {
        for r in &mut runs {
            r.durable = pg_durable && (servers_durable || r.durable);
        }
        runs
    };
    // The bare side has no servers of its own to ask: PostgreSQL's
    // settings are its durability. concord's runs need both.
    let bare = mark(bare, true);
    let concord = mark(concord, false);
    let comparison = PgComparison::new(bare, &concord, version);
    Ok(BenchReport {
        machine: Machine::probe(),
        settings: options.settings(root),
        durability: if concord.iter().all(|r| r.durable) {
            "PostgreSQL with fsync = on and synchronous_commit = on (asked from the servers): \
             every PREPARE TRANSACTION and COMMIT PREPARED durable on both sides; concord's \
             coordinator COMMIT records and participant READY records fsynced too, with group \
             commit; reported by the servers themselves"
                .into()
        } else {
            "NOT durable: a server or a database runs without fsync".into()
        },
        runs: concord,
        fsync_baseline: None,
        no_fsync_baseline: None,
        relay_baseline: None,
        optimizations: Vec::new(),
        http_api: None,
        pg_store: None,
        pg_store_instances: None,
        postgres: Some(comparison),
    })
}

/// Each level bare, then through concord; the databases drained between.
async fn compare(
    options: &BenchOptions,
    root: &Path,
    dbs: &PgBank,
    max: usize,
) -> anyhow::Result<(Vec<RunResult>, Vec<RunResult>)> {
    let mut spec = options.cluster_spec(true, root.join("durable"));
    spec.postgres = Some(PgParticipants {
        dsns: dbs.dsns.clone(),
        // Never fewer connections than the bare side has per database.
        connections: max.max(16),
    });
    let cluster = Cluster::start(&spec).await?;
    let everything = Branches {
        total: options.branches(),
        read_only: 0,
        shape: options.shape,
    };
    let n = dbs.dsns.len();
    let sides = [
        (
            Via::BarePostgres,
            format!("bare PostgreSQL 2PC ({n} databases, no coordinator)"),
        ),
        (Via::Binary, format!("concord, {n} PostgreSQL participants")),
    ];
    let mut runs: [Vec<RunResult>; 2] = Default::default();
    let result = async {
        for &level in &options.concurrency {
            for ((via, label), runs) in sides.iter().zip(runs.iter_mut()) {
                runs.extend(sweep(options, &cluster, &[level], everything, label, *via).await?);
                dbs.drain(DRAIN_LIMIT).await?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    cluster.stop().await;
    let [bare, concord] = runs;
    result.map(|()| (concord, bare))
}
