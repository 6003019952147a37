//! `carbon_ch` and `fnv1a_ch`, carbon flavour: the ring of carbon's `carbon.hashing.ConsistentHashRing` as
//! carbon-relay's `ConsistentHashingRouter` (`RELAY_METHOD = consistent-hashing`) uses it, bit for bit, so a path goes
//! to the same carbon-cache a carbon-relay would send it to. `ROUTER_HASH_TYPE` picks the hash, [`CarbonMethod`] here.
//!
//! What carbon does (1.1.7, `carbon/hashing.py` and `carbon/routers.py`):
//!
//! - The ring holds *nodes*, which are `(server, instance)` pairs: **the port is not part of the key**, and two
//!   destinations with the same server and instance are refused. Each node gets 100 replicas.
//! - `carbon_ch` (the default) hashes replica `i` from the Python text `"%s:%d" % (node, i)`, i.e. the tuple's repr,
//!   a colon and the decimal index: `('127.0.0.1', 'a'):0` or `('127.0.0.1', None):99`. A position is the first two
//!   bytes of the MD5 of that text, big-endian (0 to 65,535).
//! - `fnv1a_ch` hashes replica `i` from `"%d-%s" % (i, instance)`: the index, a dash and the instance alone, `0-a`, or
//!   `0-None` for a node without an instance. **Neither the server nor the port is part of it**, so nodes with the same
//!   instance, and all nodes without one, hash the same 100 texts and only the collision rule below tells them apart.
//!   A position is the 32-bit FNV-1a of the text's UTF-8 bytes (unsigned, unlike carbon-c-relay's), folded to 16 bits
//!   as `(h >> 16) ^ (h & 0xffff)`. carbon uses `pyhash`'s FNV-1a when it is installed and its own Python one
//!   otherwise; both read unsigned bytes.
//! - Nodes are added in config order. A replica whose position is already taken (by any node) moves to the next
//!   position, `+1`, until it finds a free one; it never wraps, so a position can exceed 65,535.
//! - A path's position is computed with the same hash from the path's bytes (UTF-8, as carbon decodes lines); under
//!   `carbon_ch` it is [`md5_position`], as under carbon-c-relay's `carbon_ch`. The walk starts at the first entry at
//!   or after it (wrapping to the first entry), and collects distinct nodes, primary first. It visits at most all
//!   entries but the one before the start, as carbon's `get_nodes` does.
//! - With `diverse_replicas` (carbon's `DIVERSE_REPLICAS`, default true) a node whose server was already chosen is
//!   skipped, so replicas land on distinct servers (hosts, compared as written); with fewer servers than the
//!   replication factor a path gets fewer members.
//! - Paths are hashed as received: carbon-relay hashes tagged paths (`a.b;tag=value`) as written unless
//!   `TAG_RELAY_NORMALIZED` is set (default false), which would sort the tags first; this ring hashes the bytes given.
//!
//! So under `fnv1a_ch` a cluster whose members have no instances, or share them, is a ring of runs of adjacent
//! positions, one run per shared text, whose first position belongs to the first such member in config order: that
//! member gets nearly every path. It is what carbon does; `fnv1a_ch` is only useful with a distinct instance per
//! member.
//!
//! One deliberate difference: with a single member, carbon's `get_nodes` yields that node twice, so a replication
//! factor of 2 without diverse replicas sends every line twice to the same destination. Here a member is listed once.
//!
//! The ring is pinned by fixtures written by carbon's own router, `tests/data/carbon/` (see `tests/data/README.md`).

use std::collections::HashSet;
use std::fmt::Write as _;

use super::{md5_position, Member, Position, RingEntry, StartTable};

/// The number of replicas carbon gives each node (`ConsistentHashRing`'s `replica_count` default).
const REPLICAS_PER_NODE: u32 = 100;

/// The hash of a carbon ring, as carbon's `ROUTER_HASH_TYPE` setting names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarbonMethod {
    /// `carbon_ch`, carbon's default: MD5 positions of the node's Python repr and the replica index.
    CarbonCh,
    /// `fnv1a_ch`: FNV-1a positions of the replica index and the node's instance.
    Fnv1aCh,
}

/// A carbon `ConsistentHashRing` over a cluster's members, built once and then only read.
#[derive(Debug, Clone)]
pub struct CarbonRing {
    /// The hash of replica keys and paths.
    method: CarbonMethod,
    /// The ring's positions in ascending order; all distinct, as a collision moves the later replica on.
    positions: Vec<u32>,
    /// For each entry of `positions`, the index of the member it belongs to.
    entry_members: Vec<usize>,
    /// For each member, the index of the first member with the same host: members on one server share it.
    member_servers: Vec<usize>,
    /// How many distinct hosts the members have.
    n_servers: usize,
    /// Where a path's walk starts, by path position.
    starts: StartTable,
}

impl CarbonRing {
    /// Builds the ring of `method` over `members` in config order; `diverse_replicas` is carbon's `DIVERSE_REPLICAS`.
    ///
    /// # Panics
    ///
    /// If two members have the same host and instance (carbon refuses them too: its node leaves the port out), so
    /// config validation must reject such a cluster first.
    pub fn new(method: CarbonMethod, members: &[Member], diverse_replicas: bool) -> CarbonRing {
        let mut taken_positions =
            HashSet::with_capacity(members.len() * REPLICAS_PER_NODE as usize);
        let mut ring_entries = Vec::with_capacity(members.len() * REPLICAS_PER_NODE as usize);
        let mut replica_key = String::new();
        for (member_index, member) in members.iter().enumerate() {
            let duplicate = members[..member_index]
                .iter()
                .any(|earlier| earlier.host == member.host && earlier.instance == member.instance);
            assert!(
                !duplicate,
                "carbon_ch cluster has two members with host {:?} and instance {:?}",
                member.host, member.instance
            );
            for replica in 0..REPLICAS_PER_NODE {
                replica_key.clear();
                push_replica_key(&mut replica_key, method, member, replica);
                let mut replica_position = u32::from(key_position(method, replica_key.as_bytes()));
                while !taken_positions.insert(replica_position) {
                    replica_position += 1;
                }
                ring_entries.push((replica_position, member_index));
            }
        }
        ring_entries.sort_unstable();

        let member_servers: Vec<usize> = members
            .iter()
            .map(|member| {
                members
                    .iter()
                    .position(|other| other.host == member.host)
                    .expect("a member finds at least itself")
            })
            .collect();
        let n_servers = member_servers
            .iter()
            .enumerate()
            .filter(|&(member_index, &server)| member_index == server)
            .count();
        // Without diverse replicas every member counts as its own server.
        let member_servers = if diverse_replicas {
            member_servers
        } else {
            (0..members.len()).collect()
        };
        let n_servers = if diverse_replicas {
            n_servers
        } else {
            members.len()
        };
        let starts = StartTable::new(ring_entries.len(), |entry| {
            Position::from(ring_entries[entry].0)
        });
        CarbonRing {
            starts,
            method,
            positions: ring_entries.iter().map(|&(position, _)| position).collect(),
            entry_members: ring_entries.iter().map(|&(_, member)| member).collect(),
            member_servers,
            n_servers,
        }
    }

    /// Writes into `out` (cleared first) the indices into `members` of the up-to-`replication` members `path` goes to,
    /// primary first: [`CarbonRing::members_at`] the path's [`CarbonRing::path_position`].
    ///
    /// Fewer come back when the cluster has fewer members (or, with diverse replicas, fewer hosts); none for an empty
    /// cluster or a `replication` of 0.
    pub fn members_for(&self, path: &[u8], replication: usize, out: &mut Vec<usize>) {
        self.members_at(self.path_position(path), replication, out);
    }

    /// The position `path` starts its walk from: its [`md5_position`] under `carbon_ch`, its folded FNV-1a under
    /// `fnv1a_ch` (0 to 65,535 either way).
    ///
    /// It depends on the path and the method alone, not on the members.
    pub fn path_position(&self, path: &[u8]) -> Position {
        Position::from(key_position(self.method, path))
    }

    /// Whether [`CarbonRing::path_position`] is worth computing ahead, for a whole batch: true for `carbon_ch`, whose MD5 costs several times the
    /// walk, false for `fnv1a_ch`.
    ///
    /// Every ring, of either flavour, that answers true computes its positions with [`md5_position`], so positions
    /// computed once serve them all.
    pub fn position_is_expensive(&self) -> bool {
        self.method == CarbonMethod::CarbonCh
    }

    /// Writes into `out` (cleared first) the indices of the up-to-`replication` members a path at `position` goes to,
    /// primary first, walking the ring from the first entry at or after `position`.
    ///
    /// `position` is what [`CarbonRing::path_position`] gave for the path, or the same value computed ahead or by
    /// another ring of the same method. Fewer members come back as for [`CarbonRing::members_for`].
    pub fn members_at(&self, position: Position, replication: usize, out: &mut Vec<usize>) {
        out.clear();
        let n_wanted = replication.min(self.n_servers);
        if n_wanted == 0 {
            return;
        }
        let n_entries = self.positions.len();
        let start = self.starts.start(position).unwrap_or_else(|| {
            self.positions
                .partition_point(|&entry| Position::from(entry) < position)
                % n_entries
        });
        if n_wanted == 1 {
            // The primary is the first entry's member, whatever the diverse rule says of later ones.
            out.push(self.entry_members[start]);
            return;
        }
        // Carbon stops one short of a full turn; with 100 replicas a node always has another entry, but stay exact.
        let n_visited = (n_entries - 1).max(1);
        for entry_index in (start..n_entries).chain(0..start).take(n_visited) {
            let member = self.entry_members[entry_index];
            let server = self.member_servers[member];
            if out
                .iter()
                .all(|&chosen| self.member_servers[chosen] != server)
            {
                out.push(member);
                if out.len() == n_wanted {
                    return;
                }
            }
        }
    }

    /// The ring's entries in ring order, as carbon's `ConsistentHashRing.ring` lists them: 100 per member, positions
    /// strictly increasing (a collision moved the later replica on, possibly past 65,535).
    pub fn entries(&self) -> impl Iterator<Item = RingEntry> + '_ {
        self.positions
            .iter()
            .zip(&self.entry_members)
            .map(|(&position, &member)| RingEntry {
                position: Position::from(position),
                member,
            })
    }
}

/// The position of `key` under `method`, as carbon's `carbonHash`: the first two bytes of its MD5, big-endian, or its
/// 32-bit FNV-1a folded to 16 bits.
fn key_position(method: CarbonMethod, key: &[u8]) -> u16 {
    match method {
        CarbonMethod::CarbonCh => md5_position(key),
        CarbonMethod::Fnv1aCh => {
            let hash = fnv1a_32(key);
            ((hash >> 16) ^ (hash & 0xffff)) as u16
        }
    }
}

/// Textbook 32-bit FNV-1a over unsigned bytes, as carbon's `fnv32a`.
fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(2_166_136_261_u32, |hash, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(16_777_619)
    })
}

/// Appends the text carbon hashes for replica `replica` of `member`: `('host', 'instance'):i` for `carbon_ch`,
/// `i-instance` (or `i-None`) for `fnv1a_ch`.
fn push_replica_key(out: &mut String, method: CarbonMethod, member: &Member, replica: u32) {
    match method {
        CarbonMethod::CarbonCh => {
            push_node_repr(out, member);
            write!(out, ":{replica}").expect("writing to a String cannot fail");
        }
        CarbonMethod::Fnv1aCh => {
            // Python's `"%s" % None` is `None`.
            let instance = member.instance.as_deref().unwrap_or("None");
            write!(out, "{replica}-{instance}").expect("writing to a String cannot fail");
        }
    }
}

/// Appends Python's `str((host, instance))` for `member`: `('host', 'instance')` or `('host', None)`.
fn push_node_repr(out: &mut String, member: &Member) {
    out.push('(');
    push_python_str_repr(out, &member.host);
    out.push_str(", ");
    match &member.instance {
        Some(instance) => push_python_str_repr(out, instance),
        None => out.push_str("None"),
    }
    out.push(')');
}

/// Appends Python 3's `repr()` of a `str`: single quotes unless the text has a single quote and no double quote,
/// backslash escapes for the quote, `\`, tab, newline and return, `\xNN` for other control characters.
///
/// Other non-ASCII characters are written as they are, which is Python's rule for printable ones; Python would also
/// escape non-printable non-ASCII characters such as U+00A0, which no host name or instance in practice contains.
fn push_python_str_repr(out: &mut String, text: &str) {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for character in text.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            _ if character == quote => {
                out.push('\\');
                out.push(quote);
            }
            _ if character.is_control() && u32::from(character) <= 0xff => {
                write!(out, "\\x{:02x}", u32::from(character))
                    .expect("writing to a String cannot fail");
            }
            _ => out.push(character),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses carbon's destination syntax, `host:port[:instance]` (no IPv6 in the fixtures).
    fn member(destination: &str) -> Member {
        let mut fields = destination.splitn(3, ':');
        let host = fields.next().expect("a host").to_string();
        let port = fields
            .next()
            .expect("a port")
            .parse()
            .expect("a numeric port");
        let instance = fields.next().map(str::to_string);
        Member {
            host,
            port,
            instance,
        }
    }

    fn check(
        method: CarbonMethod,
        destinations: &[&str],
        diverse_replicas: bool,
        replication: usize,
        path: &str,
        expected: &[usize],
    ) {
        let members: Vec<Member> = destinations
            .iter()
            .map(|destination| member(destination))
            .collect();
        let ring = CarbonRing::new(method, &members, diverse_replicas);
        let mut out = Vec::new();
        ring.members_for(path.as_bytes(), replication, &mut out);
        assert_eq!(
            out, expected,
            "{method:?} {destinations:?} diverse {diverse_replicas} replication {replication} {path:?}"
        );
    }

    fn check_replica_key(method: CarbonMethod, destination: &str, replica: u32, expected: &str) {
        let mut out = String::new();
        push_replica_key(&mut out, method, &member(destination), replica);
        assert_eq!(out, expected);
    }

    fn check_repr(destination: &str, expected: &str) {
        let mut out = String::new();
        push_node_repr(&mut out, &member(destination));
        assert_eq!(out, expected);
    }

    #[test]
    fn node_keys_are_python_tuple_reprs() {
        check_repr("127.0.0.1:2004:a", "('127.0.0.1', 'a')");
        check_repr("127.0.0.1:2003", "('127.0.0.1', None)");
        check_repr("127.0.0.1:2003:", "('127.0.0.1', '')");
        check_repr("it's:1", "(\"it's\", None)");
        check_repr("a\"b'c:1", "('a\"b\\'c', None)");
        check_repr("a\\b\tc\u{7f}\u{85}é:1:x", "('a\\\\b\\tc\\x7f\\x85é', 'x')");
    }

    #[test]
    fn replica_keys_are_carbons_texts() {
        check_replica_key(
            CarbonMethod::CarbonCh,
            "127.0.0.1:2004:a",
            7,
            "('127.0.0.1', 'a'):7",
        );
        check_replica_key(
            CarbonMethod::CarbonCh,
            "127.0.0.1:2003",
            0,
            "('127.0.0.1', None):0",
        );
        check_replica_key(CarbonMethod::Fnv1aCh, "127.0.0.1:2004:a", 7, "7-a");
        check_replica_key(CarbonMethod::Fnv1aCh, "127.0.0.1:2003", 99, "99-None");
        check_replica_key(CarbonMethod::Fnv1aCh, "h:1:café", 0, "0-café");
    }

    #[test]
    fn carbons_fnv1a_reads_unsigned_bytes() {
        // Values from carbon's `fnv32a`; carbon-c-relay's sign-extending FNV-1a gives other ones above 0x7f.
        assert_eq!(fnv1a_32(b"a"), 0xe40c292c);
        assert_eq!(fnv1a_32(&[0xc3]), 0x460b3072);
        assert_eq!(fnv1a_32("née".as_bytes()), 0x828f1438);
    }

    #[test]
    fn fnv1a_ch_hashes_the_instance_alone() {
        // Positions from carbon: `foo.bar` 58720, `née.a` 42388.
        let cluster = ["h1:1:a", "h2:1:b"];
        check(CarbonMethod::Fnv1aCh, &cluster, true, 2, "foo.bar", &[1, 0]);
        check(CarbonMethod::Fnv1aCh, &cluster, true, 2, "née.a", &[0, 1]);
        // Other hosts and ports, same instances: the same ring.
        let moved = ["h3:5:a", "h4:6:b"];
        check(CarbonMethod::Fnv1aCh, &moved, true, 2, "foo.bar", &[1, 0]);
    }

    #[test]
    fn fnv1a_ch_members_without_instances_are_told_apart_only_by_the_bump() {
        // Both hash `0-None` ... `99-None`; the second member's replicas sit one position after the first's, so only a
        // path whose position is exactly one of those (`a.84`, 5886) reaches it first.
        let cluster = ["10.0.0.1:2003", "10.0.0.2:2003"];
        check(CarbonMethod::Fnv1aCh, &cluster, false, 2, "a.84", &[1, 0]);
        check(CarbonMethod::Fnv1aCh, &cluster, false, 2, "a.0", &[0, 1]);
        check(CarbonMethod::Fnv1aCh, &cluster, false, 1, "a.1", &[0]);
    }

    #[test]
    fn a_colliding_replica_moves_one_position_on() {
        // Replica 65 of 10.0.0.3 hashes to 0x1e76 like replica 60 of 10.0.0.1, which was added first, so it sits at
        // 0x1e77; `a.12483` hashes to 0x1e77. Without the move it would reach 10.0.0.1's next entry, 0x1feb.
        let cluster = ["10.0.0.1:2003", "10.0.0.3:2003"];
        check(CarbonMethod::CarbonCh, &cluster, true, 1, "a.12483", &[1]);
        check(
            CarbonMethod::CarbonCh,
            &cluster,
            false,
            2,
            "a.12483",
            &[1, 0],
        );
    }

    #[test]
    fn a_bump_past_65535_does_not_wrap() {
        // Replica `i-x1394` of both members hashes to 65535: the second one's moves to 65536, past the end. Had it
        // wrapped to 0, `a.187804`, whose position is 0, would go to the second member first; carbon sends it to the
        // lowest entry, 853, the first member's.
        let cluster = ["h1:1:x1394", "h2:1:x1394"];
        check(
            CarbonMethod::Fnv1aCh,
            &cluster,
            false,
            2,
            "a.187804",
            &[0, 1],
        );
    }

    #[test]
    fn entries_are_carbons_ring_in_order() {
        // From carbon: `ConsistentHashRing(nodes, hash_type='fnv1a_ch').ring`, 300 entries. The first two members
        // share instance `a`, so they hash the same texts and the second's replicas sit one after the first's.
        let members: Vec<Member> = ["127.0.0.10:2004:a", "127.0.0.8:2004:a", "127.0.0.10:2104:b"]
            .iter()
            .map(|destination| member(destination))
            .collect();
        let ring = CarbonRing::new(CarbonMethod::Fnv1aCh, &members, true);
        let entries: Vec<(Position, usize)> = ring
            .entries()
            .map(|entry| (entry.position, entry.member))
            .collect();
        assert_eq!(entries.len(), 300);
        assert_eq!(
            entries[..8],
            [
                (218, 2),
                (536, 2),
                (611, 0),
                (612, 1),
                (991, 2),
                (1625, 0),
                (1626, 1),
                (1795, 2)
            ]
        );
        assert_eq!(entries[297..], [(65214, 2), (65465, 0), (65466, 1)]);
        assert!(entries.windows(2).all(|pair| pair[0].0 < pair[1].0));
        for member_index in 0..3 {
            let n_entries = entries
                .iter()
                .filter(|&&(_, member)| member == member_index)
                .count();
            assert_eq!(n_entries, 100);
        }
    }

    #[test]
    fn members_at_a_path_position_are_the_paths_members() {
        let members: Vec<Member> = ["127.0.0.1:2003:a", "127.0.0.1:2103:b", "127.0.0.2:2003:a"]
            .iter()
            .map(|destination| member(destination))
            .collect();
        let mut from_path = Vec::new();
        let mut from_position = Vec::new();
        for method in [CarbonMethod::CarbonCh, CarbonMethod::Fnv1aCh] {
            let ring = CarbonRing::new(method, &members, true);
            assert_eq!(
                ring.position_is_expensive(),
                method == CarbonMethod::CarbonCh
            );
            for path in ["a.4", "a.12", "née.a", ""] {
                let position = ring.path_position(path.as_bytes());
                assert!(position <= 0xffff, "{method:?} {path:?} {position}");
                ring.members_for(path.as_bytes(), 2, &mut from_path);
                ring.members_at(position, 2, &mut from_position);
                assert_eq!(from_position, from_path, "{method:?} {path:?}");
            }
        }
        // The top of the ring wraps to its first entry, as for a path past the last one.
        let ring = CarbonRing::new(CarbonMethod::CarbonCh, &members, false);
        let first_member = ring.entries().next().expect("a ring entry").member;
        ring.members_at(Position::MAX, 1, &mut from_position);
        assert_eq!(from_position, [first_member]);
    }

    #[test]
    fn diverse_replicas_skip_a_host_already_chosen() {
        let cluster = ["127.0.0.1:2003:a", "127.0.0.1:2103:b", "127.0.0.2:2003:a"];
        check(CarbonMethod::CarbonCh, &cluster, false, 2, "a.4", &[0, 1]);
        check(CarbonMethod::CarbonCh, &cluster, true, 2, "a.4", &[0, 2]);
        check(
            CarbonMethod::CarbonCh,
            &cluster,
            false,
            3,
            "a.4",
            &[0, 1, 2],
        );
        check(CarbonMethod::CarbonCh, &cluster, true, 3, "a.4", &[0, 2]);
        check(CarbonMethod::CarbonCh, &cluster, true, 2, "a.12", &[0, 2]);
    }

    #[test]
    fn the_port_is_not_part_of_the_key() {
        check(
            CarbonMethod::CarbonCh,
            &["127.0.0.1:2003:a", "127.0.0.1:2103:b", "127.0.0.2:2003:a"],
            false,
            3,
            "a.4",
            &[0, 1, 2],
        );
        check(
            CarbonMethod::CarbonCh,
            &["127.0.0.1:1:a", "127.0.0.1:2:b", "127.0.0.2:3:a"],
            false,
            3,
            "a.4",
            &[0, 1, 2],
        );
    }

    #[test]
    fn a_single_member_is_listed_once_where_carbon_repeats_it() {
        check(CarbonMethod::CarbonCh, &["h:1"], false, 2, "a.b", &[0]);
        check(CarbonMethod::CarbonCh, &["h:1"], true, 2, "a.b", &[0]);
    }

    #[test]
    fn empty_clusters_and_replication_zero_give_no_member() {
        check(CarbonMethod::CarbonCh, &[], true, 1, "a.b", &[]);
        check(CarbonMethod::CarbonCh, &["h:1"], true, 0, "a.b", &[]);
    }

    /// Every path of every fixture that carbon's own router wrote (`tests/data/carbon/generate.py`), for both
    /// methods.
    #[test]
    fn rings_match_carbons_router_on_every_fixture_path() {
        let fixture_dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/carbon");
        let mut fixture_paths: Vec<_> = std::fs::read_dir(&fixture_dir)
            .expect("tests/data/carbon exists")
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.extension().is_some_and(|extension| extension == "txt"))
            .collect();
        fixture_paths.sort();
        assert_eq!(fixture_paths.len(), 14, "{fixture_paths:?}");
        let mut n_fixtures_by_method = [0, 0];
        let mut out = Vec::new();
        for fixture_path in fixture_paths {
            let text = std::fs::read_to_string(&fixture_path).expect("a UTF-8 fixture");
            let method = match text.lines().find_map(|line| line.strip_prefix("method ")) {
                Some("carbon_ch") => CarbonMethod::CarbonCh,
                Some("fnv1a_ch") => CarbonMethod::Fnv1aCh,
                other => panic!("{fixture_path:?} has method {other:?}"),
            };
            n_fixtures_by_method[method as usize] += 1;
            let members: Vec<Member> = text
                .lines()
                .filter_map(|line| line.strip_prefix("destination "))
                .map(member)
                .collect();
            let rings = [
                CarbonRing::new(method, &members, true),
                CarbonRing::new(method, &members, false),
            ];
            let mut n_paths = 0;
            for line in text.lines().filter(|line| {
                !line.starts_with('#')
                    && !line.starts_with("method ")
                    && !line.starts_with("destination ")
            }) {
                let mut columns = line.split('\t');
                let path = columns.next().expect("a path");
                let mut n_columns = 0;
                for (column_index, column) in columns.enumerate() {
                    let expected: Vec<usize> = column
                        .split(',')
                        .map(|index| index.parse().expect("a member index"))
                        .collect();
                    let ring = &rings[column_index / 3];
                    let replication = column_index % 3 + 1;
                    ring.members_for(path.as_bytes(), replication, &mut out);
                    assert_eq!(
                        out, expected,
                        "{fixture_path:?} {path:?} column {column_index}"
                    );
                    n_columns += 1;
                }
                assert_eq!(n_columns, 6, "{fixture_path:?} {path:?}");
                n_paths += 1;
            }
            assert!(n_paths >= 2000, "{fixture_path:?} has {n_paths} paths");
        }
        assert_eq!(n_fixtures_by_method, [7, 7]);
    }
}
