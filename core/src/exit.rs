//! The runner's exit codes and what they mean: the one table read by the runner (to exit), the
//! local executor (to learn how a runner ended that said nothing) and the operator (from a
//! terminated container). docs/runner.md lists the codes.

use crate::phase::TerminalReason;

/// The configuration (flags or environment) was invalid.
pub const CONFIG_INVALID: i32 = 120;
/// The code could not be downloaded, cloned or unpacked.
pub const FETCH_FAILED: i32 = 121;
/// The downloaded archive did not match the expected checksum.
pub const CHECKSUM_MISMATCH: i32 = 122;
/// The install command exited non-zero, could not be started or ran past its limit.
pub const INSTALL_FAILED: i32 = 123;
/// The command ran past its deadline and was stopped.
pub const DEADLINE_EXCEEDED: i32 = 124;
/// The runner itself failed: PTY allocation, binding the listener, and the like.
pub const RUNNER_FAILED: i32 = 125;

/// Every exit code the runner uses for its own reasons, with the reason.
pub const RUNNER_CODES: [(i32, TerminalReason); 6] = [
    (CONFIG_INVALID, TerminalReason::ConfigInvalid),
    (FETCH_FAILED, TerminalReason::FetchFailed),
    (CHECKSUM_MISMATCH, TerminalReason::ChecksumMismatch),
    (INSTALL_FAILED, TerminalReason::InstallFailed),
    (DEADLINE_EXCEEDED, TerminalReason::DeadlineExceeded),
    (RUNNER_FAILED, TerminalReason::SpawnFailed),
];

/// Why a runner that exited with `code` ended, judged from the code alone: one of the runner's
/// own codes, or else the command's exit status passed through (`Exited`). Pure.
pub fn reason_of(code: i32) -> TerminalReason {
    RUNNER_CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, reason)| *reason)
        .unwrap_or(TerminalReason::Exited)
}

/// The exit code the runner uses for a failure of its own with `reason`. Pure.
pub fn code_of(reason: TerminalReason) -> i32 {
    RUNNER_CODES.iter().find(|(_, r)| *r == reason).map(|(code, _)| *code).unwrap_or(RUNNER_FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_reasons_map_both_ways() {
        for (code, reason) in RUNNER_CODES {
            assert_eq!(reason_of(code), reason);
            assert_eq!(code_of(reason), code);
        }
        assert_eq!(reason_of(0), TerminalReason::Exited);
        assert_eq!(reason_of(3), TerminalReason::Exited);
        assert_eq!(reason_of(137), TerminalReason::Exited);
        assert_eq!(code_of(TerminalReason::RunnerLost), RUNNER_FAILED);
    }
}
