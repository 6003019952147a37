//! One destination's queue: batches waiting for its writer, bounded in lines and in bytes.
//!
//! The router pushes shared batches in; the destination's writer takes many at once, and hands back what the
//! destination did not acknowledge, at the head, in order (at-least-once). Lines count as queued until the writer
//! reports them acknowledged, so the bounds cover batches in flight too and `queued_lines` in stats is exact. A small priority lane
//! carries the relay's self-metrics, which must get out even when user traffic fills the queue.
//!
//! Invariants: the queue never holds more than its byte and line bounds (the priority lane has its own small bound;
//! batches handed back were already admitted and may exceed the bound only by what was in flight), every batch it
//! refuses or evicts is counted as dropped, and nothing here does I/O or blocks a thread.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::batch::Batch;
use crate::config::OverflowPolicy;
use crate::stats::{DestinationStats, DropReason};

/// Bytes the priority lane (self-metrics) may hold before its oldest batch is dropped.
pub const PRIORITY_MAX_BYTES: usize = 1024 * 1024;

/// The bounds and policy of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most lines queued (including in flight).
    pub max_lines: usize,
    /// Most bytes queued (including in flight).
    pub max_bytes: usize,
    /// What a push does when the batch does not fit.
    pub overflow: OverflowPolicy,
}

/// What [`Queue::push`] did with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// The batch is queued.
    Queued,
    /// The batch is queued; older batches were dropped, and counted, to make room (`drop_oldest`).
    QueuedEvicting,
    /// The batch did not fit and was dropped (`drop_newest`).
    Dropped,
    /// The batch does not fit and the policy is `block`: wait with [`Queue::space_available`] and push again.
    Full(Batch),
    /// The queue is closed: the relay is shutting down.
    Closed,
}

/// A destination's bounded queue, shared by the router (producers) and the destination's writer (consumer).
#[derive(Debug)]
pub struct Queue {
    state: Mutex<State>,
    limits: QueueLimits,
    stats: Arc<DestinationStats>,
    /// Woken when batches arrive or the queue closes; the writer waits on it.
    data_ready: Notify,
    /// Cancelled when the queue closes, so a writer that is not waiting for data (connecting, backing off) sees it.
    closed: CancellationToken,
    /// Shared by every queue and the router: woken when a writer frees room, for `block` senders.
    room: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    batches: VecDeque<Batch>,
    priority: VecDeque<Batch>,
    priority_bytes: usize,
    /// Lines and bytes admitted and not yet acknowledged by the destination (queued plus in flight).
    n_lines: usize,
    n_bytes: usize,
    closed: bool,
}

impl Queue {
    /// An empty queue reporting into `stats`; under the `block` policy `room` is woken whenever its writer frees room.
    pub fn new(limits: QueueLimits, stats: Arc<DestinationStats>, room: Arc<Notify>) -> Queue {
        Queue {
            state: Mutex::new(State::default()),
            limits,
            stats,
            data_ready: Notify::new(),
            closed: CancellationToken::new(),
            room,
        }
    }

    /// The destination's counters.
    pub fn stats(&self) -> &Arc<DestinationStats> {
        &self.stats
    }

    /// Adds a batch at the tail, applying the overflow policy if it does not fit. Dropped lines are counted here,
    /// including those of a batch refused because the queue is closed.
    pub fn push(&self, batch: Batch) -> Pushed {
        let n_lines = batch.n_lines() as usize;
        let n_bytes = batch.memory_bytes();
        let mut state = self.state.lock();
        if state.closed {
            drop(state);
            self.stats.add_dropped(DropReason::Shutdown, n_lines as u64);
            return Pushed::Closed;
        }
        let mut pushed = Pushed::Queued;
        if !self.fits(&state, n_lines, n_bytes) {
            match self.limits.overflow {
                OverflowPolicy::DropNewest => {
                    drop(state);
                    self.stats
                        .add_dropped(DropReason::QueueFull, n_lines as u64);
                    return Pushed::Dropped;
                }
                OverflowPolicy::Block => return Pushed::Full(batch),
                OverflowPolicy::DropOldest => {
                    let mut evicted = Vec::new();
                    while !self.fits(&state, n_lines, n_bytes) {
                        let Some(oldest) = state.batches.pop_front() else {
                            break;
                        };
                        state.n_lines -= oldest.n_lines() as usize;
                        state.n_bytes -= oldest.memory_bytes();
                        evicted.push(oldest);
                    }
                    if !self.fits(&state, n_lines, n_bytes) {
                        // What is in flight leaves no room even with the queue emptied: evicting would lose those
                        // batches for nothing, so they go back and only the new batch is dropped.
                        for oldest in evicted.into_iter().rev() {
                            state.n_lines += oldest.n_lines() as usize;
                            state.n_bytes += oldest.memory_bytes();
                            state.batches.push_front(oldest);
                        }
                        drop(state);
                        self.stats
                            .add_dropped(DropReason::QueueFull, n_lines as u64);
                        return Pushed::Dropped;
                    }
                    let evicted_lines: u64 = evicted
                        .iter()
                        .map(|oldest| u64::from(oldest.n_lines()))
                        .sum();
                    self.stats.add_dropped(DropReason::QueueFull, evicted_lines);
                    pushed = Pushed::QueuedEvicting;
                }
            }
        }
        state.n_lines += n_lines;
        state.n_bytes += n_bytes;
        state.batches.push_back(batch);
        self.publish_gauges(&state);
        drop(state);
        self.data_ready.notify_one();
        pushed
    }

    /// Adds a batch to the priority lane, which the writer empties first and which ignores the queue's bounds (it has
    /// its own small one: its oldest batches are dropped, and counted, past [`PRIORITY_MAX_BYTES`]).
    pub fn push_priority(&self, batch: Batch) {
        let mut dropped_lines = 0u64;
        {
            let mut state = self.state.lock();
            if state.closed {
                drop(state);
                self.stats
                    .add_dropped(DropReason::Shutdown, u64::from(batch.n_lines()));
                return;
            }
            state.priority_bytes += batch.memory_bytes();
            state.n_lines += batch.n_lines() as usize;
            state.n_bytes += batch.memory_bytes();
            state.priority.push_back(batch);
            while state.priority_bytes > PRIORITY_MAX_BYTES && state.priority.len() > 1 {
                let Some(oldest) = state.priority.pop_front() else {
                    break;
                };
                state.priority_bytes -= oldest.memory_bytes();
                state.n_lines -= oldest.n_lines() as usize;
                state.n_bytes -= oldest.memory_bytes();
                dropped_lines += u64::from(oldest.n_lines());
            }
            self.publish_gauges(&state);
        }
        if dropped_lines > 0 {
            self.stats.add_dropped(DropReason::QueueFull, dropped_lines);
        }
        self.data_ready.notify_one();
    }

    /// Resolves when a writer frees room (in any queue sharing `room`) or the queue closes. Register interest before
    /// checking, as with [`Notify::notified`].
    pub fn space_available(&self) -> tokio::sync::futures::Notified<'_> {
        self.room.notified()
    }

    /// Moves batches into `out` (priority lane first, then up to about `max_bytes`, at least one), waiting until
    /// there is one. Returns `false` when the queue is closed and empty: the writer is done.
    pub async fn pop_into(&self, out: &mut Vec<Batch>, max_bytes: usize) -> bool {
        loop {
            let notified = self.data_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock();
                if !state.priority.is_empty() || !state.batches.is_empty() {
                    let mut n_bytes = 0;
                    while let Some(batch) = state.priority.pop_front() {
                        state.priority_bytes -= batch.memory_bytes();
                        n_bytes += batch.len();
                        out.push(batch);
                    }
                    while n_bytes < max_bytes {
                        let Some(batch) = state.batches.pop_front() else {
                            break;
                        };
                        n_bytes += batch.len();
                        out.push(batch);
                    }
                    return true;
                }
                if state.closed {
                    return false;
                }
            }
            notified.await;
        }
    }

    /// Returns batches the writer could not write to the head of the queue, in their order. They stay counted as
    /// queued.
    pub fn unpop(&self, batches: &mut Vec<Batch>) {
        if batches.is_empty() {
            return;
        }
        let mut state = self.state.lock();
        for batch in batches.drain(..).rev() {
            state.batches.push_front(batch);
        }
        drop(state);
        self.data_ready.notify_one();
    }

    /// Records that the destination acknowledged these batches (whole batches, or the acknowledged lines split off
    /// one): they leave the queue's accounting and count as sent.
    pub fn complete(&self, batches: &[Batch]) {
        let n_lines: usize = batches.iter().map(|batch| batch.n_lines() as usize).sum();
        let n_bytes: usize = batches.iter().map(Batch::len).sum();
        let n_memory_bytes: usize = batches.iter().map(Batch::memory_bytes).sum();
        {
            let mut state = self.state.lock();
            state.n_lines -= n_lines;
            state.n_bytes -= n_memory_bytes;
            self.publish_gauges(&state);
        }
        self.stats
            .sent_lines
            .fetch_add(n_lines as u64, Ordering::Relaxed);
        self.stats
            .sent_bytes
            .fetch_add(n_bytes as u64, Ordering::Relaxed);
        // Only `block` senders wait for any room; paced senders are woken by the destination's health when it
        // catches up (waking thousands of them on every acknowledgement would be a thundering herd).
        if self.limits.overflow == OverflowPolicy::Block {
            self.room.notify_waiters();
        }
    }

    /// Closes the queue to producers; the writer drains what is left and then sees the end.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.closed.cancel();
        self.data_ready.notify_one();
        self.room.notify_waiters();
    }

    /// Resolves when the queue has been closed.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    /// True once the queue is closed and every admitted line was acknowledged: the writer has nothing left to do.
    pub fn is_drained(&self) -> bool {
        let state = self.state.lock();
        state.closed && state.n_lines == 0
    }

    /// Empties the queue at the end of shutdown, counting what is left as dropped for [`DropReason::Shutdown`].
    /// Returns the number of lines dropped. Call only after the writer stopped.
    pub fn drop_remaining(&self) -> u64 {
        let mut state = self.state.lock();
        let n_lines = state.n_lines as u64;
        state.batches.clear();
        state.priority.clear();
        state.priority_bytes = 0;
        state.n_lines = 0;
        state.n_bytes = 0;
        state.closed = true;
        self.publish_gauges(&state);
        drop(state);
        self.stats.add_dropped(DropReason::Shutdown, n_lines);
        n_lines
    }

    /// Copies the queue's size into the stats gauges; called with the lock held, so they never run ahead or behind.
    fn publish_gauges(&self, state: &State) {
        self.stats
            .queued_lines
            .store(state.n_lines as i64, Ordering::Relaxed);
        self.stats
            .queued_bytes
            .store(state.n_bytes as i64, Ordering::Relaxed);
    }

    fn fits(&self, state: &State, n_lines: usize, n_bytes: usize) -> bool {
        // An empty queue always takes one batch, so a batch larger than the bound cannot wedge it.
        state.n_bytes == 0
            || (state.n_lines + n_lines <= self.limits.max_lines
                && state.n_bytes + n_bytes <= self.limits.max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::batch::BATCH_OVERHEAD_BYTES;

    /// The memory a queue charges for a batch of `n_bytes`.
    const fn charged(n_bytes: usize) -> usize {
        n_bytes + BATCH_OVERHEAD_BYTES
    }

    fn batch(text: &str) -> Batch {
        let n_lines = text.matches('\n').count() as u32;
        Batch::new(Bytes::copy_from_slice(text.as_bytes()), n_lines)
    }

    fn queue(max_lines: usize, max_bytes: usize, overflow: OverflowPolicy) -> Queue {
        Queue::new(
            QueueLimits {
                max_lines,
                max_bytes,
                overflow,
            },
            DestinationStats::new("test:1"),
            Arc::new(Notify::new()),
        )
    }

    fn dropped(queue: &Queue) -> u64 {
        queue.stats().dropped_total()
    }

    async fn pop_all(queue: &Queue) -> Vec<Batch> {
        let mut out = Vec::new();
        assert!(queue.pop_into(&mut out, usize::MAX).await);
        out
    }

    #[tokio::test]
    async fn drop_newest_refuses_the_batch_that_does_not_fit_and_counts_its_lines() {
        let queue = queue(3, 1024, OverflowPolicy::DropNewest);
        assert_eq!(queue.push(batch("a 1 1\nb 1 1\n")), Pushed::Queued);
        assert_eq!(queue.push(batch("c 1 1\nd 1 1\n")), Pushed::Dropped);
        assert_eq!(dropped(&queue), 2);
        assert_eq!(pop_all(&queue).await, vec![batch("a 1 1\nb 1 1\n")]);
    }

    #[tokio::test]
    async fn drop_oldest_evicts_from_the_head_to_make_room() {
        let queue = queue(100, 2 * charged(6), OverflowPolicy::DropOldest);
        queue.push(batch("a 1 1\n"));
        queue.push(batch("b 1 1\n"));
        assert_eq!(queue.push(batch("c 1 1\n")), Pushed::QueuedEvicting);
        assert_eq!(dropped(&queue), 1);
        assert_eq!(
            pop_all(&queue).await,
            vec![batch("b 1 1\n"), batch("c 1 1\n")]
        );
    }

    #[tokio::test]
    async fn drop_oldest_evicts_nothing_when_what_is_in_flight_leaves_no_room_anyway() {
        // Room for `a` in flight and `b`, not for `a` and `c`.
        let queue = queue(100, charged(6) + charged(2) + 4, OverflowPolicy::DropOldest);
        queue.push(batch("a 1 1\n"));
        let in_flight = pop_all(&queue).await;
        queue.push(batch("b\n"));
        assert_eq!(queue.push(batch("c 1 12\n")), Pushed::Dropped);
        assert_eq!(dropped(&queue), 1, "only the new batch is lost");
        queue.complete(&in_flight);
        assert_eq!(pop_all(&queue).await, vec![batch("b\n")]);
    }

    #[tokio::test]
    async fn block_hands_the_batch_back_until_the_writer_frees_room() {
        let queue = queue(100, charged(6), OverflowPolicy::Block);
        queue.push(batch("a 1 1\n"));
        let Pushed::Full(refused) = queue.push(batch("b 1 1\n")) else {
            panic!("expected Full")
        };
        let written = pop_all(&queue).await;
        queue.complete(&written);
        assert_eq!(queue.push(refused), Pushed::Queued);
        assert_eq!(dropped(&queue), 0);
    }

    #[tokio::test]
    async fn batches_in_flight_count_against_the_bound_and_unpop_restores_order() {
        let queue = queue(100, 2 * charged(6), OverflowPolicy::DropNewest);
        queue.push(batch("a 1 1\n"));
        queue.push(batch("b 1 1\n"));
        let mut in_flight = pop_all(&queue).await;
        assert_eq!(queue.push(batch("c 1 1\n")), Pushed::Dropped);
        queue.unpop(&mut in_flight);
        assert_eq!(
            pop_all(&queue).await,
            vec![batch("a 1 1\n"), batch("b 1 1\n")]
        );
        assert_eq!(queue.stats().queued_lines.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn the_priority_lane_evicts_by_the_memory_it_counted_so_its_bound_does_not_drift() {
        // Regression: eviction took off a batch's length after adding its memory charge, so the lane's count grew by
        // the bookkeeping of every evicted batch until it dropped everything pushed into it.
        let queue = queue(100, 1024, OverflowPolicy::DropNewest);
        let line = format!("carbon.relays.x.{} 1 1\n", "m".repeat(1000));
        let per_batch = charged(line.len());
        let fitting = PRIORITY_MAX_BYTES / per_batch;
        for _ in 0..10 * fitting {
            queue.push_priority(batch(&line));
        }
        let popped = pop_all(&queue).await;
        assert_eq!(popped.len(), fitting);
        assert_eq!(dropped(&queue), (9 * fitting) as u64);
    }

    #[tokio::test]
    async fn priority_lane_gets_out_when_the_queue_is_full() {
        let queue = queue(1, 1024, OverflowPolicy::DropNewest);
        queue.push(batch("a 1 1\n"));
        queue.push_priority(batch("carbon.relays.x.metricsReceived 1 1\n"));
        let popped = pop_all(&queue).await;
        assert_eq!(popped[0], batch("carbon.relays.x.metricsReceived 1 1\n"));
        assert_eq!(popped.len(), 2);
    }

    #[tokio::test]
    async fn self_metrics_pushed_to_a_closed_queue_are_counted_as_shutdown() {
        let queue = queue(100, 1024, OverflowPolicy::DropNewest);
        queue.close();
        queue.push_priority(batch(
            "carbon.relays.x.metricsReceived 1 1\ncarbon.relays.x.metricsSent 1 1\n",
        ));
        assert_eq!(
            queue.stats().dropped_lines[DropReason::Shutdown as usize].load(Ordering::Relaxed),
            2
        );
    }

    #[tokio::test]
    async fn close_lets_the_writer_drain_then_end_and_every_line_refused_or_left_counts_as_shutdown(
    ) {
        let queue = queue(100, 1024, OverflowPolicy::DropNewest);
        queue.push(batch("a 1 1\n"));
        queue.close();
        assert_eq!(queue.push(batch("b 1 1\n")), Pushed::Closed);
        let mut out = Vec::new();
        assert!(queue.pop_into(&mut out, usize::MAX).await);
        queue.unpop(&mut out);
        assert_eq!(queue.drop_remaining(), 1);
        // The batch refused after close and the one left at the end.
        assert_eq!(
            queue.stats().dropped_lines[DropReason::Shutdown as usize].load(Ordering::Relaxed),
            2
        );
        assert!(!queue.pop_into(&mut out, usize::MAX).await);
    }
}
