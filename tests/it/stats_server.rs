//! The stats server on real sockets: its connection cap, its header read timeout, the spool figures in `/stats` and
//! `/health`, and a client for `/stats`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::{config, eventually, Sink, TestRelay, PATIENCE};

/// Sends `GET path` on `stream` and reads the answer to the end: the status line and the body.
pub async fn get_on(stream: &mut TcpStream, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nhost: polymur\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut answer))
        .await
        .expect("the answer within PATIENCE")
        .expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status_line = head.lines().next().expect("a status line");
    (status_line.to_string(), body.to_string())
}

/// `GET /stats` on a new connection, as JSON.
pub async fn get_stats(address: SocketAddr) -> serde_json::Value {
    let mut stream = TcpStream::connect(address)
        .await
        .expect("connect to the stats server");
    let (status_line, body) = get_on(&mut stream, "/stats").await;
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    serde_json::from_str(&body).expect("JSON stats")
}

/// Polls `GET /stats` until `condition` holds and returns that answer; panics with `what` after [`PATIENCE`].
pub async fn stats_until(
    address: SocketAddr,
    what: &str,
    mut condition: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = get_stats(address).await;
        if condition(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A relay with the stats server on a free port, with these limits.
async fn relay_with_stats_server(
    max_connections: usize,
    header_read_timeout: Duration,
    request_timeout: Duration,
) -> (TestRelay, SocketAddr) {
    let mut config = config(&[]);
    config.stats.address = "127.0.0.1:0".to_string();
    config.stats.max_connections = max_connections;
    config.stats.header_read_timeout = header_read_timeout;
    config.stats.request_timeout = request_timeout;
    let relay = TestRelay::start(config).await;
    let address = relay.handle.stats_address.expect("stats server enabled");
    (relay, address)
}

#[tokio::test]
async fn a_connection_beyond_max_connections_is_closed_at_once_and_counted() {
    // Timeouts far beyond the test, so only the cap can close anything.
    let (relay, address) =
        relay_with_stats_server(2, Duration::from_secs(60), Duration::from_secs(60)).await;
    let counters = &relay.handle.registry.stats_server;
    let mut first = TcpStream::connect(address).await.expect("connect");
    let _second = TcpStream::connect(address).await.expect("connect");
    eventually("both connections are held open", || {
        counters.connections_open.load(Ordering::Relaxed) == 2
    })
    .await;

    let mut third = TcpStream::connect(address).await.expect("connect");
    let mut answer = Vec::new();
    let n_bytes = tokio::time::timeout(PATIENCE, third.read_to_end(&mut answer))
        .await
        .expect("the third connection is closed")
        .expect("a clean close");
    assert_eq!(n_bytes, 0, "closed without an answer");
    eventually("the refusal is counted", || {
        counters.connections_rejected.load(Ordering::Relaxed) == 1
    })
    .await;

    // The connections under the cap are still served, and /stats shows the refusal.
    let (status_line, body) = get_on(&mut first, "/stats").await;
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    let stats: serde_json::Value = serde_json::from_str(&body).expect("JSON stats");
    assert_eq!(
        stats["stats_server"],
        serde_json::json!({
            "connections_open": 2,
            "connections_accepted": 2,
            "connections_rejected": 1,
            "connections_timed_out": 0,
            "accept_errors": 0,
        })
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_client_trickling_its_request_head_is_closed_at_the_header_read_timeout() {
    let header_read_timeout = Duration::from_millis(500);
    let (relay, address) =
        relay_with_stats_server(64, header_read_timeout, Duration::from_secs(60)).await;
    let connected = Instant::now();
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"GET /stats HTTP/1.1\r\nx-trickle: ")
        .await
        .expect("send the request line");
    // One byte of a header that never ends every 50 ms: never idle long, never done.
    let mut answer = Vec::new();
    let mut n_bytes_trickled = 0;
    let read = tokio::time::timeout(PATIENCE, async {
        loop {
            tokio::select! {
                read = reader.read_buf(&mut answer) => break read,
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    // Once the relay has closed, a write may fail; the read then reports the close.
                    if writer.write_all(b"a").await.is_ok() {
                        n_bytes_trickled += 1;
                    }
                }
            }
        }
    })
    .await
    .expect("the relay closes the connection");
    let closed_after = connected.elapsed();

    // A close with unread trickled bytes in the relay's buffer is a reset rather than a FIN: both are a close.
    match read {
        Ok(0) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }
    assert_eq!(answer, b"", "closed without an answer");
    assert!(
        closed_after >= header_read_timeout,
        "closed after {closed_after:?}"
    );
    assert!(
        n_bytes_trickled >= 3,
        "only {n_bytes_trickled} bytes trickled"
    );
    let counters = &relay.handle.registry.stats_server;
    eventually("the timeout is counted", || {
        counters.connections_timed_out.load(Ordering::Relaxed) == 1
    })
    .await;
    let stats = get_stats(address).await;
    assert_eq!(stats["stats_server"]["connections_timed_out"], 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_degraded_spool_shows_in_stats_and_health_and_a_destination_without_one_shows_null() {
    let sinks = [Sink::start().await, Sink::start().await];
    let mut config = config(&[sinks[0].address(), sinks[1].address()]);
    config.stats.address = "127.0.0.1:0".to_string();
    let relay = TestRelay::start(config).await;
    let address = relay.handle.stats_address.expect("stats server enabled");
    let get = |path: &'static str| async move {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        get_on(&mut stream, path).await
    };
    assert_eq!(
        get("/health").await,
        ("HTTP/1.1 200 OK".to_string(), "ok".to_string())
    );
    let stats = get_stats(address).await;
    assert_eq!(stats["destinations"][0]["spool"], serde_json::Value::Null);
    assert_eq!(stats["destinations"][0]["dropped"]["spool_full"], 0);
    assert_eq!(stats["destinations"][0]["dropped"]["spool_corrupt"], 0);

    // What the spool thread of the first destination writes when its disk fails.
    let spooled = relay.destination(0);
    spooled.spool_enabled.store(true, Ordering::Relaxed);
    spooled.spool_lines.store(10, Ordering::Relaxed);
    spooled.spool_degraded.store(true, Ordering::Relaxed);
    spooled.spool_write_errors.store(1, Ordering::Relaxed);

    let first = sinks[0].address().to_string();
    assert_eq!(
        get("/health").await,
        (
            "HTTP/1.1 200 OK".to_string(),
            format!("degraded\nspool degraded: {first}")
        )
    );
    let stats = get_stats(address).await;
    assert_eq!(
        stats["destinations"][0]["spool"],
        serde_json::json!({
            "bytes": 0,
            "lines": 10,
            "segments": 0,
            "replayed_lines": 0,
            "drain_eta_secs": null,
            "degraded": true,
            "write_errors": 1,
        })
    );
    assert_eq!(stats["destinations"][1]["spool"], serde_json::Value::Null);
    relay.shutdown().await;
}
