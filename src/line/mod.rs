//! What a valid Graphite plaintext line is: validation and normalisation, pure and without I/O.
//!
//! First stage after the socket read. [`check`] validates one line (without its LF) and says whether it can be
//! forwarded byte for byte or had to be rewritten into its normal form `path value timestamp\n`. [`decoder`] applies
//! it to a whole read buffer, copying runs of already-normal lines into a batch at once. The decoder's fast scan
//! (`scan`, on the SIMD bitmaps of `classify`) recognises the common normal line without calling `check`, and gives
//! every line it is unsure about to the same full check, so the rules below are defined in one place only.
//! Invariants: nothing here allocates per line, panics on any input, or does I/O; every rejected line maps to exactly
//! one [`Invalid`] reason; the fast scan never changes what is forwarded or counted.
//!
//! # The line format
//!
//! A line is `path value timestamp`, fields separated by runs of spaces or tabs. Leading spaces and tabs are
//! trimmed, and so is a trailing run of spaces, tabs and CRs (so CRLF works). The normal form has single spaces and
//! no CR; value and timestamp are forwarded verbatim.
//!
//! - **Length**: the line without its LF, counting a trailing CR, is at most `max_line_bytes` (`line_len`).
//! - **Fields**: nothing but whitespace is `empty`; anything but exactly three fields is `fields`.
//! - **Value**: the decimal float syntax both Python `float()` and Go `strconv.ParseFloat` accept, in ASCII:
//!   `[+-]?(digits[.digits*]|.digits)([eE][+-]?digits)?`, so `1.`, `.5` and `-1.5E-3` pass and `.` does not.
//!   `inf`/`infinity` in any case and with a sign is forwarded and noted (`inf`); any NaN is `nan`; everything else
//!   (hex, `_`, `,`, non-ASCII digits) is `value`.
//! - **Timestamp**: `digits` or `digits.digits*` seconds, not zero, or exactly `-1` (carbon substitutes the time of
//!   arrival); anything else, including other negatives, is `ts`. More than 365 days from now either way (such as
//!   milliseconds) is forwarded and noted (`ts_far`).
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
mod scan;

pub use decoder::Decoder;

#[cfg(test)]
mod tests;

use crate::config::PathPolicy;

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

/// Seconds a timestamp may be away from now, either way, before it is noted as [`Note::TsFar`].
const TS_FAR_SECS: u64 = 365 * 24 * 60 * 60;

/// A line that passed every rule: where its fields are and how to forward it. Nothing has been written yet, so the
/// decoder can decide where the normal form goes after it knows the line needs one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    path: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
    timestamp: std::ops::Range<usize>,
    notes: Notes,
    /// The path's name part must be rewritten (characters replaced or dots collapsed).
    path_rewritten: bool,
    /// The input bytes are already exactly the normal form.
    as_is: bool,
}

/// The three fields of a line, and whether the bytes around them are already normal.
struct Fields {
    path: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
    timestamp: std::ops::Range<usize>,
    /// Nothing trimmed, single spaces between fields.
    normal: bool,
}

/// Byte classes of the Graphite path alphabet `[A-Za-z0-9-_:#.]`, for one table lookup per byte when a name is
/// normalised.
const OTHER: u8 = 0;
const NAME_CHAR: u8 = 1;
const DOT: u8 = 2;

static PATH_CLASS: [u8; 256] = path_class_table();

const fn path_class_table() -> [u8; 256] {
    let mut table = [OTHER; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b':' || b == b'#' {
            table[byte] = NAME_CHAR;
        }
        byte += 1;
    }
    table[b'.' as usize] = DOT;
    table
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
    Ok(Parsed {
        as_is: fields.normal && !path_rewritten,
        path: fields.path,
        value: fields.value,
        timestamp: fields.timestamp,
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

fn is_blank(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// Splits a line into its last two fields and everything before them, which the caller checks is one path.
///
/// Leading spaces and tabs are trimmed, and so is any trailing run of spaces, tabs and CRs: a CRLF sender may also
/// pad before the CR, and a CR there can never be part of a valid timestamp anyway. Splitting from the end walks
/// only the short value and timestamp byte by byte; the long path is then checked in one vectorisable pass.
fn split_fields(line: &[u8]) -> Result<Fields, Invalid> {
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

fn count_digits(bytes: &[u8], at: usize) -> usize {
    bytes.get(at..).map_or(0, |rest| {
        rest.iter().take_while(|byte| byte.is_ascii_digit()).count()
    })
}

/// Checks a value against the decimal float syntax that both Python `float()` and Go `strconv.ParseFloat` accept.
/// Returns true for an infinity, which is forwarded but noted.
fn check_value(value: &[u8]) -> Result<bool, Invalid> {
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

/// Checks a timestamp: `digits` or `digits.digits*`, not zero, or exactly `-1` (carbon substitutes the time it
/// receives the line). Returns true when it is more than a year from `now_secs`, either way.
fn check_timestamp(timestamp: &[u8], now_secs: i64) -> Result<bool, Invalid> {
    if timestamp == b"-1" {
        return Ok(false);
    }
    let now = u64::try_from(now_secs).unwrap_or(0);
    // The common case, whole seconds, checked without a loop exit per byte.
    let all_digits = timestamp
        .iter()
        .fold(true, |all, byte| all & byte.is_ascii_digit());
    if all_digits && timestamp.len() <= MAX_U64_DIGITS {
        let secs = parse_digits(timestamp);
        if secs == 0 {
            return Err(Invalid::Ts);
        }
        return Ok(secs.abs_diff(now) > TS_FAR_SECS);
    }
    let n_int_digits = count_digits(timestamp, 0);
    if n_int_digits == 0 {
        return Err(Invalid::Ts);
    }
    let mut at = n_int_digits;
    let mut fraction_is_zero = true;
    if timestamp.get(at) == Some(&b'.') {
        let n_fraction_digits = count_digits(timestamp, at + 1);
        fraction_is_zero = timestamp[at + 1..at + 1 + n_fraction_digits]
            .iter()
            .all(|&byte| byte == b'0');
        at += 1 + n_fraction_digits;
    }
    if at != timestamp.len() {
        return Err(Invalid::Ts);
    }
    // Only whole seconds matter at a one-year tolerance. More than 19 significant digits cannot fit in a u64 and is
    // far from any clock; checking that first keeps the sum a plain multiply-add.
    let int_digits = &timestamp[..n_int_digits];
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

/// Most decimal digits that always fit in a u64.
const MAX_U64_DIGITS: usize = 19;

/// The value of at most [`MAX_U64_DIGITS`] ASCII digits. The two halves are summed independently, halving the
/// chain of dependent multiply-adds that made the timestamp the slowest field.
fn parse_digits(digits: &[u8]) -> u64 {
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

/// Splits a path into its name and its tag part (from the first `;` on, possibly empty).
fn split_tags(path: &[u8]) -> (&[u8], &[u8]) {
    let name_end = memchr::memchr(b';', path).unwrap_or(path.len());
    path.split_at(name_end)
}

/// Checks a path that did not pass [`name_is_normal`] as a whole: it has tags, or its name needs work. Returns true
/// when the name must be rewritten.
fn check_path(path: &[u8], rules: &Rules) -> Result<bool, Invalid> {
    let (name, tags) = split_tags(path);
    if name_is_normal(name) {
        // The name is ASCII from the alphabet, so only the tags can hold a NUL or break UTF-8, and they start at a
        // character boundary (after the ASCII `;`).
        if !tags.is_empty() {
            check_bytes(tags)?;
        }
        if path.len() > rules.max_path_bytes {
            return Err(Invalid::PathLen);
        }
        return Ok(false);
    }
    check_bytes(path)?;
    let (name_len, replaced) = normalize_name(name, rules.path_policy, |_| {})?;
    if name_len == 0 {
        return Err(Invalid::Path);
    }
    if name_len + tags.len() > rules.max_path_bytes {
        return Err(Invalid::PathLen);
    }
    // Dots are only ever removed, so an unchanged length means no dot changed.
    Ok(replaced || name_len != name.len())
}

/// Refuses a NUL (checked first, as it is the more specific reason) and invalid UTF-8.
fn check_bytes(bytes: &[u8]) -> Result<(), Invalid> {
    if memchr::memchr(0, bytes).is_some() {
        return Err(Invalid::Nul);
    }
    if std::str::from_utf8(bytes).is_err() {
        return Err(Invalid::Utf8);
    }
    Ok(())
}

/// True when a name is non-empty, only from the alphabet, and has no leading, trailing or repeated dot: the common
/// case. It looks at fixed 16-byte chunks without early exits or table lookups, which the compiler turns into
/// vector instructions; that measured faster than a byte loop with a lookup in [`PATH_CLASS`] per byte.
fn name_is_normal(name: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (name.first(), name.last()) else {
        return false;
    };
    if first == b'.' || last == b'.' {
        return false;
    }
    if name.len() < 16 {
        return bytes_are_normal(name);
    }
    // Chunks start 15 bytes apart so that every pair of neighbours lies within one chunk; the last chunk is aligned
    // to the end and may overlap more.
    let mut normal = true;
    let mut at = 0;
    while at + 16 < name.len() {
        normal &= chunk_is_normal(name[at..at + 16].try_into().expect("a slice of 16 bytes"));
        at += 15;
    }
    normal
        & chunk_is_normal(
            name[name.len() - 16..]
                .try_into()
                .expect("a slice of 16 bytes"),
        )
}

/// [`bytes_are_normal`] on a fixed size, so the compiler unrolls it into vector code with no tail loop.
fn chunk_is_normal(chunk: &[u8; 16]) -> bool {
    bytes_are_normal(chunk)
}

/// All bytes from the alphabet and no two dots in a row; written without early exits so that it vectorises.
fn bytes_are_normal(bytes: &[u8]) -> bool {
    let mut outside_alphabet = false;
    for &byte in bytes {
        outside_alphabet |= !in_alphabet(byte);
    }
    let mut repeated_dot = false;
    for (&byte, &next) in bytes.iter().zip(bytes.iter().skip(1)) {
        repeated_dot |= (byte == b'.') & (next == b'.');
    }
    !outside_alphabet & !repeated_dot
}

/// True for a byte of `[A-Za-z0-9-_:#.]`, by arithmetic rather than [`PATH_CLASS`] so that it vectorises.
fn in_alphabet(byte: u8) -> bool {
    // Setting bit 5 folds upper case onto lower case; `0`..=`:` is one range.
    let letter = (byte | 0x20).wrapping_sub(b'a') < 26;
    let digit_or_colon = byte.wrapping_sub(b'0') < 11;
    letter | digit_or_colon | (byte == b'-') | (byte == b'_') | (byte == b'#') | (byte == b'.')
}

/// Normalises a name byte by byte, giving each output byte to `emit`: bytes outside the alphabet are replaced by
/// `_`, refused or kept by `path_policy`, then runs of dots collapse to one and leading and trailing dots go.
/// Returns the output length and whether a byte was replaced. Called twice for a line that needs it, once to
/// validate and once to write, so that nothing is written for a line that is then refused.
fn normalize_name(
    name: &[u8],
    path_policy: PathPolicy,
    mut emit: impl FnMut(u8),
) -> Result<(usize, bool), Invalid> {
    let mut n_emitted = 0;
    let mut replaced = false;
    // A dot is written only once a non-dot byte follows it, which drops trailing dots and repeats for free.
    let mut dot_pending = false;
    for &byte in name {
        let class = PATH_CLASS[usize::from(byte)];
        if class == DOT {
            dot_pending = n_emitted > 0;
            continue;
        }
        let output = if class == NAME_CHAR {
            byte
        } else {
            match path_policy {
                PathPolicy::Sanitize => {
                    replaced = true;
                    b'_'
                }
                PathPolicy::Reject => return Err(Invalid::PathChars),
                PathPolicy::Passthrough => byte,
            }
        };
        if dot_pending {
            emit(b'.');
            n_emitted += 1;
            dot_pending = false;
        }
        emit(output);
        n_emitted += 1;
    }
    Ok((n_emitted, replaced))
}
