//! The terminal wire protocol, spoken over WebSocket between browser, gateway and runner.
//! docs/protocol.md is the reference; this module is its executable form.
//!
//! - Server -> client binary frame: 8-byte big-endian offset of the first byte, then output bytes.
//! - Server -> client text frame: a JSON [`ServerMessage`].
//! - Client -> server binary frame: raw input bytes for the PTY.
//! - Client -> server text frame: a JSON [`ClientMessage`].

use serde::{Deserialize, Serialize};

use crate::phase::{SessionPhase, TerminalReason};

/// Length of the offset header on every output frame.
pub const OUTPUT_HEADER_LEN: usize = 8;

/// Largest terminal dimension accepted in a resize (either axis).
pub const MAX_TERMINAL_DIMENSION: u16 = 1000;

/// Largest text control message accepted from a client, in bytes.
pub const MAX_CLIENT_TEXT_LEN: usize = 64 * 1024;

/// Protocol errors, each with a stable code sent back to the client in an `error` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("output frame shorter than its {OUTPUT_HEADER_LEN}-byte offset header")]
    ShortOutputFrame,
    #[error("control message is not valid JSON for this protocol: {0}")]
    BadMessage(String),
    #[error("control message of {0} bytes exceeds the {MAX_CLIENT_TEXT_LEN}-byte limit")]
    MessageTooLarge(usize),
    #[error("resize to {cols}x{rows} is out of range (1..={MAX_TERMINAL_DIMENSION} each)")]
    BadResize { cols: u16, rows: u16 },
}

impl ProtocolError {
    /// The stable machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ShortOutputFrame => "short_frame",
            Self::BadMessage(_) => "bad_message",
            Self::MessageTooLarge(_) => "message_too_large",
            Self::BadResize { .. } => "bad_resize",
        }
    }
}

/// Builds an output frame: offset header followed by the bytes.
pub fn encode_output(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(OUTPUT_HEADER_LEN + data.len());
    frame.extend_from_slice(&offset.to_be_bytes());
    frame.extend_from_slice(data);
    frame
}

/// Splits an output frame into its offset and bytes.
pub fn decode_output(frame: &[u8]) -> Result<(u64, &[u8]), ProtocolError> {
    if frame.len() < OUTPUT_HEADER_LEN {
        return Err(ProtocolError::ShortOutputFrame);
    }
    let (head, data) = frame.split_at(OUTPUT_HEADER_LEN);
    let offset = u64::from_be_bytes(head.try_into().expect("split at header length"));
    Ok((offset, data))
}

/// A session's phase and, once finished, how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    pub phase: SessionPhase,
    pub exit_code: Option<i32>,
    pub reason: Option<TerminalReason>,
    pub message: Option<String>,
}

impl SessionStatus {
    pub fn new(phase: SessionPhase) -> Self {
        Self { phase, exit_code: None, reason: None, message: None }
    }
}

/// Control messages from server to client (text frames).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ServerMessage {
    /// First message on every connection.
    Hello {
        session_id: String,
        /// True when this connection's input is ignored.
        read_only: bool,
        /// Oldest offset the log still holds.
        log_start: u64,
        /// Offset of the next byte the command will write.
        log_end: u64,
        status: SessionStatus,
    },
    /// Bytes `[from, to)` were evicted from the log before this client read them.
    Gap { from: u64, to: u64 },
    /// The session's status changed.
    Status(SessionStatus),
    /// A client frame was rejected; the connection stays open.
    Error { code: String, message: String },
}

/// Control messages from client to server (text frames).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum ClientMessage {
    /// Text input, for clients that prefer not to send binary frames.
    Input { data: String },
    /// The client's terminal size changed.
    Resize { cols: u16, rows: u16 },
}

/// Parses and validates a client's text frame.
pub fn parse_client_text(text: &str) -> Result<ClientMessage, ProtocolError> {
    if text.len() > MAX_CLIENT_TEXT_LEN {
        return Err(ProtocolError::MessageTooLarge(text.len()));
    }
    let message: ClientMessage =
        serde_json::from_str(text).map_err(|e| ProtocolError::BadMessage(e.to_string()))?;
    if let ClientMessage::Resize { cols, rows } = message {
        validate_size(cols, rows)?;
    }
    Ok(message)
}

/// Checks a terminal size is usable.
pub fn validate_size(cols: u16, rows: u16) -> Result<(), ProtocolError> {
    let ok = |d: u16| (1..=MAX_TERMINAL_DIMENSION).contains(&d);
    if ok(cols) && ok(rows) { Ok(()) } else { Err(ProtocolError::BadResize { cols, rows }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_frames_round_trip_binary_data() {
        let data = [0u8, 255, 27, b'[', b'3', b'1', b'm', 0xc3];
        let frame = encode_output(u64::MAX - 3, &data);
        assert_eq!(decode_output(&frame).unwrap(), (u64::MAX - 3, &data[..]));
        assert_eq!(decode_output(&frame[..7]), Err(ProtocolError::ShortOutputFrame));
    }

    #[test]
    fn client_messages_parse_and_validate() {
        assert_eq!(
            parse_client_text(r#"{"type":"resize","cols":120,"rows":40}"#).unwrap(),
            ClientMessage::Resize { cols: 120, rows: 40 }
        );
        assert_eq!(
            parse_client_text(r#"{"type":"input","data":"ls\r"}"#).unwrap(),
            ClientMessage::Input { data: "ls\r".into() }
        );
        let bad = [
            r#"{"type":"resize","cols":0,"rows":40}"#,
            r#"{"type":"resize","cols":80,"rows":5000}"#,
            r#"{"type":"resize","cols":-1,"rows":40}"#,
            r#"{"type":"input","data":"x","extra":1}"#,
            r#"{"type":"launch"}"#,
            "not json",
            "",
        ];
        for text in bad {
            assert!(parse_client_text(text).is_err(), "{text} should be rejected");
        }
        let huge = format!(r#"{{"type":"input","data":"{}"}}"#, "a".repeat(MAX_CLIENT_TEXT_LEN));
        assert_eq!(parse_client_text(&huge).unwrap_err().code(), "message_too_large");
    }

    #[test]
    fn server_messages_use_camel_case_fields() {
        let json = serde_json::to_value(ServerMessage::Status(SessionStatus {
            phase: SessionPhase::Failed,
            exit_code: Some(3),
            reason: Some(TerminalReason::Exited),
            message: None,
        }))
        .unwrap();
        assert_eq!(json["type"], "status");
        assert_eq!(json["exitCode"], 3);
        assert_eq!(json["phase"], "Failed");
        let gap = serde_json::to_value(ServerMessage::Gap { from: 1, to: 9 }).unwrap();
        assert_eq!(gap, serde_json::json!({"type":"gap","from":1,"to":9}));
    }
}
