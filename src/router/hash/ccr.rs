//! carbon-c-relay's three hash rings, `carbon_ch`, `fnv1a_ch` and `jump_fnv1a_ch`, bit for bit as in its
//! `consistent-hash.c` (3.7.x), so that a cluster moved from carbon-c-relay keeps every path on the member that
//! already holds it.
//!
//! Built once per cluster from its members in config order; [`CcrRing::members_for`] then only reads it and allocates
//! nothing. Like every ring here it splits into [`CcrRing::path_position`] and [`CcrRing::members_at`], so that the
//! router can cache the MD5 positions of `carbon_ch` (see the parent module). Pinned by fixtures that
//! `carbon-c-relay -t -d` produced (`tests/data/ccr/`, see `tests/data/README.md`).
//!
//! # `carbon_ch` and `fnv1a_ch`
//!
//! Each member gets 100 positions on a 16-bit ring. A path goes to the member at the first position at or after the
//! path's own position (wrapping), and replicas to the next distinct members clockwise.
//!
//! - `carbon_ch` hashes, for replica `i`, the text of carbon's Python key `('HOST', 'INSTANCE'):i`, or
//!   `('HOST', None):i` without an instance; a position is the first two bytes of its MD5, big-endian. The port is not
//!   hashed: two members on one host without instances get the same 100 positions, and the first in config order
//!   takes them all. A path's position is the first two bytes of the MD5 of the path, [`md5_position`]: the same
//!   function as carbon's own `carbon_ch`.
//! - `fnv1a_ch` hashes `i-HOST:PORT`, or only `i-INSTANCE` when the member has an instance (so the instance replaces
//!   the address entirely). A position is the 32-bit FNV-1a folded to 16 bits, `(h >> 16) ^ (h & 0xffff)`; a path's
//!   position is the same function of the path.
//! - Both format the key into a 256-byte buffer, so a key is cut to 255 bytes.
//!
//! How this differs from carbon's own `ConsistentHashRing` (see `carbon.rs`):
//!
//! - **No collision bump.** carbon moves a position that is already taken to the next free one; carbon-c-relay keeps
//!   equal positions, so its ring does not depend on the order members were added in.
//! - **Ties.** Entries are sorted by position, then by host (`strcmp`), then by instance (`strcmp`, a member without
//!   an instance after one with) for `carbon_ch`, or by port for `fnv1a_ch`; what is still equal keeps config order
//!   (glibc 2.36's `qsort` is a stable merge sort, reproduced here). Of a run of equal positions only the first entry
//!   counts: the others' servers are overwritten with its server, so the losers of a tie lose that replica (the ring
//!   keeps those entries, with the winner as their member, as `carbon-c-relay -t -d` lists them).
//! - **No diverse replicas.** Replicas are just the next distinct members clockwise, never "a different host".
//!
//! # `jump_fnv1a_ch`
//!
//! The path's 64-bit FNV-1a picks a bucket with Lamping and Veach's jump consistent hash, over the members in bucket
//! order: members with an instance first, sorted by instance (numerically when both instances are whole decimal
//! numbers, by `strcmp` otherwise), then the members without an instance in config order. For each further replica
//! the chosen bucket is replaced by the last one (swap-remove), the hash is stirred with xorshift64* and the jump
//! repeats over one bucket fewer. A path's position is therefore its whole 64-bit FNV-1a, not a bucket: the replicas
//! are drawn from it.
//!
//! # Bytes above 0x7f
//!
//! carbon-c-relay's FNV-1a casts each path byte from a signed `char`, so a byte at or above 0x80 is sign-extended
//! before the xor (`0xc3` is xored as `0xffffffc3`). Paths in UTF-8 hash differently from textbook FNV-1a; this module
//! does what carbon-c-relay does.

use std::cmp::Ordering;

use super::{md5_position, Member, Position, RingEntry, StartTable};

/// The hashing method of a carbon-c-relay cluster, named after its config keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcrMethod {
    /// `carbon_ch`: MD5 positions of carbon's Python key, 100 per member.
    CarbonCh,
    /// `fnv1a_ch`: FNV-1a positions of `i-host:port` (or `i-instance`), 100 per member.
    Fnv1aCh,
    /// `jump_fnv1a_ch`: 64-bit FNV-1a of the path, then jump consistent hash over the members.
    JumpFnv1aCh,
}

/// A carbon-c-relay hash ring over one cluster's members, built once and read per path.
#[derive(Debug, Clone)]
pub struct CcrRing {
    method: CcrMethod,
    kind: RingKind,
}

/// The ring proper: positions for the two 16-bit rings, a bucket order for jump.
#[derive(Debug, Clone)]
enum RingKind {
    /// Sorted by position, 100 entries per member; every entry of a run of equal positions has the run's first
    /// member (the winner of the tie). Also the number of distinct members left on the ring.
    Positions {
        entries: Vec<Entry>,
        n_members: usize,
        /// Where a path's walk starts, by path position.
        starts: StartTable,
    },
    /// Member indices in bucket order.
    Jump { buckets: Vec<usize> },
}

/// One position on a 16-bit ring and the index of the member it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    position: u16,
    member: usize,
}

/// Positions per member on the `carbon_ch` and `fnv1a_ch` rings (`HASH_REPLICAS`).
const REPLICAS_PER_MEMBER: usize = 100;

/// carbon-c-relay formats a member's key into a `char buf[256]` with `snprintf`, which keeps at most 255 bytes.
const MAX_KEY_BYTES: usize = 255;

impl CcrRing {
    /// Builds the ring of `method` over `members`, given in config order.
    pub fn new(method: CcrMethod, members: &[Member]) -> CcrRing {
        let kind = match method {
            CcrMethod::CarbonCh => {
                positions_ring(members, carbon_key, md5_position, compare_carbon)
            }
            CcrMethod::Fnv1aCh => positions_ring(members, fnv1a_key, fnv1a_position, compare_fnv1a),
            CcrMethod::JumpFnv1aCh => {
                let mut buckets: Vec<usize> = (0..members.len()).collect();
                merge_sort_by(&mut buckets, &mut |&left, &right| {
                    compare_jump(members, left, right)
                });
                RingKind::Jump { buckets }
            }
        };
        CcrRing { method, kind }
    }

    /// Writes into `out` (cleared first) the indices into `members` of the up-to-`replication` members `path` goes to,
    /// primary first: [`CcrRing::members_at`] the path's [`CcrRing::path_position`].
    ///
    /// `path` is the metric path alone, without value or timestamp. Fewer than `replication` indices are written only
    /// when the ring holds fewer distinct members (carbon-c-relay refuses such a config, or, when members share a host
    /// under `carbon_ch`, loops forever).
    pub fn members_for(&self, path: &[u8], replication: usize, out: &mut Vec<usize>) {
        self.members_at(self.path_position(path), replication, out);
    }

    /// The position `path` starts from: its [`md5_position`] under `carbon_ch` and its folded FNV-1a under `fnv1a_ch`
    /// (what carbon-c-relay `-d` prints as `hash_pos`, 0 to 65,535), its 64-bit FNV-1a under `jump_fnv1a_ch`.
    ///
    /// It depends on the path and the method alone, not on the members.
    pub fn path_position(&self, path: &[u8]) -> Position {
        match self.method {
            CcrMethod::CarbonCh => Position::from(md5_position(path)),
            CcrMethod::Fnv1aCh => Position::from(fnv1a_position(path)),
            CcrMethod::JumpFnv1aCh => fnv1a_64(path),
        }
    }

    /// Whether [`CcrRing::path_position`] is worth computing ahead, for a whole batch: true for `carbon_ch` (MD5), false for the FNV-1a methods.
    ///
    /// Every ring, of either flavour, that answers true computes its positions with [`md5_position`], so positions
    /// computed once serve them all.
    pub fn position_is_expensive(&self) -> bool {
        self.method == CcrMethod::CarbonCh
    }

    /// Writes into `out` (cleared first) the indices of the up-to-`replication` members a path at `position` goes to,
    /// primary first: from the first entry at or after `position` clockwise, or for `jump_fnv1a_ch` by jumping with
    /// `position` as the hash.
    ///
    /// `position` is what [`CcrRing::path_position`] gave for the path, or the same value computed ahead or by another
    /// ring of the same method. Fewer members come back as for [`CcrRing::members_for`].
    pub fn members_at(&self, position: Position, replication: usize, out: &mut Vec<usize>) {
        out.clear();
        match &self.kind {
            RingKind::Positions {
                entries,
                n_members,
                starts,
            } => {
                let n_wanted = replication.min(*n_members);
                if n_wanted == 0 {
                    return;
                }
                let start = starts.start(position).unwrap_or_else(|| {
                    entries.partition_point(|entry| Position::from(entry.position) < position)
                });
                if n_wanted == 1 {
                    // The primary is the first entry's member (wrapping past the last entry).
                    out.push(entries.get(start).unwrap_or(&entries[0]).member);
                    return;
                }
                let clockwise = entries[start..].iter().chain(&entries[..start]);
                for entry in clockwise {
                    if !out.contains(&entry.member) {
                        out.push(entry.member);
                        if out.len() == n_wanted {
                            break;
                        }
                    }
                }
            }
            RingKind::Jump { buckets } => jump_members(buckets, position, replication, out),
        }
    }

    /// The ring's entries in ring order, as `carbon-c-relay -t -d` lists them after `# hash ring for CLUSTER follows`.
    ///
    /// For `carbon_ch` and `fnv1a_ch`: 100 per member, by position, the losers of a tie listed with the winner as
    /// their member. For `jump_fnv1a_ch`: one per member in bucket order, the position being the bucket number
    /// (carbon-c-relay prints the member's config index there instead).
    pub fn entries(&self) -> impl Iterator<Item = RingEntry> + '_ {
        let (entries, buckets): (&[Entry], &[usize]) = match &self.kind {
            RingKind::Positions { entries, .. } => (entries, &[]),
            RingKind::Jump { buckets } => (&[], buckets),
        };
        // One of the two is empty; chaining them keeps a single iterator type without boxing.
        let position_entries = entries.iter().map(|entry| RingEntry {
            position: Position::from(entry.position),
            member: entry.member,
        });
        let bucket_entries = buckets
            .iter()
            .enumerate()
            .map(|(bucket, &member)| RingEntry {
                position: bucket as Position,
                member,
            });
        position_entries.chain(bucket_entries)
    }
}

/// Builds a 16-bit ring: 100 keys per member, sorted with `compare` by glibc's merge sort, each tie's entries given
/// to its first entry's member.
fn positions_ring(
    members: &[Member],
    key: fn(&Member, usize) -> Vec<u8>,
    position: fn(&[u8]) -> u16,
    compare: fn(&Member, &Member) -> Ordering,
) -> RingKind {
    let mut entries = Vec::with_capacity(members.len() * REPLICAS_PER_MEMBER);
    for (index, member) in members.iter().enumerate() {
        for replica in 0..REPLICAS_PER_MEMBER {
            let mut member_key = key(member, replica);
            member_key.truncate(MAX_KEY_BYTES);
            entries.push(Entry {
                position: position(&member_key),
                member: index,
            });
        }
    }
    merge_sort_by(&mut entries, &mut |left: &Entry, right: &Entry| {
        left.position
            .cmp(&right.position)
            .then_with(|| compare(&members[left.member], &members[right.member]))
    });
    // carbon-c-relay overwrites the server of every entry that repeats its predecessor's position. The walk skips
    // members already chosen, so it meets the same members in the same order as if the run were one entry.
    for entry_index in 1..entries.len() {
        if entries[entry_index].position == entries[entry_index - 1].position {
            entries[entry_index].member = entries[entry_index - 1].member;
        }
    }
    let mut seen = vec![false; members.len()];
    for entry in &entries {
        seen[entry.member] = true;
    }
    let n_members = seen.iter().filter(|&&member_seen| member_seen).count();
    let starts = StartTable::new(entries.len(), |entry| {
        Position::from(entries[entry].position)
    });
    RingKind::Positions {
        entries,
        n_members,
        starts,
    }
}

/// `('HOST', 'INSTANCE'):i` or `('HOST', None):i`: the text of carbon's Python key, as carbon-c-relay writes it.
fn carbon_key(member: &Member, replica: usize) -> Vec<u8> {
    let key = match &member.instance {
        Some(instance) => format!("('{}', '{}'):{}", member.host, instance, replica),
        None => format!("('{}', None):{}", member.host, replica),
    };
    key.into_bytes()
}

/// `i-HOST:PORT`, or `i-INSTANCE` when the member has an instance.
fn fnv1a_key(member: &Member, replica: usize) -> Vec<u8> {
    let key = match &member.instance {
        Some(instance) => format!("{replica}-{instance}"),
        None => format!("{replica}-{}:{}", member.host, member.port),
    };
    key.into_bytes()
}

/// The 32-bit FNV-1a of `key` folded to 16 bits.
fn fnv1a_position(key: &[u8]) -> u16 {
    let hash = fnv1a_32(key);
    ((hash >> 16) ^ (hash & 0xffff)) as u16
}

/// 32-bit FNV-1a as carbon-c-relay computes it: each byte sign-extended from a signed `char`.
fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(2_166_136_261_u32, |hash, &byte| {
        let sign_extended = byte as i8 as i32 as u32;
        (hash ^ sign_extended).wrapping_mul(16_777_619)
    })
}

/// 64-bit FNV-1a as carbon-c-relay computes it: each byte sign-extended from a signed `char`.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(14_695_981_039_346_656_037_u64, |hash, &byte| {
            let sign_extended = byte as i8 as i64 as u64;
            (hash ^ sign_extended).wrapping_mul(1_099_511_628_211)
        })
}

/// `entrycmp_carbon` after the position: host, then instance, a member without an instance last.
fn compare_carbon(left: &Member, right: &Member) -> Ordering {
    left.host
        .as_bytes()
        .cmp(right.host.as_bytes())
        .then_with(|| match (&left.instance, &right.instance) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(left_instance), Some(right_instance)) => {
                left_instance.as_bytes().cmp(right_instance.as_bytes())
            }
        })
}

/// `entrycmp_fnv1a` after the position: host, then port.
fn compare_fnv1a(left: &Member, right: &Member) -> Ordering {
    left.host
        .as_bytes()
        .cmp(right.host.as_bytes())
        .then_with(|| left.port.cmp(&right.port))
}

/// `entrycmp_jump_fnv1a` on member indices: members with an instance first, by instance (as numbers when both parse
/// whole with `strtol`), then the others in config order.
fn compare_jump(members: &[Member], left: usize, right: usize) -> Ordering {
    match (&members[left].instance, &members[right].instance) {
        (None, None) => left.cmp(&right),
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(left_instance), Some(right_instance)) => {
            match (strtol_whole(left_instance), strtol_whole(right_instance)) {
                // C's `(int)(val_l - val_r)`: a wrapping difference truncated to 32 bits.
                (Some(left_value), Some(right_value)) => {
                    (left_value.wrapping_sub(right_value) as i32).cmp(&0)
                }
                _ => left_instance.as_bytes().cmp(right_instance.as_bytes()),
            }
        }
    }
}

/// `strtol(text, &end, 10)` when it consumes all of `text` (`*end == '\0'`), else `None`: leading white space, an
/// optional sign, decimal digits, clamped to the range of a 64-bit `long`. An empty text parses as 0, as in C.
fn strtol_whole(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let mut index = 0;
    while index < bytes.len() && matches!(bytes[index], b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
    {
        index += 1;
    }
    let negative = index < bytes.len() && bytes[index] == b'-';
    if index < bytes.len() && matches!(bytes[index], b'+' | b'-') {
        index += 1;
    }
    let digits = &bytes[index..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        // Without digits strtol leaves `end` at the start, which is the end only for an empty text.
        return bytes.is_empty().then_some(0);
    }
    let magnitude = digits.iter().fold(0_i128, |value, &digit| {
        (value * 10 + i128::from(digit - b'0')).min(1 << 64)
    });
    let value = if negative { -magnitude } else { magnitude };
    Some(value.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}

/// `jump_fnv1a_ch`: jump over `buckets` with `hash`, the path's 64-bit FNV-1a, then swap-remove the chosen bucket and
/// jump again with a stirred hash.
///
/// The bucket numbers depend only on the hash and the bucket count, so they are computed first, into `out`; then each
/// is turned into the member that swap-removal had left at it, last first, without a copy of `buckets`.
fn jump_members(buckets: &[usize], mut hash: u64, replication: usize, out: &mut Vec<usize>) {
    let n_buckets = buckets.len();
    let n_wanted = replication.min(n_buckets);
    for step in 0..n_wanted {
        out.push(jump_bucket(hash, n_buckets - step));
        // xorshift64*, to draw another bucket from the same path.
        hash ^= hash >> 12;
        hash ^= hash << 25;
        hash ^= hash >> 27;
        hash = hash.wrapping_mul(2_685_821_657_736_338_717);
    }
    for step in (0..n_wanted).rev() {
        let mut bucket = out[step];
        // Undo the swap-removals before this step: at step `earlier`, bucket `out[earlier]` received the bucket that
        // was last then, `n_buckets - earlier - 1`.
        for earlier in (0..step).rev() {
            if out[earlier] == bucket {
                bucket = n_buckets - earlier - 1;
            }
        }
        out[step] = buckets[bucket];
    }
}

/// Lamping and Veach's jump consistent hash, with carbon-c-relay's arithmetic in `double`.
fn jump_bucket(mut key: u64, n_buckets: usize) -> usize {
    let n_buckets = n_buckets as i64;
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    while next < n_buckets {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        next = ((bucket + 1) as f64 * ((1_i64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    bucket as usize
}

/// Sorts like glibc 2.36's `qsort` (`msort_with_tmp`): a top-down merge sort that splits at `n / 2` and takes from the
/// left run while `compare` says less or equal. Stable, and the same order as carbon-c-relay's even for its
/// comparators that are not a total order (mixed numeric and textual jump instances).
fn merge_sort_by<T: Copy>(items: &mut [T], compare: &mut impl FnMut(&T, &T) -> Ordering) {
    if items.len() <= 1 {
        return;
    }
    let n_left = items.len() / 2;
    merge_sort_by(&mut items[..n_left], compare);
    merge_sort_by(&mut items[n_left..], compare);
    let left = items[..n_left].to_vec();
    let (mut left_index, mut right_index, mut out_index) = (0, n_left, 0);
    while left_index < left.len() && right_index < items.len() {
        if compare(&left[left_index], &items[right_index]) != Ordering::Greater {
            items[out_index] = left[left_index];
            left_index += 1;
        } else {
            items[out_index] = items[right_index];
            right_index += 1;
        }
        out_index += 1;
    }
    items[out_index..out_index + left.len() - left_index].copy_from_slice(&left[left_index..]);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Parses `host:port[=instance]`, carbon-c-relay's member syntax.
    fn member(text: &str) -> Member {
        let (address, instance) = match text.split_once('=') {
            Some((address, instance)) => (address, Some(instance.to_string())),
            None => (text, None),
        };
        let (host, port) = address.rsplit_once(':').expect("member has a port");
        Member {
            host: host.to_string(),
            port: port.parse().expect("port is a number"),
            instance,
        }
    }

    /// Checks where `path` goes on the ring of `method` over `members` (space-separated), as `host:port` of each.
    fn check(method: CcrMethod, members: &str, replication: usize, path: &str, expected: &str) {
        let members: Vec<Member> = members.split(' ').map(member).collect();
        let ring = CcrRing::new(method, &members);
        let mut out = Vec::new();
        ring.members_for(path.as_bytes(), replication, &mut out);
        let actual: Vec<String> = out
            .iter()
            .map(|&i| format!("{}:{}", members[i].host, members[i].port))
            .collect();
        assert_eq!(actual.join(" "), expected, "{method:?} {path}");
    }

    const THREE: &str = "127.0.0.10:2003=a 127.0.0.8:2004=b 127.0.0.9:2005";

    #[test]
    fn carbon_ch_matches_carbon_c_relay() {
        check(
            CcrMethod::CarbonCh,
            THREE,
            2,
            "foo.bar",
            "127.0.0.9:2005 127.0.0.10:2003",
        );
        check(
            CcrMethod::CarbonCh,
            THREE,
            2,
            "foo.baz",
            "127.0.0.8:2004 127.0.0.9:2005",
        );
        check(
            CcrMethod::CarbonCh,
            THREE,
            2,
            "x.y",
            "127.0.0.10:2003 127.0.0.8:2004",
        );
        check(
            CcrMethod::CarbonCh,
            THREE,
            2,
            "née.a",
            "127.0.0.8:2004 127.0.0.10:2003",
        );
    }

    #[test]
    fn fnv1a_ch_matches_carbon_c_relay() {
        check(
            CcrMethod::Fnv1aCh,
            THREE,
            2,
            "foo.bar",
            "127.0.0.9:2005 127.0.0.8:2004",
        );
        check(
            CcrMethod::Fnv1aCh,
            THREE,
            2,
            "née.a",
            "127.0.0.9:2005 127.0.0.10:2003",
        );
    }

    #[test]
    fn jump_fnv1a_ch_matches_carbon_c_relay() {
        check(
            CcrMethod::JumpFnv1aCh,
            THREE,
            2,
            "foo.bar",
            "127.0.0.8:2004 127.0.0.9:2005",
        );
        check(
            CcrMethod::JumpFnv1aCh,
            THREE,
            2,
            "née.a",
            "127.0.0.8:2004 127.0.0.10:2003",
        );
    }

    #[test]
    fn carbon_ch_hashes_the_host_not_the_port() {
        // Same host, no instance: the second member's 100 positions tie with the first's, and the first wins them.
        let same_host = "127.0.0.1:2003 127.0.0.1:2004";
        check(
            CcrMethod::CarbonCh,
            same_host,
            2,
            "foo.bar",
            "127.0.0.1:2003",
        );
        check(
            CcrMethod::Fnv1aCh,
            same_host,
            2,
            "foo.bar",
            "127.0.0.1:2003 127.0.0.1:2004",
        );
    }

    #[test]
    fn fnv1a_sign_extends_bytes_above_0x7f() {
        assert_eq!(fnv1a_32(b"a"), 0xe40c292c);
        assert_ne!(
            fnv1a_32(&[0xc3]),
            (2_166_136_261_u32 ^ 0xc3).wrapping_mul(16_777_619)
        );
        assert_eq!(
            fnv1a_32(&[0xc3]),
            (2_166_136_261_u32 ^ 0xffff_ffc3).wrapping_mul(16_777_619)
        );
    }

    #[test]
    fn jump_orders_instances_first_numerically_then_config_order() {
        let members: Vec<Member> = "h:1 h:2=10 h:3 h:4=9 h:5=b h:6=a"
            .split(' ')
            .map(member)
            .collect();
        let ring = CcrRing::new(CcrMethod::JumpFnv1aCh, &members);
        let RingKind::Jump { buckets } = &ring.kind else {
            panic!("jump ring")
        };
        // "9" < "10" as numbers; "10" < "a" < "b" by strcmp; then h:1, h:3 in config order.
        assert_eq!(buckets, &[3, 1, 5, 4, 0, 2]);
    }

    #[test]
    fn strtol_whole_parses_like_c() {
        assert_eq!(strtol_whole("42"), Some(42));
        assert_eq!(strtol_whole(" -7"), Some(-7));
        assert_eq!(strtol_whole("+0"), Some(0));
        assert_eq!(strtol_whole(""), Some(0));
        assert_eq!(strtol_whole("4a"), None);
        assert_eq!(strtol_whole("-"), None);
        assert_eq!(strtol_whole("99999999999999999999"), Some(i64::MAX));
    }

    /// One fixture written by `tests/data/ccr/generate.py`.
    struct Fixture {
        method: CcrMethod,
        replication: usize,
        members: Vec<Member>,
        /// The ring as `carbon-c-relay -t -d` lists it: the number it prints, and the member index.
        ring: Vec<(u64, usize)>,
        expected: Vec<Vec<usize>>,
    }

    fn read_fixture(text: &str) -> Fixture {
        let mut lines = text.lines().filter(|line| !line.starts_with('#'));
        let mut method = None;
        let mut replication = 0;
        let mut members = Vec::new();
        for line in lines.by_ref() {
            match line.split_once(' ') {
                Some(("method", "carbon_ch")) => method = Some(CcrMethod::CarbonCh),
                Some(("method", "fnv1a_ch")) => method = Some(CcrMethod::Fnv1aCh),
                Some(("method", "jump_fnv1a_ch")) => method = Some(CcrMethod::JumpFnv1aCh),
                Some(("replication", count)) => {
                    replication = count.parse().expect("replication is a number")
                }
                Some(("member", text)) => members.push(member(text)),
                None if line == "ring" => break,
                _ => panic!("unexpected fixture line {line:?}"),
            }
        }
        let ring = lines
            .by_ref()
            .take_while(|&line| line != "paths")
            .map(|line| {
                let (number, member) = line.split_once(' ').expect("ring line has two fields");
                (
                    number.parse().expect("ring position"),
                    member.parse().expect("ring member index"),
                )
            })
            .collect();
        let expected = lines
            .map(|line| {
                line.split(' ')
                    .map(|index| index.parse().expect("member index"))
                    .collect()
            })
            .collect();
        Fixture {
            method: method.expect("fixture names its method"),
            replication,
            members,
            ring,
            expected,
        }
    }

    fn fixture_directory() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ccr")
    }

    /// The text of `tests/data/ccr/NAME`.
    fn fixture_text(name: &str) -> String {
        std::fs::read_to_string(fixture_directory().join(name))
            .unwrap_or_else(|error| panic!("read {name}: {error}"))
    }

    /// The names of the 27 ring fixtures, `METHOD-CLUSTER.txt`, sorted.
    fn fixture_names() -> Vec<String> {
        let mut fixture_names: Vec<_> = std::fs::read_dir(fixture_directory())
            .expect("read tests/data/ccr")
            .map(|entry| {
                entry
                    .expect("directory entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8 file name")
            })
            .filter(|name| {
                name.ends_with(".txt") && name != "paths.txt" && !name.starts_with("positions-")
            })
            .collect();
        fixture_names.sort();
        assert_eq!(fixture_names.len(), 27, "{fixture_names:?}");
        fixture_names
    }

    #[test]
    fn every_fixture_path_goes_where_carbon_c_relay_sends_it() {
        let paths_text = fixture_text("paths.txt");
        let paths: Vec<&str> = paths_text.lines().collect();
        let mut out = Vec::new();
        for name in &fixture_names() {
            let fixture = read_fixture(&fixture_text(name));
            assert_eq!(fixture.expected.len(), paths.len(), "{name}");
            let ring = CcrRing::new(fixture.method, &fixture.members);
            for (path, expected) in paths.iter().zip(&fixture.expected) {
                assert_eq!(expected.len(), fixture.replication, "{name} {path}");
                // Lower replications are prefixes: carbon-c-relay walks (or jumps) on from the primary.
                for replication in 1..=fixture.replication {
                    ring.members_for(path.as_bytes(), replication, &mut out);
                    assert_eq!(
                        out,
                        expected[..replication],
                        "{name} {path} replication {replication}"
                    );
                }
            }
        }
    }

    #[test]
    fn entries_list_the_ring_as_carbon_c_relay_dumps_it() {
        for name in &fixture_names() {
            let fixture = read_fixture(&fixture_text(name));
            let ring = CcrRing::new(fixture.method, &fixture.members);
            let entries: Vec<(u64, usize)> = ring
                .entries()
                .map(|entry| (entry.position, entry.member))
                .collect();
            let expected: Vec<(u64, usize)> = match fixture.method {
                CcrMethod::JumpFnv1aCh => fixture
                    .ring
                    .iter()
                    .enumerate()
                    .map(|(bucket, &(config_index, member))| {
                        // carbon-c-relay prints the member's config index where we give the bucket number.
                        assert_eq!(config_index, member as u64, "{name}");
                        (bucket as u64, member)
                    })
                    .collect(),
                _ => fixture.ring.clone(),
            };
            assert_eq!(entries, expected, "{name}");
        }
    }

    #[test]
    fn path_positions_are_carbon_c_relays_hash_pos_whatever_the_members() {
        let paths_text = fixture_text("paths.txt");
        let three: Vec<Member> = THREE.split(' ').map(member).collect();
        let one = [member("10.1.1.1:2003")];
        for (method, name) in [
            (CcrMethod::CarbonCh, "positions-carbon_ch.txt"),
            (CcrMethod::Fnv1aCh, "positions-fnv1a_ch.txt"),
        ] {
            let hash_positions_text = fixture_text(name);
            let hash_positions: Vec<&str> = hash_positions_text.lines().collect();
            assert_eq!(hash_positions.len(), paths_text.lines().count(), "{name}");
            let rings = [CcrRing::new(method, &three), CcrRing::new(method, &one)];
            for (path, hash_position) in paths_text.lines().zip(&hash_positions) {
                let expected: Position = hash_position.parse().expect("a position");
                for ring in &rings {
                    assert_eq!(
                        ring.path_position(path.as_bytes()),
                        expected,
                        "{name} {path}"
                    );
                }
            }
        }
    }

    #[test]
    fn jump_positions_are_the_whole_64_bit_hash() {
        let members: Vec<Member> = THREE.split(' ').map(member).collect();
        let ring = CcrRing::new(CcrMethod::JumpFnv1aCh, &members);
        assert_eq!(ring.path_position(b"a"), 0xaf63dc4c8601ec8c);
        assert!(!ring.position_is_expensive());
    }
}
