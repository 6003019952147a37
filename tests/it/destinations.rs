//! Destinations failing: one stalled among three, one down at start, one killed mid-stream and restarted, one slow
//! reader, one first address that black-holes the connect.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use polymur::batch::Batch;
use polymur::config::OverflowPolicy;
use polymur::destination::connect::Resolving;
use polymur::destination::writer::{self, WriterSettings};
use polymur::destination::{ConnectSettings, Health, Queue, QueueLimits, Resolve};
use polymur::stats::DestinationStats;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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

/// A listener that never accepts, with its backlog filled: connects to it stay in SYN-SENT (the kernel drops their
/// SYNs). Keep it alive for as long as the black hole is needed.
struct BlackHole {
    address: SocketAddr,
    _listener: tokio::net::TcpListener,
    _fillers: Vec<tokio::net::TcpStream>,
}

impl BlackHole {
    async fn start() -> BlackHole {
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
        BlackHole {
            address,
            _listener: listener,
            _fillers: fillers,
        }
    }
}

#[tokio::test]
async fn a_black_holed_destination_fails_its_connect_after_the_connect_timeout() {
    let black_hole = BlackHole::start().await;
    let address = black_hole.address;
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
    drop(black_hole);
}

/// A resolver that gives fixed addresses, in order, and counts its calls.
#[derive(Debug)]
struct FixedResolver {
    addresses: Vec<SocketAddr>,
    n_calls: AtomicUsize,
}

impl Resolve for FixedResolver {
    fn resolve<'a>(&'a self, _address: &'a str) -> Resolving<'a> {
        self.n_calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(self.addresses.clone()) })
    }
}

#[tokio::test]
async fn a_first_address_that_black_holes_the_connect_costs_its_own_timeout_and_no_more() {
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    const N_LINES: usize = 100;
    let black_hole = BlackHole::start().await;
    let sink = Sink::start().await;
    let resolver = Arc::new(FixedResolver {
        addresses: vec![black_hole.address, sink.address()],
        n_calls: AtomicUsize::new(0),
    });
    let stats = DestinationStats::new("graphite.test:2003");
    let limits = QueueLimits {
        max_lines: 1_000_000,
        max_bytes: 1 << 20,
        overflow: OverflowPolicy::DropNewest,
    };
    let room = Arc::new(Notify::new());
    let health = Arc::new(Health::new(
        Arc::clone(&stats),
        limits.max_bytes / 4,
        Arc::clone(&room),
    ));
    let queue = Arc::new(Queue::new(limits, Arc::clone(&stats), room));
    let input = distinct_lines(7, N_LINES);
    queue.push(Batch::new(Bytes::from(input.clone()), N_LINES as u32));
    let settings = WriterSettings {
        name: "graphite.test:2003".to_string(),
        connect: ConnectSettings {
            address: "graphite.test:2003".to_string(),
            resolver: Arc::clone(&resolver) as Arc<dyn Resolve>,
            connect_timeout: CONNECT_TIMEOUT,
            tcp_user_timeout: Duration::from_secs(5),
            tcp_keepalive_idle: Duration::from_secs(10),
            tcp_keepalive_interval: Duration::from_secs(5),
        },
        write_timeout: Duration::from_secs(5),
        retry_interval: Duration::from_secs(30),
    };
    let started = tokio::time::Instant::now();
    let writer = tokio::spawn(writer::run(
        Arc::clone(&queue),
        health,
        settings,
        CancellationToken::new(),
    ));
    eventually("the lines arrive through the second address", || {
        sink.n_lines() >= N_LINES
    })
    .await;
    let elapsed = started.elapsed();
    // The first address was tried and given its whole timeout, and the second was tried at once after it, in the
    // same attempt: before, one bound on the whole attempt let the first address starve the second forever.
    assert!(
        elapsed >= CONNECT_TIMEOUT && elapsed < 2 * CONNECT_TIMEOUT,
        "connected after {elapsed:?}"
    );
    assert_eq!(stats.connects.load(Ordering::Relaxed), 1);
    assert_eq!(stats.connect_failures.load(Ordering::Relaxed), 0);
    assert_eq!(resolver.n_calls.load(Ordering::SeqCst), 1);
    assert_eq!(sink.sorted_lines(), sorted(&input));
    queue.close();
    writer.await.expect("the writer drains and ends");
    assert_eq!(stats.sent_lines.load(Ordering::Relaxed), N_LINES as u64);
    drop(black_hole);
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
    let down = &registry.destinations()[0];
    assert_eq!(
        down.dropped_lines[polymur::stats::DropReason::Shutdown as usize].load(Ordering::Relaxed),
        100
    );
    assert_eq!(down.queued_lines.load(Ordering::Relaxed), 0);
    assert_eq!(registry.destinations()[1].dropped_total(), 0);
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

#[tokio::test]
async fn a_slow_destination_is_not_a_dead_one_no_reconnect_no_drop_no_duplicate() {
    // About 3 s of lines at the sink's 100 KiB/s.
    const N_LINES: usize = 7_000;
    let slow = SlowSink::start();
    let mut config = support::config(&[slow.address()]);
    // Far shorter than what a send buffer takes to drain at 100 KiB/s (16 KiB take 160 ms at the least): a write
    // waits longer than this for room, while the destination keeps acknowledging what it reads.
    config.destination.write_timeout = Duration::from_millis(100);
    let relay = TestRelay::start(config).await;
    let input = distinct_lines(6, N_LINES);
    send(relay.address(), &input).await;
    eventually("the slow destination reads every line", || {
        slow.n_lines() >= N_LINES
    })
    .await;
    let destination = relay.destination(0);
    eventually("and acknowledges them", || {
        destination.sent_lines.load(Ordering::Relaxed) == N_LINES as u64
    })
    .await;
    assert_eq!(slow.n_connections(), 1);
    assert_eq!(destination.connects.load(Ordering::Relaxed), 1);
    assert_eq!(destination.disconnects.load(Ordering::Relaxed), 0);
    assert_eq!(destination.write_timeouts.load(Ordering::Relaxed), 0);
    assert_eq!(destination.resent_lines.load(Ordering::Relaxed), 0);
    assert_eq!(destination.dropped_total(), 0);
    assert_eq!(slow.n_lines(), N_LINES, "no line twice");
    assert_eq!(slow.sorted_lines(), sorted(&input));
    relay.shutdown().await;
}

/// A destination that reads about 100 KiB/s through a small receive buffer, so that the relay's writes wait for
/// room in its send buffer for far longer than a fast destination ever makes them.
struct SlowSink {
    address: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    n_connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl SlowSink {
    /// Bytes per read; with [`SlowSink::READ_PAUSE`], about 100 KiB/s.
    const READ_BYTES: usize = 2 * 1024;
    const READ_PAUSE: Duration = Duration::from_millis(20);
    /// `SO_RCVBUF` asked for; the kernel doubles it, to about 8 KiB.
    const RECEIVE_BUFFER_BYTES: usize = 4 * 1024;

    fn start() -> SlowSink {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        // Set on the listener, so every accepted socket has it from the start (the window is set at the handshake).
        socket
            .set_recv_buffer_size(Self::RECEIVE_BUFFER_BYTES)
            .expect("rcvbuf");
        let address: SocketAddr = "127.0.0.1:0".parse().expect("address");
        socket.bind(&address.into()).expect("bind");
        socket.listen(16).expect("listen");
        let listener: std::net::TcpListener = socket.into();
        let address = listener.local_addr().expect("address");
        let sink = SlowSink {
            address,
            received: Arc::default(),
            n_connections: Arc::default(),
            stop: Arc::default(),
        };
        let received = Arc::clone(&sink.received);
        let n_connections = Arc::clone(&sink.n_connections);
        let stop = Arc::clone(&sink.stop);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                n_connections.fetch_add(1, Ordering::SeqCst);
                let received = Arc::clone(&received);
                std::thread::spawn(move || {
                    let mut buf = [0u8; Self::READ_BYTES];
                    // Only whole lines are kept, so a connection cut mid-line does not glue onto the next one.
                    let mut partial = Vec::new();
                    // The pause is the fault under test (a slow reader), not a wait for something to happen.
                    loop {
                        std::thread::sleep(Self::READ_PAUSE);
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                partial.extend_from_slice(&buf[..n]);
                                if let Some(last_lf) = memchr::memrchr(b'\n', &partial) {
                                    received.lock().extend(partial.drain(..=last_lf));
                                }
                            }
                        }
                    }
                });
            }
        });
        sink
    }

    fn address(&self) -> SocketAddr {
        self.address
    }

    fn n_connections(&self) -> usize {
        self.n_connections.load(Ordering::SeqCst)
    }

    /// Whole lines read so far, over every connection, in arrival order.
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.received.lock())
            .lines()
            .map(ToString::to_string)
            .collect()
    }

    fn n_lines(&self) -> usize {
        memchr::memchr_iter(b'\n', &self.received.lock()).count()
    }

    fn sorted_lines(&self) -> Vec<String> {
        let mut lines = self.lines();
        lines.sort_unstable();
        lines
    }
}

impl Drop for SlowSink {
    fn drop(&mut self) {
        // Wake the acceptor so that it sees `stop` and ends.
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.address);
    }
}
