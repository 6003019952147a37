//! TODO
/// TODO
pub struct Relay;
/// TODO
pub struct RelayHandle;
