//! Console logins (docs/api.md, "Console login"): an API key pasted once is exchanged for an
//! HttpOnly, SameSite=Strict cookie, so a browser page never holds the key. Every request with
//! the cookie checks the key behind it again (a revoked or demoted key acts at once), and every
//! write also needs the login's CSRF token in `X-CSRF-Token`.
//!
//! The login is one kind of credential among others: a later OIDC login makes the same
//! `ConsoleSession` row for the key or identity it maps to, and nothing downstream changes.

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cookie::{Cookie, SameSite};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, Result};
use crate::keys;
use crate::routes::{AppState, Caller, JsonBody, Peer, authenticate_key, base_url};
use crate::store::{ConsoleSession, now};

/// The login cookie's name.
pub const COOKIE: &str = "cliscale_console";
/// The header every write made with the cookie must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// `POST /api/console/login`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ConsoleLoginRequest)]
pub(crate) struct LoginRequest {
    /// An API key (`csk_…`).
    key: String,
}

/// Who the console is logged in as, and the token its writes carry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ConsoleLogin)]
pub(crate) struct LoginView {
    key_id: String,
    role: keys::Role,
    /// Send as `X-CSRF-Token` on every POST, PATCH and DELETE made with the cookie.
    csrf_token: String,
    /// Unix seconds.
    expires_at: i64,
}

fn hash(secret: &str) -> String {
    keys::hash_secret(secret)
}

/// The cookie's attributes: a session cookie for the whole site, never readable by scripts,
/// never sent cross-site, Secure where the site is served over https. Pure.
pub fn login_cookie(value: String, max_age_secs: i64, secure: bool) -> Cookie<'static> {
    Cookie::build((COOKIE, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(cookie::time::Duration::seconds(max_age_secs))
        .build()
}

fn set_cookie(cookie: Cookie<'static>) -> [(header::HeaderName, HeaderValue); 2] {
    let value = HeaderValue::from_str(&cookie.to_string()).expect("a cookie is a header value");
    [(header::SET_COOKIE, value), (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

/// The login cookie's secret, if the request has one. Pure.
pub fn cookie_secret(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(|c| c.ok())
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_owned())
}

fn secure(state: &AppState, headers: &HeaderMap, peer: Option<std::net::IpAddr>) -> bool {
    base_url(state, headers, peer).is_ok_and(|base| base.starts_with("https://"))
}

#[utoipa::path(post, path = "/api/console/login", tag = "console", security(()),
    summary = "Exchange an API key for a console login cookie",
    request_body = LoginRequest,
    responses((status = 200, description = "Logged in; the cookie is set", body = LoginView),
        (status = 401, description = "The key is not valid", body = crate::error::ErrorBody)))]
pub(crate) async fn login(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Response> {
    let caller = authenticate_key(&state, &headers, peer, request.key.trim()).await?;
    let secret = keys::random_token(32);
    let ttl = state.config.console_session_ttl.as_secs() as i64;
    let login = ConsoleSession {
        secret_hash: hash(&secret),
        key_id: caller.key_id.clone(),
        csrf_token: keys::random_token(24),
        created_at: now(),
        expires_at: now() + ttl,
    };
    state.store.insert_console_session(&login).await?;
    let view = LoginView {
        key_id: caller.key_id,
        role: caller.role,
        csrf_token: login.csrf_token,
        expires_at: login.expires_at,
    };
    let cookie = login_cookie(secret, ttl, secure(&state, &headers, peer));
    Ok((set_cookie(cookie), axum::Json(view)).into_response())
}

#[utoipa::path(get, path = "/api/console/me", tag = "console", security(()),
    summary = "The console login this cookie stands for (and its CSRF token)",
    description = "204 when there is none: a page that loads before its login asks here first, and a 401 would be an error in its console.",
    responses((status = 200, description = "Logged in", body = LoginView),
        (status = 204, description = "Not logged in")))]
pub(crate) async fn me(State(state): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let login = match cookie_secret(&headers) {
        Some(secret) => state.store.console_session(&hash(&secret)).await?,
        None => None,
    };
    let Some(login) = login else { return Ok(StatusCode::NO_CONTENT.into_response()) };
    // The key behind it, as it is now: revoked, and the login is over.
    let caller = match crate::routes::caller_of_key(&state, &login.key_id).await {
        Ok(caller) => caller,
        Err(_) => return Ok(StatusCode::NO_CONTENT.into_response()),
    };
    let view = LoginView {
        key_id: caller.key_id,
        role: caller.role,
        csrf_token: login.csrf_token,
        expires_at: login.expires_at,
    };
    Ok(axum::Json(view).into_response())
}

#[utoipa::path(post, path = "/api/console/logout", tag = "console",
    summary = "End the console login", security(()),
    responses((status = 204, description = "Logged out; the cookie is cleared")))]
pub(crate) async fn logout(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
) -> Result<Response> {
    // The cookie is the credential being given up: checking CSRF here would only let another
    // site keep someone logged in, which it cannot do anyway.
    if let Some(secret) = cookie_secret(&headers) {
        state.store.delete_console_session(&hash(&secret)).await?;
    }
    let cleared = login_cookie(String::new(), 0, secure(&state, &headers, peer));
    Ok((StatusCode::NO_CONTENT, set_cookie(cleared)).into_response())
}

/// The caller a login cookie stands for, checking the CSRF token on writes. `None` when the
/// request has no login cookie.
pub(crate) async fn cookie_caller(parts: &Parts, state: &AppState) -> Option<Result<Caller>> {
    let secret = cookie_secret(&parts.headers)?;
    Some(
        async move {
            let expired = || {
                ApiError::unauthorized(
                    "console_login_expired",
                    "the console login has expired or ended; log in again",
                )
            };
            let login = state.store.console_session(&hash(&secret)).await?.ok_or_else(expired)?;
            let caller = crate::routes::caller_of_key(state, &login.key_id).await?;
            if writes(&parts.method) {
                let sent =
                    parts.headers.get(CSRF_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
                if !bool::from(sent.ct_eq(login.csrf_token.as_bytes())) {
                    return Err(ApiError::refused(
                        StatusCode::FORBIDDEN,
                        "csrf_failed",
                        "a write with the console's cookie needs its X-CSRF-Token",
                    ));
                }
            }
            Ok(caller)
        }
        .await,
    )
}

fn writes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The console's page and assets, embedded: the script built from `api/console/src` with npm
/// (committed in `dist/`), the page, stylesheet and icon as written.
/// Its policy is the terminal page's: only this origin, no inline script or style, no
/// evaluation. It may frame pages of this origin only (the terminal page and the recording
/// player, in a session's view) and is framed by none.
pub const CONSOLE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; frame-src 'self'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// The recording player's page: the console's policy, except that it may compile
/// WebAssembly (`'wasm-unsafe-eval'`, which allows no JavaScript evaluation: asciinema-player
/// runs its terminal emulator as WebAssembly) and is framed by the console only.
pub const PLAYER_POLICY: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
    style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'self'";

const PAGE: &str = include_str!("../console/src/index.html");
const SCRIPT: &str = include_str!("../console/dist/console.js");
const STYLE: &str = include_str!("../console/src/console.css");
const ICON: &str = include_str!("../console/src/favicon.svg");
const PLAYER: &str = include_str!("../console/dist/player.js");
const PLAYER_PAGE: &str = include_str!("../console/src/player.html");
const PLAYER_STYLE: &str = include_str!("../console/dist/player.css");

fn served(body: &'static str, content_type: &'static str) -> Response {
    served_under(CONSOLE_POLICY, body, content_type)
}

fn served_under(policy: &'static str, body: &'static str, content_type: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(policy)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        // Assets carry no version in their name: revalidate, so an upgrade shows at once.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}

/// `GET /`: the console.
#[utoipa::path(get, path = "/", tag = "console", security(()), summary = "The web console (HTML)",
    responses((status = 200, description = "The console's page", content_type = "text/html")))]
pub(crate) async fn page() -> Response {
    served(PAGE, "text/html; charset=utf-8")
}

/// `GET /console/console.js`.
#[utoipa::path(get, path = "/console/console.js", tag = "console", security(()),
    summary = "The console's script",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript")))]
pub(crate) async fn script() -> Response {
    served(SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /console/console.css`.
#[utoipa::path(get, path = "/console/console.css", tag = "console", security(()),
    summary = "The console's stylesheet",
    responses((status = 200, description = "CSS", content_type = "text/css")))]
pub(crate) async fn style() -> Response {
    served(STYLE, "text/css; charset=utf-8")
}

/// `GET /console/favicon.svg`.
#[utoipa::path(get, path = "/console/favicon.svg", tag = "console", security(()),
    summary = "The console's icon",
    responses((status = 200, description = "SVG", content_type = "image/svg+xml")))]
pub(crate) async fn icon() -> Response {
    served(ICON, "image/svg+xml")
}

/// `GET /console/player`: the recording player's page, framed by a session's view.
#[utoipa::path(get, path = "/console/player", tag = "console", security(()),
    summary = "The recording player's page (HTML; `?session=ID`)",
    responses((status = 200, description = "The player's page", content_type = "text/html")))]
pub(crate) async fn player_page() -> Response {
    served_under(PLAYER_POLICY, PLAYER_PAGE, "text/html; charset=utf-8")
}

/// `GET /console/player.js`: the recording player, loaded when a recording is played.
#[utoipa::path(get, path = "/console/player.js", tag = "console", security(()),
    summary = "The console's recording player (asciinema-player)",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript")))]
pub(crate) async fn player() -> Response {
    served(PLAYER, "text/javascript; charset=utf-8")
}

/// `GET /console/player.css`.
#[utoipa::path(get, path = "/console/player.css", tag = "console", security(()),
    summary = "The recording player's stylesheet",
    responses((status = 200, description = "CSS", content_type = "text/css")))]
pub(crate) async fn player_style() -> Response {
    served(PLAYER_STYLE, "text/css; charset=utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_for_this_site_only_and_hidden_from_scripts() {
        let plain = login_cookie("s".into(), 60, false).to_string();
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"), "{plain}");
        assert!(
            plain.contains("Path=/") && plain.contains("Max-Age=60") && !plain.contains("Secure")
        );
        assert!(login_cookie("s".into(), 60, true).to_string().contains("Secure"));
    }

    #[test]
    fn the_login_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; cliscale_console=xyz; b=2"));
        assert_eq!(cookie_secret(&headers).as_deref(), Some("xyz"));
        assert_eq!(cookie_secret(&HeaderMap::new()), None);
    }

    #[test]
    fn the_first_load_stays_well_under_its_budget() {
        // 200 KB of compressed JavaScript at most (docs/console.md); this holds the whole
        // uncompressed bundle to it.
        assert!(SCRIPT.len() < 200 * 1024, "console.js is {} bytes", SCRIPT.len());
        assert!(PAGE.contains("/console/console.js") && !PAGE.contains("<script>"));
    }

    /// WCAG's contrast ratio of two `#rrggbb` colours.
    fn contrast(a: &str, b: &str) -> f64 {
        let luminance = |hex: &str| {
            let channel = |i: usize| {
                let c =
                    f64::from(u8::from_str_radix(&hex[1 + 2 * i..3 + 2 * i], 16).unwrap()) / 255.0;
                if c <= 0.03928 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) }
            };
            0.2126 * channel(0) + 0.7152 * channel(1) + 0.0722 * channel(2)
        };
        let (x, y) = (luminance(a), luminance(b));
        (x.max(y) + 0.05) / (x.min(y) + 0.05)
    }

    /// The `--name: #rrggbb` variables of the stylesheet block that starts with `selector`.
    fn theme(selector: &str) -> std::collections::HashMap<String, String> {
        let block = STYLE.split(selector).nth(1).unwrap().split('}').next().unwrap();
        block
            .split(';')
            .filter_map(|d| d.trim().strip_prefix("--")?.split_once(':'))
            .filter(|(_, v)| v.trim().starts_with('#'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    }

    #[test]
    fn every_text_colour_meets_wcag_aa_in_both_themes() {
        for selector in [":root {", ":root[data-theme=\"dark\"] {"] {
            let t = theme(selector);
            for text in ["fg", "muted", "accent", "danger", "ok", "bad", "warn", "wait"] {
                for background in ["bg", "card"] {
                    let ratio = contrast(&t[text], &t[background]);
                    assert!(ratio >= 4.5, "{selector} {text} on {background}: {ratio:.2}");
                }
            }
            assert!(contrast(&t["accent-fg"], &t["accent"]) >= 4.5, "{selector} buttons");
        }
    }

    #[test]
    fn only_the_player_page_may_compile_webassembly() {
        assert!(!CONSOLE_POLICY.contains("unsafe"), "{CONSOLE_POLICY}");
        assert!(PLAYER_POLICY.contains("'wasm-unsafe-eval'"));
        assert!(!PLAYER_POLICY.replace("'wasm-unsafe-eval'", "").contains("unsafe"));
        assert!(PLAYER_POLICY.contains("frame-ancestors 'self'"));
        assert!(PLAYER_PAGE.contains("/console/player.js") && !PLAYER_PAGE.contains("<script>"));
    }

    #[test]
    fn only_reads_go_without_a_csrf_token() {
        assert!(!writes(&Method::GET) && !writes(&Method::HEAD));
        assert!(writes(&Method::POST) && writes(&Method::DELETE) && writes(&Method::PATCH));
    }
}
