//! The file layer the spool does all its I/O through: [`RealFs`] in the relay, [`FaultyFs`] in tests.
//!
//! The trait is as small as the spool needs: append-only files read with `pread`, truncation, `fdatasync`, rename,
//! remove, listing, directory `fsync` and an exclusive lock. [`FaultyFs`] is an in-memory file system that knows which
//! bytes of each file were synced, so a test can cut the power (losing unsynced bytes, keeping a torn part of them)
//! and fill the disk (writes fail with `ENOSPC` after writing part of their buffer).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// The file-system operations the spool needs.
pub trait Fs {
    /// An open file.
    type File: FsFile;
    /// Proof of holding a directory's lock; dropping it releases the lock.
    type Lock;

    /// Creates a directory and its parents, like `mkdir -p`.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Takes the exclusive lock on `path` (creating the file), or `Ok(None)` when another holder has it.
    fn try_lock(&self, path: &Path) -> io::Result<Option<Self::Lock>>;
    /// Creates `path` empty (truncating it if it exists), open for appending and reading.
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Opens an existing file for appending and reading.
    fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Renames a file, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries in a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// `fsync`s a directory, making creations, renames and removals in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file of an [`Fs`].
pub trait FsFile {
    /// Appends the whole buffer at the end of the file (one `write` call when the kernel takes it all). On error an
    /// unknown prefix of the buffer may have been written.
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `offset` (`pread`), without moving any position.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Truncates (or extends) the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// `fdatasync`: the file's data is on stable storage when this returns `Ok`.
    fn sync_data(&self) -> io::Result<()>;
}

/// The real file system, through `std::fs`; the lock is `flock(LOCK_EX | LOCK_NB)` on a lock file.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl Fs for RealFs {
    type File = File;
    type Lock = File;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<File>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(file)),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(errno) => Err(errno.into()),
        }
    }

    fn create(&self, path: &Path) -> io::Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        file.set_len(0)?;
        Ok(file)
    }

    fn open(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().read(true).append(true).open(path)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            // A name that is not UTF-8 is nothing the spool wrote; leave it alone.
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl FsFile for File {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        // The file is opened with O_APPEND, so this writes at the end whatever was truncated before it.
        self.write_all(buf)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
}

/// An in-memory [`Fs`] for tests that can lose unsynced data and run out of space.
///
/// It is `pub` (hidden from the docs) rather than `#[cfg(test)]` so the integration tests in `tests/it`, a separate
/// crate that cannot see `cfg(test)` items, can drive a real [`Spool`](super::Spool) through power cuts and a full
/// disk too. Clones share one file system: the test keeps a clone to flip faults while the spool owns another.
///
/// Each file keeps its bytes and how many of them are synced (on stable storage): `sync_data` syncs all of them,
/// truncation below the synced length lowers it, appends are unsynced. Creations, renames and removals are durable at
/// once (as if every directory were synced), which is the kind thing to assume: the spool syncs its directory anyway.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct FaultyFs {
    state: Arc<Mutex<FaultyState>>,
}

#[derive(Debug, Default)]
struct FaultyState {
    files: BTreeMap<PathBuf, FaultyFile>,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    disk_full: bool,
}

#[derive(Debug, Default)]
struct FaultyFile {
    data: Vec<u8>,
    synced_len: usize,
}

/// A file of a [`FaultyFs`], named by its path (so it fails with `NotFound` once removed, as a test wants).
#[doc(hidden)]
#[derive(Debug)]
pub struct FaultyHandle {
    fs: FaultyFs,
    path: PathBuf,
}

/// The lock of a [`FaultyFs`]; dropping it (as a crash does) releases it.
#[doc(hidden)]
#[derive(Debug)]
pub struct FaultyLock {
    fs: FaultyFs,
    path: PathBuf,
}

impl Drop for FaultyLock {
    fn drop(&mut self) {
        self.fs.state.lock().locks.remove(&self.path);
    }
}

impl FaultyFs {
    /// A new, empty file system with plenty of space.
    pub fn new() -> FaultyFs {
        FaultyFs::default()
    }

    /// While `true`, every append fails with `ENOSPC` after writing the first half of its buffer.
    pub fn set_disk_full(&self, disk_full: bool) {
        self.state.lock().disk_full = disk_full;
    }

    /// Cuts the power: every file loses its unsynced bytes except a prefix of them whose length `keep` picks from
    /// `0..=unsynced` (so a record can be torn anywhere). Drop the spool first (a dead process holds no lock).
    pub fn crash(&self, mut keep: impl FnMut(usize) -> usize) {
        let mut state = self.state.lock();
        for file in state.files.values_mut() {
            let unsynced = file.data.len() - file.synced_len;
            let kept = keep(unsynced).min(unsynced);
            file.data.truncate(file.synced_len + kept);
            file.synced_len = file.data.len();
        }
    }

    /// The contents of a file, if it exists.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        self.state
            .lock()
            .files
            .get(path)
            .map(|file| file.data.clone())
    }

    /// Replaces a file's contents (all synced), creating it if needed: for planting corruption.
    pub fn set_contents(&self, path: &Path, data: Vec<u8>) {
        let synced_len = data.len();
        self.state
            .lock()
            .files
            .insert(path.to_path_buf(), FaultyFile { data, synced_len });
    }

    /// Every file's path and length.
    pub fn files(&self) -> Vec<(PathBuf, u64)> {
        let state = self.state.lock();
        state
            .files
            .iter()
            .map(|(path, file)| (path.clone(), file.data.len() as u64))
            .collect()
    }

    fn with_file<T>(
        &self,
        path: &Path,
        action: impl FnOnce(&mut FaultyFile, bool) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut state = self.state.lock();
        let disk_full = state.disk_full;
        match state.files.get_mut(path) {
            Some(file) => action(file, disk_full),
            None => Err(not_found(path)),
        }
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("no such file: {}", path.display()),
    )
}

impl Fs for FaultyFs {
    type File = FaultyHandle;
    type Lock = FaultyLock;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<FaultyLock>> {
        let mut state = self.state.lock();
        state.files.entry(path.to_path_buf()).or_default();
        if !state.locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(FaultyLock {
            fs: self.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn create(&self, path: &Path) -> io::Result<FaultyHandle> {
        self.state
            .lock()
            .files
            .insert(path.to_path_buf(), FaultyFile::default());
        Ok(FaultyHandle {
            fs: self.clone(),
            path: path.to_path_buf(),
        })
    }

    fn open(&self, path: &Path) -> io::Result<FaultyHandle> {
        self.with_file(path, |_, _| Ok(()))?;
        Ok(FaultyHandle {
            fs: self.clone(),
            path: path.to_path_buf(),
        })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.with_file(path, |file, _| Ok(file.data.clone()))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        let file = state.files.remove(from).ok_or_else(|| not_found(from))?;
        state.files.insert(to.to_path_buf(), file);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.state
            .lock()
            .files
            .remove(path)
            .map(drop)
            .ok_or_else(|| not_found(path))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state.lock();
        let names = state.files.keys().filter(|path| path.parent() == Some(dir));
        Ok(names
            .filter_map(|path| Some(path.file_name()?.to_str()?.to_owned()))
            .collect())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}

impl FsFile for FaultyHandle {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.fs.with_file(&self.path, |file, disk_full| {
            if disk_full {
                file.data.extend_from_slice(&buf[..buf.len() / 2]);
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            file.data.extend_from_slice(buf);
            Ok(())
        })
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.fs.with_file(&self.path, |file, _| {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let bytes = start
                .checked_add(buf.len())
                .and_then(|end| file.data.get(start..end));
            let bytes = bytes.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(bytes);
            Ok(())
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.fs.with_file(&self.path, |file, _| {
            let len =
                usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            file.data.resize(len, 0);
            file.synced_len = file.synced_len.min(len);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs.with_file(&self.path, |file, _| {
            file.synced_len = file.data.len();
            Ok(())
        })
    }
}
