use std::collections::HashSet;

use md5::{Digest, Md5};

use super::*;
use crate::router::hash::carbon::{CarbonMethod, CarbonRing};
use crate::router::hash::Member;

/// A forward `default`, a carbon_ch cluster with replication 2 (one member with an instance), a failover cluster,
/// a blackhole route, routes that leave some paths unrouted, and two rewrites (one of which makes a path invalid).
const CONFIG: &str = r#"
destinations = ["127.0.0.1:2003"]

[[cluster]]
name = "cache"
method = "carbon_ch"
replication = 2
members = ["10.0.0.1:2004", "10.0.0.2:2004=b", "10.0.0.3:2004"]

[[cluster]]
name = "standby"
method = "failover"
members = ["10.0.1.1:2003", "10.0.1.2:2003"]

[[route]]
prefix = "junk."
send_to = ["blackhole"]
stop = true

[[route]]
match = "^servers\\."
send_to = ["cache"]

[[route]]
prefix = "servers.db"
send_to = ["cache", "standby"]

[[route]]
prefix = "app."
send_to = ["default", "cache"]

[[rewrite]]
match = "^old\\.(.*)"
replace = "servers.$1"

[[rewrite]]
match = "^gone\\..*"
replace = "."
"#;

fn config(text: &str) -> Config {
    let config = Config::parse(text).unwrap();
    config.validate().unwrap();
    config
}

fn output_text(output: Vec<u8>) -> String {
    String::from_utf8(output).unwrap()
}

/// Checks what `-test-routes` prints for `input` under `config_text`.
fn check_routes(config_text: &str, input: &str, expected: &str) {
    let mut output = Vec::new();
    test_routes(&config(config_text), input.as_bytes(), &mut output).unwrap();
    assert_eq!(output_text(output), expected, "input: {input:?}");
}

fn ring_dump_text(config_text: &str, cluster: &str) -> Result<String, Error> {
    let mut output = Vec::new();
    ring_dump(&config(config_text), cluster, &mut output)?;
    Ok(output_text(output))
}

fn ring_diff_text(before: &str, after: &str, paths: &str) -> String {
    let (before, after) = (config(before), config(after));
    let mut output = Vec::new();
    ring_diff(
        NamedConfig {
            name: "before.toml",
            config: &before,
        },
        NamedConfig {
            name: "after.toml",
            config: &after,
        },
        paths.as_bytes(),
        &mut output,
    )
    .unwrap();
    output_text(output)
}

fn member(text: &str) -> Member {
    Member::from(&crate::destination::Identity::parse(text).unwrap())
}

fn carbon_ring(members: &[&str]) -> CarbonRing {
    let members: Vec<Member> = members.iter().map(|text| member(text)).collect();
    CarbonRing::new(CarbonMethod::CarbonCh, &members, true)
}

/// A hash cluster `cache` of `method` and `flavour` over `members`.
fn hash_cluster(method: &str, flavour: &str, members: &[&str]) -> String {
    let members: Vec<String> = members.iter().map(|member| format!("{member:?}")).collect();
    format!(
        "[[cluster]]\nname = \"cache\"\nmethod = \"{method}\"\nflavour = \"{flavour}\"\nmembers = [{}]\n",
        members.join(", ")
    )
}

#[test]
fn each_line_prints_its_path_and_every_target_in_route_order() {
    check_routes(
        CONFIG,
        "servers.web1.cpu.user\napp.requests\njunk.metric\nunrouted.thing\nservers.db1.load\n",
        "servers.web1.cpu.user\tcache=10.0.0.3:2004,10.0.0.1:2004\n\
         app.requests\tdefault=127.0.0.1:2003 cache=10.0.0.1:2004,10.0.0.3:2004\n\
         junk.metric\tblackhole\n\
         unrouted.thing\t-\n\
         servers.db1.load\tcache=10.0.0.2:2004=b,10.0.0.1:2004 cache=10.0.0.2:2004=b,10.0.0.1:2004 \
         standby=10.0.1.1:2003\n",
    );
}

#[test]
fn members_come_in_delivery_order_as_the_ring_gives_them() {
    let ring = carbon_ring(&["10.0.0.1:2004", "10.0.0.2:2004=b", "10.0.0.3:2004"]);
    let names = ["10.0.0.1:2004", "10.0.0.2:2004=b", "10.0.0.3:2004"];
    let mut members = Vec::new();
    for index in 0..50 {
        let path = format!("servers.host{index}.cpu");
        ring.members_for(path.as_bytes(), 2, &mut members);
        let expected_members: Vec<&str> = members.iter().map(|&member| names[member]).collect();
        check_routes(
            CONFIG,
            &path,
            &format!("{path}\tcache={}\n", expected_members.join(",")),
        );
    }
}

#[test]
fn blank_lines_print_nothing() {
    check_routes(CONFIG, "\n  \t\n\r\n", "");
    check_routes(
        CONFIG,
        "\nunrouted.a\n\nunrouted.b",
        "unrouted.a\t-\nunrouted.b\t-\n",
    );
}

#[test]
fn a_path_alone_or_with_a_value_is_checked_for_its_path_only() {
    check_routes(CONFIG, "unrouted..a.", "unrouted.a\t-\n");
    check_routes(CONFIG, "  unrouted.a 1.5", "unrouted.a\t-\n");
    check_routes(CONFIG, "unrouted.a not-a-number", "unrouted.a\t-\n");
    check_routes(CONFIG, "unrouted.a\r", "unrouted.a\t-\n");
    check_routes(CONFIG, "..", "..\tinvalid:path\n");
}

#[test]
fn a_whole_line_is_checked_as_the_relay_checks_it() {
    check_routes(CONFIG, "unrouted.a 1 1700000000", "unrouted.a\t-\n");
    check_routes(CONFIG, "unrouted.a +1 1700000000\r", "unrouted.a\t-\n");
    check_routes(
        CONFIG,
        "unrouted.a abc 1700000000",
        "unrouted.a\tinvalid:value\n",
    );
    check_routes(
        CONFIG,
        "unrouted.a nan 1700000000",
        "unrouted.a\tinvalid:nan\n",
    );
    check_routes(CONFIG, "unrouted.a 1 soon", "unrouted.a\tinvalid:ts\n");
    check_routes(CONFIG, "unrouted.a 1 2 3", "unrouted.a\tinvalid:fields\n");
}

#[test]
fn paths_are_sanitised_or_rejected_by_the_path_policy() {
    check_routes(CONFIG, "unrouted.né", "unrouted.n__\t-\n");
    check_routes(CONFIG, "unrouted.a\0b", "unrouted.a\0b\tinvalid:nul\n");
    let mut output = Vec::new();
    test_routes(&config(CONFIG), &b"unrouted.\xff\n"[..], &mut output).unwrap();
    assert_eq!(output, b"unrouted.\xff\tinvalid:utf8\n");
    let reject = format!("{CONFIG}\n[line]\npath_policy = \"reject\"\n");
    check_routes(&reject, "unrouted.né", "unrouted.né\tinvalid:path_chars\n");
    let long = format!("{CONFIG}\n[line]\nmax_path_bytes = 16\n");
    check_routes(
        &long,
        "unrouted.a23456789",
        "unrouted.a23456789\tinvalid:path_len\n",
    );
}

#[test]
fn rewrites_come_before_routing_and_their_result_is_checked_again() {
    check_routes(
        CONFIG,
        "old.web1.cpu.user",
        "servers.web1.cpu.user\tcache=10.0.0.3:2004,10.0.0.1:2004\n",
    );
    check_routes(
        CONFIG,
        "gone.metric 1 1700000000",
        "gone.metric\tinvalid:path\n",
    );
}

#[test]
fn without_routes_every_line_goes_to_every_cluster() {
    let text = "destinations = [\"127.0.0.1:2003\"]\n\
                [[cluster]]\nname = \"spread\"\nmethod = \"any_of\"\nmembers = [\"10.0.0.1:2003\", \"10.0.0.2:2003\"]\n";
    let mut output = Vec::new();
    test_routes(&config(text), &b"a.b\n"[..], &mut output).unwrap();
    let output = output_text(output);
    let (path, targets) = output.trim_end().split_once('\t').unwrap();
    assert_eq!(path, "a.b");
    let (default, spread) = targets.split_once(' ').unwrap();
    assert_eq!(default, "default=127.0.0.1:2003");
    assert!(
        ["spread=10.0.0.1:2003", "spread=10.0.0.2:2003"].contains(&spread),
        "any_of picks one member: {spread}"
    );
}

#[test]
fn a_carbon_ring_dumps_100_distinct_ascending_positions_per_member() {
    let members = ["10.0.0.1:2004", "10.0.0.2:2004=b", "10.0.0.3:2004"];
    let dump = ring_dump_text(&hash_cluster("carbon_ch", "carbon", &members), "cache").unwrap();
    let entries: Vec<(u64, &str)> = dump
        .lines()
        .map(|line| {
            let (position, member) = line.split_once('\t').unwrap();
            (position.parse().unwrap(), member)
        })
        .collect();
    assert_eq!(entries.len(), 300);
    assert!(entries.windows(2).all(|pair| pair[0].0 < pair[1].0));
    for member in members {
        let n_entries = entries.iter().filter(|(_, name)| *name == member).count();
        assert_eq!(n_entries, 100, "{member}");
    }
    // Replica 0 of the first member: MD5 of "('10.0.0.1', None):0", first two bytes; nothing was there before it.
    let digest = Md5::digest(b"('10.0.0.1', None):0");
    let position = u64::from(u16::from_be_bytes([digest[0], digest[1]]));
    assert!(entries.contains(&(position, "10.0.0.1:2004")));
}

#[test]
fn a_carbon_c_relay_ring_dumps_each_position_once() {
    // Two members on one host without instances hash the same 100 keys: carbon-c-relay's ring gives every position
    // to the first, in config order; the third member's positions collide with none of those.
    let members = ["10.0.0.1:2004", "10.0.0.1:2005", "10.0.0.3:2004"];
    let dump = ring_dump_text(
        &hash_cluster("carbon_ch", "carbon-c-relay", &members),
        "cache",
    )
    .unwrap();
    let positions: HashSet<u16> = ["10.0.0.1", "10.0.0.1", "10.0.0.3"]
        .iter()
        .flat_map(|host| {
            (0..100).map(move |replica| {
                let digest = Md5::digest(format!("('{host}', None):{replica}").as_bytes());
                u16::from_be_bytes([digest[0], digest[1]])
            })
        })
        .collect();
    assert_eq!(dump.lines().count(), positions.len());
    assert!(
        !dump.contains("10.0.0.1:2005"),
        "the second member wins no tie"
    );
}

#[test]
fn a_jump_ring_dumps_its_members_in_bucket_order() {
    let text = hash_cluster(
        "jump_fnv1a_ch",
        "carbon-c-relay",
        &["10.0.1.1:2004=1", "10.0.1.2:2004=0", "10.0.1.3:2004"],
    );
    assert_eq!(
        ring_dump_text(&text, "cache").unwrap(),
        "0\t10.0.1.2:2004=0\n1\t10.0.1.1:2004=1\n2\t10.0.1.3:2004\n"
    );
}

#[test]
fn a_ring_dump_of_a_cluster_without_a_ring_is_a_usage_error() {
    let err = ring_dump_text(CONFIG, "nope").unwrap_err();
    assert!(
        matches!(&err, Error::Usage(message) if message.contains("\"nope\"") && message.contains("cache")),
        "{err}"
    );
    let err = ring_dump_text(CONFIG, "default").unwrap_err();
    assert!(
        matches!(&err, Error::Usage(message) if message.contains("forward")),
        "{err}"
    );
    let err = ring_dump_text("destinations = [\"127.0.0.1:2003\"]\n", "cache").unwrap_err();
    assert!(
        matches!(&err, Error::Usage(message) if message.contains("no hash cluster")),
        "{err}"
    );
}

#[test]
fn a_ring_diff_counts_the_paths_whose_primary_member_changes() {
    let three = ["10.0.0.1:2004", "10.0.0.2:2004", "10.0.0.3:2004"];
    let four = [
        "10.0.0.1:2004",
        "10.0.0.2:2004",
        "10.0.0.3:2004",
        "10.0.0.4:2004",
    ];
    let paths: Vec<String> = (0..2000)
        .map(|index| format!("servers.host{index}.cpu"))
        .collect();
    let (ring_three, ring_four) = (carbon_ring(&three), carbon_ring(&four));
    let (mut primary_three, mut primary_four) = (Vec::new(), Vec::new());
    let n_changed = paths
        .iter()
        .filter(|path| {
            ring_three.members_for(path.as_bytes(), 1, &mut primary_three);
            ring_four.members_for(path.as_bytes(), 1, &mut primary_four);
            primary_three != primary_four
        })
        .count();
    assert!(n_changed > 0);
    let percent = n_changed as f64 * 100.0 / 2000.0;
    assert_eq!(
        ring_diff_text(
            &hash_cluster("carbon_ch", "carbon", &three),
            &hash_cluster("carbon_ch", "carbon", &four),
            &paths.join("\n"),
        ),
        format!("cache: 3 -> 4 members, {n_changed} of 2000 paths ({percent:.2}%) change primary member\n")
    );
}

#[test]
fn a_ring_diff_of_one_config_with_itself_changes_nothing() {
    assert_eq!(
        ring_diff_text(
            CONFIG,
            CONFIG,
            "servers.a\nservers.b\n\napp.c 1 1700000000\n"
        ),
        "cache: 3 -> 3 members, 0 of 3 paths (0.00%) change primary member\n"
    );
    assert_eq!(
        ring_diff_text(CONFIG, CONFIG, ""),
        "cache: 3 -> 3 members, 0 of 0 paths (0.00%) change primary member\n"
    );
}

#[test]
fn a_ring_diff_compares_members_by_identity_not_by_position_in_the_list() {
    let members = ["10.0.0.1:2004", "10.0.0.2:2004", "10.0.0.3:2004"];
    let reordered = ["10.0.0.3:2004", "10.0.0.1:2004", "10.0.0.2:2004"];
    // carbon-c-relay's ring sorts ties by host, not by config order, so it is the same ring in any order.
    assert_eq!(
        ring_diff_text(
            &hash_cluster("carbon_ch", "carbon-c-relay", &members),
            &hash_cluster("carbon_ch", "carbon-c-relay", &reordered),
            "a\nb\nc\nd\n",
        ),
        "cache: 3 -> 3 members, 0 of 4 paths (0.00%) change primary member\n"
    );
}

#[test]
fn a_ring_diff_names_clusters_in_one_config_only_and_method_changes() {
    let before = format!(
        "{}[[cluster]]\nname = \"old\"\nmethod = \"fnv1a_ch\"\nflavour = \"carbon-c-relay\"\nmembers = [\"10.0.2.1:2003\"]\n\
         [[cluster]]\nname = \"flip\"\nmethod = \"forward\"\nmembers = [\"10.0.3.1:2003\"]\n",
        hash_cluster("carbon_ch", "carbon", &["10.0.0.1:2004"])
    );
    let after = format!(
        "{}[[cluster]]\nname = \"new\"\nmethod = \"jump_fnv1a_ch\"\nmembers = [\"10.0.4.1:2003\"]\n\
         [[cluster]]\nname = \"flip\"\nmethod = \"carbon_ch\"\nmembers = [\"10.0.3.1:2003\"]\n",
        hash_cluster("carbon_ch", "carbon-c-relay", &["10.0.0.1:2004"])
    );
    assert_eq!(
        ring_diff_text(&before, &after, "a.b\n"),
        "cache: carbon_ch (carbon) -> carbon_ch (carbon-c-relay), 1 -> 1 members, 0 of 1 paths (0.00%) change \
         primary member\n\
         old: only in before.toml\n\
         flip: forward in before.toml, carbon_ch in after.toml; only hash clusters are compared\n\
         new: only in after.toml\n"
    );
}

#[test]
fn a_ring_diff_leaves_out_invalid_lines_and_says_how_many() {
    assert_eq!(
        ring_diff_text(CONFIG, CONFIG, "servers.a\n..\ngone.x\nservers.b 1 2 3\n"),
        "cache: 3 -> 3 members, 0 of 1 paths (0.00%) change primary member\n\
         3 lines not counted: invalid under before.toml or after.toml\n"
    );
    assert_eq!(
        ring_diff_text("", "", "a\n"),
        "no hash cluster in before.toml or after.toml\n"
    );
}

#[test]
fn trim_and_first_field_split_as_the_relay_does() {
    assert_eq!(trim(b" \ta b \t\r"), b"a b");
    assert_eq!(trim(b" \t\r"), b"");
    assert_eq!(first_field(b"\t a\tb c"), b"a");
    assert_eq!(first_field(b""), b"");
}
