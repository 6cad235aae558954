#!/usr/bin/env bash
# Benchmarks flywheel's NAR formats against their peers, side by side, on one closure:
#   1. `flywheel nar dump P` vs `nix-store --dump P`, one command per path of the closure, as a
#      script runs them (to /dev/null, and all into one pipe);
#   2. `flywheel nar hash` over the whole closure vs `openssl dgst -sha256` over the same bytes
#      (the NARs themselves, concatenated into one file in the page cache).
# Each measurement is repeated (--runs, default 5), alternating the tools, and the median is
# reported with the ratio. Results belong in docs/benchmarks.md with the date and this command.
#
# usage: bench/formats.sh [--budget-mb 1000] [--runs 5]
set -euo pipefail
cd "$(dirname "$0")/.."

budget=1000
runs=5
while [ $# -gt 0 ]; do
  case "$1" in
    --budget-mb) budget="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "bench/formats.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

for tool in nix-store openssl cargo; do
  command -v "$tool" >/dev/null || { echo "bench/formats.sh: $tool is missing (tests/run installs what is needed)" >&2; exit 1; }
done

cargo build --quiet --release -p flywheel -p flywheel-fixture
fw=target/release/flywheel
work=$(mktemp -d /tmp/flywheel-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

root=$(target/release/flywheel-fixture --budget-mb "$budget" --max-pkg-mb 150 --tag bench --out-link "$work/closure")
mapfile -t paths < <(nix-store --query --requisites "$root")
nar_bytes=$(nix-store --query --size "${paths[@]}" | awk '{s += $1} END {print s}')
files=$(find "${paths[@]}" -type f | wc -l)

now() { date +%s%N; }
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
secs() { awk -v ns="$1" 'BEGIN {printf "%.3f", ns / 1e9}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

# Warm the page cache (and both binaries) so every run reads the same way.
for p in "${paths[@]}"; do nix-store --dump "$p" >/dev/null; "$fw" nar dump "$p" >/dev/null; done

dump_null() {
  local t0; t0=$(now)
  if [ "$1" = nix ]; then for p in "${paths[@]}"; do nix-store --dump "$p" >/dev/null; done
  else for p in "${paths[@]}"; do "$fw" nar dump "$p" >/dev/null; done; fi
  echo $(( $(now) - t0 ))
}
dump_pipe() {
  local t0; t0=$(now)
  if [ "$1" = nix ]; then for p in "${paths[@]}"; do nix-store --dump "$p"; done | cat >/dev/null
  else for p in "${paths[@]}"; do "$fw" nar dump "$p"; done | cat >/dev/null; fi
  echo $(( $(now) - t0 ))
}

declare -A t
for kind in dump_null dump_pipe; do
  for tool in nix fw; do : > "$work/$kind.$tool"; done
  for _ in $(seq "$runs"); do
    for tool in nix fw; do "$kind" "$tool" >> "$work/$kind.$tool"; done
  done
  for tool in nix fw; do t[$kind.$tool]=$(median < "$work/$kind.$tool"); done
done

# Hashing: the same bytes for both, the NARs of the closure in one file.
cat_file="$work/closure.nars"
for p in "${paths[@]}"; do "$fw" nar dump "$p"; done > "$cat_file"
: > "$work/hash.openssl"; : > "$work/hash.fw1"; : > "$work/hash.fw"
for _ in $(seq "$runs"); do
  t0=$(now); openssl dgst -sha256 "$cat_file" >/dev/null; echo $(( $(now) - t0 )) >> "$work/hash.openssl"
  t0=$(now); "$fw" nar hash --jobs 1 "${paths[@]}" >/dev/null; echo $(( $(now) - t0 )) >> "$work/hash.fw1"
  t0=$(now); "$fw" nar hash "${paths[@]}" >/dev/null; echo $(( $(now) - t0 )) >> "$work/hash.fw"
done
for k in openssl fw1 fw; do t[hash.$k]=$(median < "$work/hash.$k"); done
mbps() { awk -v b="$nar_bytes" -v ns="$1" 'BEGIN {printf "%.0f", b / 1e6 / (ns / 1e9)}'; }

cat <<EOF
flywheel bench/formats.sh, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $runs runs, medians
closure: ${#paths[@]} store paths, $files files, $(( nar_bytes / 1000000 )) MB of NAR; $("$fw" --version), $(nix-store --version), $(openssl version | cut -d' ' -f1-2)

nar dump, one command per path        nix-store --dump   flywheel nar dump   flywheel faster by
  to /dev/null                        $(secs "${t[dump_null.nix]}") s            $(secs "${t[dump_null.fw]}") s             $(ratio "${t[dump_null.nix]}" "${t[dump_null.fw]}")x
  into one pipe (| cat)               $(secs "${t[dump_pipe.nix]}") s            $(secs "${t[dump_pipe.fw]}") s             $(ratio "${t[dump_pipe.nix]}" "${t[dump_pipe.fw]}")x

sha256 over the closure's NAR bytes   time       MB/s    vs openssl
  openssl dgst -sha256 (one file)     $(secs "${t[hash.openssl]}") s    $(mbps "${t[hash.openssl]}")    1.00x
  flywheel nar hash --jobs 1          $(secs "${t[hash.fw1]}") s    $(mbps "${t[hash.fw1]}")    $(ratio "${t[hash.openssl]}" "${t[hash.fw1]}")x
  flywheel nar hash (one job per CPU) $(secs "${t[hash.fw]}") s    $(mbps "${t[hash.fw]}")    $(ratio "${t[hash.openssl]}" "${t[hash.fw]}")x
EOF
