//! collectd → polymur → sink: collectd's `write_graphite` lines arrive valid and normalised.
//!
//! collectd writes every line twice, through two `write_graphite` nodes: one to polymur, one straight to a raw sink.
//! The raw sink is the record of what collectd really sent (CRLF, `nan` first samples of every counter), so the test
//! can say exactly what polymur must deliver: the same lines in the same order, CR stripped, `nan` lines dropped and
//! counted.

use std::time::Duration;

use crate::peers::{
    is_valid_normal_line, program, temp_dir, unix_now_secs, wait_until, write_file, Peer,
};
use crate::support::{self, Sink, TestRelay};

/// collectd's host name; write_graphite would turn dots into `_`.
const HOST: &str = "polymur-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collectd_lines_arrive_valid_normalised_and_in_order() {
    let collectd = program(
        "/usr/sbin/collectd",
        "apt-get install collectd-core (Debian), which ships write_graphite",
    );
    let sink = Sink::start().await;
    let raw = Sink::start().await;
    let relay = TestRelay::start(support::config(&[sink.address()])).await;
    let dir = temp_dir();
    let config = write_file(
        dir.path(),
        "collectd.conf",
        &collectd_config(dir.path(), relay.address(), raw.address()),
    );
    let mut peer = Peer::start(
        "collectd",
        &collectd,
        &["-f", "-C", config.to_str().expect("utf-8 path")],
        dir.path(),
    );

    // Two intervals at least: the first sample of every cpu counter is `nan`, the second a number.
    wait_until(
        "collectd sent a nan cpu sample and a real one",
        &mut peer,
        Duration::from_millis(50),
        || {
            let lines = raw.lines();
            let is_cpu = |line: &&String| line.contains(".cpu-");
            lines
                .iter()
                .filter(is_cpu)
                .any(|line| line.contains(" nan "))
                && lines
                    .iter()
                    .filter(is_cpu)
                    .any(|line| !line.contains(" nan "))
        },
    )
    .await;
    // SIGTERM makes collectd flush both nodes and close their connections.
    let status = peer.stop().await;
    assert!(
        status.success(),
        "collectd exited with {status}:\n{}",
        peer.output()
    );
    support::eventually("the raw sink read collectd's connection to its end", || {
        raw.n_connections_closed() == 1
    })
    .await;

    let sent = String::from_utf8(raw.bytes()).expect("collectd sends UTF-8");
    let sent_lines: Vec<&str> = sent.split_terminator('\n').collect();
    assert!(
        sent_lines.iter().all(|line| line.ends_with('\r')),
        "collectd 5.12 ends every line in CRLF; the test relies on it: {sent_lines:?}"
    );
    let n_nan = sent_lines
        .iter()
        .filter(|line| line.split(' ').nth(1) == Some("nan"))
        .count();
    let expected: Vec<&str> = sent_lines
        .iter()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| line.split(' ').nth(1) != Some("nan"))
        .collect();
    assert!(n_nan > 0, "collectd sent no nan line:\n{sent}");

    support::eventually(
        "the sink has every line collectd sent that is not nan",
        || sink.n_lines() >= expected.len(),
    )
    .await;
    let delivered_bytes = sink.bytes();
    assert!(
        !delivered_bytes.contains(&b'\r'),
        "a CR reached the destination"
    );
    let delivered = String::from_utf8(delivered_bytes).expect("polymur forwards UTF-8");
    let delivered_lines: Vec<&str> = delivered.split_terminator('\n').collect();
    assert_eq!(delivered_lines, expected);
    assert!(delivered_lines
        .iter()
        .all(|line| is_valid_normal_line(line)));
    assert_eq!(relay.invalid("nan"), n_nan as u64);
    assert_eq!(relay.lines_received(), expected.len() as u64);

    let shortterm_path = format!("collectd.{HOST}.load.load.shortterm");
    let now = unix_now_secs();
    let shortterm: Vec<(f64, i64)> = delivered_lines
        .iter()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            (fields.next() == Some(shortterm_path.as_str())).then(|| {
                let value = fields.next().expect("value").parse().expect("f64 value");
                let timestamp = fields
                    .next()
                    .expect("timestamp")
                    .parse()
                    .expect("integer seconds");
                (value, timestamp)
            })
        })
        .collect();
    assert!(
        !shortterm.is_empty(),
        "no {shortterm_path} line in:\n{delivered}"
    );
    for (value, timestamp) in shortterm {
        assert!(value >= 0.0, "load {value}");
        assert!(
            (now - timestamp).abs() < 60,
            "timestamp {timestamp}, now {now}"
        );
    }
    relay.shutdown().await;
}

/// A config with the cpu, load and memory plugins every second, written to polymur and to `raw`.
fn collectd_config(
    dir: &std::path::Path,
    relay: std::net::SocketAddr,
    raw: std::net::SocketAddr,
) -> String {
    let dir = dir.display();
    let node = |name: &str, address: std::net::SocketAddr| {
        format!(
            r#"  <Node "{name}">
    Host "{}"
    Port "{}"
    Protocol "tcp"
    Prefix "collectd."
    LogSendErrors true
  </Node>
"#,
            address.ip(),
            address.port()
        )
    };
    format!(
        r#"Hostname "{HOST}"
FQDNLookup false
BaseDir "{dir}"
PIDFile "{dir}/collectd.pid"
TypesDB "/usr/share/collectd/types.db"
Interval 1
# One write thread hands every value list to both nodes in turn, so both streams have the same order; with the
# default five, each node gets its own interleaving.
WriteThreads 1
LoadPlugin logfile
<Plugin logfile>
  LogLevel info
  File stdout
</Plugin>
LoadPlugin cpu
LoadPlugin load
LoadPlugin memory
<LoadPlugin write_graphite>
  FlushInterval 1
</LoadPlugin>
<Plugin write_graphite>
{}{}</Plugin>
"#,
        node("polymur", relay),
        node("raw", raw)
    )
}
