//! TEMPORARY stand-in so the `cli` branch compiles; the real relay replaces this file at merge.

use crate::Config;

/// Stand-in for the running relay.
#[derive(Debug)]
pub struct Relay;

/// Stand-in, kept because `lib.rs` re-exports it.
#[derive(Debug)]
pub struct RelayHandle;

/// What a graceful shutdown could not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Lines accepted but not delivered.
    pub lines_lost: u64,
}

impl Relay {
    /// Stand-in for binding and spawning: always fails.
    ///
    /// # Errors
    ///
    /// Always: the relay is not built on this branch.
    pub async fn start(config: Config) -> anyhow::Result<Relay> {
        config.validate()?;
        anyhow::bail!("the relay is not built yet")
    }

    /// Stand-in for the graceful shutdown.
    pub async fn shutdown(self) -> ShutdownReport {
        ShutdownReport { lines_lost: 0 }
    }
}
