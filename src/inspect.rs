//! What the relay would do with a config, answered without starting it: `-test-routes` (where each line goes),
//! `-ring-dump` (a hash cluster's ring) and `-ring-diff` (how many paths change primary member between two configs).
//!
//! Sits at the process edge beside `-t`: `main` runs a [`Tool`] instead of the relay, reading stdin and writing
//! stdout. Each tool builds the relay's own [`RoutingTable`] and line [`Rules`] and takes every line through the
//! router's steps in the router's order: [`line::check`], the rewrites, [`line::check`] again for a line a rewrite
//! changed, then the routes. So what it prints is what the relay does, and the rings it dumps and compares are the
//! ones the relay hashes with. Invariant: nothing here binds, connects, spawns or logs.
//!
//! # Output formats
//!
//! **`-test-routes`** prints one line per input line that is not blank: `PATH`, a tab, then `TARGETS`.
//!
//! - `PATH` is the path as the relay sends it, after sanitising and rewrites. For a rejected line it is the input's
//!   first field as given.
//! - `TARGETS` lists, space-separated, every target of every matching route, in route order: `CLUSTER=MEMBER,...`
//!   with the members written as in `members` and in delivery order (primary first; `any_of` and `failover` show
//!   their choice with every member up), or `blackhole`. A cluster that two matching routes name is listed twice, as
//!   the routes give it, although the relay sends the line to each destination once. `-` alone means no route
//!   matches; `invalid:REASON` alone (the stats reason, [`Invalid::name`]) means the relay rejects the line, before
//!   or after a rewrite.
//! - The path is the input's first field. A line of three fields is checked as the relay checks it, so a bad value
//!   or timestamp shows (`invalid:value`). A path alone, or a path and a value, is checked as the line
//!   `PATH 0 NOW`, so that only the path's problems show. More than three fields is `invalid:fields`, as in the
//!   relay.
//!
//! **`-ring-dump NAME`** prints one line per ring entry, in ring order: the position, a tab, the member as written
//! in `members`. carbon-c-relay's `-t -d` lists the same pairs as `POSITION@MEMBER`, three to a line. A
//! carbon-c-relay `carbon_ch` or `fnv1a_ch` ring lists each position once, held by the winner of its tie (carbon-c-relay
//! repeats it for every tied replica, with the same winner), so it has 100 lines per member less one per collision; a
//! carbon-flavour ring moves a colliding replica on, so it has exactly 100 lines per member. `jump_fnv1a_ch` lists
//! its members in bucket order, the position being the bucket number (carbon-c-relay prints the member's index in
//! config order there instead).
//!
//! **`-ring-diff OTHER_FILE`** reads paths on stdin (first field of each line, as `-test-routes`) and prints, per hash
//! cluster named in both configs, in the order of the first config then the second:
//!
//! ```text
//! cache: 12 -> 13 members, 7692 of 100000 paths (7.69%) change primary member
//! ```
//!
//! preceded by `METHOD -> METHOD, ` when the method or flavour changed. Every path is hashed on every ring, whether
//! or not a route sends it there, after each config's own sanitising and rewrites. A cluster in only one config is
//! `NAME: only in FILE`; a name that is a hash cluster in one config and not in the other is said so and not
//! compared. Lines invalid under either config are left out of the counts, and a last line says how many.

use std::io::{BufRead, BufWriter, IsTerminal as _, Write};

use bytes::BytesMut;

use crate::config::{self, ClusterConfig, Config, Flavour};
use crate::destination::Identity;
use crate::line::{self, Invalid, Rules, Valid};
use crate::router::hash::RingEntry;
use crate::router::table::{AllUp, Cluster, Decision, Ring, RoutingTable, Scratch, Target};

/// A config inspection that `main` runs instead of the relay.
#[derive(Debug, Clone, PartialEq)]
pub enum Tool {
    /// `-test-routes`: where each line on stdin goes.
    TestRoutes,
    /// `-ring-dump NAME`: the ring of one hash cluster.
    RingDump {
        /// The cluster's name.
        cluster: String,
    },
    /// `-ring-diff OTHER_FILE`: per hash cluster, how many paths on stdin change primary member from the `-c`
    /// config to `other`.
    RingDiff {
        /// What the output calls the `-c` config: its file name.
        config_name: String,
        /// What the output calls the other config: its file name.
        other_name: String,
        /// The other config, loaded and validated with the same flags as the first.
        other: Box<Config>,
    },
}

/// Why a tool could not answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line names something the config does not have, such as an unknown cluster (exit 64).
    #[error("{0}")]
    Usage(String),
    /// The config cannot be compiled into a routing table (exit 78; a validated config always can).
    #[error(transparent)]
    Config(#[from] config::Error),
    /// Reading stdin or writing stdout failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A config and the name the output calls it by.
#[derive(Debug, Clone, Copy)]
pub struct NamedConfig<'a> {
    /// Its file name, as given on the command line.
    pub name: &'a str,
    /// The validated config.
    pub config: &'a Config,
}

/// Runs `tool` on the validated `config` with stdin and stdout: buffered, unless stdin is a terminal, where each
/// answer shows as soon as its line is typed (stdout is line-buffered).
///
/// # Errors
///
/// As [`run`].
pub fn run_on_stdio(tool: &Tool, config: &Config) -> Result<(), Error> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout().lock();
    if stdin.is_terminal() {
        run(tool, config, stdin.lock(), stdout)
    } else {
        run(tool, config, stdin.lock(), BufWriter::new(stdout))
    }
}

/// Runs `tool` on the validated `config`, reading `input` and writing `output`, which it flushes at the end.
///
/// # Errors
///
/// [`Error::Usage`] when `-ring-dump` names no hash cluster, [`Error::Config`] when a config does not compile into a
/// routing table, [`Error::Io`] when reading or writing fails.
pub fn run(
    tool: &Tool,
    config: &Config,
    input: impl BufRead,
    mut output: impl Write,
) -> Result<(), Error> {
    match tool {
        Tool::TestRoutes => test_routes(config, input, &mut output)?,
        Tool::RingDump { cluster } => ring_dump(config, cluster, &mut output)?,
        Tool::RingDiff {
            config_name,
            other_name,
            other,
        } => {
            let before = NamedConfig {
                name: config_name,
                config,
            };
            let after = NamedConfig {
                name: other_name,
                config: other,
            };
            ring_diff(before, after, input, &mut output)?;
        }
    }
    output.flush()?;
    Ok(())
}

/// `-test-routes`: writes, for each line of `input` that is not blank, its path as sent and its targets (see the
/// module doc for the format).
///
/// # Errors
///
/// [`Error::Config`] when `config` does not compile, [`Error::Io`] when reading or writing fails.
pub fn test_routes(
    config: &Config,
    mut input: impl BufRead,
    output: &mut impl Write,
) -> Result<(), Error> {
    let mut routing = Routing::new(config)?;
    let mut buffers = LineBuffers::default();
    let mut input_line = Vec::new();
    let mut targets = Vec::new();
    while read_line(&mut input, &mut input_line)? {
        let path = match prepare(&mut routing, &mut buffers, &input_line) {
            Outcome::Blank => continue,
            Outcome::Invalid(reason) => {
                output.write_all(first_field(&input_line))?;
                writeln!(output, "\tinvalid:{}", reason.name())?;
                continue;
            }
            Outcome::Path(path) => path,
        };
        targets.clear();
        let table = &routing.table;
        let matched = table.route_targets(path, &AllUp, &mut routing.scratch, |target, members| {
            if !targets.is_empty() {
                targets.push(b' ');
            }
            match target {
                Target::Blackhole => targets.extend_from_slice(b"blackhole"),
                Target::Cluster(index) => {
                    push_cluster_members(&mut targets, &table.clusters()[index], members)
                }
            }
        });
        if !matched || targets.is_empty() {
            targets.push(b'-');
        }
        output.write_all(path)?;
        output.write_all(b"\t")?;
        output.write_all(&targets)?;
        output.write_all(b"\n")?;
    }
    Ok(())
}

/// `-ring-dump NAME`: writes the ring of hash cluster `cluster_name`, one `POSITION<TAB>MEMBER` line per entry in
/// ring order.
///
/// # Errors
///
/// [`Error::Usage`] when the config has no cluster of that name or it has no ring (`forward`, `any_of`,
/// `failover`); [`Error::Config`] when `config` does not compile; [`Error::Io`] when writing fails.
pub fn ring_dump(
    config: &Config,
    cluster_name: &str,
    output: &mut impl Write,
) -> Result<(), Error> {
    let table = RoutingTable::new(config)?;
    let Some(cluster) = table
        .clusters()
        .iter()
        .find(|cluster| cluster.name == cluster_name)
    else {
        let hash_clusters: Vec<&str> = table
            .clusters()
            .iter()
            .filter(|cluster| cluster.method.is_hash())
            .map(|cluster| cluster.name.as_str())
            .collect();
        let known = if hash_clusters.is_empty() {
            "the config has no hash cluster".to_string()
        } else {
            format!("its hash clusters are {}", hash_clusters.join(", "))
        };
        return Err(Error::Usage(format!(
            "-ring-dump: no cluster {cluster_name:?} in the config; {known}"
        )));
    };
    let Some(ring) = cluster.ring() else {
        return Err(Error::Usage(format!(
            "-ring-dump: cluster {cluster_name:?} is a {} cluster, which has no ring (carbon_ch, fnv1a_ch and \
             jump_fnv1a_ch have one)",
            cluster.method.name()
        )));
    };
    let mut previous_position = None;
    for RingEntry { position, member } in ring_entries(ring) {
        // carbon-c-relay's rings may list a tied position once per replica, always with the tie's winner.
        if previous_position == Some(position) {
            continue;
        }
        previous_position = Some(position);
        writeln!(output, "{position}\t{}", cluster.member_names[member])?;
    }
    Ok(())
}

/// `-ring-diff`: reads paths from `input` and writes, per hash cluster, how many change primary member from
/// `before` to `after` (see the module doc for the format).
///
/// # Errors
///
/// [`Error::Config`] when a config does not compile, [`Error::Io`] when reading or writing fails.
pub fn ring_diff(
    before: NamedConfig<'_>,
    after: NamedConfig<'_>,
    mut input: impl BufRead,
    output: &mut impl Write,
) -> Result<(), Error> {
    let mut routing_before = Routing::new(before.config)?;
    let mut routing_after = Routing::new(after.config)?;
    let mut buffers_before = LineBuffers::default();
    let mut buffers_after = LineBuffers::default();
    let mut rows = diff_rows(before, after);
    let mut input_line = Vec::new();
    let (mut n_paths, mut n_invalid) = (0_u64, 0_u64);
    while read_line(&mut input, &mut input_line)? {
        let outcome_before = prepare(&mut routing_before, &mut buffers_before, &input_line);
        let outcome_after = prepare(&mut routing_after, &mut buffers_after, &input_line);
        let (path_before, path_after) = match (outcome_before, outcome_after) {
            (Outcome::Blank, _) | (_, Outcome::Blank) => continue,
            (Outcome::Path(path_before), Outcome::Path(path_after)) => (path_before, path_after),
            _ => {
                n_invalid += 1;
                continue;
            }
        };
        n_paths += 1;
        for row in &mut rows {
            let DiffRow::Compared(comparison) = row else {
                continue;
            };
            let primary_before =
                primary(&mut routing_before, comparison.cluster_before, path_before);
            let primary_after = primary(&mut routing_after, comparison.cluster_after, path_after);
            if primary_before != primary_after {
                comparison.n_changed += 1;
            }
        }
    }
    if rows.is_empty() {
        writeln!(
            output,
            "no hash cluster in {} or {}",
            before.name, after.name
        )?;
    }
    for row in &rows {
        match row {
            DiffRow::Compared(comparison) => {
                let cluster_before = &routing_before.table.clusters()[comparison.cluster_before];
                let cluster_after = &routing_after.table.clusters()[comparison.cluster_after];
                let ring_change = if comparison.ring_before == comparison.ring_after {
                    String::new()
                } else {
                    format!("{} -> {}, ", comparison.ring_before, comparison.ring_after)
                };
                let percent = if n_paths == 0 {
                    0.0
                } else {
                    comparison.n_changed as f64 * 100.0 / n_paths as f64
                };
                writeln!(
                    output,
                    "{}: {ring_change}{} -> {} members, {} of {n_paths} paths ({percent:.2}%) change primary member",
                    cluster_before.name,
                    cluster_before.member_names.len(),
                    cluster_after.member_names.len(),
                    comparison.n_changed,
                )?;
            }
            DiffRow::Note(note) => writeln!(output, "{note}")?,
        }
    }
    if n_invalid > 0 {
        writeln!(
            output,
            "{n_invalid} lines not counted: invalid under {} or {}",
            before.name, after.name
        )?;
    }
    Ok(())
}

/// What the relay makes of one input line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome<'a> {
    /// Nothing but whitespace: no output.
    Blank,
    /// Rejected, before or after a rewrite.
    Invalid(Invalid),
    /// Sent, with this path.
    Path(&'a [u8]),
}

/// One config's routing table and line rules, with the table's scratch space.
struct Routing {
    table: RoutingTable,
    rules: Rules,
    /// Each destination's identity, by the table's destination index.
    identities: Vec<Identity>,
    scratch: Scratch,
    decision: Decision,
}

/// The buffers a line goes through in [`prepare`], reused from line to line; apart from [`Routing`], so that a
/// prepared path can be routed while it borrows them.
#[derive(Debug, Default)]
struct LineBuffers {
    /// `PATH 0 NOW` for an input line of fewer than three fields.
    synthesised: Vec<u8>,
    /// Where [`line::check`] writes a normal form.
    checked: BytesMut,
    /// The line as the relay would send it, without its LF.
    normal: Vec<u8>,
}

/// One row of the `-ring-diff` answer, in output order.
#[derive(Debug)]
enum DiffRow {
    /// A hash cluster in both configs.
    Compared(Comparison),
    /// A cluster in only one config, or not a hash cluster in one of them.
    Note(String),
}

#[derive(Debug)]
struct Comparison {
    cluster_before: usize,
    cluster_after: usize,
    /// The method, and the flavour where there is a choice, e.g. `carbon_ch (carbon)`.
    ring_before: String,
    ring_after: String,
    n_changed: u64,
}

impl Routing {
    fn new(config: &Config) -> Result<Routing, config::Error> {
        Ok(Routing {
            table: RoutingTable::new(config)?,
            rules: Rules::from_config(&config.line),
            identities: config.destination_identities()?,
            scratch: Scratch::default(),
            decision: Decision::default(),
        })
    }
}

/// Takes `input_line` through the relay's steps: the line check (on `PATH 0 NOW` for fewer than three fields),
/// then the rewrites and, for a rewritten line, the check again.
fn prepare<'b>(
    routing: &mut Routing,
    buffers: &'b mut LineBuffers,
    input_line: &[u8],
) -> Outcome<'b> {
    let Routing {
        table,
        rules,
        scratch,
        ..
    } = routing;
    let trimmed = trim(input_line);
    if trimmed.is_empty() {
        return Outcome::Blank;
    }
    let line: &[u8] = if fields(trimmed).count() < 3 {
        buffers.synthesised.clear();
        buffers.synthesised.extend_from_slice(first_field(trimmed));
        buffers.synthesised.extend_from_slice(b" 0 ");
        buffers
            .synthesised
            .extend_from_slice(rules.now_secs.to_string().as_bytes());
        &buffers.synthesised
    } else {
        trimmed
    };
    if let Err(reason) = normalise(line, rules, &mut buffers.checked, &mut buffers.normal) {
        return Outcome::Invalid(reason);
    }
    if table.has_rewrites() {
        buffers.checked.clear();
        match table.rewrite_line(&buffers.normal, rules, scratch, &mut buffers.checked) {
            Ok(false) => {}
            Ok(true) => {
                buffers.normal.clear();
                buffers.normal.extend_from_slice(
                    buffers
                        .checked
                        .strip_suffix(b"\n")
                        .unwrap_or(&buffers.checked),
                );
            }
            Err(reason) => return Outcome::Invalid(reason),
        }
    }
    Outcome::Path(&buffers.normal[..path_len(&buffers.normal)])
}

/// Runs [`line::check`] on `line` and leaves its normal form, without the LF, in `normal`.
fn normalise(
    line: &[u8],
    rules: &Rules,
    checked: &mut BytesMut,
    normal: &mut Vec<u8>,
) -> Result<(), Invalid> {
    checked.clear();
    let normal_form: &[u8] = match line::check(line, rules, checked)? {
        Valid::AsIs(_) => line,
        Valid::Rewritten(_) => checked.strip_suffix(b"\n").unwrap_or(checked),
    };
    normal.clear();
    normal.extend_from_slice(normal_form);
    Ok(())
}

/// The primary member of `path` in cluster `cluster`, every member up, as a destination identity (so that two
/// configs compare by destination, not by member index or spelling).
fn primary<'a>(routing: &'a mut Routing, cluster: usize, path: &[u8]) -> Option<&'a Identity> {
    routing.table.route_in_cluster(
        cluster,
        path,
        &AllUp,
        &mut routing.scratch,
        &mut routing.decision,
    );
    let destination = *routing.decision.destinations.first()?;
    routing.identities.get(destination)
}

/// The rows of a `-ring-diff` answer: the first config's clusters in order, then those only the second has.
fn diff_rows(before: NamedConfig<'_>, after: NamedConfig<'_>) -> Vec<DiffRow> {
    let clusters_before = before.config.all_clusters();
    let clusters_after = after.config.all_clusters();
    let mut rows = Vec::new();
    for (cluster_before, config_before) in clusters_before.iter().enumerate() {
        let found = clusters_after
            .iter()
            .position(|config_after| config_after.name == config_before.name);
        let row = match found {
            None if config_before.method.is_hash() => {
                DiffRow::Note(format!("{}: only in {}", config_before.name, before.name))
            }
            None => continue,
            Some(cluster_after) => {
                let config_after = &clusters_after[cluster_after];
                match (
                    config_before.method.is_hash(),
                    config_after.method.is_hash(),
                ) {
                    (true, true) => DiffRow::Compared(Comparison {
                        cluster_before,
                        cluster_after,
                        ring_before: describe_ring(config_before),
                        ring_after: describe_ring(config_after),
                        n_changed: 0,
                    }),
                    (false, false) => continue,
                    _ => DiffRow::Note(format!(
                        "{}: {} in {}, {} in {}; only hash clusters are compared",
                        config_before.name,
                        config_before.method.name(),
                        before.name,
                        config_after.method.name(),
                        after.name
                    )),
                }
            }
        };
        rows.push(row);
    }
    for config_after in &clusters_after {
        let in_before = clusters_before
            .iter()
            .any(|config_before| config_before.name == config_after.name);
        if !in_before && config_after.method.is_hash() {
            rows.push(DiffRow::Note(format!(
                "{}: only in {}",
                config_after.name, after.name
            )));
        }
    }
    rows
}

/// `carbon_ch (carbon)`, `fnv1a_ch (carbon-c-relay)`, `jump_fnv1a_ch`: what decides a hash cluster's primaries
/// besides its members.
fn describe_ring(cluster: &ClusterConfig) -> String {
    let method = cluster.method.name();
    match (cluster.method, cluster.flavour()) {
        (config::ClusterMethod::JumpFnv1aCh, _) => method.to_string(),
        (_, Flavour::Carbon) => format!("{method} (carbon)"),
        (_, Flavour::CarbonCRelay) => format!("{method} (carbon-c-relay)"),
    }
}

/// A ring's entries in ring order.
fn ring_entries(ring: &Ring) -> Vec<RingEntry> {
    match ring {
        Ring::Carbon(ring) => ring.entries().collect(),
        Ring::Ccr(ring) => ring.entries().collect(),
    }
}

/// Appends `CLUSTER=MEMBER,MEMBER` for `members` (indices into the cluster's members).
fn push_cluster_members(out: &mut Vec<u8>, cluster: &Cluster, members: &[usize]) {
    out.extend_from_slice(cluster.name.as_bytes());
    out.push(b'=');
    for (n_written, &member) in members.iter().enumerate() {
        if n_written > 0 {
            out.push(b',');
        }
        out.extend_from_slice(cluster.member_names[member].as_bytes());
    }
}

/// Reads one line into `line`, without its LF. Returns false at the end of `input`.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<bool> {
    line.clear();
    if input.read_until(b'\n', line)? == 0 {
        return Ok(false);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(true)
}

/// `line` without leading spaces and tabs and without trailing spaces, tabs and CRs, as the relay trims a line.
fn trim(line: &[u8]) -> &[u8] {
    let start = line
        .iter()
        .position(|&byte| !matches!(byte, b' ' | b'\t'))
        .unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|&byte| !matches!(byte, b' ' | b'\t' | b'\r'))
        .map_or(start, |last| last + 1);
    &line[start..end.max(start)]
}

/// The fields of a trimmed line: runs of bytes between spaces and tabs.
fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&byte| matches!(byte, b' ' | b'\t'))
        .filter(|field| !field.is_empty())
}

/// The first field of `line`, empty for a blank line.
fn first_field(line: &[u8]) -> &[u8] {
    fields(trim(line)).next().unwrap_or_default()
}

/// The length of the path of a line in normal form: up to its first space.
fn path_len(normal: &[u8]) -> usize {
    memchr::memchr(b' ', normal).unwrap_or(normal.len())
}

#[cfg(test)]
mod tests;
