//! The binary's `logFile`, rotated by size: when the file has grown past
//! `logFileMaxBytes`, an invocation renames it to `<logFile>.1` (replacing
//! the previous one) before it writes. Many invocations run at once (kubelet
//! sets up pods in parallel): the rotation happens under an exclusive
//! `flock` on the file, and an invocation that finds the path holding
//! another file than the one it locked (rotated meanwhile) opens it again,
//! so one rotation happens per crossing of the limit. An invocation that had
//! the file open before the rename finishes its lines in `<logFile>.1`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `logFileMaxBytes` unless the configuration says otherwise: 5 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 5 * 1024 * 1024;

/// `<path>.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Opens `path` for appending (created 0600 if missing), rotated first when
/// it is larger than `max_bytes` (0: never rotated).
pub fn open(path: &Path, max_bytes: u64) -> io::Result<File> {
    // A few rounds cover a rotation by another invocation in between.
    for _ in 0..4 {
        let file = open_append(path)?;
        if max_bytes == 0 || file.metadata()?.len() <= max_bytes {
            return Ok(file);
        }
        let _lock = Flock::exclusive(&file)?;
        let same = std::fs::metadata(path)
            .map(|m| m.ino() == file.metadata().map(|f| f.ino()).unwrap_or(0))
            .unwrap_or(false);
        if same && file.metadata()?.len() > max_bytes {
            std::fs::rename(path, rotated_path(path))?;
        }
        // Open again: the new file, or the one another invocation made.
    }
    open_append(path)
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// An exclusive `flock` held until dropped.
struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    #[allow(unsafe_code)]
    fn exclusive(file: &'a File) -> io::Result<Flock<'a>> {
        loop {
            // SAFETY: flock(2) on a descriptor `file` owns and keeps open for the
            // lifetime of the guard; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Flock(file));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl Drop for Flock<'_> {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: as above; unlocking a descriptor this guard locked.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rotates_past_the_limit_and_keeps_one_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.log");
        for round in 0..3 {
            let mut f = open(&path, 100).unwrap();
            f.write_all(format!("{round}{}\n", "x".repeat(150)).as_bytes())
                .unwrap();
        }
        // 0 went to the file, 1 found it too big: rotated, 2 likewise.
        assert!(std::fs::read_to_string(&path).unwrap().starts_with('2'));
        assert!(
            std::fs::read_to_string(rotated_path(&path))
                .unwrap()
                .starts_with('1')
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn zero_never_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.log");
        for _ in 0..3 {
            open(&path, 0).unwrap().write_all(&[b'x'; 200]).unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 600);
        assert!(!rotated_path(&path).exists());
    }
}
