//! Where a session's code comes from, decided from its URL alone (pure: the runner fetches;
//! the REST API checks a URL with the same parser before it accepts a session).

use std::collections::HashSet;

use url::Url;

/// Why a code URL or checksum was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("unsupported code URL {url:?}: {reason}")]
    UnsupportedUrl { url: String, reason: String },
    #[error("code checksum {0:?} is not a SHA-256 hex digest (64 hex characters)")]
    BadChecksum(String),
}

/// The kinds of archive a code URL may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    Zip,
    TarGz,
}

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

fn unsupported(raw: &str, reason: impl Into<String>) -> SourceError {
    SourceError::UnsupportedUrl { url: raw.into(), reason: reason.into() }
}

/// Decides what kind of source a code URL names. Pure: no I/O.
pub fn parse_code_url(raw: &str) -> Result<CodeSource, SourceError> {
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
pub fn is_commit_id(s: &str) -> bool {
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
pub fn parse_checksum(raw: &str) -> Result<String, SourceError> {
    let hex = raw.trim().trim_start_matches("sha256:").to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(SourceError::BadChecksum(raw.to_owned()))
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
            assert!(matches!(err, SourceError::UnsupportedUrl { .. }), "{url}: {err}");
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
