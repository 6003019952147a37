//! The router: hands every batch to the destinations that should get it.
//!
//! Second stage, between the connections and the destination queues. Today every destination gets every line, so a
//! batch is pushed to every queue as one shared buffer: fan-out costs a refcount per destination, not a copy.
//! (Clusters with consistent hashing will decide per line here and build per-destination batches.)
//!
//! It also paces senders: a connection waits after handing over a batch while no healthy destination wants more
//! input ([`Queue::is_hungry`], [`Queue::is_healthy`]), so the relay reads no faster than its fastest healthy
//! destination writes, and healthy destinations lose nothing to a fast sender. A down or stalled destination is not
//! healthy and so never makes senders wait; a slow one only lags, bounded by its queue. With the `block` policy a
//! full queue makes senders wait for room, giving up that isolation.
//!
//! Invariants: the router does no I/O except `-console-out`; every line handed to it is queued or counted as dropped.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::batch::Batch;
use crate::destination::{Pushed, Queue};
use crate::stats::{DropReason, Registry};

/// How often a paced sender re-checks destination health even without a wake-up (a destination can become unhealthy
/// without any event).
const PACE_RECHECK: Duration = Duration::from_millis(50);

/// Hands batches to destination queues; shared by every connection.
#[derive(Debug)]
pub struct Router {
    queues: Vec<Arc<Queue>>,
    registry: Arc<Registry>,
    console_out: bool,
    /// Cancelled when the shutdown deadline passes: `block` senders stop waiting and count their batch as dropped.
    stop: CancellationToken,
    /// Woken when any writer frees room; paced senders wait on it.
    room: Arc<Notify>,
}

impl Router {
    /// A router over `queues`, which were built with the same `room` notifier.
    pub fn new(
        queues: Vec<Arc<Queue>>,
        room: Arc<Notify>,
        registry: Arc<Registry>,
        console_out: bool,
        stop: CancellationToken,
    ) -> Router {
        Router {
            queues,
            registry,
            console_out,
            stop,
            room,
        }
    }

    /// The destination queues, in config order.
    pub fn queues(&self) -> &[Arc<Queue>] {
        &self.queues
    }

    /// Hands a batch to every destination, then waits while no healthy destination wants more input.
    pub async fn dispatch(&self, batch: Batch) {
        if self.console_out {
            // The seed's debugging aid: a locked, blocking write to stdout is acceptable for it.
            let _ = std::io::stdout().lock().write_all(batch.bytes());
        }
        if self.queues.is_empty() {
            self.registry
                .relay
                .lines_dropped_no_destination
                .fetch_add(u64::from(batch.n_lines()), Ordering::Relaxed);
            return;
        }
        let mut any_blocked = false;
        for queue in &self.queues {
            if let Pushed::Full(refused) = queue.push(batch.clone()) {
                any_blocked = true;
                self.push_blocking(queue, refused).await;
            }
        }
        if !any_blocked {
            self.pace().await;
        }
    }

    /// Hands a batch of self-metrics to every destination ahead of queued traffic.
    pub fn dispatch_priority(&self, batch: Batch) {
        for queue in &self.queues {
            queue.push_priority(batch.clone());
        }
    }

    async fn push_blocking(&self, queue: &Queue, mut batch: Batch) {
        loop {
            let room = queue.space_available();
            tokio::pin!(room);
            room.as_mut().enable();
            match queue.push(batch) {
                Pushed::Full(refused) => batch = refused,
                _ => return,
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
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if !self.should_wait() {
                return;
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = room => {}
                () = tokio::time::sleep(PACE_RECHECK) => {}
            }
        }
    }

    /// True while every destination has enough queued and at least one of them is healthy (so it will drain).
    fn should_wait(&self) -> bool {
        let mut any_healthy = false;
        for queue in &self.queues {
            if queue.is_hungry() {
                return false;
            }
            any_healthy |= queue.is_healthy();
        }
        any_healthy
    }
}
