#!/usr/bin/env bash
# The driver issue's run on a real GPU machine (docs/records/2026-11-24-driver-on-h100.md):
# collect the host's driver root, build an image from the collected layer plus an NVML probe
# layer, unpack it with umoci, chroot into it with /dev, /proc and /sys bound in, run the probe
# (and the image's nvidia-smi), show `flywheel driver check` passing for that image and failing
# for one collected with a changed version, write the CDI spec, and time collection against
# `cp -a` of the same files.
#
# usage: bench/driver/on-device.sh PREP_DIR OUT_DIR   (PREP_DIR from bench/driver/prepare.sh)
# Runs as root (mount, chroot). DRIVER_ROOT defaults to /usr/local/nvidia.
set -uo pipefail
prep=$(realpath "$1")
out=$(realpath "$2")
root=${DRIVER_ROOT:-/usr/local/nvidia}
fw=$prep/flywheel
work=$(mktemp -d /tmp/flywheel-driver.XXXXXX)
step() { printf '\n== %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; echo "(exit $?)"; }
secs() { date +%s.%N; }

exec > >(tee "$out/log.txt") 2>&1
step "host"
date -u; uname -r; cat /proc/driver/nvidia/version; nproc; df -h /tmp | tail -1
ls "$root" "$root/lib64" | head -80
ls -R "$root/firmware" | head; du -sh "$root"/*
ldd "$root"/lib64/libnvidia-ml.so.[0-9]*.* | head

step "collect (utility,compute), twice: identical trees"
show "$fw" -v driver collect --driver-root "$root" --out "$work/tree"
"$fw" driver collect --driver-root "$root" --out "$work/tree2" --json > "$out/manifest.json"
show diff -r --no-dereference "$work/tree" "$work/tree2" && echo "trees identical"
find "$work/tree" -printf '%y %m %T@ %P -> %l\n' | sort > "$out/tree-listing.txt"
head -c 1500 "$out/manifest.json"; echo

step "image: the driver layer + the probe layer (gzip, for umoci 0.4), built from each tree"
d1=$("$fw" image build --no-layer-cache --compression gzip --driver "$work/tree" --layer "$prep/probe-layer" --entrypoint /usr/bin/nvml-probe --out "$work/image")
d2=$("$fw" image build --no-layer-cache --compression gzip --driver "$work/tree2" --layer "$prep/probe-layer" --entrypoint /usr/bin/nvml-probe --out "$work/image2")
echo "image from tree:  $d1"; echo "image from tree2: $d2"
[ "$d1" = "$d2" ] && echo "same image digest"

step "unpack with umoci, chroot, run the probe and the image's nvidia-smi"
show "$prep/umoci" unpack --image "$work/image:latest" "$work/bundle" >/dev/null
rootfs=$work/bundle/rootfs
mkdir -p "$rootfs/dev" "$rootfs/proc" "$rootfs/sys"
mount --rbind /dev "$rootfs/dev" && mount -t proc proc "$rootfs/proc" && mount --rbind /sys "$rootfs/sys"
show env -i PATH=/usr/bin /usr/sbin/chroot "$rootfs" /usr/bin/nvml-probe
show env -i PATH=/usr/bin /usr/sbin/chroot "$rootfs" /usr/bin/nvidia-smi -L
show env -i PATH=/usr/bin /usr/sbin/chroot "$rootfs" /usr/bin/nvidia-smi --query-gpu=name,driver_version --format=csv
umount -R -l "$rootfs/dev"; umount -l "$rootfs/proc"; umount -R -l "$rootfs/sys"

step "check: the image and its unpacked root pass"
show "$fw" driver check --image "$work/image"
show "$fw" driver check --tree "$rootfs"

step "check: an image collected with a changed version fails"
changed=$work/changed
mkdir -p "$changed/lib64" "$changed/bin"
for f in "$root"/lib64/*.so.580.159.04; do n=$(basename "$f"); ln -s "$f" "$changed/lib64/${n%580.159.04}580.159.05"; done
for f in "$root"/bin/*; do ln -s "$f" "$changed/bin/"; done
# NVML, loaded from the renamed library, still reports the real version: collect refuses...
show "$fw" driver collect --driver-root "$changed" --out "$work/tree-changed"
# ...unless told not to ask it, which is how a tree of another version is made here.
show "$fw" driver collect --no-nvml --driver-root "$changed" --out "$work/tree-changed"
"$fw" image build --no-layer-cache --driver "$work/tree-changed" --layer "$prep/probe-layer" --out "$work/image-changed" >/dev/null
show "$fw" driver check --image "$work/image-changed"

step "CDI spec"
"$fw" driver cdi --driver-root "$root" --format json > "$out/cdi.json"; echo "json: exit $?"
"$fw" driver cdi --driver-root "$root" > "$out/cdi.yaml"; echo "yaml: exit $?"
head -40 "$out/cdi.yaml"

step "benchmark: collect all capabilities vs cp -a of the same files (warm page cache, 5 runs each)"
"$fw" driver collect --driver-root "$root" --capabilities all --out "$work/all" --json > "$work/all.json"
python3 - "$work/all.json" "$root" > "$work/sources.txt" <<'PY'
import json, os, sys
m = json.load(open(sys.argv[1])); root = sys.argv[2]
for e in m["files"]:
    if e["type"] != "file" or e["role"] not in ("library", "binary", "firmware"):
        continue
    name = os.path.basename(e["path"])
    for d in ("lib64", "lib", "bin", f"firmware/nvidia/{m['version']}"):
        p = os.path.join(root, d, name)
        if os.path.isfile(p):
            print(os.path.realpath(p)); break
    else:
        sys.exit(f"no source for {name}")
PY
echo "files: $(wc -l < "$work/sources.txt"), bytes: $(xargs du -cb < "$work/sources.txt" | tail -1)"
for i in 1 2 3 4 5 6; do
  rm -rf "$work/all" "$work/cp"; sync
  t0=$(secs); "$fw" driver collect --driver-root "$root" --capabilities all --out "$work/all" >/dev/null; t1=$(secs)
  mkdir "$work/cp"; sync
  t2=$(secs); xargs cp -a -t "$work/cp" < "$work/sources.txt"; t3=$(secs)
  # run 1 warms the page cache and is not counted
  [ "$i" -gt 1 ] && echo "run $i: collect $(awk "BEGIN{print $t1 - $t0}") s, cp -a $(awk "BEGIN{print $t3 - $t2}") s"
done | tee "$out/bench-collect.txt"
python3 - "$out/bench-collect.txt" <<'PY'
import re, statistics, sys
rows = [tuple(map(float, re.findall(r"([0-9.]+) s", l))) for l in open(sys.argv[1]) if l.startswith("run")]
c = statistics.median(r[0] for r in rows); p = statistics.median(r[1] for r in rows)
print(f"median: collect {c:.3f} s, cp -a {p:.3f} s, ratio {c/p:.2f}x")
PY
step "benchmark: building the layer from the collected tree (all capabilities, 3 runs each)"
for comp in zstd gzip none; do
  for i in 1 2 3; do
    rm -rf "$work/layer-image"
    t0=$(secs); "$fw" image build --no-layer-cache --compression "$comp" --driver "$work/all" --out "$work/layer-image" >/dev/null; t1=$(secs)
    echo "$comp run $i: $(awk "BEGIN{print $t1 - $t0}") s, $(du -sb "$work/layer-image/blobs" | cut -f1) bytes"
  done
done | tee "$out/bench-layer.txt"
rm -rf "$work"
