//! Batches: immutable buffers of whole, validated, LF-terminated lines.
//!
//! A connection's decoder appends valid lines to a [`BatchBuilder`]; when it is full, when its connection has no more
//! bytes ready, or after `flush_interval`, the builder is frozen into a [`Batch`] and handed to the router. A
//! [`Batch`] is self-contained (bytes plus line count) so it can be shared by refcount between destination queues,
//! written to a socket unchanged, and later written to the disk spool as one record. Invariant: a batch's bytes are
//! exactly `n_lines` complete lines, each ending in `\n`, and a batch is never empty.
//!
//! Memory: a batch knows the bytes of memory it keeps alive ([`Batch::memory_bytes`]), and that, not its length, is
//! what queues count against `queue_max_bytes`. A builder fills one large allocation; a batch frozen from it that
//! holds less than half of `batch_max_bytes` is copied out into an allocation of its own length and the builder keeps
//! its buffer, so a one-line connection's batch does not keep a 16 KiB allocation alive in a queue. A larger batch is
//! split off without a copy and is charged the whole allocation it may pin.

use std::num::NonZeroU64;

use bytes::{Bytes, BytesMut};

/// Memory a queued batch keeps alive beyond its buffer: its slot in a queue's ring buffer (48 bytes, and a
/// `VecDeque` may have twice the slots it uses), the allocator's header and rounding of the buffer, and the refcount
/// block `bytes` allocates when a batch is first shared between queues. Measured: one-line batches of 30 bytes
/// queued for a dead destination grow RSS by 1.0 byte per byte counted with this charge (`benches/memory/`).
pub const BATCH_OVERHEAD_BYTES: usize = 128;

/// Whole validated lines, shared by every destination queue that holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    bytes: Bytes,
    n_lines: u32,
    /// Bytes of memory the batch keeps alive, [`BATCH_OVERHEAD_BYTES`] included.
    memory_bytes: u32,
    /// Where its lines sit in one destination's spool: the sequence number of its first line, plus one (so that
    /// `None` costs no space). Each queue holds its own copy of a shared batch, so the number is per destination.
    spool_seq: Option<NonZeroU64>,
}

impl Batch {
    /// Wraps bytes that hold exactly `n_lines` LF-terminated lines.
    ///
    /// The batch is charged its length plus [`BATCH_OVERHEAD_BYTES`]: right for bytes that own an allocation of
    /// their length (`Bytes::copy_from_slice`, a `Vec`), or a slice of a larger buffer that other batches share.
    ///
    /// # Panics
    ///
    /// In debug builds, if the bytes do not end in `\n` or `n_lines` is 0.
    pub fn new(bytes: Bytes, n_lines: u32) -> Batch {
        let memory_bytes = bytes.len() + BATCH_OVERHEAD_BYTES;
        Batch::with_memory(bytes, n_lines, memory_bytes)
    }

    /// Wraps bytes that keep `allocation_bytes` of memory alive (a buffer split off a larger allocation).
    fn with_memory(bytes: Bytes, n_lines: u32, allocation_bytes: usize) -> Batch {
        debug_assert!(n_lines > 0 && bytes.last() == Some(&b'\n'));
        debug_assert_eq!(memchr::memchr_iter(b'\n', &bytes).count(), n_lines as usize);
        let memory_bytes = u32::try_from(allocation_bytes.max(bytes.len() + BATCH_OVERHEAD_BYTES))
            .unwrap_or(u32::MAX);
        Batch {
            bytes,
            n_lines,
            memory_bytes,
            spool_seq: None,
        }
    }

    /// The same lines, marked as stored in a destination's spool with `first_seq` as their first line's sequence
    /// number: acknowledging them lets the spool forget them.
    pub fn with_spool_seq(mut self, first_seq: u64) -> Batch {
        self.spool_seq = NonZeroU64::new(first_seq.wrapping_add(1));
        self
    }

    /// The sequence number of the first line in the destination's spool, if the batch is stored there.
    pub fn spool_seq(&self) -> Option<u64> {
        self.spool_seq.map(|seq| seq.get() - 1)
    }

    /// The lines, LF-terminated.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// How many lines the batch holds.
    pub fn n_lines(&self) -> u32 {
        self.n_lines
    }

    /// Size of its lines in bytes (what is written; queues count [`Batch::memory_bytes`]).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Bytes of memory the batch keeps alive while it is queued: what queues count against `queue_max_bytes`.
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes as usize
    }

    /// Always false: a batch holds at least one line. Present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Splits the batch after the last line that ends within its first `n_bytes` bytes: the whole lines of that
    /// prefix, and the rest, sharing this batch's bytes. `None` when no line ends within the prefix, or when every
    /// line does (there is nothing to split off).
    ///
    /// The writer uses it when the destination acknowledged part of a batch: the acknowledged lines leave the queue,
    /// the rest stays to be resent if the connection fails.
    pub fn split_at_line(&self, n_bytes: usize) -> Option<(Batch, Batch)> {
        let prefix = &self.bytes[..n_bytes.min(self.len())];
        let n_head_bytes = memchr::memrchr(b'\n', prefix)? + 1;
        if n_head_bytes == self.len() {
            return None;
        }
        let n_head_lines = memchr::memchr_iter(b'\n', &prefix[..n_head_bytes]).count() as u32;
        // The two parts share this batch's memory and must add up to it exactly, since the queue counted it once and
        // takes each part out of its count: the head is charged its bytes, the tail keeps the rest (its bytes, the
        // bookkeeping and any allocation it still pins).
        let head_memory_bytes = n_head_bytes as u32;
        let head = Batch {
            bytes: self.bytes.slice(..n_head_bytes),
            n_lines: n_head_lines,
            memory_bytes: head_memory_bytes,
            spool_seq: self.spool_seq,
        };
        let tail = Batch {
            bytes: self.bytes.slice(n_head_bytes..),
            n_lines: self.n_lines - n_head_lines,
            memory_bytes: self.memory_bytes - head_memory_bytes,
            spool_seq: self
                .spool_seq
                .and_then(|seq| seq.checked_add(u64::from(n_head_lines))),
        };
        debug_assert_eq!(
            memchr::memchr_iter(b'\n', &tail.bytes).count(),
            tail.n_lines as usize
        );
        Some((head, tail))
    }
}

/// A batch being filled by one connection.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    n_lines: u32,
    max_lines: u32,
    max_bytes: usize,
    /// Size of the allocation `buf` writes into, as reserved: what a batch split off it may keep alive.
    allocation_bytes: usize,
}

impl BatchBuilder {
    /// An empty builder that reports [`BatchBuilder::is_full`] at `max_lines` lines or `max_bytes` bytes.
    pub fn new(max_lines: usize, max_bytes: usize) -> BatchBuilder {
        BatchBuilder {
            buf: BytesMut::new(),
            n_lines: 0,
            max_lines: u32::try_from(max_lines).unwrap_or(u32::MAX).max(1),
            max_bytes: max_bytes.max(1),
            allocation_bytes: 0,
        }
    }

    /// Appends one line given without its LF; the LF is added.
    pub fn push_line(&mut self, line: &[u8]) {
        self.reserve(line.len() + 1);
        self.buf.extend_from_slice(line);
        self.buf.extend_from_slice(b"\n");
        self.n_lines += 1;
    }

    /// Appends `n_lines` consecutive lines that are already LF-terminated, in one copy.
    pub fn push_lines(&mut self, lines: &[u8], n_lines: u32) {
        debug_assert_eq!(memchr::memchr_iter(b'\n', lines).count(), n_lines as usize);
        self.reserve(lines.len());
        self.buf.extend_from_slice(lines);
        self.n_lines += n_lines;
    }

    /// Gives the buffer for a caller that writes a normalised line itself; it must end the line with `\n` and then
    /// call [`BatchBuilder::commit_line`].
    pub fn buffer(&mut self) -> &mut BytesMut {
        self.reserve(256);
        &mut self.buf
    }

    /// Counts a line written through [`BatchBuilder::buffer`].
    pub fn commit_line(&mut self) {
        debug_assert_eq!(self.buf.last(), Some(&b'\n'));
        self.n_lines += 1;
    }

    /// Bytes a builder may still take before it is full (0 when full).
    pub fn remaining_bytes(&self) -> usize {
        self.max_bytes.saturating_sub(self.buf.len())
    }

    /// Lines a builder may still take before it is full (0 when full).
    pub fn remaining_lines(&self) -> u32 {
        self.max_lines.saturating_sub(self.n_lines)
    }

    /// True when the batch has reached its line or byte limit and should be handed on.
    pub fn is_full(&self) -> bool {
        self.n_lines >= self.max_lines || self.buf.len() >= self.max_bytes
    }

    /// Lines in the batch so far.
    pub fn n_lines(&self) -> u32 {
        self.n_lines
    }

    /// True when no line has been added since the last [`BatchBuilder::take`].
    pub fn is_empty(&self) -> bool {
        self.n_lines == 0
    }

    /// Freezes the lines added so far into a [`Batch`], or `None` if there are none. The builder starts empty.
    ///
    /// A batch of less than half of `max_bytes` is copied into an allocation of its own length and the builder
    /// reuses its buffer: a connection that sends one line must not leave a whole batch allocation in a queue. A
    /// larger batch is split off without a copy (the common case under load, where batches are full) and charged the
    /// allocation it shares with the builder, so a queue's byte count never falls short of the memory it pins.
    pub fn take(&mut self) -> Option<Batch> {
        if self.n_lines == 0 {
            return None;
        }
        let n_lines = std::mem::take(&mut self.n_lines);
        if self.buf.len() < self.max_bytes / 2 {
            let bytes = Bytes::copy_from_slice(&self.buf);
            self.buf.clear();
            return Some(Batch::new(bytes, n_lines));
        }
        let bytes = self.buf.split().freeze();
        Some(Batch::with_memory(bytes, n_lines, self.allocation_bytes))
    }

    fn reserve(&mut self, additional: usize) {
        if self.buf.capacity() - self.buf.len() < additional {
            // A fresh allocation of a whole batch: the previous one is owned by the frozen batches now.
            self.buf.reserve(additional.max(self.max_bytes + 512));
            self.allocation_bytes = self.buf.capacity() + BATCH_OVERHEAD_BYTES;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_counts_lines_and_fills_at_either_limit() {
        let mut builder = BatchBuilder::new(3, 1024);
        builder.push_line(b"a 1 1");
        builder.push_lines(b"b 2 2\nc 3 3\n", 2);
        assert!(builder.is_full());
        let batch = builder.take().unwrap();
        assert_eq!(batch.n_lines(), 3);
        assert_eq!(&batch.bytes()[..], b"a 1 1\nb 2 2\nc 3 3\n");
        assert!(builder.take().is_none());

        let mut builder = BatchBuilder::new(100, 10);
        builder.push_line(b"abcdefghij");
        assert!(builder.is_full());
    }

    #[test]
    fn split_at_line_cuts_after_the_last_line_within_the_prefix() {
        let batch = Batch::new(Bytes::from_static(b"a 1 1\nbb 2 2\nc 3 3\n"), 3);
        // `split_at_line` checks each half's line count in debug builds.
        let check = |n_bytes: usize, expected: Option<(&str, &str)>| {
            let text = |half: &Batch| String::from_utf8(half.bytes().to_vec()).unwrap();
            let split = batch.split_at_line(n_bytes);
            if let Some((head, tail)) = &split {
                // The queue counted the batch's memory once and takes each half out of it.
                assert_eq!(
                    head.memory_bytes() + tail.memory_bytes(),
                    batch.memory_bytes()
                );
                assert!(tail.memory_bytes() >= tail.len() + BATCH_OVERHEAD_BYTES);
            }
            let split = split.as_ref().map(|(head, tail)| (text(head), text(tail)));
            let expected = expected.map(|(head, tail)| (head.to_string(), tail.to_string()));
            assert_eq!(split, expected, "n_bytes {n_bytes}");
        };
        check(0, None);
        check(5, None);
        check(6, Some(("a 1 1\n", "bb 2 2\nc 3 3\n")));
        check(12, Some(("a 1 1\n", "bb 2 2\nc 3 3\n")));
        check(13, Some(("a 1 1\nbb 2 2\n", "c 3 3\n")));
        check(18, Some(("a 1 1\nbb 2 2\n", "c 3 3\n")));
        check(19, None);
        check(1000, None);
    }

    #[test]
    fn taken_batches_do_not_share_later_writes() {
        let mut builder = BatchBuilder::new(100, 1024);
        builder.push_line(b"a 1 1");
        let first = builder.take().unwrap();
        builder.push_line(b"b 2 2");
        let second = builder.take().unwrap();
        assert_eq!(&first.bytes()[..], b"a 1 1\n");
        assert_eq!(&second.bytes()[..], b"b 2 2\n");
    }

    #[test]
    fn a_small_batch_is_copied_out_and_charged_its_length_so_it_pins_no_batch_allocation() {
        let mut builder = BatchBuilder::new(4096, 16 * 1024);
        builder.push_line(b"one.line 1 1700000000");
        let batch = builder.take().unwrap();
        assert_eq!(batch.len(), 22);
        assert_eq!(batch.memory_bytes(), 22 + BATCH_OVERHEAD_BYTES);
        // The builder kept its buffer: the next line needs no new allocation.
        let capacity = builder.buf.capacity();
        assert!(capacity >= 16 * 1024);
        builder.push_line(b"next.line 2 1700000000");
        assert_eq!(builder.buf.capacity(), capacity);
    }

    #[test]
    fn a_large_batch_is_split_off_without_a_copy_and_charged_the_allocation_it_pins() {
        let mut builder = BatchBuilder::new(4096, 1024);
        let line = [b'x'; 99];
        for _ in 0..6 {
            builder.push_line(&line);
        }
        let batch = builder.take().unwrap();
        assert_eq!(batch.len(), 600);
        assert!(
            batch.memory_bytes() >= 1024 + 512,
            "charged {} for a split-off batch",
            batch.memory_bytes()
        );
    }
}
