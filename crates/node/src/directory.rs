//! The directory (participant names for humans and configuration ↔ the
//! addresses the protocol uses) and branch resolution: a client names
//! participants, the core takes one branch per participant address, so
//! branches naming the same participant are merged here.

use concord_api::BranchRequest;
use concord_participant::kv::{decode_kv_work, encode_work_with_memo, KvWork};
use concord_proto::PeerAddr;
use std::collections::HashMap;

/// Participants by name for humans, by address inside the protocol.
pub struct Directory {
    participants: Vec<(String, PeerAddr)>,
    by_name: HashMap<String, PeerAddr>,
    by_addr: HashMap<PeerAddr, String>,
}

impl Directory {
    pub fn new(participants: &[(String, PeerAddr)]) -> Directory {
        Directory {
            participants: participants.to_vec(),
            by_name: participants.iter().cloned().collect(),
            by_addr: participants
                .iter()
                .map(|(n, a)| (a.clone(), n.clone()))
                .collect(),
        }
    }

    /// A participant's address from its name (or its address).
    pub fn resolve(&self, participant: &str) -> Result<PeerAddr, String> {
        if let Some(addr) = self.by_name.get(participant) {
            return Ok(addr.clone());
        }
        if self.by_addr.contains_key(participant) {
            return Ok(participant.to_string());
        }
        Err(format!(
            "unknown participant {participant} (known: {})",
            self.participants
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// "name (addr)" for logs and status; the bare address if unnamed.
    pub fn display_name(&self, addr: &PeerAddr) -> String {
        match self.by_addr.get(addr) {
            Some(name) => format!("{name} ({addr})"),
            None => addr.clone(),
        }
    }

    /// Replace participant addresses in a core message with "name (addr)".
    pub fn name_addresses(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 16);
        let mut token = String::new();
        for c in text.chars().chain(std::iter::once(' ')) {
            if c == ' ' || c == ',' {
                match self.by_addr.get(&token) {
                    Some(name) => out.push_str(&format!("{name} ({token})")),
                    None => out.push_str(&token),
                }
                token.clear();
                out.push(c);
            } else {
                token.push(c);
            }
        }
        out.pop(); // the sentinel space
        out
    }

    /// Every configured participant, (name, address), in configured order.
    pub fn participants(&self) -> &[(String, PeerAddr)] {
        &self.participants
    }
}
/// Names (or addresses) to protocol addresses, merging branches that
/// name the same participant (the core takes one branch per
/// participant).
pub fn resolve_branches(
    directory: &Directory,
    branches: Vec<BranchRequest>,
) -> Result<Vec<(PeerAddr, Vec<u8>)>, String> {
    let mut resolved: Vec<(PeerAddr, Vec<Vec<u8>>)> = Vec::new();
    for branch in branches {
        let addr = directory.resolve(&branch.participant)?;
        match resolved.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, works)) => works.push(branch.work),
            None => resolved.push((addr, vec![branch.work])),
        }
    }
    resolved
        .into_iter()
        .map(|(addr, mut works)| {
            if works.len() == 1 {
                return Ok((addr, works.pop().unwrap_or_default()));
            }
            // Several branches for one participant: only key-value work
            // has a known way to merge.
            let mut merged = KvWork::default();
            for work in &works {
                let work = decode_kv_work(work).map_err(|e| {
                    format!(
                        "participant {} is named by several branches and their work cannot \
                         be merged (not key-value work: {e}); send one branch per participant",
                        directory.display_name(&addr)
                    )
                })?;
                merged.ops.extend(work.ops);
                merged.memo.extend(work.memo);
            }
            Ok((addr, encode_work_with_memo(&merged.ops, &merged.memo)))
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
        assert_eq!(resolved[0].0, "127.0.0.1:7101");
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
    fn addresses_in_reasons_get_names_exactly() {
        let d = directory();
        assert_eq!(
            d.name_addresses("no vote within 300 ms from 127.0.0.1:7101, 127.0.0.1:710"),
            "no vote within 300 ms from bank-a (127.0.0.1:7101), bank-b (127.0.0.1:710)"
        );
        assert_eq!(
            d.name_addresses("participant 127.0.0.1:71011 voted ABORT"),
            "participant 127.0.0.1:71011 voted ABORT"
        );
    }
}
