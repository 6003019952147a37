//! The real binary end to end: signals and exit codes, memory under hostile input, stalled stats clients, the
//! seed's log lines.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stats_server::get_stats;
use crate::support::process::{config_file, RelayProcess};
use crate::support::{distinct_lines, eventually, send, sorted, Sink, PATIENCE};

#[tokio::test]
async fn sigterm_with_a_backlog_delivers_everything_and_exits_0() {
    // About 6 MB/s: the queue still holds most of the lines when SIGTERM arrives.
    let sink = Sink::start_slow(64 * 1024, Duration::from_millis(10)).await;
    let destination = sink.address().to_string();
    // A generous timeout: this checks that shutdown drains, not how fast a debug build does it on a busy machine.
    let mut relay =
        RelayProcess::start(&["-destinations", &destination, "-shutdown-timeout", "120s"]);
    let input = distinct_lines(7, 200_000);
    send(relay.listen_address, &input).await;
    eventually("the destination is receiving", || sink.n_lines() > 0).await;
    let delivered_before_signal = sink.n_lines();
    relay.signal("TERM");
    assert!(
        delivered_before_signal < 200_000,
        "no backlog left to drain"
    );
    let status = relay.wait();
    assert_eq!(status.code(), Some(0), "{}", relay.stderr().join("\n"));
    eventually("every line arrives", || sink.n_lines() >= 200_000).await;
    assert_eq!(sink.sorted_lines(), sorted(&input));
}

#[tokio::test]
async fn stalled_stats_clients_never_hold_up_sigterm() {
    // About 6 MB/s: lines are still flowing to the destination when SIGTERM arrives.
    let sink = Sink::start_slow(64 * 1024, Duration::from_millis(10)).await;
    let destination = sink.address().to_string();
    // Stats timeouts longer than the test, so the stalled clients are still open at SIGTERM and only the shutdown
    // can end them; a shutdown_timeout the exit must not wait for.
    let shutdown_timeout = Duration::from_secs(60);
    let config =
        config_file("[stats]\nheader_read_timeout = \"60s\"\nrequest_timeout = \"120s\"\n");
    let config_path = config.path().to_str().expect("utf-8 path").to_string();
    let mut relay = RelayProcess::start(&[
        "-c",
        &config_path,
        "-destinations",
        &destination,
        "-stats-addr",
        "127.0.0.1:0",
        "-shutdown-timeout",
        &format!("{}s", shutdown_timeout.as_secs()),
    ]);
    let stats_address: SocketAddr = relay
        .wait_for_log("Runstats started: ")
        .rsplit("Runstats started: ")
        .next()
        .expect("address text")
        .trim()
        .parse()
        .expect("stats address in the log line");

    let input = distinct_lines(9, 200_000);
    send(relay.listen_address, &input).await;
    let silent = TcpStream::connect(stats_address).await.expect("connect");
    let mut half_request = TcpStream::connect(stats_address).await.expect("connect");
    half_request
        .write_all(b"GET /sta")
        .await
        .expect("send half a request line");
    let mut never_reads = TcpStream::connect(stats_address).await.expect("connect");
    never_reads
        .write_all(b"GET /stats HTTP/1.1\r\nhost: polymur\r\n\r\n")
        .await
        .expect("send a request");
    // Each poll is one more accepted connection, open while it is answered. Wait until the three clients are
    // accepted and only the silent one, the half request and the poll itself are open.
    let deadline = Instant::now() + PATIENCE;
    let mut n_polls = 0;
    loop {
        n_polls += 1;
        let stats = get_stats(stats_address).await;
        let server = &stats["stats_server"];
        if server["connections_accepted"] == 3 + n_polls && server["connections_open"] == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stats clients not accepted: {server}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let delivered_before_signal = sink.n_lines();
    let signalled = Instant::now();
    relay.signal("TERM");
    let status = relay.wait();
    let exited_after = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", relay.stderr().join("\n"));
    assert!(
        delivered_before_signal < 200_000,
        "no lines left in flight at SIGTERM"
    );
    assert!(
        exited_after < shutdown_timeout / 2,
        "exit took {exited_after:?}: it waited for the stats clients"
    );
    // The relay wrote every line before it exited; the slow destination is still reading them.
    eventually("every line arrives", || sink.n_lines() >= 200_000).await;
    assert!(
        sink.sorted_lines() == sorted(&input),
        "the destination did not get exactly the lines sent"
    );
    // The client that never read was answered in full before the shutdown; the others got nothing.
    let mut answer = String::new();
    never_reads
        .read_to_string(&mut answer)
        .await
        .expect("read the buffered answer");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    drop((silent, half_request));
}

#[tokio::test]
async fn a_second_signal_exits_at_once_with_1() {
    // A destination that never comes up keeps the queue from draining, so the first SIGTERM waits.
    let down = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = down.local_addr().expect("address").to_string();
    drop(down);
    let mut relay = RelayProcess::start(&["-destinations", &address, "-shutdown-timeout", "60s"]);
    send(relay.listen_address, b"a.b 1 1700000000\n").await;
    relay.signal("TERM");
    relay.wait_for_log("shutting down");
    relay.signal("INT");
    assert_eq!(relay.wait().code(), Some(1));
}

#[tokio::test]
async fn sighup_is_logged_and_the_relay_keeps_running() {
    let sink = Sink::start().await;
    let destination = sink.address().to_string();
    let mut relay = RelayProcess::start(&["-destinations", &destination]);
    relay.signal("HUP");
    relay.wait_for_log("SIGHUP");
    send(relay.listen_address, b"after.hup 1 1700000000\n").await;
    eventually("a line relayed after SIGHUP", || sink.n_lines() == 1).await;
    relay.signal("TERM");
    assert_eq!(relay.wait().code(), Some(0));
}

#[tokio::test]
async fn a_100_mb_line_without_lf_keeps_memory_bounded() {
    let sink = Sink::start().await;
    let destination = sink.address().to_string();
    let relay = RelayProcess::start(&["-destinations", &destination]);
    let mut stream = std::net::TcpStream::connect(relay.listen_address).expect("connect");
    let chunk = vec![b'x'; 1024 * 1024];
    for _ in 0..100 {
        stream.write_all(&chunk).expect("write");
    }
    stream
        .write_all(b" 1 1700000000\nafter.huge 1 1700000000\n")
        .expect("write");
    eventually("the line after the huge one arrives", || {
        sink.n_lines() == 1
    })
    .await;
    assert_eq!(sink.lines(), ["after.huge 1 1700000000"]);
    let peak_rss = relay.peak_rss_bytes();
    eprintln!("peak RSS after a 100 MB line: {peak_rss} bytes");
    assert!(peak_rss < 40 * 1024 * 1024, "peak RSS {peak_rss} bytes");
}

#[tokio::test]
async fn console_out_prints_every_relayed_line() {
    let relay = RelayProcess::start(&["-console-out"]);
    send(
        relay.listen_address,
        b"shown.one 1 1700000000\nbad line\nshown.two 2 1700000000\n",
    )
    .await;
    eventually("lines on stdout", || relay.stdout().len() == 2).await;
    assert_eq!(
        relay.stdout(),
        ["shown.one 1 1700000000", "shown.two 2 1700000000"]
    );
}

#[tokio::test]
async fn console_out_to_a_stdout_nobody_reads_neither_holds_up_relaying_nor_shutdown() {
    const N_LINES: usize = 100_000;
    let sink = Sink::start().await;
    let destination = sink.address().to_string();
    let mut relay = RelayProcess::start_with_unread_stdout(&[
        "-console-out",
        "-destinations",
        &destination,
        "-stats-addr",
        "127.0.0.1:0",
        "-shutdown-timeout",
        "2s",
    ]);
    // About 4 MB: far more than the pipe (64 KiB) and the console-out channel (1 MiB) hold.
    let input = distinct_lines(3, N_LINES);
    // Bounded: a relay stuck on stdout would stop reading, and the send would block for ever instead of failing.
    tokio::time::timeout(PATIENCE, send(relay.listen_address, &input))
        .await
        .expect("the relay reads its input");
    eventually("every line reaches the destination", || {
        sink.n_lines() == N_LINES
    })
    .await;
    assert_eq!(sink.sorted_lines(), sorted(&input));
    let stats = relay.stats();
    let n_not_printed = stats["lines"]["console_out_dropped"]
        .as_u64()
        .expect("console_out_dropped");
    assert!(
        (1..N_LINES as u64).contains(&n_not_printed),
        "{n_not_printed} lines not printed"
    );

    relay.signal("TERM");
    assert_eq!(
        relay.wait().code(),
        Some(0),
        "{}",
        relay.stderr().join("\n")
    );
    // Read after the exit: the line is logged just before it, and stderr is collected by a thread.
    eventually("the lines stdout never took are logged", || {
        relay
            .stderr()
            .iter()
            .any(|line| line.contains("stdout took no more -console-out lines before the deadline"))
    })
    .await;
}

#[tokio::test]
async fn the_seed_log_lines_keep_their_wording() {
    let sink = Sink::start().await;
    let config = config_file("[stats]\nlog_interval = \"1s\"\n");
    let destination = sink.address().to_string();
    let config_path = config.path().to_str().expect("utf-8 path").to_string();
    let mut relay = RelayProcess::start(&[
        "-c",
        &config_path,
        "-destinations",
        &destination,
        "-stats-addr",
        "127.0.0.1:0",
    ]);
    relay.wait_for_log(&format!("Connected to destination: {destination}"));
    relay.wait_for_log("Runstats started: 127.0.0.1:");
    send(
        relay.listen_address,
        b"a.b 1 1700000000\nc.d 2 1700000000\n",
    )
    .await;
    eventually("lines arrive", || sink.n_lines() == 2).await;
    let line = relay.wait_for_log("Received 2 datapoints");
    assert!(
        line.contains("Last 1s: Received 2 datapoints | Avg: 2.00/sec. | Inbound queue length: 0"),
        "{line}"
    );
}

#[test]
fn a_listen_address_in_use_exits_1_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port().to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_polymur"))
        .args([
            "-listen-addr",
            "127.0.0.1",
            "-listen-port",
            &port,
            "-stats-addr",
            "",
        ])
        .output()
        .expect("run polymur");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}
