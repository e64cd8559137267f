//! Stable-Rust fuzz harness for everything concord decodes from bytes it did
//! not just produce itself (ARCHITECTURE.md principle 9; issue 3 item 1):
//!
//! - frame bodies from the network: [`wire::decode_peer`] (2PC
//!   [`Message`]s), [`wire::decode_request`] and [`wire::decode_reply`];
//! - log record contents read back at recovery:
//!   `codec::decode::<CoordinatorRecord>` and `::<ParticipantRecord>`, as
//!   they come out of [`file_log::scan`];
//! - the key-value resource's payloads: [`kv::decode_work`] (a PREPARE's
//!   work, also kept in READY records) and [`kv::KvRecord`] (seed records),
//!   and [`kv::KvStore::replay`] over decoded participant records.
//!
//! For each decoder:
//! - **arbitrary bytes never panic**; when they do decode, re-encoding the
//!   value gives bytes that decode to the same value (and are no longer than
//!   the input);
//! - **valid encodings round-trip**: random well-formed values (every
//!   [`Body`] kind, every record kind, every request kind with
//!   `Request::Begin` carrying random branches, every reply kind) decode to
//!   themselves, also through a real frame ([`FrameCodec`]) or a real log
//!   image ([`file_log::scan`]);
//! - **mutated valid encodings never panic**: a flipped byte, a truncation,
//!   an extension, an insertion, a removal or an overwrite (or several) gives
//!   an error or a value that itself round-trips; a strict prefix of a valid
//!   encoding is always an error. (Postcard ignores bytes after a complete
//!   value, so a valid body with garbage appended decodes; that is allowed,
//!   not required, here.)
//!
//! `file_log::scan`'s own framing and torn-tail rules are covered by
//! `crates/store/tests/recovery_proptest.rs`; here the log image is only the
//! carrier of record *contents* (valid checksums around garbage payloads,
//! and damage to images holding real records).
//!
//! # Running and reproducing
//! ```text
//! cargo test --release -p concord --test fuzz_decoders               # CI: 2048 cases each
//! PROPTEST_CASES=100000 cargo test --release -p concord --test fuzz_decoders
//! ```
//! `PROPTEST_CASES` overrides the per-property default (see [`config`]). A
//! failure prints the minimal failing input and appends its seed to
//! `crates/cli/tests/fuzz_decoders.proptest-regressions`, which every
//! later run replays first: commit it with the fix. `PROPTEST_RNG_SEED=<n>`
//! makes a whole run deterministic.

use std::fmt::{Debug, Display};
use std::path::Path;

use bytes::BytesMut;
use concord_net::{encode_frame, FrameCodec};
use concord_participant::kv::{self, KvOp, KvRecord, KvStore};
use concord_proto::codec::{decode, encode};
use concord_proto::{
    Body, CoordinatorRecord, Decision, Message, ParticipantRecord, TxnState, Vote, Xid,
};
use concord_server::wire::{
    self, AccountsReport, BranchRequest, BranchView, CoordinatorState, CoordinatorStatus, Outcome,
    PhaseEstimate, Reply, Request, ServerStats, TimeoutsReport,
};
use concord_store::file_log::{self, encode_log, RECORD_BYTES_MAX_DEFAULT};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use tokio_util::codec::Decoder;

/// Cases per property: `PROPTEST_CASES` if set, else `default_cases`.
/// Failures persist beside this file (see the module docs).
fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// The decoders under test, each with the encoder that produces its input.

/// One decoder and its matching encoder.
struct Codec<T> {
    name: &'static str,
    decode: fn(&[u8]) -> Result<T, String>,
    encode: fn(&T) -> Vec<u8>,
}

fn err<E: Display>(e: E) -> String {
    e.to_string()
}

fn peer_codec() -> Codec<wire::PeerEnvelope> {
    Codec {
        name: "decode_peer",
        decode: |b| wire::decode_peer(b).map_err(err),
        encode: |e| {
            wire::peer_frame(
                &e.from,
                &e.reply_to,
                e.incarnation,
                &e.peers,
                body_ref(&e.body),
            )
            .body
            .to_vec()
        },
    }
}

fn body_ref(body: &wire::PeerBody) -> wire::PeerBodyRef<'_> {
    match body {
        wire::PeerBody::Message(m) => wire::PeerBodyRef::Message(m),
        wire::PeerBody::Hello => wire::PeerBodyRef::Hello,
        wire::PeerBody::Welcome => wire::PeerBodyRef::Welcome,
    }
}

fn request_codec() -> Codec<Request> {
    Codec {
        name: "decode_request",
        decode: |b| wire::decode_request(b).map_err(err),
        encode: |r| wire::request_frame(r).body.to_vec(),
    }
}

fn reply_codec() -> Codec<Reply> {
    Codec {
        name: "decode_reply",
        decode: |b| wire::decode_reply(b).map_err(err),
        encode: |r| wire::reply_frame(r).body.to_vec(),
    }
}

fn coordinator_record_codec() -> Codec<CoordinatorRecord> {
    Codec {
        name: "decode::<CoordinatorRecord>",
        decode: |b| decode("coordinator log record", b).map_err(err),
        encode: |r| encode(r),
    }
}

fn participant_record_codec() -> Codec<ParticipantRecord> {
    Codec {
        name: "decode::<ParticipantRecord>",
        decode: |b| decode("participant log record", b).map_err(err),
        encode: |r| encode(r),
    }
}

fn kv_work_codec() -> Codec<Vec<KvOp>> {
    Codec {
        name: "kv::decode_work",
        decode: kv::decode_work,
        encode: |ops| kv::encode_work(ops),
    }
}

fn kv_record_codec() -> Codec<KvRecord> {
    Codec {
        name: "decode::<KvRecord>",
        decode: |b| decode("key-value record", b).map_err(err),
        encode: |r| encode(r),
    }
}

/// Decode arbitrary `bytes` (must not panic). A value that decodes must
/// re-encode to bytes that decode to the same value; returns it, if any.
fn decode_any<T: PartialEq + Debug>(
    codec: &Codec<T>,
    bytes: &[u8],
) -> Result<Option<T>, TestCaseError> {
    let Ok(value) = (codec.decode)(bytes) else {
        return Ok(None);
    };
    let again = (codec.encode)(&value);
    // Postcard accepts over-long varints and ignores trailing bytes, so the
    // canonical encoding is never longer than what was read.
    prop_assert!(
        again.len() <= bytes.len(),
        "{}: re-encoding grew from {} to {} bytes",
        codec.name,
        bytes.len(),
        again.len()
    );
    match (codec.decode)(&again) {
        Ok(v) => prop_assert_eq!(&v, &value, "{}: re-encoded value differs", codec.name),
        Err(e) => prop_assert!(false, "{}: re-encoded value fails: {}", codec.name, e),
    }
    Ok(Some(value))
}

/// `value` round-trips, its strict prefixes are errors, and `mutation` of
/// its encoding never panics.
fn round_trip_then_mutate<T: PartialEq + Debug>(
    codec: &Codec<T>,
    value: &T,
    mutation: &Mutation,
) -> Result<(), TestCaseError> {
    let bytes = (codec.encode)(value);
    match (codec.decode)(&bytes) {
        Ok(v) => prop_assert_eq!(&v, value, "{}: round trip", codec.name),
        Err(e) => prop_assert!(false, "{}: valid encoding rejected: {}", codec.name, e),
    }
    let mutated = mutation.apply(&bytes);
    let decoded = decode_any(codec, &mutated)?;
    // The decoder reads the bytes of a valid encoding in one fixed order,
    // so any strict prefix runs out before the value is complete.
    if mutated.len() < bytes.len() && bytes.starts_with(&mutated) {
        prop_assert!(
            decoded.is_none(),
            "{}: strict prefix of {} of {} bytes decoded to {:?}",
            codec.name,
            mutated.len(),
            bytes.len(),
            decoded
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Mutations of a valid encoding.

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: prop::sample::Index,
        mask: u8,
    },
    Truncate {
        at: prop::sample::Index,
    },
    Extend(Vec<u8>),
    Insert {
        at: prop::sample::Index,
        bytes: Vec<u8>,
    },
    Remove {
        at: prop::sample::Index,
        len: usize,
    },
    Overwrite {
        at: prop::sample::Index,
        bytes: Vec<u8>,
    },
    Several(Vec<Mutation>),
}

impl Mutation {
    fn apply(&self, bytes: &[u8]) -> Vec<u8> {
        let mut b = bytes.to_vec();
        self.apply_in_place(&mut b);
        b
    }

    fn apply_in_place(&self, b: &mut Vec<u8>) {
        match self {
            Mutation::Flip { at, mask } => {
                if !b.is_empty() {
                    let i = at.index(b.len());
                    b[i] ^= mask;
                }
            }
            Mutation::Truncate { at } => {
                let n = at.index(b.len().max(1));
                b.truncate(n);
            }
            Mutation::Extend(tail) => b.extend_from_slice(tail),
            Mutation::Insert { at, bytes } => {
                let i = at.index(b.len() + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Remove { at, len } => {
                if !b.is_empty() {
                    let i = at.index(b.len());
                    let j = (i + len).min(b.len());
                    b.drain(i..j);
                }
            }
            Mutation::Overwrite { at, bytes } => {
                if !b.is_empty() {
                    let i = at.index(b.len());
                    for (k, &x) in bytes.iter().enumerate() {
                        if let Some(slot) = b.get_mut(i + k) {
                            *slot = x;
                        }
                    }
                }
            }
            Mutation::Several(ms) => {
                for m in ms {
                    m.apply_in_place(b);
                }
            }
        }
    }
}

fn single_mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<prop::sample::Index>;
    let small = || prop::collection::vec(any::<u8>(), 1..16);
    prop_oneof![
        3 => (idx(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        2 => idx().prop_map(|at| Mutation::Truncate { at }),
        1 => small().prop_map(Mutation::Extend),
        1 => (idx(), small()).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (idx(), 1usize..8).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => (idx(), small()).prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
        // Values that are interesting as lengths, tags and varints.
        1 => (idx(), prop::sample::select(vec![0x00u8, 0x01, 0x7F, 0x80, 0xFF]))
            .prop_map(|(at, x)| Mutation::Overwrite { at, bytes: vec![x] }),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => single_mutation(),
        1 => prop::collection::vec(single_mutation(), 2..5).prop_map(Mutation::Several),
    ]
}

// ---------------------------------------------------------------------------
// Strategies for well-formed values.

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9_-]{0,12}",
        1 => "\\PC{0,16}",
        1 => Just(String::new()),
    ]
}

fn addr() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (1u16..=65535).prop_map(|p| format!("127.0.0.1:{p}")),
        1 => text(),
    ]
}

fn xid() -> impl Strategy<Value = Xid> {
    prop_oneof![
        3 => any::<u128>().prop_map(Xid),
        1 => prop::sample::select(vec![0, 1, u64::MAX as u128, u128::MAX]).prop_map(Xid),
    ]
}

/// Integers biased to the varint boundaries.
fn int() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => any::<u64>(),
        2 => 0u64..300,
        1 => prop::sample::select(vec![127u64, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX]),
    ]
}

fn kv_ops() -> impl Strategy<Value = Vec<KvOp>> {
    prop::collection::vec(
        (text(), any::<i64>()).prop_map(|(account, delta)| KvOp { account, delta }),
        0..6,
    )
}

fn work() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        kv_ops().prop_map(|ops| kv::encode_work(&ops)),
        prop::collection::vec(any::<u8>(), 0..96),
    ]
}

fn addrs() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(addr(), 0..5)
}

fn txn_state() -> impl Strategy<Value = TxnState> {
    prop::sample::select(vec![
        TxnState::Initial,
        TxnState::Ready,
        TxnState::Committed,
        TxnState::Aborted,
        TxnState::Unknown,
    ])
}

fn decision() -> impl Strategy<Value = Decision> {
    prop::sample::select(vec![Decision::Commit, Decision::Abort])
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (addrs(), work(), int()).prop_map(|(participants, work, deadline_ms)| Body::Prepare {
            participants,
            work,
            deadline_ms
        }),
        Just(Body::Vote(Vote::Ready)),
        text().prop_map(|reason| Body::Vote(Vote::Abort { reason })),
        decision().prop_map(Body::Decision),
        Just(Body::Ack),
        proptest::option::of(int()).prop_map(|prepared_ms_ago| Body::Inquire { prepared_ms_ago }),
        txn_state().prop_map(Body::State),
        Just(Body::Vote(Vote::ReadOnly)),
        (work(), int()).prop_map(|(work, deadline_ms)| Body::OnePhase { work, deadline_ms }),
        (addrs(), prop::collection::vec(work(), 0..4), int()).prop_map(
            |(chain, works, deadline_ms)| Body::Chain {
                chain,
                works,
                deadline_ms
            }
        ),
        int().prop_map(|sent_ms_ago| Body::OnePhaseStatus { sent_ms_ago }),
        Just(Body::ChainInquire),
        (
            addrs(),
            work(),
            prop::collection::vec((addr(), int(), work()), 0..4),
            int()
        )
            .prop_map(
                |(participants, work, tree, deadline_ms)| Body::TreePrepare {
                    participants,
                    work,
                    tree: tree
                        .into_iter()
                        .map(|(node, parent, work)| concord_proto::TreeEntry {
                            node,
                            parent: parent as u32,
                            work,
                        })
                        .collect(),
                    deadline_ms,
                }
            ),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (xid(), int(), addr(), body()).prop_map(|(xid, epoch, from, body)| Message {
        xid,
        epoch,
        from,
        body,
    })
}

fn envelope() -> impl Strategy<Value = wire::PeerEnvelope> {
    let body = prop_oneof![
        4 => message().prop_map(wire::PeerBody::Message),
        1 => Just(wire::PeerBody::Hello),
        1 => Just(wire::PeerBody::Welcome),
    ];
    let hint = (text(), addr(), int()).prop_map(|(id, addr, incarnation)| wire::PeerHint {
        id,
        addr: addr.into(),
        incarnation,
    });
    let peers = prop::collection::vec(hint, 0..4);
    (text(), addr(), int(), peers, body).prop_map(|(from, reply_to, incarnation, peers, body)| {
        wire::PeerEnvelope {
            from,
            reply_to,
            incarnation,
            peers,
            body,
        }
    })
}

fn request() -> impl Strategy<Value = Request> {
    let branch =
        (text(), work()).prop_map(|(participant, work)| BranchRequest { participant, work });
    prop_oneof![
        3 => (int(), prop::collection::vec(branch, 0..6), prop::option::of(int())).prop_map(
            |(request_id, branches, prepare_timeout_ms)| Request::Begin {
                request_id,
                branches,
                prepare_timeout_ms,
                shape: match request_id % 3 {
                    0 => concord_proto::Shape::Centralized,
                    1 => concord_proto::Shape::Linear,
                    _ => concord_proto::Shape::Hierarchical,
                },
                parents: (0..(request_id % 4) as u32).collect(),
                idempotency_key: (request_id % 5 == 0).then(|| format!("key-{request_id}")),
            }
        ),
        1 => (int(), xid()).prop_map(|(request_id, xid)| Request::Status { request_id, xid }),
        1 => int().prop_map(|request_id| Request::ListInFlight { request_id }),
        1 => int().prop_map(|request_id| Request::Accounts { request_id }),
        1 => (int(), xid()).prop_map(|(request_id, xid)| Request::BranchState { request_id, xid }),
        1 => int().prop_map(|request_id| Request::Timeouts { request_id }),
        1 => int().prop_map(|request_id| Request::Stats { request_id }),
        1 => (int(), prop::option::of(int())).prop_map(|(request_id, lifetime_ms)| {
            Request::Open {
                request_id,
                lifetime_ms,
                idempotency_key: (request_id % 2 == 0).then(|| format!("k{request_id}")),
            }
        }),
        1 => (int(), xid(), prop::collection::vec(
            (text(), work()).prop_map(|(participant, work)| BranchRequest { participant, work }),
            0..4,
        ))
            .prop_map(|(request_id, xid, branches)| Request::Register {
                request_id,
                xid,
                branches,
            }),
        1 => (int(), xid()).prop_map(|(request_id, xid)| Request::Commit { request_id, xid }),
        1 => (int(), xid()).prop_map(|(request_id, xid)| Request::Abort { request_id, xid }),
        1 => (int(), audit_record()).prop_map(|(request_id, e)| Request::Operator {
            request_id,
            action: concord_api::OperatorRequest {
                xid: e.xid,
                action: e.action,
                confirm: e.reason.clone(),
                operator: e.operator,
                reason: e.reason,
                token: e.xid.to_string(),
                at_unix_ms: e.at_unix_ms,
            },
        }),
        1 => int().prop_map(|request_id| Request::Audit { request_id }),
        1 => int().prop_map(|request_id| Request::InDoubt { request_id }),
        1 => (int(), text())
            .prop_map(|(request_id, participant)| Request::InDoubtAt { request_id, participant }),
        1 => (int(), xid(), decision(), text()).prop_map(|(request_id, xid, decision, audit)| {
            Request::Heuristic { request_id, xid, decision, audit }
        }),
    ]
}

fn coordinator_state() -> impl Strategy<Value = CoordinatorState> {
    prop::sample::select(vec![
        CoordinatorState::Wait,
        CoordinatorState::Committing,
        CoordinatorState::CommittedWaitingForAcks,
        CoordinatorState::Committed,
        CoordinatorState::Aborted,
        CoordinatorState::NoRecord,
        CoordinatorState::OnePhase,
        CoordinatorState::Open,
    ])
}

fn phase_estimate() -> impl Strategy<Value = PhaseEstimate> {
    (
        (text(), text(), int()),
        prop::array::uniform3(prop::option::of(int())),
        prop::array::uniform4(int()),
        (any::<u32>(), int(), text()),
    )
        .prop_map(
            |(
                (peer, phase, samples),
                [srtt_us, rttvar_us, rto_us],
                [p50_us, p99_us, p999_us, max_us],
                (backoff_level, timeout_ms, basis),
            )| PhaseEstimate {
                peer_id: peer.clone(),
                peer,
                phase,
                samples,
                srtt_us,
                rttvar_us,
                rto_us,
                p50_us,
                p99_us,
                p999_us,
                max_us,
                backoff_level,
                timeout_ms,
                basis,
            },
        )
}

fn server_stats() -> impl Strategy<Value = ServerStats> {
    (text(), any::<bool>(), prop::array::uniform8(int())).prop_map(
        |(
            role,
            fsync,
            [log_records, log_forced, log_batches, log_syncs, log_bytes, net_frames_sent, net_frames_received, net_writes],
        )| ServerStats {
            role,
            fsync,
            log_records,
            log_forced,
            log_batches,
            log_syncs,
            log_bytes,
            net_frames_sent,
            net_frames_received,
            net_writes,
        },
    )
}

fn reply() -> impl Strategy<Value = Reply> {
    let branch_view = (
        text(),
        text(),
        addr(),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::option::of(text()),
        prop::option::of((
            any::<u32>(),
            any::<u64>(),
            prop::option::of(text()),
            any::<bool>(),
        )),
    )
        .prop_map(
            |(id, name, addr, voted_ready, acked, parent, delivery)| BranchView {
                id,
                name,
                addr,
                voted_ready,
                acked,
                parent,
                delivery: delivery.map(|(attempts, pending_ms, last_error, needs_attention)| {
                    concord_api::DeliveryView {
                        attempts,
                        pending_ms,
                        last_error,
                        needs_attention,
                    }
                }),
            },
        );
    let shape = prop::option::of(prop_oneof![
        Just(concord_proto::Shape::Centralized),
        Just(concord_proto::Shape::Linear),
        Just(concord_proto::Shape::Hierarchical),
    ]);
    let status = (
        xid(),
        coordinator_state(),
        text(),
        prop::collection::vec(branch_view, 0..4),
        shape,
    )
        .prop_map(|(xid, state, detail, branches, shape)| CoordinatorStatus {
            xid,
            state,
            detail,
            branches,
            shape,
        });
    let accounts = (
        prop::collection::vec((text(), any::<i64>()), 0..5),
        prop::collection::vec(xid(), 0..4),
        prop::collection::vec((text(), xid()), 0..4),
        prop::collection::vec((xid(), text()), 0..4),
    )
        .prop_map(|(balances, in_doubt, locks, waiting)| AccountsReport {
            balances,
            in_doubt,
            locks,
            waiting,
        });
    let timeouts = (text(), prop::collection::vec(phase_estimate(), 0..4))
        .prop_map(|(role, phases)| TimeoutsReport { role, phases });
    let outcome = prop_oneof![
        Just(Outcome::Committed),
        text().prop_map(|reason| Outcome::Aborted { reason }),
    ];
    prop_oneof![
        (int(), xid()).prop_map(|(request_id, xid)| Reply::Begun { request_id, xid }),
        (int(), xid(), outcome).prop_map(|(request_id, xid, outcome)| Reply::Outcome {
            request_id,
            xid,
            outcome
        }),
        (int(), status).prop_map(|(request_id, status)| Reply::Status { request_id, status }),
        (int(), prop::collection::vec(xid(), 0..8), any::<bool>()).prop_map(
            |(request_id, xids, truncated)| Reply::InFlight {
                request_id,
                xids,
                truncated
            }
        ),
        (int(), accounts).prop_map(|(request_id, accounts)| Reply::Accounts {
            request_id,
            accounts
        }),
        (int(), xid(), txn_state(), prop::option::of(text())).prop_map(
            |(request_id, xid, state, detail)| Reply::BranchState {
                request_id,
                xid,
                state,
                detail
            }
        ),
        (int(), text()).prop_map(|(request_id, message)| Reply::Error {
            request_id,
            message
        }),
        (int(), timeouts).prop_map(|(request_id, report)| Reply::Timeouts { request_id, report }),
        (int(), server_stats()).prop_map(|(request_id, stats)| Reply::Stats { request_id, stats }),
        (int(), audit_record())
            .prop_map(|(request_id, entry)| Reply::Operator { request_id, entry }),
        (
            int(),
            any::<bool>(),
            prop::collection::vec(audit_record(), 0..3)
        )
            .prop_map(|(request_id, writable, entries)| Reply::Audit {
                request_id,
                writable,
                entries
            }),
        (int(), text()).prop_map(|(request_id, message)| Reply::Refused {
            request_id,
            refusal: concord_api::Refusal::NotNeeded,
            message,
        }),
        (
            int(),
            text(),
            prop::collection::vec(
                (xid(), text(), any::<u32>(), text(), prop::option::of(int())),
                0..3
            )
        )
            .prop_map(|(request_id, participant, branches)| Reply::InDoubt {
                request_id,
                participant,
                branches: branches
                    .into_iter()
                    .map(
                        |(xid, coordinator, inquiries, why, held_ms)| concord_api::InDoubtBranch {
                            xid,
                            coordinator,
                            inquiries,
                            why,
                            held_ms,
                        }
                    )
                    .collect(),
            }),
        (int(), xid(), decision()).prop_map(|(request_id, xid, decision)| Reply::Heuristic {
            request_id,
            xid,
            decision,
        }),
    ]
}

fn coordinator_record() -> impl Strategy<Value = CoordinatorRecord> {
    prop_oneof![
        int().prop_map(|epoch| CoordinatorRecord::Epoch { epoch }),
        (xid(), addrs())
            .prop_map(|(xid, participants)| CoordinatorRecord::Begin { xid, participants }),
        (xid(), decision(), addrs()).prop_map(|(xid, decision, participants)| {
            CoordinatorRecord::Decision {
                xid,
                decision,
                participants,
            }
        }),
        xid().prop_map(|xid| CoordinatorRecord::End { xid }),
        audit_record().prop_map(CoordinatorRecord::Audit),
        (text(), addr(), int(), addr()).prop_map(|(id, addr, incarnation, configured)| {
            CoordinatorRecord::Peer {
                id,
                addr,
                incarnation,
                configured,
            }
        }),
    ]
}

/// An operator action's audit record, with or without its result.
fn audit_record() -> impl Strategy<Value = concord_proto::AuditRecord> {
    let action = prop_oneof![
        Just(concord_proto::AuditAction::RetryNow),
        (text(), decision()).prop_map(|(participant, decision)| {
            concord_proto::AuditAction::Heuristic {
                participant,
                decision,
            }
        }),
    ];
    let result = prop::option::of(
        (any::<bool>(), text()).prop_map(|(ok, detail)| concord_proto::AuditResult { ok, detail }),
    );
    (int(), int(), text(), text(), xid(), action, result).prop_map(
        |(seq, at_unix_ms, operator, reason, xid, action, result)| concord_proto::AuditRecord {
            seq,
            at_unix_ms,
            operator,
            reason,
            xid,
            action,
            result,
        },
    )
}

fn kv_record() -> impl Strategy<Value = KvRecord> {
    prop_oneof![
        prop::collection::vec((text(), any::<i64>()), 0..6)
            .prop_map(|accounts| KvRecord::Seed { accounts }),
        prop::collection::vec((text(), any::<i64>()), 0..6)
            .prop_map(|balances| KvRecord::Snapshot { balances }),
    ]
}

fn participant_record() -> impl Strategy<Value = ParticipantRecord> {
    prop_oneof![
        (xid(), addr(), int(), addrs(), work()).prop_map(
            |(xid, coordinator, epoch, participants, work)| ParticipantRecord::Ready {
                xid,
                coordinator,
                epoch,
                participants,
                work,
            }
        ),
        (xid(), decision())
            .prop_map(|(xid, decision)| ParticipantRecord::Outcome { xid, decision }),
        prop::collection::vec((xid(), decision()), 0..4)
            .prop_map(|outcomes| ParticipantRecord::Finished { outcomes }),
        prop_oneof![
            kv_record().prop_map(|r| encode(&r)),
            prop::collection::vec(any::<u8>(), 0..64),
        ]
        .prop_map(|body| ParticipantRecord::Resource { body }),
        (text(), addr(), int()).prop_map(|(id, addr, incarnation)| ParticipantRecord::Peer {
            id,
            addr,
            incarnation
        }),
        (int(), addr())
            .prop_map(|(incarnation, addr)| ParticipantRecord::Started { incarnation, addr }),
        (text(), addr(), int()).prop_map(|(id, addr, incarnation)| ParticipantRecord::PeerHint {
            id,
            addr,
            incarnation
        }),
        (xid(), addr(), int(), work(), addrs()).prop_map(
            |(xid, coordinator, epoch, work, chain)| ParticipantRecord::OnePhase {
                xid,
                coordinator,
                epoch,
                work,
                chain,
            }
        ),
        (xid(), decision(), text()).prop_map(|(xid, decision, audit)| {
            ParticipantRecord::Heuristic {
                xid,
                decision,
                audit,
            }
        }),
        (xid(), addr(), int(), addrs(), work(), addrs()).prop_map(
            |(xid, coordinator, epoch, participants, work, children)| {
                ParticipantRecord::SubtreeReady {
                    xid,
                    coordinator,
                    epoch,
                    participants,
                    work,
                    children,
                }
            }
        ),
    ]
}

/// A participant log the key-value store can actually replay: a few xids
/// and accounts, so READY and outcome records pair up and ops land on
/// seeded accounts; balances and deltas include the extremes.
fn replayable_log() -> impl Strategy<Value = Vec<ParticipantRecord>> {
    let amount = || {
        prop_oneof![
            2 => -1000i64..1000,
            1 => any::<i64>(),
            1 => prop::sample::select(vec![i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX]),
        ]
    };
    let account = || prop::sample::select(vec!["acct-0".to_string(), "acct-1".to_string()]);
    let small_xid = || (0u128..4).prop_map(Xid);
    let op = (account(), amount()).prop_map(|(account, delta)| KvOp { account, delta });
    let record = prop_oneof![
        1 => prop::collection::vec((account(), amount()), 0..3).prop_map(|accounts| {
            ParticipantRecord::Resource { body: encode(&KvRecord::Seed { accounts }) }
        }),
        2 => (small_xid(), prop::collection::vec(op, 0..4)).prop_map(|(xid, ops)| {
            ParticipantRecord::Ready {
                xid,
                coordinator: "127.0.0.1:7000".into(),
                epoch: 1,
                participants: vec!["127.0.0.1:7101".into()],
                work: kv::encode_work(&ops),
            }
        }),
        2 => (small_xid(), decision())
            .prop_map(|(xid, decision)| ParticipantRecord::Outcome { xid, decision }),
        1 => prop::collection::vec((account(), amount()), 0..3).prop_map(|balances| {
            ParticipantRecord::Resource { body: encode(&KvRecord::Snapshot { balances }) }
        }),
        1 => prop::collection::vec((small_xid(), decision()), 0..3)
            .prop_map(|outcomes| ParticipantRecord::Finished { outcomes }),
    ];
    prop::collection::vec(record, 0..16)
}

/// Arbitrary bytes: mostly short (where the interesting tags and lengths
/// are), sometimes up to 2 KiB.
fn noise() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..32),
        1 => prop::collection::vec(any::<u8>(), 0..2048),
    ]
}

// ---------------------------------------------------------------------------
// Log images.

fn log_path() -> &'static Path {
    Path::new("fuzz_decoders.log")
}

/// Scan a log image; every record it returns goes through `codec` (which
/// must not panic). Returns the recovered payloads, or `None` if the image
/// was refused as corrupt.
fn scan_and_decode<T: PartialEq + Debug>(
    codec: &Codec<T>,
    image: &[u8],
) -> Result<Option<Vec<Vec<u8>>>, TestCaseError> {
    let Ok(scan) = file_log::scan(log_path(), image, RECORD_BYTES_MAX_DEFAULT) else {
        return Ok(None);
    };
    for record in &scan.records {
        decode_any(codec, record)?;
    }
    Ok(Some(scan.records))
}

/// Records encoded into a log image come back from `scan` and decode to
/// themselves; after `mutation` of the image, whatever `scan` still returns
/// is a prefix of the original records (the checksums see to that) and
/// decodes without panicking.
fn log_round_trip_then_mutate<T: PartialEq + Debug>(
    codec: &Codec<T>,
    records: &[T],
    mutation: &Mutation,
) -> Result<(), TestCaseError> {
    let payloads: Vec<Vec<u8>> = records.iter().map(|r| (codec.encode)(r)).collect();
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let image = encode_log(&refs);
    let scan = file_log::scan(log_path(), &image, RECORD_BYTES_MAX_DEFAULT)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&scan.records, &payloads);
    for (payload, record) in scan.records.iter().zip(records) {
        match (codec.decode)(payload) {
            Ok(v) => prop_assert_eq!(&v, record),
            Err(e) => prop_assert!(false, "{}: record from the log rejected: {}", codec.name, e),
        }
    }
    let mutated = mutation.apply(&image);
    if let Some(recovered) = scan_and_decode(codec, &mutated)? {
        // Only extensions can add records, and random bytes forming a
        // record with a valid checksum is a 2^-32 event: ignore that case.
        let n = recovered.len().min(payloads.len());
        prop_assert_eq!(&recovered[..n], &payloads[..n]);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(config(2048))]

    /// Tree text from a user (`--tree`, later): any text is an error or a
    /// tree, never a panic, and a tree prints back to text that parses to
    /// the same tree.
    #[test]
    fn tree_text_never_panics_and_round_trips(text in "[a-c(), ]{0,40}") {
        if let Ok(tree) = concord_api::tree::Tree::parse(&text) {
            prop_assert_eq!(concord_api::tree::Tree::parse(&tree.to_string()), Ok(tree));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in noise()) {
        decode_any(&peer_codec(), &bytes)?;
        decode_any(&request_codec(), &bytes)?;
        decode_any(&reply_codec(), &bytes)?;
        decode_any(&coordinator_record_codec(), &bytes)?;
        decode_any(&participant_record_codec(), &bytes)?;
        decode_any(&kv_work_codec(), &bytes)?;
        decode_any(&kv_record_codec(), &bytes)?;
    }

    /// Each decoder fed bytes that start like one of its own values (a
    /// valid enum tag and more), so the fuzzing gets past the first byte.
    #[test]
    fn valid_prefix_then_noise_never_panics(
        m in envelope(),
        q in request(),
        r in reply(),
        c in coordinator_record(),
        p in participant_record(),
        ops in kv_ops(),
        cut in any::<prop::sample::Index>(),
        tail in noise(),
    ) {
        fn check<T: PartialEq + Debug>(
            codec: &Codec<T>, value: &T, cut: prop::sample::Index, tail: &[u8],
        ) -> Result<(), TestCaseError> {
            let mut bytes = (codec.encode)(value);
            bytes.truncate(cut.index(bytes.len() + 1));
            bytes.extend_from_slice(tail);
            decode_any(codec, &bytes).map(drop)
        }
        check(&peer_codec(), &m, cut, &tail)?;
        check(&request_codec(), &q, cut, &tail)?;
        check(&reply_codec(), &r, cut, &tail)?;
        check(&coordinator_record_codec(), &c, cut, &tail)?;
        check(&participant_record_codec(), &p, cut, &tail)?;
        check(&kv_work_codec(), &ops, cut, &tail)?;
    }

    #[test]
    fn peer_messages_round_trip_then_mutations_never_panic(m in envelope(), mu in mutation()) {
        round_trip_then_mutate(&peer_codec(), &m, &mu)?;
        // A PREPARE's work is what the key-value participant decodes next.
        if let wire::PeerBody::Message(Message {
            body: Body::Prepare { work, .. },
            ..
        }) = &m.body
        {
            decode_any(&kv_work_codec(), &mu.apply(work))?;
        }
    }

    #[test]
    fn requests_round_trip_then_mutations_never_panic(q in request(), mu in mutation()) {
        round_trip_then_mutate(&request_codec(), &q, &mu)?;
        if let Request::Begin { branches, .. } = &q {
            for b in branches {
                decode_any(&kv_work_codec(), &mu.apply(&b.work))?;
            }
        }
    }

    #[test]
    fn replies_round_trip_then_mutations_never_panic(r in reply(), mu in mutation()) {
        round_trip_then_mutate(&reply_codec(), &r, &mu)?;
    }

    #[test]
    fn kv_work_round_trips_then_mutations_never_panic(
        ops in kv_ops(),
        seed in kv_record(),
        mu in mutation(),
    ) {
        round_trip_then_mutate(&kv_work_codec(), &ops, &mu)?;
        round_trip_then_mutate(&kv_record_codec(), &seed, &mu)?;
    }

    /// Frame bodies arrive through the frame codec: a value sent as a real
    /// frame comes out of `FrameCodec` with its kind and decodes to itself.
    #[test]
    fn values_round_trip_through_real_frames(m in envelope(), q in request(), r in reply()) {
        let frames = [
            wire::peer_frame(&m.from, &m.reply_to, m.incarnation, &m.peers, body_ref(&m.body)),
            wire::request_frame(&q),
            wire::reply_frame(&r),
        ];
        let mut buf = BytesMut::new();
        for f in &frames {
            encode_frame(f.kind, &f.body, &mut buf);
        }
        let mut codec = FrameCodec::new(wire::REPLY_BYTES_MAX);
        let mut got = Vec::new();
        while let Some(f) = codec.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))? {
            got.push(f);
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(
            got.iter().map(|f| f.kind).collect::<Vec<_>>(),
            vec![wire::KIND_PEER, wire::KIND_REQUEST, wire::KIND_REPLY]
        );
        prop_assert_eq!(wire::decode_peer(&got[0].body).map_err(err), Ok(m));
        prop_assert_eq!(wire::decode_request(&got[1].body).map_err(err), Ok(q));
        prop_assert_eq!(wire::decode_reply(&got[2].body).map_err(err), Ok(r));
    }

    #[test]
    fn coordinator_records_round_trip_then_mutations_never_panic(
        c in coordinator_record(),
        mu in mutation(),
    ) {
        round_trip_then_mutate(&coordinator_record_codec(), &c, &mu)?;
    }

    #[test]
    fn participant_records_round_trip_then_mutations_never_panic(
        p in participant_record(),
        mu in mutation(),
    ) {
        round_trip_then_mutate(&participant_record_codec(), &p, &mu)?;
        // The payloads a participant record carries are decoded too.
        match &p {
            ParticipantRecord::Ready { work, .. }
            | ParticipantRecord::OnePhase { work, .. }
            | ParticipantRecord::SubtreeReady { work, .. } => {
                decode_any(&kv_work_codec(), &mu.apply(work))?;
            }
            ParticipantRecord::Resource { body } => {
                decode_any(&kv_record_codec(), &mu.apply(body))?;
            }
            ParticipantRecord::Outcome { .. }
            | ParticipantRecord::Heuristic { .. }
            | ParticipantRecord::Finished { .. }
            | ParticipantRecord::Peer { .. }
            | ParticipantRecord::Started { .. }
            | ParticipantRecord::PeerHint { .. } => {}
        }
    }

    #[test]
    fn coordinator_log_images_round_trip_then_damage_never_panics(
        records in prop::collection::vec(coordinator_record(), 0..10),
        mu in mutation(),
    ) {
        log_round_trip_then_mutate(&coordinator_record_codec(), &records, &mu)?;
    }

    #[test]
    fn participant_log_images_round_trip_then_damage_never_panics(
        records in prop::collection::vec(participant_record(), 0..10),
        mu in mutation(),
    ) {
        log_round_trip_then_mutate(&participant_record_codec(), &records, &mu)?;
    }

    /// A log whose framing and checksums are valid but whose payloads are
    /// garbage (another version's records, a bug, a hand-edited file):
    /// recovery gets every payload back and no record decoder panics.
    #[test]
    fn valid_log_framing_around_garbage_payloads_never_panics(
        payloads in prop::collection::vec(noise(), 0..8),
        real in prop::collection::vec(participant_record(), 0..4),
        mu in mutation(),
    ) {
        let mut all = payloads;
        // Real records with one mutation each, checksummed after the damage.
        all.extend(real.iter().map(|r| mu.apply(&encode(r))));
        let refs: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
        let image = encode_log(&refs);
        prop_assert_eq!(scan_and_decode(&coordinator_record_codec(), &image)?, Some(all.clone()));
        prop_assert_eq!(scan_and_decode(&participant_record_codec(), &image)?, Some(all.clone()));
        scan_and_decode(&kv_work_codec(), &image)?;
        scan_and_decode(&kv_record_codec(), &image)?;
    }

    /// What a participant does with its decoded log at start-up: the
    /// key-value store replays seed, READY and outcome records. Arbitrary
    /// well-formed records (any work, any seed) give a store or an error.
    #[test]
    fn kv_replay_of_decoded_records_never_panics(
        records in prop_oneof![
            replayable_log(),
            prop::collection::vec(participant_record(), 0..12),
        ],
        mu in mutation(),
        which in any::<prop::sample::Index>(),
    ) {
        let _ = KvStore::replay(&records);
        // The same log with one record's encoding damaged, if it still decodes.
        if records.is_empty() {
            return Ok(());
        }
        let i = which.index(records.len());
        let mut damaged = records.clone();
        match (participant_record_codec().decode)(&mu.apply(&encode(&records[i]))) {
            Ok(r) => damaged[i] = r,
            Err(_) => {
                damaged.remove(i);
            }
        }
        let _ = KvStore::replay(&damaged);
    }
}

/// Found by `kv_replay_of_decoded_records_never_panics`: one branch whose
/// ops on an account net to something safe (+i64::MAX then -i64::MAX on a
/// balance of 100) passes `prepare`'s checks; commit and replay apply the
/// ops one by one and must reach the right balance without an overflow
/// panic (in builds with overflow checks too).
#[test]
fn kv_offsetting_extreme_deltas_in_one_branch() {
    use concord_participant::{Answer, Resource};
    let ops = [
        KvOp {
            account: "acct-0".into(),
            delta: i64::MAX,
        },
        KvOp {
            account: "acct-0".into(),
            delta: -i64::MAX,
        },
    ];
    let work = kv::encode_work(&ops);
    let seed = kv::seed_record(1, 100);
    let mut store = KvStore::replay([&seed]).expect("seed replays");
    assert_eq!(
        store.prepare(Xid(1), &work),
        Answer::Now(Ok(())),
        "ops sum to zero: prepare accepts"
    );
    assert_eq!(store.commit(Xid(1)), Answer::Now(Ok(())));
    assert_eq!(store.balances()["acct-0"], 100);

    let log = [
        seed,
        ParticipantRecord::Ready {
            xid: Xid(1),
            coordinator: "127.0.0.1:7000".into(),
            epoch: 1,
            participants: vec!["127.0.0.1:7101".into()],
            work,
        },
        ParticipantRecord::Outcome {
            xid: Xid(1),
            decision: Decision::Commit,
        },
    ];
    let replayed = KvStore::replay(&log).expect("log replays");
    assert_eq!(replayed.balances()["acct-0"], 100);
}
