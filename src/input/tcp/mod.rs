//! The plaintext TCP input: the accept loop, and one task per connection ([`connection`]).
//!
//! One of the [inputs](crate::input). The accept loop enforces `max_connections` by accepting and closing at once
//! (counted as rejected, so a client sees a clear close instead of hanging in the backlog), sets TCP keepalive on
//! every connection, and survives `EMFILE` and friends: it backs off 50 ms, counts the error in `accept_errors`, and
//! logs at most once a second. It is an edge: it watches the shutdown token, stops accepting when it fires, and lets
//! the connections read what their clients already sent.
//!
//! Invariants: the accept loop never blocks on a destination (connections do, only while pacing or under `block`),
//! never retries a failing `accept` without a pause unless the error was about that one connection, and every
//! accepted connection is either handled or counted as rejected.

pub mod connection;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::stats::RateLimit;

pub use connection::{Closed, ConnectionContext, ReadBufferBudget};

/// Pending connections the kernel may hold for us: thousands of collectd hosts reconnect at once after a restart.
const LISTEN_BACKLOG: i32 = 4096;

/// Pause after an `accept` error such as `EMFILE`, so the loop does not spin while the condition lasts. Short, so
/// that clients wait little once descriptors free up: 20 tries a second cost nothing measurable.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Keepalive probes find clients that vanished without a FIN (a host powered off) long before `idle_timeout`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Binds a TCP listener on `address:port` (the first address the name resolves to that binds).
///
/// # Errors
///
/// Resolution or bind failure, naming the address.
pub async fn bind(address: &str, port: u16) -> anyhow::Result<TcpListener> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((address, port))
        .await
        .with_context(|| format!("cannot resolve listen address {address}:{port}"))?
        .collect();
    // IPv4 first, as Go's net.Listen does: `localhost` must mean 127.0.0.1, as for the seed, even where it also
    // resolves to ::1.
    let mut addresses = addresses;
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

/// Accepts connections until `shutdown` fires, spawning a tracked task for each.
pub async fn run(
    listener: TcpListener,
    context: Arc<ConnectionContext>,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    let stats = &context.registry.relay;
    let limit = Arc::new(Semaphore::new(context.config.max_connections));
    let accept_error_log = RateLimit::default();
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                let n_errors = stats.accept_errors.fetch_add(1, Ordering::Relaxed) + 1;
                if is_connection_error(&err) {
                    // That connection is gone from the backlog; the next one may be fine.
                    debug!(error = %err, "accept failed for one connection");
                    continue;
                }
                if accept_error_log.allow() {
                    warn!(error = %err, accept_errors = n_errors, "cannot accept connections, backing off");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                }
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            stats.connections_rejected.fetch_add(1, Ordering::Relaxed);
            // Dropping the stream closes it at once.
            drop(stream);
            continue;
        };
        stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
        set_keepalive(&stream);
        let context = Arc::clone(&context);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let stats = &context.registry.relay;
            stats.connections_open.fetch_add(1, Ordering::Relaxed);
            let closed = connection::handle(stream, &context, &shutdown).await;
            stats.connections_open.fetch_sub(1, Ordering::Relaxed);
            debug!(peer = %peer, reason = ?closed, "connection closed");
            drop(permit);
        });
    }
}

fn set_keepalive(stream: &TcpStream) {
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    if let Err(err) = SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        debug!(error = %err, "cannot set TCP keepalive");
    }
}

/// True for `accept` errors about the one connection being accepted, which is then gone from the backlog: retrying
/// at once is right. `accept(2)` on Linux also reports network errors already pending on the new socket, to be
/// treated like `EAGAIN`.
///
/// Every other error, above all `EMFILE`, `ENFILE`, `ENOBUFS` and `ENOMEM` (out of descriptors or memory), lasts
/// until something else changes, so the accept loop backs off: retrying at once would spin on the same pending
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
