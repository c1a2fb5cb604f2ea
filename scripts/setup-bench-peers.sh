#!/usr/bin/env bash
# Installs the optional Node.js peers of the bench suite (uWebSockets.js and ws,
# versions pinned in benches/peers/node/package.json) into
# benches/peers/node/node_modules. Idempotent: when the pinned versions are
# already there it does nothing. Without node/npm it says so and exits 0; the
# bench runner then reports those peers as skipped.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/benches/peers/node"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "setup-bench-peers: node/npm not found; the Node peers will be skipped"
    exit 0
fi

# Prints "ok" when every dependency in package.json is installed at its version.
check() {
    (cd "$dir" && node -e '
const deps = require("./package.json").dependencies;
for (const [name, want] of Object.entries(deps)) {
  let have = null;
  try { have = require(`./node_modules/${name}/package.json`).version; } catch (_) {}
  if (have !== want) { console.log(`missing ${name}@${want}`); process.exit(0); }
}
console.log("ok");
')
}

if [ "$(check)" = "ok" ]; then
    echo "setup-bench-peers: peers already installed in $dir/node_modules"
else
    echo "setup-bench-peers: installing into $dir/node_modules"
    (cd "$dir" && npm install --no-audit --no-fund --no-package-lock --loglevel=error)
fi

# Fail loudly if the native uWS binary cannot load on this Node (the package
# ships prebuilt binaries for a fixed set of Node ABIs and would otherwise fall
# back silently to a slow JS implementation).
(cd "$dir" && node -e '
const uWS = require("./uws-native.js").loadNativeUws();
if (typeof uWS.App !== "function") { console.error("uWS.App missing"); process.exit(1); }
require("ws");
console.log("setup-bench-peers: uWebSockets.js (native) and ws load on node " + process.version);
')
