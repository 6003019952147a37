//! The stats HTTP server (the seed's "Runstats"): `GET /stats` and `GET /health`.
//!
//! An edge of the relay beside the listeners, on `stats.address`. [`app`] builds the router from the counters
//! alone, so tests call it with `oneshot` and no socket; [`serve`] runs the accept loop and drives each connection
//! with hyper's HTTP/1 server until the shutdown token is cancelled.
//!
//! - `GET /stats`: the JSON of a [`Snapshot`], every counter under the name it has in code.
//! - `GET /health`: `200` while the process runs, with the body `ok`, or `degraded` followed by one line per
//!   destination whose disk spool is degraded (its last write or sync failed: disk full or failing),
//!   `spool degraded: <identity>`. A degraded spool does not make the relay unhealthy: lines still flow to a
//!   connected destination through memory, and what cannot be kept is counted as dropped. So the status stays
//!   `200` (a load balancer keeps the relay), and the body tells a human or a check that reads it.
//!
//! No client can stall the server or the relay's shutdown. Each connection carries one request (keep-alive is
//! off, so every answer ends with `connection: close`): its request head must arrive within
//! `stats.header_read_timeout` of the connect, however slowly it trickles in, and the connection is closed
//! `stats.request_timeout` after it was accepted whatever it is doing, including writing to a client that never
//! reads. At most `stats.max_connections` are open; one more is accepted and closed at once, as the plaintext
//! listener does, so a client sees a clear close instead of hanging in the backlog. Monitoring scrapes every few
//! seconds, so a connection per request costs nothing that matters, and it makes a connection's life one request.
//!
//! Invariants: a request only reads counters; it never blocks or changes the pipeline. A connection never outlives
//! `stats.request_timeout`, nor [`SHUTDOWN_GRACE`] after the shutdown token is cancelled, so [`serve`] returns at
//! most [`SHUTDOWN_GRACE`] after the cancel. A connection's memory is bounded by [`MAX_BUFFER_BYTES`] whatever the
//! client sends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::StatsConfig;
use crate::net::{Accepted, Acceptor};
use crate::stats::{Registry, Snapshot, StatsServerStats};

/// How long requests in flight may still run once shutdown starts; then their connections are dropped. One second
/// answers any request this server has (they only read counters) while keeping a stalled client from holding up
/// the relay's exit.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Most bytes hyper buffers per connection, for reading the request head and for queueing the answer. A request
/// head larger than this is answered `431` and closed. 16 KiB holds any request a browser or a scraper sends here.
pub const MAX_BUFFER_BYTES: usize = 16 * 1024;

/// The stats server's limits, from `[stats]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `stats.max_connections`: connections open at once; more are accepted and closed.
    pub max_connections: usize,
    /// `stats.header_read_timeout`: time from accept to the end of the request head.
    pub header_read_timeout: Duration,
    /// `stats.request_timeout`: time from accept to the end of the connection.
    pub request_timeout: Duration,
}

impl Limits {
    /// The limits set in a (validated) `[stats]` section.
    pub fn from_config(config: &StatsConfig) -> Limits {
        Limits {
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            request_timeout: config.request_timeout,
        }
    }
}

/// The admin routes, reading the given counters.
pub fn app(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .route("/health", get(health))
        .with_state(registry)
}

/// Serves [`app`] on `listener` within `limits` until `shutdown` is cancelled, then gives requests in flight
/// [`SHUTDOWN_GRACE`] to finish and drops whatever connection is left.
///
/// It never fails: accept errors are logged and retried after a pause, and a client's error ends only its own
/// connection.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let app = app(Arc::clone(&registry));
    let connections = TaskTracker::new();
    let acceptor = Acceptor::new(listener, limits.max_connections, "stats server");
    let stats = &registry.stats_server;
    while let Some(accepted) = acceptor.next(&shutdown, &stats.accept_errors).await {
        let Accepted::Admitted { stream, permit, .. } = accepted else {
            let n_rejected = stats.connections_rejected.fetch_add(1, Ordering::Relaxed) + 1;
            if stats.rejected_log.allow() {
                warn!(
                    max_connections = limits.max_connections,
                    connections_rejected = n_rejected,
                    "stats server at stats.max_connections, closing new connections"
                );
            }
            continue;
        };
        stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
        stats.connections_open.fetch_add(1, Ordering::Relaxed);
        let app = app.clone();
        let registry = Arc::clone(&registry);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let closed = serve_connection(stream, app, limits, &shutdown).await;
            count_closed(&registry.stats_server, &closed);
            drop(permit);
        });
    }
    // Closing the listener now makes new connects fail at once rather than wait in the backlog.
    drop(acceptor);
    connections.close();
    connections.wait().await;
}

/// How a stats connection ended.
#[derive(Debug)]
enum Closed {
    /// The request was answered, or the client left between requests.
    Done,
    /// `header_read_timeout` or `request_timeout` passed.
    TimedOut,
    /// The client sent something that is not HTTP, or the connection failed.
    Failed(hyper::Error),
    /// Shutdown started and the connection was still open after [`SHUTDOWN_GRACE`].
    CutAtShutdown,
}

/// Runs one connection within `limits`, and within [`SHUTDOWN_GRACE`] once `shutdown` is cancelled.
async fn serve_connection<I>(
    io: I,
    app: Router,
    limits: Limits,
    shutdown: &CancellationToken,
) -> Closed
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = Instant::now() + limits.request_timeout;
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(false)
        .max_buf_size(MAX_BUFFER_BYTES)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return closed_by(result),
        () = tokio::time::sleep_until(deadline) => return Closed::TimedOut,
        () = shutdown.cancelled() => {}
    }
    // hyper's `graceful_shutdown` would only end a keep-alive connection idle between requests, and there are none:
    // what is open is answering (it finishes well within the grace) or waiting on its client (cut at the grace).
    let grace_deadline = deadline.min(Instant::now() + SHUTDOWN_GRACE);
    match tokio::time::timeout_at(grace_deadline, connection).await {
        Ok(result) => closed_by(result),
        Err(_) => Closed::CutAtShutdown,
    }
}

fn closed_by(result: Result<(), hyper::Error>) -> Closed {
    match result {
        Ok(()) => Closed::Done,
        Err(err) if err.is_timeout() => Closed::TimedOut,
        Err(err) => Closed::Failed(err),
    }
}

fn count_closed(stats: &StatsServerStats, closed: &Closed) {
    stats.connections_open.fetch_sub(1, Ordering::Relaxed);
    match closed {
        Closed::Done => {}
        Closed::TimedOut => {
            stats.connections_timed_out.fetch_add(1, Ordering::Relaxed);
            debug!("stats connection timed out");
        }
        // A client's garbage or reset is its own business: not worth more than a debug line.
        Closed::Failed(err) => debug!(error = %err, "stats connection failed"),
        Closed::CutAtShutdown => debug!("stats connection cut at shutdown"),
    }
}

async fn stats(State(registry): State<Arc<Registry>>) -> Json<Snapshot> {
    Json(registry.snapshot())
}

async fn health(State(registry): State<Arc<Registry>>) -> String {
    health_text(&registry.snapshot())
}

/// The body of `/health`: `ok`, or `degraded` and a line per destination whose spool is degraded.
fn health_text(snapshot: &Snapshot) -> String {
    let degraded_spools: Vec<&str> = snapshot
        .destinations
        .iter()
        .filter(|destination| {
            destination
                .spool
                .as_ref()
                .is_some_and(|spool| spool.degraded)
        })
        .map(|destination| destination.address.as_str())
        .collect();
    if degraded_spools.is_empty() {
        return "ok".to_string();
    }
    let mut text = "degraded".to_string();
    for address in degraded_spools {
        text.push_str("\nspool degraded: ");
        text.push_str(address);
    }
    text
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::ServiceExt;

    use super::*;
    use crate::stats::DropReason;

    async fn get(registry: Arc<Registry>, path: &str) -> (StatusCode, String) {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = app(registry).oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn limits() -> Limits {
        Limits::from_config(&StatsConfig::default())
    }

    #[tokio::test]
    async fn health_answers_ok() {
        let registry = Arc::new(Registry::new(&[]));
        assert_eq!(
            get(registry, "/health").await,
            (StatusCode::OK, "ok".to_string())
        );
    }

    /// A registry of destinations `a:2003`, `b:2003` and `c:2003`, each with `(spool_enabled, spool_degraded)`.
    fn registry_with_spools(spools: [(bool, bool); 3]) -> Arc<Registry> {
        let registry = Registry::new(&[
            "a:2003".to_string(),
            "b:2003".to_string(),
            "c:2003=x".to_string(),
        ]);
        for (stats, (enabled, degraded)) in registry.destinations().iter().zip(spools) {
            stats.spool_enabled.store(enabled, Ordering::Relaxed);
            stats.spool_degraded.store(degraded, Ordering::Relaxed);
        }
        Arc::new(registry)
    }

    #[tokio::test]
    async fn health_is_ok_while_every_spool_works() {
        let registry = registry_with_spools([(true, false), (false, false), (true, false)]);
        assert_eq!(
            get(registry, "/health").await,
            (StatusCode::OK, "ok".to_string())
        );
    }

    #[tokio::test]
    async fn health_names_each_destination_whose_spool_is_degraded_and_stays_200() {
        let registry = registry_with_spools([(true, true), (true, false), (true, true)]);
        assert_eq!(
            get(registry, "/health").await,
            (
                StatusCode::OK,
                "degraded\nspool degraded: a:2003\nspool degraded: c:2003=x".to_string()
            )
        );
    }

    #[tokio::test]
    async fn health_ignores_the_degraded_flag_of_a_destination_without_a_spool() {
        let registry = registry_with_spools([(false, true), (false, false), (false, false)]);
        assert_eq!(
            get(registry, "/health").await,
            (StatusCode::OK, "ok".to_string())
        );
    }

    #[tokio::test]
    async fn stats_shows_counters_and_every_destination() {
        let registry = Arc::new(Registry::new(&[
            "10.0.5.20:2003".to_string(),
            "10.0.5.25:2003".to_string(),
        ]));
        registry
            .relay
            .lines_received
            .fetch_add(42, Ordering::Relaxed);
        registry.destinations()[1].add_dropped(DropReason::QueueFull, 7);
        registry
            .stats_server
            .connections_rejected
            .fetch_add(3, Ordering::Relaxed);

        let (status, body) = get(registry, "/stats").await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["lines"]["received"], 42);
        assert_eq!(json["destinations"][0]["address"], "10.0.5.20:2003");
        assert_eq!(json["destinations"][1]["address"], "10.0.5.25:2003");
        assert_eq!(json["destinations"][1]["dropped"]["queue_full"], 7);
        assert_eq!(json["destinations"][1]["dropped"]["spool_full"], 0);
        assert_eq!(json["destinations"][1]["spool"], serde_json::Value::Null);
        assert_eq!(json["stats_server"]["connections_rejected"], 3);
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found() {
        let registry = Arc::new(Registry::new(&[]));
        assert_eq!(get(registry, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn serve_stops_when_shutdown_is_cancelled() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Registry::new(&[])),
            limits(),
            shutdown.clone(),
        ));
        shutdown.cancel();
        server.await.unwrap();
    }

    /// A connection over an in-memory pipe of `pipe_bytes`, served with `limits` until `shutdown`.
    fn connection(
        pipe_bytes: usize,
        limits: Limits,
        shutdown: &CancellationToken,
    ) -> (
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<(Closed, Instant)>,
    ) {
        let (client, server) = tokio::io::duplex(pipe_bytes);
        let app = app(Arc::new(Registry::new(&[])));
        let shutdown = shutdown.clone();
        let connection = tokio::spawn(async move {
            let closed = serve_connection(server, app, limits, &shutdown).await;
            (closed, Instant::now())
        });
        (client, connection)
    }

    /// How and when the connection ended; fails rather than hangs if it never ends.
    async fn ended(connection: tokio::task::JoinHandle<(Closed, Instant)>) -> (Closed, Instant) {
        tokio::time::timeout(Duration::from_secs(3600), connection)
            .await
            .expect("the connection ends")
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_answered_and_the_connection_closed() {
        let shutdown = CancellationToken::new();
        let (mut client, connection) = connection(64 * 1024, limits(), &shutdown);
        client
            .write_all(b"GET /health HTTP/1.1\r\nhost: relay\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("connection: close\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
        assert!(matches!(ended(connection).await.0, Closed::Done));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_head_larger_than_the_buffer_is_answered_431() {
        let shutdown = CancellationToken::new();
        let (client, connection) = connection(64 * 1024, limits(), &shutdown);
        let (mut reader, mut writer) = tokio::io::split(client);
        let mut head = b"GET /stats HTTP/1.1\r\nx-large: ".to_vec();
        head.resize(MAX_BUFFER_BYTES + 1024, b'a');
        // hyper answers before it has read everything, so write beside the read.
        let writing = tokio::spawn(async move {
            let _ = writer.write_all(&head).await;
            writer
        });
        let mut answer = String::new();
        reader.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{answer}"
        );
        assert!(matches!(ended(connection).await.0, Closed::Failed(_)));
        drop(writing.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_nothing_is_closed_at_the_header_read_timeout() {
        let started = Instant::now();
        let shutdown = CancellationToken::new();
        let (mut client, connection) = connection(64 * 1024, limits(), &shutdown);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"");
        let (closed, at) = ended(connection).await;
        assert!(matches!(closed, Closed::TimedOut), "{closed:?}");
        assert_eq!(at - started, limits().header_read_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_is_closed_at_the_request_timeout() {
        // The answer does not fit the pipe, so hyper's write waits for a reader that never comes.
        let started = Instant::now();
        let shutdown = CancellationToken::new();
        let (mut client, connection) = connection(16, limits(), &shutdown);
        client
            .write_all(b"GET /stats HTTP/1.1\r\nhost: relay\r\n\r\n")
            .await
            .unwrap();
        let (closed, at) = ended(connection).await;
        assert!(matches!(closed, Closed::TimedOut), "{closed:?}");
        assert_eq!(at - started, limits().request_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_gives_a_stalled_connection_the_grace_and_no_more() {
        let shutdown = CancellationToken::new();
        let (mut client, connection) = connection(16, limits(), &shutdown);
        client
            .write_all(b"GET /stats HTTP/1.1\r\nhost: relay\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cancelled = Instant::now();
        shutdown.cancel();
        let (closed, at) = ended(connection).await;
        assert!(matches!(closed, Closed::CutAtShutdown), "{closed:?}");
        assert_eq!(at - cancelled, SHUTDOWN_GRACE);
    }
}
