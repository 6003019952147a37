//! The router: hands every batch to the destinations that should get it.
//!
//! Second stage, between the connections and the destination queues. Today every destination gets every line, so a
//! batch is pushed to every queue as one shared buffer: fan-out costs a refcount per destination, not a copy.
//! (Clusters with consistent hashing will decide per line here and build per-destination batches.)
//!
//! It also paces senders ([`pacing`]), so that healthy destinations lose nothing to a sender faster than they are:
//! after handing over a batch, a connection waits while a healthy destination is more than its watermark (1 MiB)
//! behind. With the `block` policy a full queue makes senders wait for room, giving up isolation.
//!
//! With `-console-out`, every batch is also handed to the [`console_out`] thread, which prints it on stdout; the
//! router never waits for it.
//!
//! Invariants: the router does no I/O; every line handed to it is queued or counted as dropped.

pub mod console_out;
pub mod hash;
pub mod pacing;
pub mod path_cache;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch::Batch;
use crate::destination::{Handle, Pushed, Queue};
use crate::stats::{DropReason, Registry};
use console_out::ConsoleOut;
use pacing::Pacer;

/// How often a sender waiting for room (`block`, or a spill lane the disk has not taken yet) pushes again even
/// without a wake-up: a lane whose disk stalled then drops by its policy instead of holding the sender.
const BLOCK_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// What a [`Router`] is built from.
#[derive(Debug)]
pub struct RouterConfig {
    /// Every destination's queue and health, in config order.
    pub destinations: Vec<Handle>,
    /// The notifier the destinations were built with: woken when one catches up or, under `block`, frees room.
    pub room: Arc<Notify>,
    /// Counters.
    pub registry: Arc<Registry>,
    /// Print every batch on stdout (`-console-out`), from a thread of its own.
    pub console_out: bool,
    /// Cancelled when shutdown starts: senders are no longer paced.
    pub draining: CancellationToken,
    /// Cancelled at the shutdown deadline: `block` senders give up their batch.
    pub stop: CancellationToken,
}

/// Hands batches to destination queues; shared by every connection.
#[derive(Debug)]
pub struct Router {
    queues: Vec<Arc<Queue>>,
    registry: Arc<Registry>,
    /// The `-console-out` thread, when enabled.
    console_out: Option<ConsoleOut>,
    /// Makes senders wait while a healthy destination is behind; stops once shutdown starts, so that what clients
    /// already sent reaches the queues within the short read grace and drains from there.
    pacer: Pacer,
    /// Cancelled when the shutdown deadline passes: `block` senders stop waiting and count their batch as dropped.
    stop: CancellationToken,
}

impl Router {
    /// A router over the destinations in `config`. With `console_out`, it starts the thread that prints every batch
    /// on stdout.
    pub fn new(config: RouterConfig) -> Router {
        let RouterConfig {
            destinations,
            room,
            registry,
            console_out,
            draining,
            stop,
        } = config;
        let queues = destinations
            .iter()
            .map(|destination| Arc::clone(&destination.queue))
            .collect();
        let healths = destinations
            .into_iter()
            .map(|destination| destination.health)
            .collect();
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
            pacer: Pacer::new(healths, room, draining),
            stop,
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
            self.pacer.pace().await;
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
                Pushed::Queued
                | Pushed::QueuedEvicting
                | Pushed::Spilled
                | Pushed::Dropped
                | Pushed::Closed => {}
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
                Pushed::Queued
                | Pushed::QueuedEvicting
                | Pushed::Spilled
                | Pushed::Dropped
                | Pushed::Closed => return,
            }
            tokio::select! {
                () = self.stop.cancelled() => {
                    queue.stats().add_dropped(DropReason::Shutdown, u64::from(batch.n_lines()));
                    return;
                }
                () = room => {}
                // A spill lane whose disk stalls drops instead of waiting; pushing again is what finds out.
                () = tokio::time::sleep(BLOCK_RECHECK) => {}
            }
        }
    }
}
