//! The decoder's fast scan: finds the lines of a read buffer through the bitmaps of [`super::classify`] and decides
//! for the common line, with a short fixed test, that it is already in normal form, so [`super::parse`] never sees
//! it.
//!
//! A block's *events* are its bytes outside the path alphabet (spaces, LFs, tabs, CRs, `;`, NULs, non-ASCII, ...)
//! and the second dot of every pair of dots. The common line `path value timestamp\n` has exactly three events, a
//! space, a space and its LF, so walking a line costs three bit scans (a path with Graphite tags, `name;tag=value`,
//! adds its `;` and `=`, which `parse` forwards unchanged, so the tags are as-is when made only of those and of
//! alphabet bytes). The fixed test then needs only bit operations and one load: the path is non-empty, within
//! `max_path_bytes`, and its name neither starts nor ends with a dot; the whole line is within `max_line_bytes`;
//! the value is at most 16 bytes of `-?[0-9]*(\.[0-9]*)?` with a digit and the timestamp at most 16 digits, both read off the digit, dot and minus bitmaps of the block and the one before it;
//! the timestamp is not zero, and is compared with the year around now (a far one is forwarded with its `ts_far`
//! note) as the 16 bytes that end at its LF, so a timestamp in the first 16 bytes of the buffer fails the test.
//!
//! Invariant: the test only ever says [`Line::AsIs`] for a line that `parse` forwards as-is with the same notes; anything
//! else it is unsure about is [`Line::Check`], which the decoder gives to `parse`. A field with a `+` sign, which
//! `parse` rewrites without it, is one of those: `+` is outside the alphabet, so it is an event like any odd byte. The events before a line's start
//! have all been consumed, so the first event popped for a line is its first byte outside the alphabet.

use super::classify::{Classifier, Masks};
use super::numbers::TS_FAR_SECS;
use super::Rules;

/// A complete line found by [`Lines::next_line`]: where its LF is, and whether it must go through `parse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Line {
    /// Already in normal form; forwarded as-is without `parse`, with no note but `ts_far` when `far`.
    AsIs { lf: usize, far: bool },
    /// Anything else: `parse` decides.
    Check { lf: usize },
}

/// Finds the line starting at `start` (the start of the buffer or just after an LF), or `None` when no LF follows.
/// Called with consecutive lines.
pub(super) trait Lines {
    fn next_line(&mut self, start: usize) -> Option<Line>;
}

/// The line-by-line reference: one `memchr` per line, every line checked by `parse`.
pub(super) struct PlainLines<'a>(pub &'a [u8]);

impl Lines for PlainLines<'_> {
    fn next_line(&mut self, start: usize) -> Option<Line> {
        memchr::memchr(b'\n', &self.0[start..]).map(|lf| Line::Check { lf: start + lf })
    }
}

/// What the fixed test needs from [`Rules`], precomputed; rebuilt when the clock moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FastRules {
    max_line_bytes: usize,
    max_path_bytes: usize,
    /// The nearest timestamps that are not `ts_far`, as 16 zero-padded ASCII digits read big-endian, so that
    /// comparing numbers compares the digit strings. The range is empty when the clock makes it unrepresentable.
    near_low: u128,
    near_high: u128,
}

impl FastRules {
    pub(super) fn new(rules: &Rules) -> FastRules {
        const MAX_16_DIGITS: u64 = 9_999_999_999_999_999;
        let now = u64::try_from(rules.now_secs).unwrap_or(0);
        // Zero is refused as `ts`, so the range starts at 1 however early the clock is.
        let low = now.saturating_sub(TS_FAR_SECS).max(1);
        let high = now.saturating_add(TS_FAR_SECS).min(MAX_16_DIGITS);
        FastRules {
            max_line_bytes: rules.max_line_bytes,
            max_path_bytes: rules.max_path_bytes,
            near_low: as_digits(low),
            near_high: if low <= high { as_digits(high) } else { 0 },
        }
    }
}

/// `secs` (below 10^16) as 16 zero-padded ASCII digits, read big-endian.
fn as_digits(mut secs: u64) -> u128 {
    let mut digits = [b'0'; 16];
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (secs % 10) as u8;
        secs /= 10;
    }
    u128::from_be_bytes(digits)
}

/// The fast scan over one buffer, from a line start on.
pub(super) struct Scan<'a> {
    buf: &'a [u8],
    rules: FastRules,
    classifier: Classifier,
    /// Where the block whose bits are held starts in `buf`; blocks follow on from the scan's start, unaligned.
    base: usize,
    /// The block's events not yet consumed, bit `i` for `buf[base + i]`.
    events: u64,
    /// The block's LFs.
    lfs: u64,
    /// 1 if the block's last byte is a dot, for a pair of dots across the boundary.
    dot_carry: u64,
    /// The digits, dots and minus signs of the held block and of the one before it.
    window: Window,
    /// Bitmaps of the blocks that follow the held one, classified ahead: `ahead[next_ahead..n_ahead]`.
    ahead: [Masks; AHEAD_BLOCKS],
    next_ahead: usize,
    n_ahead: usize,
}

/// Blocks classified in one go while the scan moves from block to block. 8 (512 bytes) measured best. A scan that
/// jumps (an odd line whose LF is past the next block) or stops early (a full batch) classified at most 7 in vain,
/// so after a jump only the block it lands in is classified, and classifying ahead starts again from the next.
const AHEAD_BLOCKS: usize = 8;

/// Bitmaps of two consecutive blocks, for the fixed test of a value and a timestamp, which may straddle them: bit
/// `i` is `buf[base - 64 + i]`. The earlier block's half is zero after the scan's start or a jump (no line the scan
/// tests starts before either).
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    digit: u128,
    dot: u128,
    minus: u128,
}

/// 64 bits of a [`Window`] from some position on.
#[derive(Debug, Clone, Copy)]
struct Fields {
    digit: u64,
    dot: u64,
    minus: u64,
}

impl Window {
    /// The 64 bits from `at` (below 128) on; bits past the window's end are zero.
    #[inline(always)]
    fn from(&self, at: usize) -> Fields {
        Fields {
            digit: (self.digit >> at) as u64,
            dot: (self.dot >> at) as u64,
            minus: (self.minus >> at) as u64,
        }
    }

    /// The window after moving on to `masks`' block: the held block's half becomes the earlier one, unless the new
    /// block does not follow on from it.
    fn advance(self, masks: &Masks, follows_on: bool) -> Window {
        let earlier = |bits: u128| if follows_on { bits >> 64 } else { 0 };
        Window {
            digit: earlier(self.digit) | u128::from(masks.digit) << 64,
            dot: earlier(self.dot) | u128::from(masks.dot) << 64,
            minus: earlier(self.minus) | u128::from(masks.minus) << 64,
        }
    }
}

impl<'a> Scan<'a> {
    /// A scan from `start`, which must be a line start.
    pub(super) fn new(
        buf: &'a [u8],
        start: usize,
        rules: FastRules,
        classifier: Classifier,
    ) -> Scan<'a> {
        let mut scan = Scan {
            buf,
            rules,
            classifier,
            base: start,
            events: 0,
            lfs: 0,
            dot_carry: 0,
            window: Window::default(),
            ahead: [Masks::default(); AHEAD_BLOCKS],
            next_ahead: 0,
            n_ahead: 0,
        };
        scan.load(start);
        scan
    }

    /// Classifies the block at `base`, which follows the held one or starts just after an LF (no dot carried).
    fn load(&mut self, base: usize) {
        let follows_on = base == self.base + 64;
        if !follows_on || self.next_ahead == self.n_ahead {
            let rest = self.buf.get(base..).unwrap_or_default();
            // After a jump, only the block landed in: the next odd line may jump again.
            let rest = if follows_on {
                rest
            } else {
                &rest[..rest.len().min(64)]
            };
            self.n_ahead = self.classifier.classify_blocks(rest, &mut self.ahead);
            self.next_ahead = 0;
        }
        let masks = match self.ahead.get(self.next_ahead..self.n_ahead) {
            Some([masks, ..]) => {
                self.next_ahead += 1;
                *masks
            }
            _ => {
                // The last, short block: padded with NULs, which are outside the alphabet, so masked off again.
                let tail = self.buf.get(base..).unwrap_or_default();
                let mut block = [0u8; 64];
                block[..tail.len()].copy_from_slice(tail);
                self.classifier.classify(&block).truncated(tail.len())
            }
        };
        self.window = self.window.advance(&masks, follows_on);
        let second_dots = masks.dot & (masks.dot << 1 | self.dot_carry);
        self.dot_carry = masks.dot >> 63;
        self.events = masks.outside | second_dots;
        self.lfs = masks.lf;
        self.base = base;
    }

    /// The next event's position, classifying blocks as needed; `None` at the end of the buffer.
    #[inline(always)]
    fn next_event(&mut self) -> Option<usize> {
        while self.events == 0 {
            let next_base = self.base + 64;
            if next_base >= self.buf.len() {
                return None;
            }
            self.load(next_base);
        }
        let bit = self.events.trailing_zeros() as usize;
        self.events &= self.events - 1;
        Some(self.base + bit)
    }

    /// The first LF at or after the event at `at` (which was just popped), consuming every event up to it.
    fn lf_from(&mut self, at: usize) -> Option<usize> {
        if self.buf[at] == b'\n' {
            return Some(at);
        }
        let bit = at - self.base;
        let later_lfs = self.lfs & !through(bit);
        if later_lfs != 0 {
            let lf_bit = later_lfs.trailing_zeros() as usize;
            self.events &= !through(lf_bit);
            return Some(self.base + lf_bit);
        }
        // A long or odd line: let memchr find the LF, then start afresh after it.
        let block_end = self.base + 64;
        let lf = block_end + memchr::memchr(b'\n', self.buf.get(block_end..)?)?;
        self.dot_carry = 0;
        self.load(lf + 1);
        Some(lf)
    }

    /// The first event after a path's first `;` that is neither `;` nor `=`: the tags `;tag=value;...` of a
    /// Graphite path are made of those and of alphabet bytes when they need no check, as `parse` forwards tags
    /// unchanged.
    #[inline]
    fn after_tags(&mut self) -> Option<usize> {
        loop {
            let at = self.next_event()?;
            if !matches!(self.buf[at], b';' | b'=') {
                return Some(at);
            }
        }
    }

    /// The fixed test for a line `buf[start..lf]` whose only events are spaces at `first` and `second`, and `;` and
    /// `=` in the path's tags, which start at `name_end` (`first` for a path without tags): whether its timestamp is
    /// `ts_far` if it is as-is, `None` if `parse` must decide.
    #[inline(always)]
    fn as_is_far(
        &self,
        start: usize,
        name_end: usize,
        first: usize,
        second: usize,
        lf: usize,
    ) -> Option<bool> {
        let buf = self.buf;
        let path_len = first - start;
        let value_len = second - first - 1;
        let timestamp_len = lf - second - 1;
        let plain = (1..=self.rules.max_path_bytes).contains(&path_len)
            && lf - start <= self.rules.max_line_bytes
            && (1..=16).contains(&value_len)
            && (1..=16).contains(&timestamp_len)
            && name_end > start
            && buf[start] != b'.'
            && buf[name_end - 1] != b'.';
        if !plain {
            return None;
        }
        // Both fields end in the held block (`lf` is in it) and are at most 34 bytes with their delimiters, so they
        // are in the window; its bits from `first` on, one shift per bitmap, hold them. Bit 0 is the first space.
        let fields = self
            .window
            .from(first.wrapping_sub(self.base.wrapping_sub(64)));
        let value = low_bits(value_len) << 1;
        let timestamp = low_bits(timestamp_len) << (value_len + 2);
        if !value_is_plain(value, &fields) || timestamp & !fields.digit != 0 {
            return None;
        }
        timestamp_far(buf, lf, timestamp_len, &self.rules)
    }
}

/// The low `len` bits (`len` 1 to 63).
#[inline(always)]
fn low_bits(len: usize) -> u64 {
    u64::MAX >> (64 - len)
}

/// True when the value whose bytes are the bits `value` of `fields` (bit 0 the space before it) is one `parse`
/// forwards with no note: `-?[0-9]*(\.[0-9]*)?` with at least one digit (its length, 1 to 16, is checked).
///
/// No `count_ones`: without `popcnt` in the x86_64 baseline it compiles to a dozen shifts and masks, which measured
/// a third of this test. "At most one" is "clearing the lowest set bit leaves nothing".
#[inline(always)]
fn value_is_plain(value: u64, fields: &Fields) -> bool {
    let digits = value & fields.digit;
    let dots = value & fields.dot;
    let minuses = value & fields.minus;
    value & !(digits | dots | minuses) == 0
        && dots & dots.wrapping_sub(1) == 0
        && minuses & !0b10 == 0
        && digits != 0
}

impl Lines for Scan<'_> {
    // Inlined into the decoder's loop: a call per line measured about 1 ns of the 25.
    #[inline(always)]
    fn next_line(&mut self, start: usize) -> Option<Line> {
        let mut first = self.next_event()?;
        let name_end = first;
        if self.buf[first] != b' ' {
            if self.buf[first] != b';' {
                return self.lf_from(first).map(|lf| Line::Check { lf });
            }
            first = self.after_tags()?;
            if self.buf[first] != b' ' {
                return self.lf_from(first).map(|lf| Line::Check { lf });
            }
        }
        let second = self.next_event()?;
        if self.buf[second] != b' ' {
            return self.lf_from(second).map(|lf| Line::Check { lf });
        }
        let third = self.next_event()?;
        if self.buf[third] != b'\n' {
            return self.lf_from(third).map(|lf| Line::Check { lf });
        }
        Some(
            match self.as_is_far(start, name_end, first, second, third) {
                Some(far) => Line::AsIs { lf: third, far },
                None => Line::Check { lf: third },
            },
        )
    }
}

/// The bits `0..=bit`.
fn through(bit: usize) -> u64 {
    u64::MAX >> (63 - bit)
}

/// A byte in each of the 16 lanes of a `u128` used as a vector of bytes.
const fn lanes(byte: u8) -> u128 {
    u128::from_ne_bytes([byte; 16])
}

/// The 16 bytes of `buf` that end at `end`, read big-endian: the last byte is the lowest.
fn sixteen_before(buf: &[u8], end: usize) -> Option<u128> {
    let bytes = buf.get(end.checked_sub(16)?..end)?;
    Some(u128::from_be_bytes(bytes.try_into().ok()?))
}

/// The low `len` bytes (1 to 16) of `word`, the other lanes filled with `0` digits.
fn field(word: u128, len: usize) -> u128 {
    let kept = u128::MAX >> (8 * (16 - len));
    word & kept | lanes(b'0') & !kept
}

/// For a timestamp of `len` (1 to 16) digits that ends at `lf`: `None` if it is zero, no note within a year of now,
/// else `ts_far` (benchmark pools and replayed archives are far, and common). It is compared as the 16 bytes that end
/// at `lf`, so a timestamp in the buffer's first 16 bytes is left to `parse`.
#[inline(always)]
fn timestamp_far(buf: &[u8], lf: usize, len: usize, rules: &FastRules) -> Option<bool> {
    let timestamp = field(sixteen_before(buf, lf)?, len);
    if timestamp == lanes(b'0') {
        return None;
    }
    Some(!(rules.near_low..=rules.near_high).contains(&timestamp))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::PathPolicy;
    use crate::line::{check, Note, Notes, Valid};

    const NOW_SECS: i64 = 1_700_000_000;

    fn rules() -> Rules {
        Rules {
            max_line_bytes: 200,
            max_path_bytes: 100,
            path_policy: PathPolicy::Sanitize,
            now_secs: NOW_SECS,
        }
    }

    /// The verdicts of the fast scan on every line of `buf`, with every classifier (which must agree).
    fn verdicts(buf: &[u8]) -> Vec<Line> {
        let fast_rules = FastRules::new(&rules());
        let mut all = Vec::new();
        for classifier in Classifier::all_available() {
            let mut scan = Scan::new(buf, 0, fast_rules, classifier);
            let mut lines = Vec::new();
            let mut start = 0;
            while let Some(line) = scan.next_line(start) {
                let (Line::AsIs { lf, .. } | Line::Check { lf }) = line;
                start = lf + 1;
                lines.push(line);
            }
            all.push(lines);
        }
        assert!(all.windows(2).all(|pair| pair[0] == pair[1]), "{all:?}");
        all.swap_remove(0)
    }

    #[test]
    fn the_common_line_is_known_as_is_without_the_full_check() {
        let buf = b"servers.host01.cpu 812.07 1700000120\nx 1 1700000000\na.b -3 1699999999\n";
        assert_eq!(
            verdicts(buf),
            [
                Line::AsIs { lf: 36, far: false },
                Line::AsIs { lf: 51, far: false },
                Line::AsIs { lf: 69, far: false }
            ]
        );
    }

    #[test]
    fn a_tagged_path_is_as_is_when_its_tags_hold_only_semicolons_equals_and_the_alphabet() {
        let buf = b"servers.host01.cpu;env=prod;dc=fra 812.07 1700000120\n\
                    servers.host01.cpu; 1 1700000120\n\
                    ;env=prod 1 1700000120\n\
                    servers.host01.;env=prod 1 1700000120\n\
                    servers.host01.cpu;env=a..b 1 1700000120\n\
                    servers.host01.cpu=x;env=prod 1 1700000120\n\
                    servers.host01.cpu;env=pr@d 1 1700000120\n";
        let lfs: Vec<usize> = (0..buf.len()).filter(|&at| buf[at] == b'\n').collect();
        let expected: Vec<Line> = lfs
            .iter()
            .enumerate()
            .map(|(index, &lf)| match index {
                0 | 1 => Line::AsIs { lf, far: false },
                // An empty name, a name ending in a dot, a pair of dots or a byte outside the alphabet in the tags,
                // and `=` in the name: `parse` decides.
                _ => Line::Check { lf },
            })
            .collect();
        assert_eq!(verdicts(buf), expected);
        let mut start = 0;
        for (index, &lf) in lfs.iter().enumerate().take(2) {
            let full = check(&buf[start..lf], &rules(), &mut bytes::BytesMut::new());
            assert_eq!(full, Ok(Valid::AsIs(Notes::NONE)), "line {index}");
            start = lf + 1;
        }
    }

    #[test]
    fn a_field_in_the_first_sixteen_bytes_of_the_buffer_is_left_to_the_full_check() {
        assert_eq!(verdicts(b"a 1 1700000000\n"), [Line::Check { lf: 14 }]);
    }

    #[test]
    fn a_plus_sign_on_the_value_or_the_timestamp_sends_the_line_to_the_full_check() {
        // `+` is outside the path alphabet, so it is an event and the line is never taken as-is: `parse` removes it.
        for line in [line_with("+1", "1700000000"), line_with("1", "+1700000000")] {
            let lf = line.len() - 1;
            assert_eq!(verdicts(&line), [Line::Check { lf }]);
        }
    }

    /// A line whose value and timestamp end far enough into the buffer for the fixed test.
    fn line_with(value: &str, timestamp: &str) -> Vec<u8> {
        format!("servers.host01.cpu.user {value} {timestamp}\n").into_bytes()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn a_value_is_as_is_exactly_when_it_is_plain_decimal(value in "[-+0-9.eE]{0,18}") {
            let line = line_with(&value, "1700000000");
            let verdict = verdicts(&line)[0];
            let full = check(&line[..line.len() - 1], &rules(), &mut bytes::BytesMut::new());
            let plain_decimal = value.len() <= 16
                && value.rfind('-').is_none_or(|at| at == 0)
                && value.chars().filter(|&c| c == '.').count() <= 1
                && value.chars().any(|c| c.is_ascii_digit())
                && value.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '-');
            prop_assert_eq!(matches!(verdict, Line::AsIs { .. }), plain_decimal, "{:?}", full);
            if plain_decimal {
                prop_assert_eq!(full, Ok(Valid::AsIs(Notes::NONE)));
            }
        }

        #[test]
        fn a_timestamp_is_as_is_exactly_when_it_is_nonzero_digits_noting_far_ones(
            secs in prop_oneof![0u64..10_000_000_000, 1_668_463_990u64..1_668_464_010, 1_731_535_990u64..1_731_536_010],
            leading_zeros in 0usize..8,
        ) {
            let timestamp = format!("{}{secs}", "0".repeat(leading_zeros));
            let line = line_with("1", &timestamp);
            let verdict = verdicts(&line)[0];
            let full = check(&line[..line.len() - 1], &rules(), &mut bytes::BytesMut::new());
            let fast = timestamp.len() <= 16 && secs > 0;
            prop_assert_eq!(matches!(verdict, Line::AsIs { .. }), fast, "{:?}", full);
            if let Line::AsIs { far, .. } = verdict {
                let mut notes = Notes::NONE;
                if far {
                    notes.insert(Note::TsFar);
                }
                // Exactly what the full check says, `ts_far` included.
                prop_assert_eq!(full, Ok(Valid::AsIs(notes)));
                let far = secs.abs_diff(NOW_SECS as u64) > TS_FAR_SECS;
                prop_assert_eq!(notes.contains(Note::TsFar), far);
            }
        }
    }
}
