//! HTTP(S) downloads with the address guard, a size cap, a time limit and a running SHA-256.

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use url::Url;

use crate::error::{Result, RunnerError};
use crate::net_guard::{AddressPolicy, GuardedResolver, check_literal_host};

/// Most redirects followed before giving up.
const MAX_REDIRECTS: usize = 10;

pub struct Downloader {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    max_bytes: u64,
    timeout: Duration,
}

impl Downloader {
    pub fn new(policy: Arc<AddressPolicy>, max_bytes: u64, timeout: Duration) -> Result<Self> {
        cliscale_core::tls::install_crypto_provider();
        let redirect_policy = policy.clone();
        let client = reqwest::Client::builder()
            // A proxy would resolve names for us and so bypass the guard.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
                }
                if !matches!(attempt.url().scheme(), "http" | "https") {
                    let scheme = attempt.url().scheme().to_owned();
                    return attempt.error(format!("redirect to unsupported scheme {scheme}"));
                }
                match check_literal_host(&redirect_policy, attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(e) => attempt.error(e.to_string()),
                }
            }))
            .connect_timeout(timeout.min(Duration::from_secs(30)))
            .timeout(timeout)
            .user_agent(concat!("cliscale-runner/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RunnerError::Config(format!("building HTTP client: {e}")))?;
        Ok(Self { client, policy, max_bytes, timeout })
    }

    /// Streams `url` into `file`, returning the file rewound to its start and the body's
    /// SHA-256 in lowercase hex.
    pub async fn download(
        &self,
        url: &Url,
        mut file: std::fs::File,
    ) -> Result<(std::fs::File, String)> {
        check_literal_host(&self.policy, url)?;
        let fail = |message: String| RunnerError::Download { url: url.to_string(), message };
        // The limit covers connecting, the headers and the whole body; say which limit it was.
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                fail(super::over_download_limit(self.timeout))
            } else {
                fail(error_chain(&e))
            }
        };
        let response = self.client.get(url.clone()).send().await.map_err(|e| {
            // A guard refusal surfaces as a connect error; report it as what it is.
            match find_blocked(&e) {
                Some(blocked) => blocked,
                None => failed(e),
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(fail(format!("server answered {status}")));
        }
        let too_large =
            || RunnerError::DownloadTooLarge { url: url.to_string(), limit: self.max_bytes };
        if response.content_length().is_some_and(|len| len > self.max_bytes) {
            return Err(too_large());
        }
        let mut hasher = Sha256::new();
        let mut total: u64 = 0;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(failed)?;
            total += chunk.len() as u64;
            if total > self.max_bytes {
                return Err(too_large());
            }
            hasher.update(&chunk);
            file.write_all(&chunk).map_err(|e| RunnerError::io("writing download", e))?;
        }
        file.seek(SeekFrom::Start(0)).map_err(|e| RunnerError::io("rewinding download", e))?;
        Ok((file, hex::encode(hasher.finalize())))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// Digs a guard refusal out of reqwest's error chain.
fn find_blocked(e: &(dyn std::error::Error + 'static)) -> Option<RunnerError> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(RunnerError::BlockedAddress { host, ip, range }) = err.downcast_ref() {
            return Some(RunnerError::BlockedAddress { host: host.clone(), ip: *ip, range });
        }
        current = err.source();
    }
    None
}
