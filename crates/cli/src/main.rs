//! The `concord` command line: servers (`serve`, `participant`), client
//! commands (`transfer`, `txn`, `status`, `accounts`), `proxy`, the
//! fault-injecting TCP proxy for tests on one machine, and the tools
//! `bench` and `demo` (modules of this binary, never exported by a
//! library, so an SDK user pulls in none of their dependencies).
//!
//! Exit codes of the client commands: 0 success (committed), 1 aborted,
//! 2 error (including an unknown outcome).

mod bench;
mod demo;
mod operate;
mod pgbank;
mod procs;

use clap::{Args, Parser, Subcommand};
use concord_api::{AccountsReport, Outcome};
use concord_client::{self as client, Client, ClientError, TimelineEvent};
use concord_proto::{TxnState, Xid};
use concord_server::{CoordinatorServerConfig, ParticipantServerConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// mimalloc instead of the system allocator: every message allocates its
/// frame, body and decoded form, and glibc's malloc/free was about a tenth
/// of the servers' CPU time in `concord bench` profiles (perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "concord",
    version,
    about = "concord: a distributed two-phase-commit transaction coordinator",
    long_about = "concord makes a change that spans several services atomic: every participant \
commits its part, or none does.\n\nRun a coordinator with `concord serve`, participants with \
`concord participant`, and transactions with `concord transfer` or `concord txn`."
)]
struct Cli {
    /// Log verbosity (error, warn, info, debug, trace, or a tracing filter
    /// such as "concord=debug"). RUST_LOG, when set, takes precedence.
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL")]
    log_level: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a coordinator: decides commit or abort for global transactions.
    Serve(ServeArgs),
    /// Run a participant with the built-in durable key-value resource
    /// (named accounts with balances).
    Participant(ParticipantArgs),
    /// Run a participant for one PostgreSQL database: branches are
    /// PostgreSQL's own prepared transactions, prepared by the application
    /// (gids from concord) or from the SQL a branch ships, and
    /// pg_prepared_xacts is reconciled with the log so that no prepared
    /// transaction of concord's is left dangling.
    PgParticipant(PgParticipantArgs),
    /// Move an amount between two accounts as one global transaction.
    #[command(after_help = TXN_EXIT_HELP)]
    Transfer(TransferArgs),
    /// Run a global transaction of any number of key-value operations.
    #[command(after_help = TXN_EXIT_HELP)]
    Txn(TxnArgs),
    /// Show a transaction's state at the coordinator and at each participant.
    Status(StatusArgs),
    /// Show what happened to one transaction at the coordinator: every
    /// message sent (with its attempt) and received, each vote, timeout
    /// (with the estimate behind it), log record and when it became
    /// durable, and the decision. Kept for the coordinator's 10,000 most
    /// recent transactions.
    Timeline(TimelineArgs),
    /// Show a participant's committed balances, in-doubt transactions and
    /// locks.
    Accounts(AccountsArgs),
    /// The main job, no set-up: a coordinator and 3 participants as
    /// processes on 127.0.0.1, thousands of random transfers, kill -9 and
    /// restart of a participant and then the coordinator mid-run, and
    /// atomicity / conservation checks from the durable logs. Exits non-zero
    /// if a check fails.
    Demo(DemoArgs),
    /// A fault-injecting TCP proxy between two concord processes (tests and
    /// benchmarks on one machine, where netem is not available).
    Proxy(ProxyArgs),
    /// Throughput and latency of real processes over loopback TCP with real
    /// fsyncs: a closed-loop workload per concurrency level, then the
    /// baselines (bare relay, raw fsync ceiling, durability off) in the
    /// same run.
    Bench(BenchArgs),
    /// Operator actions on a stuck transaction (retry now, a heuristic
    /// decision of one branch), each confirmed by typing the xid, needing
    /// the coordinator's operator token and recorded in its audit trail;
    /// and that trail.
    Operator(operate::OperatorArgs),
    /// Print the OpenAPI 3.1 document of the coordinator's HTTP API (what
    /// `serve --http-listen` serves at /openapi.json; docs/openapi.json).
    Openapi,
    /// Benchmark baseline process (started by `concord bench`): the
    /// message pattern of centralized 2PC over the same transport, with no
    /// protocol, no log and no fsync. Never a real coordinator or
    /// participant.
    #[command(hide = true)]
    Relay(RelayArgs),
}

#[derive(Args, Debug)]
struct RelayArgs {
    /// The relay's node name.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Relay participant as NAME=ADDR (repeatable): makes this the relay
    /// coordinator; without any it is a relay participant.
    #[arg(long, value_name = "NAME=ADDR", value_parser = parse_participant)]
    participant: Vec<(String, String)>,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Args, Debug)]
#[command(after_help = BENCH_HELP)]
struct BenchArgs {
    /// Participant processes to start.
    #[arg(long, default_value_t = 3, value_name = "N")]
    participants: usize,
    /// Branches per transaction, each on a distinct participant (1..=16;
    /// default: every participant).
    #[arg(long, value_name = "N")]
    branches: Option<usize>,
    /// Concurrency levels (transactions in flight), one run each, e.g.
    /// 1,16,64,256 (default: 1,8,32,128,256; with --resource postgres
    /// 1,4,8,16,32).
    #[arg(long, value_name = "LIST", value_parser = bench::parse_levels)]
    concurrency: Option<std::vec::Vec<usize>>,
    /// What the participants run: `kv` (the key-value store) or
    /// `postgres`: throwaway PostgreSQL clusters, one per participant,
    /// with concord measured against bare PostgreSQL 2PC on the same
    /// databases in the same run (instead of the other baselines). Needs
    /// the PostgreSQL server binaries (apt-get install -y postgresql).
    #[arg(long, default_value = "kv", value_parser = ["kv", "postgres"])]
    resource: String,
    /// Client connections the tasks of one run share (default: one per 8
    /// tasks, at most 16).
    #[arg(long, value_name = "N")]
    connections: Option<usize>,
    /// Warm-up before each measuring window.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    warmup_secs: f64,
    /// Length of each measuring window.
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    window_secs: f64,
    /// Opaque bytes in every branch's work (so in every PREPARE and READY
    /// record).
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    payload_bytes: usize,
    /// Share of transactions (0..1) that use one of --hot-accounts shared
    /// accounts instead of the task's own (contention: lock conflicts).
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    hot_share: f64,
    /// Number of hot accounts.
    #[arg(long, default_value_t = 8, value_name = "N")]
    hot_accounts: usize,
    /// Communication shape: centralized, linear (each transaction a
    /// chain over its branches, the last one deciding) or hierarchical
    /// (a tree of sub-coordinators: --tree, or a balanced binary tree over
    /// each transaction's branches).
    #[arg(long, default_value = "centralized", value_parser = parse_shape)]
    shape: concord_proto::Shape,
    /// The tree of every hierarchical transaction over the participants
    /// p0..p{N-1} (or the --participant names), e.g. 'p0(p1(p3),p2)'.
    /// Implies --shape hierarchical and one branch per node of the tree.
    #[arg(long, value_name = "TREE", value_parser = parse_tree)]
    tree: Option<client::Tree>,
    /// Keep the servers' logs here instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Use a running coordinator instead of starting servers (with
    /// --participant for each of its participants, and --no-baselines).
    #[arg(long, value_name = "ADDR", requires = "participant")]
    coordinator: Option<String>,
    /// A running participant as NAME=ADDR (its name at the coordinator).
    #[arg(long, value_name = "NAME=ADDR", value_parser = parse_participant, requires = "coordinator")]
    participant: Vec<(String, String)>,
    /// Skip the baselines (bare relay, fsync ceiling, durability off).
    #[arg(long)]
    no_baselines: bool,
    /// Also measure each optimization off and on, at concurrency 1 and at
    /// the best level: one-phase commit (single-branch transactions) and
    /// the READ-ONLY vote (transactions with one branch that only reads).
    /// Each starts its own servers.
    #[arg(long)]
    optimizations: bool,
    /// `http`: after the binary protocol's runs, run the same levels
    /// through the coordinator's HTTP API (POST /v1/transactions) on the
    /// same servers, and report both with their ratio.
    #[arg(long, default_value = "binary", value_parser = ["binary", "http"])]
    api: String,
    /// `postgres`: after the runs with the coordinator's log in a file,
    /// the same levels with it in a throwaway PostgreSQL cluster (fsync
    /// on; `serve --store`), on new servers, and their ratio. Needs the
    /// PostgreSQL server binaries (apt-get install -y postgresql).
    #[arg(long, default_value = "file", value_parser = ["file", "postgres"])]
    store: String,
    /// Print the report as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    json: bool,
    /// Write an SVG of throughput and p99 latency against concurrency.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const BENCH_HELP: &str = "\
Every forced write is fsynced unless the report says NOT durable (only the
durability-off baseline is). Accounts: each task uses its own account per
participant unless --hot-share sends it to the shared hot ones, so without
contention there are no lock conflicts. The report gives transactions/s,
latency p50/p99/p999 (client-side, Begin to outcome), aborts by reason,
fsyncs, messages, socket writes and CPU time per transaction. The bare-relay
baseline runs the same message pattern over the same transport with no
protocol and no log (NOT durable): concord's ratio to it is the figure that
carries across machines (JSON: relay_baseline).";

#[derive(Args, Debug)]
#[command(after_help = PROXY_COMMANDS_HELP)]
struct ProxyArgs {
    /// Address to accept connections on.
    #[arg(long, value_name = "ADDR")]
    listen: std::net::SocketAddr,
    /// Address every accepted connection is forwarded to.
    #[arg(long, value_name = "ADDR")]
    upstream: std::net::SocketAddr,
    /// Added one-way delay per chunk, each direction.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    latency_ms: u64,
    /// Extra uniformly random delay 0..=N per chunk (order is kept).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    jitter_ms: u64,
    /// Bandwidth per direction and connection (unlimited when not given).
    #[arg(long, value_name = "N")]
    bandwidth_bytes_per_sec: Option<u64>,
    /// Forward nothing; new connections are accepted and never connected
    /// upstream.
    #[arg(long)]
    black_hole: bool,
    /// Stop forwarding one direction: c2s (client to server) or s2c.
    #[arg(long, value_name = "DIR", value_parser = parse_direction)]
    half_open: Option<concord_net::proxy::Direction>,
    /// Close connections that moved no byte for this long (FIN both
    /// sides), like a load balancer's idle timeout.
    #[arg(long, value_name = "MS")]
    close_after_idle_ms: Option<u64>,
}

const PROXY_COMMANDS_HELP: &str = "\
Run-time control: one command per line on standard input (faults apply to
open connections at once):
  latency MS | jitter MS | bandwidth N|off | black-hole on|off
  half-open c2s|s2c|off | close-after-idle MS|off
  reset        close every open connection with RST
  clear        back to faithful forwarding
  show         print the faults in force and the counters
The proxy runs until SIGINT or SIGTERM (end of standard input does not stop it).";

#[derive(Args, Debug)]
struct DemoArgs {
    /// Number of transfers to run in all.
    #[arg(long, default_value_t = 6000)]
    transfers: usize,
    /// Number of concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Accounts per participant (fewer accounts = more lock conflicts).
    #[arg(long, default_value_t = 200)]
    accounts: usize,
    /// Starting balance of every account.
    #[arg(long, default_value_t = 1000)]
    balance: i64,
    /// Keep the processes' data and logs in DIR instead of a temporary
    /// directory that is removed afterwards.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Seed of the random workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// PostgreSQL participants: one throwaway cluster each (initdb in a
    /// temp dir, 127.0.0.1, fsync on), transfers as shipped SQL, and two
    /// more checks by SQL (money conserved, nothing left in
    /// pg_prepared_xacts). Needs the PostgreSQL server binaries (Debian:
    /// apt-get install -y postgresql).
    #[arg(long)]
    postgres: bool,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// This coordinator's name: its id in the protocol (participants'
    /// READY records name it). Keep it across restarts; the address may
    /// change.
    #[arg(long, value_name = "NAME", default_value = concord_server::coordinator::COORDINATOR_NAME_DEFAULT)]
    name: String,
    /// Address to listen on (host:port). Participants reach the coordinator
    /// there unless --advertise says otherwise; it may change across
    /// restarts (participants are told the new one when it starts).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// The address participants reach this coordinator at when it differs
    /// from --listen (behind a proxy or NAT).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
    /// Directory of the coordinator's durable log (created if missing). A
    /// restart with the same directory recovers every transaction.
    #[arg(long, value_name = "DIR", required_unless_present = "store")]
    data_dir: Option<PathBuf>,
    /// Keep the log in a PostgreSQL database instead of --data-dir:
    /// postgres://USER@HOST:PORT/DB. Any number of instances (each with
    /// its own --name) may share one database: each holds its own log
    /// under a lease (--lease) and takes over the log of an instance whose
    /// lease ran out, with a higher epoch; every write is fenced by epoch
    /// and lease, so an instance that lost its log can never write to it
    /// again. Every append is durable when PostgreSQL answers
    /// (synchronous_commit on).
    #[arg(long, value_name = "URL", value_parser = parse_store)]
    store: Option<String>,
    /// With --store: how long a lease on a log lasts, by the database's
    /// clock. Renewed every quarter of it; another instance takes the log
    /// over once it ran out, so it bounds how long transactions of a dead
    /// instance wait. E.g. 2s, 5s.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration_ms)]
    lease: u64,
    /// A participant as NAME=ADDR (repeat for each). NAME is the
    /// participant's --name, ADDR where to find it (its --listen or
    /// --advertise); if it moves, it says so and is found at the new
    /// address. Clients name participants by NAME.
    #[arg(long = "participant", value_name = "NAME=ADDR", value_parser = parse_participant,
        required_unless_present = "http_participants")]
    participants: Vec<(String, String)>,
    /// An HTTP participant as NAME=URL (repeat for each): a service that
    /// answers POST URL/prepare, URL/commit and URL/abort as the README's
    /// "Writing an HTTP participant" and docs/openapi.json's callbacks
    /// say. It takes part in centralized transactions, in both phases.
    #[arg(long = "http-participant", value_name = "NAME=URL", value_parser = parse_http_participant)]
    http_participants: Vec<(String, String)>,
    /// A branch that has not acknowledged COMMIT this long after it was
    /// first sent is flagged "needs attention" (API, metrics, logs), with
    /// the attempts and the last error. COMMIT is still re-sent; nothing
    /// is given up or deleted. E.g. 300ms, 30s, 5m, 1h.
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = parse_duration_ms)]
    attention_after: u64,
    /// A file whose first line is the operator token. With it, operator
    /// actions (retry now, a heuristic decision of one branch: `concord
    /// operator`, the console, the HTTP API) are allowed to whoever gives
    /// the token and types the xid; each is recorded in the log's audit
    /// trail. Without it the coordinator is read-only.
    #[arg(long, value_name = "PATH")]
    operator_token_file: Option<PathBuf>,
    /// Keep the timelines (`concord timeline`) of at most this many
    /// transactions, 128 entries each; the oldest finished are dropped
    /// first. 0 turns timelines off.
    #[arg(long, default_value_t = concord_node::timeline::TIMELINES_MAX_DEFAULT, value_name = "N")]
    timelines_max: usize,
    /// Phase-1 timeout (a participant that has not voted within it makes
    /// the decision ABORT) until --timeout-samples-min PREPARE → vote
    /// samples of a participant exist; then it is measured: 2 × (srtt +
    /// 4·rttvar), doubled after it fires, the largest over the
    /// transaction's participants (README, Timeouts). Clients may ask for
    /// their own, up to --prepare-timeout-ms-max.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    prepare_timeout_ms: u64,
    /// Smallest measured phase-1 timeout (absorbs scheduler and fsync
    /// hiccups that the estimate has not seen).
    #[arg(long, default_value_t = 100, value_name = "MS")]
    prepare_timeout_ms_min: u64,
    /// Largest phase-1 timeout, measured or asked for by a client.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    prepare_timeout_ms_max: u64,
    /// Samples of a (participant, phase) needed before its timeout comes
    /// from the measurements instead of the default.
    #[arg(long, default_value_t = 8, value_name = "N")]
    timeout_samples_min: u64,
    /// Smallest measured first COMMIT resend delay.
    #[arg(long, default_value_t = 10, value_name = "MS")]
    resend_ms_min: u64,
    /// First delay before re-sending COMMIT to a participant that has not
    /// ACKed, until enough COMMIT → ACK samples exist (then measured:
    /// srtt + 4·rttvar, at least --resend-ms-min); doubles after each
    /// resend up to --resend-ms-max. Resending never stops (a decided
    /// transaction cannot be undone).
    #[arg(long, default_value_t = 100, value_name = "MS")]
    resend_ms_initial: u64,
    /// Largest delay between resends of COMMIT.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    resend_ms_max: u64,
    /// Begin requests are refused while this many transactions are in
    /// flight.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    transactions_in_flight_max: usize,
    /// Run single-branch transactions through both phases instead of
    /// one-phase commit (where the branch decides: no forced write here
    /// and one round trip instead of two). For comparison; `concord bench
    /// --optimizations` measures both.
    #[arg(long)]
    no_one_phase: bool,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    process: ServerProcessArgs,
}

/// The HTTP/JSON API of `concord serve`.
#[derive(Args, Debug)]
struct HttpArgs {
    /// Serve the HTTP/JSON API (/v1/transactions, /healthz, /readyz) on
    /// this address (host:port). Off unless given.
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<String>,
    /// A file whose first line is the API token: every route but /healthz
    /// and /readyz then needs `Authorization: Bearer <token>`. Without it
    /// the server warns if --http-listen is beyond loopback.
    #[arg(long, value_name = "PATH", requires = "http_listen")]
    api_token_file: Option<PathBuf>,
    /// Largest HTTP request body (bigger: 413).
    #[arg(long, default_value_t = concord_server::http::BODY_BYTES_MAX_DEFAULT, value_name = "BYTES")]
    http_body_bytes_max: usize,
    /// A client must send its request headers within this (a slow-headers
    /// client is disconnected).
    #[arg(long, default_value_t = concord_server::http::HEADER_READ_TIMEOUT_MS_DEFAULT, value_name = "MS")]
    http_header_timeout_ms: u64,
    /// And its request body within this.
    #[arg(long, default_value_t = concord_server::http::BODY_READ_TIMEOUT_MS_DEFAULT, value_name = "MS")]
    http_body_timeout_ms: u64,
    /// Open HTTP connections at most; further ones are closed at once.
    #[arg(long, default_value_t = concord_server::http::CONNECTIONS_MAX_DEFAULT, value_name = "N")]
    http_connections_max: usize,
}

#[derive(Args, Debug)]
struct ParticipantArgs {
    /// This participant's name: its id in the protocol, the NAME of the
    /// coordinator's --participant NAME=ADDR. Keep it across restarts; the
    /// address may change.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Address to listen on (host:port); peers reach it there unless
    /// --advertise says otherwise.
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Directory of the participant's durable log (created if missing).
    /// Balances, READY branches and locks are rebuilt from it on restart.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// On first start, create accounts acct-0 … acct-{N-1} with --balance
    /// each. Ignored when the log already holds accounts (a restart).
    #[arg(long, value_name = "N", requires = "balance")]
    seed_accounts: Option<usize>,
    /// Starting balance of each seeded account.
    #[arg(long, value_name = "B", requires = "seed_accounts")]
    balance: Option<i64>,
    /// A READY branch that has not heard the decision asks the coordinator
    /// (INQUIRE) this long after the prepare deadline, until
    /// --timeout-samples-min vote → decision samples exist (then measured:
    /// srtt + 4·rttvar, within --inquire-ms-min..--inquire-ms-max and never
    /// above the deadline PREPARE carried); the delay doubles after each
    /// attempt up to --inquire-ms-max. It never decides alone.
    #[arg(long, default_value_t = 200, value_name = "MS")]
    inquire_ms_initial: u64,
    /// Smallest measured inquire delay.
    #[arg(long, default_value_t = 10, value_name = "MS")]
    inquire_ms_min: u64,
    /// Samples needed before the inquire delay (and a child's cap, below)
    /// is measured.
    #[arg(long, default_value_t = 8, value_name = "N")]
    timeout_samples_min: u64,
    /// As a sub-coordinator of hierarchical 2PC: each child gets at most
    /// twice its measured PREPARE → VOTE rto to vote (doubling after each
    /// time it was silent), and never less than this; never more than the
    /// time left less a margin either way.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    child_prepare_timeout_ms_min: u64,
    /// Serve Prometheus metrics (/metrics) and /healthz over HTTP on this
    /// address. Off unless given.
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<String>,
    /// Largest delay between INQUIREs.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    inquire_ms_max: u64,
    /// A COMMITTED/ABORTED record is forced before the ACK, but nobody
    /// waits on it urgently: its fsync may wait this long (microseconds)
    /// to be shared with the next READY record's, instead of making that
    /// READY wait behind a sync of its own. 0 = fsync at once. The ACK is
    /// sent only once the record is durable, either way.
    #[arg(long, default_value_t = concord_server::participant::OUTCOME_SYNC_DELAY_US_DEFAULT, value_name = "US")]
    outcome_sync_delay_us: u64,
    /// A PREPARE for a new branch while this many branches are in flight
    /// (preparing, READY, or carrying out their decision) gets VOTE ABORT
    /// "busy: … retry later": memory, locks and the log's queue stay
    /// bounded.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    branches_in_flight_max: usize,
    /// A coordinator as NAME=ADDR (repeat for each) that hears where this
    /// participant is at start. Only needed for a participant restarted at
    /// a new address before it ever heard from its coordinator (it learns
    /// coordinators from their messages, and tells those it knows when it
    /// moves); one it knows already is not greeted again.
    #[arg(long = "coordinator", value_name = "NAME=ADDR", value_parser = parse_participant)]
    coordinators: Vec<(String, String)>,
    /// Branches that change nothing (every operation a balance check, an
    /// amount of 0) vote READY and take both phases instead of voting
    /// READ-ONLY (nothing logged, no phase 2). For comparison; `concord
    /// bench --optimizations` measures both.
    #[arg(long)]
    no_read_only_vote: bool,
    /// The address peers reach this participant at when it differs from
    /// --listen (behind a proxy or NAT); sent with every message.
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    process: ServerProcessArgs,
}

#[derive(Args, Debug)]
struct PgParticipantArgs {
    /// The database: postgres://USER[:PASSWORD]@HOST:PORT/DATABASE (or
    /// "host=… user=… dbname=…"). Its max_prepared_transactions must be
    /// above 0.
    #[arg(long, value_name = "DSN", env = "CONCORD_PG_DSN")]
    dsn: String,
    /// Connections to the database; branch commands run on them in
    /// parallel.
    #[arg(long, default_value_t = concord_server::pg_participant::CONNECTIONS_DEFAULT, value_name = "N")]
    connections: usize,
    /// How often pg_prepared_xacts is compared with the log (and at
    /// start-up): own orphans past their hold are rolled back, others
    /// reported.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration_ms)]
    reconcile_interval: u64,
    /// How long a shipped statement may wait for a row lock before its
    /// branch votes ABORT.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration_ms)]
    lock_timeout: u64,
    #[command(flatten)]
    participant: ParticipantArgs,
}

/// Process settings shared by `serve` and `participant`.
#[derive(Args, Debug)]
struct ServerProcessArgs {
    /// Threads of the async runtime. 1 (the default; 0 too) runs every task on one
    /// thread: the protocol driver is a single task anyway, and one thread
    /// avoids a cross-thread wake-up per message, which on a small machine
    /// costs more than it gains (`concord bench` measured 22,000 vs 14,000
    /// transactions/s at concurrency 64 on 2 cores). The log writer always
    /// has a thread of its own.
    #[arg(long, default_value_t = 1, value_name = "N")]
    worker_threads: usize,
    /// BENCHMARK BASELINES ONLY: do not fsync the log, so forced records
    /// (votes, decisions) are NOT durable and a machine crash can lose
    /// them. It exists to measure what durability costs (`concord bench`
    /// runs it as a labelled baseline); never use it for real work.
    #[arg(long)]
    unsafe_no_fsync: bool,
    /// Compact the log (rewrite it with only the live state: in-flight and
    /// in-doubt transactions, balances, the outcomes still remembered) once
    /// this many records were appended since the last compaction, and at
    /// least twice as many as that compaction kept. 0 = never (the log then
    /// grows with every transaction).
    #[arg(long, default_value_t = concord_node::compaction::COMPACT_AFTER_RECORDS_DEFAULT, value_name = "N")]
    compact_after_records: u64,
}

/// Transport flags shared by `serve` and `participant`. They are checked
/// together at start-up (README, section Network, says how they relate).
#[derive(Args, Debug)]
#[command(next_help_heading = "Network")]
struct NetArgs {
    /// Largest frame body sent or accepted; a bigger incoming frame is a
    /// protocol error that closes that connection.
    #[arg(long, default_value_t = concord_net::frame::FRAME_BYTES_MAX_DEFAULT, value_name = "BYTES")]
    frame_bytes_max: usize,
    /// Listen backlog (pending connections the kernel queues; capped by
    /// net.core.somaxconn).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    listen_backlog: u32,
    /// Send a heartbeat on a connection that wrote nothing for this long
    /// (0 = no heartbeats and no dead-peer detection). Must be at most half
    /// of --server-idle-timeout-ms.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    heartbeat_interval_ms: u64,
    /// A connection that read nothing (heartbeats count) for this many
    /// heartbeat intervals is declared dead, closed and redialled (>= 2).
    #[arg(long, default_value_t = 5, value_name = "N")]
    dead_after_missed: u32,
    /// Close an accepted connection that read nothing for this long
    /// (0 = never). Heartbeating peers and clients never reach it.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    server_idle_timeout_ms: u64,
    /// Close an outgoing peer connection that carried no protocol message
    /// for this long, giving the descriptor back (0 = keep it). The next
    /// message reconnects. Without heartbeats it must be below the peers'
    /// --server-idle-timeout-ms.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    client_idle_timeout_ms: u64,
    /// Bound on one TCP connect attempt to a peer.
    #[arg(long, default_value_t = 3000, value_name = "MS")]
    connect_timeout_ms: u64,
    /// First delay before reconnecting to an unreachable peer; doubles per
    /// failure up to --reconnect-ms-max, with jitter.
    #[arg(long, default_value_t = 20, value_name = "MS")]
    reconnect_ms_initial: u64,
    /// Largest delay between reconnect attempts.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    reconnect_ms_max: u64,
}

impl NetArgs {
    fn net_config(&self) -> concord_net::NetConfig {
        let ms = Duration::from_millis;
        let optional = |v: u64| (v > 0).then(|| ms(v));
        concord_net::NetConfig {
            frame_bytes_max: self.frame_bytes_max,
            connect_timeout: ms(self.connect_timeout_ms),
            heartbeat_interval: optional(self.heartbeat_interval_ms),
            dead_after_missed: self.dead_after_missed,
            server_idle_timeout: optional(self.server_idle_timeout_ms),
            client_idle_timeout: optional(self.client_idle_timeout_ms),
            reconnect_backoff_min: ms(self.reconnect_ms_initial),
            reconnect_backoff_max: ms(self.reconnect_ms_max),
            ..concord_net::NetConfig::default()
        }
    }
}

#[derive(Args, Debug)]
struct ClientArgs {
    /// The coordinator's address (its --listen).
    #[arg(long, value_name = "ADDR")]
    coordinator: String,
    /// Give up waiting for the outcome after this long (the transaction
    /// may still finish; the exit code is then 3, and the xid was printed).
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    timeout_ms: u64,
    /// Phase-1 timeout for this transaction (the coordinator's default when
    /// not given).
    #[arg(long, value_name = "MS")]
    prepare_timeout_ms: Option<u64>,
    /// How the transaction's messages flow: centralized (the coordinator
    /// talks to every branch), linear (a chain in the order the branches
    /// are given, the last one deciding: about half the messages, no
    /// forced write at the coordinator, more latency), or hierarchical (a
    /// tree of sub-coordinators: --tree, or a balanced binary tree over
    /// the branches in order).
    #[arg(long, default_value = "centralized", value_parser = parse_shape)]
    shape: concord_proto::Shape,
    /// The tree of a hierarchical transaction, e.g.
    /// 'bank-a(bank-b,bank-c),bank-d': the coordinator talks to bank-a and
    /// bank-d, bank-a is the sub-coordinator of bank-b and bank-c. At most
    /// 4 levels and 16 children per node; each participant once. Implies
    /// --shape hierarchical.
    #[arg(long, value_name = "TREE", value_parser = parse_tree)]
    tree: Option<client::Tree>,
}

#[derive(Args, Debug)]
struct TransferArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Account to take the amount from, as PARTICIPANT:ACCOUNT (the
    /// participant's name at the coordinator).
    #[arg(long, value_name = "P:ACCT", value_parser = parse_account)]
    from: (String, String),
    /// Account to give the amount to, as PARTICIPANT:ACCOUNT.
    #[arg(long, value_name = "P:ACCT", value_parser = parse_account)]
    to: (String, String),
    /// Amount to move (positive).
    #[arg(long, value_name = "N")]
    amount: i64,
}

#[derive(Args, Debug)]
struct TxnArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// One operation as PARTICIPANT:ACCOUNT:DELTA (DELTA may be negative);
    /// repeat for each. Operations on one participant form one branch. The
    /// deltas need not sum to zero (money may enter or leave); each
    /// branch votes ABORT if an account would go below zero.
    #[arg(long = "op", value_name = "P:ACCT:DELTA", value_parser = parse_op, required = true, allow_hyphen_values = true)]
    ops: Vec<(String, String, i64)>,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The coordinator's address.
    #[arg(long, value_name = "ADDR", required_unless_present_any = ["participants", "instances"])]
    coordinator: Option<String>,
    /// Show the coordinator instances sharing the PostgreSQL store at
    /// --store: every log, the instance that holds it (its own, or one
    /// that took it over), its epoch, the lease left by the database's
    /// clock, who asked for it back, and the transactions in flight in it.
    /// Read from the database, so it works with every instance down.
    #[arg(long, requires = "store", conflicts_with_all = ["xid", "timeouts", "prepared"])]
    instances: bool,
    /// With --instances: the shared store, postgres://USER@HOST:PORT/DB.
    #[arg(long, value_name = "URL", value_parser = parse_store)]
    store: Option<String>,
    /// Ask this participant directly (repeatable), instead of the
    /// participants the coordinator names: with the coordinator down this
    /// shows what an in-doubt branch waits for and whom it asked.
    #[arg(
        long = "participant",
        value_name = "ADDR",
        conflicts_with_all = ["timeouts", "coordinator"]
    )]
    participants: Vec<String>,
    /// The transaction id (hex, as printed by transfer/txn).
    #[arg(value_name = "XID", value_parser = parse_xid, required_unless_present_any = ["timeouts", "prepared", "instances"])]
    xid: Option<Xid>,
    /// Show the latency estimates per participant and phase and the
    /// timeouts they set, instead of a transaction (the address may also
    /// be a participant's: its estimates of the coordinator).
    #[arg(long, conflicts_with = "xid")]
    timeouts: bool,
    /// Show each PostgreSQL participant's prepared transactions as its
    /// last reconciliation found them: held by its branches, its own
    /// still within their hold, and those it cannot resolve (another
    /// participant's, a foreign tool's) with their ages.
    #[arg(long, requires = "participants", conflicts_with = "xid")]
    prepared: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct TimelineArgs {
    /// The coordinator's address.
    #[arg(long, value_name = "ADDR")]
    coordinator: String,
    /// The transaction id (hex, as printed by transfer/txn).
    #[arg(value_name = "XID", value_parser = parse_xid)]
    xid: Xid,
    /// Print JSON (the HTTP API's timeline, with RFC 3339 times).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct AccountsArgs {
    /// The participant's address (its --listen).
    #[arg(long, value_name = "ADDR")]
    participant: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_shape(s: &str) -> Result<concord_proto::Shape, String> {
    concord_proto::Shape::from_name(s)
        .ok_or_else(|| format!("unknown shape {s:?}: centralized, linear or hierarchical"))
}

fn parse_tree(s: &str) -> Result<client::Tree, String> {
    client::Tree::parse(s).map_err(|e| e.to_string())
}

fn parse_participant(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, addr)) if !name.trim().is_empty() && !addr.trim().is_empty() => {
            Ok((name.trim().to_string(), addr.trim().to_string()))
        }
        _ => Err(format!("expected NAME=ADDR, got {s:?}")),
    }
}

fn parse_http_participant(s: &str) -> Result<(String, String), String> {
    let (name, url) = parse_participant(s).map_err(|_| format!("expected NAME=URL, got {s:?}"))?;
    if url.starts_with("https://") {
        return Err(format!(
            "{url}: https is not supported yet; put a TLS-terminating proxy on loopback and \
             give its http:// URL"
        ));
    }
    if !url.starts_with("http://") || url.len() <= "http://".len() {
        return Err(format!(
            "{url}: expected an http:// URL, e.g. http://127.0.0.1:8081"
        ));
    }
    Ok((name, url))
}

/// A duration with its unit (`300ms`, `30s`, `5m`, `1h`), in milliseconds.
fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?}: {e} (e.g. 300ms, 30s, 5m, 1h)"))?;
    u64::try_from(d.as_millis()).map_err(|_| format!("{s:?} is too long"))
}

/// `P:ACCT`; split at the last ':' so a participant may be named by its
/// address ("127.0.0.1:7101:acct-0").
fn parse_account(s: &str) -> Result<(String, String), String> {
    match s.rsplit_once(':') {
        Some((p, a)) if !p.is_empty() && !a.is_empty() => Ok((p.to_string(), a.to_string())),
        _ => Err(format!("expected PARTICIPANT:ACCOUNT, got {s:?}")),
    }
}

fn parse_op(s: &str) -> Result<(String, String, i64), String> {
    let (rest, delta) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected PARTICIPANT:ACCOUNT:DELTA, got {s:?}"))?;
    let delta: i64 = delta
        .parse()
        .map_err(|e| format!("DELTA in {s:?} is not an integer: {e}"))?;
    let (p, a) = parse_account(rest)
        .map_err(|_| format!("expected PARTICIPANT:ACCOUNT:DELTA, got {s:?}"))?;
    Ok((p, a, delta))
}

/// `--store`: a PostgreSQL URL (the file store is the default, in
/// --data-dir).
fn parse_store(s: &str) -> Result<String, String> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: a PostgreSQL URL, postgres://USER@HOST:PORT/DB (without --store the log \
             is a file in --data-dir)"
        ))
    }
}

fn parse_xid(s: &str) -> Result<Xid, String> {
    s.parse()
}

fn init_logging(level: &str) {
    // `--log-level debug` is about concord: the PostgreSQL client logs
    // every statement at debug (a line per lease renewal and append), so
    // it says only info and up unless a filter names it (or `trace`).
    let spec = if level.contains('=') || level.trim() == "trace" {
        level.to_string()
    } else {
        format!("{level},tokio_postgres=info,postgres=info")
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => tracing_subscriber::EnvFilter::new(env),
        _ => tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("concord: --log-level {level:?} is not a valid filter ({e}); using info");
            tracing_subscriber::EnvFilter::new("info")
        }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    let server = matches!(
        cli.command,
        Command::Serve(_)
            | Command::Participant(_)
            | Command::PgParticipant(_)
            | Command::Proxy(_)
            | Command::Relay(_)
    );
    let server_threads = match &cli.command {
        Command::Serve(args) => Some(args.process.worker_threads),
        Command::Participant(args) => Some(args.process.worker_threads),
        Command::PgParticipant(args) => Some(args.participant.process.worker_threads),
        // As the servers run by default (one thread), to compare like with
        // like.
        Command::Relay(_) => Some(1),
        _ => None,
    };
    let runtime = if let Some(threads) = server_threads {
        if threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
        }
    } else if server || matches!(cli.command, Command::Demo(_) | Command::Bench(_)) {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("concord: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    if server {
        if let Err(e) = concord_server::failpoint::init_from_env() {
            eprintln!("concord: {e}");
            return ExitCode::from(2);
        }
        // Logs what it did; on failure it says so (warning) and the server
        // goes on with the old limit.
        let _ = concord_net::raise_fd_limit();
    }
    if !server {
        // A client command writing into a closed pipe (`| head`) ends
        // quietly, as Unix tools do, instead of panicking on the write.
        // Servers keep Rust's default (ignored): they write to sockets.
        // SAFETY: setting a signal disposition before any thread of ours
        // writes to stdout; SIG_DFL is always a valid handler.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve(args) => match serve_config(args) {
            Ok(config) => server_exit(concord_server::run_coordinator(config).await),
            Err(e) => server_exit(Err(e)),
        },
        Command::Participant(args) => {
            server_exit(concord_server::run_participant(participant_config(args)).await)
        }
        Command::PgParticipant(args) => server_exit(pg_participant(args).await),
        Command::Transfer(args) => {
            let from = (args.from.0.as_str(), args.from.1.as_str());
            let to = (args.to.0.as_str(), args.to.1.as_str());
            let (timeout, shape) = (args.client.prepare_timeout_ms, args.client.shape);
            let tree = args.client.tree.clone();
            let result = with_client(&args.client, |client| async move {
                if shape == concord_proto::Shape::Hierarchical || tree.is_some() {
                    if args.amount <= 0 {
                        let why = format!("amount must be positive, got {}", args.amount);
                        return Err(client::ClientError::Invalid(why));
                    }
                    let branches = client::kv_branches(&[
                        (from.0.into(), from.1.into(), -args.amount),
                        (to.0.into(), to.1.into(), args.amount),
                    ]);
                    return client.transact_tree(branches, timeout, tree.as_ref()).await;
                }
                client
                    .transfer_shaped(from, to, args.amount, timeout, shape)
                    .await
            })
            .await;
            print_txn_result(&args.client.coordinator, result)
        }
        Command::Txn(args) => {
            let branches = client::kv_branches(&args.ops);
            let (timeout, shape) = (args.client.prepare_timeout_ms, args.client.shape);
            let tree = args.client.tree.clone();
            let result = with_client(&args.client, |client| async move {
                if shape == concord_proto::Shape::Hierarchical || tree.is_some() {
                    return client.transact_tree(branches, timeout, tree.as_ref()).await;
                }
                client.transact_shaped(branches, timeout, shape).await
            })
            .await;
            print_txn_result(&args.client.coordinator, result)
        }
        Command::Status(args) => status(args).await,
        Command::Accounts(args) => accounts(args).await,
        Command::Timeline(args) => timeline(args).await,
        Command::Operator(args) => operate::operator(args).await,
        Command::Demo(args) => demo(args).await,
        Command::Proxy(args) => proxy(args).await,
        Command::Bench(args) => bench(args).await,
        Command::Openapi => {
            print!("{}", concord_server::http::openapi_document());
            ExitCode::SUCCESS
        }
        Command::Relay(args) => {
            let role = if args.participant.is_empty() {
                concord_server::relay::RelayRole::Participant
            } else {
                concord_server::relay::RelayRole::Coordinator {
                    participants: args.participant,
                }
            };
            let config = concord_server::relay::RelayConfig {
                name: args.name,
                listen: args.listen,
                role,
                net: args.net.net_config(),
            };
            server_exit(
                concord_server::relay::run_relay_until(config, concord_server::shutdown_signal())
                    .await,
            )
        }
    }
}

fn parse_direction(s: &str) -> Result<concord_net::proxy::Direction, String> {
    use concord_net::proxy::Direction;
    match s {
        "c2s" | "client-to-server" => Ok(Direction::ClientToServer),
        "s2c" | "server-to-client" => Ok(Direction::ServerToClient),
        _ => Err(format!("expected c2s or s2c, got {s:?}")),
    }
}

async fn proxy(args: ProxyArgs) -> ExitCode {
    use concord_net::proxy::{self, Faults, ProxyHandle};
    let faults = Faults {
        latency: Duration::from_millis(args.latency_ms),
        jitter: Duration::from_millis(args.jitter_ms),
        bandwidth_bytes_per_sec: args.bandwidth_bytes_per_sec,
        black_hole: args.black_hole,
        half_open: args.half_open,
        close_after_idle: args.close_after_idle_ms.map(Duration::from_millis),
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("concord proxy: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    let handle = ProxyHandle::new(faults);
    tokio::spawn(proxy_commands(handle.clone()));
    let serving = proxy::serve(listener, args.upstream, handle.clone());
    tokio::select! {
        result = serving => {
            if let Err(e) = result {
                eprintln!("concord proxy: {e}");
                return ExitCode::from(2);
            }
        }
        _ = concord_server::shutdown_signal() => handle.shutdown(),
    }
    ExitCode::SUCCESS
}

/// Read fault commands from standard input (see `concord proxy --help`).
async fn proxy_commands(handle: concord_net::proxy::ProxyHandle) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match apply_proxy_command(&handle, line) {
            Ok(()) => println!("ok {:?} {:?}", handle.faults(), handle.stats()),
            Err(e) => println!("error: {e}"),
        }
    }
}

fn apply_proxy_command(handle: &concord_net::proxy::ProxyHandle, line: &str) -> Result<(), String> {
    let mut words = line.split_whitespace();
    let command = words.next().unwrap_or_default();
    let arg = words.next();
    let ms = |a: Option<&str>| -> Result<Duration, String> {
        a.ok_or_else(|| format!("{command} needs a value in ms"))?
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|e| format!("{command}: {e}"))
    };
    let off_or = |a: Option<&str>| a == Some("off") || a == Some("0");
    match command {
        "latency" => {
            let d = ms(arg)?;
            handle.update(|f| f.latency = d);
        }
        "jitter" => {
            let d = ms(arg)?;
            handle.update(|f| f.jitter = d);
        }
        "bandwidth" => {
            let bw = if off_or(arg) {
                None
            } else {
                Some(
                    arg.ok_or("bandwidth needs bytes per second or off")?
                        .parse::<u64>()
                        .map_err(|e| format!("bandwidth: {e}"))?,
                )
            };
            handle.update(|f| f.bandwidth_bytes_per_sec = bw);
        }
        "black-hole" => {
            let on = matches!(arg, Some("on") | Some("1") | None);
            handle.update(|f| f.black_hole = on);
        }
        "half-open" => {
            let dir = if off_or(arg) {
                None
            } else {
                Some(parse_direction(arg.unwrap_or_default())?)
            };
            handle.update(|f| f.half_open = dir);
        }
        "close-after-idle" => {
            let d = if off_or(arg) { None } else { Some(ms(arg)?) };
            handle.update(|f| f.close_after_idle = d);
        }
        "reset" => handle.reset_all(),
        "clear" => handle.clear(),
        "show" => {}
        other => {
            return Err(format!(
                "unknown command {other:?} (see concord proxy --help)"
            ))
        }
    }
    Ok(())
}

fn serve_config(args: ServeArgs) -> anyhow::Result<CoordinatorServerConfig> {
    let mut participants = args.participants;
    participants.extend(args.http_participants);
    let data_dir = args.data_dir.unwrap_or_default();
    let mut config = CoordinatorServerConfig::new(args.listen, data_dir, participants);
    config.store = args.store;
    config.lease.lease_ms = args.lease;
    config.node.attention_after_ms = args.attention_after;
    config.node.timelines_max = args.timelines_max;
    if let Some(path) = &args.operator_token_file {
        let token =
            concord_server::http::HttpConfig::token_from_file(path, "--operator-token-file")?;
        config.node.operator_token = Some(token);
    }
    config.node.id = args.name;
    if let Some(advertise) = args.advertise {
        config.node.addr = advertise.clone();
        config.advertise = Some(advertise);
    }
    config.node.prepare_timeout_ms = args.prepare_timeout_ms;
    config.node.prepare_timeout_ms_min = args.prepare_timeout_ms_min;
    config.node.prepare_timeout_ms_max = args.prepare_timeout_ms_max;
    config.node.timeout_samples_min = args.timeout_samples_min;
    config.node.resend_ms_min = args.resend_ms_min;
    config.node.resend_ms_initial = args.resend_ms_initial;
    config.node.resend_ms_max = args.resend_ms_max;
    config.node.transactions_in_flight_max = args.transactions_in_flight_max;
    config.node.one_phase = !args.no_one_phase;
    config.node.compact_after_records = compact_after(args.process.compact_after_records);
    config.listen_backlog = args.net.listen_backlog;
    config.net = args.net.net_config();
    config.fsync = !args.process.unsafe_no_fsync;
    if let Some(listen) = args.http.http_listen {
        let mut http = concord_server::http::HttpConfig::new(listen);
        if let Some(path) = &args.http.api_token_file {
            http.token = Some(concord_server::http::HttpConfig::token_from_file(
                path,
                "--api-token-file",
            )?);
        }
        http.body_bytes_max = args.http.http_body_bytes_max;
        http.header_read_timeout = Duration::from_millis(args.http.http_header_timeout_ms);
        http.body_read_timeout = Duration::from_millis(args.http.http_body_timeout_ms);
        http.connections_max = args.http.http_connections_max;
        config.http = Some(http);
    }
    Ok(config)
}

fn participant_config(args: ParticipantArgs) -> ParticipantServerConfig {
    let mut config = ParticipantServerConfig::new(args.name, args.listen, args.data_dir);
    config.seed = args.seed_accounts.zip(args.balance);
    config.node.inquire_ms_initial = args.inquire_ms_initial;
    config.node.inquire_ms_min = args.inquire_ms_min;
    config.node.inquire_ms_max = args.inquire_ms_max;
    config.node.timeout_samples_min = args.timeout_samples_min;
    config.node.child_prepare_timeout_ms_min = args.child_prepare_timeout_ms_min;
    config.http = args.http_listen.map(concord_server::http::HttpConfig::new);
    config.advertise = args.advertise;
    config.outcome_sync_delay_us = args.outcome_sync_delay_us;
    config.node.branches_in_flight_max = args.branches_in_flight_max;
    config.node.read_only_votes = !args.no_read_only_vote;
    config.coordinators = args.coordinators;
    config.node.compact_after_records = compact_after(args.process.compact_after_records);
    config.listen_backlog = args.net.listen_backlog;
    config.net = args.net.net_config();
    config.fsync = !args.process.unsafe_no_fsync;
    config
}

async fn pg_participant(args: PgParticipantArgs) -> anyhow::Result<()> {
    if args.participant.seed_accounts.is_some() {
        anyhow::bail!(
            "--seed-accounts is for the key-value participant; a PostgreSQL participant's data \
             is in its database"
        );
    }
    let mut config = concord_server::pg_participant::PgParticipantConfig::new(
        participant_config(args.participant),
        args.dsn,
    );
    config.connections = args.connections;
    config.reconcile_interval_ms = args.reconcile_interval;
    config.lock_timeout_ms = args.lock_timeout;
    concord_server::pg_participant::run_pg_participant_until(
        config,
        concord_server::shutdown_signal(),
    )
    .await
}

/// `--compact-after-records`: 0 means never.
fn compact_after(records: u64) -> u64 {
    if records == 0 {
        u64::MAX
    } else {
        records
    }
}

fn server_exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("concord: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Connect, run `f`, and bound the whole thing by `--timeout-ms`.
/// Exit codes of `transfer` and `txn` (also in their `--help`).
const EXIT_COMMITTED: u8 = 0;
const EXIT_ABORTED: u8 = 1;
/// Nothing began: bad input, refused, or the coordinator unreachable.
const EXIT_NOT_STARTED: u8 = 2;
/// It began (the xid was printed) but its outcome was not heard: ask
/// `concord status`.
const EXIT_OUTCOME_UNKNOWN: u8 = 3;

const TXN_EXIT_HELP: &str = "\
The xid is printed (`xid HEX`) as soon as the coordinator has begun the
transaction, before its outcome, so a timeout or a lost connection always
names the transaction to check with `concord status`.

Exit codes: 0 committed; 1 aborted (the reason is printed); 2 not started
(bad input, refused by the coordinator, or the coordinator unreachable);
3 outcome unknown (begun, but the outcome was not heard: ask `concord
status --coordinator ADDR XID`).";

/// Why a transaction command did not report an outcome.
enum TxnFailure {
    NotStarted(String),
    /// It began as `xid` (or may have, when `None`).
    Unknown {
        xid: Option<Xid>,
        why: String,
    },
}

/// Connect, run `f`, and bound the whole thing by `--timeout-ms`. The xid
/// is printed the moment the transaction has begun.
async fn with_client<F, Fut>(args: &ClientArgs, f: F) -> Result<client::TxnResult, TxnFailure>
where
    F: FnOnce(std::sync::Arc<Client>) -> Fut,
    Fut: std::future::Future<Output = Result<client::TxnResult, ClientError>>,
{
    let begun: std::sync::Arc<std::sync::Mutex<Option<Xid>>> = Default::default();
    let seen = std::sync::Arc::clone(&begun);
    let hook: client::BegunHook = std::sync::Arc::new(move |xid| {
        println!("xid {xid}");
        // Out before anything else can happen to this process.
        let _ = std::io::Write::flush(&mut std::io::stdout());
        if let Ok(mut seen) = seen.lock() {
            *seen = Some(xid);
        }
    });
    let work = async {
        let client = Client::connect(&args.coordinator).await?.on_begun(hook);
        f(std::sync::Arc::new(client)).await
    };
    let result = tokio::time::timeout(Duration::from_millis(args.timeout_ms), work).await;
    let begun = begun.lock().ok().and_then(|x| *x);
    match result {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(ClientError::OutcomeUnknown { xid, why, .. })) => Err(TxnFailure::Unknown {
            xid: Some(xid),
            why,
        }),
        Ok(Err(ClientError::ConnectionLost { why, .. })) => Err(TxnFailure::Unknown {
            xid: begun,
            why: format!("the connection was lost before the coordinator answered ({why})"),
        }),
        Ok(Err(e)) => Err(TxnFailure::NotStarted(e.to_string())),
        Err(_) => Err(TxnFailure::Unknown {
            xid: begun,
            why: format!("no outcome within --timeout-ms {} ms", args.timeout_ms),
        }),
    }
}

fn print_txn_result(coordinator: &str, result: Result<client::TxnResult, TxnFailure>) -> ExitCode {
    match result {
        Ok(result) => match result.outcome {
            Outcome::Committed => {
                println!("committed");
                ExitCode::from(EXIT_COMMITTED)
            }
            Outcome::Aborted { reason } => {
                println!("aborted: {reason}");
                ExitCode::from(EXIT_ABORTED)
            }
        },
        Err(TxnFailure::NotStarted(why)) => {
            eprintln!("concord: error: {why}");
            ExitCode::from(EXIT_NOT_STARTED)
        }
        Err(TxnFailure::Unknown {
            xid: Some(xid),
            why,
        }) => {
            eprintln!(
                "concord: outcome of transaction {xid} unknown: {why}; it may still finish \
                 and the coordinator knows it: `concord status --coordinator {coordinator} {xid}`"
            );
            ExitCode::from(EXIT_OUTCOME_UNKNOWN)
        }
        Err(TxnFailure::Unknown { xid: None, why }) => {
            eprintln!(
                "concord: {why}; a transaction may have begun without this command hearing its \
                 xid: the coordinator at {coordinator} lists what is in flight"
            );
            ExitCode::from(EXIT_OUTCOME_UNKNOWN)
        }
    }
}

const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Run one query against `who` under [`QUERY_TIMEOUT`]; on failure print
/// why and give the exit code (2) for the caller to return.
/// Print `body` as pretty JSON: exit 0, or 2 if it cannot be encoded.
fn print_json<T: serde::Serialize>(body: &T) -> ExitCode {
    match serde_json::to_string_pretty(body) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("concord: error: cannot encode the answer as JSON: {e}");
            ExitCode::from(2)
        }
    }
}

async fn query<T>(
    who: &str,
    query: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ExitCode> {
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => {
            eprintln!("concord: error: {e}");
            Err(ExitCode::from(2))
        }
        Err(_) => {
            eprintln!(
                "concord: error: no answer from {who} within {} s",
                QUERY_TIMEOUT.as_secs()
            );
            Err(ExitCode::from(2))
        }
    }
}

/// Ask every participant at `addrs` concurrently for its state of `xid`
/// (and, in doubt, why it waits); an error says why one could not answer.
async fn branch_reports(
    addrs: &[String],
    xid: Xid,
) -> Vec<Result<(TxnState, Option<String>), String>> {
    let asks = addrs.iter().map(|addr| async move {
        match tokio::time::timeout(QUERY_TIMEOUT, client::branch_report(addr, xid)).await {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} s", QUERY_TIMEOUT.as_secs())),
        }
    });
    futures::future::join_all(asks).await
}

/// One participant's answer as a status line's tail: "READY — why".
fn branch_line(report: &Result<(TxnState, Option<String>), String>) -> String {
    match report {
        Ok((state, None)) => format!("{state:?}").to_uppercase(),
        Ok((state, Some(why))) => format!("{} — {why}", format!("{state:?}").to_uppercase()),
        Err(e) => format!("unreachable ({e})"),
    }
}

fn branch_json(
    report: &Result<(TxnState, Option<String>), String>,
) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    match report {
        Ok((state, detail)) => (
            format!("{state:?}").to_uppercase().into(),
            detail.clone().into(),
            serde_json::Value::Null,
        ),
        Err(e) => (
            serde_json::Value::Null,
            serde_json::Value::Null,
            e.clone().into(),
        ),
    }
}

/// `concord status --participant ADDR... XID`: what the participants
/// themselves say, without the coordinator.
async fn participants_status(args: &StatusArgs, xid: Xid) -> ExitCode {
    let reports = branch_reports(&args.participants, xid).await;
    if args.json {
        let branches: Vec<serde_json::Value> = args
            .participants
            .iter()
            .zip(&reports)
            .map(|(addr, r)| {
                let (state, detail, error) = branch_json(r);
                serde_json::json!({
                    "addr": addr,
                    "participant_state": state,
                    "participant_detail": detail,
                    "error": error,
                })
            })
            .collect();
        let out = serde_json::json!({ "xid": xid.to_string(), "branches": branches });
        println!("{out:#}");
        return ExitCode::SUCCESS;
    }
    println!("xid {xid}");
    for (addr, report) in args.participants.iter().zip(&reports) {
        println!("  {addr}: {}", branch_line(report));
    }
    ExitCode::SUCCESS
}

async fn status(args: StatusArgs) -> ExitCode {
    if args.prepared {
        return prepared_status(&args).await;
    }
    if args.instances {
        return instances_status(&args).await;
    }
    let xid = match (args.timeouts, args.xid) {
        (false, Some(xid)) => xid,
        _ => return timeouts_status(&args).await,
    };
    let coordinator = match (&args.coordinator, args.participants.is_empty()) {
        (Some(coordinator), true) => coordinator.clone(),
        _ => return participants_status(&args, xid).await,
    };
    let who = format!("the coordinator at {coordinator}");
    let status = match query(&who, async {
        let client = Client::connect(&coordinator).await?;
        client.status(xid).await
    })
    .await
    {
        Ok(status) => status,
        Err(code) => return code,
    };
    let addrs: Vec<String> = status.branches.iter().map(|b| b.addr.clone()).collect();
    let states = branch_reports(&addrs, xid).await;
    // With no record, the coordinator lists every participant it knows:
    // asked, but not branches of anything.
    let no_record = status.state == concord_api::CoordinatorState::NoRecord;
    if args.json {
        let views: Vec<serde_json::Value> = status
            .branches
            .iter()
            .zip(&states)
            .map(|(b, s)| {
                let (state, detail, error) = branch_json(s);
                serde_json::json!({
                    "participant": b.id,
                    "addr": b.addr,
                    "parent": b.parent,
                    "voted_ready": b.voted_ready,
                    "acked": b.acked,
                    "participant_state": state,
                    "participant_detail": detail,
                    "error": error,
                })
            })
            .collect();
        let (branches, asked) = if no_record {
            (Vec::new(), views)
        } else {
            (views, Vec::new())
        };
        let out = serde_json::json!({
            "xid": status.xid.to_string(),
            "coordinator_state": concord_api::http::TxnStateName::from(status.state),
            "detail": status.detail,
            "shape": status.shape.map(|s| s.name()),
            "layout": status.layout(),
            "branches": branches,
            "participants_asked": asked,
        });
        println!("{out:#}");
    } else {
        println!("xid {}", status.xid);
        println!("coordinator: {} — {}", status.state, status.detail);
        if let Some(layout) = status.layout() {
            println!("shape: {layout}");
        }
        if no_record {
            println!("participants asked:");
        }
        for (i, (branch, state)) in status.branches.iter().zip(&states).enumerate() {
            let indent = "  ".repeat(status.depth_of(i) + 1);
            let mut line = format!("{indent}{}: {}", branch.name, branch_line(state));
            if let (Some(ready), Some(acked)) = (branch.voted_ready, branch.acked) {
                line.push_str(&format!(
                    " [coordinator: voted READY {}, ACKed {}]",
                    yes_no(ready),
                    yes_no(acked)
                ));
            }
            println!("{line}");
        }
    }
    unanswered_exit(&status.branches, &states)
}

/// Exit 0, or 2 (and say who) when a participant could not be asked: the
/// picture printed is then incomplete.
fn unanswered_exit(
    branches: &[concord_api::BranchView],
    states: &[Result<(TxnState, Option<String>), String>],
) -> ExitCode {
    let silent: Vec<&str> = branches
        .iter()
        .zip(states)
        .filter(|(_, s)| s.is_err())
        .map(|(b, _)| b.id.as_str())
        .collect();
    if silent.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "concord: could not ask {}: the states above are incomplete",
        silent.join(", ")
    );
    ExitCode::from(2)
}

/// `concord status --timeouts`: the estimates and the timeouts in force.
/// `concord status --participant ADDR… --prepared`.
/// `status --instances`: the owner rows of the shared store, by instance.
async fn instances_status(args: &StatusArgs) -> ExitCode {
    let Some(dsn) = args.store.clone() else {
        eprintln!("concord: --instances needs --store postgres://…");
        return ExitCode::from(2);
    };
    let scanned = tokio::task::spawn_blocking(move || {
        // The PostgreSQL client runs a runtime of its own: not on this one.
        std::thread::spawn(move || concord_store::PgLeases::connect(&dsn)?.scan())
            .join()
            .map_err(|_| "the thread reading the store panicked".to_string())
    })
    .await;
    let rows = match scanned {
        Ok(Ok(Ok(rows))) => rows,
        Ok(Ok(Err(e))) => {
            eprintln!("concord: cannot read the instances from the store: {e}");
            return ExitCode::FAILURE;
        }
        Ok(Err(e)) => {
            eprintln!("concord: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("concord: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        let logs: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "log": r.log,
                    "holder": r.holder,
                    "epoch": r.epoch,
                    "lease_left_ms": r.lease_left_ms,
                    "expired": r.expired,
                    "wanted_by": r.wanted_by,
                    "in_flight": r.in_flight,
                    "http": r.http,
                })
            })
            .collect();
        print_json(&serde_json::json!({ "logs": logs }));
        return ExitCode::SUCCESS;
    }
    if rows.is_empty() {
        println!("no coordinator log in this store yet (no instance has started on it)");
        return ExitCode::SUCCESS;
    }
    print!("{}", instances_text(&rows));
    ExitCode::SUCCESS
}

/// One block per instance (every log's own instance, and any holder),
/// listing the logs it holds.
fn instances_text(rows: &[concord_store::OwnerRow]) -> String {
    use std::fmt::Write as _;
    let mut names: Vec<&str> = rows
        .iter()
        .flat_map(|r| std::iter::once(r.log.as_str()).chain(r.holder.as_deref()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = String::new();
    for name in names {
        let held: Vec<&concord_store::OwnerRow> = rows
            .iter()
            .filter(|r| r.holder.as_deref() == Some(name) && !r.expired)
            .collect();
        let in_flight: u64 = held.iter().map(|r| r.in_flight).sum();
        let http = held
            .iter()
            .find_map(|r| r.http.as_deref())
            .map(|h| format!(", HTTP API at {h}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "instance {name}: {}{http}",
            match held.len() {
                0 => "holds no live lease (down, starting, or waiting for its log)".to_string(),
                n => format!("holds {n} log(s), {in_flight} transactions in flight"),
            }
        );
        for r in rows
            .iter()
            .filter(|r| r.holder.as_deref() == Some(name) || r.log == name)
        {
            let whose = if r.log == name {
                "its own"
            } else {
                "taken over"
            };
            let holder = r.holder.as_deref().unwrap_or("nobody");
            let lease = if r.expired {
                format!("lease ran out {} ms ago", -r.lease_left_ms)
            } else {
                format!("lease {} ms left", r.lease_left_ms)
            };
            let wanted = r
                .wanted_by
                .as_deref()
                .map(|w| format!(", {w} asked for it back"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  log {} ({whose}): held by {holder}, epoch {}, {lease}, {} in flight{wanted}",
                r.log, r.epoch, r.in_flight
            );
        }
    }
    out
}

async fn prepared_status(args: &StatusArgs) -> ExitCode {
    let mut reports = Vec::new();
    for addr in &args.participants {
        let report = query(addr, async {
            let client = Client::connect(addr).await?;
            client.prepared().await
        })
        .await;
        match report {
            Ok(report) => reports.push((addr, report)),
            Err(code) => return code,
        }
    }
    if args.json {
        let list: Vec<serde_json::Value> = reports
            .iter()
            .map(|(addr, r)| serde_json::json!({ "addr": addr, "prepared": r }))
            .collect();
        println!("{:#}", serde_json::Value::from(list));
        return ExitCode::SUCCESS;
    }
    for (addr, r) in &reports {
        if !r.reconciled {
            println!("{addr}: no reconciliation has succeeded yet");
        } else {
            println!(
                "{addr}: {} prepared in the cluster of max_prepared_transactions = {}; {} held by \
                 its branches, {} its own within their hold, {} not its own to resolve; \
                 reconciliation committed {} and rolled back {} since start",
                r.prepared,
                r.max_prepared_transactions,
                r.held,
                r.waiting,
                r.unresolvable,
                r.commits,
                r.rollbacks
            );
        }
        if let Some(error) = &r.last_error {
            println!("  last listing failed: {error}");
        }
        for u in &r.unresolved {
            println!(
                "  {} ({}, {:.0} s old)",
                u.gid,
                u.owner,
                u.age_ms as f64 / 1000.0
            );
        }
    }
    ExitCode::SUCCESS
}

async fn timeouts_status(args: &StatusArgs) -> ExitCode {
    // clap requires --coordinator unless --participant, which --timeouts
    // excludes.
    let Some(addr) = args.coordinator.as_deref() else {
        eprintln!("concord: error: --timeouts needs --coordinator ADDR");
        return ExitCode::from(2);
    };
    let report = match query(addr, async {
        let client = Client::connect(addr).await?;
        client.timeouts().await
    })
    .await
    {
        Ok(report) => report,
        Err(code) => return code,
    };
    if args.json {
        let phases: Vec<serde_json::Value> = report
            .phases
            .iter()
            .map(|e| {
                serde_json::json!({
                    "peer": e.peer,
                    "phase": e.phase,
                    "samples": e.samples,
                    "srtt_us": e.srtt_us,
                    "rttvar_us": e.rttvar_us,
                    "rto_us": e.rto_us,
                    "p50_us": e.p50_us,
                    "p99_us": e.p99_us,
                    "p999_us": e.p999_us,
                    "max_us": e.max_us,
                    "backoff_level": e.backoff_level,
                    "timeout_ms": e.timeout_ms,
                    "basis": e.basis,
                })
            })
            .collect();
        let out = serde_json::json!({ "role": report.role, "phases": phases });
        println!("{out:#}");
        return ExitCode::SUCCESS;
    }
    let ms = |us: Option<u64>| match us {
        Some(us) => format!("{:.1}", us as f64 / 1000.0),
        None => "-".to_string(),
    };
    println!("{} timeouts (ms)", report.role);
    println!(
        "{:<28} {:<14} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "peer", "phase", "samples", "srtt", "rttvar", "rto", "p50", "p99", "p999", "timeout"
    );
    for e in &report.phases {
        println!(
            "{:<28} {:<14} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            e.peer,
            e.phase,
            e.samples,
            ms(e.srtt_us),
            ms(e.rttvar_us),
            ms(e.rto_us),
            ms((e.samples > 0).then_some(e.p50_us)),
            ms((e.samples > 0).then_some(e.p99_us)),
            ms((e.samples > 0).then_some(e.p999_us)),
            e.timeout_ms
        );
        println!("    {}", e.basis);
    }
    ExitCode::SUCCESS
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `concord timeline XID`: exit 0 with the timeline, 1 when the
/// coordinator keeps none for it, 2 when it could not be asked.
async fn timeline(args: TimelineArgs) -> ExitCode {
    let who = format!("the coordinator at {}", args.coordinator);
    let view = match query(&who, client::timeline(&args.coordinator, args.xid)).await {
        Ok(Some(view)) => view,
        Ok(None) => {
            eprintln!(
                "concord: no timeline of {} at {}: it did not begin in the coordinator's \
                 current life, or was dropped for newer ones; `concord status --coordinator {} {}` \
                 shows its state",
                args.xid, args.coordinator, args.coordinator, args.xid
            );
            return ExitCode::from(1);
        }
        Err(code) => return code,
    };
    let body = concord_api::http::TimelineBody::of(&view, std::time::SystemTime::now());
    if args.json {
        return print_json(&body);
    }
    println!(
        "timeline of {} ({}{})",
        body.xid,
        body.began_at
            .as_deref()
            .map_or("begin not seen".into(), |b| format!("began {b}")),
        if body.finished {
            ", finished"
        } else {
            ", still running"
        }
    );
    for e in &body.entries {
        let mut line = format!("{:>10.3} ms  {}", e.offset_ms, timeline_event_name(e.event));
        if let Some(message) = &e.message {
            line.push(' ');
            line.push_str(message);
        }
        if let Some(peer) = &e.peer {
            let word = match e.event {
                TimelineEvent::Sent => " to ",
                TimelineEvent::Received => " from ",
                _ => " ",
            };
            line.push_str(word);
            line.push_str(peer);
        }
        if let Some(n) = e.attempt.filter(|n| *n > 1) {
            line.push_str(&format!(" (attempt {n})"));
        }
        if !e.detail.is_empty() {
            line.push_str(": ");
            line.push_str(&e.detail);
        }
        println!("{line}");
    }
    if body.dropped > 0 {
        println!(
            "({} later entries not kept: at most 128 per transaction)",
            body.dropped
        );
    }
    ExitCode::SUCCESS
}

fn timeline_event_name(event: TimelineEvent) -> &'static str {
    match event {
        TimelineEvent::Begun => "begun",
        TimelineEvent::Sent => "sent",
        TimelineEvent::Received => "received",
        TimelineEvent::Timeout => "timeout",
        TimelineEvent::Logged => "logged",
        TimelineEvent::Durable => "durable",
        TimelineEvent::DeliveryFailed => "delivery failed",
        TimelineEvent::Decided => "decided",
        TimelineEvent::NeedsAttention => "needs attention",
        TimelineEvent::AttentionCleared => "attention cleared",
        TimelineEvent::Ended => "ended",
        TimelineEvent::Operator => "operator",
    }
}

async fn accounts(args: AccountsArgs) -> ExitCode {
    let who = format!("the participant at {}", args.participant);
    let report = match query(&who, client::accounts(&args.participant)).await {
        Ok(report) => report,
        Err(code) => return code,
    };
    if args.json {
        println!("{}", accounts_json(&report));
    } else {
        for (account, balance) in &report.balances {
            println!("{account} {balance}");
        }
        if report.in_doubt.is_empty() {
            println!("in doubt: none");
        } else {
            println!("in doubt: {}", report.in_doubt.len());
            for xid in &report.in_doubt {
                let locked: Vec<&str> = report
                    .locks
                    .iter()
                    .filter(|(_, x)| x == xid)
                    .map(|(a, _)| a.as_str())
                    .collect();
                println!("  {xid} (locks: {})", locked.join(", "));
                if let Some((_, why)) = report.waiting.iter().find(|(x, _)| x == xid) {
                    println!("    {why}");
                }
            }
        }
        let in_doubt_locks = report
            .locks
            .iter()
            .filter(|(_, x)| !report.in_doubt.contains(x))
            .count();
        if in_doubt_locks > 0 {
            println!("locks held by transactions being prepared or committed: {in_doubt_locks}");
        }
    }
    ExitCode::SUCCESS
}

fn accounts_json(report: &AccountsReport) -> serde_json::Value {
    let balances: serde_json::Map<String, serde_json::Value> = report
        .balances
        .iter()
        .map(|(a, b)| (a.clone(), serde_json::Value::from(*b)))
        .collect();
    let locks: serde_json::Map<String, serde_json::Value> = report
        .locks
        .iter()
        .map(|(a, x)| (a.clone(), serde_json::Value::from(x.to_string())))
        .collect();
    serde_json::json!({
        "balances": balances,
        "total": report.total(),
        "in_doubt": report.in_doubt.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
        "waiting": report
            .waiting
            .iter()
            .map(|(x, why)| (x.to_string(), serde_json::Value::from(why.clone())))
            .collect::<serde_json::Map<_, _>>(),
        "locks": locks,
    })
}

async fn bench(args: BenchArgs) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("concord bench: cannot find my own executable to start the servers: {e}");
            return ExitCode::from(2);
        }
    };
    let secs = |s: f64, flag: &str| {
        if s.is_finite() && s >= 0.0 {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(format!(
                "{flag} must be a non-negative number of seconds, got {s}"
            ))
        }
    };
    let (warmup, window) = match (
        secs(args.warmup_secs, "--warmup-secs"),
        secs(args.window_secs, "--window-secs"),
    ) {
        (Ok(w), Ok(m)) => (w, m),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("concord bench: {e}");
            return ExitCode::from(2);
        }
    };
    let resource = match args.resource.as_str() {
        "postgres" => bench::workload::WorkResource::Postgres,
        _ => bench::workload::WorkResource::Kv,
    };
    let concurrency = args.concurrency.unwrap_or_else(|| match resource {
        bench::workload::WorkResource::Postgres => vec![1, 4, 8, 16, 32],
        bench::workload::WorkResource::Kv => vec![1, 8, 32, 128, 256],
    });
    let options = bench::BenchOptions {
        exe,
        participants: args.participants,
        branches: args.branches,
        concurrency,
        resource,
        connections: args.connections,
        warmup,
        window,
        payload_bytes: args.payload_bytes,
        hot_share: args.hot_share,
        hot_accounts: if args.hot_share > 0.0 {
            args.hot_accounts
        } else {
            0
        },
        data_dir: args.data_dir,
        existing: args.coordinator.map(|c| (c, args.participant)),
        baselines: !args.no_baselines,
        optimizations: args.optimizations,
        http_api: args.api == "http",
        pg_store: args.store == "postgres",
        shape: match args.tree {
            Some(_) => concord_proto::Shape::Hierarchical,
            None => args.shape,
        },
        tree: args.tree,
        seed: args.seed,
    };
    let report = match bench::run_bench(options).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("concord bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &args.plot {
        let points: Vec<bench::plot::PlotPoint> = report
            .runs
            .iter()
            .map(|r| bench::plot::PlotPoint {
                concurrency: r.concurrency,
                throughput: r.transactions_per_sec,
                p99_ms: r.latency.p99_ms,
            })
            .collect();
        let title = format!(
            "concord bench: {} participants, {} branches, {} B payload ({})",
            report.settings.participants,
            report.settings.branches,
            report.settings.payload_bytes,
            if report.runs.iter().all(|r| r.durable) {
                "durable"
            } else {
                "NOT durable"
            }
        );
        if let Err(e) = std::fs::write(path, bench::plot::svg(&title, &points)) {
            eprintln!("concord bench: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        eprintln!("plot written to {}", path.display());
    }
    if args.json {
        return print_json(&report);
    }
    print!("{}", report.text());
    ExitCode::SUCCESS
}

async fn demo(args: DemoArgs) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("concord demo: cannot find my own executable to start the processes: {e}");
            return ExitCode::from(2);
        }
    };
    let options = demo::DemoOptions {
        transfers: args.transfers,
        clients: args.clients.max(1),
        accounts: args.accounts.max(2),
        balance: args.balance,
        data_dir: args.data_dir,
        seed: args.seed,
        exe,
        postgres: args.postgres,
    };
    match demo::run_demo(options).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("concord demo: {e:#}");
            ExitCode::from(2)
        }
    }
}
