#!/usr/bin/env bash
# Installs what the browser tests (tests/*_browser.rs) need, when
# missing: Debian's `chromium`, Node.js with npm, and npm's `playwright-core`
# in tests/browser/node_modules. playwright-core never downloads a browser;
# the test drives /usr/bin/chromium. Safe to run again: it only installs what
# is not there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi

apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! [ -x /usr/bin/chromium ]; then
    echo "setup-browser: installing chromium" >&2
    apt_install chromium
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "setup-browser: installing nodejs and npm" >&2
    apt_install nodejs npm
fi

cd "$root/tests/browser"
if ! [ -f node_modules/playwright-core/package.json ]; then
    echo "setup-browser: installing playwright-core into tests/browser/node_modules" >&2
    export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
    if [ -f package-lock.json ]; then
        npm ci --no-audit --no-fund --loglevel=error
    else
        npm install --no-audit --no-fund --loglevel=error
    fi
fi
/usr/bin/chromium --version >&2
node -e 'require("playwright-core"); console.error("setup-browser: playwright-core " + require("playwright-core/package.json").version)'
