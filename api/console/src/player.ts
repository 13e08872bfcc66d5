// The recording player's own page, framed by a session's view: asciinema-player from npm,
// which runs its terminal emulator as WebAssembly. Only this page's policy allows compiling
// WebAssembly, so the console itself evaluates nothing. `?session=ID` names the recording.

import * as AsciinemaPlayer from "asciinema-player";

const id = new URLSearchParams(location.search).get("session") ?? "";
const into = document.getElementById("player")!;
const error = document.getElementById("player-error")!;

if (/^[A-Za-z0-9-]{1,64}$/.test(id)) {
  AsciinemaPlayer.create(`/api/sessions/${id}/recording`, into, {
    autoPlay: true,
    fit: "both",
    idleTimeLimit: 2,
    terminalFontFamily: "ui-monospace, \"DejaVu Sans Mono\", Menlo, Consolas, monospace",
  });
} else {
  error.textContent = "No recording is named here.";
  error.hidden = false;
}
