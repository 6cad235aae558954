#!/usr/bin/env bash
# Starts a runner image the way actions-runner-controller starts a runner pod, with runc on one
# machine (as root), for trying an image before it goes to the cluster; tests/e2e/runner_image.rs
# runs its jobs this way.
#
#   images/runc-pod.sh unpack IMAGE DIR
#       IMAGE is an OCI layout (what `nix build .#gpu-runner-image` links); DIR/bundle gets the
#       image unpacked by umoci with its owners, DIR/nix the /nix volume, seeded as the pod's
#       init container does: the image's own hooks/seed-nix.sh run by runc in the image as the
#       runner user, the volume at /nix-volume; DIR/work the /home/runner/_work volume.
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

# The image's own config (umoci's, kept as config.image.json) for one container of the pod,
# written to the bundle's config.json: MODE seed (the init container: the /nix volume at
# /nix-volume, the image's /nix as it is) or run (the volumes at /nix and /home/runner/_work),
# then the GPU flag, the variables, the extra mounts and the arguments, each list after its
# length. A tmpfs /tmp; this machine's network namespace.
write_config() {
  local bundle=$1
  shift
  [ -f "$bundle/config.image.json" ] || cp "$bundle/config.json" "$bundle/config.image.json"
  python3 - "$bundle" "$@" <<'EOF'
import glob, json, os, stat, sys
bundle, pod, mode, gpus = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
rest = sys.argv[5:]
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
volumes = [(f"{pod}/nix", "/nix-volume")] if mode == "seed" else [(f"{pod}/nix", "/nix"), (f"{pod}/work", "/home/runner/_work")]
for source, dest in volumes:
    m.append({"destination": dest, "type": "bind", "source": source, "options": ["rbind", "rw"]})
for spec in mounts:
    parts = spec.split(":")
    ro = "ro" if len(parts) == 3 and parts[2] == "ro" else "rw"
    m.append({"destination": parts[1], "type": "bind", "source": parts[0], "options": ["rbind", ro]})
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
}

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
    # The pod's volumes: writable by the runner's group (ARC's fsGroup 1001).
    for vol in nix work; do
      mkdir -p "$dir/$vol"
      chown 1001:1001 "$dir/$vol"
      chmod 2775 "$dir/$vol"
    done
    pod=$(cd "$dir" && pwd)
    # The init container: the image's /nix copied into the volume by the image's own flywheel,
    # inside the image (its scripts name the image's store, which this machine need not have).
    write_config "$pod/bundle" "$pod" seed 0 0 0 /home/runner/hooks/seed-nix.sh --to /nix-volume
    runc run --bundle "$pod/bundle" "flywheel-seed-nix-$$" || die "the init container (seed-nix) failed: the /nix volume in $dir/nix is not seeded"
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
    if [ "$gpus" = 1 ] && ! compgen -G '/dev/nvidia[0-9]*' >/dev/null; then
      die "--gpus: this machine has no /dev/nvidia0 (no NVIDIA GPU, or its kernel module is not loaded)"
    fi
    pod=$(cd "$dir" && pwd)
    write_config "$pod/bundle" "$pod" run "$gpus" "${#envs[@]}" "${envs[@]}" "${#mounts[@]}" "${mounts[@]}" "${args[@]}"
    exec runc run --bundle "$pod/bundle" "$id"
    ;;
  *) usage ;;
esac
