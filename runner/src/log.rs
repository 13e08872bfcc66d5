//! The session's output log: every byte the session produces, numbered by its absolute offset
//! from the very first byte, with a bounded window of recent bytes kept in memory.
//!
//! Readers pull from the log with their own cursor instead of being pushed copies, so a slow
//! reader costs nothing but its cursor: it either catches up from the window or is told
//! exactly which bytes it missed (a gap).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use cliscale_core::output::{MAX_RESIZES_PER_APPEND, Resize};

use crate::mask::Masker;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

/// What a read at an offset found (the cursor in `cliscale_core::cursor` decides what follows).
pub type LogRead = cliscale_core::cursor::LogRead<Bytes>;

#[derive(Debug, Default)]
struct Window {
    /// Chunks in order, each tagged with the offset of its first byte.
    chunks: VecDeque<(u64, Bytes)>,
    /// Offset of the oldest byte still held.
    start: u64,
    /// Offset of the next byte to be written.
    end: u64,
    closed: bool,
}

/// A shared, append-only output log with a bounded in-memory window.
#[derive(Debug)]
pub struct OutputLog {
    window: Mutex<Window>,
    capacity: usize,
    /// Carries the end offset so readers can wait for new bytes; closes with the log.
    end_tx: watch::Sender<(u64, bool)>,
    /// Masks secrets before they are appended (crate::mask).
    masker: Option<Mutex<Masker>>,
    /// The runner's clock for the recording: when the log began.
    born: Instant,
    /// Resizes not yet taken by the output store's uploader.
    resizes: Mutex<VecDeque<Resize>>,
}

impl OutputLog {
    /// A log that keeps at most `capacity` bytes (at least 1) in memory.
    pub fn new(capacity: usize) -> Self {
        Self::with_masker(capacity, None)
    }

    /// A log whose appends pass through `masker` first.
    pub fn with_masker(capacity: usize, masker: Option<Masker>) -> Self {
        let (end_tx, _) = watch::channel((0, false));
        Self {
            window: Mutex::new(Window::default()),
            capacity: capacity.max(1),
            end_tx,
            masker: masker.map(Mutex::new),
            born: Instant::now(),
            resizes: Mutex::default(),
        }
    }

    /// Milliseconds since the log began, on the runner's clock.
    pub fn elapsed_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Notes that the terminal is now `cols` x `rows`, at the log's current end.
    pub fn note_resize(&self, cols: u16, rows: u16) {
        let resize = Resize { offset: self.end(), at_ms: self.elapsed_ms(), cols, rows };
        let mut resizes = self.resizes.lock().expect("resizes lock poisoned");
        if resizes.len() == MAX_RESIZES_PER_APPEND {
            resizes.pop_front();
        }
        resizes.push_back(resize);
    }

    /// Takes the resizes noted since the last call, oldest first.
    pub fn take_resizes(&self) -> Vec<Resize> {
        self.resizes.lock().expect("resizes lock poisoned").drain(..).collect()
    }

    /// Passes on output the masker held back as a possible secret's start, once it has waited
    /// long enough (or at once when `force`). Returns whether bytes are still held.
    pub fn flush_masked(&self, force: bool) -> bool {
        let Some(masker) = &self.masker else { return false };
        let mut m = masker.lock().expect("masker lock poisoned");
        let out = m.flush(Instant::now(), force);
        self.append_raw(Bytes::from(out));
        m.holding()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends bytes (masked, when the log masks), evicting the oldest ones beyond the window.
    /// Returns the new end offset.
    pub fn append(&self, data: Bytes) -> u64 {
        match &self.masker {
            None => self.append_raw(data),
            Some(masker) => {
                // One lock across mask and append: pieces keep their order.
                let mut m = masker.lock().expect("masker lock poisoned");
                let out = m.feed(&data, Instant::now());
                let end = self.append_raw(Bytes::from(out));
                drop(m);
                end
            }
        }
    }

    fn append_raw(&self, data: Bytes) -> u64 {
        if data.is_empty() {
            return self.end();
        }
        let end = {
            let mut w = self.window.lock().expect("log lock poisoned");
            if w.closed {
                return w.end;
            }
            let offset = w.end;
            w.end += data.len() as u64;
            w.chunks.push_back((offset, data));
            let floor = w.end.saturating_sub(self.capacity as u64);
            while let Some((first_offset, first)) = w.chunks.front_mut() {
                let first_end = *first_offset + first.len() as u64;
                if first_end <= floor {
                    w.chunks.pop_front();
                } else {
                    if *first_offset < floor {
                        // Trim a chunk that straddles the window's edge.
                        let cut = (floor - *first_offset) as usize;
                        *first = first.slice(cut..);
                        *first_offset = floor;
                    }
                    break;
                }
            }
            w.start = w.chunks.front().map_or(w.end, |(o, _)| *o);
            w.end
        };
        self.end_tx.send_replace((end, false));
        end
    }

    /// Marks the log finished: readers that catch up learn that nothing more will come.
    pub fn close(&self) {
        self.flush_masked(true);
        let end = {
            let mut w = self.window.lock().expect("log lock poisoned");
            w.closed = true;
            w.end
        };
        self.end_tx.send_replace((end, true));
    }

    /// Offset of the oldest byte still in memory.
    pub fn start(&self) -> u64 {
        self.window.lock().expect("log lock poisoned").start
    }

    /// Offset of the next byte to be written (the total written so far).
    pub fn end(&self) -> u64 {
        self.window.lock().expect("log lock poisoned").end
    }

    /// Watches the `(end, closed)` pair, to wait for new bytes without polling.
    pub fn subscribe(&self) -> watch::Receiver<(u64, bool)> {
        self.end_tx.subscribe()
    }

    /// Reads up to `max` bytes starting at `offset`.
    pub fn read_since(&self, offset: u64, max: usize) -> LogRead {
        let w = self.window.lock().expect("log lock poisoned");
        if offset < w.start {
            return LogRead::Gap { from: offset, to: w.start };
        }
        if offset >= w.end {
            return LogRead::UpToDate { end: w.end, closed: w.closed };
        }
        // Chunks are sorted by offset: find the one holding `offset`.
        let index = w.chunks.partition_point(|(o, c)| o + c.len() as u64 <= offset);
        let (chunk_offset, chunk) = &w.chunks[index];
        let first = chunk.slice((offset - chunk_offset) as usize..);
        if first.len() >= max {
            return LogRead::Data { offset, data: first.slice(..max) };
        }
        let more_chunks = w.chunks.get(index + 1).is_some();
        if !more_chunks {
            return LogRead::Data { offset, data: first };
        }
        // Coalesce small chunks (a PTY yields at most a few KiB per read) into one frame. Only
        // handles are taken under the lock: the copy (megabytes for the output store's
        // uploader) would otherwise hold up the PTY's reader, which appends under it.
        let mut pieces = vec![first];
        let mut len = pieces[0].len();
        for (_, chunk) in w.chunks.range(index + 1..) {
            let room = max - len;
            if room == 0 {
                break;
            }
            let piece = chunk.slice(..chunk.len().min(room));
            len += piece.len();
            pieces.push(piece);
        }
        drop(w);
        let mut buf = BytesMut::with_capacity(len);
        for piece in &pieces {
            buf.extend_from_slice(piece);
        }
        LogRead::Data { offset, data: buf.freeze() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(log: &OutputLog, mut offset: u64, max: usize) -> (Vec<u8>, Vec<(u64, u64)>) {
        let (mut out, mut gaps) = (Vec::new(), Vec::new());
        loop {
            match log.read_since(offset, max) {
                LogRead::Data { offset: o, data } => {
                    assert_eq!(o, offset);
                    offset += data.len() as u64;
                    out.extend_from_slice(&data);
                }
                LogRead::Gap { from, to } => {
                    gaps.push((from, to));
                    offset = to;
                }
                LogRead::UpToDate { .. } => return (out, gaps),
            }
        }
    }

    #[test]
    fn offsets_are_absolute_and_reads_resume_anywhere() {
        let log = OutputLog::new(1024);
        log.append(Bytes::from_static(b"hello "));
        log.append(Bytes::from_static(b"world"));
        assert_eq!(log.end(), 11);
        assert_eq!(collect(&log, 0, 4).0, b"hello world");
        assert_eq!(collect(&log, 3, 100).0, b"lo world");
        assert_eq!(collect(&log, 6, 100).0, b"world");
        assert_eq!(log.read_since(11, 10), LogRead::UpToDate { end: 11, closed: false });
    }

    #[test]
    fn eviction_keeps_exactly_the_window_and_reports_gaps() {
        let log = OutputLog::new(10);
        for chunk in [&b"0123"[..], b"4567", b"89ab", b"cdef"] {
            log.append(Bytes::copy_from_slice(chunk));
        }
        assert_eq!(log.start(), 6);
        let (data, gaps) = collect(&log, 0, 3);
        assert_eq!(gaps, vec![(0, 6)]);
        assert_eq!(data, b"6789abcdef");
        let (data, gaps) = collect(&log, 8, 100);
        assert!(gaps.is_empty());
        assert_eq!(data, b"89abcdef");
    }

    #[test]
    fn a_chunk_larger_than_the_window_is_trimmed() {
        let log = OutputLog::new(4);
        log.append(Bytes::from_static(b"abcdefgh"));
        assert_eq!(log.start(), 4);
        assert_eq!(collect(&log, 4, 100).0, b"efgh");
    }

    #[test]
    fn close_is_visible_to_readers_and_ignores_later_writes() {
        let log = OutputLog::new(16);
        let rx = log.subscribe();
        log.append(Bytes::from_static(b"x"));
        log.close();
        log.append(Bytes::from_static(b"late"));
        assert_eq!(*rx.borrow(), (1, true));
        assert_eq!(log.read_since(1, 8), LogRead::UpToDate { end: 1, closed: true });
    }
}
