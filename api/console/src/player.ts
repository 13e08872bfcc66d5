// Recording playback, loaded only when asked for: asciinema-player from npm, which runs its
// terminal emulator as WebAssembly (the console's CSP allows compiling WebAssembly, nothing
// else that evaluates code).

import * as AsciinemaPlayer from "asciinema-player";

export function play(src: string, into: HTMLElement): { dispose(): void } {
  return AsciinemaPlayer.create(src, into, {
    autoPlay: true,
    fit: "width",
    idleTimeLimit: 2,
    terminalFontFamily: "ui-monospace, \"DejaVu Sans Mono\", Menlo, Consolas, monospace",
  });
}
