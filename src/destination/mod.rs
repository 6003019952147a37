//! Destinations: where lines go. Each has a bounded [`queue::Queue`] and a reconnecting [`writer`].
//!
//! Third stage: the router pushes batches into every destination's queue; the destination's own writer task drains
//! it. A destination's failure stays inside its queue and writer: that is how a dead, stalled or slow destination
//! costs the others nothing. Destinations are a closed set of kinds; today the only kind is plaintext TCP (later
//! PostgreSQL and Kafka share the queue and stats machinery).

pub mod backoff;
pub mod connect;
pub mod health;
pub mod identity;
pub mod in_flight;
pub mod queue;
pub mod spooler;
pub mod unacked;
pub mod writer;

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::DestinationConfig;
use crate::stats::DestinationStats;
pub use connect::{ConnectSettings, Resolve, SystemResolver};
pub use health::Health;
pub use identity::Identity;
pub use queue::{Pushed, Queue, QueueLimits, SpillPolicy};
pub use spooler::SpoolerSettings;
pub use writer::WriterSettings;

/// What the router holds of a destination: the queue it pushes into and the health it paces senders by.
#[derive(Debug, Clone)]
pub struct Handle {
    /// The queue the router pushes into.
    pub queue: Arc<Queue>,
    /// The destination's health, reported by its writer, read by the router's pacing.
    pub health: Arc<Health>,
}

/// A destination: what the router holds of it, the writer task draining its queue, and its spooler if it has a spool.
#[derive(Debug)]
pub struct Destination {
    /// Its queue and health.
    pub handle: Handle,
    /// The writer task; it ends when the queue is closed and drained, or when `stop` is cancelled.
    pub writer: JoinHandle<()>,
    /// The spooler thread; it ends after [`Queue::finish_spool`].
    pub spooler: Option<std::thread::JoinHandle<()>>,
}

/// A destination's opened spool and how its spooler runs, for [`Destination::spawn`].
pub struct SpoolParts {
    /// The spool, opened and recovered.
    pub spool: crate::spool::Spool,
    /// Records found on disk at open, which new batches go behind.
    pub n_unread_records: u64,
}

impl std::fmt::Debug for SpoolParts {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SpoolParts")
            .field("n_unread_records", &self.n_unread_records)
            .finish_non_exhaustive()
    }
}

impl Destination {
    /// Creates the queue and health for `identity` and spawns its writer on the current runtime, and its spooler
    /// thread when it has a spool. `room` is the notifier shared with the router (see
    /// [`crate::router::Router::new`]): woken when the destination catches up, and under the `block` policy whenever
    /// its queue frees room.
    ///
    /// # Errors
    ///
    /// The OS refused to start the spooler thread.
    pub fn spawn(
        identity: &Identity,
        config: &DestinationConfig,
        stats: Arc<DestinationStats>,
        room: Arc<Notify>,
        stop: CancellationToken,
        spool: Option<SpoolParts>,
    ) -> std::io::Result<Destination> {
        let limits = QueueLimits {
            max_lines: config.queue_capacity_lines,
            max_bytes: usize::try_from(config.queue_max_bytes).unwrap_or(usize::MAX),
            overflow: config.overflow,
        };
        let health = Arc::new(Health::new(
            Arc::clone(&stats),
            health::lag_watermark_bytes(limits.max_bytes),
            Arc::clone(&room),
        ));
        let (queue, spooler) = match spool {
            None => (Arc::new(Queue::new(limits, stats, room)), None),
            Some(parts) => {
                let policy = SpillPolicy {
                    mode: config.spool_mode,
                    overflow: config.spool_overflow,
                };
                let queue = Arc::new(Queue::with_spool(
                    limits,
                    stats,
                    room,
                    policy,
                    parts.n_unread_records,
                ));
                let settings = spooler::SpoolerSettings {
                    name: identity.to_string(),
                    sync: config.spool_sync,
                    overflow: config.spool_overflow,
                };
                let spooler = spooler::spawn(parts.spool, Arc::clone(&queue), settings)?;
                (queue, Some(spooler))
            }
        };
        let settings = WriterSettings {
            name: identity.to_string(),
            connect: ConnectSettings {
                address: identity.connect_address(),
                resolver: Arc::new(SystemResolver),
                connect_timeout: config.connect_timeout,
                tcp_user_timeout: config.tcp_user_timeout(),
                tcp_keepalive_idle: config.tcp_keepalive_idle,
                tcp_keepalive_interval: config.tcp_keepalive_interval,
            },
            write_timeout: config.write_timeout,
            retry_interval: config.retry_interval,
        };
        let writer = tokio::spawn(writer::run(
            Arc::clone(&queue),
            Arc::clone(&health),
            settings,
            stop,
        ));
        Ok(Destination {
            handle: Handle { queue, health },
            writer,
            spooler,
        })
    }
}
