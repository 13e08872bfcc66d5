//! How the command line fails: one sentence for a person, and an exit code a script can tell
//! apart from the session's own (docs/cli.md, "Exit codes").

use cliscale_client::Error;

/// cliscale's own failures. A session's exit code (0–255, 128+N for a signal) is passed through
/// as it is; these follow the BSD sysexits convention, so they are stable and documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command line was wrong.
    Usage,
    /// The server refused the request as asked: a bad field, no such session, a conflict.
    Refused,
    /// The server could not be reached, or failed.
    Unavailable,
    /// Something on this machine failed: the terminal, a file, standard output.
    Local,
    /// The API key is missing or refused, or its role may not do this.
    Denied,
    /// No server configured, or the config file is unreadable.
    Config,
}

impl Outcome {
    pub fn code(self) -> i32 {
        match self {
            Self::Usage => 64,
            Self::Refused => 65,
            Self::Unavailable => 69,
            Self::Local => 70,
            Self::Denied => 77,
            Self::Config => 78,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub outcome: Outcome,
    pub message: String,
}

impl Failure {
    pub fn new(outcome: Outcome, message: impl Into<String>) -> Self {
        Self { outcome, message: message.into() }
    }

    pub fn local(what: &str, e: impl std::fmt::Display) -> Self {
        Self::new(Outcome::Local, format!("{what}: {e}"))
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let outcome = outcome_of(&e);
        Self { outcome, message: sentence(&e) }
    }
}

/// Which of cliscale's exit codes an API error gets. Pure.
pub fn outcome_of(e: &Error) -> Outcome {
    match e {
        Error::Api { status: 401 | 403, .. } => Outcome::Denied,
        Error::Api { status, .. } if *status >= 500 || *status == 429 => Outcome::Unavailable,
        Error::Api { .. } | Error::Unexpected(_) => Outcome::Refused,
        Error::Transport { .. } | Error::WebSocket { .. } => Outcome::Unavailable,
        Error::BadUrl(_) => Outcome::Config,
    }
}

/// The error as a sentence, from the API's stable code where there is one. Pure.
pub fn sentence(e: &Error) -> String {
    let Error::Api { code, message, retry_after, .. } = e else {
        return match e {
            Error::Transport { url, source } => {
                format!("cannot reach the server at {url} ({}); is it running?", root_cause(source))
            }
            other => other.to_string(),
        };
    };
    let wait = retry_after.map(|s| format!(" in {s} s")).unwrap_or_default();
    match code.as_str() {
        "missing_api_key" => {
            "no API key was sent: run `cliscale login URL`, or set CLISCALE_API_KEY".into()
        }
        "invalid_api_key" => {
            "the API key was refused: it is unknown, revoked or mistyped (`cliscale login` stores a new one)".into()
        }
        "forbidden" => format!("your API key's role may not do this: {message}"),
        "not_found" => format!("not found: {message}"),
        "rate_limited" => format!("the server is limiting this key's requests; try again{wait}"),
        "storage_unavailable" | "unavailable" => {
            format!("the server cannot serve this now ({message}); try again{wait}")
        }
        "last_admin" => {
            "that is the last admin key; make another admin key before revoking or demoting it"
                .into()
        }
        "key_revoked" => "the API key behind this terminal was revoked or demoted".into(),
        "session_gone" => "the session has ended and its output is no longer served".into(),
        "session_not_found" => "there is no such session".into(),
        "runner_not_ready" => format!("the session's runner has not started yet; try again{wait}"),
        _ => format!("the server refused: {message}"),
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> Error {
        Error::Api { status, code: code.into(), message: "m".into(), retry_after: Some(4) }
    }

    #[test]
    fn refusals_get_their_own_exit_codes() {
        assert_eq!(outcome_of(&api(401, "invalid_api_key")), Outcome::Denied);
        assert_eq!(outcome_of(&api(403, "forbidden")), Outcome::Denied);
        assert_eq!(outcome_of(&api(404, "not_found")), Outcome::Refused);
        assert_eq!(outcome_of(&api(400, "invalid_ttl")), Outcome::Refused);
        assert_eq!(outcome_of(&api(429, "rate_limited")), Outcome::Unavailable);
        assert_eq!(outcome_of(&api(503, "storage_unavailable")), Outcome::Unavailable);
        assert_eq!(outcome_of(&Error::BadUrl("x".into())), Outcome::Config);
    }

    #[test]
    fn codes_become_sentences() {
        assert!(sentence(&api(401, "invalid_api_key")).contains("cliscale login"));
        assert!(sentence(&api(429, "rate_limited")).ends_with("in 4 s"));
        assert_eq!(sentence(&api(400, "invalid_ttl")), "the server refused: m");
    }

    #[test]
    fn the_codes_are_distinct() {
        let all = [
            Outcome::Usage,
            Outcome::Refused,
            Outcome::Unavailable,
            Outcome::Local,
            Outcome::Denied,
            Outcome::Config,
        ];
        let codes: std::collections::BTreeSet<i32> = all.iter().map(|o| o.code()).collect();
        assert_eq!(codes.len(), all.len());
    }
}
