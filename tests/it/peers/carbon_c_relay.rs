//! carbon-c-relay ⇄ polymur: wire compatibility both ways, as the exact multiset of 50,000 distinct lines; and
//! `-ring-dump` against the rings carbon-c-relay's own `-t -d` lists.
//!
//! carbon-c-relay 3.7.3 runs with `-s` (submission mode: none of its own `carbon.relays.*` metrics in the stream) and
//! with room to hold the burst (`-q 400000 -T 5000`): its defaults drop lines under pressure, which is not what these
//! tests are about. The `listen` line in its config sets its address (it then ignores `-p`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::peers::{free_tcp_port, program, temp_dir, write_file, Peer};
use crate::support::process::{config_file, run_to_exit};
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

/// Three hash clusters, in carbon-c-relay's config syntax and in polymur's. The `ch` members were picked for a
/// collision on the ring (two replicas at position 7798); `jump` has instances out of numeric order.
const RING_CLUSTERS: [(&str, &str, [&str; 3]); 3] = [
    (
        "ch",
        "carbon_ch",
        ["10.0.0.1:2004", "10.0.0.2:2004=b", "10.0.0.3:2004"],
    ),
    (
        "fnv",
        "fnv1a_ch",
        ["10.0.2.1:2004", "10.0.2.2:2004=x", "10.0.2.3:2004"],
    ),
    (
        "jump",
        "jump_fnv1a_ch",
        ["10.0.1.1:2004=1", "10.0.1.2:2004=0", "10.0.1.3:2004"],
    ),
];

#[test]
fn ring_dump_lists_the_rings_carbon_c_relay_lists() {
    let carbon_c_relay = program(
        "/usr/bin/carbon-c-relay",
        "apt-get install carbon-c-relay (Debian)",
    );
    let dir = temp_dir();
    let mut ccr_config = String::new();
    let mut polymur_config = String::new();
    for (name, method, members) in RING_CLUSTERS {
        ccr_config.push_str(&format!(
            "cluster {name} {method}\n    {}\n    ;\n",
            members.join("\n    ")
        ));
        let quoted: Vec<String> = members.iter().map(|member| format!("{member:?}")).collect();
        polymur_config.push_str(&format!(
            "[[cluster]]\nname = \"{name}\"\nmethod = \"{method}\"\nflavour = \"carbon-c-relay\"\n\
             members = [{}]\n",
            quoted.join(", ")
        ));
    }
    ccr_config.push_str("match * send to ch;\n");
    let ccr_path = write_file(dir.path(), "relay.conf", &ccr_config);
    let output = Command::new(carbon_c_relay)
        .args(["-t", "-d", "-f", ccr_path.to_str().expect("utf-8 path")])
        .stdin(Stdio::null())
        .output()
        .expect("run carbon-c-relay -t -d");
    let rings = carbon_c_relay_rings(&String::from_utf8_lossy(&output.stdout));
    let polymur_file = config_file(&polymur_config);
    for (name, _, _) in RING_CLUSTERS {
        let mut theirs = rings
            .get(name)
            .unwrap_or_else(|| panic!("carbon-c-relay listed no ring {name}: {rings:?}"))
            .clone();
        let dump = run_to_exit(&[
            "-c",
            polymur_file.path().to_str().unwrap(),
            "-ring-dump",
            name,
        ]);
        assert_eq!(
            dump.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&dump.stderr)
        );
        let ours: Vec<(String, String)> = String::from_utf8(dump.stdout)
            .expect("UTF-8")
            .lines()
            .map(|line| {
                let (position, member) = line.split_once('\t').expect("position, tab, member");
                (position.to_string(), member.to_string())
            })
            .collect();
        if name == "jump" {
            // carbon-c-relay numbers a jump ring's members by their config order; polymur by bucket.
            let member_order = |entries: &[(String, String)]| -> Vec<String> {
                entries.iter().map(|(_, member)| member.clone()).collect()
            };
            assert_eq!(member_order(&ours), member_order(&theirs), "{name}");
        } else {
            // carbon-c-relay lists a tied position once per replica, always with its winner; polymur once.
            theirs.dedup();
            assert_eq!(ours, theirs, "{name}");
        }
    }
    let ch_entries = &rings["ch"];
    assert_eq!(ch_entries.len(), 300, "carbon-c-relay lists every replica");
    assert!(
        ch_entries.windows(2).any(|pair| pair[0] == pair[1]),
        "the ch ring has its collision"
    );
}

/// The rings in `carbon-c-relay -t -d` output: after `# hash ring for NAME follows`, `POSITION@MEMBER` entries,
/// several to a line, until a line without one.
fn carbon_c_relay_rings(output: &str) -> HashMap<String, Vec<(String, String)>> {
    let mut rings = HashMap::new();
    let mut lines = output.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("# hash ring for ")
            .and_then(|rest| rest.strip_suffix(" follows"))
        else {
            continue;
        };
        let mut entries = Vec::new();
        for entry_line in lines.by_ref() {
            let line_entries: Vec<(String, String)> = entry_line
                .split_whitespace()
                .filter_map(|entry| entry.split_once('@'))
                .map(|(position, member)| (position.to_string(), member.to_string()))
                .collect();
            if line_entries.is_empty() {
                break;
            }
            entries.extend(line_entries);
        }
        rings.insert(name.to_string(), entries);
    }
    rings
}
