#!/usr/bin/env bash
# Benchmarks the cache server on shared backends (NARs in S3, here Garage; the index in
# PostgreSQL) against the embedded default (a data directory: nar/ and index.sqlite), side by
# side, on one fixture closure, with clients, servers, Garage and PostgreSQL on this machine:
#   1. push into an empty cache: `flywheel cache push` to a fresh embedded server (--data DIR)
#      vs to a fresh S3+PG server (a database and an S3 prefix of its own in every run);
#   2. pull into an empty chroot store from each (the last run's caches): `flywheel cache pull`,
#      and `nix copy --from` with require-sigs as a second client;
#   3. narinfo GETs per second on the S3+PG cache, cycling through every path of the closure
#      (wrk and a Lua script): one server (wrk -t2 -c16) vs two servers over the same backends
#      (two wrk at once, -t1 -c8 each, one per server, summed); before that, NAR downloads from
#      each cache (wrk -t1 -c1 and -t2 -c16, each cache's own NARs): what the S3 path costs;
#   4. checks in the same run: every narinfo agrees between the two caches (path, NarHash,
#      NarSize, References, a signature) and is the same text from both S3+PG servers;
#      `flywheel cache verify` is clean for both caches; every store pulled (signatures checked
#      against each cache's own key) is complete and passes `nix store verify --no-trust`.
# Each measurement runs --runs times, alternating the sides; medians are reported with ratios.
# Garage and PostgreSQL come from target/release/flywheel-backends (tests/fixture), which stops
# them when this script exits; their logs and the servers' are kept in the work directory until
# then, and the slowest requests are printed at the end.
# Results belong in docs/benchmarks.md with the date and this command.
#
# usage: bench/cache-scale.sh [--budget-mb 800] [--runs 3] [--seconds 10]
set -euo pipefail
cd "$(dirname "$0")/.."
cmdline="bench/cache-scale.sh $*"

budget=800
runs=3
seconds=10
while [ $# -gt 0 ]; do
  case "$1" in
    --budget-mb) budget="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "bench/cache-scale.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for tool in nix nix-store cargo python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench/cache-scale.sh: $tool is missing (tests/run installs what is needed)" >&2; exit 1; }
done
command -v wrk >/dev/null || { echo "bench/cache-scale.sh: wrk is missing (apt-get install -y wrk)" >&2; exit 1; }
# Garage and PostgreSQL: flywheel-backends finds them (FLYWHEEL_GARAGE, garage on PATH or in
# ~/.cargo/bin; /usr/lib/postgresql/*/bin) and says how to install what is missing.

cargo build --quiet --release -p flywheel -p flywheel-fixture
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d /var/tmp/flywheel-bench-cache-scale.XXXXXX)
declare -A srv_pid=()
backends_pid=
cleanup() {
  local name
  set +e
  for name in "${!srv_pid[@]}"; do
    kill -TERM "${srv_pid[$name]}" 2>/dev/null; wait "${srv_pid[$name]}" 2>/dev/null
  done
  [ -z "$backends_pid" ] || { kill -TERM "$backends_pid" 2>/dev/null; wait "$backends_pid" 2>/dev/null; }
  chmod -R u+w "$work" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
# Copies of the binaries, so a rebuild while this runs changes nothing.
cp "$target/release/flywheel" "$work/flywheel"
cp "$target/release/flywheel-backends" "$work/flywheel-backends"
fw=$work/flywheel
unset SOURCE_DATE_EPOCH

progress() { echo "bench/cache-scale.sh: $*" >&2; }

# Garage and PostgreSQL, with one empty database per run (flywheel1 .. flywheelN); they stop
# once this shell has exited, or when cleanup sends SIGTERM.
"$work/flywheel-backends" --databases "$runs" --env "$work/backends.env" --until-gone $$ \
  > "$work/backends.out" 2> "$work/backends.log" &
backends_pid=$!
for _ in $(seq 600); do
  ! grep -qx ready "$work/backends.out" || break
  kill -0 "$backends_pid" 2>/dev/null || { echo "bench/cache-scale.sh: flywheel-backends exited:" >&2; cat "$work/backends.log" >&2; exit 1; }
  sleep 0.1
done
grep -qx ready "$work/backends.out" || { echo "bench/cache-scale.sh: flywheel-backends was not ready in 60 s" >&2; exit 1; }
# S3_ENDPOINT S3_REGION S3_BUCKET S3_ACCESS_KEY_ID S3_SECRET_ACCESS_KEY GARAGE_VERSION GARAGE_DIR
# PG_URL PG_URL_1 .. PG_URL_N PG_VERSION PG_DIR
# shellcheck disable=SC1091
. "$work/backends.env"
# Their processes, for CPU time: garage is flywheel-backends' child; PostgreSQL's postmaster
# runs detached (pg_ctl start).
garage_pid=$(cat /proc/"$backends_pid"/task/*/children | tr ' ' '\n' | while read -r p; do
  [ "$(cat "/proc/$p/comm" 2>/dev/null)" != garage ] || echo "$p"; done | head -1)
pg_pid=$(head -1 "$PG_DIR/data/postmaster.pid")
if [ -z "$garage_pid" ] || [ -z "$pg_pid" ]; then
  echo "bench/cache-scale.sh: no garage or postmaster process" >&2
  exit 1
fi

root=$("$target/release/flywheel-fixture" --budget-mb "$budget" --max-pkg-mb 150 --tag bench --out-link "$work/closure")
mapfile -t paths < <(nix-store --query --requisites "$root")
nar_bytes=$(nix-store --query --size "${paths[@]}" | awk '{s += $1} END {print s}')
files=$(find "${paths[@]}" -type f | wc -l)
# Warm the page cache: every tool reads the same files from memory.
find "${paths[@]}" -type f -exec cat {} + > /dev/null

now() { date +%s%N; }
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
secs() { awk -v ns="$1" 'BEGIN {printf "%.2f s", ns / 1e9}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a > 0 && b > 0) printf "%.2fx", a / b; else printf "-"}'; }
mb() { awk -v b="$1" 'BEGIN {printf "%.1f MB", b / 1e6}'; }
# MB/s of the closure's NAR bytes in a time of NS nanoseconds.
mbps() { awk -v b="$nar_bytes" -v ns="$1" 'BEGIN {if (ns > 0) printf "%.1f", b / 1e6 / (ns / 1e9); else printf "-"}'; }
nixc() { nix --extra-experimental-features nix-command "$@"; }
# nix with its progress lines in $work/nix.log, shown when it fails.
nixq() { nixc "$@" 2>> "$work/nix.log" || { tail -5 "$work/nix.log" >&2; return 1; }; }
# Removes a directory that may hold a store (read-only directories), and syncs, so that the
# next timed command does not pay for the deletion.
rmtree() { chmod -R u+w "$1" 2>/dev/null || true; rm -rf "$1"; sync; }
# Nix keeps narinfos (and its idea of what a cache holds) in $XDG_CACHE_HOME/nix: a fresh one
# per command, so that every run really asks the cache.
xdg_n=0
fresh_xdg() { xdg_n=$((xdg_n + 1)); mkdir -p "$work/xdg/$xdg_n"; echo "$work/xdg/$xdg_n"; }
# CPU time in clock ticks (user and system, reaped children included) of a process; of
# PostgreSQL's postmaster and its live children (the servers' connections among them); and of
# this shell's reaped children.
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat" 2>/dev/null || echo 0; }
pg_ticks() {
  local s=0 p
  for p in "$pg_pid" $(pgrep -P "$pg_pid"); do s=$((s + $(ticks "$p"))); done
  echo "$s"
}
# (`times` runs in this shell, not in a command substitution, which would have no children.)
times_ticks() {
  awk -v hz="$hz" 'function t(x) {split(x, a, /[ms]/); return (a[1] * 60 + a[2]) * hz}
    NR == 2 {printf "%.0f\n", t($1) + t($2)}' "$1"
}
# measure SERVER COMMAND...: runs COMMAND (its stdout to /dev/null) and prints its wall time
# in ns, then the CPU ticks spent meanwhile by it (the client), by the server SERVER, by
# Garage and by PostgreSQL: "NS CLIENT SERVER GARAGE PG".
measure() {
  local server=$1 t0 t1 s0 g0 p0
  shift
  times > "$work/times0"; s0=$(ticks "${srv_pid[$server]}"); g0=$(ticks "$garage_pid"); p0=$(pg_ticks)
  t0=$(now)
  "$@" > /dev/null || { echo "bench/cache-scale.sh: failed: $*" >&2; return 1; }
  t1=$(now)
  times > "$work/times1"
  echo "$((t1 - t0)) $(( $(times_ticks "$work/times1") - $(times_ticks "$work/times0") ))" \
    "$(( $(ticks "${srv_pid[$server]}") - s0 ))" \
    "$(( $(ticks "$garage_pid") - g0 )) $(( $(pg_ticks) - p0 ))"
}
# col N LINE...: the median of the Nth field of measure's lines (0 when there are none).
col() {
  local n=$1
  shift
  if [ "$#" = 0 ]; then echo 0; else printf '%s\n' "$@" | awk -v n="$n" '{print $n}' | median; fi
}
# cpu_row LABEL LINE...: the medians of the CPU seconds in measure's lines.
cpu_row() {
  local label=$1
  shift
  printf '    %-20s %8.1f %8.1f %8.1f %10.1f\n' "$label" "$(col 2 "$@" | awk -v hz="$hz" '{print $1 / hz}')" \
    "$(col 3 "$@" | awk -v hz="$hz" '{print $1 / hz}')" "$(col 4 "$@" | awk -v hz="$hz" '{print $1 / hz}')" \
    "$(col 5 "$@" | awk -v hz="$hz" '{print $1 / hz}')"
}

# The S3+PG config of run N: database flywheelN, prefix runN/ in the bucket, and a scratch
# directory (each server gets its own with --data).
s3pg_config() {
  local n=$1
  cat > "$work/s3pg-$n.toml" <<EOT
data = "$work/scratch-$n"
storage = "s3"
index = "postgres"

[s3]
bucket = "$S3_BUCKET"
endpoint = "$S3_ENDPOINT"
region = "$S3_REGION"
prefix = "run$n"
allow-http = true
access-key-id = "$S3_ACCESS_KEY_ID"
secret-access-key = "$S3_SECRET_ACCESS_KEY"

[postgres]
url = "$(eval echo "\$PG_URL_$n")"
pool-size = 16

[caches.main]
visibility = "public"
EOT
  echo "$work/s3pg-$n.toml"
}

# start_server NAME ARGS...: `flywheel cache serve ARGS --listen 127.0.0.1:0`; sets
# srv_pid[NAME], srv_url[NAME] and srv_key[NAME]. Its request log goes to $work/NAME.log.
declare -A srv_url=() srv_key=()
start_server() {
  local name=$1 url key
  shift
  : > "$work/$name.out"
  "$fw" cache serve "$@" --listen 127.0.0.1:0 > "$work/$name.out" 2>> "$work/$name.log" &
  srv_pid[$name]=$!
  for _ in $(seq 300); do
    if read -r url key _ < "$work/$name.out" && [ -n "$url" ]; then
      srv_url[$name]=$url
      srv_key[$name]=$key
      return
    fi
    kill -0 "${srv_pid[$name]}" 2>/dev/null || { echo "bench/cache-scale.sh: flywheel cache serve ($name) exited; see its log:" >&2; tail "$work/$name.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench/cache-scale.sh: flywheel cache serve ($name) did not print its URL in 30 s" >&2
  exit 1
}
stop_server() { kill -TERM "${srv_pid[$1]}"; wait "${srv_pid[$1]}" || true; unset "srv_pid[$1]"; }

pg_xacts() { psql -X -At "$PG_URL" -c "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'flywheel$runs'"; }

# 1. Push into an empty cache: a fresh data directory, or a fresh database and prefix.
# push_to NAME TOKEN: the closure, with the report in $work/push-NAME.json.
push_to() { "$fw" cache push --json --to "${srv_url[$1]}" --token "$2" "$root" > "$work/push-$1.json"; }
push_embedded() {
  rmtree "$work/data"
  start_server embedded --data "$work/data"
  token=$("$fw" cache token create --data "$work/data" --cache main --scope write)
  t_push_emb+=("$(measure embedded push_to embedded "$token")")
  stop_server embedded
}
push_s3pg() {
  local config
  config=$(s3pg_config "$1")
  start_server s3pg --config "$config"
  token=$("$fw" cache token create --config "$config" --cache main --scope write)
  t_push_s3+=("$(measure s3pg push_to s3pg "$token")")
  stop_server s3pg
}
declare -a t_push_emb t_push_s3
for i in $(seq "$runs"); do
  progress "push, run $i of $runs"
  if [ $((i % 2)) = 1 ]; then push_embedded; push_s3pg "$i"
  else push_s3pg "$i"; push_embedded; fi
done
xacts_push=$(pg_xacts)
m_push_emb=$(col 1 "${t_push_emb[@]}")
m_push_s3=$(col 1 "${t_push_s3[@]}")
pushed_report() { python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["pushed"], r["nar_bytes"])' "$1"; }
read -r pushed_emb pushed_bytes_emb < <(pushed_report "$work/push-embedded.json")
read -r pushed_s3 pushed_bytes_s3 < <(pushed_report "$work/push-s3pg.json")
s3pg=$work/s3pg-$runs.toml
"$fw" cache verify --data "$work/data" > "$work/verify-embedded.out" 2>&1 && verify_emb="consistent" || verify_emb="INCONSISTENT (exit $?): $(tail -1 "$work/verify-embedded.out")"
"$fw" cache verify --config "$s3pg" > "$work/verify-s3pg.out" 2>&1 && verify_s3="consistent" || verify_s3="INCONSISTENT (exit $?): $(tail -1 "$work/verify-s3pg.out")"
emb_nar_files=$(du -sb --apparent-size "$work/data/nar" | cut -f1)
garage_data=$(du -sb --apparent-size "$GARAGE_DIR/data" | cut -f1)
pg_size=$(psql -X -At "$PG_URL" -c "SELECT pg_database_size('flywheel$runs')" 2>/dev/null || echo 0)

# The last run's caches served: the embedded one, and the S3+PG one by two servers (a and b),
# each with its own scratch directory.
start_server embedded --data "$work/data"
start_server s3pg --config "$s3pg" --data "$work/scratch-a"
start_server s3pg-b --config "$s3pg" --data "$work/scratch-b"

# Every narinfo compared: the two caches agree (path, NarHash, NarSize, References; each signed
# by its own key), and both S3+PG servers send the same text. Also the paths wrk cycles through.
printf '%s\n' "${paths[@]}" > "$work/paths"
python3 - "$work/paths" "${srv_url[embedded]}" "${srv_url[s3pg]}" "${srv_url[s3pg-b]}" "$work" \
  "${srv_key[embedded]%%:*}" "${srv_key[s3pg]%%:*}" <<'PY' > "$work/check.out"
import sys, urllib.request
paths_file, emb_url, a_url, b_url, work, emb_key, s3_key = sys.argv[1:]
paths = open(paths_file).read().split()

def get(base, h):
    with urllib.request.urlopen(f"{base}/{h}.narinfo") as r:
        return r.read().decode()

def fields(text):
    f = {}
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        f.setdefault(k, []).append(v)
    return f

bad, same_ab, prefix = [], 0, "/" + a_url.rsplit("/", 1)[1]
nars = {"embedded": [], "s3pg": []}
for p in paths:
    h = p.split("/")[-1][:32]
    emb, a, b = get(emb_url, h), get(a_url, h), get(b_url, h)
    e, s = fields(emb), fields(a)
    for k in ("StorePath", "NarHash", "NarSize", "References"):
        if e.get(k) != s.get(k):
            bad.append(f"{p}: {k}: embedded {e.get(k)} S3+PG {s.get(k)}")
    for name, key, f in (("embedded", emb_key, e), ("S3+PG", s3_key, s)):
        if not any(x.startswith(key + ":") for x in f.get("Sig", [])):
            bad.append(f"{p}: {name}: no signature by {key}: {f.get('Sig')}")
    same_ab += a == b
    nars["embedded"].append(f"{prefix}/{e['URL'][0]}\n")
    nars["s3pg"].append(f"{prefix}/{s['URL'][0]}\n")
    if a != b:
        bad.append(f"{p}: the two S3+PG servers differ")
for k, v in nars.items():
    open(f"{work}/nar-{k}.list", "w").write("".join(v))
open(f"{work}/narinfo.list", "w").write("".join(f"{prefix}/{p.split('/')[-1][:32]}.narinfo\n" for p in paths))
print(len(paths) - len({x.split(":")[0] for x in bad if "servers differ" not in x}), same_ab)
for x in bad[:10]:
    print(x)
PY
read -r narinfo_ok narinfo_ab < "$work/check.out"

# 2. Pull into empty chroot stores; each result is checked once (every path there, contents
# matching their NarHash).
# Both caches' keys are named main-1, and Nix keeps one key per name: each copy trusts its own.
copy_from() { XDG_CACHE_HOME=$(fresh_xdg) nixq copy --from "${srv_url[$1]}" --to "$2" --option require-sigs true --option trusted-public-keys "${srv_key[$1]}" "$root"; }
pull() { XDG_CACHE_HOME=$(fresh_xdg) "$fw" cache pull --from "${srv_url[$1]}" --trusted-key "${srv_key[$1]}" --store "$2" "$root"; }
check_store() {
  local n
  n=$(nixc path-info --store "$1" --recursive "$root" 2>/dev/null | wc -l) || true
  if [ "$n" != "${#paths[@]}" ]; then echo "$n of ${#paths[@]} paths"
  elif nixc store verify --store "$1" --recursive --no-trust "$root" 2>/dev/null; then echo "complete, verified"
  else echo "CONTENTS DIFFER (nix store verify)"; fi
}
declare -A check=()
declare -a t_pull_emb t_pull_s3 t_copy_emb t_copy_s3
# timed_into ARRAY CHECK-NAME SERVER COMMAND ARGS... (the store is the last argument)
timed_into() {
  local -n into=$1
  local name=$2 server=$3 store=${*: -1} t
  shift 3
  if t=$(measure "$server" "$@" 2> "$work/$name.err"); then into+=("$t")
  else progress "$name failed: $(tail -3 "$work/$name.err")"; check[$name]="FAILED: $(grep -m1 '^error' "$work/$name.err" || tail -1 "$work/$name.err")"; fi
  [ -n "${check[$name]:-}" ] || check[$name]=$(check_store "$store")
  rmtree "$store"
}
pull_side() {
  case $1 in
    embedded)
      timed_into t_pull_emb pull-embedded embedded pull embedded "$work/store"
      timed_into t_copy_emb copy-embedded embedded copy_from embedded "$work/store" ;;
    s3pg)
      timed_into t_pull_s3 pull-s3pg s3pg pull s3pg "$work/store"
      timed_into t_copy_s3 copy-s3pg s3pg copy_from s3pg "$work/store" ;;
  esac
}
for i in $(seq "$runs"); do
  progress "pull and nix copy --from, run $i of $runs"
  if [ $((i % 2)) = 1 ]; then pull_side embedded; pull_side s3pg
  else pull_side s3pg; pull_side embedded; fi
done
m_pull_emb=$(col 1 "${t_pull_emb[@]}")
m_pull_s3=$(col 1 "${t_pull_s3[@]}")
m_copy_emb=$(col 1 "${t_copy_emb[@]}")
m_copy_s3=$(col 1 "${t_copy_s3[@]}")

# 3. NAR downloads and narinfo GETs. wrk cycles through the request paths in $WRK_PATHS; at
# the end it prints one line: requests, bytes read, microseconds, socket errors, non-2xx answers.
cat > "$work/cycle.lua" <<'LUA'
local paths = {}
for line in io.lines(os.getenv("WRK_PATHS")) do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("cycle: %d %d %d %d %d\n", summary.requests, summary.bytes, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status))
end
LUA
# wrk_run LIST SERVER THREADS CONNECTIONS: GETs of $work/LIST.list's paths; prints "requests/s
# MB/s requests"; errors go to $work/wrk-errors.
: > "$work/wrk-errors"
wrk_run() {
  local out r b us err status host=${srv_url[$2]%/*}
  out=$(WRK_PATHS="$work/$1.list" wrk -t"$3" -c"$4" -d"${seconds}s" --timeout 60s -s "$work/cycle.lua" "$host") || true
  read -r r b us err status < <(grep '^cycle: ' <<< "$out" | cut -d' ' -f2-) ||
    { echo "bench/cache-scale.sh: wrk $1 $2 -c$4 failed: $out" >&2; return 1; }
  if [ "$err" != 0 ] || [ "$status" != 0 ]; then
    progress "wrk $1 $2 -c$4: $err socket errors, $status non-2xx answers"
    echo $((err + status)) >> "$work/wrk-errors"
  fi
  awk -v r="$r" -v b="$b" -v us="$us" 'BEGIN {printf "%.0f %.1f %d\n", r / (us / 1e6), b / us, r}'
}
# wrk_to FILE LIST SERVER THREADS CONNECTIONS: wrk_run's line into FILE (measure keeps stdout).
wrk_to() { local f=$1; shift; wrk_run "$@" > "$f"; }
# PostgreSQL's counters lag up to 10 s behind an idle connection's last transaction (and are
# complete once the connection closes): each count starts and ends after such a pause, or after
# the servers stop.
sleep 11
xacts0=$(pg_xacts)

# NAR downloads through each server, cycling through the cache's own NARs, with 1 connection
# and with 16: what the S3 path costs per stream and in all, and the CPU it takes.
declare -a nar1_emb nar1_s3 nar16_emb nar16_s3 cpu1_emb cpu1_s3 cpu16_emb cpu16_s3
nar_gets_s3=0
# nar_one MBPS-ARRAY CPU-ARRAY SERVER THREADS CONNECTIONS
nar_one() {
  local -n mbps_into=$1 cpu_into=$2
  local server=$3 m r n
  m=$(measure "$server" wrk_to "$work/wrk.line" "nar-$server" "$server" "$4" "$5")
  read -r _ r n < "$work/wrk.line"
  mbps_into+=("$r")
  cpu_into+=("$m")
  [ "$server" != s3pg ] || nar_gets_s3=$((nar_gets_s3 + n))
}
nar_side() {
  case $1 in
    embedded) nar_one nar1_emb cpu1_emb embedded 1 1; nar_one nar16_emb cpu16_emb embedded 2 16 ;;
    s3pg) nar_one nar1_s3 cpu1_s3 s3pg 1 1; nar_one nar16_s3 cpu16_s3 s3pg 2 16 ;;
  esac
}
for i in $(seq "$runs"); do
  progress "NAR downloads, run $i of $runs"
  if [ $((i % 2)) = 1 ]; then nar_side embedded; nar_side s3pg
  else nar_side s3pg; nar_side embedded; fi
done
m_nar1_emb=$(printf '%s\n' "${nar1_emb[@]}" | median)
m_nar1_s3=$(printf '%s\n' "${nar1_s3[@]}" | median)
m_nar16_emb=$(printf '%s\n' "${nar16_emb[@]}" | median)
m_nar16_s3=$(printf '%s\n' "${nar16_s3[@]}" | median)
sleep 11
xacts1=$(pg_xacts)

# narinfo GETs on the S3+PG cache: one server, and two at once.
declare -a q_one q_two q_two_a q_two_b
rate_one() { q_one+=("$(wrk_run narinfo s3pg 2 16 | cut -d' ' -f1)"); }
rate_two() {
  wrk_run narinfo s3pg 1 8 | cut -d' ' -f1 > "$work/rate-a" & local wa=$!
  wrk_run narinfo s3pg-b 1 8 | cut -d' ' -f1 > "$work/rate-b" & local wb=$!
  local ok=yes
  wait "$wa" || ok=no
  wait "$wb" || ok=no
  [ "$ok" = yes ] || { echo "bench/cache-scale.sh: wrk on two servers failed" >&2; exit 1; }
  q_two_a+=("$(cat "$work/rate-a")")
  q_two_b+=("$(cat "$work/rate-b")")
  q_two+=("$(( $(cat "$work/rate-a") + $(cat "$work/rate-b") ))")
}
for i in $(seq "$runs"); do
  progress "narinfo requests, one server and two, run $i of $runs"
  if [ $((i % 2)) = 1 ]; then rate_one; rate_two
  else rate_two; rate_one; fi
done
int_median() { median | awk '{printf "%.0f\n", $1}'; }
m_q_one=$(printf '%s\n' "${q_one[@]}" | int_median)
m_q_two=$(printf '%s\n' "${q_two[@]}" | int_median)
m_q_two_a=$(printf '%s\n' "${q_two_a[@]}" | int_median)
m_q_two_b=$(printf '%s\n' "${q_two_b[@]}" | int_median)

for name in embedded s3pg s3pg-b; do stop_server "$name"; done
xacts_nar=$((xacts1 - xacts0))
xacts=$(( $(pg_xacts) - xacts1 ))
# The servers' request logs: per server and kind of request, the count and the slowest; and
# the slowest requests of all (their time to the response's head, not to its last byte).
python3 - "$work" <<'PY' > "$work/slowest.out"
import re, sys, collections
work = sys.argv[1]
line_re = re.compile(r"method=(\S+) path=(\S+) status=(\d+) ms=(\d+)")
kinds, slowest = collections.defaultdict(list), []
for server in ("embedded", "s3pg", "s3pg-b"):
    try:
        text = open(f"{work}/{server}.log", errors="replace").read()
    except FileNotFoundError:
        continue
    for m in line_re.finditer(text):
        method, path, status, ms = m.group(1), m.group(2), m.group(3), int(m.group(4))
        item = path.lstrip("/").partition("/")[2]
        kind = ("nix-cache-info" if item == "nix-cache-info" else "narinfo" if item.endswith(".narinfo")
                else "nar" if item.startswith("nar/") else "ls" if item.endswith(".ls")
                else "/".join(item.split("/")[:2]) if item.startswith("api/") else "other")
        kinds[(server, method, kind)].append(ms)
        slowest.append((ms, server, method, path, status))
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))]
print(f"  {'server':<9} {'request':<22} {'count':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
for (server, method, kind), v in sorted(kinds.items()):
    if len(v) >= 5 or max(v) >= 100:
        print(f"  {server:<9} {method + ' ' + kind:<22} {len(v):>8} {pct(v, .5):>7} {pct(v, .99):>7} {max(v):>7}")
print("  the slowest requests:")
for ms, server, method, path, status in sorted(slowest, reverse=True)[:8]:
    print(f"    {ms:>6} ms  {server:<9} {method} {path[:72]} {status}")
PY
log_errors=$(grep -hE ' status=5[0-9][0-9]| ERROR | WARN ' "$work"/embedded.log "$work"/s3pg.log "$work"/s3pg-b.log | head -5 || true)
garage_errors=$(grep -E ' (ERROR|WARN) ' "$GARAGE_DIR/garage.log" | head -5 || true)
pg_errors=$(grep -E 'ERROR|FATAL|PANIC' "$PG_DIR/server.log" | head -5 || true)

cat <<EOT
closure: ${#paths[@]} store paths, $files files, $(mb "$nar_bytes") of NAR
machine: $(nproc) CPUs, $(uname -sr), $(date -u '+%Y-%m-%d %H:%M UTC'); clients, servers, Garage and PostgreSQL all on it together
flywheel $("$fw" --version | cut -d' ' -f2), $(nix --version), Garage $GARAGE_VERSION, PostgreSQL $PG_VERSION, $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)
command: $cmdline   (medians of $runs; wrk ${seconds} s each)

push into an empty cache (flywheel cache push)                time      NAR MB/s   S3+PG/embedded (goal >= 0.7)
  embedded: a fresh --data DIR (nar/, index.sqlite)           $(secs "$m_push_emb")    $(mbps "$m_push_emb")      1.00x
  S3 (Garage) + PostgreSQL: a fresh prefix and database       $(secs "$m_push_s3")    $(mbps "$m_push_s3")      $(ratio "$m_push_emb" "$m_push_s3")
  pushed (the last run): embedded $pushed_emb paths, $(mb "$pushed_bytes_emb"); S3+PG $pushed_s3 paths, $(mb "$pushed_bytes_s3")
  the caches afterwards (flywheel cache verify): embedded $verify_emb; S3+PG $verify_s3
  stored: embedded nar/ $(mb "$emb_nar_files") (the last run); Garage's data directory $(mb "$garage_data") ($runs runs' prefixes); the last run's database $(mb "$pg_size")
  PostgreSQL transactions in the last run's database, from its creation to the push's end: $xacts_push
  CPU seconds during a push (medians)    client   server   Garage  PostgreSQL
$(cpu_row embedded "${t_push_emb[@]}")
$(cpu_row "S3+PG" "${t_push_s3[@]}")

pull into an empty chroot store (the last run's caches)      time      NAR MB/s   S3+PG/embedded (goal >= 0.7)
  flywheel cache pull --trusted-key KEY, from embedded        $(secs "$m_pull_emb")    $(mbps "$m_pull_emb")      1.00x   ${check[pull-embedded]}
  flywheel cache pull --trusted-key KEY, from S3+PG           $(secs "$m_pull_s3")    $(mbps "$m_pull_s3")      $(ratio "$m_pull_emb" "$m_pull_s3")   ${check[pull-s3pg]}
  nix copy --from (require-sigs), from embedded               $(secs "$m_copy_emb")    $(mbps "$m_copy_emb")      1.00x   ${check[copy-embedded]}
  nix copy --from (require-sigs), from S3+PG                  $(secs "$m_copy_s3")    $(mbps "$m_copy_s3")      $(ratio "$m_copy_emb" "$m_copy_s3")   ${check[copy-s3pg]}
  CPU seconds (medians)                  client   server   Garage  PostgreSQL
$(cpu_row "pull, embedded" "${t_pull_emb[@]}")
$(cpu_row "pull, S3+PG" "${t_pull_s3[@]}")
$(cpu_row "nix copy, embedded" "${t_copy_emb[@]}")
$(cpu_row "nix copy, S3+PG" "${t_copy_s3[@]}")

NAR downloads (wrk), cycling through each cache's own NARs      embedded MB/s   S3+PG MB/s   S3+PG/embedded
  1 connection (wrk -t1 -c1)                                 $m_nar1_emb          $m_nar1_s3        $(ratio "$m_nar1_s3" "$m_nar1_emb")
  16 connections (wrk -t2 -c16)                              $m_nar16_emb          $m_nar16_s3        $(ratio "$m_nar16_s3" "$m_nar16_emb")
  CPU seconds in ${seconds} s (medians)   wrk      server   Garage  PostgreSQL
$(cpu_row "embedded, 1 conn." "${cpu1_emb[@]}")
$(cpu_row "S3+PG, 1 conn." "${cpu1_s3[@]}")
$(cpu_row "embedded, 16 conn." "${cpu16_emb[@]}")
$(cpu_row "S3+PG, 16 conn." "${cpu16_s3[@]}")
  PostgreSQL transactions in the S3+PG database during these runs: $xacts_nar, for $nar_gets_s3 NAR GETs of S3+PG

narinfo GETs on the S3+PG cache, cycling through all ${#paths[@]}           req/s     two/one
  one server (wrk -t2 -c16)                                   $m_q_one     1.00x
  two servers over the same backends (wrk -t1 -c8 on each)    $m_q_two     $(ratio "$m_q_two" "$m_q_one")   (a $m_q_two_a + b $m_q_two_b, medians)
  this machine has $(nproc) cores for both servers, wrk, Garage and PostgreSQL: a second server adds no CPU here
  PostgreSQL transactions in the S3+PG database during these runs ($((runs * 2 * seconds)) s of wrk): $xacts
  narinfos that agree between the caches (path, NarHash, NarSize, References, a Sig line): $narinfo_ok of ${#paths[@]}
  narinfos identical from both S3+PG servers: $narinfo_ab of ${#paths[@]}

EOT
echo "wrk errors (socket errors and non-2xx answers, all runs): $(awk '{s += $1} END {print s + 0}' "$work/wrk-errors")"
echo "server logs: $(cat "$work"/embedded.log "$work"/s3pg.log "$work"/s3pg-b.log | grep -c ' request ' || true) requests${log_errors:+; the first errors and warnings:}"
[ -z "$log_errors" ] || printf '  %s\n' "$log_errors"
cat "$work/slowest.out"
[ -z "$garage_errors" ] || { echo "garage log, the first errors and warnings:"; printf '  %s\n' "$garage_errors"; }
[ -z "$pg_errors" ] || { echo "PostgreSQL log, the first errors:"; printf '  %s\n' "$pg_errors"; }
if [ "$(wc -l < "$work/check.out")" -gt 1 ]; then
  echo "narinfos that differ (the first 10):"
  tail -n +2 "$work/check.out" | sed 's/^/  /'
fi
