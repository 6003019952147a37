//! `polymur -import-ccr` against carbon-c-relay itself: a config with every cluster type, regex and `*` matches,
//! `stop`, blackhole and a rewrite is run through `carbon-c-relay -t` and, imported, through `polymur -test-routes`,
//! and each path must go to the same places.
//!
//! Compared per path: the path after rewrites, and per target in order the cluster and its members: all of them
//! for `forward` and the hash clusters (in ring order, so every replica), the first for `failover`, `blackhole`,
//! and `-` for no match. `any_of` is compared by cluster only: carbon-c-relay picks the member by its own hash,
//! polymur by a jump hash of the FNV-1a, by design. carbon-c-relay prints members without their instance, so
//! polymur's are compared without it too.

use std::collections::HashMap;
use std::process::{Command, Stdio};

use crate::peers::{program, temp_dir, write_file};
use crate::support::process::run_with_stdin;

/// Every cluster type; the hash clusters with instances, replication and a member order that is not lexical.
const CLUSTERS: &str = "\
cluster fw forward 127.0.0.1:2101 127.0.0.2:2102;
cluster fo failover 127.0.0.3:2103 127.0.0.4:2104;
cluster any any_of 127.0.0.5:2105 127.0.0.6:2106 127.0.0.7;
cluster ch
    carbon_ch replication 2
        127.0.0.10:2107 127.0.0.8:2108=b   # the ring keys on host and instance
        127.0.0.9:2109
    ;
cluster fnv fnv1a_ch 127.0.1.1:2110=4d79d135 127.0.1.2:2111=9f1c0e2a 127.0.1.3:2112=c3b7a801;
cluster jump jump_fnv1a_ch replication 2 127.0.2.1:2113=2 127.0.2.2:2114=0 127.0.2.3:2115=1;
";

/// Rules with `stop`, fall-through, two expressions in one match, blackhole (which stops by itself) and a rewrite.
const RULES: &str = "\
rewrite ^old\\.([^.]+)\\.(.*) into renamed.\\2.\\1;
match ^junk\\. send to blackhole;
match ^sys\\.[a-z]+[0-9]\\. send to fw fo stop;
match ^app\\. ^web\\. send to ch;
match ^app\\.(api|db)\\. send to fnv stop;
match ^renamed\\. send to jump any;
match [.]count$ send to any stop;
match ^web\\. send to jump stop;
";

const N_PATHS: usize = 2_000;

#[test]
fn imported_configs_route_every_path_as_carbon_c_relay_does() {
    let mut paths_by_config = Vec::new();
    // With `match *` last, no path is left unmatched; without it, some are.
    for last_rule in ["match * send to fo ch;\n", "match ^misc\\. send to fnv;\n"] {
        let ccr_config = format!("{CLUSTERS}{RULES}{last_rule}");
        let n_compared = compare(&ccr_config, &paths());
        paths_by_config.push(n_compared);
    }
    assert_eq!(paths_by_config, [N_PATHS, N_PATHS]);
}

/// Paths for every rule, with suffixes that spread them over the rings.
fn paths() -> Vec<String> {
    const PREFIXES: [&str; 10] = [
        "junk.",
        "sys.web1.",
        "sys.db.",
        "app.api.",
        "app.other.",
        "web.",
        "old.h",
        "misc.",
        "x.",
        "sys.db2.",
    ];
    (0..N_PATHS)
        .map(|index| {
            let prefix = PREFIXES[index % PREFIXES.len()];
            let suffix = if index % 3 == 0 { "count" } else { "value" };
            format!("{prefix}{}.m{index}.{suffix}", index * 7919 % 1000)
        })
        .collect()
}

/// Runs `paths` through carbon-c-relay with `ccr_config` and through polymur with its import, asserts they agree,
/// and returns how many paths were compared.
fn compare(ccr_config: &str, paths: &[String]) -> usize {
    let carbon_c_relay = program(
        "/usr/bin/carbon-c-relay",
        "apt-get install carbon-c-relay (Debian)",
    );
    let dir = temp_dir();
    let ccr_path = write_file(dir.path(), "relay.conf", ccr_config);
    let ccr_path = ccr_path.to_str().expect("utf-8 path");
    let input = paths.join("\n") + "\n";

    let mut child = Command::new(carbon_c_relay)
        .args(["-t", "-f", ccr_path])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run carbon-c-relay -t");
    let mut child_stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn({
        let input = input.clone();
        move || {
            use std::io::Write as _;
            let _ = child_stdin.write_all(input.as_bytes());
        }
    });
    let output = child.wait_with_output().expect("wait for carbon-c-relay");
    writer.join().expect("stdin writer");
    assert!(
        output.status.success(),
        "carbon-c-relay -t: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs = carbon_c_relay_routes(&String::from_utf8_lossy(&output.stdout));

    let import = run_with_stdin(&["-import-ccr", ccr_path], b"");
    let stderr = String::from_utf8_lossy(&import.stderr);
    assert_eq!(import.status.code(), Some(0), "-import-ccr: {stderr}");
    let imported = write_file(
        dir.path(),
        "imported.toml",
        &String::from_utf8_lossy(&import.stdout),
    );
    let imported = imported.to_str().expect("utf-8 path");
    let check = run_with_stdin(&["-c", imported, "-t"], b"");
    assert_eq!(
        check.status.code(),
        Some(0),
        "-t on the import: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let routes = run_with_stdin(&["-c", imported, "-test-routes"], input.as_bytes());
    assert_eq!(
        routes.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&routes.stderr)
    );
    let ours = polymur_routes(&String::from_utf8_lossy(&routes.stdout));

    assert_eq!(
        theirs.len(),
        paths.len(),
        "carbon-c-relay answered every path"
    );
    assert_eq!(ours.len(), paths.len(), "polymur answered every path");
    let methods = cluster_methods(ccr_config);
    let mut n_targets: HashMap<String, usize> = HashMap::new();
    for ((path, (their_path, their_targets)), (our_path, our_targets)) in
        paths.iter().zip(&theirs).zip(&ours)
    {
        assert_eq!(our_path, their_path, "{path}: the path after rewrites");
        let their_targets = normalise(their_targets, &methods);
        let our_targets = normalise(our_targets, &methods);
        assert_eq!(
            our_targets,
            their_targets,
            "{path} (as {our_path}); the import:\n{}",
            String::from_utf8_lossy(&import.stdout)
        );
        for target in our_targets {
            let cluster = target.split('=').next().unwrap_or_default().to_string();
            *n_targets.entry(cluster).or_default() += 1;
        }
    }
    // Every cluster, blackhole and no-match (when the config allows it) took part.
    for cluster in ["fw", "fo", "any", "ch", "fnv", "jump", "blackhole"] {
        assert!(
            n_targets.get(cluster).is_some_and(|&n| n > 50),
            "{cluster}: {n_targets:?}"
        );
    }
    paths.len()
}

/// A target as compared: `cluster=member,member` (all members for forward and hash clusters, the first for
/// failover, none for any_of), `blackhole` or `-`.
fn normalise(targets: &[Target], methods: &HashMap<String, String>) -> Vec<String> {
    targets
        .iter()
        .map(|(cluster, members)| {
            let members: Vec<&str> = members
                .iter()
                .map(|member| member.split('=').next().unwrap_or_default())
                .collect();
            match methods.get(cluster).map(String::as_str) {
                None => cluster.clone(),
                Some("any_of") => cluster.clone(),
                Some("failover") => {
                    format!("{cluster}={}", members.first().copied().unwrap_or_default())
                }
                Some(_) => format!("{cluster}={}", members.join(",")),
            }
        })
        .collect()
}

/// Cluster name → type, from the carbon-c-relay config's `cluster NAME TYPE` statements.
fn cluster_methods(ccr_config: &str) -> HashMap<String, String> {
    let words: Vec<&str> = ccr_config.split_whitespace().collect();
    words
        .windows(3)
        .filter(|window| window[0] == "cluster")
        .map(|window| (window[1].to_string(), window[2].to_string()))
        .collect()
}

/// A cluster (or `blackhole`, `-`) and the members it printed.
type Target = (String, Vec<String>);

/// A path and its targets.
type Routed = (String, Vec<Target>);

/// `polymur -test-routes` output: `PATH\tcluster=member,... ...`, `blackhole` or `-`.
fn polymur_routes(output: &str) -> Vec<Routed> {
    output
        .lines()
        .map(|line| {
            let (path, targets) = line.split_once('\t').expect("path, tab, targets");
            let targets = targets
                .split(' ')
                .map(|target| match target.split_once('=') {
                    Some((cluster, members)) => (
                        cluster.to_string(),
                        members.split(',').map(str::to_string).collect(),
                    ),
                    None => (target.to_string(), Vec::new()),
                })
                .collect();
            (path.to_string(), targets)
        })
        .collect()
}

/// `carbon-c-relay -t` output after its config: per path, a `rewrite` block per rewrite applied (`into(...) ->
/// NEW`), then a `match` block per match that fired (`EXPR -> PATH` or `-> PATH` on its own line, then
/// `type(cluster)` with its members indented below, or `blackholed`), or `nothing matched PATH`.
fn carbon_c_relay_routes(output: &str) -> Vec<Routed> {
    let mut routed: Vec<Routed> = Vec::new();
    // The path being read, whether a match block was seen for it, and its targets.
    let mut current: Option<(String, bool, Vec<Target>)> = None;
    let mut lines = output.lines().peekable();
    let path_after_arrow = |line: &str| line.rsplit_once("-> ").map(|(_, path)| path.to_string());
    while let Some(line) = lines.next() {
        if let Some(path) = line.strip_prefix("nothing matched ") {
            if let Some((open_path, true, targets)) = current.take() {
                routed.push((open_path, targets));
            }
            current = None;
            routed.push((path.to_string(), vec![("-".to_string(), Vec::new())]));
            continue;
        }
        if line != "rewrite" && line != "match" {
            continue;
        }
        let mut block = Vec::new();
        while let Some(next) = lines.peek().filter(|next| next.starts_with("    ")) {
            block.push(*next);
            lines.next();
        }
        // The config that carbon-c-relay echoes first has blocks without a path.
        let Some(path) = block.iter().find_map(|line| path_after_arrow(line)) else {
            continue;
        };
        if line == "rewrite" {
            if let Some((open_path, true, targets)) = current.take() {
                routed.push((open_path, targets));
            }
            current = Some((path, false, Vec::new()));
            continue;
        }
        match current.take() {
            Some((open_path, seen_match, targets)) if open_path == path || !seen_match => {
                current = Some((path, true, targets));
            }
            Some((open_path, _, targets)) => {
                routed.push((open_path, targets));
                current = Some((path, true, Vec::new()));
            }
            None => current = Some((path, true, Vec::new())),
        }
        let targets = &mut current.as_mut().expect("just set").2;
        for block_line in block {
            if block_line == "    blackholed" {
                targets.push(("blackhole".to_string(), Vec::new()));
            } else if let Some(member) = block_line.strip_prefix("        ") {
                if let Some((_, members)) = targets.last_mut() {
                    members.push(member.trim().to_string());
                }
            } else if let Some((_, cluster)) = block_line
                .trim()
                .strip_suffix(')')
                .and_then(|target| target.split_once('('))
            {
                targets.push((cluster.to_string(), Vec::new()));
            }
        }
    }
    if let Some((open_path, true, targets)) = current {
        routed.push((open_path, targets));
    }
    routed
}
