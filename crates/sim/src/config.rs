//! What a run looks like: the caller's [`SimOptions`] and the seed-derived
//! [`SimConfig`] (cluster shape, timeouts, fault rates, workload mix).
//!
//! [`SimConfig::generate`] draws every parameter from the run's one RNG, in
//! a fixed order, so the seed alone decides them. Each fault kind is
//! switched on or off per seed ("swarm testing"): a run with only crashes,
//! or only loss, finds bugs that a run with everything at once hides.
//! Nothing here may read the clock or the environment.

use concord_participant::delayed::DelayConfig;
use rand::Rng;

/// How the caller wants a random run done; the seed decides the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimOptions {
    /// Record a human-readable line for every event (slow; for replays).
    pub trace: bool,
    /// Upper bound on client transactions per seed (the seed picks how many).
    pub transactions_max: usize,
    /// Virtual time the liveness phase may take before a run that has not
    /// gone quiet fails the termination invariant.
    pub liveness_ms_max: u64,
    /// Events one run may process before it is declared stuck.
    pub events_max: u64,
    /// The shape of the run's transactions.
    pub shape: ShapeMode,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            trace: false,
            transactions_max: 60,
            liveness_ms_max: 120_000,
            events_max: 2_000_000,
            shape: ShapeMode::Centralized,
        }
    }
}

/// Which shapes a run's transactions take (`concord-sim --shape`).
/// Centralized and linear runs draw nothing for it, so a seed's other
/// draws are the same in both; hierarchical runs draw each tree after
/// everything else; mixed draws the shape per transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShapeMode {
    #[default]
    Centralized,
    Linear,
    Hierarchical,
    Mixed,
}

impl ShapeMode {
    pub const ALL: [ShapeMode; 4] = [
        ShapeMode::Centralized,
        ShapeMode::Linear,
        ShapeMode::Hierarchical,
        ShapeMode::Mixed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ShapeMode::Centralized => "centralized",
            ShapeMode::Linear => "linear",
            ShapeMode::Hierarchical => "hierarchical",
            ShapeMode::Mixed => "mixed",
        }
    }

    pub fn from_name(name: &str) -> Option<ShapeMode> {
        ShapeMode::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// The network's behaviour. Probabilities are in `0.0..=1.0`.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConfig {
    pub delay_us_min: u64,
    pub delay_us_max: u64,
    /// Chance a message takes an extra long detour (reordering).
    pub reorder_probability: f64,
    pub reorder_us_max: u64,
    /// Chance a message is lost (safety phase only).
    pub loss_probability: f64,
    /// Chance a message is delivered twice (both phases: it is harmless).
    pub duplicate_probability: f64,
}

/// The disks' behaviour: how long one fsync takes.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskConfig {
    pub fsync_us_min: u64,
    pub fsync_us_max: u64,
    /// Chance an fsync stalls (a slow disk), for up to `stall_us_max` more.
    pub stall_probability: f64,
    pub stall_us_max: u64,
}

/// Crashes and partitions of the safety phase.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultConfig {
    /// Crashes scheduled at random times, of random nodes.
    pub crashes: usize,
    /// Chance, per action a node's driver carries out, that the node
    /// crashes right after it (a crash "at any step", between a persist
    /// and the send after it, say).
    pub crash_in_actions_probability: f64,
    /// Longest a crashed node stays down before it restarts (some stay
    /// down until the liveness phase).
    pub downtime_ms_max: u64,
    /// Partitions: one node cut off from everyone for a while.
    pub partitions: usize,
    pub partition_ms_max: u64,
    /// Per transaction: the chance that one of its participants asks
    /// another for its STATE (INQUIRE), as a peer running cooperative
    /// termination does, at a random moment while it runs.
    pub peer_inquiry_probability: f64,
    /// A participant that restarts comes back at a new address (the
    /// coordinator's configuration still names the old one): it must be
    /// found again through its hellos and frames.
    pub restart_elsewhere: bool,
    /// Chance that an fsync fails: the store cannot say what reached the
    /// disk, so the node stops (fail-stop, as the servers do) with any
    /// prefix of its unsynced records on disk, and restarts later.
    pub fsync_error_probability: f64,
}

/// The bank workload.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadConfig {
    /// Chance a transfer touches the participant's hot account (acct-0),
    /// so that transactions collide on locks.
    pub hot_probability: f64,
    /// Chance a transaction names an account that does not exist (it must
    /// abort).
    pub unknown_account_probability: f64,
    /// Chance a transaction debits more than exists (it must abort).
    pub overdraft_probability: f64,
    /// Largest amount of an ordinary transfer.
    pub amount_max: i64,
    /// Chance a transaction gets one more branch that only reads (a
    /// balance check on another participant: it votes READ-ONLY), and a
    /// quarter of it that a transaction only reads.
    pub read_only_probability: f64,
}

/// The participants' resources: how late they answer, how often their
/// commits and aborts fail (transiently), and how the node retries them.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceConfig {
    pub delay: DelayConfig,
    pub apply_retry_ms_initial: u64,
    pub apply_retry_ms_max: u64,
}

impl ResourceConfig {
    /// A resource that answers at once and never fails.
    pub const PROMPT: ResourceConfig = ResourceConfig {
        delay: DelayConfig {
            prepare_ms: 0,
            commit_ms: 0,
            abort_ms: 0,
            commit_failures: 0,
            abort_failures: 0,
        },
        apply_retry_ms_initial: 10,
        apply_retry_ms_max: 1000,
    };
}

/// Everything about one run that the seed decides.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    pub seed: u64,
    pub participants: usize,
    pub accounts_per_participant: usize,
    pub balance_initial: i64,
    pub transactions: usize,
    /// Length of the safety phase: clients submit during it, faults happen
    /// during it.
    pub safety_ms: u64,
    /// Phase-1 timeout until measured, and the bounds of the measured one.
    pub prepare_timeout_ms: u64,
    pub prepare_timeout_ms_min: u64,
    /// A sub-coordinator's floor on a child's measured cap
    /// (`participant --child-prepare-timeout-ms-min`).
    pub child_prepare_timeout_ms_min: u64,
    pub prepare_timeout_ms_max: u64,
    /// A client that hears nothing for this long gives up (outcome unknown).
    pub client_timeout_ms: u64,
    pub resend_ms_initial: u64,
    pub resend_ms_min: u64,
    pub resend_ms_max: u64,
    pub inquire_ms_initial: u64,
    pub inquire_ms_min: u64,
    pub inquire_ms_max: u64,
    /// Samples of a (peer, phase) before its timeout comes from the
    /// estimate (the node layer's timeout policy, as shipped).
    pub timeout_samples_min: u64,
    /// Every node compacts its log after this many appended records
    /// (`u64::MAX`: never), so that crashes land inside compactions too.
    pub compact_after_records: u64,
    /// How many finished branches a participant remembers.
    pub finished_max: usize,
    pub net: NetConfig,
    pub disk: DiskConfig,
    pub faults: FaultConfig,
    pub workload: WorkloadConfig,
    /// Each node's clock, by node ordinal (coordinator first): the time a
    /// node sees runs at its own rate from its own origin, as monotonic
    /// clocks on different machines do. Safety must not depend on them;
    /// only timeouts may.
    pub clocks: Vec<ClockConfig>,
    pub resource: ResourceConfig,
    /// Each participant's admission limit (live branches); small in some
    /// seeds, so that "busy" votes happen.
    pub branches_in_flight_max: usize,
    /// One-phase commit of single-branch transactions at the coordinator.
    pub one_phase: bool,
    /// READ-ONLY votes at the participants.
    pub read_only_votes: bool,
    /// The shapes of the transactions (from `SimOptions::shape`).
    pub shape: ShapeMode,
}

/// One node's clock: node time = `offset_us` + world time × `rate_ppm` /
/// 1,000,000 (integers, so a seed replays the same on every platform).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockConfig {
    pub offset_us: u64,
    pub rate_ppm: u64,
}

impl ClockConfig {
    /// A clock that reads world time.
    pub const EXACT: ClockConfig = ClockConfig {
        offset_us: 0,
        rate_ppm: 1_000_000,
    };
}

impl SimConfig {
    /// Draw a configuration from `rng` (the run's one RNG, just seeded).
    pub fn generate(seed: u64, options: &SimOptions, rng: &mut impl Rng) -> SimConfig {
        let participants = rng.gen_range(2..=7);
        let accounts_per_participant = rng.gen_range(2..=20);
        let balance_initial = rng.gen_range(100..=1000);
        let transactions_max = options.transactions_max.max(1);
        let transactions = rng.gen_range(transactions_max.div_ceil(4)..=transactions_max);
        // Mostly seconds; sometimes minutes, with downtimes to match, so
        // that what only happens after a long time (finished branches
        // forgotten after FINISHED_MS_MIN, long backoffs) is reached too.
        let long_run = rng.gen_bool(0.05);
        let safety_ms = if long_run {
            rng.gen_range(60_000..=120_000)
        } else {
            rng.gen_range(100..=5000)
        };
        let prepare_timeout_ms = rng.gen_range(5..=200);
        let client_timeout_ms = rng.gen_range(20..=2000);
        let resend_ms_initial = rng.gen_range(1..=50);
        let resend_ms_max = rng.gen_range(resend_ms_initial..=1000);
        let inquire_ms_initial = rng.gen_range(1..=100);
        let inquire_ms_max = rng.gen_range(inquire_ms_initial..=2000);
        // Bounds of the measured timeouts, as the servers' -min/-max flags.
        let prepare_timeout_ms_min = rng.gen_range(1..=prepare_timeout_ms);
        let prepare_timeout_ms_max = rng.gen_range(prepare_timeout_ms..=prepare_timeout_ms * 20);
        let resend_ms_min = rng.gen_range(1..=resend_ms_initial);
        let inquire_ms_min = rng.gen_range(1..=inquire_ms_initial);
        let timeout_samples_min = rng.gen_range(1..=16);
        let compact_after_records = if rng.gen_bool(0.7) {
            rng.gen_range(4..=200)
        } else {
            u64::MAX
        };
        // Mostly plenty; sometimes a short memory, so that late duplicates
        // meet a participant that has forgotten the branch.
        let finished_max = if rng.gen_bool(0.1) {
            rng.gen_range(1..=16)
        } else {
            100_000
        };

        // Swarm testing: each fault kind on or off for this seed.
        let loss_on = rng.gen_bool(0.7);
        let duplicate_on = rng.gen_bool(0.7);
        let reorder_on = rng.gen_bool(0.7);
        let stall_on = rng.gen_bool(0.7);
        let crash_on = rng.gen_bool(0.7);
        let crash_in_actions_on = rng.gen_bool(0.7);
        let peer_inquiry_on = rng.gen_bool(0.5);
        let partition_on = rng.gen_bool(0.7);

        // Delay scales spread evenly over 0.1–50 ms on a log scale, so that
        // fast networks (where timeouts rarely fire) are as common as slow
        // ones; integers only, so the draw is the same on every platform.
        let scale = [100, 300, 1_000, 3_000, 10_000, 30_000, 50_000][rng.gen_range(0..7)];
        let delay_us_max = rng.gen_range(scale / 2..=scale).max(100);
        let delay_us_min = rng.gen_range(100..=delay_us_max);
        let net = NetConfig {
            delay_us_min,
            delay_us_max,
            reorder_probability: if reorder_on {
                rng.gen_range(0.0..0.2)
            } else {
                0.0
            },
            reorder_us_max: rng.gen_range(delay_us_max..=delay_us_max * 5 + 100_000),
            loss_probability: if loss_on {
                rng.gen_range(0.0..0.2)
            } else {
                0.0
            },
            duplicate_probability: if duplicate_on {
                rng.gen_range(0.0..0.2)
            } else {
                0.0
            },
        };
        let fsync_us_max = rng.gen_range(10..=20_000);
        let disk = DiskConfig {
            fsync_us_min: rng.gen_range(10..=fsync_us_max),
            fsync_us_max,
            stall_probability: if stall_on {
                rng.gen_range(0.0..0.1)
            } else {
                0.0
            },
            stall_us_max: rng.gen_range(1_000..=300_000),
        };
        let faults = FaultConfig {
            crashes: if crash_on { rng.gen_range(1..=6) } else { 0 },
            crash_in_actions_probability: if crash_in_actions_on {
                rng.gen_range(0.0..0.01)
            } else {
                0.0
            },
            downtime_ms_max: if long_run {
                rng.gen_range(1_000..=70_000)
            } else {
                rng.gen_range(1..=1000)
            },
            partitions: if partition_on {
                rng.gen_range(1..=4)
            } else {
                0
            },
            partition_ms_max: rng.gen_range(1..=500),
            peer_inquiry_probability: if peer_inquiry_on {
                rng.gen_range(0.0..0.5)
            } else {
                0.0
            },
            restart_elsewhere: false,     // drawn last, below
            fsync_error_probability: 0.0, // drawn last, below
        };
        let workload = WorkloadConfig {
            hot_probability: rng.gen_range(0.0..0.3),
            unknown_account_probability: rng.gen_range(0.0..0.08),
            overdraft_probability: rng.gen_range(0.0..0.08),
            amount_max: rng.gen_range(1..=balance_initial / 2),
            read_only_probability: 0.0, // drawn last, below
        };
        // Clock rates differ by up to ±10% between nodes in half the seeds
        // (drawn last, so the rest of a seed's draws stay as they were).
        let skew_on = rng.gen_bool(0.5);
        let clocks = (0..=participants)
            .map(|_| {
                if skew_on {
                    ClockConfig {
                        offset_us: rng.gen_range(0..=10_000_000),
                        rate_ppm: rng.gen_range(900_000..=1_100_000),
                    }
                } else {
                    ClockConfig::EXACT
                }
            })
            .collect();
        // Drawn after everything else, for the same reason. Half the seeds
        // have resources that answer late (a database, a service), and a
        // third fail their first commits and aborts, which must be
        // retried with the locks held, never abandoned.
        let late_on = rng.gen_bool(0.5);
        let failing_on = rng.gen_bool(0.3);
        let late_ms = |rng: &mut dyn rand::RngCore| {
            if late_on && rng.gen_bool(0.7) {
                rng.gen_range(1..=100)
            } else {
                0
            }
        };
        let delay = DelayConfig {
            prepare_ms: late_ms(rng),
            commit_ms: late_ms(rng),
            abort_ms: late_ms(rng),
            commit_failures: if failing_on { rng.gen_range(1..=4) } else { 0 },
            abort_failures: if failing_on { rng.gen_range(0..=2) } else { 0 },
        };
        let apply_retry_ms_initial = rng.gen_range(1..=50);
        let resource = ResourceConfig {
            delay,
            apply_retry_ms_initial,
            apply_retry_ms_max: rng.gen_range(apply_retry_ms_initial..=2000),
        };
        let mut faults = faults;
        faults.restart_elsewhere = rng.gen_bool(0.3);
        faults.fsync_error_probability = if rng.gen_bool(0.3) {
            rng.gen_range(0.0..0.02)
        } else {
            0.0
        };
        let branches_in_flight_max = if rng.gen_bool(0.1) {
            rng.gen_range(1..=4)
        } else {
            100_000
        };
        // The optimizations, drawn last: most seeds run them as shipped,
        // some without, so both paths stay tested.
        let mut workload = workload;
        workload.read_only_probability = if rng.gen_bool(0.7) {
            rng.gen_range(0.0..0.4)
        } else {
            0.0
        };
        let one_phase = rng.gen_bool(0.8);
        let read_only_votes = rng.gen_bool(0.8);
        SimConfig {
            seed,
            participants,
            accounts_per_participant,
            balance_initial,
            transactions,
            safety_ms,
            prepare_timeout_ms,
            prepare_timeout_ms_min,
            // The coordinator's floor (not a draw of its own, so that the
            // seeds keep the rest of their configurations).
            child_prepare_timeout_ms_min: prepare_timeout_ms_min,
            prepare_timeout_ms_max,
            client_timeout_ms,
            resend_ms_initial,
            resend_ms_min,
            resend_ms_max,
            inquire_ms_initial,
            inquire_ms_min,
            inquire_ms_max,
            timeout_samples_min,
            compact_after_records,
            finished_max,
            net,
            disk,
            faults,
            workload,
            clocks,
            resource,
            branches_in_flight_max,
            one_phase,
            read_only_votes,
            shape: options.shape,
        }
    }

    /// A quiet cluster for scripted scenarios: no random faults at all,
    /// every message takes exactly 1 ms and every fsync 0.5 ms. The script
    /// injects the faults it is about.
    pub fn scripted(participants: usize) -> SimConfig {
        SimConfig {
            seed: 0,
            participants,
            accounts_per_participant: 4,
            balance_initial: 100,
            transactions: 0,
            safety_ms: 0,
            prepare_timeout_ms: 50,
            prepare_timeout_ms_min: 50,
            child_prepare_timeout_ms_min: 50,
            prepare_timeout_ms_max: 50,
            client_timeout_ms: 10_000,
            resend_ms_initial: 20,
            resend_ms_min: 20,
            resend_ms_max: 160,
            inquire_ms_initial: 30,
            inquire_ms_min: 30,
            inquire_ms_max: 240,
            // Scripted scenarios count exact timer values: keep the
            // configured defaults (no run is long enough to measure).
            timeout_samples_min: u64::MAX,
            compact_after_records: u64::MAX,
            finished_max: 100_000,
            net: NetConfig {
                delay_us_min: 1_000,
                delay_us_max: 1_000,
                reorder_probability: 0.0,
                reorder_us_max: 0,
                loss_probability: 0.0,
                duplicate_probability: 0.0,
            },
            disk: DiskConfig {
                fsync_us_min: 500,
                fsync_us_max: 500,
                stall_probability: 0.0,
                stall_us_max: 0,
            },
            faults: FaultConfig {
                crashes: 0,
                crash_in_actions_probability: 0.0,
                downtime_ms_max: 0,
                partitions: 0,
                partition_ms_max: 0,
                peer_inquiry_probability: 0.0,
                restart_elsewhere: false,
                fsync_error_probability: 0.0,
            },
            workload: WorkloadConfig {
                hot_probability: 0.0,
                unknown_account_probability: 0.0,
                overdraft_probability: 0.0,
                amount_max: 10,
                read_only_probability: 0.0,
            },
            clocks: vec![ClockConfig::EXACT; participants + 1],
            resource: ResourceConfig::PROMPT,
            branches_in_flight_max: 100_000,
            one_phase: true,
            read_only_votes: true,
            shape: ShapeMode::Centralized,
        }
    }
}
