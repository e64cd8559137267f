//! Child processes of this same binary, for `concord demo` and `concord
//! bench`: start one with its arguments and a log file, kill -9 it,
//! restart it from the same arguments, stop it gracefully; and the small
//! helpers around that (a free loopback port, waiting until an address
//! listens). Nothing here knows the protocol.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// One child process, with the command that (re)starts it.
pub(crate) struct Proc {
    pub name: String,
    args: Vec<String>,
    pub log: PathBuf,
    exe: PathBuf,
    child: Child,
    pub starts: usize,
}

impl Proc {
    pub fn start(exe: &Path, name: &str, args: Vec<String>, log: PathBuf) -> anyhow::Result<Proc> {
        let child = spawn(exe, &args, &log)?;
        Ok(Proc {
            name: name.to_string(),
            args,
            log,
            exe: exe.to_path_buf(),
            child,
            starts: 1,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// SIGKILL: no shutdown code runs, unsynced writes in the process are
    /// gone (the kernel keeps what was written to the file).
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.child
            .start_kill()
            .with_context(|| format!("kill -9 {}", self.name))?;
        self.child.wait().await?;
        Ok(())
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.child = spawn(&self.exe, &self.args, &self.log)?;
        self.starts += 1;
        Ok(())
    }

    /// Graceful stop (SIGTERM), then SIGKILL if it does not exit in time.
    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }

    /// The "recovery:" lines this process logged, most recent start last.
    pub fn recovery_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("recovery:"))
            .map(strip_ansi)
            .collect()
    }
}

fn spawn(exe: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new(exe)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {} {}", exe.display(), args.join(" ")))
}

pub(crate) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The command line of a key-value participant listening on `addr`, with
/// its log in `dir` and `accounts` accounts of `balance` seeded on first
/// start, then `extra` flags.
pub(crate) fn participant_args(
    name: &str,
    addr: &str,
    dir: &Path,
    accounts: usize,
    balance: i64,
    extra: &[&str],
) -> Vec<String> {
    let mut args = server_args("participant", name, addr, dir, &[]);
    args.extend([
        "--seed-accounts".to_string(),
        accounts.to_string(),
        "--balance".into(),
        balance.to_string(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The command line of a PostgreSQL participant listening on `addr`, with
/// its log in `dir`, then `extra` flags (`--dsn` among them).
pub(crate) fn pg_participant_args(
    name: &str,
    addr: &str,
    dir: &Path,
    extra: &[&str],
) -> Vec<String> {
    server_args("pg-participant", name, addr, dir, extra)
}

/// `COMMAND --name NAME --listen ADDR --data-dir DIR EXTRA…`.
fn server_args(command: &str, name: &str, addr: &str, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [command, "--name", name, "--listen", addr, "--data-dir"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(dir.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The command line of a coordinator listening on `addr`, with its log in
/// `dir` and the participants `(name, address)`, then `extra` flags.
pub(crate) fn coordinator_args(
    addr: &str,
    dir: &Path,
    participants: &[(String, String)],
    extra: &[&str],
) -> Vec<String> {
    let mut args = vec![
        "serve".to_string(),
        "--listen".into(),
        addr.to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
    ];
    for (name, addr) in participants {
        args.push("--participant".into());
        args.push(format!("{name}={addr}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `n` distinct free ports on 127.0.0.1. The listeners are held together
/// while choosing: one at a time, the kernel may hand out the same port
/// twice (seen: a coordinator and a participant given one port, so clients
/// reached the participant).
pub(crate) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

pub(crate) async fn wait_listening(addr: &str, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not start listening on {addr} within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
