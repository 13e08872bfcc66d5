//! A program run in a real pseudo-terminal, as a person's shell runs it: the test types into it,
//! reads what it shows, resizes it, and waits for its exit status.

use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::stack::HANG_GUARD;

pub struct PtyProcess {
    pub child: tokio::process::Child,
    writer: pty_process::OwnedWritePty,
    shown: Arc<(Mutex<Vec<u8>>, Notify)>,
    /// How far `expect` has read.
    cursor: usize,
}

impl PtyProcess {
    /// Starts `program` with `args` and `env` on a terminal of `cols` x `rows`.
    pub fn spawn(
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        cols: u16,
        rows: u16,
    ) -> Self {
        let (pty, pts) = pty_process::open().expect("a pseudo-terminal");
        pty.resize(pty_process::Size::new(rows, cols)).unwrap();
        let mut cmd = pty_process::Command::new(program).args(args).kill_on_drop(true);
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let child = cmd.spawn(pts).expect("spawning in the pseudo-terminal");
        let (mut reader, writer) = pty.into_split();
        let shown = Arc::new((Mutex::new(Vec::new()), Notify::new()));
        let sink = shown.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            // EIO once the program and everything it started have closed the terminal.
            while let Ok(n @ 1..) = reader.read(&mut buf).await {
                sink.0.lock().unwrap().extend_from_slice(&buf[..n]);
                sink.1.notify_waiters();
            }
        });
        Self { child, writer, shown, cursor: 0 }
    }

    /// Everything the terminal has shown so far.
    pub fn shown(&self) -> Vec<u8> {
        self.shown.0.lock().unwrap().clone()
    }

    pub fn shown_text(&self) -> String {
        String::from_utf8_lossy(&self.shown()).into_owned()
    }

    /// Waits until `needle` shows after what earlier calls consumed, and moves past it;
    /// answers the text up to and including it.
    pub async fn expect(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            let notified = self.shown.1.notified();
            {
                let shown = self.shown.0.lock().unwrap();
                let rest = &shown[self.cursor..];
                if let Some(at) = find(rest, needle.as_bytes()) {
                    let end = self.cursor + at + needle.len();
                    let text = String::from_utf8_lossy(&shown[self.cursor..end]).into_owned();
                    self.cursor = end;
                    return text;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("{needle:?} never showed; the terminal shows:\n{}", self.shown_text());
            }
        }
    }

    pub async fn type_bytes(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
        self.writer.flush().await.unwrap();
    }

    /// Resizes the terminal; the kernel sends SIGWINCH to the program.
    pub fn resize(&self, cols: u16, rows: u16) {
        self.writer.resize(pty_process::Size::new(rows, cols)).unwrap();
    }

    pub async fn wait(&mut self) -> ExitStatus {
        match tokio::time::timeout(HANG_GUARD, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => {
                panic!("the program never exited; the terminal shows:\n{}", self.shown_text())
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
