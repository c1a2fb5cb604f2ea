// Loads the native uWebSockets.js addon of @trufflesuite/uws-js-unofficial
// directly. The package's own entry point silently falls back to a JavaScript
// implementation on an unsupported Node ABI; a bench must never measure that.
"use strict";
const path = require("path");

function loadNativeUws() {
  const pkg = path.dirname(require.resolve("@trufflesuite/uws-js-unofficial/package.json"));
  const name = `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`;
  return require(path.join(pkg, "binaries", name));
}

module.exports = { loadNativeUws };
