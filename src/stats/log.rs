//! The periodic log line of the seed, `Last 5s: Received N datapoints | Avg: X/sec. | Inbound queue length: N`, and
//! the lines that follow it: one per destination with lines queued, one per destination whose disk spool holds or
//! replayed lines (or is degraded), and one per kind of loss in the interval.
//!
//! An edge task next to the listeners: [`run_log_ticker`] watches the shutdown token, takes a [`Snapshot`] every
//! `stats.log_interval`, and logs what [`interval_report`] makes of the previous and current snapshot. The report is a
//! pure function so its wording is tested without time or a subscriber. Levels follow `DECISIONS.md`: the summary,
//! queue lengths and spool figures are INFO (WARN for a degraded spool, which the relay works around by keeping
//! lines in memory or dropping them, counted); lost lines are ERROR, and since they are logged at most once per
//! interval and reason, the ticker is their rate limit.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Level};

use super::{DropReason, Registry, Snapshot};

/// One log line of an interval's report.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportLine {
    /// The seed's summary: valid lines received in the interval, their rate, and `inbound_lines` now.
    Received {
        /// The interval in whole seconds, as the message shows it.
        interval_secs: u64,
        /// Valid lines received during the interval.
        n_lines: u64,
        /// `n_lines` divided by the interval.
        lines_per_sec: f64,
        /// Lines accepted but not yet in any destination queue, now.
        inbound_lines: i64,
    },
    /// A destination has lines waiting in its queue.
    DestinationQueue {
        /// The destination as configured.
        address: String,
        /// Lines in its queue now.
        queued_lines: i64,
    },
    /// A destination's disk spool holds lines, replayed lines during the interval, or is degraded.
    DestinationSpool {
        /// The destination as configured.
        address: String,
        /// Bytes of its segment files on disk now.
        spool_bytes: u64,
        /// Lines waiting on disk now.
        spool_lines: u64,
        /// Segment files now.
        spool_segments: u64,
        /// Lines read back from disk into memory during the interval.
        replayed_lines: u64,
        /// The spool's last write or sync failed.
        degraded: bool,
    },
    /// A destination dropped lines during the interval.
    DestinationDropped {
        /// The destination as configured.
        address: String,
        /// Why it dropped them.
        reason: DropReason,
        /// Lines dropped for this reason during the interval.
        n_lines: u64,
    },
    /// Lines went to no destination during the interval: `no_destination` (none configured), `no_route` (no route
    /// matched), `blackholed` (routes sent them to `blackhole`) or `rewrite_invalid` (a rewrite made them invalid).
    NoDestinationDropped {
        /// Which of the four.
        reason: &'static str,
        /// Lines dropped during the interval.
        n_lines: u64,
    },
}

/// Logs a report every `interval` until `shutdown` is cancelled, then one last report for the time since the previous
/// one (so losses at the end, during shutdown included, are logged too); an `interval` of zero disables it.
///
/// The first report comes one interval after the start and covers that interval, as in the seed. Late ticks are
/// delayed rather than bunched, so two reports are never closer than `interval`.
pub async fn run_log_ticker(
    registry: Arc<Registry>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    if interval.is_zero() {
        return;
    }
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut previous = registry.snapshot();
    let mut previous_at = tokio::time::Instant::now();
    loop {
        let last = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = ticker.tick() => false,
        };
        let current = registry.snapshot();
        let covered = if last {
            previous_at.elapsed()
        } else {
            interval
        };
        for report_line in interval_report(&previous, &current, covered) {
            report_line.emit();
        }
        if last {
            return;
        }
        previous = current;
        previous_at = tokio::time::Instant::now();
    }
}

/// What to log for the interval between two snapshots of the same registry: the summary line first, then per
/// destination (config order) its queue length if any lines are queued, its spool if it has one that holds lines,
/// replayed some or is degraded, and its losses by reason, then losses for want of a destination.
pub fn interval_report(
    previous: &Snapshot,
    current: &Snapshot,
    interval: Duration,
) -> Vec<ReportLine> {
    let n_lines = current
        .lines
        .received
        .saturating_sub(previous.lines.received);
    let mut report = vec![ReportLine::Received {
        interval_secs: interval.as_secs(),
        n_lines,
        lines_per_sec: per_sec(n_lines, interval),
        inbound_lines: current.lines.inbound,
    }];
    for destination in &current.destinations {
        if destination.queued_lines > 0 {
            report.push(ReportLine::DestinationQueue {
                address: destination.address.clone(),
                queued_lines: destination.queued_lines,
            });
        }
        // By address: a reload reorders the destinations.
        let previous_destination = previous
            .destinations
            .iter()
            .find(|previous| previous.address == destination.address);
        if let Some(spool) = &destination.spool {
            let previous_replayed_lines = previous_destination
                .and_then(|previous| previous.spool.as_ref())
                .map_or(0, |previous| previous.replayed_lines);
            let replayed_lines = spool.replayed_lines.saturating_sub(previous_replayed_lines);
            if spool.lines > 0 || replayed_lines > 0 || spool.degraded {
                report.push(ReportLine::DestinationSpool {
                    address: destination.address.clone(),
                    spool_bytes: spool.bytes,
                    spool_lines: spool.lines,
                    spool_segments: spool.segments,
                    replayed_lines,
                    degraded: spool.degraded,
                });
            }
        }
        let previous_dropped =
            previous_destination.map_or([0; DropReason::ALL.len()], |previous| previous.dropped);
        for reason in DropReason::ALL {
            let n_dropped = destination.dropped[reason as usize]
                .saturating_sub(previous_dropped[reason as usize]);
            if n_dropped > 0 {
                report.push(ReportLine::DestinationDropped {
                    address: destination.address.clone(),
                    reason,
                    n_lines: n_dropped,
                });
            }
        }
    }
    for (reason, now, before) in [
        (
            "no_destination",
            current.lines.dropped_no_destination,
            previous.lines.dropped_no_destination,
        ),
        ("no_route", current.lines.no_route, previous.lines.no_route),
        (
            "blackholed",
            current.lines.blackholed,
            previous.lines.blackholed,
        ),
        (
            "rewrite_invalid",
            current.lines.rewrite_invalid,
            previous.lines.rewrite_invalid,
        ),
    ] {
        let n_lines = now.saturating_sub(before);
        if n_lines > 0 {
            report.push(ReportLine::NoDestinationDropped { reason, n_lines });
        }
    }
    report
}

impl ReportLine {
    /// The level the line is logged at.
    pub fn level(&self) -> Level {
        match self {
            ReportLine::Received { .. } | ReportLine::DestinationQueue { .. } => Level::INFO,
            ReportLine::DestinationSpool { degraded, .. } => {
                if *degraded {
                    Level::WARN
                } else {
                    Level::INFO
                }
            }
            ReportLine::DestinationDropped { .. } => Level::ERROR,
            // Blackholing is what the routes asked for; the others are lines lost to a gap in the config.
            ReportLine::NoDestinationDropped { reason, .. } => {
                if *reason == "blackholed" {
                    Level::INFO
                } else {
                    Level::ERROR
                }
            }
        }
    }

    /// Logs the line at its level, with structured fields where the message is not the seed's.
    pub fn emit(&self) {
        match self {
            ReportLine::Received { .. } | ReportLine::DestinationQueue { .. } => info!("{self}"),
            ReportLine::DestinationSpool {
                address,
                spool_bytes,
                spool_lines,
                spool_segments,
                replayed_lines,
                degraded,
            } => {
                if *degraded {
                    warn!(
                        destination = %address,
                        spool_bytes,
                        spool_lines,
                        spool_segments,
                        replayed_lines,
                        degraded,
                        "destination spool"
                    );
                } else {
                    info!(
                        destination = %address,
                        spool_bytes,
                        spool_lines,
                        spool_segments,
                        replayed_lines,
                        degraded,
                        "destination spool"
                    );
                }
            }
            ReportLine::DestinationDropped {
                address,
                reason,
                n_lines,
            } => error!(
                destination = %address,
                dropped = n_lines,
                reason = reason.name(),
                "destination dropping lines"
            ),
            ReportLine::NoDestinationDropped { reason, n_lines } => {
                if *reason == "blackholed" {
                    info!(dropped = n_lines, reason, "lines dropped");
                } else {
                    error!(dropped = n_lines, reason, "lines dropped");
                }
            }
        }
    }
}

/// The text of the line as a text log shows it (message, then fields).
impl fmt::Display for ReportLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportLine::Received {
                interval_secs,
                n_lines,
                lines_per_sec,
                inbound_lines,
            } => write!(
                f,
                "Last {interval_secs}s: Received {n_lines} datapoints | Avg: {lines_per_sec:.2}/sec. | \
                 Inbound queue length: {inbound_lines}"
            ),
            ReportLine::DestinationQueue { address, queued_lines } => {
                write!(f, "Destination {address} queue length: {queued_lines}")
            }
            ReportLine::DestinationSpool {
                address,
                spool_bytes,
                spool_lines,
                spool_segments,
                replayed_lines,
                degraded,
            } => write!(
                f,
                "destination spool destination={address} spool_bytes={spool_bytes} spool_lines={spool_lines} \
                 spool_segments={spool_segments} replayed_lines={replayed_lines} degraded={degraded}"
            ),
            ReportLine::DestinationDropped {
                address,
                reason,
                n_lines,
            } => write!(
                f,
                "destination dropping lines destination={address} dropped={n_lines} reason={}",
                reason.name()
            ),
            ReportLine::NoDestinationDropped { reason, n_lines } => {
                write!(f, "lines dropped dropped={n_lines} reason={reason}")
            }
        }
    }
}

fn per_sec(n: u64, interval: Duration) -> f64 {
    let secs = interval.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::Ordering;

    use parking_lot::Mutex;
    use tracing::instrument::WithSubscriber;

    use super::*;

    fn snapshot(received: u64, inbound: i64, destinations: &[(&str, i64, [u64; 2])]) -> Snapshot {
        let registry = Registry::new(
            &destinations
                .iter()
                .map(|d| d.0.to_string())
                .collect::<Vec<_>>(),
        );
        registry
            .relay
            .lines_received
            .store(received, Ordering::Relaxed);
        registry
            .relay
            .inbound_lines
            .store(inbound, Ordering::Relaxed);
        for (stats, &(_, queued_lines, dropped)) in registry.destinations().iter().zip(destinations)
        {
            stats.queued_lines.store(queued_lines, Ordering::Relaxed);
            stats.add_dropped(DropReason::QueueFull, dropped[0]);
            stats.add_dropped(DropReason::Shutdown, dropped[1]);
        }
        registry.snapshot()
    }

    fn check(
        previous: &Snapshot,
        current: &Snapshot,
        interval_secs: u64,
        expected: &[(Level, &str)],
    ) {
        let report = interval_report(previous, current, Duration::from_secs(interval_secs));
        let actual: Vec<(Level, String)> = report
            .iter()
            .map(|line| (line.level(), line.to_string()))
            .collect();
        let expected: Vec<(Level, String)> = expected
            .iter()
            .map(|(level, text)| (*level, text.to_string()))
            .collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn summary_has_the_seeds_wording_and_two_decimals() {
        check(
            &snapshot(1000, 0, &[]),
            &snapshot(7176, 0, &[]),
            5,
            &[(
                Level::INFO,
                "Last 5s: Received 6176 datapoints | Avg: 1235.20/sec. | Inbound queue length: 0",
            )],
        );
    }

    #[test]
    fn summary_names_the_configured_interval() {
        check(
            &snapshot(0, 0, &[]),
            &snapshot(5, 12, &[]),
            10,
            &[(
                Level::INFO,
                "Last 10s: Received 5 datapoints | Avg: 0.50/sec. | Inbound queue length: 12",
            )],
        );
    }

    #[test]
    fn queued_destinations_are_listed_and_empty_ones_are_not() {
        check(
            &snapshot(
                0,
                0,
                &[("10.0.5.20:2003", 0, [0, 0]), ("10.0.5.25:2003", 0, [0, 0])],
            ),
            &snapshot(
                0,
                0,
                &[
                    ("10.0.5.20:2003", 1234, [0, 0]),
                    ("10.0.5.25:2003", 0, [0, 0]),
                ],
            ),
            5,
            &[
                (
                    Level::INFO,
                    "Last 5s: Received 0 datapoints | Avg: 0.00/sec. | Inbound queue length: 0",
                ),
                (Level::INFO, "Destination 10.0.5.20:2003 queue length: 1234"),
            ],
        );
    }

    #[test]
    fn drops_in_the_interval_are_errors_per_reason_and_old_drops_are_not_repeated() {
        check(
            &snapshot(0, 0, &[("a:2003", 0, [10, 0]), ("b:2003", 0, [5, 0])]),
            &snapshot(0, 0, &[("a:2003", 0, [13, 1]), ("b:2003", 0, [5, 0])]),
            5,
            &[
                (
                    Level::INFO,
                    "Last 5s: Received 0 datapoints | Avg: 0.00/sec. | Inbound queue length: 0",
                ),
                (
                    Level::ERROR,
                    "destination dropping lines destination=a:2003 dropped=3 reason=queue_full",
                ),
                (
                    Level::ERROR,
                    "destination dropping lines destination=a:2003 dropped=1 reason=shutdown",
                ),
            ],
        );
    }

    /// A snapshot of `a:2003`, with a spool holding `spool_lines` lines (100 bytes a line, 10 lines a segment) and
    /// having replayed `replayed_lines` in all, with the given spool drops, and of `b:2003`, without a spool.
    fn spool_snapshot(
        spool_lines: u64,
        replayed_lines: u64,
        degraded: bool,
        spool_full: u64,
        spool_corrupt: u64,
    ) -> Snapshot {
        let registry = Registry::new(&["a:2003".to_string(), "b:2003".to_string()]);
        let stats = &registry.destinations()[0];
        stats.spool_enabled.store(true, Ordering::Relaxed);
        stats.spool_lines.store(spool_lines, Ordering::Relaxed);
        stats
            .spool_bytes
            .store(spool_lines * 100, Ordering::Relaxed);
        stats
            .spool_segments
            .store(spool_lines.div_ceil(10), Ordering::Relaxed);
        stats
            .spool_replayed_lines
            .store(replayed_lines, Ordering::Relaxed);
        stats.spool_degraded.store(degraded, Ordering::Relaxed);
        stats.add_dropped(DropReason::SpoolFull, spool_full);
        stats.add_dropped(DropReason::SpoolCorrupt, spool_corrupt);
        registry.snapshot()
    }

    const IDLE_SUMMARY: (Level, &str) = (
        Level::INFO,
        "Last 5s: Received 0 datapoints | Avg: 0.00/sec. | Inbound queue length: 0",
    );

    #[test]
    fn a_spool_holding_lines_is_listed_with_what_it_replayed_in_the_interval() {
        check(
            &spool_snapshot(50, 100, false, 0, 0),
            &spool_snapshot(30, 400, false, 0, 0),
            5,
            &[
                IDLE_SUMMARY,
                (
                    Level::INFO,
                    "destination spool destination=a:2003 spool_bytes=3000 spool_lines=30 spool_segments=3 \
                     replayed_lines=300 degraded=false",
                ),
            ],
        );
    }

    #[test]
    fn a_spool_that_just_drained_is_listed_once_and_an_idle_empty_one_is_not() {
        let drained = spool_snapshot(0, 400, false, 0, 0);
        check(
            &spool_snapshot(30, 370, false, 0, 0),
            &drained,
            5,
            &[
                IDLE_SUMMARY,
                (
                    Level::INFO,
                    "destination spool destination=a:2003 spool_bytes=0 spool_lines=0 spool_segments=0 \
                     replayed_lines=30 degraded=false",
                ),
            ],
        );
        check(&drained, &drained, 5, &[IDLE_SUMMARY]);
    }

    #[test]
    fn a_degraded_spool_is_a_warning_even_when_empty() {
        check(
            &spool_snapshot(0, 0, false, 0, 0),
            &spool_snapshot(0, 0, true, 0, 0),
            5,
            &[
                IDLE_SUMMARY,
                (
                    Level::WARN,
                    "destination spool destination=a:2003 spool_bytes=0 spool_lines=0 spool_segments=0 \
                     replayed_lines=0 degraded=true",
                ),
            ],
        );
    }

    #[test]
    fn lines_routed_nowhere_are_logged_by_reason_and_blackholing_is_no_error() {
        let previous = spool_snapshot(0, 0, false, 0, 0);
        let mut current = previous.clone();
        current.lines.no_route = 3;
        current.lines.blackholed = 7;
        current.lines.rewrite_invalid = 1;
        let report = interval_report(&previous, &current, Duration::from_secs(5));
        let nowhere: Vec<(Level, String)> = report
            .iter()
            .filter(|line| matches!(line, ReportLine::NoDestinationDropped { .. }))
            .map(|line| (line.level(), line.to_string()))
            .collect();
        assert_eq!(
            nowhere,
            [
                (
                    Level::ERROR,
                    "lines dropped dropped=3 reason=no_route".to_string()
                ),
                (
                    Level::INFO,
                    "lines dropped dropped=7 reason=blackholed".to_string()
                ),
                (
                    Level::ERROR,
                    "lines dropped dropped=1 reason=rewrite_invalid".to_string()
                ),
            ]
        );
    }

    #[test]
    fn spool_drops_are_errors_under_their_own_reasons() {
        check(
            &spool_snapshot(0, 0, false, 10, 0),
            &spool_snapshot(0, 0, false, 15, 2),
            5,
            &[
                IDLE_SUMMARY,
                (
                    Level::ERROR,
                    "destination dropping lines destination=a:2003 dropped=5 reason=spool_full",
                ),
                (
                    Level::ERROR,
                    "destination dropping lines destination=a:2003 dropped=2 reason=spool_corrupt",
                ),
            ],
        );
    }

    #[test]
    fn lines_dropped_for_want_of_a_destination_are_an_error() {
        let previous = snapshot(0, 0, &[]);
        let mut current = snapshot(4, 0, &[]);
        current.lines.dropped_no_destination = 4;
        let report = interval_report(&previous, &current, Duration::from_secs(5));
        assert_eq!(
            report[1],
            ReportLine::NoDestinationDropped {
                reason: "no_destination",
                n_lines: 4
            }
        );
        assert_eq!(report[1].level(), Level::ERROR);
    }

    /// A `MakeWriter` that keeps what is logged.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().clone())
                .unwrap()
                .lines()
                .map(|line| line.trim_start().to_string())
                .collect()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ticker_logs_each_interval_until_shutdown() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .finish();
        let registry = Arc::new(Registry::new(&[]));
        let shutdown = CancellationToken::new();
        let ticker = tokio::spawn(
            run_log_ticker(registry.clone(), Duration::from_secs(10), shutdown.clone())
                .with_subscriber(subscriber),
        );

        tokio::time::sleep(Duration::from_secs(1)).await;
        registry
            .relay
            .lines_received
            .fetch_add(25, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(captured.lines().is_empty(), "{:?}", captured.lines());

        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            captured.lines(),
            ["INFO Last 10s: Received 25 datapoints | Avg: 2.50/sec. | Inbound queue length: 0"]
        );

        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(captured.lines().len(), 2);
        assert!(captured.lines()[1].contains("Received 0 datapoints"));

        shutdown.cancel();
        ticker.await.unwrap();
    }
}
