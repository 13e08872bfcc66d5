// The terminal page. It never trusts or interpolates anything from the URL into HTML: the
// token is read from the fragment (or query), kept in sessionStorage for reloads, and removed
// from the address bar at once. Protocol: docs/protocol.md.
(function () {
  "use strict";
  // xterm.js writes its theme and cell metrics into <style> elements it creates. The page's
  // policy admits styles from this origin and those carrying the nonce the server put in this
  // response, so each such element gets the nonce before xterm.js fills it.
  const styleNonce = document.querySelector('meta[name="cliscale-style-nonce"]').content;
  const createElement = Document.prototype.createElement;
  Document.prototype.createElement = function (tag, options) {
    const created = createElement.call(this, tag, options);
    if (String(tag).toLowerCase() === "style") created.nonce = styleNonce;
    return created;
  };
  // Its DOM renderer also writes some cell styles (true colours, selected text) as a `style`
  // attribute, which the policy refuses as inline style; the same declarations set through the
  // element's style object are not inline markup, and apply.
  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (name, value) {
    if (String(name).toLowerCase() === "style" && this.style) {
      this.style.cssText = String(value);
      return;
    }
    return setAttribute.call(this, name, value);
  };

  const sid = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
  const storeKey = "cliscale.token." + sid;
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("token") ||
    new URLSearchParams(location.search).get("token");
  if (fromUrl) sessionStorage.setItem(storeKey, fromUrl);
  // Only the token leaves the address bar; a renderer choice stays for reloads.
  const kept = new URLSearchParams(location.search);
  kept.delete("token");
  history.replaceState(null, "", location.pathname + (kept.toString() ? "?" + kept : ""));

  const el = (id) => document.getElementById(id);
  const show = (id, text) => { el(id).textContent = text; };

  const narrow = window.matchMedia("(max-width: 600px)").matches;
  // The session's scrollbackLines, as the API put it in the link; the spec's bounds hold
  // whatever the address bar says.
  const asked = parseInt(new URLSearchParams(location.search).get("scrollback"), 10);
  const scrollback = Number.isFinite(asked) ? Math.min(1000000, Math.max(1000, asked)) : 100000;
  const term = new Terminal({
    cursorBlink: true,
    cursorStyle: "block",
    scrollback,
    convertEol: false,
    allowProposedApi: true, // the unicode11 addon's width tables
    fontFamily: '"DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, "Courier New", monospace',
    fontSize: narrow ? 12 : 14,
    theme: { background: "#000000", foreground: "#d0d0d0", cursor: "#f0f0f0", selectionBackground: "#4a6a9a" },
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.loadAddon(new Unicode11Addon.Unicode11Addon());
  term.unicode.activeVersion = "11";
  term.loadAddon(new WebLinksAddon.WebLinksAddon());
  const search = new SearchAddon.SearchAddon();
  term.loadAddon(search);
  term.open(el("terminal"));
  // The GPU renderer where the browser has one; the DOM renderer otherwise, if it is lost, or
  // when the URL asks for it (?renderer=dom, for a machine whose GPU draws badly).
  window.cliscaleRenderer = "dom";
  if (new URLSearchParams(location.search).get("renderer") !== "dom") try {
    const webgl = new WebglAddon.WebglAddon();
    webgl.onContextLoss(() => { webgl.dispose(); window.cliscaleRenderer = "dom"; });
    term.loadAddon(webgl);
    window.cliscaleRenderer = "webgl";
  } catch (e) {
    window.cliscaleRenderer = "dom";
  }
  fit.fit();
  term.focus();

  // Search: Ctrl+Shift+F (or Cmd+Shift+F) opens it, Enter and Shift+Enter step, Escape closes.
  const box = el("search");
  const openSearch = () => { box.hidden = false; box.focus(); box.select(); };
  const closeSearch = () => { box.hidden = true; search.clearDecorations(); term.focus(); };
  // Copy: Ctrl+Shift+C (Ctrl+C stays the terminal's interrupt; Cmd+C and the context menu copy
  // as the browser always does). Paste: Ctrl+Shift+V or Ctrl+V, the browser's own paste.
  function copySelection() {
    const text = term.getSelection();
    if (!text) return;
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).catch(() => document.execCommand("copy"));
    } else {
      document.execCommand("copy");
    }
  }
  term.attachCustomKeyEventHandler((e) => {
    if (e.type !== "keydown" || !(e.ctrlKey || e.metaKey) || !e.shiftKey) return true;
    if (e.code === "KeyF") { openSearch(); return false; }
    if (e.code === "KeyC") { copySelection(); return false; }
    return true;
  });
  box.addEventListener("keydown", (e) => {
    if (e.key === "Escape") closeSearch();
    else if (e.key === "Enter") (e.shiftKey ? search.findPrevious(box.value) : search.findNext(box.value));
  });
  window.term = term;
  window.cliscale = { offset: 0, finished: false, status: null };

  let ws = null;
  let cursor = 0; // next log offset we expect; bytes before it were already written
  let finished = false;
  let retries = 0;
  const encoder = new TextEncoder();

  let readOnly = false;
  // A read-only connection sends nothing: its input and resizes would only be refused.
  function send(data) {
    if (ws && ws.readyState === WebSocket.OPEN && !readOnly) ws.send(data);
  }
  // A paste arrives as one piece of any size; the gateway and the runner take messages of up
  // to 1 MiB (a larger one closes the connection), so input goes out in slices.
  const INPUT_SLICE = 64 * 1024;
  term.onData((d) => {
    const bytes = encoder.encode(d);
    for (let i = 0; i < bytes.length; i += INPUT_SLICE) send(bytes.subarray(i, i + INPUT_SLICE));
  });
  term.onResize(({ cols, rows }) => {
    if (!finished) send(JSON.stringify({ type: "resize", cols, rows }));
  });
  window.addEventListener("resize", () => fit.fit());

  // Elapsed time: the runner says how long the command has run when a connection opens (a
  // duration, so this machine's clock need not agree with the server's); the page counts on
  // from there until the session ends.
  let elapsedBase = null;
  let elapsedAt = 0;
  let elapsedFrozen = false;
  function clock(secs) {
    const h = Math.floor(secs / 3600), m = Math.floor(secs / 60) % 60, s = secs % 60;
    return (h ? h + ":" + String(m).padStart(2, "0") : String(m)) + ":" + String(s).padStart(2, "0");
  }
  function elapsedNow() {
    if (elapsedBase === null) return null;
    return elapsedBase + (elapsedFrozen ? 0 : Math.floor((Date.now() - elapsedAt) / 1000));
  }
  function showElapsed() {
    const secs = elapsedNow();
    if (secs === null) return;
    el("elapsed-wrap").hidden = false;
    show("elapsed", clock(secs));
  }
  setInterval(showElapsed, 1000);

  function onStatus(status) {
    if (status.phase === "Running" && elapsedBase === null) { elapsedBase = 0; elapsedAt = Date.now(); }
    show("phase", status.phase);
    document.title = "cliscale · " + sid.slice(0, 8) + " · " + status.phase;
    window.cliscale.status = status;
    if (status.reason) {
      el("reason-wrap").hidden = false;
      show("reason", status.reason);
    }
    if (status.exitCode !== null && status.exitCode !== undefined) {
      el("exit-wrap").hidden = false;
      show("exit", String(status.exitCode));
    }
    if (["Succeeded", "Failed", "TimedOut", "Cancelled", "Lost"].includes(status.phase)) {
      if (!elapsedFrozen && elapsedBase !== null) { elapsedBase = elapsedNow(); elapsedFrozen = true; }
      showElapsed();
      finished = true;
      window.cliscale.finished = true;
    }
    if (status.phase === "Pending" || status.phase === "Starting") show("note", "starting…");
    else show("note", status.message || "");
  }

  function onText(msg) {
    switch (msg.type) {
      case "hello":
        if (msg.elapsedSecs !== undefined && msg.elapsedSecs !== null) {
          elapsedBase = msg.elapsedSecs;
          elapsedAt = Date.now();
          elapsedFrozen = false;
        }
        readOnly = msg.readOnly;
        el("readonly").hidden = !readOnly;
        onStatus(msg.status);
        // A finished session has no terminal left to fit.
        if (!finished) send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
        break;
      case "status": onStatus(msg); break;
      case "gap":
        term.write("\r\n\x1b[33m[cliscale: " + (msg.to - msg.from) + " bytes of earlier output are no longer available]\x1b[0m\r\n");
        cursor = msg.to;
        break;
      case "reconnect": sessionStorage.setItem(storeKey, msg.token); break;
      case "error": show("note", msg.message); break;
    }
  }

  function onBinary(buf) {
    const view = new DataView(buf);
    const offset = Number(view.getBigUint64(0));
    const data = new Uint8Array(buf, 8);
    const end = offset + data.length;
    if (end <= cursor) return; // already shown: a reconnect replayed it
    const skip = Math.max(0, cursor - offset);
    term.write(data.subarray(skip));
    cursor = end;
    window.cliscale.offset = cursor;
  }

  // Reconnecting. A token opens one connection, and every connection hands over the next
  // token first thing; the page keeps the token it holds until a newer one replaces it, so a
  // drop at any moment (even before the new connection is up) leaves it able to try again. It
  // tries until the session ends, backing off with jitter from 1 s to 30 s, and says when.
  const MAX_DELAY_MS = 30000;
  let timer = null;
  let countdown = null;
  function nextDelay() {
    const base = Math.min(MAX_DELAY_MS, 1000 * 2 ** Math.min(retries, 5));
    return Math.round(base * (0.5 + Math.random() * 0.5));
  }
  function scheduleReconnect() {
    retries += 1;
    const at = Date.now() + nextDelay();
    const tick = () => {
      const left = Math.max(0, Math.ceil((at - Date.now()) / 1000));
      show("conn", "reconnecting in " + left + " s");
    };
    tick();
    el("reconnect-now").hidden = false;
    countdown = setInterval(tick, 1000);
    timer = setTimeout(connect, at - Date.now());
  }
  el("reconnect-now").addEventListener("click", () => { if (timer) connect(); });

  // Refusals in words. A browser does not tell a page why a WebSocket was refused, so when a
  // connection fails before it opens the page asks the gateway (/t/{sid}/check: the same checks,
  // consuming nothing) and says what happened and what to do next.
  const NEW_LINK = "Ask for a new link: POST /api/sessions/" + sid + "/tokens with your API key, or run the command that gave you this one again.";
  const REFUSALS = {
    token_replayed: ["This link has already been used", "Each terminal link opens one connection, and this one has. " + NEW_LINK],
    token_expired: ["This link has expired", "Terminal links are valid for a few minutes. " + NEW_LINK],
    token_missing: ["This link has no token", "Open the whole terminal URL the API gave you, including the part after #. " + NEW_LINK],
    token_malformed: ["This link is not valid", "It was cut short or changed on the way. Copy the whole link again. " + NEW_LINK],
    token_bad_signature: ["This link is not valid", "It was not signed by this server, or it was changed. " + NEW_LINK],
    token_unknown_key: ["This link is not valid here", "It was signed with a key this server does not know (an old key, or another server). " + NEW_LINK],
    token_wrong_algorithm: ["This link is not valid", "It was not made by this server. " + NEW_LINK],
    token_missing_kid: ["This link is not valid", "It was not made by this server. " + NEW_LINK],
    token_wrong_audience: ["This link is not a terminal link", "It was made for something else. " + NEW_LINK],
    token_wrong_issuer: ["This link is not valid here", "It was made by another server. " + NEW_LINK],
    token_wrong_session: ["This link is for another session", "It opens a different session than the one in the address. Use the link made for this session."],
    key_revoked: ["Access to this session was withdrawn", "The API key this link was made for was revoked, or may no longer do this. Ask an administrator for access."],
    session_not_found: ["There is no such session", "No session " + sid + " exists here. It may have ended and been deleted after its time to live; list your sessions to find it."],
  };
  function notice(title, text) {
    show("notice-title", title);
    show("notice-text", text);
    el("notice").hidden = false;
    fit.fit();
  }
  // Null when the link should open (the refusal was passing: a runner starting, a hiccup).
  async function explain() {
    const token = sessionStorage.getItem(storeKey) || "";
    try {
      const r = await fetch("/t/" + encodeURIComponent(sid) + "/check", {
        headers: { Authorization: "Bearer " + token },
        cache: "no-store",
      });
      return r.ok ? null : await r.json();
    } catch (e) {
      return { error: "unreachable" };
    }
  }
  async function refused() {
    const why = await explain();
    if (why === null) { scheduleReconnect(); return; }
    if (why.error === "unreachable") {
      notice("Cannot reach the server", "The network or the server is down. The page keeps trying; nothing of the session is lost meanwhile.");
      scheduleReconnect();
      return;
    }
    if (why.error === "session_gone") {
      const st = why.status;
      if (st) onStatus(st);
      const how = st ? st.phase + (st.reason ? " (" + st.reason + ")" : "") +
        (st.exitCode !== null && st.exitCode !== undefined ? ", exit code " + st.exitCode : "") : "";
      notice("This session has finished" + (how ? ": " + how : ""),
        (st && st.message ? st.message + ". " : "") + "Its terminal has closed.");
      show("conn", "closed");
      return;
    }
    const words = REFUSALS[why.error];
    if (words) {
      notice(words[0], words[1]);
      show("conn", "refused");
      return;
    }
    notice("The terminal could not open", why.message || why.error);
    scheduleReconnect();
  }

  function connect() {
    clearTimeout(timer);
    clearInterval(countdown);
    timer = null;
    el("reconnect-now").hidden = true;
    const token = sessionStorage.getItem(storeKey);
    if (!token) { show("conn", "no token"); show("note", "open the terminal URL the API gave you"); return; }
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const url = proto + "//" + location.host + "/ws/" + encodeURIComponent(sid) +
      "?since=" + cursor + "&token=" + encodeURIComponent(token);
    show("conn", "connecting");
    const socket = new WebSocket(url);
    ws = socket;
    let opened = false;
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      opened = true;
      retries = 0;
      show("conn", "connected");
      show("note", "");
      if (!el("notice").hidden) { el("notice").hidden = true; fit.fit(); }
    };
    socket.onmessage = (ev) => {
      if (typeof ev.data === "string") onText(JSON.parse(ev.data));
      else onBinary(ev.data);
    };
    socket.onclose = (ev) => {
      if (ws === socket) ws = null;
      if (finished) { show("conn", "closed"); return; }
      if (!opened) { refused(); return; }
      // 4401: the link's key was revoked or demoted; reconnecting would only be refused.
      if (ev.code === 4401) { refused(); return; }
      if (ev.reason) show("note", ev.reason);
      scheduleReconnect();
    };
  }
  connect();
})();
