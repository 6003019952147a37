//! The differential test of the fast scan: [`Decoder::decode`] with every classifier this CPU has against
//! [`Decoder::decode_plain`], on random and realistic input split at random points, into small and large batches,
//! under varied rules. Everything a connection can observe must be identical: each batch's bytes, each call's
//! consumed length, rejected sample and discard state, and the final counts.

use std::ops::Range;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Decoder;
use crate::batch::BatchBuilder;
use crate::config::PathPolicy;
use crate::line::classify::Classifier;
use crate::line::{Invalid, LineCounts, Rules};

const NOW_SECS: i64 = 1_700_000_000;

#[derive(Debug, Clone, Copy)]
enum Mode {
    Plain,
    Fast(Classifier),
}

/// What a connection observes of a decoder, call by call.
#[derive(Debug, PartialEq)]
struct Trace {
    batches: Vec<Vec<u8>>,
    calls: Vec<Call>,
    counts: LineCounts,
}

/// What one `decode` call returned and left behind.
#[derive(Debug, PartialEq)]
struct Call {
    consumed: usize,
    rejected: Option<(Invalid, Range<usize>)>,
    discarding: bool,
}

/// How the input is fed and batched.
#[derive(Debug, Clone)]
struct Feed {
    rules: Rules,
    /// Where the input is cut into reads.
    cuts: Vec<usize>,
    max_lines: usize,
    max_bytes: usize,
    /// How far the clock moves between reads, so a `ts_far` verdict near the edge of the year is tested in step.
    clock_step_secs: i64,
}

/// Drives one decoder as a connection does: each read is appended to the unconsumed rest, a full batch is taken
/// before decoding on, the clock is moved a little per read, and at EOF the last batch is taken and `finish` called.
fn trace(mode: Mode, input: &[u8], feed: &Feed) -> Trace {
    let mut decoder = match mode {
        Mode::Plain => Decoder::new(feed.rules),
        Mode::Fast(classifier) => Decoder::with_classifier(feed.rules, classifier),
    };
    let mut batch = BatchBuilder::new(feed.max_lines, feed.max_bytes);
    let mut trace = Trace {
        batches: Vec::new(),
        calls: Vec::new(),
        counts: LineCounts::default(),
    };
    let mut pending = Vec::new();
    let mut bounds = vec![0];
    bounds.extend(feed.cuts.iter().map(|&cut| cut.min(input.len())));
    bounds.push(input.len());
    bounds.sort_unstable();
    for (index, read) in bounds.windows(2).enumerate() {
        decoder.set_now(feed.rules.now_secs + index as i64 * feed.clock_step_secs);
        pending.extend_from_slice(&input[read[0]..read[1]]);
        loop {
            let consumed = match mode {
                Mode::Plain => decoder.decode_plain(&pending, &mut batch, &mut trace.counts),
                Mode::Fast(_) => decoder.decode(&pending, &mut batch, &mut trace.counts),
            };
            trace.calls.push(Call {
                consumed,
                rejected: decoder.take_rejected(),
                discarding: decoder.is_discarding(),
            });
            pending.drain(..consumed);
            if !batch.is_full() {
                break;
            }
            if let Some(taken) = batch.take() {
                trace.batches.push(taken.bytes().to_vec());
            }
        }
    }
    if let Some(taken) = batch.take() {
        trace.batches.push(taken.bytes().to_vec());
    }
    decoder.finish(&pending, &mut trace.counts);
    trace
}

/// Asserts that every fast decoder observes exactly what the plain one does; returns the plain trace.
fn assert_same(input: &[u8], feed: &Feed) -> Result<Trace, TestCaseError> {
    let plain = trace(Mode::Plain, input, feed);
    for classifier in Classifier::all_available() {
        let fast = trace(Mode::Fast(classifier), input, feed);
        prop_assert_eq!(
            &fast,
            &plain,
            "{:?} on {:?} fed as {:?}",
            classifier,
            input.escape_ascii().to_string(),
            feed
        );
    }
    Ok(plain)
}

/// One line, mostly realistic: a path, a value and a timestamp with their separators and end, each sometimes broken
/// in one of the ways clients break them.
fn realistic_line(rng: &mut impl Rng) -> Vec<u8> {
    fn pick<'a>(rng: &mut impl Rng, common: &'a str, odd: &[&'a str]) -> &'a str {
        if rng.random_bool(0.85) {
            common
        } else {
            odd[rng.random_range(0..odd.len())]
        }
    }
    let host = rng.random_range(0..100_000);
    let segment_count = rng.random_range(1..8);
    let mut path = format!("servers.host{host:05}");
    for _ in 0..segment_count {
        let segment = [
            "cpu",
            "disk",
            "sda",
            "read_bytes",
            "x",
            "load-1m",
            "a:b",
            "#t",
            "Q",
        ];
        path.push('.');
        path.push_str(segment[rng.random_range(0..segment.len())]);
    }
    let path_odd = pick(
        rng,
        "",
        &[
            "..", ".", ";tag=v", ";t=é", "é", "@", " ", "\t", "\0", "\u{fffd}", "(x)", ";", "\r",
            "\n", "+",
        ],
    );
    let path = match rng.random_range(0..4) {
        0 => format!("{path_odd}{path}"),
        1 => format!("{path}{path_odd}"),
        _ => {
            let at = rng.random_range(0..=path.len());
            format!("{}{path_odd}{}", &path[..at], &path[at..])
        }
    };
    let value = match rng.random_range(0..6) {
        0 => rng.random_range(0..1000).to_string(),
        // A plus sign, which `parse` takes and leaves out of the forwarded line.
        5 => format!("+{}", rng.random_range(0..1000)),
        1 => format!(
            "{}.{:02}",
            rng.random_range(0..100_000),
            rng.random_range(0..100)
        ),
        2 => format!("-{}", rng.random_range(0..1000)),
        _ => pick(
            rng,
            "812.07",
            &[
                "1.",
                ".5",
                "-.5",
                "-",
                ".",
                "",
                "1e5",
                "-1.5E-3",
                "nan",
                "inf",
                "-Infinity",
                "+1",
                "+",
                "++1",
                "+-1",
                "-+1",
                "+.5",
                "+1e+5",
                "+inf",
                "+nan",
                "1.2.3",
                "1-",
                "--1",
                "0x10",
                "1_0",
                "12345678901234567",
                "1234567890123456",
                "-123456789012345",
                "1..2",
                "١",
                "007",
                "0",
                "-0.",
            ],
        )
        .to_string(),
    };
    let now = NOW_SECS + rng.random_range(-100..100);
    let timestamp = match rng.random_range(0..5) {
        0 => now.to_string(),
        4 => format!("+{now}"),
        1 => (NOW_SECS + rng.random_range(-40_000_000..40_000_000)).to_string(),
        _ => pick(
            rng,
            "1700000000",
            &[
                "1700000000000",
                "-1",
                "0",
                "000",
                "1700000000.5",
                "1700000000.",
                "abc",
                "1",
                "01700000000",
                "00000000001700000000",
                "9999999999999999",
                "10000000000000000",
                "",
                "1.2.3",
                "+1700000000",
                "+",
                "++1700000000",
                "+-1",
                "+0",
                "+1",
                "+1700000000.5",
                "+inf",
                "17000e0",
                "1731536000",
                "1731536001",
                "1668464000",
                "1668463999",
            ],
        )
        .to_string(),
    };
    let first_separator = pick(rng, " ", &["\t", "  ", " \t", "", "\r"]);
    let second_separator = pick(rng, " ", &["\t", "  ", "\t ", ""]);
    let end = pick(
        rng,
        "\n",
        &["\r\n", " \n", "\t\n", "\r\r\n", "", "\n\n", " 1\n"],
    );
    let mut line =
        format!("{path}{first_separator}{value}{second_separator}{timestamp}{end}").into_bytes();
    if rng.random_bool(0.02) {
        // Invalid UTF-8 somewhere.
        let at = rng.random_range(0..=line.len());
        line.insert(at, 0xff);
    }
    if rng.random_bool(0.01) {
        // A long line, often over the limit.
        let at = rng.random_range(0..=line.len());
        let long = vec![b'x'; rng.random_range(50..400)];
        line.splice(at..at, long);
    }
    line
}

fn lines_stream(rng: &mut impl Rng, n_lines: usize) -> Vec<u8> {
    let mut input = Vec::new();
    for _ in 0..n_lines {
        if rng.random_bool(0.02) {
            input.extend_from_slice(b"\n");
        }
        input.extend_from_slice(&realistic_line(rng));
    }
    input
}

fn rules_from(
    max_line_bytes: usize,
    max_path_bytes: usize,
    path_policy: PathPolicy,
    now_secs: i64,
) -> Rules {
    Rules {
        max_line_bytes,
        max_path_bytes,
        path_policy,
        now_secs,
    }
}

fn rules_strategy() -> impl Strategy<Value = Rules> {
    (
        prop_oneof![
            Just(20usize),
            Just(64),
            Just(100),
            Just(300),
            Just(16 * 1024)
        ],
        prop_oneof![Just(5usize), Just(30), Just(40), Just(1024)],
        prop_oneof![
            Just(PathPolicy::Sanitize),
            Just(PathPolicy::Reject),
            Just(PathPolicy::Passthrough)
        ],
        prop_oneof![
            6 => Just(NOW_SECS),
            1 => Just(0i64),
            1 => Just(-5i64),
            1 => Just(1000i64),
            1 => Just(9_999_999_999_999_000i64),
            1 => Just(i64::MAX - 1_000_000),
        ],
    )
        .prop_map(|(max_line, max_path, policy, now)| rules_from(max_line, max_path, policy, now))
}

fn feed_strategy(max_input_len: usize) -> impl Strategy<Value = Feed> {
    (
        rules_strategy(),
        prop::collection::vec(0..=max_input_len, 0..6),
        prop_oneof![Just(1usize), Just(2), Just(7), Just(4096)],
        prop_oneof![Just(1usize), Just(40), Just(100), Just(300), Just(1 << 20)],
    )
        .prop_map(|(rules, cuts, max_lines, max_bytes)| Feed {
            rules,
            cuts,
            max_lines,
            max_bytes,
            clock_step_secs: 1000,
        })
}

/// Bytes that are mostly line pieces, with the awkward bytes mixed in and no structure. Also the input of the
/// decoder's own proptests.
pub(super) fn pieces() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(&b"a.b"[..]),
        Just(&b"servers.host01.cpu"[..]),
        Just(&b" "[..]),
        Just(&b" "[..]),
        Just(&b" "[..]),
        Just(&b"\t"[..]),
        Just(&b"\n"[..]),
        Just(&b"\n"[..]),
        Just(&b"\r"[..]),
        Just(&b"1"[..]),
        Just(&b"1.5"[..]),
        Just(&b"-1"[..]),
        Just(&b"+"[..]),
        Just(&b"+1"[..]),
        Just(&b" +1700000000"[..]),
        Just(&b"1700000000"[..]),
        Just(&b"1700000000\n"[..]),
        Just(&b"."[..]),
        Just(&b".."[..]),
        Just(&b";t=v"[..]),
        Just(&b"inf"[..]),
        Just(&b"nan"[..]),
        Just(&b"e5"[..]),
        Just("é".as_bytes()),
        Just(&b"\0"[..]),
        Just(&b"\xff"[..]),
        Just(&b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"[..]),
    ]
    .prop_map(<[u8]>::to_vec);
    let any_byte = any::<u8>().prop_map(|byte| vec![byte]);
    prop::collection::vec(prop_oneof![6 => piece, 1 => any_byte], 0..200)
        .prop_map(|pieces| pieces.concat())
}

/// Arbitrary bytes with no structure but a bias towards the bytes that matter to a line: LF, CR, NUL, blanks, signs,
/// digits, dots, `;` and `=`, DEL and high bytes (a UTF-8 `é` and bytes no UTF-8 has), long runs of one byte (over-long
/// lines, long blanks, many LFs), and pieces of lines.
fn byte_soup() -> impl Strategy<Value = Vec<u8>> {
    let special = prop::sample::select(&b"\n\n\n\r\0 \t+-.;=0123456789eE\x7f\x80\xc3\xa9\xff"[..]);
    let run_byte = prop_oneof![special.clone(), any::<u8>()];
    let element = prop_oneof![
        4 => special.prop_map(|byte| vec![byte]),
        4 => any::<u8>().prop_map(|byte| vec![byte]),
        1 => (run_byte, 1usize..400).prop_map(|(byte, len)| vec![byte; len]),
        1 => pieces(),
    ];
    prop::collection::vec(element, 0..100).prop_map(|elements| elements.concat())
}

/// Lines in `input` as a connection that reaches EOF sees them: every LF ends one, and a non-empty rest is one more.
fn n_lines_in(input: &[u8]) -> u64 {
    let n_complete = memchr::memchr_iter(b'\n', input).count();
    let has_partial = input.last().is_some_and(|&byte| byte != b'\n');
    (n_complete + usize::from(has_partial)) as u64
}

/// The byte-soup check, shared with the regression cases below: the fast decoder with every classifier, fed `input`
/// in the reads that `cuts` make, gives exactly the batches and counts of the plain decoder fed the whole input in one
/// read, and counts every line once. The clock stands still, so only the cuts differ.
fn assert_soup_decodes_as_the_model(
    input: &[u8],
    rules: Rules,
    cuts: Vec<usize>,
    max_lines: usize,
    max_bytes: usize,
) -> Result<(), TestCaseError> {
    let whole = Feed {
        rules,
        cuts: Vec::new(),
        max_lines,
        max_bytes,
        clock_step_secs: 0,
    };
    let split = Feed {
        cuts,
        ..whole.clone()
    };
    let model = trace(Mode::Plain, input, &whole);
    prop_assert_eq!(
        model.counts.valid + model.counts.n_invalid(),
        n_lines_in(input),
        "{:?}",
        model.counts
    );
    for classifier in Classifier::all_available() {
        let fast = trace(Mode::Fast(classifier), input, &split);
        let context = format!(
            "{classifier:?} on {:?} fed as {split:?}",
            input.escape_ascii().to_string()
        );
        prop_assert_eq!(&fast.batches, &model.batches, "{}", context);
        prop_assert_eq!(&fast.counts, &model.counts, "{}", context);
    }
    Ok(())
}

/// Lines that are valid but for their dots, with paths of every length so that dots, pairs of dots and fields
/// fall on every position of the 64-byte blocks, and of the 16 bytes the value and timestamp tests read.
fn dotted_lines() -> impl Strategy<Value = Vec<u8>> {
    let path = prop::collection::vec(prop_oneof![15 => Just(b'a'), 1 => Just(b'.')], 1..140);
    let pair = prop_oneof![Just(&b""[..]), Just(&b".."[..]), Just(&b"..."[..])];
    let value = prop_oneof![
        Just(&b"1"[..]),
        Just(&b"1.5"[..]),
        Just(&b"1."[..]),
        Just(&b"-.5"[..])
    ];
    let line = (path, pair, any::<prop::sample::Index>(), value).prop_map(
        |(mut path, pair, at, value)| {
            let at = at.index(path.len() + 1);
            path.splice(at..at, pair.iter().copied());
            [&path[..], b" ", value, b" 1700000000\n"].concat()
        },
    );
    prop::collection::vec(line, 1..12).prop_map(|lines| lines.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn the_fast_scan_and_the_plain_decoder_agree_on_dots_at_every_position(
        input in dotted_lines(),
        feed in feed_strategy(1500),
    ) {
        assert_same(&input, &feed)?;
    }

    #[test]
    fn the_fast_scan_and_the_plain_decoder_agree_on_realistic_lines(
        seed in any::<u64>(),
        n_lines in 0usize..60,
        feed in feed_strategy(6000),
    ) {
        let input = lines_stream(&mut StdRng::seed_from_u64(seed), n_lines);
        assert_same(&input, &feed)?;
    }

    #[test]
    fn the_fast_scan_and_the_plain_decoder_agree_on_any_pieces(input in pieces(), feed in feed_strategy(1500)) {
        assert_same(&input, &feed)?;
    }
}

proptest! {
    // Fewer cases than above, as the inputs are larger (runs of hundreds of bytes); `fuzz/` runs the same check for
    // as long as one cares to wait.
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn byte_soup_split_anywhere_decodes_exactly_as_the_plain_decoder_on_the_whole_input(
        input in byte_soup(),
        rules in rules_strategy(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
        max_lines in prop_oneof![Just(1usize), Just(2), Just(7), Just(4096)],
        max_bytes in prop_oneof![Just(1usize), Just(40), Just(100), Just(300), Just(1 << 20)],
    ) {
        let cuts = cuts.iter().map(|cut| cut.index(input.len() + 1)).collect();
        assert_soup_decodes_as_the_model(&input, rules, cuts, max_lines, max_bytes)?;
    }
}

/// A few thousand realistic lines, fed whole and in many cuts, with small and default batches: the bulk case, and a
/// check that most lines really take the fast path's as-is verdict (or the test would prove little), and that lines
/// with a `+` sign were among them.
#[test]
fn the_fast_scan_and_the_plain_decoder_agree_on_thousands_of_lines() {
    let mut rng = StdRng::seed_from_u64(0x5ca1ab1e);
    let input = lines_stream(&mut rng, 5000);
    let rules = rules_from(300, 200, PathPolicy::Sanitize, NOW_SECS);
    let mut n_cases = 0;
    for (max_lines, max_bytes) in [(4096, 16 * 1024), (3, 1 << 20), (4096, 100), (1, 1)] {
        for n_cuts in [0, 1, 10, 300] {
            let cuts = (0..n_cuts)
                .map(|_| rng.random_range(0..=input.len()))
                .collect();
            let feed = Feed {
                rules,
                cuts,
                max_lines,
                max_bytes,
                clock_step_secs: 1000,
            };
            let plain = assert_same(&input, &feed).expect("fast and plain agree");
            assert!(plain.counts.valid > 2000, "{:?}", plain.counts);
            assert!(plain.counts.n_invalid() > 100, "{:?}", plain.counts);
            // Signed fields reach `parse` and come out without their `+`.
            let plus_field = |bytes: &[u8]| {
                bytes
                    .windows(3)
                    .any(|three| three[..2] == *b" +" && three[2].is_ascii_digit())
            };
            assert!(plus_field(&input));
            assert!(!plain.batches.iter().any(|batch| plus_field(batch)));
            n_cases += 1;
        }
    }
    assert_eq!(n_cases, 16);
}
