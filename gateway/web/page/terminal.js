// The terminal page. It never trusts or interpolates anything from the URL into HTML: the
// token is read from the fragment (or query), kept in sessionStorage for reloads, and removed
// from the address bar at once. Protocol: docs/protocol.md.
(function () {
  "use strict";
  const sid = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
  const storeKey = "cliscale.token." + sid;
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("token") ||
    new URLSearchParams(location.search).get("token");
  if (fromUrl) sessionStorage.setItem(storeKey, fromUrl);
  history.replaceState(null, "", location.pathname);

  const el = (id) => document.getElementById(id);
  const show = (id, text) => { el(id).textContent = text; };

  const term = new Terminal({ cursorBlink: true, scrollback: 100000, convertEol: false });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(el("terminal"));
  fit.fit();
  window.term = term;
  window.cliscale = { offset: 0, finished: false, status: null };

  let ws = null;
  let cursor = 0; // next log offset we expect; bytes before it were already written
  let finished = false;
  let retries = 0;
  const encoder = new TextEncoder();

  function send(data) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(data);
  }
  // A paste arrives as one piece of any size; the gateway and the runner take messages of up
  // to 1 MiB (a larger one closes the connection), so input goes out in slices.
  const INPUT_SLICE = 64 * 1024;
  term.onData((d) => {
    const bytes = encoder.encode(d);
    for (let i = 0; i < bytes.length; i += INPUT_SLICE) send(bytes.subarray(i, i + INPUT_SLICE));
  });
  term.onResize(({ cols, rows }) => send(JSON.stringify({ type: "resize", cols, rows })));
  window.addEventListener("resize", () => fit.fit());

  function onStatus(status) {
    show("phase", status.phase);
    window.cliscale.status = status;
    if (status.exitCode !== null && status.exitCode !== undefined) {
      el("exit-wrap").hidden = false;
      show("exit", String(status.exitCode));
    }
    if (["Succeeded", "Failed", "TimedOut", "Cancelled", "Lost"].includes(status.phase)) {
      finished = true;
      window.cliscale.finished = true;
    }
    if (status.phase === "Pending" || status.phase === "Starting") show("note", "starting…");
    else show("note", status.message || "");
  }

  function onText(msg) {
    switch (msg.type) {
      case "hello": onStatus(msg.status); break;
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

  function connect() {
    const token = sessionStorage.getItem(storeKey);
    if (!token) { show("conn", "no token"); show("note", "open the terminal URL the API gave you"); return; }
    // Each token opens one connection; the gateway hands out the next one over the socket.
    sessionStorage.removeItem(storeKey);
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const url = proto + "//" + location.host + "/ws/" + encodeURIComponent(sid) +
      "?since=" + cursor + "&token=" + encodeURIComponent(token);
    show("conn", "connecting");
    ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      retries = 0;
      show("conn", "connected");
      send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") onText(JSON.parse(ev.data));
      else onBinary(ev.data);
    };
    ws.onclose = (ev) => {
      ws = null;
      if (finished) { show("conn", "closed"); return; }
      show("conn", "disconnected" + (ev.reason ? " (" + ev.reason + ")" : ""));
      if (!sessionStorage.getItem(storeKey)) { show("note", "cannot reconnect: no fresh token"); return; }
      retries += 1;
      setTimeout(connect, Math.min(5000, 250 * 2 ** Math.min(retries, 5)));
    };
  }
  connect();
})();
