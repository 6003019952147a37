use std::collections::HashSet;

use super::*;
use crate::config::{ClusterConfig, RewriteConfig, RouteConfig};

fn table(text: &str) -> RoutingTable {
    let config = Config::parse(text).unwrap();
    config.validate().unwrap();
    RoutingTable::new(&config).unwrap()
}

/// The destinations of `path` (after rewrites) with every member up, as identities.
fn destinations_of(table: &RoutingTable, config_text: &str, path: &str) -> Vec<String> {
    let config = Config::parse(config_text).unwrap();
    let identities = config.destination_identities().unwrap();
    let mut scratch = Scratch::default();
    let mut decision = Decision::default();
    let path = table
        .rewrite(path.as_bytes(), &mut scratch)
        .map_or_else(|| path.as_bytes().to_vec(), <[u8]>::to_vec);
    table.route(&path, &AllUp, &mut scratch, &mut decision);
    decision
        .destinations
        .iter()
        .map(|&index| identities[index].to_string())
        .collect()
}

/// Up except the listed destination indices.
struct Down(Vec<usize>);

impl Liveness for Down {
    fn is_up(&self, destination: usize) -> bool {
        !self.0.contains(&destination)
    }
}

const CLUSTERS: &str = r#"
destinations = ["127.0.0.1:2003"]

[[cluster]]
name = "cache"
method = "carbon_ch"
members = ["10.0.0.1:2004", "10.0.0.2:2004=b", "10.0.0.3:2004"]

[[cluster]]
name = "archive"
method = "forward"
members = ["10.0.0.9:2003", "10.0.0.1:2004"]
"#;

#[test]
fn without_routes_every_line_goes_to_every_cluster_and_a_shared_member_once() {
    let table = table(CLUSTERS);
    assert!(!table.sends_everything_everywhere());
    // default (1) + cache (3 members, one shared with archive) + archive's other member.
    assert_eq!(table.n_destinations(), 5);
    let destinations = destinations_of(&table, CLUSTERS, "servers.web1.cpu");
    assert_eq!(destinations.len(), 4, "{destinations:?}");
    assert_eq!(destinations[0], "127.0.0.1:2003");
    assert!(destinations.contains(&"10.0.0.9:2003".to_string()));
    assert!(destinations.contains(&"10.0.0.1:2004".to_string()));
    let unique: HashSet<&String> = destinations.iter().collect();
    assert_eq!(unique.len(), destinations.len());
}

#[test]
fn forward_clusters_alone_share_whole_batches() {
    let text = "destinations = [\"127.0.0.1:2003\", \"127.0.0.1:2004\"]\n";
    assert!(table(text).sends_everything_everywhere());
    let text = format!("{text}[[route]]\nsend_to = [\"default\"]\n");
    assert!(table(&text).sends_everything_everywhere());
    let twice = format!("{text}[[route]]\nsend_to = [\"default\"]\n");
    assert!(!table(&twice).sends_everything_everywhere());
    let rewritten = format!("{text}[[rewrite]]\nmatch = \"^a\"\nreplace = \"b\"\n");
    assert!(!table(&rewritten).sends_everything_everywhere());
}

#[test]
fn routes_match_in_order_until_stop() {
    let text = format!(
        r#"{CLUSTERS}
[[route]]
prefix = "servers."
send_to = ["cache"]

[[route]]
suffix = ".count"
send_to = ["archive"]
stop = true

[[route]]
match = "^junk\\."
send_to = ["blackhole"]
stop = true

[[route]]
match = "count|junk"
send_to = ["default"]
"#
    );
    let table = table(&text);
    let mut scratch = Scratch::default();
    let mut decision = Decision::default();
    table.route(b"servers.a.count", &AllUp, &mut scratch, &mut decision);
    assert!(decision.matched && !decision.blackholed);
    // cache's member (one of three) and archive's two, one of which may be cache's member too; not default.
    assert!(!decision.destinations.contains(&0), "{decision:?}");
    assert!(decision.destinations.contains(&4), "{decision:?}");

    table.route(b"junk.metric", &AllUp, &mut scratch, &mut decision);
    assert!(decision.matched && decision.blackholed);
    assert!(decision.destinations.is_empty());

    table.route(b"unrouted.thing", &AllUp, &mut scratch, &mut decision);
    assert!(!decision.matched && !decision.blackholed);
    assert!(decision.destinations.is_empty());

    table.route(b"app.count.x", &AllUp, &mut scratch, &mut decision);
    assert_eq!(decision.destinations, vec![0]);
}

#[test]
fn a_carbon_ch_cluster_sends_where_carbons_ring_does() {
    let text = r#"
[[cluster]]
name = "cache"
method = "carbon_ch"
replication = 2
members = ["10.0.0.10:2004", "10.0.0.8:2004", "10.0.0.9:2004=x", "10.0.0.9:2005=y"]
"#;
    let table = table(text);
    let members: Vec<Member> = [
        "10.0.0.10:2004",
        "10.0.0.8:2004",
        "10.0.0.9:2004=x",
        "10.0.0.9:2005=y",
    ]
    .iter()
    .map(|text| Member::from(&Identity::parse(text).unwrap()))
    .collect();
    let ring = CarbonRing::new(CarbonMethod::CarbonCh, &members, true);
    let mut scratch = Scratch::default();
    let mut decision = Decision::default();
    let mut expected = Vec::new();
    // Without a hint, then with the position computed beforehand for that very slice (as the router does).
    for (index, hinted) in (0..2000)
        .map(|index| (index, false))
        .chain((0..2000).map(|index| (index, true)))
    {
        let path = format!("servers.host{index}.cpu.user");
        ring.members_for(path.as_bytes(), 2, &mut expected);
        if hinted {
            scratch.hint_md5_position(
                path.as_bytes(),
                crate::router::hash::md5_position(path.as_bytes()),
            );
        }
        table.route(path.as_bytes(), &AllUp, &mut scratch, &mut decision);
        assert_eq!(decision.destinations, expected, "{path}");
    }
}

#[test]
fn an_md5_hint_counts_only_for_the_slice_it_was_given_for() {
    let table = table(
        "[[cluster]]\nname = \"c\"\nmethod = \"carbon_ch\"\nmembers = [\"a:1\", \"b:1\", \"c:1\", \"d:1\"]\n",
    );
    let (mut scratch, mut decision) = (Scratch::default(), Decision::default());
    let path = b"servers.web1.cpu.user".to_vec();
    let copy = path.clone();
    table.route(&path, &AllUp, &mut scratch, &mut decision);
    let right = decision.destinations.clone();
    // A wrong position hinted for the slice itself is believed (that is what makes it cheap)...
    let wrong = (0..=u16::MAX)
        .find(|&position| {
            scratch.hint_md5_position(&path, position);
            table.route(&path, &AllUp, &mut scratch, &mut decision);
            decision.destinations != right
        })
        .expect("some position leads elsewhere");
    // ...and ignored for another slice, even with the same bytes.
    scratch.hint_md5_position(&path, wrong);
    table.route(&copy, &AllUp, &mut scratch, &mut decision);
    assert_eq!(decision.destinations, right);
}

#[test]
fn failover_sends_to_the_first_member_up() {
    let text = r#"
[[cluster]]
name = "f"
method = "failover"
members = ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"]
"#;
    let table = table(text);
    let mut scratch = Scratch::default();
    let mut decision = Decision::default();
    table.route(b"a.b", &Down(vec![]), &mut scratch, &mut decision);
    assert_eq!(decision.destinations, vec![0]);
    table.route(b"a.b", &Down(vec![0]), &mut scratch, &mut decision);
    assert_eq!(decision.destinations, vec![1]);
    table.route(b"a.b", &Down(vec![0, 1]), &mut scratch, &mut decision);
    assert_eq!(decision.destinations, vec![2]);
    // Nobody up: the lines wait for the first.
    table.route(b"a.b", &Down(vec![0, 1, 2]), &mut scratch, &mut decision);
    assert_eq!(decision.destinations, vec![0]);
}

#[test]
fn any_of_spreads_evenly_and_moves_only_a_down_members_share() {
    let text = r#"
[[cluster]]
name = "a"
method = "any_of"
members = ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"]
"#;
    let table = table(text);
    let mut scratch = Scratch::default();
    let mut decision = Decision::default();
    let mut counts = [0_usize; 3];
    let mut moved_elsewhere = [0_usize; 3];
    for index in 0..30_000 {
        let path = format!("servers.host{index}.disk.sda.read_bytes");
        table.route(path.as_bytes(), &AllUp, &mut scratch, &mut decision);
        let primary = decision.destinations[0];
        counts[primary] += 1;
        table.route(path.as_bytes(), &Down(vec![1]), &mut scratch, &mut decision);
        let chosen = decision.destinations[0];
        assert_ne!(chosen, 1);
        if primary != 1 {
            assert_eq!(
                chosen, primary,
                "{path}: a member that stayed up keeps its paths"
            );
        } else {
            moved_elsewhere[chosen] += 1;
        }
    }
    for count in counts {
        assert!((9_000..11_000).contains(&count), "{counts:?}");
    }
    // The down member's share is spread over both others.
    assert!(
        moved_elsewhere[0] > 4_000 && moved_elsewhere[2] > 4_000,
        "{moved_elsewhere:?}"
    );
}

#[test]
fn dynamic_hash_clusters_send_a_down_members_share_to_the_next_ring_member() {
    let stable = r#"
[[cluster]]
name = "cache"
method = "carbon_ch"
members = ["10.0.0.1:2004", "10.0.0.2:2004", "10.0.0.3:2004"]
"#;
    let dynamic = format!("{stable}dynamic = true\n");
    let stable = table(stable);
    let dynamic = table(&dynamic);
    let mut scratch = Scratch::default();
    let (mut up, mut down, mut walk) = (Decision::default(), Decision::default(), Vec::new());
    let mut n_moved = 0;
    for index in 0..3000 {
        let path = format!("p.{index}");
        dynamic.route(path.as_bytes(), &AllUp, &mut scratch, &mut up);
        stable.route(path.as_bytes(), &Down(vec![2]), &mut scratch, &mut down);
        // Stable: the ring does not move.
        assert_eq!(down.destinations, up.destinations);
        dynamic.route(path.as_bytes(), &Down(vec![2]), &mut scratch, &mut down);
        if up.destinations[0] == 2 {
            let Some(Ring::Carbon(ring)) = &dynamic.clusters()[0].ring else {
                panic!()
            };
            ring.members_for(path.as_bytes(), 3, &mut walk);
            assert_eq!(down.destinations, vec![walk[1]], "{path}");
            n_moved += 1;
        } else {
            assert_eq!(down.destinations, up.destinations, "{path}");
        }
    }
    assert!(n_moved > 500, "{n_moved}");
}

#[test]
fn rewrites_apply_in_order_with_both_group_syntaxes() {
    let config = Config {
        destinations: vec!["127.0.0.1:2003".to_string()],
        rewrites: vec![
            RewriteConfig {
                pattern: r"^old\.(\w+)\.(.*)".to_string(),
                replace: r"new.\2.\1".to_string(),
            },
            RewriteConfig {
                pattern: r"^new\.(?P<rest>.*)$".to_string(),
                replace: "renamed.${rest}_x".to_string(),
            },
            RewriteConfig {
                pattern: "cpu".to_string(),
                replace: "CPU$$".to_string(),
            },
        ],
        ..Config::default()
    };
    config.validate().unwrap();
    let table = RoutingTable::new(&config).unwrap();
    let mut scratch = Scratch::default();
    assert_eq!(
        table.rewrite(b"old.web1.cpu.user", &mut scratch),
        Some(&b"renamed.CPU$.user.web1_x"[..])
    );
    // Only the first match is replaced, as sed without g and carbon-c-relay do.
    assert_eq!(
        table.rewrite(b"a.cpu.cpu", &mut scratch),
        Some(&b"a.CPU$.cpu"[..])
    );
    assert_eq!(table.rewrite(b"untouched.path", &mut scratch), None);
}

#[test]
fn validation_names_what_is_wrong() {
    let cases: &[(&str, &str)] = &[
        ("[[route]]\nsend_to = [\"nowhere\"]\n", "no cluster"),
        ("[[route]]\nsend_to = [\"default\"]\n", "destinations list, which is empty"),
        (
            "destinations = [\"a:1\"]\n[[route]]\nmatch = \"(\"\nsend_to = [\"default\"]\n",
            "route 1",
        ),
        (
            "destinations = [\"a:1\"]\n[[route]]\nprefix = \"a\"\nsuffix = \"b\"\nsend_to = [\"default\"]\n",
            "at most one",
        ),
        ("[[cluster]]\nname = \"c\"\nmethod = \"carbon_ch\"\nmembers = []\n", "at least one"),
        (
            "[[cluster]]\nname = \"c\"\nmethod = \"carbon_ch\"\nreplication = 3\nmembers = [\"a:1\", \"b:1\"]\n",
            "replication",
        ),
        (
            "[[cluster]]\nname = \"c\"\nmethod = \"carbon_ch\"\nmembers = [\"a:1\", \"a:2\"]\n",
            "distinct instances",
        ),
        (
            "[[cluster]]\nname = \"c\"\nmethod = \"jump_fnv1a_ch\"\nflavour = \"carbon\"\nmembers = [\"a:1\"]\n",
            "carbon-c-relay",
        ),
        (
            "[[cluster]]\nname = \"c\"\nmethod = \"forward\"\ndynamic = true\nmembers = [\"a:1\"]\n",
            "dynamic",
        ),
        (
            "[[cluster]]\nname = \"c\"\nmethod = \"forward\"\nmembers = [\"a:1\"]\nqueue_max_bites = 5\n",
            "queue_max_bites",
        ),
        (
            "[[cluster]]\nname = \"c\"\nmethod = \"forward\"\nmembers = [\"a:1\"]\n[[cluster]]\nname = \"d\"\n\
             method = \"forward\"\nmembers = [\"a:1\"]\nqueue_max_bytes = \"1MiB\"\n",
            "other [destination] settings",
        ),
        (
            "[[cluster]]\nname = \"c\"\nmethod = \"failover\"\nmembers = [\"a:1\"]\n[[cluster]]\nname = \"d\"\n\
             method = \"forward\"\nmembers = [\"a:1\"]\n",
            "cannot be shared",
        ),
        (
            "destinations = [\"a:1\"]\n[[rewrite]]\nmatch = \"^(a)\"\nreplace = \"$2\"\n",
            "group",
        ),
        ("[[cluster]]\nname = \"blackhole\"\nmethod = \"forward\"\nmembers = [\"a:1\"]\n", "blackhole"),
        (
            "destinations = [\"a:1\"]\n[[rewrite]]\nmatch = \"^a\"\nreplace = \"b c\"\n",
            "whitespace",
        ),
    ];
    for (text, needle) in cases {
        let message = match Config::parse(text) {
            Ok(config) => config.validate().unwrap_err().to_string(),
            Err(message) => message,
        };
        assert!(message.contains(needle), "{text}\n→ {message}");
    }
}

#[test]
fn cluster_overrides_apply_to_its_members_and_flags_win() {
    let text = r#"
[destination]
queue_max_bytes = "8MiB"

[[cluster]]
name = "big"
method = "forward"
members = ["a:1"]
queue_max_bytes = "32MiB"
overflow = "drop_oldest"
"#;
    let mut config = Config::parse(text).unwrap();
    config.validate().unwrap();
    let plans = config.destination_plans().unwrap();
    assert_eq!(plans[0].config.queue_max_bytes, 32 * 1024 * 1024);
    assert_eq!(
        plans[0].config.overflow,
        crate::config::OverflowPolicy::DropOldest
    );
    config.destination.queue_max_bytes = 4 * 1024 * 1024;
    config.destination_keys_from_flags.push("queue_max_bytes");
    let plans = config.destination_plans().unwrap();
    assert_eq!(plans[0].config.queue_max_bytes, 4 * 1024 * 1024);
    assert_eq!(
        plans[0].config.overflow,
        crate::config::OverflowPolicy::DropOldest
    );
}

#[test]
fn programmatic_clusters_and_routes_build_the_same_table() {
    let config = Config {
        clusters: vec![ClusterConfig::new(
            "c",
            ClusterMethod::Forward,
            &["a:1", "b:1"],
        )],
        routes: vec![RouteConfig::all_to(&["c"])],
        ..Config::default()
    };
    config.validate().unwrap();
    let table = RoutingTable::new(&config).unwrap();
    assert!(table.sends_everything_everywhere());
    assert_eq!(table.n_destinations(), 2);
}

#[test]
fn each_method_and_flavour_builds_the_ring_it_names() {
    let members_text = ["10.0.0.1:2004=a", "10.0.0.2:2004=b", "10.0.0.3:2004=c"];
    let members: Vec<Member> = members_text
        .iter()
        .map(|text| Member::from(&Identity::parse(text).unwrap()))
        .collect();
    type MembersFor = Box<dyn Fn(&[u8], &mut Vec<usize>)>;
    let cases: [(&str, &str, MembersFor); 5] = [
        ("carbon_ch", "carbon", {
            let ring = CarbonRing::new(CarbonMethod::CarbonCh, &members, true);
            Box::new(move |path, out| ring.members_for(path, 1, out))
        }),
        ("fnv1a_ch", "carbon", {
            let ring = CarbonRing::new(CarbonMethod::Fnv1aCh, &members, true);
            Box::new(move |path, out| ring.members_for(path, 1, out))
        }),
        ("carbon_ch", "carbon-c-relay", {
            let ring = CcrRing::new(CcrMethod::CarbonCh, &members);
            Box::new(move |path, out| ring.members_for(path, 1, out))
        }),
        ("fnv1a_ch", "carbon-c-relay", {
            let ring = CcrRing::new(CcrMethod::Fnv1aCh, &members);
            Box::new(move |path, out| ring.members_for(path, 1, out))
        }),
        ("jump_fnv1a_ch", "carbon-c-relay", {
            let ring = CcrRing::new(CcrMethod::JumpFnv1aCh, &members);
            Box::new(move |path, out| ring.members_for(path, 1, out))
        }),
    ];
    for (method, flavour, expected_members) in cases {
        let text = format!(
            "[[cluster]]\nname = \"c\"\nmethod = \"{method}\"\nflavour = \"{flavour}\"\nmembers = [{}]\n",
            members_text.map(|member| format!("\"{member}\"")).join(", ")
        );
        let table = table(&text);
        let (mut scratch, mut decision, mut expected) =
            (Scratch::default(), Decision::default(), Vec::new());
        for index in 0..500 {
            let path = format!("servers.host{index}.load");
            expected_members(path.as_bytes(), &mut expected);
            table.route(path.as_bytes(), &AllUp, &mut scratch, &mut decision);
            assert_eq!(decision.destinations, expected, "{method} {flavour} {path}");
        }
    }
}

#[test]
fn only_clusters_whose_queued_lines_have_no_other_copy_move_them() {
    let cluster = |method: &str, extra: &str| {
        let text = format!(
            "[[cluster]]\nname = \"c\"\nmethod = \"{method}\"\nmembers = [\"a:1=a\", \"b:1=b\", \"c:1=c\"]\n{extra}"
        );
        table(&text).clusters()[0].moves_lines()
    };
    assert!(cluster("any_of", ""));
    assert!(cluster("failover", ""));
    assert!(cluster("carbon_ch", "dynamic = true\n"));
    assert!(!cluster("carbon_ch", ""));
    assert!(!cluster("forward", ""));
    // With two replicas the other already has every queued line: moving them would deliver some twice.
    assert!(!cluster("carbon_ch", "dynamic = true\nreplication = 2\n"));
}
