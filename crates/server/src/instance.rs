//! One coordinator instance of several sharing a PostgreSQL store
//! (`concord serve --store postgres://…`, SPEC §1.8): the tokio side of
//! [`concord_node::lease::Leases`], which decides everything here. This
//! file carries its actions out: lease statements on a thread of their own
//! (the `postgres` client blocks), and one coordinator life per log held —
//! the instance's own, serving its `--listen` and `--http-listen`, and
//! every log adopted from an instance whose lease ran out, each on a port
//! of its own (participants learn it from its first frame, as from a
//! coordinator that moved).
//!
//! Any instance answers `GET /v1/transactions/{xid}` for any log: its
//! HTTP API asks the lives here and, through [`crate::peers::Peers`],
//! the instances holding the others (each owner row names its holder's
//! HTTP address).
//!
//! While its own log is not running here (the store is down, or another
//! instance adopted it and has not handed it back yet) the instance
//! still serves its ports, answering every request "store unavailable"
//! (HTTP 503), so clients try again or go to another instance.

use crate::coordinator::{serve_once, serve_unavailable, CoordinatorServerConfig, Leased};
use crate::driver::Clock;
use crate::peers::Peers;
use concord_node::lease::{AcquireAnswer, LeaseAction, LeaseRow, Leases, RenewAnswer};
use concord_node::locate::Served;
use concord_proto::Time;
use concord_store::{Acquired, OwnerRow, PgLeases, Renewal, StoreError};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// How long a stopping life may take to write out its log before it is
/// cut off (its writes are fenced by then anyway).
const STOP_WAIT: Duration = Duration::from_secs(10);

/// A store answer or a life that ended, for the instance's loop.
enum Event {
    Answer {
        sent_at: Time,
        answer: Answer,
    },
    LifeEnded {
        log: String,
        epoch: u64,
        error: Option<String>,
    },
}

enum Answer {
    Acquired(Result<AcquireAnswer, String>),
    Adopted {
        log: String,
        taken: Result<Option<u64>, String>,
    },
    Renewed {
        log: String,
        epoch: u64,
        renewal: Result<RenewAnswer, String>,
    },
    Scanned(Result<Vec<OwnerRow>, String>),
    /// A statement with nothing to answer (want, hand back) went through
    /// or failed; only logged.
    Done,
}

/// A coordinator running over one log.
struct Life {
    epoch: u64,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    in_flight: Arc<AtomicU64>,
}

/// The instance's ports while its own log is not running here.
struct Standby {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Run this instance until `shutdown`: see the module comment.
pub(crate) async fn run_instance_until(
    config: CoordinatorServerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Some(dsn) = config.store.clone() else {
        anyhow::bail!("an instance over a shared store needs --store");
    };
    let me = config.node.id.clone();
    let clock = Clock::start();
    let mut leases = Leases::new(me.clone(), config.lease.clone(), clock.now());
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let http = advertised_http(&config);
    let statements = spawn_statements(
        dsn,
        me.clone(),
        http,
        config.lease.lease_ms,
        events_tx.clone(),
    );
    let peers = Peers::new(&me);
    tracing::info!(
        instance = %me,
        lease_ms = config.lease.lease_ms,
        "coordinator instance over a shared PostgreSQL store: acquiring its log"
    );
    let mut lives: HashMap<String, Life> = HashMap::new();
    // The ports are served "store unavailable" only once the first try to
    // acquire the log failed: a start that takes it at once binds them
    // once, for the coordinator.
    let mut standby: Option<Standby> = None;
    let mut why_not: Option<String> = None;
    tokio::pin!(shutdown);
    let result = loop {
        let actions: Vec<LeaseAction> = leases.drain_actions().collect();
        for action in actions {
            let now = clock.now();
            match action {
                LeaseAction::Start { log, epoch, own } => {
                    if own {
                        if let Some(standby) = standby.take() {
                            stop_standby(standby).await;
                        }
                        tracing::info!(instance = %me, epoch, "took this instance's log");
                    } else {
                        tracing::warn!(
                            instance = %me,
                            log = %log,
                            epoch,
                            "took over the log of instance {log}: its lease ran out; \
                             recovering its transactions"
                        );
                    }
                    let life = start_life(&config, &log, epoch, own, &peers, events_tx.clone());
                    lives.insert(log, life);
                }
                LeaseAction::Stop { log, epoch, why } => {
                    tracing::warn!(instance = %me, log = %log, epoch, "stopped deciding for log {log}: {why}");
                    if let Some(life) = lives.remove(&log).filter(|l| l.epoch == epoch) {
                        stop_life(life).await;
                    }
                    if log == me {
                        why_not = Some(why.to_string());
                    }
                }
                store_call => {
                    let _ = statements.send((store_call, now));
                }
            }
        }
        if standby.is_none() && !lives.contains_key(&me) {
            if let Some(why) = &why_not {
                standby = Some(start_standby(&config, why));
            }
        }
        if let Some(by) = leases.replaced_by() {
            break Err(anyhow::anyhow!(
                "another process named {by:?} took this instance's log over: instance names \
                 (--name) must be unique; this one stops"
            ));
        }
        let due = clock.instant(leases.next_due());
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else {
                    break Err(anyhow::anyhow!("the lease statements' thread stopped"));
                };
                let now = clock.now();
                match event {
                    Event::Answer { sent_at, answer } => match answer {
                        Answer::Acquired(answer) => {
                            match &answer {
                                Ok(AcquireAnswer::HeldBy { holder }) => {
                                    tracing::info!(
                                        instance = %me,
                                        "this instance's log is held by instance {holder}: \
                                         asked for it back"
                                    );
                                    why_not = Some(format!("its log is held by instance {holder}"));
                                }
                                Err(e) => {
                                    tracing::warn!(
                                        instance = %me,
                                        "cannot acquire this instance's log: {e}"
                                    );
                                    why_not = Some(e.clone());
                                }
                                Ok(AcquireAnswer::Took { .. }) => {}
                            }
                            leases.on_acquired(now, sent_at, answer)
                        }
                        Answer::Adopted { log, taken } => {
                            leases.on_adopted(now, sent_at, &log, taken)
                        }
                        Answer::Renewed { log, epoch, renewal } => {
                            if let Err(e) = &renewal {
                                tracing::warn!(instance = %me, log = %log, "lease renewal failed: {e}");
                            }
                            leases.on_renewed(now, sent_at, &log, epoch, renewal)
                        }
                        Answer::Scanned(rows) => {
                            if let Ok(rows) = &rows {
                                let sent = clock.instant(sent_at);
                                peers.scanned(sent, rows.iter().map(served).collect());
                            }
                            let rows = rows.map(|rows| rows.into_iter().map(lease_row).collect());
                            leases.on_scanned(now, rows)
                        }
                        Answer::Done => {}
                    },
                    Event::LifeEnded { log, epoch, error } => {
                        if lives.get(&log).is_some_and(|l| l.epoch == epoch) {
                            lives.remove(&log);
                            tracing::error!(
                                instance = %me,
                                log = %log,
                                epoch,
                                "the coordinator over log {log} stopped: {}",
                                error.as_deref().unwrap_or("it ended")
                            );
                            leases.on_stopped(now, &log, epoch);
                            if log == me {
                                why_not = Some(error.unwrap_or_else(|| "it ended".into()));
                            }
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(due) => {
                let gauges: HashMap<&str, u64> = lives
                    .iter()
                    .map(|(log, life)| (log.as_str(), life.in_flight.load(Ordering::Relaxed)))
                    .collect();
                leases.on_tick(clock.now(), |log| gauges.get(log).copied().unwrap_or(0));
            }
            _ = &mut shutdown => break Ok(()),
        }
    };
    for (_, life) in lives.drain() {
        stop_life(life).await;
    }
    if let Some(standby) = standby.take() {
        stop_standby(standby).await;
    }
    drop(statements);
    result
}

/// A coordinator over `log` at `epoch`: the instance's own (its ports) or
/// an adopted one (a port of its own, no HTTP API).
fn start_life(
    config: &CoordinatorServerConfig,
    log: &str,
    epoch: u64,
    own: bool,
    peers: &std::sync::Arc<Peers>,
    events: mpsc::UnboundedSender<Event>,
) -> Life {
    let mut config = config.clone();
    if !own {
        let host = config
            .advertise
            .as_deref()
            .unwrap_or(&config.listen)
            .rsplit_once(':')
            .map(|(host, _)| host.to_string())
            .unwrap_or_else(|| "127.0.0.1".into());
        config.listen = format!("{host}:0");
        config.advertise = None;
        config.node.id = log.to_string();
        config.node.addr = config.listen.clone();
        config.node.xid_seed = rand::random();
        config.node.operator_token = None;
        config.http = None;
    }
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let in_flight = Arc::new(AtomicU64::new(0));
    let leased = Leased {
        epoch,
        in_flight: in_flight.clone(),
        peers: peers.clone(),
    };
    let log = log.to_string();
    // Every line a life logs names its log: one process may run several.
    let span = tracing::info_span!("log", name = %log, epoch);
    let task = tokio::spawn(
        async move {
            let mut stop = Box::pin(async {
                let _ = stop_rx.await;
            });
            let result = serve_once(&config, Some(leased), &mut stop).await;
            let _ = events.send(Event::LifeEnded {
                log,
                epoch,
                error: result.err().map(|e| format!("{e:#}")),
            });
        }
        .instrument(span),
    );
    Life {
        epoch,
        stop: Some(stop_tx),
        task,
        in_flight,
    }
}

async fn stop_life(mut life: Life) {
    if let Some(stop) = life.stop.take() {
        let _ = stop.send(());
    }
    if tokio::time::timeout(STOP_WAIT, &mut life.task)
        .await
        .is_err()
    {
        life.task.abort();
    }
}

fn start_standby(config: &CoordinatorServerConfig, why: &str) -> Standby {
    let message = format!(
        "store unavailable: this instance is not deciding ({why}); it resumes by itself once \
         it holds its log again: retry later or at another instance"
    );
    let config = config.clone();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let until = async {
            let _ = stop_rx.await;
        };
        if let Err(e) = serve_unavailable(&config, message, until).await {
            tracing::warn!("cannot serve the ports while not deciding: {e:#}");
        }
    });
    Standby { stop, task }
}

async fn stop_standby(standby: Standby) {
    let _ = standby.stop.send(());
    let _ = standby.task.await;
}

/// The thread that runs lease statements, one at a time, over one
/// connection (opened again after any failure); answers go to `events`
/// stamped with when the action was decided.
fn spawn_statements(
    dsn: String,
    me: String,
    http: Option<String>,
    lease_ms: u64,
    events: mpsc::UnboundedSender<Event>,
) -> std::sync::mpsc::Sender<(LeaseAction, Time)> {
    let (tx, rx) = std::sync::mpsc::channel::<(LeaseAction, Time)>();
    std::thread::spawn(move || {
        let mut db: Option<PgLeases> = None;
        let store = Store {
            dsn: &dsn,
            http: http.as_deref(),
        };
        for (action, sent_at) in rx {
            let answer = run_statement(&mut db, store, &me, lease_ms, action);
            if events.send(Event::Answer { sent_at, answer }).is_err() {
                break;
            }
        }
    });
    tx
}

/// The database, and where this instance serves HTTP (written into every
/// log it takes).
#[derive(Clone, Copy)]
struct Store<'a> {
    dsn: &'a str,
    http: Option<&'a str>,
}

fn run_statement(
    db: &mut Option<PgLeases>,
    store: Store,
    me: &str,
    lease_ms: u64,
    action: LeaseAction,
) -> Answer {
    fn with<T>(
        db: &mut Option<PgLeases>,
        store: Store,
        call: impl FnOnce(&mut PgLeases) -> Result<T, StoreError>,
    ) -> Result<T, String> {
        if db.is_none() {
            let leases = PgLeases::connect(store.dsn).map_err(|e| e.to_string())?;
            *db = Some(leases.serving_http(store.http.map(str::to_string)));
        }
        let Some(leases) = db.as_mut() else {
            return Err("no connection".into());
        };
        let result = call(leases).map_err(|e| e.to_string());
        if result.is_err() {
            *db = None; // a failed connection is opened again next time
        }
        result
    }
    match action {
        LeaseAction::Acquire { log, after } => Answer::Acquired(
            with(db, store, |l| l.acquire(&log, me, lease_ms, after)).map(|a| match a {
                Acquired::Took { epoch } => AcquireAnswer::Took { epoch },
                Acquired::HeldBy { holder, .. } => AcquireAnswer::HeldBy { holder },
            }),
        ),
        LeaseAction::Adopt { log, seen_epoch } => {
            let taken = with(db, store, |l| l.adopt(&log, me, seen_epoch, lease_ms));
            Answer::Adopted { log, taken }
        }
        LeaseAction::Renew {
            log,
            epoch,
            in_flight,
        } => {
            let renewal = with(db, store, |l| l.renew(&log, me, epoch, lease_ms, in_flight)).map(
                |r| match r {
                    Renewal::Held { wanted_by } => RenewAnswer::Held { wanted_by },
                    Renewal::Lost { holder, epoch } => RenewAnswer::Lost { holder, epoch },
                },
            );
            Answer::Renewed {
                log,
                epoch,
                renewal,
            }
        }
        LeaseAction::Want { log } => {
            if let Err(e) = with(db, store, |l| l.want(&log, me)) {
                tracing::warn!("cannot ask for log {log} back: {e}");
            }
            Answer::Done
        }
        LeaseAction::HandBack { log, epoch, to } => {
            match with(db, store, |l| l.hand_back(&log, epoch, &to, lease_ms)) {
                Ok(true) => tracing::info!("handed log {log} back to instance {to}"),
                Ok(false) => tracing::info!("log {log} was taken meanwhile; not handed back"),
                Err(e) => tracing::warn!("cannot hand log {log} back to {to}: {e}"),
            }
            Answer::Done
        }
        LeaseAction::Scan => Answer::Scanned(with(db, store, |l| l.scan())),
        // Carried out by the instance's loop, never sent here.
        LeaseAction::Start { .. } | LeaseAction::Stop { .. } => Answer::Done,
    }
}

fn lease_row(row: OwnerRow) -> LeaseRow {
    LeaseRow {
        log: row.log,
        epoch: row.epoch,
        holder: row.holder,
        expired: row.expired,
    }
}

fn served(row: &OwnerRow) -> Served {
    Served {
        log: row.log.clone(),
        live: row.holder.is_some() && !row.expired,
        holder: row.holder.clone(),
        http: row.http.clone(),
    }
}

/// Where other instances reach this one's HTTP API: `--http-listen`, with
/// the host of `--advertise` (or `--listen`) when it listens on every
/// address (0.0.0.0 is nobody's address to connect to).
fn advertised_http(config: &CoordinatorServerConfig) -> Option<String> {
    let listen = &config.http.as_ref()?.listen;
    let (host, port) = listen.rsplit_once(':')?;
    let everywhere = matches!(host, "0.0.0.0" | "[::]" | "");
    if !everywhere {
        return Some(listen.clone());
    }
    let public = config.advertise.as_deref().unwrap_or(&config.listen);
    let host = public
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or("127.0.0.1");
    let host = if matches!(host, "0.0.0.0" | "[::]" | "") {
        "127.0.0.1"
    } else {
        host
    };
    Some(format!("{host}:{port}"))
}
