#!/usr/bin/env bash
# The canary issue's run on a real GPU machine (docs/records/2026-11-25-canary-on-h100.md):
#  1. the whole canary on the host (every step but queue and cache), three times, each followed
#     in the same command by torch's bandwidth reference (bench/canary/torch_bandwidth.py), and
#     the ratios;
#  2. the canary inside a runner image built with the driver layer (utility, compute, graphics),
#     unpacked with umoci and run in a chroot with /dev, /proc and /sys bound in.
# usage: bench/canary/on-device.sh PREP_DIR OUT_DIR   (PREP_DIR from bench/canary/prepare.sh)
# Runs as root (mount, chroot). DRIVER_ROOT defaults to /usr/local/nvidia.
set -uo pipefail
prep=$(realpath "$1")
out=$(realpath "$2")
root=${DRIVER_ROOT:-/usr/local/nvidia}
fw=$prep/flywheel
work=$(mktemp -d /tmp/flywheel-canary.XXXXXX)
step() { printf '\n== %s\n' "$*"; }
secs() { date +%s.%N; }
exec > >(tee "$out/log.txt") 2>&1

step "host"
date -u; uname -r; head -1 /proc/driver/nvidia/version; nproc
nvidia-smi -L; nvidia-smi --query-gpu=persistence_mode,pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,memory.used --format=csv
ls /usr/share/vulkan/icd.d 2>&1
echo "NVIDIA kernel modules: $(awk '/^nvidia/ {print $1}' /proc/modules | tr '\n' ' ')"; ls /dev/nvidia* | tr '\n' ' '; echo
ldconfig -p | grep -E 'libvulkan.so.1|libnvidia-ml.so.1|libcuda.so.1'
vk=()
if ! ldconfig -p | grep -q 'libvulkan.so.1 '; then
  echo "no Vulkan loader on the host: using Debian's, carried in $prep/lib"
  vk=(--vulkan-loader "$prep/lib/libvulkan.so.1")
fi
canary=(canary --require gpu,cuda,vulkan,cleanup --skip cache,queue --tools nvidia-smi "${vk[@]}")

step "1. the canary on the host, then torch's reference, three times"
for i in 1 2 3; do
  t0=$(secs)
  "$fw" "${canary[@]}" --report-dir "$out/host-$i"
  rc=$?
  t1=$(secs)
  echo "run $i: exit $rc, $(awk "BEGIN{print $t1 - $t0}") s wall"
  python3 "$prep/torch_bandwidth.py" > "$out/torch-$i.json" && cat "$out/torch-$i.json"
done
python3 - "$out" <<'PY'
import json, statistics, sys
out = sys.argv[1]
rows = []
for i in (1, 2, 3):
    ev = [json.loads(l) for l in open(f"{out}/host-{i}/events.jsonl")]
    cuda = next(e for e in ev if e.get("step") == "cuda")
    m = {x["name"]: x["value"] for x in cuda.get("metrics", []) if x.get("labels", {}).get("gpu") in (None, "0")}
    t = json.load(open(f"{out}/torch-{i}.json"))
    end = ev[-1]
    rows.append((end["duration_ms"] / 1e3, m["cuda_h2d_bytes_per_second"], t["h2d_bytes_per_second"],
                 m["cuda_d2h_bytes_per_second"], t["d2h_bytes_per_second"],
                 m["cuda_d2d_bytes_per_second"], t["d2d_bytes_per_second"],
                 {e["step"]: e["status"] for e in ev if e.get("event") == "step"}))
print("run | canary s | H2D canary / torch GB/s | D2H canary / torch | D2D canary / torch | steps")
for n, r in enumerate(rows, 1):
    print(f"{n} | {r[0]:.2f} | {r[1]/1e9:.1f} / {r[2]/1e9:.1f} ({r[1]/r[2]:.3f}x) | {r[3]/1e9:.1f} / {r[4]/1e9:.1f} ({r[3]/r[4]:.3f}x) | {r[5]/1e9:.0f} / {r[6]/1e9:.0f} ({r[5]/r[6]:.3f}x) | {r[7]}")
med = lambda k: statistics.median(k)
print(f"median: canary {med([r[0] for r in rows]):.2f} s; H2D ratio {med([r[1]/r[2] for r in rows]):.3f}x; "
      f"D2H ratio {med([r[3]/r[4] for r in rows]):.3f}x; D2D ratio {med([r[5]/r[6] for r in rows]):.3f}x")
PY
cat "$out/host-1/summary.md" | head -60

step "2. the canary inside a runner image with the driver layer"
"$fw" driver collect --driver-root "$root" --capabilities utility,compute,graphics --out "$work/driver" || exit 1
libdir=$work/driver/usr/lib/x86_64-linux-gnu
# What the driver's libraries link that the driver layer does not hold (the Vulkan ICD's X11
# libraries, say), from the host, as ldd names them, into a copy of the canary layer; the host's
# glibc replaces Debian's there (the host's libX11 needs its newer glibc).
layer=$work/canary-layer
cp -a "$prep/canary-layer" "$layer"
added=()
for lib in $(ldd "$libdir"/*.so.* 2>/dev/null | awk '/=>/ && $3 ~ /^\// {print $3}' | sort -u); do
  name=$(basename "$lib")
  [ -e "$libdir/$name" ] || { cp -L "$lib" "$layer/lib/x86_64-linux-gnu/$name"; added+=("$name"); }
done
cp -L /lib64/ld-linux-x86-64.so.2 "$layer/lib64/"
echo "from the host: ${added[*]}"
digest=$("$fw" image build --no-layer-cache --compression gzip --driver "$work/driver" --layer "$layer" \
  --entrypoint /usr/bin/flywheel --entrypoint canary --out "$work/image") || exit 1
echo "image: $digest"
"$prep/umoci" unpack --image "$work/image:latest" "$work/bundle" >/dev/null || exit 1
rootfs=$work/bundle/rootfs
mkdir -p "$rootfs/dev" "$rootfs/proc" "$rootfs/sys" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
mount --rbind /dev "$rootfs/dev" && mount -t proc proc "$rootfs/proc" && mount --rbind /sys "$rootfs/sys"
t0=$(secs)
env -i PATH=/usr/bin:/bin FLYWHEEL_IMAGE_DIGEST="$digest" /usr/sbin/chroot "$rootfs" \
  /usr/bin/flywheel canary --require gpu,cuda,vulkan,cleanup --skip cache,queue --tools flywheel --report-dir /report
echo "chroot run: exit $?, $(awk "BEGIN{print $(secs) - $t0}") s wall"
umount -R -l "$rootfs/dev"; umount -l "$rootfs/proc"; umount -R -l "$rootfs/sys"
cp -r "$rootfs/report" "$out/chroot"
head -40 "$out/chroot/summary.md"
rm -rf "$work"
