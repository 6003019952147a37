//! One spool record: its encoding and its validation (pure, no I/O).
//!
//! `len u32 | crc32c u32 | kind u8 | first_seq u64 | n_lines u32 | payload`, little-endian, where `len` is the
//! payload's length in bytes and the CRC-32C covers everything after the crc field (kind, first_seq, n_lines and
//! payload). A record is valid when its crc matches, its kind is known, it holds at least one line, and its payload is
//! exactly `n_lines` whole lines (each ending in `\n`). Anything else is corrupt; nothing here panics on any bytes.

/// Bytes before the payload: `len`, `crc`, `kind`, `first_seq`, `n_lines`.
pub const HEADER_LEN: usize = 4 + 4 + 1 + 8 + 4;

/// The largest payload a record may carry (1 GiB): a `len` above it is garbage, not a record still being written.
pub const MAX_PAYLOAD_BYTES: u32 = 1 << 30;

/// What a record holds; the byte after the crc.
///
/// This is the extension point of the format: a later record type (typed datapoints for the PostgreSQL store, say)
/// gets a new value here, and a reader that does not know it treats the record as corrupt: skipped and counted, never
/// misread. Today only [`Kind::Lines`] exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Whole plaintext lines (`path value ts\n`), as validated by `line`.
    Lines = 1,
}

impl Kind {
    /// The kind a byte names, if it names one this build knows.
    pub fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Lines),
            _ => None,
        }
    }
}

/// The fixed-size front of a record, parsed but not yet checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload bytes after the header.
    pub payload_len: u32,
    /// CRC-32C stored in the record.
    pub crc: u32,
    /// The kind byte (not yet known to be valid).
    pub kind: u8,
    /// Sequence number of the record's first line.
    pub first_seq: u64,
    /// Lines in the payload.
    pub n_lines: u32,
}

impl Header {
    /// Parses the first [`HEADER_LEN`] bytes of a record.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        Header {
            payload_len: u32::from_le_bytes(array(&bytes[0..4])),
            crc: u32::from_le_bytes(array(&bytes[4..8])),
            kind: bytes[8],
            first_seq: u64::from_le_bytes(array(&bytes[9..17])),
            n_lines: u32::from_le_bytes(array(&bytes[17..21])),
        }
    }

    /// Bytes of the whole record, header included.
    pub fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.payload_len)
    }

    /// Sequence number after the record's last line.
    pub fn end_seq(&self) -> u64 {
        self.first_seq.saturating_add(u64::from(self.n_lines))
    }
}

/// Why a record is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corrupt {
    /// The `len` field is above [`MAX_PAYLOAD_BYTES`].
    Length,
    /// The checksum does not match.
    Crc,
    /// The kind byte names no [`Kind`] this build knows.
    Kind,
    /// The payload is not exactly `n_lines` whole lines, or `n_lines` is zero.
    Lines,
}

/// The outcome of decoding the record at the start of a byte slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid record.
    Record {
        /// Its parsed header.
        header: Header,
        /// Its payload (whole lines).
        payload: &'a [u8],
    },
    /// The slice ends before the record does: a torn write, or the end of the data.
    Incomplete,
    /// The bytes are not a valid record.
    Corrupt(Corrupt),
}

/// Encodes one record into `buf` (cleared first), so the caller can hand it to one `write` call.
pub fn encode(buf: &mut Vec<u8>, kind: Kind, first_seq: u64, n_lines: u32, payload: &[u8]) {
    let payload_len =
        u32::try_from(payload.len()).expect("payloads are checked against MAX_PAYLOAD_BYTES");
    buf.clear();
    buf.reserve(HEADER_LEN + payload.len());
    buf.extend_from_slice(&payload_len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(kind as u8);
    buf.extend_from_slice(&first_seq.to_le_bytes());
    buf.extend_from_slice(&n_lines.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32c::crc32c(&buf[8..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes and checks the record at the start of `bytes` (which may hold more after it).
pub fn decode(bytes: &[u8]) -> Decoded<'_> {
    let Some(front) = bytes.first_chunk::<HEADER_LEN>() else {
        return Decoded::Incomplete;
    };
    let header = Header::parse(front);
    if header.payload_len > MAX_PAYLOAD_BYTES {
        return Decoded::Corrupt(Corrupt::Length);
    }
    let Some(payload) = bytes[HEADER_LEN..].get(..header.payload_len as usize) else {
        return Decoded::Incomplete;
    };
    match check(&header, &front[8..], payload) {
        Ok(()) => Decoded::Record { header, payload },
        Err(corrupt) => Decoded::Corrupt(corrupt),
    }
}

/// Checks a record read in two parts: `covered` is the header's bytes after the crc field (kind, first_seq, n_lines).
pub fn check(header: &Header, covered: &[u8], payload: &[u8]) -> Result<(), Corrupt> {
    let crc = crc32c::crc32c_append(crc32c::crc32c(covered), payload);
    if crc != header.crc {
        return Err(Corrupt::Crc);
    }
    if Kind::from_byte(header.kind).is_none() {
        return Err(Corrupt::Kind);
    }
    let whole_lines = payload.last() == Some(&b'\n');
    if header.n_lines == 0
        || !whole_lines
        || memchr::memchr_iter(b'\n', payload).count() != header.n_lines as usize
    {
        return Err(Corrupt::Lines);
    }
    Ok(())
}

/// Byte offset in `payload` just after its first `n_lines` lines (the whole payload if it has fewer).
pub fn skip_lines(payload: &[u8], n_lines: u64) -> usize {
    if n_lines == 0 {
        return 0;
    }
    memchr::memchr_iter(b'\n', payload)
        .nth((n_lines - 1) as usize)
        .map_or(payload.len(), |newline| newline + 1)
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().expect("callers slice exactly N bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(first_seq: u64, payload: &[u8]) -> Vec<u8> {
        let n_lines = payload.iter().filter(|&&byte| byte == b'\n').count() as u32;
        let mut buf = Vec::new();
        encode(&mut buf, Kind::Lines, first_seq, n_lines, payload);
        buf
    }

    fn lines() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec("[a-z.]{1,12} [0-9]{1,4} [0-9]{1,10}\n", 1..20)
            .prop_map(|lines| lines.concat().into_bytes())
    }

    #[test]
    fn a_record_is_its_header_then_its_payload() {
        let buf = encoded(7, b"a 1 2\n");
        assert_eq!(buf.len(), HEADER_LEN + 6);
        assert_eq!(&buf[0..4], &6u32.to_le_bytes());
        assert_eq!(buf[8], 1);
        assert_eq!(&buf[9..17], &7u64.to_le_bytes());
        assert_eq!(&buf[17..21], &1u32.to_le_bytes());
        assert_eq!(&buf[21..], b"a 1 2\n");
    }

    #[test]
    fn an_unknown_kind_is_corrupt_even_with_a_good_crc() {
        let mut buf = encoded(0, b"a 1 2\n");
        buf[8] = 2;
        let crc = crc32c::crc32c(&buf[8..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&buf), Decoded::Corrupt(Corrupt::Kind));
    }

    #[test]
    fn a_line_count_that_disagrees_with_the_payload_is_corrupt() {
        let mut buf = Vec::new();
        encode(&mut buf, Kind::Lines, 0, 2, b"a 1 2\n");
        assert_eq!(decode(&buf), Decoded::Corrupt(Corrupt::Lines));
        encode(&mut buf, Kind::Lines, 0, 1, b"a 1 2");
        assert_eq!(decode(&buf), Decoded::Corrupt(Corrupt::Lines));
    }

    #[test]
    fn skip_lines_stops_after_the_nth_newline() {
        assert_eq!(skip_lines(b"a\nbb\nc\n", 0), 0);
        assert_eq!(skip_lines(b"a\nbb\nc\n", 2), 5);
        assert_eq!(skip_lines(b"a\nbb\nc\n", 9), 7);
    }

    proptest! {
        #[test]
        fn a_record_decodes_to_what_was_encoded(first_seq in any::<u64>(), payload in lines(), tail in prop::collection::vec(any::<u8>(), 0..8)) {
            let mut buf = encoded(first_seq, &payload);
            let record_len = buf.len();
            buf.extend_from_slice(&tail);
            let Decoded::Record { header, payload: decoded } = decode(&buf) else { panic!("not a record: {:?}", decode(&buf)) };
            prop_assert_eq!(header.first_seq, first_seq);
            prop_assert_eq!(header.record_len(), record_len as u64);
            prop_assert_eq!(decoded, &payload[..]);
        }

        #[test]
        fn any_single_bit_flip_is_detected(payload in lines(), bit in any::<prop::sample::Index>()) {
            let mut buf = encoded(42, &payload);
            let bit = bit.index(buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            // A flip in `len` may make the record look longer than the bytes (incomplete) or shorter (corrupt).
            prop_assert!(!matches!(decode(&buf), Decoded::Record { .. }), "flip of bit {} went unseen", bit);
        }

        #[test]
        fn every_proper_prefix_is_incomplete(payload in lines(), cut in any::<prop::sample::Index>()) {
            let buf = encoded(1, &payload);
            let cut = cut.index(buf.len());
            prop_assert_eq!(decode(&buf[..cut]), Decoded::Incomplete);
        }
    }
}
