//! Splitting a batch by the routing table into one batch per destination.
//!
//! Passes over the batch's lines: the first rewrites each line (and checks it again); when a ring hashes with MD5,
//! the second computes every path's MD5 position, eight side by side ([`super::hash::md5_lanes`]); the third routes
//! each line and sums, per destination, the bytes and lines it gets; the last allocates each destination's buffer once, at its exact size, and copies the lines
//! in. A queue is charged what its batch really keeps alive, and nothing grows line by line. The per-line records
//! and buffers live in a [`Routed`] kept per worker thread, so that in a steady state splitting allocates only the
//! output batches.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::Ordering;

use bytes::BytesMut;

use super::hash::md5_lanes::md5_positions;
use super::table::{Decision, Liveness, RoutingTable, Scratch};
use crate::batch::Batch;
use crate::line::Rules;
use crate::stats::Registry;

thread_local! {
    static ROUTED: RefCell<Routed> = RefCell::new(Routed::default());
}

/// Lines a split sent nowhere, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NowhereCounts {
    /// No route matched.
    pub no_route: u64,
    /// Only `blackhole` targets matched.
    pub blackholed: u64,
    /// A rewrite made the line invalid (an empty path, say).
    pub rewrite_invalid: u64,
    /// Routes matched but named no destination: none is configured.
    pub no_destination: u64,
}

impl NowhereCounts {
    /// Adds the counts to the relay's counters.
    pub fn add_to(&self, registry: &Registry) {
        let relay = &registry.relay;
        for (counter, n) in [
            (&relay.lines_no_route, self.no_route),
            (&relay.lines_blackholed, self.blackholed),
            (&relay.lines_rewrite_invalid, self.rewrite_invalid),
            (&relay.lines_dropped_no_destination, self.no_destination),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// Where one line's bytes are and which destinations it goes to.
#[derive(Debug, Clone)]
struct LineRoute {
    /// In the input batch, or in `rewritten` when `rewritten_line` is set.
    bytes: Range<usize>,
    rewritten_line: bool,
    /// The path's length: the line's bytes up to the first space.
    path_len: usize,
    /// Into `targets`; empty for a line that goes nowhere.
    targets: Range<usize>,
}

/// The path of the line `route` describes.
fn path_of<'a>(route: &LineRoute, batch: &'a [u8], rewritten: &'a [u8]) -> &'a [u8] {
    let line = if route.rewritten_line {
        &rewritten[route.bytes.clone()]
    } else {
        &batch[route.bytes.clone()]
    };
    &line[..route.path_len]
}

/// Reusable state of a split.
#[derive(Debug, Default)]
pub struct Routed {
    scratch: Scratch,
    decision: Decision,
    lines: Vec<LineRoute>,
    targets: Vec<usize>,
    /// Normal forms of rewritten lines, LF-terminated.
    rewritten: BytesMut,
    n_bytes: Vec<usize>,
    n_lines: Vec<u32>,
    /// Each line's MD5 ring position, when a ring of the table uses them.
    md5_positions: Vec<u16>,
}

impl Routed {
    /// Runs `split` with this worker thread's state.
    pub fn with_thread_local<T>(split: impl FnOnce(&mut Routed) -> T) -> T {
        ROUTED.with(|routed| match routed.try_borrow_mut() {
            Ok(mut routed) => split(&mut routed),
            // Not reachable (a split never re-enters), but a fresh state is as correct as the shared one.
            Err(_) => split(&mut Routed::default()),
        })
    }

    /// Splits `batch` by `table`: one batch per destination that gets any of its lines, in destination order, and
    /// the counts of lines that go nowhere. With `within` a cluster, the lines (already rewritten and routed once)
    /// are routed within that cluster only.
    pub fn split(
        &mut self,
        table: &RoutingTable,
        rules: &Rules,
        liveness: &impl Liveness,
        batch: &Batch,
        within: Option<usize>,
    ) -> (Vec<(usize, Batch)>, NowhereCounts) {
        let n_destinations = table.n_destinations();
        self.lines.clear();
        self.targets.clear();
        self.rewritten.clear();
        self.n_bytes.clear();
        self.n_bytes.resize(n_destinations, 0);
        self.n_lines.clear();
        self.n_lines.resize(n_destinations, 0);
        self.md5_positions.clear();
        let mut counts = NowhereCounts::default();
        let bytes = batch.bytes();
        // First: every line as it will be sent (rewritten and checked again if a rewrite changed it).
        let mut line_start = 0;
        for line_end in memchr::memchr_iter(b'\n', bytes) {
            let line = &bytes[line_start..=line_end];
            let mut route = LineRoute {
                bytes: line_start..line_end + 1,
                rewritten_line: false,
                path_len: 0,
                targets: 0..0,
            };
            line_start = line_end + 1;
            let path_end = memchr::memchr(b' ', line).unwrap_or(line.len() - 1);
            route.path_len = path_end;
            if table.has_rewrites() && within.is_none() {
                let start = self.rewritten.len();
                match table.rewrite_line(
                    &line[..line.len() - 1],
                    rules,
                    &mut self.scratch,
                    &mut self.rewritten,
                ) {
                    Ok(false) => {}
                    Ok(true) => {
                        route.bytes = start..self.rewritten.len();
                        route.rewritten_line = true;
                        let line = &self.rewritten[route.bytes.clone()];
                        route.path_len = memchr::memchr(b' ', line).unwrap_or(line.len() - 1);
                    }
                    Err(_) => {
                        counts.rewrite_invalid += 1;
                        continue;
                    }
                }
            }
            self.lines.push(route);
        }
        // Then the MD5 ring positions of all paths at once, eight side by side, when a ring needs them.
        if table.uses_md5() {
            let (lines, rewritten) = (&self.lines, &self.rewritten);
            md5_positions(
                lines.len(),
                |index| path_of(&lines[index], bytes, rewritten),
                &mut self.md5_positions,
            );
        }
        // Then where each line goes.
        for (index, route) in self.lines.iter_mut().enumerate() {
            let path = path_of(route, bytes, &self.rewritten);
            if let Some(&position) = self.md5_positions.get(index) {
                self.scratch.hint_md5_position(path, position);
            }
            match within {
                None => table.route(path, liveness, &mut self.scratch, &mut self.decision),
                Some(cluster) => table.route_in_cluster(
                    cluster,
                    path,
                    liveness,
                    &mut self.scratch,
                    &mut self.decision,
                ),
            }
            if self.decision.destinations.is_empty() {
                if !self.decision.matched {
                    counts.no_route += 1;
                } else if self.decision.blackholed {
                    counts.blackholed += 1;
                } else {
                    // Routes matched that reach no destination: there is none (rewrites without destinations).
                    counts.no_destination += 1;
                }
                continue;
            }
            let first_target = self.targets.len();
            let n_line_bytes = route.bytes.len();
            for &destination in &self.decision.destinations {
                self.n_bytes[destination] += n_line_bytes;
                self.n_lines[destination] += 1;
                self.targets.push(destination);
            }
            route.targets = first_target..self.targets.len();
        }
        let mut buffers: Vec<Option<BytesMut>> = self
            .n_bytes
            .iter()
            .map(|&n_bytes| (n_bytes > 0).then(|| BytesMut::with_capacity(n_bytes)))
            .collect();
        for route in &self.lines {
            let line = if route.rewritten_line {
                &self.rewritten[route.bytes.clone()]
            } else {
                &bytes[route.bytes.clone()]
            };
            for &destination in &self.targets[route.targets.clone()] {
                if let Some(buffer) = &mut buffers[destination] {
                    buffer.extend_from_slice(line);
                }
            }
        }
        let batches = buffers
            .into_iter()
            .enumerate()
            .filter_map(|(destination, buffer)| {
                let buffer = buffer?;
                Some((
                    destination,
                    Batch::new(buffer.freeze(), self.n_lines[destination]),
                ))
            })
            .collect();
        (batches, counts)
    }
}
