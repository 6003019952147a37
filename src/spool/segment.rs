//! A segment file: its header, its name, and the scan that finds its longest valid prefix (pure, no I/O).
//!
//! A segment is `magic[8] | version u32 | reserved u32` followed by records ([`record`]) whose
//! sequence numbers are contiguous: each record's `first_seq` is the previous record's `first_seq + n_lines`. The scan
//! reads records from the front and stops at the first one that is incomplete (a torn tail), invalid, or out of
//! sequence; what it returns is always a prefix of its input, and it never panics or loops on any bytes.

use super::record::{self, Decoded};

/// The first eight bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"PMRSPOOL";

/// The segment format this build writes and reads.
pub const VERSION: u32 = 1;

/// Bytes of the segment header.
pub const HEADER_LEN: u64 = 16;

/// The file-name suffix of segment files.
pub const SUFFIX: &str = ".seg";

/// The suffix a segment with an unreadable header is renamed to (kept for a human, no longer part of the spool).
pub const CORRUPT_SUFFIX: &str = ".corrupt";

/// The header every segment starts with.
pub fn header() -> [u8; HEADER_LEN as usize] {
    let mut header = [0; HEADER_LEN as usize];
    header[..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header
}

/// The file name of segment `id`: zero-padded, so names sort as ids do.
pub fn file_name(id: u64) -> String {
    format!("{id:020}{SUFFIX}")
}

/// The segment id a file name stands for, if it is a segment's name.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Why a segment's header is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// The file is shorter than a header and is a prefix of a valid one: a crash while the segment was created.
    /// Nothing was ever written to it.
    Torn,
    /// The magic bytes are wrong: not a spool segment, or overwritten.
    Magic,
    /// A version this build does not know (a newer polymur wrote it).
    Version(u32),
}

/// What a scan found in one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Length of the valid prefix: the header and every whole valid record before the first problem.
    pub valid_len: u64,
    /// Valid records.
    pub n_records: u64,
    /// `first_seq` of the first valid record (`None` when there is none).
    pub first_seq: Option<u64>,
    /// Sequence number after the last valid record's last line (0 when there is none).
    pub end_seq: u64,
    /// Why the scan stopped.
    pub stop: Stop,
    /// Where a reader resumes, given the acknowledged sequence number the scan was asked about: the first valid
    /// record with a line at or after it (`None` when every valid record is acknowledged).
    pub resume: Option<Resume>,
}

/// Why a scan stopped before the end of the bytes, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The valid prefix is the whole input.
    End,
    /// The last record is incomplete: a torn write (what a crash leaves).
    Torn,
    /// A whole record is invalid or out of sequence: corruption (everything from it on is cut).
    Corrupt,
}

/// A reader's starting point inside a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Byte offset of the record.
    pub offset: u64,
    /// Valid records before it in the segment.
    pub records_before: u64,
    /// The record's `first_seq`.
    pub first_seq: u64,
}

/// Checks a segment's header.
pub fn check_header(bytes: &[u8]) -> Result<(), HeaderError> {
    let expected = header();
    let Some(front) = bytes.get(..HEADER_LEN as usize) else {
        return if expected.starts_with(bytes) {
            Err(HeaderError::Torn)
        } else {
            Err(HeaderError::Magic)
        };
    };
    if front[..8] != MAGIC {
        return Err(HeaderError::Magic);
    }
    let version = u32::from_le_bytes(front[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(HeaderError::Version(version));
    }
    Ok(())
}

/// Scans a whole segment file for its longest valid prefix; `acked` places [`Scan::resume`].
pub fn scan(bytes: &[u8], acked: u64) -> Result<Scan, HeaderError> {
    check_header(bytes)?;
    let mut scan = Scan {
        valid_len: HEADER_LEN,
        n_records: 0,
        first_seq: None,
        end_seq: 0,
        stop: Stop::End,
        resume: None,
    };
    // Each step either returns or moves `offset` forward by at least one record header, so this ends.
    loop {
        let rest = &bytes[scan.valid_len as usize..];
        if rest.is_empty() {
            return Ok(scan);
        }
        let (header, _) = match record::decode(rest) {
            Decoded::Record { header, payload } => (header, payload),
            Decoded::Incomplete => {
                scan.stop = Stop::Torn;
                return Ok(scan);
            }
            Decoded::Corrupt(_) => {
                scan.stop = Stop::Corrupt;
                return Ok(scan);
            }
        };
        let in_sequence = scan.first_seq.is_none() || header.first_seq == scan.end_seq;
        if !in_sequence
            || header
                .first_seq
                .checked_add(u64::from(header.n_lines))
                .is_none()
        {
            scan.stop = Stop::Corrupt;
            return Ok(scan);
        }
        if scan.resume.is_none() && header.end_seq() > acked {
            scan.resume = Some(Resume {
                offset: scan.valid_len,
                records_before: scan.n_records,
                first_seq: header.first_seq,
            });
        }
        scan.first_seq.get_or_insert(header.first_seq);
        scan.end_seq = header.end_seq();
        scan.n_records += 1;
        scan.valid_len += header.record_len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::record::{encode, Kind};
    use proptest::prelude::*;

    /// A valid segment of records with these line counts, starting at `first_seq`, and the end offset of each record.
    fn segment(first_seq: u64, line_counts: &[u32]) -> (Vec<u8>, Vec<u64>) {
        let mut bytes = header().to_vec();
        let mut ends = Vec::new();
        let mut seq = first_seq;
        let mut buf = Vec::new();
        for &n_lines in line_counts {
            let payload = "x 1 2\n".repeat(n_lines as usize);
            encode(&mut buf, Kind::Lines, seq, n_lines, payload.as_bytes());
            bytes.extend_from_slice(&buf);
            ends.push(bytes.len() as u64);
            seq += u64::from(n_lines);
        }
        (bytes, ends)
    }

    fn line_counts() -> impl Strategy<Value = Vec<u32>> {
        prop::collection::vec(1u32..6, 0..8)
    }

    #[test]
    fn names_sort_as_ids_and_parse_back() {
        assert_eq!(file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name("42.seg"), None);
        assert_eq!(parse_file_name("00000000000000000042.seg.corrupt"), None);
    }

    #[test]
    fn a_short_header_is_torn_if_it_is_a_prefix_and_bad_magic_otherwise() {
        assert_eq!(check_header(b""), Err(HeaderError::Torn));
        assert_eq!(check_header(b"PMRSP"), Err(HeaderError::Torn));
        assert_eq!(check_header(b"XMRSP"), Err(HeaderError::Magic));
        let mut newer = header();
        newer[8] = 2;
        assert_eq!(check_header(&newer), Err(HeaderError::Version(2)));
    }

    #[test]
    fn a_record_out_of_sequence_stops_the_scan() {
        let (mut bytes, ends) = segment(10, &[2]);
        let (other, _) = segment(99, &[1]);
        bytes.extend_from_slice(&other[HEADER_LEN as usize..]);
        let scan = scan(&bytes, 0).expect("header is valid");
        assert_eq!(
            (scan.valid_len, scan.stop, scan.end_seq),
            (ends[0], Stop::Corrupt, 12)
        );
    }

    #[test]
    fn resume_points_at_the_first_record_not_wholly_acknowledged() {
        let (bytes, ends) = segment(10, &[2, 3, 1]);
        let resume = scan(&bytes, 13).expect("valid").resume;
        assert_eq!(
            resume,
            Some(Resume {
                offset: ends[0],
                records_before: 1,
                first_seq: 12
            })
        );
        assert_eq!(scan(&bytes, 16).expect("valid").resume, None);
    }

    proptest! {
        #[test]
        fn truncating_anywhere_recovers_exactly_the_whole_records_before_the_cut(first_seq in 0u64..1000, counts in line_counts()) {
            let (bytes, ends) = segment(first_seq, &counts);
            for cut in 0..=bytes.len() {
                let truncated = &bytes[..cut];
                match scan(truncated, 0) {
                    Err(error) => {
                        prop_assert!(cut < HEADER_LEN as usize);
                        prop_assert_eq!(error, HeaderError::Torn);
                    }
                    Ok(scan) => {
                        let whole = ends.iter().filter(|&&end| end <= cut as u64).count();
                        let expected_len = if whole == 0 { HEADER_LEN } else { ends[whole - 1] };
                        prop_assert_eq!(scan.valid_len, expected_len);
                        prop_assert_eq!(scan.n_records, whole as u64);
                        let expected_stop = if expected_len == cut as u64 { Stop::End } else { Stop::Torn };
                        prop_assert_eq!(scan.stop, expected_stop);
                        let lines: u32 = counts[..whole].iter().sum();
                        prop_assert_eq!(scan.end_seq, if whole == 0 { 0 } else { first_seq + u64::from(lines) });
                    }
                }
            }
        }

        #[test]
        fn garbage_after_a_valid_tail_is_cut(counts in line_counts(), garbage in prop::collection::vec(any::<u8>(), 1..64)) {
            let (mut bytes, _) = segment(5, &counts);
            let valid_len = bytes.len() as u64;
            bytes.extend_from_slice(&garbage);
            let scan = scan(&bytes, 0).expect("header is valid");
            prop_assert_eq!(scan.valid_len, valid_len);
            prop_assert_eq!(scan.n_records, counts.len() as u64);
            prop_assert_ne!(scan.stop, Stop::End);
        }

        #[test]
        fn byte_soup_never_panics_and_recovers_a_prefix(mut bytes in prop::collection::vec(any::<u8>(), 0..512), with_header in any::<bool>()) {
            if with_header {
                bytes.splice(0..0, header());
            }
            if let Ok(scan) = scan(&bytes, 0) {
                prop_assert!(scan.valid_len <= bytes.len() as u64);
                prop_assert!(scan.valid_len >= HEADER_LEN);
                // The prefix is itself a clean segment with the same records.
                let again = super::scan(&bytes[..scan.valid_len as usize], 0).expect("prefix keeps the header");
                prop_assert_eq!(again.stop, Stop::End);
                prop_assert_eq!(again.n_records, scan.n_records);
            }
        }
    }
}
