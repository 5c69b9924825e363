//! Writeback of staged upload bytes while the upload streams, so the `sync_data` that ends
//! each request finds little left to flush.
//!
//! Without it the kernel starts writing a file's dirty pages only once 10% of memory is dirty,
//! so a 1 GiB request wrote nothing to disk until its final flush, which then took a second at
//! the disk's rate. Here, every `WINDOW` bytes that reach the file are handed to the disk
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which returns at once), and the window before
//! that one is waited for, so at most two windows of an upload are dirty at any time.
//!
//! Invariants:
//! - This is a hint to the kernel, never a durability promise: the caller still ends every
//!   request with `sync_data`. A filesystem that does not support the hint (`EINVAL`,
//!   `ESPIPE`, `EOPNOTSUPP`, `ENOSYS`) only stops further hints for that file.
//! - Any other error is the caller's: waiting on a range consumes the file's write-error
//!   status, so a disk error seen here would never reach the final `sync_data`, and the
//!   request must fail instead of acknowledging bytes that are not on disk.
//! - Off Linux nothing is hinted, and the final `sync_data` flushes everything as before.

use std::fs::File;
use std::ops::Range;

/// Bytes handed to the disk at once: large enough for the disk to stream, small enough that
/// the two windows an upload keeps dirty are a bounded 16 MiB.
pub(crate) const WINDOW: u64 = 8 * 1024 * 1024;

/// What to ask of the kernel after bytes up to some offset reached the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    /// Wait until this range is on disk (it was started one window ago).
    pub wait: Option<Range<u64>>,
    /// Start writing this range back.
    pub start: Range<u64>,
}

/// Where one staging file's writeback stands.
#[derive(Debug)]
pub(crate) struct Writeback {
    /// Everything before this offset has been started.
    started: u64,
    /// Everything before this offset has been waited for (or was there before this request).
    waited: u64,
    enabled: bool,
}

impl Writeback {
    /// A file whose bytes from `offset` on are about to be written.
    pub fn new(offset: u64) -> Writeback {
        Writeback {
            started: offset,
            waited: offset,
            enabled: cfg!(target_os = "linux"),
        }
    }

    /// The step due once the file holds the bytes before `written_to`, if a window is full.
    pub fn plan(&mut self, written_to: u64) -> Option<Step> {
        if written_to < self.started.saturating_add(WINDOW) {
            return None;
        }
        let wait = (self.waited < self.started).then_some(self.waited..self.started);
        let start = self.started..written_to;
        self.waited = self.started;
        self.started = written_to;
        Some(Step { wait, start })
    }

    /// Called after the bytes before `written_to` reached `file`. An error is a write error
    /// of the file (the upload must fail); an unsupported hint only disables further hints.
    pub fn wrote(&mut self, file: &File, written_to: u64) -> std::io::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let Some(step) = self.plan(written_to) else {
            return Ok(());
        };
        let outcome = step
            .wait
            .map_or(Ok(()), |range| system::wait(file, range))
            .and_then(|()| system::start(file, step.start));
        match outcome {
            Ok(()) => Ok(()),
            Err(err) if unsupported(&err) => {
                tracing::debug!("writeback hints stop for this upload: {err}");
                self.enabled = false;
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}

/// Whether `err` says the filesystem cannot take the hint, rather than that writing failed.
#[cfg(target_os = "linux")]
fn unsupported(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::ESPIPE | libc::EOPNOTSUPP)
    ) || err.kind() == std::io::ErrorKind::Unsupported
}

#[cfg(not(target_os = "linux"))]
fn unsupported(_err: &std::io::Error) -> bool {
    true
}

#[cfg(target_os = "linux")]
mod system {
    use std::fs::File;
    use std::io;
    use std::ops::Range;
    use std::os::fd::AsRawFd;

    pub fn start(file: &File, range: Range<u64>) -> io::Result<()> {
        sync_file_range(file, range, libc::SYNC_FILE_RANGE_WRITE)
    }

    pub fn wait(file: &File, range: Range<u64>) -> io::Result<()> {
        sync_file_range(
            file,
            range,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
    }

    #[expect(
        unsafe_code,
        reason = "sync_file_range has no safe wrapper in std or in the crates we use"
    )]
    fn sync_file_range(file: &File, range: Range<u64>, flags: libc::c_uint) -> io::Result<()> {
        let too_far = |_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range");
        let offset = range.start.try_into().map_err(too_far)?;
        let length = (range.end - range.start).try_into().map_err(too_far)?;
        // SAFETY: the descriptor is open for as long as `file` is borrowed, and the call reads
        // and writes no memory of this process.
        let status = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, length, flags) };
        if status == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod system {
    use std::fs::File;
    use std::io;
    use std::ops::Range;

    // Never called: `Writeback` is disabled off Linux, where the final flush does it all.
    pub fn start(_file: &File, _range: Range<u64>) -> io::Result<()> {
        Ok(())
    }

    pub fn wait(_file: &File, _range: Range<u64>) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn full_windows_start_and_the_one_before_is_waited_for() {
        let mut writeback = Writeback::new(3 * MIB);
        assert_eq!(writeback.plan(3 * MIB + WINDOW - 1), None);
        assert_eq!(
            writeback.plan(3 * MIB + WINDOW),
            Some(Step {
                wait: None,
                start: 3 * MIB..3 * MIB + WINDOW,
            }),
            "the first window has nothing before it to wait for"
        );
        assert_eq!(writeback.plan(3 * MIB + WINDOW + MIB), None);
        assert_eq!(
            writeback.plan(3 * MIB + 2 * WINDOW + MIB),
            Some(Step {
                wait: Some(3 * MIB..3 * MIB + WINDOW),
                start: 3 * MIB + WINDOW..3 * MIB + 2 * WINDOW + MIB,
            })
        );
        assert_eq!(
            writeback.plan(3 * MIB + 4 * WINDOW),
            Some(Step {
                wait: Some(3 * MIB + WINDOW..3 * MIB + 2 * WINDOW + MIB),
                start: 3 * MIB + 2 * WINDOW + MIB..3 * MIB + 4 * WINDOW,
            }),
            "at most two windows are ever in flight"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn only_an_unsupported_hint_is_ignored_a_write_error_is_not() {
        use std::io::Error;
        for code in [libc::EINVAL, libc::ESPIPE, libc::ENOSYS, libc::EOPNOTSUPP] {
            assert!(unsupported(&Error::from_raw_os_error(code)), "errno {code}");
        }
        // The bytes did not reach the disk: the upload must fail.
        for code in [libc::EIO, libc::ENOSPC, libc::EDQUOT] {
            assert!(
                !unsupported(&Error::from_raw_os_error(code)),
                "errno {code}"
            );
        }
    }

    #[test]
    fn hints_on_a_real_file_leave_its_bytes_intact() {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut file = tempfile::tempfile().expect("temp file");
        let block: Vec<u8> = (0..MIB).map(|n| (n % 251) as u8).collect();
        let mut writeback = Writeback::new(0);
        let mut written = 0;
        for _ in 0..3 * WINDOW / MIB {
            file.write_all(&block).expect("write");
            written += MIB;
            writeback
                .wrote(&file, written)
                .expect("hints on a healthy file");
        }
        assert!(writeback.enabled || cfg!(not(target_os = "linux")));
        file.sync_data().expect("sync");
        file.seek(SeekFrom::Start(0)).expect("seek");
        let mut back = Vec::new();
        file.read_to_end(&mut back).expect("read");
        assert_eq!(back.len() as u64, written);
        assert!(back.chunks(block.len()).all(|chunk| chunk == block));
    }
}
