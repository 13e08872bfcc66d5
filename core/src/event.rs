//! What a runner reports to whoever launched it, on a channel of its own: never parsed out of
//! its log lines, which carry free text. Locally the channel is a pipe the executor hands the
//! runner (`--events-fd`); on a cluster the final event is the container's termination message,
//! which the kubelet copies into the pod's status. docs/architecture.md shows both paths.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::protocol::SessionStatus;

/// Most bytes a container's termination message may hold (the kubelet cuts the rest).
pub const TERMINATION_MESSAGE_MAX: usize = 4096;

/// The key that seals one session's final event. In a pod the command shares the runner's user
/// and can write the termination message file itself; only the runner holds this key (the
/// command never sees the runner's environment or memory), so only the runner's event is
/// believed.
pub type StatusKey = [u8; 32];

/// The line a seal adds after the event: `seal <HMAC-SHA256, base64url>` and a newline.
const SEAL_PREFIX: &str = "seal ";
const SEAL_LEN: usize = SEAL_PREFIX.len() + 43 + 1;

/// Derives a session's status key from a secret of the operator's and the session's uid, so the
/// operator needs to store nothing to check it and a key opens one session's events only. Pure.
pub fn status_key(secret: &[u8], session_uid: &str) -> StatusKey {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"cliscale status key\0");
    mac.update(session_uid.as_bytes());
    mac.finalize().into_bytes().into()
}

/// A status key as it travels in the runner's environment (base64url). Pure.
pub fn encode_status_key(key: &StatusKey) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// Reads a status key written by [`encode_status_key`]. Pure.
pub fn decode_status_key(text: &str) -> Option<StatusKey> {
    URL_SAFE_NO_PAD.decode(text.trim()).ok()?.try_into().ok()
}

fn seal_of(key: &StatusKey, body: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body.as_bytes());
    mac
}

/// One event, sent as one line of JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum RunnerEvent {
    /// The terminal server listens at `addr` (`host:port`).
    Listening { addr: String },
    /// The command runs in its PTY.
    Started { pid: i32 },
    /// The session is over: phase, typed reason, message and exit code, and the last lines of
    /// its output as text (at most [`crate::output::STATUS_TAIL_BYTES`]).
    Finished {
        #[serde(flatten)]
        status: SessionStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_tail: Option<String>,
    },
}

impl RunnerEvent {
    /// The event as one line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("runner events serialize");
        line.push('\n');
        line
    }

    /// Parses one line; `None` for anything that is not an event.
    pub fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line.trim()).ok()
    }

    /// The final event of a session.
    pub fn finished(status: SessionStatus, output_tail: Option<String>) -> Self {
        Self::Finished { status, output_tail }
    }

    /// The event as a termination message sealed with `key`: at most
    /// [`TERMINATION_MESSAGE_MAX`] bytes, the event's line and then its seal's.
    pub fn to_sealed_termination_message(&self, key: &StatusKey) -> String {
        let mut message = self.fit(TERMINATION_MESSAGE_MAX - SEAL_LEN);
        let seal = URL_SAFE_NO_PAD.encode(seal_of(key, &message).finalize().into_bytes());
        message.push_str(SEAL_PREFIX);
        message.push_str(&seal);
        message.push('\n');
        message
    }

    /// The event of a termination message whose seal one of `keys` made; `None` for an unsealed
    /// message, a forged or altered one, or anything that is not an event.
    pub fn open_sealed(message: &str, keys: &[StatusKey]) -> Option<Self> {
        let (body, seal) = message.strip_suffix('\n')?.rsplit_once('\n')?;
        let body = &message[..body.len() + 1];
        let seal = URL_SAFE_NO_PAD.decode(seal.strip_prefix(SEAL_PREFIX)?).ok()?;
        // verify_slice compares in constant time.
        keys.iter().any(|key| seal_of(key, body).verify_slice(&seal).is_ok()).then_some(())?;
        Self::parse(body)
    }

    /// The event as an unsealed termination message: at most [`TERMINATION_MESSAGE_MAX`] bytes,
    /// cutting the output tail's start and then the status message (never the JSON) when it is
    /// too long.
    pub fn to_termination_message(&self) -> String {
        self.fit(TERMINATION_MESSAGE_MAX)
    }

    fn fit(&self, max: usize) -> String {
        let line = self.to_line();
        if line.len() <= max {
            return line;
        }
        let Self::Finished { status, output_tail } = self else { return line };
        let bare = Self::finished(status.clone(), None).to_line();
        let mut status = status.clone();
        let room = max.saturating_sub(bare.len() + 64);
        if bare.len() <= max - 64 {
            // Escaping may grow the tail up to six times: cut it to fit as encoded.
            let tail = output_tail.clone().unwrap_or_default();
            let mut from = 0;
            while serde_json::to_string(&tail[from..]).map_or(0, |j| j.len()) > room {
                from += 1;
                while !tail.is_char_boundary(from) {
                    from += 1;
                }
            }
            return Self::finished(status, Some(tail[from..].to_owned())).to_line();
        }
        let message = status.message.take().unwrap_or_default();
        let room = max.saturating_sub(Self::finished(status.clone(), None).to_line().len() + 64);
        let mut cut = room.min(message.len());
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        status.message = Some(format!("{}…", &message[..cut]));
        Self::finished(status, None).to_line()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase::{SessionPhase, TerminalReason};

    fn finished(message: &str) -> RunnerEvent {
        RunnerEvent::finished(
            SessionStatus {
                phase: SessionPhase::Failed,
                exit_code: Some(137),
                reason: Some(TerminalReason::Signaled),
                message: Some(message.into()),
            },
            None,
        )
    }

    #[test]
    fn events_round_trip_as_lines() {
        for event in [
            RunnerEvent::Listening { addr: "127.0.0.1:7681".into() },
            RunnerEvent::Started { pid: 42 },
            finished("the command was killed by signal 9"),
        ] {
            let line = event.to_line();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(RunnerEvent::parse(&line), Some(event));
        }
        let line = finished("x").to_line();
        assert!(line.contains(r#""event":"finished""#) && line.contains(r#""exitCode":137"#));
        assert_eq!(RunnerEvent::parse(r#"{"message":"session finished"}"#), None);
        assert_eq!(RunnerEvent::parse("not json"), None);
    }

    #[test]
    fn only_the_sessions_key_opens_a_sealed_event() {
        let key = status_key(b"operator secret", "uid-1");
        let event = finished("the command was killed by signal 9");
        let sealed = event.to_sealed_termination_message(&key);
        assert_eq!(RunnerEvent::open_sealed(&sealed, &[key]), Some(event.clone()));
        // Any of several keys (a rotated secret) opens it.
        let other = status_key(b"operator secret", "uid-2");
        assert_eq!(RunnerEvent::open_sealed(&sealed, &[other, key]), Some(event.clone()));
        // Another session's key, another secret's, none, or no seal at all: not believed.
        assert_eq!(RunnerEvent::open_sealed(&sealed, &[other]), None);
        assert_eq!(RunnerEvent::open_sealed(&sealed, &[status_key(b"x", "uid-1")]), None);
        assert_eq!(RunnerEvent::open_sealed(&sealed, &[]), None);
        assert_eq!(RunnerEvent::open_sealed(&event.to_termination_message(), &[key]), None);
        // An altered event keeps no seal: the command rewrote its exit reason.
        let forged = sealed.replace("Signaled", "Completed");
        assert_ne!(forged, sealed);
        assert_eq!(RunnerEvent::open_sealed(&forged, &[key]), None);
        // A seal moved onto another body fails, and so do cut or garbled seals.
        let seal_line = &sealed[sealed[..sealed.len() - 1].rfind('\n').unwrap() + 1..];
        let moved = format!("{}{seal_line}", finished("other").to_line());
        assert_eq!(RunnerEvent::open_sealed(&moved, &[key]), None);
        for bad in [&sealed[..sealed.len() - 2], "seal \n", "", "\n\n", "{}\nseal !!!\n"] {
            assert_eq!(RunnerEvent::open_sealed(bad, &[key]), None, "{bad:?}");
        }
        assert_eq!(decode_status_key(&encode_status_key(&key)), Some(key));
        assert_eq!(decode_status_key("short"), None);
        // A long event still fits, seal included.
        let long = finished(&"é".repeat(5000)).to_sealed_termination_message(&key);
        assert!(long.len() <= TERMINATION_MESSAGE_MAX, "{}", long.len());
        assert!(RunnerEvent::open_sealed(&long, &[key]).is_some());
    }

    #[test]
    fn a_long_message_is_cut_to_fit_a_termination_message() {
        let long = finished(&"é".repeat(5000));
        let message = long.to_termination_message();
        assert!(message.len() <= TERMINATION_MESSAGE_MAX, "{}", message.len());
        let RunnerEvent::Finished { status, .. } = RunnerEvent::parse(&message).unwrap() else {
            panic!("not a finished event")
        };
        assert_eq!(status.reason, Some(TerminalReason::Signaled));
        assert!(status.message.unwrap().ends_with('…'));
        let short = finished("short");
        assert_eq!(short.to_termination_message(), short.to_line());
    }

    #[test]
    fn a_long_tail_loses_its_start_first() {
        let RunnerEvent::Finished { status, .. } = finished("why") else { unreachable!() };
        let tail = format!("{}\nlast line", "\u{1}é\"".repeat(400));
        let event = RunnerEvent::finished(status.clone(), Some(tail.clone()));
        let message = event.to_termination_message();
        assert!(message.len() <= TERMINATION_MESSAGE_MAX, "{}", message.len());
        let Some(RunnerEvent::Finished { status: got, output_tail: Some(kept) }) =
            RunnerEvent::parse(&message)
        else {
            panic!("not a finished event with a tail: {message}")
        };
        assert_eq!(got, status);
        assert!(tail.ends_with(&kept) && kept.len() > 1000, "{}", kept.len());
        let line = RunnerEvent::finished(status, Some("ok".into())).to_line();
        assert!(line.contains(r#""outputTail":"ok""#), "{line}");
    }
}
