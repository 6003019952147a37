//! Listening sockets shared by the edges that accept connections: the plaintext input and the stats server.
//!
//! [`bind`] binds a listener the way every edge needs it (`SO_REUSEADDR`, a deep backlog, IPv4 first for
//! `localhost`), and [`Acceptor`] is one accept loop's step: it enforces a connection cap by accepting and closing at
//! once (so a client sees a clear close instead of hanging in the backlog), and survives `EMFILE` and friends by
//! counting the error, logging at most once a second and backing off.
//!
//! Invariants: an acceptor never retries a failing `accept` without a pause unless the error was about that one
//! connection, never holds more admitted connections than its cap (each carries a permit), and stops at once when
//! the shutdown token fires.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::stats::RateLimit;

/// Pending connections the kernel may hold for us: thousands of collectd hosts reconnect at once after a restart.
const LISTEN_BACKLOG: i32 = 4096;

/// Pause after an `accept` error such as `EMFILE`, so the loop does not spin while the condition lasts. Short, so
/// that clients wait little once descriptors free up: 20 tries a second cost nothing measurable.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Binds a TCP listener on `address:port` (the first address the name resolves to that binds).
///
/// # Errors
///
/// Resolution or bind failure, naming the address.
pub async fn bind(address: &str, port: u16) -> anyhow::Result<TcpListener> {
    let mut addresses: Vec<SocketAddr> = tokio::net::lookup_host((address, port))
        .await
        .with_context(|| format!("cannot resolve listen address {address}:{port}"))?
        .collect();
    // IPv4 first, as Go's net.Listen does: `localhost` must mean 127.0.0.1, as for the seed, even where it also
    // resolves to ::1.
    addresses.sort_by_key(SocketAddr::is_ipv6);
    let mut last_error = None;
    for socket_address in addresses {
        match bind_one(socket_address) {
            Ok(listener) => return Ok(listener),
            Err(err) => last_error = Some(err),
        }
    }
    let err = last_error.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"));
    Err(anyhow::Error::new(err).context(format!("cannot listen on {address}:{port}")))
}

fn bind_one(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    // A restarted relay must be able to bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// What [`Acceptor::next`] got.
#[derive(Debug)]
pub enum Accepted {
    /// A connection within the cap; it holds its place until `permit` is dropped.
    Admitted {
        /// The client's connection.
        stream: TcpStream,
        /// The client's address.
        peer: SocketAddr,
        /// The connection's place under the cap.
        permit: OwnedSemaphorePermit,
    },
    /// A connection beyond the cap, accepted and closed at once; the caller counts it.
    OverCap,
}

/// One edge's accept loop step: a listener, its connection cap, and the rate limit of its error log.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    limit: Arc<Semaphore>,
    error_log: RateLimit,
    /// What accepts, for log lines: "plaintext input", "stats server".
    name: &'static str,
}

impl Acceptor {
    /// Accepts on `listener`, admitting at most `max_connections` at once.
    pub fn new(listener: TcpListener, max_connections: usize, name: &'static str) -> Acceptor {
        Acceptor {
            listener,
            limit: Arc::new(Semaphore::new(max_connections)),
            error_log: RateLimit::default(),
            name,
        }
    }

    /// The next connection, or `None` once `shutdown` fires. An `accept` error is counted in `errors`; unless it was
    /// about that one connection, it is logged (at most once a second) and the acceptor pauses
    /// [`ACCEPT_ERROR_BACKOFF`] before trying again.
    pub async fn next(&self, shutdown: &CancellationToken, errors: &AtomicU64) -> Option<Accepted> {
        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = Arc::clone(&self.limit).try_acquire_owned() else {
                        // Dropping the stream closes it at once.
                        drop(stream);
                        return Some(Accepted::OverCap);
                    };
                    return Some(Accepted::Admitted {
                        stream,
                        peer,
                        permit,
                    });
                }
                Err(err) => {
                    let n_errors = errors.fetch_add(1, Ordering::Relaxed) + 1;
                    if is_connection_error(&err) {
                        // That connection is gone from the backlog; the next one may be fine.
                        debug!(acceptor = self.name, error = %err, "accept failed for one connection");
                        continue;
                    }
                    if self.error_log.allow() {
                        warn!(acceptor = self.name, error = %err, accept_errors = n_errors, "cannot accept connections, backing off");
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                    }
                }
            }
        }
    }
}

/// True for `accept` errors about the one connection being accepted, which is then gone from the backlog: retrying
/// at once is right. `accept(2)` on Linux also reports network errors already pending on the new socket, to be
/// treated like `EAGAIN`.
///
/// Every other error, above all `EMFILE`, `ENFILE`, `ENOBUFS` and `ENOMEM` (out of descriptors or memory), lasts
/// until something else changes, so the acceptor backs off: retrying at once would spin on the same pending
/// connection. An error not listed here backs off too, so an unforeseen one costs a pause, never a spinning core.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ENOPROTOOPT
                | libc::EOPNOTSUPP
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once_and_a_freed_place_admits_the_next() {
        let listener = bind("127.0.0.1", 0).await.unwrap();
        let address = listener.local_addr().unwrap();
        let acceptor = Acceptor::new(listener, 1, "test");
        let shutdown = CancellationToken::new();
        let errors = AtomicU64::new(0);
        let _first = TcpStream::connect(address).await.unwrap();
        let Some(Accepted::Admitted { permit, .. }) = acceptor.next(&shutdown, &errors).await
        else {
            panic!("the first connection is admitted");
        };
        let _second = TcpStream::connect(address).await.unwrap();
        assert!(matches!(
            acceptor.next(&shutdown, &errors).await,
            Some(Accepted::OverCap)
        ));
        drop(permit);
        let _third = TcpStream::connect(address).await.unwrap();
        assert!(matches!(
            acceptor.next(&shutdown, &errors).await,
            Some(Accepted::Admitted { .. })
        ));
        shutdown.cancel();
        assert!(acceptor.next(&shutdown, &errors).await.is_none());
        assert_eq!(errors.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn only_errors_about_one_connection_are_retried_at_once() {
        let error = io::Error::from_raw_os_error;
        assert!(is_connection_error(&error(libc::ECONNABORTED)));
        assert!(!is_connection_error(&error(libc::EMFILE)));
        assert!(!is_connection_error(&error(libc::ENFILE)));
        assert!(!is_connection_error(&io::Error::other("unforeseen")));
    }
}
