//! Fuzz target for the spool's recovery: arbitrary bytes as segment files never panic or loop, recovery keeps a
//! prefix of each file, reading returns only whole valid records in sequence order, and a second recovery finds
//! nothing left to cut.
//!
//! Input layout: byte 0 chooses whether the first file gets a valid segment header prepended (random bytes almost
//! never start with one) and byte 1 where the rest is split into two segment files; the rest is the files' bytes.
//! The spool runs on the in-memory `FaultyFs`, so nothing touches the disk.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use polymur::config::{SpoolOverflow, SpoolSync};
use polymur::spool::fs::FaultyFs;
use polymur::spool::{segment, Settings, Spool};

fuzz_target!(|data: &[u8]| {
    let [flags, split, rest @ ..] = data else {
        return;
    };
    let split = (usize::from(*split) * rest.len() / 255).min(rest.len());
    let mut files = [rest[..split].to_vec(), rest[split..].to_vec()];
    for (index, file) in files.iter_mut().enumerate() {
        if flags & (1 << index) != 0 {
            file.splice(0..0, segment::header());
        }
        // The pure scan: a prefix, and that prefix scans clean.
        if let Ok(scan) = segment::scan(file, 0) {
            assert!(
                scan.valid_len <= file.len() as u64,
                "recovery grew the file"
            );
            let again = segment::scan(&file[..scan.valid_len as usize], 0)
                .expect("the prefix keeps its header");
            assert_eq!(again.stop, segment::Stop::End);
            assert_eq!(
                (again.n_records, again.end_seq),
                (scan.n_records, scan.end_seq)
            );
        }
    }

    // The whole spool on those files.
    let fs = FaultyFs::new();
    let dir = Path::new("/spool");
    for (id, file) in files.iter().enumerate() {
        fs.set_contents(&dir.join(segment::file_name(id as u64)), file.clone());
    }
    let settings = Settings {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 20,
        overflow: SpoolOverflow::DropOldest,
        sync: SpoolSync::Batch,
    };
    let (mut spool, recovered) =
        Spool::open_with(fs.clone(), settings.clone()).expect("in-memory open");
    let mut lines = 0;
    let mut next_seq = None;
    while let Some(record) = spool.read_next().expect("in-memory read") {
        assert_eq!(
            record.payload.iter().filter(|&&byte| byte == b'\n').count(),
            record.n_lines as usize
        );
        assert!(next_seq <= Some(record.first_seq), "out of order");
        next_seq = Some(record.first_seq + u64::from(record.n_lines));
        lines += u64::from(record.n_lines);
    }
    assert_eq!(lines, recovered.unread_lines);
    assert_eq!(
        spool.take_corrupt_lines(),
        0,
        "recovery left a corrupt record for the reader"
    );
    drop(spool);
    let (_, again) = Spool::open_with(fs, settings).expect("in-memory open");
    assert_eq!(
        (
            again.truncated_bytes,
            again.corrupt_lines,
            again.unread_lines
        ),
        (0, 0, lines)
    );
});
