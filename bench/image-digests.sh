#!/usr/bin/env bash
# Prints the manifest digest of one image spec built with zstd, gzip and no compression at 1, 4
# and 16 threads: run it on two machines (or filesystems) over the same store paths, and every
# line must match. docs/records/2026-11-24-image-digests-across-machines.md used it to compare
# this machine with the GPU machine.
#
# usage: bench/image-digests.sh SPEC.json STORE-ROOT OUT-DIR
#   SPEC.json   an image spec with a closureGraph (so no Nix database is needed)
#   STORE-ROOT  a chroot store holding the spec's store paths under nix/store ("/" for the system one)
#   FLYWHEEL    the binary to use (default: target/release/flywheel beside this script)
set -euo pipefail
[ $# -eq 3 ] || { sed -n '2,12p' "$0"; exit 2; }
spec=$1 root=$2 out=$3
fw=${FLYWHEEL:-$(dirname "$0")/../target/release/flywheel}
mkdir -p "$out"
unset SOURCE_DATE_EPOCH
for c in zstd gzip none; do
  for t in 1 4 16; do
    d=$("$fw" image build --spec "$spec" --store "$root" --compression "$c" --threads "$t" \
        --no-layer-cache --out "$out/img-$c-$t" 2>/dev/null)
    echo "$c threads=$t $d"
  done
done
