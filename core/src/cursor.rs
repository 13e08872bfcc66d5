//! What to send a reader of a session's log next, given what it has seen: the one rule behind
//! the WebSocket stream, Server-Sent Events and the stdout tee. Output always goes before a
//! status, so a status never overtakes the bytes written before it; a reader that attached
//! after the end gets the final status again after the replay. Pure: the caller reads the log
//! and sends; this decides.

use crate::protocol::SessionStatus;

/// What a read of the log at the cursor's offset found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRead<D> {
    /// Bytes starting exactly at the requested offset.
    Data { offset: u64, data: D },
    /// Bytes `[from, to)` were evicted; continue reading at `to`.
    Gap { from: u64, to: u64 },
    /// The reader has everything written so far; `closed` is true once no more will come.
    UpToDate { end: u64, closed: bool },
}

/// When a reader's stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ends {
    /// When the server shuts down (a terminal stays open through the linger).
    OnShutdown,
    /// Once the final status went out after the complete log, or on shutdown (SSE).
    AfterFinalStatus,
    /// Once the log is complete and read (the stdout tee, which takes no status).
    WhenClosed,
}

/// The next thing to do for a reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<D> {
    Output {
        offset: u64,
        data: D,
    },
    Gap {
        from: u64,
        to: u64,
    },
    Status(SessionStatus),
    /// Nothing to send: wait for output, a status change or shutdown.
    Wait,
    End,
}

#[derive(Debug, Clone)]
pub struct LogCursor {
    offset: u64,
    ends: Ends,
    pending: Option<SessionStatus>,
    final_sent: bool,
    shutting_down: bool,
}

impl LogCursor {
    /// A reader starting at `since`.
    pub fn new(since: u64, ends: Ends) -> Self {
        Self { offset: since, ends, pending: None, final_sent: false, shutting_down: false }
    }

    /// The status the reader was greeted with: a finished one is sent again after the replay.
    pub fn greeted(&mut self, status: &SessionStatus) {
        if status.phase.is_finished() {
            self.pending = Some(status.clone());
        }
    }

    /// Where to read next.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The session's status changed; it goes out once the output before it has.
    pub fn status_changed(&mut self, status: SessionStatus) {
        self.pending = Some(status);
    }

    /// The server is shutting down: send what is left, then end.
    pub fn shut_down(&mut self) {
        self.shutting_down = true;
    }

    /// Decides the next step from a read at [`Self::offset`].
    pub fn next<D: AsRef<[u8]>>(&mut self, read: LogRead<D>) -> Step<D> {
        match read {
            LogRead::Data { offset, data } => {
                self.offset = offset + data.as_ref().len() as u64;
                Step::Output { offset, data }
            }
            LogRead::Gap { from, to } => {
                self.offset = to;
                Step::Gap { from, to }
            }
            LogRead::UpToDate { closed, .. } => {
                if let Some(status) = self.pending.take() {
                    self.final_sent = status.phase.is_finished() && closed;
                    return Step::Status(status);
                }
                let done = match self.ends {
                    Ends::OnShutdown => self.shutting_down,
                    Ends::AfterFinalStatus => self.final_sent || self.shutting_down,
                    Ends::WhenClosed => closed,
                };
                if done { Step::End } else { Step::Wait }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase::{SessionPhase, TerminalReason};

    fn done() -> SessionStatus {
        SessionStatus {
            phase: SessionPhase::Failed,
            exit_code: Some(3),
            reason: Some(TerminalReason::Exited),
            message: None,
        }
    }

    fn data(offset: u64, s: &'static str) -> LogRead<&'static [u8]> {
        LogRead::Data { offset, data: s.as_bytes() }
    }

    fn up_to_date(end: u64, closed: bool) -> LogRead<&'static [u8]> {
        LogRead::UpToDate { end, closed }
    }

    #[test]
    fn output_and_gaps_move_the_offset_and_status_waits_for_the_output() {
        let mut c = LogCursor::new(0, Ends::OnShutdown);
        c.status_changed(SessionStatus::new(SessionPhase::Running));
        assert_eq!(c.next(data(0, "abc")), Step::Output { offset: 0, data: &b"abc"[..] });
        assert_eq!(c.offset(), 3);
        assert_eq!(c.next(LogRead::<&[u8]>::Gap { from: 3, to: 9 }), Step::Gap { from: 3, to: 9 });
        assert_eq!(c.offset(), 9);
        let running = c.next(up_to_date(9, false));
        assert_eq!(running, Step::Status(SessionStatus::new(SessionPhase::Running)));
        assert_eq!(c.next(up_to_date(9, false)), Step::Wait);
        c.shut_down();
        assert_eq!(c.next(up_to_date(9, true)), Step::End);
    }

    #[test]
    fn a_late_reader_gets_the_final_status_again_after_the_replay() {
        for ends in [Ends::OnShutdown, Ends::AfterFinalStatus] {
            let mut c = LogCursor::new(0, ends);
            c.greeted(&done());
            assert!(matches!(c.next(data(0, "all")), Step::Output { .. }));
            assert_eq!(c.next(up_to_date(3, true)), Step::Status(done()));
            let after = c.next(up_to_date(3, true));
            let expected = if ends == Ends::OnShutdown { Step::Wait } else { Step::End };
            assert_eq!(after, expected, "{ends:?}");
        }
        let mut running = LogCursor::new(0, Ends::AfterFinalStatus);
        running.greeted(&SessionStatus::new(SessionPhase::Running));
        assert_eq!(running.next(up_to_date(0, false)), Step::Wait);
    }

    #[test]
    fn sse_waits_for_the_complete_log_and_the_tee_for_the_close() {
        let mut sse = LogCursor::new(0, Ends::AfterFinalStatus);
        sse.status_changed(done());
        // The status came before the log was closed: more output may follow it.
        assert_eq!(sse.next(up_to_date(0, false)), Step::Status(done()));
        assert_eq!(sse.next(up_to_date(0, false)), Step::Wait);
        let mut tee = LogCursor::new(0, Ends::WhenClosed);
        assert_eq!(tee.next(up_to_date(0, false)), Step::Wait);
        assert_eq!(tee.next(up_to_date(0, true)), Step::End);
    }
}
