#!/usr/bin/env bash
# Issue 21, point 6, on the GPU machine (docs/records/2026-12-06-runner-image-on-h100.md): the
# runner image of tests/runner-flake with this machine's own driver as its driver layer, started
# as a lane pod's containers, running the lane's canary as its job.
#  1. the host: kernel, driver, device nodes, what the driver's libraries link, which runtimes;
#  2. `flywheel driver collect` of the host's driver (utility, compute: images/gpu-runner's);
#  3. the image: `flywheel image build --spec` of the flake's own spec (PREP_DIR/spec.json), over
#     the chroot store prepare.sh carried, with the collected tree as its driver layer; its
#     layers compared with the Nix-built image's (all but the driver layer must be the same);
#     unpacked with umoci as a runtime's image store would;
#  4. the cache the image names (its nix.conf, FLYWHEEL_CACHE_URL), served on the host's loopback
#     with the image's closure pushed to it;
#  5. the pod, in runc if it runs here, else in a chroot with fresh mount, pid, uts and ipc
#     namespaces (unshare) carrying out the same OCI config: the init container seed-nix
#     (/home/runner/hooks/seed-nix.sh --to /nix-volume, as uid 1001), then the runner container
#     (/home/runner/run.sh, uid 1001, the /nix, _work and .cache volumes, a tmpfs /tmp, the GPU's
#     device nodes, the lane's environment): the stand-in listener runs the job-started hook, the
#     job (the lane canary workflow's step: `flywheel canary` with the lane's required steps) and
#     the job-completed hook. Every output line is stamped with the seconds since the runtime was
#     started.
#  6. only if the gpu or cuda step did not pass: the same again with one more layer, glibc's
#     compatibility libraries (PREP_DIR/glibc-compat) where the image's loader looks;
#  7. where runc runs: the same image through images/runc-pod.sh, as a user tries one (unpack,
#     then run --gpus: nvidia-smi and the canary's gpu and cuda steps), and once without --gpus.
# usage: bench/runner-image/on-device.sh PREP_DIR OUT_DIR   (PREP_DIR from prepare.sh)
# Runs as root. DRIVER_ROOT (default /usr/local/nvidia), RUNTIME (auto, runc or chroot) and, for a
# dry run without a GPU (bench/runner-image/local-test.sh), COLLECT_ARGS (e.g. --no-nvml),
# EXTRA_POD_ENV (NAME=VALUE ...) and EXTRA_CACHE_FILES (files put in the pod's .cache volume).
set -uo pipefail
prep=$(realpath "$1")
mkdir -p "$2"
out=$(realpath "$2")
here=$(dirname "$(realpath "$0")")
oci=$here/oci.py
root=${DRIVER_ROOT:-/usr/local/nvidia}
runtime=${RUNTIME:-auto}
read -r -a collect_args <<< "${COLLECT_ARGS:-}"
read -r -a extra_pod_env <<< "${EXTRA_POD_ENV:-}"
work=$(mktemp -d /tmp/flywheel-runner-image.XXXXXX)
chmod 755 "$work"
started=$EPOCHREALTIME
step() { printf '\n== %s\n' "$*"; }
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f s", b - a }'; }
exec > >(tee "$out/log.txt") 2>&1
# shellcheck disable=SC1091
. "$prep/cache.env"

step "1. the host"
date -u; uname -r; nproc
head -1 /proc/driver/nvidia/version 2>&1
nvidia-smi -L 2>&1; nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv 2>&1
echo "NVIDIA kernel modules: $(awk '/^nvidia/ {print $1}' /proc/modules | tr '\n' ' ')"
ls -l /dev/nvidia* /dev/nvidia-caps 2>&1
echo "libcuda and NVML on the host, with what they link:"
ldconfig -p | grep -E 'libcuda.so.1|libnvidia-ml.so.1'
ldd "$root"/lib64/libcuda.so.1 "$root"/lib64/libnvidia-ml.so.1 2>&1
for t in runc crun docker podman containerd ctr nvidia-container-runtime nvidia-ctk unshare chroot python3; do
  printf '%s: %s\n' "$t" "$(command -v "$t" || echo none)"
done
echo "cgroups: $(stat -fc %T /sys/fs/cgroup 2>&1); $(grep -c . /proc/self/cgroup) lines in /proc/self/cgroup"
grep -E ' / | /tmp ' /proc/mounts

step "tools carried in $prep"
mkdir -p "$work/bin" "$work/lib"
# xz where the machine has it, else python3's lzma.
unxz() { if command -v xz >/dev/null; then xz -dc "$1"; else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"; fi; }
for t in flywheel umoci runc; do unxz "$prep/$t.xz" > "$work/bin/$t" && chmod 755 "$work/bin/$t"; done
fw=$work/bin/flywheel
if ! ldconfig -p | grep -q 'libseccomp.so.2 '; then
  cp "$prep/libseccomp.so.2" "$work/lib/"
  echo "no libseccomp here: runc gets Debian's"
fi
runc() { LD_LIBRARY_PATH=$work/lib "$work/bin/runc" "$@"; }
"$fw" --version; "$work/bin/umoci" --version; runc --version | head -1

step "2. the host's driver, collected"
kernel=$(awk '{for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+(\.[0-9]+)?$/) {print $i; exit}}' /proc/driver/nvidia/version 2>/dev/null)
echo "kernel module: ${kernel:-none}"
t=$(now)
"$fw" driver collect --driver-root "$root" --capabilities utility,compute ${kernel:+--expect-version "$kernel"} \
  "${collect_args[@]}" --out "$work/driver" || exit 1
echo "collected in $(since "$t"): $(find "$work/driver" -type f | wc -l) files, $(du -sh --apparent-size "$work/driver" | cut -f1)"
version=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$work/driver/manifest.json")

step "3. the runner image with this driver as its driver layer"
t=$(now)
mkdir -p "$work/store"
unxz "$prep/store.tar.xz" | tar -C "$work/store" -xf - || exit 1
echo "chroot store unpacked in $(since "$t"): $(find "$work/store/nix/store" -mindepth 1 -maxdepth 1 | wc -l) entries"
sed "s|@DRIVER_TREE@|$work/driver|" "$prep/spec.json" > "$work/spec.json"
# build IMAGE_DIR [extra flywheel image build args]: prints the digest; the report in IMAGE_DIR.json
build() {
  local dest=$1; shift
  local t; t=$(now)
  "$fw" image build --spec "$work/spec.json" --store "$work/store" --layer-cache "$work/layer-cache" \
    --json --out "$dest" "$@" > "$dest.json" || return 1
  python3 - "$dest" "$prep/nix-built" <<'PY'
import json, sys
dest, nix = sys.argv[1:]
rep = json.load(open(dest + ".json"))
idx = json.load(open(f"{dest}/index.json"))["manifests"][0]["digest"]
man = json.load(open(f"{dest}/blobs/sha256/{idx.split(':')[1]}"))
cfg = json.load(open(f"{dest}/blobs/sha256/{man['config']['digest'].split(':')[1]}"))
nman = json.load(open(f"{nix}/manifest.json"))
ndig = {l["digest"] for l in nman["layers"]}
names = [l.get("name", "?") for l in rep.get("layers", [])] or ["?"] * len(man["layers"])
print(f"image {idx}: {len(man['layers'])} layers, {sum(l['size'] for l in man['layers']) / 2**20:.1f} MiB of "
      f"{man['layers'][0]['mediaType'].rsplit('.', 1)[-1]} layers; labels {json.dumps(cfg['config'].get('Labels', {}))}")
same = 0
for i, l in enumerate(man["layers"]):
    hit = l["digest"] in ndig
    same += hit
    print(f"  {i:2} {names[i] if i < len(names) else '?':<28} {l['size'] / 2**20:8.2f} MiB  {l['digest'][:19]}  "
          f"{'= the Nix-built layer' if hit else 'not in the Nix-built image'}")
print(f"  {same} of {len(man['layers'])} layers are the Nix-built image's "
      f"({len(nman['layers'])} layers, {sum(l['size'] for l in nman['layers']) / 2**20:.1f} MiB, with the stand-in driver)")
PY
  echo "built in $(since "$t")"
}
# unpack IMAGE_DIR BUNDLE
unpack() {
  local t; t=$(now)
  "$work/bin/umoci" unpack --image "$1:latest" "$2" >/dev/null || return 1
  cp "$2/config.json" "$2/config.image.json"
  echo "unpacked with umoci in $(since "$t"): $(du -sh "$2/rootfs" | cut -f1) rootfs"
}
build "$work/image" || exit 1
digest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$work/image/index.json")
unpack "$work/image" "$work/bundle" || exit 1
rootfs=$work/bundle/rootfs
echo "in the image's /usr/lib/x86_64-linux-gnu: $(cd "$rootfs/usr/lib/x86_64-linux-gnu" && echo *)"
echo "/lib64/ld-linux-x86-64.so.2 -> $(readlink "$rootfs/lib64/ld-linux-x86-64.so.2")"
[ -e "$rootfs/lib/x86_64-linux-gnu" ] && echo "in its /lib/x86_64-linux-gnu: $(cd "$rootfs/lib/x86_64-linux-gnu" && echo *)"
cat "$rootfs/etc/nix/nix.conf"
sed -n '2,$p' "$rootfs/home/runner/hooks/job-started.sh"

step "4. the cache the image names, on this host's loopback"
cp -a "$prep/cache-data" "$work/cache-data"
"$fw" cache serve --data "$work/cache-data" --listen "$CACHE_LISTEN" > "$work/serve.out" 2> "$work/serve.log" &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 100); do [ -s "$work/serve.out" ] && break; sleep 0.1; done
cat "$work/serve.out"
mapfile -t roots < <(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["closureRoots"]))' "$work/spec.json")
"$fw" cache push --store "$work/store" --to "$CACHE_URL" --token "$CACHE_WRITE_TOKEN" "${roots[@]}" 2>&1 | tail -2

step "5. the lane pod"
# The runtime: runc if a container starts here, else chroot in namespaces of our own.
if [ "$runtime" = auto ]; then
  # shellcheck disable=SC2016 # expanded in the container
  python3 "$oci" config "$work/bundle/config.image.json" "$work/bundle/config.json" --hostname probe \
    --host-network -- /bin/sh -c 'echo "runc runs here: uid $(id -u)"'
  if LD_LIBRARY_PATH=$work/lib timeout 30 "$work/bin/runc" run --bundle "$work/bundle" "probe-$$"; then
    runtime=runc
  else
    echo "runc cannot start a container here (above): chroot with unshare's namespaces instead"
    LD_LIBRARY_PATH=$work/lib "$work/bin/runc" delete -f "probe-$$" >/dev/null 2>&1
    runtime=chroot
  fi
fi
echo "runtime: $runtime"

# volume DIR: an emptyDir with the pod's fsGroup 1001 (group-owned, setgid, group-writable).
volume() { mkdir -p "$1" && chown 1001:1001 "$1" && chmod 2775 "$1"; }
# stamp T0: stdin to stdout, each line prefixed with the seconds since T0 ($EPOCHREALTIME), read
# as it comes (bash reads a pipe unbuffered).
stamp() {
  local t0=${1/./} line t
  while IFS= read -r line; do
    t=$(( ${EPOCHREALTIME/./} - t0 ))
    printf '%4d.%03d  %s\n' $((t / 1000000)) $((t / 1000 % 1000)) "$line"
  done
}
# container BUNDLE NAME LOG [oci.py config options] -- ARGS: runs it, each output line stamped with
# the seconds since the runtime was started; sets $rc.
container() {
  local bundle=$1 name=$2 log=$3; shift 3
  rc=1
  python3 "$oci" config "$bundle/config.image.json" "$bundle/config.json" --hostname "$name" --fsgroup 1001 \
    --host-network --tmpfs /tmp "$@" || return 1
  local t0; t0=$(now)
  t0_runner=$t0
  if [ "$runtime" = runc ]; then
    LD_LIBRARY_PATH=$work/lib timeout 300 "$work/bin/runc" run --bundle "$bundle" "$name-$$" 2>&1 | stamp "$t0" | tee "$log"
  else
    python3 "$oci" mounts "$bundle/config.json" "$bundle/rootfs" > "$bundle/mounts.sh"
    timeout 300 unshare --mount --pid --uts --ipc --fork --propagation private -- bash "$bundle/mounts.sh" 2>&1 \
      | stamp "$t0" | tee "$log"
  fi
  rc=${PIPESTATUS[0]}
  echo "($name: exit $rc, $(since "$t0") from the runtime's start at $t0)"
}

# pod BUNDLE DIGEST TAG: the init container, then the runner container; reports in $out/TAG.
pod() {
  local bundle=$1 image_digest=$2 tag=$3
  local pod=$work/pod-$tag
  volume "$pod/nix"; volume "$pod/work"; volume "$pod/cache"
  for f in ${EXTRA_CACHE_FILES:-}; do cp "$f" "$pod/cache/" && chown 1001:1001 "$pod/cache/$(basename "$f")"; done
  # The job: the lane canary workflow's step (docs/lanes, `flywheel lane render`), with the job's
  # env the workflow sets; written into the work volume, where the runner would check it out.
  cat > "$pod/work/job.sh" <<EOF
#!/bin/bash
echo "job: step 'canary' starts (\$EPOCHREALTIME)"
echo "job: \$(id) on \$HOSTNAME, in \$PWD; /dev: \$(ls /dev | tr '\\n' ' '); pid 1: \$(tr '\\0' ' ' < /proc/1/cmdline)"
echo "job: the driver layer's nvidia-smi, through nix-ld: \$(/usr/bin/nvidia-smi -L 2>&1)"
export CANARY_REQUIRE=bootstrap,gpu,cuda,cache,cleanup FLYWHEEL_CANARY_TOKEN=$CACHE_CANARY_TOKEN FLYWHEEL_LANE=h100-record
args=(--report-dir canary-report --cache "\$FLYWHEEL_CACHE_URL" --trusted-key "\$FLYWHEEL_CACHE_PUBLIC_KEY")
if [ -n "\${CANARY_REQUIRE:-}" ]; then args+=(--require "\$CANARY_REQUIRE"); fi
if [ -n "\${FLYWHEEL_CANARY_TOKEN:-}" ]; then args+=(--publish "\${FLYWHEEL_CACHE_URL%/*}"); fi
flywheel canary "\${args[@]}"
code=\$?
cp -r canary-report /home/runner/_work/canary-report
exit \$code
EOF
  chmod 755 "$pod/work/job.sh"; chown 1001:1001 "$pod/work/job.sh"

  echo "-- init container seed-nix: /home/runner/hooks/seed-nix.sh --to /nix-volume"
  container "$bundle" seed-nix "$pod/seed.log" --bind "$pod/nix:/nix-volume" \
    -- /home/runner/hooks/seed-nix.sh --to /nix-volume
  [ "$rc" = 0 ] || return 1

  echo "-- runner container: /home/runner/run.sh"
  local pod_env=(
    ACTIONS_RUNNER_INPUT_JITCONFIG=jit
    FIXTURE_JOB=/home/runner/_work/job.sh
    FLYWHEEL_LANE=h100-record
    "FLYWHEEL_IMAGE_DIGEST=$image_digest"
    "FLYWHEEL_DRIVER_VERSION=$version"
    "FLYWHEEL_CACHE_URL=$CACHE_URL"
    "FLYWHEEL_CACHE_PUBLIC_KEY=$CACHE_PUBLIC_KEY"
    "FLYWHEEL_CACHE_TOKEN=$CACHE_WRITE_TOKEN"
    "NIX_CONFIG=extra-substituters = $CACHE_URL
extra-trusted-public-keys = $CACHE_PUBLIC_KEY"
    "${extra_pod_env[@]}"
  )
  local envs=()
  for e in "${pod_env[@]}"; do envs+=(--env "$e"); done
  container "$bundle" runner "$pod/runner.log" "${envs[@]}" --gpu \
    --bind "$pod/nix:/nix" --bind "$pod/work:/home/runner/_work" --bind "$pod/cache:/home/runner/.cache" \
    -- /home/runner/run.sh
  awk -v t0="$t0_runner" '/job: step/ {gsub(/[()]/, "", $NF); printf "   the job'"'"'s first step began %.3f s after the runtime was started (its own clock)\n", $NF - t0}' "$pod/runner.log"
  mkdir -p "$out/$tag"
  if [ -d "$pod/work/canary-report" ]; then
    cp "$pod/work/canary-report/"{summary.md,events.jsonl,junit.xml} "$out/$tag/"
    python3 - "$pod/work/canary-report/events.jsonl" <<'PY'
import json, sys
for e in map(json.loads, open(sys.argv[1])):
    if e.get("event") == "step":
        why = e.get("reason") or ""
        print(f"   step {e['step']:<9} {e['status']:<5} {e.get('duration_ms', 0):>6} ms  {why[:300]}")
PY
  else
    echo "no canary report: the job did not run"
  fi
}

gpu_and_cuda_passed() {
  python3 - "$1" <<'PY'
import json, sys
st = {e["step"]: e["status"] for e in map(json.loads, open(sys.argv[1])) if e.get("event") == "step"}
sys.exit(0 if st.get("gpu") == "pass" and st.get("cuda") == "pass" else 1)
PY
}

pod "$work/bundle" "$digest" image
if ! gpu_and_cuda_passed "$out/image/events.jsonl" 2>/dev/null; then
  step "6. gpu or cuda did not pass: the image again, with glibc's compatibility libraries as one more layer"
  ls -l "$prep/glibc-compat/lib/x86_64-linux-gnu"
  build "$work/image-compat" --layer "$prep/glibc-compat" || exit 1
  digest2=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$work/image-compat/index.json")
  unpack "$work/image-compat" "$work/bundle-compat" || exit 1
  pod "$work/bundle-compat" "$digest2" image-compat
fi

# What a user runs to try an image on a GPU machine: images/runc-pod.sh with --gpus (runc and
# umoci from PATH, here the carried ones).
if [ "$runtime" = runc ]; then
  step "7. images/runc-pod.sh unpack, then run --gpus: nvidia-smi and the canary's gpu and cuda steps"
  mkdir -p "$work/pathbin"
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$work/lib" "$work/bin/runc" > "$work/pathbin/runc"
  ln -sf "$work/bin/umoci" "$work/pathbin/umoci"
  chmod 755 "$work/pathbin/runc"
  runc_pod=$here/../../images/runc-pod.sh
  t=$EPOCHREALTIME
  PATH=$work/pathbin:$PATH "$runc_pod" unpack "$work/image" "$work/runc-pod" 2>&1
  echo "(unpack and seed: $(since "$t"))"
  t=$EPOCHREALTIME
  PATH=$work/pathbin:$PATH timeout 300 "$runc_pod" run "$work/runc-pod" --gpus --name "runc-pod-$$" -- \
    /usr/bin/env bash -c 'echo "first line at $EPOCHREALTIME"; ls /dev | tr "\n" " "; echo; /usr/bin/nvidia-smi -L; flywheel canary --require gpu,cuda --skip bootstrap,vulkan,cache,queue,cleanup --report-dir /tmp/report' 2>&1
  echo "(runc-pod.sh run --gpus: exit $?, $(since "$t") in all, started at $t)"
  PATH=$work/pathbin:$PATH "$runc_pod" run "$work/runc-pod" --name "runc-pod-nogpu-$$" -- \
    /usr/bin/env bash -c 'ls /dev | tr "\n" " "; echo' 2>&1
  echo "(the same without --gpus: exit $?)"
fi

step "after"
nvidia-smi --query-gpu=memory.used --format=csv 2>&1
tail -3 "$work/serve.log"
kill "$server" 2>/dev/null; wait "$server" 2>/dev/null
rm -rf "$work"
echo "on-device.sh: $(since "$started") in all"
