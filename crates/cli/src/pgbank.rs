//! A bank spread over throwaway PostgreSQL clusters, one database per
//! participant: what `concord bench --resource postgres` and `concord demo
//! --postgres` run on. Each database has `accounts(id, balance)` with
//! `acct-0` … `acct-{n-1}` and a `CHECK (balance >= 0)`, so an overdraft
//! fails its statement and the branch votes ABORT.
//!
//! The checks read the databases directly, by SQL: prepared transactions
//! left in `pg_prepared_xacts`, the total balance, and whether a commit
//! is durable by PostgreSQL's own settings.

use anyhow::{bail, Context};
use concord_participant::kv::KvOp;
use concord_participant::pg::{PgStatement, PgWork};
use concord_pgcluster::{Cluster as PgCluster, ClusterOptions};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// The one statement of every move, on both sides.
pub const UPDATE_SQL: &str = "UPDATE accounts SET balance = balance + $1 WHERE id = $2";
/// A branch's moves as concord shipped SQL: one UPDATE each, exactly one
/// row expected (else the branch votes ABORT).
pub fn shipped_work(ops: &[KvOp]) -> Vec<u8> {
    PgWork {
        gids: Vec::new(),
        statements: ops
            .iter()
            .map(|op| {
                PgStatement::new(
                    UPDATE_SQL,
                    vec![
                        serde_json::Value::from(op.delta),
                        serde_json::Value::from(op.account.clone()),
                    ],
                )
                .expect_rows(1)
            })
            .collect(),
    }
    .encode()
}

/// The clusters, their DSNs (participant `i` serves `dsns[i]`), and one
/// connection to each for setup and the checks.
pub struct PgBank {
    // Dropped before the clusters: see `stop`.
    admin: Vec<Client>,
    clusters: Vec<PgCluster>,
    pub dsns: Vec<String>,
}

impl PgBank {
    /// Start `count` clusters and seed `accounts` accounts of `balance` in
    /// each. Fails with the install command when the PostgreSQL server
    /// binaries are not on this machine.
    pub async fn start(
        count: usize,
        options: &ClusterOptions,
        accounts: usize,
        balance: i64,
    ) -> anyhow::Result<PgBank> {
        let mut clusters = Vec::new();
        for i in 0..count {
            eprintln!("postgres: starting throwaway cluster {} of {count}", i + 1);
            let cluster = PgCluster::start(options).map_err(|e| anyhow::anyhow!("{e}"))?;
            clusters.push(cluster);
        }
        let dsns: Vec<String> = clusters.iter().map(|c| c.dsn()).collect();
        let mut admin = Vec::new();
        for dsn in &dsns {
            let client = connect(dsn).await?;
            client
                .batch_execute(&format!(
                    "CREATE TABLE accounts (id text PRIMARY KEY, \
                       balance bigint NOT NULL CHECK (balance >= 0)); \
                     INSERT INTO accounts SELECT 'acct-' || g, {balance} \
                       FROM generate_series(0, {}) AS g",
                    accounts.saturating_sub(1)
                ))
                .await
                .with_context(|| format!("create the accounts table on {dsn}"))?;
            client
                .batch_execute("VACUUM ANALYZE accounts")
                .await
                .with_context(|| format!("vacuum the accounts table on {dsn}"))?;
            admin.push(client);
        }
        Ok(PgBank {
            admin,
            clusters,
            dsns,
        })
    }

    /// PostgreSQL's own answer to "is a commit durable when it returns".
    pub async fn durable(&self) -> anyhow::Result<bool> {
        let mut all = true;
        for client in &self.admin {
            for setting in ["fsync", "synchronous_commit"] {
                let row = client.query_one(&format!("SHOW {setting}"), &[]).await?;
                all &= row.try_get::<_, String>(0)? == "on";
            }
        }
        Ok(all)
    }

    pub async fn version(&self) -> String {
        match self.admin.first() {
            Some(client) => match client.query_one("SHOW server_version", &[]).await {
                Ok(row) => row.try_get::<_, String>(0).unwrap_or_default(),
                Err(e) => format!("unknown ({})", describe(&e)),
            },
            None => "unknown".into(),
        }
    }

    /// Rows in `pg_prepared_xacts`, over every database.
    pub async fn prepared(&self) -> anyhow::Result<i64> {
        let mut total = 0;
        for client in &self.admin {
            let row = client
                .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
                .await?;
            total += row.try_get::<_, i64>(0)?;
        }
        Ok(total)
    }

    /// Wait until no database holds a prepared transaction.
    pub async fn drain(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let left = self.prepared().await?;
            if left == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{left} prepared transactions still in pg_prepared_xacts after {} s",
                    limit.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Each database's total balance, by SQL.
    pub async fn totals(&self) -> anyhow::Result<Vec<i64>> {
        let mut totals = Vec::new();
        for client in &self.admin {
            let row = client
                .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
                .await?;
            totals.push(row.try_get::<_, i64>(0)?);
        }
        Ok(totals)
    }

    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    /// Keep each cluster's server log in `root` (`postgres-{i}.log`).
    pub fn save_logs(&self, root: &Path) {
        for (i, cluster) in self.clusters.iter().enumerate() {
            let _ = std::fs::write(root.join(format!("postgres-{i}.log")), cluster.server_log());
        }
    }

    /// Close the connections, then stop the clusters (closed first, they
    /// are not told "terminating connection due to immediate shutdown").
    pub async fn stop(self) {
        drop(self.admin);
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(self.clusters);
    }
}

pub use concord_server::pg_participant::describe;

/// A connection, its driving task spawned.
pub async fn connect(dsn: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls)
        .await
        .with_context(|| format!("connect to {dsn}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}
