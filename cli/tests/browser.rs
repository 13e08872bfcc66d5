//! The terminal page in headless Chromium: open the URL the API hands out, type, see the echo
//! and the exit code, reload, and find the output neither lost nor duplicated.
//!
//! Chromium is driven over the DevTools protocol (`cliscale_testkit::browser`).

use cliscale_core::token::TokenScope;
use cliscale_testkit::stack as common;

use cliscale_testkit::browser::{Browser, bright};
use common::{ADMIN_KEY, Backend, Stack};
use serde_json::{Value, json};

/// Where kept screenshots go: `target/tmp/`.
fn keep_dir() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_see_the_exit_code_and_reload_without_losing_or_duplicating_output() {
    let stack = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let created = stack
        .create(
            ADMIN_KEY,
            json!({ "command": "printf 'ready> '; read -r line; echo \"you typed: $line\"; \
                                read -r again; echo \"second: $again\"; exit 7" }),
        )
        .await;
    let url = created["terminalUrl"].as_str().unwrap();
    let Some(mut browser) = Browser::launch_or_skip(keep_dir()).await else { return };
    browser.open(url).await;
    browser.wait_until("document.getElementById('conn').textContent === 'connected'").await;
    let location = browser.eval("location.href").await;
    assert!(
        !location.as_str().unwrap().contains("token"),
        "the token left the address bar: {location}"
    );
    browser.wait_until("window.term && window.cliscale.offset > 0").await;

    browser.type_line("hello").await;
    browser.wait_until("document.body && window.cliscale.offset > 0 && \
                        (() => { const b = window.term.buffer.active; for (let i = 0; i < b.length; i++) \
                          if (b.getLine(i).translateToString().includes('you typed: hello')) return true; return false; })()")
        .await;

    // A reload starts a fresh page: it reconnects with the token handed over the socket and
    // replays the log, so every line is there exactly once.
    browser.call("Page.reload", json!({})).await;
    browser
        .wait_until(
            "window.cliscale && document.getElementById('conn').textContent === 'connected'",
        )
        .await;
    browser.wait_until("(() => { const b = window.term.buffer.active; for (let i = 0; i < b.length; i++) \
                          if (b.getLine(i).translateToString().includes('you typed: hello')) return true; return false; })()")
        .await;
    let screen = browser.screen().await;
    assert_eq!(screen.matches("you typed: hello").count(), 1, "{screen}");
    assert_eq!(screen.matches("ready> ").count(), 1, "{screen}");

    browser.type_line("again").await;
    browser.wait_until("document.getElementById('exit').textContent === '7'").await;
    let screen = browser.screen().await;
    assert!(screen.contains("second: again"), "{screen}");
    assert_eq!(browser.eval("document.getElementById('phase').textContent").await, json!("Failed"));
    let done = stack.wait_for_phase(created["sessionId"].as_str().unwrap(), "Failed").await;
    assert_eq!(done["exitCode"], 7);
}

/// A session's `scrollbackLines` reaches the page: the link carries it, the terminal keeps that
/// many lines, a reload keeps it, and a hand-edited value is held to the spec's bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_keeps_the_sessions_scrollback() {
    let stack = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let created = stack
        .create(ADMIN_KEY, json!({ "command": "seq 1 3000; sleep 30", "scrollback_lines": 2000 }))
        .await;
    let url = created["terminalUrl"].as_str().unwrap();
    assert!(url.contains("?scrollback=2000#token="), "{url}");
    let Some(mut browser) = Browser::launch_or_skip(keep_dir()).await else { return };
    browser.open(url).await;
    browser.wait_until("window.term && window.cliscale.offset > 0").await;
    assert_eq!(browser.eval("window.term.options.scrollback").await, json!(2000));
    // 3,000 lines printed, 2,000 kept above the screen: the first lines are gone.
    browser
        .wait_until(
            "(() => { const b = window.term.buffer.active; \
                      for (let i = 0; i < b.length; i++) \
                        if (b.getLine(i).translateToString().trim() === '3000') return true; \
                      return false; })()",
        )
        .await;
    let first =
        browser.eval("window.term.buffer.active.getLine(0).translateToString().trim()").await;
    assert_ne!(first, json!("1"), "the terminal kept more than its scrollback");
    assert!(browser.eval("window.term.buffer.active.length").await.as_u64().unwrap() <= 2000 + 60);
    browser.call("Page.reload", json!({})).await;
    browser.wait_until("window.term && window.cliscale.offset > 0").await;
    assert_eq!(browser.eval("window.term.options.scrollback").await, json!(2000));
    // A hand-edited address: the bounds of the spec hold.
    let sid = created["sessionId"].as_str().unwrap();
    let (status, minted) = stack
        .call(
            "POST",
            &format!("/api/sessions/{sid}/tokens"),
            Some(ADMIN_KEY),
            Some(json!({ "scope": "view" })),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    let edited =
        minted["terminalUrl"].as_str().unwrap().replace("?scrollback=2000", "?scrollback=99999999");
    browser.open(&edited).await;
    browser.wait_until("window.term && window.cliscale.offset > 0").await;
    assert_eq!(browser.eval("window.term.options.scrollback").await, json!(1_000_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_token_in_the_url_is_never_executed() {
    let stack = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let created = stack.create(ADMIN_KEY, json!({ "command": "read -r x" })).await;
    let sid = created["sessionId"].as_str().unwrap();
    let hostile = "%22%3E%3Cscript%3Ewindow.pwned%3D1%3C%2Fscript%3E%3Cimg%20src%3Dx%20onerror%3D%22window.pwned%3D2";
    // The page's HTML never contains what the URL carried, and its CSP forbids inline script.
    let resp =
        stack.http.get(stack.url(&format!("/t/{sid}?token={hostile}"))).send().await.unwrap();
    let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    let html = resp.text().await.unwrap();
    assert!(!html.contains("pwned"));
    let Some(mut browser) = Browser::launch_or_skip(keep_dir()).await else { return };
    browser.open(&stack.url(&format!("/t/{sid}?token={hostile}#token={hostile}"))).await;
    browser.wait_until("document.getElementById('conn').textContent !== 'connecting'").await;
    assert_eq!(browser.eval("typeof window.pwned").await, json!("undefined"));
    assert_eq!(
        browser.eval("document.querySelectorAll('script:not([src]), img').length").await,
        json!(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paste_larger_than_one_message_arrives_whole() {
    // Three times the largest message the gateway and the runner take.
    const SIZE: usize = 3 * 1024 * 1024;
    let stack = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let command = format!("stty raw -echo; printf 'paste> '; head -c {SIZE} | sha256sum");
    let created = stack.create(ADMIN_KEY, json!({ "command": command })).await;
    let Some(mut browser) = Browser::launch_or_skip(keep_dir()).await else { return };
    browser.open(created["terminalUrl"].as_str().unwrap()).await;
    browser.wait_until("document.getElementById('conn').textContent === 'connected'").await;
    browser
        .wait_until("(() => { const b = window.term.buffer.active; for (let i = 0; i < b.length; i++) \
                      if (b.getLine(i).translateToString().includes('paste>')) return true; return false; })()")
        .await;
    browser
        .eval(&format!(
            "window.term.paste('abcdefghijklmnopqrstuvwxyz'.repeat({}).slice(0, {SIZE})); true",
            SIZE / 26 + 1
        ))
        .await;
    let expected: Vec<u8> = (0..SIZE).map(|i| b'a' + (i % 26) as u8).collect();
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&expected))
    };
    browser
        .wait_until(&format!("(() => {{ const b = window.term.buffer.active; for (let i = 0; i < b.length; i++) \
                      if (b.getLine(i).translateToString().includes('{digest}')) return true; return false; }})()"))
        .await;
    let done = stack.wait_for_phase(created["sessionId"].as_str().unwrap(), "Succeeded").await;
    assert_eq!(done["exitCode"], 0);
}

/// What a person sees, not what xterm.js holds in memory: under the page's own policy (no
/// violation, no console error), with the DOM renderer and with the default (WebGL where the
/// browser has it), a monospace grid where columns line up, colours on screen, runs of spaces
/// kept, and a cursor that shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_renders_as_a_terminal_under_its_policy() {
    let stack = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let Some(mut browser) = Browser::launch_or_skip(keep_dir()).await else { return };
    let command = "printf '\\033[31mRED\\033[0m a    b\\niiii|\\nWWWW|\\nhttps://example.com/docs\\n\u{1F642}x\\n'; read -r x";
    let mut kept = None;
    for renderer in ["dom", "default"] {
        let created = stack.create(ADMIN_KEY, json!({ "command": command })).await;
        let url = created["terminalUrl"].as_str().unwrap();
        let url = match renderer {
            "dom" => url.replacen("#", "?renderer=dom#", 1),
            _ => url.to_owned(),
        };
        browser.forget_events();
        browser.open_watched(&url).await;
        browser.wait_until("window.term && window.cliscale.status && window.cliscale.status.phase === 'Running'").await;
        browser
            .wait_until("window.term.buffer.active.getLine(2).translateToString(true) === 'WWWW|'")
            .await;
        let title = browser.eval("document.title").await;
        assert!(title.as_str().unwrap().ends_with("Running"), "{title}");
        let focused = browser.eval("document.activeElement.className").await;
        assert_eq!(focused, "xterm-helper-textarea", "typing needs no click");
        // The bar counts the session's running time.
        browser
            .wait_until("/^\\d+:\\d\\d$/.test(document.getElementById('elapsed').textContent)")
            .await;

        // Monospace: the bar after four narrow and after four wide letters lands in the same
        // column on screen; a proportional font (or collapsed cells) would put them apart.
        let shot = browser.screenshot(Some(&format!("terminal-{renderer}.png"))).await;
        for row in [1, 2] {
            let bar = browser.cell(4, row).await;
            assert!(
                shot.region(bar).into_iter().any(bright),
                "{renderer}: no bar in column 4 of row {row}"
            );
            let after = browser.cell(5, row).await;
            assert!(
                !shot.region(after).into_iter().any(bright),
                "{renderer}: row {row} runs past column 4"
            );
        }
        let font = browser
            .eval(
                "(() => { const c = document.createElement('canvas').getContext('2d'); \
                     c.font = '14px ' + term.options.fontFamily; \
                     return [c.measureText('iiii').width, c.measureText('WWWW').width]; })()",
            )
            .await;
        assert_eq!(font[0], font[1], "{renderer}: the font stack is not monospace: {font}");
        // Colour: the cells of RED hold red pixels.
        let mut red = Vec::new();
        for col in 0..3 {
            red.extend(shot.region(browser.cell(col, 0).await));
        }
        assert!(
            red.iter().any(|p| p[0] > 150 && p[1] < 90 && p[2] < 90),
            "{renderer}: no red pixel in the cells of RED"
        );
        // Runs of spaces are kept: `b` is in column 9, after four spaces.
        assert!(
            shot.region(browser.cell(9, 0).await).into_iter().any(bright),
            "{renderer}: no b in column 9"
        );
        for col in 5..9 {
            let gap = shot.region(browser.cell(col, 0).await);
            assert!(!gap.into_iter().any(bright), "{renderer}: column {col} should be blank");
        }
        if renderer == "dom" {
            let styles = browser
                .eval("(() => { const row = document.querySelector('.xterm-rows > div'); \
                         const span = [...row.querySelectorAll('span')].find(s => s.textContent.startsWith('RED')); \
                         const cs = getComputedStyle(span); \
                         return [cs.color, getComputedStyle(row).whiteSpace, row.textContent]; })()")
                .await;
            let rgb: Vec<u32> = styles[0]
                .as_str()
                .unwrap()
                .trim_start_matches("rgb(")
                .trim_end_matches(')')
                .split(", ")
                .map(|c| c.parse().unwrap())
                .collect();
            assert!(rgb[0] > 150 && rgb[1] < 90 && rgb[2] < 90, "RED is not red: {styles}");
            assert_eq!(styles[1], "pre", "{styles}");
            assert!(styles[2].as_str().unwrap().starts_with("RED a    b"), "{styles}");
        }
        // The cursor shows (it blinks: at least one of a few looks finds it lit).
        let (x, y) = browser
            .eval("[term.buffer.active.cursorX, term.buffer.active.cursorY]")
            .await
            .as_array()
            .map(|v| (v[0].as_u64().unwrap() as usize, v[1].as_u64().unwrap() as usize))
            .unwrap();
        let cursor = browser.cell(x, y).await;
        let mut lit = false;
        for _ in 0..8 {
            let shot = browser.screenshot(None).await;
            let pixels = shot.region(cursor);
            if pixels.iter().filter(|p| bright(**p)).count() * 2 > pixels.len() {
                lit = true;
                break;
            }
            browser.eval("new Promise((r) => setTimeout(() => r(true), 150))").await;
        }
        assert!(lit, "{renderer}: the cursor at ({x}, {y}) never showed");

        // Wide characters take two cells (Unicode 11's widths: an emoji is one cell in the
        // older tables), so what follows lines up.
        let wide = browser
            .eval(
                "(() => { const l = term.buffer.active.getLine(4); \
                     return [l.getCell(0).getWidth(), l.getCell(2).getChars()]; })()",
            )
            .await;
        assert_eq!(wide, json!([2, "x"]), "{renderer}: the emoji's cells");
        // Links: pointing at the URL makes it a link (the pointer cursor).
        let (x, y, w, h) = browser.cell(8, 3).await;
        browser
            .call(
                "Input.dispatchMouseEvent",
                json!({ "type": "mouseMoved", "x": x + w / 2.0, "y": y + h / 2.0 }),
            )
            .await;
        browser.wait_until("document.querySelector('.xterm-cursor-pointer') !== null").await;

        // Search: Ctrl+Shift+F opens the box, Enter selects the next match.
        let ctrl_shift = 2 | 8;
        browser
            .press(json!({ "key": "F", "code": "KeyF", "modifiers": ctrl_shift, "windowsVirtualKeyCode": 70 }))
            .await;
        browser.wait_until("document.activeElement.id === 'search'").await;
        browser.call("Input.insertText", json!({ "text": "WWWW" })).await;
        browser
            .press(json!({ "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13 }))
            .await;
        browser.wait_until("term.getSelection() === 'WWWW'").await;
        // Copy: Ctrl+Shift+C puts the selection on the clipboard.
        browser
            .call(
                "Browser.grantPermissions",
                json!({ "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"] }),
            )
            .await;
        browser.eval("window.term.focus(); true").await;
        browser
            .press(json!({ "key": "C", "code": "KeyC", "modifiers": ctrl_shift, "windowsVirtualKeyCode": 67 }))
            .await;
        browser.wait_until("window.__clip === 'WWWW' || (navigator.clipboard.readText().then((t) => { window.__clip = t; }), false)").await;
        // The selection shows: the cells of the match take the selection colour (#4a6a9a).
        let shot = browser.screenshot(None).await;
        let mut selected = Vec::new();
        for col in 0..4 {
            selected.extend(shot.region(browser.cell(col, 2).await));
        }
        let tinted =
            selected.iter().filter(|p| p[2] > p[0] + 40 && p[2] > 110 && p[1] > 60).count();
        assert!(
            tinted * 3 > selected.len(),
            "{renderer}: the selection is not visible ({tinted} of {})",
            selected.len()
        );

        let violations = browser.eval("window.__violations").await;
        assert_eq!(violations, json!([]), "{renderer}: policy violations");
        assert_eq!(browser.errors(), Vec::<String>::new(), "{renderer}: console errors");
        kept = Some(url);
    }

    // At phone width the bar wraps instead of overflowing, and the terminal fits the screen.
    let sid =
        kept.unwrap().split("/t/").nth(1).unwrap().split(['?', '#']).next().unwrap().to_owned();
    let view = stack
        .call(
            "POST",
            &format!("/api/sessions/{sid}/tokens"),
            Some(ADMIN_KEY),
            Some(json!({"scope": "view"})),
        )
        .await
        .1;
    browser.open_watched_at(view["terminalUrl"].as_str().unwrap(), (390, 700, true)).await;
    browser.wait_until("document.getElementById('conn').textContent === 'connected'").await;
    browser
        .wait_until("window.term.buffer.active.getLine(2).translateToString(true) === 'WWWW|'")
        .await;
    let fits = browser
        .eval(
            "[document.documentElement.scrollWidth, innerWidth, term.cols, \
                document.querySelector('.xterm-screen').getBoundingClientRect().right]",
        )
        .await;
    let n = |i: usize| fits[i].as_f64().unwrap();
    assert!(n(0) <= n(1), "the page overflows sideways at phone width: {fits}");
    assert!(n(3) <= n(1) && n(2) < 80.0, "the terminal does not fit the phone's width: {fits}");
    browser.screenshot(Some("terminal-phone.png")).await;
}

/// The page rides out network drops of 3 s and of a minute: it backs off, says when it will try
/// again, resumes at its offset, and ends up with every line of the output exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_rides_out_network_cuts_with_every_byte_once() {
    let stack = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let Some(mut browser) = Browser::launch_or_skip(keep_dir()).await else { return };
    let command = "i=0; while :; do i=$((i+1)); echo line-$i; sleep 0.05; done";
    let created = stack.create(ADMIN_KEY, json!({ "command": command })).await;
    let gateway: std::net::SocketAddr = stack.base.trim_start_matches("http://").parse().unwrap();
    let proxy = cliscale_testkit::netcut::Proxy::start(gateway).await;
    let url = created["terminalUrl"]
        .as_str()
        .unwrap()
        .replace(&stack.base, &format!("http://{}", proxy.addr));
    browser.open(&url).await;
    browser.wait_until("document.getElementById('conn').textContent === 'connected'").await;
    let last_line = "(() => { const b = term.buffer.active; let n = 0; \
        for (let i = 0; i < b.length; i++) { const m = /^line-(\\d+)$/.exec(b.getLine(i).translateToString(true)); \
          if (m) n = Math.max(n, +m[1]); } return n; })()";
    browser.wait_until(&format!("{last_line} >= 10")).await;
    for outage in [3u64, 60] {
        proxy.cut();
        browser
            .wait_until("document.getElementById('conn').textContent.startsWith('reconnecting in')")
            .await;
        let before = browser.eval(last_line).await.as_u64().unwrap();
        // The outage itself: the network is down this long, whatever the page does.
        tokio::time::sleep(std::time::Duration::from_secs(outage)).await;
        let shown = browser.eval("document.getElementById('reconnect-now').hidden").await;
        assert_eq!(shown, json!(false), "a way to try at once is offered during the outage");
        proxy.restore();
        // Backoff tops out at 30 s (with jitter): within 45 s the page is back.
        browser
            .wait_until_within("document.getElementById('conn').textContent === 'connected'", 45)
            .await;
        browser.wait_until(&format!("{last_line} > {} ", before + 40)).await;
    }
    // Every line once, in order, none missing: the page resumed at its offset each time.
    let lines = browser
        .eval("(() => { const b = term.buffer.active; const out = []; \
                 for (let i = 0; i < b.length; i++) { const t = b.getLine(i).translateToString(true); \
                   if (t.startsWith('line-')) out.push(+t.slice(5)); } return out; })()")
        .await;
    let lines: Vec<u64> = lines.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(lines.len() > 100, "{} lines", lines.len());
    let expected: Vec<u64> = (1..=lines.len() as u64).collect();
    assert_eq!(lines, expected, "lines lost or shown twice across the cuts");
}

/// A token for `sid` signed with the stack's own key, `ttl_secs` from now (negative: expired).
fn signed_token(
    stack: &Stack,
    sid: &str,
    scope: cliscale_core::token::TokenScope,
    ttl_secs: i64,
) -> String {
    let jwks: Value = serde_json::from_str(
        &std::fs::read_to_string(stack.data.path().join("jwks.json")).unwrap(),
    )
    .unwrap();
    let der = std::fs::read(stack.data.path().join("signing-key.der")).unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap();
    let key = cliscale_core::token::SessionSigningKey::from_pkcs8_der(kid, &der).unwrap();
    let mut claims = cliscale_core::token::new_claims(
        "cliscale",
        cliscale_core::token::TERMINAL_AUDIENCE,
        cliscale_testkit::stack::ADMIN_KEY_ID,
        sid,
        scope,
        300,
    );
    claims.exp = (cliscale_core::token::now_secs() as i64 + ttl_secs) as u64;
    key.sign(&claims).unwrap()
}

/// A page for each refusal: a stack with one running session, and the browser.
struct RefusalBench {
    stack: Stack,
    browser: Browser,
    sid: String,
    created: Value,
}

impl RefusalBench {
    async fn start() -> Option<RefusalBench> {
        let stack = Stack::start(Backend::Sqlite, &["--linger", "0s"]).await.unwrap();
        let browser = Browser::launch_or_skip(keep_dir()).await?;
        let created = stack.create(ADMIN_KEY, json!({ "command": "read -r x" })).await;
        let sid = created["sessionId"].as_str().unwrap().to_owned();
        stack.wait_for_phase(&sid, "Running").await;
        Some(RefusalBench { stack, browser, sid, created })
    }

    fn page(&self, sid: &str, token: &str) -> String {
        format!("{}/t/{sid}#token={token}", self.stack.base)
    }

    fn token(&self, sid: &str, scope: cliscale_core::token::TokenScope, ttl: i64) -> String {
        signed_token(&self.stack, sid, scope, ttl)
    }

    /// Opens `url` and checks the notice the page shows, and that it gave up on the link.
    async fn says(&mut self, url: &str, title: &str, advice: &str) {
        self.browser.open(url).await;
        self.browser.wait_until("!document.getElementById('notice').hidden").await;
        let said = self
            .browser
            .eval("document.getElementById('notice-title').textContent + ' / ' + document.getElementById('notice-text').textContent")
            .await;
        let said = said.as_str().unwrap();
        assert!(said.starts_with(title) && said.contains(advice), "{url}: {said}");
        let conn = self.browser.eval("document.getElementById('conn').textContent").await;
        assert_eq!(conn, "refused", "{url}: a dead link is not retried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_link_says_so() {
    let Some(mut b) = RefusalBench::start().await else { return };
    let used = b.created["token"].as_str().unwrap().to_owned();
    let ws = b.stack.ws_url(&b.sid, &format!("token={used}"));
    drop(common::open_terminal(&ws).await.unwrap());
    let url = b.page(&b.sid, &used);
    b.says(&url, "This link has already been used", "Ask for a new link").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_link_says_so() {
    let Some(mut b) = RefusalBench::start().await else { return };
    let url = b.page(&b.sid, &b.token(&b.sid, TokenScope::Interact, -120));
    b.says(&url, "This link has expired", "Ask for a new link").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_link_says_so() {
    let Some(mut b) = RefusalBench::start().await else { return };
    let url = b.page(&b.sid, "not.a.token");
    b.says(&url, "This link is not valid", "Copy the whole link again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_for_another_session_says_so() {
    let Some(mut b) = RefusalBench::start().await else { return };
    let other = b.stack.create(ADMIN_KEY, json!({ "command": "read -r x" })).await;
    let other_sid = other["sessionId"].as_str().unwrap().to_owned();
    let url = b.page(&b.sid, &b.token(&other_sid, TokenScope::Interact, 300));
    b.says(&url, "This link is for another session", "Use the link made for this session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_to_no_session_says_so() {
    let Some(mut b) = RefusalBench::start().await else { return };
    let url = b.page("no-such-session", &b.token("no-such-session", TokenScope::View, 300));
    b.says(&url, "There is no such session", "time to live").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_link_opens_and_says_it_cannot_type() {
    let Some(mut b) = RefusalBench::start().await else { return };
    let url = b.page(&b.sid, &b.token(&b.sid, TokenScope::View, 300));
    b.browser.open(&url).await;
    b.browser.wait_until("document.getElementById('conn').textContent === 'connected'").await;
    b.browser.wait_until("!document.getElementById('readonly').hidden").await;
    let badge = b.browser.eval("document.getElementById('readonly').textContent").await;
    assert_eq!(badge, "read-only");
}

/// A finished session whose runner is gone opens from the stored output: its lines in their
/// colours, read-only, and how it ended in the status bar; nothing on the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_session_opens_from_the_store_with_its_output() {
    let Some(mut b) = RefusalBench::start().await else { return };
    let command = "printf 'plain line\\n\\033[32mGREEN-BYE\\033[0m\\n'; exit 3";
    let done = b.stack.create(ADMIN_KEY, json!({ "command": command })).await;
    let done_sid = done["sessionId"].as_str().unwrap().to_owned();
    b.stack.wait_for_phase(&done_sid, "Failed").await;
    common::wait_for_runner_exit(&done_sid).await;
    b.browser.forget_events();
    let url = b.page(&done_sid, &b.token(&done_sid, TokenScope::View, 300));
    b.browser.open_watched(&url).await;
    b.browser
        .wait_until(
            "window.cliscale && window.cliscale.finished && \
             document.getElementById('conn').textContent === 'closed'",
        )
        .await;
    let bar = b
        .browser
        .eval("['phase', 'reason', 'exit', 'conn'].map((id) => document.getElementById(id).textContent)")
        .await;
    assert_eq!(bar, json!(["Failed", "Exited", "3", "closed"]));
    assert!(b.browser.eval("document.getElementById('notice').hidden").await.as_bool().unwrap());
    assert_eq!(b.browser.eval("document.getElementById('readonly').hidden").await, json!(false));
    let screen = b.browser.screen().await;
    assert!(screen.contains("plain line") && screen.contains("GREEN-BYE"), "{screen}");
    // What a person sees: the stored escape sequences rendered, the second line green.
    let shot = b.browser.screenshot(Some("terminal-finished.png")).await;
    let mut green = Vec::new();
    for col in 0..9 {
        green.extend(shot.region(b.browser.cell(col, 1).await));
    }
    assert!(
        green.iter().any(|p| p[1] > 150 && p[0] < 120 && p[2] < 120),
        "no green pixel in the cells of GREEN-BYE"
    );
    assert_eq!(b.browser.errors(), Vec::<String>::new());
}

/// A link opened while its session still starts (code fetched, installed): the command starts
/// at the page's size, and what the person types meanwhile is refused in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_opened_while_the_session_starts_gives_the_command_its_size() {
    let Some(mut b) = RefusalBench::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    // The session runs as a user of its own: it must be able to look into the folder.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    let go = dir.path().join("go");
    let install = format!("while [ ! -e '{}' ]; do sleep 0.05; done", go.display());
    let created = b
        .stack
        .create(ADMIN_KEY, json!({ "command": "stty size; read -r x", "install_cmd": install }))
        .await;
    let sid = created["sessionId"].as_str().unwrap().to_owned();
    b.stack.wait_for_phase(&sid, "Starting").await;
    b.browser.forget_events();
    b.browser.open_watched(&b.page(&sid, &b.token(&sid, TokenScope::Interact, 300))).await;
    b.browser
        .wait_until(
            "document.getElementById('conn').textContent === 'connected' && \
             document.getElementById('phase').textContent === 'Starting'",
        )
        .await;
    // Keystrokes before the start are refused; the refusal follows the page's resize.
    b.browser.type_line("x").await;
    b.browser
        .wait_until(
            "document.getElementById('note').textContent.includes('1 byte of input dropped')",
        )
        .await;
    std::fs::write(&go, b"").unwrap();
    let size = b.browser.eval("window.term.rows + ' ' + window.term.cols").await;
    let size = size.as_str().unwrap().to_owned();
    assert_ne!(
        size, "24 80",
        "the page is at the request's default size: the test would prove nothing"
    );
    b.browser
        .wait_until(&format!(
            "(() => {{ const b = window.term.buffer.active; \
               for (let i = 0; i < b.length; i++) \
                 if (b.getLine(i).translateToString(true) === '{size}') return true; \
               return false; }})()"
        ))
        .await;
    assert_eq!(b.browser.eval("document.getElementById('phase').textContent").await, "Running");
    assert_eq!(b.browser.errors(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_said_while_the_page_keeps_trying() {
    let Some(mut b) = RefusalBench::start().await else { return };
    let gateway: std::net::SocketAddr = b.stack.base.trim_start_matches("http://").parse().unwrap();
    let proxy = cliscale_testkit::netcut::Proxy::start(gateway).await;
    let via = b
        .page(&b.sid, &b.token(&b.sid, TokenScope::View, 300))
        .replace(&b.stack.base, &format!("http://{}", proxy.addr));
    b.browser.open(&via).await;
    b.browser.wait_until("document.getElementById('conn').textContent === 'connected'").await;
    proxy.cut();
    b.browser
        .wait_until_within(
            "document.getElementById('notice-title').textContent === 'Cannot reach the server'",
            45,
        )
        .await;
    let conn = b.browser.eval("document.getElementById('conn').textContent").await;
    assert!(conn.as_str().unwrap().starts_with("reconnecting in"), "it keeps trying: {conn}");
}
