//! The decoder's own cases: reads split mid-line, full batches, over-long lines, EOF, and properties on any bytes.

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

/// How the connection ends after its last chunk: the decoder's method that accounts for what is left.
type End = fn(&mut Decoder, &[u8], &mut LineCounts);

/// Feeds `chunks` to one decoder as a connection does: the unconsumed rest is kept and presented again with the
/// next chunk, a full batch is taken before decoding on, and at EOF the last batch is taken and `finish` called.
fn decode_chunks(chunks: &[&[u8]], max_lines: usize, max_bytes: usize) -> Decoded {
    decode_chunks_until(chunks, max_lines, max_bytes, Decoder::finish)
}

/// [`decode_chunks`], the connection ending by `end` after the last chunk.
fn decode_chunks_until(chunks: &[&[u8]], max_lines: usize, max_bytes: usize, end: End) -> Decoded {
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
    end(&mut decoder, &pending, &mut counts);
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

/// Lines in `input` as a connection that reaches EOF sees them: every LF ends one, and a non-empty rest is one more.
fn n_lines_in(input: &[u8]) -> u64 {
    let n_complete = memchr::memchr_iter(b'\n', input).count();
    let has_partial = input.last().is_some_and(|&byte| byte != b'\n');
    (n_complete + usize::from(has_partial)) as u64
}

#[test]
fn an_over_long_line_cut_by_eof_is_counted_once_as_line_len_not_also_as_partial_eof() {
    // Regression: `finish` added `partial_eof` while the long line was being skipped, so one line counted twice.
    let decoded = decode(&[b'x'; 100]);
    assert_eq!(invalid(&decoded, Invalid::LineLen), 1);
    assert_eq!(decoded.counts.n_invalid(), 1);
    assert_eq!(decoded.counts.valid, 0);
    assert!(decoded.output.is_empty());
    // The same over several reads, after a valid line.
    let head = [b'x'; 40];
    let decoded = decode_chunks(&[b"a.b 1 1700000000\n", &head, &head, &head], 4096, 1 << 20);
    assert_eq!(decoded.output, b"a.b 1 1700000000\n");
    assert_eq!(invalid(&decoded, Invalid::LineLen), 1);
    assert_eq!(decoded.counts.n_invalid(), 1);
}

#[test]
fn an_over_long_line_cut_by_the_partial_line_timeout_is_counted_once_as_line_len_not_also_as_partial_timeout(
) {
    let head = [b'x'; 40];
    let decoded = decode_chunks_until(&[&head, &head], 4096, 1 << 20, Decoder::finish_timed_out);
    assert_eq!(invalid(&decoded, Invalid::LineLen), 1);
    assert_eq!(decoded.counts.n_invalid(), 1);
}

#[test]
fn a_partial_line_cut_by_the_partial_line_timeout_is_counted_once_as_partial_timeout() {
    let decoded = decode_chunks_until(
        &[b"a.b 1 1700000000\nc.d 2"],
        4096,
        1 << 20,
        Decoder::finish_timed_out,
    );
    assert_eq!(decoded.output, b"a.b 1 1700000000\n");
    assert_eq!(invalid(&decoded, Invalid::PartialTimeout), 1);
    assert_eq!(decoded.counts.n_invalid(), 1);
}

#[test]
fn a_partial_line_after_an_over_long_one_is_its_own_line_and_counted_as_partial_eof() {
    let mut input = vec![b'x'; 100];
    input.extend_from_slice(b"\nc.d 2");
    let decoded = decode_chunks(&[&input[..70], &input[70..]], 4096, 1 << 20);
    assert_eq!(invalid(&decoded, Invalid::LineLen), 1);
    assert_eq!(invalid(&decoded, Invalid::PartialEof), 1);
    assert_eq!(decoded.counts.n_invalid(), 2);
}

#[test]
fn every_line_is_counted_exactly_once_whatever_its_length_and_end() {
    for input in [
        &b""[..],
        b"\n",
        b"a.b 1 1700000000",
        b"a.b 1 1700000000\n",
        b"a.b 1 1700000000\n\n\nx\n",
        &[b'x'; 64],
        &[b'x'; 65],
        b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\na 1 1700000000\nxxx",
    ] {
        let decoded = decode(input);
        let n_counted = decoded.counts.valid + decoded.counts.n_invalid();
        assert_eq!(n_counted, n_lines_in(input), "{:?}", input.escape_ascii().to_string());
    }
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
    fn any_bytes_split_anywhere_count_every_line_exactly_once(input in stream(), split in any::<prop::sample::Index>()) {
        let at = split.index(input.len() + 1);
        let decoded = decode_chunks(&[&input[..at], &input[at..]], 7, 100);
        prop_assert_eq!(decoded.counts.valid + decoded.counts.n_invalid(), n_lines_in(&input));
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
