//! [`PgLeases`]: which coordinator instance runs which log, when several
//! share one PostgreSQL store (SPEC §1.8). The statements only; when to
//! call them is decided by `concord_node::lease`, which the simulator
//! drives too.
//!
//! Every log (`concord_log_owner` row, see [`crate::pg_log`]) is held by
//! one instance (`holder`) until `lease_until`. Leases are granted,
//! renewed and compared by the **database's clock** (`now()`), never an
//! instance's: two instances whose clocks disagree still agree on whose
//! lease ran out. Taking a log (a start, or a takeover) raises its epoch,
//! and every write of the log checks epoch and lease in the same statement
//! ([`crate::PgLog`]), so an instance that lost its lease (paused, cut off
//! from the database, or simply late) can never write to it again.
//!
//! - [`PgLeases::acquire`]: an instance takes its own log at start, if it
//!   is free, its lease ran out, or it names this instance (a restart;
//!   names are unique).
//! - [`PgLeases::adopt`]: another instance takes over a log whose lease ran
//!   out, at the epoch it saw (two adopters: one wins).
//! - [`PgLeases::renew`]: extend, while still the holder at that epoch and
//!   before the lease runs out; says whether the log's own instance asks
//!   for it back.
//! - [`PgLeases::want`] / [`PgLeases::hand_back`]: the log's instance is
//!   back and asks for it; the adopter, once it stopped deciding for it,
//!   lets it go, kept from adopters for one lease, and the instance
//!   acquires it (raising the epoch).

use crate::pg_log::Db;
use crate::StoreError;

/// One log's owner row, as the database saw it at the scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerRow {
    /// The log's name: the `--name` of the instance that began its
    /// transactions.
    pub log: String,
    pub epoch: u64,
    pub holder: Option<String>,
    /// The lease ran out by the database's clock (or there is none).
    pub expired: bool,
    /// Milliseconds left on the lease by the database's clock (negative:
    /// ran out that long ago).
    pub lease_left_ms: i64,
    /// The instance that asked for the log back, if any.
    pub wanted_by: Option<String>,
    /// Transactions in flight in it, as its holder last reported.
    pub in_flight: u64,
    /// Where its holder serves the HTTP API, if it does.
    pub http: Option<String>,
}

/// The answer to [`PgLeases::acquire`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// Taken, at this epoch.
    Took { epoch: u64 },
    /// Another instance holds it under a live lease.
    HeldBy { holder: String, lease_left_ms: i64 },
}

/// The answer to [`PgLeases::renew`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Extended; `wanted_by` asks for the log back.
    Held { wanted_by: Option<String> },
    /// Not ours any more (or the lease ran out): stop deciding for it.
    Lost { holder: Option<String>, epoch: u64 },
}

/// Lease statements over one connection. Every call is one autocommitted
/// statement, durable when it returns (`synchronous_commit = on`).
pub struct PgLeases {
    db: Db,
    /// Written into every log this instance takes: see `serving_http`.
    http: Option<String>,
}

impl PgLeases {
    /// Connect (creating the tables if need be).
    pub fn connect(dsn: &str) -> Result<PgLeases, StoreError> {
        Ok(PgLeases {
            db: Db::connect(dsn, None)?,
            http: None,
        })
    }

    /// Every log this instance takes (acquires or adopts) names `addr` as
    /// where its HTTP API is, so that another instance asked about one of
    /// its transactions can ask it in turn.
    pub fn serving_http(mut self, addr: Option<String>) -> PgLeases {
        self.http = addr;
        self
    }

    /// Take `log` for `me` for `lease_ms`: if it is new, free, expired, or
    /// already names `me` (this instance restarted) at no later epoch than
    /// `after`, the epoch of this process's last life of it (`None`: it
    /// had none). Held under `me` at a later epoch, it belongs to another
    /// process of the same name and is not taken.
    pub fn acquire(
        &mut self,
        log: &str,
        me: &str,
        lease_ms: u64,
        after: Option<u64>,
    ) -> Result<Acquired, StoreError> {
        let lease = lease_ms as f64;
        let after = after.map(|e| e as i64);
        let took = self
            .db
            .client
            .query_opt(
                "INSERT INTO concord_log_owner AS o (name, epoch, holder, lease_until, http) \
                 VALUES ($1, 1, $2, now() + $3::float8 * interval '1 millisecond', $5) \
                 ON CONFLICT (name) DO UPDATE SET epoch = o.epoch + 1, holder = $2, \
                 lease_until = EXCLUDED.lease_until, wanted_by = NULL, http = $5 \
                 WHERE o.holder IS NULL OR o.lease_until IS NULL OR o.lease_until < now() \
                 OR (o.holder = $2 AND ($4::bigint IS NULL OR o.epoch <= $4::bigint)) \
                 RETURNING epoch",
                &[&log, &me, &lease, &after, &self.http],
            )
            .map_err(|e| self.db.fail("acquire the lease", &e))?;
        if let Some(row) = took {
            return Ok(Acquired::Took {
                epoch: row.get::<_, i64>(0) as u64,
            });
        }
        let row = self
            .db
            .client
            .query_one(
                "SELECT holder, (extract(epoch FROM lease_until - now()) * 1000)::bigint \
                 FROM concord_log_owner WHERE name = $1",
                &[&log],
            )
            .map_err(|e| self.db.fail("read the lease", &e))?;
        Ok(Acquired::HeldBy {
            holder: row.get::<_, Option<String>>(0).unwrap_or_default(),
            lease_left_ms: row.get::<_, Option<i64>>(1).unwrap_or(0),
        })
    }

    /// Take over `log` from an instance whose lease ran out, if it still
    /// has the epoch `seen` (another adopter did not win it) and its lease
    /// is still out. The new epoch, or `None` if not taken.
    pub fn adopt(
        &mut self,
        log: &str,
        me: &str,
        seen: u64,
        lease_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let lease = lease_ms as f64;
        let row = self
            .db
            .client
            .query_opt(
                "UPDATE concord_log_owner SET epoch = epoch + 1, holder = $2, http = $5, \
                 lease_until = now() + $4::float8 * interval '1 millisecond' \
                 WHERE name = $1 AND epoch = $3 \
                 AND (lease_until IS NULL OR lease_until < now()) \
                 RETURNING epoch",
                &[&log, &me, &(seen as i64), &lease, &self.http],
            )
            .map_err(|e| self.db.fail("take the log over", &e))?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    /// Extend `me`'s lease on `log` at `epoch` by `lease_ms` from the
    /// database's now, reporting `in_flight` (for `status --instances`).
    pub fn renew(
        &mut self,
        log: &str,
        me: &str,
        epoch: u64,
        lease_ms: u64,
        in_flight: u64,
    ) -> Result<Renewal, StoreError> {
        let lease = lease_ms as f64;
        let row = self
            .db
            .client
            .query_opt(
                "UPDATE concord_log_owner SET lease_until = now() + $4::float8 * interval '1 millisecond', \
                 in_flight = $5 \
                 WHERE name = $1 AND holder = $2 AND epoch = $3 AND lease_until > now() \
                 RETURNING wanted_by",
                &[&log, &me, &(epoch as i64), &lease, &(in_flight as i64)],
            )
            .map_err(|e| self.db.fail("renew the lease", &e))?;
        if let Some(row) = row {
            return Ok(Renewal::Held {
                wanted_by: row.get(0),
            });
        }
        let row = self
            .db
            .client
            .query_opt(
                "SELECT holder, epoch FROM concord_log_owner WHERE name = $1",
                &[&log],
            )
            .map_err(|e| self.db.fail("read the lease", &e))?;
        Ok(match row {
            Some(row) => Renewal::Lost {
                holder: row.get(0),
                epoch: row.get::<_, i64>(1) as u64,
            },
            None => Renewal::Lost {
                holder: None,
                epoch: 0,
            },
        })
    }

    /// Ask whoever holds `log` to hand it back to `me`.
    pub fn want(&mut self, log: &str, me: &str) -> Result<(), StoreError> {
        self.db
            .client
            .execute(
                "UPDATE concord_log_owner SET wanted_by = $2 \
                 WHERE name = $1 AND holder IS DISTINCT FROM $2",
                &[&log, &me],
            )
            .map_err(|e| self.db.fail("ask for the log back", &e))?;
        Ok(())
    }

    /// Give `log`, held by this instance at `epoch`, back to its own
    /// instance `to`: held by no one, but kept from adopters for
    /// `lease_ms`, in which only `to` takes it (acquire is for a log's own
    /// instance only); if `to` died meanwhile, it is adopted again after.
    /// Call only once this instance has stopped writing to it; the epoch
    /// goes up all the same, so that a write of it still on its way (a
    /// life cut off while writing out its log) is fenced off at once, not
    /// only once `to` takes the log. False if it was not held at `epoch`
    /// any more.
    pub fn hand_back(
        &mut self,
        log: &str,
        epoch: u64,
        to: &str,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let lease = lease_ms as f64;
        let n = self
            .db
            .client
            .execute(
                "UPDATE concord_log_owner SET epoch = epoch + 1, holder = NULL, wanted_by = NULL, \
                 in_flight = 0, http = NULL, \
                 lease_until = now() + $4::float8 * interval '1 millisecond' \
                 WHERE name = $1 AND epoch = $2 AND wanted_by = $3",
                &[&log, &(epoch as i64), &to, &lease],
            )
            .map_err(|e| self.db.fail("hand the log back", &e))?;
        Ok(n == 1)
    }

    /// Every log's owner row, by name.
    pub fn scan(&mut self) -> Result<Vec<OwnerRow>, StoreError> {
        let rows = self
            .db
            .client
            .query(
                "SELECT name, epoch, holder, \
                 (lease_until IS NULL OR lease_until < now()), \
                 coalesce((extract(epoch FROM lease_until - now()) * 1000)::bigint, 0), \
                 wanted_by, in_flight, http \
                 FROM concord_log_owner ORDER BY name",
                &[],
            )
            .map_err(|e| self.db.fail("scan the leases", &e))?;
        Ok(rows
            .into_iter()
            .map(|row| OwnerRow {
                log: row.get(0),
                epoch: row.get::<_, i64>(1) as u64,
                holder: row.get(2),
                expired: row.get(3),
                lease_left_ms: row.get(4),
                wanted_by: row.get(5),
                in_flight: row.get::<_, i64>(6).max(0) as u64,
                http: row.get(7),
            })
            .collect())
    }
}
