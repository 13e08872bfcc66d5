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
    #[error("mode {0:?} is not view or interact")]
    BadMode(String),
}

impl ProtocolError {
    /// The stable machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ShortOutputFrame => "short_frame",
            Self::BadMessage(_) => "bad_message",
            Self::MessageTooLarge(_) => "message_too_large",
            Self::BadResize { .. } => "bad_resize",
            Self::BadMode(_) => "bad_mode",
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

    /// The final status of a session that ended for `reason` with exit code `code`.
    pub fn finished(reason: TerminalReason, code: i32, message: Option<String>) -> Self {
        Self {
            phase: crate::phase::finished_phase(reason, Some(code)),
            exit_code: Some(code),
            reason: Some(reason),
            message,
        }
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
        /// How long the command has run (until its end, once it ended), in whole seconds;
        /// absent before it starts. A duration, not a time: clients' clocks need not agree.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        elapsed_secs: Option<u64>,
    },
    /// Bytes `[from, to)` were evicted from the log before this client read them.
    Gap { from: u64, to: u64 },
    /// The session's status changed.
    Status(SessionStatus),
    /// A client frame was rejected; the connection stays open.
    Error { code: String, message: String },
    /// From the gateway, first on every connection: the credential for the next connection
    /// after a drop (docs/protocol.md, "Reconnecting").
    Reconnect { token: String },
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

/// WebSocket close codes sent by the runner and the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// The session ended and the runner is shutting down.
    SessionEnded,
    /// The gateway is shutting down; the session goes on, so reconnect.
    GoingAway,
    /// A client message was over the size limit.
    MessageTooBig,
    /// The gateway lost its connection to the runner.
    RunnerLost,
    /// The client answered no ping for three intervals.
    KeepaliveTimeout,
    /// The client could not take output fast enough.
    TooSlow,
    /// The API key the token was minted for was revoked, deleted or demoted: the terminal ends
    /// and its reconnect token opens nothing.
    AccessRevoked,
}

impl CloseCode {
    pub const ALL: [CloseCode; 7] = [
        Self::SessionEnded,
        Self::GoingAway,
        Self::MessageTooBig,
        Self::RunnerLost,
        Self::KeepaliveTimeout,
        Self::TooSlow,
        Self::AccessRevoked,
    ];

    pub fn code(self) -> u16 {
        match self {
            Self::SessionEnded => 1000,
            Self::GoingAway => 1001,
            Self::MessageTooBig => 1009,
            Self::RunnerLost => 1011,
            Self::KeepaliveTimeout => 4000,
            Self::TooSlow => 4008,
            Self::AccessRevoked => 4401,
        }
    }

    /// The close frame's reason text.
    pub fn reason(self) -> &'static str {
        match self {
            Self::SessionEnded => "session ended",
            Self::GoingAway => "gateway shutting down",
            Self::MessageTooBig => "message too big",
            Self::RunnerLost => "runner connection lost",
            Self::KeepaliveTimeout => "keepalive timeout",
            Self::TooSlow => "client too slow",
            Self::AccessRevoked => "access revoked",
        }
    }

    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// Whether a connection may type, or only watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Interact,
    View,
}

impl AttachMode {
    /// The `mode` query parameter: absent means interact; anything but `view` or `interact` is
    /// refused (`bad_mode`), by the gateway and the runner alike.
    pub fn parse(raw: Option<&str>) -> Result<Self, ProtocolError> {
        match raw {
            None | Some("interact") => Ok(Self::Interact),
            Some("view") => Ok(Self::View),
            Some(other) => Err(ProtocolError::BadMode(other.to_owned())),
        }
    }

    /// A connection is read-only when its token only views or it asked to only view.
    pub fn read_only(self, scope: crate::token::TokenScope) -> bool {
        self == Self::View || scope == crate::token::TokenScope::View
    }
}

/// The credential of a request, by one rule for every hop: an `Authorization: Bearer` header
/// wins over a `token` query parameter (a browser's WebSocket cannot set headers, so it uses the
/// query; a hop that can set the header is never overridden by a query it forwards). Empty when
/// neither is present.
pub fn credential<'a>(authorization: Option<&'a str>, query_token: Option<&'a str>) -> &'a str {
    let bearer = authorization.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    bearer.filter(|t| !t.is_empty()).or(query_token).unwrap_or("")
}

/// Every refusal's JSON body, from the REST API, the gateway and the runner alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Error))]
pub struct ErrorBody {
    /// Stable machine-readable code (docs/api.md and docs/protocol.md list them).
    pub error: String,
    /// What happened, for a person.
    pub message: String,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        Self { error: error.into(), message: message.into() }
    }
}

/// Server-Sent Events of the log: event names and the `output` event's data.
pub mod sse {
    use base64::Engine;
    use serde::{Deserialize, Serialize};

    pub const HELLO: &str = "hello";
    pub const OUTPUT: &str = "output";
    pub const GAP: &str = "gap";
    pub const STATUS: &str = "status";

    /// The `output` event's data: the chunk's first offset and its bytes in base64.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct OutputData {
        pub offset: u64,
        pub data: String,
    }

    impl OutputData {
        pub fn new(offset: u64, bytes: &[u8]) -> Self {
            Self { offset, data: base64::engine::general_purpose::STANDARD.encode(bytes) }
        }

        pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
            base64::engine::general_purpose::STANDARD.decode(&self.data)
        }
    }
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
    fn modes_credentials_and_close_codes_follow_one_rule() {
        use crate::token::TokenScope;
        assert_eq!(AttachMode::parse(None), Ok(AttachMode::Interact));
        assert_eq!(AttachMode::parse(Some("view")), Ok(AttachMode::View));
        assert_eq!(AttachMode::parse(Some("View")).unwrap_err().code(), "bad_mode");
        assert!(AttachMode::Interact.read_only(TokenScope::View));
        assert!(AttachMode::View.read_only(TokenScope::Interact));
        assert!(!AttachMode::Interact.read_only(TokenScope::Interact));
        assert_eq!(credential(Some("Bearer h"), Some("q")), "h");
        assert_eq!(credential(Some("Basic x"), Some("q")), "q");
        assert_eq!(credential(Some("Bearer "), Some("q")), "q");
        assert_eq!(credential(None, None), "");
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
        }
        let out = sse::OutputData::new(7, b"\x00\xffhi");
        assert_eq!(out.bytes().unwrap(), b"\x00\xffhi");
        let reconnect = serde_json::to_value(ServerMessage::Reconnect { token: "t".into() });
        assert_eq!(reconnect.unwrap(), serde_json::json!({"type":"reconnect","token":"t"}));
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
        let hello = |elapsed_secs| ServerMessage::Hello {
            session_id: "s".into(),
            read_only: false,
            log_start: 0,
            log_end: 0,
            status: SessionStatus::new(SessionPhase::Running),
            elapsed_secs,
        };
        assert_eq!(serde_json::to_value(hello(Some(75))).unwrap()["elapsedSecs"], 75);
        assert!(serde_json::to_value(hello(None)).unwrap().get("elapsedSecs").is_none());
        let gap = serde_json::to_value(ServerMessage::Gap { from: 1, to: 9 }).unwrap();
        assert_eq!(gap, serde_json::json!({"type":"gap","from":1,"to":9}));
    }
}
