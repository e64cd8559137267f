//! Idempotency keys of begin requests (SPEC §4: "a retry after a reset
//! never runs a second transaction"). A client that lost its connection
//! after sending a begin sends it again with the same key and is joined to
//! the transaction the first one started (its xid, then its outcome)
//! instead of starting another.
//!
//! Kept in memory for as many keys as the node keeps recent outcomes,
//! oldest forgotten first: a coordinator restart forgets them (the xid
//! was printed to the client before anything could go wrong, so a client
//! that retries across a restart can ask `status` first). A key reused for
//! a different request is refused, so a client bug cannot be answered
//! with someone else's outcome.

use concord_api::BranchRequest;
use concord_proto::{Shape, Xid};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// Longest key accepted.
pub const KEY_BYTES_MAX: usize = 255;

/// What a begin's key says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Never seen (or forgotten): begin it.
    New,
    /// The same request began `Xid` already: join it.
    Same(Xid),
    /// The key began `Xid` with a different request: refuse.
    Different(Xid),
}

/// Keys of recent begins, bounded.
#[derive(Debug)]
pub struct IdempotencyKeys {
    by_key: HashMap<String, (Xid, u64)>,
    order: VecDeque<String>,
    max: usize,
}

impl IdempotencyKeys {
    pub fn new(max: usize) -> IdempotencyKeys {
        IdempotencyKeys {
            by_key: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    pub fn check(&self, key: &str, fingerprint: u64) -> Seen {
        match self.by_key.get(key) {
            None => Seen::New,
            Some((xid, f)) if *f == fingerprint => Seen::Same(*xid),
            Some((xid, _)) => Seen::Different(*xid),
        }
    }

    pub fn remember(&mut self, key: String, xid: Xid, fingerprint: u64) {
        if self
            .by_key
            .insert(key.clone(), (xid, fingerprint))
            .is_none()
        {
            self.order.push_back(key);
        }
        while self.order.len() > self.max {
            if let Some(old) = self.order.pop_front() {
                self.by_key.remove(&old);
            }
        }
    }
}

/// What must match for a retry to be the same request: the branches, the
/// shape and the tree. (std's `DefaultHasher` has fixed keys: the same in
/// every process and in the simulator.)
pub fn fingerprint(branches: &[BranchRequest], shape: Shape, parents: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for b in branches {
        b.participant.hash(&mut h);
        b.work.hash(&mut h);
    }
    shape.hash(&mut h);
    parents.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branch(p: &str, w: &[u8]) -> BranchRequest {
        BranchRequest {
            participant: p.into(),
            work: w.to_vec(),
        }
    }

    #[test]
    fn a_key_joins_the_same_request_and_refuses_another() {
        let mut keys = IdempotencyKeys::new(2);
        let f = fingerprint(&[branch("a", b"1")], Shape::Centralized, &[]);
        let g = fingerprint(&[branch("a", b"2")], Shape::Centralized, &[]);
        assert_ne!(f, g);
        assert_eq!(keys.check("k", f), Seen::New);
        keys.remember("k".into(), Xid(7), f);
        assert_eq!(keys.check("k", f), Seen::Same(Xid(7)));
        assert_eq!(keys.check("k", g), Seen::Different(Xid(7)));
        // Bounded: the oldest key goes first.
        keys.remember("l".into(), Xid(8), f);
        keys.remember("m".into(), Xid(9), f);
        assert_eq!(keys.check("k", f), Seen::New);
        assert_eq!(keys.check("m", f), Seen::Same(Xid(9)));
    }
}
