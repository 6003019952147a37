//! What a valid Graphite plaintext line is: validation and normalisation, pure and without I/O.
//!
//! First stage after the socket read. [`check`] validates one line (without its LF) and says whether it can be
//! forwarded byte for byte or had to be rewritten into its normal form `path value timestamp\n`. It is `parse`
//! plus `write_normal`, which put together the rules of `fields` (splitting a line), `numbers` (value and
//! timestamp) and `paths` (alphabet, dots, tags). [`decoder`] applies them to a whole read buffer, copying runs of
//! already-normal lines into a batch at once. The decoder's fast scan (`scan`, on the SIMD bitmaps of `classify`)
//! recognises the common normal line without calling `parse`, and gives every line it is unsure about to the same
//! full check, so the rules below are defined in one place only.
//! Invariants: nothing here allocates per line, panics on any input, or does I/O; every rejected line maps to exactly
//! one [`Invalid`] reason; the fast scan never changes what is forwarded or counted.
//!
//! # The line format
//!
//! A line is `path value timestamp`, fields separated by runs of spaces or tabs. Leading spaces and tabs are
//! trimmed, and so is a trailing run of spaces, tabs and CRs (so CRLF works). The normal form has single spaces, no
//! CR, and no leading `+` on the value or the timestamp; value and timestamp are otherwise forwarded verbatim.
//!
//! - **Length**: the line without its LF, counting a trailing CR, is at most `max_line_bytes` (`line_len`).
//! - **Fields**: nothing but whitespace is `empty`; anything but exactly three fields is `fields`.
//! - **Value**: the decimal float syntax both Python `float()` and Go `strconv.ParseFloat` accept, in ASCII:
//!   `[+-]?(digits[.digits*]|.digits)([eE][+-]?digits)?`, so `1.`, `.5` and `-1.5E-3` pass and `.` does not.
//!   `inf`/`infinity` in any case and with a sign is forwarded and noted (`inf`); any NaN is `nan`; everything else
//!   (hex, `_`, `,`, non-ASCII digits) is `value`.
//! - **Timestamp**: `+?digits` or `+?digits.digits*` seconds, not zero, or exactly `-1` (carbon substitutes the time
//!   of arrival); anything else, including other negatives, is `ts`. More than 365 days from now either way (such as
//!   milliseconds) is forwarded and noted (`ts_far`).
//! - **Plus signs**: carbon's receiver calls Python `float()` on both fields, which takes a leading `+`, so a value
//!   or timestamp may start with one; it is left out of the forwarded line, for destinations that take no `+`. A
//!   `+` is treated exactly like a `-` in the same place: one sign at most, then the unsigned syntax. So `+` alone,
//!   `++1` and `+-1` are `value` (as `-`, `--1` and `-+1` are) or `ts`; `+nan` is `nan`; `+inf` is forwarded as
//!   `inf` and noted; `+0` is `ts` as `0` is, and `+inf`, `+nan` and `+-1` as timestamps are `ts` as `inf`, `nan` and
//!   `--1` are. Only a field's first byte is a sign: an exponent's (`1e+5`) stays.
//! - **Path**: a NUL is `nul`, invalid UTF-8 is `utf8`. A path may carry Graphite tags, `name;tag=value;...`: only
//!   the name is normalised, the tags pass unchanged. In the name, each byte outside `[A-Za-z0-9-_:#.]` is replaced
//!   by `_` under `path_policy = sanitize` (byte for byte, as carbon-c-relay does, so `é` becomes `__`), refused as
//!   `path_chars` under `reject`, and kept under `passthrough`. Then, under every policy, runs of dots collapse to
//!   one and leading and trailing dots go. A rewritten name is noted (`sanitized`); an empty one is `path`. The
//!   final path with its tags is at most `max_path_bytes` (`path_len`).
//!
//! When a line breaks several rules, the first in this order is its reason: `line_len`, `empty`, `fields`,
//! `value`/`nan`, `ts`, `nul`, `utf8`, `path_chars`, `path`, `path_len`.

mod classify;
pub mod decoder;
mod fields;
mod numbers;
mod paths;
mod scan;

pub use decoder::Decoder;

#[cfg(test)]
mod tests;

use std::ops::Range;

use crate::config::PathPolicy;
use fields::split_fields;
use numbers::{check_timestamp, check_value, without_plus};
use paths::{check_path, name_is_normal, normalize_name, split_tags};

/// Why a line was not forwarded. Each is a counter in stats, named by [`Invalid::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invalid {
    /// Nothing but whitespace (skipped, counted).
    Empty,
    /// Not exactly three fields.
    Fields,
    /// The value is not a decimal float both Python `float()` and Go `ParseFloat` accept.
    Value,
    /// The value is NaN (carbon would store nothing).
    Nan,
    /// The timestamp is not a positive integer or decimal number of seconds (or `-1`).
    Ts,
    /// The path holds a NUL byte.
    Nul,
    /// The path is not valid UTF-8.
    Utf8,
    /// Nothing is left of the path after normalising dots.
    Path,
    /// The path is longer than `line.max_path_bytes`.
    PathLen,
    /// The path holds a character outside the Graphite alphabet and `line.path_policy` is `reject`.
    PathChars,
    /// The line is longer than `line.max_line_bytes`; it was discarded up to its LF without being buffered.
    LineLen,
    /// Bytes after the last LF when the connection closed.
    PartialEof,
    /// A partial line older than `listen.partial_line_timeout`; its connection was closed.
    PartialTimeout,
}

/// Something worth counting about a line that was forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Note {
    /// The value is `inf` or `-inf` (any spelling).
    Inf,
    /// The timestamp is more than a year from now, either way (e.g. milliseconds).
    TsFar,
    /// The path was rewritten: characters replaced by `_`, or dots collapsed or stripped.
    Sanitized,
}

/// A set of [`Note`]s, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notes(u8);

/// The outcome of a line that is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Valid {
    /// The line is already in normal form: forward the input bytes unchanged (plus LF).
    AsIs(Notes),
    /// The normal form was appended to the output buffer, ending in LF.
    Rewritten(Notes),
}

/// The rules a line is checked against; built once per connection from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Longest line without its LF.
    pub max_line_bytes: usize,
    /// Longest path (with tags) after normalising.
    pub max_path_bytes: usize,
    /// What to do with characters outside the Graphite alphabet.
    pub path_policy: PathPolicy,
    /// Current Unix time in seconds, for [`Note::TsFar`]. Updated by the caller now and then.
    pub now_secs: i64,
}

/// Local per-reason counts, summed in a loop and added to the shared atomics once per read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineCounts {
    /// Lines forwarded.
    pub valid: u64,
    /// Lines not forwarded, by [`Invalid`] reason (index `reason as usize`).
    pub invalid: [u64; Invalid::ALL.len()],
    /// Forwarded lines with a [`Note`] (index `note as usize`).
    pub notes: [u64; Note::ALL.len()],
}

impl Invalid {
    /// Every reason, in counter order.
    pub const ALL: [Invalid; 13] = [
        Invalid::Empty,
        Invalid::Fields,
        Invalid::Value,
        Invalid::Nan,
        Invalid::Ts,
        Invalid::Nul,
        Invalid::Utf8,
        Invalid::Path,
        Invalid::PathLen,
        Invalid::PathChars,
        Invalid::LineLen,
        Invalid::PartialEof,
        Invalid::PartialTimeout,
    ];

    /// The name used in stats, logs and docs.
    pub fn name(self) -> &'static str {
        match self {
            Invalid::Empty => "empty",
            Invalid::Fields => "fields",
            Invalid::Value => "value",
            Invalid::Nan => "nan",
            Invalid::Ts => "ts",
            Invalid::Nul => "nul",
            Invalid::Utf8 => "utf8",
            Invalid::Path => "path",
            Invalid::PathLen => "path_len",
            Invalid::PathChars => "path_chars",
            Invalid::LineLen => "line_len",
            Invalid::PartialEof => "partial_eof",
            Invalid::PartialTimeout => "partial_timeout",
        }
    }
}

impl Note {
    /// Every note, in counter order.
    pub const ALL: [Note; 3] = [Note::Inf, Note::TsFar, Note::Sanitized];

    /// The name used in stats, logs and docs.
    pub fn name(self) -> &'static str {
        match self {
            Note::Inf => "inf",
            Note::TsFar => "ts_far",
            Note::Sanitized => "sanitized",
        }
    }
}

impl Notes {
    /// No notes.
    pub const NONE: Notes = Notes(0);

    /// Adds a note.
    pub fn insert(&mut self, note: Note) {
        self.0 |= 1 << note as u8;
    }

    /// True if the note is in the set.
    pub fn contains(self, note: Note) -> bool {
        self.0 & (1 << note as u8) != 0
    }

    /// True if the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl LineCounts {
    /// Counts a rejected line.
    #[inline]
    pub fn add_invalid(&mut self, reason: Invalid) {
        self.invalid[reason as usize] += 1;
    }

    /// Counts a forwarded line and its notes.
    #[inline]
    pub fn add_valid(&mut self, notes: Notes) {
        self.valid += 1;
        if !notes.is_empty() {
            for note in Note::ALL {
                if notes.contains(note) {
                    self.notes[note as usize] += 1;
                }
            }
        }
    }

    /// Number of rejected lines of every reason.
    pub fn n_invalid(&self) -> u64 {
        self.invalid.iter().sum()
    }
}

impl Rules {
    /// Rules from the `[line]` config section, with the current time.
    pub fn from_config(config: &crate::config::LineConfig) -> Rules {
        Rules {
            max_line_bytes: config.max_line_bytes,
            max_path_bytes: config.max_path_bytes,
            path_policy: config.path_policy,
            now_secs: unix_now_secs(),
        }
    }
}

/// The current Unix time in whole seconds (0 if the clock is before 1970).
pub fn unix_now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}

/// Validates one line given without its LF (a trailing CR is allowed and trimmed).
///
/// If the line is not already in normal form, its normal form (ending in `\n`) is appended to `out`; otherwise `out`
/// is left untouched and the caller forwards `line` itself.
///
/// # Errors
///
/// The [`Invalid`] reason when the line must not be forwarded; `out` is then left untouched.
pub fn check(line: &[u8], rules: &Rules, out: &mut bytes::BytesMut) -> Result<Valid, Invalid> {
    let parsed = parse(line, rules)?;
    if parsed.as_is {
        return Ok(Valid::AsIs(parsed.notes));
    }
    write_normal(line, &parsed, rules.path_policy, out);
    Ok(Valid::Rewritten(parsed.notes))
}

/// A line that passed every rule: where its fields are and how to forward it. Nothing has been written yet, so the
/// decoder can decide where the normal form goes after it knows the line needs one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    path: Range<usize>,
    /// The value as forwarded: without a leading `+`.
    value: Range<usize>,
    /// The timestamp as forwarded: without a leading `+`.
    timestamp: Range<usize>,
    notes: Notes,
    /// The path's name part must be rewritten (characters replaced or dots collapsed).
    path_rewritten: bool,
    /// The input bytes are already exactly the normal form.
    as_is: bool,
}

/// Validates everything about a line without writing anything; [`write_normal`] then produces the normal form.
///
/// The reasons are checked in this order, and the first that applies is returned: `line_len`, `empty`, `fields`,
/// `value`/`nan`, `ts`, `nul`, `utf8`, `path_chars`, `path`, `path_len`.
fn parse(line: &[u8], rules: &Rules) -> Result<Parsed, Invalid> {
    if line.len() > rules.max_line_bytes {
        return Err(Invalid::LineLen);
    }
    let fields = split_fields(line)?;
    let path = &line[fields.path.clone()];
    let path_is_normal = name_is_normal(path);
    // The fields were split from the end, so a blank left in the path means more than three fields.
    if !path_is_normal && memchr::memchr2(b' ', b'\t', path).is_some() {
        return Err(Invalid::Fields);
    }
    let mut notes = Notes::NONE;
    if check_value(&line[fields.value.clone()])? {
        notes.insert(Note::Inf);
    }
    if check_timestamp(&line[fields.timestamp.clone()], rules.now_secs)? {
        notes.insert(Note::TsFar);
    }
    let path_rewritten = if path_is_normal {
        if path.len() > rules.max_path_bytes {
            return Err(Invalid::PathLen);
        }
        false
    } else {
        check_path(path, rules)?
    };
    if path_rewritten {
        notes.insert(Note::Sanitized);
    }
    let value = without_plus(line, fields.value.clone());
    let timestamp = without_plus(line, fields.timestamp.clone());
    let plus_removed = value != fields.value || timestamp != fields.timestamp;
    Ok(Parsed {
        as_is: fields.normal && !path_rewritten && !plus_removed,
        path: fields.path,
        value,
        timestamp,
        notes,
        path_rewritten,
    })
}

/// Appends the normal form `path value timestamp\n` of a parsed line to `out`.
fn write_normal(line: &[u8], parsed: &Parsed, path_policy: PathPolicy, out: &mut bytes::BytesMut) {
    // The normal form is never longer than the line plus its LF: sanitising replaces byte for byte and everything
    // else only removes bytes.
    out.reserve(line.len() + 1);
    let path = &line[parsed.path.clone()];
    if parsed.path_rewritten {
        let (name, tags) = split_tags(path);
        // Cannot fail: `parse` already normalised this name under the same policy.
        let _ = normalize_name(name, path_policy, |byte| out.extend_from_slice(&[byte]));
        out.extend_from_slice(tags);
    } else {
        out.extend_from_slice(path);
    }
    out.extend_from_slice(b" ");
    out.extend_from_slice(&line[parsed.value.clone()]);
    out.extend_from_slice(b" ");
    out.extend_from_slice(&line[parsed.timestamp.clone()]);
    out.extend_from_slice(b"\n");
}
