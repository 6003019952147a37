//! Pacing: a sender waits after its hand-over while a healthy destination is behind, so that destinations lose
//! nothing to a sender faster than they are.
//!
//! A destination *holds senders* while it is healthy (connected, its writer making progress), behind (its lag above
//! its watermark, see [`Health`]), and not known to be slower than the others. Destinations of about the same speed
//! therefore never lose lines to each other's jitter. A destination that holds senders for [`PACE_TIMEOUT`] while
//! another one starves is much slower than the rest: it stops pacing and lags, within its queue's bounds, until it
//! starves itself, when it paces again. A down or stalled destination (not healthy) never makes senders wait, and a
//! slow one costs the others one `PACE_TIMEOUT`. When every destination is slower than the input, senders wait: TCP
//! backpressure instead of loss.
//!
//! A destination with a disk spool paces like any other while nothing of it waits on disk, so a healthy destination
//! that is only slower than a burst costs what it costs without a spool (TCP backpressure, no disk I/O). Once lines
//! wait on its disk (it was down, stalled, or let lag as slower than the others until its memory queue filled), it
//! neither holds senders nor counts as starving: new lines go to disk behind the others until it has caught up.
//!
//! Invariants: pacing never waits once shutdown has started (`draining`), never waits on a destination that is not
//! healthy, and reads health without locks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::destination::Health;

/// How often a paced sender re-checks destination health even without a wake-up (a destination can become unhealthy
/// without any event).
const PACE_RECHECK: Duration = Duration::from_millis(20);

/// How long senders wait for the destinations holding them before checking whether another destination is starving
/// meanwhile, which makes the holders slower than the rest: they stop pacing until they catch up. It is what a slow
/// destination costs the others, once; at 100 ms a healthy sink's scheduling hiccup on a loaded 2-core machine was
/// taken for slowness and that sink overflowed (1 benchmark run in 3 lost lines on a healthy destination), at 250 ms
/// none of 20 degraded runs lost a line and the healthy ones kept their full rate.
pub const PACE_TIMEOUT: Duration = Duration::from_millis(250);

/// The pacing state of every destination, shared by all senders.
#[derive(Debug)]
pub struct Pacer {
    destinations: Vec<Paced>,
    /// Woken when a destination catches up; paced senders wait on it.
    room: Arc<Notify>,
    /// Cancelled when shutdown starts: senders are no longer paced.
    draining: CancellationToken,
}

#[derive(Debug)]
struct Paced {
    health: Arc<Health>,
    /// False while the destination is known to be slower than the others: it then lags, within its bounds, instead
    /// of making senders wait. Set again when it starves.
    pacing: AtomicBool,
}

impl Paced {
    fn holds_senders(&self) -> bool {
        if self.health.spills() {
            return false;
        }
        if !self.health.is_behind() {
            if !self.pacing.load(Ordering::Relaxed) && self.health.is_starving() {
                self.pacing.store(true, Ordering::Relaxed);
            }
            return false;
        }
        self.pacing.load(Ordering::Relaxed) && self.health.is_healthy()
    }
}

impl Pacer {
    /// Pacing over these destinations' health; `room` is the notifier their health wakes when they catch up.
    pub fn new(healths: Vec<Arc<Health>>, room: Arc<Notify>, draining: CancellationToken) -> Pacer {
        Pacer {
            destinations: healths
                .into_iter()
                .map(|health| Paced {
                    health,
                    pacing: AtomicBool::new(true),
                })
                .collect(),
            room,
            draining,
        }
    }

    /// Waits while some healthy destination holds senders, until shutdown starts.
    pub async fn pace(&self) {
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
        self.destinations.iter().any(Paced::holds_senders)
    }

    /// Stops the destinations that hold senders from pacing if another healthy destination is starving meanwhile:
    /// they are much slower than the rest. True if there were any.
    fn stop_pacing_slow_destinations(&self) -> bool {
        if !self.destinations.iter().any(|paced| {
            !paced.health.spills() && paced.health.is_healthy() && paced.health.is_starving()
        }) {
            return false;
        }
        let mut any_stopped = false;
        for paced in self
            .destinations
            .iter()
            .filter(|paced| paced.holds_senders())
        {
            paced.pacing.store(false, Ordering::Relaxed);
            any_stopped = true;
            info!(destination = %paced.health.stats().address, "destination is slower than the others, letting it lag");
        }
        any_stopped
    }
}
