//! Local mode's home for the bytes of stored output: one append-only file per session in the
//! data dir, while the segments, gaps and state stay rows of the SQL store (docs/api.md,
//! "Output"). A batch costs one `pwrite` here instead of a blob through SQLite's WAL and its
//! checkpoint, which is what lets the store keep up with a PTY at full speed on a small machine
//! (docs/benchmarks.md, "Output store").
//!
//! Only committed rows point into a file, and a file is written at the position its state row
//! records, so an append that wrote here but never committed is overwritten by the next one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{ApiError, Result};

/// Where one data segment's bytes are in its session's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRange {
    pub pos: u64,
    pub len: u64,
}

#[derive(Debug)]
pub struct OutputFiles {
    dir: PathBuf,
}

/// The file name for a session: its id where that is a plain name (every id the API or a
/// cluster makes is), else the id's bytes in hex, so no id can name a path outside the dir.
pub fn file_name(session_id: &str) -> String {
    let plain = !session_id.is_empty()
        && session_id.len() <= 200
        && !session_id.starts_with('.')
        && session_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if plain {
        format!("{session_id}.log")
    } else {
        let hex: String = session_id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x-{hex}.log")
    }
}

fn io_error(what: &str, path: &Path, e: io::Error) -> ApiError {
    ApiError::Internal(format!("{what} {}: {e}", path.display()))
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("output file task: {e}")))?
}

impl OutputFiles {
    /// Uses `dir`, made private to this user.
    pub fn open(dir: &Path) -> Result<Self> {
        crate::local::private_dir(dir)?;
        Ok(Self { dir: dir.to_owned() })
    }

    pub fn path(&self, session_id: &str) -> PathBuf {
        self.dir.join(file_name(session_id))
    }

    /// Writes `data` at `pos` of the session's file, making the file if needed.
    pub async fn write_at(&self, session_id: &str, pos: u64, data: Bytes) -> Result<()> {
        let path = self.path(session_id);
        blocking(move || {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| io_error("opening", &path, e))?;
            file.write_all_at(&data, pos).map_err(|e| io_error("writing", &path, e))
        })
        .await
    }

    /// Reads each of `ranges` from the session's file, in one trip off the runtime.
    pub async fn read(&self, session_id: &str, ranges: Vec<FileRange>) -> Result<Vec<Bytes>> {
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let path = self.path(session_id);
        blocking(move || {
            let file = File::open(&path).map_err(|e| io_error("opening", &path, e))?;
            ranges
                .iter()
                .map(|r| {
                    let mut buf = vec![0; r.len as usize];
                    file.read_exact_at(&mut buf, r.pos)
                        .map_err(|e| io_error("reading", &path, e))?;
                    Ok(Bytes::from(buf))
                })
                .collect()
        })
        .await
    }

    /// Frees the disk behind `range` once no row points into it (the cap evicted it); the
    /// file keeps its length, so later positions stay valid. A file system that cannot punch
    /// holes keeps the bytes until the session is deleted.
    pub async fn release(&self, session_id: &str, range: FileRange) {
        let path = self.path(session_id);
        let punched = blocking(move || {
            use nix::fcntl::{FallocateFlags, fallocate};
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_error("opening", &path, e))?;
            let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            fallocate(&file, flags, range.pos as i64, range.len as i64)
                .map_err(|e| io_error("punching a hole in", &path, e.into()))
        })
        .await;
        if let Err(e) = punched {
            tracing::warn!(error = %e, "evicted output keeps its disk space until the session goes");
        }
    }

    /// Deletes the session's file; one that is not there is already gone.
    pub async fn remove(&self, session_id: &str) -> Result<()> {
        let path = self.path(session_id);
        blocking(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("deleting", &path, e)),
            _ => Ok(()),
        })
        .await
    }

    /// The session ids whose files are in the dir (for removing files no session owns).
    pub fn names(&self) -> Result<Vec<String>> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| io_error("listing", &self.dir, e))?;
        Ok(entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| {
                let stem = name.strip_suffix(".log")?;
                match stem.strip_prefix("x-") {
                    Some(hex) => (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                        .collect::<Option<Vec<u8>>>()
                        .and_then(|b| String::from_utf8(b).ok()),
                    None => Some(stem.to_owned()),
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_never_leave_the_dir_and_map_back() {
        assert_eq!(file_name("7d0492e2-0879-4d78"), "7d0492e2-0879-4d78.log");
        for hostile in ["../etc/passwd", "a/b", "", ".hidden", "é"] {
            let name = file_name(hostile);
            assert!(name.starts_with("x-") && !name.contains('/'), "{hostile:?} -> {name}");
        }
        let dir = tempfile::tempdir().unwrap();
        let files = OutputFiles::open(dir.path()).unwrap();
        for id in ["plain-id", "../up", "é"] {
            std::fs::write(files.path(id), b"").unwrap();
        }
        let mut names = files.names().unwrap();
        names.sort();
        assert_eq!(names, ["../up", "plain-id", "é"]);
    }

    #[tokio::test]
    async fn written_ranges_read_back_and_released_ones_free_their_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let files = OutputFiles::open(dir.path()).unwrap();
        let block = vec![7u8; 1 << 20];
        files.write_at("s", 0, Bytes::from(block.clone())).await.unwrap();
        files.write_at("s", 1 << 20, Bytes::from_static(b"tail")).await.unwrap();
        // An append that never committed is overwritten at the same position.
        files.write_at("s", (1 << 20) + 4, Bytes::from_static(b"lost")).await.unwrap();
        files.write_at("s", (1 << 20) + 4, Bytes::from_static(b"kept")).await.unwrap();
        let ranges = vec![FileRange { pos: 5, len: 3 }, FileRange { pos: 1 << 20, len: 8 }];
        let read = files.read("s", ranges).await.unwrap();
        assert_eq!(read, [Bytes::from_static(&[7, 7, 7]), Bytes::from_static(b"tailkept")]);
        let blocks =
            |p: &Path| std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(p).unwrap());
        let before = blocks(&files.path("s"));
        files.release("s", FileRange { pos: 0, len: 1 << 20 }).await;
        assert!(blocks(&files.path("s")) < before, "the hole freed no blocks");
        let after = files.read("s", vec![FileRange { pos: 1 << 20, len: 8 }]).await.unwrap();
        assert_eq!(after, [Bytes::from_static(b"tailkept")]);
        files.remove("s").await.unwrap();
        files.remove("s").await.unwrap();
        assert!(!files.path("s").exists());
    }
}
