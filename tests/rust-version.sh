#!/usr/bin/env bash
# Fails when a package Cargo.lock resolves for the flake's systems (x86_64-linux,
# aarch64-linux) declares a newer `rust-version` than the workspace's, which is the rustc of
# the flake's nixpkgs pin (docs/nix.md): `nix build` would stop there, whatever the toolchain
# of the machine that ran the tests. Packages without a `rust-version` cannot be checked here
# (clippy's `incompatible_msrv` covers the workspace's own code).
#
# usage: tests/rust-version.sh [--manifest-path Cargo.toml]
set -euo pipefail
cd "$(dirname "$0")/.."
manifest=Cargo.toml
if [ "${1:-}" = --manifest-path ]; then manifest=$2; fi
for target in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu; do
  cargo metadata --format-version 1 --locked --manifest-path "$manifest" --filter-platform "$target"
done | python3 -c '
import json, sys

def version(v):
    parts = [int(x) for x in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

decoder = json.JSONDecoder()
text = sys.stdin.read()
pos, packages, members = 0, {}, set()
while pos < len(text):
    while pos < len(text) and text[pos].isspace():
        pos += 1
    if pos == len(text):
        break
    meta, pos = decoder.raw_decode(text, pos)
    members.update(meta["workspace_members"])
    for p in meta["packages"]:
        packages[p["id"]] = p
pins = {packages[m]["rust_version"] for m in members if packages[m].get("rust_version")}
if len(pins) != 1:
    sys.exit(f"tests/rust-version.sh: the workspace members declare rust-version {sorted(pins)}: give them one (workspace.package)")
pin = pins.pop()
newer = sorted(
    (p["name"], p["version"], p["rust_version"])
    for p in packages.values()
    if p.get("rust_version") and version(p["rust_version"]) > version(pin)
)
for name, v, needs in newer:
    print(f"tests/rust-version.sh: {name} {v} needs rustc {needs}, newer than the pin'"'"'s {pin}: "
          f"cargo update -p {name}@{v} --precise <an older version>, or move the pin (docs/nix.md)", file=sys.stderr)
if newer:
    sys.exit(1)
print(f"rust-version {pin}: all {len(packages)} packages Cargo.lock resolves for Linux build with it")
'
