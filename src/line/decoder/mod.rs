//! Applies [`super::check`] to a whole read buffer, appending valid lines to a batch.
//!
//! Sits between a connection's read buffer and its [`BatchBuilder`]. Lines already in normal form (nearly all of
//! them) are not copied one by one: consecutive ones form a run that goes into the batch with one copy, and a line
//! that must be rewritten or is refused ends the run. Invariants: the decoder never buffers input itself, so a
//! connection's memory stays its read buffer plus its batch; it consumes only whole lines, except the head of an
//! over-long line, which it drops and then skips to its LF; it counts every line exactly once, an over-long one as
//! `line_len` when its head is dropped and never again when the connection ends while it is skipped; and it never
//! writes a batch past the point where [`BatchBuilder::is_full`] turns true by bytes.
//!
//! A pending run is copied when it reaches the batch's byte or line limit, so the line limit holds exactly and the
//! byte limit is passed by at most one line, as [`BatchBuilder::is_full`] sees them.
//!
//! # Two ways to find and check lines, one result
//!
//! [`Decoder::decode`] finds lines with the fast scan of `scan`: the buffer is classified 64 bytes at a
//! time into bitmaps with SIMD (`classify`), lines are walked through the bit positions, and the common
//! line (`path value timestamp` with single spaces, a clean path, a plain decimal value, a non-zero integer
//! timestamp, noted `ts_far` when more than a year from now) is known to be as-is from a short fixed test. Every
//! other line goes to the full check (`parse`), as before.
//! [`Decoder::decode_plain`] is the line-by-line reference: one `memchr` and one `parse` per line. Both share the
//! loop that builds runs and fills the batch, and must give byte-identical batches, counts, consumed lengths,
//! rejected samples and discard state on any input split anywhere; a differential test holds them to it. That
//! works because the fast test only ever says as-is for a line `parse` forwards as-is, with no note but the same
//! `ts_far`.

use std::ops::Range;

use super::classify::Classifier;
use super::scan::{FastRules, Line, Lines, PlainLines, Scan};
use super::{parse, write_normal, Invalid, LineCounts, Note, Rules};
use crate::batch::BatchBuilder;

/// Splits a connection's byte stream into lines and validates them; one per connection.
#[derive(Debug)]
pub struct Decoder {
    rules: Rules,
    /// What the fast scan needs from `rules`, kept in step with them.
    fast_rules: FastRules,
    classifier: Classifier,
    discarding: bool,
    /// The first line refused since the last [`Decoder::take_rejected`], for a sampled log line.
    rejected: Option<(Invalid, Range<usize>)>,
}

impl Decoder {
    /// A decoder for a new connection.
    pub fn new(rules: Rules) -> Decoder {
        Decoder::with_classifier(rules, Classifier::detect())
    }

    /// A decoder whose fast scan uses the given classifier, so tests can run every one.
    pub(crate) fn with_classifier(rules: Rules, classifier: Classifier) -> Decoder {
        Decoder {
            rules,
            fast_rules: FastRules::new(&rules),
            classifier,
            discarding: false,
            rejected: None,
        }
    }

    /// The first line refused by the last [`Decoder::decode`] call, as its reason and its range in that call's
    /// buffer; cleared by the call. Lets the caller log a sample of bad input without the decoder doing I/O.
    pub fn take_rejected(&mut self) -> Option<(Invalid, Range<usize>)> {
        self.rejected.take()
    }

    /// Updates the time used for [`super::Note::TsFar`].
    pub fn set_now(&mut self, now_secs: i64) {
        if now_secs != self.rules.now_secs {
            self.rules.now_secs = now_secs;
            self.fast_rules = FastRules::new(&self.rules);
        }
    }

    /// True while the rest of an over-long line is being skipped up to its LF. That line was counted as `line_len`
    /// when its head was dropped, so a caller that gives up on the connection now must not count it again: use
    /// [`Decoder::finish`] or [`Decoder::finish_timed_out`], which know.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }

    /// Decodes complete lines at the start of `buf` into `batch`, stopping when no complete line is left or the batch
    /// is full. Returns the number of bytes consumed; the caller keeps the rest and presents it again, followed by
    /// more bytes. A rest longer than `max_line_bytes` (no LF yet) is consumed, counted once as `line_len`, and the
    /// decoder skips up to the next LF, consuming all of every buffer until then ([`Decoder::is_discarding`]).
    ///
    /// Uses the fast scan; the result is exactly that of [`Decoder::decode_plain`].
    pub fn decode(
        &mut self,
        buf: &[u8],
        batch: &mut BatchBuilder,
        counts: &mut LineCounts,
    ) -> usize {
        let Some(start) = self.skip_discarded(buf) else {
            return buf.len();
        };
        let scan = Scan::new(buf, start, self.fast_rules, self.classifier);
        self.decode_lines(buf, start, scan, batch, counts)
    }

    /// [`Decoder::decode`] line by line: one `memchr` and one full check per line. The reference the fast scan is
    /// tested against, and the baseline of the decoder bench.
    pub fn decode_plain(
        &mut self,
        buf: &[u8],
        batch: &mut BatchBuilder,
        counts: &mut LineCounts,
    ) -> usize {
        let Some(start) = self.skip_discarded(buf) else {
            return buf.len();
        };
        self.decode_lines(buf, start, PlainLines(buf), batch, counts)
    }

    /// Where decoding starts: 0, or after the LF that ends an over-long line being skipped; `None` when the whole
    /// buffer is still part of that line.
    fn skip_discarded(&mut self, buf: &[u8]) -> Option<usize> {
        if !self.discarding {
            return Some(0);
        }
        // The head of this line was counted when it was dropped.
        let lf = memchr::memchr(b'\n', buf)?;
        self.discarding = false;
        Some(lf + 1)
    }

    /// The loop both decoders share: takes lines from `lines`, builds runs of as-is lines and fills the batch.
    fn decode_lines(
        &mut self,
        buf: &[u8],
        start: usize,
        mut lines: impl Lines,
        batch: &mut BatchBuilder,
        counts: &mut LineCounts,
    ) -> usize {
        let mut pos = start;
        // `buf[run_start..pos]` is a run of `run_lines` lines in normal form, each with its LF, not yet in the batch.
        let mut run_start = pos;
        let mut run_lines = 0u32;
        let mut room_bytes = batch.remaining_bytes();
        let mut room_lines = batch.remaining_lines();
        // The lines the scan knows as-is, counted in registers and added to `counts` once at the end.
        let mut n_as_is = 0u64;
        let mut n_as_is_far = 0u64;
        loop {
            if run_lines > 0 && (pos - run_start >= room_bytes || run_lines >= room_lines) {
                batch.push_lines(&buf[run_start..pos], run_lines);
                run_start = pos;
                run_lines = 0;
                room_bytes = batch.remaining_bytes();
                room_lines = batch.remaining_lines();
            }
            if run_lines == 0 && batch.is_full() {
                break;
            }
            let Some(found) = lines.next_line(pos) else {
                let rest = &buf[pos..];
                if rest.len() > self.rules.max_line_bytes {
                    // The run ends where the over-long line starts; it must not swallow the line's head.
                    if run_lines > 0 {
                        batch.push_lines(&buf[run_start..pos], run_lines);
                        run_lines = 0;
                    }
                    counts.add_invalid(Invalid::LineLen);
                    self.discarding = true;
                    pos = buf.len();
                }
                break;
            };
            let line_end = match found {
                Line::AsIs { lf, far } => {
                    n_as_is += 1;
                    n_as_is_far += u64::from(far);
                    run_lines += 1;
                    pos = lf + 1;
                    continue;
                }
                Line::Check { lf } => lf,
            };
            let line = &buf[pos..line_end];
            let next = line_end + 1;
            match parse(line, &self.rules) {
                Ok(parsed) if parsed.as_is => {
                    counts.add_valid(parsed.notes);
                    run_lines += 1;
                }
                Ok(parsed) => {
                    // The run goes first, so lines keep their order. If that fills the batch, this line waits for
                    // the next call and is checked again there: rare, and simpler than keeping its result.
                    if run_lines > 0 {
                        batch.push_lines(&buf[run_start..pos], run_lines);
                        run_lines = 0;
                        run_start = pos;
                        if batch.is_full() {
                            break;
                        }
                    }
                    counts.add_valid(parsed.notes);
                    write_normal(line, &parsed, self.rules.path_policy, batch.buffer());
                    batch.commit_line();
                    run_start = next;
                    room_bytes = batch.remaining_bytes();
                    room_lines = batch.remaining_lines();
                }
                Err(reason) => {
                    counts.add_invalid(reason);
                    if self.rejected.is_none() {
                        self.rejected = Some((reason, pos..line_end));
                    }
                    if run_lines > 0 {
                        batch.push_lines(&buf[run_start..pos], run_lines);
                        run_lines = 0;
                        room_bytes = batch.remaining_bytes();
                        room_lines = batch.remaining_lines();
                    }
                    run_start = next;
                }
            }
            pos = next;
        }
        if run_lines > 0 {
            batch.push_lines(&buf[run_start..pos], run_lines);
        }
        counts.valid += n_as_is;
        counts.notes[Note::TsFar as usize] += n_as_is_far;
        pos
    }

    /// Accounts for the bytes `decode` left when the connection ended (EOF, a read error, the end of the shutdown
    /// grace): `partial_eof` if they hold part of a line. An over-long line still being skipped was counted as
    /// `line_len` when its head was dropped, and is not counted again: every line is counted once.
    pub fn finish(&mut self, rest: &[u8], counts: &mut LineCounts) {
        self.finish_with(rest, Invalid::PartialEof, counts);
    }

    /// Accounts for the bytes `decode` left when the connection is closed because its partial line is older than
    /// `listen.partial_line_timeout`: `partial_timeout` if they hold part of a line, and nothing for an over-long line
    /// being skipped, which was counted as `line_len` already.
    pub fn finish_timed_out(&mut self, rest: &[u8], counts: &mut LineCounts) {
        self.finish_with(rest, Invalid::PartialTimeout, counts);
    }

    fn finish_with(&mut self, rest: &[u8], reason: Invalid, counts: &mut LineCounts) {
        // `decode` consumes the whole buffer while skipping, up to the LF that ends the skipped line.
        debug_assert!(
            rest.is_empty() || !self.discarding,
            "bytes left while skipping a line"
        );
        if !rest.is_empty() {
            counts.add_invalid(reason);
        }
        self.discarding = false;
    }
}

#[cfg(test)]
mod differential;

#[cfg(test)]
mod tests;
