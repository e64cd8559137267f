//! The bank workload: accounts on every participant and client transfers
//! between them.
//!
//! Every transaction is a set of balanced transfers: each debits an account
//! on one participant and credits an account on another by the same amount,
//! so money only moves (the conservation invariant). Its branches go to
//! 2..=N distinct participants. Some transactions are meant to abort (an
//! unknown account, an overdraft), and some hit each participant's hot
//! account `acct-0` so that transactions collide on locks. All choices come
//! from the run's RNG; nothing here looks at the cluster's state.

use crate::config::{ShapeMode, SimConfig};
use concord_participant::kv::KvOp;
use concord_proto::{Shape, Time, TREE_DEPTH_MAX};
use rand::seq::SliceRandom;
use rand::Rng;

/// Name of account `i` on every participant (as `kv::seed_record` names it).
pub fn account_name(i: usize) -> String {
    format!("acct-{i}")
}

/// What the workload intended a transaction to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// An ordinary transfer: commits unless locks, timeouts or faults say
    /// otherwise.
    Transfer,
    /// Names an account that does not exist: must abort.
    UnknownAccount,
    /// Debits more money than the whole system holds: must abort.
    Overdraft,
}

/// One client transaction: when it is submitted and its branches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnPlan {
    pub submit_at: Time,
    /// (participant index, its operations); participants are distinct.
    pub branches: Vec<(usize, Vec<KvOp>)>,
    pub intent: Intent,
    /// Linear: the chain runs in the order of `branches`.
    pub shape: Shape,
    /// Hierarchical: each branch's parent (0: the coordinator, `k`:
    /// branch `k - 1`), as in `Request::Begin`; empty otherwise.
    pub parents: Vec<u32>,
}

/// Draw the run's client transactions, sorted by submission time.
pub fn plan_transactions(config: &SimConfig, rng: &mut impl Rng) -> Vec<TxnPlan> {
    let total_money =
        config.balance_initial * (config.participants * config.accounts_per_participant) as i64;
    let mut plans: Vec<TxnPlan> = (0..config.transactions)
        .map(|_| plan_one(config, total_money, rng))
        .collect();
    // Stable sort by time keeps the draw order for equal times.
    plans.sort_by_key(|p| p.submit_at);
    plans
}

fn plan_one(config: &SimConfig, total_money: i64, rng: &mut impl Rng) -> TxnPlan {
    let submit_at = Time(rng.gen_range(0..=config.safety_ms * 1000));
    // Sometimes a single-branch transaction (a transfer between two
    // accounts of one participant): 2PC with one participant.
    let width = if rng.gen_bool(0.1) {
        1
    } else {
        rng.gen_range(2..=config.participants)
    };
    let mut chosen: Vec<usize> = (0..config.participants).collect();
    chosen.shuffle(rng);
    chosen.truncate(width);
    let intent = if rng.gen_bool(config.workload.unknown_account_probability) {
        Intent::UnknownAccount
    } else if rng.gen_bool(config.workload.overdraft_probability) {
        Intent::Overdraft
    } else {
        Intent::Transfer
    };
    let mut ops: Vec<Vec<KvOp>> = vec![Vec::new(); width];
    // A chain of transfers chosen[0] -> chosen[1] -> ... gives every
    // branch at least one operation; sometimes one more transfer between
    // two random branches adds variety.
    let mut transfers: Vec<(usize, usize)> = if width == 1 {
        vec![(0, 0)]
    } else {
        (0..width - 1).map(|i| (i, i + 1)).collect()
    };
    if width > 1 && rng.gen_bool(0.3) {
        let a = rng.gen_range(0..width);
        let b = (a + rng.gen_range(1..width)) % width;
        transfers.push((a, b));
    }
    for (n, (from, to)) in transfers.into_iter().enumerate() {
        let amount = if intent == Intent::Overdraft && n == 0 {
            total_money + 1
        } else {
            rng.gen_range(1..=config.workload.amount_max.max(1))
        };
        let debit = pick_account(config, rng);
        let mut credit = pick_account(config, rng);
        if from == to && credit == debit {
            // Within one participant a transfer must move money between two
            // accounts (else an overdraft would net to nothing).
            let i = rng.gen_range(1..config.accounts_per_participant.max(2));
            credit =
                account_name((account_index(&debit) + i) % config.accounts_per_participant.max(2));
        }
        ops[from].push(KvOp {
            account: debit,
            delta: -amount,
        });
        ops[to].push(KvOp {
            account: credit,
            delta: amount,
        });
    }
    if intent == Intent::UnknownAccount {
        let branch = rng.gen_range(0..width);
        let op = rng.gen_range(0..ops[branch].len());
        ops[branch][op].account = "acct-missing".to_string();
    }
    let p_read = config.workload.read_only_probability;
    if p_read > 0.0 {
        if intent != Intent::Overdraft && rng.gen_bool(p_read / 4.0) {
            // Only reads: every change becomes a balance check (an unknown
            // account still fails its prepare).
            for op in ops.iter_mut().flatten() {
                op.delta = 0;
            }
        }
        if width < config.participants && rng.gen_bool(p_read) {
            // A balance check on one more participant: a READ-ONLY vote.
            let extra = (0..config.participants)
                .filter(|p| !chosen.contains(p))
                .collect::<Vec<_>>();
            let who = extra[rng.gen_range(0..extra.len())];
            chosen.push(who);
            let reads = (0..rng.gen_range(1..=2))
                .map(|_| KvOp {
                    account: pick_account(config, rng),
                    delta: 0,
                })
                .collect();
            ops.push(reads);
        }
    }
    let shape = match config.shape {
        ShapeMode::Centralized => Shape::Centralized,
        ShapeMode::Linear => Shape::Linear,
        ShapeMode::Hierarchical => Shape::Hierarchical,
        ShapeMode::Mixed => *[Shape::Centralized, Shape::Linear, Shape::Hierarchical]
            .choose(rng)
            .unwrap_or(&Shape::Centralized),
    };
    let parents = if shape == Shape::Hierarchical {
        draw_tree(chosen.len(), rng)
    } else {
        Vec::new()
    };
    TxnPlan {
        submit_at,
        branches: chosen.into_iter().zip(ops).collect(),
        intent,
        shape,
        parents,
    }
}

/// A random tree over `n` branches, depth at most `TREE_DEPTH_MAX`:
/// branch `k`'s parent is the coordinator or an earlier branch not yet at
/// the deepest level. Half the time a deep one (each branch under the one
/// before, as deep as allowed), so depths 3 and 4 come up often.
pub fn draw_tree(n: usize, rng: &mut impl Rng) -> Vec<u32> {
    let deep = rng.gen_bool(0.5);
    let mut depth = vec![0usize]; // index 0: the coordinator
    let mut parents = Vec::with_capacity(n);
    for k in 0..n {
        let open: Vec<usize> = (0..=k).filter(|&i| depth[i] < TREE_DEPTH_MAX).collect();
        let parent = if deep && depth[k] < TREE_DEPTH_MAX {
            k
        } else {
            *open.choose(rng).unwrap_or(&0)
        };
        depth.push(depth[parent] + 1);
        parents.push(parent as u32);
    }
    parents
}

/// The index of an account named by [`account_name`].
fn account_index(name: &str) -> usize {
    name.strip_prefix("acct-")
        .and_then(|i| i.parse().ok())
        .unwrap_or(0)
}

fn pick_account(config: &SimConfig, rng: &mut impl Rng) -> String {
    if rng.gen_bool(config.workload.hot_probability) {
        account_name(0)
    } else {
        account_name(rng.gen_range(0..config.accounts_per_participant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SimOptions;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn every_transaction_is_balanced_and_spans_distinct_participants() {
        for seed in 0..50 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let config = SimConfig::generate(seed, &SimOptions::default(), &mut rng);
            for plan in plan_transactions(&config, &mut rng) {
                let sum: i64 = plan
                    .branches
                    .iter()
                    .flat_map(|(_, ops)| ops.iter().map(|o| o.delta))
                    .sum();
                assert_eq!(sum, 0, "seed {seed}: {plan:?}");
                let mut who: Vec<usize> = plan.branches.iter().map(|(p, _)| *p).collect();
                assert!(!who.is_empty());
                who.sort();
                who.dedup();
                assert_eq!(who.len(), plan.branches.len());
                assert!(plan.branches.iter().all(|(_, ops)| !ops.is_empty()));
            }
        }
    }
}
