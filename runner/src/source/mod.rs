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

pub use archive::{ArchiveFormat, ExtractLimits, extract_archive};
pub use download::Downloader;

use crate::error::{Result, RunnerError};
use crate::log::OutputLog;
use crate::net_guard::AddressPolicy;

/// Where the code comes from, decided from the URL alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeSource {
    /// `https://github.com/OWNER/REPO/tree/REF/PATH`: `tail` holds REF and PATH's segments,
    /// split later against the repository's real ref list.
    GitHubTree { owner: String, repo: String, tail: Vec<String> },
    /// An archive downloaded over HTTP(S).
    Archive { url: Url, format: ArchiveFormat },
    /// A git repository, optionally at a branch or tag (the URL fragment).
    Git { url: Url, reference: Option<String> },
}

fn unsupported(raw: &str, reason: impl Into<String>) -> RunnerError {
    RunnerError::UnsupportedUrl { url: raw.into(), reason: reason.into() }
}

/// How a fetch that overran `--download-timeout` is reported, whether over HTTP or git.
fn over_download_limit(timeout: Duration) -> String {
    format!("took longer than the download time limit of {timeout:?}")
}

/// Decides what kind of source a code URL names. Pure: no I/O.
pub fn parse_code_url(raw: &str) -> Result<CodeSource> {
    let trimmed = raw.trim();
    let (is_git_plus, rest) = match trimmed.strip_prefix("git+") {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let mut url = Url::parse(rest).map_err(|e| unsupported(raw, format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(unsupported(raw, "only https:// and http:// (or git+https://) are supported"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(unsupported(
            raw,
            "credentials in the URL are refused; pass them as env from a Secret instead",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(unsupported(raw, "the URL has no host"));
    }
    let fragment = url.fragment().filter(|f| !f.is_empty()).map(str::to_owned);
    url.set_fragment(None);
    if is_git_plus {
        return Ok(CodeSource::Git { url, reference: fragment });
    }
    let segments: Vec<String> = url
        .path_segments()
        .map(|s| s.filter(|p| !p.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    if host == "github.com" || host == "www.github.com" {
        return match segments.as_slice() {
            [owner, repo, tree, tail @ ..] if tree == "tree" && !tail.is_empty() => {
                Ok(CodeSource::GitHubTree {
                    owner: owner.clone(),
                    repo: repo.trim_end_matches(".git").to_owned(),
                    tail: tail.to_vec(),
                })
            }
            [owner, repo] => {
                let repo = repo.trim_end_matches(".git");
                let url = Url::parse(&format!("https://github.com/{owner}/{repo}.git"))
                    .map_err(|e| unsupported(raw, e.to_string()))?;
                Ok(CodeSource::Git { url, reference: fragment })
            }
            _ if url.path().ends_with(".zip") || url.path().ends_with(".tar.gz") => {
                Ok(archive_source(url).expect("suffix checked"))
            }
            _ => Err(unsupported(
                raw,
                "GitHub URLs must be OWNER/REPO, OWNER/REPO.git or OWNER/REPO/tree/REF[/PATH]",
            )),
        };
    }
    if let Some(source) = archive_source(url.clone()) {
        return Ok(source);
    }
    if url.path().ends_with(".git") {
        return Ok(CodeSource::Git { url, reference: fragment });
    }
    Err(unsupported(
        raw,
        "cannot tell the kind of source: use a .zip, .tar.gz, .tgz or .git URL, git+https://, \
         or a GitHub tree URL",
    ))
}

fn archive_source(url: Url) -> Option<CodeSource> {
    let path = url.path().to_ascii_lowercase();
    let format = if path.ends_with(".zip") {
        ArchiveFormat::Zip
    } else if path.ends_with(".tar.gz") || path.ends_with(".tgz") {
        ArchiveFormat::TarGz
    } else {
        return None;
    };
    Some(CodeSource::Archive { url, format })
}

/// A full commit id, which GitHub accepts in place of a ref.
fn is_commit_id(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Splits a tree URL's tail into (ref, path) using the repository's real refs: the longest
/// leading run of segments that names a branch or tag wins, as on GitHub itself.
pub fn split_ref_and_path(tail: &[String], refs: &HashSet<String>) -> Option<(String, String)> {
    if let Some(first) = tail.first().filter(|s| is_commit_id(s)) {
        return Some((first.clone(), tail[1..].join("/")));
    }
    (1..=tail.len()).rev().find_map(|n| {
        let candidate = tail[..n].join("/");
        refs.contains(&candidate).then(|| (candidate, tail[n..].join("/")))
    })
}

/// Parses a SHA-256 checksum as given by users (hex, optionally `sha256:`-prefixed).
pub fn parse_checksum(raw: &str) -> Result<String> {
    let hex = raw.trim().trim_start_matches("sha256:").to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(RunnerError::Config(format!(
            "code checksum {raw:?} is not a SHA-256 hex digest (64 hex characters)"
        )))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(s: &str) -> Vec<String> {
        s.split('/').map(str::to_owned).collect()
    }

    #[test]
    fn code_urls_map_to_their_kinds() {
        let cases = [
            ("https://example.com/a/code.zip", "zip"),
            ("https://example.com/code.tar.gz?x=1", "tgz"),
            ("http://example.com/code.TGZ", "tgz"),
            ("https://example.com/repo.git", "git"),
            ("git+https://example.com/repo#v1.2", "git"),
            ("https://github.com/o/r", "git"),
            ("https://github.com/o/r.git", "git"),
            ("https://github.com/o/r/tree/main/sample-cli", "tree"),
            ("https://github.com/o/r/releases/download/v1/x.tar.gz", "tgz"),
        ];
        for (url, kind) in cases {
            let got = match parse_code_url(url).unwrap() {
                CodeSource::Archive { format: ArchiveFormat::Zip, .. } => "zip",
                CodeSource::Archive { format: ArchiveFormat::TarGz, .. } => "tgz",
                CodeSource::Git { .. } => "git",
                CodeSource::GitHubTree { .. } => "tree",
            };
            assert_eq!(got, kind, "{url}");
        }
        assert_eq!(
            parse_code_url("git+https://example.com/repo#v1.2").unwrap(),
            CodeSource::Git {
                url: Url::parse("https://example.com/repo").unwrap(),
                reference: Some("v1.2".into())
            }
        );
    }

    #[test]
    fn bad_code_urls_are_refused_with_a_reason() {
        for url in [
            "",
            "not a url",
            "file:///etc/passwd",
            "ftp://example.com/x.zip",
            "ssh://git@example.com/r.git",
            "https://user:pw@example.com/x.zip",
            "https://example.com/page.html",
            "https://github.com/o",
            "https://github.com/o/r/blob/main/x",
        ] {
            let err = parse_code_url(url).unwrap_err();
            assert!(matches!(err, RunnerError::UnsupportedUrl { .. }), "{url}: {err}");
        }
    }

    #[test]
    fn refs_with_slashes_resolve_against_the_real_ref_list() {
        let refs: HashSet<String> =
            ["main", "feature", "feature/login", "v1.0"].into_iter().map(String::from).collect();
        assert_eq!(
            split_ref_and_path(&tail("feature/login/app/src"), &refs),
            Some(("feature/login".into(), "app/src".into()))
        );
        assert_eq!(
            split_ref_and_path(&tail("feature/other"), &refs),
            Some(("feature".into(), "other".into()))
        );
        assert_eq!(split_ref_and_path(&tail("main"), &refs), Some(("main".into(), "".into())));
        assert_eq!(split_ref_and_path(&tail("nope/x"), &refs), None);
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            split_ref_and_path(&tail(&format!("{sha}/dir")), &HashSet::new()),
            Some((sha.into(), "dir".into()))
        );
    }

    #[test]
    fn checksums_must_be_sha256_hex() {
        let hex = "AB".repeat(32);
        assert_eq!(parse_checksum(&hex).unwrap(), "ab".repeat(32));
        assert_eq!(parse_checksum(&format!("sha256:{hex}")).unwrap(), "ab".repeat(32));
        assert!(parse_checksum("abc").is_err());
        assert!(parse_checksum(&"zz".repeat(32)).is_err());
    }
}
