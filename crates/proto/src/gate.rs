//! Persist-then-send by construction.
//!
//! A state machine that needs a forced write before it may go on (send a
//! READY vote, send COMMIT, send an ACK) asks for the write with a fresh
//! [`PersistTicket`] and parks *what to resume* here under that ticket. The
//! messages that depend on the write are produced only by the resume step,
//! which runs only from `on_durable(ticket)`. A driver therefore cannot send a
//! READY vote or a COMMIT decision early, whatever order it runs actions in.

use std::collections::HashMap;

/// Names one requested forced write; the driver hands it back once the
/// record is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PersistTicket(pub u64);

/// How a requested write must reach the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync before reporting `on_durable(ticket)`.
    Forced(PersistTicket),
    /// Append without waiting for a sync; may be lost in a crash, which
    /// the protocol tolerates (presumed abort, END records).
    Lazy,
}

#[derive(Debug)]
pub struct Gate<T> {
    next: u64,
    parked: HashMap<PersistTicket, T>,
}

impl<T> Default for Gate<T> {
    fn default() -> Self {
        Gate {
            next: 1,
            parked: HashMap::new(),
        }
    }
}

impl<T> Gate<T> {
    /// A gate whose tickets start at `first`: a layer above a core keeps
    /// its own forced writes apart from the core's with a range of its own.
    pub fn starting_at(first: u64) -> Gate<T> {
        Gate {
            next: first,
            parked: HashMap::new(),
        }
    }

    /// A new ticket with `resume` parked behind it.
    pub fn park(&mut self, resume: T) -> PersistTicket {
        let ticket = PersistTicket(self.next);
        self.next += 1;
        self.parked.insert(ticket, resume);
        ticket
    }

    /// What was parked behind `ticket`; `None` for an unknown or already
    /// released ticket, so a duplicate durable report is harmless.
    pub fn release(&mut self, ticket: PersistTicket) -> Option<T> {
        self.parked.remove(&ticket)
    }

    /// How many forced writes are still waiting to become durable.
    pub fn pending(&self) -> usize {
        self.parked.len()
    }
}
