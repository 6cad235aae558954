#!/usr/bin/env bash
# Benchmarks `flywheel lane seed-nix` (what a lane pod's init container runs before its runner
# starts) against `cp -a`, side by side, on one fixture closure laid out as an image's /nix:
#   1. as root into a plain directory, where `cp -a` works: seed-nix vs `cp -a SRC/. DST/`;
#   2. as the runner user (uid 1001) into a setgid, group-owned volume, as Kubernetes gives a pod
#      with fsGroup: seed-nix, and `cp -a`;
#   3. an init container restarted after an interrupted copy, as uid 1001: into a volume holding
#      half a copy, `cp -a` again vs seed-nix.
# Each timed copy runs --runs times, alternating, into a fresh target, after a `sync` (not
# timed) so one copy's writeback does not land in the next one's time; the source stays in the
# page cache (nothing here drops the machine's caches). Medians and the ratio are printed.
# Results belong in docs/benchmarks.md with the date and this command.
#
# usage: bench/lane/seed.sh [--budget-mb 1200] [--runs 5]   (as root)
set -euo pipefail
cd "$(dirname "$0")/../.."

budget=1200
runs=5
while [ $# -gt 0 ]; do
  case "$1" in
    --budget-mb) budget="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "bench/lane/seed.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench/lane/seed.sh: run as root (it copies as uid 1001 too)" >&2; exit 1; }

cargo build --release -q -p flywheel -p flywheel-fixture
fw=$PWD/target/release/flywheel
work=$(mktemp -d /tmp/flywheel-seed-bench.XXXXXX)
chmod 755 "$work"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

root=$(target/release/flywheel-fixture --budget-mb "$budget" --out-link "$work/closure-root")
mapfile -t paths < <(nix-store --query --requisites "$root")
src=$work/image-nix
mkdir -p "$src/store"
cp -a "${paths[@]}" "$src/store/"
chown -R 1001:1001 "$src"
size=$(du -sb "$src" | cut -f1)
files=$(find "$src" -type f | wc -l)
echo "source: ${#paths[@]} store paths, $files files, $((size / 1048576)) MiB"

ms() { local t0 t1; sync; t0=$(date +%s%N); "$@" >/dev/null 2>&1; local rc=$?; t1=$(date +%s%N); echo "$(( (t1 - t0) / 1000000 )) $rc"; }
fresh() { chmod -R u+w "$1" 2>/dev/null || true; rm -rf "$1"; mkdir -p "$1"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

seed_root=(); cp_root=(); seed_user=()
for i in $(seq 1 "$runs"); do
  fresh "$work/a"; read -r t rc < <(ms "$fw" lane seed-nix --from "$src" --to "$work/a"); [ "$rc" = 0 ] || { echo "seed-nix failed"; exit 1; }; seed_root+=("$t")
  fresh "$work/b"; read -r t rc < <(ms cp -a "$src/." "$work/b/"); [ "$rc" = 0 ] || { echo "cp -a failed as root"; exit 1; }; cp_root+=("$t")
  diff -r --no-dereference "$work/a/store" "$work/b/store" >/dev/null || { echo "the two copies differ"; exit 1; }
  fresh "$work/c"; chown 1001:1001 "$work/c"; chmod 2775 "$work/c"
  read -r t rc < <(ms setpriv --reuid 1001 --regid 1001 --clear-groups "$fw" lane seed-nix --from "$src" --to "$work/c")
  [ "$rc" = 0 ] || { echo "seed-nix failed as uid 1001"; exit 1; }; seed_user+=("$t")
done
as_runner=(setpriv --reuid 1001 --regid 1001 --clear-groups)
volume() { fresh "$1"; chown 1001:1001 "$1"; chmod 2775 "$1"; }
tried() { if "${as_runner[@]}" "$@" >/dev/null 2>"$work/err"; then echo "succeeded"; else echo "failed ($(grep -c . "$work/err") errors; the first: $(head -1 "$work/err" | sed "s|$work/||g"))"; fi; }
volume "$work/d"
cp_user=$(tried cp -a "$src/." "$work/d/")
# Half a copy, as a copy killed midway leaves it: the first half of the store paths.
half() { volume "$1"; mkdir -p "$1/store"; chown 1001:1001 "$1/store"
  "${as_runner[@]}" cp -a $(ls -d "$src"/store/* | head -n $(( ${#paths[@]} / 2 ))) "$1/store/"; }
half "$work/e"; cp_restart=$(tried cp -a "$src/." "$work/e/")
half "$work/f"; seed_restart=$(tried "$fw" lane seed-nix --from "$src" --to "$work/f")

sr=$(printf '%s\n' "${seed_root[@]}" | median); cr=$(printf '%s\n' "${cp_root[@]}" | median); su=$(printf '%s\n' "${seed_user[@]}" | median)
echo
echo "| copy of $((size / 1048576)) MiB, $files files | median ms ($runs runs) | MB/s |"
echo "|---|---|---|"
echo "| seed-nix, as root, plain dir | $sr (${seed_root[*]}) | $(awk -v b="$size" -v t="$sr" 'BEGIN {printf "%.0f", b / t / 1000}') |"
echo "| cp -a, as root, plain dir | $cr (${cp_root[*]}) | $(awk -v b="$size" -v t="$cr" 'BEGIN {printf "%.0f", b / t / 1000}') |"
echo "| seed-nix, as uid 1001, fsGroup volume | $su (${seed_user[*]}) | $(awk -v b="$size" -v t="$su" 'BEGIN {printf "%.0f", b / t / 1000}') |"
echo "| cp -a, as uid 1001, fsGroup volume | $cp_user | |"
echo "| restarted over half a copy, as uid 1001: cp -a | $cp_restart | |"
echo "| restarted over half a copy, as uid 1001: seed-nix | $seed_restart | |"
echo
echo "seed-nix / cp -a time, as root: $(awk -v a="$sr" -v b="$cr" 'BEGIN {printf "%.2f", a / b}')x"
