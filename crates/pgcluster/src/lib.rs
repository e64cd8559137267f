//! Throwaway PostgreSQL clusters for tests, `concord bench --resource
//! postgres` and `concord demo --postgres`: `initdb` in a temp dir, a
//! server on 127.0.0.1 and a free port, fsync on, and
//! `max_prepared_transactions` set. Dropping a [`Cluster`] stops its
//! server (immediate mode) and deletes its files.
//!
//! The server binaries come from the machine (Debian's `postgresql`
//! package). When they are missing, [`PgBinaries::find`] fails with the
//! command that installs them: callers report it, never skip.
//!
//! PostgreSQL refuses to run as root. As root (CI machines), the data
//! directory is given to the `postgres` user the Debian package creates,
//! and `initdb`/`pg_ctl` run as that user through `runuser`.

use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// What to install when the binaries are missing.
pub const INSTALL_HINT: &str = "apt-get install -y postgresql";

/// Why a cluster could not be made, started or stopped.
#[derive(Debug)]
pub struct ClusterError(pub String);

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

fn err(message: impl Into<String>) -> ClusterError {
    ClusterError(message.into())
}

/// Where `initdb` and `pg_ctl` are.
#[derive(Clone, Debug)]
pub struct PgBinaries {
    pub bin_dir: PathBuf,
}

impl PgBinaries {
    /// `$CONCORD_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`
    /// (Debian puts the server binaries there, off the PATH), else the
    /// directory of `initdb` on the PATH.
    pub fn find() -> Result<PgBinaries, ClusterError> {
        let mut candidates = Vec::new();
        if let Some(dir) = std::env::var_os("CONCORD_PG_BIN") {
            candidates.push(PathBuf::from(dir));
        }
        if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
            let mut versions: Vec<(u32, PathBuf)> = entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .collect();
            versions.sort();
            candidates.extend(versions.into_iter().rev().map(|(_, dir)| dir));
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
        candidates
            .into_iter()
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
            .map(|bin_dir| PgBinaries { bin_dir })
            .ok_or_else(|| {
                err(format!(
                    "the PostgreSQL server binaries (initdb, pg_ctl, postgres) are not on this \
                     machine; install them with: {INSTALL_HINT}"
                ))
            })
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// How to set a cluster up.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `max_prepared_transactions`; 0 turns two-phase commit off (a
    /// participant must refuse to start against it).
    pub max_prepared_transactions: u32,
    pub max_connections: u32,
    /// Extra `postgresql.conf` lines.
    pub extra_config: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            max_prepared_transactions: 64,
            max_connections: 100,
            extra_config: Vec::new(),
        }
    }
}

/// One throwaway cluster. The superuser is `concord` (trust
/// authentication on 127.0.0.1 only), the database `postgres`.
pub struct Cluster {
    bins: PgBinaries,
    // Held for its Drop: the files go when the cluster does.
    _dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

impl Cluster {
    /// initdb, configure and start.
    pub fn start(options: &ClusterOptions) -> Result<Cluster, ClusterError> {
        let bins = PgBinaries::find()?;
        let dir = tempfile::Builder::new()
            .prefix("concord-pg-")
            .tempdir()
            .map_err(|e| err(format!("cannot make a temp dir for PostgreSQL: {e}")))?;
        let data = dir.path().join("data");
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        if as_postgres {
            give_to_postgres(dir.path())?;
        }
        let port = free_port()?;
        let mut cluster = Cluster {
            bins,
            _dir: dir,
            data,
            port,
            as_postgres,
            running: false,
        };
        cluster.initdb(options)?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// `postgres://concord@127.0.0.1:PORT/postgres`.
    pub fn dsn(&self) -> String {
        self.dsn_for("postgres")
    }

    pub fn dsn_for(&self, database: &str) -> String {
        format!("postgres://concord@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server's log, for a test's failure message.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `pg_ctl stop -m immediate`: a crash, as far as the database is
    /// concerned (recovery replays the WAL at the next start).
    pub fn stop_immediate(&mut self) -> Result<(), ClusterError> {
        self.stop("immediate")
    }

    /// Start again after a stop.
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        if self.running {
            self.stop("immediate")?;
        }
        self.start_server()
    }

    fn log_path(&self) -> PathBuf {
        self.data.with_file_name("server.log")
    }

    fn initdb(&self, options: &ClusterOptions) -> Result<(), ClusterError> {
        let data = self.data.to_string_lossy().into_owned();
        self.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "concord",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
        )?;
        let socket_dir = self.data.to_string_lossy().into_owned();
        let mut config = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {}", self.port),
            format!("unix_socket_directories = '{socket_dir}'"),
            "fsync = on".to_string(),
            "synchronous_commit = on".to_string(),
            format!(
                "max_prepared_transactions = {}",
                options.max_prepared_transactions
            ),
            format!("max_connections = {}", options.max_connections),
            "shared_buffers = 32MB".to_string(),
            "logging_collector = off".to_string(),
        ];
        config.extend(options.extra_config.iter().cloned());
        let path = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        text.push_str("\n# concord throwaway cluster\n");
        for line in config {
            text.push_str(&line);
            text.push('\n');
        }
        std::fs::write(&path, text)
            .map_err(|e| err(format!("cannot write {}: {e}", path.display())))
    }

    fn start_server(&mut self) -> Result<(), ClusterError> {
        let data = self.data.to_string_lossy().into_owned();
        let log = self.log_path().to_string_lossy().into_owned();
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-t", "60", "start"],
        )
        .map_err(|e| err(format!("{e}\nserver log:\n{}", self.server_log())))?;
        self.running = true;
        wait_for_port(self.port, Duration::from_secs(30))
    }

    fn stop(&mut self, mode: &str) -> Result<(), ClusterError> {
        let data = self.data.to_string_lossy().into_owned();
        self.run("pg_ctl", &["-D", &data, "-m", mode, "-w", "stop"])?;
        self.running = false;
        Ok(())
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<Output, ClusterError> {
        let program = self.bins.tool(tool);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command.args(args);
        let output = command
            .output()
            .map_err(|e| err(format!("cannot run {}: {e}", program.display())))?;
        if !output.status.success() {
            return Err(err(format!(
                "{} {} failed ({}): {}{}",
                program.display(),
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(output)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop("immediate");
        }
    }
}

/// As root: the temp dir belongs to the `postgres` user, which runs the
/// server (PostgreSQL will not run as root).
fn give_to_postgres(dir: &Path) -> Result<(), ClusterError> {
    let status = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(dir)
        .status()
        .map_err(|e| err(format!("cannot run chown: {e}")))?;
    if !status.success() {
        return Err(err(format!(
            "running as root, the PostgreSQL data directory must belong to the `postgres` \
             user, and `chown postgres:postgres {}` failed; the user comes with Debian's \
             package: {INSTALL_HINT}",
            dir.display()
        )));
    }
    Ok(())
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| err(format!("cannot find a free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| err(format!("cannot find a free port: {e}")))
}

fn wait_for_port(port: u16, limit: Duration) -> Result<(), ClusterError> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(err(format!(
        "PostgreSQL did not listen on 127.0.0.1:{port} within {limit:?}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_listens_and_goes_away() {
        let cluster = Cluster::start(&ClusterOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let data = cluster.data_dir().to_path_buf();
        assert!(std::net::TcpStream::connect(("127.0.0.1", cluster.port())).is_ok());
        let conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        assert!(conf.contains("max_prepared_transactions = 64"));
        assert!(conf.contains("fsync = on"));
        let port = cluster.port();
        drop(cluster);
        assert!(!data.exists());
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
