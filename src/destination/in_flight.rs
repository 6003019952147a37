//! In flight: the batches a writer took from its queue and the destination has not yet acknowledged.
//!
//! The writer appends batches taken from the queue, hands their bytes to the kernel from the front ([`InFlight::advance`]
//! after each write), and learns from the kernel how much of what it wrote the destination's kernel acknowledged
//! ([`InFlight::acknowledge`]). Acknowledged lines leave; when the connection fails, everything left goes back to the
//! head of the queue ([`InFlight::hand_back`]): the lines never written, the line cut by the failed write, and the
//! lines written but unacknowledged, which a black-holed path or a dead host would otherwise lose. Only those last ones
//! can reach the destination twice.
//!
//! Invariants: the batches are in queue order and the first starts at a line boundary (a batch is only ever split
//! after a whole line), so whatever is handed back is whole lines; `n_written <= n_bytes`; a line leaves only once
//! the destination's kernel acknowledged all of it. Pure bookkeeping: nothing here does I/O.

use std::collections::VecDeque;
use std::io::IoSlice;

use crate::batch::Batch;

/// Batches taken from the queue and not yet acknowledged, with how much of them was handed to the kernel.
#[derive(Debug, Default)]
pub struct InFlight {
    batches: VecDeque<Batch>,
    /// Bytes of all `batches`.
    n_bytes: usize,
    /// Bytes from the front handed to the kernel.
    n_written: usize,
    /// Index in `batches` of the first batch not wholly written (`batches.len()` when all are).
    next_batch: usize,
    /// Bytes of `batches[next_batch]` already written; always less than its length.
    written_in_next: usize,
}

impl InFlight {
    /// Nothing in flight.
    pub fn new() -> InFlight {
        InFlight::default()
    }

    /// Appends batches taken from the queue, in order, after those already in flight.
    pub fn extend(&mut self, batches: impl IntoIterator<Item = Batch>) {
        for batch in batches {
            self.n_bytes += batch.len();
            self.batches.push_back(batch);
        }
    }

    /// True when nothing is in flight: every line taken from the queue was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// True while some taken bytes were not yet handed to the kernel.
    pub fn has_unwritten(&self) -> bool {
        self.n_written < self.n_bytes
    }

    /// Bytes handed to the kernel and not yet acknowledged as far as this bookkeeping knows: the kernel's own count
    /// of unacknowledged bytes is at most this.
    pub fn n_written(&self) -> usize {
        self.n_written
    }

    /// Bytes in flight, written or not.
    pub fn n_bytes(&self) -> usize {
        self.n_bytes
    }

    /// The bytes not yet written, as at most `max_slices` slices for one vectored write.
    pub fn unwritten(&self, max_slices: usize) -> Vec<IoSlice<'_>> {
        let mut slices = Vec::with_capacity((self.batches.len() - self.next_batch).min(max_slices));
        for (index, batch) in self
            .batches
            .iter()
            .skip(self.next_batch)
            .take(max_slices)
            .enumerate()
        {
            let skip = if index == 0 { self.written_in_next } else { 0 };
            slices.push(IoSlice::new(&batch.bytes()[skip..]));
        }
        slices
    }

    /// Records that the kernel took the next `n_bytes` unwritten bytes.
    pub fn advance(&mut self, n_bytes: usize) {
        debug_assert!(self.n_written + n_bytes <= self.n_bytes);
        self.n_written += n_bytes;
        let mut remaining = n_bytes;
        while remaining > 0 {
            let left_in_next = self.batches[self.next_batch].len() - self.written_in_next;
            if remaining < left_in_next {
                self.written_in_next += remaining;
                return;
            }
            remaining -= left_in_next;
            self.next_batch += 1;
            self.written_in_next = 0;
        }
    }

    /// Records that the destination acknowledged the first `n_acked` bytes in flight (at most what was written):
    /// moves the lines wholly within them to `acknowledged`, splitting a batch after its last acknowledged line. A
    /// line partly acknowledged stays.
    pub fn acknowledge(&mut self, n_acked: usize, acknowledged: &mut Vec<Batch>) {
        let mut n_acked = n_acked.min(self.n_written);
        while let Some(front) = self.batches.front() {
            if front.len() <= n_acked {
                n_acked -= front.len();
                self.remove_front_bytes(front.len());
                // A batch wholly acknowledged was wholly written, so the cursor is past it.
                self.next_batch -= 1;
                acknowledged.extend(self.batches.pop_front());
                continue;
            }
            if let Some((head, tail)) = front.split_at_line(n_acked) {
                self.remove_front_bytes(head.len());
                if self.next_batch == 0 {
                    self.written_in_next -= head.len();
                }
                self.batches[0] = tail;
                acknowledged.push(head);
            }
            return;
        }
    }

    /// Moves every batch to `out`, in order, to go back to the head of the queue, and returns how many of their
    /// lines had been wholly written: those the destination may already have, and so may see twice.
    pub fn hand_back(&mut self, out: &mut Vec<Batch>) -> u64 {
        let mut n_lines_written: u64 = self
            .batches
            .iter()
            .take(self.next_batch)
            .map(|batch| u64::from(batch.n_lines()))
            .sum();
        if let Some(next) = self.batches.get(self.next_batch) {
            let written = &next.bytes()[..self.written_in_next];
            n_lines_written += memchr::memchr_iter(b'\n', written).count() as u64;
        }
        out.extend(self.batches.drain(..));
        *self = InFlight::default();
        n_lines_written
    }

    fn remove_front_bytes(&mut self, n_bytes: usize) {
        self.n_bytes -= n_bytes;
        self.n_written -= n_bytes;
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn batch(text: &str) -> Batch {
        Batch::new(
            Bytes::copy_from_slice(text.as_bytes()),
            text.matches('\n').count() as u32,
        )
    }

    fn texts(batches: &[Batch]) -> Vec<String> {
        batches
            .iter()
            .map(|batch| String::from_utf8(batch.bytes().to_vec()).unwrap())
            .collect()
    }

    fn unwritten_text(in_flight: &InFlight) -> String {
        in_flight
            .unwritten(usize::MAX)
            .iter()
            .map(|slice| String::from_utf8(slice.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn writes_continue_where_a_short_write_stopped() {
        let mut in_flight = InFlight::new();
        in_flight.extend([batch("a 1 1\n"), batch("b 2 2\nc 3 3\n")]);
        in_flight.advance(3);
        assert_eq!(unwritten_text(&in_flight), " 1\nb 2 2\nc 3 3\n");
        in_flight.advance(3);
        assert_eq!(unwritten_text(&in_flight), "b 2 2\nc 3 3\n");
        assert_eq!(in_flight.unwritten(1).len(), 1);
        in_flight.advance(12);
        assert!(!in_flight.has_unwritten());
        assert_eq!(in_flight.n_written(), 18);
    }

    #[test]
    fn acknowledged_lines_leave_and_a_batch_is_split_after_its_last_acknowledged_line() {
        let mut in_flight = InFlight::new();
        in_flight.extend([batch("a 1 1\n"), batch("b 2 2\nc 3 3\n"), batch("d 4 4\n")]);
        in_flight.advance(15);
        let mut acknowledged = Vec::new();
        in_flight.acknowledge(14, &mut acknowledged);
        assert_eq!(texts(&acknowledged), ["a 1 1\n", "b 2 2\n"]);
        assert_eq!(unwritten_text(&in_flight), " 3\nd 4 4\n");
        assert_eq!(in_flight.n_written(), 3);
        // Acknowledgements beyond what was written are not believed.
        acknowledged.clear();
        in_flight.acknowledge(100, &mut acknowledged);
        assert_eq!(texts(&acknowledged), [] as [&str; 0]);
        in_flight.advance(9);
        in_flight.acknowledge(100, &mut acknowledged);
        assert_eq!(texts(&acknowledged), ["c 3 3\n", "d 4 4\n"]);
        assert!(in_flight.is_empty());
    }

    #[test]
    fn hand_back_returns_everything_unacknowledged_and_counts_the_lines_written() {
        let mut in_flight = InFlight::new();
        in_flight.extend([batch("a 1 1\n"), batch("b 2 2\nc 3 3\n"), batch("d 4 4\n")]);
        in_flight.advance(16);
        let mut acknowledged = Vec::new();
        in_flight.acknowledge(8, &mut acknowledged);
        let mut handed_back = Vec::new();
        // `b` was written; `c` only in part, `d` not at all.
        assert_eq!(in_flight.hand_back(&mut handed_back), 1);
        assert_eq!(texts(&handed_back), ["b 2 2\nc 3 3\n", "d 4 4\n"]);
        assert!(in_flight.is_empty());
        assert!(!in_flight.has_unwritten());
    }
}
