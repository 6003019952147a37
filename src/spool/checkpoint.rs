//! The checkpoint: the acknowledged sequence number, in a small file replaced atomically.
//!
//! `magic[8] | version u32 | acked_seq u64 | crc32c u32` (24 bytes, little-endian; the crc covers the 20 bytes before
//! it). It is written to `checkpoint.tmp`, `fdatasync`ed, renamed over `checkpoint`, and the directory is `fsync`ed,
//! so after a crash the file is either the old checkpoint or the new one, whole. A checkpoint that is missing or fails
//! its checks reads as `None`: the spool then replays from its oldest segment (duplicates, never loss).

use std::io;
use std::path::Path;

use super::fs::{Fs, FsFile};

/// The checkpoint's file name in a spool directory.
pub const FILE_NAME: &str = "checkpoint";

/// The name the next checkpoint is written under before it is renamed over [`FILE_NAME`].
pub const TMP_FILE_NAME: &str = "checkpoint.tmp";

/// The first eight bytes of a checkpoint.
pub const MAGIC: [u8; 8] = *b"PMRCKPT\0";

/// The checkpoint format this build writes and reads.
pub const VERSION: u32 = 1;

/// Bytes of a checkpoint file.
pub const LEN: usize = 24;

/// Encodes a checkpoint holding `acked`: every line with a smaller sequence number was delivered.
pub fn encode(acked: u64) -> [u8; LEN] {
    let mut bytes = [0; LEN];
    bytes[..8].copy_from_slice(&MAGIC);
    bytes[8..12].copy_from_slice(&VERSION.to_le_bytes());
    bytes[12..20].copy_from_slice(&acked.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..20]);
    bytes[20..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// The acknowledged sequence number a checkpoint holds, or `None` if the bytes are not a valid checkpoint.
pub fn decode(bytes: &[u8]) -> Option<u64> {
    let bytes: &[u8; LEN] = bytes.try_into().ok()?;
    let crc = u32::from_le_bytes(bytes[20..].try_into().ok()?);
    if bytes[..8] != MAGIC || crc != crc32c::crc32c(&bytes[..20]) {
        return None;
    }
    if u32::from_le_bytes(bytes[8..12].try_into().ok()?) != VERSION {
        return None;
    }
    Some(u64::from_le_bytes(bytes[12..20].try_into().ok()?))
}

/// Writes a checkpoint durably: tmp file, `fdatasync`, rename, directory `fsync`.
///
/// # Errors
///
/// The first failing step's error, with the path it failed on; the old checkpoint is then still in place.
pub fn write<F: Fs>(fs: &F, dir: &Path, acked: u64) -> Result<(), (std::path::PathBuf, io::Error)> {
    let tmp = dir.join(TMP_FILE_NAME);
    let with_tmp = |error| (tmp.clone(), error);
    let mut file = fs.create(&tmp).map_err(with_tmp)?;
    file.append(&encode(acked)).map_err(with_tmp)?;
    file.sync_data().map_err(with_tmp)?;
    drop(file);
    let path = dir.join(FILE_NAME);
    fs.rename(&tmp, &path)
        .map_err(|error| (path.clone(), error))?;
    fs.sync_dir(dir).map_err(|error| (dir.to_path_buf(), error))
}

/// Reads the checkpoint in `dir`: `None` when it is missing, unreadable or invalid.
pub fn read<F: Fs>(fs: &F, dir: &Path) -> Option<u64> {
    decode(&fs.read(&dir.join(FILE_NAME)).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::fs::FaultyFs;
    use proptest::prelude::*;

    #[test]
    fn a_written_checkpoint_reads_back() {
        let fs = FaultyFs::new();
        let dir = Path::new("/spool");
        assert_eq!(read(&fs, dir), None);
        write(&fs, dir, 1234).expect("in memory");
        assert_eq!(read(&fs, dir), Some(1234));
        assert_eq!(fs.contents(&dir.join(TMP_FILE_NAME)), None);
    }

    #[test]
    fn a_failed_write_leaves_the_old_checkpoint() {
        let fs = FaultyFs::new();
        let dir = Path::new("/spool");
        write(&fs, dir, 7).expect("in memory");
        fs.set_disk_full(true);
        let (path, error) = write(&fs, dir, 8).expect_err("disk is full");
        assert_eq!(
            (path, error.raw_os_error()),
            (dir.join(TMP_FILE_NAME), Some(libc::ENOSPC))
        );
        assert_eq!(read(&fs, dir), Some(7));
    }

    proptest! {
        #[test]
        fn any_single_bit_flip_invalidates_a_checkpoint(acked in any::<u64>(), bit in 0..LEN * 8) {
            let mut bytes = encode(acked);
            prop_assert_eq!(decode(&bytes), Some(acked));
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert_eq!(decode(&bytes), None);
        }
    }
}
