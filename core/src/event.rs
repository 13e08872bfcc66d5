//! What a runner reports to whoever launched it, on a channel of its own: never parsed out of
//! its log lines, which carry free text. Locally the channel is a pipe the executor hands the
//! runner (`--events-fd`); on a cluster the final event is the container's termination message,
//! which the kubelet copies into the pod's status. docs/architecture.md shows both paths.

use serde::{Deserialize, Serialize};

use crate::protocol::SessionStatus;

/// Most bytes a container's termination message may hold (the kubelet cuts the rest).
pub const TERMINATION_MESSAGE_MAX: usize = 4096;

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

    /// The event as a termination message: at most [`TERMINATION_MESSAGE_MAX`] bytes, cutting
    /// the output tail's start and then the status message (never the JSON) when it is too long.
    pub fn to_termination_message(&self) -> String {
        let line = self.to_line();
        if line.len() <= TERMINATION_MESSAGE_MAX {
            return line;
        }
        let Self::Finished { status, output_tail } = self else { return line };
        let bare = Self::finished(status.clone(), None).to_line();
        let mut status = status.clone();
        let room = TERMINATION_MESSAGE_MAX.saturating_sub(bare.len() + 64);
        if bare.len() <= TERMINATION_MESSAGE_MAX - 64 {
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
        let room = TERMINATION_MESSAGE_MAX
            .saturating_sub(Self::finished(status.clone(), None).to_line().len() + 64);
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
