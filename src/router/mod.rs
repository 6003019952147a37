//! The router: hands every batch to the destinations that should get it.
//!
//! Second stage, between the connections and the destination queues. Today every destination gets every line, so a
//! batch is pushed to every queue as one shared buffer: fan-out costs a refcount per destination, not a copy.
//! (Clusters with consistent hashing will decide per line here and build per-destination batches.)
//!
//! It also paces senders, so that healthy destinations lose nothing to a sender faster than they are: after handing
//! over a batch, a connection waits while some destination [`Queue::holds_senders`] (it is healthy, i.e. connected
//! and writing, and lags by more than `HOLD_MAX_BYTES`, 1 MiB). Destinations of about the same speed therefore
//! never lose lines to each other's jitter. A destination that holds senders for `PACE_TIMEOUT` while another one starves is much
//! slower than the rest: it stops pacing and lags, within its queue's bounds, until it catches up. A down or stalled
//! destination (not healthy) never makes senders wait, and a slow one costs the others one `PACE_TIMEOUT`. When
//! every destination is slower than the input, senders wait: TCP backpressure instead of loss. With the `block`
//! policy a full queue makes senders wait for room, giving up isolation.
//!
//! With `-console-out`, every batch is also handed to the [`console_out`] thread, which prints it on stdout; the
//! router never waits for it.
//!
//! Invariants: the router does no I/O; every line handed to it is queued or counted as dropped.

pub mod console_out;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::batch::Batch;
use crate::destination::{Pushed, Queue};
use crate::stats::{DropReason, Registry};
use console_out::ConsoleOut;

/// How often a paced sender re-checks destination health even without a wake-up (a destination can become unhealthy
/// without any event).
const PACE_RECHECK: Duration = Duration::from_millis(20);

/// How long senders wait for the destinations holding them before checking whether another destination is starving
/// meanwhile, which makes the holders slower than the rest: they stop pacing until they catch up. It is what a slow
/// destination costs the others, once; at 100 ms a healthy sink's scheduling hiccup on a loaded 2-core machine was
/// taken for slowness and that sink overflowed (1 benchmark run in 3 lost lines on a healthy destination), at 250 ms
/// none of 20 degraded runs lost a line and the healthy ones kept their full rate.
const PACE_TIMEOUT: Duration = Duration::from_millis(250);

/// Hands batches to destination queues; shared by every connection.
#[derive(Debug)]
pub struct Router {
    queues: Vec<Arc<Queue>>,
    registry: Arc<Registry>,
    /// The `-console-out` thread, when enabled.
    console_out: Option<ConsoleOut>,
    /// Cancelled when shutdown starts: senders are no longer paced, so what clients already sent reaches the queues
    /// within the short read grace and drains from there.
    draining: CancellationToken,
    /// Cancelled when the shutdown deadline passes: `block` senders stop waiting and count their batch as dropped.
    stop: CancellationToken,
    /// Woken when any writer frees room; paced senders wait on it.
    room: Arc<Notify>,
}

impl Router {
    /// A router over `queues`, which were built with the same `room` notifier. With `console_out`, it starts the
    /// thread that prints every batch on stdout.
    pub fn new(
        queues: Vec<Arc<Queue>>,
        room: Arc<Notify>,
        registry: Arc<Registry>,
        console_out: bool,
        draining: CancellationToken,
        stop: CancellationToken,
    ) -> Router {
        let console_out = console_out.then(|| {
            ConsoleOut::spawn(
                std::io::stdout(),
                console_out::QUEUE_BATCHES,
                Arc::clone(&registry),
            )
        });
        Router {
            queues,
            registry,
            console_out,
            draining,
            stop,
            room,
        }
    }

    /// Hands a batch to every destination, then waits while no healthy destination wants more input.
    pub async fn dispatch(&self, batch: Batch) {
        let n_lines = batch.n_lines();
        self.dispatch_to_queues(batch).await;
        // In the queues (or counted as dropped) now: no longer "inbound". Pacing comes after.
        self.registry
            .relay
            .inbound_lines
            .fetch_sub(i64::from(n_lines), Ordering::Relaxed);
        if !self.queues.is_empty() {
            self.pace().await;
        }
    }

    async fn dispatch_to_queues(&self, batch: Batch) {
        if let Some(console_out) = &self.console_out {
            console_out.print(&batch);
        }
        if self.queues.is_empty() {
            self.registry
                .relay
                .lines_dropped_no_destination
                .fetch_add(u64::from(batch.n_lines()), Ordering::Relaxed);
            return;
        }
        for queue in &self.queues {
            match queue.push(batch.clone()) {
                Pushed::Full(refused) => self.push_blocking(queue, refused).await,
                // Drops, and batches refused by a closed queue, are counted by the queue.
                Pushed::Queued | Pushed::QueuedEvicting | Pushed::Dropped | Pushed::Closed => {}
            }
        }
    }

    /// Hands a batch of self-metrics to every destination ahead of queued traffic.
    pub fn dispatch_priority(&self, batch: Batch) {
        for queue in &self.queues {
            queue.push_priority(batch.clone());
        }
    }

    /// At shutdown, once no more batches come: lets the `-console-out` thread print what it holds, until `deadline`.
    pub async fn finish_console_out(&self, deadline: Instant) {
        if let Some(console_out) = &self.console_out {
            console_out.finish(deadline).await;
        }
    }

    async fn push_blocking(&self, queue: &Queue, mut batch: Batch) {
        loop {
            let room = queue.space_available();
            tokio::pin!(room);
            room.as_mut().enable();
            match queue.push(batch) {
                Pushed::Full(refused) => batch = refused,
                Pushed::Queued | Pushed::QueuedEvicting | Pushed::Dropped | Pushed::Closed => {
                    return
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => {
                    queue.stats().add_dropped(DropReason::Shutdown, u64::from(batch.n_lines()));
                    return;
                }
                () = room => {}
            }
        }
    }

    async fn pace(&self) {
        let mut deadline = None;
        loop {
            if self.draining.is_cancelled() {
                return;
            }
            // Nearly every call returns here: check before registering with the shared notifier, whose waiter list
            // is locked by every connection that registers.
            if !self.any_holds_senders() {
                return;
            }
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            // Again, now that a wake-up cannot be missed.
            if !self.any_holds_senders() {
                return;
            }
            let now = Instant::now();
            let deadline_slot = &mut deadline;
            let deadline = *deadline_slot.get_or_insert(now + PACE_TIMEOUT);
            if now >= deadline {
                if self.stop_pacing_slow_destinations() {
                    return;
                }
                // Every destination holding us is about as fast as the others: the input is simply faster than
                // they are, and waiting is right. Look again later.
                *deadline_slot = None;
            }
            tokio::select! {
                () = self.draining.cancelled() => return,
                () = room => {}
                () = tokio::time::sleep(PACE_RECHECK) => {}
            }
        }
    }

    fn any_holds_senders(&self) -> bool {
        self.queues.iter().any(|queue| queue.holds_senders())
    }

    /// Stops the destinations that hold senders from pacing if another healthy destination is starving meanwhile:
    /// they are much slower than the rest. True if there were any.
    fn stop_pacing_slow_destinations(&self) -> bool {
        if !self
            .queues
            .iter()
            .any(|queue| queue.is_healthy() && queue.is_starving())
        {
            return false;
        }
        let mut any_stopped = false;
        for queue in self.queues.iter().filter(|queue| queue.holds_senders()) {
            queue.stop_pacing();
            any_stopped = true;
            info!(destination = %queue.stats().address, "destination is slower than the others, letting it lag");
        }
        any_stopped
    }
}
