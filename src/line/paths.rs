//! The path field: the Graphite alphabet, sanitising under `path_policy`, dots, Graphite tags and the path limit.
//!
//! Called by [`super::parse`] to validate a path and by [`super::write_normal`] to write its normalised name; the
//! fast scan's classifier shares [`in_alphabet`]. Invariants: only the name (before the first `;`) is ever
//! rewritten, the tags pass unchanged; normalising never makes a name longer (bytes are replaced one for one or
//! removed), so the normal form fits where the line was; and validating and writing give the same name, as both
//! run [`normalize_name`].

use super::{Invalid, Rules};
use crate::config::PathPolicy;

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

/// Splits a path into its name and its tag part (from the first `;` on, possibly empty).
pub(super) fn split_tags(path: &[u8]) -> (&[u8], &[u8]) {
    let name_end = memchr::memchr(b';', path).unwrap_or(path.len());
    path.split_at(name_end)
}

/// Checks a path that did not pass [`name_is_normal`] as a whole: it has tags, or its name needs work. Returns true
/// when the name must be rewritten.
pub(super) fn check_path(path: &[u8], rules: &Rules) -> Result<bool, Invalid> {
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
pub(super) fn name_is_normal(name: &[u8]) -> bool {
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
pub(super) fn in_alphabet(byte: u8) -> bool {
    // Setting bit 5 folds upper case onto lower case; `0`..=`:` is one range.
    let letter = (byte | 0x20).wrapping_sub(b'a') < 26;
    let digit_or_colon = byte.wrapping_sub(b'0') < 11;
    letter | digit_or_colon | (byte == b'-') | (byte == b'_') | (byte == b'#') | (byte == b'.')
}

/// Normalises a name byte by byte, giving each output byte to `emit`: bytes outside the alphabet are replaced by
/// `_`, refused or kept by `path_policy`, then runs of dots collapse to one and leading and trailing dots go.
/// Returns the output length and whether a byte was replaced. Called twice for a line that needs it, once to
/// validate and once to write, so that nothing is written for a line that is then refused.
pub(super) fn normalize_name(
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
