//! Fuzz targets: each takes arbitrary bytes, feeds them to one parser that meets hostile input,
//! and checks what must hold whatever the bytes (besides not panicking). libFuzzer drives them
//! in `fuzz/libfuzzer` (docs/security.md, "Fuzzing"); `tests/smoke.rs` runs each over its
//! seeds and a batch of mutations on every CI run.

use std::sync::OnceLock;

use cliscale_core::protocol::{decode_output, encode_output, parse_client_text};
use cliscale_core::token::{JwksVerifier, SessionSigningKey, TERMINAL_AUDIENCE, TokenVerifier};

/// Terminal frames: binary output frames and client text messages. A decoded output frame
/// encodes back to the same bytes.
pub fn frames(data: &[u8]) {
    if let Ok((offset, payload)) = decode_output(data) {
        assert_eq!(encode_output(offset, payload), data, "an output frame does not round-trip");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_client_text(text);
    }
}

fn verifier() -> &'static JwksVerifier {
    static VERIFIER: OnceLock<JwksVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let key = SessionSigningKey::generate("fuzz");
        let jwks = cliscale_core::token::jwks_json([&key]);
        JwksVerifier::from_jwks_json(&jwks, &[TERMINAL_AUDIENCE], Some("cliscale"))
            .expect("a generated key set loads")
    })
}

/// Terminal tokens: bytes presented as a token are refused, whatever they are (only the key the
/// fuzzer never sees could sign an acceptable one). Key sets are parsed too.
pub fn tokens(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    assert!(
        verifier().verify(&text, "fuzz-session").is_err(),
        "forged bytes were accepted: {text}"
    );
    let _ = JwksVerifier::from_jwks_json(&text, &[TERMINAL_AUDIENCE], None);
}

/// The API's session-create body: whatever decodes and validates is a spec the store and the
/// OS can hold (it passes the spec's own checks again, and carries no NUL byte).
pub fn bodies(data: &[u8]) {
    let Ok(request) = serde_json::from_slice::<cliscale_api::model::CreateSessionRequest>(data)
    else {
        return;
    };
    let Ok(spec) = cliscale_api::model::validate_create(request, Default::default()) else {
        return;
    };
    assert!(spec.validate().is_ok(), "a validated request makes an invalid spec: {spec:?}");
    let texts = [Some(&spec.command), spec.install_command.as_ref(), spec.prompt.as_ref()];
    assert!(texts.iter().flatten().all(|t| !t.contains('\0')), "a NUL byte got through");
    assert!(spec.env.iter().all(|e| !e.value.contains('\0') && !e.name.contains('\0')));
}

/// Code URLs: whatever parses is an http(s) URL (or `git+` one) without credentials: no
/// `file:`, `ssh:` or `ftp:` source, and no user or password to leak into logs or fetches.
pub fn code_urls(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if cliscale_core::source::parse_code_url(text).is_err() {
        return;
    }
    let trimmed = text.trim();
    let url = url::Url::parse(trimmed.strip_prefix("git+").unwrap_or(trimmed))
        .expect("a code URL that parses is a URL");
    assert!(matches!(url.scheme(), "http" | "https"), "a {} URL parsed: {text}", url.scheme());
    assert!(url.password().is_none() && url.username().is_empty(), "credentials parsed: {text}");
}

/// Archives, as tar.gz and as zip: extraction writes nothing outside its directory, however
/// the entries are named or linked.
pub fn archives(data: &[u8]) {
    use cliscale_runner::source::{ArchiveFormat, ExtractLimits, extract_archive};
    let scratch = tempfile::tempdir_in(scratch_root()).expect("a scratch dir");
    let file = scratch.path().join("in");
    std::fs::write(&file, data).expect("the input is written");
    // Deep enough that an entry climbing out would land inside the scratch dir, where it shows.
    let deep = scratch.path().join("a").join("b");
    let dest = deep.join("out");
    for format in [ArchiveFormat::TarGz, ArchiveFormat::Zip] {
        std::fs::create_dir_all(&dest).expect("a fresh destination");
        let limits = ExtractLimits { max_bytes: 1 << 20, max_entries: 256 };
        let input = std::fs::File::open(&file).expect("the input opens");
        let _ = extract_archive(input, format, &dest, limits, &[]);
        for (dir, expected) in [
            (scratch.path().to_path_buf(), &["a", "in"][..]),
            (scratch.path().join("a"), &["b"][..]),
            (deep.clone(), &["out"][..]),
        ] {
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .expect("the scratch dir lists")
                .map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, expected, "extraction wrote outside its destination");
        }
        std::fs::remove_dir_all(&dest).expect("the destination goes");
    }
}

/// Where archive scratch dirs go: memory-backed when the host has it, for speed.
fn scratch_root() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() }
}

/// A fuzz target: bytes in, a panic when something that must hold does not.
pub type Target = fn(&[u8]);

/// Every target, by name, for the drivers.
pub const TARGETS: [(&str, Target); 5] = [
    ("frames", frames),
    ("tokens", tokens),
    ("bodies", bodies),
    ("code_urls", code_urls),
    ("archives", archives),
];
