//! Classifies 64-byte blocks of a read buffer into bitmaps, one bit per byte (bit `i` is byte `i`): the bytes
//! outside the path alphabet `[A-Za-z0-9-_:#.]`, the LFs, the dots, the digits and the minus signs. The decoder's
//! fast scan walks lines through these bits instead of looking at every byte of every line; see [`super::decoder`].
//!
//! Why hand-written SIMD: stable Rust has no portable SIMD (`std::simd` is nightly only), and `memchr` finds one to
//! three given bytes, not a class of sixty-odd bytes and two single bytes in one pass. The `unsafe` is confined to
//! this module and to its one job, computing bitmaps from a `&[u8; 64]`: the only unsafe operations are unaligned
//! loads from that array, within its bounds, and calling the AVX2 version, which a [`Classifier`] only does after
//! runtime detection said the CPU has AVX2. SSE2 is part of the x86_64 baseline and needs no detection. Other
//! architectures use the scalar version, which is also the reference the SIMD versions are tested against.
#![allow(unsafe_code)]

use super::paths::in_alphabet;

/// The bitmaps of one 64-byte block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Masks {
    /// Bytes outside `[A-Za-z0-9-_:#.]`: spaces, LFs, tabs, CRs, `;`, NULs, non-ASCII, ...
    pub outside: u64,
    /// LF bytes.
    pub lf: u64,
    /// `.` bytes.
    pub dot: u64,
    /// `0` to `9`.
    pub digit: u64,
    /// `-` bytes.
    pub minus: u64,
}

impl Masks {
    /// These bitmaps with `high`'s moved up by `shift` bits and added: how halves of a block are put together.
    #[inline(always)]
    fn or_shifted(self, high: Masks, shift: usize) -> Masks {
        Masks {
            outside: self.outside | high.outside << shift,
            lf: self.lf | high.lf << shift,
            dot: self.dot | high.dot << shift,
            digit: self.digit | high.digit << shift,
            minus: self.minus | high.minus << shift,
        }
    }

    /// Only the bits below `len` (the bytes of a short last block that are in the buffer).
    pub fn truncated(self, len: usize) -> Masks {
        let kept = if len >= 64 {
            u64::MAX
        } else {
            (1u64 << len) - 1
        };
        Masks {
            outside: self.outside & kept,
            lf: self.lf & kept,
            dot: self.dot & kept,
            digit: self.digit & kept,
            minus: self.minus & kept,
        }
    }
}

/// Which implementation of [`Classifier::classify`] to use; chosen once per decoder by [`Classifier::detect`].
///
/// Only this module constructs one, so holding a `Classifier` that says AVX2 proves the CPU has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classifier(Kind);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    // On x86_64 only tests use the scalar version.
    #[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Sse2,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Classifier {
    /// The fastest implementation this CPU supports.
    pub fn detect() -> Classifier {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                Classifier(Kind::Avx2)
            } else {
                Classifier(Kind::Sse2)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Classifier(Kind::Scalar)
        }
    }

    /// Every implementation this CPU supports, scalar first.
    #[cfg(test)]
    pub fn all_available() -> Vec<Classifier> {
        let mut classifiers = vec![Classifier(Kind::Scalar)];
        #[cfg(target_arch = "x86_64")]
        {
            classifiers.push(Classifier(Kind::Sse2));
            if std::arch::is_x86_feature_detected!("avx2") {
                classifiers.push(Classifier(Kind::Avx2));
            }
        }
        classifiers
    }

    /// The bitmaps of one block.
    #[inline]
    pub fn classify(self, block: &[u8; 64]) -> Masks {
        match self.0 {
            Kind::Scalar => classify_scalar(block),
            // SAFETY: SSE2 is part of the x86_64 baseline; Rust still asks for `unsafe` to call a function that
            // names it in `#[target_feature]`.
            #[cfg(target_arch = "x86_64")]
            Kind::Sse2 => unsafe { x86::classify_sse2(block) },
            // SAFETY: a `Kind::Avx2` is only built by `detect` or `all_available` after runtime detection found AVX2.
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => unsafe { x86::classify_avx2(block) },
        }
    }

    /// The bitmaps of the whole 64-byte blocks at the start of `bytes`, as many as fit in `out`; returns how many.
    ///
    /// Classifying several blocks in one call lets the CPU overlap them: one block at a time, the scan waited for
    /// each block's loads and mask moves (about 5 ns a block, a quarter of the decoder's time).
    #[inline]
    pub fn classify_blocks(self, bytes: &[u8], out: &mut [Masks]) -> usize {
        let blocks = bytes.chunks_exact(64).zip(out.iter_mut());
        let n_blocks = blocks.len();
        match self.0 {
            Kind::Scalar => {
                for (block, masks) in blocks {
                    *masks = classify_scalar(block.try_into().expect("a chunk of 64 bytes"));
                }
            }
            // SAFETY: as in `classify`.
            #[cfg(target_arch = "x86_64")]
            Kind::Sse2 => unsafe { x86::classify_blocks_sse2(blocks) },
            // SAFETY: as in `classify`.
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => unsafe { x86::classify_blocks_avx2(blocks) },
        }
        n_blocks
    }
}

/// The reference: [`in_alphabet`] byte by byte. The SIMD versions repeat its arithmetic lane by lane.
fn classify_scalar(block: &[u8; 64]) -> Masks {
    let mut masks = Masks::default();
    for (at, &byte) in block.iter().enumerate() {
        masks.outside |= u64::from(!in_alphabet(byte)) << at;
        masks.lf |= u64::from(byte == b'\n') << at;
        masks.dot |= u64::from(byte == b'.') << at;
        masks.digit |= u64::from(byte.is_ascii_digit()) << at;
        masks.minus |= u64::from(byte == b'-') << at;
    }
    masks
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_add_epi8, _mm256_cmpeq_epi8, _mm256_cmpgt_epi8,
        _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256, _mm256_set1_epi8, _mm_add_epi8,
        _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };

    use super::Masks;

    /// A byte as the `i8` the intrinsics take.
    const fn lane(byte: u8) -> i8 {
        byte as i8
    }

    /// `(byte - low) as u8 < width` as a signed compare (SSE2 has no unsigned one): adding `0x80 - low` moves `low`
    /// to -128, so the range becomes `-128..-128 + width`. These are the two addends.
    const fn range_shift(low: u8) -> i8 {
        0x80u8.wrapping_sub(low) as i8
    }
    const fn range_limit(width: u8) -> i8 {
        (-128 + width as i16) as i8
    }

    /// The bitmaps of 16 bytes, in the low 16 bits of each.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn classify_16(bytes: __m128i) -> Masks {
        let folded = _mm_or_si128(bytes, _mm_set1_epi8(0x20));
        let letter = _mm_cmplt_epi8(
            _mm_add_epi8(folded, _mm_set1_epi8(range_shift(b'a'))),
            _mm_set1_epi8(range_limit(26)),
        );
        let digit = _mm_cmplt_epi8(
            _mm_add_epi8(bytes, _mm_set1_epi8(range_shift(b'0'))),
            _mm_set1_epi8(range_limit(10)),
        );
        let dot = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(lane(b'.')));
        let minus = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(lane(b'-')));
        let punctuation = _mm_or_si128(
            _mm_or_si128(
                _mm_cmpeq_epi8(bytes, _mm_set1_epi8(lane(b':'))),
                _mm_cmpeq_epi8(bytes, _mm_set1_epi8(lane(b'_'))),
            ),
            _mm_or_si128(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(lane(b'#'))), minus),
        );
        let inside = _mm_or_si128(_mm_or_si128(letter, digit), _mm_or_si128(dot, punctuation));
        let lf = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(lane(b'\n')));
        let bits = |lanes: __m128i| u64::from(_mm_movemask_epi8(lanes) as u16);
        Masks {
            outside: !bits(inside) & 0xffff,
            lf: bits(lf),
            dot: bits(dot),
            digit: bits(digit),
            minus: bits(minus),
        }
    }

    /// Callers must make sure the CPU has SSE2, which every x86_64 CPU has.
    #[inline]
    #[target_feature(enable = "sse2")]
    pub(super) fn classify_sse2(block: &[u8; 64]) -> Masks {
        let mut masks = Masks::default();
        for (index, chunk) in block.chunks_exact(16).enumerate() {
            // SAFETY: `chunk` is 16 readable bytes, and `loadu` has no alignment requirement.
            let bytes = unsafe { _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>()) };
            masks = masks.or_shifted(classify_16(bytes), 16 * index);
        }
        masks
    }

    /// The bitmaps of 32 bytes, in the low 32 bits of each.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn classify_32(bytes: __m256i) -> Masks {
        // `a < b` is `b > a`: AVX2 has only the greater-than compare.
        let folded = _mm256_or_si256(bytes, _mm256_set1_epi8(0x20));
        let letter = _mm256_cmpgt_epi8(
            _mm256_set1_epi8(range_limit(26)),
            _mm256_add_epi8(folded, _mm256_set1_epi8(range_shift(b'a'))),
        );
        let digit = _mm256_cmpgt_epi8(
            _mm256_set1_epi8(range_limit(10)),
            _mm256_add_epi8(bytes, _mm256_set1_epi8(range_shift(b'0'))),
        );
        let dot = _mm256_cmpeq_epi8(bytes, _mm256_set1_epi8(lane(b'.')));
        let minus = _mm256_cmpeq_epi8(bytes, _mm256_set1_epi8(lane(b'-')));
        let punctuation = _mm256_or_si256(
            _mm256_or_si256(
                _mm256_cmpeq_epi8(bytes, _mm256_set1_epi8(lane(b':'))),
                _mm256_cmpeq_epi8(bytes, _mm256_set1_epi8(lane(b'_'))),
            ),
            _mm256_or_si256(
                _mm256_cmpeq_epi8(bytes, _mm256_set1_epi8(lane(b'#'))),
                minus,
            ),
        );
        let inside = _mm256_or_si256(
            _mm256_or_si256(letter, digit),
            _mm256_or_si256(dot, punctuation),
        );
        let lf = _mm256_cmpeq_epi8(bytes, _mm256_set1_epi8(lane(b'\n')));
        let bits = |lanes: __m256i| u64::from(_mm256_movemask_epi8(lanes) as u32);
        Masks {
            outside: !bits(inside) & 0xffff_ffff,
            lf: bits(lf),
            dot: bits(dot),
            digit: bits(digit),
            minus: bits(minus),
        }
    }

    /// [`classify_sse2`] of each block, into its slot.
    #[target_feature(enable = "sse2")]
    pub(super) fn classify_blocks_sse2<'a>(
        blocks: impl Iterator<Item = (&'a [u8], &'a mut Masks)>,
    ) {
        for (block, masks) in blocks {
            *masks = classify_sse2(block.try_into().expect("a chunk of 64 bytes"));
        }
    }

    /// [`classify_avx2`] of each block, into its slot. Callers must make sure the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) fn classify_blocks_avx2<'a>(
        blocks: impl Iterator<Item = (&'a [u8], &'a mut Masks)>,
    ) {
        for (block, masks) in blocks {
            *masks = classify_avx2(block.try_into().expect("a chunk of 64 bytes"));
        }
    }

    /// Callers must make sure the CPU has AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn classify_avx2(block: &[u8; 64]) -> Masks {
        // SAFETY: both halves are 32 readable bytes of `block`, and `loadu` has no alignment requirement.
        let (low, high) = unsafe {
            (
                _mm256_loadu_si256(block.as_ptr().cast::<__m256i>()),
                _mm256_loadu_si256(block.as_ptr().add(32).cast::<__m256i>()),
            )
        };
        classify_32(low).or_shifted(classify_32(high), 32)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn every_byte_value_is_classified_like_the_scalar_version_in_every_lane() {
        for byte in 0..=255u8 {
            for at in 0..64 {
                let mut block = [b'a'; 64];
                block[at] = byte;
                let expected = classify_scalar(&block);
                assert_eq!(expected.outside >> at & 1, u64::from(!in_alphabet(byte)));
                for classifier in Classifier::all_available() {
                    assert_eq!(
                        classifier.classify(&block),
                        expected,
                        "{classifier:?} byte {byte:#x} at {at}"
                    );
                }
            }
        }
    }

    proptest! {
        #[test]
        fn simd_classification_matches_the_scalar_one(bytes in prop::collection::vec(any::<u8>(), 64)) {
            let block: [u8; 64] = bytes.try_into().expect("64 bytes");
            for classifier in Classifier::all_available() {
                prop_assert_eq!(classifier.classify(&block), classify_scalar(&block));
            }
        }
    }
}
