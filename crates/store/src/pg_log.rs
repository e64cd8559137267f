//! [`PgLog`]: a coordinator's log in a shared PostgreSQL database
//! (`concord serve --store postgres://…`, SPEC §1.8), behind the same
//! [`LogStore`] contract as the embedded file log, with one addition:
//! every write is **fenced by the owner's epoch**.
//!
//! # Layout
//!
//! - `concord_log_owner (name, epoch, holder, lease_until, wanted_by,
//!   in_flight, http)`: one row per log (a coordinator's `--name`). Taking a
//!   log raises its epoch by one, and this instance holds that epoch as
//!   its fencing token: [`PgLog::open`] takes it outright (no lease);
//!   `serve --store` takes it under a lease ([`crate::pg_lease`]) and
//!   opens it with [`PgLog::open_leased`].
//! - `concord_log (name, seq, record)`: the records, in `seq` order.
//!
//! # Contract, beyond [`LogStore`]'s
//!
//! - **Durable when `append` returns.** Each append is one autocommitted
//!   statement with `synchronous_commit = on`: PostgreSQL has flushed its
//!   WAL when it answers, so `sync` has nothing left to do, and even a
//!   machine crash of the database keeps every appended record. Group
//!   commit still applies: a batch of many records is one statement, one
//!   round trip and one WAL flush.
//! - **Fenced.** An append or rewrite succeeds only while this instance's
//!   epoch is the log's current one and, under a lease, the lease has not
//!   run out by the database's clock; the check and the write are one
//!   statement, and the owner row is locked (`FOR SHARE`) until the write
//!   commits, so an open by another instance waits for writes in flight
//!   and then sees them. After another instance opened the log, every
//!   write of this one fails with [`StoreError::Fenced`] and the store is
//!   poisoned: a stale owner can never write again.
//! - **Fail-stop** as every store: any failure poisons it (a lost
//!   connection too: whether the last statement committed is unknown, so
//!   the owner must reopen and recover).
//!
//! Written here rather than taken from a crate: no crate offers a fenced,
//! ordered record log over PostgreSQL; the client is the `postgres` crate.

use crate::{LogStore, StoreError};
use std::path::PathBuf;

/// Largest record accepted (PostgreSQL's `bytea` takes up to 1 GB; a
/// coordinator's records are far smaller).
pub const PG_RECORD_BYTES_MAX: usize = 64 << 20;

/// Created under a transaction-scoped advisory lock: `CREATE TABLE IF NOT
/// EXISTS` is not safe against itself, and several instances start at once.
const SCHEMA: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(7035611420);
CREATE TABLE IF NOT EXISTS concord_log_owner (
    name text PRIMARY KEY,
    epoch bigint NOT NULL,
    holder text,
    lease_until timestamptz,
    wanted_by text,
    in_flight bigint NOT NULL DEFAULT 0,
    http text
);
-- `http` (where the holder serves its HTTP API) came after the table's
-- first version. Checked first: ALTER TABLE locks the table out of every
-- append even when it has nothing to add.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'concord_log_owner'::regclass
                   AND attname = 'http' AND NOT attisdropped) THEN
        ALTER TABLE concord_log_owner ADD COLUMN http text;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS concord_log (
    name text NOT NULL,
    seq bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (name, seq)
);
COMMIT;";

/// The owner row as a writer sees it: ours while it has our epoch and,
/// when the log is leased ([`crate::pg_lease`]), the lease has not run out
/// by the database's clock. No lease (`NULL`): a log opened with
/// [`PgLog::open`], fenced by its epoch alone.
const OWNED: &str = "name = $1 AND epoch = $2 AND (lease_until IS NULL OR lease_until > now())";

/// The fence and the insert in one statement: no row of the owner with
/// our epoch and a live lease, nothing inserted.
fn append_statement() -> String {
    format!(
        "WITH owner AS (SELECT epoch FROM concord_log_owner WHERE {OWNED} FOR SHARE) \
         INSERT INTO concord_log (name, seq, record) \
         SELECT $1, $3::bigint + t.i - 1, t.r \
         FROM owner, unnest($4::bytea[]) WITH ORDINALITY AS t(r, i)"
    )
}

pub struct PgLog {
    client: postgres::Client,
    name: String,
    /// This instance's fencing token.
    epoch: i64,
    next_seq: i64,
    /// Where, for messages: the DSN without its password.
    place: String,
    poisoned: Option<StoreError>,
    /// Prepared once: a statement by text would be parsed again, one
    /// more round trip, at every append.
    append: postgres::Statement,
}

impl PgLog {
    /// Open (creating the tables if need be) the log `name` in the
    /// database at `dsn`, taking it over: its epoch goes up by one and
    /// every earlier opener is fenced off. Returns the store and every
    /// record in order.
    pub fn open(dsn: &str, name: &str) -> Result<(PgLog, Vec<Vec<u8>>), StoreError> {
        let mut db = Db::connect(dsn, Some(name))?;
        let epoch: i64 = db
            .client
            .query_one(
                "INSERT INTO concord_log_owner (name, epoch) VALUES ($1, 1) \
                 ON CONFLICT (name) DO UPDATE SET epoch = concord_log_owner.epoch + 1, \
                 holder = NULL, lease_until = NULL \
                 RETURNING epoch",
                &[&name],
            )
            .map_err(|e| db.fail("take the log over", &e))?
            .get(0);
        PgLog::read(db, name, epoch)
    }

    /// Open the log `name` that this instance holds under a lease at
    /// `epoch` (granted by [`crate::PgLeases::acquire`] or
    /// [`crate::PgLeases::adopt`]), without raising the epoch: fenced
    /// already if the lease ran out or another instance took it since.
    pub fn open_leased(
        dsn: &str,
        name: &str,
        epoch: u64,
    ) -> Result<(PgLog, Vec<Vec<u8>>), StoreError> {
        let mut db = Db::connect(dsn, Some(name))?;
        let epoch = epoch as i64;
        let owned = db
            .client
            .query_opt(
                &format!("SELECT epoch FROM concord_log_owner WHERE {OWNED}"),
                &[&name, &epoch],
            )
            .map_err(|e| db.fail("check the lease", &e))?;
        if owned.is_none() {
            return Err(StoreError::Fenced {
                store: db.place,
                epoch: epoch as u64,
            });
        }
        PgLog::read(db, name, epoch)
    }

    fn read(mut db: Db, name: &str, epoch: i64) -> Result<(PgLog, Vec<Vec<u8>>), StoreError> {
        let rows = db
            .client
            .query(
                "SELECT seq, record FROM concord_log WHERE name = $1 ORDER BY seq",
                &[&name],
            )
            .map_err(|e| db.fail("read the log", &e))?;
        let append = db
            .client
            .prepare(&append_statement())
            .map_err(|e| db.fail("prepare the append", &e))?;
        let place = db.place;
        let mut next_seq = 0;
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.get(0);
            if seq != next_seq {
                return Err(StoreError::Corrupt {
                    path: PathBuf::from(&place),
                    offset: next_seq as u64,
                    detail: format!("record {next_seq} is missing (the next one is {seq})"),
                });
            }
            next_seq = seq + 1;
            records.push(row.get::<_, Vec<u8>>(1));
        }
        let log = PgLog {
            client: db.client,
            name: name.to_string(),
            epoch,
            next_seq,
            place,
            poisoned: None,
            append,
        };
        Ok((log, records))
    }

    /// This instance's fencing token (the log's epoch when it opened it).
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    fn check(&self, records: &[&[u8]]) -> Result<(), StoreError> {
        if let Some(first) = &self.poisoned {
            return Err(first.poisoned(&self.place));
        }
        match records.iter().map(|r| r.len()).max() {
            Some(len) if len > PG_RECORD_BYTES_MAX => Err(StoreError::RecordTooLarge {
                path: PathBuf::from(&self.place),
                len,
                max: PG_RECORD_BYTES_MAX,
            }),
            _ => Ok(()),
        }
    }

    fn poison(&mut self, error: StoreError) -> StoreError {
        self.poisoned = Some(error.clone());
        error
    }

    fn fenced(&self) -> StoreError {
        StoreError::Fenced {
            store: self.place.clone(),
            epoch: self.epoch as u64,
        }
    }

    fn database(&self, op: &'static str, e: &postgres::Error) -> StoreError {
        StoreError::Database {
            store: self.place.clone(),
            op,
            detail: describe(e),
        }
    }
}

impl LogStore for PgLog {
    fn append(&mut self, records: &[&[u8]]) -> Result<(), StoreError> {
        self.check(records)?;
        if records.is_empty() {
            return Ok(());
        }
        let rows: Vec<&[u8]> = records.to_vec();
        let inserted = self.client.execute(
            &self.append,
            &[&self.name, &self.epoch, &self.next_seq, &rows],
        );
        match inserted {
            Ok(n) if n == records.len() as u64 => {
                self.next_seq += records.len() as i64;
                Ok(())
            }
            Ok(_) => {
                let error = self.fenced();
                Err(self.poison(error))
            }
            Err(e) => {
                let error = self.database("append", &e);
                Err(self.poison(error))
            }
        }
    }

    /// Nothing to do: every append is durable when it returns.
    fn sync(&mut self) -> Result<(), StoreError> {
        self.check(&[])
    }

    fn rewrite(&mut self, records: &[&[u8]]) -> Result<(), StoreError> {
        self.check(records)?;
        let rows: Vec<&[u8]> = records.to_vec();
        let (name, epoch) = (self.name.clone(), self.epoch);
        let result = (|| {
            let mut tx = self.client.transaction()?;
            let owner = tx.query_opt(
                &format!("SELECT epoch FROM concord_log_owner WHERE {OWNED} FOR SHARE"),
                &[&name, &epoch],
            )?;
            if owner.is_none() {
                return Ok(false);
            }
            tx.execute("DELETE FROM concord_log WHERE name = $1", &[&name])?;
            if !rows.is_empty() {
                tx.execute(
                    "INSERT INTO concord_log (name, seq, record) \
                     SELECT $1, t.i - 1, t.r FROM unnest($2::bytea[]) WITH ORDINALITY AS t(r, i)",
                    &[&name, &rows],
                )?;
            }
            tx.commit()?;
            Ok(true)
        })();
        match result {
            Ok(true) => {
                self.next_seq = records.len() as i64;
                Ok(())
            }
            Ok(false) => {
                let error = self.fenced();
                Err(self.poison(error))
            }
            Err(e) => {
                let error = self.database("rewrite", &e);
                Err(self.poison(error))
            }
        }
    }
}

/// How long connecting to the store's database may take.
const STORE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long data sent to the database may stay unacknowledged before the
/// connection fails (Linux `TCP_USER_TIMEOUT`).
const STORE_TCP_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Keep-alives on an idle connection (a lease connection between renewals).
const STORE_KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// A connection to the store's database, with the tables in place.
pub(crate) struct Db {
    pub(crate) client: postgres::Client,
    /// Where, for messages: the DSN without its password (and the log).
    pub(crate) place: String,
}

impl Db {
    /// Connect, make commits durable whatever the server's default says
    /// (`synchronous_commit = on`), and create the tables if need be.
    pub(crate) fn connect(dsn: &str, log: Option<&str>) -> Result<Db, StoreError> {
        let place = match log {
            Some(name) => format!("{} (log {name:?})", redact(dsn)),
            None => redact(dsn),
        };
        let fail = |op: &'static str, e: postgres::Error| StoreError::Database {
            store: place.clone(),
            op,
            detail: describe(&e),
        };
        let mut config: postgres::Config = dsn.parse().map_err(|e| fail("parse the URL", e))?;
        // A database that stops answering (a partition without a reset)
        // must fail the call, not hang it: a hung append would hold the
        // log's writer, a hung renewal the instance's leases. A connect
        // timeout the URL gives wins.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(STORE_CONNECT_TIMEOUT);
        }
        config.tcp_user_timeout(STORE_TCP_USER_TIMEOUT);
        config.keepalives_idle(STORE_KEEPALIVE_IDLE);
        let mut client = config
            .connect(postgres::NoTls)
            .map_err(|e| fail("connect", e))?;
        // No "already exists, skipping" notices from the schema.
        client
            .batch_execute("SET synchronous_commit = on; SET client_min_messages = warning")
            .map_err(|e| fail("set synchronous_commit", e))?;
        client
            .batch_execute(SCHEMA)
            .map_err(|e| fail("create the tables", e))?;
        Ok(Db { client, place })
    }

    pub(crate) fn fail(&self, op: &'static str, e: &postgres::Error) -> StoreError {
        StoreError::Database {
            store: self.place.clone(),
            op,
            detail: describe(e),
        }
    }
}

/// The DSN without a password (`password=…` or `user:pass@`).
fn redact(dsn: &str) -> String {
    if let Some((scheme, rest)) = dsn.split_once("://") {
        if let Some((auth, host)) = rest.split_once('@') {
            let user = auth.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}@{host}");
        }
        return dsn.to_string();
    }
    dsn.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=…"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The error with the server's message and SQLSTATE when there is one.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(
            redact("postgres://concord:s3cret@127.0.0.1:5432/db"),
            "postgres://concord@127.0.0.1:5432/db"
        );
        assert_eq!(
            redact("host=127.0.0.1 password=s3cret dbname=db"),
            "host=127.0.0.1 password=… dbname=db"
        );
        assert_eq!(redact("postgres://127.0.0.1/db"), "postgres://127.0.0.1/db");
    }
}
