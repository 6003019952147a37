//! Integration tests: one binary, one module per area.

// The real `polymur` binary's command line: flags, `-t`, exit codes.
mod cli;
