//! The coordinator node's operator actions (SPEC §8): retry now, and a
//! heuristic decision of one branch. Each is checked ([`Operators`] for
//! the token and confirmation, here for whether the protocol really
//! cannot finish it by itself), recorded (forced) before it is carried
//! out, and recorded again with its result before the operator hears it.
//!
//! A heuristic decision is carried out by the participant, which refuses
//! it unless its branch is in doubt and overdue; the driver carries the
//! request there ([`CoordinatorNodeAction::AskParticipant`]) and brings
//! the answer back (`on_participant_answer`). Operators find such
//! branches the same way: a participant's branches in doubt
//! (`Request::InDoubtAt`) include those of coordinators that are gone.

use super::{ClientId, CoordinatorEvent, CoordinatorNode, CoordinatorNodeAction, ParticipantAsk};
use crate::operator::AuditStep;
use concord_api::{OperatorRequest, Refusal, Reply};
use concord_proto::NodeId;
use concord_proto::{
    AuditAction, AuditResult, CoordinatorPhase, Decision, Durability, PersistTicket, Time,
};

/// What a question to a participant was for.
#[derive(Debug)]
pub(super) enum Asking {
    /// The heuristic decision of operator action `seq`.
    Heuristic { seq: u64, to: NodeId },
    /// `Request::InDoubtAt` from this client.
    InDoubt { client: ClientId, request_id: u64 },
}

impl CoordinatorNode {
    /// `Request::Operator`: refused at once (nothing recorded), or
    /// recorded and then carried out.
    pub(super) fn operator_request(
        &mut self,
        now: Time,
        client: ClientId,
        request_id: u64,
        mut request: OperatorRequest,
    ) {
        // A branch named by its participant's address is recorded (and
        // asked) under the participant's id.
        if let AuditAction::Heuristic { participant, .. } = &mut request.action {
            if let Ok(id) = self.directory.resolve(participant) {
                *participant = id;
            }
        }
        let checked = self
            .operators
            .check(&request)
            .and_then(|()| self.operator_needed(now, &request));
        if let Err((refusal, message)) = checked {
            self.push_event(CoordinatorEvent::OperatorRefused {
                xid: request.xid,
                action: request.action.describe(),
                operator: request.operator.clone(),
                why: message.clone(),
            });
            let reply = Reply::Refused {
                request_id,
                refusal,
                message,
            };
            return self.reply(client, reply);
        }
        let (record, ticket) = self.operators.start(&request);
        if let concord_proto::CoordinatorRecord::Audit(entry) = &record {
            self.operator_clients
                .insert(entry.seq, (client, request_id));
        }
        self.persist_audit(record, ticket);
    }

    /// Whether the protocol needs an operator for `request`: never for a
    /// transaction it is still deciding or will deliver by itself.
    fn operator_needed(
        &self,
        now: Time,
        request: &OperatorRequest,
    ) -> Result<(), (Refusal, String)> {
        let xid = request.xid;
        let phase = self.core.status(now, xid).map(|s| s.phase);
        let not_needed = |why: String| Err((Refusal::NotNeeded, why));
        match &request.action {
            AuditAction::RetryNow => match (phase, self.core.retry_refusal(xid)) {
                (_, None) => Ok(()),
                (None, Some(why)) => Err((Refusal::NotFound, why)),
                (Some(_), Some(why)) => not_needed(why),
            },
            AuditAction::Heuristic {
                participant,
                decision,
            } => {
                let known = self.directory.resolve(participant).is_ok();
                if !known {
                    return Err((
                        Refusal::NotFound,
                        format!("{participant} is not a participant this coordinator knows"),
                    ));
                }
                if self.http.contains(participant.as_str()) {
                    return Err((
                        Refusal::BadRequest,
                        format!(
                            "{participant} is an HTTP service: its branches are the service's \
                             to decide (concord cannot reach into it)"
                        ),
                    ));
                }
                match phase {
                    Some(CoordinatorPhase::Committed | CoordinatorPhase::Committing) => {
                        return not_needed(format!(
                            "this coordinator decided COMMIT for {xid}: it delivers it to \
                             {participant} by itself, for as long as it takes (retry now sends \
                             it at once)"
                        ))
                    }
                    Some(CoordinatorPhase::Wait) => {
                        return not_needed(format!(
                            "{xid} is not decided yet: this coordinator decides it within its \
                             phase-1 timeout"
                        ))
                    }
                    Some(CoordinatorPhase::Delegated) => {
                        return not_needed(format!(
                            "{xid} is a one-phase (or linear) commit: its last branch decides \
                             it, and is never in doubt"
                        ))
                    }
                    None => {}
                }
                // What this coordinator remembers deciding: a contrary
                // heuristic decision would break atomicity for certain.
                match self.recent.get(xid).map(|t| t.decision) {
                    Some(done) if done != *decision => not_needed(format!(
                        "this coordinator decided {} for {xid}: a heuristic {} would make its \
                         branches disagree; the branch learns the decision when it asks",
                        decision_name(done),
                        decision_name(*decision).to_lowercase(),
                    )),
                    _ => Ok(()),
                }
            }
        }
    }

    fn persist_audit(&mut self, record: concord_proto::CoordinatorRecord, ticket: PersistTicket) {
        self.compaction.appended(1);
        self.actions.push(CoordinatorNodeAction::Persist {
            record,
            durability: Durability::Forced(ticket),
        });
    }

    /// An audit record is durable: carry the action out, or answer.
    pub(super) fn on_audit_durable(&mut self, now: Time, ticket: PersistTicket) {
        match self.operators.durable(ticket) {
            Some(AuditStep::Act(seq)) => self.operator_act(now, seq),
            Some(AuditStep::Answer(seq)) => {
                let Some(entry) = self.operators.entry(seq).cloned() else {
                    return;
                };
                self.push_event(CoordinatorEvent::OperatorAction {
                    entry: entry.clone(),
                });
                if let Some((client, request_id)) = self.operator_clients.remove(&seq) {
                    self.reply(client, Reply::Operator { request_id, entry });
                }
            }
            None => {}
        }
    }

    fn operator_act(&mut self, now: Time, seq: u64) {
        let Some(entry) = self.operators.entry(seq).cloned() else {
            return;
        };
        match entry.action {
            AuditAction::RetryNow => {
                let result = match self.core.retry_now(now, entry.xid) {
                    Ok(asked) => {
                        let names: Vec<String> = asked
                            .iter()
                            .map(|p| self.directory.display_name(p))
                            .collect();
                        AuditResult {
                            ok: true,
                            detail: format!("sent again now to {}", names.join(", ")),
                        }
                    }
                    // It changed between the check and the record.
                    Err(why) => AuditResult {
                        ok: false,
                        detail: why,
                    },
                };
                self.pump(now);
                self.operator_done(seq, result);
            }
            AuditAction::Heuristic {
                participant,
                decision,
            } => {
                let Some(addr) = self.directory.addr_of(&participant) else {
                    let detail = format!("{participant} has no known address");
                    return self.operator_done(seq, AuditResult { ok: false, detail });
                };
                let ask = ParticipantAsk::Heuristic {
                    xid: entry.xid,
                    decision,
                    audit: format!("{}#{seq}", self.id),
                };
                let addr = addr.to_string();
                let asking = Asking::Heuristic {
                    seq,
                    to: participant.clone(),
                };
                self.ask_participant(participant, addr, ask, asking);
            }
        }
    }

    /// `Request::InDoubtAt`: ask the participant (a concord node).
    pub(super) fn in_doubt_at(&mut self, client: ClientId, request_id: u64, participant: &str) {
        let found = self.directory.resolve(participant).and_then(|id| {
            if self.http.contains(&id) {
                return Err(format!(
                    "{id} is an HTTP service: concord cannot see into its branches"
                ));
            }
            match self.directory.addr_of(&id) {
                Some(addr) => Ok((id.clone(), addr.to_string())),
                None => Err(format!("{id} has no known address")),
            }
        });
        match found {
            Ok((id, addr)) => {
                let asking = Asking::InDoubt { client, request_id };
                self.ask_participant(id, addr, ParticipantAsk::InDoubt, asking);
            }
            Err(message) => self.reply(
                client,
                Reply::Refused {
                    request_id,
                    refusal: Refusal::NotFound,
                    message,
                },
            ),
        }
    }

    fn ask_participant(&mut self, to: NodeId, addr: String, ask: ParticipantAsk, asking: Asking) {
        let id = self.next_ask;
        self.next_ask += 1;
        self.asks.insert(id, asking);
        self.actions
            .push(CoordinatorNodeAction::AskParticipant { id, to, addr, ask });
    }

    /// A participant's reply to the question `id` (an
    /// `AskParticipant`), or why it could not be asked.
    pub fn on_participant_answer(&mut self, now: Time, id: u64, answer: Result<Reply, String>) {
        self.now = now;
        match self.asks.remove(&id) {
            Some(Asking::Heuristic { seq, to }) => {
                let result = match answer {
                    Ok(Reply::Heuristic { decision, .. }) => AuditResult {
                        ok: true,
                        detail: format!(
                            "{to} carried out {} on its branch: its heuristic record is \
                             durable and its resource applied it",
                            decision_name(decision)
                        ),
                    },
                    Ok(Reply::Refused { message, .. }) => AuditResult {
                        ok: false,
                        detail: format!("{to} refused: {message}"),
                    },
                    Ok(other) => AuditResult {
                        ok: false,
                        detail: format!("{to} answered {}", other_kind(&other)),
                    },
                    Err(why) => AuditResult {
                        ok: false,
                        detail: why,
                    },
                };
                self.operator_done(seq, result);
            }
            Some(Asking::InDoubt { client, request_id }) => {
                let reply = match answer {
                    Ok(Reply::InDoubt {
                        participant,
                        branches,
                        ..
                    }) => Reply::InDoubt {
                        request_id,
                        participant,
                        branches,
                    },
                    Ok(Reply::Error { message, .. }) => Reply::Error {
                        request_id,
                        message,
                    },
                    Ok(other) => Reply::Error {
                        request_id,
                        message: format!("the participant answered {}", other_kind(&other)),
                    },
                    Err(why) => Reply::Refused {
                        request_id,
                        refusal: Refusal::Unreachable,
                        message: why,
                    },
                };
                self.reply(client, reply);
            }
            None => {}
        }
    }

    fn operator_done(&mut self, seq: u64, result: AuditResult) {
        if let Some((record, ticket)) = self.operators.finish(seq, result) {
            self.persist_audit(record, ticket);
        }
    }
}

/// A reply's kind, for an unexpected one.
fn other_kind(reply: &Reply) -> String {
    format!("{reply:?}").chars().take(80).collect()
}

fn decision_name(decision: Decision) -> &'static str {
    match decision {
        Decision::Commit => "COMMIT",
        Decision::Abort => "ABORT",
    }
}
