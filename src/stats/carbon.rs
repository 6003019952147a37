//! The relay's own metrics as Graphite plaintext lines, under carbon-c-relay's names so its dashboards keep working.
//!
//! An edge task: [`run_self_metrics`] takes a [`Snapshot`] every `stats.metrics_flush` and hands one [`Batch`] of
//! lines to its caller, which puts it on every destination's queue ahead of user traffic. [`metrics_batch`] is the
//! pure part.
//!
//! What carbon-c-relay 3.9 does, read in `grobian/carbon-c-relay` (`collector.c`, `collector_runner`;
//! `router.c`, `router_set_collectorvals`; `dispatcher.c`; `carbon-c-relay.md`, "STATISTICS"):
//!
//! - The prefix defaults to `carbon.relays.\.1` applied to `^(([^.]+)(\..*)?)$` on the host name: the *whole* host
//!   name with every `.` replaced by `_` (`\2` would be the short name, but it is not the default). [`expand_prefix`]
//!   does the same for `{host}`.
//! - Values are cumulative totals since start. Only the `reset counters after interval` clause switches to
//!   per-interval differences, which is not the default, so totals are what existing dashboards expect (they apply
//!   `nonNegativeDerivative`). `queued` is a gauge either way. `connections` and `disconnects` are always totals.
//! - Per destination the name is `ip:port` with `.` replaced by `_` and the `:` kept:
//!   `destinations.10_0_5_20:2003.sent`, then `.queued`, `.stalls`, `.dropped`, `.wallTime_us`.
//! - `metricsReceived` counts lines that passed the dispatcher's minimal check (before routing); `metricsDiscarded`
//!   the lines it rejected (empty, no space, too long); `metricsBlackholed` lines routed nowhere;
//!   `metricsSent`, `metricsQueued`, `metricsDropped` sum the destinations; `connections` and `disconnects` count
//!   accepted and closed client connections. The timestamp is the wall clock at the tick, the same on every line.
//!
//! The mapping to our counters: `metricsReceived` = `lines_received`, `metricsDiscarded` = `lines_invalid` except
//! `empty` (carbon-c-relay also counts the empty line a CRLF leaves behind, which we do not call invalid),
//! `metricsBlackholed` = `lines_dropped_no_destination` + `lines_no_route` + `lines_blackholed` (carbon-c-relay
//! counts lines no rule matched and lines sent to `blackhole` there too), `metricsDiscarded` also counts
//! `lines_rewrite_invalid`, per destination `sent` = `sent_lines`, `queued` =
//! `queued_lines`, `dropped` = every reason of `dropped_lines`, `connections` = `connections_accepted`, and
//! `disconnects` = `connections_accepted - connections_open`. Ours alone, with no carbon-c-relay counterpart:
//! per destination `resent` = `resent_lines`, the lines queued again after a connection failed before the
//! destination acknowledged them, and `acceptErrors` = `accept_errors` (errors of the accept loop, such as `EMFILE`).
//!
//! carbon-c-relay has no disk spool, so the spool's figures have names of ours, in its camelCase under the
//! destination, sent only for a destination that has a spool: `destinations.<name>.spoolBytes` = `spool_bytes`
//! (bytes of segment files on disk, a gauge), `spoolLines` = `spool_lines` (lines waiting on disk, a gauge),
//! `spoolSegments` = `spool_segments` (a gauge), `spoolReplayed` = `spool_replayed_lines` (lines read back into
//! memory), `spoolDropped` = the `spool_full` and `spool_corrupt` reasons of `dropped_lines` (already part of
//! `dropped`), `spoolWriteErrors` = `spool_write_errors`, `spoolDegraded` = `spool_degraded` as 0 or 1, and
//! `spoolDrainEta_s` = `spool_drain_eta_secs` (seconds, with carbon-c-relay's unit suffix as in `wallTime_us`), left
//! out while the estimate is unknown so a graph shows a gap rather than a made-up value. When any destination has
//! a spool, `metricsSpooled` sums `spoolLines` as `metricsQueued` sums `queued`.
//! Not sent, for want of a counterpart: `stalls` and
//! `metricStalls` (we never stall a client to wait for a queue), the `wallTime_us`/`sleepTime_us` timings, the
//! per-`dispatcherN` copies, and the `destinations.internal` entry of carbon-c-relay's own submission queue.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{DropReason, Registry, Snapshot};
use crate::batch::Batch;
use crate::line::unix_now_secs;

/// The self-metrics of one instant, as LF-terminated `path value timestamp` lines under `prefix`.
///
/// `prefix` is already expanded ([`expand_prefix`]) and has no trailing dot. Values are totals since start, as
/// carbon-c-relay sends them by default; gauges (`queued`, `metricsQueued`, the spool's `spoolBytes`,
/// `spoolLines`, `spoolSegments`, `spoolDegraded`, `spoolDrainEta_s` and `metricsSpooled`) are the value now.
pub fn metrics_batch(prefix: &str, snapshot: &Snapshot, timestamp_secs: i64) -> Batch {
    let mut lines = Lines {
        prefix,
        timestamp_secs,
        text: String::with_capacity(128 * (8 + 4 * snapshot.destinations.len())),
        n_lines: 0,
    };
    lines.push("metricsReceived", snapshot.lines.received);
    lines.push(
        "metricsBlackholed",
        snapshot.lines.dropped_no_destination + snapshot.lines.no_route + snapshot.lines.blackholed,
    );
    lines.push(
        "metricsDiscarded",
        snapshot.lines.invalid_total() + snapshot.lines.rewrite_invalid,
    );

    let mut n_sent_total = 0;
    let mut n_queued_total = 0;
    let mut n_dropped_total = 0;
    let mut n_spooled_total: Option<u64> = None;
    for destination in &snapshot.destinations {
        let name = destination_name(&destination.address);
        let n_queued = u64::try_from(destination.queued_lines).unwrap_or(0);
        let n_dropped = destination.dropped_total();
        lines.push(&format!("destinations.{name}.sent"), destination.sent_lines);
        lines.push(&format!("destinations.{name}.queued"), n_queued);
        lines.push(&format!("destinations.{name}.dropped"), n_dropped);
        lines.push(
            &format!("destinations.{name}.resent"),
            destination.resent_lines,
        );
        if destination.moved_lines > 0 {
            lines.push(
                &format!("destinations.{name}.moved"),
                destination.moved_lines,
            );
        }
        if let Some(spool) = &destination.spool {
            let n_spool_dropped = destination.dropped[DropReason::SpoolFull as usize]
                + destination.dropped[DropReason::SpoolCorrupt as usize];
            lines.push(&format!("destinations.{name}.spoolBytes"), spool.bytes);
            lines.push(&format!("destinations.{name}.spoolLines"), spool.lines);
            lines.push(
                &format!("destinations.{name}.spoolSegments"),
                spool.segments,
            );
            lines.push(
                &format!("destinations.{name}.spoolReplayed"),
                spool.replayed_lines,
            );
            lines.push(
                &format!("destinations.{name}.spoolDropped"),
                n_spool_dropped,
            );
            lines.push(
                &format!("destinations.{name}.spoolWriteErrors"),
                spool.write_errors,
            );
            lines.push(
                &format!("destinations.{name}.spoolDegraded"),
                u64::from(spool.degraded),
            );
            if let Some(drain_eta_secs) = spool.drain_eta_secs {
                lines.push(
                    &format!("destinations.{name}.spoolDrainEta_s"),
                    drain_eta_secs,
                );
            }
            n_spooled_total = Some(n_spooled_total.unwrap_or(0) + spool.lines);
        }
        n_sent_total += destination.sent_lines;
        n_queued_total += n_queued;
        n_dropped_total += n_dropped;
    }
    lines.push("metricsSent", n_sent_total);
    lines.push("metricsQueued", n_queued_total);
    lines.push("metricsDropped", n_dropped_total);
    if let Some(n_spooled_total) = n_spooled_total {
        lines.push("metricsSpooled", n_spooled_total);
    }

    let n_connections_open = u64::try_from(snapshot.connections.open).unwrap_or(0);
    lines.push("connections", snapshot.connections.accepted);
    lines.push(
        "disconnects",
        snapshot
            .connections
            .accepted
            .saturating_sub(n_connections_open),
    );
    // Not one of carbon-c-relay's names: an accept loop out of descriptors is worth a graph of its own.
    lines.push("acceptErrors", snapshot.connections.accept_errors);

    let n_lines = lines.n_lines;
    Batch::new(Bytes::from(lines.text), n_lines)
}

/// The prefix with `{host}` replaced by `host` with every `.` turned into `_`, as carbon-c-relay's default
/// `carbon.relays.\.1` does: `carbon.relays.{host}` and `relay1.example.com` give `carbon.relays.relay1_example_com`.
pub fn expand_prefix(template: &str, host: &str) -> String {
    template.replace("{host}", &host.replace('.', "_"))
}

/// This machine's host name, as `gethostname(2)` gives it (carbon-c-relay's default `relay_hostname`).
pub fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Calls `send` with [`metrics_batch`] every `interval` until `shutdown` is cancelled; an `interval` of zero
/// disables it (returns at once).
///
/// `prefix` is already expanded. The first batch goes out one interval after the start, as in carbon-c-relay. Late
/// ticks are delayed rather than bunched.
pub async fn run_self_metrics(
    registry: Arc<Registry>,
    prefix: String,
    interval: Duration,
    send: impl Fn(Batch) + Send + 'static,
    shutdown: CancellationToken,
) {
    if interval.is_zero() {
        return;
    }
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        send(metrics_batch(
            &prefix,
            &registry.snapshot(),
            unix_now_secs(),
        ));
    }
}

/// A destination's identity as one path node: dots (and the `=` before an instance, outside the path alphabet)
/// become `_`, as carbon-c-relay writes `10_0_5_20:2003`.
fn destination_name(identity: &str) -> String {
    identity.replace(['.', '='], "_")
}

/// Lines being written for one batch.
struct Lines<'a> {
    prefix: &'a str,
    timestamp_secs: i64,
    text: String,
    n_lines: u32,
}

impl Lines<'_> {
    fn push(&mut self, name: &str, value: u64) {
        let separator = if self.prefix.is_empty() { "" } else { "." };
        writeln!(
            self.text,
            "{}{separator}{name} {value} {}",
            self.prefix, self.timestamp_secs
        )
        .expect("writing to a String cannot fail");
        self.n_lines += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::line::Invalid;

    fn check(snapshot: &Snapshot, expected: &str) {
        let batch = metrics_batch("carbon.relays.relay1", snapshot, 1431357190);
        assert_eq!(std::str::from_utf8(batch.bytes()).unwrap(), expected);
        assert_eq!(batch.n_lines() as usize, expected.lines().count());
    }

    #[test]
    fn lines_use_carbon_c_relay_names_and_totals() {
        let registry = Registry::new(&[
            "10.0.5.20:2003".to_string(),
            "graphite.example.com:2004=b".to_string(),
        ]);
        let relay = &registry.relay;
        relay.lines_received.store(1000, Ordering::Relaxed);
        relay
            .lines_dropped_no_destination
            .store(0, Ordering::Relaxed);
        relay.lines_invalid[Invalid::Fields as usize].store(3, Ordering::Relaxed);
        relay.lines_invalid[Invalid::Empty as usize].store(50, Ordering::Relaxed);
        relay.connections_accepted.store(12, Ordering::Relaxed);
        relay.connections_open.store(2, Ordering::Relaxed);
        relay.accept_errors.store(4, Ordering::Relaxed);
        let first = &registry.destinations()[0];
        first.sent_lines.store(900, Ordering::Relaxed);
        first.queued_lines.store(100, Ordering::Relaxed);
        let second = &registry.destinations()[1];
        second.sent_lines.store(700, Ordering::Relaxed);
        second.queued_lines.store(20, Ordering::Relaxed);
        second.add_dropped(DropReason::QueueFull, 250);
        second.add_dropped(DropReason::Shutdown, 30);
        second.resent_lines.store(40, Ordering::Relaxed);

        check(
            &registry.snapshot(),
            "carbon.relays.relay1.metricsReceived 1000 1431357190\n\
             carbon.relays.relay1.metricsBlackholed 0 1431357190\n\
             carbon.relays.relay1.metricsDiscarded 3 1431357190\n\
             carbon.relays.relay1.destinations.10_0_5_20:2003.sent 900 1431357190\n\
             carbon.relays.relay1.destinations.10_0_5_20:2003.queued 100 1431357190\n\
             carbon.relays.relay1.destinations.10_0_5_20:2003.dropped 0 1431357190\n\
             carbon.relays.relay1.destinations.10_0_5_20:2003.resent 0 1431357190\n\
             carbon.relays.relay1.destinations.graphite_example_com:2004_b.sent 700 1431357190\n\
             carbon.relays.relay1.destinations.graphite_example_com:2004_b.queued 20 1431357190\n\
             carbon.relays.relay1.destinations.graphite_example_com:2004_b.dropped 280 1431357190\n\
             carbon.relays.relay1.destinations.graphite_example_com:2004_b.resent 40 1431357190\n\
             carbon.relays.relay1.metricsSent 1600 1431357190\n\
             carbon.relays.relay1.metricsQueued 120 1431357190\n\
             carbon.relays.relay1.metricsDropped 280 1431357190\n\
             carbon.relays.relay1.connections 12 1431357190\n\
             carbon.relays.relay1.disconnects 10 1431357190\n\
             carbon.relays.relay1.acceptErrors 4 1431357190\n",
        );
    }

    #[test]
    fn no_destination_lines_are_blackholed_and_a_negative_gauge_reads_zero() {
        let registry = Registry::new(&["127.0.0.1:2003".to_string()]);
        registry.relay.lines_received.store(8, Ordering::Relaxed);
        registry
            .relay
            .lines_dropped_no_destination
            .store(8, Ordering::Relaxed);
        registry.destinations()[0]
            .queued_lines
            .store(-1, Ordering::Relaxed);
        check(
            &registry.snapshot(),
            "carbon.relays.relay1.metricsReceived 8 1431357190\n\
             carbon.relays.relay1.metricsBlackholed 8 1431357190\n\
             carbon.relays.relay1.metricsDiscarded 0 1431357190\n\
             carbon.relays.relay1.destinations.127_0_0_1:2003.sent 0 1431357190\n\
             carbon.relays.relay1.destinations.127_0_0_1:2003.queued 0 1431357190\n\
             carbon.relays.relay1.destinations.127_0_0_1:2003.dropped 0 1431357190\n\
             carbon.relays.relay1.destinations.127_0_0_1:2003.resent 0 1431357190\n\
             carbon.relays.relay1.metricsSent 0 1431357190\n\
             carbon.relays.relay1.metricsQueued 0 1431357190\n\
             carbon.relays.relay1.metricsDropped 0 1431357190\n\
             carbon.relays.relay1.connections 0 1431357190\n\
             carbon.relays.relay1.disconnects 0 1431357190\n\
             carbon.relays.relay1.acceptErrors 0 1431357190\n",
        );
    }

    #[test]
    fn a_destination_with_a_spool_sends_its_spool_figures_and_one_without_does_not() {
        let registry = Registry::new(&["a:2003".to_string(), "b:2003".to_string()]);
        registry.relay.lines_received.store(100, Ordering::Relaxed);
        let spooled = &registry.destinations()[0];
        spooled.spool_enabled.store(true, Ordering::Relaxed);
        spooled.sent_lines.store(40, Ordering::Relaxed);
        spooled.queued_lines.store(10, Ordering::Relaxed);
        spooled.add_dropped(DropReason::QueueFull, 1);
        spooled.add_dropped(DropReason::SpoolFull, 2);
        spooled.add_dropped(DropReason::SpoolCorrupt, 3);
        spooled.spool_bytes.store(65536, Ordering::Relaxed);
        spooled.spool_lines.store(44, Ordering::Relaxed);
        spooled.spool_segments.store(2, Ordering::Relaxed);
        spooled.spool_replayed_lines.store(500, Ordering::Relaxed);
        spooled.spool_drain_eta_secs.store(12, Ordering::Relaxed);
        spooled.spool_degraded.store(true, Ordering::Relaxed);
        spooled.spool_write_errors.store(7, Ordering::Relaxed);
        registry.destinations()[1]
            .sent_lines
            .store(100, Ordering::Relaxed);

        check(
            &registry.snapshot(),
            "carbon.relays.relay1.metricsReceived 100 1431357190\n\
             carbon.relays.relay1.metricsBlackholed 0 1431357190\n\
             carbon.relays.relay1.metricsDiscarded 0 1431357190\n\
             carbon.relays.relay1.destinations.a:2003.sent 40 1431357190\n\
             carbon.relays.relay1.destinations.a:2003.queued 10 1431357190\n\
             carbon.relays.relay1.destinations.a:2003.dropped 6 1431357190\n\
             carbon.relays.relay1.destinations.a:2003.resent 0 1431357190\n\
             carbon.relays.relay1.destinations.a:2003.spoolBytes 65536 1431357190\n\
             carbon.relays.relay1.destinations.a:2003.spoolLines 44 1431357190\n\
             carbon.relays.relay1.destinations.a:2003.spoolSegments 2 1431357190\n\
             carbon.relays.relay1.destinations.a:2003.spoolReplayed 500 1431357190\n\
             carbon.relays.relay1.destinations.a:2003.spoolDropped 5 1431357190\n\
             carbon.relays.relay1.destinations.a:2003.spoolWriteErrors 7 1431357190\n\
             carbon.relays.relay1.destinations.a:2003.spoolDegraded 1 1431357190\n\
             carbon.relays.relay1.destinations.a:2003.spoolDrainEta_s 12 1431357190\n\
             carbon.relays.relay1.destinations.b:2003.sent 100 1431357190\n\
             carbon.relays.relay1.destinations.b:2003.queued 0 1431357190\n\
             carbon.relays.relay1.destinations.b:2003.dropped 0 1431357190\n\
             carbon.relays.relay1.destinations.b:2003.resent 0 1431357190\n\
             carbon.relays.relay1.metricsSent 140 1431357190\n\
             carbon.relays.relay1.metricsQueued 10 1431357190\n\
             carbon.relays.relay1.metricsDropped 6 1431357190\n\
             carbon.relays.relay1.metricsSpooled 44 1431357190\n\
             carbon.relays.relay1.connections 0 1431357190\n\
             carbon.relays.relay1.disconnects 0 1431357190\n\
             carbon.relays.relay1.acceptErrors 0 1431357190\n",
        );
    }

    #[test]
    fn an_unknown_drain_time_is_left_out_rather_than_sent_as_minus_one() {
        let registry = Registry::new(&["a:2003".to_string()]);
        registry.destinations()[0]
            .spool_enabled
            .store(true, Ordering::Relaxed);
        let batch = metrics_batch("p", &registry.snapshot(), 1);
        let text = std::str::from_utf8(batch.bytes()).unwrap();
        assert!(
            text.contains("p.destinations.a:2003.spoolLines 0 1\n"),
            "{text}"
        );
        assert!(!text.contains("spoolDrainEta_s"), "{text}");
        assert!(!text.contains(" -1 "), "{text}");
    }

    #[test]
    fn prefix_takes_the_whole_host_name_with_dots_as_underscores() {
        assert_eq!(
            expand_prefix("carbon.relays.{host}", "relay1.dc1.example.com"),
            "carbon.relays.relay1_dc1_example_com"
        );
        assert_eq!(
            expand_prefix("carbon.relays.{host}", "relay1"),
            "carbon.relays.relay1"
        );
        assert_eq!(expand_prefix("relays.fixed", "relay1"), "relays.fixed");
    }

    #[tokio::test(start_paused = true)]
    async fn self_metrics_go_out_every_interval_until_shutdown() {
        let registry = Arc::new(Registry::new(&[]));
        let batches = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let sent = batches.clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_self_metrics(
            registry,
            "carbon.relays.relay1".to_string(),
            Duration::from_secs(60),
            move |batch| sent.lock().push(batch),
            shutdown.clone(),
        ));

        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(batches.lock().is_empty());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(batches.lock().len(), 1);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(batches.lock().len(), 2);
        assert!(std::str::from_utf8(batches.lock()[1].bytes())
            .unwrap()
            .starts_with("carbon.relays.relay1.metricsReceived 0 "));

        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(batches.lock().len(), 2);
    }
}
