//! Clusters, routes and rewrites end to end on real sockets: consistent hashing to the member carbon's ring names,
//! counted blackholes and unrouted lines, and `any_of`/`failover` members killed and restarted.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use polymur::config::{ClusterConfig, ClusterMethod, RewriteConfig, RouteConfig};
use polymur::router::hash::carbon::CarbonRing;
use polymur::router::hash::Member;

use crate::support::{self, eventually, send, Sink, TestRelay};

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

async fn relay_with_cluster(method: ClusterMethod, addresses: &[SocketAddr]) -> TestRelay {
    let mut config = support::config(&[]);
    let members = members(addresses);
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    config.clusters = vec![ClusterConfig::new("c", method, &members)];
    TestRelay::start(config).await
}

#[tokio::test]
async fn a_carbon_ch_cluster_sends_each_line_to_the_member_carbons_ring_names() {
    let sinks = [
        Sink::start().await,
        Sink::start().await,
        Sink::start().await,
    ];
    let relay = relay_with_cluster(ClusterMethod::CarbonCh, &addresses(&sinks)).await;
    let sent = lines("servers.web", 3000);
    send(relay.address(), &joined(&sent)).await;
    eventually("every line delivered once", || {
        sinks.iter().map(Sink::n_lines).sum::<usize>() >= sent.len()
    })
    .await;

    let ring_members: Vec<Member> = sinks
        .iter()
        .enumerate()
        .map(|(index, sink)| Member {
            host: "127.0.0.1".to_string(),
            port: sink.address().port(),
            instance: Some(format!("m{index}")),
        })
        .collect();
    let ring = CarbonRing::new(&ring_members, true);
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
    let sinks = [
        Sink::start().await,
        Sink::start().await,
        Sink::start().await,
    ];
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

    let primary = Sink::start_on(primary_address).await;
    eventually("the primary reconnected", || {
        relay.destination(0).connected.load(Ordering::Relaxed)
    })
    .await;
    let after = lines("after", 1000);
    let received = deliver(&relay, &after, &[&primary, &backup]).await;
    assert!(after.iter().all(|line| received[line] == 0));
    relay.shutdown().await;
}

fn addresses(sinks: &[Sink]) -> Vec<SocketAddr> {
    sinks.iter().map(Sink::address).collect()
}
