//! Property tests of the HTTP API's JSON decoders (`concord_api::http`):
//! arbitrary bytes and mutated valid bodies never panic, and what decodes
//! re-encodes to the same value; random valid bodies round-trip; an
//! unknown field anywhere is refused by name.
//!
//! `PROPTEST_CASES=100000 cargo test --release -p concord --test fuzz_json`
//! runs longer; a failure prints the minimal input.

use concord_api::http::{
    BeginBody, BranchBody, KvOpBody, OutcomeBody, Problem, ShapeName, TxnStateName,
};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9\\-]{0,12}|\\PC{0,8}"
}

fn op() -> impl Strategy<Value = KvOpBody> {
    (name(), any::<i64>()).prop_map(|(account, delta)| KvOpBody { account, delta })
}

fn branch() -> impl Strategy<Value = BranchBody> {
    (name(), prop::collection::vec(op(), 0..4)).prop_map(|(participant, ops)| BranchBody {
        participant,
        ops,
        work: None,
    })
}

fn shape() -> impl Strategy<Value = ShapeName> {
    prop_oneof![
        Just(ShapeName::Centralized),
        Just(ShapeName::Linear),
        Just(ShapeName::Hierarchical),
    ]
}

fn begin() -> impl Strategy<Value = BeginBody> {
    (
        prop::collection::vec(branch(), 0..5),
        prop::option::of(shape()),
        prop::option::of("[a-z(),]{0,20}"),
        prop::option::of(any::<u64>()),
        prop::option::of(any::<u64>()),
        prop::option::of(any::<u64>()),
    )
        .prop_map(
            |(branches, shape, tree, prepare_timeout_ms, wait_ms, lifetime_ms)| BeginBody {
                branches,
                shape,
                tree,
                prepare_timeout_ms,
                wait_ms,
                lifetime_ms,
            },
        )
}

fn state() -> impl Strategy<Value = TxnStateName> {
    prop_oneof![
        Just(TxnStateName::Preparing),
        Just(TxnStateName::Committing),
        Just(TxnStateName::CommittedWaitingForAcks),
        Just(TxnStateName::Committed),
        Just(TxnStateName::Aborted),
        Just(TxnStateName::OnePhase),
        Just(TxnStateName::NoRecord),
        Just(TxnStateName::Pending),
        Just(TxnStateName::Open),
    ]
}

/// Decoding `bytes` must not panic; a value that decodes re-encodes to
/// itself.
fn decodes_sanely<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = serde_json::from_slice::<T>(bytes) {
        let again = serde_json::to_vec(&value).expect("re-encode");
        let back: T = serde_json::from_slice(&again).expect("what was encoded decodes");
        prop_assert_eq!(back, value);
    }
    Ok(())
}

/// A mutation of valid JSON: flip, truncate, insert, remove.
fn mutate(mut bytes: Vec<u8>, kind: u8, at: usize, byte: u8) -> Vec<u8> {
    if bytes.is_empty() {
        return vec![byte];
    }
    let at = at % bytes.len();
    match kind % 4 {
        0 => bytes[at] ^= byte.max(1),
        1 => bytes.truncate(at),
        2 => bytes.insert(at, byte),
        _ => {
            bytes.remove(at);
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2048),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        decodes_sanely::<BeginBody>(&bytes)?;
        decodes_sanely::<OutcomeBody>(&bytes)?;
        decodes_sanely::<Problem>(&bytes)?;
    }

    #[test]
    fn valid_bodies_round_trip(body in begin()) {
        let json = serde_json::to_vec(&body).expect("encode");
        let back: BeginBody = serde_json::from_slice(&json).expect("decode");
        prop_assert_eq!(back, body);
    }

    #[test]
    fn mutated_valid_bodies_never_panic(
        body in begin(),
        mutations in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = serde_json::to_vec(&body).expect("encode");
        for (kind, at, byte) in mutations {
            bytes = mutate(bytes, kind, at, byte);
        }
        decodes_sanely::<BeginBody>(&bytes)?;
    }

    #[test]
    fn an_unknown_field_is_refused_by_name(body in begin(), field in "[a-z]{3,10}") {
        let known = ["branches", "shape", "tree", "prepare_timeout_ms", "wait_ms"];
        prop_assume!(!known.contains(&field.as_str()));
        let mut value = serde_json::to_value(&body).expect("encode");
        value[field.as_str()] = serde_json::json!(1);
        let error = serde_json::from_value::<BeginBody>(value).expect_err("refused");
        let expected = format!("unknown field `{field}`");
        prop_assert!(error.to_string().contains(&expected), "{}", error);
    }

    #[test]
    fn outcomes_round_trip(xid in "[0-9a-f]{32}", state in state(), reason in prop::option::of(name())) {
        let body = OutcomeBody { status_url: format!("/v1/transactions/{xid}"), xid, state, reason };
        let json = serde_json::to_vec(&body).expect("encode");
        let back: OutcomeBody = serde_json::from_slice(&json).expect("decode");
        prop_assert_eq!(back, body);
    }
}
