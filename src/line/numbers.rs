//! The value and timestamp fields: which spellings are numbers a Graphite store takes, and which are noted.
//!
//! Called by [`super::parse`] on the fields that [`super::fields`] split off. The syntax is specified in the line
//! format of the [parent module](super). Invariants: only ASCII digits, `.`, `e`/`E`, signs and the spelled-out
//! infinities and NaN pass; a check never allocates, and its result depends on the field's bytes and the clock only.

use std::ops::Range;

use super::Invalid;

/// Seconds a timestamp may be away from now, either way, before it is noted as [`super::Note::TsFar`].
pub(super) const TS_FAR_SECS: u64 = 365 * 24 * 60 * 60;

/// How many ASCII digits `bytes` has from `at` on (0 when `at` is past its end).
fn count_digits(bytes: &[u8], at: usize) -> usize {
    bytes.get(at..).map_or(0, |rest| {
        rest.iter().take_while(|byte| byte.is_ascii_digit()).count()
    })
}

/// Checks a value against the decimal float syntax that both Python `float()` and Go `strconv.ParseFloat` accept.
/// Returns true for an infinity, which is forwarded but noted.
pub(super) fn check_value(value: &[u8]) -> Result<bool, Invalid> {
    let unsigned = match value.first() {
        Some(b'+' | b'-') => &value[1..],
        _ => value,
    };
    let n_int_digits = count_digits(unsigned, 0);
    let mut at = n_int_digits;
    let mut n_fraction_digits = 0;
    if unsigned.get(at) == Some(&b'.') {
        n_fraction_digits = count_digits(unsigned, at + 1);
        at += 1 + n_fraction_digits;
    }
    if n_int_digits + n_fraction_digits == 0 {
        return check_special_value(unsigned);
    }
    if matches!(unsigned.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(unsigned.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let n_exponent_digits = count_digits(unsigned, at);
        if n_exponent_digits == 0 {
            return Err(Invalid::Value);
        }
        at += n_exponent_digits;
    }
    if at == unsigned.len() {
        Ok(false)
    } else {
        Err(Invalid::Value)
    }
}

/// The spelled-out values after the sign: infinities are forwarded (true), NaN is refused on its own reason.
fn check_special_value(unsigned: &[u8]) -> Result<bool, Invalid> {
    if unsigned.eq_ignore_ascii_case(b"inf") || unsigned.eq_ignore_ascii_case(b"infinity") {
        Ok(true)
    } else if unsigned.eq_ignore_ascii_case(b"nan") {
        Err(Invalid::Nan)
    } else {
        Err(Invalid::Value)
    }
}

/// Checks a timestamp: `+?digits` or `+?digits.digits*`, not zero, or exactly `-1` (carbon substitutes the time it
/// receives the line). Returns true when it is more than a year from `now_secs`, either way.
pub(super) fn check_timestamp(timestamp: &[u8], now_secs: i64) -> Result<bool, Invalid> {
    if timestamp == b"-1" {
        return Ok(false);
    }
    // A leading `+` is taken, as carbon's `float(timestamp)` takes it. What follows must be unsigned, so `++1` and
    // `+-1` are refused: exactly `-1` is the only timestamp with a minus.
    let unsigned = timestamp.strip_prefix(b"+").unwrap_or(timestamp);
    let now = u64::try_from(now_secs).unwrap_or(0);
    // The common case, whole seconds, checked without a loop exit per byte.
    let all_digits = unsigned
        .iter()
        .fold(true, |all, byte| all & byte.is_ascii_digit());
    if all_digits && (1..=MAX_U64_DIGITS).contains(&unsigned.len()) {
        let secs = parse_digits(unsigned);
        if secs == 0 {
            return Err(Invalid::Ts);
        }
        return Ok(secs.abs_diff(now) > TS_FAR_SECS);
    }
    let n_int_digits = count_digits(unsigned, 0);
    if n_int_digits == 0 {
        return Err(Invalid::Ts);
    }
    let mut at = n_int_digits;
    let mut fraction_is_zero = true;
    if unsigned.get(at) == Some(&b'.') {
        let n_fraction_digits = count_digits(unsigned, at + 1);
        fraction_is_zero = unsigned[at + 1..at + 1 + n_fraction_digits]
            .iter()
            .all(|&byte| byte == b'0');
        at += 1 + n_fraction_digits;
    }
    if at != unsigned.len() {
        return Err(Invalid::Ts);
    }
    // Only whole seconds matter at a one-year tolerance. More than 19 significant digits cannot fit in a u64 and is
    // far from any clock; checking that first keeps the sum a plain multiply-add.
    let int_digits = &unsigned[..n_int_digits];
    let significant = &int_digits[int_digits.iter().take_while(|&&byte| byte == b'0').count()..];
    if significant.len() > MAX_U64_DIGITS {
        return Ok(true);
    }
    let secs = parse_digits(significant);
    if secs == 0 && fraction_is_zero {
        return Err(Invalid::Ts);
    }
    Ok(secs.abs_diff(now) > TS_FAR_SECS)
}

/// The range of a value or timestamp that passed its check, without its leading `+` if it has one.
///
/// The normal form has no plus sign: carbon takes one (its receiver calls `float()` on both fields), but stricter
/// destinations may not, and a line forwarded in normal form must be taken by every destination. The `+` is the
/// field's first byte only; an exponent's sign (`1e+5`) is part of the number and stays.
pub(super) fn without_plus(line: &[u8], field: Range<usize>) -> Range<usize> {
    if line.get(field.start) == Some(&b'+') {
        field.start + 1..field.end
    } else {
        field
    }
}

/// Most decimal digits that always fit in a u64.
const MAX_U64_DIGITS: usize = 19;

/// The value of at most [`MAX_U64_DIGITS`] ASCII digits. The two halves are summed independently, halving the
/// chain of dependent multiply-adds that made the timestamp the slowest field.
pub(super) fn parse_digits(digits: &[u8]) -> u64 {
    debug_assert!(digits.len() <= MAX_U64_DIGITS && digits.iter().all(u8::is_ascii_digit));
    const POWERS_OF_TEN: [u64; 11] = [
        1,
        10,
        100,
        1_000,
        10_000,
        100_000,
        1_000_000,
        10_000_000,
        100_000_000,
        1_000_000_000,
        10_000_000_000,
    ];
    let fold = |digits: &[u8]| {
        digits
            .iter()
            .fold(0u64, |sum, &byte| sum * 10 + u64::from(byte - b'0'))
    };
    let (high, low) = digits.split_at(digits.len() / 2);
    fold(high) * POWERS_OF_TEN[low.len()] + fold(low)
}
