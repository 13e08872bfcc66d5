//! The terminal page and its assets, embedded in the binary. xterm.js and its fit addon come
//! from npm (gateway/web/package-lock.json) and are served from here, never from a CDN.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;

/// Nothing loads from anywhere but this origin; no inline script or style; framed only by this
/// origin (the console shows a session's terminal in a frame).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self' data:; font-src 'self'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'self'";

/// The page's policy: [`CONTENT_SECURITY_POLICY`], except that `<style>` elements carrying
/// this response's nonce apply. xterm.js writes its theme and cell metrics into style elements
/// whose content depends on the font and theme, so no hash can name them; the nonce is fresh
/// for every response and admits nothing else (no script, no style attribute). Pure.
pub fn page_policy(style_nonce: &str) -> String {
    CONTENT_SECURITY_POLICY
        .replace("style-src 'self'", &format!("style-src 'self' 'nonce-{style_nonce}'"))
}

const PAGE: &str = include_str!("../web/page/terminal.html");
const NONCE_SLOT: &str = "{{STYLE_NONCE}}";

fn asset(name: &str) -> Option<(&'static [u8], &'static str)> {
    Some(match name {
        "xterm.js" => (include_bytes!("../web/vendor/xterm.js"), "text/javascript"),
        "addon-fit.js" => (include_bytes!("../web/vendor/addon-fit.js"), "text/javascript"),
        "addon-search.js" => (include_bytes!("../web/vendor/addon-search.js"), "text/javascript"),
        "addon-unicode11.js" => {
            (include_bytes!("../web/vendor/addon-unicode11.js"), "text/javascript")
        }
        "addon-web-links.js" => {
            (include_bytes!("../web/vendor/addon-web-links.js"), "text/javascript")
        }
        "addon-webgl.js" => (include_bytes!("../web/vendor/addon-webgl.js"), "text/javascript"),
        "xterm.css" => (include_bytes!("../web/vendor/xterm.css"), "text/css"),
        "terminal.js" => (include_bytes!("../web/page/terminal.js"), "text/javascript"),
        "terminal.css" => (include_bytes!("../web/page/terminal.css"), "text/css"),
        _ => return None,
    })
}

fn security_headers() -> [(HeaderName, HeaderValue); 4] {
    [
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ]
}

/// The page is the same for every session: nothing from the request is written into it, only
/// a fresh style nonce.
pub fn page() -> Response {
    let nonce = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let body = PAGE.replace(NONCE_SLOT, &nonce);
    let mut response = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
        body,
    )
        .into_response();
    response.headers_mut().extend(security_headers());
    let policy = HeaderValue::from_str(&page_policy(&nonce)).expect("base64 is a header value");
    response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, policy);
    response
}

pub fn serve(name: &str) -> Response {
    match asset(name) {
        Some((body, content_type)) => {
            let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
            response.headers_mut().extend(security_headers());
            response
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_page_gets_its_own_style_nonce_and_nothing_else_is_loosened() {
        let nonces: Vec<String> = (0..2)
            .map(|_| {
                let response = page();
                let policy = response.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
                let nonce = policy.split("'nonce-").nth(1).unwrap().split('\'').next().unwrap();
                assert_eq!(policy, page_policy(nonce));
                assert!(policy.contains("script-src 'self';"), "{policy}");
                assert!(!policy.contains("unsafe"), "{policy}");
                nonce.to_owned()
            })
            .collect();
        assert_ne!(nonces[0], nonces[1]);
        assert_eq!(nonces[0].len(), 24);
    }
}
