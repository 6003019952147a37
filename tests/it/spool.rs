//! The disk spool end to end: a destination down or slow spills to disk and gets every line back in order, a
//! shutdown spools what was not delivered and the next start delivers it, `always` writes every batch first, a full
//! spool drops by its policy and counts it, and the process edge refuses a locked or unusable spool directory.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use polymur::config::{SpoolMode, SpoolOverflow};
use polymur::stats::{DestinationStats, DropReason};
use polymur::Config;

use crate::support::process::{run_to_exit, RelayProcess, TEST_LISTEN_ARGS};
use crate::support::{self, distinct_lines, eventually, send, sorted, Sink, TestRelay};

/// A free port on 127.0.0.1 with nothing listening on it (yet).
async fn free_address() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("address")
}

/// A test config with a spool under `dir` and a small memory queue, so that spilling starts early.
fn spool_config(destinations: &[SocketAddr], dir: &Path, mode: SpoolMode) -> Config {
    let mut config = support::config(destinations);
    config.destination.spool_dir = Some(dir.to_path_buf());
    config.destination.spool_mode = mode;
    config.destination.queue_max_bytes = 64 * 1024;
    config.shutdown_timeout = Duration::from_secs(4);
    config
}

/// The spool directory of the destination at `address` (its identity, escaped).
fn destination_dir(spool_dir: &Path, address: SocketAddr) -> PathBuf {
    spool_dir.join(polymur::spool::directory_name(&address.to_string()))
}

/// Bytes of the segment files in a destination's spool directory.
fn segment_bytes_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().ends_with(".seg"))
                .filter_map(|entry| entry.metadata().ok())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0)
}

fn dropped(destination: &DestinationStats, reason: DropReason) -> u64 {
    destination.dropped_lines[reason as usize].load(Ordering::Relaxed)
}

/// Lines waiting on disk, not yet read back.
fn spooled(destination: &DestinationStats) -> u64 {
    destination.spool_lines.load(Ordering::Relaxed)
}

/// received = sent + dropped + queued + spooled, for a relay with one destination.
fn accounted(relay: &TestRelay) -> bool {
    let destination = relay.destination(0);
    let queued = destination.queued_lines.load(Ordering::Relaxed).max(0) as u64;
    relay.lines_received()
        == destination.sent_lines.load(Ordering::Relaxed)
            + destination.dropped_total()
            + queued
            + spooled(&destination)
}

/// Asserts that each client's lines (from `distinct_lines(client, _)`) first arrive in the order they were sent:
/// a line seen before may come again (resent after a reconnect), a new one must come after every line seen so far.
/// With `gapless`, no line may be missing in between either.
fn assert_in_order_per_client(lines: &[String], gapless: bool) {
    let mut seen: HashMap<String, (u64, HashSet<u64>)> = HashMap::new();
    for line in lines {
        let path = line.split(' ').next().expect("a path");
        let (client, metric) = path
            .strip_prefix("test.")
            .and_then(|rest| rest.split_once(".metric"))
            .expect("a distinct_lines path");
        let index: u64 = metric.parse().expect("a metric index");
        let (next_new, indices) = seen.entry(client.to_string()).or_default();
        if indices.insert(index) {
            assert!(
                index >= *next_new,
                "{client}: line {index} arrived after line {}",
                *next_new - 1
            );
            assert!(
                !gapless || index == *next_new,
                "{client}: line {index} arrived before line {next_new}"
            );
            *next_new = index + 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_down_spills_to_disk_and_gets_every_line_in_order_when_it_returns() {
    const N_LINES: usize = 40_000;
    let spool_dir = tempfile::tempdir().expect("temp dir");
    let address = free_address().await;
    let relay = TestRelay::start(spool_config(
        &[address],
        spool_dir.path(),
        SpoolMode::Overflow,
    ))
    .await;
    let inputs: Vec<Vec<u8>> = (0..2)
        .map(|client| distinct_lines(client, N_LINES / 2))
        .collect();
    for input in &inputs {
        send(relay.address(), input).await;
    }
    let destination = relay.destination(0);
    eventually("every line received and on disk", || {
        relay.lines_received() == N_LINES as u64 && spooled(&destination) > 0 && accounted(&relay)
    })
    .await;
    // Far more than the 64 KiB memory queue: the rest is on disk, in the destination's own directory.
    let on_disk = segment_bytes_on_disk(&destination_dir(spool_dir.path(), address));
    assert!(on_disk > 512 * 1024, "{on_disk} bytes on disk");
    assert_eq!(destination.spool_bytes.load(Ordering::Relaxed), on_disk);

    let sink = Sink::start_on(address).await;
    eventually("every line delivered", || sink.n_lines() >= N_LINES).await;
    eventually("the spool drained", || spooled(&destination) == 0).await;
    let all_input: Vec<u8> = inputs.concat();
    assert_eq!(sink.sorted_lines(), sorted(&all_input));
    assert_in_order_per_client(&sink.lines(), true);
    assert_eq!(destination.dropped_total(), 0);
    assert!(destination.spool_replayed_lines.load(Ordering::Relaxed) > 0);
    assert!(accounted(&relay));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_spools_what_was_not_delivered_and_the_next_start_delivers_it() {
    const N_LINES: usize = 20_000;
    let spool_dir = tempfile::tempdir().expect("temp dir");
    let address = free_address().await;
    let config = spool_config(&[address], spool_dir.path(), SpoolMode::Overflow);
    let relay = TestRelay::start(config.clone()).await;
    let input = distinct_lines(0, N_LINES);
    send(relay.address(), &input).await;
    eventually("every line received", || {
        relay.lines_received() == N_LINES as u64 && accounted(&relay)
    })
    .await;
    let report = relay.shutdown().await;
    assert_eq!(report.lines_lost, 0, "everything was spooled");

    let sink = Sink::start_on(address).await;
    let relay = TestRelay::start(config).await;
    eventually("the spooled lines delivered after the restart", || {
        sink.n_lines() >= N_LINES
    })
    .await;
    assert_eq!(sink.sorted_lines(), sorted(&input));
    eventually("the spool drained", || spooled(&relay.destination(0)) == 0).await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_mode_writes_every_batch_to_disk_before_sending_it() {
    const N_LINES: usize = 10_000;
    let spool_dir = tempfile::tempdir().expect("temp dir");
    let sink = Sink::start().await;
    let relay = TestRelay::start(spool_config(
        &[sink.address()],
        spool_dir.path(),
        SpoolMode::Always,
    ))
    .await;
    let input = distinct_lines(0, N_LINES);
    send(relay.address(), &input).await;
    eventually("every line delivered", || sink.n_lines() >= N_LINES).await;
    assert_eq!(sink.sorted_lines(), sorted(&input));
    // Every line went through the segment being written, which is kept until it rolls: its size is at least the
    // lines' bytes.
    let on_disk = segment_bytes_on_disk(&destination_dir(spool_dir.path(), sink.address()));
    assert!(
        on_disk >= input.len() as u64,
        "{on_disk} bytes on disk for {} bytes of lines",
        input.len()
    );
    eventually("nothing left to send", || accounted(&relay)).await;
    assert_eq!(relay.destination(0).dropped_total(), 0);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_by_its_policy_counts_spool_full_and_keeps_its_cap() {
    const CAP: u64 = 1024 * 1024;
    for policy in [SpoolOverflow::DropNewest, SpoolOverflow::DropOldest] {
        let spool_dir = tempfile::tempdir().expect("temp dir");
        let address = free_address().await;
        let mut config = spool_config(&[address], spool_dir.path(), SpoolMode::Overflow);
        config.destination.spool_max_bytes = CAP;
        config.destination.spool_overflow = policy;
        let relay = TestRelay::start(config).await;
        // About 3.5 MiB of lines, more than three times the cap.
        let input = distinct_lines(0, 80_000);
        send(relay.address(), &input).await;
        let destination = relay.destination(0);
        eventually("every line received and on disk", || {
            relay.lines_received() == 80_000 && spooled(&destination) > 0
        })
        .await;
        let on_disk = segment_bytes_on_disk(&destination_dir(spool_dir.path(), address));
        // One segment header and one record (a batch is at most 16 KiB) over the cap, at most.
        assert!(
            on_disk <= CAP + 64 + 17 * 1024,
            "{policy:?}: {on_disk} bytes"
        );

        // What was kept arrives, and nothing else.
        let sink = Sink::start_on(address).await;
        eventually("everything sent or dropped", || {
            let sent = destination.sent_lines.load(Ordering::Relaxed);
            sent + destination.dropped_total() == 80_000 && accounted(&relay)
        })
        .await;
        let n_full = dropped(&destination, DropReason::SpoolFull);
        assert!(n_full > 0, "{policy:?}: spool_full counted");
        assert_eq!(destination.dropped_total(), n_full, "{policy:?}");
        let kept = 80_000 - n_full as usize;
        eventually("what was kept delivered", || sink.n_lines() >= kept).await;
        let lines = sink.lines();
        assert_eq!(lines.len(), kept, "{policy:?}");
        assert_in_order_per_client(&lines, false);
        // drop_newest keeps the first lines, drop_oldest the last.
        let expected_first = match policy {
            SpoolOverflow::DropNewest => "test.client0.metric0 ",
            _ => "",
        };
        assert!(
            lines[0].starts_with(expected_first),
            "{policy:?}: {}",
            lines[0]
        );
        if policy == SpoolOverflow::DropOldest {
            assert!(
                lines
                    .last()
                    .expect("a line")
                    .starts_with("test.client0.metric79999 "),
                "drop_oldest keeps the newest line"
            );
        }
        relay.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_destination_spills_while_a_fast_one_gets_everything_and_then_catches_up() {
    const N_LINES: usize = 30_000;
    let spool_dir = tempfile::tempdir().expect("temp dir");
    let fast = Sink::start().await;
    // About 200 KiB/s: a second and a half of the input ahead of it.
    let slow = Sink::start_slow(4 * 1024, Duration::from_millis(20)).await;
    let mut config = spool_config(
        &[fast.address(), slow.address()],
        spool_dir.path(),
        SpoolMode::Overflow,
    );
    config.destination.write_timeout = Duration::from_secs(30);
    let relay = TestRelay::start(config).await;
    let input = distinct_lines(0, N_LINES);
    send(relay.address(), &input).await;
    eventually("the fast destination has every line", || {
        fast.n_lines() >= N_LINES
    })
    .await;
    let slow_stats = relay.destination(1);
    assert!(
        slow.n_lines() < N_LINES,
        "the slow destination is still behind when the fast one is done"
    );
    eventually("the slow destination has every line", || {
        slow.n_lines() >= N_LINES
    })
    .await;
    assert_eq!(fast.sorted_lines(), sorted(&input));
    assert_eq!(slow.sorted_lines(), sorted(&input));
    assert_in_order_per_client(&slow.lines(), true);
    assert!(
        slow_stats.spool_replayed_lines.load(Ordering::Relaxed) > 0,
        "the slow destination spilled"
    );
    assert_eq!(relay.destination(0).dropped_total(), 0);
    assert_eq!(slow_stats.dropped_total(), 0);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_on_the_same_spool_dir_refuses_to_start_naming_the_lock_file() {
    let spool_dir = tempfile::tempdir().expect("temp dir");
    let address = free_address().await;
    let spool_arg = spool_dir.path().to_str().expect("utf-8 path");
    let destination_arg = address.to_string();
    let args = ["-destinations", &destination_arg, "-spool-dir", spool_arg];
    let first = RelayProcess::start(&args);
    let second = run_to_exit(&[&TEST_LISTEN_ARGS[..], &args].concat());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(78), "{stderr}");
    let lock_file = destination_dir(spool_dir.path(), address).join("lock");
    assert!(
        stderr.contains(&lock_file.display().to_string()),
        "names {}: {stderr}",
        lock_file.display()
    );
    drop(first);
}

#[test]
fn an_unusable_spool_dir_is_a_config_error_at_start() {
    let not_a_dir = tempfile::NamedTempFile::new().expect("temp file");
    let spool_arg = not_a_dir.path().to_str().expect("utf-8 path");
    let output = run_to_exit(
        &[
            &TEST_LISTEN_ARGS[..],
            &["-destinations", "127.0.0.1:1", "-spool-dir", spool_arg],
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains(spool_arg), "names the directory: {stderr}");
}
