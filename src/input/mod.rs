//! Inputs: where lines enter the relay, first stage of the pipeline.
//!
//! An input turns bytes from clients into batches for the router: bytes → [`line::Decoder`](crate::line::Decoder)
//! (validate and normalise, in place) → [`BatchBuilder`](crate::batch::BatchBuilder) (whole lines, copied once) →
//! [`Router::dispatch`](crate::router::Router::dispatch) (every destination's queue, then pacing). What differs
//! between inputs is only how bytes arrive and when a batch is handed on; the line rules, the batches and the
//! counters in [`Registry`](crate::stats::Registry) are shared.
//!
//! - [`tcp`]: the plaintext listener, an accept loop with one task per connection. It is the only input today.
//! - `udp` (next): one task per socket, each datagram a run of whole lines, handed on per datagram.
//! - `http` ingest (next): plaintext, cricket's and m2pg's bodies, decoded from the request body by the same
//!   decoder; it will sit here, beside `tcp`, and be served by the admin server in `crate::http` or on its own
//!   address.
//!
//! Invariants: an input never blocks on a destination (it waits only while the router paces it or under the `block`
//! policy), never logs per line, and counts every byte it reads as a forwarded line or a counted rejection. Inputs
//! are edges: they watch the shutdown token, stop taking new work when it fires, and hand on what their clients
//! already sent.

pub mod tcp;
