//! Fuzz target for `polymur::line::Decoder`: arbitrary bytes in arbitrary reads never panic, and decode to exactly
//! what the reference model gives.
//!
//! The model is `Decoder::decode_plain` (one `memchr` and one full check per line) fed the whole input in one read;
//! the decoder under test is `Decoder::decode` (the fast scan) fed the same bytes in the reads the fuzz input
//! chooses, keeping the unconsumed rest and appending the next read, as a connection does. Both take a full batch
//! before decoding on and call `finish` at EOF. They must give the same batches (bytes and line counts) and the same
//! per-reason counts; every line must be counted exactly once; and every forwarded line must be in normal form.
//!
//! Input layout, so that a crash file reads as the bytes it decodes: the first 8 bytes choose the rules, the batch
//! limits and the reads (see [`Case::from_fuzz`]); the rest is the connection's byte stream.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use polymur::batch::BatchBuilder;
use polymur::config::PathPolicy;
use polymur::line::{check, Decoder, LineCounts, Rules, Valid};

/// The clock both decoders see; it does not move, so only the reads differ between them.
const NOW_SECS: i64 = 1_700_000_000;

/// How many header bytes choose the case before the stream starts.
const HEADER_BYTES: usize = 8;

/// One fuzz case: the rules, the batch limits, where the stream is cut into reads, and the stream.
#[derive(Debug)]
struct Case<'a> {
    rules: Rules,
    max_lines: usize,
    max_bytes: usize,
    /// Read boundaries, ascending, each within the stream.
    cuts: Vec<usize>,
    input: &'a [u8],
}

impl<'a> Case<'a> {
    /// Byte 0 picks `max_line_bytes`, byte 1 `max_path_bytes` and the path policy, bytes 2 and 3 the batch line and
    /// byte limits (small ones make many batches), and bytes 4 to 7 seed the reads: up to 32 cuts anywhere.
    fn from_fuzz(data: &'a [u8]) -> Option<Case<'a>> {
        let (header, input) = data.split_at_checked(HEADER_BYTES)?;
        let pick = |byte: u8, choices: &[usize]| choices[usize::from(byte) % choices.len()];
        let path_policy = match header[1] / 4 % 3 {
            0 => PathPolicy::Sanitize,
            1 => PathPolicy::Reject,
            _ => PathPolicy::Passthrough,
        };
        let rules = Rules {
            max_line_bytes: pick(header[0], &[20, 64, 100, 300, 16 * 1024]),
            max_path_bytes: pick(header[1], &[5, 30, 40, 1024]),
            path_policy,
            now_secs: NOW_SECS,
        };
        let mut seed = u32::from_le_bytes(header[4..8].try_into().expect("four bytes")) | 1;
        let n_cuts = seed % 33;
        let mut cuts: Vec<usize> = (0..n_cuts)
            .map(|_| {
                // xorshift32: any fixed, cheap sequence will do, the fuzzer mutates the seed.
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as usize % (input.len() + 1)
            })
            .collect();
        cuts.sort_unstable();
        Some(Case {
            rules,
            max_lines: pick(header[2], &[1, 2, 7, 4096]),
            max_bytes: pick(header[3], &[1, 40, 100, 300, 16 * 1024]),
            cuts,
            input,
        })
    }
}

/// What a connection observes: each batch's bytes and line count, and the counts.
#[derive(Debug, PartialEq)]
struct Decoded {
    batches: Vec<(Vec<u8>, u32)>,
    counts: LineCounts,
}

/// Feeds `case.input` to a new decoder in the reads that `cuts` make, as a connection does.
fn decode(case: &Case, cuts: &[usize], fast: bool) -> Decoded {
    let mut decoder = Decoder::new(case.rules);
    let mut batch = BatchBuilder::new(case.max_lines, case.max_bytes);
    let mut decoded = Decoded {
        batches: Vec::new(),
        counts: LineCounts::default(),
    };
    let take = |batch: &mut BatchBuilder, batches: &mut Vec<(Vec<u8>, u32)>| {
        if let Some(taken) = batch.take() {
            batches.push((taken.bytes().to_vec(), taken.n_lines()));
        }
    };
    let mut pending = Vec::new();
    let mut read_start = 0;
    for read_end in cuts.iter().copied().chain([case.input.len()]) {
        pending.extend_from_slice(&case.input[read_start..read_end]);
        read_start = read_end;
        loop {
            let consumed = if fast {
                decoder.decode(&pending, &mut batch, &mut decoded.counts)
            } else {
                decoder.decode_plain(&pending, &mut batch, &mut decoded.counts)
            };
            assert!(consumed <= pending.len(), "consumed past the buffer");
            pending.drain(..consumed);
            if !batch.is_full() {
                break;
            }
            take(&mut batch, &mut decoded.batches);
        }
    }
    take(&mut batch, &mut decoded.batches);
    decoder.finish(&pending, &mut decoded.counts);
    decoded
}

/// Lines in `input` as a connection that reaches EOF sees them: every LF ends one, and a non-empty rest is one more.
fn n_lines_in(input: &[u8]) -> u64 {
    let n_complete = memchr::memchr_iter(b'\n', input).count();
    let has_partial = input.last().is_some_and(|&byte| byte != b'\n');
    (n_complete + usize::from(has_partial)) as u64
}

fuzz_target!(|data: &[u8]| {
    let Some(case) = Case::from_fuzz(data) else {
        return;
    };
    let model = decode(&case, &[], false);
    let fast = decode(&case, &case.cuts, true);
    assert_eq!(
        fast, model,
        "fast scan in reads {:?} against the model",
        case.cuts
    );
    let n_counted = model.counts.valid + model.counts.n_invalid();
    assert_eq!(
        n_counted,
        n_lines_in(case.input),
        "every line counted once: {:?}",
        model.counts
    );
    let mut n_forwarded = 0u64;
    for (bytes, n_lines) in &model.batches {
        assert!(bytes.ends_with(b"\n"), "a batch holds whole lines");
        assert_eq!(memchr::memchr_iter(b'\n', bytes).count(), *n_lines as usize);
        for line in bytes[..bytes.len() - 1].split(|&byte| byte == b'\n') {
            let rechecked = check(line, &case.rules, &mut BytesMut::new());
            assert!(
                matches!(rechecked, Ok(Valid::AsIs(_))),
                "forwarded {:?}, which is not normal: {rechecked:?}",
                line.escape_ascii().to_string()
            );
        }
        n_forwarded += u64::from(*n_lines);
    }
    assert_eq!(n_forwarded, model.counts.valid);
});
