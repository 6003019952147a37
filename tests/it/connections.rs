//! Many connections: thousands at once, the connection cap, idle connections closed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, eventually, Sink, TestRelay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_connections_are_served_and_the_cap_rejects_the_next_ones() {
    const N_CONNECTIONS: usize = 5_000;
    const N_EXTRA: usize = 20;
    // Both ends of every connection live in this process.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let sink = Sink::start().await;
    let mut config = support::config(&[sink.address()]);
    config.listen.max_connections = N_CONNECTIONS;
    let relay = TestRelay::start(config).await;
    let stats = &relay.handle.registry.relay;

    let mut clients = Vec::with_capacity(N_CONNECTIONS);
    for client in 0..N_CONNECTIONS {
        let mut stream = TcpStream::connect(relay.address()).await.expect("connect");
        stream
            .write_all(format!("conn.c{client}.first 1 1700000000\n").as_bytes())
            .await
            .expect("write");
        clients.push(stream);
    }
    eventually("every connection is open", || {
        stats.connections_open.load(Ordering::Relaxed) == N_CONNECTIONS as i64
    })
    .await;
    eventually("every first line arrives", || {
        sink.n_lines() == N_CONNECTIONS
    })
    .await;

    for _ in 0..N_EXTRA {
        let mut extra = TcpStream::connect(relay.address()).await.expect("connect");
        let mut buf = [0u8; 16];
        // The relay accepts and closes at once: EOF (or a reset), not a hang.
        let read = tokio::time::timeout(support::PATIENCE, extra.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    assert_eq!(
        stats.connections_rejected.load(Ordering::Relaxed),
        N_EXTRA as u64
    );

    for (client, stream) in clients.iter_mut().enumerate() {
        stream
            .write_all(format!("conn.c{client}.second 2 1700000000\n").as_bytes())
            .await
            .expect("write on an open connection");
    }
    eventually("every second line arrives", || {
        sink.n_lines() == 2 * N_CONNECTIONS
    })
    .await;
    drop(clients);
    eventually("every connection is closed", || {
        stats.connections_open.load(Ordering::Relaxed) == 0
    })
    .await;
    assert_eq!(
        stats.connections_accepted.load(Ordering::Relaxed),
        N_CONNECTIONS as u64
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_by_the_relay() {
    let sink = Sink::start().await;
    let mut config = support::config(&[sink.address()]);
    config.listen.idle_timeout = Duration::from_millis(200);
    let relay = TestRelay::start(config).await;
    send_and_wait_for_close(&relay, b"a.b 1 1700000000\n").await;
    assert_eq!(
        relay
            .handle
            .registry
            .relay
            .connections_idle_closed
            .load(Ordering::Relaxed),
        1
    );
    eventually("the line arrives", || sink.n_lines() == 1).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_slowloris_partial_line_is_dropped_and_its_connection_closed() {
    let sink = Sink::start().await;
    let mut config = support::config(&[sink.address()]);
    config.listen.partial_line_timeout = Duration::from_millis(200);
    let relay = TestRelay::start(config).await;
    send_and_wait_for_close(&relay, b"a.b 1 1700000000\nslow").await;
    assert_eq!(relay.invalid("partial_timeout"), 1);
    eventually("the complete line arrives", || sink.n_lines() == 1).await;
    relay.shutdown().await;
}

/// Connects, sends `bytes`, and waits until the relay closes the connection cleanly (EOF, not a reset or a hang).
async fn send_and_wait_for_close(relay: &TestRelay, bytes: &[u8]) {
    let mut stream = TcpStream::connect(relay.address()).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(support::PATIENCE, stream.read(&mut buf))
        .await
        .expect("closed by the relay");
    assert!(matches!(read, Ok(0)), "{read:?}");
}
