//! Attaching this terminal to a session: raw mode, input and resizes out, output in, a detach
//! key sequence, and the session's exit code back.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use cliscale_client::OutputRange;
use cliscale_client::terminal::{AttachOptions, Closer, Input, Terminal, TerminalEvent};
use cliscale_core::SessionPhase;
use cliscale_core::protocol::SessionStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Globals;
use crate::fail::{Failure, Outcome};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  cliscale attach SESSION\n  cliscale attach --from-start --read-only SESSION\n\n\
    Output starts at the end of what the session has printed so far (--from-start replays it all).\n\
    Ctrl-C goes to the session's program; the detach keys (Ctrl-P Ctrl-Q) leave it running."
)]
pub struct AttachArgs {
    pub id: String,
    /// Start from this offset of the session's output.
    #[arg(long, conflicts_with = "from_start")]
    pub since: Option<u64>,
    /// Replay everything the session has printed.
    #[arg(long)]
    pub from_start: bool,
    /// Watch only: nothing typed is sent.
    #[arg(long)]
    pub read_only: bool,
    #[command(flatten)]
    pub keys: DetachKeysArg,
}

#[derive(clap::Args, Clone)]
pub struct DetachKeysArg {
    /// The keys that detach, leaving the session running: comma-separated `ctrl-<letter>`, or
    /// single characters; `none` for no detach keys.
    #[arg(long, default_value = "ctrl-p,ctrl-q", value_parser = parse_detach_keys)]
    pub detach_keys: DetachKeys,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachKeys(pub Vec<u8>);

/// `ctrl-p,ctrl-q` as the bytes a terminal sends for them. Pure.
pub fn parse_detach_keys(raw: &str) -> Result<DetachKeys, String> {
    if raw == "none" {
        return Ok(DetachKeys(Vec::new()));
    }
    raw.split(',')
        .map(|key| {
            let key = key.trim();
            if let Some(letter) = key.strip_prefix("ctrl-") {
                let c = letter.chars().next().filter(|_| letter.len() == 1);
                match c.map(|c| c.to_ascii_lowercase()) {
                    Some(c @ 'a'..='z') => Ok(c as u8 - b'a' + 1),
                    Some('@') => Ok(0),
                    Some('[') => Ok(0x1b),
                    Some('\\') => Ok(0x1c),
                    Some(']') => Ok(0x1d),
                    Some('^') => Ok(0x1e),
                    Some('_') => Ok(0x1f),
                    _ => Err(format!("{key:?} is not ctrl-<letter>")),
                }
            } else if key.len() == 1 && key.is_ascii() {
                Ok(key.as_bytes()[0])
            } else {
                Err(format!("{key:?} is neither ctrl-<letter> nor one character"))
            }
        })
        .collect::<Result<Vec<u8>, String>>()
        .map(DetachKeys)
}

/// Finds the detach sequence in typed input. A partial match at the end of one read is held
/// back until the next shows whether it continues; bytes that turn out not to be the sequence
/// are sent on unchanged.
#[derive(Debug, Default)]
pub struct DetachDetector {
    sequence: Vec<u8>,
    matched: usize,
}

impl DetachDetector {
    pub fn new(keys: &DetachKeys) -> Self {
        Self { sequence: keys.0.clone(), matched: 0 }
    }

    /// What to send of `input`, and whether the sequence was completed (what follows it in this
    /// read is dropped, as the terminal is leaving). Pure but for `self`.
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        if self.sequence.is_empty() {
            return (input.to_vec(), false);
        }
        let mut out = Vec::with_capacity(input.len());
        for &byte in input {
            if byte == self.sequence[self.matched] {
                self.matched += 1;
                if self.matched == self.sequence.len() {
                    self.matched = 0;
                    return (out, true);
                }
                continue;
            }
            // Not the sequence after all: what was held goes out first, and this byte may start
            // a new match.
            out.extend_from_slice(&self.sequence[..self.matched]);
            self.matched = 0;
            if byte == self.sequence[0] {
                self.matched = 1;
            } else {
                out.push(byte);
            }
        }
        (out, false)
    }
}

/// The local terminal in raw mode for as long as this lives: keys (Ctrl-C included) go to the
/// session's program, not to this process.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enable() -> Result<Self, Failure> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(stdin.as_fd())
            .map_err(|e| Failure::local("reading the terminal's settings", e))?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw)
            .map_err(|e| Failure::local("switching the terminal to raw mode", e))?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        let _ = rustix::termios::tcsetattr(
            stdin.as_fd(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

fn local_size() -> Option<(u16, u16)> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout().as_fd())
        .or_else(|_| rustix::termios::tcgetwinsize(std::io::stdin().as_fd()))
        .ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

/// The local terminal's size, where there is one.
pub fn terminal_size() -> Option<(u16, u16)> {
    if std::io::stdout().is_terminal() || std::io::stdin().is_terminal() {
        local_size()
    } else {
        None
    }
}

pub async fn attach_command(args: AttachArgs, globals: &Globals) -> Result<i32, Failure> {
    let client = globals.client()?;
    let since = match (args.since, args.from_start) {
        (Some(since), _) => since,
        (None, true) => 0,
        // The stored end: what is printed from here on, as `docker attach` shows.
        (None, false) => {
            let range = OutputRange { since: Some(0), until: Some(0), text: false };
            client.output(&args.id, range).await?.0.end
        }
    };
    let options = AttachOptions { since, read_only: args.read_only, ..Default::default() };
    let terminal = Terminal::attach(&client, &args.id, options).await?;
    attach(&args.id, terminal, options.read_only, &args.keys.detach_keys).await
}

/// Relays between this terminal and the session until it ends (its exit code) or the user
/// detaches (0).
pub async fn attach(
    id: &str,
    mut terminal: Terminal,
    read_only: bool,
    keys: &DetachKeys,
) -> Result<i32, Failure> {
    let interactive = std::io::stdin().is_terminal();
    let _raw = if interactive { Some(RawMode::enable()?) } else { None };
    let input = terminal.input();
    let detached = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if !read_only {
        let detector = DetachDetector::new(keys);
        tokio::spawn(forward_stdin(input.clone(), terminal.closer(), detector, detached.clone()));
        if interactive {
            tokio::spawn(forward_resizes(input.clone()));
        }
    }
    if interactive {
        let how = if keys.0.is_empty() {
            String::new()
        } else {
            "; the detach keys leave it running".into()
        };
        notice(&format!("attached to {id}{how}"));
    }
    let mut stdout = tokio::io::stdout();
    let mut last: Option<SessionStatus> = None;
    let mut outage = false;
    let mut sized = false;
    while let Some(event) = terminal.next().await {
        match event.map_err(Failure::from)? {
            TerminalEvent::Hello { status, .. } => {
                if outage {
                    notice("reconnected");
                    outage = false;
                }
                if !sized && !read_only {
                    sized = true;
                    if let Some((cols, rows)) = terminal_size() {
                        let _ = input.send(Input::Resize { cols, rows }).await;
                    }
                }
                last = Some(status);
            }
            TerminalEvent::Output { data, .. } => {
                stdout.write_all(&data).await.map_err(|e| Failure::local("writing output", e))?;
                stdout.flush().await.map_err(|e| Failure::local("writing output", e))?;
            }
            TerminalEvent::Gap { from, to } => {
                notice(&format!(
                    "{} bytes of output were lost before they could be shown",
                    to - from
                ));
            }
            // The final status follows the last byte of output: nothing is left to show, so
            // the runner's linger is not waited out.
            TerminalEvent::Status(status) if status.phase.is_finished() => {
                terminal.closer().close();
                return Ok(exit_code(Some(&status)));
            }
            TerminalEvent::Status(status) => last = Some(status),
            TerminalEvent::Refused { code, message } => {
                if code != "not_running" {
                    notice(&format!("the session refused input: {message}"));
                }
            }
            TerminalEvent::Reconnecting { why, .. } => {
                if !outage {
                    notice(&format!("{why}; reconnecting"));
                    outage = true;
                }
            }
            TerminalEvent::Closed { code, reason } => {
                if detached.load(std::sync::atomic::Ordering::Acquire) {
                    notice(&format!("detached from {id}; `cliscale attach {id}` returns to it"));
                    return Ok(0);
                }
                if code == 4401 {
                    return Err(Failure::new(
                        Outcome::Denied,
                        format!("access was revoked ({reason})"),
                    ));
                }
                return Ok(exit_code(last.as_ref()));
            }
        }
    }
    Err(Failure::new(Outcome::Unavailable, "the terminal connection ended unexpectedly"))
}

/// The exit code for a session that ended with `status`: its own, or 1 when it ended without
/// one (lost, cancelled before it started, refused by the cluster). Pure.
pub fn exit_code(status: Option<&SessionStatus>) -> i32 {
    match status {
        Some(s) if s.phase == SessionPhase::Succeeded => s.exit_code.unwrap_or(0).clamp(0, 255),
        Some(s) => s.exit_code.filter(|c| *c != 0).map(|c| c.clamp(1, 255)).unwrap_or(1),
        None => 1,
    }
}

/// A line of cliscale's own on the terminal, kept apart from the session's output. `\r\n`
/// because a raw terminal does not turn `\n` into a new line.
fn notice(text: &str) {
    eprint!("\r\n[cliscale: {text}]\r\n");
}

async fn forward_stdin(
    input: tokio::sync::mpsc::Sender<Input>,
    closer: Closer,
    mut detector: DetachDetector,
    detached: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return, // end of input: the session goes on, output still shows
            Ok(n) => n,
        };
        let (bytes, detach) = detector.feed(&buf[..n]);
        if !bytes.is_empty() && input.send(Input::Bytes(bytes)).await.is_err() {
            return;
        }
        if detach {
            detached.store(true, std::sync::atomic::Ordering::Release);
            closer.close();
            return;
        }
    }
}

async fn forward_resizes(input: tokio::sync::mpsc::Sender<Input>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut winch) = signal(SignalKind::window_change()) else {
        return;
    };
    while winch.recv().await.is_some() {
        if let Some((cols, rows)) = local_size()
            && input.send(Input::Resize { cols, rows }).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cliscale_core::TerminalReason;

    #[test]
    fn detach_keys_parse_to_what_a_terminal_sends() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap().0, vec![0x10, 0x11]);
        assert_eq!(parse_detach_keys("ctrl-a,d").unwrap().0, vec![0x01, b'd']);
        assert_eq!(parse_detach_keys("none").unwrap().0, Vec::<u8>::new());
        assert!(parse_detach_keys("ctrl-pq").is_err());
        assert!(parse_detach_keys("alt-x").is_err());
    }

    #[test]
    fn the_sequence_detaches_and_everything_else_passes() {
        let keys = parse_detach_keys("ctrl-p,ctrl-q").unwrap();
        let mut d = DetachDetector::new(&keys);
        assert_eq!(d.feed(b"ls\r"), (b"ls\r".to_vec(), false));
        // Ctrl-P alone is held, then sent when the next key is not Ctrl-Q.
        assert_eq!(d.feed(&[0x10]), (vec![], false));
        assert_eq!(d.feed(b"x"), (vec![0x10, b'x'], false));
        // Ctrl-P Ctrl-P Ctrl-Q: the first is sent, the pair detaches.
        assert_eq!(d.feed(&[b'a', 0x10, 0x10, 0x11, b'z']), (vec![b'a', 0x10], true));
        // Split across reads.
        assert_eq!(d.feed(&[0x10]), (vec![], false));
        assert_eq!(d.feed(&[0x11]), (vec![], true));
    }

    #[test]
    fn ctrl_c_is_sent_on_not_taken() {
        let mut d = DetachDetector::new(&parse_detach_keys("ctrl-p,ctrl-q").unwrap());
        assert_eq!(d.feed(&[0x03]), (vec![0x03], false));
    }

    #[test]
    fn the_exit_code_is_the_sessions() {
        let ended = |reason, code| SessionStatus::finished(reason, code, None);
        let mut ok = ended(TerminalReason::Exited, 0);
        ok.phase = SessionPhase::Succeeded;
        assert_eq!(exit_code(Some(&ok)), 0);
        let mut three = ended(TerminalReason::Exited, 3);
        three.phase = SessionPhase::Failed;
        assert_eq!(exit_code(Some(&three)), 3);
        let mut killed = ended(TerminalReason::Signaled, 137);
        killed.phase = SessionPhase::Failed;
        assert_eq!(exit_code(Some(&killed)), 137);
        let lost = SessionStatus::new(SessionPhase::Lost);
        assert_eq!(exit_code(Some(&lost)), 1);
        assert_eq!(exit_code(None), 1);
    }
}
