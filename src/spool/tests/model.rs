//! The model-based test: random actions applied to a real `Spool<FaultyFs>` and to a naive model of what it must
//! hold, after vector's `disk_v2/tests/model/`.
//!
//! The model keeps every line ever appended (each line names itself: `m.<uid> ...`), with its sequence number and
//! what happened to it: synced, delivered, acknowledged, evicted, refused, lost to a crash. After each action it checks:
//!
//! - reads return exactly the model's oldest unread record (same lines, same sequence numbers), so delivery is in
//!   order and sequence numbers strictly increase within a run; `mark_read` steps over exactly that record when
//!   given its `first_seq`, and over nothing when given another;
//! - evictions remove exactly the oldest unread records, as many lines as `Appended::evicted_lines` says;
//! - after a crash or restart, every synced, unacknowledged, not-evicted line is delivered again, nothing acknowledged
//!   before a successful sync is, and only unsynced lines are ever lost (a clean restart loses and repeats nothing
//!   but what was read and not acknowledged);
//! - segment files never take more than the cap plus one segment header plus one record, at every step;
//! - appended = delivered + evicted + refused + lost + pending, line for line, with duplicates counted apart.

use std::collections::VecDeque;

use proptest::prelude::*;

use super::super::fs::FaultyFs;
use super::super::*;

#[derive(Debug, Clone)]
enum Action {
    Append { n_lines: u32, pad: usize },
    Read,
    MarkRead { wrong: bool },
    Ack { fraction: u16 },
    Sync,
    Crash { seed: u64 },
    Restart,
    DiskFull(bool),
}

#[derive(Debug, Clone)]
struct Setup {
    max_bytes: u64,
    segment_bytes: u64,
    overflow: SpoolOverflow,
    sync: SpoolSync,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        30 => (1u32..16, 0usize..24).prop_map(|(n_lines, pad)| Action::Append { n_lines, pad }),
        20 => Just(Action::Read),
        6 => any::<bool>().prop_map(|wrong| Action::MarkRead { wrong }),
        12 => any::<u16>().prop_map(|fraction| Action::Ack { fraction }),
        6 => Just(Action::Sync),
        4 => any::<u64>().prop_map(|seed| Action::Crash { seed }),
        3 => Just(Action::Restart),
        5 => any::<bool>().prop_map(Action::DiskFull),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    let overflow = prop_oneof![
        Just(SpoolOverflow::DropOldest),
        Just(SpoolOverflow::DropNewest),
        Just(SpoolOverflow::Block)
    ];
    let sync = prop_oneof![
        Just(SpoolSync::Batch),
        Just(SpoolSync::Interval(std::time::Duration::from_secs(1))),
        Just(SpoolSync::Never)
    ];
    (800u64..4000, 64u64..1200, overflow, sync).prop_map(
        |(max_bytes, segment_bytes, overflow, sync)| Setup {
            max_bytes,
            segment_bytes,
            overflow,
            sync,
        },
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    Evicted,
    Refused,
    Lost,
}

#[derive(Debug, Clone)]
struct Line {
    seq: u64,
    synced: bool,
    delivered: bool,
    /// The step it was last delivered at: eviction may delete read, unacknowledged lines without counting them.
    delivered_step: usize,
    acked: bool,
    durably_acked: bool,
    gone: Option<Gone>,
}

/// One record the model expects the spool to return: its lines' uids.
type Expected = Vec<usize>;

#[derive(Debug, Default)]
struct Model {
    lines: Vec<Line>,
    /// Unread records, oldest first.
    pending: VecDeque<Expected>,
    /// The highest sequence number read in this run, and the last acknowledged in it.
    read_end: u64,
    run_acked: u64,
    disk_full: bool,
    /// Lines evicted by an append that then failed, not yet reported through `Appended::evicted_lines`.
    unreported_evictions: u64,
    refused: u64,
    duplicates: u64,
    corrupt_reported: u64,
    /// Actions applied so far, and the last one that deleted a segment to make room.
    step: usize,
    last_eviction_step: usize,
}

const DIR: &str = "/spool/127.0.0.1%3A2003";

fn line_text(uid: usize, pad: usize) -> String {
    format!("m.{uid} 1{} 0\n", "0".repeat(pad))
}

fn uids(payload: &[u8]) -> Vec<usize> {
    let text = std::str::from_utf8(payload).expect("lines are ascii");
    text.lines()
        .map(|line| {
            line.strip_prefix("m.")
                .and_then(|rest| rest.split(' ').next())
                .expect("m.<uid>")
                .parse()
                .expect("uid")
        })
        .collect()
}

fn open(fs: &FaultyFs, setup: &Setup) -> (Spool<FaultyFs>, Recovered) {
    let settings = Settings {
        dir: DIR.into(),
        max_bytes: setup.max_bytes,
        overflow: setup.overflow,
        sync: setup.sync,
    };
    Spool::open_with_segment_bytes(fs.clone(), settings, setup.segment_bytes)
        .expect("in-memory open never fails")
}

fn segment_file_bytes(fs: &FaultyFs) -> u64 {
    let files = fs.files();
    let segments = files.iter().filter(|(path, _)| {
        path.to_str()
            .is_some_and(|path| path.ends_with(segment::SUFFIX))
    });
    segments.map(|(_, len)| len).sum()
}

impl Model {
    fn pending_lines(&self) -> u64 {
        self.pending.iter().map(|record| record.len() as u64).sum()
    }

    /// Removes `n_lines` lines of whole records from the front of `pending`, as evicted.
    fn evict(&mut self, n_lines: u64) -> Result<(), TestCaseError> {
        let mut left = n_lines;
        while left > 0 {
            let record = self
                .pending
                .pop_front()
                .ok_or_else(|| TestCaseError::fail("evicted more than was unread"))?;
            prop_assert!(
                record.len() as u64 <= left,
                "eviction cut a record: {} of {:?}",
                left,
                record
            );
            left -= record.len() as u64;
            for uid in record {
                self.lines[uid].gone = Some(Gone::Evicted);
            }
        }
        Ok(())
    }

    fn append(
        &mut self,
        spool: &mut Spool<FaultyFs>,
        setup: &Setup,
        n_lines: u32,
        pad: usize,
    ) -> Result<(), TestCaseError> {
        let first_uid = self.lines.len();
        let payload: String = (first_uid..first_uid + n_lines as usize)
            .map(|uid| line_text(uid, pad))
            .collect();
        let min_seq = self
            .lines
            .iter()
            .filter(|line| line.gone.is_none())
            .map(|line| line.seq + 1)
            .max()
            .unwrap_or(0);
        let bytes_before = spool.status().bytes;
        let result = spool.append(payload.as_bytes(), n_lines);
        let record_len = (record::HEADER_LEN + payload.len()) as u64;
        if spool.status().bytes < bytes_before + record_len * u64::from(result.is_ok()) {
            self.last_eviction_step = self.step;
        }
        match result {
            Ok(appended) => {
                prop_assert!(
                    appended.first_seq >= min_seq,
                    "sequence went back: {} < {}",
                    appended.first_seq,
                    min_seq
                );
                prop_assert!(appended.evicted_lines >= self.unreported_evictions);
                let already_evicted = std::mem::take(&mut self.unreported_evictions);
                self.evict(appended.evicted_lines - already_evicted)?;
                prop_assert!(
                    appended.evicted_lines == 0 || setup.overflow == SpoolOverflow::DropOldest
                );
                for index in 0..n_lines {
                    self.lines.push(Line {
                        seq: appended.first_seq + u64::from(index),
                        synced: setup.sync == SpoolSync::Batch,
                        delivered: false,
                        delivered_step: 0,
                        acked: false,
                        durably_acked: false,
                        gone: None,
                    });
                }
                self.pending
                    .push_back((first_uid..first_uid + n_lines as usize).collect());
            }
            Err(AppendError::Full) => {
                prop_assert!(
                    setup.overflow != SpoolOverflow::DropOldest,
                    "drop_oldest refused a batch that fits an empty spool"
                );
                self.refused += u64::from(n_lines);
            }
            Err(AppendError::Io(error)) => {
                prop_assert!(
                    self.disk_full,
                    "append failed with the disk not full: {}",
                    error
                );
                prop_assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
                self.refused += u64::from(n_lines);
                // An eviction before the failure is reported by the next accepted append; catch up from the status.
                let unread = spool.status().unread_lines;
                let evicted = self.pending_lines() - unread;
                self.evict(evicted)?;
                self.unreported_evictions += evicted;
            }
        }
        // Lines of refused batches still take uids, so uids stay equal to indexes.
        while self.lines.len() < first_uid + n_lines as usize {
            self.lines.push(Line {
                seq: u64::MAX,
                synced: false,
                delivered: false,
                delivered_step: 0,
                acked: false,
                durably_acked: false,
                gone: Some(Gone::Refused),
            });
        }
        Ok(())
    }

    fn read(&mut self, spool: &mut Spool<FaultyFs>) -> Result<(), TestCaseError> {
        let record = spool.read_next().expect("in-memory reads never fail");
        let Some(record) = record else {
            prop_assert!(
                self.pending.is_empty(),
                "nothing read with {} records unread",
                self.pending.len()
            );
            return Ok(());
        };
        let expected = self
            .pending
            .pop_front()
            .ok_or_else(|| TestCaseError::fail(format!("read {record:?}, expected nothing")))?;
        let got = uids(&record.payload);
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(record.n_lines as usize, got.len());
        prop_assert!(
            record.first_seq >= self.read_end,
            "sequence went back within a run"
        );
        for (index, uid) in got.into_iter().enumerate() {
            let line = &mut self.lines[uid];
            prop_assert_eq!(line.seq, record.first_seq + index as u64);
            if line.delivered {
                self.duplicates += 1;
            }
            line.delivered = true;
            line.delivered_step = self.step;
        }
        self.read_end = record.first_seq + u64::from(record.n_lines);
        Ok(())
    }

    /// `mark_read` steps over the oldest unread record given its `first_seq`, and refuses any other.
    fn mark_read(&mut self, spool: &mut Spool<FaultyFs>, wrong: bool) -> Result<(), TestCaseError> {
        let Some(expected) = self.pending.front() else {
            prop_assert!(!spool.mark_read(self.read_end), "stepped over nothing");
            return Ok(());
        };
        let first_seq = self.lines[expected[0]].seq;
        if wrong {
            prop_assert!(
                !spool.mark_read(first_seq + 1),
                "stepped over a record not starting there"
            );
            return Ok(());
        }
        prop_assert!(
            spool.mark_read(first_seq),
            "did not step over the next record at {}",
            first_seq
        );
        let expected = self.pending.pop_front().expect("checked above");
        prop_assert!(
            first_seq >= self.read_end,
            "sequence went back within a run"
        );
        for uid in &expected {
            let line = &mut self.lines[*uid];
            self.duplicates += u64::from(line.delivered);
            line.delivered = true;
            line.delivered_step = self.step;
        }
        self.read_end = first_seq + expected.len() as u64;
        Ok(())
    }

    fn ack(&mut self, spool: &mut Spool<FaultyFs>, fraction: u16) {
        if self.read_end <= self.run_acked {
            return;
        }
        let seq_end = self.run_acked + 1 + u64::from(fraction) % (self.read_end - self.run_acked);
        spool.ack(seq_end);
        self.run_acked = seq_end;
        for line in self
            .lines
            .iter_mut()
            .filter(|line| line.gone.is_none() && line.seq < seq_end)
        {
            line.acked = true;
        }
    }

    /// The spool's state after a sync or close that succeeded.
    fn synced(&mut self, setup: &Setup) {
        for line in self.lines.iter_mut().filter(|line| line.gone.is_none()) {
            line.synced |= setup.sync != SpoolSync::Never;
            line.durably_acked |= line.acked;
        }
    }

    /// Checks what a reopened spool holds against the model, then makes it the model's unread records. With `clean`
    /// (a close that succeeded, no crash) nothing may be lost and nothing acknowledged may come back.
    fn reopened(
        &mut self,
        spool: &mut Spool<FaultyFs>,
        recovered: Recovered,
        clean: bool,
    ) -> Result<(), TestCaseError> {
        let records = spool.peek_unread();
        let mut present = vec![false; self.lines.len()];
        let mut previous_seq = None;
        for record in &records {
            for (index, uid) in uids(&record.payload).into_iter().enumerate() {
                let line = &self.lines[uid];
                prop_assert!(
                    line.gone.is_none(),
                    "line {} came back after it was {:?}",
                    uid,
                    line.gone
                );
                prop_assert!(
                    !line.durably_acked,
                    "line {} came back after a checkpoint acknowledged it",
                    uid
                );
                prop_assert!(
                    !(clean && line.acked),
                    "line {} came back after a clean restart acknowledged it",
                    uid
                );
                prop_assert_eq!(line.seq, record.first_seq + index as u64);
                prop_assert!(previous_seq < Some(line.seq), "out of order after reopen");
                previous_seq = Some(line.seq);
                present[uid] = true;
            }
        }
        let mut lost = 0;
        for (uid, line) in self.lines.iter_mut().enumerate() {
            // The new run's owner acknowledges what comes back again; what does not come back, the spool's checkpoint
            // had passed.
            if present[uid] {
                line.acked = false;
                continue;
            }
            if line.gone.is_some() {
                continue;
            }
            if line.delivered && line.delivered_step < self.last_eviction_step {
                // Evicted after it was read (uncounted), or lost to the crash: the spool cannot tell which either.
                line.gone = Some(Gone::Evicted);
                lost += 1;
                continue;
            }
            if line.acked {
                // Synced and missing: the checkpoint had passed it. Unsynced: it may also have been lost, and its
                // sequence number may be used again.
                if line.synced {
                    line.durably_acked = true;
                } else {
                    // From the spool's side it is lost like any other unsynced line (it may count it corrupt).
                    line.gone = Some(Gone::Lost);
                    lost += 1;
                }
                continue;
            }
            prop_assert!(
                !line.synced && !clean,
                "line {} (seq {}) was lost though synced",
                uid,
                line.seq
            );
            line.gone = Some(Gone::Lost);
            lost += 1;
        }
        prop_assert!(
            recovered.corrupt_lines <= lost,
            "{} corrupt of {} lost",
            recovered.corrupt_lines,
            lost
        );
        self.corrupt_reported += recovered.corrupt_lines;
        self.pending = records.iter().map(|record| uids(&record.payload)).collect();
        prop_assert_eq!(recovered.unread_lines, self.pending_lines());
        self.read_end = 0;
        self.run_acked = 0;
        // Evictions by a failed append that no accepted append reported die with the process (a known gap).
        self.unreported_evictions = 0;
        Ok(())
    }

    fn check(
        &self,
        spool: &mut Spool<FaultyFs>,
        fs: &FaultyFs,
        setup: &Setup,
        max_record: u64,
    ) -> Result<(), TestCaseError> {
        let status = spool.status();
        let on_disk = segment_file_bytes(fs);
        let bound = setup.max_bytes + segment::HEADER_LEN + max_record;
        prop_assert!(
            on_disk <= bound,
            "{} bytes of segments on disk, cap {} (+ slack {})",
            on_disk,
            setup.max_bytes,
            bound
        );
        prop_assert!(status.bytes <= bound);
        prop_assert_eq!(status.unread_lines, self.pending_lines());
        prop_assert_eq!(
            spool.take_corrupt_lines(),
            0,
            "nothing corrupts data at rest in this test"
        );
        // Line for line: every line is in exactly one place.
        let appended = self.lines.len() as u64;
        let delivered = self.lines.iter().filter(|line| line.delivered).count() as u64;
        let undelivered = |gone| {
            self.lines
                .iter()
                .filter(|line| !line.delivered && line.gone == Some(gone))
                .count() as u64
        };
        let refused = undelivered(Gone::Refused);
        prop_assert_eq!(refused, self.refused);
        let pending = self
            .pending
            .iter()
            .flatten()
            .filter(|&&uid| !self.lines[uid].delivered)
            .count() as u64;
        let lost = undelivered(Gone::Lost);
        prop_assert_eq!(
            appended,
            delivered + undelivered(Gone::Evicted) + refused + lost + pending
        );
        Ok(())
    }
}

fn run(setup: Setup, actions: Vec<Action>) -> Result<(), TestCaseError> {
    let fs = FaultyFs::new();
    let (mut spool, _) = open(&fs, &setup);
    let mut model = Model::default();
    let max_record = (record::HEADER_LEN + 16 * line_text(99_999, 24).len()) as u64;
    for action in actions {
        match action {
            Action::Append { n_lines, pad } => model.append(&mut spool, &setup, n_lines, pad)?,
            Action::Read => model.read(&mut spool)?,
            Action::MarkRead { wrong } => model.mark_read(&mut spool, wrong)?,
            Action::Ack { fraction } => model.ack(&mut spool, fraction),
            Action::Sync => match spool.sync() {
                Ok(()) => model.synced(&setup),
                Err(error) => prop_assert!(
                    model.disk_full,
                    "sync failed with the disk not full: {}",
                    error
                ),
            },
            Action::Crash { seed } => {
                drop(spool);
                let mut state = seed | 1;
                fs.crash(|unsynced| {
                    // xorshift: a different torn length for each file.
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % (unsynced as u64 + 1)) as usize
                });
                let recovered;
                (spool, recovered) = open(&fs, &setup);
                model.reopened(&mut spool, recovered, false)?;
            }
            Action::Restart => {
                let clean = spool.close().is_ok();
                if clean {
                    model.synced(&setup);
                } else {
                    prop_assert!(model.disk_full, "close failed with the disk not full");
                }
                let recovered;
                (spool, recovered) = open(&fs, &setup);
                // A close that failed only failed to write its checkpoint: no bytes were lost, but more may repeat.
                model.reopened(&mut spool, recovered, clean)?;
            }
            Action::DiskFull(disk_full) => {
                fs.set_disk_full(disk_full);
                model.disk_full = disk_full;
            }
        }
        model.check(&mut spool, &fs, &setup, max_record)?;
        model.step += 1;
    }
    // Drain: with space back, everything still pending comes out, in order.
    fs.set_disk_full(false);
    model.disk_full = false;
    while !model.pending.is_empty() {
        model.read(&mut spool)?;
    }
    model.read(&mut spool)?;
    model.check(&mut spool, &fs, &setup, max_record)?;
    spool.close().expect("close with space");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn the_spool_behaves_like_the_model_through_crashes_restarts_and_a_full_disk(
        setup in setup(),
        actions in prop::collection::vec(action(), 1..120),
    ) {
        run(setup, actions)?;
    }
}
