//! A bounded, exact cache from a metric path to a `u32` computed from it: for hash clusters, the path's ring position.
//!
//! The router asks a hash ring where every line goes, and for `carbon_ch` that starts with the MD5 of the path
//! (140–350 ns here), far more than the whole budget of a line. Live traffic repeats the same paths every interval,
//! so each worker thread keeps one `PathCache` and computes a path's position only on a miss.
//!
//! # Layout
//!
//! - **Sets.** A power-of-two table of sets of [`WAYS`] slots; a set is one 64-byte cache line. A slot holds a key
//!   (24 bits of the path's hash as a tag, and the path's length), the cached value, and where the path's bytes are
//!   in the arena. A path may sit in either of two sets picked by two slices of its hash (two-choice hashing), and
//!   the high bits make its tag. Most paths sit in their first set, so most hits read one line of the table.
//! - **Arena.** A circular byte buffer the paths are appended to. Positions in it are *virtual*: lap `n` of the
//!   arena covers positions `n << 32` up to `(n << 32) + arena_bytes`, and a path that does not fit before the end
//!   starts the next lap at index 0, so a path's bytes are always contiguous. Bytes of the previous lap at or after
//!   the head's index have not been overwritten yet; older ones have. So a slot is *live* exactly when its position
//!   is at least `head - 2^32` (`oldest_live_position`), a comparison instead of a division. The head starts at
//!   lap 2, so an empty slot (position 0) is dead too.
//!
//! # Invariants
//!
//! - **Exact.** A lookup returns a cached value only for a live slot whose key matches and whose bytes in the arena
//!   are equal to the queried path. A hash or tag match alone never answers, so the cache returns what `compute`
//!   returned for those very bytes (for a pure `compute`, the same as calling it), as routing bit-exact with carbon
//!   needs.
//! - **Bounded.** Memory is fixed at construction ([`PathCache::memory_bytes`]); a lookup or insert allocates nothing.
//!   Paths longer than [`MAX_PATH_BYTES`] (or than the arena) are not cached: `compute` runs every time.
//! - **Replacement.** A miss takes the oldest (lowest position) slot of the path's first set if that slot is empty
//!   or dead, else the second set's if that one is, else the oldest of the two sets (FIFO). With one set only, a set
//!   holding five paths that arrive in turn, as every collection interval sends them, would miss on all five;
//!   with two choices a set overflows only when both are full. A hit writes nothing, so it reads one or two lines
//!   of the table and the path's bytes.
//! - Single owner: every method takes `&mut self`; keep one per thread (a `thread_local!`), no locks.

// rapidhash (v3) for the set index and tag: a plain function of a byte slice, so no `Hasher` state or length prefix;
// full avalanche, so the low bits (set) and the high bits (tag) are both good; and its output is fixed by the version,
// so which paths collide is the same on every machine and in every bench. On 42-byte paths here it took 2.6 ns, against
// 2.8 for rustc-hash 2 (FxHash), 3.1–3.6 for foldhash 0.2 and 3.5 for xxh3 (xxhash-rust); all are maintained, so the
// rest of a lookup decides, not the hash.
use rapidhash::v3::rapidhash_v3;

/// Slots per set. Four 16-byte slots make a set one 64-byte cache line, so a lookup reads one line of the table.
pub const WAYS: usize = 4;

/// The longest path that is cached, in bytes; longer ones bypass the cache. The slot key keeps the length in 8 bits.
/// Real paths are mostly 30–120 bytes; carbon-c-relay cuts its hash keys to 255 bytes too.
pub const MAX_PATH_BYTES: usize = 255;

/// The virtual length of one lap of the arena (see the module doc): positions of lap `n` start at `n << 32`.
const LAP: u64 = 1 << 32;

/// The lap the head starts in: lap 2, so that every position of lap 0, among them an empty slot's 0, is dead.
const FIRST_LAP: u64 = 2;

/// The largest arena: an index into it must fit in the 32 bits of a lap.
const MAX_ARENA_BYTES: usize = u32::MAX as usize;

/// A bounded cache from path bytes to a `u32`, exact (bytes are compared) and allocation-free after construction.
///
/// Memory: `16 × slots + arena_bytes`, plus a few words ([`PathCache::memory_bytes`]). For 100,000 hot paths of
/// about 60 bytes, `PathCache::new(256 * 1024, 8 << 20)` takes 12 MiB (4 MiB of slots at 38 % load, an 8 MiB arena
/// with room for the paths and for the churn of conflict misses); paths of about 45 bytes fit
/// `PathCache::new(256 * 1024, 6 << 20)`, 10 MiB. The table is written at construction; the arena is allocated
/// zeroed, so its pages are only touched as paths are appended.
#[derive(Debug)]
pub struct PathCache {
    /// The sets; their number is a power of two.
    sets: Box<[Set]>,
    /// `sets.len() - 1`: the low bits of a hash that pick a set.
    set_mask: u64,
    /// The circular buffer of path bytes.
    arena: Box<[u8]>,
    /// The virtual position the next path is appended at (see the module doc). Starts at [`FIRST_LAP`].
    head: u64,
    /// Paths longer than this bypass the cache: the smaller of [`MAX_PATH_BYTES`] and the arena.
    max_path_bytes: usize,
    /// Lookups answered from the cache.
    n_hits: u64,
    /// Lookups that ran `compute`, including paths too long to cache.
    n_misses: u64,
}

/// One set of [`WAYS`] slots, as three arrays so the keys can be compared together; 64 bytes, one cache line.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Set {
    /// Per slot: 24 bits of tag, then the path's length in the low 8 bits.
    keys: [u32; WAYS],
    /// Per slot: what `compute` returned for the path.
    values: [u32; WAYS],
    /// Per slot: the virtual arena position of the path's first byte; 0, which is dead, when empty.
    positions: [u64; WAYS],
}

impl Set {
    const EMPTY: Set = Set {
        keys: [0; WAYS],
        values: [0; WAYS],
        positions: [0; WAYS],
    };
}

impl PathCache {
    /// Builds an empty cache of `slots` slots (rounded up to a power of two, at least [`WAYS`]) and an arena of
    /// `arena_bytes` bytes for the paths (at least 1, at most 4 GiB − 1).
    ///
    /// The arena should hold the hot paths with room to spare (about a third again as much) for the paths that
    /// come and go: a path whose bytes the arena has lapped is a miss even if its slot is still there.
    pub fn new(slots: usize, arena_bytes: usize) -> PathCache {
        let n_sets = slots.max(WAYS).next_power_of_two() / WAYS;
        let arena_bytes = arena_bytes.clamp(1, MAX_ARENA_BYTES);
        PathCache {
            sets: vec![Set::EMPTY; n_sets].into_boxed_slice(),
            set_mask: n_sets as u64 - 1,
            arena: vec![0; arena_bytes].into_boxed_slice(),
            head: FIRST_LAP * LAP,
            max_path_bytes: MAX_PATH_BYTES.min(arena_bytes),
            n_hits: 0,
            n_misses: 0,
        }
    }

    /// Returns the value cached for `path`, or runs `compute(path)`, caches its result and returns it.
    ///
    /// `compute` must be a function of the path alone: a hit returns what it returned for the same bytes before.
    #[inline]
    pub fn get_or_insert_with(&mut self, path: &[u8], compute: impl FnOnce(&[u8]) -> u32) -> u32 {
        if path.len() > self.max_path_bytes {
            self.n_misses += 1;
            return compute(path);
        }
        self.get_or_insert_hashed(path, rapidhash_v3(path), compute)
    }

    /// How many lookups the cache answered.
    pub fn hits(&self) -> u64 {
        self.n_hits
    }

    /// How many lookups ran `compute`: misses, and paths too long to cache.
    pub fn misses(&self) -> u64 {
        self.n_misses
    }

    /// The number of slots (a power of two).
    pub fn slots(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// The bytes this cache holds on the heap and inline: the table, the arena and the struct itself.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.sets) + self.arena.len() + std::mem::size_of::<PathCache>()
    }

    /// [`PathCache::get_or_insert_with`] for a path that fits, given its hash; tests pass colliding hashes here.
    #[inline]
    fn get_or_insert_hashed(
        &mut self,
        path: &[u8],
        hash: u64,
        compute: impl FnOnce(&[u8]) -> u32,
    ) -> u32 {
        debug_assert!(path.len() <= self.max_path_bytes);
        // Two candidate sets and the tag from disjoint bits of the hash (bits 0.., 20.. and 40..63), independent for
        // tables of up to 2^20 sets (4 Mi slots).
        let first_set = (hash & self.set_mask) as usize;
        let second_set = ((hash >> 20) & self.set_mask) as usize;
        let tag = (hash >> 40) as u32;
        let key = tag << 8 | path.len() as u32;
        let oldest_live = self.oldest_live_position();

        for set_index in [first_set, second_set] {
            let set = &self.sets[set_index];
            for way in 0..WAYS {
                if set.keys[way] == key && set.positions[way] >= oldest_live {
                    let start = set.positions[way] as u32 as usize;
                    if self.arena[start..start + path.len()] == *path {
                        self.n_hits += 1;
                        return set.values[way];
                    }
                }
            }
        }

        self.n_misses += 1;
        let value = compute(path);
        let (set_index, way) = self.victim(first_set, second_set);
        let position = self.append(path);
        let set = &mut self.sets[set_index];
        set.keys[way] = key;
        set.values[way] = value;
        set.positions[way] = position;
        value
    }

    /// The slot a new path takes: the first set's oldest slot if it is empty or dead, else the second set's if that
    /// one is, else the oldest of both sets (FIFO). Filling the first set first keeps most hits to one cache line.
    fn victim(&self, first_set: usize, second_set: usize) -> (usize, usize) {
        let oldest_live = self.oldest_live_position();
        let oldest_way = |set_index: usize| {
            let positions = &self.sets[set_index].positions;
            let way = (0..WAYS)
                .min_by_key(|&way| positions[way])
                .expect("a set has WAYS > 0 slots");
            (set_index, way, positions[way])
        };
        let first = oldest_way(first_set);
        let second = oldest_way(second_set);
        let (set_index, way, _) = if first.2 < oldest_live || first.2 <= second.2 {
            first
        } else {
            second
        };
        (set_index, way)
    }

    /// The lowest virtual position whose bytes are still in the arena: every byte of the current lap, and those of
    /// the previous lap at or after the head's index.
    fn oldest_live_position(&self) -> u64 {
        self.head - LAP
    }

    /// Copies `path` into the arena at the head, starting the next lap first if it does not fit before the end, and
    /// returns its virtual position.
    fn append(&mut self, path: &[u8]) -> u64 {
        let mut start = self.head as u32 as usize;
        if start + path.len() > self.arena.len() {
            self.start_next_lap();
            start = 0;
        }
        let position = self.head;
        self.arena[start..start + path.len()].copy_from_slice(path);
        self.head += path.len() as u64;
        position
    }

    /// Moves the head to index 0 of the next lap. After the lap 2^32 − 1 the virtual positions would overflow; then
    /// the table is emptied and the laps count from [`FIRST_LAP`] again (years of misses away even for a small arena).
    fn start_next_lap(&mut self) {
        let lap = self.head >> 32;
        if lap == u64::from(u32::MAX) {
            self.sets.fill(Set::EMPTY);
            self.head = FIRST_LAP * LAP;
        } else {
            self.head = (lap + 1) << 32;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use md5::{Digest, Md5};
    use proptest::prelude::*;

    use super::*;

    /// A deterministic value per path, different for nearly every two paths, so a wrong hit shows.
    fn md5_u32(path: &[u8]) -> u32 {
        let digest = Md5::digest(path);
        u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
    }

    /// Looks the paths up in order and checks every answer against `md5_u32`, and whether it was a hit.
    fn check(cache: &mut PathCache, lookups: &[(&[u8], bool)]) {
        for &(path, expect_hit) in lookups {
            let mut computed = false;
            let value = cache.get_or_insert_with(path, |p| {
                computed = true;
                md5_u32(p)
            });
            let shown = String::from_utf8_lossy(path);
            assert_eq!(value, md5_u32(path), "value of {shown:?}");
            assert_eq!(!computed, expect_hit, "hit for {shown:?}");
        }
    }

    #[test]
    fn a_path_is_computed_once_then_hit() {
        let mut cache = PathCache::new(1024, 4096);
        check(
            &mut cache,
            &[
                (b"a.b.c", false),
                (b"a.b.c", true),
                (b"a.b.d", false),
                (b"a.b.c", true),
                (b"a.b.d", true),
            ],
        );
        assert_eq!((cache.hits(), cache.misses()), (3, 2));
    }

    #[test]
    fn the_empty_path_is_cached() {
        let mut cache = PathCache::new(16, 64);
        check(
            &mut cache,
            &[(b"", false), (b"", true), (b"x", false), (b"", true)],
        );
    }

    #[test]
    fn an_empty_slot_answers_no_path() {
        // The empty path with hash 0 has key 0 and would read 0 bytes at position 0: what an empty slot holds.
        let mut cache = PathCache::new(16, 64);
        assert_eq!(cache.get_or_insert_hashed(b"", 0, md5_u32), md5_u32(b""));
        assert_eq!((cache.hits(), cache.misses()), (0, 1));
    }

    #[test]
    fn paths_longer_than_the_limit_bypass_the_cache() {
        let mut cache = PathCache::new(16, 4096);
        let longest = [b'a'; MAX_PATH_BYTES];
        let too_long = [b'a'; MAX_PATH_BYTES + 1];
        check(
            &mut cache,
            &[
                (&longest, false),
                (&longest, true),
                (&too_long, false),
                (&too_long, false),
            ],
        );
        assert_eq!((cache.hits(), cache.misses()), (1, 3));
    }

    #[test]
    fn paths_longer_than_a_small_arena_bypass_the_cache() {
        let mut cache = PathCache::new(16, 4);
        check(
            &mut cache,
            &[
                (b"abcd", false),
                (b"abcd", true),
                (b"abcde", false),
                (b"abcde", false),
            ],
        );
    }

    #[test]
    fn equal_hashes_and_lengths_are_told_apart_by_the_bytes() {
        let mut cache = PathCache::new(16, 4096);
        let same_hash = 0x1234_5678_9abc_def0;
        for round in 0..3 {
            for path in [b"a.b.c", b"a.b.d", b"x.y.z"] {
                let value = cache.get_or_insert_hashed(path, same_hash, md5_u32);
                assert_eq!(value, md5_u32(path), "round {round}");
            }
        }
        assert_eq!((cache.hits(), cache.misses()), (6, 3));
    }

    #[test]
    fn a_path_whose_first_set_is_full_takes_its_second_then_the_oldest_slot_goes() {
        // Two sets; every path has set 0 first and set 1 second, and the same tag.
        let mut cache = PathCache::new(2 * WAYS, 4096);
        let hash = 1 << 20;
        let paths: Vec<Vec<u8>> = (0..=2 * WAYS)
            .map(|i| format!("p{i}").into_bytes())
            .collect();
        let mut look_up = |path: &[u8]| {
            let mut computed = false;
            let value = cache.get_or_insert_hashed(path, hash, |p| {
                computed = true;
                md5_u32(p)
            });
            assert_eq!(value, md5_u32(path));
            !computed
        };
        let first_round: Vec<bool> = paths[..2 * WAYS].iter().map(|path| look_up(path)).collect();
        assert_eq!(first_round, [false; 2 * WAYS]);
        let second_round: Vec<bool> = paths[..2 * WAYS].iter().map(|path| look_up(path)).collect();
        assert_eq!(second_round, [true; 2 * WAYS]);
        // Both sets are full: the last path replaces the first, the oldest.
        assert!(!look_up(&paths[2 * WAYS]));
        assert!(look_up(&paths[1]));
        assert!(look_up(&paths[2 * WAYS]));
        assert!(!look_up(&paths[0]));
    }

    #[test]
    fn a_path_the_arena_has_lapped_is_computed_again() {
        // Room for two 4-byte paths: the third overwrites the first.
        let mut cache = PathCache::new(64, 8);
        check(
            &mut cache,
            &[
                (b"aaaa", false),
                (b"bbbb", false),
                (b"aaaa", true),
                (b"cccc", false),
                (b"bbbb", true),
                (b"aaaa", false),
            ],
        );
    }

    #[test]
    fn a_path_that_does_not_fit_before_the_end_starts_the_next_lap() {
        // "aaa" at 0..3, "bbb" at 3..6; "ccc" does not fit in 6..8 and overwrites "aaa" at 0; "bbb" lives on.
        let mut cache = PathCache::new(64, 8);
        check(
            &mut cache,
            &[
                (b"aaa", false),
                (b"bbb", false),
                (b"ccc", false),
                (b"bbb", true),
                (b"ccc", true),
                (b"aaa", false),
            ],
        );
    }

    #[test]
    fn the_last_lap_empties_the_table_instead_of_overflowing() {
        let mut cache = PathCache::new(64, 16);
        cache.head = (u64::from(u32::MAX) << 32) + 12;
        check(
            &mut cache,
            &[(b"aaaa", false), (b"aaaa", true), (b"bbbbb", false)],
        );
        assert_eq!(cache.head, FIRST_LAP * LAP + 5);
        check(
            &mut cache,
            &[(b"aaaa", false), (b"bbbbb", true), (b"aaaa", true)],
        );
    }

    #[test]
    fn memory_is_the_table_and_the_arena() {
        assert_eq!(std::mem::size_of::<Set>(), 64);
        let cache = PathCache::new(256 * 1024, 6 << 20);
        assert_eq!(cache.slots(), 256 * 1024);
        let memory_bytes = cache.memory_bytes();
        assert!(
            (10 << 20..(10 << 20) + 256).contains(&memory_bytes),
            "{memory_bytes}"
        );
        assert_eq!(PathCache::new(5, 0).slots(), 8);
        assert_eq!(PathCache::new(0, 0).slots(), WAYS);
    }

    /// A pool of paths to draw lookups from: lengths 0, 1–3, around 60, and at, just under and just over the limit.
    fn path_pool() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let path = prop_oneof![
            Just(Vec::new()),
            proptest::collection::vec(b'a'..=b'c', 1..4),
            proptest::collection::vec(b'a'..=b'z', 40..80),
            proptest::collection::vec(b'a'..=b'b', MAX_PATH_BYTES - 1..=MAX_PATH_BYTES + 1),
        ];
        proptest::collection::vec(path, 1..40)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Differential test against a plain map of what was inserted: every answer is `compute(path)`, a hit is
        /// only ever for an inserted path with the value inserted, and a path looked up again at once is a hit when
        /// it fits (nothing can have evicted it). Tiny tables and arenas make sets collide and the arena lap many
        /// times; `forced_hash` gives every path the same sets and tag, so only the bytes tell them apart.
        #[test]
        fn answers_as_computing_every_time(
            pool in path_pool(),
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 1..400),
            slots in prop_oneof![Just(1usize), Just(8), Just(64), Just(4096)],
            arena_bytes in prop_oneof![Just(1usize), Just(7), Just(100), Just(300), Just(1 << 16)],
            forced_hash in proptest::option::of(prop_oneof![Just(0), Just(1 << 20), any::<u64>()]),
        ) {
            let mut cache = PathCache::new(slots, arena_bytes);
            let mut inserted: HashMap<Vec<u8>, u32> = HashMap::new();
            let mut n_lookups = 0;
            for pick in &picks {
                let path = pick.get(&pool).as_slice();
                let fits = path.len() <= cache.max_path_bytes;
                let mut lookup = |cache: &mut PathCache| {
                    n_lookups += 1;
                    let mut computed = false;
                    let compute = |p: &[u8]| {
                        computed = true;
                        md5_u32(p)
                    };
                    let value = match forced_hash {
                        Some(hash) if fits => cache.get_or_insert_hashed(path, hash, compute),
                        _ => cache.get_or_insert_with(path, compute),
                    };
                    (value, computed)
                };
                let (value, computed) = lookup(&mut cache);
                prop_assert_eq!(value, md5_u32(path));
                if computed {
                    inserted.insert(path.to_vec(), value);
                } else {
                    prop_assert_eq!(inserted.get(path), Some(&value));
                }
                if fits {
                    prop_assert_eq!(lookup(&mut cache), (value, false));
                }
            }
            prop_assert_eq!(cache.hits() + cache.misses(), n_lookups);
        }
    }
}
