use cliscale_core::protocol::ErrorBody;
use url::Url;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a call failed: the server refused it (with its stable code), or it never got an answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error (docs/api.md, "Errors"; docs/protocol.md for the
    /// terminal's refusals).
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// Seconds, from `Retry-After`.
        retry_after: Option<u64>,
    },
    /// No answer: the address does not resolve, refuses, or the connection broke.
    #[error("cannot reach {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The terminal WebSocket failed below HTTP.
    #[error("terminal connection to {url} failed: {source}")]
    WebSocket {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// The server answered something that is not cliscale's API.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    #[error("not a server address: {0}")]
    BadUrl(String),
}

impl Error {
    /// The API's stable error code, for a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the same call may succeed later without anything changing on the caller's side:
    /// no answer, a server error, or a refusal that says to wait.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::WebSocket { .. } => true,
            Self::Api { status, .. } => *status >= 500 || *status == 429,
            Self::Unexpected(_) | Self::BadUrl(_) => false,
        }
    }

    pub(crate) fn transport(base: &Url, source: reqwest::Error) -> Self {
        let url = source.url().map(Url::to_string).unwrap_or_else(|| base.to_string());
        Self::Transport { url, source: source.without_url() }
    }

    /// An error answer, read as the API writes them: `{"error", "message"}`.
    pub(crate) async fn from_response(resp: reqwest::Response) -> Self {
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let body = resp.bytes().await.unwrap_or_default();
        Self::from_body(status, retry_after, &body)
    }

    pub(crate) fn from_body(status: u16, retry_after: Option<u64>, body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => Self::Api { status, code: b.error, message: b.message, retry_after },
            Err(_) => {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                Self::Api {
                    status,
                    code: format!("http_{status}"),
                    message: if text.trim().is_empty() {
                        format!("the server answered HTTP {status}")
                    } else {
                        text
                    },
                    retry_after,
                }
            }
        }
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_refusal_keeps_its_code_and_a_foreign_one_gets_its_status() {
        let api =
            Error::from_body(404, None, br#"{"error":"not_found","message":"no such session"}"#);
        assert_eq!((api.code(), api.status()), (Some("not_found"), Some(404)));
        assert!(!api.is_transient());
        let proxy = Error::from_body(502, Some(3), b"<html>Bad Gateway</html>");
        assert_eq!(proxy.code(), Some("http_502"));
        assert!(proxy.is_transient());
    }
}
