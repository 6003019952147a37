//! carbon-c-relay ⇄ polymur: wire compatibility both ways, as the exact multiset of 50,000 distinct lines.
//!
//! carbon-c-relay 3.7.3 runs with `-s` (submission mode: none of its own `carbon.relays.*` metrics in the stream) and
//! with room to hold the burst (`-q 400000 -T 5000`): its defaults drop lines under pressure, which is not what these
//! tests are about. The `listen` line in its config sets its address (it then ignores `-p`).

use std::net::SocketAddr;
use std::path::Path;

use crate::peers::{free_tcp_port, program, temp_dir, write_file, Peer};
use crate::support::{self, distinct_lines, eventually, send, sorted, Sink, TestRelay};

const N_LINES: usize = 50_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carbon_c_relay_forwarding_into_polymur_delivers_the_exact_multiset() {
    let sink = Sink::start().await;
    let relay = TestRelay::start(support::config(&[sink.address()])).await;
    let dir = temp_dir();
    let (mut peer, carbon_c_relay) = start_carbon_c_relay(dir.path(), relay.address());
    peer.wait_for_port(carbon_c_relay.port()).await;

    let input = distinct_lines(0, N_LINES);
    send(carbon_c_relay, &input).await;
    eventually("polymur's destination has every line", || {
        sink.n_lines() >= N_LINES
    })
    .await;
    peer.stop().await;
    assert_eq!(sink.sorted_lines(), sorted(&input));
    assert_eq!(relay.lines_received(), N_LINES as u64);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polymur_forwarding_into_carbon_c_relay_delivers_the_exact_multiset() {
    let sink = Sink::start().await;
    let dir = temp_dir();
    let (mut peer, carbon_c_relay) = start_carbon_c_relay(dir.path(), sink.address());
    peer.wait_for_port(carbon_c_relay.port()).await;
    let relay = TestRelay::start(support::config(&[carbon_c_relay])).await;

    let input = distinct_lines(1, N_LINES);
    send(relay.address(), &input).await;
    eventually("carbon-c-relay's destination has every line", || {
        sink.n_lines() >= N_LINES
    })
    .await;
    assert_eq!(sink.sorted_lines(), sorted(&input));
    relay.shutdown().await;
    peer.stop().await;
}

/// Starts carbon-c-relay on a free port, forwarding every line to `destination`; returns it and its address.
fn start_carbon_c_relay(dir: &Path, destination: SocketAddr) -> (Peer, SocketAddr) {
    let carbon_c_relay = program(
        "/usr/bin/carbon-c-relay",
        "apt-get install carbon-c-relay (Debian)",
    );
    let address = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let config = write_file(
        dir,
        "relay.conf",
        &format!(
            "listen type linemode {address} proto tcp;\n\
             cluster destination forward {destination};\n\
             match * send to destination stop;\n"
        ),
    );
    let peer = Peer::start(
        "carbon-c-relay",
        &carbon_c_relay,
        &[
            "-f",
            config.to_str().expect("utf-8 path"),
            "-s",
            "-w",
            "2",
            "-q",
            "400000",
            "-T",
            "5000",
        ],
        dir,
    );
    (peer, address)
}
