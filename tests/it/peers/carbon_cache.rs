//! polymur → carbon-cache → whisper: lines relayed to a real carbon-cache are stored, value for value and second for
//! second, and what polymur must change or refuse never costs carbon-cache its connection.
//!
//! carbon-cache 1.1.7 closes a connection on a line longer than 16,384 bytes and loses the rest of that read, so the
//! long line sits between valid lines on one connection: polymur refuses it, and the lines after it are stored. The
//! whisper files are read back with Debian's `/usr/bin/python3` and its `whisper` module (the `python3` on `PATH` may
//! be a build that cannot import it).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::peers::{free_tcp_port, program, temp_dir, unix_now_secs, wait_until, write_file, Peer};
use crate::support::{self, send, TestRelay};

/// Values that survive a double exactly, in the spellings carbon-cache's `float()` accepts.
const VALUES: [&str; 8] = [
    "1.5",
    "-2.25",
    "0",
    "42",
    "3e10",
    "1e-3",
    "123456.789",
    "-0.0001",
];

/// Reads every whisper file under a directory: prints `relative/path.wsp timestamp repr(value)` per stored point.
const READ_WHISPER: &str = r#"
import os, sys, whisper
root, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for dirpath, _, names in os.walk(root):
    for name in names:
        if name.endswith(".wsp"):
            path = os.path.join(dirpath, name)
            (first, _, step), values = whisper.fetch(path, start, end)
            for i, value in enumerate(values):
                if value is not None:
                    print(os.path.relpath(path, root), first + i * step, repr(value))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_lines_are_stored_in_whisper_exactly() {
    let carbon_cache = program(
        "/usr/bin/carbon-cache",
        "apt-get install graphite-carbon python3-whisper (Debian)",
    );
    let python = program(
        "/usr/bin/python3",
        "apt-get install python3-whisper (Debian)",
    );
    let dir = temp_dir();
    let port = free_tcp_port();
    let config = write_carbon_config(dir.path(), port);
    let mut peer = Peer::start(
        "carbon-cache",
        &carbon_cache,
        &[
            &format!("--config={}", config.display()),
            "--debug",
            "start",
        ],
        dir.path(),
    );
    peer.wait_for_port(port).await;
    let relay = TestRelay::start(support::config(&[format!("127.0.0.1:{port}")
        .parse()
        .expect("address")]))
    .await;

    // Ten metrics over ten recent seconds, a path polymur sanitises, then a line carbon-cache would choke on, then
    // more valid lines: all on one connection.
    let start = unix_now_secs() - 600;
    let mut expected: BTreeMap<(String, i64), f64> = BTreeMap::new();
    let mut input = String::new();
    let mut add = |input: &mut String, path: &str, file: &str, value: &str, timestamp: i64| {
        input.push_str(&format!("{path} {value} {timestamp}\n"));
        let value: f64 = value.parse().expect("test value");
        expected.insert((file.to_string(), timestamp), value);
    };
    for metric in 0..10 {
        for second in 0..5 {
            let value = VALUES[(metric + second) % VALUES.len()];
            let path = format!("peers.carbon.m{metric}");
            let file = format!("peers/carbon/m{metric}.wsp");
            add(&mut input, &path, &file, value, start + second as i64);
        }
    }
    add(
        &mut input,
        "peers.carbon.with@at",
        "peers/carbon/with_at.wsp",
        "7",
        start,
    );
    add(
        &mut input,
        "peers..carbon.dots.",
        "peers/carbon/dots.wsp",
        "8",
        start,
    );
    let long_path = format!("peers.carbon.long{}", "x".repeat(17_000));
    input.push_str(&format!("{long_path} 1 {start}\n"));
    for metric in 0..10 {
        for second in 5..10 {
            let value = VALUES[(metric * second) % VALUES.len()];
            let path = format!("peers.carbon.m{metric}");
            let file = format!("peers/carbon/m{metric}.wsp");
            add(&mut input, &path, &file, value, start + second as i64);
        }
    }
    send(relay.address(), input.as_bytes()).await;

    let whisper_dir = dir.path().join("storage/whisper");
    let mut stored = BTreeMap::new();
    wait_until(
        "carbon-cache stored every point",
        &mut peer,
        Duration::from_millis(250),
        || {
            stored = read_whisper(&python, &whisper_dir, start - 10, start + 20);
            expected.keys().all(|key| stored.contains_key(key))
        },
    )
    .await;
    assert_eq!(stored, expected);
    assert_eq!(relay.invalid("line_len"), 1);
    assert_eq!(relay.noted("sanitized"), 2);
    assert_eq!(
        relay.destination(0).connects.load(Ordering::Relaxed),
        1,
        "carbon-cache closed polymur's connection"
    );
    assert!(
        !peer.output().contains("invalid line"),
        "carbon-cache was sent a line it refuses:\n{}",
        peer.output()
    );
    relay.shutdown().await;
    peer.stop().await;
}

/// Writes `carbon.conf` and `storage-schemas.conf` (one slot per second, for a day) with every directory in `dir`.
fn write_carbon_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let storage = dir.join("storage");
    let storage = storage.display();
    write_file(
        dir,
        "storage-schemas.conf",
        "[everything]\npattern = .*\nretentions = 1s:1d\n",
    );
    write_file(
        dir,
        "carbon.conf",
        &format!(
            "[cache]
STORAGE_DIR = {storage}/
LOCAL_DATA_DIR = {storage}/whisper/
WHISPER_DIR = {storage}/whisper/
LOG_DIR = {storage}/log/
PID_DIR = {storage}/run/
USER =
ENABLE_TAGS = False
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = inf
MAX_CREATES_PER_MINUTE = inf
WHISPER_SPARSE_CREATE = True
CARBON_METRIC_INTERVAL = 0
ENABLE_UDP_LISTENER = False
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = {port}
PICKLE_RECEIVER_PORT = 0
CACHE_QUERY_INTERFACE = 127.0.0.1
CACHE_QUERY_PORT = 0
"
        ),
    )
}

/// Every stored point between `start` and `end`, by (file relative to `whisper_dir`, timestamp).
fn read_whisper(
    python: &Path,
    whisper_dir: &Path,
    start: i64,
    end: i64,
) -> BTreeMap<(String, i64), f64> {
    if !whisper_dir.exists() {
        return BTreeMap::new();
    }
    let output = Command::new(python)
        .args(["-c", READ_WHISPER])
        .arg(whisper_dir)
        .args([start.to_string(), end.to_string()])
        .output()
        .expect("run /usr/bin/python3");
    assert!(
        output.status.success(),
        "reading whisper files failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .map(|line| {
            let mut fields = line.split(' ');
            let file = fields.next().expect("file").to_string();
            let timestamp = fields
                .next()
                .expect("timestamp")
                .parse()
                .expect("timestamp");
            let value = fields.next().expect("value").parse().expect("value");
            ((file, timestamp), value)
        })
        .collect()
}
