//! Integration tests on real loopback sockets: the relay runs in process on port 0, destinations are test sinks.

// Test support: the relay in process, sinks, `eventually`.
mod support;
// Lines in, lines out: fan-out, batching, validation end to end.
mod pipeline;
// Destinations failing: stalled, down at start, killed and restarted.
mod destinations;
// Many connections: thousands at once, the cap, idle and slowloris connections.
mod connections;
