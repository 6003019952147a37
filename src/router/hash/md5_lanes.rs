//! [`super::md5_position`] of many paths at once: eight MD5s computed side by side, one per lane.
//!
//! A `carbon_ch` ring needs the MD5 of every path it routes, and one MD5 of a short path costs about 100 ns here, more
//! than everything else the relay does with the line. MD5 is a chain of 32-bit additions, rotations and bit
//! operations with no branch that depends on the data, so eight independent messages can go through it in lockstep,
//! each operation applied to eight lanes. Written as plain Rust over `[u32; 8]`, the compiler turns each eight-lane
//! step into one AVX2 instruction when it may use AVX2: so the same code is compiled twice, once for the x86-64
//! baseline (where the compiler keeps it scalar: SSE2 has no cheap vector rotate) and once with AVX2 enabled, which
//! runs when the CPU has it (checked once, as `line::classify` does). No crate computes several MD5s side by side
//! (RustCrypto's `md-5`, used for the single ones, hashes one stream), hence this module. Its one `unsafe` is the
//! call to the AVX2 build after the CPU check; `md-5` is the reference every test compares both builds with.
//!
//! Paths longer than [`MAX_LANE_BYTES`] (four MD5 blocks) go to `md-5` one by one.

use super::md5_position;

/// Messages hashed side by side.
pub const LANES: usize = 8;

/// Most 64-byte blocks a lane's message may take: longer paths are hashed alone.
const MAX_BLOCKS: usize = 4;

/// The longest path hashed in a lane: what fits in four blocks with MD5's padding (one `0x80` byte and the
/// 8-byte length).
pub const MAX_LANE_BYTES: usize = MAX_BLOCKS * 64 - 9;

/// MD5's per-step constants, `floor(abs(sin(i + 1)) * 2^32)` (RFC 1321).
const K: [u32; 64] = [
    0xd76a_a478,
    0xe8c7_b756,
    0x2420_70db,
    0xc1bd_ceee,
    0xf57c_0faf,
    0x4787_c62a,
    0xa830_4613,
    0xfd46_9501,
    0x6980_98d8,
    0x8b44_f7af,
    0xffff_5bb1,
    0x895c_d7be,
    0x6b90_1122,
    0xfd98_7193,
    0xa679_438e,
    0x49b4_0821,
    0xf61e_2562,
    0xc040_b340,
    0x265e_5a51,
    0xe9b6_c7aa,
    0xd62f_105d,
    0x0244_1453,
    0xd8a1_e681,
    0xe7d3_fbc8,
    0x21e1_cde6,
    0xc337_07d6,
    0xf4d5_0d87,
    0x455a_14ed,
    0xa9e3_e905,
    0xfcef_a3f8,
    0x676f_02d9,
    0x8d2a_4c8a,
    0xfffa_3942,
    0x8771_f681,
    0x6d9d_6122,
    0xfde5_380c,
    0xa4be_ea44,
    0x4bde_cfa9,
    0xf6bb_4b60,
    0xbebf_bc70,
    0x289b_7ec6,
    0xeaa1_27fa,
    0xd4ef_3085,
    0x0488_1d05,
    0xd9d4_d039,
    0xe6db_99e5,
    0x1fa2_7cf8,
    0xc4ac_5665,
    0xf429_2244,
    0x432a_ff97,
    0xab94_23a7,
    0xfc93_a039,
    0x655b_59c3,
    0x8f0c_cc92,
    0xffef_f47d,
    0x8584_5dd1,
    0x6fa8_7e4f,
    0xfe2c_e6e0,
    0xa301_4314,
    0x4e08_11a1,
    0xf753_7e82,
    0xbd3a_f235,
    0x2ad7_d2bb,
    0xeb86_d391,
];

/// The rotation of each step, four per round (RFC 1321).
const ROTATIONS: [[u32; 4]; 4] = [
    [7, 12, 17, 22],
    [5, 9, 14, 20],
    [4, 11, 16, 23],
    [6, 10, 15, 21],
];

/// MD5's initial state.
const INITIAL: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

type Lanes = [u32; LANES];

/// Writes the MD5 position of `path(i)` for each `i` in `0..n_paths` into `out` (cleared first), in order.
pub fn md5_positions<'a>(n_paths: usize, path: impl Fn(usize) -> &'a [u8], out: &mut Vec<u16>) {
    out.clear();
    out.reserve(n_paths);
    let mut lane_paths: [&[u8]; LANES] = [&[]; LANES];
    let mut lane_slots = [0_usize; LANES];
    let mut n_lanes = 0;
    for index in 0..n_paths {
        let bytes = path(index);
        if bytes.len() > MAX_LANE_BYTES {
            out.push(md5_position(bytes));
            continue;
        }
        out.push(0);
        lane_paths[n_lanes] = bytes;
        lane_slots[n_lanes] = index;
        n_lanes += 1;
        if n_lanes == LANES {
            let positions = positions_of(&lane_paths);
            for (slot, position) in lane_slots.iter().zip(positions) {
                out[*slot] = position;
            }
            n_lanes = 0;
        }
    }
    if n_lanes > 0 {
        // The unused lanes hash empty messages, and their answers are dropped.
        for unused in &mut lane_paths[n_lanes..] {
            *unused = &[];
        }
        let positions = positions_of(&lane_paths);
        for (slot, position) in lane_slots[..n_lanes].iter().zip(positions) {
            out[*slot] = position;
        }
    }
}

/// The MD5 positions of eight paths of at most [`MAX_LANE_BYTES`] each, with AVX2 when the CPU has it.
fn positions_of(paths: &[&[u8]; LANES]) -> [u16; LANES] {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        return positions_with(paths, |state, words| {
            // SAFETY: the CPU has AVX2, checked just above (the check is a cached load).
            #[allow(unsafe_code)]
            unsafe {
                compress_avx2(state, words)
            }
        });
    }
    positions_with(paths, compress)
}

/// [`compress`] compiled with AVX2, where each eight-lane step is one instruction. Kept out of line: inlined into a
/// larger function, the compiler no longer vectorizes it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline(never)]
fn compress_avx2(state: &[Lanes; 4], words: &[Lanes; 16]) -> [Lanes; 4] {
    compress(state, words)
}

/// The MD5 positions of eight paths of at most [`MAX_LANE_BYTES`] each, each block compressed by `compress`.
#[inline(always)]
fn positions_with(
    paths: &[&[u8]; LANES],
    compress: impl Fn(&[Lanes; 4], &[Lanes; 16]) -> [Lanes; 4],
) -> [u16; LANES] {
    let n_blocks: [usize; LANES] = paths.map(|path| (path.len() + 8) / 64 + 1);
    let most_blocks = n_blocks.iter().copied().max().unwrap_or(1);
    let mut state: [Lanes; 4] = INITIAL.map(|word| [word; LANES]);
    let mut words: [Lanes; 16] = [[0; LANES]; 16];
    for block in 0..most_blocks {
        for (lane, path) in paths.iter().enumerate() {
            let block_bytes = padded_block(path, block, n_blocks[lane]);
            for (word, chunk) in words.iter_mut().zip(block_bytes.chunks_exact(4)) {
                word[lane] = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            }
        }
        let next = compress(&state, &words);
        for lane in 0..LANES {
            // A lane whose message has ended keeps its digest.
            if block < n_blocks[lane] {
                for (word, next_word) in state.iter_mut().zip(&next) {
                    word[lane] = next_word[lane];
                }
            }
        }
    }
    // The digest's first two bytes are the low two bytes of `a`, little-endian.
    state[0].map(|a| u16::from_be_bytes([a as u8, (a >> 8) as u8]))
}

/// Block `block` of `path` padded as MD5 pads it into `n_blocks` blocks: the bytes, `0x80`, zeros, and the length in
/// bits as 8 little-endian bytes at the end of the last block. A block past the message is zeros.
#[inline(always)]
fn padded_block(path: &[u8], block: usize, n_blocks: usize) -> [u8; 64] {
    let mut bytes = [0_u8; 64];
    let start = block * 64;
    if start < path.len() {
        let end = path.len().min(start + 64);
        bytes[..end - start].copy_from_slice(&path[start..end]);
    }
    if (start..start + 64).contains(&path.len()) {
        bytes[path.len() - start] = 0x80;
    }
    if block + 1 == n_blocks {
        bytes[56..].copy_from_slice(&((path.len() as u64) * 8).to_le_bytes());
    }
    bytes
}

/// One MD5 compression of 64-byte blocks in every lane: the state after `words`. The 64 steps are written out (by
/// `steps!`) so that every message index, constant and rotation is a constant and each step compiles to straight
/// SIMD code.
#[inline(always)]
fn compress(state: &[Lanes; 4], words: &[Lanes; 16]) -> [Lanes; 4] {
    let [mut a, mut b, mut c, mut d] = *state;
    // One step: `a = b + rotl(a + f(b, c, d) + K[i] + M[g], s)`.
    macro_rules! step {
        ($f:expr, $a:ident, $b:ident, $c:ident, $d:ident, $word:expr, $i:expr, $s:expr) => {
            for lane in 0..LANES {
                let (b, c, d) = ($b[lane], $c[lane], $d[lane]);
                let sum = $a[lane]
                    .wrapping_add($f(b, c, d))
                    .wrapping_add(K[$i])
                    .wrapping_add(words[$word][lane]);
                $a[lane] = b.wrapping_add(sum.rotate_left($s));
            }
        };
    }
    // Four steps of a round, the state words rotating through the roles.
    macro_rules! four {
        ($f:expr, $i:expr, $g:expr, $s:expr) => {
            step!($f, a, b, c, d, $g[0], $i, $s[0]);
            step!($f, d, a, b, c, $g[1], $i + 1, $s[1]);
            step!($f, c, d, a, b, $g[2], $i + 2, $s[2]);
            step!($f, b, c, d, a, $g[3], $i + 3, $s[3]);
        };
    }
    let f = |b: u32, c: u32, d: u32| (b & c) | (!b & d);
    let g = |b: u32, c: u32, d: u32| (d & b) | (!d & c);
    let h = |b: u32, c: u32, d: u32| b ^ c ^ d;
    let i = |b: u32, c: u32, d: u32| c ^ (b | !d);
    four!(f, 0, [0, 1, 2, 3], ROTATIONS[0]);
    four!(f, 4, [4, 5, 6, 7], ROTATIONS[0]);
    four!(f, 8, [8, 9, 10, 11], ROTATIONS[0]);
    four!(f, 12, [12, 13, 14, 15], ROTATIONS[0]);
    four!(g, 16, [1, 6, 11, 0], ROTATIONS[1]);
    four!(g, 20, [5, 10, 15, 4], ROTATIONS[1]);
    four!(g, 24, [9, 14, 3, 8], ROTATIONS[1]);
    four!(g, 28, [13, 2, 7, 12], ROTATIONS[1]);
    four!(h, 32, [5, 8, 11, 14], ROTATIONS[2]);
    four!(h, 36, [1, 4, 7, 10], ROTATIONS[2]);
    four!(h, 40, [13, 0, 3, 6], ROTATIONS[2]);
    four!(h, 44, [9, 12, 15, 2], ROTATIONS[2]);
    four!(i, 48, [0, 7, 14, 5], ROTATIONS[3]);
    four!(i, 52, [12, 3, 10, 1], ROTATIONS[3]);
    four!(i, 56, [8, 15, 6, 13], ROTATIONS[3]);
    four!(i, 60, [4, 11, 2, 9], ROTATIONS[3]);
    let mut out = *state;
    for (word, add) in out.iter_mut().zip([a, b, c, d]) {
        for lane in 0..LANES {
            word[lane] = word[lane].wrapping_add(add[lane]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn check(paths: &[Vec<u8>]) {
        let mut positions = Vec::new();
        md5_positions(paths.len(), |index| &paths[index], &mut positions);
        let expected: Vec<u16> = paths.iter().map(|path| md5_position(path)).collect();
        assert_eq!(positions, expected);
    }

    #[test]
    fn every_length_up_to_past_the_lane_limit_matches_md5() {
        // Every length from 0 to past four blocks, so every padding case (0x80 and the length in the same block or
        // the next) and the fallback are met, in lanes of mixed lengths.
        let paths: Vec<Vec<u8>> = (0..=MAX_LANE_BYTES + 20)
            .map(|len| (0..len).map(|index| (index * 7 + len) as u8).collect())
            .collect();
        check(&paths);
        let mut reversed = paths.clone();
        reversed.reverse();
        check(&reversed);
    }

    #[test]
    fn partial_groups_and_none_at_all() {
        check(&[]);
        check(&[b"a.b.c".to_vec()]);
        check(
            &(0..LANES + 3)
                .map(|index| format!("servers.host{index}.cpu").into_bytes())
                .collect::<Vec<_>>(),
        );
    }

    #[test]
    fn the_portable_build_matches_md5_too() {
        let paths: Vec<Vec<u8>> = (0..LANES).map(|len| vec![b'x'; len * 31]).collect();
        let lanes: [&[u8]; LANES] = std::array::from_fn(|lane| paths[lane].as_slice());
        let expected: [u16; LANES] = std::array::from_fn(|lane| md5_position(&paths[lane]));
        assert_eq!(positions_with(&lanes, compress), expected);
    }

    proptest! {
        #[test]
        fn any_paths_match_md5(paths in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..40)) {
            let mut positions = Vec::new();
            md5_positions(paths.len(), |index| &paths[index], &mut positions);
            let expected: Vec<u16> = paths.iter().map(|path| md5_position(path)).collect();
            prop_assert_eq!(positions, expected);
        }
    }
}
