//! Counters of every stage, in one place that the periodic log line, `/stats`, and the self-metrics all read.
//!
//! Each counter is an atomic owned by the stage that increments it (listener, connection, router, destination
//! writer); hot loops sum locally and add once per read or per write. Gauges (open connections, queued lines) go up
//! and down. Invariants: nothing here blocks, and a counter is never reset (rates are computed by readers from two
//! snapshots). For every destination, once input stops, `lines_received = sent_lines + dropped + queued_lines +
//! spool_lines` (queued lines include those in flight; `spool_lines` is zero without a spool). The spool's gauges
//! and counters are written by the destination's spool thread, and readers show them only while `spool_enabled`.
//!
//! Readers never look at the atomics one by one: they take a [`Snapshot`] ([`Registry::snapshot`]), a plain copy
//! that `/stats` serialises, and compare two of them for rates ([`log`] for the periodic log line, [`carbon`] for
//! the self-metrics in carbon-c-relay's names).

pub mod carbon;
pub mod log;
mod snapshot;

pub use snapshot::{
    ConnectionsSnapshot, DestinationSnapshot, LinesSnapshot, Snapshot, SpoolSnapshot,
    StatsServerSnapshot,
};

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::line::{Invalid, LineCounts, Note};

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted and handed to a connection task.
    pub connections_accepted: AtomicU64,
    /// Connections accepted and closed at once because `listen.max_connections` were open.
    pub connections_rejected: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicI64,
    /// Connections closed by the relay after `listen.idle_timeout` without a complete line.
    pub connections_idle_closed: AtomicU64,
    /// Errors returned by `accept` (EMFILE and the like), after which the accept loop backs off.
    pub accept_errors: AtomicU64,
    /// Bytes read from client connections.
    pub bytes_received: AtomicU64,
    /// Valid lines accepted (and so handed to every destination queue, or dropped there and counted).
    pub lines_received: AtomicU64,
    /// Lines not forwarded, by [`Invalid`] reason.
    pub lines_invalid: [AtomicU64; Invalid::ALL.len()],
    /// Forwarded lines with a [`Note`].
    pub lines_noted: [AtomicU64; Note::ALL.len()],
    /// Valid lines dropped because no destination is configured.
    pub lines_dropped_no_destination: AtomicU64,
    /// Valid lines no `[[route]]` matched.
    pub lines_no_route: AtomicU64,
    /// Valid lines the matching routes sent only to `blackhole`.
    pub lines_blackholed: AtomicU64,
    /// Lines a `[[rewrite]]` turned invalid (an empty or over-long path, say), not forwarded.
    pub lines_rewrite_invalid: AtomicU64,
    /// Relayed lines `-console-out` did not print: stdout was too slow (its channel full) or closed. They were
    /// relayed all the same.
    pub lines_console_out_dropped: AtomicU64,
    /// Lines accepted but not yet in any destination queue (sitting in connection batches).
    pub inbound_lines: AtomicI64,
    /// When these counters were created, for `uptime_secs`.
    pub started: Started,
    /// Limits the sampled log line about refused input to one a second for the whole relay.
    pub invalid_line_log: RateLimit,
}

/// Lets one event through per interval (one second), across threads; the rest are only counted elsewhere.
#[derive(Debug, Default)]
pub struct RateLimit {
    /// Milliseconds since the process's first call before which nothing more is let through.
    next_allowed_ms: AtomicU64,
}

impl RateLimit {
    /// True for at most one caller per second.
    pub fn allow(&self) -> bool {
        // A monotonic clock: a wall clock stepped back would silence the log for as long.
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let epoch = EPOCH.get_or_init(std::time::Instant::now);
        let now_ms = epoch.elapsed().as_millis() as u64;
        let next_allowed_ms = self.next_allowed_ms.load(Ordering::Relaxed);
        now_ms >= next_allowed_ms
            && self
                .next_allowed_ms
                .compare_exchange(
                    next_allowed_ms,
                    now_ms + 1000,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

/// The instant the process-wide counters were created; [`Default`] is now.
///
/// A field of [`Stats`] rather than of [`Registry`] so that both keep their `Default` and `Registry` can still be
/// written as a struct literal.
#[derive(Debug, Clone, Copy)]
pub struct Started(pub Instant);

/// Counters of the stats HTTP server's connections, kept apart from the plaintext listener's.
#[derive(Debug, Default)]
pub struct StatsServerStats {
    /// Connections accepted and served.
    pub connections_accepted: AtomicU64,
    /// Connections accepted and closed at once because `stats.max_connections` were open.
    pub connections_rejected: AtomicU64,
    /// Connections closed by `stats.header_read_timeout` or `stats.request_timeout`.
    pub connections_timed_out: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicI64,
    /// Errors of the stats server's `accept` (such as `EMFILE`), each followed by a pause unless it concerned only
    /// that connection.
    pub accept_errors: AtomicU64,
    /// Limits the log line about rejected connections to one a second.
    pub rejected_log: RateLimit,
}

/// Counters of one destination.
#[derive(Debug)]
pub struct DestinationStats {
    /// The destination's identity, `host:port` or `host:port=instance` (its key in `/stats` and self-metrics).
    pub address: String,
    /// True while a connection to the destination is open.
    pub connected: AtomicBool,
    /// Lines in the queue now (including those written and not yet acknowledged).
    pub queued_lines: AtomicI64,
    /// Bytes of memory the queued batches keep alive now (including those written and not yet acknowledged), as
    /// counted against `queue_max_bytes`: line bytes plus each batch's bookkeeping (`batch::Batch::memory_bytes`).
    pub queued_bytes: AtomicI64,
    /// Lines the destination's kernel acknowledged (each counted once, however often it was written).
    pub sent_lines: AtomicU64,
    /// Bytes of those lines.
    pub sent_bytes: AtomicU64,
    /// Lines dropped, by [`DropReason`].
    pub dropped_lines: [AtomicU64; DropReason::ALL.len()],
    /// Successful connects.
    pub connects: AtomicU64,
    /// Failed connect attempts (refused, timed out, name not resolved).
    pub connect_failures: AtomicU64,
    /// Connections lost after they were established (write error or timeout).
    pub disconnects: AtomicU64,
    /// Writes that made no progress within `destination.write_timeout`.
    pub write_timeouts: AtomicU64,
    /// Lines written to a connection that failed before the destination acknowledged them, and so queued again to
    /// be sent once more. The destination may have read some of them: this bounds the duplicates it can see.
    pub resent_lines: AtomicU64,
    /// Lines taken from this destination's queue while it was out and handed to other members of its cluster
    /// (`any_of`, `failover`, `dynamic`); they count as sent or dropped there.
    pub moved_lines: AtomicU64,
    /// True when the destination has a disk spool (`destination.spool_dir` is set); set once when it is spawned.
    /// The `spool_*` counters below are shown (in `/stats`, self-metrics and the log) only while it is true.
    pub spool_enabled: AtomicBool,
    /// Bytes of the spool's segment files on disk now (a gauge).
    pub spool_bytes: AtomicU64,
    /// Lines on disk waiting to be sent and not yet read back into the memory queue (a gauge): the "spooled" term
    /// of the accounting rule.
    pub spool_lines: AtomicU64,
    /// Segment files of the spool now (a gauge).
    pub spool_segments: AtomicU64,
    /// Lines read back from the spool into the memory queue.
    pub spool_replayed_lines: AtomicU64,
    /// Seconds until the spool is empty at the current replay rate (a gauge); `-1` when unknown or not draining.
    pub spool_drain_eta_secs: AtomicI64,
    /// True while the spool is degraded: its last write or sync failed (disk full or failing).
    pub spool_degraded: AtomicBool,
    /// Spool writes and syncs that failed.
    pub spool_write_errors: AtomicU64,
}

/// Why a destination dropped lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The queue was at its line or byte bound (`drop_newest` drops the new batch, `drop_oldest` the oldest).
    QueueFull,
    /// The relay shut down before the destination took the lines.
    Shutdown,
    /// The spool had no room for the lines: it was at `spool_max_bytes` (or its share of `spool_total_max_bytes`),
    /// or its disk was full. `spool_overflow = "drop_newest"` drops the new batch, `drop_oldest` the unsent lines of
    /// the oldest segment.
    SpoolFull,
    /// Spooled lines that could not be read back: a damaged record or segment found on replay or recovery.
    SpoolCorrupt,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 4] = [
        DropReason::QueueFull,
        DropReason::Shutdown,
        DropReason::SpoolFull,
        DropReason::SpoolCorrupt,
    ];

    /// The name used in stats, logs and docs.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Shutdown => "shutdown",
            DropReason::SpoolFull => "spool_full",
            DropReason::SpoolCorrupt => "spool_corrupt",
        }
    }
}

impl Default for Started {
    fn default() -> Self {
        Started(Instant::now())
    }
}

impl Stats {
    /// Adds a connection's local line counts to the shared counters.
    pub fn add_line_counts(&self, counts: &LineCounts) {
        if counts.valid > 0 {
            self.lines_received
                .fetch_add(counts.valid, Ordering::Relaxed);
        }
        for (counter, &n) in self.lines_invalid.iter().zip(counts.invalid.iter()) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        for (counter, &n) in self.lines_noted.iter().zip(counts.notes.iter()) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

impl DestinationStats {
    /// Zeroed counters for a destination.
    pub fn new(address: &str) -> Arc<DestinationStats> {
        Arc::new(DestinationStats {
            address: address.to_string(),
            connected: AtomicBool::new(false),
            queued_lines: AtomicI64::new(0),
            queued_bytes: AtomicI64::new(0),
            sent_lines: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            dropped_lines: Default::default(),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            write_timeouts: AtomicU64::new(0),
            resent_lines: AtomicU64::new(0),
            moved_lines: AtomicU64::new(0),
            spool_enabled: AtomicBool::new(false),
            spool_bytes: AtomicU64::new(0),
            spool_lines: AtomicU64::new(0),
            spool_segments: AtomicU64::new(0),
            spool_replayed_lines: AtomicU64::new(0),
            spool_drain_eta_secs: AtomicI64::new(-1),
            spool_degraded: AtomicBool::new(false),
            spool_write_errors: AtomicU64::new(0),
        })
    }

    /// Counts dropped lines.
    pub fn add_dropped(&self, reason: DropReason, n_lines: u64) {
        self.dropped_lines[reason as usize].fetch_add(n_lines, Ordering::Relaxed);
    }

    /// Lines dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_lines
            .iter()
            .map(|counter| counter.load(Ordering::Relaxed))
            .sum()
    }
}

/// Every counter of the relay: the process-wide ones and one set per destination, in config order.
#[derive(Debug, Default)]
pub struct Registry {
    /// Process-wide counters.
    pub relay: Stats,
    /// Per-destination counters, in the order of the config's destinations (`destinations`, then each cluster's
    /// members): those in use, then those a reload removed that are still draining. Replaced whole by a reload.
    destinations: ArcSwap<Vec<Arc<DestinationStats>>>,
    /// The stats HTTP server's connection counters.
    pub stats_server: StatsServerStats,
}

impl Registry {
    /// Zeroed counters for the relay and for each destination, in the given (config) order.
    pub fn new(destination_addresses: &[String]) -> Registry {
        Registry {
            relay: Stats::default(),
            destinations: ArcSwap::from_pointee(
                destination_addresses
                    .iter()
                    .map(|address| DestinationStats::new(address))
                    .collect(),
            ),
            stats_server: StatsServerStats::default(),
        }
    }

    /// The per-destination counters now.
    pub fn destinations(&self) -> Arc<Vec<Arc<DestinationStats>>> {
        self.destinations.load_full()
    }

    /// Replaces the per-destination counters.
    pub fn set_destinations(&self, destinations: Vec<Arc<DestinationStats>>) {
        self.destinations.store(Arc::new(destinations));
    }

    /// Replaces the per-destination counters with what `update` makes of the current ones (a reload), atomically
    /// with respect to other updates.
    pub fn update_destinations(
        &self,
        update: impl Fn(&[Arc<DestinationStats>]) -> Vec<Arc<DestinationStats>>,
    ) {
        self.destinations.rcu(|current| update(current));
    }

    /// A copy of every counter, read now.
    ///
    /// The counters are read one by one with relaxed ordering, so a snapshot taken while lines flow is not one
    /// instant across counters (a line may show as sent but not yet as received); each counter on its own is exact.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::read(self)
    }
}
