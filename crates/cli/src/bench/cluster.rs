//! The processes a benchmark runs against: a coordinator and N
//! participants started as child processes of this binary on 127.0.0.1
//! (or an existing cluster named by address), and the counters read from
//! them around a measuring window: each server's log and network counters
//! (`Request::Stats`) and, for processes we started, their CPU time from
//! `/proc`.

use crate::procs::{
    coordinator_args, free_ports, participant_args, pg_participant_args, wait_listening, Proc,
};
use anyhow::{bail, Context};
use concord_api::ServerStats;
use concord_client::Client;
use std::path::PathBuf;

/// How the servers of one run are started.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub exe: PathBuf,
    pub participants: usize,
    /// Accounts seeded at each participant.
    pub accounts: usize,
    pub balance: i64,
    /// False: start the servers with `--unsafe-no-fsync` (baseline only).
    pub fsync: bool,
    /// False: the coordinator runs with `--no-one-phase` (the
    /// optimizations' before-and-after runs).
    pub one_phase: bool,
    /// False: the participants run with `--no-read-only-vote`.
    pub read_only_votes: bool,
    /// The coordinator also serves the HTTP API (`--http-listen`).
    pub http: bool,
    /// Directory under which each server gets its data directory.
    pub root: PathBuf,
    /// PostgreSQL participants (`concord pg-participant`) instead of
    /// key-value ones: participant `i` serves the database `dsns[i]`.
    pub postgres: Option<PgParticipants>,
    /// The coordinator's log in this PostgreSQL database (`--store`)
    /// instead of a file.
    pub coordinator_store: Option<String>,
    /// Coordinator instances sharing that store (1 without one); the
    /// load goes round them.
    pub coordinator_instances: usize,
}

/// The databases of PostgreSQL participants, and their connection pools.
#[derive(Clone, Debug)]
pub struct PgParticipants {
    pub dsns: Vec<String>,
    /// `--connections` of each participant (its prepare lane).
    pub connections: usize,
}

/// A running set of servers.
pub struct Cluster {
    /// Every coordinator instance (one but with a shared store).
    pub coordinators: Vec<String>,
    /// The coordinator's HTTP API, when it serves one.
    pub http: Option<String>,
    /// `(name, address)` of each participant, in order.
    pub participants: Vec<(String, String)>,
    /// Participant `i`'s PostgreSQL database, for PostgreSQL participants.
    pub pg_dsns: Option<Vec<String>>,
    /// Processes we started (empty for an existing cluster): the
    /// coordinator first.
    procs: Vec<Proc>,
    /// One client per server for reading its counters.
    stat_clients: Vec<Client>,
}

/// Counters of every server at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub servers: Vec<ServerStats>,
    /// CPU seconds (user + system) of each process we started, and of this
    /// process (the load generator).
    pub server_cpu_s: Option<f64>,
    pub client_cpu_s: Option<f64>,
}

impl Cluster {
    /// Start a coordinator and `spec.participants` participants and wait
    /// until they all listen.
    pub async fn start(spec: &ClusterSpec) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(&spec.root)
            .with_context(|| format!("create {}", spec.root.display()))?;
        let instances = spec.coordinator_instances.max(1);
        if instances > 1 && spec.coordinator_store.is_none() {
            bail!("several coordinator instances need a shared store (--store postgres)");
        }
        let mut ports = free_ports(spec.participants + 1 + instances)?;
        let coordinators: Vec<String> = (0..instances)
            .map(|_| format!("127.0.0.1:{}", ports.pop().unwrap_or_default()))
            .collect();
        let http_port = ports.pop().unwrap_or_default();
        let http = spec.http.then(|| format!("127.0.0.1:{http_port}"));
        let mut extra: Vec<&str> = vec!["--log-level", "warn"];
        if !spec.fsync {
            extra.push("--unsafe-no-fsync");
        }
        let mut participant_extra = extra.clone();
        if !spec.read_only_votes {
            participant_extra.push("--no-read-only-vote");
        }
        if !spec.one_phase {
            extra.push("--no-one-phase");
        }
        let mut participants = Vec::new();
        let mut procs = Vec::new();
        for (i, port) in ports.into_iter().enumerate() {
            let name = format!("p{i}");
            let addr = format!("127.0.0.1:{port}");
            let dir = spec.root.join(&name);
            let args = match &spec.postgres {
                Some(pg) => {
                    let dsn = pg.dsns.get(i).context("a database for every participant")?;
                    let connections = pg.connections.to_string();
                    let mut extra = participant_extra.clone();
                    extra.extend(["--dsn", dsn.as_str(), "--connections", &connections]);
                    pg_participant_args(&name, &addr, &dir, &extra)
                }
                None => participant_args(
                    &name,
                    &addr,
                    &dir,
                    spec.accounts,
                    spec.balance,
                    &participant_extra,
                ),
            };
            procs.push(Proc::start(
                &spec.exe,
                &name,
                args,
                spec.root.join(format!("{name}.log")),
            )?);
            participants.push((name, addr));
        }
        if let Some(dsn) = &spec.coordinator_store {
            extra.extend(["--store", dsn.as_str()]);
        }
        let base = extra.clone();
        if let Some(http) = &http {
            extra.extend(["--http-listen", http.as_str()]);
        }
        for (k, addr) in coordinators.iter().enumerate() {
            // The first keeps the default name and the HTTP API; every
            // other instance gets a name of its own and no HTTP API.
            let name = match k {
                0 => "coordinator".to_string(),
                k => format!("coordinator-{k}"),
            };
            let mut extra = if k == 0 { extra.clone() } else { base.clone() };
            if k > 0 {
                extra.extend(["--name", name.as_str()]);
            }
            let args = coordinator_args(addr, &spec.root.join(&name), &participants, &extra);
            procs.insert(
                k,
                Proc::start(
                    &spec.exe,
                    &name,
                    args,
                    spec.root.join(format!("{name}.log")),
                )?,
            );
        }
        for (name, addr) in &participants {
            wait_listening(addr, name).await?;
        }
        for addr in &coordinators {
            wait_listening(addr, "coordinator").await?;
        }
        if let Some(http) = &http {
            wait_listening(http, "the coordinator's HTTP API").await?;
        }
        let mut cluster = Cluster::attach(coordinators, participants, procs).await?;
        cluster.http = http;
        cluster.pg_dsns = spec.postgres.as_ref().map(|pg| pg.dsns.clone());
        Ok(cluster)
    }

    /// Start the bare relay (`concord relay`) in the shape of
    /// [`Cluster::start`]: a relay coordinator and `spec.participants`
    /// relay participants, nothing on disk but their stderr logs.
    pub async fn start_relay(spec: &ClusterSpec) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(&spec.root)
            .with_context(|| format!("create {}", spec.root.display()))?;
        let mut ports = free_ports(spec.participants + 1)?;
        let coordinator = format!("127.0.0.1:{}", ports.pop().unwrap_or_default());
        let relay_args = |name: &str, addr: &str| -> Vec<String> {
            [
                "--log-level",
                "warn",
                "relay",
                "--name",
                name,
                "--listen",
                addr,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        let mut participants = Vec::new();
        let mut procs = Vec::new();
        for (i, port) in ports.into_iter().enumerate() {
            let name = format!("p{i}");
            let addr = format!("127.0.0.1:{port}");
            let log = spec.root.join(format!("relay-{name}.log"));
            procs.push(Proc::start(
                &spec.exe,
                &name,
                relay_args(&name, &addr),
                log,
            )?);
            participants.push((name, addr));
        }
        let mut args = relay_args("coordinator", &coordinator);
        for (name, addr) in &participants {
            args.push("--participant".into());
            args.push(format!("{name}={addr}"));
        }
        let log = spec.root.join("relay-coordinator.log");
        procs.insert(0, Proc::start(&spec.exe, "coordinator", args, log)?);
        for (name, addr) in &participants {
            wait_listening(addr, name).await?;
        }
        wait_listening(&coordinator, "relay coordinator").await?;
        Cluster::attach(vec![coordinator], participants, procs).await
    }

    /// Use servers that are already running.
    pub async fn existing(
        coordinator: String,
        participants: Vec<(String, String)>,
    ) -> anyhow::Result<Cluster> {
        Cluster::attach(vec![coordinator], participants, Vec::new()).await
    }

    async fn attach(
        coordinators: Vec<String>,
        participants: Vec<(String, String)>,
        procs: Vec<Proc>,
    ) -> anyhow::Result<Cluster> {
        let mut stat_clients = Vec::new();
        for addr in coordinators
            .iter()
            .chain(participants.iter().map(|(_, a)| a))
        {
            let client = Client::connect(addr)
                .await
                .with_context(|| format!("connect to {addr} for its counters"))?;
            stat_clients.push(client);
        }
        Ok(Cluster {
            coordinators,
            http: None,
            pg_dsns: None,
            participants,
            procs,
            stat_clients,
        })
    }

    /// [`Cluster::snapshot`], or an empty one when `skip` (a run the
    /// servers take no part in).
    pub async fn snapshot_unless(&self, skip: bool) -> anyhow::Result<Snapshot> {
        if skip {
            return Ok(Snapshot::default());
        }
        self.snapshot().await
    }

    /// Every server's counters and the CPU time used so far.
    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let mut servers = Vec::new();
        for client in &self.stat_clients {
            let stats = client
                .stats()
                .await
                .with_context(|| format!("counters of {}", client.addr()))?;
            servers.push(stats);
        }
        let server_cpu_s = if self.procs.is_empty() {
            None
        } else {
            let mut total = 0.0;
            for proc in &self.procs {
                total += cpu_seconds(&format!("/proc/{}/stat", proc.pid()))
                    .with_context(|| format!("CPU time of {}", proc.name))?;
            }
            Some(total)
        };
        Ok(Snapshot {
            servers,
            server_cpu_s,
            client_cpu_s: cpu_seconds("/proc/self/stat").ok(),
        })
    }

    /// Stop the processes we started (SIGTERM, then SIGKILL).
    pub async fn stop(mut self) {
        for proc in self.procs.iter_mut() {
            proc.stop().await;
        }
    }
}

/// User + system CPU seconds of a process from its `/proc/PID/stat`.
fn cpu_seconds(path: &str) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields after the last ')'. utime and stime are fields 14, 15.
    let after = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("{path}: no ')' in {text:?}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<f64> {
        let field = fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("{path}: too few fields"))?;
        field
            .parse::<u64>()
            .map(|t| t as f64)
            .with_context(|| format!("{path}: field {field:?}"))
    };
    // Fields after ')' start at field 3, so utime (14) is index 11.
    let ticks = tick(11)? + tick(12)?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if per_second <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(ticks / per_second as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_of_self_is_readable_and_grows() {
        let before = cpu_seconds("/proc/self/stat").expect("own stat");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = cpu_seconds("/proc/self/stat").expect("own stat");
        assert!(after >= before, "{after} < {before}");
    }
}
