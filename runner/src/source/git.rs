//! The `git` command, fenced in: the host is resolved and checked first and git is pinned to
//! the checked address, only http(s) transports are allowed, and there are no redirects,
//! prompts or submodules.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use url::Url;

use crate::error::{Result, RunnerError};
use crate::log::OutputLog;
use crate::logged_process::{Outcome, run_logged};
use crate::net_guard::{AddressPolicy, check_literal_host, resolve_host};

/// A git command with the guard applied for `url`.
async fn guarded_git(url: &Url, policy: &AddressPolicy) -> Result<Command> {
    check_literal_host(policy, url)?;
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let mut cmd = Command::new("git");
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ALLOW_PROTOCOL", "http:https")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .args(["-c", "http.followRedirects=false", "-c", "protocol.file.allow=never"]);
    if url.host().is_some_and(|h| matches!(h, url::Host::Domain(_))) {
        let addrs = resolve_host(&host, port).await?;
        policy.check_all(&host, &addrs)?;
        // Pin git to the address just checked, closing the DNS-rebinding window.
        let ip = addrs[0].ip();
        let ip = if ip.is_ipv6() { format!("[{ip}]") } else { ip.to_string() };
        cmd.args(["-c", &format!("http.curloptResolve={host}:{port}:{ip}")]);
    }
    Ok(cmd)
}

/// Lists the branch and tag names of a remote repository (`git ls-remote`).
pub async fn ls_remote_refs(
    url: &Url,
    policy: &AddressPolicy,
    timeout: Duration,
) -> Result<HashSet<String>> {
    let mut cmd = guarded_git(url, policy).await?;
    cmd.args(["ls-remote", "--heads", "--tags", "--", url.as_str()]);
    cmd.kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|e| RunnerError::Git { action: "ls-remote", message: e.to_string() })?;
    let _managed = child.id().map(crate::reaper::Managed::new);
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| RunnerError::Git {
            action: "ls-remote",
            message: super::over_download_limit(timeout),
        })?
        .map_err(|e| RunnerError::Git { action: "ls-remote", message: e.to_string() })?;
    if !output.status.success() {
        return Err(RunnerError::Git {
            action: "ls-remote",
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(parse_ls_remote(&String::from_utf8_lossy(&output.stdout)))
}

/// Extracts short ref names from `git ls-remote` output.
pub fn parse_ls_remote(output: &str) -> HashSet<String> {
    output
        .lines()
        .filter_map(|line| line.split('\t').nth(1))
        .filter_map(|name| {
            let name = name.trim_end_matches("^{}");
            name.strip_prefix("refs/heads/").or_else(|| name.strip_prefix("refs/tags/"))
        })
        .map(str::to_owned)
        .collect()
}

/// Clones `url` (at `reference` if given) into `dest`, with git's progress in the log.
pub async fn clone(
    url: &Url,
    reference: Option<&str>,
    dest: &Path,
    policy: &AddressPolicy,
    timeout: Duration,
    log: &Arc<OutputLog>,
) -> Result<()> {
    // One limit for the whole fetch, however many attempts it takes.
    let deadline = tokio::time::Instant::now() + timeout;
    // Shallow first; the dumb HTTP transport cannot do shallow clones, so fall back to full.
    for shallow in [true, false] {
        let mut cmd = guarded_git(url, policy).await?;
        cmd.args(["clone", "--no-recurse-submodules"]);
        if shallow {
            cmd.args(["--depth", "1"]);
        }
        if let Some(reference) = reference {
            cmd.args(["--branch", reference]);
        }
        cmd.arg("--").arg(url.as_str()).arg(dest);
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match run_logged(cmd, log, remaining).await {
            Outcome::Exited(status) if status.success() => return Ok(()),
            Outcome::Exited(status) if shallow => {
                tracing::info!(%status, "shallow clone failed; retrying with full history");
                let _ = tokio::fs::remove_dir_all(dest).await;
            }
            Outcome::Exited(status) => {
                return Err(RunnerError::Git { action: "clone", message: status.to_string() });
            }
            Outcome::TimedOut => {
                return Err(RunnerError::Git {
                    action: "clone",
                    message: super::over_download_limit(timeout),
                });
            }
            Outcome::SpawnFailed(e) => {
                return Err(RunnerError::Git { action: "clone", message: e.to_string() });
            }
        }
    }
    unreachable!("the full clone attempt always returns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_remote_output_yields_branch_and_tag_names() {
        let out = "aaa\trefs/heads/main\nbbb\trefs/heads/feature/login\nccc\trefs/tags/v1\n\
                   ddd\trefs/tags/v1^{}\neee\trefs/pull/1/head\n";
        let refs = parse_ls_remote(out);
        let mut names: Vec<_> = refs.iter().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["feature/login", "main", "v1"]);
    }
}
