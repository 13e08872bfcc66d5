//! Getting the session's code: parsing the code URL into a source kind (pure), then fetching
//! it with the network guard, size and time limits, checksum and safe extraction.

mod archive;
mod download;
mod git;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

pub use archive::{ExtractLimits, extract_archive};
pub use cliscale_core::source::{ArchiveFormat, CodeSource, is_commit_id, split_ref_and_path};
pub use download::Downloader;

use crate::error::{Result, RunnerError};
use crate::log::OutputLog;
use crate::net_guard::AddressPolicy;

/// How a fetch that overran `--download-timeout` is reported, whether over HTTP or git.
fn over_download_limit(timeout: Duration) -> String {
    format!("took longer than the download time limit of {timeout:?}")
}

/// Everything fetching needs besides the URL.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    pub policy: Arc<AddressPolicy>,
    pub checksum_sha256: Option<String>,
    pub max_download_bytes: u64,
    pub download_timeout: Duration,
    pub limits: ExtractLimits,
    /// Base of GitHub's archive endpoint (`{base}/OWNER/REPO/tar.gz/REF`).
    pub github_archive_base: Url,
    /// Base of GitHub's git endpoint (`{base}/OWNER/REPO.git`).
    pub github_git_base: Url,
}

fn join_base(base: &Url, path: &str) -> Result<Url> {
    let joined = format!("{}/{}", base.as_str().trim_end_matches('/'), path);
    Url::parse(&joined).map_err(|e| RunnerError::Config(format!("bad base URL {base}: {e}")))
}

/// Writes a progress line into the session log, where viewers see it in the terminal.
pub fn progress(log: &OutputLog, line: &str) {
    log.append(bytes::Bytes::from(format!("\x1b[2m[cliscale] {line}\x1b[0m\r\n")));
}

/// Fetches `source` into `work_dir` (which must be empty or absent) and returns the directory
/// the command should run in.
pub async fn fetch(
    cfg: &FetchConfig,
    source: &CodeSource,
    work_dir: &Path,
    log: &Arc<OutputLog>,
) -> Result<PathBuf> {
    tokio::fs::create_dir_all(work_dir)
        .await
        .map_err(|e| RunnerError::io(format!("creating work dir {}", work_dir.display()), e))?;
    match source {
        CodeSource::Archive { url, format } => {
            progress(log, &format!("downloading {url}"));
            download_and_extract(cfg, url, *format, work_dir, &[]).await?;
            Ok(single_top_dir(work_dir))
        }
        CodeSource::GitHubTree { owner, repo, tail } => {
            if cfg.checksum_sha256.is_some() {
                progress(log, "note: the checksum applies to GitHub's tarball of the ref");
            }
            let git_url = join_base(&cfg.github_git_base, &format!("{owner}/{repo}.git"))?;
            let (reference, path) = if tail.first().is_some_and(|s| is_commit_id(s)) {
                split_ref_and_path(tail, &HashSet::new()).expect("commit ids always split")
            } else {
                progress(log, &format!("listing refs of {owner}/{repo}"));
                let refs = git::ls_remote_refs(&git_url, &cfg.policy, cfg.download_timeout).await?;
                split_ref_and_path(tail, &refs).ok_or_else(|| RunnerError::UnknownRef {
                    repo: format!("{owner}/{repo}"),
                    path: tail.join("/"),
                })?
            };
            let archive_url =
                join_base(&cfg.github_archive_base, &format!("{owner}/{repo}/tar.gz/{reference}"))?;
            progress(log, &format!("downloading {owner}/{repo} at {reference}"));
            let subdir: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            download_and_extract(cfg, &archive_url, ArchiveFormat::TarGz, work_dir, &subdir)
                .await?;
            // GitHub's tarballs hold one top directory (REPO-REF); the path is inside it.
            let root = single_top_dir(work_dir);
            let dir = subdir.iter().fold(root, |dir, seg| dir.join(seg));
            if !dir.is_dir() {
                return Err(RunnerError::Extract(format!(
                    "path {path:?} does not exist in {owner}/{repo} at {reference}"
                )));
            }
            Ok(dir)
        }
        CodeSource::Git { url, reference } => {
            if cfg.checksum_sha256.is_some() {
                return Err(RunnerError::Config(
                    "a checksum applies to archives only; pin a git source by commit instead"
                        .into(),
                ));
            }
            let url = if url.host_str() == Some("github.com") {
                join_base(&cfg.github_git_base, url.path().trim_start_matches('/'))?
            } else {
                url.clone()
            };
            progress(log, &format!("cloning {url}"));
            let dest = work_dir.join("repo");
            git::clone(&url, reference.as_deref(), &dest, &cfg.policy, cfg.download_timeout, log)
                .await?;
            Ok(dest)
        }
    }
}

async fn download_and_extract(
    cfg: &FetchConfig,
    url: &Url,
    format: ArchiveFormat,
    work_dir: &Path,
    keep_prefix: &[&str],
) -> Result<()> {
    let downloader =
        Downloader::new(cfg.policy.clone(), cfg.max_download_bytes, cfg.download_timeout)?;
    let file = tempfile::tempfile().map_err(|e| RunnerError::io("creating temp file", e))?;
    let (file, digest) = downloader.download(url, file).await?;
    if let Some(expected) = &cfg.checksum_sha256
        && *expected != digest
    {
        return Err(RunnerError::ChecksumMismatch {
            url: url.to_string(),
            expected: expected.clone(),
            actual: digest,
        });
    }
    let dest = work_dir.to_path_buf();
    let limits = cfg.limits;
    let keep: Vec<String> = keep_prefix.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || extract_archive(file, format, &dest, limits, &keep))
        .await
        .map_err(|e| RunnerError::Extract(format!("extraction task failed: {e}")))?
}

/// The directory to run in: the single top-level directory if the archive had exactly one,
/// else the extraction root.
fn single_top_dir(root: &Path) -> PathBuf {
    let entries: Vec<_> =
        std::fs::read_dir(root).map(|rd| rd.filter_map(|e| e.ok()).collect()).unwrap_or_default();
    match entries.as_slice() {
        [only] if only.file_type().is_ok_and(|t| t.is_dir()) => only.path(),
        _ => root.to_path_buf(),
    }
}
