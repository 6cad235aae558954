#!/usr/bin/env bash
# Builds, on this machine, what the GPU machine's run (bench/driver/on-device.sh) needs, into
# DIR (default .xm/driver, an ignored folder the device tool carries): flywheel (release,
# stripped), the NVML probe and its layer (the probe plus the glibc libraries it and the
# driver's libraries need, taken from this machine as ldd names them), and umoci.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-.xm/driver}
cargo build --release -p flywheel --locked
rm -rf "$dir"
layer=$dir/probe-layer
mkdir -p "$layer/usr/bin" "$layer/lib64" "$layer/lib/x86_64-linux-gnu"
strip -o "$dir/flywheel" target/release/flywheel
gcc -O2 -Wall -o "$layer/usr/bin/nvml-probe" bench/driver/nvml-probe.c
libs=$(ldd "$layer/usr/bin/nvml-probe" | awk '/=>/ {print $3}')
# The driver's libraries and nvidia-smi link libm, libdl, libpthread and librt as well.
for lib in $libs /lib/x86_64-linux-gnu/{libm.so.6,libdl.so.2,libpthread.so.0,librt.so.1}; do
  cp -L "$lib" "$layer/lib/x86_64-linux-gnu/"
done
cp -L /lib64/ld-linux-x86-64.so.2 "$layer/lib64/"
cp /usr/bin/umoci "$dir/umoci"
du -sh "$dir"
