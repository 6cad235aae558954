#!/usr/bin/env bash
# What the trust boundary (issue 20, docs/security.md) costs and what it saves, side by side in
# one run: a flywheel from before it (--before BIN, e.g. built from commit e20d766) and this
# tree's, on the same fixture closure, alternating the sides each run:
#   1. push into an empty cache (`flywheel cache push` of the closure to a fresh server, each
#      side its own client and server);
#   2. narinfo GETs per second on the pushed cache (wrk with bench/gc_narinfo.lua, random
#      paths of the closure), with 1 connection and with 16, and the server's CPU time per GET
#      (from /proc: steadier than a rate on a machine the client shares);
#   3. (with valgrind) the instructions each side's server executes per narinfo GET, counted by
#      callgrind over 15 s of GETs on 4 connections: the same for the same binary and input,
#      whatever else the machine does, where the rates above move by 10-20% between runs;
#   4. eight hostile uploads at once, each side's server: the peak resident memory (VmHWM) of
#      the server, what each upload got, and how long the eight took. Two kinds: xz whose block
#      declares a 4 GiB dictionary, over a NAR of 512 MiB of zeros (an upload under 100 KiB that makes a
#      decoder without a memory limit fill 512 MiB of dictionary), and zstd frames with a
#      128 MiB window over the same NAR (within the default limit, so both sides decode it);
#      with the default ingest-jobs (one per CPU) and with ingest-jobs = 8.
# Medians of --runs are printed with ratios (after / before). Results belong in
# docs/benchmarks.md with the date and this command.
#
# usage: bench/trust.sh --before BIN [--budget-mb 500] [--runs 3] [--seconds 10] [--skip-hostile]
set -euo pipefail
cd "$(dirname "$0")/.."
cmdline="bench/trust.sh $*"

before=
budget=500
runs=3
seconds=10
skip_hostile=
while [ $# -gt 0 ]; do
  case "$1" in
    --before) before="$2"; shift 2 ;;
    --budget-mb) budget="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --skip-hostile) skip_hostile=1; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "bench/trust.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$before" ] || { echo "bench/trust.sh: --before BIN: a flywheel binary from before the trust boundary (git worktree add ../before e20d766 && cargo build --release there)" >&2; exit 2; }
for tool in nix-store cargo python3 curl wrk; do
  command -v "$tool" >/dev/null || { echo "bench/trust.sh: $tool is missing (apt-get install -y wrk)" >&2; exit 1; }
done

cargo build --quiet --release -p flywheel -p flywheel-fixture
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d /var/tmp/flywheel-bench-trust.XXXXXX)
srv_pid=
cleanup() {
  [ -z "$srv_pid" ] || { kill -TERM "$srv_pid" 2>/dev/null; wait "$srv_pid" 2>/dev/null; }
  rm -rf "$work"
}
trap cleanup EXIT
cp "$before" "$work/before"
cp "$target/release/flywheel" "$work/after"
unset SOURCE_DATE_EPOCH

root=$("$target/release/flywheel-fixture" --budget-mb "$budget" --max-pkg-mb 150 --tag trust --out-link "$work/closure")
mapfile -t paths < <(nix-store --query --requisites "$root")
nar_bytes=$(nix-store --query --size "${paths[@]}" | awk '{s += $1} END {print s}')
printf '%s\n' "${paths[@]}" | sed 's|/nix/store/||; s|-.*||' > "$work/hashes"
find "${paths[@]}" -type f -exec cat {} + > /dev/null

now() { date +%s%N; }
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
secs() { awk -v ns="$1" 'BEGIN {printf "%.2f s", ns / 1e9}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'; }
progress() { echo "bench/trust.sh: $*" >&2; }

# start SIDE DATA [CONFIG-LINES]: a server of that side; sets srv_pid, srv_url.
start() {
  local side=$1 data=$2 extra=${3:-}
  printf 'data = "%s"\n%b\n[caches.main]\n' "$data" "$extra" > "$data.toml"
  : > "$data.out"
  "$work/$side" cache serve --listen 127.0.0.1:0 --config "$data.toml" > "$data.out" 2>> "$work/serve.log" &
  srv_pid=$!
  for _ in $(seq 300); do
    if read -r srv_url _ < "$data.out" && [ -n "$srv_url" ]; then return; fi
    kill -0 "$srv_pid" 2>/dev/null || { echo "bench/trust.sh: the $side server exited:" >&2; tail "$work/serve.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench/trust.sh: the $side server printed no URL" >&2; exit 1
}
stop() { kill -TERM "$srv_pid"; wait "$srv_pid" || true; srv_pid=; }

# 1 and 2.
declare -A push q1 q16 cpu16
# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for i in $(seq "$runs"); do
  order=(before after); [ $((i % 2)) = 0 ] && order=(after before)
  for side in "${order[@]}"; do
    progress "run $i of $runs: $side"
    rm -rf "$work/data-$side"
    start "$side" "$work/data-$side"
    token=$("$work/$side" cache token create --config "$work/data-$side.toml" --cache main --scope write)
    t0=$(now)
    "$work/$side" cache push --to "$srv_url" --token "$token" "$root" > /dev/null
    push[$side]+="$(( $(now) - t0 )) "
    host=${srv_url%/*}
    for c in 1 16; do
      cpu0=$(cpu_ticks "$srv_pid")
      out=$(wrk -t"$(( c < 2 ? 1 : 2 ))" -c"$c" -d"${seconds}s" -s bench/gc_narinfo.lua "$host" -- "$work/hashes" main)
      cpu1=$(cpu_ticks "$srv_pid")
      n=$(echo "$out" | awk '/^gc_narinfo:/ {print $3}')
      bad=$(echo "$out" | awk '/^gc_narinfo:/ {print $13 + $15}')
      [ "$bad" = 0 ] || { echo "bench/trust.sh: $side narinfo -c$c: $bad failed requests" >&2; exit 1; }
      # The server's CPU time per request, in microseconds (clock ticks of 1/CLK_TCK s).
      us=$(awk -v t=$((cpu1 - cpu0)) -v hz="$(getconf CLK_TCK)" -v n="$n" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
      if [ "$c" = 1 ]; then q1[$side]+="$((n / seconds)) "; else q16[$side]+="$((n / seconds)) "; cpu16[$side]+="$us "; fi
    done
    stop
  done
done
med() { echo "$1" | tr ' ' '\n' | grep . | median; }

# 3. Instructions per narinfo GET, each side's server under callgrind on its pushed cache.
declare -A ir_per_get
if command -v valgrind >/dev/null && command -v callgrind_control >/dev/null; then
  for side in before after; do
    progress "instructions per narinfo GET: $side"
    : > "$work/data-$side.out"
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.$side" \
      "$work/$side" cache serve --listen 127.0.0.1:0 --config "$work/data-$side.toml" > "$work/data-$side.out" 2>> "$work/serve.log" &
    srv_pid=$!
    for _ in $(seq 600); do read -r srv_url _ < "$work/data-$side.out" && [ -n "$srv_url" ] && break; sleep 0.1; done
    host=${srv_url%/*}
    wrk -t1 -c4 -d3s -s bench/gc_narinfo.lua "$host" -- "$work/hashes" main > /dev/null
    callgrind_control -z "$srv_pid" > /dev/null
    out=$(wrk -t1 -c4 -d15s -s bench/gc_narinfo.lua "$host" -- "$work/hashes" main)
    callgrind_control -d "$srv_pid" > /dev/null
    n=$(echo "$out" | awk '/^gc_narinfo:/ {print $3}')
    ir=$(callgrind_annotate "$work/cg.$side.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    ir_per_get[$side]=$((ir / n))
    kill -TERM "$srv_pid"; wait "$srv_pid" || true; srv_pid=
  done
fi

# 4. The hostile uploads, made once.
[ -n "$skip_hostile" ] || python3 - "$work" <<'PY'
import lzma, struct, sys, zlib
work = sys.argv[1]
size = 512 << 20
def tok(b):
    return struct.pack("<Q", len(b)) + b + b"\0" * ((8 - len(b) % 8) % 8)
head = tok(b"nix-archive-1") + tok(b"(") + tok(b"type") + tok(b"regular") + tok(b"contents") + struct.pack("<Q", size)
tail = tok(b")")
# xz: compressed with a 64 MiB dictionary, then the block header says 4 GiB (props byte 40).
comp = lzma.LZMACompressor(format=lzma.FORMAT_XZ, filters=[{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 64 << 20}])
out = [comp.compress(head)]
zeros = b"\0" * (1 << 20)
for _ in range(size >> 20):
    out.append(comp.compress(zeros))
out.append(comp.compress(tail))
out.append(comp.flush())
xz = bytearray(b"".join(out))
n = (xz[12] + 1) * 4
assert xz[14:16] == b"\x21\x01", xz[12:12 + n]
xz[16] = 40
xz[12 + n - 4:12 + n] = struct.pack("<I", zlib.crc32(bytes(xz[12:12 + n - 4])))
open(f"{work}/bomb.nar.xz", "wb").write(xz)
# zstd: window 128 MiB (log 27: exponent 17), the NAR's head raw, zeros as 128 KiB RLE blocks,
# the tail raw.
def block(kind, data, last=False, rle_size=0):
    size_field = rle_size if kind == 1 else len(data)
    return struct.pack("<I", (size_field << 3) | (kind << 1) | int(last))[:3] + data
frame = bytearray(b"\x28\xb5\x2f\xfd\x00" + bytes([17 << 3]))
frame += block(0, head)
for _ in range(size >> 17):
    frame += block(1, b"\0", rle_size=1 << 17)
frame += block(0, tail, last=True)
open(f"{work}/bomb.nar.zst", "wb").write(bytes(frame))
PY
hostile() {
  local side=$1 kind=$2 jobs=$3 extra=""
  [ "$jobs" = default ] || extra="ingest-jobs = $jobs"
  rm -rf "$work/h-$side"
  start "$side" "$work/h-$side" "$extra"
  token=$("$work/$side" cache token create --config "$work/h-$side.toml" --cache main --scope write)
  local base t0 codes
  base=$(awk '/VmHWM/ {print $2}' "/proc/$srv_pid/status")
  t0=$(now)
  local pids=()
  for i in $(seq 8); do
    curl -s -o /dev/null -w '%{http_code}\n' -X PUT -H "Authorization: Bearer $token" \
      --data-binary "@$work/bomb.nar.$kind" "$srv_url/nar/b$i.nar.$kind" > "$work/code.$i" &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  local ms=$(( ($(now) - t0) / 1000000 ))
  local peak; peak=$(awk '/VmHWM/ {print $2}' "/proc/$srv_pid/status")
  codes=$(sort "$work"/code.* | uniq -c | awk '{printf "%s%sx%s", (NR > 1 ? ", " : ""), $1, $2}')
  rm -f "$work"/code.*
  stop
  printf '| %s | %s | %s | %d MiB (idle %d MiB) | %s | %.1f s |\n' "$kind" "$jobs" "$side" $((peak / 1024)) $((base / 1024)) "$codes" "$(awk -v m="$ms" 'BEGIN {print m / 1000}')"
}
progress "hostile uploads"
[ -z "$skip_hostile" ] && hostile_rows=$(
  for kind in xz zst; do
    for jobs in default 8; do
      for side in before after; do hostile "$side" "$kind" "$jobs"; done
    done
  done
)

echo
echo "## bench/trust.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -r)"
echo
echo "Command: \`$cmdline\`; closure: ${#paths[@]} paths, $((nar_bytes >> 20)) MiB of NAR; medians of $runs runs."
echo
echo "Every run (before / after): push ns ${push[before]}/ ${push[after]}; narinfo/s -c1 ${q1[before]}/ ${q1[after]}; -c16 ${q16[before]}/ ${q16[after]}; server µs per GET -c16 ${cpu16[before]}/ ${cpu16[after]}"
echo
echo "| | before | after | after / before |"
echo "|---|---|---|---|"
pb=$(med "${push[before]}"); pa=$(med "${push[after]}")
echo "| push into an empty cache | $(secs "$pb") | $(secs "$pa") | $(ratio "$pa" "$pb") of the time |"
for c in 1 16; do
  if [ $c = 1 ]; then b=$(med "${q1[before]}"); a=$(med "${q1[after]}"); else b=$(med "${q16[before]}"); a=$(med "${q16[after]}"); fi
  echo "| narinfo GETs/s, $c connection(s) | $b | $a | $(ratio "$a" "$b") |"
done
b=$(med "${cpu16[before]}"); a=$(med "${cpu16[after]}")
echo "| server CPU per narinfo GET (16 connections) | $b µs | $a µs | $(ratio "$a" "$b") |"
if [ -n "${ir_per_get[before]:-}" ]; then
  echo "| server instructions per narinfo GET (callgrind) | ${ir_per_get[before]} | ${ir_per_get[after]} | $(ratio "${ir_per_get[after]}" "${ir_per_get[before]}") |"
fi
[ -z "$skip_hostile" ] || exit 0
echo
echo "Eight hostile uploads at once (each about $(( $(stat -c %s "$work/bomb.nar.xz") >> 10 )) KiB as xz, $(( $(stat -c %s "$work/bomb.nar.zst") >> 10 )) KiB as zstd; a NAR of 512 MiB):"
echo
echo "| upload | ingest-jobs | side | server peak RSS | answers | wall |"
echo "|---|---|---|---|---|---|"
echo "$hostile_rows"
