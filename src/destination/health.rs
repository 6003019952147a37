//! A destination's health as its writer reports it: connected, making progress, and how far behind it is.
//!
//! The writer is the only one that writes here; the router reads it to decide whether a destination may make
//! senders wait (see `router::pacing`). Kept apart from the [`super::Queue`], which is only a bounded FIFO (and will
//! get a disk part behind it), and from the pacing policy, which belongs to the router.
//!
//! *Lag* is what the destination has not yet taken from us: the bytes its queue counts minus those written to the
//! kernel and awaiting acknowledgement. The kernel's share is at most one send buffer and drains by itself; counting
//! it as lag would make a destination that is merely the slower side look behind by several MiB forever.
//!
//! Invariants: nothing here blocks or does I/O; `room` is woken whenever the lag falls to the watermark from above,
//! so senders waiting for this destination are not left to their periodic re-check.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::stats::DestinationStats;

/// A destination that has made no progress for this long is not healthy (it is down or stalled) and never makes
/// senders wait.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(1);

/// Most bytes a healthy destination may lag before it counts as behind (a quarter of the queue's byte bound if that
/// is less). Large enough that destinations of about the same speed do not hold each other up through scheduling
/// jitter (a millisecond of traffic at 15 M lines/s), small enough that a batch is still in the CPU's cache when the
/// writer hands it to the kernel: when the destination is the slower side its lag sits at this level, and against
/// 8 MiB, 1 MiB measured 0.96x the relay's CPU forwarding to one destination and 0.82x fanning out to three, at the
/// same throughput and half the RSS.
pub const LAG_WATERMARK_MAX_BYTES: usize = 1024 * 1024;

/// The lag watermark of a destination whose queue holds at most `queue_max_bytes`.
pub fn lag_watermark_bytes(queue_max_bytes: usize) -> usize {
    LAG_WATERMARK_MAX_BYTES.min(queue_max_bytes / 4)
}

/// How long a destination must stay unreachable before clusters that move lines (`any_of`, `failover`, `dynamic`)
/// count it out: carbon-c-relay's threshold is about 1.5 s too. Shorter would move lines on every reconnect.
pub const OUT_AFTER: Duration = Duration::from_millis(1500);

/// One destination's health, written by its writer and read by the router.
#[derive(Debug)]
pub struct Health {
    stats: Arc<DestinationStats>,
    /// Bytes written to the kernel and not yet acknowledged by the destination.
    unacked_bytes: AtomicI64,
    /// When the writer last made progress (wrote, was acknowledged, or had nothing to write), in ms since `epoch`.
    last_progress_ms: AtomicU64,
    /// Since when the destination has been disconnected, in ms since `epoch` (0: since the start);
    /// `u64::MAX` while connected.
    down_since_ms: AtomicU64,
    epoch: Instant,
    /// Lag above which the destination is behind.
    lag_watermark_bytes: i64,
    /// True while the lag was above the watermark when last looked at.
    was_behind: AtomicBool,
    /// Shared with the router: woken when the lag falls to the watermark.
    room: Arc<Notify>,
}

impl Health {
    /// The health of the destination counted in `stats`, behind above `lag_watermark_bytes` of lag; `room` is woken
    /// when it catches up.
    pub fn new(
        stats: Arc<DestinationStats>,
        lag_watermark_bytes: usize,
        room: Arc<Notify>,
    ) -> Health {
        Health {
            stats,
            unacked_bytes: AtomicI64::new(0),
            last_progress_ms: AtomicU64::new(0),
            down_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            lag_watermark_bytes: i64::try_from(lag_watermark_bytes).unwrap_or(i64::MAX),
            was_behind: AtomicBool::new(false),
            room,
        }
    }

    /// The destination's counters.
    pub fn stats(&self) -> &Arc<DestinationStats> {
        &self.stats
    }

    /// Records that the writer connected (`true`) or lost its connection (`false`).
    pub fn set_connected(&self, connected: bool) {
        self.stats.connected.store(connected, Ordering::Relaxed);
        if connected {
            self.down_since_ms.store(u64::MAX, Ordering::Relaxed);
        } else {
            let now_ms = self.epoch.elapsed().as_millis() as u64;
            // Keeps the first moment of an outage across failed reconnects.
            let _ = self.down_since_ms.compare_exchange(
                u64::MAX,
                now_ms,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// True once the destination has been unreachable for [`OUT_AFTER`]: `any_of`, `failover` and `dynamic`
    /// clusters then send its share to other members, and move what it has queued to them.
    pub fn is_out(&self) -> bool {
        let down_since_ms = self.down_since_ms.load(Ordering::Relaxed);
        if down_since_ms == u64::MAX {
            return false;
        }
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        now_ms.saturating_sub(down_since_ms) >= OUT_AFTER.as_millis() as u64
    }

    /// Records that the writer is keeping up: it wrote, the destination acknowledged more, or there was nothing to
    /// write.
    pub fn mark_progress(&self) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        self.last_progress_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Records what the kernel holds unacknowledged, after a write or an acknowledgement, and wakes the senders
    /// waiting for this destination if that brought its lag down to the watermark.
    pub fn set_unacked_bytes(&self, n_unacked: usize) {
        self.unacked_bytes.store(
            i64::try_from(n_unacked).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        self.caught_up();
    }

    /// Wakes the senders waiting for this destination if its lag fell to the watermark since last looked at.
    fn caught_up(&self) {
        let behind = self.lag_bytes() > self.lag_watermark_bytes;
        if self.was_behind.swap(behind, Ordering::Relaxed) && !behind {
            self.room.notify_waiters();
        }
    }

    /// Bytes the destination has not taken from us yet: queued, minus what the kernel holds for it.
    pub fn lag_bytes(&self) -> i64 {
        self.stats.queued_bytes.load(Ordering::Relaxed) - self.unacked_bytes.load(Ordering::Relaxed)
    }

    /// True while the destination has a working disk spool with lines waiting on disk: new lines go behind them, to
    /// disk, so it does not make senders wait (it paces, like any destination, while nothing waits on disk). A
    /// spool whose disk fails (degraded) spills nothing, and the destination paces like one without a spool.
    pub fn spills(&self) -> bool {
        self.stats.spool_enabled.load(Ordering::Relaxed)
            && !self.stats.spool_degraded.load(Ordering::Relaxed)
            && self.stats.spool_lines.load(Ordering::Relaxed) > 0
    }

    /// True while the lag is above the watermark.
    pub fn is_behind(&self) -> bool {
        let behind = self.lag_bytes() > self.lag_watermark_bytes;
        if behind {
            self.was_behind.store(true, Ordering::Relaxed);
        }
        behind
    }

    /// True while the lag is under a quarter of the watermark: the destination waits for input.
    pub fn is_starving(&self) -> bool {
        self.lag_bytes() < self.lag_watermark_bytes / 4
    }

    /// True while the destination is connected and its writer made progress within [`PROGRESS_TIMEOUT`].
    pub fn is_healthy(&self) -> bool {
        if !self.stats.connected.load(Ordering::Relaxed) {
            return false;
        }
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        now_ms.saturating_sub(self.last_progress_ms.load(Ordering::Relaxed))
            < PROGRESS_TIMEOUT.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(watermark: usize) -> (Health, Arc<Notify>) {
        let room = Arc::new(Notify::new());
        let stats = DestinationStats::new("test:1");
        (Health::new(stats, watermark, Arc::clone(&room)), room)
    }

    #[test]
    fn bytes_the_kernel_holds_are_not_lag() {
        let (health, _room) = health(1000);
        health.stats().queued_bytes.store(5000, Ordering::Relaxed);
        assert!(health.is_behind());
        health.set_unacked_bytes(4500);
        assert_eq!(health.lag_bytes(), 500);
        assert!(!health.is_behind());
        assert!(!health.is_starving());
        health.set_unacked_bytes(4900);
        assert!(health.is_starving());
    }

    #[tokio::test]
    async fn catching_up_to_the_watermark_wakes_waiting_senders_once() {
        let (health, room) = health(1000);
        health.stats().queued_bytes.store(5000, Ordering::Relaxed);
        assert!(health.is_behind());
        let woken = room.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        health.set_unacked_bytes(1000);
        assert!(!futures_ready(woken.as_mut()), "still behind: no wake-up");
        health.set_unacked_bytes(4000);
        assert!(futures_ready(woken.as_mut()), "caught up: woken");
        let again = room.notified();
        tokio::pin!(again);
        again.as_mut().enable();
        health.set_unacked_bytes(4500);
        assert!(!futures_ready(again.as_mut()), "woken only when crossing");
    }

    #[test]
    fn a_destination_is_healthy_only_while_connected_and_making_progress() {
        let (health, _room) = health(1000);
        health.mark_progress();
        assert!(!health.is_healthy(), "not connected");
        health.stats().connected.store(true, Ordering::Relaxed);
        assert!(health.is_healthy());
    }

    /// Polls a future once: true if it is ready.
    fn futures_ready<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> bool {
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        future.poll(&mut context).is_ready()
    }
}
