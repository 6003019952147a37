//! The routing part of the configuration: `[[cluster]]`, `[[route]]` and `[[rewrite]]`, and the destinations they
//! name.
//!
//! A cluster is a named set of members (`host:port[=instance]`, carbon-c-relay's syntax) and a method that says which
//! members a line goes to. The top-level `destinations` list is the `forward` cluster named `default`. Every member
//! is a destination, and the same identity in two clusters is one destination (one queue, one connection, one
//! spool), as in carbon-c-relay. A cluster may override any `[destination]` key for its members; what a flag sets
//! wins over both.
//!
//! Routes are tried in order: a line goes to every route that matches, until one with `stop = true`. With no route
//! at all, every line goes to every cluster. Rewrites are applied in order before routing. Regexes are Rust's `regex`
//! syntax: linear time, no backreferences or look-around.
//!
//! Everything here is checked by [`Config::validate`]; the router compiles it into a routing table and trusts it.

use serde::{Deserialize, Serialize};

use super::{Config, DestinationConfig, Error};
use crate::destination::Identity;

/// The name of the cluster the top-level `destinations` list defines.
pub const DEFAULT_CLUSTER: &str = "default";

/// The target of `send_to` that discards lines, counted as `blackholed`.
pub const BLACKHOLE: &str = "blackhole";

/// How a cluster picks the members a line goes to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ClusterMethod {
    /// Every member gets every line.
    Forward,
    /// Each path sticks to one member, spread evenly; a member that is out hands its share to the others.
    AnyOf,
    /// The first member that is up gets every line.
    Failover,
    /// Consistent hashing on the MD5 ring of carbon (or carbon-c-relay).
    CarbonCh,
    /// Consistent hashing on an FNV-1a ring.
    Fnv1aCh,
    /// carbon-c-relay's jump consistent hash over a 64-bit FNV-1a.
    JumpFnv1aCh,
}

impl ClusterMethod {
    /// Whether the method is a consistent-hash ring.
    pub fn is_hash(self) -> bool {
        matches!(
            self,
            ClusterMethod::CarbonCh | ClusterMethod::Fnv1aCh | ClusterMethod::JumpFnv1aCh
        )
    }

    /// The config keyword.
    pub fn name(self) -> &'static str {
        match self {
            ClusterMethod::Forward => "forward",
            ClusterMethod::AnyOf => "any_of",
            ClusterMethod::Failover => "failover",
            ClusterMethod::CarbonCh => "carbon_ch",
            ClusterMethod::Fnv1aCh => "fnv1a_ch",
            ClusterMethod::JumpFnv1aCh => "jump_fnv1a_ch",
        }
    }
}

/// Whose ring a hash cluster reproduces, bit for bit.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// carbon's `ConsistentHashRing` (carbon-relay, and the whisper files it placed): the default for `carbon_ch` and
    /// `fnv1a_ch`.
    #[serde(rename = "carbon")]
    Carbon,
    /// carbon-c-relay's rings: the only one for `jump_fnv1a_ch`.
    #[serde(rename = "carbon-c-relay")]
    CarbonCRelay,
}

/// One `[[cluster]]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterConfig {
    /// The name routes send to; unique, and neither `blackhole` nor, when `destinations` is set, `default`.
    pub name: String,
    /// How members are chosen.
    pub method: ClusterMethod,
    /// Whose ring to reproduce (hash methods only). Default: `carbon`, except `carbon-c-relay` for `jump_fnv1a_ch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavour: Option<Flavour>,
    /// How many members each line goes to (hash methods only). Default 1.
    #[serde(default = "default_replication")]
    pub replication: usize,
    /// carbon's `DIVERSE_REPLICAS`: replicas on distinct hosts (carbon flavour only). Default true, as carbon's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverse_replicas: Option<bool>,
    /// Hash methods: send a member's share to the next ring member while it is out, instead of keeping it queued
    /// for it. Default false.
    #[serde(default)]
    pub dynamic: bool,
    /// `host:port[=instance]`, in the order that builds the ring.
    pub members: Vec<String>,
    /// `[destination]` keys set for this cluster's members.
    #[serde(flatten)]
    pub overrides: toml::Table,
}

fn default_replication() -> usize {
    1
}

/// One `[[route]]`: which lines go to which clusters. At most one of `match`, `prefix` and `suffix`; none matches
/// every line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A regex the path must match (Rust `regex` syntax, unanchored unless written with `^`/`$`).
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// The path must start with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The path must end with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// Cluster names, or `blackhole`.
    pub send_to: Vec<String>,
    /// Whether a match ends routing for the line.
    #[serde(default)]
    pub stop: bool,
}

/// One `[[rewrite]]`: a path matching `match` becomes `replace`, before routing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// A regex (Rust `regex` syntax).
    #[serde(rename = "match")]
    pub pattern: String,
    /// The replacement: `$1`, `${name}`, and carbon-c-relay's `\1` are the groups.
    pub replace: String,
}

/// A destination to start: its identity and the settings of the cluster(s) that name it.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationPlan {
    /// The identity, in canonical form.
    pub identity: Identity,
    /// Its queue, writer and spool settings.
    pub config: DestinationConfig,
}

/// A cluster's members as the routing table needs them: the cluster, and for each member (in config order) the
/// index of its destination in [`Config::destination_plans`].
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedCluster {
    /// The cluster (for `default`, a `forward` cluster over `destinations`).
    pub config: ClusterConfig,
    /// Destination index of each member.
    pub destinations: Vec<usize>,
}

impl RouteConfig {
    /// The route that sends every line to `send_to`.
    pub fn all_to(send_to: &[&str]) -> RouteConfig {
        RouteConfig {
            send_to: send_to.iter().map(ToString::to_string).collect(),
            ..RouteConfig::default()
        }
    }
}

impl ClusterConfig {
    /// A cluster without overrides, replication 1, the default flavour, not dynamic.
    pub fn new(name: &str, method: ClusterMethod, members: &[&str]) -> ClusterConfig {
        ClusterConfig {
            name: name.to_string(),
            method,
            flavour: None,
            replication: 1,
            diverse_replicas: None,
            dynamic: false,
            members: members.iter().map(ToString::to_string).collect(),
            overrides: toml::Table::new(),
        }
    }

    /// The flavour in force.
    pub fn flavour(&self) -> Flavour {
        self.flavour.unwrap_or(match self.method {
            ClusterMethod::JumpFnv1aCh => Flavour::CarbonCRelay,
            _ => Flavour::Carbon,
        })
    }

    /// Whether the cluster moves what a member that is out holds queued to its other members: `any_of`, `failover`
    /// and `dynamic` hash clusters of replication 1. With more replicas, the other replicas of a queued line already
    /// have it, and the member that would stand in for the out one cannot be told from one that has it too: its
    /// queued lines wait for it, while new lines go to the members up.
    pub fn moves_lines(&self) -> bool {
        matches!(self.method, ClusterMethod::AnyOf | ClusterMethod::Failover)
            || (self.method.is_hash() && self.dynamic && self.replication == 1)
    }

    /// Whether replicas go to distinct hosts (carbon flavour hash clusters; default true).
    pub fn diverse_replicas(&self) -> bool {
        self.diverse_replicas.unwrap_or(true)
    }
}

/// Turns carbon-c-relay's `\1` in a replacement into `${1}`; `$1` and `${name}` pass unchanged.
pub fn replacement_template(replace: &str) -> String {
    let mut template = String::with_capacity(replace.len() + 4);
    let mut characters = replace.chars().peekable();
    while let Some(character) = characters.next() {
        if character == '\\' {
            if let Some(digit) = characters.peek().copied().filter(char::is_ascii_digit) {
                characters.next();
                template.push_str("${");
                template.push(digit);
                template.push('}');
                continue;
            }
        }
        template.push(character);
    }
    template
}

impl Config {
    /// The clusters routes may name: `default` (when `destinations` is set) first, then every `[[cluster]]`.
    pub fn all_clusters(&self) -> Vec<ClusterConfig> {
        let mut clusters = Vec::with_capacity(self.clusters.len() + 1);
        if !self.destinations.is_empty() {
            let members: Vec<&str> = self.destinations.iter().map(String::as_str).collect();
            clusters.push(ClusterConfig::new(
                DEFAULT_CLUSTER,
                ClusterMethod::Forward,
                &members,
            ));
        }
        clusters.extend(self.clusters.iter().cloned());
        clusters
    }

    /// The `[destination]` settings of `cluster`'s members: `[destination]`, then the cluster's own keys, then what
    /// flags set.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the cluster, for an override that is not a `[destination]` key or has the wrong type.
    pub fn cluster_destination(&self, cluster: &ClusterConfig) -> Result<DestinationConfig, Error> {
        if cluster.overrides.is_empty() {
            return Ok(self.destination.clone());
        }
        let invalid = |message: String| Error::Invalid {
            key: "cluster",
            message: format!("{:?}: {message}", cluster.name),
        };
        if cluster.overrides.contains_key("spool_total_max_bytes") {
            return Err(invalid(
                "spool_total_max_bytes cannot be set per cluster: it bounds every destination together"
                    .to_string(),
            ));
        }
        let mut merged = toml::Table::try_from(&self.destination)
            .map_err(|err| invalid(format!("cannot merge [destination]: {err}")))?;
        for (key, value) in &cluster.overrides {
            if !self.destination_keys_from_flags.contains(&key.as_str()) {
                merged.insert(key.clone(), value.clone());
            }
        }
        DestinationConfig::deserialize(toml::Value::Table(merged))
            .map_err(|err| invalid(err.to_string().trim_end().to_string()))
    }

    /// Every destination, once, in config order: the `destinations` list, then each cluster's members. An identity
    /// named by several clusters is one destination; they must agree on its settings.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a member that does not parse, an identity listed twice in one cluster, bad overrides,
    /// or two clusters giving one destination different settings.
    pub fn destination_plans(&self) -> Result<Vec<DestinationPlan>, Error> {
        Ok(self.resolve_clusters()?.0)
    }

    /// The destinations and every cluster with its members' destination indices.
    ///
    /// # Errors
    ///
    /// As [`Config::destination_plans`].
    pub fn resolve_clusters(&self) -> Result<(Vec<DestinationPlan>, Vec<ResolvedCluster>), Error> {
        let mut plans: Vec<DestinationPlan> = Vec::new();
        let mut clusters = Vec::new();
        for cluster in self.all_clusters() {
            let key = if cluster.name == DEFAULT_CLUSTER && self.destinations == cluster.members {
                "destinations"
            } else {
                "cluster"
            };
            let invalid = |message: String| Error::Invalid {
                key,
                message: if key == "cluster" {
                    format!("{:?}: {message}", cluster.name)
                } else {
                    message
                },
            };
            let config = self.cluster_destination(&cluster)?;
            let mut destinations = Vec::with_capacity(cluster.members.len());
            for member in &cluster.members {
                let identity = Identity::parse(member).map_err(invalid)?;
                let index = match plans.iter().position(|plan| plan.identity == identity) {
                    Some(index) => {
                        if destinations.contains(&index) {
                            return Err(invalid(format!(
                                "{identity} is listed twice: one identity is one destination"
                            )));
                        }
                        if plans[index].config != config {
                            return Err(invalid(format!(
                                "{identity} is also in another cluster with other [destination] settings: one \
                                 identity is one destination, so they must agree"
                            )));
                        }
                        index
                    }
                    None => {
                        plans.push(DestinationPlan {
                            identity,
                            config: config.clone(),
                        });
                        plans.len() - 1
                    }
                };
                destinations.push(index);
            }
            clusters.push(ResolvedCluster {
                config: cluster,
                destinations,
            });
        }
        Ok((plans, clusters))
    }

    /// Checks clusters, routes and rewrites, and each cluster's destination settings.
    pub(super) fn validate_routing(&self) -> Result<(), Error> {
        let (plans, clusters) = self.resolve_clusters()?;
        for plan in &plans {
            plan.config
                .validate(self.listen.batch_max_bytes)
                .map_err(|err| Error::Invalid {
                    key: "cluster",
                    message: format!("member {}: {err}", plan.identity),
                })?;
        }
        let mut names: Vec<&str> = Vec::new();
        for resolved in &clusters {
            let cluster = &resolved.config;
            validate_cluster(cluster, self.destinations.is_empty())?;
            if names.contains(&cluster.name.as_str()) {
                return Err(cluster_error(cluster, "two clusters have this name"));
            }
            names.push(&cluster.name);
        }
        // A member of a cluster that moves lines between members (any_of, failover, dynamic) has its queue emptied
        // into the others while it is out: a queue shared with another cluster would hand that cluster's lines over.
        for resolved in &clusters {
            if !resolved.config.moves_lines() {
                continue;
            }
            for other in clusters
                .iter()
                .filter(|other| other.config.name != resolved.config.name)
            {
                if let Some(&shared) = resolved
                    .destinations
                    .iter()
                    .find(|index| other.destinations.contains(index))
                {
                    return Err(cluster_error(
                        &resolved.config,
                        &format!(
                            "member {} is also in cluster {:?}: a {} cluster moves an unreachable member's queued \
                             lines to the other members, so its members cannot be shared",
                            plans[shared].identity,
                            other.config.name,
                            if resolved.config.dynamic { "dynamic" } else { resolved.config.method.name() },
                        ),
                    ));
                }
            }
        }
        for (index, route) in self.routes.iter().enumerate() {
            let invalid = |message: String| Error::Invalid {
                key: "route",
                message: format!("route {} ({}): {message}", index + 1, describe_route(route)),
            };
            let n_matchers = [&route.pattern, &route.prefix, &route.suffix]
                .iter()
                .filter(|matcher| matcher.is_some())
                .count();
            if n_matchers > 1 {
                return Err(invalid(
                    "at most one of match, prefix and suffix".to_string(),
                ));
            }
            if let Some(pattern) = &route.pattern {
                regex::bytes::Regex::new(pattern).map_err(|err| invalid(err.to_string()))?;
            }
            if route.send_to.is_empty() {
                return Err(invalid(
                    "send_to must name at least one cluster or blackhole".to_string(),
                ));
            }
            for target in &route.send_to {
                if target != BLACKHOLE && !names.contains(&target.as_str()) {
                    let hint = if target == DEFAULT_CLUSTER {
                        " (default is the top-level destinations list, which is empty)"
                    } else {
                        ""
                    };
                    return Err(invalid(format!(
                        "send_to names {target:?}, which is no cluster{hint}"
                    )));
                }
            }
        }
        for (index, rewrite) in self.rewrites.iter().enumerate() {
            let invalid = |message: String| Error::Invalid {
                key: "rewrite",
                message: format!("rewrite {} ({:?}): {message}", index + 1, rewrite.pattern),
            };
            let regex = regex::bytes::Regex::new(&rewrite.pattern)
                .map_err(|err| invalid(err.to_string()))?;
            if rewrite.replace.is_empty() {
                return Err(invalid("replace must not be empty".to_string()));
            }
            if rewrite
                .replace
                .contains(|character: char| character.is_whitespace() || character.is_control())
            {
                return Err(invalid(
                    "replace must not hold whitespace or control characters: a path has none"
                        .to_string(),
                ));
            }
            compile_replacement(&regex, &rewrite.replace).map_err(invalid)?;
        }
        Ok(())
    }
}

fn cluster_error(cluster: &ClusterConfig, message: &str) -> Error {
    Error::Invalid {
        key: "cluster",
        message: format!("{:?}: {message}", cluster.name),
    }
}

fn describe_route(route: &RouteConfig) -> String {
    match (&route.pattern, &route.prefix, &route.suffix) {
        (Some(pattern), _, _) => format!("match {pattern:?}"),
        (_, Some(prefix), _) => format!("prefix {prefix:?}"),
        (_, _, Some(suffix)) => format!("suffix {suffix:?}"),
        _ => "every line".to_string(),
    }
}

fn validate_cluster(cluster: &ClusterConfig, destinations_empty: bool) -> Result<(), Error> {
    let fail = |message: &str| Err(cluster_error(cluster, message));
    if cluster.name.is_empty() {
        return fail("name must not be empty");
    }
    if cluster.name == BLACKHOLE {
        return fail("blackhole is the name of the target that discards lines");
    }
    if cluster.name == DEFAULT_CLUSTER
        && !destinations_empty
        && cluster.method != ClusterMethod::Forward
    {
        return fail("default is the cluster of the top-level destinations list");
    }
    if cluster.members.is_empty() {
        return fail("members must name at least one host:port[=instance]");
    }
    if cluster.method.is_hash() {
        if !(1..=cluster.members.len()).contains(&cluster.replication) {
            return fail("replication must be at least 1 and at most the number of members");
        }
        if cluster.method == ClusterMethod::JumpFnv1aCh && cluster.flavour == Some(Flavour::Carbon)
        {
            return fail(
                "jump_fnv1a_ch exists only as carbon-c-relay has it: flavour = \"carbon-c-relay\"",
            );
        }
        if cluster.flavour() == Flavour::CarbonCRelay && cluster.diverse_replicas == Some(true) {
            return fail(
                "diverse_replicas is carbon's: carbon-c-relay's rings have no diverse replicas",
            );
        }
        if cluster.flavour() == Flavour::Carbon {
            // carbon's ring key is (server, instance): the port is left out, and carbon refuses such a pair twice.
            let mut keys: Vec<(String, Option<String>)> = Vec::new();
            for member in &cluster.members {
                let Ok(identity) = Identity::parse(member) else {
                    continue;
                };
                let key = (
                    identity.host().to_string(),
                    identity.instance().map(str::to_string),
                );
                if keys.contains(&key) {
                    return fail(&format!(
                        "{member}: carbon's ring keys a member by host and instance, not port, so two members \
                         with host {:?} need distinct instances (host:port=instance)",
                        identity.host()
                    ));
                }
                keys.push(key);
            }
        }
    } else {
        if cluster.replication != 1 {
            return fail("replication applies to hash methods only");
        }
        if cluster.flavour.is_some() || cluster.diverse_replicas.is_some() {
            return fail("flavour and diverse_replicas apply to hash methods only");
        }
        if cluster.dynamic {
            return fail(&format!(
                "dynamic applies to hash methods only ({} {})",
                cluster.method.name(),
                if cluster.method == ClusterMethod::Forward {
                    "sends to every member"
                } else {
                    "always moves an unreachable member's lines to the others"
                }
            ));
        }
    }
    Ok(())
}

/// One piece of a compiled replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplacementPart {
    /// Bytes written as they are.
    Literal(Vec<u8>),
    /// The text of capture group N (empty when it did not take part in the match).
    Group(usize),
}

/// Compiles a rewrite's `replace` against its regex: literal bytes and group indices (`$1`, `${1}`, `${name}`, `$$`,
/// and carbon-c-relay's `\1`).
///
/// # Errors
///
/// A `${` without its `}`, or a group the regex does not have: `regex` would silently write nothing for it.
pub fn compile_replacement(
    regex: &regex::bytes::Regex,
    replace: &str,
) -> Result<Vec<ReplacementPart>, String> {
    let template = replacement_template(replace);
    let bytes = template.as_bytes();
    let mut parts = Vec::new();
    let mut literal = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] != b'$' {
            literal.push(bytes[index]);
            index += 1;
            continue;
        }
        if bytes.get(index + 1) == Some(&b'$') {
            literal.push(b'$');
            index += 2;
            continue;
        }
        let (name, next) = if bytes.get(index + 1) == Some(&b'{') {
            match template[index + 2..].find('}') {
                Some(end) => (&template[index + 2..index + 2 + end], index + 3 + end),
                None => return Err("replace has a ${ without its }".to_string()),
            }
        } else {
            let end = template[index + 1..]
                .find(|character: char| !(character.is_ascii_alphanumeric() || character == '_'))
                .map_or(template.len(), |end| index + 1 + end);
            (&template[index + 1..end], end)
        };
        let group = match name.parse::<usize>() {
            Ok(group) => (group < regex.captures_len()).then_some(group),
            Err(_) => regex
                .capture_names()
                .position(|group_name| group_name == Some(name)),
        };
        let Some(group) = group else {
            return Err(format!(
                "replace names group {name:?}, which the regex does not have (write ${{1}}x, not $1x, before a \
                 letter or digit)"
            ));
        };
        if !literal.is_empty() {
            parts.push(ReplacementPart::Literal(std::mem::take(&mut literal)));
        }
        parts.push(ReplacementPart::Group(group));
        index = next;
    }
    if !literal.is_empty() {
        parts.push(ReplacementPart::Literal(literal));
    }
    Ok(parts)
}
