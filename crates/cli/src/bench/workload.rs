//! The closed-loop workload of `concord bench`: `concurrency` tasks, each
//! running one global transaction at a time and the next as soon as the
//! last one finished, over a few shared client connections.
//!
//! Every transaction has `branches` branches on distinct participants and
//! moves money between key-value accounts so that the total never changes.
//! Without contention each task uses accounts no other task touches, so
//! there are no lock conflicts. It cycles over [`OWN_ACCOUNTS`] of them
//! because the outcome comes back once the decision is durable, before it
//! has reached every branch: in a tree the decision reaches a leaf through
//! its parent, and the task's next PREPARE (sent straight to that leaf
//! when it is the next transaction's root) can overtake it and find the
//! key still locked (the key-value resource does not wait for locks).
//! With `hot_share` > 0 that share of the
//! transactions uses one of `hot_accounts` accounts shared by all tasks
//! instead (then lock conflicts, and VOTE ABORTs, are part of the result).
//!
//! Only transactions that *finish* inside the measuring window are counted,
//! and their latency is the client's: from sending Begin to the outcome.

use concord_api::{BranchRequest, Outcome};
use concord_client::{Client, ClientError};
use concord_participant::kv::{encode_work_with_memo, KvOp};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Accounts of its own each task cycles over.
pub const OWN_ACCOUNTS: usize = 4;

/// What one run of the workload does.
#[derive(Clone, Debug)]
pub struct Workload {
    pub concurrency: usize,
    /// Client connections the tasks share.
    pub connections: usize,
    pub branches: usize,
    /// How many of the branches (the last ones) only read: a balance
    /// check of amount 0, which votes READ-ONLY.
    pub read_only_branches: usize,
    pub shape: concord_proto::Shape,
    /// The tree of a hierarchical transaction: branch `b` goes to its
    /// `b`-th participant (parents first), with no rotation. Without one,
    /// a balanced binary tree over the rotated branches.
    pub tree: Option<concord_api::tree::Tree>,
    /// Participant names at the coordinator.
    pub participants: Vec<String>,
    pub hot_accounts: usize,
    pub hot_share: f64,
    pub payload_bytes: usize,
    pub seed: u64,
    /// Run every transaction through the coordinator's HTTP API at this
    /// address (one keep-alive connection per task) instead of the binary
    /// protocol. The HTTP API carries no memo: `payload_bytes` is ignored.
    pub http: Option<String>,
    /// What each branch's work is written for.
    pub resource: WorkResource,
    /// Run every transaction without concord, as a bare client doing
    /// PostgreSQL's own two-phase commit on these databases (participant
    /// `i`'s is `bare_pg[i]`): the baseline of `--resource postgres`.
    pub bare_pg: Option<Vec<String>>,
}

/// The resource the participants run, and so how a branch's moves are
/// written as its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkResource {
    /// Key-value moves (`concord participant`).
    Kv,
    /// Shipped SQL, one UPDATE per move (`concord pg-participant`).
    Postgres,
}

/// How one transaction ended, from the load generator's side.
enum Attempt {
    Finished(Outcome),
    /// No outcome: the error's class, and whether the task must stop.
    Failed {
        class: String,
        fatal: bool,
    },
}

impl From<Result<concord_client::TxnResult, ClientError>> for Attempt {
    fn from(result: Result<concord_client::TxnResult, ClientError>) -> Attempt {
        match result {
            Ok(r) => Attempt::Finished(r.outcome),
            Err(e) => Attempt::Failed {
                class: error_class(&e),
                fatal: is_fatal(&e),
            },
        }
    }
}

/// What the tasks saw in the measuring window.
#[derive(Clone, Debug)]
pub struct Tally {
    pub committed: u64,
    pub aborted: BTreeMap<String, u64>,
    /// Client errors (connection lost, outcome unknown, rejected).
    pub errors: BTreeMap<String, u64>,
    /// Latency in microseconds of every transaction finished in the window.
    pub latency_us: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            committed: 0,
            aborted: BTreeMap::new(),
            errors: BTreeMap::new(),
            // 1 µs .. 100 s, 3 significant digits.
            latency_us: new_histogram(),
        }
    }

    pub fn aborted_total(&self) -> u64 {
        self.aborted.values().sum()
    }

    pub fn finished(&self) -> u64 {
        self.committed + self.aborted_total()
    }

    fn merge(&mut self, other: Tally) {
        self.committed += other.committed;
        for (k, v) in other.aborted {
            *self.aborted.entry(k).or_insert(0) += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
        // Same bounds on both sides: cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).unwrap_or_else(|_| {
        // The bounds are constants that hdrhistogram accepts.
        unreachable!("valid histogram bounds")
    })
}

/// Phases the tasks go through; they read it before each transaction.
const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

impl Workload {
    /// Run the warm-up, then the window; `at_window_start` and
    /// `at_window_end` run exactly at its edges (they read the servers'
    /// counters) while the load keeps running.
    pub async fn run<S, E, FS, FE>(
        &self,
        coordinators: &[String],
        warmup: Duration,
        window: Duration,
        at_window_start: FS,
        at_window_end: FE,
    ) -> anyhow::Result<(Tally, Duration, S, E)>
    where
        FS: std::future::Future<Output = anyhow::Result<S>>,
        FE: std::future::Future<Output = anyhow::Result<E>>,
    {
        let mut clients = Vec::new();
        // Over HTTP each task has its own connection; one binary client is
        // still made (the tasks' signature), and stays idle.
        let binary = if self.http.is_some() {
            1
        } else {
            self.connections.max(1)
        };
        // A bare PostgreSQL run talks to no coordinator.
        if self.bare_pg.is_none() {
            // Several instances: the connections go round them.
            for c in 0..binary {
                let coordinator = &coordinators[c % coordinators.len().max(1)];
                clients.push(Arc::new(Client::connect(coordinator).await?));
            }
        }
        let phase = Arc::new(AtomicU8::new(WARMUP));
        let mut tasks = Vec::new();
        for t in 0..self.concurrency {
            let target = match (&self.bare_pg, &self.http) {
                (Some(dsns), _) => Target::BarePg(super::postgres::BarePg::connect(dsns, t).await?),
                (None, Some(addr)) => Target::Http(super::http::Conn::open(addr).await?),
                (None, None) => Target::Binary(Arc::clone(&clients[t % clients.len()])),
            };
            let phase = Arc::clone(&phase);
            let me = self.clone();
            tasks.push(tokio::spawn(async move { me.task(t, target, phase).await }));
        }
        tokio::time::sleep(warmup).await;
        let start_value = at_window_start.await?;
        phase.store(MEASURE, Ordering::SeqCst);
        let started = Instant::now();
        tokio::time::sleep(window).await;
        phase.store(STOP, Ordering::SeqCst);
        let elapsed = started.elapsed();
        let end_value = at_window_end.await?;
        let mut tally = Tally::new();
        for task in tasks {
            tally.merge(task.await?);
        }
        Ok((tally, elapsed, start_value, end_value))
    }

    async fn task(self, t: usize, mut target: Target, phase: Arc<AtomicU8>) -> Tally {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(self.seed ^ (t as u64) << 20);
        let mut tally = Tally::new();
        let memo = vec![0x5a; self.payload_bytes];
        let own_accounts: Vec<String> = (0..OWN_ACCOUNTS)
            .map(|k| format!("acct-{}", self.hot_accounts + t * OWN_ACCOUNTS + k))
            .collect();
        let mut next_own = 0;
        let hot: Vec<String> = (0..self.hot_accounts)
            .map(|i| format!("acct-{i}"))
            .collect();
        let n = self.participants.len();
        let tree_order: Option<Vec<String>> = self
            .tree
            .as_ref()
            .map(|t| t.names().into_iter().map(String::from).collect());
        loop {
            let started_in = phase.load(Ordering::Relaxed);
            if started_in == STOP {
                return tally;
            }
            // Distinct participants: a random rotation of the list.
            let first = rng.gen_range(0..n);
            let account = if !hot.is_empty() && rng.gen_bool(self.hot_share) {
                hot[rng.gen_range(0..hot.len())].as_str()
            } else {
                next_own = (next_own + 1) % OWN_ACCOUNTS;
                own_accounts[next_own].as_str()
            };
            let plan: Vec<(String, Vec<KvOp>)> = (0..self.branches)
                .map(|b| {
                    // Branch 0 pays 1 to each other writing branch: the
                    // sum is 0. The read-only ones move 0.
                    let writers = self.branches - self.read_only_branches.min(self.branches - 1);
                    let delta = if b == 0 {
                        -(writers as i64 - 1)
                    } else if b < writers {
                        1
                    } else {
                        0
                    };
                    let op = |delta| KvOp {
                        account: account.to_string(),
                        delta,
                    };
                    // A single writer still writes: 1 out and 1 back in.
                    let ops = if writers == 1 && b == 0 {
                        vec![op(-1), op(1)]
                    } else {
                        vec![op(delta)]
                    };
                    let participant = match &tree_order {
                        Some(order) => order[b].clone(),
                        None => self.participants[(first + b) % n].clone(),
                    };
                    (participant, ops)
                })
                .collect();
            let sent = Instant::now();
            let attempt = self.attempt(&mut target, plan, &memo).await;
            let latency = sent.elapsed();
            // Count only what both started and finished in the window.
            if started_in != MEASURE || phase.load(Ordering::Relaxed) != MEASURE {
                if let Attempt::Failed { fatal: true, .. } = attempt {
                    return tally;
                }
                continue;
            }
            match attempt {
                Attempt::Finished(outcome) => {
                    let _ = tally
                        .latency_us
                        .record(latency.as_micros().clamp(1, 100_000_000) as u64);
                    match outcome {
                        Outcome::Committed => tally.committed += 1,
                        Outcome::Aborted { reason } => {
                            *tally
                                .aborted
                                .entry(crate::demo::reason_class(&reason))
                                .or_insert(0) += 1
                        }
                    }
                }
                Attempt::Failed { class, fatal } => {
                    *tally.errors.entry(class).or_insert(0) += 1;
                    if fatal {
                        return tally;
                    }
                }
            }
        }
    }

    /// Run one transaction of `plan` (participant, moves) through `target`.
    async fn attempt(
        &self,
        target: &mut Target,
        plan: Vec<(String, Vec<KvOp>)>,
        memo: &[u8],
    ) -> Attempt {
        match target {
            Target::Http(conn) => {
                let body = super::http::begin_body(&plan, self.shape, self.tree.as_ref());
                conn.transact(&body).await.into()
            }
            Target::BarePg(bare) => {
                let plan: Vec<(usize, Vec<KvOp>)> = plan
                    .into_iter()
                    .map(|(name, ops)| {
                        let i = self.participants.iter().position(|p| *p == name);
                        (i.unwrap_or_default(), ops)
                    })
                    .collect();
                match bare.transact(&plan).await {
                    Ok(outcome) => Attempt::Finished(outcome),
                    Err(e) => Attempt::Failed {
                        class: e.class,
                        fatal: e.fatal,
                    },
                }
            }
            Target::Binary(client) => {
                let branches = plan
                    .into_iter()
                    .map(|(participant, ops)| BranchRequest {
                        participant,
                        work: match self.resource {
                            WorkResource::Kv => encode_work_with_memo(&ops, memo),
                            WorkResource::Postgres => crate::pgbank::shipped_work(&ops),
                        },
                    })
                    .collect();
                match self.shape {
                    concord_proto::Shape::Hierarchical => client
                        .transact_tree(branches, None, self.tree.as_ref())
                        .await
                        .into(),
                    shape => client.transact_shaped(branches, None, shape).await.into(),
                }
            }
        }
    }
}

/// Where one task sends its transactions.
enum Target {
    /// The coordinator's binary protocol, over a shared client.
    Binary(Arc<Client>),
    /// The coordinator's HTTP API, on the task's own connection.
    Http(super::http::Conn),
    /// No coordinator: PostgreSQL's own two-phase commit.
    BarePg(super::postgres::BarePg),
}

/// A request the coordinator refused as malformed, or a lost connection:
/// stop this task rather than spin on it.
fn is_fatal(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Invalid(_) | ClientError::Connect { .. } | ClientError::Protocol { .. }
    )
}

fn error_class(e: &ClientError) -> String {
    match e {
        ClientError::Connect { .. } => "cannot connect".into(),
        ClientError::Rejected(m) => format!("rejected: {}", m.chars().take(60).collect::<String>()),
        ClientError::OutcomeUnknown { .. } => "outcome unknown".into(),
        ClientError::ConnectionLost { .. } => "connection lost".into(),
        ClientError::Protocol { .. } => "protocol error".into(),
        ClientError::Invalid(_) => "invalid request".into(),
        ClientError::Busy(_) => "busy".into(),
    }
}
