//! The terminal page and its assets, embedded in the binary. xterm.js and its fit addon come
//! from npm (gateway/web/package-lock.json) and are served from here, never from a CDN.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Nothing loads from anywhere but this origin; no inline script or style; no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self' data:; font-src 'self'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const PAGE: &str = include_str!("../web/page/terminal.html");

fn asset(name: &str) -> Option<(&'static [u8], &'static str)> {
    Some(match name {
        "xterm.js" => (include_bytes!("../web/vendor/xterm.js"), "text/javascript"),
        "addon-fit.js" => (include_bytes!("../web/vendor/addon-fit.js"), "text/javascript"),
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

/// The page is the same for every session: nothing from the request is written into it.
pub fn page() -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
        PAGE,
    )
        .into_response();
    response.headers_mut().extend(security_headers());
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
