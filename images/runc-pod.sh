#!/usr/bin/env bash
# Starts a runner image the way actions-runner-controller starts a runner pod, with runc on one
# machine (as root), for trying an image before it goes to the cluster; tests/e2e/runner_image.rs
# runs its jobs this way.
#
#   images/runc-pod.sh unpack IMAGE DIR
#       IMAGE is an OCI layout (what `nix build .#gpu-runner-image` links); DIR/bundle gets the
#       image unpacked by umoci with its owners, DIR/nix the /nix volume seeded by the image's
#       own hooks/seed-nix.sh as the runner user (the pod's init container), DIR/work the
#       /home/runner/_work volume.
#   images/runc-pod.sh run DIR [--env NAME=VALUE]... [--mount SRC:DEST[:ro]]... [--gpus] [--name ID] [-- ARGS...]
#       runc runs the image's entrypoint (/home/runner/run.sh), or ARGS, as the image's user with
#       the pod's mounts (/nix, /home/runner/_work, a tmpfs /tmp) and the ones given, in this
#       machine's network namespace (the pod's cluster network: servers on 127.0.0.1 answer).
#       --env replaces a variable the image sets. --gpus gives the container this machine's
#       /dev/nvidia* devices, as the NVIDIA device plugin gives a pod its GPUs (the image's
#       driver layer must match the kernel module: its job-started hook checks).
#       Give the runner its registration as ARC does: --env ACTIONS_RUNNER_INPUT_JITCONFIG=...
#
# Needs umoci, runc and python3 (Debian: apt-get install umoci runc python3).
set -euo pipefail

usage() {
  sed -n '2,/^# Needs/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() {
  echo "runc-pod: $*" >&2
  exit 1
}
case "${1:-}" in
  -h | --help)
    sed -n '2,/^# Needs/p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac
[ "$(id -u)" = 0 ] || die "run me as root (runc, and the image's owners)"
for tool in umoci runc python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed (Debian: apt-get install $tool)"
done

cmd=${1:-}
[ $# -ge 2 ] || usage
shift
dir=$1
shift

case "$cmd" in
  unpack)
    [ $# -eq 1 ] || usage
    image=$dir
    dir=$1
    [ -f "$image/index.json" ] || die "$image is not an OCI layout (no index.json)"
    [ ! -e "$dir/bundle" ] || die "$dir/bundle exists: remove it first"
    mkdir -p "$dir"
    umoci unpack --image "$image:latest" "$dir/bundle.partial" >/dev/null
    mv "$dir/bundle.partial" "$dir/bundle"
    # umoci leaves the bundle to root alone; the runner must reach the image's seed-nix.sh.
    chmod 0755 "$dir/bundle"
    # The pod's volumes: writable by the runner's group (ARC's fsGroup 1001).
    for vol in nix work; do
      mkdir -p "$dir/$vol"
      chown 1001:1001 "$dir/$vol"
      chmod 2775 "$dir/$vol"
    done
    setpriv --reuid 1001 --regid 1001 --clear-groups test -w "$dir/nix" \
      || die "uid 1001 (the runner) cannot reach $dir: choose a directory every user can enter (chmod o+x on each folder above it)"
    # The init container: the image's /nix copied into the volume by the image's own flywheel.
    setpriv --reuid 1001 --regid 1001 --clear-groups \
      "$dir/bundle/rootfs/home/runner/hooks/seed-nix.sh" --from "$dir/bundle/rootfs/nix" --to "$dir/nix"
    ;;
  run)
    [ -f "$dir/bundle/config.json" ] || die "$dir/bundle/config.json is missing: run '$0 unpack IMAGE $dir' first"
    envs=()
    mounts=()
    args=()
    gpus=0
    id="flywheel-runner-$$"
    while [ $# -gt 0 ]; do
      case "$1" in
        --env)
          [ $# -ge 2 ] && [[ "$2" == *=* ]] || die "--env takes NAME=VALUE"
          envs+=("$2")
          shift 2
          ;;
        --mount)
          [ $# -ge 2 ] && [[ "$2" == /*:/* ]] || die "--mount takes SRC:DEST[:ro], both absolute"
          mounts+=("$2")
          shift 2
          ;;
        --gpus)
          gpus=1
          shift
          ;;
        --name)
          [ $# -ge 2 ] || usage
          id=$2
          shift 2
          ;;
        --)
          shift
          args=("$@")
          break
          ;;
        *) usage ;;
      esac
    done
    bundle=$(cd "$dir/bundle" && pwd)
    [ -f "$bundle/config.image.json" ] || cp "$bundle/config.json" "$bundle/config.image.json"
    # The image's own config, with the pod's mounts and this run's additions.
    if [ "$gpus" = 1 ] && ! compgen -G '/dev/nvidia[0-9]*' >/dev/null; then
      die "--gpus: this machine has no /dev/nvidia0 (no NVIDIA GPU, or its kernel module is not loaded)"
    fi
    python3 - "$bundle" "$(cd "$dir" && pwd)" "$gpus" "${#envs[@]}" "${envs[@]}" "${#mounts[@]}" "${mounts[@]}" "${args[@]}" <<'EOF'
import glob, json, os, stat, sys
bundle, pod, gpus = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
rest = sys.argv[4:]
n = int(rest[0]); envs = rest[1:1 + n]; rest = rest[1 + n:]
n = int(rest[0]); mounts = rest[1:1 + n]; args = rest[1 + n:]
config = json.load(open(f"{bundle}/config.image.json"))
process = config["process"]
process["terminal"] = False
if args:
    process["args"] = args
names = {e.split("=", 1)[0] for e in envs}
process["env"] = [e for e in process.get("env", []) if e.split("=", 1)[0] not in names] + envs
config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"] if ns["type"] != "network"]
m = [x for x in config["mounts"] if x["destination"] != "/tmp"]
m.append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]})
for source, dest in [(f"{pod}/nix", "/nix"), (f"{pod}/work", "/home/runner/_work")]:
    m.append({"destination": dest, "type": "bind", "source": source, "options": ["rbind", "rw"]})
for spec in mounts:
    parts = spec.split(":")
    mode = "ro" if len(parts) == 3 and parts[2] == "ro" else "rw"
    m.append({"destination": parts[1], "type": "bind", "source": parts[0], "options": ["rbind", mode]})
config["mounts"] = m
if gpus:
    linux = config["linux"]
    devices, allow = linux.setdefault("devices", []), linux.setdefault("resources", {}).setdefault("devices", [])
    for path in sorted(glob.glob("/dev/nvidia*") + glob.glob("/dev/nvidia-caps/*")):
        st = os.stat(path)
        if not stat.S_ISCHR(st.st_mode):
            continue
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        devices.append({"path": path, "type": "c", "major": major, "minor": minor, "fileMode": 0o666, "uid": 0, "gid": 0})
        allow.append({"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"})
with open(f"{bundle}/config.json.partial", "w") as f:
    json.dump(config, f, indent=2)
EOF
    mv "$bundle/config.json.partial" "$bundle/config.json"
    exec runc run --bundle "$bundle" "$id"
    ;;
  *) usage ;;
esac
