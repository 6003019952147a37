//! statsd → polymur → sink: the real statsd daemon (node, 0.9.0) flushes through its graphite backend into polymur,
//! and the values statsd computed from UDP packets arrive.
//!
//! statsd 0.9 keeps the legacy namespace by default: a counter `c` becomes `stats.c` (per second) and
//! `stats_counts.c` (the count), a gauge `stats.gauges.g`, a timer `stats.timers.t.{lower,upper,count,sum,mean,...}`.
//! It flushes every counter it has seen on every flush, as 0 when nothing came in, and opens a new TCP connection to
//! graphite for each flush. All test metrics go in one UDP packet, so they land in one flush and the values are exact.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::peers::{
    free_tcp_port, free_udp_port, is_valid_normal_line, program, temp_dir, unix_now_secs,
    wait_until, write_file, Peer,
};
use crate::support::{self, Sink, TestRelay, PATIENCE};

/// One packet: three increments of 5, a counter sampled at 10 %, a gauge and two timings.
const PACKET: &str = "test.counter:5|c\ntest.counter:5|c\ntest.counter:5|c\n\
                      test.sampled:1|c|@0.1\ntest.gauge:42|g\ntest.timer:100|ms\ntest.timer:300|ms";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statsd_flushes_the_values_it_computed_through_polymur() {
    let statsd = program(
        "statsd",
        "npm install -g statsd@0.9.0 (puts `statsd` on PATH; it runs under the machine's node)",
    );
    let sink = Sink::start().await;
    let relay = TestRelay::start(support::config(&[sink.address()])).await;
    let dir = temp_dir();
    let udp_port = free_udp_port();
    let mgmt_port = free_tcp_port();
    let config = write_file(
        dir.path(),
        "config.js",
        &format!(
            r#"{{
  address: "127.0.0.1",
  port: {udp_port},
  mgmt_address: "127.0.0.1",
  mgmt_port: {mgmt_port},
  flushInterval: 1000,
  graphiteHost: "{}",
  graphitePort: {}
}}
"#,
            relay.address().ip(),
            relay.address().port()
        ),
    );
    let mut peer = Peer::start(
        "statsd",
        &statsd,
        &[config.to_str().expect("utf-8 path")],
        dir.path(),
    );
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    let statsd_udp = SocketAddr::from(([127, 0, 0, 1], udp_port));
    let mgmt = SocketAddr::from(([127, 0, 0, 1], mgmt_port));

    // statsd binds UDP and its management port asynchronously: send a gauge until the management port lists it, so
    // the test packet is not sent into a port nobody reads yet.
    let deadline = Instant::now() + PATIENCE;
    loop {
        udp.send_to(b"peers.ready:1|g", statsd_udp)
            .expect("send udp");
        if management_command(mgmt, "gauges")
            .await
            .is_some_and(|gauges| gauges.contains("peers.ready"))
        {
            break;
        }
        peer.assert_running();
        assert!(
            Instant::now() < deadline,
            "statsd never saw a packet:\n{}",
            peer.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    udp.send_to(PACKET.as_bytes(), statsd_udp)
        .expect("send udp");

    // A flush with the packet's values, and a later one where the counters are back to 0.
    wait_until(
        "two flushes with test.counter reach the sink",
        &mut peer,
        Duration::from_millis(20),
        || {
            let counts = values(&sink.lines(), "stats_counts.test.counter");
            counts.iter().any(|(value, _)| value == "15")
                && counts.last().is_some_and(|(value, _)| value == "0")
        },
    )
    .await;
    peer.stop().await;

    let lines = sink.lines();
    assert!(
        lines.iter().all(|line| is_valid_normal_line(line)),
        "{lines:#?}"
    );
    let (_, timestamp) = check_one_nonzero(&lines, "stats_counts.test.counter", "15");
    let now = unix_now_secs();
    assert!(
        (now - timestamp).abs() < 60,
        "timestamp {timestamp}, now {now}"
    );
    // One flush: every value from the packet carries that flush's timestamp.
    for (path, value) in [
        ("stats.test.counter", "15"),
        ("stats_counts.test.sampled", "10"),
        ("stats.test.sampled", "10"),
        ("stats.timers.test.timer.lower", "100"),
        ("stats.timers.test.timer.upper", "300"),
        ("stats.timers.test.timer.count", "2"),
        ("stats.timers.test.timer.count_ps", "2"),
        ("stats.timers.test.timer.sum", "400"),
        ("stats.timers.test.timer.mean", "200"),
        ("stats.timers.test.timer.median", "200"),
        ("stats.timers.test.timer.std", "100"),
        ("stats.timers.test.timer.upper_90", "300"),
        ("stats.timers.test.timer.mean_90", "200"),
    ] {
        assert_eq!(
            check_one_nonzero(&lines, path, value),
            (value.to_string(), timestamp),
            "{path}"
        );
    }
    let gauges = values(&lines, "stats.gauges.test.gauge");
    assert!(
        gauges.contains(&("42".to_string(), timestamp)),
        "{gauges:?}"
    );
    assert!(gauges.iter().all(|(value, _)| value == "42"), "{gauges:?}");
    assert_eq!(relay.lines_received(), lines.len() as u64);
    relay.shutdown().await;
}

/// The `(value, timestamp)` of every line with `path`, in arrival order.
fn values(lines: &[String], path: &str) -> Vec<(String, i64)> {
    lines
        .iter()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            (fields.next() == Some(path)).then(|| {
                let value = fields.next().expect("value").to_string();
                let timestamp = fields
                    .next()
                    .expect("timestamp")
                    .parse()
                    .expect("integer seconds");
                (value, timestamp)
            })
        })
        .collect()
}

/// Asserts that `path` arrived with exactly one value other than 0, equal to `expected`, and returns it.
fn check_one_nonzero(lines: &[String], path: &str, expected: &str) -> (String, i64) {
    let all = values(lines, path);
    let nonzero: Vec<(String, i64)> = all
        .iter()
        .filter(|(value, _)| value != "0")
        .cloned()
        .collect();
    assert_eq!(
        nonzero.len(),
        1,
        "{path} should be non-zero in one flush: {all:?}"
    );
    assert_eq!(nonzero[0].0, expected, "{path}: {all:?}");
    nonzero[0].clone()
}

/// Runs a command on statsd's management port and returns what it answered before `END`, or `None` if it is not up.
async fn management_command(mgmt: SocketAddr, command: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(mgmt).await.ok()?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .await
        .ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        while !answer.ends_with(b"END\n\n") {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(5), read_all)
        .await
        .ok()??;
    Some(String::from_utf8_lossy(&answer).into_owned())
}
