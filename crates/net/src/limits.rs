//! Process limits the transport depends on.
//!
//! Thousands of connections need thousands of file descriptors, and the
//! default soft limit is often 1024. The hard limit is the ceiling an
//! unprivileged process may raise itself to, so start-up raises the soft
//! limit to it and says clearly when it cannot.

// rlim_t is u64 on 64-bit Linux but not on every target: keep the explicit
// conversions.
#![allow(clippy::useless_conversion)]

use std::io;

use tracing::{info, warn};

/// Soft and hard `RLIMIT_NOFILE` before and after raising.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (on Linux, to
/// `fs.nr_open` when the hard limit is unlimited, since the kernel refuses
/// more). Logs the result; a failure is logged as a warning and returned,
/// and the process can go on with the old limit.
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        let e = io::Error::last_os_error();
        warn!(error = %e, "could not read RLIMIT_NOFILE; file descriptor limit unchanged");
        return Err(e);
    }
    let soft_before = u64::from(lim.rlim_cur);
    let hard = u64::from(lim.rlim_max);
    let mut target = lim.rlim_max;
    if target == libc::RLIM_INFINITY {
        target = libc::rlim_t::try_from(nr_open().unwrap_or(1 << 20)).unwrap_or(lim.rlim_max);
    }
    if lim.rlim_cur >= target {
        info!(
            soft = soft_before,
            hard, "file descriptor limit already at maximum"
        );
        return Ok(FdLimit {
            soft_before,
            soft: soft_before,
            hard,
        });
    }
    let new = libc::rlimit {
        rlim_cur: target,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        let e = io::Error::last_os_error();
        warn!(
            soft = soft_before,
            hard,
            error = %e,
            "could not raise the file descriptor soft limit; connections beyond {soft_before} will fail with EMFILE"
        );
        return Err(e);
    }
    let soft = u64::from(target);
    info!(
        from = soft_before,
        to = soft,
        hard,
        "raised file descriptor soft limit"
    );
    Ok(FdLimit {
        soft_before,
        soft,
        hard,
    })
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_reaches_the_hard_limit() {
        let l = raise_fd_limit().expect("raise");
        assert!(l.soft >= l.soft_before);
        if l.hard != u64::from(libc::RLIM_INFINITY) {
            assert_eq!(l.soft, l.hard);
        }
        // Idempotent.
        let again = raise_fd_limit().expect("raise again");
        assert_eq!(again.soft, l.soft);
    }
}
