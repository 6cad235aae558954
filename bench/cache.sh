#!/usr/bin/env bash
# Benchmarks the cache server (`flywheel cache serve`) against Nix and nginx, side by side, on one
# fixture closure, with client and servers on this machine:
#   1. push into an empty cache: `flywheel cache push` to a fresh server vs
#      `nix copy --to 'file://DIR?compression=zstd&secret-key=...'` into an empty directory
#      (both sign; the server also decompresses and rechecks every NAR);
#   2. narinfo GETs per second, cycling through every path of the closure (wrk and a Lua script),
#      with 1 connection and with 16: the flywheel server vs nginx serving that `nix copy` directory;
#   3. NAR download throughput with 16 connections and with 1 (wrk), each server its own NARs
#      (the narinfos' URL lines), cycling through all of them;
#   4. `nix copy --from` each server into an empty chroot store, with require-sigs;
#   5. when the binary has `flywheel cache pull`: it against `nix copy --from`, both from the
#      flywheel server into an empty chroot store.
# Each measurement runs --runs times, alternating the sides; medians are reported with ratios.
# nginx runs in the foreground on a free port with its own config in the work directory.
# Results belong in docs/benchmarks.md with the date and this command.
#
# usage: bench/cache.sh [--budget-mb 1500] [--runs 3] [--seconds 10]
set -euo pipefail
cd "$(dirname "$0")/.."
cmdline="bench/cache.sh $*"

budget=1500
runs=3
seconds=10
while [ $# -gt 0 ]; do
  case "$1" in
    --budget-mb) budget="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "bench/cache.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for tool in nix nix-store cargo python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench/cache.sh: $tool is missing (tests/run installs what is needed)" >&2; exit 1; }
done
for tool in nginx wrk; do
  command -v "$tool" >/dev/null || { echo "bench/cache.sh: $tool is missing (apt-get install -y nginx wrk)" >&2; exit 1; }
done

cargo build --quiet --release -p flywheel -p flywheel-fixture
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d /var/tmp/flywheel-bench-cache.XXXXXX)
fw_pid=
nginx_pid=
cleanup() {
  [ -z "$fw_pid" ] || { kill -TERM "$fw_pid" 2>/dev/null; wait "$fw_pid" 2>/dev/null; }
  [ -z "$nginx_pid" ] || { kill -QUIT "$nginx_pid" 2>/dev/null; wait "$nginx_pid" 2>/dev/null; }
  chmod -R u+w "$work" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
# A copy of the binary, so a rebuild while this runs changes nothing.
cp "$target/release/flywheel" "$work/flywheel"
fw=$work/flywheel
unset SOURCE_DATE_EPOCH

root=$("$target/release/flywheel-fixture" --budget-mb "$budget" --max-pkg-mb 150 --tag bench --out-link "$work/closure")
mapfile -t paths < <(nix-store --query --requisites "$root")
nar_bytes=$(nix-store --query --size "${paths[@]}" | awk '{s += $1} END {print s}')
files=$(find "${paths[@]}" -type f | wc -l)
# Warm the page cache: every tool reads the same files from memory.
find "${paths[@]}" -type f -exec cat {} + > /dev/null

now() { date +%s%N; }
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
secs() { awk -v ns="$1" 'BEGIN {printf "%.2f s", ns / 1e9}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'; }
mb() { awk -v b="$1" 'BEGIN {printf "%.1f MB", b / 1e6}'; }
progress() { echo "bench/cache.sh: $*" >&2; }
nixc() { nix --extra-experimental-features nix-command "$@"; }
# nix with its progress lines in $work/nix.log, shown when it fails.
nixq() { nixc "$@" 2>> "$work/nix.log" || { tail -5 "$work/nix.log" >&2; return 1; }; }
# Removes a directory that may hold a store (read-only directories), and syncs, so that the
# next timed command does not pay for the deletion.
rmtree() { chmod -R u+w "$1" 2>/dev/null || true; rm -rf "$1"; sync; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Nix keeps narinfos (and its idea of what a cache holds) in $XDG_CACHE_HOME/nix: a fresh one
# per command, so that every run really asks the cache.
xdg_n=0
fresh_xdg() { xdg_n=$((xdg_n + 1)); mkdir -p "$work/xdg/$xdg_n"; echo "$work/xdg/$xdg_n"; }
time_ns() {
  local t0; t0=$(now)
  "$@" > /dev/null || { echo "bench/cache.sh: failed: $*" >&2; return 1; }
  echo $(( $(now) - t0 ))
}

# The flywheel server on a data directory: sets fw_pid, fw_url and fw_key. Its request log goes
# to $work/flywheel-serve.log.
start_flywheel() {
  local data=$1
  : > "$data.out"
  "$fw" cache serve --data "$data" --listen 127.0.0.1:0 > "$data.out" 2>> "$work/flywheel-serve.log" &
  fw_pid=$!
  fw_url=
  for _ in $(seq 300); do
    if read -r fw_url fw_key _ < "$data.out" && [ -n "$fw_url" ]; then return; fi
    kill -0 "$fw_pid" 2>/dev/null || { echo "bench/cache.sh: flywheel cache serve exited; see its log:" >&2; tail "$work/flywheel-serve.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench/cache.sh: flywheel cache serve did not print its URL in 30 s" >&2
  exit 1
}
stop_flywheel() { kill -TERM "$fw_pid"; wait "$fw_pid" || true; fw_pid=; }

# nginx serving a directory, with its own config, pid file, logs and temp paths in $work/nginx.
start_nginx() {
  local dir=$1 port
  port=$(free_port)
  mkdir -p "$work/nginx/tmp"
  cat > "$work/nginx/nginx.conf" <<EOT
user $(id -un) $(id -gn);
daemon off;
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  default_type application/octet-stream;
  types { text/x-nix-narinfo narinfo; text/x-nix-cache-info nix-cache-info; }
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 65;
  keepalive_requests 1000000;
  open_file_cache max=10000 inactive=60s;
  client_body_temp_path $work/nginx/tmp/body;
  proxy_temp_path $work/nginx/tmp/proxy;
  fastcgi_temp_path $work/nginx/tmp/fastcgi;
  uwsgi_temp_path $work/nginx/tmp/uwsgi;
  scgi_temp_path $work/nginx/tmp/scgi;
  server {
    listen 127.0.0.1:$port;
    root $dir;
  }
}
EOT
  nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
  nginx_pid=$!
  ng_url=http://127.0.0.1:$port
  for _ in $(seq 100); do
    if curl -sf -o /dev/null "$ng_url/nix-cache-info"; then return; fi
    kill -0 "$nginx_pid" 2>/dev/null || { echo "bench/cache.sh: nginx exited:" >&2; cat "$work/nginx/error.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench/cache.sh: nginx did not answer in 10 s" >&2
  exit 1
}

# 1. Push into an empty cache. nix signs with a key of its own, so that nginx can serve the
# result to a Nix with require-sigs.
nix-store --generate-binary-cache-key bench-1 "$work/sk" "$work/pk"
filecache=$work/filecache
nix_push() { XDG_CACHE_HOME=$(fresh_xdg) nixq copy --to "file://$filecache?compression=zstd&secret-key=$work/sk" "$root"; }
declare -a t_push_nix t_push_fw t_push_fw1
for i in $(seq "$runs"); do
  progress "push, run $i of $runs"
  rmtree "$filecache"
  t_push_nix+=("$(time_ns nix_push)")
  # Also at zstd level 1 (faster, larger), into a cache of its own.
  rmtree "$work/data1"
  start_flywheel "$work/data1"
  token=$("$fw" cache token create --data "$work/data1" --cache main --scope write)
  t_push_fw1+=("$(time_ns "$fw" cache push --compression zstd:1 --to "$fw_url" --token "$token" "$root")")
  stop_flywheel
  fw1_nar_files=$(du -sb --apparent-size "$work/data1/nar" | cut -f1)
  rmtree "$work/data"
  start_flywheel "$work/data"
  token=$("$fw" cache token create --data "$work/data" --cache main --scope write)
  t_push_fw+=("$(time_ns "$fw" cache push --to "$fw_url" --token "$token" "$root")")
  stop_flywheel
done
m_push_nix=$(printf '%s\n' "${t_push_nix[@]}" | median)
m_push_fw=$(printf '%s\n' "${t_push_fw[@]}" | median)
m_push_fw1=$(printf '%s\n' "${t_push_fw1[@]}" | median)
"$fw" cache verify --data "$work/data" > "$work/verify.out" 2>&1 && verify="consistent" || verify="INCONSISTENT (exit $?): $(tail -1 "$work/verify.out")"

# Both servers up, on the last run's caches.
start_flywheel "$work/data"
start_nginx "$filecache"
trusted="$fw_key $(cat "$work/pk")"
fw_host=${fw_url%/*}
fw_prefix=/${fw_url##*/}

# Every narinfo from both servers, compared (same path, NarHash, NarSize, References; a
# signature by each one's key), and the lists of request paths wrk cycles through.
printf '%s\n' "${paths[@]}" > "$work/paths"
python3 - "$work/paths" "$fw_url" "$fw_prefix" "$ng_url" "$work" "${fw_key%%:*}" <<'PY' > "$work/check.out"
import sys, urllib.request
paths_file, fw_url, fw_prefix, ng_url, work, fw_key_name = sys.argv[1:]
paths = open(paths_file).read().split()

def narinfo(base, h):
    with urllib.request.urlopen(f"{base}/{h}.narinfo") as r:
        fields = {}
        for line in r.read().decode().splitlines():
            k, _, v = line.partition(": ")
            fields.setdefault(k, []).append(v)
        return fields

def nar_size(url):
    req = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(req) as r:
        return int(r.headers["Content-Length"])

lists = {k: [] for k in ("fw-narinfo", "ng-narinfo", "fw-nar", "ng-nar")}
bytes_ = {"fw": 0, "ng": 0}
bad = []
for p in paths:
    h = p.split("/")[-1][:32]
    fw, ng = narinfo(fw_url, h), narinfo(ng_url, h)
    for k in ("StorePath", "NarHash", "NarSize", "References"):
        if fw.get(k) != ng.get(k):
            bad.append(f"{p}: {k}: flywheel {fw.get(k)} nix {ng.get(k)}")
    if not any(s.startswith(fw_key_name + ":") for s in fw.get("Sig", [])):
        bad.append(f"{p}: no signature by {fw_key_name}: {fw.get('Sig')}")
    lists["fw-narinfo"].append(f"{fw_prefix}/{h}.narinfo")
    lists["ng-narinfo"].append(f"/{h}.narinfo")
    lists["fw-nar"].append(f"{fw_prefix}/{fw['URL'][0]}")
    lists["ng-nar"].append(f"/{ng['URL'][0]}")
    bytes_["fw"] += nar_size(f"{fw_url}/{fw['URL'][0]}")
    bytes_["ng"] += nar_size(f"{ng_url}/{ng['URL'][0]}")
for k, v in lists.items():
    open(f"{work}/{k}.list", "w").write("\n".join(v) + "\n")
print(len(paths) - len({b.split(":")[0] for b in bad}), bytes_["fw"], bytes_["ng"])
for b in bad[:10]:
    print(b)
PY
read -r narinfo_ok fw_nar_files ng_nar_files < "$work/check.out"
# The NAR files in the page cache too.
find "$work/data/nar" "$filecache/nar" -type f -exec cat {} + > /dev/null

# wrk cycles through the request paths in $WRK_PATHS; at the end it prints one line:
# requests, bytes read, microseconds, socket errors, non-2xx answers.
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
# wrk_run LIST URL THREADS CONNECTIONS: prints "requests/s MB/s"; errors go to $work/wrk-errors.
: > "$work/wrk-errors"
wrk_run() {
  local out r b us err status
  out=$(WRK_PATHS="$work/$1.list" wrk -t"$3" -c"$4" -d"${seconds}s" --timeout 60s -s "$work/cycle.lua" "$2") || true
  read -r r b us err status < <(grep '^cycle: ' <<< "$out" | cut -d' ' -f2-) ||
    { echo "bench/cache.sh: wrk $1 -c$4 failed: $out" >&2; return 1; }
  if [ "$err" != 0 ] || [ "$status" != 0 ]; then
    progress "wrk $1 -c$4: $err socket errors, $status non-2xx answers"
    echo $((err + status)) >> "$work/wrk-errors"
  fi
  awk -v r="$r" -v b="$b" -v us="$us" 'BEGIN {printf "%.0f %.1f\n", r / (us / 1e6), b / us}'
}
declare -a q1_ng q1_fw q16_ng q16_fw nar_ng nar_fw nar1_ng nar1_fw
for i in $(seq "$runs"); do
  progress "narinfo and NAR requests, run $i of $runs"
  q1_ng+=("$(wrk_run ng-narinfo "$ng_url" 1 1 | cut -d' ' -f1)")
  q1_fw+=("$(wrk_run fw-narinfo "$fw_host" 1 1 | cut -d' ' -f1)")
  q16_ng+=("$(wrk_run ng-narinfo "$ng_url" 2 16 | cut -d' ' -f1)")
  q16_fw+=("$(wrk_run fw-narinfo "$fw_host" 2 16 | cut -d' ' -f1)")
  nar_ng+=("$(wrk_run ng-nar "$ng_url" 2 16 | cut -d' ' -f2)")
  nar_fw+=("$(wrk_run fw-nar "$fw_host" 2 16 | cut -d' ' -f2)")
  nar1_ng+=("$(wrk_run ng-nar "$ng_url" 1 1 | cut -d' ' -f2)")
  nar1_fw+=("$(wrk_run fw-nar "$fw_host" 1 1 | cut -d' ' -f2)")
done
m_q1_ng=$(printf '%s\n' "${q1_ng[@]}" | median)
m_q1_fw=$(printf '%s\n' "${q1_fw[@]}" | median)
m_q16_ng=$(printf '%s\n' "${q16_ng[@]}" | median)
m_q16_fw=$(printf '%s\n' "${q16_fw[@]}" | median)
m_nar_ng=$(printf '%s\n' "${nar_ng[@]}" | median)
m_nar_fw=$(printf '%s\n' "${nar_fw[@]}" | median)
m_nar1_ng=$(printf '%s\n' "${nar1_ng[@]}" | median)
m_nar1_fw=$(printf '%s\n' "${nar1_fw[@]}" | median)

# 4 and 5. Into empty chroot stores; each result is checked once (every path there, contents
# matching their NarHash).
have_pull=no
"$fw" cache pull --help > /dev/null 2>&1 && have_pull=yes
[ "$have_pull" = yes ] || progress "pull: not built yet"
copy_from() { XDG_CACHE_HOME=$(fresh_xdg) nixq copy --from "$1" --to "$2" --option require-sigs true --option trusted-public-keys "$trusted" "$root"; }
pull() { XDG_CACHE_HOME=$(fresh_xdg) "$fw" cache pull --from "$fw_url" --trusted-key "$fw_key" --store "$1" "$root"; }
check_store() {
  local n
  n=$(nixc path-info --store "$1" --recursive "$root" 2>/dev/null | wc -l) || true
  if [ "$n" != "${#paths[@]}" ]; then echo "$n of ${#paths[@]} paths"
  elif nixc store verify --store "$1" --recursive --no-trust "$root" 2>/dev/null; then echo "complete, verified"
  else echo "CONTENTS DIFFER (nix store verify)"; fi
}
declare -a t_from_ng t_from_fw t_pull
check_ng='' check_fw='' check_pull=''
for i in $(seq "$runs"); do
  progress "nix copy --from (and pull), run $i of $runs"
  t_from_ng+=("$(time_ns copy_from "$ng_url" "$work/store-ng")")
  [ -n "$check_ng" ] || check_ng=$(check_store "$work/store-ng")
  rmtree "$work/store-ng"
  t_from_fw+=("$(time_ns copy_from "$fw_url" "$work/store-fw")")
  [ -n "$check_fw" ] || check_fw=$(check_store "$work/store-fw")
  rmtree "$work/store-fw"
  if [ "$have_pull" = yes ]; then
    if t=$(time_ns pull "$work/store-pull" 2> "$work/pull.err"); then t_pull+=("$t")
    else progress "flywheel cache pull failed: $(tail -3 "$work/pull.err")"; check_pull="FAILED"; fi
    [ -n "$check_pull" ] || check_pull=$(check_store "$work/store-pull")
    rmtree "$work/store-pull"
  fi
done
m_from_ng=$(printf '%s\n' "${t_from_ng[@]}" | median)
m_from_fw=$(printf '%s\n' "${t_from_fw[@]}" | median)
[ "${#t_pull[@]}" = 0 ] || m_pull=$(printf '%s\n' "${t_pull[@]}" | median)

stop_flywheel
log_lines=$(grep -c ' request ' "$work/flywheel-serve.log" || true)
log_errors=$(grep -E ' status=5[0-9][0-9]| ERROR | WARN ' "$work/flywheel-serve.log" | head -5 || true)

cat <<EOT
closure: ${#paths[@]} store paths, $files files, $(mb "$nar_bytes") of NAR
machine: $(nproc) CPUs, $(uname -sr), $(date -u '+%Y-%m-%d %H:%M UTC'); client and servers on it together
flywheel $("$fw" --version | cut -d' ' -f2), $(nix --version), $(nginx -v 2>&1 | cut -d' ' -f3), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)
command: $cmdline   (medians of $runs; wrk ${seconds} s each)

push into an empty cache                                           time      nix/flywheel (goal >= 2)
  nix copy --to 'file://DIR?compression=zstd&secret-key=...'       $(secs "$m_push_nix")    1.00x
  flywheel cache push --to http://127.0.0.1:PORT/main              $(secs "$m_push_fw")    $(ratio "$m_push_nix" "$m_push_fw")
  the same with --compression zstd:1 ($(mb "$fw1_nar_files") stored)      $(secs "$m_push_fw1")    $(ratio "$m_push_nix" "$m_push_fw1")
  the server's data afterwards (flywheel cache verify): $verify

narinfo GETs, cycling through all ${#paths[@]}              nginx req/s   flywheel req/s   flywheel/nginx (goal >= 1)
  1 connection (wrk -t1 -c1)                         $m_q1_ng         $m_q1_fw            $(ratio "$m_q1_fw" "$m_q1_ng")
  16 connections (wrk -t2 -c16)                      $m_q16_ng         $m_q16_fw            $(ratio "$m_q16_fw" "$m_q16_ng")
  narinfos that agree (path, NarHash, NarSize, References, signed): $narinfo_ok of ${#paths[@]}

NAR downloads, cycling through each server's own   nginx MB/s    flywheel MB/s    flywheel/nginx (goal >= 0.8)
  16 connections (wrk -t2 -c16)                      $m_nar_ng        $m_nar_fw           $(ratio "$m_nar_fw" "$m_nar_ng")
  1 connection (wrk -t1 -c1)                         $m_nar1_ng        $m_nar1_fw           $(ratio "$m_nar1_fw" "$m_nar1_ng")
  the NAR files: nginx $(mb "$ng_nar_files") (nix copy's zstd), flywheel $(mb "$fw_nar_files") (flywheel push's zstd)

nix copy --from into an empty chroot store (require-sigs)   time      flywheel/nginx (goal <= 1.1)
  from nginx (the nix copy file cache)                       $(secs "$m_from_ng")    1.00x   $check_ng
  from the flywheel server                                   $(secs "$m_from_fw")    $(ratio "$m_from_fw" "$m_from_ng")   $check_fw
EOT
if [ "$have_pull" = yes ]; then
  cat <<EOT

pull from the flywheel server into an empty chroot store    time      nix/flywheel (goal >= 2)
  nix copy --from                                            $(secs "$m_from_fw")    1.00x
EOT
  if [ -n "${m_pull:-}" ]; then
    echo "  flywheel cache pull --trusted-key KEY --store DIR        $(secs "$m_pull")    $(ratio "$m_from_fw" "$m_pull")   $check_pull"
  else
    echo "  flywheel cache pull                                      FAILED: $(tail -1 "$work/pull.err")"
  fi
else
  echo
  echo "pull: not built yet"
fi
echo
echo "wrk errors (socket errors and non-2xx answers, all runs): $(awk '{s += $1} END {print s + 0}' "$work/wrk-errors")"
echo "flywheel server log: $log_lines requests${log_errors:+; the first errors and warnings:}"
[ -z "$log_errors" ] || printf '  %s\n' "$log_errors"
if [ "$(wc -l < "$work/check.out")" -gt 1 ]; then
  echo "narinfos that differ (the first 10):"
  tail -n +2 "$work/check.out" | sed 's/^/  /'
fi
if grep -qv '"user" directive' "$work/nginx/error.log" 2>/dev/null; then
  echo "nginx error log:"
  grep -v '"user" directive' "$work/nginx/error.log" | tail -5 | sed 's/^/  /'
fi
