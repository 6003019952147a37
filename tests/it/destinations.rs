//! Destinations failing: one stalled among three, one down at start, one killed mid-stream and restarted.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::{
    self, distinct_lines, eventually, send, sorted, Sink, StalledSink, TestRelay,
};

/// A free port on 127.0.0.1 with nothing listening on it (yet).
async fn free_address() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_destination_costs_the_others_nothing_and_counts_its_drops_exactly() {
    const N_LINES: usize = 200_000;
    const QUEUE_MAX_BYTES: u64 = 1024 * 1024;
    let healthy = [Sink::start().await, Sink::start().await];
    let stalled = StalledSink::start().await;
    let mut config = support::config(&[
        healthy[0].address(),
        stalled.address(),
        healthy[1].address(),
    ]);
    config.destination.queue_max_bytes = QUEUE_MAX_BYTES;
    // Longer than the test: the stalled connection stays, so its queue fills and stays full.
    config.destination.write_timeout = Duration::from_secs(600);
    config.shutdown_timeout = Duration::from_secs(1);
    let relay = TestRelay::start(config).await;

    let input = distinct_lines(0, N_LINES);
    send(relay.address(), &input).await;
    eventually("healthy sinks have every line", || {
        healthy.iter().all(|sink| sink.n_lines() >= N_LINES)
    })
    .await;
    for sink in &healthy {
        assert_eq!(sink.sorted_lines(), sorted(&input));
    }
    assert_eq!(relay.lines_received(), N_LINES as u64);

    let destination = relay.destination(1);
    let accounted = || {
        destination.sent_lines.load(Ordering::Relaxed)
            + destination.dropped_total()
            + destination.queued_lines.load(Ordering::Relaxed) as u64
    };
    eventually("every line is sent, dropped or queued", || {
        accounted() == N_LINES as u64
    })
    .await;
    assert!(
        destination.dropped_total() > 0,
        "the stalled queue never overflowed"
    );
    assert!(destination.queued_bytes.load(Ordering::Relaxed) as u64 <= QUEUE_MAX_BYTES);
    for index in [0, 2] {
        assert_eq!(relay.destination(index).dropped_total(), 0);
    }

    let sent = destination.sent_lines.load(Ordering::Relaxed) as usize;
    let queued = destination.queued_lines.load(Ordering::Relaxed) as usize;
    relay.shutdown().await;
    let n_read = stalled.drain_lines().await;
    assert!(
        n_read >= sent && n_read <= sent + queued,
        "read {n_read}, sent {sent}, queued {queued}"
    );
}

#[tokio::test]
async fn a_destination_down_at_start_gets_everything_queued_meanwhile() {
    let address = free_address().await;
    let relay = TestRelay::start(support::config(&[address])).await;
    let input = distinct_lines(1, 5_000);
    send(relay.address(), &input).await;
    let destination = relay.destination(0);
    eventually("lines queued while down", || {
        destination.queued_lines.load(Ordering::Relaxed) == 5_000
    })
    .await;
    assert!(destination.connect_failures.load(Ordering::Relaxed) > 0);

    let sink = Sink::start_on(address).await;
    eventually("queued lines delivered", || sink.n_lines() >= 5_000).await;
    assert_eq!(sink.sorted_lines(), sorted(&input));
    assert_eq!(destination.dropped_total(), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_destination_killed_and_restarted_gets_the_lines_from_before_and_after() {
    let first = Sink::start().await;
    let address = first.address();
    let relay = TestRelay::start(support::config(&[address])).await;

    let before = distinct_lines(1, 3_000);
    send(relay.address(), &before).await;
    eventually("lines before the kill arrive", || first.n_lines() >= 3_000).await;
    let mut received: BTreeSet<String> = first.lines().into_iter().collect();
    first.kill().await;

    let destination = relay.destination(0);
    eventually("the relay notices the lost connection", || {
        !destination.connected.load(Ordering::Relaxed)
    })
    .await;
    let after = distinct_lines(2, 3_000);
    send(relay.address(), &after).await;
    eventually("lines after the kill are queued", || {
        destination.queued_lines.load(Ordering::Relaxed) == 3_000
    })
    .await;

    let second = Sink::start_on(address).await;
    eventually("lines after the kill arrive", || second.n_lines() >= 3_000).await;
    received.extend(second.lines());
    let expected: BTreeSet<String> = sorted(&before).into_iter().chain(sorted(&after)).collect();
    assert_eq!(received, expected);
    assert_eq!(destination.dropped_total(), 0);
    assert!(destination.disconnects.load(Ordering::Relaxed) >= 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_destination_that_never_reads_is_reconnected_after_the_write_timeout() {
    let stalled = StalledSink::start().await;
    let mut config = support::config(&[stalled.address()]);
    config.destination.write_timeout = Duration::from_millis(300);
    let relay = TestRelay::start(config).await;
    // Far more than the socket buffers on both sides hold, so a write blocks.
    send(relay.address(), &distinct_lines(3, 200_000)).await;
    let destination = relay.destination(0);
    eventually("a write timed out and the writer reconnected", || {
        destination.write_timeouts.load(Ordering::Relaxed) >= 1
            && destination.connects.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert!(destination.disconnects.load(Ordering::Relaxed) >= 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn the_block_policy_slows_everyone_to_the_slowest_destination_and_loses_nothing() {
    let fast = Sink::start().await;
    // About 2 MB/s, and a queue of 64 KiB: with `drop_newest` it would stop pacing and drop lines once the socket
    // buffers on the way (a few MB) are full.
    let slow = Sink::start_slow(16 * 1024, Duration::from_millis(8)).await;
    let mut config = support::config(&[fast.address(), slow.address()]);
    config.destination.overflow = polymur::config::OverflowPolicy::Block;
    config.destination.queue_max_bytes = 64 * 1024;
    let relay = TestRelay::start(config).await;
    let input = distinct_lines(4, 150_000);
    send(relay.address(), &input).await;
    eventually("the slow destination gets every line", || {
        slow.n_lines() >= 150_000
    })
    .await;
    assert_eq!(slow.sorted_lines(), sorted(&input));
    assert_eq!(fast.sorted_lines(), sorted(&input));
    assert_eq!(relay.destination(0).dropped_total(), 0);
    assert_eq!(relay.destination(1).dropped_total(), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_black_holed_destination_fails_its_connect_after_the_connect_timeout() {
    // A listener that never accepts, with its backlog filled: later connects stay in SYN-SENT.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let listener = socket.listen(1).expect("listen");
    let address = listener.local_addr().expect("address");
    let mut fillers = Vec::new();
    for _ in 0..2 {
        fillers.push(
            tokio::net::TcpStream::connect(address)
                .await
                .expect("fill the backlog"),
        );
    }
    let mut config = support::config(&[address]);
    config.destination.connect_timeout = Duration::from_millis(200);
    let relay = TestRelay::start(config).await;
    let destination = relay.destination(0);
    eventually("connects time out", || {
        destination.connect_failures.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert_eq!(destination.connects.load(Ordering::Relaxed), 0);
    relay.shutdown().await;
    drop(listener);
}

#[tokio::test]
async fn shutdown_counts_what_a_down_destination_never_took() {
    let address = free_address().await;
    let sink = Sink::start().await;
    let mut config = support::config(&[address, sink.address()]);
    config.shutdown_timeout = Duration::from_millis(500);
    let relay = TestRelay::start(config).await;
    send(relay.address(), &distinct_lines(5, 100)).await;
    eventually("the live destination has every line", || {
        sink.n_lines() == 100
    })
    .await;
    let registry = std::sync::Arc::clone(&relay.handle.registry);
    let report = relay.shutdown().await;
    assert_eq!(report.lines_lost, 100);
    let down = &registry.destinations[0];
    assert_eq!(
        down.dropped_lines[polymur::stats::DropReason::Shutdown as usize].load(Ordering::Relaxed),
        100
    );
    assert_eq!(down.queued_lines.load(Ordering::Relaxed), 0);
    assert_eq!(registry.destinations[1].dropped_total(), 0);
}

#[tokio::test]
async fn a_destination_that_closes_every_connection_at_once_is_retried_with_growing_delays() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let closer = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let mut config = support::config(&[address]);
    config.destination.retry_interval = Duration::from_secs(5);
    let started = tokio::time::Instant::now();
    let relay = TestRelay::start(config).await;
    let destination = relay.destination(0);
    eventually("five connections", || {
        destination.connects.load(Ordering::Relaxed) >= 5
    })
    .await;
    // Delays of 100, 200, 400 and 800 ms, each with jitter down to half: at least 750 ms for the fifth connect.
    // Without growth the fifth would come after about 200 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(750),
        "reconnected after {:?}",
        started.elapsed()
    );
    relay.shutdown().await;
    closer.abort();
}
