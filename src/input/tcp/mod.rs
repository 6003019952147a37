//! The plaintext TCP input: the accept loop, and one task per connection ([`connection`]).
//!
//! One of the [inputs](crate::input). The accept loop enforces `max_connections` by accepting and closing at once
//! (counted as rejected, so a client sees a clear close instead of hanging in the backlog), sets TCP keepalive on
//! every connection, and survives `EMFILE` and friends: it backs off 50 ms, counts the error in `accept_errors`, and
//! logs at most once a second (the [`Acceptor`] it shares with the stats server). It is an edge: it watches the shutdown token, stops accepting when it fires, and lets
//! the connections read what their clients already sent.
//!
//! Invariants: the accept loop never blocks on a destination (connections do, only while pacing or under `block`),
//! never retries a failing `accept` without a pause unless the error was about that one connection, and every
//! accepted connection is either handled or counted as rejected.

pub mod connection;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::net::{Accepted, Acceptor};

pub use connection::{Closed, ConnectionContext, ReadBufferBudget};

/// Keepalive probes find clients that vanished without a FIN (a host powered off) long before `idle_timeout`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` fires, spawning a tracked task for each.
pub async fn run(
    listener: TcpListener,
    context: Arc<ConnectionContext>,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    let stats = &context.registry.relay;
    let acceptor = Acceptor::new(listener, context.config.max_connections, "plaintext input");
    while let Some(accepted) = acceptor.next(&shutdown, &stats.accept_errors).await {
        let Accepted::Admitted {
            stream,
            peer,
            permit,
        } = accepted
        else {
            stats.connections_rejected.fetch_add(1, Ordering::Relaxed);
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
