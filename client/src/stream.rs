//! A session's output as Server-Sent Events (`GET /api/sessions/{id}/output/stream`), live while
//! it runs and from the store after, resumed from the last offset after every drop, so no byte
//! is lost or repeated.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use cliscale_core::protocol::{ServerMessage, SessionStatus, sse};
use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};

use cliscale_core::rest::{FeedQuery, FeedReady, SessionView, feed};

use crate::{Client, Error, Result};

/// The server sends a comment every 15 s; a connection silent for three of them is dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the stream yields, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputEvent {
    /// Bytes at `offset` of the log.
    Output { offset: u64, data: Bytes },
    /// Bytes `[from, to)` are not stored (docs/api.md, "Gaps").
    Gap { from: u64, to: u64 },
    /// The phase changed; the final one ends the stream.
    Status(SessionStatus),
    /// The connection dropped; the next call resumes from `offset` after `delay`.
    Reconnecting { offset: u64, delay: Duration, why: String },
}

type Events = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

pub struct OutputStream {
    client: Client,
    id: String,
    /// The offset of the next byte wanted: where a new connection resumes.
    next: u64,
    events: Option<Events>,
    backoff: Backoff,
    finished: bool,
}

impl OutputStream {
    pub(crate) fn new(client: Client, id: String, since: u64) -> Self {
        Self { client, id, next: since, events: None, backoff: Backoff::default(), finished: false }
    }

    /// The offset after the last byte yielded.
    pub fn offset(&self) -> u64 {
        self.next
    }

    /// The next event; `None` once the final status has followed the whole log. A refusal
    /// (no such session, a revoked key) is an error; a dropped connection is not: it is
    /// reported as [`OutputEvent::Reconnecting`] and resumed.
    pub async fn next(&mut self) -> Result<Option<OutputEvent>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            let Some(events) = &mut self.events else {
                self.backoff.wait().await;
                match self.client.open_output_stream(&self.id, self.next).await {
                    Ok(resp) => self.events = Some(events_of(resp)),
                    Err(e) if e.is_transient() => {
                        return Ok(Some(self.drop_connection(e.to_string())));
                    }
                    Err(e) => return Err(e),
                }
                continue;
            };
            match events.next().await {
                None => return Ok(Some(self.drop_connection("the stream ended early".into()))),
                Some(Err(e)) => return Ok(Some(self.drop_connection(e))),
                Some(Ok(event)) => {
                    self.backoff.reset();
                    if let Some(event) = self.read(event)? {
                        return Ok(Some(event));
                    }
                }
            }
        }
    }

    fn drop_connection(&mut self, why: String) -> OutputEvent {
        self.events = None;
        let delay = self.backoff.dropped();
        OutputEvent::Reconnecting { offset: self.next, delay, why }
    }

    /// One event of the wire, read against what was already yielded. Pure but for `self`.
    fn read(&mut self, event: Event) -> Result<Option<OutputEvent>> {
        let bad =
            |e: &dyn std::fmt::Display| Error::Unexpected(format!("{} event: {e}", event.event));
        match event.event.as_str() {
            sse::OUTPUT => {
                let body: sse::OutputData =
                    serde_json::from_str(&event.data).map_err(|e| bad(&e))?;
                let data = body.bytes().map_err(|e| bad(&e))?;
                let end = body.offset + data.len() as u64;
                if end <= self.next {
                    return Ok(None); // already yielded before a reconnect
                }
                let skip = self.next.saturating_sub(body.offset) as usize;
                let offset = body.offset.max(self.next);
                self.next = end;
                Ok(Some(OutputEvent::Output { offset, data: Bytes::from(data).slice(skip..) }))
            }
            sse::GAP => match serde_json::from_str(&event.data).map_err(|e| bad(&e))? {
                ServerMessage::Gap { from, to } if to > self.next => {
                    let from = from.max(self.next);
                    self.next = to;
                    Ok(Some(OutputEvent::Gap { from, to }))
                }
                _ => Ok(None),
            },
            sse::STATUS => match serde_json::from_str(&event.data).map_err(|e| bad(&e))? {
                ServerMessage::Status(status) => {
                    self.finished = status.phase.is_finished();
                    Ok(Some(OutputEvent::Status(status)))
                }
                _ => Ok(None),
            },
            _ => Ok(None), // hello (its status is repeated as events), and what a newer server adds
        }
    }
}

/// The wait before each new connection after a drop: [`backoff`] by the drops in a row, reset by
/// a connection that brings something.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
    pending: Option<Duration>,
}

impl Backoff {
    /// A connection dropped: how long to wait before the next, which [`Backoff::wait`] then waits.
    pub(crate) fn dropped(&mut self) -> Duration {
        let delay = backoff(self.failures);
        self.failures = self.failures.saturating_add(1);
        self.pending = Some(delay);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// Waits out the delay of the last drop, once.
    async fn wait(&mut self) {
        if let Some(delay) = self.pending.take() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// Exponential backoff from 250 ms to 5 s, with up to a quarter of jitter so that many clients
/// cut at once do not return at once.
pub(crate) fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_FIRST.saturating_mul(1u32 << failures.min(8)).min(BACKOFF_MAX);
    let jitter = rand::random::<f64>() * 0.25;
    base.mul_f64(1.0 - jitter)
}

fn events_of(resp: reqwest::Response) -> Events {
    // The silence clock runs on bytes, not events, so the keepalive comments (which make no
    // event) keep a quiet session's stream from being taken for a dead one.
    let bytes = futures_util::stream::unfold(resp.bytes_stream(), |mut chunks| async move {
        match tokio::time::timeout(SILENCE_LIMIT, chunks.next()).await {
            Ok(Some(chunk)) => Some((chunk.map_err(|e| e.to_string()), chunks)),
            Ok(None) => None,
            Err(_) => Some((Err("the server went silent".to_owned()), chunks)),
        }
    });
    Box::pin(bytes.eventsource().map(|e| e.map_err(|e| e.to_string())))
}

/// What the session feed yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// A connection opened; changes after `position` follow.
    Ready { position: i64 },
    /// A session was created or changed: as it is after the change.
    Session { position: i64, session: Box<SessionView> },
    /// The connection dropped; the next call resumes after the last position after `delay`.
    Reconnecting { position: i64, delay: Duration, why: String },
}

/// `GET /api/sessions/feed`, resumed after every drop from the last position seen, so no
/// change is missed. It never ends by itself.
pub struct SessionFeed {
    client: Client,
    query: FeedQuery,
    /// The last position seen; `None` until the first connection says where it starts.
    position: Option<i64>,
    events: Option<Events>,
    backoff: Backoff,
}

impl SessionFeed {
    pub(crate) fn new(client: Client, query: FeedQuery) -> Self {
        let position = query.since;
        Self { client, query, position, events: None, backoff: Backoff::default() }
    }

    /// The next event. A refusal (a bad filter, a revoked key) is an error; a drop is
    /// [`FeedEvent::Reconnecting`].
    pub async fn next(&mut self) -> Result<FeedEvent> {
        loop {
            let Some(events) = &mut self.events else {
                self.backoff.wait().await;
                match self.client.open_feed(&self.query, self.position).await {
                    Ok(resp) => self.events = Some(events_of(resp)),
                    Err(e) if e.is_transient() => return Ok(self.drop_connection(e.to_string())),
                    Err(e) => return Err(e),
                }
                continue;
            };
            let event = match events.next().await {
                None => return Ok(self.drop_connection("the feed ended".into())),
                Some(Err(e)) => return Ok(self.drop_connection(e)),
                Some(Ok(event)) => event,
            };
            self.backoff.reset();
            let bad =
                |e: serde_json::Error| Error::Unexpected(format!("{} event: {e}", event.event));
            match event.event.as_str() {
                feed::READY => {
                    let ready: FeedReady = serde_json::from_str(&event.data).map_err(bad)?;
                    self.position = Some(ready.position);
                    return Ok(FeedEvent::Ready { position: ready.position });
                }
                feed::SESSION => {
                    let session: SessionView = serde_json::from_str(&event.data).map_err(bad)?;
                    let position = event.id.parse().map_err(|_| {
                        Error::Unexpected(format!("a session event with id {:?}", event.id))
                    })?;
                    self.position = Some(position);
                    return Ok(FeedEvent::Session { position, session: Box::new(session) });
                }
                _ => {} // what a newer server adds
            }
        }
    }

    fn drop_connection(&mut self, why: String) -> FeedEvent {
        self.events = None;
        let delay = self.backoff.dropped();
        FeedEvent::Reconnecting { position: self.position.unwrap_or(0), delay, why }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_at(next: u64) -> OutputStream {
        let client = Client::new("http://127.0.0.1:1", None).unwrap();
        OutputStream::new(client, "s".into(), next)
    }

    fn output(offset: u64, bytes: &[u8]) -> Event {
        Event {
            event: sse::OUTPUT.into(),
            data: serde_json::to_string(&sse::OutputData::new(offset, bytes)).unwrap(),
            id: (offset + bytes.len() as u64).to_string(),
            retry: None,
        }
    }

    #[test]
    fn bytes_seen_before_a_reconnect_are_not_yielded_again() {
        let mut s = stream_at(5);
        assert_eq!(s.read(output(0, b"abc")).unwrap(), None);
        let got = s.read(output(3, b"defgh")).unwrap();
        assert_eq!(got, Some(OutputEvent::Output { offset: 5, data: Bytes::from_static(b"fgh") }));
        assert_eq!(s.offset(), 8);
    }

    #[test]
    fn the_final_status_ends_the_stream() {
        let mut s = stream_at(0);
        let status = SessionStatus::finished(cliscale_core::TerminalReason::Exited, 3, None);
        let event = Event {
            event: sse::STATUS.into(),
            data: serde_json::to_string(&ServerMessage::Status(status.clone())).unwrap(),
            id: String::new(),
            retry: None,
        };
        assert_eq!(s.read(event).unwrap(), Some(OutputEvent::Status(status)));
        assert!(s.finished);
    }

    #[test]
    fn backoff_grows_to_its_ceiling() {
        assert!(backoff(0) <= BACKOFF_FIRST);
        assert!(backoff(1) > BACKOFF_FIRST / 2);
        assert!(backoff(30) <= BACKOFF_MAX && backoff(30) >= BACKOFF_MAX.mul_f64(0.75));
    }
}
