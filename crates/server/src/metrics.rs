//! Prometheus metrics (`GET /metrics` on `--http-listen`), in the text
//! format, through the `prometheus-client` crate.
//!
//! Counts the node layer already keeps (its counters, what is in flight
//! or in doubt) are read at scrape time in the driver's task, so they are
//! exactly the node's, and so are the phase latencies (bucketed at scrape
//! time from the histograms the timeout policy keeps anyway, so the hot
//! path pays nothing for them); fired timeouts are counted from the node's
//! typed events, fsync latency and group-commit batch sizes from the log
//! writer's observer.
//! Names follow the Prometheus conventions: base units, `_total` on
//! counters, `_seconds` on times.

use concord_node::CoordinatorEvent;
use concord_store::{GroupCommitStats, LogObservation, LogObserver};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

type Labels = Vec<(String, String)>;

/// 100 µs .. about 13 s, doubling.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_string(), value.to_string())]
}

/// The log writer's distributions, fed on its own thread.
#[derive(Clone)]
pub struct LogMetrics {
    fsync_seconds: Histogram,
    batch_records: Histogram,
}

impl LogMetrics {
    pub fn new() -> LogMetrics {
        LogMetrics {
            fsync_seconds: seconds_histogram(),
            // 1 .. 32,768 records, doubling.
            batch_records: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
        }
    }

    /// What the group commit writer calls (quick: two atomic updates).
    pub fn observer(&self) -> LogObserver {
        let me = self.clone();
        Arc::new(move |observation| match observation {
            LogObservation::Sync { elapsed } => me.fsync_seconds.observe(elapsed.as_secs_f64()),
            LogObservation::Batch { records } => me.batch_records.observe(records as f64),
        })
    }

    fn register(&self, registry: &mut Registry, stats: GroupCommitStats) {
        registry.register(
            "concord_log_fsync_seconds",
            "Time of each fsync of the durable log",
            self.fsync_seconds.clone(),
        );
        registry.register(
            "concord_log_batch_records",
            "Records per group-commit batch (one write each)",
            self.batch_records.clone(),
        );
        counter(
            registry,
            "concord_log_records",
            "Records appended to the log",
            stats.records,
        );
        counter(
            registry,
            "concord_log_bytes",
            "Payload bytes appended to the log",
            stats.bytes,
        );
        counter(
            registry,
            "concord_log_fsyncs",
            "fsyncs of the log",
            stats.syncs,
        );
    }
}

impl Default for LogMetrics {
    fn default() -> Self {
        LogMetrics::new()
    }
}

/// A counter whose value the node keeps (set at scrape time).
fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// A counter family with one label, each value the node keeps.
fn labelled(registry: &mut Registry, name: &str, help: &str, key: &str, values: &[(&str, u64)]) {
    let family: Family<Labels, Counter> = Family::default();
    for (value, n) in values {
        family.get_or_create(&label(key, value)).inc_by(*n);
    }
    registry.register(name, help, family);
}

/// A gauge family with one label.
fn labelled_gauge(
    registry: &mut Registry,
    name: &str,
    help: &str,
    key: &str,
    values: &[(&str, i64)],
) {
    let family: Family<Labels, Gauge> = Family::default();
    for (value, n) in values {
        family.get_or_create(&label(key, value)).set(*n);
    }
    registry.register(name, help, family);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = encode(&mut out, registry) {
        // Writing into a String does not fail; say so if it ever did.
        out = format!("# cannot encode the metrics: {e}\n");
    }
    out
}

/// Upper bounds of the latency buckets: 100 µs doubling to about 13 s.
const LATENCY_BOUNDS_US: [u64; 18] = {
    let mut bounds = [0u64; 18];
    let mut i = 0;
    while i < bounds.len() {
        bounds[i] = 100 << i;
        i += 1;
    }
    bounds
};

/// The node's latency histograms (HDR, kept for the timeouts anyway) as
/// Prometheus histograms labelled by participant and phase, bucketed at
/// scrape time so the hot path pays nothing for metrics.
#[derive(Clone, Debug, Default)]
pub struct PhaseHistograms {
    /// (participant, phase, per-bucket counts incl. +Inf, sum s, count)
    series: Vec<(String, &'static str, Vec<u64>, f64, u64)>,
}

impl PhaseHistograms {
    pub fn of(
        histograms: Vec<(
            &concord_proto::NodeId,
            &'static str,
            &concord_node::latency::LatencyHistogram,
        )>,
    ) -> PhaseHistograms {
        PhaseHistograms {
            series: histograms
                .into_iter()
                .map(|(peer, phase, h)| {
                    let (counts, sum_us, count) = h.buckets(&LATENCY_BOUNDS_US);
                    (peer.clone(), phase, counts, sum_us / 1e6, count)
                })
                .collect(),
        }
    }
}

impl TypedMetric for PhaseHistograms {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for PhaseHistograms {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (peer, phase, counts, sum, count) in &self.series {
            let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_US
                .iter()
                .map(|us| *us as f64 / 1e6)
                .chain(std::iter::once(f64::MAX))
                .zip(counts.iter().copied())
                .collect();
            let labels = [("participant", peer.as_str()), ("phase", *phase)];
            encoder
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(*sum, *count, &buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// What the coordinator's driver reads from its node at scrape time.
pub struct CoordinatorSnapshot {
    pub latency: PhaseHistograms,
    pub counters: concord_node::CoordinatorCounters,
    pub in_flight: usize,
    pub clients_waiting: usize,
    /// Branches flagged *needs attention* now.
    pub needs_attention: usize,
    pub log: GroupCommitStats,
}

/// The coordinator's metrics.
pub struct CoordinatorMetrics {
    pub log: LogMetrics,
    timeouts_fired: Family<Labels, Counter>,
}

impl CoordinatorMetrics {
    pub fn new() -> CoordinatorMetrics {
        CoordinatorMetrics {
            log: LogMetrics::new(),
            timeouts_fired: Family::default(),
        }
    }

    /// Every node event passes here on its way to the log lines.
    pub fn on_event(&self, event: &CoordinatorEvent) {
        if let CoordinatorEvent::TimeoutFired { phase, .. } = event {
            self.timeouts_fired
                .get_or_create(&label("phase", phase))
                .inc();
        }
    }

    pub fn render(&self, s: &CoordinatorSnapshot) -> String {
        let mut r = Registry::default();
        counter(
            &mut r,
            "concord_transactions_begun",
            "Global transactions begun",
            s.counters.begun,
        );
        labelled(
            &mut r,
            "concord_transactions",
            "Global transactions decided, by outcome",
            "outcome",
            &[
                ("committed", s.counters.committed),
                ("aborted", s.counters.aborted),
            ],
        );
        counter(
            &mut r,
            "concord_transactions_ended",
            "Committed transactions every participant acknowledged",
            s.counters.ended,
        );
        counter(
            &mut r,
            "concord_decision_delivery_attempts",
            "COMMIT messages sent to participants (first sends and resends)",
            s.counters.decision_deliveries,
        );
        gauge(
            &mut r,
            "concord_branches_needing_attention",
            "Branches that have not acknowledged COMMIT for longer than --attention-after",
            s.needs_attention as i64,
        );
        labelled(
            &mut r,
            "concord_transactions_refused",
            "Begin requests refused, by reason (busy: an admission limit)",
            "reason",
            &[
                ("busy", s.counters.refused_busy),
                (
                    "invalid",
                    s.counters.refused.saturating_sub(s.counters.refused_busy),
                ),
            ],
        );
        gauge(
            &mut r,
            "concord_transactions_in_flight",
            "Transactions begun and not yet ended",
            s.in_flight as i64,
        );
        gauge(
            &mut r,
            "concord_clients_waiting",
            "Client requests waiting for an outcome",
            s.clients_waiting as i64,
        );
        r.register(
            "concord_phase_latency_seconds",
            "Measured exchanges by participant and phase (prepare: PREPARE to vote; decision: \
             COMMIT to ACK), the samples the timeouts are computed from",
            s.latency.clone(),
        );
        r.register(
            "concord_timeouts_fired",
            "Timeouts that fired, by phase",
            self.timeouts_fired.clone(),
        );
        self.log.register(&mut r, s.log);
        render(&r)
    }
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        CoordinatorMetrics::new()
    }
}

/// What the participant's driver reads from its node at scrape time.
pub struct ParticipantSnapshot {
    pub counters: concord_node::ParticipantCounters,
    pub in_doubt: usize,
    /// Age of the oldest READY branch without its outcome (this life's).
    pub oldest_in_doubt_seconds: f64,
    /// READY vote → outcome per branch: how long locks were held.
    pub lock_hold: PhaseHistograms,
    pub log: GroupCommitStats,
    /// A PostgreSQL participant's last reconciliation.
    pub pg: Option<concord_participant::pg::PreparedReport>,
}

/// The participant's metrics.
pub struct ParticipantMetrics {
    pub log: LogMetrics,
}

impl ParticipantMetrics {
    pub fn new() -> ParticipantMetrics {
        ParticipantMetrics {
            log: LogMetrics::new(),
        }
    }

    pub fn render(&self, s: &ParticipantSnapshot) -> String {
        let mut r = Registry::default();
        labelled(
            &mut r,
            "concord_branches",
            "Branches finished here, by outcome",
            "outcome",
            &[
                ("committed", s.counters.committed),
                ("aborted", s.counters.aborted),
            ],
        );
        gauge(
            &mut r,
            "concord_branches_in_doubt",
            "Branches READY and waiting for their outcome",
            s.in_doubt as i64,
        );
        let oldest: Gauge<f64, AtomicU64> = Gauge::default();
        oldest.set(s.oldest_in_doubt_seconds);
        r.register(
            "concord_oldest_in_doubt_age_seconds",
            "How long the oldest in-doubt branch has been READY (0: none; branches recovered \
             after a restart are not counted)",
            oldest,
        );
        r.register(
            "concord_lock_hold_seconds",
            "How long each branch held its locks: from its READY vote to its outcome (branches \
             prepared in this life)",
            s.lock_hold.clone(),
        );
        counter(
            &mut r,
            "concord_inquiries",
            "INQUIREs sent while in doubt",
            s.counters.inquiries,
        );
        counter(
            &mut r,
            "concord_resource_apply_failures",
            "Resource commits and aborts that failed and were retried",
            s.counters.apply_failures,
        );
        counter(
            &mut r,
            "concord_protocol_violations",
            "Messages from peers that broke the protocol (not acted upon)",
            s.counters.violations,
        );
        self.log.register(&mut r, s.log);
        if let Some(pg) = &s.pg {
            register_pg(&mut r, pg);
        }
        render(&r)
    }
}

/// A PostgreSQL participant's view of `pg_prepared_xacts`.
fn register_pg(r: &mut Registry, pg: &concord_participant::pg::PreparedReport) {
    labelled_gauge(
        r,
        "concord_pg_prepared_transactions",
        "Prepared transactions in the PostgreSQL cluster at the last reconciliation: held by \
         this participant's branches, its own waiting for their PREPARE, and the ones it does \
         not resolve (another participant's, a foreign tool's, another database's)",
        "kind",
        &[
            ("held", pg.held as i64),
            ("waiting", pg.waiting as i64),
            ("unresolvable", pg.unresolvable as i64),
        ],
    );
    let oldest: Gauge<f64, AtomicU64> = Gauge::default();
    oldest.set(pg.oldest_unresolved_s);
    r.register(
        "concord_pg_unresolved_oldest_age_seconds",
        "Age of the oldest prepared transaction this participant has not resolved (0: none)",
        oldest,
    );
    gauge(
        r,
        "concord_pg_max_prepared_transactions",
        "PostgreSQL's max_prepared_transactions (a warning is logged at 80 %)",
        pg.max_prepared as i64,
    );
    labelled(
        r,
        "concord_pg_reconciled",
        "Prepared transactions reconciliation resolved since start, by outcome",
        "outcome",
        &[("committed", pg.commits), ("rolled_back", pg.rollbacks)],
    );
    gauge(
        r,
        "concord_pg_reachable",
        "Whether the last reconciliation could read pg_prepared_xacts (1) or not (0)",
        i64::from(pg.last_error.is_none() && pg.reconciled_at.is_some()),
    );
}

impl Default for ParticipantMetrics {
    fn default() -> Self {
        ParticipantMetrics::new()
    }
}
