//! Integration tests on real loopback sockets: the relay runs in process on port 0 (or as the real binary where the
//! process edge is under test), destinations are test sinks. One binary, one module per area.

// Test support: the relay in process, sinks, `eventually`.
mod support;
// The real `polymur` binary's command line: flags, `-t`, exit codes.
mod cli;
// The real binary: signals, exit codes, memory under hostile input, the seed's log lines.
mod process;
// Memory of the real binary against what its queues count.
mod memory;
// The disk spool against kill -9: the real binary killed and restarted in a loop, every handed-over line delivered.
mod spool_crash;
// Lines in, lines out: fan-out, batching, validation end to end.
mod pipeline;
// Destinations failing: stalled, down at start, killed and restarted.
mod destinations;
// Many connections: thousands at once, the cap, idle and slowloris connections.
mod connections;
// The stats HTTP server on real sockets: its connection cap and header read timeout, and a `/stats` client.
mod stats_server;
// The disk spool: spilling, replay in order, shutdown and restart, policies, the lock (`spool_crash` kills it).
mod spool;
// Clusters, routes and rewrites: consistent hashing, blackholes, any_of and failover members killed and restarted.
mod routing;
// The real Graphite peers (collectd, statsd, carbon-cache, carbon-c-relay) end to end; `--features peers`.
#[cfg(feature = "peers")]
mod peers;
// A destination behind a path that black-holes (a network namespace and nft); `--features peers`.
#[cfg(feature = "peers")]
mod black_hole;
