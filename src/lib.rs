//! polymur: a Graphite plaintext relay.
//!
//! Lines arrive on many TCP connections ([`input`]), are validated and normalised without allocating per line
//! ([`line`](mod@line)), collected into immutable batches ([`batch`]), handed by the [`router`] to one bounded queue per
//! destination ([`destination`]), and written out by one reconnecting writer per destination. [`stats`] holds the
//! counters every stage increments; [`http`] serves them. [`net`] binds and accepts for both edges. [`relay`] wires
//! the stages together and owns the shutdown order. [`inspect`] answers what the relay would do with a config
//! (`-test-routes`, `-ring-dump`, `-ring-diff`) without starting it; [`import_ccr`] translates a carbon-c-relay
//! config (`-import-ccr`). See `ARCHITECTURE.md` for the pipeline and its invariants.

pub mod batch;
pub mod cli;
pub mod config;
pub mod destination;
pub mod http;
pub mod import_ccr;
pub mod input;
pub mod inspect;
pub mod line;
pub mod net;
pub mod relay;
pub mod router;
pub mod shutdown;
pub mod spool;
pub mod stats;

pub use config::Config;
pub use relay::{Relay, RelayHandle};
