//! Errors of the connection layer.
//!
//! Connect failures are classified (refused / timed out / unreachable)
//! because they mean different things to an operator: refused is "nothing
//! listens there (yet)", a timeout is "packets vanish" (firewall, black hole,
//! overloaded accept queue), unreachable is "no route". A reset of a pooled
//! connection is deliberately *not* an error here: it is repaired inside the
//! layer (see [`Network::send`](crate::conn::Network::send)).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::conn::Peer;

/// What kind of connect failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectErrorKind {
    /// ECONNREFUSED: the host answered, nothing listens on the port.
    Refused,
    /// No answer within `connect_timeout` (or ETIMEDOUT from the kernel).
    Timeout,
    /// ENETUNREACH / EHOSTUNREACH: no route to the address.
    Unreachable,
    /// Anything else (address family not supported, out of ports, ...).
    Other,
}

impl ConnectErrorKind {
    /// Classify an error returned by `connect`.
    pub fn classify(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => return ConnectErrorKind::Refused,
            Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => {
                return ConnectErrorKind::Unreachable
            }
            Some(libc::ETIMEDOUT) => return ConnectErrorKind::Timeout,
            _ => {}
        }
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ConnectErrorKind::Refused,
            io::ErrorKind::TimedOut => ConnectErrorKind::Timeout,
            _ => ConnectErrorKind::Other,
        }
    }

    /// Short stable name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectErrorKind::Refused => "connection_refused",
            ConnectErrorKind::Timeout => "connect_timeout",
            ConnectErrorKind::Unreachable => "network_unreachable",
            ConnectErrorKind::Other => "connect_failed",
        }
    }
}

/// One failed connect attempt.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ConnectError {
    pub addr: SocketAddr,
    pub kind: ConnectErrorKind,
    /// The OS error, when there was one (a timeout of our own has none).
    pub source: Option<Arc<io::Error>>,
    /// The timeout that expired, for [`ConnectErrorKind::Timeout`] of our own.
    pub timeout: Option<Duration>,
}

impl ConnectError {
    pub(crate) fn from_io(addr: SocketAddr, e: io::Error) -> Self {
        ConnectError {
            addr,
            kind: ConnectErrorKind::classify(&e),
            source: Some(Arc::new(e)),
            timeout: None,
        }
    }

    pub(crate) fn timed_out(addr: SocketAddr, timeout: Duration) -> Self {
        ConnectError {
            addr,
            kind: ConnectErrorKind::Timeout,
            source: None,
            timeout: Some(timeout),
        }
    }

    fn describe(&self) -> String {
        let os = self
            .source
            .as_ref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        match self.kind {
            ConnectErrorKind::Refused => format!(
                "connection refused by {}: nothing listening there (peer down or restarting){os}",
                self.addr
            ),
            ConnectErrorKind::Timeout => match self.timeout {
                Some(t) => format!(
                    "connect timeout to {} after {t:?}: no answer (packets dropped, firewall, or accept queue full)",
                    self.addr
                ),
                None => format!("connect timeout to {}{os}", self.addr),
            },
            ConnectErrorKind::Unreachable => {
                format!("network unreachable: no route to {}{os}", self.addr)
            }
            ConnectErrorKind::Other => format!("connect to {} failed{os}", self.addr),
        }
    }
}

/// Why a frame was not handed to the kernel.
///
/// Note what `Ok(())` from a send means: the kernel took the bytes. Delivery
/// is only confirmed by the protocol's replies.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// A connect attempt made for this frame failed.
    #[error("{0}")]
    Connect(#[from] ConnectError),
    /// The peer is in reconnect backoff after recent failures; the frame was
    /// not attempted. Sending again after `retry_in` makes a new attempt.
    #[error(
        "peer {addr} is down, next reconnect attempt in {retry_in:?}; last failure: {last_error}"
    )]
    PeerDown {
        addr: SocketAddr,
        last_error: Arc<str>,
        retry_in: Duration,
    },
    /// An accepted connection (which cannot be redialled) is gone.
    #[error("connection {peer} is closed")]
    ConnectionClosed { peer: Peer },
    /// `try_send` found the connection's queue full.
    #[error("send queue for {peer} is full")]
    QueueFull { peer: Peer },
    #[error("frame body of {len} bytes exceeds frame_bytes_max {max}")]
    TooLong { len: usize, max: usize },
    /// The network is shutting down; the frame was handed back by
    /// [`Network::shutdown`](crate::conn::Network::shutdown) if it was queued.
    #[error("network is shut down")]
    Shutdown,
}

impl SendError {
    /// The connect failure kind behind this error, if it is one.
    pub fn connect_kind(&self) -> Option<ConnectErrorKind> {
        match self {
            SendError::Connect(c) => Some(c.kind),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    #[test]
    fn classification() {
        let cases = [
            (libc::ECONNREFUSED, ConnectErrorKind::Refused),
            (libc::ENETUNREACH, ConnectErrorKind::Unreachable),
            (libc::EHOSTUNREACH, ConnectErrorKind::Unreachable),
            (libc::ETIMEDOUT, ConnectErrorKind::Timeout),
            (libc::EADDRNOTAVAIL, ConnectErrorKind::Other),
        ];
        for (errno, kind) in cases {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(ConnectErrorKind::classify(&e), kind, "errno {errno}");
        }
    }

    #[test]
    fn messages_are_distinct() {
        let refused =
            ConnectError::from_io(addr(), io::Error::from_raw_os_error(libc::ECONNREFUSED));
        let unreachable =
            ConnectError::from_io(addr(), io::Error::from_raw_os_error(libc::ENETUNREACH));
        let timeout = ConnectError::timed_out(addr(), Duration::from_secs(3));
        assert!(refused
            .to_string()
            .starts_with("connection refused by 127.0.0.1:9"));
        assert!(unreachable.to_string().starts_with("network unreachable"));
        assert!(timeout
            .to_string()
            .starts_with("connect timeout to 127.0.0.1:9 after 3s"));
        assert_eq!(
            SendError::from(timeout).connect_kind(),
            Some(ConnectErrorKind::Timeout)
        );
    }
}
