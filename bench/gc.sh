#!/usr/bin/env bash
# Benchmarks garbage collection (`flywheel cache gc`) on synthetic CI-shaped indexes
# (crates/flywheel-cache/examples/gc_index.rs: revisions of 300 paths, each rebuilding ~10% of
# the previous one, over 90 days; every NAR an empty file under nar/):
#   1. for each size (10k, 100k, 1M paths): a fresh data directory, a dry run (the snapshot and
#      the plan alone), then `flywheel cache gc --max-size <half the bytes> --grace 0s`, timed
#      with /usr/bin/time: wall seconds (with and without the 0.5 s SETTLE wait before unlinking),
#      seconds per 100k paths, maximum RSS, paths removed;
#   2. narinfo latency at 100k paths: `flywheel cache serve` on a fresh data directory, wrk
#      (bench/gc_narinfo.lua: GETs of random hash parts of the cache) for --seconds without GC;
#      then on a second copy, the same with `flywheel cache gc` running from 2 s into the window
#      (again, with half the quota each time, while at least 3 s are left): p99 of both, and
#      their ratio. Once with hash parts of all paths (most miss the server's narinfo memory:
#      index reads), once with those of the newest --hot paths (1000: what CI reads again and
#      again; 0 skips it).
# Goals: 100k paths in <= 5 s and <= 200 MB RSS; time roughly linear in the paths; p99 during
# GC <= 2x p99 without. Client, server and GC share this machine's cores.
# The NAR files of the largest size are skipped (index only) when the disk lacks the inodes or
# space for them, or with --index-only-above N; the table says which.
# Results belong in docs/benchmarks.md with the date and this command.
#
# usage: bench/gc.sh [--sizes "10000 100000 1000000"] [--seconds 15] [--connections 8]
#                    [--hot 1000] [--index-only-above N]
set -euo pipefail
cd "$(dirname "$0")/.."
cmdline="bench/gc.sh $*"

sizes="10000 100000 1000000"
seconds=15
connections=8
hot=1000
index_only_above=
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) sizes="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --hot) hot="$2"; shift 2 ;;
    --index-only-above) index_only_above="$2"; shift 2 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "bench/gc.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for tool in cargo python3 wrk; do
  command -v "$tool" >/dev/null || { echo "bench/gc.sh: $tool is missing (apt-get install -y wrk python3)" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "bench/gc.sh: /usr/bin/time is missing (apt-get install -y time)" >&2; exit 1; }
[ "$seconds" -ge 6 ] || { echo "bench/gc.sh: --seconds must be at least 6" >&2; exit 2; }

progress() { echo "bench/gc.sh: $*" >&2; }
progress "building (release)"
cargo build --quiet --release -p flywheel
cargo build --quiet --release -p flywheel-cache --example gc_index
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d /var/tmp/flywheel-bench-gc.XXXXXX)
fw_pid=
wrk_pid=
cleanup() {
  [ -z "$wrk_pid" ] || { kill -TERM "$wrk_pid" 2>/dev/null; wait "$wrk_pid" 2>/dev/null; }
  [ -z "$fw_pid" ] || { kill -TERM "$fw_pid" 2>/dev/null; wait "$fw_pid" 2>/dev/null; }
  rm -rf "$work"
}
trap cleanup EXIT
# Copies of the binaries, so a rebuild while this runs changes nothing.
cp "$target/release/flywheel" "$work/flywheel"
cp "$target/release/examples/gc_index" "$work/gc_index"
fw=$work/flywheel
gen=$work/gc_index
lua=$PWD/bench/gc_narinfo.lua

now() { date +%s.%N; }
# json FILE EXPR: a value of the JSON object in FILE (python3 expression on `j`).
json() { python3 -c "import json, sys; j = json.load(open(sys.argv[1])); print($2)" "$1"; }
calc() { python3 -c "print($1)"; }

# Whether N paths may have NAR files: each is an empty file (an inode, no blocks); the index
# takes about 1.2 KB per path, and GC's WAL as much again.
files_fit() {
  local n=$1 inodes avail_kb
  [ -z "$index_only_above" ] || [ "$n" -le "$index_only_above" ] || return 1
  read -r inodes avail_kb < <(df --output=iavail,avail "$work" | tail -1)
  [ "$inodes" -gt $((n * 2 + 100000)) ] && [ "$avail_kb" -gt $((n * 3 + 2000000)) ]
}

# generate DIR N [--nar-files] [--hashes FILE]: a fresh data directory; its totals in DIR.json.
generate() {
  local dir=$1 n=$2
  shift 2
  "$gen" --data "$dir" --paths "$n" "$@" > "$dir.json" 2> "$dir.gen.log" ||
    { cat "$dir.gen.log" >&2; exit 1; }
  sync
}

# gc_run DIR QUOTA [--dry-run]: runs GC; sets gc_wall, gc_rss_mb, gc_removed, gc_seconds (the
# report's), gc_plan (seconds from start to the plan's "to remove" line). Progress lines go to
# DIR.gc.log with a timestamp each.
gc_run() {
  local dir=$1 quota=$2 t0 line
  shift 2
  t0=$(now)
  /usr/bin/time -f '%e %M' -o "$dir.time" "$fw" cache gc --data "$dir" --max-size "$quota" --grace 0s "$@" \
    > "$dir.gc.out" 2> >(while IFS= read -r line; do echo "$(now) $line"; done > "$dir.gc.log") ||
    { echo "bench/gc.sh: flywheel cache gc failed:" >&2; cat "$dir.gc.out" "$dir.gc.log" >&2; exit 1; }
  # The timestamping reader may still be writing.
  for _ in $(seq 50); do grep -q 'to remove' "$dir.gc.log" 2>/dev/null && break; sleep 0.1; done
  read -r gc_wall gc_rss_kb < "$dir.time"
  gc_rss_mb=$(calc "round($gc_rss_kb / 1024, 1)")
  gc_removed=$(sed -n 's/^[^:]*: \(would remove\|removed\) \([0-9]*\) of .*/\2/p' "$dir.gc.out" | head -1)
  gc_seconds=$(sed -n 's/.*; \([0-9.]*\)s$/\1/p' "$dir.gc.out")
  gc_seconds=${gc_seconds:--}
  gc_plan=$(awk -v t0="$t0" '/to remove/ {printf "%.2f", $1 - t0; exit}' "$dir.gc.log")
}

echo "# $cmdline"
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r); data in $work ($(df -h --output=fstype "$work" | tail -1 | tr -d ' '))"
echo

# 1. Scaling.
rows=()
for n in $sizes; do
  dir=$work/gc-$n
  if files_fit "$n"; then files=yes; flags=(--nar-files); else files="no (index only)"; flags=(); fi
  progress "$n paths: generating (NAR files: $files)"
  t0=$(now)
  generate "$dir" "$n" "${flags[@]}"
  gen_s=$(calc "round($(now) - $t0, 1)")
  bytes=$(json "$dir.json" "j['bytes']")
  quota=$((bytes / 2))
  progress "$n paths: generated in ${gen_s}s ($(json "$dir.json" "j['refs']") references, $bytes bytes); dry run"
  gc_run "$dir" "$quota" --dry-run
  dry_wall=$gc_wall dry_rss=$gc_rss_mb
  progress "$n paths: gc --max-size $quota (half)"
  gc_run "$dir" "$quota"
  left=$(find "$dir/nar" -type f | wc -l)
  per100k=$(calc "round($gc_wall / ($n / 100000), 2)")
  rows+=("$n|$gc_removed|$gc_wall|$(calc "round($gc_wall - 0.5, 2)")|$gc_seconds|$per100k|$gc_plan|$gc_rss_mb|$dry_wall|$dry_rss|$files")
  progress "$n paths: removed $gc_removed in ${gc_wall}s, ${gc_rss_mb} MB; $left NAR files left"
  sed 's/^/    /' "$dir.gc.out" >&2
  rm -rf "$dir"
done
echo "GC with --max-size half of the bytes, --grace 0s (wall: /usr/bin/time; -SETTLE: wall minus the 0.5 s wait"
echo "before unlinking; report: the report's own seconds; plan: start to the plan's log line):"
{
  echo "paths|removed|wall s|wall-SETTLE s|report s|wall s per 100k|plan s|max RSS MB|dry-run s|dry-run RSS MB|NAR files"
  printf '%s\n' "${rows[@]}"
} | column -t -s '|'
echo

# 2. narinfo latency at 100k paths, without and during GC.
n=100000
base=$work/lat
progress "latency: generating $n paths"
generate "$base" "$n" --nar-files --hashes "$work/hashes"
bytes=$(json "$base.json" "j['bytes']")

start_flywheel() {
  local data=$1 url
  : > "$data.serve.out"
  "$fw" cache serve --data "$data" --listen 127.0.0.1:0 > "$data.serve.out" 2> "$data.serve.log" &
  fw_pid=$!
  for _ in $(seq 300); do
    if read -r url _ < "$data.serve.out" && [ -n "$url" ]; then fw_base=${url%/main}; return; fi
    kill -0 "$fw_pid" 2>/dev/null || { echo "bench/gc.sh: flywheel cache serve exited:" >&2; tail "$data.serve.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench/gc.sh: flywheel cache serve did not print its URL in 30 s" >&2
  exit 1
}
stop_flywheel() { kill -TERM "$fw_pid"; wait "$fw_pid" || true; fw_pid=; }
# wrk_start OUT HOT: wrk in the background for --seconds; wrk_wait OUT: waits, parses OUT.
wrk_start() {
  wrk -t1 -c"$connections" -d"${seconds}s" --timeout 30s -s "$lua" "$fw_base" -- "$work/hashes" main "$2" > "$1" 2>&1 &
  wrk_pid=$!
}
wrk_wait() {
  wait "$wrk_pid" || { echo "bench/gc.sh: wrk failed:" >&2; cat "$1" >&2; exit 1; }
  wrk_pid=
  local line
  line=$(grep '^gc_narinfo:' "$1") || { echo "bench/gc.sh: no result from wrk:" >&2; cat "$1" >&2; exit 1; }
  read -r _ _ w_requests _ w_p50 _ w_p90 _ w_p99 _ w_max _ w_non2xx _ w_errors <<< "$line"
  w_line="requests $w_requests, p50 ${w_p50} us, p90 ${w_p90} us, p99 ${w_p99} us, max ${w_max} us, non-2xx $w_non2xx, socket errors $w_errors"
}

# latency LABEL HOT: wrk without GC on one copy of the data directory, then with GC on another
# (fresh server each); prints the figures.
latency() {
  local label=$1 hot=$2 d0=$work/lat-$1-0 d1=$work/lat-$1-1 p99_0 p99_1 p50_0 p50_1 line0 line1 g0 g1 ov left quota
  cp -a "$base" "$d0"
  cp -a "$base" "$d1"
  sync
  progress "latency ($label): wrk ${seconds}s, $connections connections, without GC"
  start_flywheel "$d0"
  wrk_start "$d0.wrk" "$hot"
  wrk_wait "$d0.wrk"
  stop_flywheel
  p99_0=$w_p99 p50_0=$w_p50 line0=$w_line
  progress "latency ($label): wrk ${seconds}s, $connections connections, GC from 2 s in"
  start_flywheel "$d1"
  t_start=$(now)
  wrk_start "$d1.wrk" "$hot"
  sleep 2
  quota=$((bytes / 2))
  local runs=() overlap=0
  while :; do
    g0=$(now)
    gc_run "$d1" "$quota"
    g1=$(now)
    # The part of this run inside the window.
    ov=$(calc "round(max(0, min($g1, $t_start + $seconds) - max($g0, $t_start)), 2)")
    overlap=$(calc "round($overlap + $ov, 2)")
    runs+=("quota $quota: removed $gc_removed paths in ${gc_wall}s ($(calc "round($g0 - $t_start, 1)")-$(calc "round($g1 - $t_start, 1)") s into the window)$(sed -n 's/^ *\([0-9]*\) paths kept after all.*/; \1 doomed paths spared: read since GC looked/p' "$d1.gc.out")")
    left=$(calc "round($t_start + $seconds - $(now), 1)")
    if [ "$(calc "int($left > 3)")" = 0 ] || [ "$gc_removed" = 0 ]; then break; fi
    quota=$((quota / 2))
  done
  wrk_wait "$d1.wrk"
  stop_flywheel
  p99_1=$w_p99 p50_1=$w_p50 line1=$w_line
  echo "narinfo GETs at $n paths, $label (wrk -t1 -c$connections, ${seconds} s each, fresh server and data directory each):"
  echo "  without GC: $line0"
  echo "  during GC:  $line1"
  echo "  GC overlapped $overlap s of the ${seconds} s window, in ${#runs[@]} run(s):"
  printf '    %s\n' "${runs[@]}"
  echo "  p99 without GC: $(calc "round($p99_0 / 1000, 2)") ms; p99 during GC: $(calc "round($p99_1 / 1000, 2)") ms; ratio $(calc "round($p99_1 / $p99_0, 2)")x (goal <= 2x); p50 ratio $(calc "round($p50_1 / $p50_0, 2)")x"
  rm -rf "$d0" "$d1"
}

latency "random hash parts of all $n paths" 0
[ "$hot" = 0 ] || { echo; latency "random hash parts of the newest $hot paths" "$hot"; }
