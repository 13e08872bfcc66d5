//! Masks secret values in the output before it enters the log, so no stream, stored byte,
//! tail or recording ever holds them (docs/runner.md, "Masking").
//!
//! Each secret is matched as written, in base64 (standard and URL-safe, at each of the three
//! alignments it can take inside a longer encoded text) and URL-encoded. A match becomes `***`.
//! A secret split across two PTY reads is still masked: the end of a read that could be the
//! start of a secret is held back until the next read shows whether it is, or until
//! [`HOLD`] passes.

use std::time::{Duration, Instant};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// Values shorter than this are not masked: masking every `a` or `42` would garble the output
/// and protect nothing.
pub const MIN_SECRET_LEN: usize = 4;
/// Shortest derived form (a base64 middle) worth matching.
const MIN_FORM_LEN: usize = 6;
/// Longest a possible start of a secret is held back waiting for the rest.
pub const HOLD: Duration = Duration::from_millis(200);
/// What a secret becomes.
pub const REPLACEMENT: &[u8] = b"***";

/// Never prints the secrets it holds.
impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker").field("patterns", &self.patterns.len()).finish_non_exhaustive()
    }
}

pub struct Masker {
    matcher: AhoCorasick,
    patterns: Vec<Vec<u8>>,
    /// The end of the last input that might begin a secret.
    held: Vec<u8>,
    held_since: Option<Instant>,
}

/// The forms of `secret` that are masked. Pure.
pub fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![secret.to_vec()];
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for shift in 0..3usize {
            // Inside a longer text the secret starts `shift` bytes into a 3-byte group; only
            // the characters made of its bits alone are the same whatever surrounds it.
            let mut shifted = vec![0u8; shift];
            shifted.extend_from_slice(secret);
            let encoded = engine.encode(&shifted);
            let first = (shift * 8).div_ceil(6);
            let last = (shifted.len() * 8) / 6;
            if last > first {
                forms.push(encoded.as_bytes()[first..last].to_vec());
            }
        }
    }
    let escaped: String =
        url::form_urlencoded::byte_serialize(secret).collect::<String>().replace('+', "%20");
    forms.push(escaped.clone().into_bytes());
    forms.push(escaped.replace("%20", "+").into_bytes());
    forms.retain(|f| f.len() >= MIN_FORM_LEN.min(secret.len()));
    forms.sort();
    forms.dedup();
    forms
}

impl Masker {
    /// A masker for `secrets`; `None` when none is long enough to mask.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Option<Self> {
        let mut patterns: Vec<Vec<u8>> =
            secrets.into_iter().filter(|s| s.len() >= MIN_SECRET_LEN).flat_map(forms).collect();
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return None;
        }
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .expect("byte patterns always build");
        Some(Self { matcher, patterns, held: Vec::new(), held_since: None })
    }

    /// Masks `input` following what came before; returns what may be passed on now.
    pub fn feed(&mut self, input: &[u8], now: Instant) -> Vec<u8> {
        let mut text = std::mem::take(&mut self.held);
        text.extend_from_slice(input);
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for m in self.matcher.find_iter(&text) {
            out.extend_from_slice(&text[at..m.start()]);
            out.extend_from_slice(REPLACEMENT);
            at = m.end();
        }
        let hold = self.possible_start(&text[at..]);
        let keep_to = text.len() - hold;
        out.extend_from_slice(&text[at..keep_to]);
        self.held = text[keep_to..].to_vec();
        self.held_since = if self.held.is_empty() { None } else { self.held_since.or(Some(now)) };
        out
    }

    /// Passes on what was held back once it has waited [`HOLD`] (or at once when `force`).
    pub fn flush(&mut self, now: Instant, force: bool) -> Vec<u8> {
        match self.held_since {
            Some(since) if force || now.duration_since(since) >= HOLD => {
                self.held_since = None;
                std::mem::take(&mut self.held)
            }
            _ => Vec::new(),
        }
    }

    /// Whether bytes are held back.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Length of the longest end of `text` that is the start of a pattern (not all of it).
    fn possible_start(&self, text: &[u8]) -> usize {
        let mut longest = 0;
        for p in &self.patterns {
            let most = (p.len() - 1).min(text.len());
            for k in (longest + 1..=most).rev() {
                let start = text.len() - k;
                if text[start] == p[0] && text[start..] == p[..k] {
                    longest = k;
                    break;
                }
            }
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(secrets: &[&str]) -> Masker {
        Masker::new(secrets.iter().map(|s| s.as_bytes())).unwrap()
    }

    fn run(m: &mut Masker, pieces: &[&[u8]]) -> Vec<u8> {
        let now = Instant::now();
        let mut out = Vec::new();
        for p in pieces {
            out.extend(m.feed(p, now));
        }
        out.extend(m.flush(now, true));
        out
    }

    #[test]
    fn a_secret_is_masked_whole_and_split_at_every_point() {
        let secret = b"hunter2-s3cr3t";
        for split in 0..=secret.len() {
            let mut m = masker(&["hunter2-s3cr3t"]);
            let (a, b) = secret.split_at(split);
            let out = run(&mut m, &[b"pw=", a, b, b" done"]);
            assert_eq!(out, b"pw=*** done", "split at {split}");
        }
        let mut m = masker(&["hunter2-s3cr3t"]);
        let bytes: Vec<&[u8]> = secret.chunks(1).collect();
        assert_eq!(run(&mut m, &bytes), b"***");
    }

    #[test]
    fn base64_and_url_encoded_forms_are_masked() {
        let secret = "p@ss word/with+symbols";
        let mut m = masker(&[secret]);
        for prefix in ["", "u:", "us:", "use:"] {
            let encoded = STANDARD_NO_PAD.encode(format!("{prefix}{secret}"));
            let out = String::from_utf8(run(&mut m, &[encoded.as_bytes()])).unwrap();
            assert!(out.contains("***"), "{prefix:?}: {out}");
            assert!(!out.contains(&encoded[encoded.len() / 2..][..6]), "{prefix:?}: {out}");
        }
        let url = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>();
        assert_eq!(run(&mut m, &[format!("?q={url}&x").as_bytes()]), b"?q=***&x");
    }

    #[test]
    fn held_bytes_wait_only_so_long_and_short_values_are_not_masked() {
        let mut m = masker(&["abcdefgh"]);
        let t0 = Instant::now();
        assert_eq!(m.feed(b"xyz abc", t0), b"xyz ");
        assert!(m.holding());
        assert_eq!(m.flush(t0 + HOLD / 2, false), b"");
        assert_eq!(m.flush(t0 + HOLD, false), b"abc");
        assert!(!m.holding());
        assert!(Masker::new([&b"abc"[..]]).is_none());
        assert_eq!(run(&mut m, &[b"no secret here"]), b"no secret here");
    }
}
