//! The spooler: one OS thread per destination with a spool, moving batches between its queue and its [`Spool`].
//!
//! It sits beside the writer: the queue puts batches that must go to disk in its spill lane ([`Queue::push`]), the
//! spooler writes them to the spool, one record each, and reads records back into the queue's memory part while it
//! has room, tagged with their sequence numbers, so the writer sends them like any batch. A record written while
//! nothing else waits on disk and memory has room is handed to memory at once without being read back (the usual
//! case in `always` mode). Acknowledged sequence numbers come back through [`Queue::complete`]; the spooler passes
//! them on, and the spool deletes segments once everything in them was acknowledged.
//!
//! File work blocks, so it runs here, on a thread of its own, never on a runtime worker (`STYLE.md`, "async vs
//! sync"); the spooler never holds the queue's lock across a file operation. It wakes at least every [`TICK`] to pass
//! acknowledgements on, `fdatasync` per `spool_sync`, and refresh the spool's gauges.
//!
//! Failures: a write that fails (disk full, read-only, I/O error) is counted in `spool_write_errors` and marks the
//! spool degraded (`/health`). The batch goes back to the queue's memory part, or, under
//! `spool_overflow = "block"`, stays in the lane and is retried every [`TICK`]. While
//! degraded, the queue spills nothing and the destination paces senders as one without a spool would, so a full disk
//! costs a healthy destination nothing; a sync every [`DEGRADED_PROBE_INTERVAL`] finds out when the disk works again.
//! Nothing here ends the relay.
//!
//! Shutdown ([`Queue::finish_spool`], after the writer stopped): the spooler writes everything memory holds that is
//! not already on disk, syncs, writes the checkpoint, releases the lock and ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::queue::Queue;
use crate::batch::Batch;
use crate::config::{SpoolOverflow, SpoolSync};
use crate::spool::{AppendError, Spool};
use crate::stats::{DestinationStats, DropReason, RateLimit};

/// Longest the spooler sleeps without work: the delay before an acknowledgement reaches the spool, and the
/// granularity of `spool_sync` intervals and of retries under `block`.
pub const TICK: Duration = Duration::from_millis(100);

/// How often a degraded spool is tried again (a sync and a checkpoint write) while nothing is written to it.
pub const DEGRADED_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Window over which the replay rate behind `drain_eta_secs` is measured.
const DRAIN_RATE_WINDOW: Duration = Duration::from_secs(2);

/// What a spooler needs besides its spool and queue.
#[derive(Debug, Clone)]
pub struct SpoolerSettings {
    /// The destination's identity, for logs.
    pub name: String,
    /// When to `fdatasync` (the spool itself syncs every batch under `batch`).
    pub sync: SpoolSync,
    /// What a full spool or a failing disk does with a batch.
    pub overflow: SpoolOverflow,
}

/// Starts the spooler thread of `queue` over `spool`. It ends after [`Queue::finish_spool`].
///
/// # Errors
///
/// The OS refused to start a thread.
pub fn spawn(
    spool: Spool,
    queue: Arc<Queue>,
    settings: SpoolerSettings,
) -> std::io::Result<JoinHandle<()>> {
    queue.stats().spool_enabled.store(true, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("spooler".to_string())
        .spawn(move || Spooler::new(spool, &queue, settings).run())
}

/// The spooler's state on its thread.
struct Spooler<'a> {
    spool: Spool,
    queue: &'a Queue,
    stats: Arc<DestinationStats>,
    settings: SpoolerSettings,
    /// Set when a write was refused under `block`: the lane is retried on the next tick, not at once.
    blocked: bool,
    unsynced_since: Option<Instant>,
    last_probe: Option<Instant>,
    drain_rate: DrainRate,
    log_limit: RateLimit,
}

impl<'a> Spooler<'a> {
    fn new(spool: Spool, queue: &'a Queue, settings: SpoolerSettings) -> Spooler<'a> {
        Spooler {
            spool,
            queue,
            stats: Arc::clone(queue.stats()),
            settings,
            blocked: false,
            unsynced_since: None,
            last_probe: None,
            drain_rate: DrainRate::default(),
            log_limit: RateLimit::default(),
        }
    }

    fn run(mut self) {
        let mut to_write = Vec::new();
        loop {
            let work = self.queue.spooler_wait(&mut to_write, TICK, !self.blocked);
            self.blocked = false;
            // The spool ignores what it has had already.
            self.spool.ack(work.acked_seq_end);
            self.write(&mut to_write);
            if work.replay_room {
                self.replay();
            }
            self.count_corrupt();
            self.sync_if_due();
            self.probe_if_degraded();
            self.publish(0);
            if work.finishing {
                self.finish();
                return;
            }
        }
    }

    /// Writes the batches taken from the lane, in order; under `block`, what the spool refuses goes back.
    fn write(&mut self, to_write: &mut Vec<Batch>) {
        let mut batches = to_write.drain(..);
        while let Some(batch) = batches.next() {
            let disk_failed = match self.spool.append(batch.bytes(), batch.n_lines()) {
                Ok(appended) => {
                    self.written(batch, appended.first_seq, appended.evicted_lines);
                    continue;
                }
                Err(AppendError::Full) => false,
                Err(AppendError::Io(err)) => {
                    self.stats
                        .spool_write_errors
                        .fetch_add(1, Ordering::Relaxed);
                    // Degraded now, so that the queue stops spilling: it is memory only until a write works.
                    self.publish(0);
                    if self.log_limit.allow() {
                        error!(destination = %self.settings.name, error = %err, "cannot write to the spool");
                    }
                    true
                }
            };
            if self.settings.overflow == SpoolOverflow::Block {
                // The spool cannot take it yet: it and the rest go back to the lane, tried again next tick.
                let mut refused = vec![batch];
                refused.extend(batches);
                self.queue.spooler_requeue(&mut refused);
                self.blocked = true;
                return;
            }
            if disk_failed {
                self.queue.spooler_fallback(batch);
            } else {
                self.queue.spooler_dropped(&batch, DropReason::SpoolFull);
            }
        }
    }

    /// A batch is on disk: its lines leave `queued` for the spool, and it goes straight to memory when it is the
    /// next to send and there is room (no read back).
    fn written(&mut self, batch: Batch, first_seq: u64, evicted_lines: u64) {
        self.count_evicted(evicted_lines);
        if self.settings.sync != SpoolSync::Batch && self.unsynced_since.is_none() {
            self.unsynced_since = Some(Instant::now());
        }
        let n_unread_records = self.spool.status().unread_records;
        self.queue.spooler_written(&batch, n_unread_records);
        // Show the lines as spooled at once, so the accounting rule is off only between these two updates.
        self.publish(0);
        if n_unread_records == 1
            && self.queue.spooler_has_replay_room()
            && self.spool.mark_read(first_seq)
        {
            self.queue.spooler_replayed(
                batch.with_spool_seq(first_seq),
                self.spool.status().unread_records,
            );
        }
    }

    /// Reads records back into the queue's memory part while it has room.
    fn replay(&mut self) {
        while self.queue.spooler_has_replay_room() {
            match self.spool.read_next() {
                Ok(Some(record)) => {
                    let n_lines = record.n_lines;
                    let batch =
                        Batch::new(record.payload, n_lines).with_spool_seq(record.first_seq);
                    self.queue
                        .spooler_replayed(batch, self.spool.status().unread_records);
                    self.stats
                        .spool_replayed_lines
                        .fetch_add(u64::from(n_lines), Ordering::Relaxed);
                    self.drain_rate.add(u64::from(n_lines));
                    self.publish(0);
                }
                Ok(None) => {
                    self.queue
                        .spooler_set_unread_records(self.spool.status().unread_records);
                    break;
                }
                Err(err) => {
                    self.stats.spool_degraded.store(true, Ordering::Relaxed);
                    if self.log_limit.allow() {
                        error!(destination = %self.settings.name, error = %err, "cannot read the spool");
                    }
                    break;
                }
            }
        }
    }

    fn count_evicted(&self, n_lines: u64) {
        if n_lines > 0 {
            self.stats.add_dropped(DropReason::SpoolFull, n_lines);
            self.queue
                .spooler_set_unread_records(self.spool.status().unread_records);
            if self.log_limit.allow() {
                warn!(destination = %self.settings.name, lines = n_lines, "spool full: dropped its oldest segment");
            }
        }
    }

    fn count_corrupt(&mut self) {
        let n_lines = self.spool.take_corrupt_lines();
        if n_lines > 0 {
            self.stats.add_dropped(DropReason::SpoolCorrupt, n_lines);
            self.queue
                .spooler_set_unread_records(self.spool.status().unread_records);
            error!(destination = %self.settings.name, lines = n_lines, "spool: corrupt records skipped");
        }
    }

    fn sync_if_due(&mut self) {
        let SpoolSync::Interval(interval) = self.settings.sync else {
            return;
        };
        if self
            .unsynced_since
            .is_some_and(|since| since.elapsed() >= interval)
        {
            self.sync();
        }
    }

    /// While the spool is degraded, nothing is written to it (the queue keeps batches in memory), so a sync a second
    /// is what finds out that the disk works again.
    fn probe_if_degraded(&mut self) {
        if self.spool.status().degraded
            && self
                .last_probe
                .is_none_or(|probe| probe.elapsed() >= DEGRADED_PROBE_INTERVAL)
        {
            self.last_probe = Some(Instant::now());
            self.sync();
            if !self.spool.status().degraded {
                info!(destination = %self.settings.name, "spool writable again");
            }
        }
    }

    fn sync(&mut self) {
        self.unsynced_since = None;
        if let Err(err) = self.spool.sync() {
            self.stats
                .spool_write_errors
                .fetch_add(1, Ordering::Relaxed);
            if self.log_limit.allow() {
                error!(destination = %self.settings.name, error = %err, "cannot sync the spool");
            }
        }
    }

    /// Copies the spool's figures into the gauges; `n_lines_in_memory` are lines on disk that memory also held
    /// (at shutdown: they will be read again at the next start, so they count as spooled).
    fn publish(&mut self, n_lines_in_memory: u64) {
        let status = self.spool.status();
        self.stats
            .spool_degraded
            .store(status.degraded, Ordering::Relaxed);
        let n_lines = status.unread_lines + n_lines_in_memory;
        self.stats
            .spool_bytes
            .store(status.bytes, Ordering::Relaxed);
        self.stats.spool_lines.store(n_lines, Ordering::Relaxed);
        self.stats
            .spool_segments
            .store(status.segments, Ordering::Relaxed);
        let eta_secs = match self.drain_rate.lines_per_sec() {
            _ if n_lines == 0 => 0,
            Some(rate) if rate > 0.0 => (n_lines as f64 / rate).ceil() as i64,
            _ => -1,
        };
        self.stats
            .spool_drain_eta_secs
            .store(eta_secs, Ordering::Relaxed);
    }

    /// Writes what memory holds that is not on disk yet, syncs, checkpoints and closes the spool.
    fn finish(mut self) {
        let (rest, n_lines_on_disk) = self.queue.take_for_shutdown();
        let mut n_spooled = 0u64;
        let mut n_lost = 0u64;
        for batch in &rest {
            match self.spool.append(batch.bytes(), batch.n_lines()) {
                Ok(appended) => {
                    self.count_evicted(appended.evicted_lines);
                    n_spooled += u64::from(batch.n_lines());
                }
                Err(_) => {
                    n_lost += u64::from(batch.n_lines());
                }
            }
        }
        if n_lost > 0 {
            self.stats.add_dropped(DropReason::Shutdown, n_lost);
        }
        self.publish(n_lines_on_disk);
        match self.spool.close() {
            Ok(()) => {
                info!(destination = %self.settings.name, lines = n_spooled, "shutdown: spooled what was not delivered");
            }
            Err(err) => {
                self.stats
                    .spool_write_errors
                    .fetch_add(1, Ordering::Relaxed);
                error!(destination = %self.settings.name, error = %err, "shutdown: cannot close the spool");
            }
        }
    }
}

/// Lines replayed over the last [`DRAIN_RATE_WINDOW`], for the drain estimate.
#[derive(Debug)]
struct DrainRate {
    window_start: Instant,
    n_lines: u64,
    last_rate: Option<f64>,
}

impl Default for DrainRate {
    fn default() -> Self {
        DrainRate {
            window_start: Instant::now(),
            n_lines: 0,
            last_rate: None,
        }
    }
}

impl DrainRate {
    fn add(&mut self, n_lines: u64) {
        self.roll();
        self.n_lines += n_lines;
    }

    /// Lines per second over the last full window; `None` before the first.
    fn lines_per_sec(&mut self) -> Option<f64> {
        self.roll();
        self.last_rate
    }

    fn roll(&mut self) {
        let elapsed = self.window_start.elapsed();
        if elapsed >= DRAIN_RATE_WINDOW {
            self.last_rate = Some(self.n_lines as f64 / elapsed.as_secs_f64());
            self.n_lines = 0;
            self.window_start = Instant::now();
        }
    }
}
