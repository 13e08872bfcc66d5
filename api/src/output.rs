//! The output store: every byte of every session's log by offset, appended by its runner as the
//! session runs and read back live or after the runner is gone (docs/api.md, "Output").
//!
//! Storage sits behind [`OutputBackend`]; [`Store`] implements it on SQL (SQLite locally,
//! PostgreSQL on a cluster) and docs/architecture.md says what an object store would need. The
//! decisions (what an append writes, what the cap evicts, what a read at an offset finds, when
//! a log is complete, what a recording holds) are plain functions here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cliscale_core::cursor::LogRead;
use cliscale_core::output::{AppendQuery, Resize};
use sqlx::Row;
use tokio::sync::watch;

use crate::error::Result;
use crate::executor::BoxFuture;
use crate::output_files::FileRange;
use crate::store::{Store, now};

/// Where a session's stored log stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputState {
    /// The next offset the store expects: everything before it is stored or a recorded gap.
    pub end: u64,
    /// Bytes of output held (gaps hold none).
    pub stored_bytes: u64,
    /// The runner said nothing follows.
    pub closed: bool,
    /// When the last append arrived (Unix seconds).
    pub updated_at: i64,
}

/// A stored piece of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Bytes from `start`, read by the runner at `at_ms` on its clock.
    Data { start: u64, at_ms: u64, data: Bytes },
    /// `[start, end)` is not stored.
    Gap { start: u64, end: u64 },
}

impl Segment {
    pub fn start(&self) -> u64 {
        match self {
            Self::Data { start, .. } | Self::Gap { start, .. } => *start,
        }
    }

    pub fn end(&self) -> u64 {
        match self {
            Self::Data { start, data, .. } => start + data.len() as u64,
            Self::Gap { end, .. } => *end,
        }
    }
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored (or already held); the store's end is now `end`.
    Stored { end: u64 },
    /// The append starts past the store's end without declaring a gap: resend from `end`.
    Behind { end: u64 },
}

/// What an append writes, decided from where the store stands. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendPlan {
    /// Nothing new (a resend of stored bytes, or a closed log).
    Nothing,
    /// The append starts past the end without declaring the bytes between gone.
    Behind,
    /// Record `gap` (when some), then the body from byte `skip` on, at `start`.
    Write { gap: Option<(u64, u64)>, skip: usize, start: u64, new_end: u64, close: bool },
}

/// Decides an append of `len` bytes described by `q` to a log standing at `state`. Pure.
pub fn plan_append(state: &OutputState, q: &AppendQuery, len: usize) -> AppendPlan {
    let body_end = q.offset + len as u64;
    if state.closed {
        // Nothing follows a complete log; an append past its end is still told where it ends.
        let behind = q.offset > state.end && q.gap_from.is_none();
        return if behind { AppendPlan::Behind } else { AppendPlan::Nothing };
    }
    let gap = match q.gap_from {
        // A declared gap covers whatever the store lacks before the body.
        Some(from) if from <= state.end && state.end < q.offset => Some((state.end, q.offset)),
        Some(_) | None if q.offset > state.end => return AppendPlan::Behind,
        _ => None,
    };
    let start = q.offset.max(state.end);
    let skip = (start - q.offset) as usize;
    if skip >= len && gap.is_none() && !(q.closed && body_end >= state.end) {
        return AppendPlan::Nothing;
    }
    let new_end = body_end.max(state.end);
    AppendPlan::Write { gap, skip: skip.min(len), start, new_end, close: q.closed }
}

/// How many of the oldest tail segments (`lengths`, data bytes each, oldest first) go so that
/// `excess` bytes are freed. Pure.
pub fn evict_count(lengths: &[u64], excess: u64) -> usize {
    let mut freed = 0;
    for (i, len) in lengths.iter().enumerate() {
        if freed >= excess {
            return i;
        }
        freed += len;
    }
    lengths.len()
}

/// What a read at `offset` finds in `segments` (those from the one holding `offset`, in order),
/// at most `max` bytes. `complete`: nothing more will come. Pure.
pub fn read_at(
    segments: &[Segment],
    state: &OutputState,
    offset: u64,
    max: usize,
    complete: bool,
) -> LogRead<Bytes> {
    if offset >= state.end {
        return LogRead::UpToDate { end: state.end, closed: complete };
    }
    let Some(first) = segments.iter().position(|s| s.end() > offset) else {
        return LogRead::Gap { from: offset, to: state.end };
    };
    if segments[first].start() > offset {
        return LogRead::Gap { from: offset, to: segments[first].start() };
    }
    match &segments[first] {
        Segment::Gap { end, .. } => LogRead::Gap { from: offset, to: *end },
        Segment::Data { start, data, .. } => {
            let head = data.slice((offset - start) as usize..);
            if head.len() >= max {
                return LogRead::Data { offset, data: head.slice(..max) };
            }
            let mut buf = bytes::BytesMut::from(&head[..]);
            let mut at = offset + head.len() as u64;
            for s in &segments[first + 1..] {
                match s {
                    Segment::Data { start, data, .. } if *start == at && buf.len() < max => {
                        let take = data.len().min(max - buf.len());
                        buf.extend_from_slice(&data[..take]);
                        at += take as u64;
                    }
                    _ => break,
                }
            }
            LogRead::Data { offset, data: buf.freeze() }
        }
    }
}

/// A stored log with no runner left to finish it is complete this long after its session
/// ended without the runner saying so (a runner that was killed).
pub const UNCLOSED_GRACE_SECS: i64 = 10;

/// Whether a session's stored log will grow no more. Pure.
pub fn log_complete(state: Option<&OutputState>, finished_at: Option<i64>, at: i64) -> bool {
    match (state, finished_at) {
        (Some(s), _) if s.closed => true,
        (_, None) => false,
        (Some(s), Some(f)) => at - s.updated_at.max(f) >= UNCLOSED_GRACE_SECS,
        (None, Some(f)) => at - f >= UNCLOSED_GRACE_SECS,
    }
}

/// Where the stored output of sessions lives. SQL today ([`Store`]); an object store fits
/// behind the same calls (docs/architecture.md).
pub trait OutputBackend: Send + Sync + 'static {
    /// Appends per `q`, keeping at most `cap` bytes (head and tail, a gap between).
    fn append<'a>(
        &'a self,
        session_id: &'a str,
        q: &'a AppendQuery,
        body: Bytes,
        cap: u64,
    ) -> BoxFuture<'a, Result<AppendOutcome>>;
    fn state<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, Result<Option<OutputState>>>;
    /// Segments from the one holding `since`, in order, about `max` bytes of them.
    fn segments<'a>(
        &'a self,
        session_id: &'a str,
        since: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Segment>>>;
    /// The last segments, together at least `max` bytes where the log has them.
    fn last_segments<'a>(
        &'a self,
        session_id: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Segment>>>;
    fn resizes<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, Result<Vec<Resize>>>;
    /// The ranges `[from, to)` not stored, in order.
    fn gaps<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, Result<Vec<(u64, u64)>>>;
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A stored segment as its row has it: data rows hold their bytes or say where they are in the
/// session's output file.
enum RowSegment {
    Ready(Segment),
    InFile { start: u64, at_ms: u64, range: FileRange },
}

impl RowSegment {
    fn start(&self) -> u64 {
        match self {
            Self::Ready(s) => s.start(),
            Self::InFile { start, .. } => *start,
        }
    }

    fn end(&self) -> u64 {
        match self {
            Self::Ready(s) => s.end(),
            Self::InFile { start, range, .. } => start + range.len,
        }
    }

    /// Bytes of output it holds (a gap holds none).
    fn data_len(&self) -> usize {
        match self {
            Self::Ready(Segment::Data { data, .. }) => data.len(),
            Self::Ready(Segment::Gap { .. }) => 0,
            Self::InFile { range, .. } => range.len as usize,
        }
    }
}

fn segment_from_row(r: &sqlx::any::AnyRow) -> Result<RowSegment> {
    let start = u(r.try_get("start_offset")?);
    let end = u(r.try_get("end_offset")?);
    let kind: String = r.try_get("kind")?;
    if kind == "gap" {
        return Ok(RowSegment::Ready(Segment::Gap { start, end }));
    }
    let at_ms = u(r.try_get("at_ms")?);
    Ok(match r.try_get::<Option<i64>, _>("file_pos")? {
        Some(pos) => {
            RowSegment::InFile { start, at_ms, range: FileRange { pos: u(pos), len: end - start } }
        }
        None => {
            let data: Vec<u8> = r.try_get::<Option<Vec<u8>>, _>("data")?.unwrap_or_default();
            RowSegment::Ready(Segment::Data { start, at_ms, data: Bytes::from(data) })
        }
    })
}

const SEGMENT_COLUMNS: &str =
    "SELECT start_offset, end_offset, kind, at_ms, data, file_pos FROM session_output";

impl Store {
    /// Reads the bytes of the rows that point into the session's output file.
    async fn load(&self, id: &str, rows: Vec<RowSegment>) -> Result<Vec<Segment>> {
        let ranges: Vec<FileRange> = rows
            .iter()
            .filter_map(|r| match r {
                RowSegment::InFile { range, .. } => Some(*range),
                RowSegment::Ready(_) => None,
            })
            .collect();
        let mut read = match (&self.output_files, ranges.is_empty()) {
            (_, true) => Vec::new(),
            (Some(files), false) => files.read(id, ranges).await?,
            (None, false) => {
                return Err(crate::error::ApiError::Internal(
                    "stored output is in files, but this server has no output dir".into(),
                ));
            }
        }
        .into_iter();
        Ok(rows
            .into_iter()
            .map(|r| match r {
                RowSegment::Ready(s) => s,
                RowSegment::InFile { start, at_ms, .. } => {
                    Segment::Data { start, at_ms, data: read.next().unwrap_or_default() }
                }
            })
            .collect())
    }

    async fn output_state_in(
        conn: &mut sqlx::AnyConnection,
        id: &str,
    ) -> Result<Option<OutputState>> {
        let row = sqlx::query(
            "SELECT end_offset, stored_bytes, closed, updated_at FROM session_output_state \
             WHERE session_id = $1",
        )
        .bind(id)
        .fetch_optional(conn)
        .await?;
        row.map(|r| {
            Ok(OutputState {
                end: u(r.try_get("end_offset")?),
                stored_bytes: u(r.try_get("stored_bytes")?),
                closed: r.try_get::<i64, _>("closed")? != 0,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    async fn append_output(
        &self,
        id: &str,
        q: &AppendQuery,
        body: Bytes,
        cap: u64,
    ) -> Result<AppendOutcome> {
        let t = now();
        let mut tx = self.pool.begin().await?;
        // One statement makes the row, takes its write lock (so appends to one session apply
        // one after the other) and reads where the log stands.
        let row = sqlx::query(
            "INSERT INTO session_output_state (session_id, end_offset, stored_bytes, closed, \
             updated_at) VALUES ($1, 0, 0, 0, $2) ON CONFLICT (session_id) DO UPDATE \
             SET updated_at = excluded.updated_at \
             RETURNING end_offset, stored_bytes, closed, updated_at, file_end",
        )
        .bind(id)
        .bind(t)
        .fetch_one(&mut *tx)
        .await?;
        let state = OutputState {
            end: u(row.try_get("end_offset")?),
            stored_bytes: u(row.try_get("stored_bytes")?),
            closed: row.try_get::<i64, _>("closed")? != 0,
            updated_at: row.try_get("updated_at")?,
        };
        let file_end = u(row.try_get("file_end")?);
        let resizes = q.resizes.as_deref().and_then(Resize::parse_list).unwrap_or_default();
        for r in &resizes {
            sqlx::query(
                "INSERT INTO session_resizes (session_id, at_offset, at_ms, cols, rows) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(r.offset as i64)
            .bind(r.at_ms as i64)
            .bind(i64::from(r.cols))
            .bind(i64::from(r.rows))
            .execute(&mut *tx)
            .await?;
        }
        let (gap, skip, start, new_end, close) = match plan_append(&state, q, body.len()) {
            AppendPlan::Nothing => {
                tx.commit().await?;
                return Ok(AppendOutcome::Stored { end: state.end });
            }
            AppendPlan::Behind => {
                tx.commit().await?;
                return Ok(AppendOutcome::Behind { end: state.end });
            }
            AppendPlan::Write { gap, skip, start, new_end, close } => {
                (gap, skip, start, new_end, close)
            }
        };
        if let Some((from, to)) = gap {
            // A gap right after another (the runner's window overflowing again before the
            // store caught up) lengthens it: one range for readers, not a list of pieces.
            let merged = sqlx::query(
                "UPDATE session_output SET end_offset = $1 \
                 WHERE session_id = $2 AND kind = 'gap' AND end_offset = $3",
            )
            .bind(to as i64)
            .bind(id)
            .bind(from as i64)
            .execute(&mut *tx)
            .await?;
            if merged.rows_affected() == 0 {
                insert_segment(&mut tx, id, from, to, "gap", q.at_ms, Stored::Nothing).await?;
            }
        }
        let data = body.slice(skip..);
        let mut stored = state.stored_bytes;
        let mut new_file_end = file_end;
        if !data.is_empty() {
            let end = start + data.len() as u64;
            let len = data.len() as u64;
            match &self.output_files {
                // The bytes go to the file first; only the commit below makes a row point at
                // them, so a failure here or before the commit leaves nothing half-stored.
                Some(files) => {
                    files.write_at(id, file_end, data).await?;
                    insert_segment(&mut tx, id, start, end, "data", q.at_ms, Stored::At(file_end))
                        .await?;
                    new_file_end += len;
                }
                None => {
                    insert_segment(&mut tx, id, start, end, "data", q.at_ms, Stored::Bytes(&data))
                        .await?;
                }
            }
            stored += len;
        }
        let mut released = None;
        if stored > cap {
            (stored, released) = evict_tail(&mut tx, id, cap, stored).await?;
        }
        sqlx::query(
            "UPDATE session_output_state SET end_offset = $1, stored_bytes = $2, closed = $3, \
             file_end = $4 WHERE session_id = $5",
        )
        .bind(new_end as i64)
        .bind(stored as i64)
        .bind(i64::from(close))
        .bind(new_file_end as i64)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if let (Some(files), Some(range)) = (&self.output_files, released) {
            files.release(id, range).await;
        }
        Ok(AppendOutcome::Stored { end: new_end })
    }
}

/// Where a new segment's bytes are.
enum Stored<'a> {
    Nothing,
    Bytes(&'a [u8]),
    /// At this position of the session's output file.
    At(u64),
}

async fn insert_segment(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    start: u64,
    end: u64,
    kind: &str,
    at_ms: u64,
    stored: Stored<'_>,
) -> Result<()> {
    let (data, file_pos) = match stored {
        Stored::Nothing => (None, None),
        Stored::Bytes(data) => (Some(data), None),
        Stored::At(pos) => (None, Some(pos as i64)),
    };
    sqlx::query(
        "INSERT INTO session_output (session_id, start_offset, end_offset, kind, at_ms, data, \
         file_pos) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(start as i64)
    .bind(end as i64)
    .bind(kind)
    .bind(at_ms as i64)
    .bind(data)
    .bind(file_pos)
    .execute(conn)
    .await?;
    Ok(())
}

/// Keeps the head (segments starting in the first half of `cap`) and drops the oldest of the
/// rest until `stored` fits, recording one gap between head and tail. Returns the bytes held,
/// and the span of the session's output file that no row points into any more.
async fn evict_tail(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    cap: u64,
    stored: u64,
) -> Result<(u64, Option<FileRange>)> {
    let half = (cap / 2) as i64;
    let head_end: Option<i64> = sqlx::query(
        "SELECT MAX(end_offset) AS e FROM session_output WHERE session_id = $1 AND start_offset < $2",
    )
    .bind(id)
    .bind(half)
    .fetch_one(&mut *conn)
    .await?
    .try_get("e")?;
    let head_end = head_end.unwrap_or(0);
    let rows = sqlx::query(
        "SELECT start_offset, end_offset, kind, file_pos FROM session_output \
         WHERE session_id = $1 AND start_offset >= $2 ORDER BY start_offset",
    )
    .bind(id)
    .bind(head_end)
    .fetch_all(&mut *conn)
    .await?;
    let mut tail = Vec::with_capacity(rows.len());
    for r in &rows {
        let (start, end): (i64, i64) = (r.try_get("start_offset")?, r.try_get("end_offset")?);
        let kind: String = r.try_get("kind")?;
        let len = if kind == "data" { u(end - start) } else { 0 };
        let file_pos = r.try_get::<Option<i64>, _>("file_pos")?.map(u);
        tail.push((end, len, file_pos));
    }
    let lengths: Vec<u64> = tail.iter().map(|(_, len, _)| *len).collect();
    // The newest segment always stays: the tail is never empty while the log grows.
    let n = evict_count(&lengths, stored - cap).min(tail.len().saturating_sub(1));
    if n == 0 {
        return Ok((stored, None));
    }
    let gap_end = tail[n - 1].0;
    let freed: u64 = lengths[..n].iter().sum();
    sqlx::query(
        "DELETE FROM session_output WHERE session_id = $1 AND start_offset >= $2 \
         AND start_offset < $3",
    )
    .bind(id)
    .bind(head_end)
    .bind(gap_end)
    .execute(&mut *conn)
    .await?;
    insert_segment(conn, id, u(head_end), u(gap_end), "gap", 0, Stored::Nothing).await?;
    // Data is written to the file in offset order, so the evicted rows' bytes are one span.
    let spans = tail[..n].iter().filter_map(|(_, len, pos)| pos.map(|p| (p, p + len)));
    let released = spans
        .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)))
        .map(|(from, to)| FileRange { pos: from, len: to - from });
    Ok((stored - freed, released))
}

impl OutputBackend for Store {
    fn gaps<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, Result<Vec<(u64, u64)>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT start_offset, end_offset FROM session_output \
                 WHERE session_id = $1 AND kind = 'gap' ORDER BY start_offset",
            )
            .bind(session_id)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| Ok((u(r.try_get("start_offset")?), u(r.try_get("end_offset")?))))
                .collect()
        })
    }

    fn append<'a>(
        &'a self,
        session_id: &'a str,
        q: &'a AppendQuery,
        body: Bytes,
        cap: u64,
    ) -> BoxFuture<'a, Result<AppendOutcome>> {
        Box::pin(self.append_output(session_id, q, body, cap))
    }

    fn state<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, Result<Option<OutputState>>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            Self::output_state_in(&mut conn, session_id).await
        })
    }

    fn segments<'a>(
        &'a self,
        session_id: &'a str,
        since: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Segment>>> {
        Box::pin(async move {
            // The segment holding `since` starts at or before it: seek there by the key.
            let from: Option<i64> = sqlx::query(
                "SELECT MAX(start_offset) AS s FROM session_output \
                 WHERE session_id = $1 AND start_offset <= $2",
            )
            .bind(session_id)
            .bind(since as i64)
            .fetch_one(&self.pool)
            .await?
            .try_get("s")?;
            let mut out: Vec<RowSegment> = Vec::new();
            let mut at = from.unwrap_or(0);
            let mut bytes = 0;
            // Two segments at a time (each up to a runner's batch), until `max` bytes are in hand:
            // a read never fetches much more than it returns.
            loop {
                let rows = sqlx::query(&format!(
                    "{SEGMENT_COLUMNS} WHERE session_id = $1 AND start_offset >= $2 \
                     ORDER BY start_offset LIMIT 2"
                ))
                .bind(session_id)
                .bind(at)
                .fetch_all(&self.pool)
                .await?;
                let page = rows.len();
                for r in &rows {
                    let s = segment_from_row(r)?;
                    at = s.end() as i64;
                    bytes += s.data_len();
                    out.push(s);
                }
                if page < 2 || bytes >= max {
                    return self.load(session_id, out).await;
                }
            }
        })
    }

    fn last_segments<'a>(
        &'a self,
        session_id: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Segment>>> {
        Box::pin(async move {
            let mut out: Vec<RowSegment> = Vec::new();
            let mut bytes = 0;
            let mut before = i64::MAX;
            while bytes < max {
                let row = sqlx::query(&format!(
                    "{SEGMENT_COLUMNS} WHERE session_id = $1 AND start_offset < $2 \
                     ORDER BY start_offset DESC LIMIT 1"
                ))
                .bind(session_id)
                .bind(before)
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else { break };
                let s = segment_from_row(&row)?;
                // Bytes before a gap do not join those after it in a tail.
                if let RowSegment::Ready(Segment::Gap { .. }) = s {
                    break;
                }
                before = s.start() as i64;
                bytes += s.data_len();
                out.push(s);
            }
            out.reverse();
            self.load(session_id, out).await
        })
    }

    fn resizes<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, Result<Vec<Resize>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT at_offset, at_ms, cols, rows FROM session_resizes WHERE session_id = $1 \
                 ORDER BY at_offset, at_ms",
            )
            .bind(session_id)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(Resize {
                        offset: u(r.try_get("at_offset")?),
                        at_ms: u(r.try_get("at_ms")?),
                        cols: r.try_get::<i64, _>("cols")?.clamp(1, 1000) as u16,
                        rows: r.try_get::<i64, _>("rows")?.clamp(1, 1000) as u16,
                    })
                })
                .collect()
        })
    }
}

/// The output service the routes and the gateway use: a backend, the cap, and a wake-up for
/// live readers in this process (readers also poll, for appends another replica took).
pub struct Output {
    backend: Arc<dyn OutputBackend>,
    /// Most bytes kept per session.
    pub cap: u64,
    live: Mutex<HashMap<String, watch::Sender<u64>>>,
}

/// Default cap on a session's stored output.
pub const DEFAULT_CAP_BYTES: u64 = 256 * 1024 * 1024;
/// Smallest cap accepted: room for a head and a tail of whole batches (a runner appends up to
/// `cliscale_core::output::MAX_APPEND_BYTES` at once).
pub const MIN_CAP_BYTES: u64 = 16 * 1024 * 1024;

impl Output {
    pub fn new(backend: Arc<dyn OutputBackend>, cap: u64) -> Self {
        Self { backend, cap: cap.max(MIN_CAP_BYTES), live: Mutex::default() }
    }

    pub fn backend(&self) -> &dyn OutputBackend {
        &*self.backend
    }

    /// Appends and wakes this process' readers of the session.
    pub async fn append(&self, id: &str, q: &AppendQuery, body: Bytes) -> Result<AppendOutcome> {
        let outcome = self.backend.append(id, q, body, self.cap).await?;
        if let AppendOutcome::Stored { end } = outcome {
            let live = self.live.lock().expect("live lock");
            if let Some(tx) = live.get(id) {
                tx.send_replace(end);
            }
        }
        Ok(outcome)
    }

    /// Wakes when the session's log grows in this process.
    pub fn watch(&self, id: &str) -> watch::Receiver<u64> {
        let mut live = self.live.lock().expect("live lock");
        live.retain(|_, tx| tx.receiver_count() > 0);
        live.entry(id.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Reads at `offset`, at most `max` bytes; `finished_at` is when the session ended.
    pub async fn read(
        &self,
        id: &str,
        offset: u64,
        max: usize,
        finished_at: Option<i64>,
    ) -> Result<LogRead<Bytes>> {
        let state = self.backend.state(id).await?;
        let complete = log_complete(state.as_ref(), finished_at, now());
        let state = state.unwrap_or_default();
        if offset >= state.end {
            return Ok(LogRead::UpToDate { end: state.end, closed: complete });
        }
        let segments = self.backend.segments(id, offset, max).await?;
        Ok(read_at(&segments, &state, offset, max, complete))
    }

    /// The last bytes of the log, as text.
    pub async fn tail(&self, id: &str, max: usize) -> Result<Option<String>> {
        let segments = self.backend.last_segments(id, max * 2).await?;
        let mut bytes = Vec::new();
        for s in &segments {
            if let Segment::Data { data, .. } = s {
                bytes.extend_from_slice(data);
            }
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        Ok(Some(cliscale_core::output::tail_text(&bytes, max)))
    }
}

/// Turns stored segments into an asciicast v2 recording's event lines, carrying partial UTF-8
/// characters from one segment to the next. Times never go back. Pure.
pub struct Recorder {
    resizes: std::vec::IntoIter<Resize>,
    next_resize: Option<Resize>,
    carry: Vec<u8>,
    last_ms: u64,
}

impl Recorder {
    pub fn new(resizes: Vec<Resize>) -> Self {
        let mut resizes = resizes.into_iter();
        let next_resize = resizes.next();
        Self { resizes, next_resize, carry: Vec::new(), last_ms: 0 }
    }

    fn line(&mut self, at_ms: u64, kind: &str, data: &str) -> String {
        self.last_ms = self.last_ms.max(at_ms);
        let t = self.last_ms as f64 / 1000.0;
        let line = serde_json::json!([t, kind, data]).to_string();
        format!("{line}\n")
    }

    /// The event lines for one segment: its output, split where the terminal was resized
    /// within it (a segment is a batch of the runner's reads).
    pub fn segment(&mut self, segment: &Segment) -> String {
        let mut out = String::new();
        let mut at = segment.start();
        loop {
            // Resizes noted at or before `at` come first.
            while let Some(r) = self.next_resize.filter(|r| r.offset <= at) {
                out += &self.line(r.at_ms, "r", &format!("{}x{}", r.cols, r.rows));
                self.next_resize = self.resizes.next();
            }
            let Segment::Data { start, at_ms, data } = segment else { return out };
            let end = segment.end();
            let until = self.next_resize.map_or(end, |r| r.offset.min(end));
            self.carry.extend_from_slice(&data[(at - start) as usize..(until - start) as usize]);
            let text = utf8_prefix(&mut self.carry);
            if !text.is_empty() {
                out += &self.line(*at_ms, "o", &text);
            }
            if until >= end {
                return out;
            }
            at = until;
        }
    }

    /// What is left at the end: resizes after the last byte, and undecodable bytes.
    pub fn finish(mut self) -> String {
        let mut out = String::new();
        if !self.carry.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.carry)).into_owned();
            out += &self.line(self.last_ms, "o", &rest);
        }
        while let Some(r) = self.next_resize.take() {
            out += &self.line(r.at_ms, "r", &format!("{}x{}", r.cols, r.rows));
            self.next_resize = self.resizes.next();
        }
        out
    }
}

/// Takes the longest prefix of `buf` that is text (invalid bytes replaced), leaving an
/// unfinished character at the end for the next piece.
fn utf8_prefix(buf: &mut Vec<u8>) -> String {
    let keep = match std::str::from_utf8(buf) {
        Ok(_) => 0,
        Err(e) if e.error_len().is_none() => buf.len() - e.valid_up_to(),
        Err(_) => {
            // Invalid bytes inside: find an unfinished character at the very end, if any.
            let tail_start = buf.len().saturating_sub(3);
            (tail_start..buf.len())
                .find(|&i| {
                    let b = buf[i];
                    (0xC2..=0xF4).contains(&b) && {
                        let need = if b >= 0xF0 {
                            4
                        } else if b >= 0xE0 {
                            3
                        } else {
                            2
                        };
                        buf.len() - i < need
                    }
                })
                .map_or(0, |i| buf.len() - i)
        }
    };
    let rest = buf.split_off(buf.len() - keep);
    let text = String::from_utf8_lossy(buf).into_owned();
    *buf = rest;
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(offset: u64) -> AppendQuery {
        AppendQuery { offset, ..Default::default() }
    }

    fn state(end: u64) -> OutputState {
        OutputState { end, ..Default::default() }
    }

    #[test]
    fn appends_resume_skip_what_is_held_and_gaps_only_when_declared() {
        let write = |gap, skip, start, new_end| AppendPlan::Write {
            gap,
            skip,
            start,
            new_end,
            close: false,
        };
        assert_eq!(plan_append(&state(0), &q(0), 10), write(None, 0, 0, 10));
        // A resend after a lost answer stores only the new part.
        assert_eq!(plan_append(&state(6), &q(0), 10), write(None, 6, 6, 10));
        assert_eq!(plan_append(&state(10), &q(0), 10), AppendPlan::Nothing);
        // Past the end without a declared gap: told where to resume.
        assert_eq!(plan_append(&state(5), &q(10), 3), AppendPlan::Behind);
        let declared = AppendQuery { gap_from: Some(5), ..q(10) };
        assert_eq!(plan_append(&state(5), &declared, 3), write(Some((5, 10)), 0, 10, 13));
        // A gap the store already covers is not recorded twice.
        assert_eq!(plan_append(&state(12), &declared, 3), write(None, 2, 12, 13));
        let closing = AppendQuery { closed: true, ..q(4) };
        assert!(matches!(
            plan_append(&state(4), &closing, 0),
            AppendPlan::Write { close: true, new_end: 4, .. }
        ));
        let closed = OutputState { closed: true, ..state(4) };
        assert_eq!(plan_append(&closed, &q(4), 5), AppendPlan::Nothing);
    }

    #[test]
    fn eviction_frees_the_oldest_tail_first() {
        assert_eq!(evict_count(&[4, 4, 4], 0), 0);
        assert_eq!(evict_count(&[4, 4, 4], 1), 1);
        assert_eq!(evict_count(&[4, 4, 4], 5), 2);
        assert_eq!(evict_count(&[0, 4, 4], 4), 2);
        assert_eq!(evict_count(&[4], 100), 1);
    }

    #[test]
    fn reads_find_data_gaps_and_the_end() {
        let segs = vec![
            Segment::Data { start: 0, at_ms: 0, data: Bytes::from_static(b"hello") },
            Segment::Data { start: 5, at_ms: 1, data: Bytes::from_static(b" world") },
            Segment::Gap { start: 11, end: 20 },
            Segment::Data { start: 20, at_ms: 2, data: Bytes::from_static(b"!") },
        ];
        let st = state(21);
        let data = |offset, d: &'static [u8]| LogRead::Data { offset, data: Bytes::from(d) };
        assert_eq!(read_at(&segs, &st, 0, 100, false), data(0, b"hello world"));
        assert_eq!(read_at(&segs, &st, 3, 4, false), data(3, b"lo w"));
        assert_eq!(read_at(&segs[2..], &st, 11, 100, false), LogRead::Gap { from: 11, to: 20 });
        assert_eq!(read_at(&segs[2..], &st, 15, 100, false), LogRead::Gap { from: 15, to: 20 });
        assert_eq!(read_at(&segs[3..], &st, 20, 100, true), data(20, b"!"));
        assert_eq!(read_at(&segs, &st, 21, 100, true), LogRead::UpToDate { end: 21, closed: true });
    }

    #[test]
    fn a_log_is_complete_when_closed_or_long_after_its_end() {
        let open = OutputState { updated_at: 100, ..state(5) };
        assert!(!log_complete(Some(&open), None, 1000));
        assert!(!log_complete(Some(&open), Some(105), 105 + UNCLOSED_GRACE_SECS - 1));
        assert!(log_complete(Some(&open), Some(105), 105 + UNCLOSED_GRACE_SECS));
        assert!(log_complete(Some(&OutputState { closed: true, ..open }), None, 0));
        assert!(log_complete(None, Some(1), 1 + UNCLOSED_GRACE_SECS));
    }

    #[test]
    fn recordings_keep_characters_whole_and_resizes_in_place() {
        let euro = "€".as_bytes();
        let segs = [
            Segment::Data { start: 0, at_ms: 10, data: Bytes::copy_from_slice(&euro[..2]) },
            Segment::Data { start: 2, at_ms: 15, data: Bytes::copy_from_slice(&euro[2..]) },
            Segment::Data { start: 3, at_ms: 30, data: Bytes::from_static(b"x\xff") },
        ];
        let resize = Resize { offset: 3, at_ms: 20, cols: 100, rows: 30 };
        let mut rec = Recorder::new(vec![resize]);
        // A resize inside a segment splits its output there.
        let mut split = Recorder::new(vec![Resize { offset: 2, at_ms: 7, cols: 9, rows: 9 }]);
        let one = Segment::Data { start: 0, at_ms: 5, data: Bytes::from_static(b"abcd") };
        let lines = split.segment(&one) + &split.finish();
        assert_eq!(lines, "[0.005,\"o\",\"ab\"]\n[0.007,\"r\",\"9x9\"]\n[0.007,\"o\",\"cd\"]\n");
        let mut lines = String::new();
        for s in &segs {
            lines += &rec.segment(s);
        }
        lines += &rec.finish();
        let events: Vec<serde_json::Value> =
            lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let expected =
            serde_json::json!([[0.015, "o", "€"], [0.02, "r", "100x30"], [0.03, "o", "x\u{fffd}"]]);
        assert_eq!(serde_json::Value::Array(events), expected);
    }
}
