//! PostgreSQL global transaction ids (gids) as concord makes them.
//!
//! `cc1:<coordinator>:<participant>:<xid>:<branch>:<hold_s>`
//!
//! - `coordinator`: the coordinator's `--name`, which decides the xid;
//! - `participant`: the `concord pg-participant --name` that resolves it.
//!   Only that participant ever commits or rolls it back; any other
//!   process reports it and leaves it alone;
//! - `xid`: the global transaction, 32 hex digits;
//! - `branch`: the application's label for its branch (`sql` for the
//!   statements a branch ships, which the participant prepares itself);
//! - `hold_s`: how long after `PREPARE TRANSACTION` (by the database's
//!   clock) the branch may wait for its PREPARE from the coordinator.
//!   Past that, a gid with no READY record is an orphan, rolled back under
//!   presumed abort. The participant's own gids have 0: they are prepared
//!   only while the PREPARE is being answered, so one without a READY
//!   record was left by a crash and can never have voted.
//!
//! The parts use `[A-Za-z0-9._-]` only, so a gid is safe inside the SQL
//! literal of `COMMIT PREPARED '…'` (which takes no bind parameters) and
//! splits back unambiguously. PostgreSQL allows 199 bytes.

use concord_proto::Xid;
use std::fmt;

/// The version tag every concord gid starts with.
pub const GID_TAG: &str = "cc1";
/// PostgreSQL's limit (GIDSIZE is 200 with the terminating NUL).
pub const GID_BYTES_MAX: usize = 199;
/// Longest coordinator or participant name in a gid.
pub const GID_NAME_BYTES_MAX: usize = 64;
/// Longest branch label.
pub const GID_BRANCH_BYTES_MAX: usize = 32;
/// The branch label of shipped statements.
pub const SHIPPED_BRANCH: &str = "sql";
/// Longest hold an application may ask for (a day).
pub const GID_HOLD_S_MAX: u64 = 86_400;

/// A concord gid, split into its parts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Gid {
    pub coordinator: String,
    pub participant: String,
    pub xid: Xid,
    pub branch: String,
    pub hold_s: u64,
}

impl Gid {
    /// A gid from its parts, or why they cannot make one.
    pub fn new(
        coordinator: &str,
        participant: &str,
        xid: Xid,
        branch: &str,
        hold_s: u64,
    ) -> Result<Gid, String> {
        check_part("coordinator name", coordinator, GID_NAME_BYTES_MAX)?;
        check_part("participant name", participant, GID_NAME_BYTES_MAX)?;
        check_part("branch label", branch, GID_BRANCH_BYTES_MAX)?;
        if hold_s > GID_HOLD_S_MAX {
            return Err(format!(
                "a gid's hold is at most {GID_HOLD_S_MAX} s, got {hold_s}"
            ));
        }
        let gid = Gid {
            coordinator: coordinator.to_string(),
            participant: participant.to_string(),
            xid,
            branch: branch.to_string(),
            hold_s,
        };
        let len = gid.to_string().len();
        if len > GID_BYTES_MAX {
            return Err(format!(
                "the gid would be {len} bytes, above PostgreSQL's {GID_BYTES_MAX}: use shorter \
                 names"
            ));
        }
        Ok(gid)
    }

    /// The gid of the statements a branch ships, which the participant
    /// prepares itself (hold 0: see the module comment).
    pub fn shipped(coordinator: &str, participant: &str, xid: Xid) -> Result<Gid, String> {
        Gid::new(coordinator, participant, xid, SHIPPED_BRANCH, 0)
    }

    /// A concord gid, or `None` for any other text (a foreign tool's gid).
    pub fn parse(text: &str) -> Option<Gid> {
        let mut parts = text.split(':');
        if parts.next()? != GID_TAG {
            return None;
        }
        let coordinator = parts.next()?;
        let participant = parts.next()?;
        let xid = parts.next()?;
        let branch = parts.next()?;
        let hold_s = parts.next()?;
        if parts.next().is_some() || xid.len() != 32 {
            return None;
        }
        let gid = Gid::new(
            coordinator,
            participant,
            xid.parse().ok()?,
            branch,
            hold_s.parse().ok()?,
        )
        .ok()?;
        // Only the canonical spelling: the text must be what we would write.
        (gid.to_string() == text).then_some(gid)
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{GID_TAG}:{}:{}:{}:{}:{}",
            self.coordinator, self.participant, self.xid, self.branch, self.hold_s
        )
    }
}

fn check_part(what: &str, part: &str, bytes_max: usize) -> Result<(), String> {
    if part.is_empty() || part.len() > bytes_max {
        return Err(format!(
            "a gid's {what} must be 1 to {bytes_max} bytes, got {:?}",
            part
        ));
    }
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "a gid's {what} may hold only A-Z a-z 0-9 . _ -, and {part:?} has {c:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gid_round_trips_and_fits_postgres() {
        let gid = Gid::new("coord-1", "pg.orders", Xid(0xabc), "b1", 90).unwrap();
        let text = gid.to_string();
        assert_eq!(
            text,
            "cc1:coord-1:pg.orders:00000000000000000000000000000abc:b1:90"
        );
        assert_eq!(Gid::parse(&text), Some(gid));
        let long = "x".repeat(GID_NAME_BYTES_MAX);
        let gid = Gid::new(&long, &long, Xid(u128::MAX), "b", 1).unwrap();
        assert!(gid.to_string().len() <= GID_BYTES_MAX);
    }

    #[test]
    fn what_is_not_a_concord_gid_is_foreign() {
        for text in [
            "",
            "pgbench-1",
            "cc1:a:b:c:d:e",
            "cc1:a:b:00000000000000000000000000000abc:b1",
            "cc1:a:b:00000000000000000000000000000abc:b1:x",
            "cc1:a:b:00000000000000000000000000000abc:b1:1:extra",
            "cc1:a:b:00000000000000000000000000000ABC:b1:1",
            "cc1:a:b:00000000000000000000000000000abc:b1:01",
            "cc2:a:b:00000000000000000000000000000abc:b1:1",
        ] {
            assert_eq!(Gid::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn parts_that_could_break_the_sql_literal_are_refused() {
        let err = Gid::new("co'ord", "p", Xid(1), "b", 1).unwrap_err();
        assert!(err.contains("may hold only"), "{err}");
        assert!(Gid::new("c", "p", Xid(1), "a:b", 1).is_err());
        assert!(Gid::new("c", "p", Xid(1), "", 1).is_err());
        assert!(Gid::new("c", "p", Xid(1), "b", GID_HOLD_S_MAX + 1).is_err());
    }
}
