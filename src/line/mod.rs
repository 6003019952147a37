//! What a valid Graphite plaintext line is: validation and normalisation, pure and without I/O.
//!
//! First stage after the socket read. [`check`] validates one line (without its LF) and says whether it can be
//! forwarded byte for byte or had to be rewritten into its normal form `path value timestamp\n`. [`decoder`] applies
//! it to a whole read buffer, copying runs of already-normal lines into a batch at once. Invariants: nothing here
//! allocates per line, panics on any input, or does I/O; every rejected line maps to exactly one [`Invalid`] reason.

pub mod decoder;

pub use decoder::Decoder;

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
    pub fn add_invalid(&mut self, reason: Invalid) {
        self.invalid[reason as usize] += 1;
    }

    /// Counts a forwarded line and its notes.
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
    let _ = (line, rules, out);
    todo!("line::check")
}
