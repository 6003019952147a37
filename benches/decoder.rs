//! Decoder throughput: about 1 MiB of realistic lines through `Decoder::decode` (the fast scan) and
//! `Decoder::decode_plain` (line by line), as a connection drives them.
//!
//! Run with `cargo bench --bench decoder -- --warm-up-time 1 --measurement-time 3`.
//!
//! Four inputs: every line already in normal form (the common case, copied in runs), the same with timestamps two
//! years old (forwarded with a `ts_far` note, as in the relaybench pool), one line in ten needing a rewrite (tabs,
//! CRLF, characters to sanitise), and every line with Graphite tags. The batch is taken whenever it is full and the
//! unconsumed rest is presented again, as the connection does, so batch handling is part of the figure. The number of lines of each
//! input is printed, to turn the time per iteration into nanoseconds per line.

use criterion::{criterion_main, Criterion, Throughput};
use polymur::batch::BatchBuilder;
use polymur::config::PathPolicy;
use polymur::line::{Decoder, LineCounts, Rules};

const NOW_SECS: i64 = 1_700_000_000;
const INPUT_BYTES: usize = 1 << 20;
/// The default `listen.batch_lines` and `listen.batch_max_bytes`.
const BATCH_LINES: usize = 4096;
const BATCH_MAX_BYTES: usize = 16 * 1024;
/// The default `listen.read_buffer_bytes`: the decoder sees the stream in reads of this size.
const READ_BYTES: usize = 64 * 1024;

fn rules() -> Rules {
    Rules {
        max_line_bytes: 16 * 1024,
        max_path_bytes: 1024,
        path_policy: PathPolicy::Sanitize,
        now_secs: NOW_SECS,
    }
}

/// The three inputs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Input {
    /// Every line already normal, timestamps within a year of now: live traffic.
    AsIs,
    /// The same with timestamps two years old, forwarded with their `ts_far` note: the relaybench pool (2023) and
    /// replayed archives.
    AsIsFar,
    /// One line in ten needing a rewrite.
    Rewrite,
    /// Every line with Graphite tags (`;env=prod;dc=fra2;rack=r123`), about 84 bytes, valid as-is: the fast scan
    /// walks the tags' `;` and `=` as events.
    Tagged,
}

/// About 1 MiB of lines like `servers.fra2.host01234.disk.sda.read_bytes 812.07 1700000120`. Returns the bytes and
/// the number of lines.
fn input(kind: Input) -> (Vec<u8>, usize) {
    const METRICS: [&str; 5] = [
        "disk.sda.read_bytes",
        "cpu.user",
        "memory.free",
        "net.eth0.rx_packets",
        "load.1m",
    ];
    let mut input = Vec::with_capacity(INPUT_BYTES + 128);
    let mut n_lines = 0;
    while input.len() < INPUT_BYTES {
        let host = n_lines % 5000;
        let metric = METRICS[n_lines % METRICS.len()];
        let value = (n_lines * 7919) % 100_000;
        let timestamp = match kind {
            Input::AsIsFar => NOW_SECS - 2 * 365 * 86_400,
            Input::AsIs | Input::Rewrite | Input::Tagged => NOW_SECS,
        } + (n_lines / 1000) as i64;
        let rewrite_every_tenth = kind == Input::Rewrite;
        let line = match (rewrite_every_tenth, n_lines % 30) {
            (true, 0) => format!("servers.fra2.host{host:05}.{metric}\t{value}.07\t{timestamp}\n"),
            (true, 10) => format!("servers.fra2.host{host:05}.{metric} {value}.07 {timestamp}\r\n"),
            (true, 20) => {
                format!("servers.fra2.host{host:05}(a).{metric} {value}.07 {timestamp}\n")
            }
            _ if kind == Input::Tagged => format!(
                "servers.fra2.host{host:05}.{metric};env=prod;dc=fra2;rack=r{host:03} {value}.07 {timestamp}\n"
            ),
            _ => format!("servers.fra2.host{host:05}.{metric} {value}.07 {timestamp}\n"),
        };
        input.extend_from_slice(line.as_bytes());
        n_lines += 1;
    }
    (input, n_lines)
}

/// Which of the two decoders to drive.
#[derive(Clone, Copy)]
enum Scan {
    Plain,
    Fast,
}

/// Decodes the whole input the way a connection does; returns the lines forwarded so the work is not optimised away.
fn decode_all(input: &[u8], scan: Scan) -> u64 {
    let mut decoder = Decoder::new(rules());
    let mut batch = BatchBuilder::new(BATCH_LINES, BATCH_MAX_BYTES);
    let mut counts = LineCounts::default();
    let mut n_batch_bytes = 0;
    let mut start = 0;
    while start < input.len() {
        let end = (start + READ_BYTES).min(input.len());
        loop {
            let buf = &input[start..end];
            start += match scan {
                Scan::Plain => decoder.decode_plain(buf, &mut batch, &mut counts),
                Scan::Fast => decoder.decode(buf, &mut batch, &mut counts),
            };
            if !batch.is_full() {
                break;
            }
            if let Some(taken) = batch.take() {
                n_batch_bytes += taken.len();
            }
        }
    }
    if let Some(taken) = batch.take() {
        n_batch_bytes += taken.len();
    }
    std::hint::black_box(n_batch_bytes);
    counts.valid
}

fn decoder(c: &mut Criterion) {
    let mut group = c.benchmark_group("decoder");
    for (name, kind) in [
        ("as_is", Input::AsIs),
        ("as_is_ts_far", Input::AsIsFar),
        ("rewrite_10pct", Input::Rewrite),
        ("tagged", Input::Tagged),
    ] {
        let (input, n_lines) = input(kind);
        println!("{name}: {n_lines} lines, {} bytes", input.len());
        group.throughput(Throughput::Bytes(input.len() as u64));
        for (scan_name, scan) in [("plain", Scan::Plain), ("fast", Scan::Fast)] {
            assert_eq!(
                decode_all(&input, scan),
                n_lines as u64,
                "every line of the {name} input is valid"
            );
            group.bench_function(format!("{scan_name}/{name}"), |bencher| {
                bencher.iter(|| decode_all(&input, scan))
            });
        }
    }
    group.finish();
}

/// The macro's `pub fn` would need a doc comment at the crate root; in a private module it is not public API.
mod group {
    criterion::criterion_group!(benches, super::decoder);
}
criterion_main!(group::benches);
