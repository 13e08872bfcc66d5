//! How results are printed: aligned tables for people, JSON and YAML for programs. Pure.

use std::time::{Duration, SystemTime};

use cliscale_client::rest::SessionView;
use serde::Serialize;

use crate::fail::Failure;

/// `-o`: the shape of a command's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns for a person.
    Table,
    /// More columns.
    Wide,
    Json,
    Yaml,
}

pub fn render<T: Serialize>(format: Format, value: &T) -> String {
    match format {
        Format::Yaml => serde_norway::to_string(value).expect("serializes"),
        _ => format!("{}\n", serde_json::to_string_pretty(value).expect("serializes")),
    }
}

/// Rows padded to their widest cell, two spaces apart, the last column unpadded.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let last = row.len().saturating_sub(1);
        for (c, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if c < last {
                out.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push('\n');
    }
    out
}

pub const SESSION_HEADER: [&str; 6] = ["ID", "PHASE", "REASON", "EXIT", "AGE", "COMMAND"];
pub const SESSION_WIDE_HEADER: [&str; 4] = ["OWNER", "DURATION", "CREATED", "CODE URL"];

pub fn session_row(s: &SessionView, wide: bool, now: SystemTime) -> Vec<String> {
    let mut row = vec![
        s.session_id.clone(),
        s.phase.as_str().to_owned(),
        s.reason.map(|r| r.as_str().to_owned()).unwrap_or_else(|| "-".into()),
        s.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
        parse_time(&s.created_at).map(|t| age(t, now)).unwrap_or_else(|| "-".into()),
        one_line(&s.command, if wide { 80 } else { 40 }),
    ];
    if wide {
        let duration = match (
            s.started_at.as_deref().and_then(parse_time),
            s.finished_at.as_deref().and_then(parse_time),
        ) {
            (Some(start), Some(end)) => short(end.duration_since(start).unwrap_or_default()),
            (Some(start), None) => short(now.duration_since(start).unwrap_or_default()),
            _ => "-".into(),
        };
        row.extend([
            s.owner.clone(),
            duration,
            s.created_at.clone(),
            s.code_url.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    row
}

pub fn sessions_table(
    sessions: &[SessionView],
    wide: bool,
    header: bool,
    now: SystemTime,
) -> String {
    let mut rows = Vec::new();
    if header {
        let mut h: Vec<String> = SESSION_HEADER.iter().map(|s| s.to_string()).collect();
        if wide {
            h.extend(SESSION_WIDE_HEADER.iter().map(|s| s.to_string()));
        }
        rows.push(h);
    }
    rows.extend(sessions.iter().map(|s| session_row(s, wide, now)));
    table(&rows)
}

/// `kubectl describe`-like detail of one session.
pub fn describe(s: &SessionView) -> String {
    let or_dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
    let mut rows = vec![
        vec!["Session:".into(), s.session_id.clone()],
        vec!["Owner:".into(), s.owner.clone()],
        vec!["Phase:".into(), s.phase.as_str().into()],
        vec!["Reason:".into(), or_dash(s.reason.map(|r| r.as_str()))],
        vec!["Exit code:".into(), or_dash(s.exit_code.map(|c| c.to_string()).as_deref())],
        vec!["Message:".into(), or_dash(s.message.as_deref())],
        vec!["Command:".into(), one_line(&s.command, 200)],
        vec!["Code URL:".into(), or_dash(s.code_url.as_deref())],
        vec![
            "Env:".into(),
            if s.env_names.is_empty() { "-".into() } else { s.env_names.join(", ") },
        ],
        vec!["Created:".into(), s.created_at.clone()],
        vec!["Started:".into(), or_dash(s.started_at.as_deref())],
        vec!["Finished:".into(), or_dash(s.finished_at.as_deref())],
    ];
    if let Some(tail) = s.output_tail.as_deref().filter(|t| !t.is_empty()) {
        rows.push(vec!["Output tail:".into(), String::new()]);
        let mut out = table(&rows);
        for line in tail.lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        return out;
    }
    table(&rows)
}

pub fn parse_time(rfc3339: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(rfc3339).ok()
}

/// `5s`, `3m`, `2h`, `4d`: the largest whole unit.
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn age(t: SystemTime, now: SystemTime) -> String {
    short(now.duration_since(t).unwrap_or_default())
}

/// The first line, cut to `max` characters with an ellipsis.
pub fn one_line(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or_default();
    let more = first.len() < text.trim_end().len();
    let cut: String = first.chars().take(max).collect();
    if more || cut.chars().count() < first.chars().count() { format!("{cut}…") } else { cut }
}

/// A time bound for `--created-after`/`--created-before`: RFC 3339, Unix seconds, or a
/// duration meaning that long ago (`1h`).
pub fn time_bound(raw: &str, now: SystemTime) -> Result<String, Failure> {
    if raw.parse::<i64>().is_ok() || parse_time(raw).is_some() {
        return Ok(raw.to_owned());
    }
    let ago = humantime::parse_duration(raw).map_err(|_| {
        Failure::new(
            crate::fail::Outcome::Usage,
            format!("{raw:?} is neither a time (RFC 3339 or Unix seconds) nor a duration (1h)"),
        )
    })?;
    let at = now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(humantime::format_rfc3339_seconds(at).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![vec!["ID".into(), "PHASE".into()], vec!["abcdef".into(), "Running".into()]];
        assert_eq!(table(&rows), "ID      PHASE\nabcdef  Running\n");
    }

    #[test]
    fn durations_read_in_their_largest_unit() {
        let cases = [(5, "5s"), (59, "59s"), (61, "1m"), (7200, "2h"), (200_000, "2d")];
        for (secs, text) in cases {
            assert_eq!(short(Duration::from_secs(secs)), text);
        }
    }

    #[test]
    fn long_commands_are_cut_to_one_line() {
        assert_eq!(one_line("echo hi", 40), "echo hi");
        assert_eq!(one_line("abcdef", 3), "abc…");
        assert_eq!(one_line("a\nb", 40), "a…");
    }

    #[test]
    fn a_time_bound_is_a_time_or_a_while_ago() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(7200);
        assert_eq!(time_bound("1h", now).unwrap(), "1970-01-01T01:00:00Z");
        assert_eq!(time_bound("1700000000", now).unwrap(), "1700000000");
        assert_eq!(time_bound("2026-01-01T00:00:00Z", now).unwrap(), "2026-01-01T00:00:00Z");
        assert!(time_bound("yesterday", now).is_err());
    }
}
