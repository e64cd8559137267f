//! Harness for the real-process tests: spawns the `concord` binary as a
//! coordinator and participants on free 127.0.0.1 ports with temporary data
//! directories, restarts them from their data dirs, and kills every child
//! on drop (printing its log if the test failed).

#![allow(dead_code)]

pub mod http;

use concord_client::{self as client, Client};
use concord_proto::Xid;
use concord_server::wire::{AccountsReport, CoordinatorState};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_concord");

/// Every test body runs under this bound.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Free ports on 127.0.0.1, each one different from every other this test
/// binary was given.
///
/// The ports lie below the kernel's ephemeral range (32768–60999 by
/// default). A port from `bind(0)` is an ephemeral one, and any outgoing
/// connection on the machine may be given it as its local port between
/// the pick and the child's own bind: CI saw "--http-listen …: Address
/// already in use" that way. Below the range only listeners compete. A
/// counter shared by the whole test binary keeps its picks apart; the
/// start is drawn from the process id so that test binaries run one after
/// another do not reuse the ports of one that just ended (TIME_WAIT).
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(k < SPAN, "no free port left in {LOW}..{}", LOW + SPAN);
        let port = u16::try_from(LOW + (start + k) % SPAN).expect("below 32,000");
        // Taken by something else right now: skip it.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    ports
}

/// One child process; killed (SIGKILL) on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, args: &[String], env: &[(&str, &str)], log: &Path) -> Proc {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open child log");
        let _ = writeln!(
            file,
            "===== start {name}: concord {} (env {env:?})",
            args.join(" ")
        );
        let stderr = file.try_clone().expect("clone log handle");
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env_remove("CONCORD_FAILPOINT")
            .env_remove("CONCORD_FAILPOINT_SKIP")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn concord");
        Proc {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// kill -9 and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Wait for the process to exit by itself (a fail-point), bounded.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("process is running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The child's process id (None once it exited and was reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Send SIGTERM (graceful shutdown); does not wait.
    pub fn terminate(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!("----- log of {} ({}) -----", self.name, self.log.display());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

/// Assert the process died of SIGKILL (a fired fail-point).
pub fn assert_killed(status: ExitStatus, what: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc_sigkill()),
        "{what}: expected death by SIGKILL, got {status:?}"
    );
}

fn libc_sigkill() -> i32 {
    9
}

pub struct Node {
    pub name: String,
    /// Where the node is reached (what the coordinator's --participant
    /// NAME=ADDR names for a participant; its --advertise behind a proxy).
    pub addr: String,
    /// For a participant behind a proxy: the address it really listens on
    /// (`addr` is then the proxy's, passed as `--advertise`).
    pub bind: Option<String>,
    /// Extra flags for this process.
    pub extra_flags: Vec<String>,
    /// A PostgreSQL participant (`concord pg-participant --dsn`) for this
    /// database, instead of a key-value one.
    pub pg_dsn: Option<String>,
    pub data_dir: PathBuf,
    pub proc: Option<Proc>,
}

/// A coordinator and participants `p0`, `p1`, … each seeded with
/// `accounts` accounts of `balance`.
pub struct Cluster {
    pub coordinator: Node,
    pub participants: Vec<Node>,
    pub accounts: usize,
    pub balance: i64,
    /// Extra flags for the coordinator.
    pub coordinator_flags: Vec<String>,
    /// Last: fields drop in order, and the processes print their logs
    /// when a test panics, so the files must still be there.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Start everything and wait until every process listens.
    pub async fn start(participants: usize, accounts: usize, balance: i64) -> Cluster {
        let mut cluster = Cluster::new(participants, accounts, balance);
        for i in 0..participants {
            cluster.start_participant(i, &[]);
        }
        cluster.start_coordinator(&[]);
        cluster.wait_all_listening().await;
        cluster
    }

    /// Lay out names, ports and data dirs without starting anything.
    pub fn new(participants: usize, accounts: usize, balance: i64) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(participants + 1);
        let node = |name: &str, port: u16| Node {
            name: name.to_string(),
            addr: format!("127.0.0.1:{port}"),
            bind: None,
            extra_flags: Vec::new(),
            pg_dsn: None,
            data_dir: dir.path().join(name),
            proc: None,
        };
        let coordinator = node("coordinator", ports[0]);
        let participants = (0..participants)
            .map(|i| node(&format!("p{i}"), ports[i + 1]))
            .collect();
        Cluster {
            dir,
            coordinator,
            participants,
            accounts,
            balance,
            coordinator_flags: Vec::new(),
        }
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// `concord --log-level debug serve FLAGS`, with quick re-sends and
    /// reconnects (tests kill peers and want them found again soon) and a
    /// `--participant` for each of this cluster's participants.
    pub fn serve_args(&self, flags: &[&str]) -> Vec<String> {
        let quick = [
            "--resend-ms-initial",
            "50",
            "--resend-ms-max",
            "200",
            "--reconnect-ms-initial",
            "10",
            "--reconnect-ms-max",
            "100",
        ];
        let mut args: Vec<String> = ["--log-level", "debug", "serve"]
            .iter()
            .chain(flags)
            .chain(&quick)
            .map(|s| s.to_string())
            .collect();
        for p in &self.participants {
            args.push("--participant".into());
            args.push(format!("{}={}", p.name, p.addr));
        }
        args
    }

    /// (Re)start the coordinator from its data dir.
    pub fn start_coordinator(&mut self, env: &[(&str, &str)]) {
        let data_dir = self.coordinator.data_dir.display().to_string();
        let mut args = self.serve_args(&[
            "--listen",
            &self.coordinator.addr,
            "--data-dir",
            &data_dir,
            "--prepare-timeout-ms",
            "3000",
        ]);
        args.extend(self.coordinator_flags.iter().cloned());
        let log = self.log_path("coordinator");
        if let Some(mut old) = self.coordinator.proc.take() {
            old.kill();
        }
        self.coordinator.proc = Some(Proc::spawn("coordinator", &args, env, &log));
    }

    /// (Re)start participant `i` from its data dir (seeding is ignored on
    /// restart).
    pub fn start_participant(&mut self, i: usize, env: &[(&str, &str)]) {
        let p = &self.participants[i];
        let mut args: Vec<String> = vec!["--log-level".into(), "debug".into()];
        match &p.pg_dsn {
            Some(dsn) => args.extend([
                "pg-participant".into(),
                "--dsn".into(),
                dsn.clone(),
                "--reconcile-interval".into(),
                "1s".into(),
            ]),
            None => args.extend([
                "participant".into(),
                "--seed-accounts".into(),
                self.accounts.to_string(),
                "--balance".into(),
                self.balance.to_string(),
            ]),
        }
        args.extend([
            "--name".into(),
            p.name.clone(),
            "--listen".into(),
            p.bind.clone().unwrap_or_else(|| p.addr.clone()),
            "--data-dir".into(),
            p.data_dir.display().to_string(),
            "--inquire-ms-initial".into(),
            "50".into(),
            "--inquire-ms-max".into(),
            "200".into(),
            "--reconnect-ms-initial".into(),
            "10".into(),
            "--reconnect-ms-max".into(),
            "100".into(),
        ]);
        if p.bind.is_some() {
            args.push("--advertise".into());
            args.push(p.addr.clone());
        }
        args.extend(p.extra_flags.iter().cloned());
        let name = p.name.clone();
        let log = self.log_path(&name);
        let p = &mut self.participants[i];
        if let Some(mut old) = p.proc.take() {
            old.kill();
        }
        p.proc = Some(Proc::spawn(&name, &args, env, &log));
    }

    pub fn coordinator_proc(&mut self) -> &mut Proc {
        self.coordinator.proc.as_mut().expect("coordinator started")
    }

    pub fn participant_proc(&mut self, i: usize) -> &mut Proc {
        self.participants[i]
            .proc
            .as_mut()
            .expect("participant started")
    }

    /// The log of participant `i`, whether or not it is still running.
    pub fn participant_proc_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(&self.participants[i].name)).unwrap_or_default()
    }

    pub async fn wait_all_listening(&self) {
        wait_listening(&self.coordinator.addr).await;
        for p in &self.participants {
            wait_listening(p.bind.as_deref().unwrap_or(&p.addr)).await;
        }
    }

    /// The address participant `i` really listens on (not its proxy's).
    pub fn participant_listen_addr(&self, i: usize) -> String {
        let p = &self.participants[i];
        p.bind.clone().unwrap_or_else(|| p.addr.clone())
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.coordinator.addr)
            .await
            .expect("connect to the coordinator")
    }

    pub async fn accounts(&self, i: usize) -> AccountsReport {
        client::accounts(&self.participant_listen_addr(i))
            .await
            .expect("accounts from participant")
    }

    /// Wait until no participant has a branch in doubt or a lock held, and
    /// return their reports.
    pub async fn wait_settled(&self, timeout: Duration) -> Vec<AccountsReport> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut reports = Vec::new();
            for i in 0..self.participants.len() {
                if let Ok(report) = client::accounts(&self.participant_listen_addr(i)).await {
                    reports.push(report);
                }
            }
            let settled = reports.len() == self.participants.len()
                && reports
                    .iter()
                    .all(|r| r.in_doubt.is_empty() && r.locks.is_empty());
            if settled {
                return reports;
            }
            assert!(
                Instant::now() < deadline,
                "participants did not settle within {timeout:?}: {reports:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Money in the whole system when nothing has moved.
    pub fn total_seeded(&self) -> i64 {
        self.participants.len() as i64 * self.accounts as i64 * self.balance
    }
}

/// Poll the coordinator's status of `xid` until it is `want` (after a
/// restart the coordinator needs a moment to resend and collect ACKs).
pub async fn wait_coordinator_state(cluster: &Cluster, xid: Xid, want: &[CoordinatorState]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(client) = client::Client::connect(&cluster.coordinator.addr).await {
            if let Ok(status) = client.status(xid).await {
                if want.contains(&status.state) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "coordinator state of {xid} is {:?}, want one of {want:?}: {}",
                    status.state,
                    status.detail
                );
            }
        }
        assert!(Instant::now() < deadline, "coordinator unreachable");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Start `cluster`'s two participants and a coordinator armed to die at
/// its decision, run a transfer of `amount` from p0's `acct-0` to p1's
/// with a phase-1 deadline of `prepare_timeout_ms`, and wait for the
/// coordinator to die: both branches are READY and in doubt, and every
/// peer too, so cooperative termination cannot decide them either.
/// Returns the xid.
pub async fn in_doubt_with_coordinator_dead(
    cluster: &mut Cluster,
    amount: i64,
    prepare_timeout_ms: u64,
) -> Xid {
    cluster.start_participant(0, &[]);
    cluster.start_participant(1, &[]);
    cluster.start_coordinator(&[("CONCORD_FAILPOINT", "coordinator.after_begin")]);
    cluster.wait_all_listening().await;
    let work = |delta| {
        concord_participant::kv::encode_work(&[concord_participant::kv::KvOp {
            account: "acct-0".into(),
            delta,
        }])
    };
    let branches = ["p0", "p1"]
        .into_iter()
        .zip([-amount, amount])
        .map(|(participant, delta)| concord_api::BranchRequest {
            participant: participant.into(),
            work: work(delta),
        })
        .collect();
    let client = cluster.client().await;
    let xid = match client
        .transact_with_timeout(branches, Some(prepare_timeout_ms))
        .await
    {
        Err(client::ClientError::OutcomeUnknown { xid, .. }) => xid,
        other => panic!("the coordinator should die deciding: {other:?}"),
    };
    let gone = cluster
        .coordinator_proc()
        .wait_exit(Duration::from_secs(10));
    assert_killed(gone, "coordinator at its decision");
    xid
}

/// Run one test body within [`TEST_TIMEOUT`].
pub async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test exceeded its time bound");
}

/// No money created or destroyed: the participants' totals add up to what
/// was seeded.
/// Every participant's state of `xid` (no side effects: BranchState,
/// not INQUIRE).
pub async fn states(cluster: &Cluster, xid: concord_proto::Xid) -> Vec<concord_proto::TxnState> {
    let mut out = Vec::new();
    for p in &cluster.participants {
        out.push(
            concord_client::branch_state(&p.addr, xid)
                .await
                .expect("branch state"),
        );
    }
    out
}

/// Poll until every participant's state of `xid` is `want`, then assert
/// it: a restarted sub-coordinator was seen to report its branch READY
/// (still applying, in the core's words) for a moment after its balances
/// already showed the commit and its locks were free.
pub async fn wait_state_everywhere(
    cluster: &Cluster,
    xid: concord_proto::Xid,
    want: concord_proto::TxnState,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = states(cluster, xid).await;
        if now.iter().all(|s| *s == want) || Instant::now() > deadline {
            return assert_state_everywhere(&now, want);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn assert_state_everywhere(states: &[concord_proto::TxnState], want: concord_proto::TxnState) {
    for (p, state) in states.iter().enumerate() {
        assert_eq!(*state, want, "p{p}");
    }
}

pub fn assert_conserved(cluster: &Cluster, reports: &[AccountsReport]) {
    assert_eq!(
        reports.iter().map(|r| r.total()).sum::<i64>(),
        cluster.total_seeded(),
        "money created or destroyed: {reports:?}"
    );
}

/// Wait until something accepts connections at `addr` (10 s at most).
pub async fn wait_listening(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens at {addr} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Run the CLI with `args`, bounded by 30 s.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("CONCORD_FAILPOINT")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn concord cli");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("cli output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("concord {args:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// stdout and stderr of a CLI run, for assertion messages.
pub fn output_text(output: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `concord status XID` against the cluster's coordinator: exit code,
/// stdout and stderr.
pub async fn status_output(cluster: &Cluster, xid: impl ToString) -> (Option<i32>, String, String) {
    let (coordinator, xid) = (cluster.coordinator.addr.clone(), xid.to_string());
    let output = tokio::task::spawn_blocking(move || {
        run_cli(&["status", "--coordinator", &coordinator, &xid])
    })
    .await
    .expect("cli task");
    let (stdout, stderr) = output_text(&output);
    (output.status.code(), stdout, stderr)
}

/// Its stdout, when every participant answered (exit 0).
pub async fn status_text(cluster: &Cluster, xid: impl ToString) -> String {
    let (code, stdout, stderr) = status_output(cluster, xid).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    stdout
}

/// `concord transfer` of `amount` from one `P:ACCT` to another through
/// `coordinator`, with `extra` flags (blocking; bounded by `run_cli`).
pub fn transfer_cli(
    coordinator: &str,
    from: &str,
    to: &str,
    amount: i64,
    extra: &[&str],
) -> std::process::Output {
    let amount = amount.to_string();
    let mut args = vec![
        "transfer",
        "--coordinator",
        coordinator,
        "--from",
        from,
        "--to",
        to,
        "--amount",
        &amount,
    ];
    args.extend_from_slice(extra);
    run_cli(&args)
}
