//! The relay's configuration: one [`Config`] value, loaded from TOML and overridden by command-line flags.
//!
//! Sits at the process edge: `main` loads and validates it before anything binds or spawns, and every stage receives
//! the part it needs. Invariants: every key has a real default (so an empty file is a valid config), unknown keys are
//! errors (`deny_unknown_fields`), durations are human strings (`"30s"`, `"10m"`) and sizes may be human strings
//! (`"64MiB"`) or plain byte counts. A [`Config`] that passed [`Config::validate`] is trusted by the rest of the code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::destination::Identity;

mod routing;

pub use routing::{
    compile_replacement, replacement_template, ClusterConfig, ClusterMethod, DestinationPlan,
    Flavour, ReplacementPart, ResolvedCluster, RewriteConfig, RouteConfig, BLACKHOLE,
    DEFAULT_CLUSTER,
};

/// Why a configuration could not be loaded or is not usable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file named with `-c`.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a value of the wrong type.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file named with `-c`.
        path: PathBuf,
        /// What the TOML parser said, including the line and key.
        message: String,
    },
    /// A value parsed but is out of its allowed range.
    #[error("invalid config: {key}: {message}")]
    Invalid {
        /// The config key, as spelled in the TOML file.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole relay configuration. `config/polymur.toml` is the commented example of every key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Destinations every valid line is sent to, as `host:port` or `host:port=instance` (carbon-c-relay's syntax;
    /// the instance only names the destination). Host names are resolved on every connect. Each entry's identity
    /// (written back as `host:port[=instance]`) names it in stats and logs; listing one twice is an error. Default:
    /// none, in which case every valid line is counted as dropped with reason `no_destination`.
    pub destinations: Vec<String>,
    /// Bound on the whole shutdown sequence (read what clients sent, drain queues). Default `10s`.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Where lines come in.
    pub listen: ListenConfig,
    /// What a valid line is.
    pub line: LineConfig,
    /// Per-destination queue and writer settings, shared by every destination.
    pub destination: DestinationConfig,
    /// Counters, the stats HTTP server, the periodic log line and self-metrics.
    pub stats: StatsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Named sets of destinations and how lines are spread over them (`[[cluster]]`), beside the `default` cluster
    /// of `destinations`.
    #[serde(rename = "cluster", skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterConfig>,
    /// Which lines go to which clusters (`[[route]]`), in order. None: every line goes to every cluster.
    #[serde(rename = "route", skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// Path rewrites applied in order before routing (`[[rewrite]]`).
    #[serde(rename = "rewrite", skip_serializing_if = "Vec::is_empty")]
    pub rewrites: Vec<RewriteConfig>,
    /// The `[destination]` keys command-line flags set: they win over a cluster's own value for that key.
    #[serde(skip)]
    pub destination_keys_from_flags: Vec<&'static str>,
}

/// The plaintext TCP listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// Bind address (host name or IP). Default `localhost`, as the seed polymur; use `0.0.0.0` to accept from the
    /// network.
    pub address: String,
    /// Bind port. Default `2005` (the seed's). `0` picks a free port (tests).
    pub port: u16,
    /// Connections open at once; the next ones are accepted and closed at once, and counted as rejected.
    /// Default `10000`. `RLIMIT_NOFILE` is raised to its hard limit at start; keep this below it.
    pub max_connections: usize,
    /// A connection with no partial line buffered is closed after this long without a complete line.
    /// Default `10m`, so a script sending every 5 minutes keeps its connection. `0s` disables.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A partial line older than this is dropped (counted as `partial_timeout`) and its connection closed, which
    /// defeats slowloris senders. Default `30s`. `0s` disables.
    #[serde(with = "humantime_serde")]
    pub partial_line_timeout: Duration,
    /// Largest read buffer a connection may grow to. Each starts at `max_line_bytes` + 16 KiB, doubles while its
    /// reads fill it, and shrinks back when the connection is mostly idle, so only busy senders hold large buffers.
    /// Default 256 KiB (0.91x the CPU of 64 KiB at full speed). Must exceed `line.max_line_bytes`.
    pub read_buffer_bytes: usize,
    /// Bytes that the read buffers of all connections together may grow by beyond their initial size. Default
    /// 32 MiB: 146 connections grown to the largest buffer, while every other busy connection reads in its initial size
    /// (`max_line_bytes` + 16 KiB). It bounds the memory of thousands of busy connections; `0` keeps every buffer at
    /// its initial size.
    pub read_buffer_budget_bytes: usize,
    /// A batch is handed to the destinations when it holds this many lines. Default `4096`, so in practice
    /// `batch_max_bytes` decides under load. Lower it only to trade throughput for latency.
    pub batch_lines: usize,
    /// A batch is handed to the destinations when it holds this many bytes. Default 16 KiB: batches that still sit in
    /// the CPU cache when the kernel copies them out were measured fastest (8 KiB same speed, 64 KiB 0.85x).
    pub batch_max_bytes: usize,
    /// A partly filled batch is handed on after at most this long even if its connection keeps trickling; a
    /// connection with no more bytes ready flushes at once. Default `5s` (the seed's).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
}

/// What a valid line is; see `line` for the rules.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LineConfig {
    /// Longest accepted line without its LF. Longer lines are discarded up to the next LF without being buffered
    /// (`line_len`). Default 16384: carbon-cache closes the connection on longer lines. Range 64..=1 MiB.
    pub max_line_bytes: usize,
    /// Longest accepted path (after sanitising, with tags). Default 1024 (`path_len`).
    pub max_path_bytes: usize,
    /// What to do with path characters outside `[A-Za-z0-9-_:#.]`: `sanitize` (default, as carbon-c-relay: replace
    /// each byte with `_`, counted as `sanitized`), `reject` (drop the line, `path_chars`) or `passthrough`.
    pub path_policy: PathPolicy,
}

/// What happens to path characters outside the Graphite alphabet.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PathPolicy {
    /// Replace every such byte with `_` (carbon-c-relay's behaviour).
    Sanitize,
    /// Drop the line and count it as `path_chars`.
    Reject,
    /// Forward the path unchanged (NUL and invalid UTF-8 are still rejected).
    Passthrough,
}

/// Per-destination queue and writer settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DestinationConfig {
    /// Lines a destination's queue may hold (the seed's `-queue-cap`). Default 4,000,000: high enough that
    /// `queue_max_bytes` binds first for any line longer than 16 bytes, so memory is what the bound is about. Lower it
    /// to bound a queue in lines as the seed did (its 4096 is about a millisecond of traffic at our rates).
    pub queue_capacity_lines: usize,
    /// Bytes of memory a destination's queue may keep alive: its batches' line bytes plus their bookkeeping
    /// (`batch::Batch::memory_bytes`). Default 64 MiB; the worst case for N dead destinations is N times this.
    #[serde(with = "byte_size")]
    pub queue_max_bytes: u64,
    /// What a full queue does with a new batch: `drop_newest` (default, as the seed), `drop_oldest` (as
    /// carbon-c-relay) or `block` (backpressures *all* senders until there is room, giving up isolation).
    pub overflow: OverflowPolicy,
    /// Bound on resolving a destination's name, and on the connect to each address it resolves to (tried in turn,
    /// so an address that black-holes the connect costs this long and then the next is tried). A connect attempt
    /// takes at most this times one plus the number of addresses. Default `3s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A connection on which, for this long, no write took bytes and the destination acknowledged nothing new, while
    /// lines were outstanding, is closed and its unacknowledged lines re-queued: a destination that accepts and never
    /// reads. A slow destination acknowledges, and so is never cut. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// `TCP_USER_TIMEOUT` of destination sockets: the kernel fails a connection whose written bytes, or keepalive
    /// probes, stay unacknowledged this long, so a destination host that died or a path that black-holes is noticed
    /// in seconds instead of the kernel's 15 minutes, and its unacknowledged lines are sent again after a reconnect.
    /// Default: unset, which means `write_timeout` (so raising one for a slow network raises both): a live
    /// destination's kernel acknowledges within a round trip even when its process does not read. `0s` leaves the
    /// kernel's default. Use [`DestinationConfig::tcp_user_timeout`] for the value in force.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub tcp_user_timeout: Option<Duration>,
    /// TCP keepalive on destination sockets: the first probe after this long without traffic, so a destination that
    /// vanished while the relay had nothing to send is noticed (with `tcp_user_timeout`) before the next line is
    /// lost into it. Default `10s`; must be more than `0s`.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive_idle: Duration,
    /// Interval between keepalive probes. Default `5s`; must be more than `0s`. With `tcp_user_timeout` set, the
    /// connection fails once probes have gone unanswered for `tcp_user_timeout`; without it, after 3 probes.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive_interval: Duration,
    /// Longest pause between reconnect attempts; the backoff starts at 100 ms and doubles, with jitter.
    /// Default `30s` (the seed's retry interval).
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// Directory of the disk spool (flag `-spool-dir`): one subdirectory per destination, named by
    /// the escaped identity (`spool::directory_name`), so a restart or reload finds it again. Default: unset, no
    /// spool (lines that do not fit the memory queue are dropped per `overflow`). With a spool, a destination never
    /// paces senders and `overflow` no longer applies: it spills to disk instead, and `spool_overflow` applies when
    /// the spool is full. Each destination's directory holds a lock file, so a second relay on the same directory
    /// refuses to start. A directory that cannot be created or written is a startup error (exit 78).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_dir: Option<PathBuf>,
    /// When batches go through the spool (flag `-spool-mode`): `overflow` (default) spills to disk when the
    /// destination is disconnected or its memory queue is full, and keeps new batches behind what is on disk until
    /// the spool has drained, so order is kept; `always` writes every batch to the spool before it is sent
    /// (write-ahead), so a `kill -9` loses nothing that was handed to the destination.
    pub spool_mode: SpoolMode,
    /// Bytes of disk one destination's spool may use (flag `-spool-max-bytes`), segment headers included. Default
    /// `1GiB`; at least 1 MiB. The spool never exceeds it by more than one segment header and one record.
    #[serde(with = "byte_size")]
    pub spool_max_bytes: u64,
    /// Bytes of disk all destinations' spools together may use; each spool's share is this divided by the number of
    /// destinations, when that is smaller than `spool_max_bytes`, and must be at least 1 MiB. Default `0`: no total
    /// bound.
    #[serde(with = "byte_size")]
    pub spool_total_max_bytes: u64,
    /// What a full spool does with a new batch: `drop_oldest` (default: delete the oldest segment, counting its
    /// unsent lines as `spool_full`), `drop_newest` (refuse the new batch, counted `spool_full`) or `block` (make
    /// senders wait, giving up isolation between destinations, as `overflow = "block"` does).
    pub spool_overflow: SpoolOverflow,
    /// How often spooled data is flushed to stable storage with `fdatasync`: a duration (default `1s`), `batch`
    /// (before every batch counts as spooled; slowest, loses nothing to a power cut) or `never` (leave it to the
    /// kernel). A `kill -9` loses nothing spooled whatever this is (the page cache survives the process); this only
    /// bounds what a power loss can take.
    pub spool_sync: SpoolSync,
}

/// When batches go through a destination's spool.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SpoolMode {
    /// Memory first; spill to disk when the destination is disconnected or its memory queue is full.
    #[default]
    Overflow,
    /// Write-ahead: every batch is spooled before it is sent.
    Always,
}

/// What a full spool does with a new batch.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SpoolOverflow {
    /// Delete the oldest segment to make room; its unsent lines are counted as `spool_full`.
    #[default]
    DropOldest,
    /// Refuse the new batch; its lines are counted as `spool_full`.
    DropNewest,
    /// Make senders wait until the spool has room.
    Block,
}

/// When spooled data is flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolSync {
    /// `fdatasync` at most this long after a write (and on every segment roll and at shutdown).
    Interval(Duration),
    /// `fdatasync` before a batch counts as spooled.
    Batch,
    /// Never `fdatasync` data (only the checkpoint at shutdown); the kernel writes back when it likes.
    Never,
}

impl Default for SpoolSync {
    fn default() -> Self {
        SpoolSync::Interval(Duration::from_secs(1))
    }
}

impl std::str::FromStr for SpoolSync {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "batch" => Ok(SpoolSync::Batch),
            "never" => Ok(SpoolSync::Never),
            _ => humantime::parse_duration(text)
                .map(SpoolSync::Interval)
                .map_err(|err| {
                    format!(
                        "invalid spool_sync {text:?}: {err} (a duration, \"batch\" or \"never\")"
                    )
                }),
        }
    }
}

impl std::fmt::Display for SpoolSync {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpoolSync::Interval(interval) => {
                write!(formatter, "{}", humantime::format_duration(*interval))
            }
            SpoolSync::Batch => formatter.write_str("batch"),
            SpoolSync::Never => formatter.write_str("never"),
        }
    }
}

impl Serialize for SpoolSync {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpoolSync {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a destination queue does when it is full.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Drop the batch being added (the seed polymur's behaviour).
    DropNewest,
    /// Drop the oldest queued batches to make room (carbon-c-relay's behaviour).
    DropOldest,
    /// Wait for room, slowing every sender.
    Block,
}

/// Counters and their outlets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StatsConfig {
    /// Address of the stats HTTP server (`GET /stats`, `GET /health`). Default `localhost:2020` (the seed's
    /// "Runstats"). An empty string disables it.
    pub address: String,
    /// Interval of the `Last 5s: Received ...` log line. Default `5s`; `0s` disables.
    #[serde(with = "humantime_serde")]
    pub log_interval: Duration,
    /// Every this long, send the relay's own metrics to every destination as plaintext (the seed's
    /// `-metrics-flush`). Default `0s`: off.
    #[serde(with = "humantime_serde")]
    pub metrics_flush: Duration,
    /// Prefix of the self-metrics; `{host}` becomes the host name with dots replaced by `_` (as carbon-c-relay's
    /// default `carbon.relays.\.1`).
    /// Default `carbon.relays.{host}`, carbon-c-relay's, so existing dashboards keep working.
    pub metrics_prefix: String,
    /// Most connections the stats server holds open at once; beyond it a new connection is accepted and closed at
    /// once, counted as `stats_server.connections_rejected`. Default 64: far more than scrapers, health checks and
    /// people need, and small enough that a flood of them costs little memory. Range 1..=10000000. Raise it if a
    /// fleet of health checkers shares one relay.
    pub max_connections: usize,
    /// A client must send a request's whole head (request line and headers) within this long of connecting, or the
    /// connection is closed (`stats_server.connections_timed_out`). Default `5s`. Must be more than `0s` and at most
    /// `stats.request_timeout`. Lower it only on a busy host whose stats clients are all local.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection carries one request and is closed this long after it was accepted, whatever it is doing:
    /// reading the request, answering, or writing to a client that does not read. Default `10s`. Must be more than
    /// `0s`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`, both on stderr.
    pub format: LogFormat,
    /// Level filter in `RUST_LOG` syntax. Default `info`.
    pub level: String,
    /// Print every relayed line to stdout (the seed's `-console-out`). Default `false`.
    pub console_out: bool,
}

/// The log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            destinations: Vec::new(),
            shutdown_timeout: Duration::from_secs(10),
            listen: ListenConfig::default(),
            line: LineConfig::default(),
            destination: DestinationConfig::default(),
            stats: StatsConfig::default(),
            log: LogConfig::default(),
            clusters: Vec::new(),
            routes: Vec::new(),
            rewrites: Vec::new(),
            destination_keys_from_flags: Vec::new(),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: "localhost".to_string(),
            port: 2005,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(600),
            partial_line_timeout: Duration::from_secs(30),
            read_buffer_bytes: 256 * 1024,
            read_buffer_budget_bytes: 32 * 1024 * 1024,
            batch_lines: 4096,
            batch_max_bytes: 16 * 1024,
            flush_interval: Duration::from_secs(5),
        }
    }
}

impl Default for LineConfig {
    fn default() -> Self {
        LineConfig {
            max_line_bytes: 16 * 1024,
            max_path_bytes: 1024,
            path_policy: PathPolicy::Sanitize,
        }
    }
}

impl DestinationConfig {
    /// The `TCP_USER_TIMEOUT` in force: `tcp_user_timeout` if set, `write_timeout` otherwise (`0s`: the kernel's).
    pub fn tcp_user_timeout(&self) -> Duration {
        self.tcp_user_timeout.unwrap_or(self.write_timeout)
    }
}

impl Default for DestinationConfig {
    fn default() -> Self {
        DestinationConfig {
            queue_capacity_lines: 4_000_000,
            queue_max_bytes: 64 * 1024 * 1024,
            overflow: OverflowPolicy::DropNewest,
            connect_timeout: Duration::from_secs(3),
            write_timeout: Duration::from_secs(5),
            tcp_user_timeout: None,
            tcp_keepalive_idle: Duration::from_secs(10),
            tcp_keepalive_interval: Duration::from_secs(5),
            retry_interval: Duration::from_secs(30),
            spool_dir: None,
            spool_mode: SpoolMode::Overflow,
            spool_max_bytes: 1024 * 1024 * 1024,
            spool_total_max_bytes: 0,
            spool_overflow: SpoolOverflow::DropOldest,
            spool_sync: SpoolSync::default(),
        }
    }
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            address: "localhost:2020".to_string(),
            log_interval: Duration::from_secs(5),
            metrics_flush: Duration::ZERO,
            metrics_prefix: "carbon.relays.{host}".to_string(),
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
            console_out: false,
        }
    }
}

impl Config {
    /// Reads and parses a TOML file. The result is not yet validated: apply flag overrides, then call
    /// [`Config::validate`].
    ///
    /// # Errors
    ///
    /// [`Error::Read`] if the file cannot be read, [`Error::Parse`] on bad TOML, an unknown key or a wrong type.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|message| Error::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text; the error is the parser's message, with line and key.
    ///
    /// # Errors
    ///
    /// The TOML parser's message on bad syntax, an unknown key or a wrong type.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|err| err.to_string().trim_end().to_string())
    }

    /// The destinations' identities, in config order: `destinations`, then each cluster's members not named before.
    ///
    /// # Errors
    ///
    /// As [`Config::destination_plans`].
    pub fn destination_identities(&self) -> Result<Vec<Identity>, Error> {
        Ok(self
            .destination_plans()?
            .into_iter()
            .map(|plan| plan.identity)
            .collect())
    }

    /// Checks every value's range and the relations between values.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the first offending key.
    pub fn validate(&self) -> Result<(), Error> {
        fn invalid(key: &'static str, message: impl Into<String>) -> Result<(), Error> {
            Err(Error::Invalid {
                key,
                message: message.into(),
            })
        }
        let plans = self.destination_plans()?;
        if self.listen.address.is_empty() {
            return invalid("listen.address", "must not be empty");
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.listen.max_connections) {
            return invalid(
                "listen.max_connections",
                format!("must be in 1..={MAX_CONNECTIONS}"),
            );
        }
        for (key, duration) in [
            ("shutdown_timeout", self.shutdown_timeout),
            ("listen.idle_timeout", self.listen.idle_timeout),
            (
                "listen.partial_line_timeout",
                self.listen.partial_line_timeout,
            ),
            ("listen.flush_interval", self.listen.flush_interval),
            ("stats.log_interval", self.stats.log_interval),
            ("stats.metrics_flush", self.stats.metrics_flush),
            ("stats.header_read_timeout", self.stats.header_read_timeout),
            ("stats.request_timeout", self.stats.request_timeout),
        ] {
            if duration > MAX_DURATION {
                return invalid(key, "must be at most a year");
            }
        }
        if !(64..=1024 * 1024).contains(&self.line.max_line_bytes) {
            return invalid("line.max_line_bytes", "must be in 64..=1048576");
        }
        if self.line.max_path_bytes == 0 || self.line.max_path_bytes >= self.line.max_line_bytes {
            return invalid(
                "line.max_path_bytes",
                "must be at least 1 and less than line.max_line_bytes",
            );
        }
        if self.listen.read_buffer_bytes <= self.line.max_line_bytes
            || self.listen.read_buffer_bytes > 16 * 1024 * 1024
        {
            return invalid(
                "listen.read_buffer_bytes",
                "must exceed line.max_line_bytes and be at most 16 MiB",
            );
        }
        if self.listen.batch_lines == 0 {
            return invalid("listen.batch_lines", "must be at least 1");
        }
        if self.listen.batch_max_bytes < 1024 || self.listen.batch_max_bytes > 16 * 1024 * 1024 {
            return invalid("listen.batch_max_bytes", "must be in 1024..=16777216");
        }
        if self.listen.flush_interval.is_zero() {
            return invalid("listen.flush_interval", "must be more than 0s");
        }
        self.destination.validate(self.listen.batch_max_bytes)?;
        let n_destinations = plans.len().max(1) as u64;
        if self.destination.spool_total_max_bytes != 0
            && self.destination.spool_total_max_bytes / n_destinations < MIN_SPOOL_MAX_BYTES
        {
            return invalid(
                "destination.spool_total_max_bytes",
                "must be 0 (no total bound) or leave each destination at least 1MiB",
            );
        }
        if !self.stats.address.is_empty() && split_bind_address(&self.stats.address).is_none() {
            return invalid("stats.address", "must be host:port or empty");
        }
        if self.stats.metrics_prefix.is_empty() {
            return invalid("stats.metrics_prefix", "must not be empty");
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.stats.max_connections) {
            return invalid(
                "stats.max_connections",
                format!("must be in 1..={MAX_CONNECTIONS}"),
            );
        }
        if self.stats.request_timeout.is_zero() {
            return invalid("stats.request_timeout", "must be more than 0s");
        }
        if self.stats.header_read_timeout.is_zero()
            || self.stats.header_read_timeout > self.stats.request_timeout
        {
            return invalid(
                "stats.header_read_timeout",
                "must be more than 0s and at most stats.request_timeout",
            );
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return invalid("log.level", err.to_string());
        }
        self.validate_routing()
    }
}

impl DestinationConfig {
    /// Checks the ranges of a destination's settings (those of `[destination]`, or of a cluster's members).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the first offending key as `destination.KEY`.
    pub fn validate(&self, batch_max_bytes: usize) -> Result<(), Error> {
        fn invalid(key: &'static str, message: impl Into<String>) -> Result<(), Error> {
            Err(Error::Invalid {
                key,
                message: message.into(),
            })
        }
        for (key, duration) in [
            ("destination.connect_timeout", self.connect_timeout),
            ("destination.write_timeout", self.write_timeout),
            ("destination.tcp_user_timeout", self.tcp_user_timeout()),
            ("destination.retry_interval", self.retry_interval),
        ] {
            if duration > MAX_DURATION {
                return invalid(key, "must be at most a year");
            }
        }
        if self.spool_max_bytes < MIN_SPOOL_MAX_BYTES {
            return invalid("destination.spool_max_bytes", "must be at least 1MiB");
        }
        if let SpoolSync::Interval(interval) = self.spool_sync {
            if interval.is_zero() || interval > MAX_DURATION {
                return invalid(
                    "destination.spool_sync",
                    "must be more than 0s and at most a year, \"batch\" or \"never\"",
                );
            }
        }
        if self
            .spool_dir
            .as_ref()
            .is_some_and(|dir| dir.as_os_str().is_empty())
        {
            return invalid("destination.spool_dir", "must not be empty");
        }
        if self.queue_capacity_lines == 0 {
            return invalid("destination.queue_capacity_lines", "must be at least 1");
        }
        if self.queue_max_bytes < batch_max_bytes as u64 {
            return invalid(
                "destination.queue_max_bytes",
                "must hold at least one batch (listen.batch_max_bytes)",
            );
        }
        for (key, duration) in [
            ("destination.connect_timeout", self.connect_timeout),
            ("destination.write_timeout", self.write_timeout),
            ("destination.retry_interval", self.retry_interval),
            ("destination.tcp_keepalive_idle", self.tcp_keepalive_idle),
            (
                "destination.tcp_keepalive_interval",
                self.tcp_keepalive_interval,
            ),
        ] {
            if duration.is_zero() {
                return invalid(key, "must be more than 0s");
            }
        }
        for (key, duration) in [
            ("destination.tcp_keepalive_idle", self.tcp_keepalive_idle),
            (
                "destination.tcp_keepalive_interval",
                self.tcp_keepalive_interval,
            ),
        ] {
            if duration > MAX_TCP_KEEPALIVE {
                return invalid(key, "must be at most 32767s (the kernel's limit)");
            }
        }
        if self.tcp_user_timeout() > MAX_TCP_USER_TIMEOUT {
            return invalid(
                "destination.tcp_user_timeout",
                "must be at most 24 days (the kernel's limit); unset, it is destination.write_timeout",
            );
        }
        Ok(())
    }
}

/// Longest duration any setting takes: far beyond any sensible value, and safe to add to an `Instant`.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The smallest `spool_max_bytes`: a spool needs room for several segments of at least 64 KiB.
const MIN_SPOOL_MAX_BYTES: u64 = 1024 * 1024;

/// Longest keepalive idle time and probe interval Linux accepts (`MAX_TCP_KEEPIDLE`, `MAX_TCP_KEEPINTVL`).
const MAX_TCP_KEEPALIVE: Duration = Duration::from_secs(32_767);

/// Longest `TCP_USER_TIMEOUT`, an `int` of milliseconds, rounded down to whole days.
const MAX_TCP_USER_TIMEOUT: Duration = Duration::from_secs(24 * 24 * 60 * 60);

/// Most connections `listen.max_connections` and `stats.max_connections` may allow; file descriptors run out long
/// before.
const MAX_CONNECTIONS: usize = 10_000_000;

/// Splits a destination's `host:port` (or `[v6]:port`) into its parts; `None` if there is no host or no port in
/// 1..=65535.
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    split_bind_address(address).filter(|&(_, port)| port != 0)
}

/// Splits an address to bind, `host:port`; port 0 (any free port) is allowed.
pub fn split_bind_address(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    if host.is_empty() {
        return None;
    }
    Some((host, port))
}

/// Parses a byte size: a plain byte count or a human size such as `"64MiB"` / `"1 GB"`, as in the config file.
///
/// # Errors
///
/// A message naming the text when it is not a size.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|err| format!("invalid size {text:?}: {err}"))
}

/// Serde adapter for byte sizes: a plain integer, or a string such as `"64MiB"` / `"1 GB"`.
mod byte_size {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(*bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Size {
            Bytes(u64),
            Text(String),
        }
        match Size::deserialize(deserializer)? {
            Size::Bytes(bytes) => Ok(bytes),
            Size::Text(text) => super::parse_byte_size(&text).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_total_spool_bound_must_leave_each_destination_a_mebibyte() {
        let mut config = Config {
            destinations: vec!["a:1".into(), "b:1".into(), "c:1".into()],
            ..Config::default()
        };
        config.destination.spool_total_max_bytes = 3 * 1024 * 1024;
        config.validate().unwrap();
        config.destination.spool_total_max_bytes = 3 * 1024 * 1024 - 1;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("destination.spool_total_max_bytes"), "{err}");
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn sizes_and_durations_take_human_units() {
        let config = Config::parse(
            "shutdown_timeout = \"2m\"\n[destination]\nqueue_max_bytes = \"8MiB\"\nwrite_timeout = \"750ms\"\n",
        )
        .unwrap();
        assert_eq!(config.shutdown_timeout, Duration::from_secs(120));
        assert_eq!(config.destination.queue_max_bytes, 8 * 1024 * 1024);
        assert_eq!(config.destination.write_timeout, Duration::from_millis(750));
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let message = Config::parse("[listen]\nprot = 2003\n").unwrap_err();
        assert!(message.contains("prot"), "{message}");
    }

    #[test]
    fn tcp_user_timeout_follows_write_timeout_unless_set() {
        let config = Config::parse("[destination]\nwrite_timeout = \"30s\"\n").unwrap();
        assert_eq!(
            config.destination.tcp_user_timeout(),
            Duration::from_secs(30)
        );
        let config =
            Config::parse("[destination]\nwrite_timeout = \"30s\"\ntcp_user_timeout = \"0s\"\n")
                .unwrap();
        assert_eq!(config.destination.tcp_user_timeout(), Duration::ZERO);
        let too_long = Config::parse("[destination]\nwrite_timeout = \"30d\"\n").unwrap();
        let err = too_long.validate().unwrap_err().to_string();
        assert!(err.contains("destination.tcp_user_timeout"), "{err}");
    }

    #[test]
    fn a_destination_listed_twice_is_an_error_and_instances_make_identities_distinct() {
        let twice = Config {
            destinations: vec![
                "10.0.5.20:2003=a".to_string(),
                "10.0.5.20:2003=a".to_string(),
            ],
            ..Config::default()
        };
        let err = twice.validate().unwrap_err().to_string();
        assert!(err.contains("10.0.5.20:2003=a is listed twice"), "{err}");
        let distinct = Config {
            destinations: vec![
                "10.0.5.20:2003=a".to_string(),
                "10.0.5.20:2003=b".to_string(),
                "10.0.5.20:2003".to_string(),
            ],
            ..Config::default()
        };
        distinct.validate().unwrap();
        let names: Vec<String> = distinct
            .destination_identities()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, distinct.destinations);
    }

    #[test]
    fn validate_names_the_offending_key() {
        let config = Config {
            destinations: vec!["10.0.5.20".to_string()],
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("destinations"), "{err}");

        let mut config = Config::default();
        config.stats.metrics_flush = Duration::from_secs(u64::MAX);
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("stats.metrics_flush"), "{err}");

        let mut config = Config::default();
        config.stats.max_connections = 0;
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("stats.max_connections"), "{err}");

        let mut config = Config::default();
        config.stats.header_read_timeout = Duration::from_secs(11);
        let err = config.validate().unwrap_err();
        assert!(
            err.to_string().contains("stats.header_read_timeout"),
            "{err}"
        );

        let mut config = Config::default();
        config.stats.request_timeout = Duration::ZERO;
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("stats.request_timeout"), "{err}");

        let mut config = Config::default();
        config.line.max_line_bytes = 512 * 1024;
        let err = config.validate().unwrap_err();
        assert!(
            err.to_string().contains("listen.read_buffer_bytes"),
            "{err}"
        );
    }

    #[test]
    fn the_clusters_example_is_valid_and_routes_as_its_comments_say() {
        let config = Config::parse(include_str!("../config/clusters.toml")).unwrap();
        config.validate().unwrap();
        let table = crate::router::table::RoutingTable::new(&config).unwrap();
        let names: Vec<&str> = table
            .clusters()
            .iter()
            .map(|cluster| cluster.name.as_str())
            .collect();
        assert_eq!(names, ["default", "cache", "relays"]);
        let plans = config.destination_plans().unwrap();
        assert_eq!(plans.len(), 6);
        assert_eq!(plans[1].config.queue_max_bytes, 256 * 1024 * 1024);
        assert_eq!(plans[4].config.queue_max_bytes, 64 * 1024 * 1024);
    }

    #[test]
    fn the_example_file_sets_every_key_to_its_default_except_destinations() {
        let example = include_str!("../config/polymur.toml");
        let config = Config::parse(example).unwrap();
        config.validate().unwrap();
        let expected = Config {
            destinations: vec!["127.0.0.1:2003".to_string()],
            ..Config::default()
        };
        assert_eq!(config, expected);
        // Every key is written out: none is left to its default by omission.
        let table: toml::Table = toml::from_str(example).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        assert_eq!(key_paths(&table), key_paths(&defaults));
    }

    fn key_paths(table: &toml::Table) -> Vec<String> {
        let mut paths = Vec::new();
        for (key, value) in table {
            match value {
                toml::Value::Table(inner) => paths.extend(
                    key_paths(inner)
                        .into_iter()
                        .map(|path| format!("{key}.{path}")),
                ),
                _ => paths.push(key.clone()),
            }
        }
        paths.sort();
        paths
    }

    #[test]
    fn host_port_splits_names_ipv4_and_ipv6() {
        assert_eq!(split_host_port("10.0.5.20:2003"), Some(("10.0.5.20", 2003)));
        assert_eq!(split_host_port("carbon:2003"), Some(("carbon", 2003)));
        assert_eq!(split_host_port("[::1]:2003"), Some(("::1", 2003)));
        assert_eq!(split_host_port("carbon"), None);
        assert_eq!(split_host_port(":2003"), None);
        assert_eq!(split_host_port("carbon:0"), None);
    }
}
