#!/usr/bin/env bash
# The status page issue's run on a real GPU machine (docs/records/2026-11-25-status-page-on-h100.md):
# a cache server on 127.0.0.1, a canary token, and the canary run RUNS times on the host with
# --publish (the gpu, cuda and cleanup steps required; the last run also requires vulkan, which
# fails on a host without nvidia_modeset, so the lane has a real failure with its remedy); then
# the server's JSON and page saved for the record (rendered by Chromium on the development
# machine, which has it).
# usage: bench/canary/status-on-device.sh FLYWHEEL OUT_DIR [RUNS]   (FLYWHEEL: a release binary)
set -uo pipefail
fw=$(realpath "$1")
out=$(realpath "$2")
runs=${3:-4}
work=$(mktemp -d /tmp/flywheel-status.XXXXXX)
server=
cleanup() {
  [ -z "$server" ] || { kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null; }
  rm -rf "$work"
}
trap cleanup EXIT
exec > >(tee "$out/log.txt") 2>&1
date -u; uname -r; head -1 /proc/driver/nvidia/version; nvidia-smi -L
port=5480
"$fw" cache serve --data "$work/data" --listen "127.0.0.1:$port" > "$work/serve.out" 2> "$work/serve.log" &
server=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" > /dev/null && break; sleep 0.1; done
token=$("$fw" cache token create --data "$work/data" --cache main --scope canary)
driver=$(head -1 /proc/driver/nvidia/version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)
for i in $(seq "$runs"); do
  require=gpu,cuda,cleanup
  skip=cache,queue,vulkan
  if [ "$i" = "$runs" ]; then require=gpu,cuda,vulkan,cleanup; skip=cache,queue; fi
  echo "== run $i: --require $require"
  FLYWHEEL_CANARY_TOKEN=$token "$fw" canary --require "$require" --skip "$skip" --tools nvidia-smi \
    --image-digest "sha256:$(printf 'status-page-record-%s' "$i" | sha256sum | cut -c1-64)" \
    --image-driver-version "$driver" --lane h100 --publish "http://127.0.0.1:$port"
  echo "run $i: exit $?"
done
curl -sf "http://127.0.0.1:$port/api/v1/status" > "$out/status.json"
curl -sf "http://127.0.0.1:$port/api/v1/canary/runs?lane=h100" > "$out/runs.json"
curl -sf "http://127.0.0.1:$port/" > "$out/page.html"
echo "page: $(wc -c < "$out/page.html") bytes; runs: $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["runs"]))' "$out/runs.json")"
grep -E "canary run published" "$work/serve.log" | tail -n "$runs"
