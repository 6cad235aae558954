#!/usr/bin/env bash
# The runner image as a pod starts it, timed (docs/benchmarks.md, "Runner image: size and start"):
# its size and layer count, then N fresh pods, each: unpack with umoci and seed the /nix volume
# (images/runc-pod.sh unpack: what the image pull and the init container do), and runc to the
# first line of a job's first step (images/runc-pod.sh run: run.sh registers the store, the
# stand-in listener runs the job-started hook, then the job). The job-started hook is given a
# node module version that matches the image's driver layer.
# usage: bench/runner-image/start.sh [IMAGE] [N]   (IMAGE defaults to ./quickstart's, N to 5)
# Runs as root (umoci with owners, runc).
set -euo pipefail
cd "$(dirname "$0")/../.."
image=${1:-$(readlink -f target/quickstart/runner-image)}
n=${2:-5}
[ -f "$image/index.json" ] || { echo "start.sh: no OCI layout at $image: run ./quickstart first" >&2; exit 1; }
work=$(mktemp -d /tmp/flywheel-runner-start.XXXXXX)
chmod 0755 "$work"
trap 'rm -rf "$work"' EXIT

python3 - "$image" <<'EOF'
import gzip, json, sys
layout = sys.argv[1]
blob = lambda d: f"{layout}/blobs/sha256/{d.split(':')[1]}"
manifest = json.load(open(blob(json.load(open(f"{layout}/index.json"))["manifests"][0]["digest"])))
compressed = sum(l["size"] for l in manifest["layers"])
unpacked = 0
for l in manifest["layers"]:
    with gzip.open(blob(l["digest"])) if l["mediaType"].endswith("gzip") else open(blob(l["digest"]), "rb") as f:
        while chunk := f.read(1 << 20):
            unpacked += len(chunk)
print(f"image: {len(manifest['layers'])} layers, {compressed / 1e6:.1f} MB compressed, {unpacked / 1e6:.1f} MB of layer tar")
EOF

driver=$(python3 -c 'import json,sys
l=sys.argv[1]; b=lambda d: l+"/blobs/sha256/"+d.split(":")[1]
m=json.load(open(b(json.load(open(l+"/index.json"))["manifests"][0]["digest"])))
c=json.load(open(b(m["config"]["digest"])))
print(c["config"].get("Labels",{}).get("dev.flywheel.driver.version",""))' "$image")
mkdir -p "$work/node"
printf 'NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  %s  Release Build\n' "$driver" > "$work/node/version"
job='#!/usr/bin/env bash
echo "job: first step at $(date +%s.%N)"'

now() { date +%s.%N; }
for i in $(seq "$n"); do
  pod=$work/pod-$i
  t0=$(now)
  images/runc-pod.sh unpack "$image" "$pod" >/dev/null
  t1=$(now)
  mkdir -p "$pod/work/_temp"
  printf '%s\n' "$job" > "$pod/work/_temp/job.sh"
  chmod 0755 "$pod/work/_temp/job.sh"
  chown -R 1001:1001 "$pod/work/_temp"
  t2=$(now)
  out=$(images/runc-pod.sh run "$pod" --name "flywheel-start-$$-$i" \
    --env ACTIONS_RUNNER_INPUT_JITCONFIG=jit --env FIXTURE_JOB=/home/runner/_work/_temp/job.sh \
    --env FLYWHEEL_KERNEL_VERSION_FILE=/node/version --env FLYWHEEL_GPU_DEVICES=/node/no-gpu \
    --mount "$work/node:/node:ro" 2>&1)
  first=$(sed -n 's/^job: first step at //p' <<<"$out")
  [ -n "$first" ] || { echo "start.sh: the job did not start:" >&2; echo "$out" >&2; exit 1; }
  python3 -c 'import sys; t0,t1,t2,f=map(float,sys.argv[1:5]); print(f"pod {sys.argv[5]}: unpack and seed {t1-t0:.2f} s, runc to the first step {f-t2:.2f} s")' "$t0" "$t1" "$t2" "$first" "$i"
  rm -rf "$pod"
done
