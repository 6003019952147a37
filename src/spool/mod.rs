//! The per-destination disk spool: batches of lines a destination cannot take now, kept on disk within a size cap
//! and replayed in order later. This is the storage engine only: synchronous, no tokio; its owner (the destination)
//! runs it on a blocking thread.
//!
//! # Directory
//!
//! Each destination has its own directory (named by [`directory_name`]) holding:
//!
//! - `lock`: held with `flock(LOCK_EX | LOCK_NB)` while a [`Spool`] is open, so a second relay on the same directory
//!   fails with [`Error::Locked`] naming this file.
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: segment files, named by a zero-padded `u64` id that only grows, so names sort in
//!   write order. The newest one is appended to; a new one is started when it would pass [`segment_bytes`], and
//!   always after an open (old segments are never appended to again).
//! - `checkpoint` (and briefly `checkpoint.tmp`): the acknowledged sequence number.
//! - `*.seg.corrupt`: segments whose header was not understood at open, renamed out of the spool for a human.
//!
//! # On-disk format
//!
//! All integers are little-endian.
//!
//! ```text
//! segment    = header record*
//! header     = "PMRSPOOL" version:u32 (= 1) reserved:u32 (= 0)                       16 bytes
//! record     = len:u32 crc:u32 kind:u8 first_seq:u64 n_lines:u32 payload[len]      21 + len bytes
//! checkpoint = "PMRCKPT\0" version:u32 (= 1) acked_seq:u64 crc:u32                    24 bytes
//! ```
//!
//! - `crc` is CRC-32C over everything after it in the record (kind, first_seq, n_lines, payload); the checkpoint's
//!   covers the 20 bytes before it.
//! - `kind` says what the payload is; `1` ([`record::Kind::Lines`]) is whole plaintext lines, each ending in `\n`,
//!   exactly `n_lines` of them. A new kind of record is a new value here, not a format break: a build that does not
//!   know a kind treats such a record as corrupt (skipped and counted).
//! - Every line gets a sequence number, counting from 0 per destination and never reused once durable: a record holds
//!   lines `first_seq .. first_seq + n_lines`, and within a segment records are contiguous. So a gap between what was
//!   read and what comes next is an exact count of lost lines. The checkpoint holds `acked_seq`: every line below it
//!   was delivered. It keeps sequence numbers monotonic across restarts even when every segment has been deleted.
//!
//! # Invariants
//!
//! - A record is written with one `write` call of the whole encoded record, from a reused buffer; nothing is buffered
//!   in user space, so a `kill -9` loses nothing that [`Spool::append`] accepted (the page cache survives the process).
//!   A failed write is truncated back (`set_len`), or, if that fails too, the segment is sealed at its last good
//!   length and the next append starts a new segment: an accepted record never follows garbage.
//! - `fdatasync` runs per [`SpoolSync`]: before `append` returns under `batch`; at each [`Spool::sync`] under an
//!   interval; and, except under `never`, whenever a segment is sealed (so only the newest segment can have a torn
//!   tail after a power cut). Creating or deleting a segment is followed by a directory `fsync`.
//! - A segment is deleted when every line in it is acknowledged, only after a durable checkpoint says so; or, under
//!   `drop_oldest`, when the spool needs its room (its unread lines are counted as evicted).
//! - The cap: bytes of segment files never exceed `max_bytes` by more than one segment header plus one record. (An
//!   append is admitted only if it fits under the cap; the slack covers the garbage a failed write may leave behind a
//!   sealed segment and a header left by a failed segment creation.) A record that cannot fit even in an empty spool
//!   is refused ([`AppendError::Full`]).
//! - Reads use their own position (`pread`), so the owner can read what it just appended, in the segment being written.
//!
//! # Recovery, and what each failure costs
//!
//! At open every segment is scanned once, front to back: header, then records (length, crc, kind, line count,
//! sequence). Recovery never panics and never loops, whatever the bytes.
//!
//! - A torn tail (a record cut by a crash) is truncated away. Those lines were never synced; nothing durable is lost.
//! - A corrupt record (bad crc, unknown kind, wrong line count, out of sequence) and everything after it in its segment
//!   are cut (the file is truncated there). The lost lines are counted exactly from the sequence gap to the next
//!   segment's first record ([`Recovered::corrupt_lines`]); in the newest segment they cannot be told from a torn tail.
//! - A segment whose header is a torn prefix of a valid one (a crash while it was created) held nothing and is deleted.
//!   A segment with a wrong magic or an unknown version, or whose sequence numbers go back below the previous
//!   segment's end, is renamed to `*.seg.corrupt` and left for a human (it may be a newer polymur's data); its lines
//!   are counted as corrupt from the sequence gap around it. Its id is never used again.
//! - Each gap is counted once, by the recovery that cut or set aside what made it: a later open sees clean files.
//! - Sequence numbers restart above the checkpoint and above every record on disk. Lines that were never durable (an
//!   unsynced tail lost to a power cut, with no checkpoint past them) may see their numbers used again.
//! - A missing or invalid checkpoint means replay from the oldest segment: duplicates, never loss.
//! - A record found corrupt while reading (after open) is skipped with the rest of its segment, and its lines are
//!   counted ([`Spool::take_corrupt_lines`]).
//! - Disk full, read-only or failing: the append fails ([`AppendError::Io`]), nothing of it is kept, and the spool
//!   reports itself degraded ([`Status::degraded`]) until an append or sync succeeds again; it needs no restart.

pub mod checkpoint;
pub mod fs;
pub mod record;
pub mod segment;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

pub use crate::config::{SpoolOverflow, SpoolSync};
pub use fs::{Fs, FsFile, RealFs};

/// The name of the lock file in a spool directory.
pub const LOCK_FILE_NAME: &str = "lock";

/// A file of [`RESERVE_BYTES`] that keeps a little space back: on a full disk it is deleted so that a checkpoint can
/// still be written, and with it the acknowledged segments deleted, which is what gives the space back. It is made
/// again once a sync succeeds. It does not count against the cap.
pub const RESERVE_FILE_NAME: &str = "reserve";

/// Size of the reserve file: far more than a checkpoint needs (24 bytes, one block) on any file system.
pub const RESERVE_BYTES: usize = 64 * 1024;

/// How one destination's spool is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// This destination's own directory; created (with its parents) if missing.
    pub dir: PathBuf,
    /// Cap on bytes of segment files on disk, headers included.
    pub max_bytes: u64,
    /// What a full spool does with a new batch.
    pub overflow: SpoolOverflow,
    /// When spooled data is flushed to stable storage.
    pub sync: SpoolSync,
}

/// Why a spool could not be opened, read or synced.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another holder (a second relay) has this spool directory's lock.
    #[error("spool directory is in use by another process: cannot lock {}", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An I/O operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "open spool segment".
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// What recovery found when the spool was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Lines on disk not yet acknowledged.
    pub unread_lines: u64,
    /// Records holding them.
    pub unread_records: u64,
    /// Lines lost to corrupt records or segments (counted by sequence gaps).
    pub corrupt_lines: u64,
    /// Bytes cut from segment tails (torn or corrupt).
    pub truncated_bytes: u64,
}

/// What an accepted append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Sequence number of the batch's first line.
    pub first_seq: u64,
    /// Unread lines of the oldest segments deleted to make room (`drop_oldest`), since the last accepted append
    /// (an append that failed after evicting reports its evictions here, with the next one that succeeds).
    pub evicted_lines: u64,
}

/// Why an append was not accepted; in both cases nothing of the batch is kept.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The cap is reached under `drop_newest` or `block` (or the batch is larger than the whole cap).
    #[error("spool is full")]
    Full,
    /// The disk failed (`ENOSPC`, `EROFS`, `EIO`...).
    #[error("cannot write to the spool: {0}")]
    Io(#[source] io::Error),
}

/// One record read back: whole lines `first_seq .. first_seq + n_lines`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number of the first line.
    pub first_seq: u64,
    /// Lines in `payload`.
    pub n_lines: u32,
    /// Whole lines, each ending in `\n`.
    pub payload: Bytes,
}

/// A spool's state for stats and health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// Bytes of segment files on disk.
    pub bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// Lines not yet read.
    pub unread_lines: u64,
    /// Records not yet read.
    pub unread_records: u64,
    /// The last append or sync failed.
    pub degraded: bool,
}

/// The roll size of segments for a spool capped at `max_bytes`: a sixteenth of it, clamped to 64 KiB ..= 64 MiB.
pub fn segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 16).clamp(64 << 10, 64 << 20)
}

/// The directory name of a destination's spool: its identity made safe for a file name, reversibly.
///
/// Bytes in `[A-Za-z0-9._-]` are kept (except a leading `.`, so the name is never hidden, `.` or `..`); every other
/// byte becomes `%XX` (upper-case hex), `%` included, so the name decodes back to the identity:
/// `"127.0.0.1:2003=a"` is `"127.0.0.1%3A2003%3Da"`.
pub fn directory_name(identity: &str) -> String {
    let mut name = String::with_capacity(identity.len());
    for (index, byte) in identity.bytes().enumerate() {
        let keep = byte.is_ascii_alphanumeric()
            || matches!(byte, b'_' | b'-')
            || (byte == b'.' && index > 0);
        if keep {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    name
}

/// One destination's disk spool. See the module documentation for the format and guarantees.
pub struct Spool<F: Fs = RealFs> {
    fs: F,
    settings: Settings,
    segment_bytes: u64,
    _lock: F::Lock,
    /// Segments in id order (oldest first). When `writing` is set, it is the last one.
    segments: VecDeque<Segment>,
    writing: Option<F::File>,
    /// Unsynced bytes in the writing segment.
    dirty: bool,
    reader: Reader,
    reader_file: Option<(u64, F::File)>,
    /// The last record appended, for [`Spool::mark_read`] without I/O.
    last_appended: Option<Position>,
    next_seq: u64,
    next_segment_id: u64,
    acked: u64,
    checkpointed: u64,
    /// The reserve file exists.
    has_reserve: bool,
    bytes: u64,
    buf: Vec<u8>,
    corrupt_lines: u64,
    unreported_evicted_lines: u64,
    degraded: bool,
}

#[derive(Debug, Clone)]
struct Segment {
    id: u64,
    path: PathBuf,
    /// Bytes of header and valid records: where the next record goes, and where reading stops.
    len: u64,
    /// Bytes the file takes on disk: `len`, plus what a failed write may have left behind a sealed segment.
    disk_len: u64,
    first_seq: u64,
    end_seq: u64,
    n_records: u64,
}

/// Where the next read starts: segment `segment_id` (or the first after it, if it is gone) at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reader {
    segment_id: u64,
    offset: u64,
    records_read: u64,
    next_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    segment_id: u64,
    offset: u64,
    len: u64,
    first_seq: u64,
    end_seq: u64,
}

impl Spool<RealFs> {
    /// Opens (creating if needed) the spool in `settings.dir` on the real file system and recovers it.
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] when another process holds the directory; [`Error::Io`] when the directory cannot be
    /// created, listed or locked, or a segment cannot be read, repaired or removed.
    pub fn open(settings: Settings) -> Result<(Spool, Recovered), Error> {
        Spool::open_with(RealFs, settings)
    }
}

impl<F: Fs> Spool<F> {
    /// Opens the spool on file system `fs`: takes the lock, recovers every segment, reads the checkpoint. The segment
    /// new appends go to is created by the first append.
    ///
    /// # Errors
    ///
    /// As [`Spool::open`].
    pub fn open_with(fs: F, settings: Settings) -> Result<(Self, Recovered), Error> {
        let segment_bytes = segment_bytes(settings.max_bytes);
        Spool::open_with_segment_bytes(fs, settings, segment_bytes)
    }

    /// [`Spool::open_with`] with a roll size of its own, so tests can roll and evict with little data.
    #[doc(hidden)]
    pub fn open_with_segment_bytes(
        fs: F,
        settings: Settings,
        segment_bytes: u64,
    ) -> Result<(Self, Recovered), Error> {
        let dir = settings.dir.clone();
        fs.create_dir_all(&dir)
            .map_err(io_error("create spool directory", &dir))?;
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock = fs
            .try_lock(&lock_path)
            .map_err(io_error("lock spool directory with", &lock_path))?;
        let lock = lock.ok_or(Error::Locked { path: lock_path })?;
        let checkpoint = checkpoint::read(&fs, &dir);
        if checkpoint.is_none() && fs.read(&dir.join(checkpoint::FILE_NAME)).is_ok() {
            tracing::warn!(dir = %dir.display(), "spool checkpoint is invalid, replaying from the oldest segment");
        }
        let acked = checkpoint.unwrap_or(0);
        let mut spool = Spool {
            fs,
            settings,
            segment_bytes,
            _lock: lock,
            segments: VecDeque::new(),
            writing: None,
            dirty: false,
            reader: Reader {
                segment_id: 0,
                offset: segment::HEADER_LEN,
                records_read: 0,
                next_seq: acked,
            },
            reader_file: None,
            last_appended: None,
            next_seq: acked,
            next_segment_id: 0,
            acked,
            checkpointed: acked,
            has_reserve: false,
            bytes: 0,
            buf: Vec::new(),
            corrupt_lines: 0,
            unreported_evicted_lines: 0,
            degraded: false,
        };
        let recovered = spool.recover()?;
        // A disk too full for it at start simply has no reserve until a sync can make one.
        let _ = spool.ensure_reserve();
        Ok((spool, recovered))
    }

    /// Appends a batch of whole lines (`n_lines` of them, each ending in `\n`) as one record.
    ///
    /// Under `drop_oldest`, deletes the oldest segments until the record fits (their unread lines are counted in
    /// [`Appended::evicted_lines`]), and on `ENOSPC` evicts the oldest other segment and retries once. Under
    /// `SpoolSync::Batch` the record is on stable storage when this returns `Ok`.
    ///
    /// # Errors
    ///
    /// [`AppendError::Full`] when the cap is reached under `drop_newest` or `block`; [`AppendError::Io`] when the disk
    /// fails. Either way nothing of the batch is kept.
    pub fn append(&mut self, payload: &[u8], n_lines: u32) -> Result<Appended, AppendError> {
        let whole_lines = n_lines >= 1 && payload.last() == Some(&b'\n');
        debug_assert!(whole_lines, "append takes whole lines");
        if !whole_lines || payload.len() > record::MAX_PAYLOAD_BYTES as usize {
            return Err(AppendError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a batch of whole lines",
            )));
        }
        let record_len = (record::HEADER_LEN + payload.len()) as u64;
        if segment::HEADER_LEN + record_len > self.settings.max_bytes {
            return Err(AppendError::Full);
        }
        let result = self
            .make_room(record_len)
            .and_then(|()| self.write_record(payload, n_lines));
        match result {
            Ok(first_seq) => {
                self.degraded = false;
                let evicted_lines = std::mem::take(&mut self.unreported_evicted_lines);
                Ok(Appended {
                    first_seq,
                    evicted_lines,
                })
            }
            Err(AppendError::Io(error)) => {
                self.degraded = true;
                Err(AppendError::Io(error))
            }
            Err(AppendError::Full) => Err(AppendError::Full),
        }
    }

    /// Reads the next unread record, oldest first, including from the segment being written.
    ///
    /// Corrupt records are skipped with the rest of their segment and counted ([`Spool::take_corrupt_lines`]). A
    /// record whose leading lines are already acknowledged (after a restart) comes back without them.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when a segment cannot be opened or read; the position does not move, so a later call retries.
    pub fn read_next(&mut self) -> Result<Option<Record>, Error> {
        loop {
            let Some(index) = self.next_unread_segment() else {
                return Ok(None);
            };
            let segment = &self.segments[index];
            let (segment_id, segment_len, segment_end_seq) =
                (segment.id, segment.len, segment.end_seq);
            let Some(record) = self.read_record(index)? else {
                // Corrupt: skip to the end of what the segment holds, counting the lines lost.
                let lost = segment_end_seq.saturating_sub(self.reader.next_seq.max(self.acked));
                self.corrupt_lines += lost;
                tracing::error!(
                    segment = segment_id,
                    lines = lost,
                    "corrupt spool record skipped"
                );
                self.reader.offset = segment_len;
                self.reader.next_seq = segment_end_seq;
                continue;
            };
            let end_seq = record.first_seq + u64::from(record.n_lines);
            if end_seq <= self.acked {
                continue;
            }
            if record.first_seq >= self.acked {
                return Ok(Some(record));
            }
            let n_acked = self.acked - record.first_seq;
            let cut = record::skip_lines(&record.payload, n_acked);
            return Ok(Some(Record {
                first_seq: self.acked,
                n_lines: record.n_lines - n_acked as u32,
                payload: record.payload.slice(cut..),
            }));
        }
    }

    /// Steps over the next unread record without reading it, if it starts at `first_seq` (write-ahead hands the batch
    /// it just appended straight to the writer); `true` if it did.
    pub fn mark_read(&mut self, first_seq: u64) -> bool {
        let Some(index) = self.next_unread_segment() else {
            return false;
        };
        let segment = &self.segments[index];
        let at_last_appended = self.last_appended.filter(|position| {
            position.segment_id == segment.id && position.offset == self.reader.offset
        });
        let (record_len, record_first_seq, record_end_seq) = match at_last_appended {
            Some(position) => (position.len, position.first_seq, position.end_seq),
            None => {
                // Not the record just appended (after a restart, say): its header says how long it is.
                let offset = self.reader.offset;
                let available = segment.len - offset;
                let mut front = [0; record::HEADER_LEN];
                let read = self
                    .reader_file(index)
                    .and_then(|file| file.read_at(&mut front, offset).map_err(|_| ()));
                let header = record::Header::parse(&front);
                if read.is_err()
                    || available < record::HEADER_LEN as u64
                    || header.record_len() > available
                {
                    return false;
                }
                (header.record_len(), header.first_seq, header.end_seq())
            }
        };
        // As read_next would return it: without lines already acknowledged.
        if record_first_seq.max(self.acked) != first_seq || record_end_seq <= self.acked {
            return false;
        }
        self.reader.offset += record_len;
        self.reader.records_read += 1;
        self.reader.next_seq = record_end_seq;
        true
    }

    /// Records that every line with a sequence number below `seq_end` was delivered (smaller values than before are
    /// ignored). Segments wholly acknowledged are deleted after a durable checkpoint; an I/O error there marks the
    /// spool degraded and is retried at the next `ack` or `sync`.
    pub fn ack(&mut self, seq_end: u64) {
        if seq_end <= self.acked {
            return;
        }
        self.acked = seq_end;
        if let Err(error) = self.delete_acked_segments() {
            self.degraded = true;
            tracing::warn!(error = %error, "cannot delete acknowledged spool segments, will retry");
        }
    }

    /// Flushes the segment being written (`fdatasync`, except under `SpoolSync::Never`) and writes the checkpoint
    /// durably. The owner calls it every `SpoolSync::Interval` and at shutdown.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the file that failed; the spool is then degraded until an append or sync succeeds.
    pub fn sync(&mut self) -> Result<(), Error> {
        let result = self.sync_inner();
        self.degraded = result.is_err();
        result
    }

    /// Lines lost to corrupt records found by [`Spool::read_next`] since the last call (those found at open are in
    /// [`Recovered::corrupt_lines`]).
    pub fn take_corrupt_lines(&mut self) -> u64 {
        std::mem::take(&mut self.corrupt_lines)
    }

    /// The spool's size, backlog and health.
    pub fn status(&self) -> Status {
        let mut status = Status {
            bytes: self.bytes,
            segments: self.segments.len() as u64,
            degraded: self.degraded,
            ..Status::default()
        };
        for segment in &self.segments {
            if segment.id < self.reader.segment_id {
                continue;
            }
            let (start_seq, records_read) = if segment.id == self.reader.segment_id {
                (self.reader.next_seq, self.reader.records_read)
            } else {
                (segment.first_seq, 0)
            };
            status.unread_lines += segment.end_seq.saturating_sub(start_seq.max(self.acked));
            status.unread_records += segment.n_records.saturating_sub(records_read);
        }
        status
    }

    /// Syncs, writes the checkpoint and releases the lock.
    ///
    /// # Errors
    ///
    /// As [`Spool::sync`]; the lock is released anyway.
    pub fn close(mut self) -> Result<(), Error> {
        self.sync()
    }

    /// Every record [`Spool::read_next`] would return from here on, without moving the reader (for the model test).
    #[cfg(test)]
    fn peek_unread(&mut self) -> Vec<Record> {
        let reader = self.reader;
        let corrupt_lines = self.corrupt_lines;
        let mut records = Vec::new();
        while let Some(record) = self
            .read_next()
            .expect("test file systems do not fail reads")
        {
            records.push(record);
        }
        self.reader = reader;
        self.corrupt_lines = corrupt_lines;
        records
    }

    fn recover(&mut self) -> Result<Recovered, Error> {
        let dir = self.settings.dir.clone();
        let names = self
            .fs
            .list(&dir)
            .map_err(io_error("list spool directory", &dir))?;
        let mut ids = Vec::new();
        for name in &names {
            if let Some(id) = segment::parse_file_name(name) {
                ids.push(id);
            } else if let Some(id) = name
                .strip_suffix(segment::CORRUPT_SUFFIX)
                .and_then(segment::parse_file_name)
            {
                self.next_segment_id = self.next_segment_id.max(id + 1);
            } else if name == checkpoint::TMP_FILE_NAME {
                // A checkpoint that was never renamed into place: the old one (or none) stands.
                let path = dir.join(name);
                self.fs
                    .remove(&path)
                    .map_err(io_error("remove stale spool checkpoint", &path))?;
            }
        }
        ids.sort_unstable();
        let mut recovered = Recovered::default();
        // The end of the previous segment's valid records, to count lines lost between segments.
        let mut previous_end: Option<u64> = None;
        // Whether lines may be missing between the previous segment and the next: one was cut, or renamed away, in
        // this recovery. (A gap left by an earlier recovery was counted then.)
        let mut cut_before = false;
        let mut dir_changed = false;
        for id in ids {
            self.next_segment_id = self.next_segment_id.max(id + 1);
            let path = dir.join(segment::file_name(id));
            let bytes = self
                .fs
                .read(&path)
                .map_err(io_error("read spool segment", &path))?;
            let scan = match segment::scan(&bytes, self.acked) {
                Ok(scan) => scan,
                Err(segment::HeaderError::Torn) => {
                    tracing::info!(path = %path.display(), "removing spool segment torn while it was created");
                    self.fs
                        .remove(&path)
                        .map_err(io_error("remove spool segment", &path))?;
                    dir_changed = true;
                    continue;
                }
                Err(header_error) => {
                    tracing::error!(path = %path.display(), error = ?header_error, "spool segment header not understood");
                    self.set_aside(&path)?;
                    dir_changed = true;
                    cut_before = true;
                    continue;
                }
            };
            let goes_back =
                previous_end.is_some_and(|end| scan.first_seq.is_some_and(|first| first < end));
            if goes_back {
                tracing::error!(path = %path.display(), "spool segment out of sequence with the one before it");
                self.set_aside(&path)?;
                dir_changed = true;
                cut_before = true;
                continue;
            }
            let truncated = scan.valid_len < bytes.len() as u64;
            cut_before |= truncated;
            if truncated {
                let cut = bytes.len() as u64 - scan.valid_len;
                tracing::warn!(path = %path.display(), bytes = cut, stop = ?scan.stop, "truncating spool segment");
                let mut file = self
                    .fs
                    .open(&path)
                    .map_err(io_error("open spool segment", &path))?;
                file.set_len(scan.valid_len)
                    .map_err(io_error("truncate spool segment", &path))?;
                file.sync_data()
                    .map_err(io_error("sync spool segment", &path))?;
                recovered.truncated_bytes += cut;
            }
            let Some(first_seq) = scan.first_seq else {
                self.fs
                    .remove(&path)
                    .map_err(io_error("remove empty spool segment", &path))?;
                dir_changed = true;
                continue;
            };
            if let Some(previous_end) = previous_end.filter(|_| cut_before) {
                let lost = first_seq.saturating_sub(previous_end.max(self.acked));
                if lost > 0 {
                    tracing::error!(path = %path.display(), lines = lost, "spool lines lost to corruption before segment");
                }
                recovered.corrupt_lines += lost;
            }
            previous_end = Some(scan.end_seq);
            cut_before = truncated;
            self.next_seq = self.next_seq.max(scan.end_seq);
            if scan.end_seq <= self.acked {
                // Wholly acknowledged and the checkpoint saying so is durable: a crash came before its deletion.
                self.fs
                    .remove(&path)
                    .map_err(io_error("remove acknowledged spool segment", &path))?;
                dir_changed = true;
                continue;
            }
            if self.segments.is_empty() {
                let resume = scan
                    .resume
                    .expect("a segment not wholly acknowledged has a record to resume at");
                self.reader = Reader {
                    segment_id: id,
                    offset: resume.offset,
                    records_read: resume.records_before,
                    next_seq: resume.first_seq,
                };
            }
            self.bytes += scan.valid_len;
            self.segments.push_back(Segment {
                id,
                path,
                len: scan.valid_len,
                disk_len: scan.valid_len,
                first_seq,
                end_seq: scan.end_seq,
                n_records: scan.n_records,
            });
        }
        if dir_changed {
            self.fs
                .sync_dir(&dir)
                .map_err(io_error("sync spool directory", &dir))?;
        }
        if self.segments.is_empty() {
            self.reader = Reader {
                segment_id: self.next_segment_id,
                offset: segment::HEADER_LEN,
                records_read: 0,
                next_seq: self.next_seq,
            };
        }
        let status = self.status();
        recovered.unread_lines = status.unread_lines;
        recovered.unread_records = status.unread_records;
        Ok(recovered)
    }

    /// Renames a segment recovery cannot use to `*.seg.corrupt`, out of the spool, for a human to look at.
    fn set_aside(&self, path: &Path) -> Result<(), Error> {
        let corrupt = PathBuf::from(format!("{}{}", path.display(), segment::CORRUPT_SUFFIX));
        tracing::error!(path = %path.display(), renamed = %corrupt.display(), "spool segment set aside, its lines are lost");
        self.fs
            .rename(path, &corrupt)
            .map_err(io_error("rename corrupt spool segment", path))
    }

    /// Evicts (under `drop_oldest`) until a record of `record_len` bytes fits under the cap, or refuses.
    fn make_room(&mut self, record_len: u64) -> Result<(), AppendError> {
        loop {
            let needed = record_len
                + if self.needs_roll(record_len) {
                    segment::HEADER_LEN
                } else {
                    0
                };
            if self.bytes + needed <= self.settings.max_bytes {
                return Ok(());
            }
            if self.settings.overflow != SpoolOverflow::DropOldest {
                return Err(AppendError::Full);
            }
            if self.segments.len() == 1 && self.writing.is_some() {
                // Only the segment being written is left: seal it so it can go too.
                self.writing = None;
                self.dirty = false;
            }
            if self.segments.is_empty() {
                // Unreachable while `bytes` counts only segments; refuse rather than loop.
                return Err(AppendError::Full);
            }
            self.evict_oldest().map_err(AppendError::Io)?;
        }
    }

    fn needs_roll(&self, record_len: u64) -> bool {
        match (&self.writing, self.segments.back()) {
            (Some(_), Some(segment)) => {
                segment.n_records > 0 && segment.len + record_len > self.segment_bytes
            }
            _ => true,
        }
    }

    /// Deletes the oldest segment (never the one being written), counting its unread lines as evicted.
    fn evict_oldest(&mut self) -> io::Result<()> {
        let segment = self
            .segments
            .front()
            .expect("callers check there is a segment");
        debug_assert!(
            !(self.segments.len() == 1 && self.writing.is_some()),
            "never evict the writing segment"
        );
        let start_seq = match segment.id.cmp(&self.reader.segment_id) {
            std::cmp::Ordering::Less => segment.end_seq,
            std::cmp::Ordering::Equal => self.reader.next_seq,
            std::cmp::Ordering::Greater => segment.first_seq,
        };
        let unread = segment.end_seq.saturating_sub(start_seq.max(self.acked));
        self.fs.remove(&segment.path)?;
        if let Err(error) = self.fs.sync_dir(&self.settings.dir) {
            tracing::warn!(error = %error, "cannot sync spool directory after eviction");
        }
        let segment = self.segments.pop_front().expect("checked above");
        if unread > 0 {
            tracing::warn!(
                segment = segment.id,
                lines = unread,
                "spool full, evicted the oldest segment"
            );
        }
        self.bytes -= segment.disk_len;
        self.unreported_evicted_lines += unread;
        // Its lines are done with, as if acknowledged: the next checkpoint keeps sequence numbers above them.
        self.acked = self.acked.max(segment.end_seq);
        self.forget_reader_file(segment.id);
        Ok(())
    }

    /// Writes one record (rolling to a new segment first if needed) and returns its `first_seq`.
    fn write_record(&mut self, payload: &[u8], n_lines: u32) -> Result<u64, AppendError> {
        let record_len = (record::HEADER_LEN + payload.len()) as u64;
        if self.needs_roll(record_len) {
            self.roll().map_err(AppendError::Io)?;
        }
        let first_seq = self.next_seq;
        record::encode(
            &mut self.buf,
            record::Kind::Lines,
            first_seq,
            n_lines,
            payload,
        );
        let mut result = self.write_buf();
        let is_disk_full = |result: &io::Result<()>| matches!(result, Err(error) if error.raw_os_error() == Some(libc::ENOSPC));
        let can_evict =
            self.segments.len() > 1 && self.settings.overflow == SpoolOverflow::DropOldest;
        if is_disk_full(&result) && can_evict && self.writing.is_some() {
            self.evict_oldest().map_err(AppendError::Io)?;
            result = self.write_buf();
        }
        result.map_err(AppendError::Io)?;
        let segment = self
            .segments
            .back_mut()
            .expect("write_buf succeeded on the writing segment");
        let offset = segment.len;
        segment.len += record_len;
        segment.disk_len += record_len;
        segment.end_seq = first_seq + u64::from(n_lines);
        segment.n_records += 1;
        self.bytes += record_len;
        self.next_seq = segment.end_seq;
        self.last_appended = Some(Position {
            segment_id: segment.id,
            offset,
            len: record_len,
            first_seq,
            end_seq: segment.end_seq,
        });
        Ok(first_seq)
    }

    /// Appends `self.buf` to the writing segment (and syncs it under `SpoolSync::Batch`), undoing a failure.
    fn write_buf(&mut self) -> io::Result<()> {
        let sync_each = self.settings.sync == SpoolSync::Batch;
        let file = self
            .writing
            .as_mut()
            .expect("the writing segment was created by roll");
        let segment = self
            .segments
            .back_mut()
            .expect("the writing segment is the last");
        let (error, sync_failed) = match file.append(&self.buf) {
            Err(error) => (error, false),
            Ok(()) if !sync_each => {
                self.dirty = true;
                return Ok(());
            }
            Ok(()) => match file.sync_data() {
                Ok(()) => return Ok(()),
                Err(error) => (error, true),
            },
        };
        // Take the record back out, so an accepted record never follows garbage. After a failed fdatasync the state
        // of the file's pages is unknown, so that segment is sealed whatever happens.
        let truncated = file.set_len(segment.len).is_ok();
        if !truncated || sync_failed {
            let garbage = if truncated { 0 } else { self.buf.len() as u64 };
            segment.disk_len += garbage;
            self.bytes += garbage;
            tracing::warn!(path = %segment.path.display(), error = %error, "sealing spool segment after a failed write");
            self.writing = None;
            self.dirty = false;
        }
        Err(error)
    }

    /// Seals the writing segment (syncing it unless `SpoolSync::Never`) and starts a new one.
    fn roll(&mut self) -> io::Result<()> {
        if let Some(file) = &self.writing {
            if self.dirty && self.settings.sync != SpoolSync::Never {
                file.sync_data()?;
            }
            self.writing = None;
            self.dirty = false;
        }
        let id = self.next_segment_id;
        let path = self.settings.dir.join(segment::file_name(id));
        let mut file = self.fs.create(&path)?;
        let created = file.append(&segment::header()).and_then(|()| {
            if self.settings.sync != SpoolSync::Never {
                file.sync_data()?;
            }
            self.fs.sync_dir(&self.settings.dir)
        });
        if let Err(error) = created {
            drop(file);
            // Best effort: a leftover header is cleaned up at the next open.
            let _ = self.fs.remove(&path);
            return Err(error);
        }
        self.next_segment_id += 1;
        self.bytes += segment::HEADER_LEN;
        self.segments.push_back(Segment {
            id,
            path,
            len: segment::HEADER_LEN,
            disk_len: segment::HEADER_LEN,
            first_seq: self.next_seq,
            end_seq: self.next_seq,
            n_records: 0,
        });
        self.writing = Some(file);
        Ok(())
    }

    fn sync_inner(&mut self) -> Result<(), Error> {
        if let (Some(file), Some(segment)) = (&self.writing, self.segments.back()) {
            if self.dirty && self.settings.sync != SpoolSync::Never {
                file.sync_data()
                    .map_err(io_error("sync spool segment", &segment.path))?;
            }
            self.dirty = false;
        }
        if self.checkpointed != self.acked {
            self.write_checkpoint()?;
        }
        self.delete_acked_segments()?;
        // The reserve given back on a full disk is made again here; until it can be, the disk is still full, and a
        // sync that wrote its checkpoint out of the reserve must not clear the degraded mark.
        self.ensure_reserve().map_err(io_error(
            "make spool reserve",
            &self.settings.dir.join(RESERVE_FILE_NAME),
        ))
    }

    /// Makes the reserve file if it is missing.
    fn ensure_reserve(&mut self) -> io::Result<()> {
        if self.has_reserve {
            return Ok(());
        }
        let path = self.settings.dir.join(RESERVE_FILE_NAME);
        let made = self
            .fs
            .create(&path)
            .and_then(|mut file| file.append(&[0; RESERVE_BYTES]));
        match made {
            Ok(()) => {
                self.has_reserve = true;
                Ok(())
            }
            Err(error) => {
                let _ = self.fs.remove(&path);
                Err(error)
            }
        }
    }

    fn write_checkpoint(&mut self) -> Result<(), Error> {
        let mut written = checkpoint::write(&self.fs, &self.settings.dir, self.acked);
        if let Err((_, source)) = &written {
            // A full disk: give the reserve back and try again.
            if source.raw_os_error() == Some(libc::ENOSPC) && self.has_reserve {
                self.has_reserve = false;
                if self
                    .fs
                    .remove(&self.settings.dir.join(RESERVE_FILE_NAME))
                    .is_ok()
                {
                    written = checkpoint::write(&self.fs, &self.settings.dir, self.acked);
                }
            }
        }
        written.map_err(|(path, source)| Error::Io {
            action: "write spool checkpoint",
            path,
            source,
        })?;
        self.checkpointed = self.acked;
        Ok(())
    }

    /// Deletes the oldest segments while they are sealed and wholly acknowledged, after a durable checkpoint.
    fn delete_acked_segments(&mut self) -> Result<(), Error> {
        // A writing segment wholly acknowledged is sealed (the next append starts a new one) once it is half full, or
        // at once while the disk fails: acknowledged data must not hold the space a full disk needs back.
        if let Some(last) = self.segments.back() {
            let retire = self.writing.is_some()
                && last.n_records > 0
                && last.end_seq <= self.acked
                && (self.degraded || last.len >= self.segment_bytes / 2);
            if retire {
                // Durable first: then nothing in it needs its data synced, and it can go like any sealed segment.
                if self.checkpointed < last.end_seq {
                    self.write_checkpoint()?;
                }
                self.writing = None;
            }
        }
        let sealed = self.segments.len() - usize::from(self.writing.is_some());
        let n_acked = self
            .segments
            .iter()
            .take(sealed)
            .take_while(|segment| segment.end_seq <= self.acked)
            .count();
        if n_acked == 0 {
            return Ok(());
        }
        if self.checkpointed < self.segments[n_acked - 1].end_seq {
            self.write_checkpoint()?;
        }
        for _ in 0..n_acked {
            let segment = self.segments.front().expect("counted above");
            self.fs
                .remove(&segment.path)
                .map_err(io_error("remove spool segment", &segment.path))?;
            let segment = self.segments.pop_front().expect("counted above");
            self.bytes -= segment.disk_len;
            self.forget_reader_file(segment.id);
        }
        let dir = &self.settings.dir;
        self.fs
            .sync_dir(dir)
            .map_err(io_error("sync spool directory", dir))
    }

    /// The index of the segment holding the next unread record, moving the reader past segments it has finished.
    fn next_unread_segment(&mut self) -> Option<usize> {
        loop {
            let index = self.locate_reader()?;
            let segment = &self.segments[index];
            if self.reader.offset < segment.len {
                return Some(index);
            }
            if self.is_writing(index) {
                return None;
            }
            self.reader = Reader {
                segment_id: segment.id + 1,
                offset: segment::HEADER_LEN,
                records_read: 0,
                next_seq: segment.end_seq,
            };
        }
    }

    /// The open file of segment `index` for reading, opening it if needed; `Err(())` if it cannot be opened.
    fn reader_file(&mut self, index: usize) -> Result<&F::File, ()> {
        let segment = &self.segments[index];
        if self
            .reader_file
            .as_ref()
            .is_none_or(|(id, _)| *id != segment.id)
        {
            let file = self.fs.open(&segment.path).map_err(|_| ())?;
            self.reader_file = Some((segment.id, file));
        }
        Ok(&self.reader_file.as_ref().expect("opened above").1)
    }

    fn is_writing(&self, index: usize) -> bool {
        self.writing.is_some() && index + 1 == self.segments.len()
    }

    /// The index of the segment the reader is in, moving the reader to the start of the next segment if its own is
    /// gone (acknowledged or evicted).
    fn locate_reader(&mut self) -> Option<usize> {
        let index = self
            .segments
            .iter()
            .position(|segment| segment.id >= self.reader.segment_id)?;
        let segment = &self.segments[index];
        let at_start = self.reader.offset == segment::HEADER_LEN;
        if segment.id != self.reader.segment_id || at_start {
            self.reader = Reader {
                segment_id: segment.id,
                offset: segment::HEADER_LEN,
                records_read: 0,
                next_seq: segment.first_seq,
            };
        }
        Some(index)
    }

    /// Reads the record at the reader's position in segment `index` and moves past it; `None` if it is corrupt.
    fn read_record(&mut self, index: usize) -> Result<Option<Record>, Error> {
        let segment = &self.segments[index];
        let path = segment.path.clone();
        let available = segment.len - self.reader.offset;
        if self
            .reader_file
            .as_ref()
            .is_none_or(|(id, _)| *id != segment.id)
        {
            let file = self
                .fs
                .open(&path)
                .map_err(io_error("open spool segment", &path))?;
            self.reader_file = Some((segment.id, file));
        }
        let (_, file) = self.reader_file.as_ref().expect("opened above");
        let mut front = [0; record::HEADER_LEN];
        if available < record::HEADER_LEN as u64 {
            return Ok(None);
        }
        file.read_at(&mut front, self.reader.offset)
            .map_err(io_error("read spool segment", &path))?;
        let header = record::Header::parse(&front);
        if header.payload_len > record::MAX_PAYLOAD_BYTES || header.record_len() > available {
            return Ok(None);
        }
        let mut payload = BytesMut::zeroed(header.payload_len as usize);
        let payload_offset = self.reader.offset + record::HEADER_LEN as u64;
        file.read_at(&mut payload, payload_offset)
            .map_err(io_error("read spool segment", &path))?;
        let in_sequence = header.first_seq == self.reader.next_seq;
        if !in_sequence || record::check(&header, &front[8..], &payload).is_err() {
            return Ok(None);
        }
        self.reader.offset += header.record_len();
        self.reader.records_read += 1;
        self.reader.next_seq = header.end_seq();
        Ok(Some(Record {
            first_seq: header.first_seq,
            n_lines: header.n_lines,
            payload: payload.freeze(),
        }))
    }

    fn forget_reader_file(&mut self, segment_id: u64) {
        if self
            .reader_file
            .as_ref()
            .is_some_and(|(id, _)| *id == segment_id)
        {
            self.reader_file = None;
        }
    }
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}
