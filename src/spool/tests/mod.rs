//! Tests of the whole spool: on the real file system in a temporary directory (locking, restart, lost checkpoint),
//! on [`FaultyFs`] for faults, and the model-based test in `model.rs`.

mod model;

use std::path::Path;

use super::fs::FaultyFs;
use super::*;

fn settings(dir: &Path, max_bytes: u64, overflow: SpoolOverflow) -> Settings {
    Settings {
        dir: dir.to_path_buf(),
        max_bytes,
        overflow,
        sync: SpoolSync::Batch,
    }
}

/// A spool of 1 MiB on a fresh [`FaultyFs`] in `dir`, with the default segment size or `segment_bytes`.
fn faulty_spool(
    dir: &Path,
    overflow: SpoolOverflow,
    segment_bytes: Option<u64>,
) -> (FaultyFs, Spool<FaultyFs>) {
    let fs = FaultyFs::new();
    let settings = settings(dir, 1 << 20, overflow);
    let (spool, _) = match segment_bytes {
        Some(segment_bytes) => Spool::open_with_segment_bytes(fs.clone(), settings, segment_bytes),
        None => Spool::open_with(fs.clone(), settings),
    }
    .expect("open");
    (fs, spool)
}

/// `n_lines` lines named after their batch, so a test can tell batches apart.
fn batch(name: &str, n_lines: u32) -> Vec<u8> {
    (0..n_lines)
        .map(|index| format!("{name}.{index} 1 2\n"))
        .collect::<String>()
        .into_bytes()
}

fn read_all<F: Fs>(spool: &mut Spool<F>) -> Vec<Record> {
    let mut records = Vec::new();
    while let Some(record) = spool.read_next().expect("readable") {
        records.push(record);
    }
    records
}

#[test]
fn a_second_open_on_the_same_directory_is_refused_naming_the_lock_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) =
        Spool::open(settings(dir.path(), 1 << 20, SpoolOverflow::DropOldest)).expect("first open");
    let error = Spool::open(settings(dir.path(), 1 << 20, SpoolOverflow::DropOldest))
        .err()
        .expect("locked");
    let lock_path = dir.path().join(LOCK_FILE_NAME);
    assert!(
        matches!(&error, Error::Locked { path } if *path == lock_path),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(&lock_path.display().to_string()),
        "{error}"
    );
    spool.close().expect("close");
    let (spool, _) = Spool::open(settings(dir.path(), 1 << 20, SpoolOverflow::DropOldest))
        .expect("lock released");
    drop(spool);
}

#[test]
fn reopening_after_close_replays_exactly_what_was_not_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool_dir = dir.path().join("a/b");
    let (mut spool, recovered) =
        Spool::open(settings(&spool_dir, 1 << 20, SpoolOverflow::DropOldest)).expect("open");
    assert_eq!(recovered, Recovered::default());
    for (index, name) in ["a", "b", "c"].into_iter().enumerate() {
        let appended = spool.append(&batch(name, 3), 3).expect("append");
        assert_eq!(
            appended,
            Appended {
                first_seq: index as u64 * 3,
                evicted_lines: 0
            }
        );
    }
    assert_eq!(read_all(&mut spool).len(), 3);
    // Everything before line 4 was delivered: all of "a" and the first line of "b".
    spool.ack(4);
    spool.close().expect("close");

    let (mut spool, recovered) =
        Spool::open(settings(&spool_dir, 1 << 20, SpoolOverflow::DropOldest)).expect("reopen");
    assert_eq!(
        (
            recovered.unread_lines,
            recovered.corrupt_lines,
            recovered.truncated_bytes
        ),
        (5, 0, 0)
    );
    let records = read_all(&mut spool);
    let expected_b = Bytes::from(batch("b", 3)).slice(b"b.0 1 2\n".len()..);
    assert_eq!(
        records[0],
        Record {
            first_seq: 4,
            n_lines: 2,
            payload: expected_b
        }
    );
    assert_eq!(
        records[1],
        Record {
            first_seq: 6,
            n_lines: 3,
            payload: Bytes::from(batch("c", 3))
        }
    );
    assert_eq!(records.len(), 2);
    // New lines continue the sequence, in a new segment.
    assert_eq!(
        spool.append(&batch("d", 1), 1).expect("append").first_seq,
        9
    );
    assert_eq!(spool.status().segments, 2);
    spool.close().expect("close");
}

#[test]
fn a_deleted_checkpoint_replays_from_the_oldest_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) =
        Spool::open(settings(dir.path(), 1 << 20, SpoolOverflow::DropOldest)).expect("open");
    spool.append(&batch("a", 2), 2).expect("append");
    spool.append(&batch("b", 2), 2).expect("append");
    read_all(&mut spool);
    spool.ack(3);
    spool.close().expect("close");
    std::fs::remove_file(dir.path().join(checkpoint::FILE_NAME))
        .expect("checkpoint was written at close");

    let (mut spool, recovered) =
        Spool::open(settings(dir.path(), 1 << 20, SpoolOverflow::DropOldest)).expect("reopen");
    assert_eq!(recovered.unread_lines, 4);
    let first_seqs: Vec<u64> = read_all(&mut spool)
        .iter()
        .map(|record| record.first_seq)
        .collect();
    assert_eq!(first_seqs, [0, 2]);
}

#[test]
fn acknowledged_segments_are_deleted_and_sequence_numbers_survive_their_deletion() {
    let dir = Path::new("/spool/d");
    let (fs, mut spool) = faulty_spool(dir, SpoolOverflow::DropOldest, Some(100));
    for name in ["a", "b", "c"] {
        spool.append(&batch(name, 4), 4).expect("append");
    }
    assert_eq!(
        spool.status().segments,
        3,
        "each record of more than 100 bytes gets its own segment"
    );
    assert_eq!(read_all(&mut spool).len(), 3);
    spool.ack(12);
    // All three went after a checkpoint, the one being written too: it was wholly acknowledged and over half full.
    assert_eq!(spool.status().segments, 0);
    assert_eq!(checkpoint::read(&fs, dir), Some(12));
    spool.close().expect("close");
    let (mut spool, recovered) = Spool::open_with_segment_bytes(
        fs.clone(),
        settings(dir, 1 << 20, SpoolOverflow::DropOldest),
        100,
    )
    .expect("open");
    assert_eq!((recovered.unread_lines, spool.status().segments), (0, 0));
    assert_eq!(
        spool.append(&batch("d", 1), 1).expect("append").first_seq,
        12
    );
}

#[test]
fn drop_newest_refuses_and_drop_oldest_evicts_counting_unread_lines() {
    let dir = Path::new("/spool");
    let one_record = (record::HEADER_LEN + batch("a", 4).len()) as u64;
    let max_bytes = 3 * (segment::HEADER_LEN + one_record);
    for overflow in [
        SpoolOverflow::DropNewest,
        SpoolOverflow::Block,
        SpoolOverflow::DropOldest,
    ] {
        let (mut spool, _) =
            Spool::open_with_segment_bytes(FaultyFs::new(), settings(dir, max_bytes, overflow), 1)
                .expect("open");
        for name in ["a", "b", "c"] {
            spool.append(&batch(name, 4), 4).expect("fits");
        }
        spool.read_next().expect("readable").expect("a record");
        let result = spool.append(&batch("d", 4), 4);
        if overflow == SpoolOverflow::DropOldest {
            // The oldest segment ("a") was read, so nothing unread went; then "b" goes, unread.
            assert_eq!(result.expect("evicts").evicted_lines, 0);
            assert_eq!(
                spool
                    .append(&batch("e", 4), 4)
                    .expect("evicts")
                    .evicted_lines,
                4
            );
            let first_seqs: Vec<u64> = read_all(&mut spool)
                .iter()
                .map(|record| record.first_seq)
                .collect();
            assert_eq!(first_seqs, [8, 12, 16]);
        } else {
            assert!(
                matches!(result, Err(AppendError::Full)),
                "{overflow:?}: {result:?}"
            );
        }
        assert!(spool.status().bytes <= max_bytes);
    }
}

#[test]
fn a_full_disk_degrades_the_spool_until_space_returns() {
    let dir = Path::new("/spool");
    let (fs, mut spool) = faulty_spool(dir, SpoolOverflow::DropNewest, None);
    spool.append(&batch("a", 2), 2).expect("append");
    fs.set_disk_full(true);
    let error = spool.append(&batch("b", 2), 2).expect_err("disk full");
    assert!(
        matches!(&error, AppendError::Io(io) if io.raw_os_error() == Some(libc::ENOSPC)),
        "{error:?}"
    );
    assert!(spool.status().degraded);
    fs.set_disk_full(false);
    assert_eq!(
        spool
            .append(&batch("c", 2), 2)
            .expect("space is back")
            .first_seq,
        2
    );
    assert!(!spool.status().degraded);
    let records = read_all(&mut spool);
    let payloads: Vec<&[u8]> = records.iter().map(|record| &record.payload[..]).collect();
    assert_eq!(
        payloads,
        [&batch("a", 2)[..], &batch("c", 2)[..]],
        "the half-written record was taken back out"
    );
}

#[test]
fn acknowledged_data_leaves_the_disk_even_from_the_writing_segment_once_a_checkpoint_is_durable() {
    let dir = Path::new("/spool");
    let (fs, mut spool) = faulty_spool(dir, SpoolOverflow::DropNewest, None);
    assert_eq!(
        fs.contents(&dir.join(RESERVE_FILE_NAME))
            .map(|bytes| bytes.len()),
        Some(RESERVE_BYTES),
        "a reserve is kept back"
    );
    spool.append(&batch("a", 2), 2).expect("append");
    spool.append(&batch("b", 3), 3).expect("append");
    fs.set_disk_full(true);
    spool.append(&batch("c", 2), 2).expect_err("disk full");
    assert!(spool.status().degraded);
    assert_eq!(read_all(&mut spool).len(), 2);
    spool.ack(5);
    // No checkpoint can be written (this file layer refuses every write while full), so nothing goes yet.
    assert!(spool.status().bytes > 0);
    fs.set_disk_full(false);
    spool.sync().expect("room again");
    assert!(!spool.status().degraded);
    assert_eq!(
        (spool.status().bytes, spool.status().segments),
        (0, 0),
        "nothing acknowledged stays on disk, the segment being written included"
    );
    assert_eq!(
        spool.append(&batch("d", 1), 1).expect("append").first_seq,
        5,
        "sequence numbers go on"
    );
    let records = read_all(&mut spool);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].first_seq, 5);
}

#[test]
fn a_record_corrupted_on_disk_is_skipped_and_its_lines_counted() {
    let dir = Path::new("/spool");
    let (fs, mut spool) = faulty_spool(dir, SpoolOverflow::DropOldest, Some(160));
    for name in ["a", "b", "c", "d"] {
        spool.append(&batch(name, 3), 3).expect("append");
    }
    // Flip a payload byte of the first record, in the first segment.
    let first_segment = dir.join(segment::file_name(0));
    let mut bytes = fs.contents(&first_segment).expect("exists");
    bytes[segment::HEADER_LEN as usize + record::HEADER_LEN] ^= 1;
    fs.set_contents(&first_segment, bytes);
    // Three records fit in the first segment (16 + 3 * 45 bytes of a 160-byte roll size), the fourth starts the second.
    let first_seqs: Vec<u64> = read_all(&mut spool)
        .iter()
        .map(|record| record.first_seq)
        .collect();
    assert_eq!((first_seqs, spool.take_corrupt_lines()), (vec![9], 9));
    spool.close().expect("close");

    // At open the scan finds it too and cuts the segment; a loss before the oldest segment cannot be told from an
    // eviction, so it is not counted again.
    let (mut spool, recovered) = Spool::open_with_segment_bytes(
        fs.clone(),
        settings(dir, 1 << 20, SpoolOverflow::DropOldest),
        160,
    )
    .expect("open");
    let record_len = (record::HEADER_LEN + batch("a", 3).len()) as u64;
    assert_eq!(
        (
            recovered.unread_lines,
            recovered.corrupt_lines,
            recovered.truncated_bytes
        ),
        (3, 0, 3 * record_len)
    );
    assert_eq!(read_all(&mut spool)[0].first_seq, 9);
}

#[test]
fn a_segment_with_a_foreign_header_is_renamed_and_its_lines_counted() {
    let fs = FaultyFs::new();
    let dir = Path::new("/spool");
    let settings = settings(dir, 1 << 20, SpoolOverflow::DropOldest);
    let (mut spool, _) =
        Spool::open_with_segment_bytes(fs.clone(), settings.clone(), 1).expect("open");
    for name in ["a", "b", "c"] {
        spool.append(&batch(name, 2), 2).expect("append");
    }
    spool.close().expect("close");
    let middle = dir.join(segment::file_name(1));
    let mut bytes = fs.contents(&middle).expect("exists");
    bytes[0] = b'X';
    fs.set_contents(&middle, bytes);
    let (mut spool, recovered) =
        Spool::open_with_segment_bytes(fs.clone(), settings.clone(), 1).expect("open");
    assert_eq!((recovered.corrupt_lines, recovered.unread_lines), (2, 4));
    assert!(fs
        .contents(&dir.join("00000000000000000001.seg.corrupt"))
        .is_some());
    let first_seqs: Vec<u64> = read_all(&mut spool)
        .iter()
        .map(|record| record.first_seq)
        .collect();
    assert_eq!(first_seqs, [0, 4]);
    // The renamed file's id is never reused.
    spool.append(&batch("d", 1), 1).expect("append");
    assert!(fs.contents(&dir.join(segment::file_name(3))).is_some());
    spool.close().expect("close");
    // Regression: every open counted the same gap again, though the loss was found (and reported) once.
    let (_, recovered) = Spool::open_with_segment_bytes(fs.clone(), settings, 1).expect("open");
    assert_eq!((recovered.corrupt_lines, recovered.unread_lines), (0, 5));
}

#[test]
fn mark_read_steps_over_the_record_just_appended() {
    let (mut spool, _) = Spool::open_with(
        FaultyFs::new(),
        settings(Path::new("/s"), 1 << 20, SpoolOverflow::DropOldest),
    )
    .expect("open");
    let first = spool.append(&batch("a", 2), 2).expect("append").first_seq;
    assert!(!spool.mark_read(first + 1));
    assert!(spool.mark_read(first));
    assert_eq!(spool.status().unread_lines, 0);
    spool.append(&batch("b", 1), 1).expect("append");
    assert_eq!(read_all(&mut spool).len(), 1);
}

#[test]
fn directory_names_escape_everything_but_safe_bytes_and_decode_back() {
    fn check(identity: &str, expected: &str) {
        assert_eq!(directory_name(identity), expected);
        let name = directory_name(identity);
        let mut decoded = Vec::new();
        let mut bytes = name.bytes();
        while let Some(byte) = bytes.next() {
            if byte == b'%' {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                decoded.push(u8::from_str_radix(&hex, 16).expect("two hex digits"));
            } else {
                decoded.push(byte);
            }
        }
        assert_eq!(decoded, identity.as_bytes());
    }
    check("127.0.0.1:2003=a", "127.0.0.1%3A2003%3Da");
    check("[::1]:2003", "%5B%3A%3A1%5D%3A2003");
    check("../etc", "%2E.%2Fetc");
    check("a/b%c_d-e", "a%2Fb%25c_d-e");
    check("é", "%C3%A9");
}

#[test]
fn segment_bytes_is_a_sixteenth_of_the_cap_within_bounds() {
    assert_eq!(segment_bytes(1 << 20), 64 << 10);
    assert_eq!(segment_bytes(1 << 30), 64 << 20);
    assert_eq!(segment_bytes(1 << 40), 64 << 20);
    assert_eq!(segment_bytes(0), 64 << 10);
}

#[test]
fn a_segment_whose_sequence_goes_back_is_set_aside() {
    // Regression (found by the fuzz target): a second segment starting below the first one's end was replayed,
    // delivering sequence numbers out of order.
    let fs = FaultyFs::new();
    let dir = Path::new("/spool");
    let segment_with = |first_seq: u64, n_lines: u32| {
        let mut bytes = segment::header().to_vec();
        let mut buf = Vec::new();
        record::encode(
            &mut buf,
            record::Kind::Lines,
            first_seq,
            n_lines,
            &batch("x", n_lines),
        );
        bytes.extend_from_slice(&buf);
        bytes
    };
    fs.set_contents(&dir.join(segment::file_name(0)), segment_with(0, 3));
    fs.set_contents(&dir.join(segment::file_name(1)), segment_with(1, 1));
    fs.set_contents(&dir.join(segment::file_name(2)), segment_with(3, 2));
    let (mut spool, recovered) = Spool::open_with(
        fs.clone(),
        settings(dir, 1 << 20, SpoolOverflow::DropOldest),
    )
    .expect("open");
    assert_eq!((recovered.unread_lines, recovered.corrupt_lines), (5, 0));
    let first_seqs: Vec<u64> = read_all(&mut spool)
        .iter()
        .map(|record| record.first_seq)
        .collect();
    assert_eq!(first_seqs, [0, 3]);
    assert!(fs
        .contents(&dir.join("00000000000000000001.seg.corrupt"))
        .is_some());
}

#[test]
fn a_spool_can_move_to_a_blocking_thread() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Spool<RealFs>>();
    assert_send::<Spool<FaultyFs>>();
}

#[test]
fn a_spool_dropped_without_close_loses_nothing_it_accepted() {
    // What `kill -9` leaves: no sync, no checkpoint, the page cache intact. Every accepted line comes back.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = settings(dir.path(), 1 << 20, SpoolOverflow::DropOldest);
    settings.sync = SpoolSync::Never;
    let (mut spool, _) = Spool::open(settings.clone()).expect("open");
    for name in ["a", "b", "c"] {
        spool.append(&batch(name, 5), 5).expect("append");
    }
    read_all(&mut spool);
    spool.ack(7);
    drop(spool);
    let (mut spool, recovered) = Spool::open(settings).expect("reopen");
    assert_eq!((recovered.unread_lines, recovered.truncated_bytes), (15, 0));
    let payloads: Vec<Bytes> = read_all(&mut spool)
        .into_iter()
        .map(|record| record.payload)
        .collect();
    assert_eq!(
        payloads.concat(),
        [batch("a", 5), batch("b", 5), batch("c", 5)].concat()
    );
}
