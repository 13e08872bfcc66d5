//! The runner's reports to whoever launched it (`cliscale_core::event`), on channels of their
//! own: a pipe inherited from the local executor, and the termination message file on
//! Kubernetes. Neither is ever passed on to the command or the install step.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use cliscale_core::event::{RunnerEvent, StatusKey, decode_status_key};
use nix::fcntl::{FcntlArg, FdFlag, fcntl};

use crate::error::{Result, RunnerError};

#[derive(Debug, Default)]
pub struct EventSink {
    pipe: Option<File>,
    termination_log: Option<PathBuf>,
    status_key: Option<StatusKey>,
}

impl EventSink {
    /// Takes the inherited descriptor `events_fd` (marking it close-on-exec at once, so no child
    /// inherits it), the termination message path and the key that seals what is written there.
    /// Call once, before anything is spawned.
    pub fn open(
        events_fd: Option<i32>,
        termination_log: Option<PathBuf>,
        status_key: Option<&str>,
    ) -> Result<Self> {
        let status_key = match status_key {
            None => None,
            Some(text) => Some(decode_status_key(text).ok_or_else(|| {
                RunnerError::Config("the status key must be 32 bytes in base64url".into())
            })?),
        };
        let pipe = match events_fd {
            None => None,
            Some(fd) => Some(File::from(take_inherited_fd(fd, "events")?)),
        };
        Ok(Self { pipe, termination_log, status_key })
    }

    /// Reports `event`. A launcher that stopped listening costs the session nothing.
    pub fn send(&mut self, event: &RunnerEvent) {
        if let Some(pipe) = &mut self.pipe
            && let Err(error) = pipe.write_all(event.to_line().as_bytes())
        {
            tracing::warn!(%error, "could not report an event to the launcher");
            self.pipe = None;
        }
        if let (RunnerEvent::Finished { .. }, Some(path)) = (event, &self.termination_log)
            && let Err(error) = std::fs::write(
                path,
                match &self.status_key {
                    Some(key) => event.to_sealed_termination_message(key),
                    None => event.to_termination_message(),
                },
            )
        {
            tracing::warn!(%error, path = %path.display(), "could not write the termination message");
        }
    }
}

/// Takes ownership of descriptor `fd`, handed over by the launcher, and marks it close-on-exec
/// at once so no child inherits it. Call before anything is spawned.
pub fn take_inherited_fd(fd: i32, what: &str) -> Result<OwnedFd> {
    if fd <= 2 {
        return Err(RunnerError::Config(format!(
            "{what} fd {fd} is a standard stream; pass a descriptor of 3 or more"
        )));
    }
    // SAFETY: the descriptor is only borrowed until it is known to be open; then this is its one
    // owner (the launcher handed it over for exactly this).
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| {
        RunnerError::Config(format!("{what} fd {fd} is not an open descriptor: {e}"))
    })?;
    // SAFETY: as above: open, and owned by nothing else in this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
