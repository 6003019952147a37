//! Runs the real `polymur` binary and checks its exit codes and messages for `-t`, usage errors and `--help`, and
//! the output of the config inspections `-test-routes`, `-ring-dump` and `-ring-diff`.

use std::collections::HashSet;
use std::process::Output;

use md5::{Digest, Md5};
use polymur::config::Config;
use polymur::router::hash::carbon::{CarbonMethod, CarbonRing};
use polymur::router::hash::Member;
use polymur::router::table::{AllUp, Decision, RoutingTable, Scratch};

use crate::support::process::{config_file, run_to_exit as polymur, run_with_stdin};

/// Checks the exit code and that stdout and stderr contain the given texts.
fn check(output: &Output, code: i32, stdout_needle: &str, stderr_needle: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains(stdout_needle), "stdout: {stdout}");
    assert!(stderr.contains(stderr_needle), "stderr: {stderr}");
}

#[test]
fn check_mode_accepts_a_good_config_file() {
    let file = config_file("destinations = [\"10.0.5.20:2003\"]\n[listen]\nport = 2003\n");
    let path = file.path().to_str().unwrap();
    check(&polymur(&["-c", path, "-t"]), 0, "configuration ok", "");
}

#[test]
fn check_mode_accepts_the_example_config_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/polymur.toml");
    check(&polymur(&["-t", "-c", path]), 0, "configuration ok", "");
}

#[test]
fn check_mode_with_an_unknown_key_exits_78_naming_the_key() {
    let file = config_file("[listen]\nprot = 2003\n");
    let path = file.path().to_str().unwrap();
    check(&polymur(&["-c", path, "-t"]), 78, "", "prot");
}

#[test]
fn check_mode_with_an_invalid_value_exits_78_naming_the_key() {
    let file = config_file("[line]\nmax_line_bytes = 10\n");
    let path = file.path().to_str().unwrap();
    check(&polymur(&["-c", path, "-t"]), 78, "", "line.max_line_bytes");
}

#[test]
fn check_mode_with_a_bad_flag_value_exits_78() {
    check(
        &polymur(&["-t", "-destinations=10.0.5.20"]),
        78,
        "",
        "destinations",
    );
}

#[test]
fn a_missing_config_file_exits_78_naming_the_path() {
    check(
        &polymur(&["-t", "-c", "/nonexistent/polymur.toml"]),
        78,
        "",
        "/nonexistent/polymur.toml",
    );
}

#[test]
fn an_unknown_flag_exits_64() {
    check(&polymur(&["-listen-prot=2003"]), 64, "", "--listen-prot");
}

#[test]
fn a_stray_value_after_a_boolean_exits_64() {
    check(&polymur(&["-t", "-console-out", "true"]), 64, "", "'true'");
}

#[test]
fn check_mode_accepts_the_spool_flags() {
    check(
        &polymur(&[
            "-t",
            "-spool-dir",
            "/x",
            "-spool-mode",
            "always",
            "-spool-max-bytes",
            "2GiB",
        ]),
        0,
        "configuration ok",
        "",
    );
    check(
        &polymur(&[
            "-t",
            "--spool-dir=/x",
            "-spool-mode=overflow",
            "-spool-max-bytes=1048576",
        ]),
        0,
        "configuration ok",
        "",
    );
}

#[test]
fn a_bad_spool_mode_exits_64() {
    check(
        &polymur(&["-t", "-spool-dir=/x", "-spool-mode=sometimes"]),
        64,
        "",
        "sometimes",
    );
}

#[test]
fn a_spool_size_that_is_not_a_size_exits_64() {
    check(
        &polymur(&["-t", "-spool-max-bytes=lots"]),
        64,
        "",
        "spool-max-bytes",
    );
}

#[test]
fn a_spool_size_below_the_minimum_exits_78_naming_the_key() {
    check(
        &polymur(&["-t", "-spool-max-bytes=512KiB"]),
        78,
        "",
        "destination.spool_max_bytes",
    );
}

#[test]
fn spool_flags_override_the_file() {
    // The file alone is a config error; the flags replace its bad value before validation.
    let file = config_file(
        "[destination]\nspool_dir = \"/srv/spool\"\nspool_mode = \"always\"\nspool_max_bytes = \"512KiB\"\n",
    );
    let path = file.path().to_str().unwrap();
    check(
        &polymur(&["-c", path, "-t"]),
        78,
        "",
        "destination.spool_max_bytes",
    );
    check(
        &polymur(&[
            "-c",
            path,
            "-t",
            "-spool-dir=/x",
            "-spool-mode=overflow",
            "-spool-max-bytes=2GiB",
        ]),
        0,
        "configuration ok",
        "",
    );
}

#[test]
fn help_exits_0_and_lists_the_seed_flags() {
    let output = polymur(&["--help"]);
    check(&output, 0, "-destinations", "");
    check(&output, 0, "-listen-port", "");
    check(&output, 0, "-console-out", "");
    check(&output, 0, "-spool-dir", "");
    check(&output, 0, "-spool-mode", "");
    check(&output, 0, "-spool-max-bytes", "");
    check(&polymur(&["-help"]), 0, "-destinations", "");
}

#[test]
fn version_exits_0() {
    check(&polymur(&["--version"]), 0, env!("CARGO_PKG_VERSION"), "");
}

/// A forward `default`, a carbon_ch cluster with replication 2, a blackhole route, routes that leave some paths
/// unrouted, and a rewrite.
const ROUTES: &str = r#"
destinations = ["127.0.0.1:2003"]

[[cluster]]
name = "cache"
method = "carbon_ch"
replication = 2
members = ["10.0.0.1:2004", "10.0.0.2:2004=b", "10.0.0.3:2004"]

[[route]]
prefix = "junk."
send_to = ["blackhole"]
stop = true

[[route]]
match = "^servers\\."
send_to = ["cache"]
stop = true

[[route]]
prefix = "app."
send_to = ["default", "cache"]

[[rewrite]]
match = "^old\\.(.*)"
replace = "servers.$1"
"#;

const CACHE_MEMBERS: [&str; 3] = ["10.0.0.1:2004", "10.0.0.2:2004=b", "10.0.0.3:2004"];

/// Checks a run that succeeded without a word on stderr, and returns its stdout.
fn success_stdout(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(stderr, "");
    String::from_utf8(output.stdout.clone()).expect("UTF-8 on stdout")
}

/// A hash cluster `cache` over `members`, in the given method and flavour.
fn hash_cluster(method: &str, flavour: &str, members: &[String]) -> String {
    let members: Vec<String> = members.iter().map(|member| format!("{member:?}")).collect();
    format!(
        "[[cluster]]\nname = \"cache\"\nmethod = \"{method}\"\nflavour = \"{flavour}\"\nmembers = [{}]\n",
        members.join(", ")
    )
}

fn numbered_members(n_members: usize) -> Vec<String> {
    (1..=n_members)
        .map(|index| format!("10.1.0.{index}:2004"))
        .collect()
}

fn ring_member(text: &str) -> Member {
    Member::from(&polymur::destination::Identity::parse(text).expect("host:port[=instance]"))
}

#[test]
fn test_routes_prints_each_path_as_sent_and_its_targets() {
    let file = config_file(ROUTES);
    let input = "servers.web1.cpu.user\n\
                 app.requests 1 1700000000\n\
                 \n\
                 junk.metric\n\
                 unrouted.thing\n\
                 bad..path.\n\
                 ..\n\
                 app.requests x 1700000000\n\
                 old.web1.cpu.user\n";
    let output = run_with_stdin(
        &["-c", file.path().to_str().unwrap(), "-test-routes"],
        input.as_bytes(),
    );
    assert_eq!(
        success_stdout(&output),
        "servers.web1.cpu.user\tcache=10.0.0.3:2004,10.0.0.1:2004\n\
         app.requests\tdefault=127.0.0.1:2003 cache=10.0.0.1:2004,10.0.0.3:2004\n\
         junk.metric\tblackhole\n\
         unrouted.thing\t-\n\
         bad.path\t-\n\
         ..\tinvalid:path\n\
         app.requests\tinvalid:value\n\
         servers.web1.cpu.user\tcache=10.0.0.3:2004,10.0.0.1:2004\n"
    );
}

#[test]
fn test_routes_lists_members_in_the_order_carbons_ring_gives() {
    let file = config_file(ROUTES);
    let paths: Vec<String> = (0..20)
        .map(|index| format!("servers.host{index}.disk.sda.read_bytes"))
        .collect();
    let output = run_with_stdin(
        &["-c", file.path().to_str().unwrap(), "-test-routes"],
        paths.join("\n").as_bytes(),
    );
    let stdout = success_stdout(&output);
    let members: Vec<Member> = CACHE_MEMBERS.iter().map(|text| ring_member(text)).collect();
    let ring = CarbonRing::new(CarbonMethod::CarbonCh, &members, true);
    let mut chosen = Vec::new();
    let mut primaries = HashSet::new();
    assert_eq!(stdout.lines().count(), paths.len());
    for (path, line) in paths.iter().zip(stdout.lines()) {
        ring.members_for(path.as_bytes(), 2, &mut chosen);
        let names: Vec<&str> = chosen.iter().map(|&member| CACHE_MEMBERS[member]).collect();
        assert_eq!(line, format!("{path}\tcache={}", names.join(",")));
        primaries.insert(chosen[0]);
    }
    assert!(
        primaries.len() > 1,
        "the paths spread over several primaries"
    );
}

#[test]
fn test_routes_on_a_bad_config_exits_78_with_the_error_on_stderr() {
    let file = config_file("[[route]]\nsend_to = [\"nowhere\"]\n");
    let output = run_with_stdin(
        &["-c", file.path().to_str().unwrap(), "-test-routes"],
        b"a.b\n",
    );
    check(&output, 78, "", "nowhere");
    assert!(output.stdout.is_empty());
}

#[test]
fn ring_dump_of_a_carbon_ring_lists_100_entries_per_member() {
    let members = numbered_members(12);
    let file = config_file(&hash_cluster("carbon_ch", "carbon", &members));
    let stdout = success_stdout(&polymur(&[
        "-c",
        file.path().to_str().unwrap(),
        "-ring-dump",
        "cache",
    ]));
    // carbon moves a colliding replica on: every replica keeps a position of its own.
    assert_eq!(stdout.lines().count(), 12 * 100);
    let positions: Vec<u64> = stdout
        .lines()
        .map(|line| {
            line.split_once('\t')
                .expect("a tab")
                .0
                .parse()
                .expect("a position")
        })
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "ascending"
    );
    for member in &members {
        let n_entries = stdout
            .lines()
            .filter(|line| line.ends_with(&format!("\t{member}")))
            .count();
        assert_eq!(n_entries, 100, "{member}");
    }
}

#[test]
fn ring_dump_of_a_carbon_c_relay_ring_lists_each_position_once() {
    let members: Vec<String> = CACHE_MEMBERS.iter().map(ToString::to_string).collect();
    let file = config_file(&hash_cluster("carbon_ch", "carbon-c-relay", &members));
    let stdout = success_stdout(&polymur(&[
        "-c",
        file.path().to_str().unwrap(),
        "-ring-dump",
        "cache",
    ]));
    // carbon-c-relay's replica keys, hashed here: equal positions are collisions, which its ring keeps once.
    let keys = [
        ("10.0.0.1", "None"),
        ("10.0.0.2", "'b'"),
        ("10.0.0.3", "None"),
    ];
    let positions: HashSet<u16> = keys
        .iter()
        .flat_map(|(host, instance)| {
            (0..100).map(move |replica| {
                let digest = Md5::digest(format!("('{host}', {instance}):{replica}").as_bytes());
                u16::from_be_bytes([digest[0], digest[1]])
            })
        })
        .collect();
    let n_collisions = 300 - positions.len();
    assert!(n_collisions > 0, "the members were picked for a collision");
    assert_eq!(stdout.lines().count(), 300 - n_collisions);
}

#[test]
fn ring_dump_of_an_unknown_or_ringless_cluster_exits_64() {
    let file = config_file(ROUTES);
    let path = file.path().to_str().unwrap();
    check(
        &polymur(&["-c", path, "-ring-dump", "nope"]),
        64,
        "",
        "\"nope\"",
    );
    check(
        &polymur(&["-c", path, "-ring-dump", "default"]),
        64,
        "",
        "forward",
    );
}

#[test]
fn ring_diff_counts_the_paths_the_library_moves() {
    let before = config_file(&hash_cluster("carbon_ch", "carbon", &numbered_members(12)));
    let after = config_file(&hash_cluster("carbon_ch", "carbon", &numbered_members(13)));
    let paths: Vec<String> = (0..10_000)
        .map(|index| format!("servers.fra2.host{index:05}.disk.sda.read_bytes"))
        .collect();
    let output = run_with_stdin(
        &[
            "-c",
            before.path().to_str().unwrap(),
            "-ring-diff",
            after.path().to_str().unwrap(),
        ],
        paths.join("\n").as_bytes(),
    );
    let primary_members = |file: &tempfile::NamedTempFile| -> Vec<String> {
        let config = Config::load(file.path()).expect("load");
        let identities = config.destination_identities().expect("identities");
        let table = RoutingTable::new(&config).expect("routing table");
        let (mut scratch, mut decision) = (Scratch::default(), Decision::default());
        paths
            .iter()
            .map(|path| {
                table.route_in_cluster(0, path.as_bytes(), &AllUp, &mut scratch, &mut decision);
                identities[decision.destinations[0]].to_string()
            })
            .collect()
    };
    let n_changed = primary_members(&before)
        .iter()
        .zip(primary_members(&after))
        .filter(|(before, after)| **before != *after)
        .count();
    assert!(
        (500..1000).contains(&n_changed),
        "about 1/13 move: {n_changed}"
    );
    let percent = n_changed as f64 / 100.0;
    assert_eq!(
        success_stdout(&output),
        format!("cache: 12 -> 13 members, {n_changed} of 10000 paths ({percent:.2}%) change primary member\n")
    );
}

#[test]
fn ring_diff_with_a_bad_other_config_exits_78() {
    let file = config_file(ROUTES);
    let bad = config_file("[[cluster]]\nname = \"cache\"\nmethod = \"carbon_ch\"\n");
    let output = run_with_stdin(
        &[
            "-c",
            file.path().to_str().unwrap(),
            "-ring-diff",
            bad.path().to_str().unwrap(),
        ],
        b"a.b\n",
    );
    check(&output, 78, "", bad.path().to_str().unwrap());
}
