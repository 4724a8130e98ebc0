#!/usr/bin/env bash
# Every test of confnode, on a fresh Debian machine: installs the packages the tests
# drive (coturn for its turnutils_* client tools), then checks formatting and lints and
# runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v turnutils_stunclient >/dev/null || packages+=(coturn)
# The TLS tests make their self-signed certificates with the openssl command line.
command -v openssl >/dev/null || packages+=(openssl)
if ((${#packages[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${packages[@]}"
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi
