//! Pushes the session's log to the control plane's output store as it grows (docs/runner.md,
//! "Stored output"). It reads the log like any other reader, so it never holds up the PTY and
//! buffers nothing beyond the log's window: if the store falls further behind than that, the
//! bytes it missed are sent as a declared gap, as a live reader is told. After a failure (a
//! dropped connection, a restarted API) it asks again from the last offset the store
//! acknowledged, which the store answers with every append.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cliscale_core::cursor::LogRead;
use cliscale_core::output::{AppendQuery, END_HEADER, Resize};
use url::Url;

use crate::log::OutputLog;

/// Where and how the log goes.
#[derive(Debug, Clone)]
pub struct UploadTarget {
    /// `…/api/sessions/{id}/output`.
    pub url: Url,
    pub token: String,
    /// Most bytes per append.
    pub batch_bytes: usize,
    /// How long output gathers before an append (fewer, larger appends; a live reader of the
    /// store sees output this much later).
    pub interval: Duration,
}

/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What an append came back with.
enum Answer {
    /// The store holds everything before this offset.
    End(u64),
    /// Retry later (network, 5xx, 404 before the session is known, 429).
    Retry(String),
    /// The store will never take this (401, 400): stop uploading.
    Refused(String),
}

pub struct Uploader {
    client: reqwest::Client,
    target: UploadTarget,
    log: Arc<OutputLog>,
}

impl Uploader {
    pub fn new(target: UploadTarget, log: Arc<OutputLog>) -> Result<Self, String> {
        cliscale_core::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { client, target, log })
    }

    async fn send(&self, q: &AppendQuery, body: Bytes) -> Answer {
        let mut url = self.target.url.clone();
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("offset", &q.offset.to_string());
            pairs.append_pair("atMs", &q.at_ms.to_string());
            if let Some(from) = q.gap_from {
                pairs.append_pair("gapFrom", &from.to_string());
            }
            if let Some(resizes) = &q.resizes {
                pairs.append_pair("resizes", resizes);
            }
            if q.closed {
                pairs.append_pair("closed", "true");
            }
        }
        let request = self
            .client
            .post(url)
            .bearer_auth(&self.target.token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Answer::Retry(e.to_string()),
        };
        let status = response.status();
        let end = response
            .headers()
            .get(END_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match (status.as_u16(), end) {
            (200 | 409, Some(end)) => Answer::End(end),
            (400 | 401 | 403 | 413, _) => {
                let body = response.text().await.unwrap_or_default();
                Answer::Refused(format!("{status}: {body}"))
            }
            _ => Answer::Retry(format!("the store answered {status}")),
        }
    }

    /// Uploads until the log is closed and the store holds all of it (or refuses it).
    pub async fn run(self) {
        let mut acked = 0u64;
        let mut end_rx = self.log.subscribe();
        let mut resizes: Vec<Resize> = Vec::new();
        let mut backoff = Duration::from_millis(100);
        let mut gap_from: Option<u64> = None;
        loop {
            resizes.extend(self.log.take_resizes());
            let at_ms = self.log.elapsed_ms();
            let (offset, body, closed) = match self.log.read_since(acked, self.target.batch_bytes) {
                LogRead::Data { offset, data } => (offset, data, false),
                LogRead::Gap { from, to } => {
                    // The window moved past what the store has: declare it, send what follows.
                    tracing::warn!(from, to, "output store fell behind the log; bytes skipped");
                    gap_from = Some(gap_from.unwrap_or(from));
                    match self.log.read_since(to, self.target.batch_bytes) {
                        LogRead::Data { offset, data } => (offset, data, false),
                        _ => (to, Bytes::new(), false),
                    }
                }
                // Resizes go on their own when no output carries them.
                LogRead::UpToDate { end, .. } if !resizes.is_empty() => (end, Bytes::new(), false),
                // Everything is stored: say the log is complete.
                LogRead::UpToDate { end, closed: true } => (end, Bytes::new(), true),
                LogRead::UpToDate { .. } => {
                    // Nothing new: wait for output, then let a batch gather.
                    if end_rx.changed().await.is_err() {
                        return;
                    }
                    tokio::time::sleep(self.target.interval).await;
                    continue;
                }
            };
            let q = AppendQuery {
                offset,
                at_ms,
                gap_from,
                resizes: (!resizes.is_empty()).then(|| Resize::encode_list(&resizes)),
                closed,
            };
            let sent_at = tokio::time::Instant::now();
            let full = body.len() >= self.target.batch_bytes;
            match self.send(&q, body).await {
                Answer::End(end) => {
                    acked = end;
                    gap_from = None;
                    resizes.clear();
                    backoff = Duration::from_millis(100);
                    if closed && end >= offset {
                        return;
                    }
                    // A short batch took all there was: let the next one gather for an
                    // interval. Sending again at once would make an append of whatever arrived
                    // during one round trip, and at full speed the store's cost is per append.
                    if !full {
                        tokio::time::sleep_until(sent_at + self.target.interval).await;
                    }
                }
                Answer::Retry(why) => {
                    tracing::warn!(error = why, retry_in = ?backoff, "output store append failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Answer::Refused(why) => {
                    tracing::error!(
                        error = why,
                        "the output store refused the log; not storing it"
                    );
                    return;
                }
            }
        }
    }
}
