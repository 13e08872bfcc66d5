//! The web console in headless Chromium against the real `cliscale up`, as a team lead uses it:
//! log in, watch sessions change without reloading, create one, type into its terminal,
//! cancel one, make and revoke a key, log out, and log in as a viewer. Every page load is
//! watched for console errors and policy violations.

use cliscale_core::rest::{CreateSessionRequest, Role};
use cliscale_testkit::browser::Browser;
use cliscale_testkit::stack::{ADMIN_KEY, Backend, Stack};
use serde_json::{Value, json};

fn keep_dir() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
}

/// Puts `text` into the field `selector` as typing would (focus, then text input events).
async fn fill(b: &mut Browser, selector: &str, text: &str) {
    b.eval(&format!("document.querySelector({selector:?}).focus(); true")).await;
    b.call("Input.insertText", json!({ "text": text })).await;
}

/// Sets a control's value as a person's choice would, with the event the page listens for.
async fn set_value(b: &mut Browser, selector: &str, value: &str, event: &str) {
    b.eval(&format!(
        "(() => {{ const e = document.querySelector({selector:?}); e.value = {value:?}; \
           e.dispatchEvent(new Event({event:?})); return true; }})()"
    ))
    .await;
}

async fn click(b: &mut Browser, selector: &str) {
    b.wait_until(&format!("document.querySelector({selector:?}) !== null")).await;
    b.eval(&format!("document.querySelector({selector:?}).click(); true")).await;
}

/// Clicks the button whose text is `text`.
async fn click_text(b: &mut Browser, text: &str) {
    let find = format!(
        "[...document.querySelectorAll('button, a')].find((e) => e.textContent.trim() === {text:?})"
    );
    b.wait_until(&format!("{find} !== undefined")).await;
    b.eval(&format!("{find}.click(); true")).await;
}

async fn log_in(b: &mut Browser, key: &str) {
    b.wait_until("document.querySelector('#api-key') !== null").await;
    fill(b, "#api-key", key).await;
    click(b, "form button[type=submit]").await;
    b.wait_until("document.querySelector('h1')?.textContent === 'Sessions'").await;
}

/// The phase badge of session `id` in the list.
fn badge_of(id: &str) -> String {
    format!("document.querySelector('tr[data-session=\"{id}\"] .badge')?.textContent")
}

/// A human-readable check of what the screen shows: the heading and a session's row are laid
/// out at a readable size, and the row's pixels hold text (more than one colour), not a blank.
async fn assert_laid_out(b: &mut Browser, shot: &cliscale_testkit::browser::Shot, id: &str) {
    let boxes = b
        .eval(&format!(
            "(() => {{ const r = (e) => {{ const b = e.getBoundingClientRect(); return [b.x, b.y, b.width, b.height]; }}; \
               return [r(document.querySelector('h1')), r(document.querySelector('tr[data-session=\"{id}\"]'))]; }})()"
        ))
        .await;
    let rect = |i: usize| {
        let n = |j: usize| boxes[i][j].as_f64().unwrap();
        (n(0), n(1), n(2), n(3))
    };
    let (heading, row) = (rect(0), rect(1));
    assert!(heading.2 > 80.0 && heading.3 > 20.0, "the heading collapsed: {heading:?}");
    assert!(row.2 > 300.0 && row.3 > 20.0 && row.1 > heading.1, "the row collapsed: {row:?}");
    let pixels = shot.region(row);
    let distinct: std::collections::HashSet<[u8; 3]> = pixels.iter().copied().collect();
    assert!(distinct.len() > 8, "the row shows no text: {} colours", distinct.len());
}

fn assert_clean(b: &Browser, violations: &Value) {
    assert_eq!(violations, &json!([]), "policy violations");
    assert!(b.errors().is_empty(), "console errors: {:?}", b.errors());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_lead_runs_sessions_from_the_console() {
    let Some(mut b) = Browser::launch_or_skip(keep_dir()).await else { return };
    let up = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let admin = up.client(ADMIN_KEY);

    b.open_watched(&format!("{}/", up.base)).await;
    log_in(&mut b, ADMIN_KEY).await;
    // The page was never reloaded from here on: this stays.
    b.eval("window.__sameDocument = true").await;

    // A session made elsewhere appears and goes from its start to Succeeded, live. Every
    // phase its row shows is recorded as the page renders it.
    b.eval(
        "window.__phases = {}; new MutationObserver(() => { \
           for (const row of document.querySelectorAll('tr[data-session]')) { \
             const seen = (window.__phases[row.dataset.session] ??= []); \
             const now = row.querySelector('.badge').textContent; \
             if (seen[seen.length - 1] !== now) seen.push(now); } \
         }).observe(document.body, { subtree: true, childList: true, characterData: true }); true",
    )
    .await;
    let later = CreateSessionRequest::new("sleep 1; echo made-elsewhere");
    let elsewhere = admin.create_session(&later, None).await.unwrap().session_id;
    b.wait_until(&format!("{} === 'Succeeded'", badge_of(&elsewhere))).await;
    let seen = b.eval(&format!("window.__phases['{elsewhere}']")).await;
    let seen: Vec<&str> = seen.as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    let order = ["Pending", "Starting", "Running", "Succeeded"];
    let ranks: Vec<usize> =
        seen.iter().map(|p| order.iter().position(|o| o == p).expect("a phase of a run")).collect();
    assert!(seen.len() >= 2 && ranks.windows(2).all(|w| w[0] < w[1]), "phases shown: {seen:?}");
    assert!(seen[0] != "Succeeded", "seen before it ended: {seen:?}");
    let shot = b.screenshot(Some("console-sessions.png")).await;
    assert_laid_out(&mut b, &shot, &elsewhere).await;

    // The search runs on the server: another session leaves the table, this one stays.
    let other = admin.create_session(&CreateSessionRequest::new("true"), None).await.unwrap();
    b.wait_until(&format!("{} !== undefined", badge_of(&other.session_id))).await;
    fill(&mut b, "input[type=search]", "MADE-elsewhere").await;
    b.wait_until(&format!(
        "{} === undefined && {} === 'Succeeded'",
        badge_of(&other.session_id),
        badge_of(&elsewhere)
    ))
    .await;
    b.eval("document.querySelector('input[type=search]').value = ''; true").await;
    b.eval("document.querySelector('input[type=search]').dispatchEvent(new Event('input')); true")
        .await;
    b.wait_until(&format!("{} !== undefined", badge_of(&other.session_id))).await;

    // New session from the form; its page shows it run and end.
    click_text(&mut b, "New session").await;
    b.wait_until("document.querySelector('#f-command') !== null").await;
    fill(&mut b, "#f-command", "echo made-in-the-console").await;
    fill(&mut b, "#f-ttl_seconds", "soon").await;
    click(&mut b, "form button[type=submit]").await;
    // A bad field is said next to it, and nothing is made.
    b.wait_until("document.querySelector('#h-ttl_seconds.field-error') !== null").await;
    assert_eq!(admin.list_sessions(&Default::default()).await.unwrap().items.len(), 2);
    b.eval("document.querySelector('#f-ttl_seconds').value = ''; true").await;
    b.eval("document.querySelector('#f-ttl_seconds').dispatchEvent(new Event('input')); true")
        .await;
    click(&mut b, "form button[type=submit]").await;
    b.wait_until("location.hash.startsWith('#/sessions/')").await;
    b.wait_until("document.querySelector('.title .badge')?.textContent === 'Succeeded'").await;
    // Its recording plays in the page (the player is fetched now, not on the first load).
    click_text(&mut b, "Play recording").await;
    let player = "document.querySelector('iframe.player')?.contentDocument";
    b.wait_until(&format!("{player}?.body?.textContent.includes('made-in-the-console')")).await;
    b.screenshot(Some("console-recording.png")).await;
    // Only the player's frame may compile WebAssembly; it broke no rule in doing so.
    let framed = b.eval(&format!("{player}.defaultView.__violations")).await;
    assert_eq!(framed, json!([]), "policy violations in the player's frame");

    // A shell: its terminal in the page takes typing.
    let bash = CreateSessionRequest::new("bash --norc --noprofile");
    let shell = admin.create_session(&bash, None).await.unwrap().session_id;
    b.eval(&format!("location.hash = '#/sessions/{shell}'; true")).await;
    b.wait_until("document.querySelector('iframe.terminal')?.contentWindow?.term !== undefined")
        .await;
    let term = "document.querySelector('iframe.terminal').contentWindow.term";
    let screen = format!(
        "(() => {{ const a = {term}.buffer.active; let s = ''; \
           for (let i = 0; i < a.length; i++) s += a.getLine(i).translateToString(true) + '\\n'; \
           return s; }})()"
    );
    b.wait_until(&format!("{screen}.includes('$')")).await;
    b.eval(&format!("{term}.focus(); true")).await;
    b.call("Input.insertText", json!({ "text": "echo typed-$((2+3))" })).await;
    b.press(json!({ "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": "\r" }))
        .await;
    b.wait_until(&format!("{screen}.includes('typed-5')")).await;
    b.screenshot(Some("console-session.png")).await;
    // The terminal page in the frame is watched too.
    let framed =
        b.eval("document.querySelector('iframe.terminal').contentWindow.__violations").await;
    assert_eq!(framed, json!([]), "policy violations in the terminal's frame");

    // Cancel it: asked once more, then done.
    click_text(&mut b, "Cancel session").await;
    click_text(&mut b, "Cancel it now").await;
    b.wait_until("document.querySelector('.title .badge')?.textContent === 'Cancelled'").await;
    assert_eq!(admin.session(&shell).await.unwrap().phase.as_str(), "Cancelled");

    // A key: made with a role, shown once, then revoked.
    click_text(&mut b, "API keys").await;
    b.wait_until("document.querySelector('input[name=key-name]') !== null").await;
    fill(&mut b, "input[name=key-name]", "from-the-console").await;
    set_value(&mut b, "select[name=key-role]", r#"viewer"#, "change").await;
    click_text(&mut b, "Create key").await;
    b.wait_until("document.querySelector('.secret')?.textContent.startsWith('csk_')").await;
    let shown = b.eval("document.querySelector('.secret').textContent").await;
    let shown = shown.as_str().unwrap().to_owned();
    let id = shown.split('_').nth(1).unwrap().to_owned();
    let keys = admin.list_keys().await.unwrap().items;
    let made = keys.iter().find(|k| k.id == id).expect("the key exists");
    assert_eq!((made.name.as_str(), made.role), ("from-the-console", Role::Viewer));
    let viewer = up.client(&shown);
    viewer.list_sessions(&Default::default()).await.expect("the new key works");
    b.eval(&format!("document.querySelector('tr[data-key=\"{id}\"] button').click(); true")).await;
    click_text(&mut b, "Revoke now").await;
    b.wait_until(&format!(
        "document.querySelector('tr[data-key=\"{id}\"] td:nth-child(5)').textContent !== '-'"
    ))
    .await;
    assert_eq!(
        viewer.list_sessions(&Default::default()).await.unwrap_err().code(),
        Some("invalid_api_key")
    );

    assert_eq!(b.eval("window.__sameDocument").await, json!(true), "the page never reloaded");
    let violations = b.eval("window.__violations").await;
    assert_clean(&b, &violations);

    // Log out: back to the login, and the cookie opens nothing.
    click_text(&mut b, "Log out").await;
    b.wait_until("document.querySelector('#api-key') !== null").await;
    let status = b.eval("fetch('/api/sessions').then((r) => r.status)").await;
    assert_eq!(status, json!(401));

    // A viewer sees sessions and no way to make one.
    let viewer_key = up.new_key("viewer").await;
    log_in(&mut b, &viewer_key).await;
    b.wait_until(&format!("{} === 'Succeeded'", badge_of(&elsewhere))).await;
    let create = b.eval("[...document.querySelectorAll('a, button')].some((e) => /New session|Create/.test(e.textContent))").await;
    assert_eq!(create, json!(false), "a viewer is offered no create");
    let violations = b.eval("window.__violations").await;
    // The 401 of the logged-out fetch above is the test's own probe.
    let errors: Vec<String> =
        b.errors().into_iter().filter(|e| !e.contains("/api/sessions")).collect();
    assert_eq!(violations, json!([]));
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_has_both_themes_and_fits_a_phone() {
    let Some(mut b) = Browser::launch_or_skip(keep_dir()).await else { return };
    let up = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let admin = up.client(ADMIN_KEY);
    let made = admin.create_session(&CreateSessionRequest::new("echo themed"), None).await.unwrap();
    up.wait_for_phase(&made.session_id, "Succeeded").await;

    b.open_watched_at(&format!("{}/", up.base), (390, 844, true)).await;
    log_in(&mut b, ADMIN_KEY).await;
    b.wait_until(&format!("{} === 'Succeeded'", badge_of(&made.session_id))).await;
    // Nothing wider than the phone's screen.
    let width = b.eval("document.documentElement.scrollWidth").await;
    assert!(width.as_f64().unwrap() <= 390.0, "the page is {width} px wide on a 390 px phone");
    let light = b.screenshot(Some("console-phone-light.png")).await;
    assert_laid_out(&mut b, &light, &made.session_id).await;
    let light_bg = b.eval("getComputedStyle(document.body).backgroundColor").await;
    assert_eq!(light_bg, json!("rgb(255, 255, 255)"));

    click_text(&mut b, "Dark").await;
    b.wait_until("document.documentElement.dataset.theme === 'dark'").await;
    let dark_bg = b.eval("getComputedStyle(document.body).backgroundColor").await;
    assert_eq!(dark_bg, json!("rgb(13, 17, 23)"));
    let dark = b.screenshot(Some("console-phone-dark.png")).await;
    // The screen itself changed: the top-left corner is light, then dark.
    let corner =
        |shot: &cliscale_testkit::browser::Shot| shot.at(2, shot.pixels.len() / shot.width - 3);
    let luma = |p: [u8; 3]| p.iter().map(|&c| u32::from(c)).sum::<u32>();
    assert!(
        luma(corner(&light)) > 600 && luma(corner(&dark)) < 150,
        "{:?} {:?}",
        corner(&light),
        corner(&dark)
    );
    // The badge's colour is the theme's success colour, in text the monospace stack does not use.
    let badge = b
        .eval(&format!(
            "getComputedStyle(document.querySelector('tr[data-session=\"{}\"] .badge')).color",
            made.session_id
        ))
        .await;
    assert_eq!(badge, json!("rgb(63, 185, 80)"));
    // The choice survives a reload.
    b.call("Page.reload", json!({})).await;
    b.wait_until("document.documentElement.dataset.theme === 'dark' && document.querySelector('h1')?.textContent === 'Sessions'").await;
    let violations = b.eval("window.__violations").await;
    assert_clean(&b, &violations);
}

/// The pages of templates, schedules, secrets and events: a secret stored from its page, a
/// template run from the form its parameters make, a schedule made with its next runs
/// previewed, and the log of it all; every load clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_schedules_secrets_and_events_from_the_console() {
    let Some(mut b) = Browser::launch_or_skip(keep_dir()).await else { return };
    let up = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let admin = up.client(ADMIN_KEY);
    b.open_watched(&format!("{}/", up.base)).await;
    log_in(&mut b, ADMIN_KEY).await;

    // A secret, from its page: afterwards only its name and key are shown.
    click_text(&mut b, "Secrets").await;
    b.wait_until("document.querySelector('input[name=secret-name]') !== null").await;
    fill(&mut b, "input[name=secret-name]", "greeting").await;
    fill(&mut b, "#secret-values", "WORD=console-secret-value").await;
    click_text(&mut b, "Store secret").await;
    b.wait_until("document.querySelector('tr[data-secret=\"greeting\"]') !== null").await;
    let page_text = b.eval("document.body.innerText").await;
    assert!(!page_text.as_str().unwrap().contains("console-secret-value"));
    assert_eq!(admin.list_secrets().await.unwrap().items[0].keys, ["WORD"]);

    let spec: cliscale_core::rest::TemplateSpec = serde_json::from_value(json!({
        "name": "greet", "description": "says a word",
        "session": {"command": "echo \"$WORD to $WHO, $TIMES times\"",
                    "secret_env": {"WORD": {"secret": "greeting", "key": "WORD"}}},
        "params": [
            {"name": "WHO", "type": "string", "required": true, "allowed": ["ann", "bob"]},
            {"name": "TIMES", "type": "integer", "default": 1}
        ]
    }))
    .unwrap();
    admin.put_template(&spec, false).await.unwrap();

    // Its page has a run form built from its parameters; a bad value is said next to its field.
    click_text(&mut b, "Templates").await;
    b.wait_until("document.querySelector('tr[data-template=\"greet\"] a') !== null").await;
    click(&mut b, "tr[data-template=\"greet\"] a").await;
    b.wait_until("document.querySelector('#p-WHO') !== null").await;
    let kinds = b
        .eval("[document.querySelector('#p-WHO').tagName, document.querySelector('#p-TIMES').type]")
        .await;
    assert_eq!(kinds, json!(["SELECT", "number"]));
    set_value(&mut b, "#p-WHO", r#"bob"#, "change").await;
    set_value(&mut b, "#p-TIMES", r#"1.5"#, "input").await;
    click(&mut b, "form.run-form button[type=submit]").await;
    b.wait_until("document.querySelector('#p-TIMES-hint.field-error') !== null").await;
    set_value(&mut b, "#p-TIMES", r#"3"#, "input").await;
    click(&mut b, "form.run-form button[type=submit]").await;
    b.wait_until("location.hash.startsWith('#/sessions/')").await;
    b.wait_until("document.querySelector('.title .badge')?.textContent === 'Succeeded'").await;
    // Its page says which template made it, and which secret it read (by name).
    let facts = b.eval("document.querySelector('.facts').innerText").await;
    let facts = facts.as_str().unwrap();
    assert!(
        facts.contains("greet (generation 1)") && facts.contains("WORD ← greeting/WORD"),
        "{facts}"
    );
    let sid = b.eval("location.hash.split('/')[2]").await;
    let sid = sid.as_str().unwrap().to_owned();
    let out = admin.session(&sid).await.unwrap();
    assert_eq!(out.template.as_deref(), Some("greet"));
    let tail = out.output_tail.unwrap_or_default();
    assert!(tail.contains("*** to bob, 3 times"), "{tail}");

    // A schedule: the next runs show as the cron is typed, before anything is saved.
    click_text(&mut b, "Schedules").await;
    click_text(&mut b, "New schedule").await;
    b.wait_until("document.querySelector('input[name=schedule-cron]') !== null").await;
    fill(&mut b, "input[name=schedule-name]", "nightly").await;
    set_value(&mut b, "input[name=schedule-cron]", r#"30 2 * * *"#, "input").await;
    fill(&mut b, "input[name=schedule-zone]", "Europe/Berlin").await;
    set_value(&mut b, "input[name=schedule-params]", r#"{"WHO": "ann"}"#, "input").await;
    b.wait_until("document.querySelectorAll('.preview li').length === 5").await;
    let first = b.eval("document.querySelector('.preview li code').textContent").await;
    let first = first.as_str().unwrap();
    assert!(
        first.ends_with(":30:00Z") && (first.contains("T00:30") || first.contains("T01:30")),
        "{first}"
    );
    b.screenshot(Some("console-schedule-new.png")).await;
    click_text(&mut b, "Create schedule").await;
    b.wait_until("location.hash === '#/schedules/nightly'").await;
    b.wait_until("document.querySelectorAll('.next-runs li').length === 5").await;
    click_text(&mut b, "Suspend").await;
    b.wait_until("document.querySelector('.title .badge')?.textContent === 'suspended'").await;
    assert!(admin.schedule("nightly").await.unwrap().spec.suspend);
    let shot = b.screenshot(Some("console-schedule.png")).await;
    let heading = b
        .eval("(() => { const r = document.querySelector('h1').getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()")
        .await;
    let n = |i: usize| heading[i].as_f64().unwrap();
    let colours: std::collections::HashSet<[u8; 3]> =
        shot.region((n(0), n(1), n(2), n(3))).iter().copied().collect();
    assert!(n(2) > 100.0 && colours.len() > 4, "the heading is not drawn: {heading}");

    // The event log: what was done above, newest first, filtered by template.
    click_text(&mut b, "Events").await;
    b.wait_until("document.querySelector('input[name=event-template]') !== null").await;
    fill(&mut b, "input[name=event-template]", "greet").await;
    b.wait_until("[...document.querySelectorAll('table.events td code')].some((c) => c.textContent === 'secret_referenced')").await;
    let types = b
        .eval("[...document.querySelectorAll('table.events td code')].map((c) => c.textContent)")
        .await;
    let types: Vec<&str> = types.as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(types.contains(&"created") && types.contains(&"template_created"), "{types:?}");
    b.screenshot(Some("console-events.png")).await;

    let violations = b.eval("window.__violations").await;
    assert_clean(&b, &violations);
}
