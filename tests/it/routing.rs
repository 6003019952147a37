//! Clusters, routes and rewrites end to end on real sockets: consistent hashing to the member carbon's ring names,
//! counted blackholes and unrouted lines, `any_of`/`failover` members killed and restarted, and SIGHUP reloads of
//! the real binary under load.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use polymur::config::{ClusterConfig, ClusterMethod, RewriteConfig, RouteConfig};
use polymur::destination::Identity;
use polymur::router::hash::carbon::{CarbonMethod, CarbonRing};
use polymur::router::hash::Member;

use crate::support::process::{config_file, RelayProcess};
use crate::support::{self, eventually, send, Sink, TestRelay, PATIENCE};

/// `n` lines `prefix.metricI I 1700000000`.
fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|index| format!("{prefix}.metric{index} {index} 1700000000"))
        .collect()
}

fn joined(lines: &[String]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in lines {
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    bytes
}

/// Members `127.0.0.1:PORT=m0`, `=m1`, ...: carbon keys members by host and instance, so on one host they need one.
fn members(addresses: &[SocketAddr]) -> Vec<String> {
    addresses
        .iter()
        .enumerate()
        .map(|(index, address)| format!("{address}=m{index}"))
        .collect()
}

/// carbon's `carbon_ch` ring over the [`members`] of `addresses`: where the relay must send each path.
fn carbon_ring(addresses: &[SocketAddr]) -> CarbonRing {
    let ring_members: Vec<Member> = members(addresses)
        .iter()
        .map(|member| Member::from(&Identity::parse(member).unwrap()))
        .collect();
    CarbonRing::new(CarbonMethod::CarbonCh, &ring_members, true)
}

/// Three counting sinks.
async fn three_sinks() -> [Sink; 3] {
    [
        Sink::start().await,
        Sink::start().await,
        Sink::start().await,
    ]
}

async fn relay_with_cluster(method: ClusterMethod, addresses: &[SocketAddr]) -> TestRelay {
    let mut config = support::config(&[]);
    let members = members(addresses);
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    config.clusters = vec![ClusterConfig::new("c", method, &members)];
    TestRelay::start(config).await
}

#[tokio::test]
async fn a_carbon_ch_cluster_sends_each_line_to_the_member_carbons_ring_names() {
    let sinks = three_sinks().await;
    let relay = relay_with_cluster(ClusterMethod::CarbonCh, &addresses(&sinks)).await;
    let sent = lines("servers.web", 3000);
    send(relay.address(), &joined(&sent)).await;
    eventually("every line delivered once", || {
        sinks.iter().map(Sink::n_lines).sum::<usize>() >= sent.len()
    })
    .await;

    let ring = carbon_ring(&addresses(&sinks));
    let mut expected: Vec<Vec<String>> = vec![Vec::new(); sinks.len()];
    let mut chosen = Vec::new();
    for line in &sent {
        let path = line.split(' ').next().unwrap();
        ring.members_for(path.as_bytes(), 1, &mut chosen);
        expected[chosen[0]].push(line.clone());
    }
    for (index, sink) in sinks.iter().enumerate() {
        expected[index].sort_unstable();
        assert_eq!(sink.sorted_lines(), expected[index], "member {index}");
        assert!(expected[index].len() > 500, "the ring spreads the paths");
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn routes_and_rewrites_decide_and_what_goes_nowhere_is_counted() {
    let kept = Sink::start().await;
    let archive = Sink::start().await;
    let mut config = support::config(&[kept.address()]);
    config.clusters = vec![ClusterConfig::new(
        "archive",
        ClusterMethod::Forward,
        &[&archive.address().to_string()],
    )];
    config.rewrites = vec![
        RewriteConfig {
            pattern: r"^old\.(.*)".to_string(),
            replace: r"keep.\1".to_string(),
        },
        RewriteConfig {
            pattern: r"^gone\..*".to_string(),
            replace: ".".to_string(),
        },
    ];
    config.routes = vec![
        RouteConfig {
            pattern: Some("^junk\\.".to_string()),
            ..RouteConfig::all_to(&["blackhole"])
        },
        RouteConfig {
            prefix: Some("keep.".to_string()),
            stop: true,
            ..RouteConfig::all_to(&["default"])
        },
        RouteConfig {
            suffix: Some(".count".to_string()),
            ..RouteConfig::all_to(&["archive", "default"])
        },
    ];
    let relay = TestRelay::start(config).await;
    let input =
        "keep.a 1 1700000000\nold.b 2 1700000000\njunk.c 3 1700000000\nother.d 4 1700000000\n\
                 x.count 5 1700000000\ngone.e 6 1700000000\n";
    send(relay.address(), input.as_bytes()).await;
    eventually("routed lines delivered", || {
        kept.n_lines() >= 3 && archive.n_lines() >= 1
    })
    .await;
    let relay_stats = &relay.handle.registry.relay;
    eventually("nowhere lines counted", || {
        relay_stats.lines_no_route.load(Ordering::Relaxed) == 1
            && relay_stats.lines_blackholed.load(Ordering::Relaxed) == 1
            && relay_stats.lines_rewrite_invalid.load(Ordering::Relaxed) == 1
    })
    .await;
    let report = relay.shutdown().await;
    assert_eq!(report.lines_lost, 0);
    assert_eq!(
        kept.sorted_lines(),
        [
            "keep.a 1 1700000000",
            "keep.b 2 1700000000",
            "x.count 5 1700000000"
        ]
    );
    assert_eq!(archive.sorted_lines(), ["x.count 5 1700000000"]);
}

/// Which sink got each line, over every sink; panics on a line that arrived twice.
fn receivers(sinks: &[&Sink]) -> HashMap<String, usize> {
    let mut receivers = HashMap::new();
    for (index, sink) in sinks.iter().enumerate() {
        for line in sink.lines() {
            if let Some(earlier) = receivers.insert(line.clone(), index) {
                assert_eq!(earlier, index, "{line} arrived at two members");
            }
        }
    }
    receivers
}

/// Sends `sent` and waits until each line arrived at one of `sinks`; returns which sink got each.
async fn deliver(relay: &TestRelay, sent: &[String], sinks: &[&Sink]) -> HashMap<String, usize> {
    send(relay.address(), &joined(sent)).await;
    let wanted: HashSet<&String> = sent.iter().collect();
    eventually("every line delivered", || {
        let received = receivers(sinks);
        wanted.iter().all(|line| received.contains_key(*line))
    })
    .await;
    receivers(sinks)
}

#[tokio::test]
async fn any_of_hands_a_killed_members_lines_to_the_others_and_takes_it_back_when_it_returns() {
    let sinks = three_sinks().await;
    let relay = relay_with_cluster(ClusterMethod::AnyOf, &addresses(&sinks)).await;
    let [first, second, third] = sinks;
    let returning_address = second.address();

    // All up: each member gets its share, about a third.
    let before = lines("before", 3000);
    let received = deliver(&relay, &before, &[&first, &second, &third]).await;
    for member in 0..3 {
        let share = before
            .iter()
            .filter(|line| received[*line] == member)
            .count();
        assert!((700..1300).contains(&share), "member {member}: {share}");
    }

    // The second dies: what it is sent now waits in its queue until it is out (1.5 s), then moves to the others.
    second.kill().await;
    let during = lines("during", 3000);
    let received = deliver(&relay, &during, &[&first, &third]).await;
    assert!(during.iter().all(|line| received.contains_key(line)));
    let destination = relay.destination(1);
    // Sent before it was out, its share went to its queue first and was moved from there.
    assert!(destination.moved_lines.load(Ordering::Relaxed) > 0);

    // It returns on the same address: it gets its share again, and every line still arrives once.
    let second = Sink::start_on(returning_address).await;
    eventually("the returned member reconnected", || {
        destination.connected.load(Ordering::Relaxed)
    })
    .await;
    let after = lines("after", 3000);
    let received = deliver(&relay, &after, &[&first, &second, &third]).await;
    let share = after.iter().filter(|line| received[*line] == 1).count();
    assert!((700..1300).contains(&share), "returned member: {share}");
    let report = relay.shutdown().await;
    assert_eq!(report.lines_lost, 0);
}

#[tokio::test]
async fn failover_sends_everything_to_the_first_member_up() {
    let sinks = [Sink::start().await, Sink::start().await];
    let relay = relay_with_cluster(ClusterMethod::Failover, &addresses(&sinks)).await;
    let [primary, backup] = sinks;
    let primary_address = primary.address();
    let before = lines("before", 1000);
    let received = deliver(&relay, &before, &[&primary, &backup]).await;
    assert!(before.iter().all(|line| received[line] == 0));

    primary.kill().await;
    let during = lines("during", 1000);
    let received = deliver(&relay, &during, &[&backup]).await;
    assert_eq!(
        received.len(),
        during.len(),
        "the backup got only what came after"
    );
    // Sent before the primary was out, they waited in its queue and were moved from there.
    assert!(relay.destination(0).moved_lines.load(Ordering::Relaxed) > 0);

    let primary = Sink::start_on(primary_address).await;
    eventually("the primary reconnected", || {
        relay.destination(0).connected.load(Ordering::Relaxed)
    })
    .await;
    let after = lines("after", 1000);
    let received = deliver(&relay, &after, &[&primary, &backup]).await;
    assert!(after.iter().all(|line| received[line] == 0));
    assert_eq!(relay.shutdown().await.lines_lost, 0);
}

fn addresses(sinks: &[Sink]) -> Vec<SocketAddr> {
    sinks.iter().map(Sink::address).collect()
}

/// The numbers `n` of lines `reload.lineN N 1700000000`, in arrival order.
fn numbers(sink: &Sink) -> Vec<usize> {
    sink.lines()
        .iter()
        .map(|line| {
            line.split(' ')
                .nth(1)
                .and_then(|number| number.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        })
        .collect()
}

/// Whether `numbers` are consecutive: nothing lost, nothing twice, in order.
fn is_run(numbers: &[usize]) -> bool {
    numbers.windows(2).all(|pair| pair[1] == pair[0] + 1)
}

#[test]
fn sighup_under_load_swaps_destinations_and_loses_no_line() {
    const N_LINES: usize = 300_000;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (a, b, c) = runtime.block_on(async {
        (
            Sink::start().await,
            Sink::start().await,
            Sink::start().await,
        )
    });
    let config = |destinations: &[&Sink]| {
        let list: Vec<String> = destinations
            .iter()
            .map(|sink| format!("\"{}\"", sink.address()))
            .collect();
        format!("destinations = [{}]\n", list.join(", "))
    };
    let file = config_file(&config(&[&a, &b]));
    let path = file.path().to_str().unwrap().to_string();
    let mut relay = RelayProcess::start(&["-c", &path]);
    let listen_address = relay.listen_address;
    // One client, one connection, sending throughout the reloads.
    let client = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(listen_address).unwrap();
        for chunk in 0..N_LINES / 1000 {
            let mut bytes = Vec::new();
            for number in chunk * 1000..(chunk + 1) * 1000 {
                bytes.extend_from_slice(
                    format!("reload.line{number} {number} 1700000000\n").as_bytes(),
                );
            }
            stream
                .write_all(&bytes)
                .expect("the relay keeps the client's connection across reloads");
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let wait_until = |what: &str, condition: &dyn Fn() -> bool| {
        let deadline = Instant::now() + PATIENCE;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_until("lines flowing", &|| b.n_lines() > 20_000);

    // a out, c in.
    std::fs::write(&path, config(&[&b, &c])).unwrap();
    relay.signal("HUP");
    relay.wait_for_logs("reload: new configuration in use", 1);
    relay.wait_for_log("reload: removed destination drained and stopped");
    wait_until("c receiving", &|| c.n_lines() > 10_000);

    // A config that does not parse is refused; the relay goes on with the last good one.
    std::fs::write(&path, "destinations = [\n").unwrap();
    relay.signal("HUP");
    relay.wait_for_log("reload rejected");

    // a back.
    std::fs::write(&path, config(&[&a, &b, &c])).unwrap();
    relay.signal("HUP");
    relay.wait_for_logs("reload: new configuration in use", 2);
    client.join().unwrap();
    wait_until("b has every line", &|| b.n_lines() >= N_LINES);
    wait_until("a and c caught up", &|| {
        numbers(&a).last() == Some(&(N_LINES - 1)) && numbers(&c).last() == Some(&(N_LINES - 1))
    });
    relay.signal("TERM");
    assert_eq!(
        relay.wait().code(),
        Some(0),
        "{}",
        relay.stderr().join("\n")
    );

    // b stayed: every line, in order, once.
    let b_numbers = numbers(&b);
    assert_eq!(b_numbers.len(), N_LINES);
    assert!(is_run(&b_numbers) && b_numbers[0] == 0);
    // a: everything up to its removal (it drained), then everything from its return to the end.
    let a_numbers = numbers(&a);
    let gap = a_numbers
        .windows(2)
        .position(|pair| pair[1] != pair[0] + 1)
        .expect("a was out for a while");
    assert_eq!(a_numbers[0], 0);
    assert!(
        is_run(&a_numbers[..=gap]) && is_run(&a_numbers[gap + 1..]),
        "a lost lines"
    );
    // c: one run from when it was added to the end.
    let c_numbers = numbers(&c);
    assert!(c_numbers[0] > 0 && is_run(&c_numbers), "c lost lines");
}

#[tokio::test]
async fn self_metrics_go_through_the_routes_so_a_hash_cluster_stores_each_series_once() {
    let sinks = [Sink::start().await, Sink::start().await];
    let mut config = support::config(&[]);
    let members = members(&addresses(&sinks));
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    config.clusters = vec![ClusterConfig::new("c", ClusterMethod::CarbonCh, &members)];
    config.stats.metrics_flush = Duration::from_millis(100);
    config.stats.metrics_prefix = "carbon.relays.test".to_string();
    let relay = TestRelay::start(config).await;
    // Three flushes' worth of series.
    eventually("self-metrics flushed three times", || {
        sinks.iter().map(Sink::n_lines).sum::<usize>() >= 3 * 12
    })
    .await;
    relay.shutdown().await;
    let mut holders: HashMap<String, HashSet<usize>> = HashMap::new();
    for (index, sink) in sinks.iter().enumerate() {
        for line in sink.lines() {
            let path = line.split(' ').next().unwrap().to_string();
            assert!(path.starts_with("carbon.relays.test."), "{line}");
            holders.entry(path).or_default().insert(index);
        }
    }
    assert!(holders.len() >= 12, "{holders:?}");
    for (path, sinks) in &holders {
        assert_eq!(sinks.len(), 1, "{path} went to more than one member");
    }
    assert!(holders.values().any(|sinks| sinks.contains(&0)));
    assert!(holders.values().any(|sinks| sinks.contains(&1)));
}

#[tokio::test]
async fn a_reload_keeps_a_destinations_spool_open_and_a_removed_ones_spool_on_disk() {
    let spool_dir = tempfile::tempdir().unwrap();
    let first = Sink::start().await;
    let second = Sink::start().await;
    let config = |destinations: &[&Sink]| {
        let mut config = support::config(
            &destinations
                .iter()
                .map(|sink| sink.address())
                .collect::<Vec<_>>(),
        );
        config.destination.spool_dir = Some(spool_dir.path().to_path_buf());
        config
    };
    let mut relay = TestRelay::start(config(&[&first])).await;
    // Kept: its spool is not opened again (a second open would find its own lock held and fail the reload).
    let report = relay.reload(config(&[&first, &second])).await.unwrap();
    assert_eq!(report.kept, [first.address().to_string()]);
    assert_eq!(report.added, [second.address().to_string()]);
    send(relay.address(), b"both.a 1 1700000000\n").await;
    eventually("both got the line", || {
        first.n_lines() == 1 && second.n_lines() == 1
    })
    .await;

    // Removed: it drains and stops, and its spool directory stays.
    let report = relay.reload(config(&[&second])).await.unwrap();
    assert_eq!(report.removed, [first.address().to_string()]);
    // Its counters stay listed, after those in use.
    let registry = std::sync::Arc::clone(&relay.handle.registry);
    let removed = std::sync::Arc::clone(&registry.destinations()[1]);
    assert_eq!(removed.address, first.address().to_string());
    eventually("the removed destination stopped", || {
        !removed.connected.load(Ordering::Relaxed)
    })
    .await;
    let first_spool = spool_dir
        .path()
        .join(polymur::spool::directory_name(&first.address().to_string()));
    assert!(first_spool.join(polymur::spool::LOCK_FILE_NAME).exists());
    send(relay.address(), b"second.only 2 1700000000\n").await;
    eventually("the second got it", || second.n_lines() == 2).await;

    // Named again: its spool opens again once it has stopped (its lock released), and its counters go on.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let report = loop {
        match relay.reload(config(&[&first, &second])).await {
            Ok(report) => break report,
            Err(err) => {
                assert!(format!("{err:#}").contains("still draining"), "{err:#}");
                assert!(tokio::time::Instant::now() < deadline, "{err:#}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    assert_eq!(registry.destinations().len(), 2);
    assert!(std::sync::Arc::ptr_eq(
        &registry.destinations()[0],
        &removed
    ));
    assert_eq!(report.added, [first.address().to_string()]);
    send(relay.address(), b"both.b 3 1700000000\n").await;
    eventually("both got it", || {
        first.n_lines() == 2 && second.n_lines() == 3
    })
    .await;
    assert_eq!(
        first.sorted_lines(),
        ["both.a 1 1700000000", "both.b 3 1700000000"]
    );
    let report = relay.shutdown().await;
    assert_eq!(report.lines_lost, 0);
}

#[tokio::test]
async fn a_reload_that_cannot_open_a_new_spool_changes_nothing() {
    let spool_dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    let mut config = support::config(&[sink.address()]);
    let mut relay = TestRelay::start(config.clone()).await;
    // A spool directory below a regular file cannot be created.
    let file = spool_dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    config.clusters = vec![ClusterConfig::new(
        "spooled",
        ClusterMethod::Forward,
        &["127.0.0.1:9=new"],
    )];
    config.clusters[0].overrides.insert(
        "spool_dir".to_string(),
        toml::Value::String(file.join("spool").display().to_string()),
    );
    let err = relay.reload(config).await.unwrap_err();
    assert!(format!("{err:#}").contains("spool"), "{err:#}");
    assert_eq!(relay.handle.registry.destinations().len(), 1);
    send(relay.address(), b"still.routed 1 1700000000\n").await;
    eventually("the old config still routes", || sink.n_lines() == 1).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn lines_rewritten_with_no_destination_at_all_are_counted() {
    let mut config = support::config(&[]);
    config.rewrites = vec![RewriteConfig {
        pattern: "^a".to_string(),
        replace: "b".to_string(),
    }];
    let relay = TestRelay::start(config).await;
    send(relay.address(), b"a.x 1 1700000000\nc.y 2 1700000000\n").await;
    let relay_stats = &relay.handle.registry.relay;
    eventually("both lines counted as going nowhere", || {
        relay_stats
            .lines_dropped_no_destination
            .load(Ordering::Relaxed)
            == 2
    })
    .await;
    assert_eq!(relay_stats.lines_no_route.load(Ordering::Relaxed), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_would_take_the_spools_past_their_total_is_refused() {
    let spool_dir = tempfile::tempdir().unwrap();
    let sinks = [Sink::start().await, Sink::start().await];
    let config = |n_destinations: usize| {
        let mut config = support::config(&addresses(&sinks)[..n_destinations]);
        config.destination.spool_dir = Some(spool_dir.path().to_path_buf());
        config.destination.spool_total_max_bytes = 2 * 1024 * 1024;
        config
    };
    // One destination: its spool may take the whole 2 MiB, and keeps that share.
    let mut relay = TestRelay::start(config(1)).await;
    let err = relay.reload(config(2)).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("spool_total_max_bytes"),
        "{err:#}"
    );
    assert_eq!(relay.handle.registry.destinations().len(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_grows_a_hash_cluster_moves_only_what_the_new_ring_moves() {
    let sinks = three_sinks().await;
    let config = |n_members: usize| {
        let mut config = support::config(&[]);
        let members = members(&addresses(&sinks)[..n_members]);
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        config.clusters = vec![ClusterConfig::new("c", ClusterMethod::CarbonCh, &members)];
        config
    };
    let ring = |n_members: usize| carbon_ring(&addresses(&sinks)[..n_members]);
    let mut relay = TestRelay::start(config(2)).await;
    let sink_refs: Vec<&Sink> = sinks.iter().collect();
    let before = lines("grow.before", 2000);
    let received_before = deliver(&relay, &before, &sink_refs).await;
    let report = relay.reload(config(3)).await.unwrap();
    assert_eq!(report.added.len(), 1);
    assert_eq!(report.kept.len(), 2);
    let after = lines("grow.after", 2000);
    let received_after = deliver(&relay, &after, &sink_refs).await;
    assert_eq!(relay.shutdown().await.lines_lost, 0);

    let mut chosen = Vec::new();
    for (sent, received, ring) in [
        (&before, &received_before, ring(2)),
        (&after, &received_after, ring(3)),
    ] {
        for line in sent.iter() {
            let path = line.split(' ').next().unwrap();
            ring.members_for(path.as_bytes(), 1, &mut chosen);
            assert_eq!(received[line], chosen[0], "{line}");
        }
    }
    let n_new_member = after
        .iter()
        .filter(|line| received_after[*line] == 2)
        .count();
    assert!((400..1000).contains(&n_new_member), "{n_new_member}");
}
