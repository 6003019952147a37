//! Memory of the real binary against what its queues count: a destination down, many short connections.
//!
//! Each relay runs as a child process so its resident set (`/proc/PID/status`) is its own. The bound asserted is the
//! issue's promise: what a queue counts is what it keeps alive, so RSS grows by about `queued_bytes`, never by a
//! multiple of it (before the fix, one-line connections each left a 16 KiB batch allocation queued: 160 bytes of
//! memory per byte counted).

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};

use crate::stats_server::stats_until;
use crate::support::process::RelayProcess;

/// RSS the relay may have beyond what its queue counts: runtime, allocator arenas, buffers of the connections in
/// progress, the test's stats requests. Measured about 5 MiB in a debug build.
const FIXED_ALLOWANCE_BYTES: u64 = 16 * 1024 * 1024;

#[tokio::test]
async fn one_line_connections_to_a_dead_destination_grow_memory_by_what_the_queue_counts() {
    check_memory_follows_the_queue(20_000, 1, "4MiB").await;
}

#[tokio::test]
async fn bulk_connections_to_a_dead_destination_keep_memory_within_the_queue_bound() {
    check_memory_follows_the_queue(40, 20_000, "4MiB").await;
}

async fn check_memory_follows_the_queue(
    n_connections: usize,
    lines_per_connection: usize,
    queue_max: &str,
) {
    let dead = dead_address();
    let destination = dead.to_string();
    let mut relay = RelayProcess::start(&[
        "-destinations",
        &destination,
        "-queue-max-bytes",
        queue_max,
        "-stats-addr",
        "127.0.0.1:0",
    ]);
    let stats_line = relay.wait_for_log("Runstats started: ");
    let stats_address: SocketAddr = stats_line
        .rsplit("Runstats started: ")
        .next()
        .and_then(|address| address.trim().parse().ok())
        .expect("stats address in the log line");
    let rss_at_start = relay.rss_bytes();

    let listen_address = relay.listen_address;
    tokio::task::spawn_blocking(move || {
        for connection in 0..n_connections {
            let mut body = String::new();
            for line in 0..lines_per_connection {
                body.push_str(&format!("memory.c{connection}.l{line} {line} 1700000000\n"));
            }
            let mut stream = TcpStream::connect(listen_address).expect("connect");
            stream.write_all(body.as_bytes()).expect("send");
        }
    })
    .await
    .expect("sender");

    let n_lines = (n_connections * lines_per_connection) as u64;
    let stats = stats_until(
        stats_address,
        "every line queued or counted as dropped",
        |stats| {
            let destination = &stats["destinations"][0];
            let dropped: u64 = destination["dropped"]
                .as_object()
                .expect("dropped map")
                .values()
                .map(|count| count.as_u64().expect("count"))
                .sum();
            destination["queued_lines"].as_u64().expect("queued_lines") + dropped == n_lines
        },
    )
    .await;
    let queued_bytes = stats["destinations"][0]["queued_bytes"]
        .as_u64()
        .expect("queued_bytes");
    let rss = relay.rss_bytes();
    eprintln!(
        "{n_connections} connections of {lines_per_connection} lines: RSS {rss_at_start} -> {rss} bytes, \
         queued_bytes {queued_bytes}"
    );
    assert!(queued_bytes > 0);
    assert!(
        queued_bytes <= parse_size(queue_max),
        "queued_bytes {queued_bytes} beyond the bound {queue_max}"
    );
    assert!(
        rss <= rss_at_start + queued_bytes + FIXED_ALLOWANCE_BYTES,
        "RSS grew from {rss_at_start} to {rss} bytes with {queued_bytes} bytes queued"
    );
}

/// An address nothing listens on: bound, then closed.
fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

fn parse_size(text: &str) -> u64 {
    let mebibytes: u64 = text.trim_end_matches("MiB").parse().expect("size in MiB");
    mebibytes * 1024 * 1024
}
