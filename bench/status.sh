#!/usr/bin/env bash
# Benchmarks the status page (`GET /` and `GET /api/v1/status` on `flywheel cache serve`):
# what a page view costs as the cache grows, against reading the paths, which is what the page
# did before the index kept aggregates (and what `flywheel cache stats` still does).
#   For each size (10k, 100k, 1M paths, crates/flywheel-cache/examples/gc_index.rs, index only):
#   1. --runs canary runs (default 300) published to one lane, so a view reads a full lane;
#   2. the server started on the data directory; --requests GETs (default 30) of
#      /api/v1/status and of /, each timed by curl: the median and the slowest;
#   3. the scan: `flywheel cache stats --json` (it sums every path of every cache), timed three
#      times, the median; and its ratio to the status view's median.
# There is no peer: Attic, harmonia and cachix have no status page.
# Results belong in docs/benchmarks.md with the date and this command.
#
# usage: bench/status.sh [--sizes "10000 100000 1000000"] [--runs 300] [--requests 30]
set -euo pipefail
cd "$(dirname "$0")/.."
cmdline="bench/status.sh $*"

sizes="10000 100000 1000000"
runs=300
requests=30
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) sizes="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "bench/status.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for tool in cargo curl python3; do
  command -v "$tool" >/dev/null || { echo "bench/status.sh: $tool is missing" >&2; exit 1; }
done

progress() { echo "bench/status.sh: $*" >&2; }
progress "building (release)"
cargo build --quiet --release -p flywheel
cargo build --quiet --release -p flywheel-cache --example gc_index
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d /var/tmp/flywheel-bench-status.XXXXXX)
fw_pid=
cleanup() {
  [ -z "$fw_pid" ] || { kill -TERM "$fw_pid" 2>/dev/null; wait "$fw_pid" 2>/dev/null; }
  rm -rf "$work"
}
trap cleanup EXIT
cp "$target/release/flywheel" "$work/flywheel"
cp "$target/release/examples/gc_index" "$work/gc_index"
fw=$work/flywheel

now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }
# stats FILE: "median max" of the numbers in FILE (one a line), in milliseconds.
stats() { python3 -c "import sys, statistics as s; v = [float(l) * 1000 for l in open(sys.argv[1])]; print(f'{s.median(v):.1f} {max(v):.1f}')" "$1"; }
free_port() { python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

echo "# $cmdline"
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)"
echo
rows=()
for n in $sizes; do
  dir=$work/status-$n
  progress "$n paths: generating"
  "$work/gc_index" --data "$dir" --paths "$n" > "$dir.json" 2> "$dir.gen.log" || { cat "$dir.gen.log" >&2; exit 1; }
  port=$(free_port)
  "$fw" cache serve --data "$dir" --listen "127.0.0.1:$port" > "$dir.serve.out" 2> "$dir.serve.log" &
  fw_pid=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null || { cat "$dir.serve.log" >&2; exit 1; }
  token=$("$fw" cache token create --data "$dir" --cache main --scope canary)
  progress "$n paths: publishing $runs canary runs"
  python3 - "$port" "$token" "$runs" <<'EOF'
import json, sys, urllib.request
port, token, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(runs):
    status = "fail" if i % 17 == 0 else "pass"
    run = {"lane": "gpu", "run_id": f"{i}-1", "runner": f"gpu-{i % 5}", "duration_ms": 40000 + i,
           "started_at": f"2026-11-{1 + i * 24 // runs:02d}T{i % 24:02d}:00:00Z", "status": status,
           "image_digest": "sha256:" + "ab" * 32, "driver_version": "580.95.05",
           "steps": [{"name": s, "status": "fail" if (status == "fail" and s == "gpu") else "pass",
                      "required": True, "duration_ms": 1000 + i,
                      "reason": "GPU 0: Xid 79" if (status == "fail" and s == "gpu") else None,
                      "remedy": "drain the node" if (status == "fail" and s == "gpu") else None}
                     for s in ["bootstrap", "gpu", "cuda", "vulkan", "cache", "queue", "cleanup"]],
           "h2d_bytes_per_second": 25e9 + i * 1e6, "d2h_bytes_per_second": 26e9,
           "cache_pull_bytes_per_second": 1.5e8 + i * 1e5}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/canary/runs", data=json.dumps(run).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
EOF
  for what in api page; do
    url="http://127.0.0.1:$port/api/v1/status"
    [ "$what" = page ] && url="http://127.0.0.1:$port/"
    : > "$dir.$what.times"
    for _ in $(seq "$requests"); do
      curl -sf -o "$dir.$what.body" -w '%{time_total}\n' "$url" >> "$dir.$what.times"
    done
  done
  read -r api_med api_max < <(stats "$dir.api.times")
  read -r page_med page_max < <(stats "$dir.page.times")
  page_kb=$(calc "round($(stat -c %s "$dir.page.body") / 1024, 1)")
  kill -TERM "$fw_pid"; wait "$fw_pid" 2>/dev/null || true; fw_pid=
  progress "$n paths: the scan (flywheel cache stats)"
  : > "$dir.scan.times"
  for _ in 1 2 3; do
    t0=$(now)
    "$fw" cache stats --data "$dir" --json > /dev/null
    calc "$(now) - $t0" >> "$dir.scan.times"
  done
  read -r scan_med _ < <(stats "$dir.scan.times")
  rows+=("$n|$api_med|$api_max|$page_med|$page_max|$page_kb|$scan_med|$(calc "round($scan_med / $api_med, 1)")")
  rm -rf "$dir"
done

printf '%-10s %14s %13s %15s %14s %9s %12s %12s\n' paths "status ms p50" "status ms max" "page ms p50" "page ms max" "page KB" "scan ms" "scan/status"
for r in "${rows[@]}"; do
  IFS='|' read -r n a amax p pmax kb s ratio <<< "$r"
  printf '%-10s %14s %13s %15s %14s %9s %12s %11sx\n' "$n" "$a" "$amax" "$p" "$pmax" "$kb" "$s" "$ratio"
done
