//! PostgreSQL application branches (SPEC §4): the application runs its
//! own SQL on its own connection and lets concord resolve it.
//!
//! 1. `Client::open_txn` → an [`OpenTxn`] (xid, coordinator, lifetime);
//! 2. `BEGIN` and your SQL on your database connection;
//! 3. [`prepare_and_register`] (feature `postgres`): `PREPARE TRANSACTION`
//!    under the branch's concord gid ([`gid`]) and register it with the
//!    coordinator for the `concord pg-participant` of that database;
//! 4. `Client::commit(xid)` (or `abort`).
//!
//! Without the feature (or from another language), do step 3 by hand:
//! prepare under [`gid`] and register [`branch`].

use crate::{ClientError, OpenTxn};
use concord_api::BranchRequest;
use concord_participant::pg::{Gid, PgWork};

/// Seconds a gid's hold adds to the transaction's lifetime: the time for
/// the commit's PREPARE to reach the participant, and clock-rate
/// differences. Past the hold, a prepared gid whose PREPARE never came is
/// rolled back by reconciliation.
pub const HOLD_MARGIN_S: u64 = 5;

/// The gid for branch `branch` (a label of `[A-Za-z0-9._-]`, unique in
/// the transaction) on PostgreSQL participant `participant`.
pub fn gid(txn: &OpenTxn, participant: &str, branch: &str) -> Result<String, ClientError> {
    let hold_s = txn.lifetime_ms.div_ceil(1000) + HOLD_MARGIN_S;
    Gid::new(&txn.coordinator, participant, txn.xid, branch, hold_s)
        .map(|gid| gid.to_string())
        .map_err(ClientError::Invalid)
}

/// The branch that registers prepared `gids` with `participant`.
pub fn branch(participant: &str, gids: Vec<String>) -> BranchRequest {
    BranchRequest {
        participant: participant.to_string(),
        work: PgWork {
            gids,
            statements: Vec::new(),
        }
        .encode(),
    }
}

/// `PREPARE TRANSACTION` the transaction open on `db` (after your `BEGIN`
/// and SQL) under the branch's gid, and register it. Returns the gid. If
/// the registration fails, the prepared transaction is rolled back here;
/// should even that fail, reconciliation rolls it back after its hold.
#[cfg(feature = "postgres")]
pub async fn prepare_and_register(
    concord: &crate::Client,
    txn: &OpenTxn,
    participant: &str,
    branch_label: &str,
    db: &tokio_postgres::Client,
) -> Result<String, ClientError> {
    let gid = gid(txn, participant, branch_label)?;
    // A concord gid holds only [A-Za-z0-9._:-]: safe inside the literal.
    db.batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))
        .await
        .map_err(|e| ClientError::Rejected(format!("PREPARE TRANSACTION '{gid}' failed: {e}")))?;
    if let Err(e) = concord
        .register(txn.xid, vec![branch(participant, vec![gid.clone()])])
        .await
    {
        let _ = db
            .batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
            .await;
        return Err(e);
    }
    Ok(gid)
}
