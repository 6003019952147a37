//! The router: hands every batch to the destinations that should get it.
//!
//! Second stage, between the connections and the destination queues. The [`table`] says where each line goes (the
//! config's clusters, routes and rewrites). When every line goes to every destination unchanged (forward clusters,
//! no rewrites: the default), a batch is pushed to every queue as one shared buffer, and fan-out costs a refcount per
//! destination, not a copy. Otherwise the router decides per line and builds one batch per destination, each
//! allocated once at its exact size (`routed.rs`).
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
mod routed;
pub mod table;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch::Batch;
use crate::destination::{Handle, Health, Pushed, Queue};
use crate::line::Rules;
use crate::stats::{DropReason, Registry};
use console_out::ConsoleOut;
use pacing::Pacer;
use routed::Routed;
use table::RoutingTable;

/// How often a sender waiting for room (`block`, or a spill lane the disk has not taken yet) pushes again even
/// without a wake-up: a lane whose disk stalled then drops by its policy instead of holding the sender.
const BLOCK_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// How often the lines queued for members that are out move to the other members of their cluster.
pub const MOVE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// What a [`Router`] is built from.
#[derive(Debug)]
pub struct RouterConfig {
    /// Every destination's queue and health, in the order of the table's destinations.
    pub destinations: Vec<Handle>,
    /// Where lines go.
    pub table: RoutingTable,
    /// The line rules, for lines a rewrite changed.
    pub rules: Rules,
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
    /// The destinations and the table routing to them; a reload swaps in new ones whole.
    routes: ArcSwap<Routes>,
    registry: Arc<Registry>,
    /// The `-console-out` thread, when enabled.
    console_out: Option<ConsoleOut>,
    /// Shared with every destination's health, for the pacers of later routes.
    room: Arc<Notify>,
    draining: CancellationToken,
    /// Cancelled when the shutdown deadline passes: `block` senders stop waiting and count their batch as dropped.
    stop: CancellationToken,
}

/// What the router routes with: one config's table and destinations. Immutable; a reload builds new ones.
#[derive(Debug)]
pub struct Routes {
    queues: Vec<Arc<Queue>>,
    healths: Vec<Arc<Health>>,
    table: RoutingTable,
    rules: Rules,
    /// Makes senders wait while a healthy destination is behind; stops once shutdown starts, so that what clients
    /// already sent reaches the queues within the short read grace and drains from there.
    pacer: Pacer,
}

impl Routes {
    fn new(
        destinations: Vec<Handle>,
        table: RoutingTable,
        rules: Rules,
        room: &Arc<Notify>,
        draining: &CancellationToken,
    ) -> Routes {
        let queues = destinations
            .iter()
            .map(|destination| Arc::clone(&destination.queue))
            .collect();
        let healths: Vec<Arc<Health>> = destinations
            .into_iter()
            .map(|destination| destination.health)
            .collect();
        Routes {
            queues,
            pacer: Pacer::new(healths.clone(), Arc::clone(room), draining.clone()),
            healths,
            table,
            rules,
        }
    }
}

impl Router {
    /// A router over the destinations in `config`. With `console_out`, it starts the thread that prints every batch
    /// on stdout.
    pub fn new(config: RouterConfig) -> Router {
        let RouterConfig {
            destinations,
            table,
            rules,
            room,
            registry,
            console_out,
            draining,
            stop,
        } = config;
        let console_out = console_out.then(|| {
            ConsoleOut::spawn(
                std::io::stdout(),
                console_out::QUEUE_BATCHES,
                Arc::clone(&registry),
            )
        });
        let routes = Routes::new(destinations, table, rules, &room, &draining);
        Router {
            routes: ArcSwap::from_pointee(routes),
            registry,
            console_out,
            room,
            draining,
            stop,
        }
    }

    /// Swaps in new destinations and table (a reload) and returns the routes they replace. Batches being dispatched
    /// finish with the old ones: wait until the returned `Arc` is the last before closing a removed queue.
    pub fn swap(
        &self,
        destinations: Vec<Handle>,
        table: RoutingTable,
        rules: Rules,
    ) -> Arc<Routes> {
        let routes = Routes::new(destinations, table, rules, &self.room, &self.draining);
        self.routes.swap(Arc::new(routes))
    }

    /// Hands a batch to every destination, then waits while no healthy destination wants more input.
    pub async fn dispatch(&self, batch: Batch) {
        let n_lines = batch.n_lines();
        let routes = self.routes.load_full();
        self.dispatch_to_queues(&routes, batch).await;
        // Routes a reload replaced are let go at once, so that its removed destinations can close.
        drop(routes);
        // In the queues (or counted as dropped) now: no longer "inbound". Pacing comes after.
        self.registry
            .relay
            .inbound_lines
            .fetch_sub(i64::from(n_lines), Ordering::Relaxed);
        let routes = self.routes.load_full();
        if !routes.queues.is_empty() {
            routes.pacer.pace().await;
        }
    }

    async fn dispatch_to_queues(&self, routes: &Routes, batch: Batch) {
        if let Some(console_out) = &self.console_out {
            console_out.print(&batch);
        }
        if !routes.table.sends_everything_everywhere() {
            for (destination, batch) in self.split(routes, &batch, None) {
                self.push(&routes.queues[destination], batch).await;
            }
            return;
        }
        if routes.queues.is_empty() {
            self.registry
                .relay
                .lines_dropped_no_destination
                .fetch_add(u64::from(batch.n_lines()), Ordering::Relaxed);
            return;
        }
        for queue in &routes.queues {
            self.push(queue, batch.clone()).await;
        }
    }

    async fn push(&self, queue: &Queue, batch: Batch) {
        match queue.push(batch) {
            Pushed::Full(refused) => self.push_blocking(queue, refused).await,
            // Drops, and batches refused by a closed queue, are counted by the queue.
            Pushed::Queued
            | Pushed::QueuedEvicting
            | Pushed::Spilled
            | Pushed::Dropped
            | Pushed::Closed => {}
        }
    }

    /// Splits `batch` by the routing table into one batch per destination (within one cluster only, for lines it
    /// already took), and counts what goes nowhere.
    fn split(&self, routes: &Routes, batch: &Batch, within: Option<usize>) -> Vec<(usize, Batch)> {
        let liveness = table::HealthLiveness(&routes.healths);
        let (batches, counts) = Routed::with_thread_local(|routed| {
            routed.split(&routes.table, &routes.rules, &liveness, batch, within)
        });
        counts.add_to(&self.registry);
        batches
    }

    /// Hands a batch of self-metrics to the destinations the routes give them, ahead of queued traffic: a hash
    /// cluster stores each series once.
    pub fn dispatch_priority(&self, batch: Batch) {
        let routes = self.routes.load();
        if !routes.table.sends_everything_everywhere() {
            for (destination, batch) in self.split(&routes, &batch, None) {
                routes.queues[destination].push_priority(batch);
            }
            return;
        }
        for queue in &routes.queues {
            queue.push_priority(batch.clone());
        }
    }

    /// Moves what members that are out hold queued to the other members of their cluster (`any_of`, `failover`,
    /// `dynamic` hash clusters), every [`MOVE_INTERVAL`] until `stop` is cancelled. Validation keeps such members
    /// out of other clusters, so everything in their queues is their cluster's.
    pub async fn move_from_out_members(&self, stop: CancellationToken) {
        let mut interval = tokio::time::interval(MOVE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            let routes = self.routes.load_full();
            for (cluster_index, cluster) in routes.table.clusters().iter().enumerate() {
                // With every member out, the lines would only go round: they wait where they are.
                if !cluster.moves_lines()
                    || cluster
                        .destinations
                        .iter()
                        .all(|&destination| routes.healths[destination].is_out())
                {
                    continue;
                }
                for &destination in &cluster.destinations {
                    if routes.healths[destination].is_out() {
                        self.move_queued(&routes, cluster_index, destination).await;
                    }
                }
            }
        }
    }

    /// Hands what `destination` holds queued to the other members of `cluster`.
    async fn move_queued(&self, routes: &Routes, cluster: usize, destination: usize) {
        let queue = &routes.queues[destination];
        let batches = queue.take_queued();
        let n_lines: u64 = batches.iter().map(|batch| u64::from(batch.n_lines())).sum();
        if n_lines == 0 {
            return;
        }
        queue
            .stats()
            .moved_lines
            .fetch_add(n_lines, Ordering::Relaxed);
        for batch in batches {
            for (to, batch) in self.split(routes, &batch, Some(cluster)) {
                self.push(&routes.queues[to], batch).await;
            }
            // A whole queue can be many batches: let the connections on this worker run between them.
            tokio::task::yield_now().await;
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
