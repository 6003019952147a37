//! Splitting a line into its three fields: `path value timestamp`, separated by runs of spaces or tabs.
//!
//! The first step of [`super::parse`], before any field is looked at. Invariants: the ranges it returns lie within
//! the line and never include a separator, a leading blank or the trailing run of spaces, tabs and CRs; `normal` is
//! true only when the line has no byte besides the three fields and two single spaces, so forwarding it as-is is
//! forwarding its normal form.

use std::ops::Range;

use super::Invalid;

/// The three fields of a line, and whether the bytes around them are already normal.
pub(super) struct Fields {
    pub(super) path: Range<usize>,
    pub(super) value: Range<usize>,
    pub(super) timestamp: Range<usize>,
    /// Nothing trimmed, single spaces between fields.
    pub(super) normal: bool,
}

/// A field separator: a space or a tab (a CR is only trimmed at the end of a line).
fn is_blank(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// Splits a line into its last two fields and everything before them, which the caller checks is one path.
///
/// Leading spaces and tabs are trimmed, and so is any trailing run of spaces, tabs and CRs: a CRLF sender may also
/// pad before the CR, and a CR there can never be part of a valid timestamp anyway. Splitting from the end walks
/// only the short value and timestamp byte by byte; the long path is then checked in one vectorisable pass.
pub(super) fn split_fields(line: &[u8]) -> Result<Fields, Invalid> {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b' ' | b'\t' | b'\r') {
        end -= 1;
    }
    let mut start = 0;
    while start < end && is_blank(line[start]) {
        start += 1;
    }
    if start == end {
        return Err(Invalid::Empty);
    }
    let timestamp_start = field_start(line, start, end);
    let value_end = blanks_start(line, start, timestamp_start);
    let value_start = field_start(line, start, value_end);
    let path_end = blanks_start(line, start, value_start);
    if path_end == start {
        return Err(Invalid::Fields);
    }
    let normal = start == 0
        && end == line.len()
        && value_start == path_end + 1
        && timestamp_start == value_end + 1
        && line[path_end] == b' '
        && line[value_end] == b' ';
    Ok(Fields {
        path: start..path_end,
        value: value_start..value_end,
        timestamp: timestamp_start..end,
        normal,
    })
}

/// Where the field ending at `end` starts, looking back no further than `floor`.
///
/// Eight bytes at a time: a byte loop over a field of varying length costs a mispredicted branch at its end, and
/// this was the slowest part of a line when it was one.
fn field_start(line: &[u8], floor: usize, mut end: usize) -> usize {
    while end >= floor + 8 {
        let word = u64::from_le_bytes(
            line[end - 8..end]
                .try_into()
                .expect("a slice of eight bytes"),
        );
        let blanks = blank_bytes(word);
        if blanks != 0 {
            // The highest flagged byte is the last blank; the field starts after it.
            let last_blank = 7 - blanks.leading_zeros() as usize / 8;
            return end - 8 + last_blank + 1;
        }
        end -= 8;
    }
    while end > floor && !is_blank(line[end - 1]) {
        end -= 1;
    }
    end
}

/// The high bit of each byte of `word` that is a space or a tab, and no other bit.
fn blank_bytes(word: u64) -> u64 {
    zero_bytes(word ^ u64::from_ne_bytes([b' '; 8]))
        | zero_bytes(word ^ u64::from_ne_bytes([b'\t'; 8]))
}

/// The high bit of each zero byte of `word`, exactly (no false positives from borrows, unlike the shorter trick).
fn zero_bytes(word: u64) -> u64 {
    const LOW_SEVEN: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    !(((word & LOW_SEVEN) + LOW_SEVEN) | word | LOW_SEVEN)
}

/// Where the run of blanks ending at `end` starts, looking back no further than `floor`.
fn blanks_start(line: &[u8], floor: usize, mut end: usize) -> usize {
    while end > floor && is_blank(line[end - 1]) {
        end -= 1;
    }
    end
}
