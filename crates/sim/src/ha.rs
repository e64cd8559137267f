//! The HA world: several coordinator instances over one shared store
//! (SPEC §1.8), deterministic from a seed. Each instance runs the real
//! lease state machine ([`concord_node::lease::Leases`]); the store is a
//! model of the PostgreSQL store's statements (`concord_store::PgLeases`
//! and the fenced append of `concord_store::PgLog`, whose SQL is tested
//! against a real database in `crates/store/tests/pg_log.rs`), with the
//! store's clock as the one true time.
//!
//! Why a world of its own: the main [`crate::World`] runs one coordinator's
//! protocol against participants message by message; what HA adds is
//! who runs a log, when, and what a stale instance can still do. Here a
//! coordinator life is reduced to the two rules HA safety rests on:
//!
//! - a COMMIT counts (is told to participants) only once its decision
//!   record is appended, fenced by the life's epoch;
//! - anything else is presumed aborted: a life answers an INQUIRE about
//!   an xid it has no COMMIT record of, and no vote collection of, with
//!   ABORTED, and gives up its own undecided xids as ABORT.
//!
//! Participants also look xids up the way an HTTP participant behind a
//! load balancer does (`GET /v1/transactions/{xid}` at any instance): the
//! instance asked plans and adds up the answers with the real
//! [`concord_node::locate`], from its last scan of the owner table; a
//! lookup that finds no record anywhere aborts the xid, one that finds it
//! committed commits it. A lookup's questions are answered at the moment
//! it is asked (an instance that is paused or down does not answer: as
//! the server's 3 s timeout); one that needs a younger scan waits for the
//! asked instance's next one.
//!
//! Faults: instance crashes and restarts, pauses longer than the lease
//! (the zombie), clock rates from 0.7 to 1.4 of the store's, partitions
//! between one instance and the store, store outages, and store latency.
//! Invariant: no xid is ever decided two ways (by two instances, or by
//! two lives of one log). After the faults heal: every xid is decided and
//! every instance runs its own log again.

use concord_node::lease::{AcquireAnswer, LeaseAction, LeaseConfig, LeaseRow, Leases, RenewAnswer};
use concord_node::locate::{self, Answer, Ask, Question, Scan, Served, Verdict};
use concord_proto::mutant::{self, Mutant};
use concord_proto::Time;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// Store time in microseconds (the database's clock).
type Us = u64;

const MS: Us = 1000;

#[derive(Clone, Debug)]
pub struct HaOptions {
    pub instances: usize,
    pub lease_ms: u64,
    /// Simulated time with faults, then as long again healed.
    pub faulty_ms: u64,
}

impl Default for HaOptions {
    fn default() -> Self {
        HaOptions {
            instances: 3,
            lease_ms: 1000,
            faulty_ms: 20_000,
        }
    }
}

/// What a passing seed did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HaReport {
    pub seed: u64,
    pub xids: u64,
    pub committed: u64,
    pub aborted: u64,
    pub takeovers: u64,
    pub fenced_writes: u64,
    pub crashes: u64,
    pub pauses: u64,
    pub events: u64,
    /// Lookups at any instance, and how many of them decided their xid.
    pub lookups: u64,
    pub lookups_decided: u64,
}

impl std::fmt::Display for HaReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: {} xids ({} committed, {} aborted), {} takeovers, {} fenced writes, \
             {} crashes, {} pauses, {} events, {} lookups ({} decided)",
            self.seed,
            self.xids,
            self.committed,
            self.aborted,
            self.takeovers,
            self.fenced_writes,
            self.crashes,
            self.pauses,
            self.events,
            self.lookups,
            self.lookups_decided
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaFailure {
    pub seed: u64,
    pub what: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for HaFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: {} (replay: concord-sim --ha --seed {} --trace)",
            self.seed, self.what, self.seed
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Commit,
    Abort,
}

/// A store statement, as an instance sent it.
#[derive(Clone, Debug)]
enum Op {
    Lease(LeaseAction),
    /// Open `log` at `epoch` for a life (read its COMMIT records).
    Open {
        log: String,
        epoch: u64,
    },
    /// The decision record of `xid`, fenced by `epoch`.
    Append {
        log: String,
        epoch: u64,
        xid: u64,
    },
}

#[derive(Clone, Debug)]
enum Reply {
    Acquired(Result<AcquireAnswer, String>),
    Adopted(String, Result<Option<u64>, String>),
    Renewed(String, u64, Result<RenewAnswer, String>),
    Scanned(Result<Vec<LeaseRow>, String>),
    Done,
    Opened(String, u64, Result<Vec<u64>, String>),
    Appended(String, u64, u64, Result<(), String>),
}

#[derive(Clone, Debug)]
enum Event {
    /// Instance `i`'s lease timers may be due (the tick planned for
    /// that time; a later plan replaces it).
    Tick(usize, Us),
    /// A statement reaches the store.
    AtStore {
        from: usize,
        life: u64,
        op: Op,
        sent_local: Time,
    },
    /// Its answer reaches the instance (life `life` of the process).
    Answer {
        to: usize,
        life: u64,
        reply: Reply,
        sent_local: Time,
    },
    /// A running life begins an xid or decides one of its own.
    Work {
        i: usize,
        log: String,
        epoch: u64,
    },
    /// Participants inquire about undecided xids.
    Inquire,
    Crash(usize),
    Restart(usize),
    Pause(usize, Us),
}

#[derive(Clone, Debug)]
struct Owner {
    epoch: u64,
    holder: Option<String>,
    lease_until: Us,
    wanted_by: Option<String>,
}

/// A coordinator life over one log, reduced (see the module comment).
#[derive(Clone, Debug)]
struct Life {
    epoch: u64,
    /// Recovered from the log (false until the open answers).
    open: bool,
    committed: std::collections::BTreeSet<u64>,
    /// Its own xids, still collecting votes.
    voting: Vec<u64>,
    /// Decided COMMIT, the record on its way: no longer abortable, and
    /// not told to anyone until it is durable.
    committing: Vec<u64>,
}

struct Instance {
    name: String,
    /// Local clock = offset + rate × store time.
    rate: f64,
    offset: Us,
    /// Which process life (a restart starts another): answers to an
    /// earlier one are dropped.
    incarnation: u64,
    leases: Option<Leases>,
    lives: BTreeMap<String, Life>,
    /// Paused (SIGSTOP) until then: its events wait.
    paused_until: Us,
    /// Answers to lease statements arrive in order (one connection).
    last_answer: Us,
    /// The one tick planned.
    tick_at: Option<Us>,
    /// Its last scan of the owner table: when it was sent, what it read.
    scan: Option<(Time, Vec<Served>)>,
    /// Lookups waiting for a scan sent after they came (xid, named log,
    /// when they came).
    lookups: Vec<(u64, bool, Time)>,
}

impl Instance {
    fn local(&self, t: Us) -> Time {
        Time(self.offset + (t as f64 * self.rate) as u64)
    }

    /// The store time at which the local clock reads `local`.
    fn store_time(&self, local: Time) -> Us {
        (local.0.saturating_sub(self.offset) as f64 / self.rate).ceil() as Us
    }
}

pub struct HaWorld {
    seed: u64,
    options: HaOptions,
    rng: ChaCha8Rng,
    /// Draws for lookups alone, so that they leave every other draw of a
    /// seed as it was.
    lookup_rng: ChaCha8Rng,
    now: Us,
    queue: BinaryHeap<Reverse<(Us, u64, usize)>>,
    events: Vec<Option<Event>>,
    next_event: u64,
    instances: Vec<Instance>,
    owners: BTreeMap<String, Owner>,
    records: BTreeMap<String, Vec<u64>>,
    /// Xid → its log, and the decision participants were told.
    xid_log: BTreeMap<u64, String>,
    decided: BTreeMap<u64, Decision>,
    /// Xids begun and not decided yet (what participants inquire about).
    undecided: std::collections::BTreeSet<u64>,
    next_xid: u64,
    outages: Vec<(Us, Us)>,
    partitions: Vec<(usize, Us, Us)>,
    report: HaReport,
    trace: Option<Vec<String>>,
    failure: Option<String>,
}

impl HaWorld {
    pub fn new(seed: u64, options: HaOptions, trace: bool) -> HaWorld {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4a11_ce55);
        let instances = (0..options.instances)
            .map(|i| Instance {
                name: format!("c{i}"),
                rate: rng.gen_range(0.7..1.4),
                offset: rng.gen_range(0..10_000_000),
                incarnation: 0,
                leases: None,
                lives: BTreeMap::new(),
                paused_until: 0,
                last_answer: 0,
                tick_at: None,
                scan: None,
                lookups: Vec::new(),
            })
            .collect();
        let faulty = options.faulty_ms * MS;
        let mut outages = Vec::new();
        for _ in 0..rng.gen_range(0..3) {
            let at = rng.gen_range(0..faulty);
            outages.push((at, at + rng.gen_range(100..3000) * MS));
        }
        let mut partitions = Vec::new();
        for _ in 0..rng.gen_range(0..4) {
            let at = rng.gen_range(0..faulty);
            let who = rng.gen_range(0..options.instances);
            partitions.push((who, at, at + rng.gen_range(100..4000) * MS));
        }
        let mut world = HaWorld {
            seed,
            rng,
            lookup_rng: ChaCha8Rng::seed_from_u64(seed ^ 0x100c_0b5e),
            now: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            next_event: 0,
            instances,
            owners: BTreeMap::new(),
            records: BTreeMap::new(),
            xid_log: BTreeMap::new(),
            decided: BTreeMap::new(),
            undecided: std::collections::BTreeSet::new(),
            next_xid: 1,
            outages,
            partitions,
            report: HaReport {
                seed,
                ..HaReport::default()
            },
            trace: trace.then(Vec::new),
            failure: None,
            options,
        };
        for i in 0..world.instances.len() {
            let at = world.rng.gen_range(0..500) * MS;
            world.schedule(at, Event::Restart(i));
        }
        for _ in 0..world.rng.gen_range(1..6) {
            let at = world.rng.gen_range(0..faulty);
            let who = world.rng.gen_range(0..world.instances.len());
            world.schedule(at, Event::Crash(who));
        }
        for _ in 0..world.rng.gen_range(0..4) {
            let at = world.rng.gen_range(0..faulty);
            let who = world.rng.gen_range(0..world.instances.len());
            let lease = world.options.lease_ms;
            let pause = world.rng.gen_range(lease / 2..lease * 4) * MS;
            world.schedule(at, Event::Pause(who, pause));
        }
        world.schedule(50 * MS, Event::Inquire);
        world
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(format!("{:>10.3} ms  {}", self.now as f64 / 1000.0, line()));
        }
    }

    fn schedule(&mut self, at: Us, event: Event) {
        let id = self.events.len();
        self.events.push(Some(event));
        self.queue
            .push(Reverse((at.max(self.now), self.next_event, id)));
        self.next_event += 1;
    }

    fn faulty(&self) -> bool {
        self.now < self.options.faulty_ms * MS
    }

    fn store_down(&self, from: usize) -> bool {
        self.outages
            .iter()
            .any(|&(a, b)| (a..b).contains(&self.now))
            || self
                .partitions
                .iter()
                .any(|&(who, a, b)| who == from && (a..b).contains(&self.now))
    }

    fn latency(&mut self) -> Us {
        if self.rng.gen_bool(0.05) {
            self.rng.gen_range(5..200) * MS
        } else {
            self.rng.gen_range(200..3000)
        }
    }

    pub fn run(mut self) -> Result<HaReport, HaFailure> {
        let end = self.options.faulty_ms * MS * 2;
        self.run_until(end, |_| false);
        // Healing is a matter of eventually: an instance may be between
        // two lives of its log at the end (a renewal answered just too
        // late counts as a lost lease, and the log is taken again at
        // once). It gets three more leases.
        let settle = end + 3 * self.options.lease_ms * MS;
        self.run_until(settle, |world| {
            world
                .instances
                .iter()
                .all(|c| c.leases.as_ref().is_some_and(|l| l.own_running()))
        });
        if self.failure.is_none() {
            self.check_healed();
        }
        match self.failure.take() {
            Some(what) => Err(HaFailure {
                seed: self.seed,
                what,
                trace: self.trace.take().unwrap_or_default(),
            }),
            None => {
                self.report.xids = self.xid_log.len() as u64;
                Ok(self.report)
            }
        }
    }

    /// Handle events up to `end`, or until `done` holds (or an invariant
    /// failed).
    fn run_until(&mut self, end: Us, done: impl Fn(&HaWorld) -> bool) {
        while !done(self) && self.failure.is_none() {
            let Some(&Reverse((at, _, id))) = self.queue.peek() else {
                return;
            };
            if at > end {
                return;
            }
            self.queue.pop();
            self.now = at;
            self.report.events += 1;
            if let Some(event) = self.events[id].take() {
                self.handle(event);
            }
        }
    }

    /// An event for instance `i` while it is paused waits until it
    /// resumes (store answers sit in its socket, timers fire late).
    fn deferred(&mut self, i: usize, event: &Event) -> bool {
        let until = self.instances[i].paused_until;
        if until > self.now {
            self.schedule(until, event.clone());
            return true;
        }
        false
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick(i, at) => {
                if self.instances[i].tick_at != Some(at) {
                    return; // replaced by an earlier plan
                }
                let until = self.instances[i].paused_until;
                if until > self.now {
                    self.instances[i].tick_at = Some(until);
                    self.schedule(until, Event::Tick(i, until));
                    return;
                }
                self.instances[i].tick_at = None;
                let now = self.instances[i].local(self.now);
                let in_flight: BTreeMap<String, u64> = self.instances[i]
                    .lives
                    .iter()
                    .map(|(log, l)| (log.clone(), (l.voting.len() + l.committing.len()) as u64))
                    .collect();
                if let Some(leases) = &mut self.instances[i].leases {
                    leases.on_tick(now, |log| in_flight.get(log).copied().unwrap_or(0));
                }
                self.pump(i);
            }
            Event::AtStore {
                from,
                life,
                op,
                sent_local,
            } => {
                let reply = self.execute(from, op);
                let mut at = self.now + self.latency();
                if matches!(
                    reply,
                    Reply::Acquired(_)
                        | Reply::Adopted(..)
                        | Reply::Renewed(..)
                        | Reply::Scanned(_)
                        | Reply::Done
                ) {
                    at = at.max(self.instances[from].last_answer + 1);
                    self.instances[from].last_answer = at;
                }
                self.schedule(
                    at,
                    Event::Answer {
                        to: from,
                        life,
                        reply,
                        sent_local,
                    },
                );
            }
            Event::Answer {
                to,
                life,
                reply,
                sent_local,
            } => {
                let event = Event::Answer {
                    to,
                    life,
                    reply,
                    sent_local,
                };
                if self.deferred(to, &event) {
                    return;
                }
                let Event::Answer { reply, .. } = event else {
                    return;
                };
                if life != self.instances[to].incarnation || self.instances[to].leases.is_none() {
                    return; // for a process that crashed since
                }
                self.on_answer(to, reply, sent_local);
            }
            Event::Work { i, log, epoch } => {
                if self.deferred(
                    i,
                    &Event::Work {
                        i,
                        log: log.clone(),
                        epoch,
                    },
                ) {
                    return;
                }
                self.work(i, &log, epoch);
            }
            Event::Inquire => {
                self.inquire();
                self.schedule(self.now + 50 * MS, Event::Inquire);
            }
            Event::Crash(i) => {
                if self.instances[i].leases.is_none() {
                    return;
                }
                self.report.crashes += 1;
                self.log(|| format!("c{i} crashes (kill -9)"));
                let instance = &mut self.instances[i];
                instance.leases = None;
                instance.lives.clear();
                instance.paused_until = 0;
                instance.tick_at = None;
                instance.scan = None;
                instance.lookups.clear();
                let back = self.now + self.rng.gen_range(100..3000) * MS;
                self.schedule(back, Event::Restart(i));
            }
            Event::Restart(i) => {
                if self.instances[i].leases.is_some() {
                    return;
                }
                self.log(|| format!("c{i} starts"));
                let now = self.instances[i].local(self.now);
                let config = LeaseConfig {
                    lease_ms: self.options.lease_ms,
                };
                let instance = &mut self.instances[i];
                instance.incarnation += 1;
                instance.leases = Some(Leases::new(instance.name.clone(), config, now));
                self.pump(i);
            }
            Event::Pause(i, pause) => {
                if self.instances[i].leases.is_none() || self.instances[i].paused_until > self.now {
                    return;
                }
                self.report.pauses += 1;
                self.log(|| format!("c{i} paused for {} ms (SIGSTOP)", pause / MS));
                self.instances[i].paused_until = self.now + pause;
            }
        }
    }

    /// Carry out instance `i`'s lease actions, then wake it when its
    /// leases are next due.
    fn pump(&mut self, i: usize) {
        let Some(leases) = &mut self.instances[i].leases else {
            return;
        };
        let actions: Vec<LeaseAction> = leases.drain_actions().collect();
        let due = leases.next_due();
        for action in actions {
            match action {
                LeaseAction::Start { log, epoch, own } => {
                    if !own {
                        self.report.takeovers += 1;
                    }
                    self.log(|| format!("c{i} starts a life over {log} at epoch {epoch}"));
                    self.instances[i].lives.insert(
                        log.clone(),
                        Life {
                            epoch,
                            open: false,
                            committed: Default::default(),
                            voting: Vec::new(),
                            committing: Vec::new(),
                        },
                    );
                    self.send(i, Op::Open { log, epoch });
                }
                LeaseAction::Stop { log, epoch, why } => {
                    self.log(|| format!("c{i} stops deciding for {log} (epoch {epoch}): {why}"));
                    if self.instances[i]
                        .lives
                        .get(&log)
                        .is_some_and(|l| l.epoch == epoch)
                    {
                        self.instances[i].lives.remove(&log);
                    }
                }
                other => self.send(i, Op::Lease(other)),
            }
        }
        let at = self.instances[i].store_time(due).max(self.now + 1);
        if self.instances[i]
            .tick_at
            .map_or(true, |planned| at < planned)
        {
            self.instances[i].tick_at = Some(at);
            self.schedule(at, Event::Tick(i, at));
        }
    }

    fn send(&mut self, i: usize, op: Op) {
        let sent_local = self.instances[i].local(self.now);
        let at = self.now + self.latency();
        let life = self.instances[i].incarnation;
        self.schedule(
            at,
            Event::AtStore {
                from: i,
                life,
                op,
                sent_local,
            },
        );
    }

    /// A statement at the store, as the SQL of `concord_store` runs it.
    fn execute(&mut self, from: usize, op: Op) -> Reply {
        let me = self.instances[from].name.clone();
        let down = self.store_down(from);
        let fail = || "store unavailable".to_string();
        let now = self.now;
        let lease = self.options.lease_ms * MS;
        match op {
            Op::Lease(LeaseAction::Acquire { log, after }) => {
                if down {
                    return Reply::Acquired(Err(fail()));
                }
                let owner = self.owners.entry(log).or_insert(Owner {
                    epoch: 0,
                    holder: None,
                    lease_until: 0,
                    wanted_by: None,
                });
                let free = owner.holder.is_none()
                    || owner.lease_until < now
                    || (owner.holder.as_deref() == Some(&me)
                        && after.map_or(true, |a| owner.epoch <= a));
                if free {
                    owner.epoch += 1;
                    owner.holder = Some(me);
                    owner.lease_until = now + lease;
                    owner.wanted_by = None;
                    Reply::Acquired(Ok(AcquireAnswer::Took { epoch: owner.epoch }))
                } else {
                    Reply::Acquired(Ok(AcquireAnswer::HeldBy {
                        holder: owner.holder.clone().unwrap_or_default(),
                    }))
                }
            }
            Op::Lease(LeaseAction::Adopt { log, seen_epoch }) => {
                if down {
                    return Reply::Adopted(log, Err(fail()));
                }
                let taken = match self.owners.get_mut(&log) {
                    Some(o) if o.epoch == seen_epoch && o.lease_until < now => {
                        o.epoch += 1;
                        o.holder = Some(me);
                        o.lease_until = now + lease;
                        Some(o.epoch)
                    }
                    _ => None,
                };
                Reply::Adopted(log, Ok(taken))
            }
            Op::Lease(LeaseAction::Renew { log, epoch, .. }) => {
                if down {
                    return Reply::Renewed(log, epoch, Err(fail()));
                }
                let answer = match self.owners.get_mut(&log) {
                    Some(o)
                        if o.holder.as_deref() == Some(&me)
                            && o.epoch == epoch
                            && o.lease_until > now =>
                    {
                        o.lease_until = now + lease;
                        RenewAnswer::Held {
                            wanted_by: o.wanted_by.clone(),
                        }
                    }
                    Some(o) => RenewAnswer::Lost {
                        holder: o.holder.clone(),
                        epoch: o.epoch,
                    },
                    None => RenewAnswer::Lost {
                        holder: None,
                        epoch: 0,
                    },
                };
                Reply::Renewed(log, epoch, Ok(answer))
            }
            Op::Lease(LeaseAction::Want { log }) => {
                if !down {
                    if let Some(o) = self.owners.get_mut(&log) {
                        if o.holder.as_deref() != Some(&me) {
                            o.wanted_by = Some(me);
                        }
                    }
                }
                Reply::Done
            }
            Op::Lease(LeaseAction::HandBack { log, epoch, to }) => {
                if !down {
                    if let Some(o) = self.owners.get_mut(&log) {
                        if o.epoch == epoch && o.wanted_by.as_deref() == Some(&to) {
                            // Fenced at once: a write still on its way fails.
                            o.epoch += 1;
                            o.holder = None;
                            o.wanted_by = None;
                            o.lease_until = now + lease;
                        }
                    }
                }
                Reply::Done
            }
            Op::Lease(LeaseAction::Scan) => {
                if down {
                    return Reply::Scanned(Err(fail()));
                }
                Reply::Scanned(Ok(self
                    .owners
                    .iter()
                    .map(|(log, o)| LeaseRow {
                        log: log.clone(),
                        epoch: o.epoch,
                        holder: o.holder.clone(),
                        expired: o.lease_until < now,
                    })
                    .collect()))
            }
            Op::Lease(LeaseAction::Start { .. } | LeaseAction::Stop { .. }) => Reply::Done,
            Op::Open { log, epoch } => {
                let owned = self.owned(&log, epoch);
                let result = if down {
                    Err(fail())
                } else if !owned {
                    Err("fenced".into())
                } else {
                    Ok(self.records.get(&log).cloned().unwrap_or_default())
                };
                Reply::Opened(log, epoch, result)
            }
            Op::Append { log, epoch, xid } => {
                let owned = self.owned(&log, epoch) || mutant::active(Mutant::UnfencedAppend);
                let result = if down {
                    Err(fail())
                } else if !owned {
                    self.report.fenced_writes += 1;
                    Err("fenced".into())
                } else {
                    self.records.entry(log.clone()).or_default().push(xid);
                    Ok(())
                };
                Reply::Appended(log, epoch, xid, result)
            }
        }
    }

    /// The fence of every write: the epoch is the log's and the lease is
    /// live by the store's clock.
    fn owned(&self, log: &str, epoch: u64) -> bool {
        self.owners
            .get(log)
            .is_some_and(|o| o.epoch == epoch && o.lease_until > self.now)
    }

    fn on_answer(&mut self, i: usize, reply: Reply, sent_local: Time) {
        let now = self.instances[i].local(self.now);
        match reply {
            Reply::Opened(log, epoch, result) => {
                let Some(life) = self.instances[i].lives.get_mut(&log) else {
                    return;
                };
                if life.epoch != epoch {
                    return;
                }
                match result {
                    Ok(committed) => {
                        let committed = if mutant::active(Mutant::TakeoverSkipsRecovery)
                            && log != self.instances[i].name
                        {
                            Vec::new()
                        } else {
                            committed
                        };
                        let Some(life) = self.instances[i].lives.get_mut(&log) else {
                            return;
                        };
                        life.open = true;
                        life.committed = committed.iter().copied().collect();
                        self.log(|| format!("c{i} recovered {log} at epoch {epoch}"));
                        // Recovery re-sends every COMMIT it found.
                        for xid in committed {
                            self.decide(xid, Decision::Commit, &format!("c{i} recovering {log}"));
                        }
                        let at = self.now + self.rng.gen_range(1..20) * MS;
                        self.schedule(at, Event::Work { i, log, epoch });
                    }
                    Err(_) => {
                        self.instances[i].lives.remove(&log);
                        if let Some(leases) = &mut self.instances[i].leases {
                            leases.on_stopped(now, &log, epoch);
                        }
                    }
                }
            }
            Reply::Appended(log, epoch, xid, result) => {
                let Some(life) = self.instances[i].lives.get_mut(&log) else {
                    return; // stopped meanwhile: its driver is gone
                };
                if life.epoch != epoch {
                    return;
                }
                life.committing.retain(|&x| x != xid);
                match result {
                    Ok(()) => {
                        life.committed.insert(xid);
                        self.decide(xid, Decision::Commit, &format!("c{i} over {log}"));
                    }
                    // Fail-stop: the life ends; the lease machine learns it.
                    Err(_) => {
                        self.instances[i].lives.remove(&log);
                        if let Some(leases) = &mut self.instances[i].leases {
                            leases.on_stopped(now, &log, epoch);
                        }
                    }
                }
            }
            other => {
                if !matches!(other, Reply::Done | Reply::Scanned(Ok(_))) {
                    self.log(|| format!("c{i} hears {other:?} (sent at its {:?})", sent_local));
                }
                let Some(leases) = &mut self.instances[i].leases else {
                    return;
                };
                match other {
                    Reply::Acquired(answer) => leases.on_acquired(now, sent_local, answer),
                    Reply::Adopted(log, taken) => leases.on_adopted(now, sent_local, &log, taken),
                    Reply::Renewed(log, epoch, answer) => {
                        leases.on_renewed(now, sent_local, &log, epoch, answer)
                    }
                    Reply::Scanned(rows) => {
                        if let Ok(rows) = &rows {
                            let served = rows.iter().map(served).collect();
                            self.instances[i].scan = Some((sent_local, served));
                        }
                        if let Some(leases) = &mut self.instances[i].leases {
                            leases.on_scanned(now, rows);
                        }
                        // Lookups that waited for a scan younger than them.
                        let (ready, waiting) = std::mem::take(&mut self.instances[i].lookups)
                            .into_iter()
                            .partition(|&(_, _, came)| came <= sent_local);
                        self.instances[i].lookups = waiting;
                        for (xid, named, came) in ready {
                            self.lookup(i, xid, named, came);
                        }
                    }
                    _ => {}
                }
            }
        }
        self.pump(i);
    }

    /// A life's work step: begin a new xid, or decide one of its own
    /// (COMMIT through a fenced append, or ABORT, which is not written).
    fn work(&mut self, i: usize, log: &str, epoch: u64) {
        // Clients begin transactions at an instance's own log only.
        let own = self.instances[i].name == log;
        let begin = own && self.faulty() && self.rng.gen_bool(0.6);
        let xid = self.next_xid;
        let Some(life) = self.instances[i].lives.get_mut(log) else {
            return;
        };
        if life.epoch != epoch || !life.open {
            return;
        }
        if begin || life.voting.is_empty() {
            if begin {
                life.voting.push(xid);
                self.next_xid += 1;
                self.xid_log.insert(xid, log.to_string());
                self.undecided.insert(xid);
            }
        } else {
            let k = self.rng.gen_range(0..life.voting.len());
            let xid = life.voting[k];
            if self.rng.gen_bool(0.7) {
                life.voting.remove(k);
                life.committing.push(xid);
                self.send(
                    i,
                    Op::Append {
                        log: log.to_string(),
                        epoch,
                        xid,
                    },
                );
            } else {
                life.voting.remove(k);
                self.decide(xid, Decision::Abort, &format!("c{i} over {log}"));
            }
        }
        let at = self.now + self.rng.gen_range(1..20) * MS;
        self.schedule(
            at,
            Event::Work {
                i,
                log: log.to_string(),
                epoch,
            },
        );
    }

    /// Participants in doubt about an undecided xid ask whoever holds its
    /// log now (the directory follows the newest incarnation): COMMIT if
    /// that life has its record, keep waiting if it is collecting its
    /// votes, else ABORTED (presumed abort).
    fn inquire(&mut self) {
        let undecided: Vec<(u64, String)> = self
            .undecided
            .iter()
            .filter_map(|x| Some((*x, self.xid_log.get(x)?.clone())))
            .collect();
        for (xid, log) in undecided {
            // Some ask any instance over HTTP instead.
            if self.lookup_rng.gen_bool(0.1) {
                let i = self.lookup_rng.gen_range(0..self.instances.len());
                let named = self.lookup_rng.gen_bool(0.5);
                let instance = &self.instances[i];
                if instance.leases.is_some() && instance.paused_until <= self.now {
                    let came = instance.local(self.now);
                    self.report.lookups += 1;
                    self.lookup(i, xid, named, came);
                }
                continue;
            }
            let Some(holder) = self.owners.get(&log).and_then(|o| o.holder.clone()) else {
                continue;
            };
            let Some(i) = self.instances.iter().position(|c| c.name == holder) else {
                continue;
            };
            if self.instances[i].paused_until > self.now {
                continue;
            }
            let Some(life) = self.instances[i].lives.get(&log).filter(|l| l.open) else {
                continue;
            };
            if life.committed.contains(&xid) {
                self.decide(xid, Decision::Commit, &format!("c{i} answering for {log}"));
            } else if !life.voting.contains(&xid) && !life.committing.contains(&xid) {
                self.decide(
                    xid,
                    Decision::Abort,
                    &format!("c{i} answering for {log} (presumed)"),
                );
            }
        }
    }

    /// `GET /v1/transactions/{xid}` (with `?log=` when `named`) at
    /// instance `i`, which came at its local time `came`.
    fn lookup(&mut self, i: usize, xid: u64, named: bool, came: Time) {
        if !self.undecided.contains(&xid) || self.instances[i].leases.is_none() {
            return;
        }
        let log = self.xid_log.get(&xid).cloned();
        let instance = &self.instances[i];
        let here: Vec<String> = instance.lives.keys().cloned().collect();
        let scan = instance.scan.as_ref().map(|(sent, rows)| Scan {
            rows,
            after_question: *sent >= came,
        });
        let question = Question {
            log: log.as_deref().filter(|_| named),
            forwarded: false,
        };
        let lookup = locate::plan(&instance.name, &here, scan, question);
        let answers: Vec<(Answer, bool)> = lookup
            .ask
            .iter()
            .map(|ask| match ask {
                Ask::Here(log) => self.answer_of(i, log, xid),
                Ask::There { log, http } => {
                    match self.instances.iter().position(|c| &c.name == http) {
                        Some(j) => self.answer_of(j, log, xid),
                        None => (Answer::Unknown(format!("no instance at {http}")), false),
                    }
                }
            })
            .collect();
        let plain: Vec<Answer> = answers.iter().map(|(a, _)| a.clone()).collect();
        match locate::combine(&lookup, &plain) {
            Verdict::Found(k) => {
                if answers[k].1 {
                    self.report.lookups_decided += 1;
                    self.decide(xid, Decision::Commit, &format!("a lookup at c{i}"));
                }
            }
            Verdict::NoRecord => {
                self.report.lookups_decided += 1;
                self.decide(
                    xid,
                    Decision::Abort,
                    &format!("a lookup at c{i}: no record in any log"),
                );
            }
            Verdict::CannotTell(_) => {}
            Verdict::Rescan => self.instances[i].lookups.push((xid, named, came)),
        }
    }

    /// What the life over `log` at instance `j` answers about `xid`, and
    /// whether its record is a COMMIT.
    fn answer_of(&self, j: usize, log: &str, xid: u64) -> (Answer, bool) {
        let instance = &self.instances[j];
        if instance.leases.is_none() || instance.paused_until > self.now {
            return (Answer::Unknown(format!("c{j} does not answer")), false);
        }
        let Some(life) = instance.lives.get(log) else {
            return (Answer::Unknown(format!("c{j} does not run {log}")), false);
        };
        if !life.open {
            return (Answer::Unknown(format!("c{j} is recovering {log}")), false);
        }
        if life.committed.contains(&xid) {
            (Answer::Record, true)
        } else if life.voting.contains(&xid) || life.committing.contains(&xid) {
            (Answer::Record, false)
        } else {
            (Answer::NoRecord, false)
        }
    }

    fn decide(&mut self, xid: u64, decision: Decision, by: &str) {
        match self.decided.get(&xid) {
            Some(&first) if first != decision => {
                self.failure.get_or_insert_with(|| {
                    format!("xid {xid} decided {first:?} and then {decision:?} ({by})")
                });
            }
            Some(_) => {}
            None => {
                self.log(|| format!("xid {xid} decided {decision:?} by {by}"));
                self.decided.insert(xid, decision);
                self.undecided.remove(&xid);
                match decision {
                    Decision::Commit => self.report.committed += 1,
                    Decision::Abort => self.report.aborted += 1,
                }
            }
        }
    }

    /// After the healed half: every xid decided, every instance running
    /// its own log.
    fn check_healed(&mut self) {
        let undecided = self.undecided.len();
        if undecided > 0 {
            self.failure = Some(format!(
                "{undecided} xids never decided after the faults healed"
            ));
            return;
        }
        for (i, instance) in self.instances.iter().enumerate() {
            let own = instance.leases.as_ref().is_some_and(|l| l.own_running());
            if !own {
                self.failure = Some(format!("c{i} does not run its own log after healing"));
                return;
            }
        }
    }
}

/// An owner row as a lookup sees it: its holder's name stands for the
/// holder's HTTP address.
fn served(row: &LeaseRow) -> Served {
    Served {
        log: row.log.clone(),
        holder: row.holder.clone(),
        http: row.holder.clone(),
        live: row.holder.is_some() && !row.expired,
    }
}

/// Run one seed of the HA world.
pub fn run_ha_seed(seed: u64, options: &HaOptions, trace: bool) -> Result<HaReport, HaFailure> {
    HaWorld::new(seed, options.clone(), trace).run()
}
