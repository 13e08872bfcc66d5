#!/usr/bin/env bash
# Copies the terminal page's npm dependencies into vendor/, which the gateway embeds at build
# time (so `cargo build` needs no npm). `vendor.sh --check` verifies vendor/ matches the
# versions pinned in package-lock.json byte for byte; CI runs it after `npm ci`.
set -euo pipefail
cd "$(dirname "$0")"
files=(
  "node_modules/@xterm/xterm/lib/xterm.js:xterm.js"
  "node_modules/@xterm/xterm/css/xterm.css:xterm.css"
  "node_modules/@xterm/addon-fit/lib/addon-fit.js:addon-fit.js"
  "node_modules/@xterm/addon-search/lib/addon-search.js:addon-search.js"
  "node_modules/@xterm/addon-unicode11/lib/addon-unicode11.js:addon-unicode11.js"
  "node_modules/@xterm/addon-web-links/lib/addon-web-links.js:addon-web-links.js"
  "node_modules/@xterm/addon-webgl/lib/addon-webgl.js:addon-webgl.js"
)
mkdir -p vendor
for pair in "${files[@]}"; do
  src=${pair%%:*}; dst=vendor/${pair##*:}
  if [ "${1:-}" = "--check" ]; then
    cmp -s "$src" "$dst" || { echo "vendor/${pair##*:} differs from $src: run gateway/web/vendor.sh"; exit 1; }
  else
    cp "$src" "$dst"
  fi
done
echo "vendor/ ok"
