//! Open-ended transactions (SPEC §4): begun without branches, given
//! branches by the application's services as they do their work, then
//! committed or aborted; one that is neither within its lifetime is
//! aborted.
//!
//! Nothing about an open transaction is logged: until its commit nothing
//! was prepared anywhere under this coordinator's direction, so a
//! coordinator that restarts forgets it, and presumed abort answers any
//! question about it with ABORTED, which is what it is.

use concord_api::BranchRequest;
use concord_proto::{Time, TimerKey, TimerKind, Xid, PARTICIPANTS_MAX};
use std::collections::HashMap;

/// The lifetime of an open transaction that asks for none.
pub const LIFETIME_MS_DEFAULT: u64 = 60_000;
/// The longest lifetime one may ask for.
pub const LIFETIME_MS_MAX: u64 = 3_600_000;

/// One open transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenTxn {
    pub opened_at: Time,
    pub lifetime_ms: u64,
    /// As registered, in order (merged per participant at commit).
    pub branches: Vec<BranchRequest>,
}

/// Why a registration was refused (the transaction stays open).
#[derive(Debug, PartialEq, Eq)]
pub enum RegisterError {
    NotOpen,
    TooManyBranches { max: usize },
}

#[derive(Debug, Default)]
pub struct OpenTransactions {
    txns: HashMap<Xid, OpenTxn>,
}

impl OpenTransactions {
    /// Open `xid` now; the timer that ends its lifetime.
    pub fn open(&mut self, now: Time, xid: Xid, lifetime_ms: Option<u64>) -> (u64, TimerKey, Time) {
        let lifetime_ms = lifetime_ms
            .unwrap_or(LIFETIME_MS_DEFAULT)
            .clamp(1, LIFETIME_MS_MAX);
        self.txns.insert(
            xid,
            OpenTxn {
                opened_at: now,
                lifetime_ms,
                branches: Vec::new(),
            },
        );
        (
            lifetime_ms,
            TimerKey::new(xid, TimerKind::Lifetime),
            now.plus_ms(lifetime_ms),
        )
    }

    /// Add `branches` to `xid`; how many it has now.
    pub fn register(
        &mut self,
        xid: Xid,
        branches: Vec<BranchRequest>,
    ) -> Result<usize, RegisterError> {
        let txn = self.txns.get_mut(&xid).ok_or(RegisterError::NotOpen)?;
        if txn.branches.len() + branches.len() > PARTICIPANTS_MAX {
            return Err(RegisterError::TooManyBranches {
                max: PARTICIPANTS_MAX,
            });
        }
        txn.branches.extend(branches);
        Ok(txn.branches.len())
    }

    /// Take `xid` out (to commit or abort it).
    pub fn take(&mut self, xid: Xid) -> Option<OpenTxn> {
        self.txns.remove(&xid)
    }

    /// Put back a transaction whose commit could not start (busy).
    pub fn restore(&mut self, xid: Xid, txn: OpenTxn) {
        self.txns.insert(xid, txn);
    }

    /// Its lifetime timer fired: the transaction, if it is still open and
    /// its lifetime is over.
    pub fn expired(&mut self, now: Time, xid: Xid) -> Option<OpenTxn> {
        let txn = self.txns.get(&xid)?;
        if now < txn.opened_at.plus_ms(txn.lifetime_ms) {
            return None;
        }
        self.txns.remove(&xid)
    }

    pub fn get(&self, xid: Xid) -> Option<&OpenTxn> {
        self.txns.get(&xid)
    }

    /// Every open xid, oldest first.
    pub fn xids(&self) -> Vec<Xid> {
        let mut xids: Vec<(Time, Xid)> = self.txns.iter().map(|(x, t)| (t.opened_at, *x)).collect();
        xids.sort();
        xids.into_iter().map(|(_, x)| x).collect()
    }

    pub fn contains(&self, xid: Xid) -> bool {
        self.txns.contains_key(&xid)
    }

    pub fn len(&self) -> usize {
        self.txns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branch(p: &str) -> BranchRequest {
        BranchRequest {
            participant: p.into(),
            work: Vec::new(),
        }
    }

    #[test]
    fn an_open_transaction_expires_only_once_its_lifetime_is_over() {
        let mut open = OpenTransactions::default();
        let t0 = Time(0);
        let (lifetime, key, at) = open.open(t0, Xid(1), Some(500));
        assert_eq!(
            (lifetime, key.kind, at),
            (500, TimerKind::Lifetime, t0.plus_ms(500))
        );
        assert_eq!(open.register(Xid(1), vec![branch("a")]), Ok(1));
        assert_eq!(open.expired(t0.plus_ms(499), Xid(1)), None);
        let gone = open.expired(t0.plus_ms(500), Xid(1)).expect("expired");
        assert_eq!(gone.branches, vec![branch("a")]);
        assert_eq!(
            open.register(Xid(1), vec![branch("b")]),
            Err(RegisterError::NotOpen)
        );
    }

    #[test]
    fn lifetimes_are_bounded_and_branches_too() {
        let mut open = OpenTransactions::default();
        assert_eq!(open.open(Time(0), Xid(1), None).0, LIFETIME_MS_DEFAULT);
        assert_eq!(
            open.open(Time(0), Xid(2), Some(u64::MAX)).0,
            LIFETIME_MS_MAX
        );
        let many = vec![branch("a"); PARTICIPANTS_MAX + 1];
        assert_eq!(
            open.register(Xid(1), many),
            Err(RegisterError::TooManyBranches {
                max: PARTICIPANTS_MAX
            })
        );
    }
}
