//! The terminal page in headless Chromium: open the URL the API hands out, type, see the echo
//! and the exit code, reload, and find the output neither lost nor duplicated.
//!
//! Chromium is driven over the DevTools protocol with a few commands on a WebSocket.

use cliscale_testkit::stack as common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{ADMIN_KEY, Backend, HANG_GUARD, Stack};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

struct Browser {
    child: std::process::Child,
    ws: common::Ws,
    next_id: u64,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium; `None` (and a loud note) where it is not installed, except in CI.
    async fn launch_or_skip() -> Option<Browser> {
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let found = Command::new(&chromium)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            cliscale_testkit::postgres::skip_unless_ci(
                "chromium",
                &format!(
                    "{chromium} is not installed, so this browser test did not run (apt-get install chromium)"
                ),
            );
            return None;
        }
        Some(Self::launch().await)
    }

    async fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child =
            Command::new(std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into()))
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg("about:blank")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("chromium is installed (.ci/run installs Debian's chromium)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx.recv_timeout(HANG_GUARD).expect("chromium printed its DevTools address");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Browser { child, ws, next_id: 0, session: None, _profile: profile }
    }

    /// Sends one DevTools command and waits for its answer.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let answer = self.try_call(method, params).await;
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Like [`Browser::call`], returning the raw answer, errors included.
    async fn try_call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::Text(msg.to_string().into())).await.unwrap();
        loop {
            let next = tokio::time::timeout(HANG_GUARD, self.ws.next()).await.expect("hang guard");
            let Some(Ok(Message::Text(text))) = next else { panic!("devtools connection ended") };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                return v;
            }
        }
    }

    async fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({ "url": url })).await;
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        self.session = attached["sessionId"].as_str().map(String::from);
    }

    /// Evaluates an expression in the page, awaiting it if it is a promise.
    /// A navigation in progress destroys the page's context; the evaluation is then retried
    /// in the new one.
    async fn eval(&mut self, expression: &str) -> Value {
        let params =
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true });
        loop {
            let answer = self.try_call("Runtime.evaluate", params.clone()).await;
            let error = answer["error"]["message"].as_str().unwrap_or_default();
            if error.contains("context was destroyed") || error.contains("Cannot find context") {
                continue;
            }
            assert!(answer.get("error").is_none(), "{expression}: {answer}");
            let result = &answer["result"];
            assert!(result.get("exceptionDetails").is_none(), "{expression}: {result}");
            return result["result"]["value"].clone();
        }
    }

    /// Waits, inside the page, until `condition` (a JS expression) holds.
    async fn wait_until(&mut self, condition: &str) {
        let script = format!(
            "new Promise((resolve, reject) => {{ const t0 = Date.now(); const t = setInterval(() => {{ \
               try {{ if ({condition}) {{ clearInterval(t); resolve(true); }} }} catch (e) {{}} \
               if (Date.now() - t0 > 30000) {{ clearInterval(t); reject(new Error('timed out: ' + {cond:?})); }} \
             }}, 20); }})",
            cond = condition
        );
        assert_eq!(self.eval(&script).await, json!(true));
    }

    async fn screen(&mut self) -> String {
        self.eval(
            "(() => { const b = window.term.buffer.active; const lines = []; \
               for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true)); \
               return lines.join('\\n'); })()",
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Types like a person: characters as text input, then the Enter key.
    async fn type_line(&mut self, text: &str) {
        self.eval("window.term.focus(); true").await;
        self.call("Input.insertText", json!({ "text": text })).await;
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({ "type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": "\r" }),
            )
            .await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let Some(mut browser) = Browser::launch_or_skip().await else { return };
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
    let Some(mut browser) = Browser::launch_or_skip().await else { return };
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
    let Some(mut browser) = Browser::launch_or_skip().await else { return };
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
