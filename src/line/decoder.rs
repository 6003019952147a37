//! Applies [`super::check`] to a whole read buffer, appending valid lines to a batch.
//!
//! Sits between a connection's read buffer and its [`BatchBuilder`]. Lines already in normal form (nearly all of
//! them) are not copied one by one: consecutive ones form a run that goes into the batch with one copy, and a line
//! that must be rewritten or is refused ends the run. Invariants: the decoder never buffers input itself, so a
//! connection's memory stays its read buffer plus its batch; it consumes only whole lines, except the head of an
//! over-long line, which it drops and then skips to its LF; and it never writes a batch past the point where
//! [`BatchBuilder::is_full`] turns true by bytes.
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

    /// True while the rest of an over-long line is being skipped up to its LF.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }

    /// Decodes complete lines at the start of `buf` into `batch`, stopping when no complete line is left or the batch
    /// is full. Returns the number of bytes consumed; the caller keeps the rest and presents it again, followed by
    /// more bytes. A rest longer than `max_line_bytes` (no LF yet) is consumed, counted once as `line_len`, and the
    /// decoder skips up to the next LF.
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

    /// Accounts for the bytes left when the connection reached EOF (`partial_eof` if any, or if a long line was being
    /// skipped).
    pub fn finish(&mut self, rest: &[u8], counts: &mut LineCounts) {
        if !rest.is_empty() || self.discarding {
            counts.add_invalid(Invalid::PartialEof);
        }
        self.discarding = false;
    }
}

#[cfg(test)]
mod differential;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::PathPolicy;
    use crate::line::{check, Valid};

    const NOW_SECS: i64 = 1_700_000_000;

    fn rules() -> Rules {
        Rules {
            max_line_bytes: 64,
            max_path_bytes: 40,
            path_policy: PathPolicy::Sanitize,
            now_secs: NOW_SECS,
        }
    }

    /// What a connection saw: every batch's bytes concatenated, how many batches, and the counts.
    #[derive(Debug, PartialEq)]
    struct Decoded {
        output: Vec<u8>,
        n_batches: usize,
        counts: LineCounts,
    }

    /// Feeds `chunks` to one decoder as a connection does: the unconsumed rest is kept and presented again with the
    /// next chunk, a full batch is taken before decoding on, and at EOF the last batch is taken and `finish` called.
    fn decode_chunks(chunks: &[&[u8]], max_lines: usize, max_bytes: usize) -> Decoded {
        let mut decoder = Decoder::new(rules());
        let mut batch = BatchBuilder::new(max_lines, max_bytes);
        let mut counts = LineCounts::default();
        let mut pending = Vec::new();
        let mut output = Vec::new();
        let mut n_batches = 0;
        let mut take = |batch: &mut BatchBuilder| {
            if let Some(taken) = batch.take() {
                output.extend_from_slice(taken.bytes());
                n_batches += 1;
            }
        };
        for chunk in chunks {
            pending.extend_from_slice(chunk);
            loop {
                let consumed = decoder.decode(&pending, &mut batch, &mut counts);
                pending.drain(..consumed);
                if !batch.is_full() {
                    break;
                }
                take(&mut batch);
            }
        }
        take(&mut batch);
        decoder.finish(&pending, &mut counts);
        Decoded {
            output,
            n_batches,
            counts,
        }
    }

    fn decode(input: &[u8]) -> Decoded {
        decode_chunks(&[input], 4096, 1 << 20)
    }

    fn invalid(decoded: &Decoded, reason: Invalid) -> u64 {
        decoded.counts.invalid[reason as usize]
    }

    #[test]
    fn a_line_split_across_two_reads_is_decoded_once_whole() {
        let decoded = decode_chunks(
            &[b"a.b 1 17000", b"00000\nc.d 2 1700000000\n"],
            4096,
            1 << 20,
        );
        assert_eq!(decoded.output, b"a.b 1 1700000000\nc.d 2 1700000000\n");
        assert_eq!(decoded.counts.valid, 2);
        assert_eq!(decoded.counts.n_invalid(), 0);
    }

    #[test]
    fn decoding_stops_on_a_line_boundary_when_the_batch_is_full_and_resumes() {
        let input = b"a 1 1700000000\nb 2 1700000000\nc 3 1700000000\nd 4 1700000000\n";
        let mut decoder = Decoder::new(rules());
        let mut batch = BatchBuilder::new(4096, 20);
        let mut counts = LineCounts::default();

        let consumed = decoder.decode(input, &mut batch, &mut counts);
        assert_eq!(consumed, 30);
        assert!(batch.is_full());
        assert_eq!(&batch.take().expect("two lines").bytes()[..], &input[..30]);

        let consumed_after = decoder.decode(&input[consumed..], &mut batch, &mut counts);
        assert_eq!(consumed_after, 30);
        assert_eq!(&batch.take().expect("two lines").bytes()[..], &input[30..]);
        assert_eq!(counts.valid, 4);
    }

    #[test]
    fn a_rewritten_line_fills_the_batch_exactly_like_a_copied_one() {
        let decoded = decode_chunks(
            &[b"a\t1 1700000000\nb 2 1700000000\nc\t3 1700000000\n"],
            2,
            1 << 20,
        );
        assert_eq!(
            decoded.output,
            b"a 1 1700000000\nb 2 1700000000\nc 3 1700000000\n"
        );
        assert_eq!(decoded.n_batches, 2);
    }

    #[test]
    fn a_batch_holds_exactly_its_line_limit() {
        let input = "a 1 1700000000\n".repeat(200);
        let decoded = decode_chunks(&[input.as_bytes()], 3, 1 << 20);
        assert_eq!(decoded.output, input.as_bytes());
        assert_eq!(decoded.n_batches, 200usize.div_ceil(3));
    }

    #[test]
    fn a_long_line_without_lf_over_several_reads_is_counted_once_and_the_next_line_is_intact() {
        let head = [b'x'; 40];
        let tail = b"xxx\na.b 1 1700000000\n";
        let decoded = decode_chunks(&[&head, &head, &head, tail], 4096, 1 << 20);
        assert_eq!(decoded.output, b"a.b 1 1700000000\n");
        assert_eq!(invalid(&decoded, Invalid::LineLen), 1);
        assert_eq!(decoded.counts.n_invalid(), 1);
        assert_eq!(decoded.counts.valid, 1);
    }

    #[test]
    fn a_valid_line_before_an_over_long_partial_line_in_one_read_arrives_alone() {
        // Regression: the run of valid lines once swallowed the head of the over-long line that followed it.
        let mut input = b"a.b 1 1700000000\n".to_vec();
        input.extend_from_slice(&[b'x'; 200]);
        let decoded = decode_chunks(
            &[&input, b"x 1 1700000000\nc.d 2 1700000000\n"],
            4096,
            1 << 20,
        );
        assert_eq!(decoded.output, b"a.b 1 1700000000\nc.d 2 1700000000\n");
        assert_eq!(invalid(&decoded, Invalid::LineLen), 1);
    }

    #[test]
    fn a_complete_line_longer_than_the_limit_is_refused_between_intact_lines() {
        let input = format!("a 1 1700000000\n{}\nb 2 1700000000\n", "x".repeat(65));
        let decoded = decode(input.as_bytes());
        assert_eq!(decoded.output, b"a 1 1700000000\nb 2 1700000000\n");
        assert_eq!(invalid(&decoded, Invalid::LineLen), 1);
        let exactly_max = format!("a {} 1700000000\n", "1".repeat(64 - 13));
        assert_eq!(
            decode(exactly_max.as_bytes()).output,
            exactly_max.as_bytes()
        );
    }

    #[test]
    fn a_partial_line_at_eof_is_counted() {
        let decoded = decode(b"a.b 1 1700000000\nc.d 2");
        assert_eq!(decoded.output, b"a.b 1 1700000000\n");
        assert_eq!(invalid(&decoded, Invalid::PartialEof), 1);
        assert_eq!(
            invalid(&decode(b"a.b 1 1700000000\n  "), Invalid::PartialEof),
            1
        );
        assert_eq!(decode(b"a.b 1 1700000000\n").counts.n_invalid(), 0);
        assert_eq!(decode(b"").counts.n_invalid(), 0);
    }

    #[test]
    fn eof_while_skipping_a_long_line_is_counted_once_as_partial() {
        let decoded = decode(&[b'x'; 100]);
        assert_eq!(invalid(&decoded, Invalid::LineLen), 1);
        assert_eq!(invalid(&decoded, Invalid::PartialEof), 1);
        assert!(decoded.output.is_empty());
    }

    #[test]
    fn a_crlf_stream_is_forwarded_with_lf_only() {
        let decoded = decode(b"a 1 1700000000\r\nb 2 1700000000\r\n");
        assert_eq!(decoded.output, b"a 1 1700000000\nb 2 1700000000\n");
        assert_eq!(decoded.counts.valid, 2);
    }

    #[test]
    fn valid_lines_around_invalid_and_rewritten_ones_arrive_intact_and_in_order() {
        let input = b"a 1 1700000000\n\
                      bad line\n\
                      b\t2 1700000000\n\
                      c 3 1700000000\n\
                      d 4 1700000000\n\
                      e nan 1700000000\n\
                      \n\
                      f..g 5 1700000000\n\
                      h 6 1700000000000\n\
                      i 7 0\n";
        let decoded = decode(input);
        assert_eq!(
            String::from_utf8_lossy(&decoded.output),
            "a 1 1700000000\nb 2 1700000000\nc 3 1700000000\nd 4 1700000000\nf.g 5 1700000000\nh 6 1700000000000\n"
        );
        assert_eq!(decoded.counts.valid, 6);
        assert_eq!(invalid(&decoded, Invalid::Fields), 1);
        assert_eq!(invalid(&decoded, Invalid::Nan), 1);
        assert_eq!(invalid(&decoded, Invalid::Empty), 1);
        assert_eq!(invalid(&decoded, Invalid::Ts), 1);
        assert_eq!(decoded.counts.notes[Note::Sanitized as usize], 1);
        assert_eq!(decoded.counts.notes[Note::TsFar as usize], 1);
    }

    use crate::line::Note;

    use super::differential::pieces as stream;

    proptest! {
        #[test]
        fn decoding_any_bytes_forwards_only_normal_lines_and_counts_them(input in stream()) {
            let decoded = decode_chunks(&[&input], 7, 100);
            let n_lines = memchr::memchr_iter(b'\n', &decoded.output).count();
            prop_assert_eq!(n_lines as u64, decoded.counts.valid);
            prop_assert!(decoded.output.is_empty() || decoded.output.ends_with(b"\n"));
            let mut out = bytes::BytesMut::new();
            for line in decoded.output.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
                let rechecked = check(line, &rules(), &mut out);
                prop_assert!(matches!(rechecked, Ok(Valid::AsIs(_))), "{:?} -> {:?}", line.escape_ascii().to_string(), rechecked);
            }
        }

        #[test]
        fn splitting_the_input_anywhere_changes_nothing(input in stream(), split in any::<prop::sample::Index>()) {
            let at = split.index(input.len() + 1);
            let whole = decode_chunks(&[&input], 7, 100);
            let split = decode_chunks(&[&input[..at], &input[at..]], 7, 100);
            prop_assert_eq!(whole.output, split.output);
            prop_assert_eq!(whole.counts, split.counts);
        }
    }
}
