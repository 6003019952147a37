//! Lines in, lines out: fan-out to every destination, validation end to end, no destination, self-metrics.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::{self, distinct_lines, eventually, send, sorted, Sink, TestRelay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_reach_three_destinations_as_the_exact_multiset() {
    const N_CLIENTS: usize = 200;
    const N_LINES: usize = 10_000;
    let sinks = [
        Sink::start().await,
        Sink::start().await,
        Sink::start().await,
    ];
    let addresses: Vec<_> = sinks.iter().map(Sink::address).collect();
    let mut config = support::config(&addresses);
    // The in-process sinks share two cores with 200 clients and the relay, so at times one reads far slower than the
    // others and stops pacing the input (as a slow destination should). Queues that hold the whole burst make the
    // test about what it checks: nothing lost, duplicated or altered on the way to any destination.
    config.destination.queue_capacity_lines = N_CLIENTS * N_LINES;
    config.destination.queue_max_bytes = 1 << 30;
    let relay = TestRelay::start(config).await;

    let mut clients = Vec::new();
    for client in 0..N_CLIENTS {
        let address = relay.address();
        clients.push(tokio::spawn(async move {
            send(address, &distinct_lines(client, N_LINES)).await
        }));
    }
    for client in clients {
        client.await.expect("client task");
    }
    let total = N_CLIENTS * N_LINES;
    eventually("every sink has every line", || {
        let n_lines: Vec<usize> = sinks.iter().map(Sink::n_lines).collect();
        if n_lines.iter().all(|&n| n >= total) {
            return true;
        }
        let destinations: Vec<_> = (0..3)
            .map(|index| {
                let destination = relay.destination(index);
                (
                    destination.sent_lines.load(Ordering::Relaxed),
                    destination.queued_lines.load(Ordering::Relaxed),
                    destination.dropped_total(),
                    destination.connects.load(Ordering::Relaxed),
                )
            })
            .collect();
        eprintln!("sinks have {n_lines:?} of {total}; relay received {}; (sent, queued, dropped, connects) {destinations:?}", relay.lines_received());
        false
    })
    .await;

    let mut expected = Vec::with_capacity(total);
    for client in 0..N_CLIENTS {
        expected.extend(sorted(&distinct_lines(client, N_LINES)));
    }
    expected.sort_unstable();
    for sink in &sinks {
        assert_eq!(
            sink.sorted_lines(),
            expected,
            "sink {} got a different multiset",
            sink.address()
        );
    }
    assert_eq!(relay.lines_received(), total as u64);
    for index in 0..3 {
        let destination = relay.destination(index);
        assert_eq!(destination.sent_lines.load(Ordering::Relaxed), total as u64);
        assert_eq!(destination.dropped_total(), 0);
    }
    relay.shutdown().await;
}

/// One case per validation rule, each between two valid lines that must arrive intact and in order.
#[tokio::test]
async fn every_validation_rule_rejects_or_normalises_and_keeps_the_lines_around_it() {
    let sink = Sink::start().await;
    let relay = TestRelay::start(support::config(&[sink.address()])).await;
    let now = polymur::line::unix_now_secs();
    let cases: Vec<(String, Option<String>, &str)> = vec![
        // (input line, what arrives or None, the counter it bumps: documentation, asserted below)
        ("".into(), None, "empty"),
        ("   \t ".into(), None, "empty"),
        ("a.b 1".into(), None, "fields"),
        ("a.b 1 2 3".into(), None, "fields"),
        ("a.b 0x10 1700000000".into(), None, "value"),
        ("a.b 1_000 1700000000".into(), None, "value"),
        ("a.b 1,5 1700000000".into(), None, "value"),
        ("a.b nan 1700000000".into(), None, "nan"),
        ("a.b 1 0".into(), None, "ts"),
        ("a.b 1 -5".into(), None, "ts"),
        ("a.b 1 17e8".into(), None, "ts"),
        ("a\0b 1 1700000000".into(), None, "nul"),
        ("...  1 1700000000".into(), None, "path"),
        (
            format!("{} 1 1700000000", "p".repeat(1025)),
            None,
            "path_len",
        ),
        (
            "a.b -Inf 1700000000".into(),
            Some("a.b -Inf 1700000000".into()),
            "inf",
        ),
        (
            "a.b 1 1700000000000".into(),
            Some("a.b 1 1700000000000".into()),
            "ts_far",
        ),
        ("a.b 2 -1".into(), Some("a.b 2 -1".into()), ""),
        (
            "a..b.  3  1700000000\r".into(),
            Some("a.b 3 1700000000".into()),
            "sanitized",
        ),
        ("\ta b\t4\t1700000000 ".into(), None, "fields"),
        (
            "\ta.b\t4\t 1700000000 ".into(),
            Some("a.b 4 1700000000".into()),
            "",
        ),
        (
            "a/b@c 5 1700000000".into(),
            Some("a_b_c 5 1700000000".into()),
            "sanitized",
        ),
        (
            "a.b;tag=v@1 6 1700000000".into(),
            Some("a.b;tag=v@1 6 1700000000".into()),
            "",
        ),
        (
            "a.b 1.5e3 1700000000.25".into(),
            Some("a.b 1.5e3 1700000000.25".into()),
            "",
        ),
    ];
    // Timestamps near now, so that only the millisecond one is far.
    let now_text = now.to_string();
    let cases: Vec<(String, Option<String>)> = cases
        .into_iter()
        .map(|(line, arrives, _)| {
            (
                line.replace("1700000000", &now_text),
                arrives.map(|arrives| arrives.replace("1700000000", &now_text)),
            )
        })
        .collect();
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for (index, (line, arrives)) in cases.iter().enumerate() {
        let before = format!("valid.before{index} {index} {now}");
        let after = format!("valid.after{index} {index} {now}");
        input.extend_from_slice(before.as_bytes());
        input.push(b'\n');
        input.extend_from_slice(line.as_bytes());
        input.push(b'\n');
        input.extend_from_slice(after.as_bytes());
        input.push(b'\n');
        expected.push(before);
        if let Some(arrives) = arrives {
            expected.push(arrives.clone());
        }
        expected.push(after);
    }
    // Invalid UTF-8 in the path, and bytes after the last LF at EOF.
    input.extend_from_slice(b"bad\xff.path 1 ");
    input.extend_from_slice(format!("{now}\n").as_bytes());
    input.extend_from_slice(format!("valid.last 1 {now}\npartial.line 1 17").as_bytes());
    expected.push(format!("valid.last 1 {now}"));
    send(relay.address(), &input).await;
    let last = format!("valid.last 1 {now}");
    eventually("valid.last arrives", || sink.lines().last() == Some(&last)).await;
    eventually("partial_eof counted", || relay.invalid("partial_eof") == 1).await;
    assert_eq!(sink.lines(), expected);

    for (reason, n) in [
        ("empty", 2),
        ("fields", 3),
        ("value", 3),
        ("nan", 1),
        ("ts", 3),
        ("nul", 1),
        ("utf8", 1),
        ("path", 1),
        ("path_len", 1),
        ("partial_eof", 1),
    ] {
        assert_eq!(relay.invalid(reason), n, "counter {reason}");
    }
    assert_eq!(relay.noted("inf"), 1);
    assert_eq!(relay.noted("ts_far"), 1);
    assert_eq!(relay.noted("sanitized"), 2);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_line_longer_than_the_limit_is_skipped_and_the_connection_keeps_working() {
    let sink = Sink::start().await;
    let relay = TestRelay::start(support::config(&[sink.address()])).await;
    let mut input = b"before.long 1 1700000000\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 5 * 1024 * 1024));
    input.extend_from_slice(b" 1 1700000000\nafter.long 2 1700000000\n");
    send(relay.address(), &input).await;
    eventually("the line after the long one arrives", || {
        sink.n_lines() == 2
    })
    .await;
    assert_eq!(
        sink.lines(),
        ["before.long 1 1700000000", "after.long 2 1700000000"]
    );
    assert_eq!(relay.invalid("line_len"), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn without_destinations_every_valid_line_is_counted_as_dropped() {
    let relay = TestRelay::start(support::config(&[])).await;
    send(
        relay.address(),
        b"a.b 1 1700000000\nc.d 2 1700000000\nbad\n",
    )
    .await;
    let stats = &relay.handle.registry.relay;
    eventually("lines counted", || {
        stats.lines_dropped_no_destination.load(Ordering::Relaxed) == 2
    })
    .await;
    assert_eq!(relay.lines_received(), 2);
    assert_eq!(relay.invalid("fields"), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn self_metrics_get_out_while_user_traffic_fills_the_queue() {
    let fast = Sink::start().await;
    // About 400 KB/s: far slower than the input, so it stops pacing and its queue overflows while the fast one sets
    // the pace. (The tiny queues are for the slow one; the fast one may lose lines to them when starved of CPU.)
    let slow = Sink::start_slow(4096, Duration::from_millis(10)).await;
    let mut config = support::config(&[fast.address(), slow.address()]);
    config.stats.metrics_flush = Duration::from_millis(200);
    config.stats.metrics_prefix = "carbon.relays.test".to_string();
    config.destination.queue_max_bytes = 64 * 1024;
    let relay = TestRelay::start(config).await;
    let slow_destination = relay.destination(1);
    let address = relay.address();
    let flood = tokio::spawn(async move {
        for round in 0..20 {
            send(address, &distinct_lines(round, 20_000)).await;
        }
    });
    eventually(
        "user lines are dropped for the slow destination's full queue",
        || slow_destination.dropped_total() > 0,
    )
    .await;
    eventually("self-metrics reach the slow destination", || {
        slow.lines()
            .iter()
            .any(|line| line.starts_with("carbon.relays.test.metricsReceived "))
    })
    .await;
    flood.await.expect("flood");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_destination_with_an_instance_is_named_by_its_identity_and_connected_by_its_address() {
    let sink = Sink::start().await;
    let mut config = support::config(&[]);
    let identity = format!("{}=cache-a", sink.address());
    config.destinations = vec![identity.clone()];
    let relay = TestRelay::start(config).await;
    send(relay.address(), b"a.b 1 1700000000\n").await;
    eventually("the line arrives", || sink.n_lines() == 1).await;
    let snapshot = relay.handle.registry.snapshot();
    assert_eq!(snapshot.destinations[0].address, identity);
    assert_eq!(snapshot.destinations[0].sent_lines, 1);
    relay.shutdown().await;
}
