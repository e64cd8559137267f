//! Leases: which coordinator logs this instance runs when several
//! instances share one store (SPEC §1.8), as a pure state machine: events
//! in (with `now`), [`LeaseAction`]s out. The server carries the actions
//! out against PostgreSQL (`concord_store::PgLeases`); the simulator
//! carries them out against its model of a shared store. Either way the
//! same rules decide.
//!
//! Every log belongs to the instance whose `--name` it carries, and runs
//! where its lease is held:
//!
//! - At start an instance **acquires** its own log (the store grants it if
//!   free, run out, or held under its own name: a restart) and runs a
//!   coordinator over it. Held by another instance (it adopted the log
//!   while this one was away), it asks for it back ([`LeaseAction::Want`])
//!   and tries again every scan.
//! - It **renews** every lease it holds every quarter lease. It counts a
//!   lease as its own only until three quarters of the lease after the
//!   renewal that granted it was *sent*, by its own clock: the database
//!   granted it from a later instant, so this stops deciding before the
//!   database lets anyone else take the log over, as long as this
//!   instance's clock does not run more than 25% slower than the
//!   database's. Past that instant it stops deciding for the log
//!   ([`StopWhy::Expired`]); a renewal that finds the log taken stops it
//!   too ([`StopWhy::Lost`]). Epoch fencing in the store keeps even a
//!   wrong clock safe: a stale instance's writes fail.
//! - It **scans** the owner rows every quarter lease and **adopts** every
//!   log whose lease ran out by the database's clock (another instance
//!   crashed, paused, or lost the database): a coordinator over it
//!   recovers with a higher epoch, re-sends its decisions and aborts what
//!   it had not decided (§1.5 cases 3–4).
//! - An adopted log whose own instance asks for it back is **handed back**
//!   once nothing is in flight in it (or after two leases in any case):
//!   the coordinator over it stops first, then the log is let go (kept
//!   from adopters for one lease), and its instance acquires it with a
//!   higher epoch.

use concord_proto::mutant::{self, Mutant};
use concord_proto::Time;
use std::collections::{BTreeMap, BTreeSet};

/// The lease length when none is configured (`serve --lease`).
pub const LEASE_MS_DEFAULT: u64 = 5000;

/// Shortest lease accepted: renewals every quarter of it must fit several
/// database round trips.
pub const LEASE_MS_MIN: u64 = 200;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a grant or renewal lasts, by the database's clock.
    pub lease_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            lease_ms: LEASE_MS_DEFAULT,
        }
    }
}

impl LeaseConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_ms < LEASE_MS_MIN {
            return Err(format!(
                "--lease {} ms is too short: at least {LEASE_MS_MIN} ms",
                self.lease_ms
            ));
        }
        Ok(())
    }

    /// Renewals and scans.
    pub fn period_ms(&self) -> u64 {
        (self.lease_ms / 4).max(1)
    }

    /// How long after a renewal was sent this instance still counts the
    /// lease as its own.
    pub fn valid_ms(&self) -> u64 {
        self.lease_ms * 3 / 4
    }

    /// Longest an adopted log waits for its transactions to finish before
    /// it is handed back to its instance anyway.
    pub fn hand_back_after_ms(&self) -> u64 {
        self.lease_ms * 2
    }
}

/// What the store answered to an acquire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcquireAnswer {
    Took { epoch: u64 },
    HeldBy { holder: String },
}

/// What the store answered to a renewal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenewAnswer {
    Held { wanted_by: Option<String> },
    Lost { holder: Option<String>, epoch: u64 },
}

/// One log's owner row as a scan saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub log: String,
    pub epoch: u64,
    pub holder: Option<String>,
    /// Run out by the database's clock.
    pub expired: bool,
}

/// Why a coordinator over a log must stop deciding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopWhy {
    /// Not renewed in time, by this instance's clock.
    Expired,
    /// A renewal found the log held by another instance (or at another
    /// epoch).
    Lost { holder: Option<String> },
    /// Handed back to its own instance, which asked for it.
    HandedBack { to: String },
}

impl std::fmt::Display for StopWhy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopWhy::Expired => write!(f, "its lease was not renewed in time"),
            StopWhy::Lost { holder: Some(h) } => write!(f, "instance {h} took it over"),
            StopWhy::Lost { holder: None } => write!(f, "its lease is gone"),
            StopWhy::HandedBack { to } => write!(f, "handed back to instance {to}"),
        }
    }
}

/// What the driver must do, in order. Store calls answer with the
/// matching `on_…` event; `Start` and `Stop` are carried out before the
/// next action (a `HandBack` follows the `Stop` of its log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// Take this instance's own log (answer: [`Leases::on_acquired`]).
    /// `after`: the epoch of this process's last life of it, if it had
    /// one: held under this name at a later epoch, it belongs to another
    /// process of the same name, which is not taken from it.
    Acquire { log: String, after: Option<u64> },
    /// Take over `log` if its lease is still out at `seen_epoch`
    /// (answer: [`Leases::on_adopted`]).
    Adopt { log: String, seen_epoch: u64 },
    /// Extend the lease on `log` (answer: [`Leases::on_renewed`]).
    Renew {
        log: String,
        epoch: u64,
        in_flight: u64,
    },
    /// Ask the holder of this instance's own log for it back.
    Want { log: String },
    /// Let `log` go back to its own instance `to`: after the `Stop` of
    /// its coordinator.
    HandBack { log: String, epoch: u64, to: String },
    /// Read every owner row (answer: [`Leases::on_scanned`]).
    Scan,
    /// Run a coordinator over `log` at `epoch`, recovering first.
    Start { log: String, epoch: u64, own: bool },
    /// Stop the coordinator over `log`: it decides nothing more.
    Stop {
        log: String,
        epoch: u64,
        why: StopWhy,
    },
}

#[derive(Clone, Debug)]
struct Held {
    epoch: u64,
    /// Counted as ours until then (this instance's clock).
    valid_until: Time,
    next_renew: Time,
    renewing: bool,
    /// Who asked for an adopted log back, and since when.
    wanted: Option<(String, Time)>,
    /// When this instance took the lease (its clock).
    since: Time,
}

/// Where this instance's own log stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Own {
    /// Not running it; an acquire is in flight or due at `next_try`.
    Acquiring {
        in_flight: bool,
        next_try: Time,
    },
    Running,
    /// Another process took it under this instance's own name: names must
    /// be unique, so this one never takes it again (the server exits).
    Replaced {
        by: String,
    },
}

/// The lease state machine of one instance.
#[derive(Debug)]
pub struct Leases {
    me: String,
    config: LeaseConfig,
    held: BTreeMap<String, Held>,
    own: Own,
    /// The epoch of this process's last life of its own log.
    own_epoch: Option<u64>,
    adopting: BTreeSet<String>,
    scanning: bool,
    next_scan: Time,
    /// Lives of the own log in a row that ended by themselves within a
    /// quarter lease of starting (before their first renewal): each waits
    /// longer before the log is taken again, so a life that cannot run (a
    /// bad record, a port taken) does not spin, raising the epoch on every
    /// turn. One that ran longer (the store failed under it) is taken
    /// again at once.
    quick_ends: u32,
    actions: Vec<LeaseAction>,
}

impl Leases {
    /// An instance named `me` starting at `now`: it acquires its own log
    /// and scans for logs to adopt.
    pub fn new(me: impl Into<String>, config: LeaseConfig, now: Time) -> Leases {
        let me = me.into();
        Leases {
            actions: vec![
                LeaseAction::Acquire {
                    log: me.clone(),
                    after: None,
                },
                LeaseAction::Scan,
            ],
            own_epoch: None,
            me,
            config,
            held: BTreeMap::new(),
            own: Own::Acquiring {
                in_flight: true,
                next_try: now,
            },
            adopting: BTreeSet::new(),
            scanning: true,
            next_scan: now,
            quick_ends: 0,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// The actions decided so far, in order.
    pub fn drain_actions(&mut self) -> std::vec::Drain<'_, LeaseAction> {
        self.actions.drain(..)
    }

    /// Logs running here, with their epochs.
    pub fn held(&self) -> impl Iterator<Item = (&str, u64)> {
        self.held.iter().map(|(log, h)| (log.as_str(), h.epoch))
    }

    /// Whether this instance runs its own log now.
    pub fn own_running(&self) -> bool {
        self.own == Own::Running
    }

    /// The instance that took this one's log under its name, if one did.
    pub fn replaced_by(&self) -> Option<&str> {
        match &self.own {
            Own::Replaced { by } => Some(by),
            _ => None,
        }
    }

    /// When [`Leases::on_tick`] has something to do next. Nothing that
    /// waits for an answer counts: a driver that slept until then would
    /// otherwise wake at once, again and again, until the answer came.
    pub fn next_due(&self) -> Time {
        let mut due = if self.scanning {
            Time(u64::MAX)
        } else {
            self.next_scan
        };
        for held in self.held.values() {
            due = due.min(held.valid_until);
            if !held.renewing {
                due = due.min(held.next_renew);
            }
            if let Some((_, since)) = &held.wanted {
                due = due.min(since.plus_ms(self.config.hand_back_after_ms()));
            }
        }
        if let Own::Acquiring {
            in_flight: false,
            next_try,
        } = self.own
        {
            due = due.min(next_try);
        }
        due
    }

    /// Time passed: stop what ran out, renew, scan, retry, hand back.
    /// `in_flight` says how many transactions a running log has in flight.
    pub fn on_tick(&mut self, now: Time, in_flight: impl Fn(&str) -> u64) {
        let logs: Vec<String> = self.held.keys().cloned().collect();
        for log in logs {
            let Some(held) = self.held.get_mut(&log) else {
                continue;
            };
            if now >= held.valid_until {
                self.stop(&log, StopWhy::Expired, now);
                continue;
            }
            if let Some((to, since)) = held.wanted.clone() {
                let idle = in_flight(&log) == 0;
                if idle || now >= since.plus_ms(self.config.hand_back_after_ms()) {
                    let epoch = held.epoch;
                    self.stop(&log, StopWhy::HandedBack { to: to.clone() }, now);
                    self.actions.push(LeaseAction::HandBack { log, epoch, to });
                    continue;
                }
            }
            if !held.renewing && now >= held.next_renew {
                held.renewing = true;
                self.actions.push(LeaseAction::Renew {
                    log: log.clone(),
                    epoch: held.epoch,
                    in_flight: in_flight(&log),
                });
            }
        }
        if let Own::Acquiring {
            in_flight: in_flight @ false,
            next_try,
        } = &mut self.own
        {
            if now >= *next_try {
                *in_flight = true;
                self.actions.push(LeaseAction::Acquire {
                    log: self.me.clone(),
                    after: self.own_epoch,
                });
            }
        }
        if !self.scanning && now >= self.next_scan {
            self.scanning = true;
            self.actions.push(LeaseAction::Scan);
        }
    }

    /// The answer to an `Acquire` sent at `sent_at` (`Err`: the store
    /// failed; tried again a period later).
    pub fn on_acquired(&mut self, now: Time, sent_at: Time, answer: Result<AcquireAnswer, String>) {
        if !matches!(self.own, Own::Acquiring { .. }) {
            return;
        }
        let retry = Own::Acquiring {
            in_flight: false,
            next_try: now.plus_ms(self.config.period_ms()),
        };
        match answer {
            Ok(AcquireAnswer::Took { epoch }) => {
                self.own = Own::Running;
                self.own_epoch = Some(epoch);
                self.hold(self.me.clone(), epoch, sent_at);
                self.actions.push(LeaseAction::Start {
                    log: self.me.clone(),
                    epoch,
                    own: true,
                });
            }
            Ok(AcquireAnswer::HeldBy { holder }) if holder == self.me => {
                self.own = Own::Replaced { by: holder };
            }
            Ok(AcquireAnswer::HeldBy { .. }) => {
                self.own = retry;
                self.actions.push(LeaseAction::Want {
                    log: self.me.clone(),
                });
            }
            Err(_) => self.own = retry,
        }
    }

    /// The answer to an `Adopt` of `log` sent at `sent_at`: `Some(epoch)`
    /// if this instance took it over.
    pub fn on_adopted(
        &mut self,
        _now: Time,
        sent_at: Time,
        log: &str,
        answer: Result<Option<u64>, String>,
    ) {
        self.adopting.remove(log);
        if let Ok(Some(epoch)) = answer {
            if self.held.contains_key(log) {
                return;
            }
            self.hold(log.to_string(), epoch, sent_at);
            self.actions.push(LeaseAction::Start {
                log: log.to_string(),
                epoch,
                own: false,
            });
        }
    }

    /// The answer to a `Renew` of `log` at `epoch` sent at `sent_at`.
    pub fn on_renewed(
        &mut self,
        now: Time,
        sent_at: Time,
        log: &str,
        epoch: u64,
        answer: Result<RenewAnswer, String>,
    ) {
        let period = self.config.period_ms();
        let valid = self.config.valid_ms();
        let own = log == self.me;
        let Some(held) = self.held.get_mut(log).filter(|h| h.epoch == epoch) else {
            return; // stopped meanwhile, or a later life of the log
        };
        held.renewing = false;
        match answer {
            Ok(RenewAnswer::Held { wanted_by }) => {
                held.valid_until = held.valid_until.max(sent_at.plus_ms(valid));
                held.next_renew = sent_at.plus_ms(period);
                let wanted_by = wanted_by.filter(|_| !mutant::active(Mutant::NeverHandBack));
                match wanted_by {
                    Some(who) if !own && who != self.me => {
                        if held.wanted.is_none() {
                            held.wanted = Some((who, now));
                        }
                    }
                    _ => held.wanted = None,
                }
            }
            Ok(RenewAnswer::Lost {
                holder,
                epoch: now_at,
            }) => {
                // Under our own name at a later epoch: another process.
                // At ours: the lease ran out, nobody took it; this
                // process takes it again with a new life.
                let replaced = own && holder.as_deref() == Some(self.me.as_str()) && now_at > epoch;
                self.stop(log, StopWhy::Lost { holder }, now);
                if replaced {
                    self.own = Own::Replaced {
                        by: self.me.clone(),
                    };
                }
            }
            // The store failed: try again at the next tick past a period;
            // the lease runs out meanwhile if it stays down.
            Err(_) => held.next_renew = now.plus_ms(period / 2),
        }
    }

    /// A scan's rows: adopt every log whose lease ran out.
    pub fn on_scanned(&mut self, now: Time, rows: Result<Vec<LeaseRow>, String>) {
        self.scanning = false;
        self.next_scan = now.plus_ms(self.config.period_ms());
        let Ok(rows) = rows else {
            return;
        };
        for row in rows {
            let mine = row.holder.as_deref() == Some(self.me.as_str());
            if !row.expired
                || row.log == self.me
                || mine
                || self.held.contains_key(&row.log)
                || self.adopting.contains(&row.log)
            {
                continue;
            }
            self.adopting.insert(row.log.clone());
            self.actions.push(LeaseAction::Adopt {
                log: row.log,
                seen_epoch: row.epoch,
            });
        }
    }

    /// The coordinator over `log` at `epoch` stopped by itself (its store
    /// failed or fenced it). Its own log is acquired again at once, unless
    /// its last lives ended within a quarter lease of starting: then after
    /// a backoff (a quarter lease, doubling, at most a lease).
    pub fn on_stopped(&mut self, now: Time, log: &str, epoch: u64) {
        let Some(held) = self.held.get(log).filter(|h| h.epoch == epoch) else {
            return;
        };
        let quick = now.ms_since(held.since) < self.config.period_ms();
        self.held.remove(log);
        if log == self.me && self.own == Own::Running {
            let wait_ms = if quick {
                let wait = self.config.period_ms() << self.quick_ends.min(2);
                self.quick_ends = self.quick_ends.saturating_add(1);
                wait.min(self.config.lease_ms)
            } else {
                self.quick_ends = 0;
                0
            };
            self.own = Own::Acquiring {
                in_flight: false,
                next_try: now.plus_ms(wait_ms),
            };
        }
    }

    fn hold(&mut self, log: String, epoch: u64, sent_at: Time) {
        self.held.insert(
            log,
            Held {
                epoch,
                valid_until: sent_at.plus_ms(self.config.valid_ms()),
                next_renew: sent_at.plus_ms(self.config.period_ms()),
                renewing: false,
                wanted: None,
                since: sent_at,
            },
        );
    }

    fn stop(&mut self, log: &str, why: StopWhy, now: Time) {
        let Some(held) = self.held.remove(log) else {
            return;
        };
        self.actions.push(LeaseAction::Stop {
            log: log.to_string(),
            epoch: held.epoch,
            why,
        });
        if log == self.me {
            self.own = Own::Acquiring {
                in_flight: false,
                next_try: now,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Time {
        Time(0).plus_ms(n)
    }

    fn drain(leases: &mut Leases) -> Vec<LeaseAction> {
        leases.drain_actions().collect()
    }

    fn idle(_: &str) -> u64 {
        0
    }

    /// `started("a")`, which then adopts log "b" (its lease ran out under
    /// `holder`) at epoch 2 (its `Start` not drained).
    fn adopted_b(holder: Option<&str>) -> Leases {
        let mut leases = started("a");
        let row = LeaseRow {
            log: "b".into(),
            epoch: 1,
            holder: holder.map(String::from),
            expired: true,
        };
        leases.on_scanned(ms(10), Ok(vec![row]));
        drain(&mut leases);
        leases.on_adopted(ms(20), ms(10), "b", Ok(Some(2)));
        leases
    }

    /// The renewal of log "a" at epoch 3 sent at `sent` ms, answered
    /// "held" at `now` ms.
    fn renewed(leases: &mut Leases, now: u64, sent: u64) {
        let held = Ok(RenewAnswer::Held { wanted_by: None });
        leases.on_renewed(ms(now), ms(sent), "a", 3, held);
    }

    fn started(me: &str) -> Leases {
        let mut leases = Leases::new(me, LeaseConfig { lease_ms: 1000 }, ms(0));
        assert_eq!(
            drain(&mut leases),
            vec![
                LeaseAction::Acquire {
                    log: me.into(),
                    after: None
                },
                LeaseAction::Scan
            ]
        );
        leases.on_acquired(ms(5), ms(0), Ok(AcquireAnswer::Took { epoch: 3 }));
        assert_eq!(
            drain(&mut leases),
            vec![LeaseAction::Start {
                log: me.into(),
                epoch: 3,
                own: true
            }]
        );
        leases.on_scanned(ms(5), Ok(vec![]));
        leases
    }

    #[test]
    fn renews_every_quarter_and_stops_deciding_once_renewals_stop_answering() {
        let mut leases = started("a");
        leases.on_tick(ms(249), idle);
        assert!(drain(&mut leases).is_empty());
        leases.on_tick(ms(250), |_| 7);
        let renew = drain(&mut leases);
        assert!(renew.contains(&LeaseAction::Renew {
            log: "a".into(),
            epoch: 3,
            in_flight: 7
        }));
        renewed(&mut leases, 260, 250);
        // Valid until 250 + 750; the database is gone from now on.
        leases.on_tick(ms(500), idle);
        assert!(drain(&mut leases)
            .iter()
            .any(|a| matches!(a, LeaseAction::Renew { .. })));
        leases.on_renewed(ms(510), ms(500), "a", 3, Err("down".into()));
        leases.on_tick(ms(999), idle);
        assert!(!drain(&mut leases)
            .iter()
            .any(|a| matches!(a, LeaseAction::Stop { .. })));
        leases.on_tick(ms(1000), idle);
        let stopped = drain(&mut leases);
        assert!(stopped.contains(&LeaseAction::Stop {
            log: "a".into(),
            epoch: 3,
            why: StopWhy::Expired
        }));
        assert!(!leases.own_running());
        // And it tries to take its log again at once.
        assert!(stopped.contains(&LeaseAction::Acquire {
            log: "a".into(),
            after: Some(3)
        }));
    }

    #[test]
    fn a_late_renewal_grants_only_from_when_it_was_sent() {
        let mut leases = started("a");
        leases.on_tick(ms(250), idle);
        drain(&mut leases);
        // Answered long after it was sent (the instance was paused): the
        // grant counts from the sending, so it is already past.
        renewed(&mut leases, 2000, 250);
        leases.on_tick(ms(2000), idle);
        assert!(drain(&mut leases).iter().any(|a| matches!(
            a,
            LeaseAction::Stop {
                why: StopWhy::Expired,
                ..
            }
        )));
    }

    #[test]
    fn adopts_what_ran_out_and_only_that() {
        let mut leases = started("a");
        leases.on_tick(ms(300), idle);
        drain(&mut leases);
        let row = |log: &str, holder: &str, expired| LeaseRow {
            log: log.into(),
            epoch: 4,
            holder: Some(holder.into()),
            expired,
        };
        leases.on_scanned(
            ms(300),
            Ok(vec![
                row("a", "a", false),
                row("b", "b", true),
                row("c", "c", false),
            ]),
        );
        assert_eq!(
            drain(&mut leases),
            vec![LeaseAction::Adopt {
                log: "b".into(),
                seen_epoch: 4
            }]
        );
        // Lost the race to another adopter: nothing starts.
        leases.on_adopted(ms(310), ms(300), "b", Ok(None));
        assert!(drain(&mut leases).is_empty());
        leases.on_tick(ms(560), idle);
        assert!(drain(&mut leases).contains(&LeaseAction::Scan));
        leases.on_scanned(ms(560), Ok(vec![row("b", "b", true)]));
        drain(&mut leases);
        leases.on_adopted(ms(570), ms(560), "b", Ok(Some(5)));
        assert_eq!(
            drain(&mut leases),
            vec![LeaseAction::Start {
                log: "b".into(),
                epoch: 5,
                own: false
            }]
        );
        // Held now: a later scan does not adopt it again.
        leases.on_scanned(ms(600), Ok(vec![row("b", "b", true)]));
        assert!(drain(&mut leases).is_empty());
    }

    #[test]
    fn hands_an_adopted_log_back_once_idle_and_stops_it_first() {
        let mut leases = adopted_b(Some("b"));
        drain(&mut leases);
        leases.on_tick(ms(260), |_| 3);
        drain(&mut leases);
        leases.on_renewed(
            ms(270),
            ms(260),
            "b",
            2,
            Ok(RenewAnswer::Held {
                wanted_by: Some("b".into()),
            }),
        );
        // Busy: kept for now.
        leases.on_tick(ms(280), |_| 3);
        assert!(!drain(&mut leases)
            .iter()
            .any(|a| matches!(a, LeaseAction::HandBack { .. })));
        let actions = {
            leases.on_tick(ms(290), |log| u64::from(log == "a"));
            drain(&mut leases)
        };
        let stop = actions
            .iter()
            .position(|a| matches!(a, LeaseAction::Stop { log, .. } if log == "b"))
            .expect("stopped");
        let back = actions
            .iter()
            .position(|a| {
                *a == LeaseAction::HandBack {
                    log: "b".into(),
                    epoch: 2,
                    to: "b".into(),
                }
            })
            .expect("handed back");
        assert!(stop < back, "{actions:?}");
        assert_eq!(leases.held().collect::<Vec<_>>(), vec![("a", 3)]);
    }

    #[test]
    fn a_busy_adopted_log_is_handed_back_after_two_leases_anyway() {
        let mut leases = adopted_b(None);
        let mut t = 20;
        let mut handed = false;
        while t < 5000 && !handed {
            t += 50;
            leases.on_tick(ms(t), |_| 1);
            for action in drain(&mut leases) {
                match action {
                    LeaseAction::Renew { log, epoch, .. } => leases.on_renewed(
                        ms(t),
                        ms(t),
                        &log,
                        epoch,
                        Ok(RenewAnswer::Held {
                            wanted_by: (log == "b").then(|| "b".to_string()),
                        }),
                    ),
                    LeaseAction::HandBack { .. } => handed = true,
                    LeaseAction::Stop { log, .. } => assert_eq!(log, "b"),
                    _ => {}
                }
            }
        }
        // First asked at the renewal at ~260 ms; two leases later.
        assert!(handed && (2260..=2400).contains(&t), "t = {t}");
    }

    #[test]
    fn held_by_another_asks_for_it_and_tries_again() {
        let mut leases = Leases::new("a", LeaseConfig { lease_ms: 1000 }, ms(0));
        drain(&mut leases);
        leases.on_acquired(
            ms(5),
            ms(0),
            Ok(AcquireAnswer::HeldBy { holder: "b".into() }),
        );
        assert_eq!(
            drain(&mut leases),
            vec![LeaseAction::Want { log: "a".into() }]
        );
        leases.on_tick(ms(254), idle);
        let acquire = LeaseAction::Acquire {
            log: "a".into(),
            after: None,
        };
        assert!(!drain(&mut leases).contains(&acquire));
        leases.on_tick(ms(255), idle);
        assert!(drain(&mut leases).contains(&acquire));
    }

    /// `started("a")`, whose first renewal finds the log held by
    /// `holder` at `epoch`.
    fn renewal_finds(holder: &str, epoch: u64) -> Leases {
        let mut leases = started("a");
        leases.on_tick(ms(250), idle);
        drain(&mut leases);
        leases.on_renewed(
            ms(260),
            ms(250),
            "a",
            3,
            Ok(RenewAnswer::Lost {
                holder: Some(holder.into()),
                epoch,
            }),
        );
        leases
    }

    #[test]
    fn a_renewal_that_finds_our_own_name_elsewhere_retires_the_instance() {
        let mut leases = renewal_finds("a", 4);
        assert_eq!(leases.replaced_by(), Some("a"));
        leases.on_tick(ms(5000), idle);
        assert!(!drain(&mut leases)
            .iter()
            .any(|a| matches!(a, LeaseAction::Acquire { .. })));
    }

    #[test]
    fn an_answer_for_an_earlier_life_of_a_log_changes_nothing() {
        let mut leases = started("a");
        leases.on_renewed(
            ms(10),
            ms(0),
            "a",
            2,
            Ok(RenewAnswer::Lost {
                holder: Some("b".into()),
                epoch: 5,
            }),
        );
        assert!(leases.own_running());
        assert!(drain(&mut leases).is_empty());
    }

    #[test]
    fn a_lease_that_ran_out_untaken_is_taken_again_not_mistaken_for_a_namesake() {
        let mut leases = renewal_finds("a", 3);
        assert_eq!(leases.replaced_by(), None);
        leases.on_tick(ms(261), idle);
        assert!(drain(&mut leases).contains(&LeaseAction::Acquire {
            log: "a".into(),
            after: Some(3)
        }));
        // The store says a namesake holds it at a later epoch: retire.
        leases.on_acquired(
            ms(270),
            ms(261),
            Ok(AcquireAnswer::HeldBy { holder: "a".into() }),
        );
        assert_eq!(leases.replaced_by(), Some("a"));
    }

    #[test]
    fn nothing_in_flight_makes_the_next_tick_due() {
        let mut leases = started("a");
        leases.on_tick(ms(255), idle);
        let actions = drain(&mut leases);
        assert!(actions.contains(&LeaseAction::Scan));
        assert!(actions
            .iter()
            .any(|a| matches!(a, LeaseAction::Renew { .. })));
        // The scan and the renewal are out; the lease runs until 750.
        assert_eq!(leases.next_due(), ms(750));
        leases.on_scanned(ms(260), Ok(vec![]));
        assert_eq!(leases.next_due(), ms(510));
    }

    #[test]
    fn a_life_that_keeps_ending_soon_after_it_started_is_retried_with_backoff() {
        let mut leases = started("a");
        let again = |leases: &mut Leases, at: u64| {
            leases.on_tick(ms(at), idle);
            drain(leases)
                .iter()
                .any(|a| matches!(a, LeaseAction::Acquire { .. }))
        };
        // Ends 100 ms after it started: taken again after a quarter lease.
        leases.on_stopped(ms(100), "a", 3);
        assert!(!leases.own_running());
        assert!(!again(&mut leases, 349));
        assert!(again(&mut leases, 350));
        leases.on_acquired(ms(360), ms(350), Ok(AcquireAnswer::Took { epoch: 4 }));
        drain(&mut leases);
        // Again at once: half a lease now.
        leases.on_stopped(ms(400), "a", 4);
        assert!(!again(&mut leases, 899));
        assert!(again(&mut leases, 900));
        leases.on_acquired(ms(910), ms(900), Ok(AcquireAnswer::Took { epoch: 5 }));
        drain(&mut leases);
        // A life that ran past its first renewal ends: taken again at once.
        for at in (1150..=2500).step_by(250) {
            leases.on_tick(ms(at), idle);
            drain(&mut leases);
            let held = Ok(RenewAnswer::Held { wanted_by: None });
            leases.on_renewed(ms(at + 5), ms(at), "a", 5, held);
        }
        assert!(leases.own_running());
        leases.on_stopped(ms(2600), "a", 5);
        assert!(again(&mut leases, 2600));
    }
}
