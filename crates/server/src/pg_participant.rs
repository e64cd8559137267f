//! `concord pg-participant`: a participant for one PostgreSQL database.
//! The protocol is the participant node's, as for `concord participant`;
//! the resource is [`PgResource`] (crate `concord-participant`), which
//! decides everything. This file only runs its commands on a pool of
//! tokio-postgres connections and hands the answers back, and checks the
//! database at start-up.
//!
//! Start-up: connect (retried with backoff while PostgreSQL is down, each
//! failure logged), refuse `max_prepared_transactions = 0` naming the
//! setting, then the participant's usual start (log, recovery, listener).
//! The first reconciliation runs once recovery has restored the in-doubt
//! branches, so their gids are held before anything is rolled back.

use crate::conn::Inbound;
use crate::driver::Clock;
use crate::participant::{serve_participant, ParticipantServerConfig, ResourceIo};
use anyhow::Context;
use bytes::BytesMut;
use concord_node::ParticipantServerNode;
use concord_participant::pg::reconcile::check_max_prepared;
use concord_participant::pg::{
    PgCommand, PgCommandKind, PgNotice, PgReply, PgResource, PgStatement, PrepareReply,
    PreparedList, PreparedReport, PreparedRow, Resolution,
};
use concord_proto::{ParticipantRecord, Time};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

/// Everything `concord pg-participant` needs.
#[derive(Clone, Debug)]
pub struct PgParticipantConfig {
    /// The participant's listener, log, node and HTTP settings (its seed
    /// is ignored: the data is in the database).
    pub server: ParticipantServerConfig,
    /// `postgres://user@host:port/database` (tokio-postgres syntax, also
    /// `host=… user=…`).
    pub dsn: String,
    /// Connections to the database: commands run on them in parallel.
    pub connections: usize,
    /// How often `pg_prepared_xacts` is compared with the log.
    pub reconcile_interval_ms: u64,
    /// How long a shipped statement may wait for a row lock.
    pub lock_timeout_ms: u64,
}

pub const CONNECTIONS_DEFAULT: usize = 16;
pub const CONNECTIONS_MAX: usize = 256;
pub const RECONCILE_INTERVAL_MS_DEFAULT: u64 = 30_000;
pub const LOCK_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Statements kept prepared per connection.
const STATEMENT_CACHE_MAX: usize = 256;
/// Longest wait between two connection attempts at start-up.
const CONNECT_RETRY_MS_MAX: u64 = 5_000;

impl PgParticipantConfig {
    pub fn new(server: ParticipantServerConfig, dsn: impl Into<String>) -> PgParticipantConfig {
        PgParticipantConfig {
            server,
            dsn: dsn.into(),
            connections: CONNECTIONS_DEFAULT,
            reconcile_interval_ms: RECONCILE_INTERVAL_MS_DEFAULT,
            lock_timeout_ms: LOCK_TIMEOUT_MS_DEFAULT,
        }
    }
}

/// Run a PostgreSQL participant until `shutdown` completes.
pub async fn run_pg_participant_until(
    config: PgParticipantConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if config.connections == 0 || config.connections > CONNECTIONS_MAX {
        anyhow::bail!(
            "--connections must be 1 to {CONNECTIONS_MAX}, got {}",
            config.connections
        );
    }
    let pg_config: tokio_postgres::Config = config.dsn.parse().with_context(|| {
        format!(
            "--dsn {:?} is not a PostgreSQL connection string",
            redact(&config.dsn)
        )
    })?;
    let name = config.server.node.id.clone();
    let participant_name_ok =
        concord_participant::pg::Gid::shipped("c", &name, concord_proto::Xid(0));
    if let Err(e) = participant_name_ok {
        anyhow::bail!("--name {name:?} cannot go into a PostgreSQL gid: {e}");
    }
    tokio::pin!(shutdown);
    let client = tokio::select! {
        client = connect_until_up(&pg_config, &config.dsn) => client,
        _ = &mut shutdown => return Ok(()),
    };
    let max_prepared = max_prepared_transactions(&client)
        .await
        .context("cannot read max_prepared_transactions")?;
    check_max_prepared(max_prepared).map_err(anyhow::Error::msg)?;
    tracing::info!(
        dsn = %redact(&config.dsn),
        max_prepared_transactions = max_prepared,
        connections = config.connections,
        "PostgreSQL reachable"
    );
    drop(client);

    let server = &config.server;
    server.node.validate().map_err(anyhow::Error::msg)?;
    let clock = Clock::start();
    let (log, records) = crate::driver::open_log::<ParticipantRecord>(
        "participant",
        "participant log record",
        &server.data_dir,
        server.fsync,
    )?;
    let resource = PgResource::new(name, config.reconcile_interval_ms);
    let connections = config.connections;
    let lock_timeout_ms = config.lock_timeout_ms.max(1);
    let dsn = config.dsn.clone();
    serve_participant(
        server,
        clock,
        log,
        records,
        resource,
        move |to_driver| PgIo::start(pg_config, dsn, connections, lock_timeout_ms, to_driver),
        true,
        shutdown,
    )
    .await
}

/// The DSN without its password, for logs and errors.
fn redact(dsn: &str) -> String {
    match (dsn.find("://"), dsn.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &dsn[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &dsn[..scheme + 3], &dsn[at..]),
                None => dsn.to_string(),
            }
        }
        _ => dsn
            .split_whitespace()
            .map(|kv| {
                if kv.starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("PostgreSQL connection closed: {e}");
        }
    });
    Ok(client)
}

/// Connect, retrying with backoff for as long as PostgreSQL is down.
async fn connect_until_up(config: &tokio_postgres::Config, dsn: &str) -> Client {
    let mut wait_ms = 100;
    loop {
        match connect(config).await {
            Ok(client) => return client,
            Err(e) => {
                tracing::error!(
                    dsn = %redact(dsn),
                    retry_in_ms = wait_ms,
                    "PostgreSQL is unreachable: {e}; nothing is prepared or resolved until it is \
                     back; trying again in {wait_ms} ms"
                );
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                wait_ms = (wait_ms * 2).min(CONNECT_RETRY_MS_MAX);
            }
        }
    }
}

async fn max_prepared_transactions(client: &Client) -> Result<u64, anyhow::Error> {
    let row = client
        .query_one("SHOW max_prepared_transactions", &[])
        .await?;
    let text: String = row.try_get(0)?;
    text.trim()
        .parse()
        .with_context(|| format!("max_prepared_transactions is {text:?}, not a number"))
}

/// The resource's IO: commands go to the pool, answers come back to the
/// driver as `Inbound::PgDone`.
///
/// Two lanes, so that phase 2 can never wait behind phase 1: a shipped
/// statement can wait for a row lock that a prepared transaction holds,
/// and only that transaction's COMMIT/ROLLBACK PREPARED releases it. With
/// one pool, enough such waits would leave no connection to run it on.
/// Resolutions and reconciliation listings have connections of their own.
struct PgIo {
    prepares: mpsc::UnboundedSender<PgCommand>,
    resolutions: mpsc::UnboundedSender<PgCommand>,
}

/// Connections of the phase-2 lane.
fn resolution_connections(connections: usize) -> usize {
    (connections / 4).clamp(1, 8)
}

impl PgIo {
    fn start(
        config: tokio_postgres::Config,
        dsn: String,
        connections: usize,
        lock_timeout_ms: u64,
        to_driver: Option<mpsc::Sender<Inbound>>,
    ) -> PgIo {
        let (prepares, prepare_queue) = mpsc::unbounded_channel();
        let (resolutions, resolution_queue) = mpsc::unbounded_channel();
        let lanes = [
            (prepare_queue, connections),
            (resolution_queue, resolution_connections(connections)),
        ];
        match to_driver {
            Some(to_driver) => {
                let mut number = 0;
                for (queue, workers) in lanes {
                    let queue = Arc::new(Mutex::new(queue));
                    for _ in 0..workers {
                        let worker = Worker {
                            number,
                            config: config.clone(),
                            dsn: dsn.clone(),
                            lock_timeout_ms,
                            client: None,
                            statements: HashMap::new(),
                        };
                        number += 1;
                        tokio::spawn(worker.run(queue.clone(), to_driver.clone()));
                    }
                }
            }
            None => tracing::error!("no channel into the driver: PostgreSQL commands cannot run"),
        }
        PgIo {
            prepares,
            resolutions,
        }
    }
}

impl ResourceIo<PgResource> for PgIo {
    fn after_event(&mut self, node: &mut ParticipantServerNode<PgResource>, now: Time) {
        let resource = node.resource_mut();
        resource.tick(now);
        for command in resource.take_commands() {
            let lane = match command.kind {
                PgCommandKind::Prepare { .. } => &self.prepares,
                PgCommandKind::Resolve { .. } | PgCommandKind::List => &self.resolutions,
            };
            // Unbounded: the commands are bounded by the branches in flight
            // (the node's admission limit) plus one reconciliation's.
            if lane.send(command).is_err() {
                tracing::error!("the PostgreSQL workers are gone; command dropped");
            }
        }
        for notice in resource.take_notices() {
            log_notice(notice);
        }
    }

    fn on_pg_done(
        &mut self,
        node: &mut ParticipantServerNode<PgResource>,
        now: Time,
        id: u64,
        reply: PgReply,
    ) {
        if let Some((xid, op, result)) = node.finish_pg(now, id, reply) {
            node.on_resource_done(now, xid, op, result);
        }
    }

    fn next_due(&self, node: &ParticipantServerNode<PgResource>) -> Option<Time> {
        node.resource().next_tick()
    }

    fn prepared_report(&self, node: &ParticipantServerNode<PgResource>) -> Option<PreparedReport> {
        Some(node.resource().reconciler().report().clone())
    }
}

fn log_notice(notice: PgNotice) {
    match notice {
        PgNotice::AlreadyResolved { gid, commit } => tracing::warn!(
            %gid,
            "{} PREPARED found {gid} gone: an earlier attempt (before a crash) resolved it; only \
             this participant resolves its gids, so the branch is done",
            if commit { "COMMIT" } else { "ROLLBACK" }
        ),
        PgNotice::Reconciled { gid, commit, why } => tracing::warn!(
            %gid,
            "reconciliation {} {gid}: {why}",
            if commit { "committed" } else { "rolled back" }
        ),
        PgNotice::ReconcileFailed { gid, error } => {
            tracing::error!(%gid, "reconciliation could not resolve {gid}: {error}")
        }
        PgNotice::ListFailed { error, retry_in_ms } => tracing::error!(
            retry_in_ms,
            "cannot read pg_prepared_xacts: {error}; nothing is reconciled until it can be; \
             trying again in {retry_in_ms} ms"
        ),
        PgNotice::NearLimit { prepared, max } => tracing::warn!(
            prepared,
            max,
            "{prepared} prepared transactions of max_prepared_transactions = {max}: at 100 % \
             PREPARE TRANSACTION fails; raise the setting or resolve what is listed"
        ),
        PgNotice::Unresolvable { count, oldest_s } => tracing::warn!(
            count,
            oldest_s,
            "{count} prepared transactions are not this participant's to resolve (another \
             participant's, a foreign tool's, or another database's); the oldest is \
             {oldest_s:.0} s old"
        ),
    }
}

/// One pooled connection: takes commands, runs them, reports.
struct Worker {
    number: usize,
    config: tokio_postgres::Config,
    dsn: String,
    /// `lock_timeout` of shipped statements.
    lock_timeout_ms: u64,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
}

impl Worker {
    async fn run(
        mut self,
        queue: Arc<Mutex<mpsc::UnboundedReceiver<PgCommand>>>,
        to_driver: mpsc::Sender<Inbound>,
    ) {
        loop {
            let command = { queue.lock().await.recv().await };
            let Some(command) = command else { return };
            let reply = self.execute(command.kind).await;
            if to_driver
                .send(Inbound::PgDone {
                    id: command.id,
                    reply,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// This worker's connection, made if needed.
    async fn client(&mut self) -> Result<&Client, String> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
            self.statements.clear();
        }
        if self.client.is_none() {
            let client = connect(&self.config)
                .await
                .map_err(|e| format!("PostgreSQL at {} is unreachable: {e}", redact(&self.dsn)))?;
            tracing::debug!(worker = self.number, "PostgreSQL connection opened");
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| "no connection".to_string())
    }

    async fn execute(&mut self, kind: PgCommandKind) -> PgReply {
        match kind {
            PgCommandKind::Prepare { check, shipped } => {
                PgReply::Prepare(self.prepare(check, shipped).await)
            }
            PgCommandKind::Resolve { gids, commit } => {
                let mut results = Vec::with_capacity(gids.len());
                for gid in gids {
                    let result = self.resolve(&gid, commit).await;
                    results.push((gid, result));
                }
                PgReply::Resolve(results)
            }
            PgCommandKind::List => PgReply::List(self.list().await),
        }
    }

    async fn prepare(
        &mut self,
        check: Vec<String>,
        shipped: Option<(String, Vec<PgStatement>)>,
    ) -> PrepareReply {
        if !check.is_empty() {
            let found = match self.prepared_among(&check).await {
                Ok(found) => found,
                Err(e) => return PrepareReply::Failed(e),
            };
            let missing: Vec<String> = check.into_iter().filter(|g| !found.contains(g)).collect();
            if !missing.is_empty() {
                return PrepareReply::Missing(missing);
            }
        }
        let Some((gid, statements)) = shipped else {
            return PrepareReply::Prepared;
        };
        match self.run_and_prepare(&gid, &statements).await {
            Ok(()) => PrepareReply::Prepared,
            Err(e) => PrepareReply::Failed(e),
        }
    }

    async fn prepared_among(&mut self, gids: &[String]) -> Result<Vec<String>, String> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT gid FROM pg_prepared_xacts \
                 WHERE database = current_database() AND gid = ANY($1)",
                &[&gids],
            )
            .await
            .map_err(|e| format!("cannot read pg_prepared_xacts: {e}"))?;
        rows.iter()
            .map(|r| r.try_get::<_, String>(0).map_err(|e| e.to_string()))
            .collect()
    }

    /// BEGIN, the statements, PREPARE TRANSACTION. On any failure the
    /// transaction is rolled back, so nothing stays prepared (but for a
    /// connection lost mid-way: then reconciliation finds the gid).
    async fn run_and_prepare(
        &mut self,
        gid: &str,
        statements: &[PgStatement],
    ) -> Result<(), String> {
        self.client().await?;
        let result = self.run_statements(gid, statements).await;
        if result.is_err() {
            let rolled_back = match &self.client {
                Some(client) => client.batch_execute("ROLLBACK").await.is_ok(),
                None => false,
            };
            if !rolled_back {
                self.client = None;
                self.statements.clear();
            }
        }
        result
    }

    /// BEGIN, the statements and PREPARE TRANSACTION in one round trip:
    /// tokio-postgres pipelines requests polled together, in the order
    /// they are first polled, and PostgreSQL runs them in that order. A
    /// failed statement aborts the transaction, the ones after it fail,
    /// and PREPARE TRANSACTION of an aborted transaction is a ROLLBACK, so
    /// nothing stays prepared. A wrong row count is only seen after the
    /// PREPARE: that gid is rolled back here (or, if that fails, by
    /// reconciliation: it is this participant's, with no READY record).
    async fn run_statements(
        &mut self,
        gid: &str,
        statements: &[PgStatement],
    ) -> Result<(), String> {
        let mut prepared = Vec::with_capacity(statements.len());
        for (i, statement) in statements.iter().enumerate() {
            let cached = self.statement(&statement.sql).await;
            prepared.push(cached.map_err(|e| format!("statement {}: {e}", i + 1))?);
        }
        let client = self.client.as_ref().ok_or("connection lost")?;
        // A shipped statement waits for a row lock at most this long (then
        // the branch votes ABORT): the coordinator has given up by then.
        let begin_sql = format!("BEGIN; SET LOCAL lock_timeout = {}", self.lock_timeout_ms);
        // The gid is a checked concord gid ([A-Za-z0-9._:-]): safe to quote.
        let prepare_sql = format!("PREPARE TRANSACTION '{gid}'");
        let runs = prepared
            .iter()
            .zip(statements)
            .map(|(prepared, statement)| {
                let params: Vec<JsonParam> = statement.params.iter().map(JsonParam).collect();
                async move {
                    let refs: Vec<&(dyn ToSql + Sync)> =
                        params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                    client.execute(prepared, &refs).await
                }
            });
        let (begun, ran, prepare) = tokio::join!(
            client.batch_execute(&begin_sql),
            futures::future::join_all(runs),
            client.batch_execute(&prepare_sql)
        );
        // PREPARE TRANSACTION may have run even though something before it
        // failed: a parameter that cannot be encoded fails in the client
        // library, unsent, so the transaction was prepared without it.
        // Any failure with the gid prepared: roll it back at once.
        let failure = begun
            .map_err(|e| format!("{begin_sql}: {}", describe(&e)))
            .and_then(|()| {
                let mut wrong_count = None;
                for (i, (rows, statement)) in ran.into_iter().zip(statements).enumerate() {
                    let rows =
                        rows.map_err(|e| format!("statement {} failed: {}", i + 1, describe(&e)))?;
                    match statement.expect_rows {
                        Some(expected) if rows != expected && wrong_count.is_none() => {
                            wrong_count = Some(format!(
                                "statement {} touched {rows} rows, and the branch expects \
                                 exactly {expected}",
                                i + 1
                            ));
                        }
                        _ => {}
                    }
                }
                wrong_count.map_or(Ok(()), Err)
            })
            .err();
        let prepared = prepare.map_err(|e| format!("{prepare_sql}: {}", describe(&e)));
        match (failure, prepared) {
            (None, prepared) => prepared,
            (Some(failure), Err(_)) => Err(failure),
            (Some(failure), Ok(())) => {
                // After a failed statement PREPARE TRANSACTION was a
                // ROLLBACK: then the gid does not exist, which is fine.
                let rolled_back = client
                    .batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
                    .await;
                if let Err(e) =
                    rolled_back.or_else(|e| match e.code() == Some(&SqlState::UNDEFINED_OBJECT) {
                        true => Ok(()),
                        false => Err(e),
                    })
                {
                    tracing::warn!(
                        %gid,
                        "cannot roll back {gid} after a failed statement ({}); reconciliation will",
                        describe(&e)
                    );
                }
                Err(failure)
            }
        }
    }

    async fn statement(&mut self, sql: &str) -> Result<Statement, String> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let client = self.client().await?;
        let statement = client.prepare(sql).await.map_err(|e| describe(&e))?;
        if self.statements.len() >= STATEMENT_CACHE_MAX {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    async fn resolve(&mut self, gid: &str, commit: bool) -> Resolution {
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        let client = match self.client().await {
            Ok(client) => client,
            Err(e) => return Resolution::Failed(e),
        };
        // The gid is a checked concord gid: safe to quote.
        match client
            .batch_execute(&format!("{verb} PREPARED '{gid}'"))
            .await
        {
            Ok(()) => Resolution::Done,
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => Resolution::Gone,
            Err(e) => Resolution::Failed(format!("{verb} PREPARED: {}", describe(&e))),
        }
    }

    async fn list(&mut self) -> Result<PreparedList, String> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT gid, database = current_database(), \
                 extract(epoch FROM now() - prepared)::float8 FROM pg_prepared_xacts",
                &[],
            )
            .await
            .map_err(|e| format!("cannot read pg_prepared_xacts: {}", describe(&e)))?;
        let mut list = PreparedList::default();
        for row in rows {
            let read = || -> Result<PreparedRow, tokio_postgres::Error> {
                Ok(PreparedRow {
                    gid: row.try_get(0)?,
                    here: row.try_get(1)?,
                    age_s: row.try_get(2)?,
                })
            };
            list.rows.push(read().map_err(|e| e.to_string())?);
        }
        list.max_prepared = max_prepared_transactions(client)
            .await
            .map_err(|e| e.to_string())?;
        Ok(list)
    }
}

/// An error with PostgreSQL's own message and code when there is one
/// (also what `concord bench` and `concord demo` print of theirs).
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        // "error serializing parameter 0" says little without its cause.
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// A JSON parameter, converted to the type PostgreSQL inferred for its
/// placeholder. Written here because tokio-postgres converts from Rust
/// types chosen at compile time, and shipped work picks types at run time.
#[derive(Debug)]
struct JsonParam<'a>(&'a serde_json::Value);

impl ToSql for JsonParam<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use serde_json::Value;
        let value = self.0;
        if value.is_null() {
            return Ok(IsNull::Yes);
        }
        let wrong = || -> Box<dyn std::error::Error + Sync + Send> {
            format!(
                "parameter {value} cannot be a {ty}: give a JSON value of that type, or cast \
                 the placeholder in the SQL (e.g. $1::text::{ty})"
            )
            .into()
        };
        match *ty {
            Type::BOOL => value.as_bool().ok_or_else(wrong)?.to_sql(ty, out),
            Type::INT2 => i16::try_from(value.as_i64().ok_or_else(wrong)?)
                .map_err(|_| wrong())?
                .to_sql(ty, out),
            Type::INT4 => i32::try_from(value.as_i64().ok_or_else(wrong)?)
                .map_err(|_| wrong())?
                .to_sql(ty, out),
            Type::INT8 => value.as_i64().ok_or_else(wrong)?.to_sql(ty, out),
            Type::FLOAT4 => (value.as_f64().ok_or_else(wrong)? as f32).to_sql(ty, out),
            Type::FLOAT8 => value.as_f64().ok_or_else(wrong)?.to_sql(ty, out),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => match value {
                Value::String(s) => s.as_str().to_sql(&Type::TEXT, out),
                other => other.to_string().as_str().to_sql(&Type::TEXT, out),
            },
            _ => Err(wrong()),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value in `to_sql`, with a message.
        true
    }

    to_sql_checked!();
}
