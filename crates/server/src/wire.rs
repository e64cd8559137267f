//! What travels inside concord-net frames between concord processes: the
//! types are [`concord_api`]'s (re-exported here); this module builds the
//! frames that carry them. See [`concord_api`] for the frame kinds.
//!
//! Peer messages never get an answer on the connection they came in on:
//! the answer is a new peer message sent to the sender's id, at the
//! address the receiver's directory has for it (learnt from the frame's
//! `reply_to`), over the receiver's own outgoing connection. Client requests are answered on their
//! connection, matched by `request_id` (so a client may pipeline).

pub use concord_api::*;
use concord_net::Frame;
use concord_proto::codec::encode;

/// A frame from node `from` in its life `incarnation`, answerable at
/// `reply_to`, with directory hints `peers` (see [`PeerEnvelope::peers`]).
pub fn peer_frame(
    from: &str,
    reply_to: &str,
    incarnation: u64,
    peers: &[PeerHint],
    body: PeerBodyRef<'_>,
) -> Frame {
    Frame::new(
        KIND_PEER,
        encode_peer(from, reply_to, incarnation, peers, body),
    )
}

/// A frame carrying a client request.
pub fn request_frame(request: &Request) -> Frame {
    Frame::new(KIND_REQUEST, encode(request))
}

/// A frame carrying a reply.
pub fn reply_frame(reply: &Reply) -> Frame {
    Frame::new(KIND_REPLY, encode(reply))
}

/// The counters of a server from its log and network for
/// `Request::Stats`; `forced_records` is counted by the driver (the log
/// counts forced submissions, each of which holds many records).
pub fn server_stats(
    role: &str,
    fsync: bool,
    forced_records: u64,
    log: concord_store::GroupCommitStats,
    net: concord_net::NetStats,
) -> ServerStats {
    ServerStats {
        role: role.into(),
        fsync,
        log_records: log.records,
        log_forced: forced_records,
        log_batches: log.batches,
        // With fsync off the store's sync is a no-op: none reached the disk.
        log_syncs: if fsync { log.syncs } else { 0 },
        log_bytes: log.bytes,
        net_frames_sent: net.frames_sent,
        net_frames_received: net.frames_received,
        net_writes: net.writes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::{Body, Message, Xid};

    #[test]
    fn messages_round_trip() {
        let message = Message {
            xid: Xid(7),
            epoch: 3,
            from: "bank-a".into(),
            body: Body::Inquire {
                prepared_ms_ago: Some(12),
            },
        };
        let frame = peer_frame(
            "bank-a",
            "127.0.0.1:1",
            4,
            &[],
            PeerBodyRef::Message(&message),
        );
        assert_eq!(frame.kind, KIND_PEER);
        assert_eq!(
            decode_peer(&frame.body).expect("decodes"),
            PeerEnvelope {
                from: "bank-a".into(),
                reply_to: "127.0.0.1:1".into(),
                incarnation: 4,
                peers: vec![],
                body: PeerBody::Message(message)
            }
        );

        let request = Request::Begin {
            request_id: 9,
            branches: vec![BranchRequest {
                participant: "a".into(),
                work: vec![1, 2],
            }],
            prepare_timeout_ms: Some(5),
            shape: concord_proto::Shape::Linear,
            parents: Vec::new(),
            idempotency_key: None,
        };
        assert_eq!(
            decode_request(&request_frame(&request).body).expect("decodes"),
            request
        );
        let reply = Reply::Outcome {
            request_id: 9,
            xid: Xid(1),
            outcome: Outcome::Aborted { reason: "x".into() },
        };
        assert_eq!(
            decode_reply(&reply_frame(&reply).body).expect("decodes"),
            reply
        );
    }
}
