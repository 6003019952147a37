//! The stages after the decoder, each on its own: filling and freezing batches, a destination queue's push and pop,
//! and the writer's vectored writes. Together with `benches/decoder.rs` they cover a line's whole path through
//! polymur's own code; what is left in a whole-process run is the kernel's.
//!
//! Run with `cargo bench --bench pipeline -- --warm-up-time 1 --measurement-time 3`.
//!
//! Every bench moves about 1 MiB of 64-byte lines with the default sizes (16 KiB batches, 256 KiB writer rounds) and
//! reports `Throughput::Bytes`, so the figures compare with the decoder's; divide the time per iteration by the
//! printed number of lines for nanoseconds per line.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_main, Criterion, Throughput};
use polymur::batch::{Batch, BatchBuilder};
use polymur::config::OverflowPolicy;
use polymur::destination::writer::{write_all_batches, WRITE_CHUNK_BYTES};
use polymur::destination::{Pushed, Queue, QueueLimits};
use polymur::stats::DestinationStats;
use tokio::io::AsyncWrite;
use tokio::sync::Notify;

const INPUT_BYTES: usize = 1 << 20;
/// The default `listen.batch_lines` and `listen.batch_max_bytes`.
const BATCH_LINES: usize = 4096;
const BATCH_MAX_BYTES: usize = 16 * 1024;
/// Lines per run handed to the builder: the decoder copies runs of as-is lines, ended by a line it rewrites or by
/// the end of a read.
const RUN_LINES: usize = 32;

/// About 1 MiB of lines of 64 bytes, and how many.
fn lines() -> (Vec<u8>, usize) {
    let mut input = Vec::with_capacity(INPUT_BYTES + 64);
    let mut n_lines = 0;
    while input.len() < INPUT_BYTES {
        let line = format!(
            "servers.fra2.host{:05}.disk.sda.read_bytes {:>6}.07 1700000120\n",
            n_lines % 5000,
            n_lines % 100_000
        );
        input.extend_from_slice(line.as_bytes());
        n_lines += 1;
    }
    (input, n_lines)
}

/// The input cut into runs of [`RUN_LINES`] lines, as (bytes, line count).
fn runs(input: &[u8]) -> Vec<(&[u8], u32)> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut n_lines = 0;
    for (at, &byte) in input.iter().enumerate() {
        if byte == b'\n' {
            n_lines += 1;
            if n_lines == RUN_LINES as u32 {
                runs.push((&input[start..=at], n_lines));
                start = at + 1;
                n_lines = 0;
            }
        }
    }
    if n_lines > 0 {
        runs.push((&input[start..], n_lines));
    }
    runs
}

/// Fills batches from runs as a connection does (taking each full one) and returns the batches.
fn build_batches(runs: &[(&[u8], u32)]) -> Vec<Batch> {
    let mut builder = BatchBuilder::new(BATCH_LINES, BATCH_MAX_BYTES);
    let mut batches = Vec::new();
    for &(run, n_lines) in runs {
        builder.push_lines(run, n_lines);
        if builder.is_full() {
            batches.extend(builder.take());
        }
    }
    batches.extend(builder.take());
    batches
}

fn queue(max_bytes: usize) -> Queue {
    let limits = QueueLimits {
        max_lines: usize::MAX,
        max_bytes,
        overflow: OverflowPolicy::DropNewest,
    };
    Queue::new(
        limits,
        DestinationStats::new("bench:2003"),
        Arc::new(Notify::new()),
    )
}

/// A stream that takes every byte of every vectored write at once, like a socket with room: what is measured is the
/// writer's own work per batch, not the kernel's copy.
struct Takes {
    n_bytes: u64,
}

impl AsyncWrite for Takes {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.n_bytes += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n_bytes: usize = bufs.iter().map(|buf| buf.len()).sum();
        self.n_bytes += n_bytes as u64;
        Poll::Ready(Ok(n_bytes))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn pipeline(c: &mut Criterion) {
    let (input, n_lines) = lines();
    let runs = runs(&input);
    let batches = build_batches(&runs);
    println!(
        "{n_lines} lines, {} bytes, {} batches",
        input.len(),
        batches.len()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Bytes(input.len() as u64));

    // Copying runs into a builder, freezing full batches (one allocation each) and dropping them.
    group.bench_function("batch/fill_and_take", |bencher| {
        bencher.iter(|| build_batches(&runs).len())
    });

    // The router's part and the writer's bookkeeping for 1 and 3 destinations: push every batch (a refcount per
    // queue), then pop rounds of 256 KiB and mark them written, as a writer does.
    for n_queues in [1, 3] {
        let queues: Vec<Queue> = (0..n_queues).map(|_| queue(64 << 20)).collect();
        group.bench_function(format!("queue/push_pop_complete/{n_queues}"), |bencher| {
            bencher.iter(|| {
                for batch in &batches {
                    for queue in &queues {
                        assert_eq!(queue.push(batch.clone()), Pushed::Queued);
                    }
                }
                runtime.block_on(async {
                    let mut popped = Vec::new();
                    for queue in &queues {
                        let mut n_popped = 0;
                        while n_popped < batches.len() {
                            assert!(queue.pop_into(&mut popped, WRITE_CHUNK_BYTES).await);
                            n_popped += popped.len();
                            queue.complete(&popped);
                            popped.clear();
                        }
                    }
                });
            })
        });
    }

    // The writer's vectored write loop over rounds of 256 KiB, into a stream that takes everything.
    let rounds: Vec<&[Batch]> = batches
        .chunks(WRITE_CHUNK_BYTES / BATCH_MAX_BYTES)
        .collect();
    group.bench_function("writer/write_all_batches", |bencher| {
        bencher.iter(|| {
            runtime.block_on(async {
                let mut stream = Takes { n_bytes: 0 };
                for round in &rounds {
                    write_all_batches(&mut stream, round, Duration::from_secs(5))
                        .await
                        .expect("the stream takes everything");
                }
                assert_eq!(stream.n_bytes, input.len() as u64);
            })
        })
    });
    group.finish();

    // A batch being shared by a destination's queue is one refcount; this is its price, per batch.
    let one = Bytes::from(input[..BATCH_MAX_BYTES].to_vec());
    c.bench_function("pipeline/batch/clone_for_a_destination", |bencher| {
        bencher.iter(|| std::hint::black_box(one.clone()))
    });
}

/// The macro's `pub fn` would need a doc comment at the crate root; in a private module it is not public API.
mod group {
    criterion::criterion_group!(benches, super::pipeline);
}
criterion_main!(group::benches);
