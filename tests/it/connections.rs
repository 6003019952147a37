//! Many connections: thousands at once, the connection cap, idle connections closed, a relay out of descriptors.

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::process::RelayProcess;
use crate::support::{self, eventually, send, Sink, TestRelay};

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

#[tokio::test]
async fn out_of_descriptors_the_relay_backs_off_without_spinning_and_serves_the_waiting_clients_once_they_free_up(
) {
    const N_WAITING: usize = 20;
    // Long enough for a spinning accept loop to show as a busy core, short enough for the test suite.
    const STARVED: Duration = Duration::from_secs(2);
    let sink = Sink::start().await;
    let destination = sink.address().to_string();
    let mut relay =
        RelayProcess::start(&["-destinations", &destination, "-stats-addr", "127.0.0.1:0"]);
    send(relay.listen_address, b"warm.up 1 1700000000\n").await;
    eventually("the writer is connected and delivering", || {
        sink.n_lines() == 1
    })
    .await;

    // RLIMIT_NOFILE bounds descriptor numbers, not counts: with the limit just above the lowest free number, the
    // relay has exactly one descriptor to give, and a freed one is below the limit again.
    let open = relay.open_descriptors();
    let lowest_free = (0..)
        .find(|number| !open.contains(number))
        .expect("a free number");
    relay.limit_open_files(lowest_free + 1);
    let mut held = std::net::TcpStream::connect(relay.listen_address).expect("connect");
    held.write_all(b"held 1 1700000000\n").expect("write");
    eventually("the held connection is served", || sink.n_lines() == 2).await;

    let starved_at = std::time::Instant::now();
    for client in 0..N_WAITING {
        let mut waiting = std::net::TcpStream::connect(relay.listen_address)
            .expect("the kernel's backlog takes it");
        waiting
            .write_all(format!("waiting.c{client} 1 1700000000\n").as_bytes())
            .expect("write");
        // Closed by the client: the relay gets its line and its EOF once it can accept it.
    }
    relay.wait_for_log("cannot accept connections, backing off");
    let cpu_before = relay.cpu_time();
    // A measurement window, not a wait for an event: the relay must stay quiet for all of it.
    tokio::time::sleep(STARVED).await;
    let cpu_starved = relay.cpu_time() - cpu_before;
    assert!(
        cpu_starved < STARVED / 5,
        "{cpu_starved:?} of CPU in {STARVED:?} without descriptors"
    );
    assert_eq!(
        sink.n_lines(),
        2,
        "a waiting client was served without a descriptor"
    );

    // The relay reads EOF on the held connection and closes it: one descriptor is free again.
    drop(held);
    eventually("every waiting client is served", || {
        sink.n_lines() == 2 + N_WAITING
    })
    .await;
    let starved_for = starved_at.elapsed();
    let mut expected = vec![
        "held 1 1700000000".to_string(),
        "warm.up 1 1700000000".to_string(),
    ];
    expected.extend((0..N_WAITING).map(|client| format!("waiting.c{client} 1 1700000000")));
    expected.sort();
    assert_eq!(sink.sorted_lines(), expected);

    let stats = relay.stats();
    let connections = &stats["connections"];
    assert_eq!(connections["accepted"], 2 + N_WAITING as u64, "{stats}");
    let accept_errors = connections["accept_errors"]
        .as_u64()
        .expect("accept_errors");
    // One try per 50 ms backoff while starved, not a spin.
    let most_tries = starved_for.as_millis() as u64 / 50 + 1;
    assert!(
        (1..=most_tries).contains(&accept_errors),
        "{accept_errors} accept errors in {starved_for:?}"
    );
}
