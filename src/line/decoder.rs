//! Applies [`super::check`] to a whole read buffer, appending valid lines to a batch.

use super::{LineCounts, Rules};
use crate::batch::BatchBuilder;

/// Splits a connection's byte stream into lines and validates them; one per connection.
#[derive(Debug)]
pub struct Decoder {
    rules: Rules,
    discarding: bool,
}

impl Decoder {
    /// A decoder for a new connection.
    pub fn new(rules: Rules) -> Decoder {
        Decoder {
            rules,
            discarding: false,
        }
    }

    /// Updates the time used for [`super::Note::TsFar`].
    pub fn set_now(&mut self, now_secs: i64) {
        self.rules.now_secs = now_secs;
    }

    /// True while the rest of an over-long line is being skipped up to its LF.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }

    /// Decodes complete lines at the start of `buf` into `batch`, stopping when no complete line is left or the batch
    /// is full. Returns the number of bytes consumed; the caller keeps the rest and presents it again, followed by
    /// more bytes. A rest longer than `max_line_bytes` (no LF yet) is consumed, counted once as `line_len`, and the
    /// decoder skips up to the next LF.
    pub fn decode(
        &mut self,
        buf: &[u8],
        batch: &mut BatchBuilder,
        counts: &mut LineCounts,
    ) -> usize {
        let _ = (buf, batch, counts);
        todo!("Decoder::decode")
    }

    /// Accounts for the bytes left when the connection reached EOF (`partial_eof` if any, or if a long line was being
    /// skipped).
    pub fn finish(&mut self, rest: &[u8], counts: &mut LineCounts) {
        let _ = (rest, counts);
        todo!("Decoder::finish")
    }
}
