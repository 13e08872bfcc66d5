//! The typed client of cliscale's REST API (docs/api.md) and terminal WebSocket
//! (docs/protocol.md). Every request the `cliscale` command line, the integration tests and the
//! benchmarks make goes through [`Client`], so the paths, the bodies and the error codes are
//! written down once.

mod definitions;
mod error;
pub mod stream;
pub mod terminal;

use std::time::Duration;

use bytes::Bytes;
use cliscale_core::output::{COMPLETE_HEADER, END_HEADER, GAPS_HEADER, SINCE_HEADER, UNTIL_HEADER};
use cliscale_core::rest::{
    CreateKeyRequest, CreateSessionRequest, EventPage, FeedQuery, KeyPage, KeyView, ListQuery,
    MintRequest, Role, SessionCreated, SessionPage, SessionView, TokenMinted, UpdateKeyRequest,
};
use cliscale_core::token::TokenScope;
use futures_util::Stream;
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use url::Url;

pub use cliscale_core::rest;
pub use error::{Error, Result};

/// The header that makes a create safe to retry (docs/api.md, "Sessions").
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// A connection to one cliscale server: its base URL and the API key to act with.
#[derive(Debug, Clone)]
pub struct Client {
    base: Url,
    key: Option<String>,
    http: reqwest::Client,
}

/// Which part of a session's stored output to read, and how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputRange {
    pub since: Option<u64>,
    pub until: Option<u64>,
    /// Terminal escapes removed (`format=text`) instead of the raw bytes.
    pub text: bool,
}

/// What `GET /api/sessions/{id}/output` says about the body it streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputInfo {
    pub since: u64,
    pub until: u64,
    /// The length of the stored log so far.
    pub end: u64,
    /// Ranges inside `[since, until)` that are not stored.
    pub gaps: Vec<(u64, u64)>,
    /// The session finished and the store holds its whole log.
    pub complete: bool,
}

impl Client {
    /// A client of the server at `base` (`http://host:port`, or with a path prefix), acting with
    /// `key` (`csk_…`) where one is given.
    pub fn new(base: &str, key: Option<String>) -> Result<Self> {
        cliscale_core::tls::install_crypto_provider();
        let mut base =
            Url::parse(base.trim()).map_err(|e| Error::BadUrl(format!("{base}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::BadUrl(format!("{base}: not an http:// or https:// address")));
        }
        base.set_query(None);
        base.set_fragment(None);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("cliscale/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Transport { url: base.to_string(), source: e })?;
        Ok(Self { base, key, http })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The URL of `segments` under the base, each segment percent-encoded.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("checked in new");
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let req = self.http.request(method, self.url(segments));
        match &self.key {
            Some(key) => req.bearer_auth(key),
            None => req,
        }
    }

    async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let resp = req.send().await.map_err(|e| Error::transport(&self.base, e))?;
        if resp.status().is_success() { Ok(resp) } else { Err(Error::from_response(resp).await) }
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T> {
        let resp = self.send(req).await?;
        let url = resp.url().to_string();
        let body = resp.bytes().await.map_err(|e| Error::transport(&self.base, e))?;
        serde_json::from_slice(&body).map_err(|e| Error::Unexpected(format!("{url}: {e}")))
    }

    /// `POST /api/sessions`. With an idempotency key a retry after a lost answer returns the
    /// session the first attempt made.
    pub async fn create_session(
        &self,
        request: &CreateSessionRequest,
        idempotency_key: Option<&str>,
    ) -> Result<SessionCreated> {
        let mut req = self.request(Method::POST, &["api", "sessions"]).json(request);
        if let Some(key) = idempotency_key {
            req = req.header(IDEMPOTENCY_HEADER, key);
        }
        self.json(req).await
    }

    /// `GET /api/sessions/{id}`.
    pub async fn session(&self, id: &str) -> Result<SessionView> {
        self.json(self.request(Method::GET, &["api", "sessions", id])).await
    }

    /// `GET /api/sessions`: one page.
    pub async fn list_sessions(&self, query: &ListQuery) -> Result<SessionPage> {
        self.json(self.request(Method::GET, &["api", "sessions"]).query(query)).await
    }

    /// `DELETE /api/sessions/{id}`: asks the session to stop; answers it as it then stands.
    pub async fn cancel_session(&self, id: &str) -> Result<SessionView> {
        self.json(self.request(Method::DELETE, &["api", "sessions", id])).await
    }

    /// `GET /api/sessions/{id}/events`.
    pub async fn events(&self, id: &str) -> Result<EventPage> {
        self.json(self.request(Method::GET, &["api", "sessions", id, "events"])).await
    }

    /// `POST /api/sessions/{id}/tokens`: a one-time terminal link.
    pub async fn mint_token(&self, id: &str, scope: TokenScope) -> Result<TokenMinted> {
        let body = MintRequest { scope: Some(scope) };
        self.json(self.request(Method::POST, &["api", "sessions", id, "tokens"]).json(&body)).await
    }

    /// `GET /api/sessions/{id}/output`: what the headers say, and the body as it streams.
    pub async fn output(
        &self,
        id: &str,
        range: OutputRange,
    ) -> Result<(OutputInfo, impl Stream<Item = Result<Bytes>> + use<>)> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(since) = range.since {
            query.push(("since", since.to_string()));
        }
        if let Some(until) = range.until {
            query.push(("until", until.to_string()));
        }
        if range.text {
            query.push(("format", "text".into()));
        }
        let req = self.request(Method::GET, &["api", "sessions", id, "output"]).query(&query);
        let resp = self.send(req).await?;
        let info = output_info(resp.headers())?;
        Ok((info, byte_stream(resp, self.base.clone())))
    }

    /// `GET /api/sessions/{id}/output/stream`, resumed after every drop: see [`stream`].
    pub fn output_stream(&self, id: &str, since: u64) -> stream::OutputStream {
        stream::OutputStream::new(self.clone(), id.to_owned(), since)
    }

    /// The raw Server-Sent Events response of `GET /api/sessions/{id}/output/stream` from
    /// `since`, for readers that parse the events themselves.
    pub async fn open_output_stream(&self, id: &str, since: u64) -> Result<Response> {
        let req = self
            .request(Method::GET, &["api", "sessions", id, "output", "stream"])
            .header("Last-Event-ID", since.to_string())
            .header("Accept", "text/event-stream");
        self.send(req).await
    }

    /// `GET /api/sessions/feed`: creations and changes as they happen, resumed after every
    /// drop: see [`stream::SessionFeed`].
    pub fn session_feed(&self, query: FeedQuery) -> stream::SessionFeed {
        stream::SessionFeed::new(self.clone(), query)
    }

    pub(crate) async fn open_feed(
        &self,
        query: &FeedQuery,
        after: Option<i64>,
    ) -> Result<Response> {
        let mut req = self
            .request(Method::GET, &["api", "sessions", "feed"])
            .query(&FeedQuery { since: None, ..query.clone() })
            .header("Accept", "text/event-stream");
        if let Some(position) = after {
            req = req.header("Last-Event-ID", position.to_string());
        }
        self.send(req).await
    }

    /// `GET /api/sessions/{id}/recording`: the asciicast v2 file as it streams.
    pub async fn recording(&self, id: &str) -> Result<impl Stream<Item = Result<Bytes>> + use<>> {
        let resp =
            self.send(self.request(Method::GET, &["api", "sessions", id, "recording"])).await?;
        Ok(byte_stream(resp, self.base.clone()))
    }

    /// `POST /api/keys`: the answer holds the full key, shown only this once.
    pub async fn create_key(&self, name: &str, role: Role) -> Result<KeyView> {
        let body = CreateKeyRequest { name: name.to_owned(), role };
        self.json(self.request(Method::POST, &["api", "keys"]).json(&body)).await
    }

    /// `GET /api/keys`.
    pub async fn list_keys(&self) -> Result<KeyPage> {
        self.json(self.request(Method::GET, &["api", "keys"])).await
    }

    /// `DELETE /api/keys/{id}`.
    pub async fn revoke_key(&self, id: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &["api", "keys", id])).await.map(drop)
    }

    /// `PATCH /api/keys/{id}`.
    pub async fn set_key_role(&self, id: &str, role: Role) -> Result<KeyView> {
        let body = UpdateKeyRequest { role };
        self.json(self.request(Method::PATCH, &["api", "keys", id]).json(&body)).await
    }

    /// `GET /readyz`: whether the server can serve (its storage answers).
    pub async fn ready(&self) -> Result<()> {
        self.send(self.http.get(self.url(&["readyz"]))).await.map(drop)
    }
}

fn byte_stream(resp: Response, base: Url) -> impl Stream<Item = Result<Bytes>> {
    use futures_util::TryStreamExt;
    resp.bytes_stream().map_err(move |e| Error::transport(&base, e))
}

fn output_info(headers: &reqwest::header::HeaderMap) -> Result<OutputInfo> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let number = |name: &str| {
        text(name).parse::<u64>().map_err(|_| Error::Unexpected(format!("no {name} header")))
    };
    Ok(OutputInfo {
        since: number(SINCE_HEADER)?,
        until: number(UNTIL_HEADER)?,
        end: number(END_HEADER)?,
        gaps: parse_gaps(text(GAPS_HEADER)),
        complete: text(COMPLETE_HEADER) == "true",
    })
}

/// `from-to,from-to` as the output headers write ranges. Pure.
fn parse_gaps(raw: &str) -> Vec<(u64, u64)> {
    raw.split(',')
        .filter_map(|range| {
            let (from, to) = range.trim().split_once('-')?;
            Some((from.parse().ok()?, to.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_the_base_path_and_encode_ids() {
        let client = Client::new("https://example.test/cliscale/", None).unwrap();
        let url = client.url(&["api", "sessions", "a b/c"]);
        assert_eq!(url.as_str(), "https://example.test/cliscale/api/sessions/a%20b%2Fc");
        let bare = Client::new("http://127.0.0.1:8080", None).unwrap();
        assert_eq!(bare.url(&["api", "keys"]).as_str(), "http://127.0.0.1:8080/api/keys");
    }

    #[test]
    fn only_web_addresses_are_servers() {
        for bad in ["ftp://x", "localhost:8080", "", "mailto:a@b"] {
            assert!(matches!(Client::new(bad, None), Err(Error::BadUrl(_))), "{bad}");
        }
    }

    #[test]
    fn gap_headers_parse() {
        assert_eq!(parse_gaps("1-5, 10-20"), vec![(1, 5), (10, 20)]);
        assert_eq!(parse_gaps(""), vec![]);
    }
}
