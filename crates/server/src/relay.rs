//! The bare relay: centralized 2PC's message pattern with no protocol and
//! no log, as the transport's ceiling for `concord bench` (its
//! `relay_baseline`).
//!
//! Same processes (one relay coordinator, N relay participants), same
//! connections (clients to the coordinator; the coordinator's outbox to
//! each participant and each participant's outbox back, persistent and
//! coalesced, over the same `concord-net` [`Network`]), and the same
//! frames per transaction, built by the same encoders: the client's
//! `Begin`, `Begun`, one PREPARE per branch (with the participant list,
//! the work and the directory hints a real coordinator sends), one VOTE
//! READY back, one COMMIT each, the `Outcome` once every vote is in, one
//! ACK each. What it leaves out is everything concord adds: no state
//! machine, no timers, no log and no fsync, no resource, no admission.
//! So the gap between a bench run and this one is the price of the
//! protocol and durability on this machine, and absolute numbers here
//! are this machine's, not concord's.

use crate::conn::{self, Inbound, ReplyTx};
use crate::outbox::Outbox;
use crate::wire::{self, BranchRequest, Outcome, PeerBody, PeerEnvelope, PeerHint, Reply, Request};
use anyhow::Context;
use concord_net::{NetConfig, Network};
use concord_proto::{Body, Decision, Message, Vote, Xid};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

/// Which end of the pattern a relay process plays.
#[derive(Clone, Debug)]
pub enum RelayRole {
    /// Answers clients and fans PREPARE and COMMIT out to these
    /// participants, `(name, address)`.
    Coordinator { participants: Vec<(String, String)> },
    /// Answers PREPARE with VOTE READY and COMMIT with ACK.
    Participant,
}

#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub name: String,
    pub listen: String,
    pub role: RelayRole,
    pub net: NetConfig,
}

/// Deadline a relay PREPARE carries: the coordinator's default phase-1
/// timeout, so the frame has the size of a real one.
const DEADLINE_MS: u64 = 1000;

/// Run a relay process until `shutdown` completes.
pub async fn run_relay_until(
    config: RelayConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (network, mut incoming) = conn::serve(&config.listen, 1024, config.net.clone())
        .await
        .with_context(|| format!("relay {} cannot serve", config.name))?;
    let outbox = Outbox::new(network.clone(), &config.name, &config.listen, 1);
    let mut relay = Relay {
        name: config.name.clone(),
        addrs: match &config.role {
            RelayRole::Coordinator { participants } => participants.iter().cloned().collect(),
            RelayRole::Participant => HashMap::new(),
        },
        coordinator: matches!(config.role, RelayRole::Coordinator { .. }),
        outbox,
        network: network.clone(),
        pending: HashMap::new(),
        next_xid: 1,
    };
    tracing::info!(name = %config.name, listen = %config.listen, "relay serving");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            event = incoming.recv() => match event {
                Some(event) => relay.on_inbound(event),
                None => break,
            },
            _ = &mut shutdown => break,
        }
    }
    conn::shutdown(&network).await;
    Ok(())
}

/// One transaction the relay coordinator is relaying.
struct Pending {
    reply: ReplyTx,
    request_id: u64,
    /// Participants, in branch order.
    to: Vec<String>,
    votes_left: usize,
    acks_left: usize,
}

struct Relay {
    name: String,
    /// Participant name → address (the coordinator's only).
    addrs: HashMap<String, String>,
    coordinator: bool,
    outbox: Outbox,
    network: Network,
    pending: HashMap<Xid, Pending>,
    next_xid: u128,
}

impl Relay {
    fn on_inbound(&mut self, event: Inbound) {
        match event {
            Inbound::Request { request, reply } => self.on_request(request, reply),
            Inbound::Peer(envelope) => self.on_peer(envelope),
            // A relay serves no HTTP and has no HTTP participants.
            Inbound::Scrape(_)
            | Inbound::DeliveryFailed(_)
            | Inbound::PgDone { .. }
            | Inbound::ParticipantAnswer { .. } => {}
        }
    }

    fn on_request(&mut self, request: Request, reply: ReplyTx) {
        match request {
            Request::Stats { request_id } => {
                let role = if self.coordinator {
                    "relay coordinator"
                } else {
                    "relay participant"
                };
                let stats = wire::server_stats(
                    role,
                    false,
                    0,
                    concord_store::GroupCommitStats::default(),
                    self.network.stats(),
                );
                reply.send(&Reply::Stats { request_id, stats });
            }
            Request::Begin {
                request_id,
                branches,
                ..
            } if self.coordinator => self.begin(request_id, branches, reply),
            other => reply.error(
                other.request_id(),
                format!(
                    "a relay (benchmark baseline) does not serve {}",
                    other.kind()
                ),
            ),
        }
    }

    fn begin(&mut self, request_id: u64, branches: Vec<BranchRequest>, reply: ReplyTx) {
        let xid = Xid(self.next_xid);
        self.next_xid += 1;
        let names: Vec<String> = branches.iter().map(|b| b.participant.clone()).collect();
        if let Some(unknown) = names.iter().find(|n| !self.addrs.contains_key(*n)) {
            reply.error(request_id, format!("relay: unknown participant {unknown}"));
            return;
        }
        reply.send(&Reply::Begun { request_id, xid });
        for branch in branches {
            let peers: Vec<PeerHint> = names
                .iter()
                .filter(|n| **n != branch.participant)
                .map(|n| PeerHint {
                    id: n.clone(),
                    addr: Arc::from(self.addrs[n].as_str()),
                    incarnation: 1,
                })
                .collect();
            let message = self.message(
                xid,
                Body::Prepare {
                    participants: names.clone(),
                    work: branch.work,
                    deadline_ms: DEADLINE_MS,
                },
            );
            let addr = &self.addrs[&branch.participant];
            self.outbox
                .send(&branch.participant, addr, &message, &peers);
        }
        let n = names.len();
        self.pending.insert(
            xid,
            Pending {
                reply,
                request_id,
                to: names,
                votes_left: n,
                acks_left: n,
            },
        );
    }

    fn on_peer(&mut self, envelope: PeerEnvelope) {
        let PeerBody::Message(message) = envelope.body else {
            return; // a relay says no hellos
        };
        let xid = message.xid;
        match message.body {
            // Participant side: answer on the sender's own address.
            Body::Prepare { .. } => {
                let vote = self.message(xid, Body::Vote(Vote::Ready));
                self.outbox
                    .send(&envelope.from, &envelope.reply_to, &vote, &[]);
            }
            Body::Decision(Decision::Commit) => {
                let ack = self.message(xid, Body::Ack);
                self.outbox
                    .send(&envelope.from, &envelope.reply_to, &ack, &[]);
            }
            // Coordinator side.
            Body::Vote(Vote::Ready) => {
                let Some(p) = self.pending.get_mut(&xid) else {
                    return;
                };
                p.votes_left = p.votes_left.saturating_sub(1);
                if p.votes_left > 0 {
                    return;
                }
                let commit = self.message(xid, Body::Decision(Decision::Commit));
                let p = &self.pending[&xid];
                for name in &p.to {
                    self.outbox.send(name, &self.addrs[name], &commit, &[]);
                }
                p.reply.send(&Reply::Outcome {
                    request_id: p.request_id,
                    xid,
                    outcome: Outcome::Committed,
                });
            }
            Body::Ack => {
                if let Some(p) = self.pending.get_mut(&xid) {
                    p.acks_left = p.acks_left.saturating_sub(1);
                    if p.acks_left == 0 {
                        self.pending.remove(&xid);
                    }
                }
            }
            _ => {}
        }
    }

    fn message(&self, xid: Xid, body: Body) -> Message {
        Message {
            xid,
            epoch: 1,
            from: self.name.clone(),
            body,
        }
    }
}
