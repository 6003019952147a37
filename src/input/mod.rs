//! Inputs: where lines enter the relay.

pub mod tcp;
