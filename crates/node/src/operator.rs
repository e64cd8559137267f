//! Operator actions and their audit trail (SPEC §8), the coordinator
//! node's part: the checks every action passes before anything happens
//! (the operator token, the typed-out xid, who and why), the numbering,
//! and the two forced audit records of each action, one before it is
//! carried out and one with its result, so that no action goes
//! unrecorded even across a crash.
//!
//! Whether an action is needed at all is the caller's to judge (it knows
//! the transaction), and a heuristic decision is the participant's to
//! accept (it knows whether its branch is in doubt): this module only
//! holds what is common to every action.

use crate::hello::NODE_TICKETS_FROM;
use concord_api::{OperatorRequest, Refusal};
use concord_proto::gate::Gate;
use concord_proto::{AuditRecord, AuditResult, CoordinatorRecord, PersistTicket};
use std::collections::BTreeMap;

/// Tickets of the audit records: a range of the node's own, above the
/// welcomes' (see [`NODE_TICKETS_FROM`]).
pub const AUDIT_TICKETS_FROM: u64 = NODE_TICKETS_FROM | (1 << 62);

/// Whether `ticket` is an audit record's.
pub fn is_audit_ticket(ticket: PersistTicket) -> bool {
    ticket.0 >= AUDIT_TICKETS_FROM
}

/// Longest `operator` and `reason` kept (they go into the log).
pub const OPERATOR_TEXT_MAX: usize = 500;

/// What a durable audit record lets happen next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditStep {
    /// The first record of action `seq` is durable: carry it out.
    Act(u64),
    /// Its result is durable: answer the operator.
    Answer(u64),
}

/// The audit trail and the actions under way.
#[derive(Debug)]
pub struct Operators {
    /// `None`: read-only (no `--operator-token-file`).
    token: Option<String>,
    /// Every action, by number: the latest record of each.
    entries: BTreeMap<u64, AuditRecord>,
    next_seq: u64,
    gate: Gate<AuditStep>,
}

impl Operators {
    /// The trail as the log holds it (`records` in log order).
    pub fn recover<'a>(
        token: Option<String>,
        records: impl IntoIterator<Item = &'a CoordinatorRecord>,
    ) -> Operators {
        let mut entries = BTreeMap::new();
        for record in records {
            if let CoordinatorRecord::Audit(entry) = record {
                // The second record of an action replaces its first.
                entries.insert(entry.seq, entry.clone());
            }
        }
        let next_seq = entries.keys().next_back().map_or(1, |s| s + 1);
        Operators {
            token,
            entries,
            next_seq,
            gate: Gate::starting_at(AUDIT_TICKETS_FROM),
        }
    }

    /// Whether operator actions are allowed at all.
    pub fn writable(&self) -> bool {
        self.token.is_some()
    }

    /// The checks every action passes: the token, the confirmation, who
    /// and why. Nothing is recorded for a refused action.
    pub fn check(&self, request: &OperatorRequest) -> Result<(), (Refusal, String)> {
        let Some(token) = &self.token else {
            return Err((
                Refusal::ReadOnly,
                "this coordinator is read-only: it was started without --operator-token-file, \
                 so it takes no operator actions"
                    .into(),
            ));
        };
        if !constant_time_eq(request.token.as_bytes(), token.as_bytes()) {
            return Err((
                Refusal::BadToken,
                "the operator token is missing or wrong (it is the coordinator's \
                 --operator-token-file)"
                    .into(),
            ));
        }
        let xid = request.xid.to_string();
        if request.confirm.trim().to_ascii_lowercase() != xid {
            return Err((
                Refusal::BadRequest,
                format!(
                    "the confirmation must be the transaction's xid typed out in full ({xid}); \
                     it was {:?}",
                    request.confirm
                ),
            ));
        }
        for (field, text) in [("operator", &request.operator), ("reason", &request.reason)] {
            if text.trim().is_empty() {
                return Err((
                    Refusal::BadRequest,
                    format!("{field}: say who and why; the audit trail keeps both"),
                ));
            }
            if text.len() > OPERATOR_TEXT_MAX {
                return Err((
                    Refusal::BadRequest,
                    format!("{field}: at most {OPERATOR_TEXT_MAX} bytes"),
                ));
            }
        }
        Ok(())
    }

    /// Number a checked action and return its first audit record, to be
    /// forced with the returned ticket (`AuditStep::Act` once durable).
    pub fn start(&mut self, request: &OperatorRequest) -> (CoordinatorRecord, PersistTicket) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = AuditRecord {
            seq,
            at_unix_ms: request.at_unix_ms,
            operator: request.operator.trim().to_string(),
            reason: request.reason.trim().to_string(),
            xid: request.xid,
            action: request.action.clone(),
            result: None,
        };
        self.entries.insert(seq, entry.clone());
        let ticket = self.gate.park(AuditStep::Act(seq));
        (CoordinatorRecord::Audit(entry), ticket)
    }

    /// Action `seq` did `result`: its second audit record, to be forced
    /// with the returned ticket (`AuditStep::Answer` once durable).
    pub fn finish(
        &mut self,
        seq: u64,
        result: AuditResult,
    ) -> Option<(CoordinatorRecord, PersistTicket)> {
        let entry = self.entries.get_mut(&seq)?;
        entry.result = Some(result);
        let record = CoordinatorRecord::Audit(entry.clone());
        Some((record, self.gate.park(AuditStep::Answer(seq))))
    }

    /// What the audit record with `ticket` lets happen.
    pub fn durable(&mut self, ticket: PersistTicket) -> Option<AuditStep> {
        self.gate.release(ticket)
    }

    pub fn entry(&self, seq: u64) -> Option<&AuditRecord> {
        self.entries.get(&seq)
    }

    /// The whole trail, oldest first.
    pub fn entries(&self) -> Vec<AuditRecord> {
        self.entries.values().cloned().collect()
    }

    /// The trail as records for a compacted log: the audit trail is never
    /// dropped.
    pub fn snapshot_records(&self) -> impl Iterator<Item = CoordinatorRecord> + '_ {
        self.entries.values().cloned().map(CoordinatorRecord::Audit)
    }
}

/// Compare without a timing leak of how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::{AuditAction, Decision, Xid};

    fn request(token: &str, confirm: &str) -> OperatorRequest {
        OperatorRequest {
            xid: Xid(0xabc),
            action: AuditAction::RetryNow,
            confirm: confirm.into(),
            operator: "alice".into(),
            reason: "bank-b is back".into(),
            token: token.into(),
            at_unix_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn read_only_without_a_token_and_refuses_a_wrong_one() {
        let xid = Xid(0xabc).to_string();
        let none = Operators::recover(None, []);
        assert_eq!(
            none.check(&request("t", &xid)).unwrap_err().0,
            Refusal::ReadOnly
        );
        let ops = Operators::recover(Some("secret".into()), []);
        assert_eq!(
            ops.check(&request("secreT", &xid)).unwrap_err().0,
            Refusal::BadToken
        );
        assert_eq!(
            ops.check(&request("", &xid)).unwrap_err().0,
            Refusal::BadToken
        );
        assert!(ops.check(&request("secret", &xid)).is_ok());
        // The token never reaches a log line through Debug.
        assert!(!format!("{:?}", request("secret", &xid)).contains("secret"));
    }

    #[test]
    fn the_confirmation_is_the_whole_xid() {
        let ops = Operators::recover(Some("s".into()), []);
        let xid = Xid(0xabc).to_string();
        for wrong in ["abc", "", &xid[1..], "yes"] {
            let (refusal, message) = ops.check(&request("s", wrong)).unwrap_err();
            assert_eq!(refusal, Refusal::BadRequest);
            assert!(message.contains(&xid), "{message}");
        }
        assert!(ops.check(&request("s", &xid.to_uppercase())).is_ok());
        let mut anonymous = request("s", &xid);
        anonymous.operator = " ".into();
        assert!(ops.check(&anonymous).unwrap_err().1.contains("operator"));
    }

    #[test]
    fn two_records_per_action_and_the_trail_survives_recovery() {
        let mut ops = Operators::recover(Some("s".into()), []);
        let mut log = Vec::new();
        let (first, ticket) = ops.start(&request("s", "x"));
        log.push(first);
        assert_eq!(ops.durable(ticket), Some(AuditStep::Act(1)));
        let result = AuditResult {
            ok: true,
            detail: "COMMIT sent again to bank-b".into(),
        };
        let (second, ticket) = ops.finish(1, result.clone()).unwrap();
        log.push(second);
        assert_eq!(ops.durable(ticket), Some(AuditStep::Answer(1)));
        // A second action that never got its result (a crash).
        let mut heuristic = request("s", "x");
        heuristic.action = AuditAction::Heuristic {
            participant: "bank-a".into(),
            decision: Decision::Abort,
        };
        log.push(ops.start(&heuristic).0);
        let again = Operators::recover(Some("s".into()), &log);
        let entries = again.entries();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].result, Some(result));
        assert_eq!(entries[1].result, None);
        assert_eq!(again.next_seq, 3);
        assert_eq!(again.snapshot_records().count(), 2);
    }
}
