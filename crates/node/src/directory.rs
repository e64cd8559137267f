//! The directory: node ids (the stable names the protocol uses) ↔ the
//! addresses where those nodes can be reached now, and branch resolution
//! (a client names participants; the core takes one branch per participant
//! id, so branches naming the same participant are merged here).
//!
//! Addresses come from configuration (the coordinator's `--participant
//! NAME=ADDR`) and are learnt from every peer frame (its `reply_to`), so a
//! node that restarted on another address is found again as soon as it has
//! sent anything, a hello included. Every frame carries its sender's
//! incarnation: an address heard from a later life replaces one from an
//! earlier life, never the other way round (a frame delayed in the network
//! from before a restart must not send us back to an address the node has
//! left); within one life the latest heard wins.

use concord_api::{BranchRequest, PeerBody, PeerEnvelope, PeerHint};
use concord_participant::kv::merge_works;
use concord_proto::mutant::{self, Mutant};
use concord_proto::{Body, Message, NodeId, Xid};
use std::collections::HashMap;
use std::sync::Arc;

/// An address as the directory hands it out: shared, so that routing a
/// message (every send) copies a pointer, not the string.
pub type Addr = Arc<str>;

/// Most ids a directory learns beyond its configured ones: any peer can
/// send a frame with any id, so what is learnt must be bounded.
pub const LEARNT_MAX: usize = 4096;

/// What learning one frame's sender changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Learnt {
    /// Already known at this address.
    Same,
    /// First heard of (or learnt again after the bound was reached).
    New,
    /// Known at another address before: it moved.
    Moved { from: String },
    /// Not learnt: the frame is from an earlier life than the address
    /// known (a frame delayed from before a restart).
    Stale,
    /// Not learnt: the directory is full of learnt ids.
    Full,
}

/// What a node's directory noticed, for logs, metrics and timelines (the
/// same for both nodes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectoryEvent {
    /// A peer was heard from at another address than before: it is reached
    /// there from now on.
    PeerMoved {
        id: NodeId,
        from: String,
        to: String,
    },
    /// A message for a node whose address is unknown was not sent (timers
    /// resend what matters).
    NoAddress {
        to: NodeId,
        xid: Xid,
        kind: &'static str,
    },
    /// A frame whose sender id differs from its message's `from`: dropped.
    Misaddressed {
        from: NodeId,
        claimed: NodeId,
        xid: Xid,
    },
}

/// A peer frame, opened: what learning its sender changed, and its message
/// if the core should see one.
pub struct Opened {
    pub from: NodeId,
    pub addr: String,
    pub incarnation: u64,
    pub learnt: Learnt,
    pub message: Option<Message>,
    /// The frame was a hello: answer it with a welcome (to `addr`).
    pub hello: bool,
    /// The frame was a welcome: its sender has our address durably.
    pub welcome: bool,
    pub event: Option<DirectoryEvent>,
    /// Nodes the frame's hints told of that are new here or moved: a
    /// participant keeps them in its log.
    pub hinted: Vec<NodeId>,
}

/// Node ids ↔ addresses.
pub struct Directory {
    /// Configured participants' ids, in configured order.
    configured: Vec<NodeId>,
    /// Address and the incarnation it was heard from (0: configured).
    addrs: HashMap<NodeId, (Addr, u64)>,
}

impl Directory {
    /// A directory of configured `(id, address)` pairs.
    pub fn new(configured: &[(NodeId, String)]) -> Directory {
        Directory {
            configured: configured.iter().map(|(id, _)| id.clone()).collect(),
            addrs: configured
                .iter()
                .map(|(id, addr)| (id.clone(), (Addr::from(addr.as_str()), 0)))
                .collect(),
        }
    }

    /// A configured participant's id from its id or its address as the
    /// client gave it.
    pub fn resolve(&self, participant: &str) -> Result<NodeId, String> {
        if self.configured.iter().any(|id| id == participant) {
            return Ok(participant.to_string());
        }
        if let Some(id) = self
            .configured
            .iter()
            .find(|id| self.addr_of(id) == Some(participant))
        {
            return Ok(id.clone());
        }
        Err(format!(
            "unknown participant {participant} (known: {})",
            self.configured.join(", ")
        ))
    }

    /// Where `id` can be reached now, if known.
    pub fn addr_of(&self, id: &str) -> Option<&str> {
        self.addrs.get(id).map(|(addr, _)| &**addr)
    }

    /// Where `id` is and the incarnation that address was heard from, in
    /// one lookup (a PREPARE's hints need both for every participant).
    pub fn entry(&self, id: &str) -> Option<(Addr, u64)> {
        self.addrs.get(id).map(|(addr, life)| (addr.clone(), *life))
    }

    /// Directory hints for a frame to `to` that names `ids` (a PREPARE's
    /// participants, a chain's members): where each other one is, as far
    /// as this directory knows.
    pub fn hints(&self, ids: &[NodeId], to: &str) -> Vec<PeerHint> {
        ids.iter()
            .filter(|p| p.as_str() != to)
            .filter_map(|p| {
                let (addr, incarnation) = self.entry(p)?;
                Some(PeerHint {
                    id: p.clone(),
                    addr,
                    incarnation,
                })
            })
            .collect()
    }

    /// `id`, in its life `incarnation`, was heard from at `addr`: remember
    /// it (bounded, see [`LEARNT_MAX`]) unless what we know is from a later
    /// life.
    pub fn learn(&mut self, id: &str, addr: &str, incarnation: u64) -> Learnt {
        let full = self.addrs.len() >= self.configured.len() + LEARNT_MAX;
        match self.addrs.get_mut(id) {
            Some((_, known)) if incarnation < *known => Learnt::Stale,
            Some((known, life))
                if **known == *addr || mutant::active(Mutant::DirectoryIgnoresMoves) =>
            {
                *life = incarnation;
                Learnt::Same
            }
            Some((known, life)) => {
                *life = incarnation;
                let from = std::mem::replace(known, Addr::from(addr)).to_string();
                Learnt::Moved { from }
            }
            None if full => Learnt::Full,
            None => {
                self.addrs
                    .insert(id.to_string(), (Addr::from(addr), incarnation));
                Learnt::New
            }
        }
    }

    /// The incarnation `id`'s address was heard from (0: configured).
    pub fn incarnation_of(&self, id: &str) -> Option<u64> {
        self.addrs.get(id).map(|(_, life)| *life)
    }

    /// Learn a frame's sender (its `reply_to` is where it is now) and its
    /// hints about other nodes, and check that its message, if any, is
    /// from the node the frame names.
    pub fn open(&mut self, envelope: PeerEnvelope) -> Opened {
        let PeerEnvelope {
            from,
            reply_to,
            incarnation,
            peers,
            body,
        } = envelope;
        let learnt = self.learn(&from, &reply_to, incarnation);
        // Second-hand, so never over the sender's own word about itself;
        // the incarnation ordering of `learn` keeps a stale hint from
        // moving a node back. Only the hints of a PREPARE or a CHAIN
        // PREPARE count: they are the messages that name the other
        // participants.
        // A welcome's hints count too (a coordinator telling a node that
        // moved where the others are).
        let prepare = matches!(
            &body,
            PeerBody::Message(m) if matches!(
                m.body,
                Body::Prepare { .. } | Body::Chain { .. } | Body::TreePrepare { .. }
            )
        ) || matches!(&body, PeerBody::Welcome);
        let mut hinted = Vec::new();
        for hint in peers.iter().filter(|h| prepare && h.id != from) {
            let learnt = self.learn(&hint.id, &hint.addr, hint.incarnation);
            if matches!(learnt, Learnt::New | Learnt::Moved { .. }) {
                hinted.push(hint.id.clone());
            }
        }
        let mut event = match &learnt {
            Learnt::Moved { from: old } => Some(DirectoryEvent::PeerMoved {
                id: from.clone(),
                from: old.clone(),
                to: reply_to.clone(),
            }),
            _ => None,
        };
        let hello = matches!(body, PeerBody::Hello);
        let welcome = matches!(body, PeerBody::Welcome);
        let message = match body {
            PeerBody::Hello | PeerBody::Welcome => None,
            PeerBody::Message(message) if message.from != from => {
                event = Some(DirectoryEvent::Misaddressed {
                    from: from.clone(),
                    claimed: message.from,
                    xid: message.xid,
                });
                None
            }
            PeerBody::Message(message) => Some(message),
        };
        Opened {
            from,
            addr: reply_to,
            incarnation,
            learnt,
            message,
            hello,
            welcome,
            event,
            hinted,
        }
    }

    /// Where a message to `to` goes, or the event that says it cannot.
    pub fn route(&self, to: &str, message: &Message) -> Result<Addr, DirectoryEvent> {
        self.addrs
            .get(to)
            .map(|(addr, _)| Arc::clone(addr))
            .ok_or_else(|| DirectoryEvent::NoAddress {
                to: to.to_string(),
                xid: message.xid,
                kind: message.kind(),
            })
    }

    /// "id (address)" for logs and status; the bare id if its address is
    /// unknown.
    pub fn display_name(&self, id: &str) -> String {
        match self.addr_of(id) {
            Some(addr) => format!("{id} ({addr})"),
            None => id.to_string(),
        }
    }

    /// Every configured participant's id, in configured order.
    pub fn configured(&self) -> &[NodeId] {
        &self.configured
    }

    /// Every (id, address, incarnation) known, sorted by id (configured
    /// and learnt).
    pub fn entries(&self) -> Vec<(NodeId, String, u64)> {
        let mut entries: Vec<(NodeId, String, u64)> = self
            .addrs
            .iter()
            .map(|(id, (addr, life))| (id.clone(), addr.to_string(), *life))
            .collect();
        entries.sort();
        entries
    }
}

/// Names (or addresses) of configured participants to their ids, merging
/// branches that name the same participant (the core takes one branch per
/// participant).
pub fn resolve_branches(
    directory: &Directory,
    branches: Vec<BranchRequest>,
) -> Result<Vec<(NodeId, Vec<u8>)>, String> {
    let mut resolved: Vec<(NodeId, Vec<Vec<u8>>)> = Vec::new();
    for branch in branches {
        let addr = directory.resolve(&branch.participant)?;
        match resolved.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, works)) => works.push(branch.work),
            None => resolved.push((addr, vec![branch.work])),
        }
    }
    resolved
        .into_iter()
        .map(|(addr, works)| {
            let merged = merge_works(works).map_err(|e| {
                format!(
                    "participant {} is named by several branches and their work cannot \
                     be merged (neither key-value nor PostgreSQL work: {e}); send one branch per \
                     participant",
                    directory.display_name(&addr)
                )
            })?;
            Ok((addr, merged))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_participant::kv::{decode_work, encode_work, KvOp};

    fn directory() -> Directory {
        Directory::new(&[
            ("bank-a".into(), "127.0.0.1:7101".into()),
            ("bank-b".into(), "127.0.0.1:710".into()),
        ])
    }

    fn kv(account: &str, delta: i64) -> Vec<u8> {
        encode_work(&[KvOp {
            account: account.into(),
            delta,
        }])
    }

    fn branch(participant: &str, work: Vec<u8>) -> BranchRequest {
        BranchRequest {
            participant: participant.into(),
            work,
        }
    }

    /// A frame from the coordinator at 127.0.0.1:7000 carrying `body`, with
    /// a hint that bank-c is at `addr` (life `incarnation`) and one about
    /// the sender itself.
    fn hinted(body: Body, addr: &str, incarnation: u64) -> PeerEnvelope {
        let hint = |id: &str, addr: &str| concord_api::PeerHint {
            id: id.into(),
            addr: addr.into(),
            incarnation,
        };
        PeerEnvelope {
            from: "coord".into(),
            reply_to: "127.0.0.1:7000".into(),
            incarnation: 1,
            peers: vec![hint("bank-c", addr), hint("coord", "127.0.0.1:9999")],
            body: PeerBody::Message(Message {
                xid: Xid(1),
                epoch: 1,
                from: "coord".into(),
                body,
            }),
        }
    }

    fn prepare() -> Body {
        Body::Prepare {
            participants: vec!["bank-a".into(), "bank-c".into()],
            work: vec![],
            deadline_ms: 100,
        }
    }

    /// Directory hints: learnt only from a PREPARE, reported when new or
    /// moved (the participant logs those), never about the sender itself,
    /// and never moving a node back to an earlier life's address.
    #[test]
    fn hints_are_learnt_from_a_prepare_only_and_never_from_an_earlier_life() {
        let mut d = directory();
        let ack = d.open(hinted(Body::Ack, "127.0.0.1:7103", 2));
        assert!(ack.hinted.is_empty());
        assert_eq!(d.addr_of("bank-c"), None, "an ACK's hints are not learnt");

        let first = d.open(hinted(prepare(), "127.0.0.1:7103", 2));
        assert_eq!(first.hinted, vec!["bank-c".to_string()]);
        assert_eq!(d.addr_of("bank-c"), Some("127.0.0.1:7103"));
        assert_eq!(d.addr_of("coord"), Some("127.0.0.1:7000"), "its own word");

        let same = d.open(hinted(prepare(), "127.0.0.1:7103", 2));
        assert!(same.hinted.is_empty(), "nothing new to log");
        let stale = d.open(hinted(prepare(), "127.0.0.1:7999", 1));
        assert!(stale.hinted.is_empty());
        assert_eq!(
            d.addr_of("bank-c"),
            Some("127.0.0.1:7103"),
            "not moved back"
        );
        let moved = d.open(hinted(prepare(), "127.0.0.1:7104", 3));
        assert_eq!(moved.hinted, vec!["bank-c".to_string()]);
        assert_eq!(d.addr_of("bank-c"), Some("127.0.0.1:7104"));
    }

    #[test]
    fn unknown_participant_lists_the_known_ones() {
        let err = resolve_branches(&directory(), vec![branch("bank-z", kv("x", 1))]).unwrap_err();
        assert_eq!(err, "unknown participant bank-z (known: bank-a, bank-b)");
    }

    #[test]
    fn branches_for_one_participant_are_merged() {
        let resolved = resolve_branches(
            &directory(),
            vec![
                branch("bank-a", kv("x", -5)),
                branch("127.0.0.1:710", kv("y", 5)),
                branch("127.0.0.1:7101", kv("z", 1)),
            ],
        )
        .expect("resolves");
        assert_eq!(resolved.len(), 2);
        assert_eq!(resolved[0].0, "bank-a");
        let ops = decode_work(&resolved[0].1).expect("kv work");
        assert_eq!(
            ops.iter().map(|o| o.account.as_str()).collect::<Vec<_>>(),
            vec!["x", "z"]
        );
    }

    #[test]
    fn non_kv_work_for_one_participant_is_refused() {
        let err = resolve_branches(
            &directory(),
            vec![branch("bank-a", vec![0xff]), branch("bank-a", vec![0xff])],
        )
        .unwrap_err();
        assert!(err.contains("cannot be merged"), "{err}");
    }

    #[test]
    fn learning_remembers_moves_and_is_bounded() {
        let mut d = directory();
        assert_eq!(d.learn("bank-a", "127.0.0.1:7101", 1), Learnt::Same);
        assert_eq!(
            d.learn("bank-a", "127.0.0.1:9000", 2),
            Learnt::Moved {
                from: "127.0.0.1:7101".into()
            }
        );
        assert_eq!(d.addr_of("bank-a"), Some("127.0.0.1:9000"));
        // A frame delayed from the earlier life does not move it back.
        assert_eq!(d.learn("bank-a", "127.0.0.1:7101", 1), Learnt::Stale);
        assert_eq!(d.addr_of("bank-a"), Some("127.0.0.1:9000"));
        assert_eq!(d.display_name("bank-a"), "bank-a (127.0.0.1:9000)");
        // A client may still name it by the address it now has.
        assert_eq!(d.resolve("127.0.0.1:9000"), Ok("bank-a".to_string()));
        for i in 0..LEARNT_MAX {
            assert_eq!(d.learn(&format!("peer-{i}"), "x:1", 1), Learnt::New);
        }
        assert_eq!(d.learn("one-too-many", "x:1", 1), Learnt::Full);
        assert_eq!(d.addr_of("one-too-many"), None);
        // Known ids still move when the directory is full.
        assert!(matches!(d.learn("bank-b", "y:2", 1), Learnt::Moved { .. }));
        // Learnt ids are not participants a client may name.
        assert!(d.resolve("peer-1").is_err());
    }
}
