//! The routing table: which destinations a path goes to, compiled once from the config's clusters, routes and
//! rewrites.
//!
//! Pure: no I/O, no allocation per path once its scratch buffers have grown. The router asks it per line; the
//! `-test-routes` tool asks it too, so what the tool prints is what the relay does. A member's reachability comes in
//! through [`Liveness`], so `any_of`, `failover` and `dynamic` hash clusters decide with the health the router sees,
//! and the tool with every member up.
//!
//! Per line: rewrites in order (each on the result of the one before), then routes in order; a line goes to every
//! route that matches, until one with `stop`; each target cluster picks its members by its method. A destination
//! named by several targets gets the line once.

use bytes::BytesMut;
use regex::bytes::{CaptureLocations, Regex};
use tracing::warn;

use super::hash::carbon::{CarbonMethod, CarbonRing};
use super::hash::ccr::{CcrMethod, CcrRing};
use super::hash::{md5_position, Member, Position};
use crate::config::{
    compile_replacement, ClusterMethod, Config, Error, Flavour, ReplacementPart, ResolvedCluster,
    BLACKHOLE,
};
use crate::destination::{Health, Identity};
use crate::line::{self, Invalid, Rules, Valid};

/// Numbers routing tables, so that a [`Scratch`] notices a new one.
static NEXT_TABLE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Whether a destination is in use for routing: `any_of`, `failover` and `dynamic` hash clusters skip members that
/// are out.
pub trait Liveness {
    /// Whether destination `destination` (an index into the routing table's destinations) is up.
    fn is_up(&self, destination: usize) -> bool;
}

/// Every member up: what `-test-routes` shows.
#[derive(Debug, Clone, Copy)]
pub struct AllUp;

impl Liveness for AllUp {
    fn is_up(&self, _destination: usize) -> bool {
        true
    }
}

/// The router's view: a destination is up unless its [`Health`] says it is out.
#[derive(Debug, Clone, Copy)]
pub struct HealthLiveness<'a>(pub &'a [std::sync::Arc<Health>]);

impl Liveness for HealthLiveness<'_> {
    fn is_up(&self, destination: usize) -> bool {
        self.0
            .get(destination)
            .is_none_or(|health| !health.is_out())
    }
}

/// The compiled clusters, routes and rewrites.
#[derive(Debug)]
pub struct RoutingTable {
    rewrites: Vec<Rewrite>,
    routes: Vec<Route>,
    clusters: Vec<Cluster>,
    n_destinations: usize,
    /// No rewrite, and every line goes to every destination once: the router can share each batch whole.
    sends_everything_everywhere: bool,
    /// Tells a [`Scratch`] whose capture buffers it holds.
    id: u64,
}

/// A cluster with its members as destination indices.
#[derive(Debug)]
pub struct Cluster {
    /// Its name.
    pub name: String,
    /// Its method.
    pub method: ClusterMethod,
    /// Each member's destination index, in config order.
    pub destinations: Vec<usize>,
    /// Each member as written in `members`.
    pub member_names: Vec<String>,
    ring: Option<Ring>,
    replication: usize,
    dynamic: bool,
    moves_lines: bool,
}

/// A hash cluster's ring.
#[derive(Debug)]
pub enum Ring {
    /// carbon's ring (`flavour = "carbon"`).
    Carbon(CarbonRing),
    /// carbon-c-relay's rings (`flavour = "carbon-c-relay"`, and `jump_fnv1a_ch`).
    Ccr(CcrRing),
}

#[derive(Debug)]
struct Rewrite {
    regex: Regex,
    /// The replacement, split into literal bytes and group references.
    parts: Vec<ReplacementPart>,
}

#[derive(Debug)]
enum Matcher {
    Every,
    Regex(Regex),
    Prefix(Vec<u8>),
    Suffix(Vec<u8>),
}

#[derive(Debug)]
struct Route {
    matcher: Matcher,
    targets: Vec<Target>,
    stop: bool,
}

/// What a route sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A cluster, by index into [`RoutingTable::clusters`].
    Cluster(usize),
    /// Discard, counted as `blackholed`.
    Blackhole,
}

/// Where one line goes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Destination indices, each once, in the order targets named them.
    pub destinations: Vec<usize>,
    /// A matching route sent it to `blackhole`.
    pub blackholed: bool,
    /// Some route matched.
    pub matched: bool,
}

/// Buffers reused from line to line.
#[derive(Debug, Default)]
pub struct Scratch {
    members: Vec<usize>,
    walk: Vec<usize>,
    /// One per rewrite of the table `table_id` names (a table's regexes only take their own).
    locations: Vec<CaptureLocations>,
    table_id: u64,
    rewritten: Vec<u8>,
    other: Vec<u8>,
    /// A rewritten line being put together.
    line: Vec<u8>,
    /// The MD5 ring position of the next path routed, computed beforehand with the other paths of its batch
    /// ([`super::hash::md5_lanes`]): the path's address and length, and its position. Used only for that very slice.
    md5_hint: Option<(usize, usize, u16)>,
}

impl Scratch {
    /// Gives the MD5 ring position of `path`, computed beforehand, for the next routing of exactly this slice.
    pub fn hint_md5_position(&mut self, path: &[u8], position: u16) {
        self.md5_hint = Some((path.as_ptr() as usize, path.len(), position));
    }
}

/// The MD5 ring position of `path`: `hint`'s if the hint is for this very slice, computed otherwise.
fn md5_position_of(path: &[u8], hint: Option<(usize, usize, u16)>) -> u16 {
    match hint {
        Some((address, len, position))
            if address == path.as_ptr() as usize && len == path.len() =>
        {
            position
        }
        _ => md5_position(path),
    }
}

impl RoutingTable {
    /// Compiles the routing of a validated `config`; destination indices are those of
    /// [`Config::destination_plans`].
    ///
    /// # Errors
    ///
    /// What [`Config::validate`] reports for the routing keys (the table is normally built from a validated config).
    pub fn new(config: &Config) -> Result<RoutingTable, Error> {
        let (plans, resolved) = config.resolve_clusters()?;
        let identities: Vec<&Identity> = plans.iter().map(|plan| &plan.identity).collect();
        let clusters: Vec<Cluster> = resolved
            .iter()
            .map(|cluster| Cluster::new(cluster, &identities))
            .collect();
        let invalid = |key: &'static str, message: String| Error::Invalid { key, message };
        let mut routes = Vec::with_capacity(config.routes.len().max(1));
        for route in &config.routes {
            let matcher = match (&route.pattern, &route.prefix, &route.suffix) {
                (Some(pattern), _, _) => Matcher::Regex(
                    Regex::new(pattern).map_err(|err| invalid("route", err.to_string()))?,
                ),
                (_, Some(prefix), _) => Matcher::Prefix(prefix.as_bytes().to_vec()),
                (_, _, Some(suffix)) => Matcher::Suffix(suffix.as_bytes().to_vec()),
                _ => Matcher::Every,
            };
            let mut targets = Vec::with_capacity(route.send_to.len());
            for name in &route.send_to {
                let target = if name == BLACKHOLE {
                    Target::Blackhole
                } else {
                    let index = clusters
                        .iter()
                        .position(|cluster| &cluster.name == name)
                        .ok_or_else(|| invalid("route", format!("no cluster {name:?}")))?;
                    Target::Cluster(index)
                };
                targets.push(target);
            }
            routes.push(Route {
                matcher,
                targets,
                stop: route.stop,
            });
        }
        if config.routes.is_empty() {
            routes.push(Route {
                matcher: Matcher::Every,
                targets: (0..clusters.len()).map(Target::Cluster).collect(),
                stop: false,
            });
        }
        let mut rewrites = Vec::with_capacity(config.rewrites.len());
        for rewrite in &config.rewrites {
            let regex =
                Regex::new(&rewrite.pattern).map_err(|err| invalid("rewrite", err.to_string()))?;
            let parts = compile_replacement(&regex, &rewrite.replace)
                .map_err(|message| invalid("rewrite", message))?;
            rewrites.push(Rewrite { regex, parts });
        }
        let sends_everything_everywhere = rewrites.is_empty()
            && routes
                .iter()
                .all(|route| matches!(route.matcher, Matcher::Every))
            && covers_every_destination(&routes, &clusters, plans.len());
        Ok(RoutingTable {
            rewrites,
            routes,
            clusters,
            n_destinations: plans.len(),
            sends_everything_everywhere,
            id: NEXT_TABLE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// How many destinations the table routes to.
    pub fn n_destinations(&self) -> usize {
        self.n_destinations
    }

    /// The clusters, `default` first when it exists.
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    /// True when every line goes unchanged to every destination exactly once (no rewrites, every route matches
    /// every line, and together they reach each destination once): the router then shares whole batches.
    pub fn sends_everything_everywhere(&self) -> bool {
        self.sends_everything_everywhere
    }

    /// Whether some cluster hashes paths with MD5: the router then computes a batch's MD5 positions together.
    pub fn uses_md5(&self) -> bool {
        self.clusters
            .iter()
            .any(|cluster| cluster.ring.as_ref().is_some_and(Ring::uses_md5))
    }

    /// Whether any rewrite exists.
    pub fn has_rewrites(&self) -> bool {
        !self.rewrites.is_empty()
    }

    /// Applies the rewrites to `path`. Returns the rewritten path (in `scratch`), or `None` when no rewrite matched.
    pub fn rewrite<'s>(&self, path: &[u8], scratch: &'s mut Scratch) -> Option<&'s [u8]> {
        if scratch.table_id != self.id || scratch.locations.len() != self.rewrites.len() {
            scratch.locations = self
                .rewrites
                .iter()
                .map(|rewrite| rewrite.regex.capture_locations())
                .collect();
            scratch.table_id = self.id;
        }
        let mut changed = false;
        for (rewrite, locations) in self.rewrites.iter().zip(&mut scratch.locations) {
            let input: &[u8] = if changed { &scratch.rewritten } else { path };
            if rewrite.regex.captures_read(locations, input).is_none() {
                continue;
            }
            let Some((match_start, match_end)) = locations.get(0) else {
                continue;
            };
            scratch.other.clear();
            scratch.other.extend_from_slice(&input[..match_start]);
            for part in &rewrite.parts {
                match part {
                    ReplacementPart::Literal(bytes) => scratch.other.extend_from_slice(bytes),
                    ReplacementPart::Group(group) => {
                        if let Some((start, end)) = locations.get(*group) {
                            scratch.other.extend_from_slice(&input[start..end]);
                        }
                    }
                }
            }
            scratch.other.extend_from_slice(&input[match_end..]);
            std::mem::swap(&mut scratch.rewritten, &mut scratch.other);
            changed = true;
        }
        changed.then_some(scratch.rewritten.as_slice())
    }

    /// Applies the rewrites to `line` (one line in normal form, without its LF) and checks the result as the relay
    /// checks a line. `Ok(false)`: no rewrite matched, and nothing was written. `Ok(true)`: the rewritten line's
    /// normal form, LF-terminated, was appended to `out`.
    ///
    /// # Errors
    ///
    /// The reason the rewritten line is invalid; `out` is then unchanged.
    pub fn rewrite_line(
        &self,
        line: &[u8],
        rules: &Rules,
        scratch: &mut Scratch,
        out: &mut BytesMut,
    ) -> Result<bool, Invalid> {
        let path_end = memchr::memchr(b' ', line).unwrap_or(line.len());
        if self.rewrite(&line[..path_end], scratch).is_none() {
            return Ok(false);
        }
        let Scratch {
            rewritten,
            line: rewritten_line,
            ..
        } = scratch;
        rewritten_line.clear();
        rewritten_line.extend_from_slice(rewritten);
        rewritten_line.extend_from_slice(&line[path_end..]);
        if let Valid::AsIs(_) = line::check(rewritten_line, rules, out)? {
            out.extend_from_slice(rewritten_line);
            out.extend_from_slice(b"\n");
        }
        Ok(true)
    }

    /// Routes `path` (already rewritten): calls `visit` for each target of each matching route, with the members
    /// chosen (indices into the cluster's members, primary first). Returns whether any route matched.
    pub fn route_targets(
        &self,
        path: &[u8],
        liveness: &impl Liveness,
        scratch: &mut Scratch,
        mut visit: impl FnMut(Target, &[usize]),
    ) -> bool {
        let mut matched = false;
        for route in &self.routes {
            let is_match = match &route.matcher {
                Matcher::Every => true,
                Matcher::Regex(regex) => regex.is_match(path),
                Matcher::Prefix(prefix) => path.starts_with(prefix),
                Matcher::Suffix(suffix) => path.ends_with(suffix),
            };
            if !is_match {
                continue;
            }
            matched = true;
            for &target in &route.targets {
                match target {
                    Target::Blackhole => visit(target, &[]),
                    Target::Cluster(index) => {
                        self.clusters[index].choose(path, liveness, scratch);
                        visit(target, &scratch.members);
                    }
                }
            }
            if route.stop {
                break;
            }
        }
        matched
    }

    /// Routes `path` (already rewritten) into `decision`.
    pub fn route(
        &self,
        path: &[u8],
        liveness: &impl Liveness,
        scratch: &mut Scratch,
        decision: &mut Decision,
    ) {
        decision.destinations.clear();
        decision.blackholed = false;
        let clusters = &self.clusters;
        decision.matched =
            self.route_targets(path, liveness, scratch, |target, members| match target {
                Target::Blackhole => decision.blackholed = true,
                Target::Cluster(index) => {
                    for &member in members {
                        let destination = clusters[index].destinations[member];
                        if !decision.destinations.contains(&destination) {
                            decision.destinations.push(destination);
                        }
                    }
                }
            });
    }
}

impl RoutingTable {
    /// Routes `path` within cluster `cluster` alone, into `decision`: where a line that cluster already took goes
    /// now (the router moves an out member's queued lines with it).
    pub fn route_in_cluster(
        &self,
        cluster: usize,
        path: &[u8],
        liveness: &impl Liveness,
        scratch: &mut Scratch,
        decision: &mut Decision,
    ) {
        decision.destinations.clear();
        decision.blackholed = false;
        decision.matched = true;
        let cluster = &self.clusters[cluster];
        cluster.choose(path, liveness, scratch);
        decision.destinations.extend(
            scratch
                .members
                .iter()
                .map(|&member| cluster.destinations[member]),
        );
    }
}

impl Cluster {
    /// The ring of a hash cluster, for `-ring-dump`; `None` for `forward`, `any_of` and `failover`.
    pub fn ring(&self) -> Option<&Ring> {
        self.ring.as_ref()
    }
}

impl Cluster {
    /// Whether the cluster moves what a member that is out holds queued to its other members
    /// ([`crate::config::ClusterConfig::moves_lines`]).
    pub fn moves_lines(&self) -> bool {
        self.moves_lines
    }

    fn new(resolved: &ResolvedCluster, identities: &[&Identity]) -> Cluster {
        let config = &resolved.config;
        let members: Vec<Member> = resolved
            .destinations
            .iter()
            .map(|&index| Member::from(identities[index]))
            .collect();
        let ring = match (config.method, config.flavour()) {
            (ClusterMethod::CarbonCh, Flavour::Carbon) => Some(Ring::Carbon(CarbonRing::new(
                CarbonMethod::CarbonCh,
                &members,
                config.diverse_replicas(),
            ))),
            (ClusterMethod::Fnv1aCh, Flavour::Carbon) => {
                let mut instances: Vec<Option<&str>> = members
                    .iter()
                    .map(|member| member.instance.as_deref())
                    .collect();
                instances.sort_unstable();
                instances.dedup();
                if instances.len() < members.len() || instances.contains(&None) {
                    warn!(cluster = %config.name, "carbon's fnv1a_ch ring keys members by instance alone: without a distinct instance per member (host:port=instance) nearly every path goes to one member, as in carbon");
                }
                Some(Ring::Carbon(CarbonRing::new(
                    CarbonMethod::Fnv1aCh,
                    &members,
                    config.diverse_replicas(),
                )))
            }
            (ClusterMethod::CarbonCh, Flavour::CarbonCRelay) => {
                Some(Ring::Ccr(CcrRing::new(CcrMethod::CarbonCh, &members)))
            }
            (ClusterMethod::Fnv1aCh, Flavour::CarbonCRelay) => {
                Some(Ring::Ccr(CcrRing::new(CcrMethod::Fnv1aCh, &members)))
            }
            (ClusterMethod::JumpFnv1aCh, _) => {
                Some(Ring::Ccr(CcrRing::new(CcrMethod::JumpFnv1aCh, &members)))
            }
            _ => None,
        };
        Cluster {
            name: config.name.clone(),
            method: config.method,
            destinations: resolved.destinations.clone(),
            member_names: config.members.clone(),
            ring,
            replication: config.replication,
            dynamic: config.dynamic,
            moves_lines: config.moves_lines(),
        }
    }

    /// Writes into `scratch.members` the members `path` goes to, primary first.
    fn choose(&self, path: &[u8], liveness: &impl Liveness, scratch: &mut Scratch) {
        let out = &mut scratch.members;
        out.clear();
        let n_members = self.destinations.len();
        let is_up = |member: usize| liveness.is_up(self.destinations[member]);
        match self.method {
            ClusterMethod::Forward => out.extend(0..n_members),
            ClusterMethod::Failover => {
                out.push((0..n_members).find(|&member| is_up(member)).unwrap_or(0));
            }
            ClusterMethod::AnyOf => {
                let hash = fnv1a_64(path);
                let primary = jump_consistent_hash(hash, n_members);
                if is_up(primary) {
                    out.push(primary);
                } else {
                    let n_up = (0..n_members).filter(|&member| is_up(member)).count();
                    if n_up == 0 {
                        out.push(primary);
                    } else {
                        // The same path picks the same stand-in while the same members are up.
                        let nth = jump_consistent_hash(hash.rotate_left(32), n_up);
                        out.extend((0..n_members).filter(|&member| is_up(member)).nth(nth));
                    }
                }
            }
            ClusterMethod::CarbonCh | ClusterMethod::Fnv1aCh | ClusterMethod::JumpFnv1aCh => {
                let Some(ring) = &self.ring else { return };
                let position = ring.path_position(path, scratch.md5_hint);
                if !self.dynamic {
                    ring.members_at(position, self.replication, out);
                    return;
                }
                let walk = &mut scratch.walk;
                ring.members_at(position, n_members, walk);
                out.extend(
                    walk.iter()
                        .copied()
                        .filter(|&member| is_up(member))
                        .take(self.replication),
                );
                if out.is_empty() {
                    out.extend(walk.iter().copied().take(self.replication));
                }
            }
        }
    }
}

impl Ring {
    /// The ring position of `path`; an MD5 position comes from `md5_hint` when it is for this very slice.
    fn path_position(&self, path: &[u8], md5_hint: Option<(usize, usize, u16)>) -> Position {
        if self.uses_md5() {
            return Position::from(md5_position_of(path, md5_hint));
        }
        match self {
            Ring::Carbon(ring) => ring.path_position(path),
            Ring::Ccr(ring) => ring.path_position(path),
        }
    }

    /// Whether the ring's positions are MD5s, worth computing for a whole batch at once.
    pub fn uses_md5(&self) -> bool {
        match self {
            Ring::Carbon(ring) => ring.position_is_expensive(),
            Ring::Ccr(ring) => ring.position_is_expensive(),
        }
    }

    fn members_at(&self, position: Position, replication: usize, out: &mut Vec<usize>) {
        match self {
            Ring::Carbon(ring) => ring.members_at(position, replication, out),
            Ring::Ccr(ring) => ring.members_at(position, replication, out),
        }
    }
}

/// Whether the routes, all matching every line, reach every destination exactly once.
fn covers_every_destination(routes: &[Route], clusters: &[Cluster], n_destinations: usize) -> bool {
    let mut seen = vec![0_usize; n_destinations];
    for route in routes {
        for target in &route.targets {
            match target {
                Target::Blackhole => return false,
                Target::Cluster(index) => {
                    let cluster = &clusters[*index];
                    if cluster.method != ClusterMethod::Forward {
                        return false;
                    }
                    for &destination in &cluster.destinations {
                        seen[destination] += 1;
                    }
                }
            }
        }
        if route.stop {
            break;
        }
    }
    seen.iter().all(|&count| count == 1)
}

/// 64-bit FNV-1a over bytes as unsigned (the textbook one): `any_of`'s spread, which has no compatibility to keep.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Lamping and Veach's jump consistent hash: a bucket in `0..n_buckets` that moves for only 1/n of keys when a
/// bucket is added.
fn jump_consistent_hash(mut key: u64, n_buckets: usize) -> usize {
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    let n_buckets = i64::try_from(n_buckets).unwrap_or(i64::MAX);
    while next < n_buckets {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        #[allow(clippy::cast_precision_loss)]
        let scale = (1_u64 << 31) as f64 / ((key >> 33) + 1) as f64;
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        {
            next = ((bucket + 1) as f64 * scale) as i64;
        }
    }
    usize::try_from(bucket.max(0)).unwrap_or(0)
}

#[cfg(test)]
mod tests;
