#!/usr/bin/env bash
# Builds, on this machine, what the GPU machine's canary run (bench/canary/on-device.sh) needs,
# into DIR (default .xm/canary, an ignored folder the device tool carries): flywheel (release,
# stripped); a layer holding it with the glibc libraries ldd names and Debian's Vulkan loader
# (the runner image's canary layer); the loader alone, for a host without one; and umoci.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-.xm/canary}
cargo build --release -p flywheel --locked
rm -rf "$dir"
layer=$dir/canary-layer
mkdir -p "$layer/usr/bin" "$layer/lib64" "$layer/lib/x86_64-linux-gnu" "$layer/tmp" "$dir/lib"
chmod 1777 "$layer/tmp"
strip -o "$dir/flywheel" target/release/flywheel
cp "$dir/flywheel" "$layer/usr/bin/flywheel"
vulkan=/usr/lib/x86_64-linux-gnu/libvulkan.so.1
libs=$(ldd "$layer/usr/bin/flywheel" "$vulkan" | awk '/=>/ {print $3}' | sort -u)
# The driver's libraries link libdl, libpthread and librt as well.
for lib in $libs $vulkan /lib/x86_64-linux-gnu/{libdl.so.2,libpthread.so.0,librt.so.1}; do
  cp -L "$lib" "$layer/lib/x86_64-linux-gnu/"
done
cp -L /lib64/ld-linux-x86-64.so.2 "$layer/lib64/"
cp -L "$vulkan" "$dir/lib/"
cp /usr/bin/umoci "$dir/umoci"
cp bench/canary/torch_bandwidth.py "$dir/"
du -sh "$dir"
