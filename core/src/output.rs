//! The output store's contracts: how a runner appends its session's log to the control plane,
//! and the shapes every reader of the stored log shares (docs/api.md, "Output").
//!
//! A runner appends with `POST /api/sessions/{id}/output?offset=N&atMs=T…`, the body the raw
//! bytes `[N, N + len)`. The answer always carries [`END_HEADER`], the offset after the last
//! byte the store holds, so a runner that lost track (a dropped connection, a restarted API)
//! resumes exactly there.

use serde::{Deserialize, Serialize};

/// Audience of the append credential a runner presents to the output store: no terminal
/// verifier accepts it, and it appends only to the session it names.
pub const OUTPUT_AUDIENCE: &str = "cliscale-output";

/// Offset after the last stored byte (appends and reads).
pub const END_HEADER: &str = "cliscale-output-end";
/// First offset of a read's body.
pub const SINCE_HEADER: &str = "cliscale-output-since";
/// Offset after a read's last byte.
pub const UNTIL_HEADER: &str = "cliscale-output-until";
/// Ranges `from-to` inside a read that the store does not hold, comma-separated.
pub const GAPS_HEADER: &str = "cliscale-output-gaps";
/// `true` once the session finished and the store holds its whole log.
pub const COMPLETE_HEADER: &str = "cliscale-output-complete";

/// Largest append the store takes (a runner's batch is at most this).
pub const MAX_APPEND_BYTES: usize = 4 * 1024 * 1024;

/// The API's `outputTail`: the last bytes of the log, as text.
pub const TAIL_BYTES: usize = 4096;
/// The CommandSession status' `outputTail`, short enough for `kubectl describe`.
pub const STATUS_TAIL_BYTES: usize = 1024;

/// The query of an append.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppendQuery {
    /// Offset of the body's first byte.
    pub offset: u64,
    /// When the runner read the body's first byte, in milliseconds on the runner's clock
    /// (since it started the session).
    #[serde(default)]
    pub at_ms: u64,
    /// The runner no longer holds `[gap_from, offset)`: the store records a gap there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_from: Option<u64>,
    /// Resizes of the terminal since the last append ([`Resize::encode_list`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resizes: Option<String>,
    /// Nothing follows the body: the log is complete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closed: bool,
}

/// The terminal was resized when the log's end was at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    pub offset: u64,
    pub at_ms: u64,
    pub cols: u16,
    pub rows: u16,
}

/// Most resizes one append carries; older ones are dropped first (a window dragged about sends
/// hundreds, and only the last size matters to a replay).
pub const MAX_RESIZES_PER_APPEND: usize = 64;

impl Resize {
    /// `offset.atMs.colsxrows`, joined by `,`: small enough for a query string.
    pub fn encode_list(resizes: &[Resize]) -> String {
        let items: Vec<String> = resizes
            .iter()
            .map(|r| format!("{}.{}.{}x{}", r.offset, r.at_ms, r.cols, r.rows))
            .collect();
        items.join(",")
    }

    /// Parses [`Self::encode_list`]'s form; `None` when any item is malformed or out of range.
    pub fn parse_list(raw: &str) -> Option<Vec<Resize>> {
        if raw.is_empty() {
            return Some(Vec::new());
        }
        let list: Option<Vec<Resize>> = raw
            .split(',')
            .map(|item| {
                let (offset, rest) = item.split_once('.')?;
                let (at_ms, size) = rest.split_once('.')?;
                let (cols, rows) = size.split_once('x')?;
                let r = Resize {
                    offset: offset.parse().ok()?,
                    at_ms: at_ms.parse().ok()?,
                    cols: cols.parse().ok()?,
                    rows: rows.parse().ok()?,
                };
                crate::protocol::validate_size(r.cols, r.rows).ok()?;
                Some(r)
            })
            .collect();
        list.filter(|l| l.len() <= MAX_RESIZES_PER_APPEND)
    }
}

/// Terminal output as plain text: escape sequences removed (parsed by `vte`, so one split
/// across two pieces is still removed), CRLF as LF, a lone CR (a redrawn progress line) as LF,
/// tabs kept, other controls dropped, invalid UTF-8 replaced.
#[derive(Default)]
pub struct PlainText {
    parser: vte::Parser,
    text: TextSink,
}

#[derive(Default)]
struct TextSink {
    out: Vec<u8>,
    pending_cr: bool,
}

impl TextSink {
    fn settle_cr(&mut self, next: Option<u8>) {
        // CR CR LF (a program's own CRLF through the terminal's LF-to-CRLF) is one line end.
        if std::mem::take(&mut self.pending_cr) && !matches!(next, Some(b'\n' | b'\r')) {
            self.out.push(b'\n');
        }
    }
}

impl vte::Perform for TextSink {
    fn print(&mut self, c: char) {
        self.settle_cr(None);
        let mut buf = [0; 4];
        self.out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }

    fn execute(&mut self, byte: u8) {
        self.settle_cr(Some(byte));
        match byte {
            b'\n' | b'\t' => self.out.push(byte),
            b'\r' => self.pending_cr = true,
            _ => {}
        }
    }
}

impl PlainText {
    /// Feeds bytes; returns the text they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.parser.advance(&mut self.text, bytes);
        std::mem::take(&mut self.text.out)
    }

    /// What is held back at the end (a carriage return not yet known to be a CRLF).
    pub fn finish(mut self) -> Vec<u8> {
        self.text.settle_cr(None);
        self.text.out
    }
}

/// The plain text of `bytes` (see [`PlainText`]).
pub fn plain_text(bytes: &[u8]) -> String {
    let mut plain = PlainText::default();
    let mut out = plain.feed(bytes);
    out.extend(plain.finish());
    String::from_utf8_lossy(&out).into_owned()
}

/// The last `max` bytes of `bytes` as plain text, starting at a whole character, and at a
/// line's start when one begins in the last quarter. For tails. Pure.
pub fn tail_text(bytes: &[u8], max: usize) -> String {
    // Escapes shrink in the conversion: convert a little more than asked, then cut.
    let from = bytes.len().saturating_sub(max * 2);
    let text = plain_text(&bytes[from..]);
    let mut text = text.trim_end_matches('\n');
    if from > 0 {
        // The first line was cut, perhaps inside an escape: start at the next one.
        text = text.split_once('\n').map_or(text, |(_, rest)| rest);
    }
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = text.len() - max;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    let tail = &text[cut..];
    match tail.find('\n') {
        Some(nl) if nl < max / 4 => tail[nl + 1..].to_owned(),
        _ => tail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizes_round_trip_and_bad_ones_are_refused() {
        let list = vec![
            Resize { offset: 0, at_ms: 0, cols: 80, rows: 24 },
            Resize { offset: 1 << 40, at_ms: 99, cols: 1000, rows: 1 },
        ];
        assert_eq!(Resize::parse_list(&Resize::encode_list(&list)), Some(list));
        assert_eq!(Resize::parse_list(""), Some(vec![]));
        for bad in ["1.2.0x24", "1.2.80", "x", "1.2.80x24,", "-1.2.80x24", "1.2.1001x1"] {
            assert_eq!(Resize::parse_list(bad), None, "{bad}");
        }
        let many = vec![Resize { offset: 1, at_ms: 1, cols: 1, rows: 1 }; 65];
        assert_eq!(Resize::parse_list(&Resize::encode_list(&many)), None);
    }

    #[test]
    fn plain_text_drops_escapes_even_split_across_pieces() {
        let mut plain = PlainText::default();
        let mut out = plain.feed(b"\x1b[1;3");
        out.extend(plain.feed(b"1mred\x1b[0m\r"));
        out.extend(plain.feed(b"\nnext\x1b]0;title\x07 line\r"));
        out.extend(plain.finish());
        assert_eq!(String::from_utf8(out).unwrap(), "red\nnext line\n");
        assert_eq!(plain_text(b"a\r\nb\tc\xff"), "a\nb\tc\u{fffd}");
        assert_eq!(plain_text(b"10%\r20%\r\n\x07"), "10%\n20%\n");
        assert_eq!(plain_text(b"a\r\r\nb"), "a\nb");
    }

    #[test]
    fn tails_are_short_text_from_a_line_start() {
        let mut log = Vec::new();
        for i in 0..500 {
            log.extend_from_slice(format!("\x1b[32mline {i}\x1b[0m\r\n").as_bytes());
        }
        let tail = tail_text(&log, 100);
        assert!(tail.len() <= 100, "{}", tail.len());
        assert!(tail.ends_with("line 499") && tail.starts_with("line "), "{tail:?}");
        assert!(!tail.contains('\x1b') && !tail.contains('\r'));
        assert_eq!(tail_text("é".repeat(100).as_bytes(), 5), "éé");
        assert_eq!(tail_text(b"", 10), "");
    }
}
