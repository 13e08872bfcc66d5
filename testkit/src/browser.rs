//! Headless Chromium driven over the DevTools protocol with a few commands on a WebSocket:
//! open a page watched from its first byte (policy violations, console errors, exceptions),
//! evaluate and wait in it, type and press keys, and take screenshots whose pixels a test reads.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::stack::{HANG_GUARD, Ws};

pub struct Browser {
    child: std::process::Child,
    ws: Ws,
    next_id: u64,
    session: Option<String>,
    /// DevTools events received while waiting for answers (console entries, exceptions).
    events: Vec<Value>,
    _profile: tempfile::TempDir,
    /// Where screenshots a test keeps are written.
    keep_dir: std::path::PathBuf,
}

/// A screenshot, decoded: RGB pixels, row by row.
pub struct Shot {
    pub width: usize,
    pub pixels: Vec<[u8; 3]>,
}

impl Shot {
    pub fn at(&self, x: usize, y: usize) -> [u8; 3] {
        self.pixels[y * self.width + x]
    }

    /// The pixels of a CSS-pixel rectangle (the page runs at a device scale factor of 1).
    pub fn region(&self, (x, y, w, h): (f64, f64, f64, f64)) -> Vec<[u8; 3]> {
        let (x0, y0) = (x.ceil() as usize, y.ceil() as usize);
        let (x1, y1) = ((x + w).floor() as usize, (y + h).floor() as usize);
        (y0..y1).flat_map(|y| (x0..x1).map(move |x| (x, y))).map(|(x, y)| self.at(x, y)).collect()
    }
}

pub fn bright(p: [u8; 3]) -> bool {
    p.iter().map(|&c| u32::from(c)).sum::<u32>() > 3 * 90
}

impl Browser {
    /// Starts Chromium; `None` (and a loud note) where it is not installed, except in CI.
    pub async fn launch_or_skip(keep_dir: &std::path::Path) -> Option<Browser> {
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let found = Command::new(&chromium)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            crate::postgres::skip_unless_ci(
                "chromium",
                &format!(
                    "{chromium} is not installed, so this browser test did not run (apt-get install chromium)"
                ),
            );
            return None;
        }
        Some(Self::launch(keep_dir).await)
    }

    pub async fn launch(keep_dir: &std::path::Path) -> Browser {
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
        Browser {
            child,
            ws,
            next_id: 0,
            session: None,
            events: Vec::new(),
            _profile: profile,
            keep_dir: keep_dir.to_owned(),
        }
    }

    /// Sends one DevTools command and waits for its answer.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let answer = self.try_call(method, params).await;
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Like [`Browser::call`], returning the raw answer, errors included.
    pub async fn try_call(&mut self, method: &str, params: Value) -> Value {
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
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    pub async fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({ "url": url })).await;
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        self.session = attached["sessionId"].as_str().map(String::from);
    }

    /// Opens `url` in a fresh tab watched from its first byte: every policy violation is
    /// recorded in the page (`window.__violations`), console entries and exceptions arrive as
    /// events, and the page believes it has focus, as a person's would.
    pub async fn open_watched(&mut self, url: &str) {
        self.open_watched_at(url, (900, 520, false)).await
    }

    /// [`Browser::open_watched`] on a screen of (width, height, mobile).
    pub async fn open_watched_at(&mut self, url: &str, (width, height, mobile): (u32, u32, bool)) {
        self.open("about:blank").await;
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.call(domain, json!({})).await;
        }
        let watch = "window.__violations = []; document.addEventListener('securitypolicyviolation', \
                     (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));";
        self.call("Page.addScriptToEvaluateOnNewDocument", json!({ "source": watch })).await;
        self.call("Emulation.setFocusEmulationEnabled", json!({ "enabled": true })).await;
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .await;
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// Forgets the DevTools events seen so far (a test that checks a later stretch alone).
    pub fn forget_events(&mut self) {
        self.events.clear();
    }

    /// Console errors and uncaught exceptions seen so far.
    pub fn errors(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| {
                let p = &e["params"];
                match e["method"].as_str() {
                    Some("Log.entryAdded") => p["entry"]["level"] == "error",
                    Some("Runtime.consoleAPICalled") => p["type"] == "error",
                    Some("Runtime.exceptionThrown") => true,
                    _ => false,
                }
            })
            .map(|e| e["params"].to_string())
            .collect()
    }

    pub async fn screenshot(&mut self, keep_as: Option<&str>) -> Shot {
        use base64::Engine;
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        if let Some(name) = keep_as {
            // Kept for a person to look at: target/tmp/<name>.
            let path = self.keep_dir.join(name);
            std::fs::write(&path, &bytes).unwrap();
            eprintln!("screenshot: {}", path.display());
        }
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let channels = info.color_type.samples();
        let pixels =
            buf[..info.buffer_size()].chunks(channels).map(|c| [c[0], c[1], c[2]]).collect();
        Shot { width: info.width as usize, pixels }
    }

    /// The CSS-pixel rectangle of terminal cell (col, row) of the visible screen.
    pub async fn cell(&mut self, col: usize, row: usize) -> (f64, f64, f64, f64) {
        let r = self
            .eval(&format!(
                "(() => {{ const s = document.querySelector('.xterm-screen').getBoundingClientRect(); \
                   const w = s.width / term.cols, h = s.height / term.rows; \
                   return [s.left + {col} * w, s.top + {row} * h, w, h]; }})()"
            ))
            .await;
        let n = |i: usize| r[i].as_f64().unwrap();
        (n(0), n(1), n(2), n(3))
    }

    /// Evaluates an expression in the page, awaiting it if it is a promise.
    /// A navigation in progress destroys the page's context; the evaluation is then retried
    /// in the new one.
    pub async fn eval(&mut self, expression: &str) -> Value {
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
    pub async fn wait_until(&mut self, condition: &str) {
        self.wait_until_within(condition, 30).await
    }

    /// [`Browser::wait_until`] with a limit of `secs` seconds.
    pub async fn wait_until_within(&mut self, condition: &str, secs: u64) {
        let script = format!(
            "new Promise((resolve, reject) => {{ const t0 = Date.now(); const t = setInterval(() => {{ \
               try {{ if ({condition}) {{ clearInterval(t); resolve(true); }} }} catch (e) {{}} \
               if (Date.now() - t0 > {ms}) {{ clearInterval(t); reject(new Error('timed out: ' + {cond:?})); }} \
             }}, 20); }})",
            cond = condition,
            ms = secs * 1000
        );
        assert_eq!(self.eval(&script).await, json!(true));
    }

    pub async fn screen(&mut self) -> String {
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
    pub async fn type_line(&mut self, text: &str) {
        self.eval("window.term.focus(); true").await;
        self.call("Input.insertText", json!({ "text": text })).await;
        self.press(
            json!({ "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": "\r" }),
        )
        .await;
    }

    /// Presses and releases one key, described as DevTools' `Input.dispatchKeyEvent` takes it
    /// (`modifiers`: 2 is Ctrl, 8 is Shift).
    pub async fn press(&mut self, key: Value) {
        for kind in ["keyDown", "keyUp"] {
            let mut event = key.clone();
            event["type"] = json!(kind);
            self.call("Input.dispatchKeyEvent", event).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
