//! One destination's queue: batches waiting for its writer, bounded in lines and in bytes.
//!
//! The router pushes shared batches in; the destination's writer takes many at once, and hands back what the
//! destination did not acknowledge, at the head, in order (at-least-once). Lines count as queued until the writer
//! reports them acknowledged, so the bounds cover batches in flight too and `queued_lines` in stats is exact. A small priority lane
//! carries the relay's self-metrics, which must get out even when user traffic fills the queue.
//!
//! With a spool ([`Queue::with_spool`]), the queue is the memory part of a FIFO whose tail is on disk. A batch goes
//! to the *spill lane* instead of memory when the mode is `always`, when the destination is disconnected, when the
//! memory part is full, or while anything is in the lane, being written, or on disk unread: so new batches always go
//! behind what is on disk, and order per destination is kept. The destination's spooler
//! ([`super::spooler`]) empties the lane onto disk and reads records back into the memory part while it has room
//! (below half its bounds), tagging each batch with its spool sequence number; acknowledged sequence numbers flow
//! back to the spooler so the spool can forget them. The spill lane has its own bound ([`SPILL_LANE_MAX_BYTES`]):
//! past it (the disk does not keep up, or the spool is full under `block`) `spool_overflow` applies. While the spool
//! is degraded (its disk fails), nothing spills: the queue is memory only, as without a spool, and the batches the
//! spooler could not write come back to memory.
//!
//! Invariants: the queue never holds more than its byte and line bounds (the priority lane and the spill lane have
//! their own small bounds; batches handed back were already admitted and may exceed the bound only by what was in
//! flight), every batch it refuses or evicts is counted as dropped, and nothing here does I/O or blocks a thread
//! (the spooler waits on the queue's condition variable on its own thread, never a runtime worker).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::batch::Batch;
use crate::config::{OverflowPolicy, SpoolMode, SpoolOverflow};
use crate::stats::{DestinationStats, DropReason};

/// Bytes the priority lane (self-metrics) may hold before its oldest batch is dropped.
pub const PRIORITY_MAX_BYTES: usize = 1024 * 1024;

/// Bytes of batches waiting to be written to the spool. It fills when the input is faster than the disk path (the
/// spooler writes and reads back each batch), while the disk stalls, or while a full spool makes senders wait
/// (`spool_overflow = "block"`). It is memory on top of `queue_max_bytes`, 4 MiB per spooled destination: enough
/// for hundreds of batches of headroom, small next to the queue.
pub const SPILL_LANE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// How long the spooler may go without taking batches from a full spill lane before the lane counts as stalled
/// (a hung disk): until then senders wait for it, as pacing does, since the spool is not full but only slower than
/// the input; after it, `spool_overflow` applies, so a hung disk costs senders at most this per batch.
pub const SPILL_LANE_STALL_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// The batch went to the spill lane, to be written to the spool.
    Spilled,
    /// The queue is closed: the relay is shutting down.
    Closed,
}

/// How a queue with a spool spills, set by [`Queue::with_spool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpillPolicy {
    /// `overflow` or `always`.
    pub mode: SpoolMode,
    /// What a full spill lane does with a new batch.
    pub overflow: SpoolOverflow,
}

/// What the spooler is to do next, from [`Queue::spooler_wait`].
#[derive(Debug, Default)]
pub struct SpoolWork {
    /// Every line with a spool sequence number below this was acknowledged by the destination (0: none yet).
    pub acked_seq_end: u64,
    /// The memory part has room for records read back from the spool.
    pub replay_room: bool,
    /// Shutdown: write what memory holds to the spool, then close it.
    pub finishing: bool,
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
    /// Set when the destination has a spool.
    spill_policy: Option<SpillPolicy>,
    /// The spooler waits on it for batches to write, room to replay into, or the end.
    spool_work: Condvar,
}

#[derive(Debug, Default)]
struct State {
    batches: VecDeque<Batch>,
    priority: VecDeque<Batch>,
    priority_bytes: usize,
    /// Lines and bytes admitted and not yet acknowledged by the destination or written to the spool (queued, in
    /// flight, and in the spill lane).
    n_lines: usize,
    n_bytes: usize,
    closed: bool,
    spill: Spill,
}

/// The spool side of the state (all zero without a spool).
#[derive(Debug, Default)]
struct Spill {
    /// Batches bound for the spool, oldest first; its lines and bytes count in `State::n_lines`/`n_bytes`.
    lane: VecDeque<Batch>,
    lane_lines: usize,
    lane_bytes: usize,
    /// Batches the spooler took from the lane and is writing, and their memory; still counted in `State`.
    n_writing: usize,
    writing_lines: usize,
    writing_bytes: usize,
    /// Records on disk not yet read back into memory.
    n_unread_records: u64,
    /// Exclusive end of the spool sequence numbers the destination acknowledged.
    acked_seq_end: u64,
    /// Set at the end of shutdown, after the writer stopped.
    finishing: bool,
    /// When the spooler last took batches from the lane (or the lane was last empty).
    lane_taken_at: Option<std::time::Instant>,
    /// A sender was told to wait for room in the lane: the spooler wakes senders when it takes the lane.
    lane_waiters: bool,
}

impl Spill {
    /// A batch taken by the spooler is no longer being written (written, dropped, or handed back).
    fn stop_writing(&mut self, batch: &Batch) {
        self.n_writing -= 1;
        self.writing_lines -= batch.n_lines() as usize;
        self.writing_bytes -= batch.memory_bytes();
    }

    /// True while anything is on its way to disk or on disk unread: new batches must go behind it.
    fn has_backlog(&self) -> bool {
        !self.lane.is_empty() || self.n_writing > 0 || self.n_unread_records > 0
    }
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
            spill_policy: None,
            spool_work: Condvar::new(),
        }
    }

    /// A queue whose overflow goes to a spool, per `policy`; `n_unread_records` is what the spool already holds
    /// (found at start), which new batches must go behind. `limits.overflow` does not apply: a batch that does not fit
    /// spills. Its spooler must be started with [`super::spooler::spawn`].
    pub fn with_spool(
        limits: QueueLimits,
        stats: Arc<DestinationStats>,
        room: Arc<Notify>,
        policy: SpillPolicy,
        n_unread_records: u64,
    ) -> Queue {
        let mut queue = Queue::new(limits, stats, room);
        queue.spill_policy = Some(policy);
        queue.state.get_mut().spill.n_unread_records = n_unread_records;
        queue
    }

    /// True when the destination has a spool: it spills instead of pacing senders or dropping for `queue_full`.
    pub fn has_spool(&self) -> bool {
        self.spill_policy.is_some()
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
        if let Some(policy) = self.spill_policy {
            if self.stats.spool_degraded.load(Ordering::Relaxed) {
                // The disk fails: memory only, as without a spool (the destination paces senders again), ahead of
                // what waits on disk (losing order beats losing lines), within the memory budget of the queue and
                // the spill lane together, which is unused now and whose batches came back to memory.
                let max_bytes = self.limits.max_bytes.saturating_add(SPILL_LANE_MAX_BYTES);
                if !self.fits_within(&state, n_lines, n_bytes, max_bytes) {
                    if policy.overflow == SpoolOverflow::Block {
                        return Pushed::Full(batch);
                    }
                    drop(state);
                    self.stats
                        .add_dropped(DropReason::SpoolFull, n_lines as u64);
                    return Pushed::Dropped;
                }
            } else if policy.mode == SpoolMode::Always
                || state.spill.has_backlog()
                || !self.stats.connected.load(Ordering::Relaxed)
                || !self.fits(&state, n_lines, n_bytes)
            {
                return self.spill(state, policy, batch);
            }
        } else if !self.fits(&state, n_lines, n_bytes) {
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

    /// Puts a batch in the spill lane, or applies `spool_overflow` when the lane is full.
    fn spill(
        &self,
        mut state: parking_lot::MutexGuard<'_, State>,
        policy: SpillPolicy,
        batch: Batch,
    ) -> Pushed {
        let n_bytes = batch.memory_bytes();
        if !state.spill.lane.is_empty() && state.spill.lane_bytes + n_bytes > SPILL_LANE_MAX_BYTES {
            // The disk path is slower than the input: wait for it, as for a slow destination, unless it stalled.
            let stalled = state
                .spill
                .lane_taken_at
                .is_some_and(|taken_at| taken_at.elapsed() >= SPILL_LANE_STALL_TIMEOUT);
            if policy.overflow == SpoolOverflow::Block || !stalled {
                state.spill.lane_waiters = true;
                return Pushed::Full(batch);
            }
            drop(state);
            self.stats
                .add_dropped(DropReason::SpoolFull, u64::from(batch.n_lines()));
            return Pushed::Dropped;
        }
        state.n_lines += batch.n_lines() as usize;
        state.n_bytes += n_bytes;
        if state.spill.lane.is_empty() {
            state.spill.lane_taken_at = Some(std::time::Instant::now());
        }
        state.spill.lane_lines += batch.n_lines() as usize;
        state.spill.lane_bytes += n_bytes;
        state.spill.lane.push_back(batch);
        self.publish_gauges(&state);
        drop(state);
        self.spool_work.notify_one();
        Pushed::Spilled
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
                if state.closed && !state.spill.has_backlog() {
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
        let acked_seq_end = batches
            .iter()
            .filter_map(|batch| Some(batch.spool_seq()? + u64::from(batch.n_lines())))
            .max();
        {
            let mut state = self.state.lock();
            state.n_lines -= n_lines;
            state.n_bytes -= n_memory_bytes;
            if let Some(acked_seq_end) = acked_seq_end {
                state.spill.acked_seq_end = state.spill.acked_seq_end.max(acked_seq_end);
            }
            let wake_spooler = state.spill.n_unread_records > 0 && self.has_replay_room(&state);
            self.publish_gauges(&state);
            drop(state);
            if wake_spooler {
                self.spool_work.notify_one();
            }
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

    /// True once the queue is closed and every admitted line was acknowledged (and, with a spool, nothing is left
    /// on disk to send): the writer has nothing left to do.
    pub fn is_drained(&self) -> bool {
        let state = self.state.lock();
        state.closed && state.n_lines == 0 && !state.spill.has_backlog()
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

    /// True when the memory part (queued and in flight, not the spill lane) has room for the batch.
    fn fits(&self, state: &State, n_lines: usize, n_bytes: usize) -> bool {
        self.fits_within(state, n_lines, n_bytes, self.limits.max_bytes)
    }

    /// As [`Queue::fits`], against `max_bytes` instead of the queue's byte bound.
    fn fits_within(&self, state: &State, n_lines: usize, n_bytes: usize, max_bytes: usize) -> bool {
        let (memory_lines, memory_bytes) = memory_part(state);
        // An empty queue always takes one batch, so a batch larger than the bound cannot wedge it.
        memory_bytes == 0
            || (memory_lines + n_lines <= self.limits.max_lines
                && memory_bytes + n_bytes <= max_bytes)
    }

    /// True when the memory part is below half its bounds: records read back from the spool go there, leaving the
    /// other half for what the writer hands back.
    fn has_replay_room(&self, state: &State) -> bool {
        let (memory_lines, memory_bytes) = memory_part(state);
        memory_lines < self.limits.max_lines / 2 && memory_bytes < self.limits.max_bytes / 2
    }

    // The spooler's side. Only the destination's spooler thread calls these.

    /// Waits up to `timeout` for work: moves the spill lane's batches into `to_write` (they stay counted until
    /// [`Queue::spooler_written`] or [`Queue::spooler_dropped`]) and says whether records can be read back. With
    /// `take_lane` false (the spool refused the lane's head under `block`), the lane is neither work nor taken.
    pub fn spooler_wait(
        &self,
        to_write: &mut Vec<Batch>,
        timeout: Duration,
        take_lane: bool,
    ) -> SpoolWork {
        let mut state = self.state.lock();
        let has_work = |state: &State| {
            (take_lane && !state.spill.lane.is_empty())
                || state.spill.finishing
                || (state.spill.n_unread_records > 0 && self.has_replay_room(state))
        };
        if !has_work(&state) {
            self.spool_work.wait_for(&mut state, timeout);
        }
        let mut wake_senders = false;
        if take_lane {
            let spill = &mut state.spill;
            wake_senders = std::mem::take(&mut spill.lane_waiters);
            spill.lane_taken_at = Some(std::time::Instant::now());
            spill.n_writing += spill.lane.len();
            spill.writing_lines += std::mem::take(&mut spill.lane_lines);
            spill.writing_bytes += std::mem::take(&mut spill.lane_bytes);
            to_write.extend(spill.lane.drain(..));
        }
        let work = SpoolWork {
            acked_seq_end: state.spill.acked_seq_end,
            replay_room: state.spill.n_unread_records > 0 && self.has_replay_room(&state),
            finishing: state.spill.finishing,
        };
        drop(state);
        if wake_senders {
            self.room.notify_waiters();
        }
        work
    }

    /// A batch taken by [`Queue::spooler_wait`] is on disk: it leaves the memory accounting.
    /// `n_unread_records` is the spool's count after the write (and any eviction it made).
    pub fn spooler_written(&self, batch: &Batch, n_unread_records: u64) {
        let mut state = self.state.lock();
        self.leave_writing(&mut state, batch);
        state.spill.n_unread_records = n_unread_records;
        self.publish_gauges(&state);
        drop(state);
        self.wake_block_senders();
    }

    /// A batch taken by [`Queue::spooler_wait`] could not be spooled: it is dropped and counted for `reason`.
    pub fn spooler_dropped(&self, batch: &Batch, reason: DropReason) {
        let mut state = self.state.lock();
        self.leave_writing(&mut state, batch);
        self.publish_gauges(&state);
        drop(state);
        self.stats.add_dropped(reason, u64::from(batch.n_lines()));
        self.wake_block_senders();
    }

    /// A batch taken by [`Queue::spooler_wait`] that the spool could not write (its disk fails) joins the memory
    /// part, ahead of what waits on disk, whatever its bounds: it was admitted already, and the spill lane it came
    /// from is bounded, so memory exceeds `max_bytes` by at most [`SPILL_LANE_MAX_BYTES`], once. New batches find the
    /// spool degraded and are bounded as without a spool.
    pub fn spooler_fallback(&self, batch: Batch) {
        let mut state = self.state.lock();
        // Its lines and bytes stay counted in `n_lines` and `n_bytes`: they move from the lane's share to memory's.
        state.spill.stop_writing(&batch);
        state.batches.push_back(batch);
        drop(state);
        self.data_ready.notify_one();
        self.wake_block_senders();
    }

    /// Batches taken by [`Queue::spooler_wait`] that the spool could not take yet (`block`, or a failing disk under
    /// `block`) go back to the head of the spill lane, in order.
    pub fn spooler_requeue(&self, batches: &mut Vec<Batch>) {
        let mut state = self.state.lock();
        for batch in batches.drain(..).rev() {
            let spill = &mut state.spill;
            spill.stop_writing(&batch);
            spill.lane_lines += batch.n_lines() as usize;
            spill.lane_bytes += batch.memory_bytes();
            spill.lane.push_front(batch);
        }
    }

    /// True when the memory part has room for a record read back from the spool.
    pub fn spooler_has_replay_room(&self) -> bool {
        self.has_replay_room(&self.state.lock())
    }

    /// A record read back from the spool (its batch tagged with its sequence number) joins the memory part, behind
    /// everything there; `n_unread_records` is the spool's count after the read.
    pub fn spooler_replayed(&self, batch: Batch, n_unread_records: u64) {
        debug_assert!(batch.spool_seq().is_some());
        let mut state = self.state.lock();
        state.n_lines += batch.n_lines() as usize;
        state.n_bytes += batch.memory_bytes();
        state.batches.push_back(batch);
        state.spill.n_unread_records = n_unread_records;
        self.publish_gauges(&state);
        drop(state);
        self.data_ready.notify_one();
    }

    /// The spool's count of unread records changed without a read (records evicted, or found corrupt).
    pub fn spooler_set_unread_records(&self, n_unread_records: u64) {
        self.state.lock().spill.n_unread_records = n_unread_records;
    }

    /// Shutdown, after the writer stopped: tells the spooler to write what memory holds and close the spool.
    pub fn finish_spool(&self) {
        self.state.lock().spill.finishing = true;
        self.spool_work.notify_all();
    }

    /// Takes the queued batches that are only in memory (the priority lane and batches not read back from a
    /// spool), in order, out of the queue without counting them as sent or dropped: a cluster hands them to other
    /// members while this destination is out. Batches in flight stay with the writer, which hands them back on
    /// failure; batches from the spool stay, to be acknowledged there.
    pub fn take_queued(&self) -> Vec<Batch> {
        let mut state = self.state.lock();
        let state = &mut *state;
        let mut taken: Vec<Batch> = state.priority.drain(..).collect();
        state.priority_bytes = 0;
        let mut kept = VecDeque::new();
        for batch in state.batches.drain(..) {
            if batch.spool_seq().is_some() {
                kept.push_back(batch);
            } else {
                taken.push(batch);
            }
        }
        state.batches = kept;
        for batch in &taken {
            state.n_lines -= batch.n_lines() as usize;
            state.n_bytes -= batch.memory_bytes();
        }
        self.publish_gauges(state);
        if self.limits.overflow == OverflowPolicy::Block {
            self.room.notify_waiters();
        }
        taken
    }

    /// Empties the memory part for the spooler at shutdown and returns, in order, the batches not yet in the spool
    /// (the priority lane, queued batches that never spilled, the spill lane). Batches read back from the spool are
    /// left out: they are still on disk, unacknowledged, and will be read again at the next start.
    /// Also returns the lines of those left-out batches.
    pub fn take_for_shutdown(&self) -> (Vec<Batch>, u64) {
        let mut state = self.state.lock();
        let state = &mut *state;
        let mut out: Vec<Batch> = state.priority.drain(..).collect();
        let mut n_lines_on_disk = 0u64;
        for batch in state.batches.drain(..) {
            if batch.spool_seq().is_some() {
                n_lines_on_disk += u64::from(batch.n_lines());
            } else {
                out.push(batch);
            }
        }
        out.extend(state.spill.lane.drain(..));
        state.priority_bytes = 0;
        state.spill.lane_lines = 0;
        state.spill.lane_bytes = 0;
        state.n_lines = 0;
        state.n_bytes = 0;
        self.publish_gauges(state);
        (out, n_lines_on_disk)
    }

    /// A batch being written leaves the queue's accounting altogether (written or dropped).
    fn leave_writing(&self, state: &mut State, batch: &Batch) {
        state.spill.stop_writing(batch);
        state.n_lines -= batch.n_lines() as usize;
        state.n_bytes -= batch.memory_bytes();
    }

    /// Wakes senders waiting under `block` (a full spill lane) when room appears.
    fn wake_block_senders(&self) {
        if self
            .spill_policy
            .is_some_and(|policy| policy.overflow == SpoolOverflow::Block)
        {
            self.room.notify_waiters();
        }
    }
}

/// Lines and bytes of the memory part: queued and in flight, without the spill lane and what is being written.
fn memory_part(state: &State) -> (usize, usize) {
    let spill = &state.spill;
    (
        state.n_lines - spill.lane_lines - spill.writing_lines,
        state.n_bytes - spill.lane_bytes - spill.writing_bytes,
    )
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

    fn spilling_queue(mode: SpoolMode, overflow: SpoolOverflow, n_unread_records: u64) -> Queue {
        Queue::with_spool(
            QueueLimits {
                max_lines: 100,
                max_bytes: 4 * charged(6),
                overflow: OverflowPolicy::DropNewest,
            },
            DestinationStats::new("test:1"),
            Arc::new(Notify::new()),
            SpillPolicy { mode, overflow },
            n_unread_records,
        )
    }

    fn connect(queue: &Queue) {
        queue.stats().connected.store(true, Ordering::Relaxed);
    }

    fn take_lane(queue: &Queue) -> Vec<Batch> {
        let mut to_write = Vec::new();
        queue.spooler_wait(&mut to_write, Duration::ZERO, true);
        to_write
    }

    #[tokio::test]
    async fn overflow_spills_while_disconnected_and_when_memory_is_full_and_keeps_later_batches_behind_the_disk(
    ) {
        let queue = spilling_queue(SpoolMode::Overflow, SpoolOverflow::DropOldest, 0);
        assert_eq!(
            queue.push(batch("a 1 1\n")),
            Pushed::Spilled,
            "disconnected"
        );
        connect(&queue);
        assert_eq!(
            queue.push(batch("b 1 1\n")),
            Pushed::Spilled,
            "behind `a` in the lane"
        );
        let written = take_lane(&queue);
        assert_eq!(written, vec![batch("a 1 1\n"), batch("b 1 1\n")]);
        for batch in &written {
            queue.spooler_written(batch, 2);
        }
        assert_eq!(
            queue.push(batch("c 1 1\n")),
            Pushed::Spilled,
            "behind `a` and `b` on disk"
        );
        assert_eq!(
            queue.stats().queued_lines.load(Ordering::Relaxed),
            1,
            "only `c` is in memory"
        );
        queue.spooler_replayed(batch("a 1 1\n").with_spool_seq(0), 1);
        queue.spooler_replayed(batch("b 1 1\n").with_spool_seq(1), 0);
        let c = take_lane(&queue);
        queue.spooler_written(&c[0], 1);
        queue.spooler_replayed(batch("c 1 1\n").with_spool_seq(2), 0);
        assert_eq!(
            queue.push(batch("d 1 1\n")),
            Pushed::Queued,
            "nothing on disk: memory again"
        );
        let popped = pop_all(&queue).await;
        let texts: Vec<&[u8]> = popped.iter().map(|batch| &batch.bytes()[..]).collect();
        assert_eq!(texts, [&b"a 1 1\n"[..], b"b 1 1\n", b"c 1 1\n", b"d 1 1\n"]);
        queue.complete(&popped);
        let mut to_write = Vec::new();
        let work = queue.spooler_wait(&mut to_write, Duration::ZERO, true);
        assert_eq!(work.acked_seq_end, 3, "acknowledged through `c`");
        assert_eq!(dropped(&queue), 0);
    }

    #[tokio::test]
    async fn a_connected_destination_with_room_never_touches_the_spool_in_overflow_mode() {
        let queue = spilling_queue(SpoolMode::Overflow, SpoolOverflow::DropOldest, 0);
        connect(&queue);
        for _ in 0..4 {
            assert_eq!(queue.push(batch("a 1 1\n")), Pushed::Queued);
        }
        assert_eq!(
            queue.push(batch("b 1 1\n")),
            Pushed::Spilled,
            "memory is full"
        );
        assert!(take_lane(&queue).len() == 1);
    }

    #[tokio::test]
    async fn always_mode_spills_every_batch() {
        let queue = spilling_queue(SpoolMode::Always, SpoolOverflow::DropOldest, 0);
        connect(&queue);
        assert_eq!(queue.push(batch("a 1 1\n")), Pushed::Spilled);
        assert_eq!(queue.push(batch("b 1 1\n")), Pushed::Spilled);
    }

    #[tokio::test]
    async fn records_found_at_start_keep_new_batches_behind_them() {
        let queue = spilling_queue(SpoolMode::Overflow, SpoolOverflow::DropOldest, 3);
        connect(&queue);
        assert_eq!(queue.push(batch("a 1 1\n")), Pushed::Spilled);
    }

    #[tokio::test]
    async fn a_full_spill_lane_makes_senders_wait_for_the_disk_and_applies_spool_overflow_once_it_stalls(
    ) {
        let line = format!("big {} 1\n", "1".repeat(60_000));
        for policy in [SpoolOverflow::DropNewest, SpoolOverflow::Block] {
            let queue = spilling_queue(SpoolMode::Always, policy, 0);
            let mut n_pushed = 0;
            let refused = loop {
                match queue.push(batch(&line)) {
                    Pushed::Spilled => n_pushed += 1,
                    other => break other,
                }
            };
            assert_eq!(n_pushed, SPILL_LANE_MAX_BYTES / charged(line.len()));
            assert!(
                matches!(refused, Pushed::Full(_)),
                "{policy:?}: the spool is not full, the disk is only slower: wait"
            );
            // The spooler takes the lane: room again.
            assert_eq!(take_lane(&queue).len(), n_pushed);
            assert_eq!(queue.push(batch(&line)), Pushed::Spilled);
            while queue.push(batch(&line)) == Pushed::Spilled {}
            // Now the spooler takes nothing for longer than the stall timeout: a hung disk.
            std::thread::sleep(SPILL_LANE_STALL_TIMEOUT + Duration::from_millis(50));
            let refused = queue.push(batch(&line));
            match policy {
                SpoolOverflow::Block => assert!(matches!(refused, Pushed::Full(_))),
                _ => assert_eq!(refused, Pushed::Dropped),
            }
            let n_dropped =
                queue.stats().dropped_lines[DropReason::SpoolFull as usize].load(Ordering::Relaxed);
            assert_eq!(n_dropped > 0, policy != SpoolOverflow::Block, "{policy:?}");
        }
    }

    #[tokio::test]
    async fn shutdown_hands_the_spooler_what_is_not_on_disk_in_order() {
        let queue = spilling_queue(SpoolMode::Overflow, SpoolOverflow::DropOldest, 0);
        connect(&queue);
        queue.push(batch("a 1 1\n"));
        for _ in 0..3 {
            queue.push(batch("b 1 1\n"));
        }
        queue.push_priority(batch("self 1 1\n"));
        queue.push(batch("c 1 1\n"));
        let written = take_lane(&queue);
        queue.spooler_written(&written[0], 1);
        queue.spooler_replayed(batch("c 1 1\n").with_spool_seq(7), 0);
        queue.push(batch("d 1 1\n"));
        let (rest, n_lines_on_disk) = queue.take_for_shutdown();
        let texts: Vec<&[u8]> = rest.iter().map(|batch| &batch.bytes()[..]).collect();
        assert_eq!(
            texts,
            [
                &b"self 1 1\n"[..],
                b"a 1 1\n",
                b"b 1 1\n",
                b"b 1 1\n",
                b"b 1 1\n",
                b"d 1 1\n"
            ]
        );
        assert_eq!(n_lines_on_disk, 1, "`c` is on disk already");
        assert_eq!(queue.stats().queued_lines.load(Ordering::Relaxed), 0);
    }
}
