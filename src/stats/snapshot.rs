//! [`Snapshot`]: a plain copy of every counter at one instant, the one value `/stats`, the log line and the
//! self-metrics read.
//!
//! Its JSON (for `GET /stats`) is the struct as it stands: each field has the name of the counter it copies, grouped
//! by the word the counter starts with (`connections_accepted` is `connections.accepted`), and the per-reason
//! arrays become objects keyed by [`Invalid::name`], [`Note::name`] and [`DropReason::name`], in counter order.
//! The stats server's own counters sit under `stats_server`, with their names in code (`connections_rejected`).
//! Every counter is present, zero or not, so a dashboard never has to guess whether a key is missing or zero. The
//! one exception is a destination's `spool`, an object ([`SpoolSnapshot`]) for a destination with a disk spool and
//! `null` for one without, so that `null` says "no spool" rather than "an empty one"; within it,
//! `drain_eta_secs` is `null` while the time is unknown (the spool is not draining).

use std::sync::atomic::Ordering;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::{DestinationStats, DropReason, Registry, Stats, StatsServerStats};
use crate::line::{Invalid, Note};

/// Every counter of the relay, copied at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Whole seconds since the counters were created (process start).
    pub uptime_secs: u64,
    /// The `connections_*` counters and `accept_errors`.
    pub connections: ConnectionsSnapshot,
    /// The `lines_*` counters (`lines_console_out_dropped` too), `bytes_received` and `inbound_lines`.
    pub lines: LinesSnapshot,
    /// One entry per destination, in config order.
    pub destinations: Vec<DestinationSnapshot>,
    /// The stats server's own connection counters.
    pub stats_server: StatsServerSnapshot,
}

/// Copies of the connection counters of [`Stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionsSnapshot {
    /// `connections_open`: connections open now (a gauge).
    pub open: i64,
    /// `connections_accepted`: connections accepted and handed to a connection task.
    pub accepted: u64,
    /// `connections_rejected`: connections closed at once because `listen.max_connections` were open.
    pub rejected: u64,
    /// `connections_idle_closed`: connections closed after `listen.idle_timeout`.
    pub idle_closed: u64,
    /// `accept_errors`: errors returned by `accept`.
    pub accept_errors: u64,
}

/// Copies of the counters of [`StatsServerStats`], under their names in code.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatsServerSnapshot {
    /// Connections open now (a gauge).
    pub connections_open: i64,
    /// Connections accepted and served.
    pub connections_accepted: u64,
    /// Connections closed at once because `stats.max_connections` were open.
    pub connections_rejected: u64,
    /// Connections closed by `stats.header_read_timeout` or `stats.request_timeout`.
    pub connections_timed_out: u64,
    /// Errors of the stats server's `accept` (such as `EMFILE`).
    pub accept_errors: u64,
}

/// Copies of the line counters of [`Stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LinesSnapshot {
    /// `lines_received`: valid lines accepted.
    pub received: u64,
    /// `bytes_received`: bytes read from client connections.
    pub bytes_received: u64,
    /// `lines_invalid`: lines not forwarded, indexed by `Invalid as usize`; JSON keys are [`Invalid::name`].
    #[serde(serialize_with = "serialize_invalid")]
    pub invalid: [u64; Invalid::ALL.len()],
    /// `lines_noted`: forwarded lines with a note, indexed by `Note as usize`; JSON keys are [`Note::name`].
    #[serde(serialize_with = "serialize_noted")]
    pub noted: [u64; Note::ALL.len()],
    /// `lines_dropped_no_destination`: valid lines dropped because no destination is configured.
    pub dropped_no_destination: u64,
    /// `lines_no_route`: valid lines no route matched.
    pub no_route: u64,
    /// `lines_blackholed`: valid lines the matching routes sent only to `blackhole`.
    pub blackholed: u64,
    /// `lines_rewrite_invalid`: lines a rewrite turned invalid, not forwarded.
    pub rewrite_invalid: u64,
    /// `lines_console_out_dropped`: relayed lines `-console-out` did not print (stdout too slow or closed).
    pub console_out_dropped: u64,
    /// `inbound_lines`: lines accepted but not yet in any destination queue (a gauge).
    pub inbound: i64,
}

/// Copies of the counters of one destination ([`DestinationStats`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestinationSnapshot {
    /// The destination as configured, `host:port`.
    pub address: String,
    /// True while a connection to the destination is open.
    pub connected: bool,
    /// Lines in the queue now (a gauge).
    pub queued_lines: i64,
    /// Bytes of memory the queued batches keep alive now, as counted against `queue_max_bytes` (a gauge).
    pub queued_bytes: i64,
    /// Lines the destination's kernel acknowledged.
    pub sent_lines: u64,
    /// Bytes of those lines.
    pub sent_bytes: u64,
    /// `dropped_lines`, indexed by `DropReason as usize`; JSON keys are [`DropReason::name`].
    #[serde(serialize_with = "serialize_dropped")]
    pub dropped: [u64; DropReason::ALL.len()],
    /// Successful connects.
    pub connects: u64,
    /// Failed connect attempts.
    pub connect_failures: u64,
    /// Connections lost after they were established.
    pub disconnects: u64,
    /// Writes that made no progress within `destination.write_timeout`.
    pub write_timeouts: u64,
    /// Lines written to a failed connection before the destination acknowledged them, and queued again.
    pub resent_lines: u64,
    /// Lines handed to other members of its cluster while it was out.
    pub moved_lines: u64,
    /// The destination's disk spool, or `None` (JSON `null`) when it has none (`spool_enabled` is false).
    pub spool: Option<SpoolSnapshot>,
}

/// Copies of the `spool_*` counters of one destination that has a disk spool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpoolSnapshot {
    /// `spool_bytes`: bytes of the spool's segment files on disk now (a gauge).
    pub bytes: u64,
    /// `spool_lines`: lines on disk waiting to be sent, not yet read back into memory (a gauge).
    pub lines: u64,
    /// `spool_segments`: segment files now (a gauge).
    pub segments: u64,
    /// `spool_replayed_lines`: lines read back from disk into the memory queue.
    pub replayed_lines: u64,
    /// `spool_drain_eta_secs`: seconds until the spool is empty at the current replay rate (a gauge); `None` (JSON
    /// `null`) while unknown or not draining.
    pub drain_eta_secs: Option<u64>,
    /// `spool_degraded`: the spool's last write or sync failed (disk full or failing).
    pub degraded: bool,
    /// `spool_write_errors`: spool writes and syncs that failed.
    pub write_errors: u64,
}

impl Snapshot {
    /// Reads every counter of the registry.
    pub(super) fn read(registry: &Registry) -> Snapshot {
        Snapshot {
            uptime_secs: registry.relay.started.0.elapsed().as_secs(),
            connections: ConnectionsSnapshot::read(&registry.relay),
            lines: LinesSnapshot::read(&registry.relay),
            destinations: registry
                .destinations()
                .iter()
                .map(|destination| DestinationSnapshot::read(destination))
                .collect(),
            stats_server: StatsServerSnapshot::read(&registry.stats_server),
        }
    }
}

impl ConnectionsSnapshot {
    fn read(stats: &Stats) -> ConnectionsSnapshot {
        ConnectionsSnapshot {
            open: stats.connections_open.load(Ordering::Relaxed),
            accepted: stats.connections_accepted.load(Ordering::Relaxed),
            rejected: stats.connections_rejected.load(Ordering::Relaxed),
            idle_closed: stats.connections_idle_closed.load(Ordering::Relaxed),
            accept_errors: stats.accept_errors.load(Ordering::Relaxed),
        }
    }
}

impl StatsServerSnapshot {
    fn read(stats: &StatsServerStats) -> StatsServerSnapshot {
        StatsServerSnapshot {
            connections_open: stats.connections_open.load(Ordering::Relaxed),
            connections_accepted: stats.connections_accepted.load(Ordering::Relaxed),
            connections_rejected: stats.connections_rejected.load(Ordering::Relaxed),
            connections_timed_out: stats.connections_timed_out.load(Ordering::Relaxed),
            accept_errors: stats.accept_errors.load(Ordering::Relaxed),
        }
    }
}

impl LinesSnapshot {
    /// Lines rejected for any reason other than [`Invalid::Empty`].
    pub fn invalid_total(&self) -> u64 {
        Invalid::ALL
            .iter()
            .filter(|&&reason| reason != Invalid::Empty)
            .map(|&reason| self.invalid[reason as usize])
            .sum()
    }

    fn read(stats: &Stats) -> LinesSnapshot {
        LinesSnapshot {
            received: stats.lines_received.load(Ordering::Relaxed),
            bytes_received: stats.bytes_received.load(Ordering::Relaxed),
            invalid: stats
                .lines_invalid
                .each_ref()
                .map(|counter| counter.load(Ordering::Relaxed)),
            noted: stats
                .lines_noted
                .each_ref()
                .map(|counter| counter.load(Ordering::Relaxed)),
            dropped_no_destination: stats.lines_dropped_no_destination.load(Ordering::Relaxed),
            no_route: stats.lines_no_route.load(Ordering::Relaxed),
            blackholed: stats.lines_blackholed.load(Ordering::Relaxed),
            rewrite_invalid: stats.lines_rewrite_invalid.load(Ordering::Relaxed),
            console_out_dropped: stats.lines_console_out_dropped.load(Ordering::Relaxed),
            inbound: stats.inbound_lines.load(Ordering::Relaxed),
        }
    }
}

impl DestinationSnapshot {
    /// Lines dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Lines waiting on disk (`spool.lines`), zero without a spool: the last term of `received = sent + dropped +
    /// queued + spooled`.
    pub fn spooled_lines(&self) -> u64 {
        self.spool.as_ref().map_or(0, |spool| spool.lines)
    }

    fn read(stats: &DestinationStats) -> DestinationSnapshot {
        DestinationSnapshot {
            address: stats.address.clone(),
            connected: stats.connected.load(Ordering::Relaxed),
            queued_lines: stats.queued_lines.load(Ordering::Relaxed),
            queued_bytes: stats.queued_bytes.load(Ordering::Relaxed),
            sent_lines: stats.sent_lines.load(Ordering::Relaxed),
            sent_bytes: stats.sent_bytes.load(Ordering::Relaxed),
            dropped: stats
                .dropped_lines
                .each_ref()
                .map(|counter| counter.load(Ordering::Relaxed)),
            connects: stats.connects.load(Ordering::Relaxed),
            connect_failures: stats.connect_failures.load(Ordering::Relaxed),
            disconnects: stats.disconnects.load(Ordering::Relaxed),
            write_timeouts: stats.write_timeouts.load(Ordering::Relaxed),
            resent_lines: stats.resent_lines.load(Ordering::Relaxed),
            moved_lines: stats.moved_lines.load(Ordering::Relaxed),
            spool: SpoolSnapshot::read(stats),
        }
    }
}

impl SpoolSnapshot {
    /// The spool counters of a destination, or `None` if it has no spool.
    fn read(stats: &DestinationStats) -> Option<SpoolSnapshot> {
        if !stats.spool_enabled.load(Ordering::Relaxed) {
            return None;
        }
        // A negative estimate is the writer's "unknown".
        let drain_eta_secs = u64::try_from(stats.spool_drain_eta_secs.load(Ordering::Relaxed)).ok();
        Some(SpoolSnapshot {
            bytes: stats.spool_bytes.load(Ordering::Relaxed),
            lines: stats.spool_lines.load(Ordering::Relaxed),
            segments: stats.spool_segments.load(Ordering::Relaxed),
            replayed_lines: stats.spool_replayed_lines.load(Ordering::Relaxed),
            drain_eta_secs,
            degraded: stats.spool_degraded.load(Ordering::Relaxed),
            write_errors: stats.spool_write_errors.load(Ordering::Relaxed),
        })
    }
}

fn serialize_invalid<S: Serializer>(
    counts: &[u64; Invalid::ALL.len()],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serialize_named(Invalid::ALL.map(Invalid::name), counts, serializer)
}

fn serialize_noted<S: Serializer>(
    counts: &[u64; Note::ALL.len()],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serialize_named(Note::ALL.map(Note::name), counts, serializer)
}

fn serialize_dropped<S: Serializer>(
    counts: &[u64; DropReason::ALL.len()],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serialize_named(DropReason::ALL.map(DropReason::name), counts, serializer)
}

/// Serialises per-reason counts as an object in counter order (a `BTreeMap` would sort the keys).
fn serialize_named<S: Serializer, const N: usize>(
    names: [&'static str; N],
    counts: &[u64; N],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(N))?;
    for (name, count) in names.iter().zip(counts) {
        map.serialize_entry(name, count)?;
    }
    map.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_copies_every_counter_and_serialises_reasons_by_name() {
        let registry = Registry::new(&["10.0.5.20:2003".to_string()]);
        registry.relay.lines_received.store(7, Ordering::Relaxed);
        registry.relay.lines_invalid[Invalid::PathLen as usize].store(2, Ordering::Relaxed);
        registry.relay.lines_noted[Note::TsFar as usize].store(3, Ordering::Relaxed);
        registry.relay.inbound_lines.store(4, Ordering::Relaxed);
        registry.relay.connections_open.store(5, Ordering::Relaxed);
        registry.destinations()[0].add_dropped(DropReason::Shutdown, 6);
        registry.destinations()[0]
            .queued_lines
            .store(8, Ordering::Relaxed);
        registry
            .stats_server
            .connections_rejected
            .store(9, Ordering::Relaxed);

        let snapshot = registry.snapshot();
        assert_eq!(snapshot.lines.received, 7);
        assert_eq!(snapshot.lines.invalid_total(), 2);
        assert_eq!(snapshot.destinations[0].dropped_total(), 6);

        let json = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(json["lines"]["received"], 7);
        assert_eq!(json["lines"]["invalid"]["path_len"], 2);
        assert_eq!(json["lines"]["invalid"]["fields"], 0);
        assert_eq!(json["lines"]["noted"]["ts_far"], 3);
        assert_eq!(json["lines"]["inbound"], 4);
        assert_eq!(json["connections"]["open"], 5);
        assert_eq!(json["destinations"][0]["address"], "10.0.5.20:2003");
        assert_eq!(json["destinations"][0]["queued_lines"], 8);
        assert_eq!(json["destinations"][0]["dropped"]["shutdown"], 6);
        assert_eq!(json["destinations"][0]["dropped"]["queue_full"], 0);
        assert_eq!(json["stats_server"]["connections_rejected"], 9);
        assert_eq!(json["stats_server"]["connections_timed_out"], 0);
        // `serde_json::Value` sorts keys, so check the order on the text.
        let text = serde_json::to_string(&snapshot).unwrap();
        let expected_invalid = r#""invalid":{"empty":0,"fields":0,"value":0,"nan":0,"ts":0,"nul":0,"utf8":0,"path":0,"path_len":2,"path_chars":0,"line_len":0,"partial_eof":0,"partial_timeout":0}"#;
        assert!(text.contains(expected_invalid), "{text}");
        assert!(
            text.contains(r#""noted":{"inf":0,"ts_far":3,"sanitized":0}"#),
            "{text}"
        );
    }

    #[test]
    fn a_destination_without_a_spool_shows_spool_null_and_every_drop_reason() {
        let registry = Registry::new(&["a:2003".to_string()]);
        // Figures a spool thread never wrote for this destination are not shown.
        registry.destinations()[0]
            .spool_lines
            .store(5, Ordering::Relaxed);
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.destinations[0].spool, None);
        assert_eq!(snapshot.destinations[0].spooled_lines(), 0);
        let text = serde_json::to_string(&snapshot).unwrap();
        assert!(
            text.contains(
                r#""dropped":{"queue_full":0,"shutdown":0,"spool_full":0,"spool_corrupt":0}"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#""resent_lines":0,"moved_lines":0,"spool":null}"#),
            "{text}"
        );
    }

    #[test]
    fn a_destination_with_a_spool_shows_its_figures_and_spool_drops() {
        let registry = Registry::new(&["a:2003".to_string(), "b:2003".to_string()]);
        let stats = &registry.destinations()[0];
        stats.spool_enabled.store(true, Ordering::Relaxed);
        stats.spool_bytes.store(1 << 20, Ordering::Relaxed);
        stats.spool_lines.store(2000, Ordering::Relaxed);
        stats.spool_segments.store(3, Ordering::Relaxed);
        stats.spool_replayed_lines.store(500, Ordering::Relaxed);
        stats.spool_drain_eta_secs.store(42, Ordering::Relaxed);
        stats.spool_write_errors.store(1, Ordering::Relaxed);
        stats.spool_degraded.store(true, Ordering::Relaxed);
        stats.add_dropped(DropReason::SpoolFull, 7);
        stats.add_dropped(DropReason::SpoolCorrupt, 8);

        let snapshot = registry.snapshot();
        assert_eq!(snapshot.destinations[0].spooled_lines(), 2000);
        assert_eq!(snapshot.destinations[0].dropped_total(), 15);
        let json = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(
            json["destinations"][0]["spool"],
            serde_json::json!({
                "bytes": 1048576,
                "lines": 2000,
                "segments": 3,
                "replayed_lines": 500,
                "drain_eta_secs": 42,
                "degraded": true,
                "write_errors": 1,
            })
        );
        assert_eq!(json["destinations"][0]["dropped"]["spool_full"], 7);
        assert_eq!(json["destinations"][0]["dropped"]["spool_corrupt"], 8);
        assert_eq!(json["destinations"][1]["spool"], serde_json::Value::Null);
        let text = serde_json::to_string(&snapshot).unwrap();
        let expected_spool = r#""spool":{"bytes":1048576,"lines":2000,"segments":3,"replayed_lines":500,"drain_eta_secs":42,"degraded":true,"write_errors":1}"#;
        assert!(text.contains(expected_spool), "{text}");
    }

    #[test]
    fn an_unknown_drain_time_is_null() {
        let registry = Registry::new(&["a:2003".to_string()]);
        registry.destinations()[0]
            .spool_enabled
            .store(true, Ordering::Relaxed);
        let json = serde_json::to_value(registry.snapshot()).unwrap();
        assert_eq!(
            json["destinations"][0]["spool"]["drain_eta_secs"],
            serde_json::Value::Null
        );
        assert_eq!(json["destinations"][0]["spool"]["lines"], 0);
    }
}
