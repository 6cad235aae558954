#!/usr/bin/env bash
# Builds, on this machine, what the GPU machine's runner-image run (bench/runner-image/on-device.sh,
# docs/records/2026-12-06-runner-image-on-h100.md) needs, into DIR (default .xm/runner-image, an
# ignored folder the device tool carries):
#   - the GPU runner image of tests/runner-flake (nix/lib's mkRunnerImage, built by Debian's Nix as
#     ./quickstart builds it), with the release flywheel, stripped, as the flake's flywheel input
#     and the GPU machine's own cache address baked into its nix.conf; from it:
#       spec.json      its spec (`nix eval specs.SYSTEM.gpu-runner-image`) with the stand-in
#                      driver layer's tree replaced by @DRIVER_TREE@, for the device's collected one
#       store.tar.xz   a chroot store (`nix copy --to local?root=...`: files and Nix database) of
#                      everything the spec takes from the store, the stand-in driver excepted
#       nix-built/     the Nix-built image's index, manifest and config, to compare layers with
#   - cache-data/ with the cache `main` (its key is the one the image trusts), cache.env with a
#     write token and a canary token for it;
#   - glibc-compat/: the glibc compatibility libraries (libdl, libpthread, librt) of the glibc the
#     image's stand-in libraries come from, as a directory layer at /lib/x86_64-linux-gnu; used
#     only for a second run when the image cannot load the driver's libraries without them;
#   - flywheel.xz (the host's tool there: driver collect, image build, cache serve and push),
#     umoci.xz, runc.xz and libseccomp.so.2 (Debian 12's).
# usage: bench/runner-image/prepare.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-.xm/runner-image}
system=x86_64-linux
port=47631
cache_url="http://127.0.0.1:$port/main"
nix=(nix --extra-experimental-features 'nix-command flakes' --option substituters '' --option sandbox false --quiet)

cargo build --release -p flywheel --locked
rm -rf "$dir"
mkdir -p "$dir"
dir=$(realpath "$dir")
work=$(mktemp -d /tmp/flywheel-runner-image-prep.XXXXXX)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

# The flywheel the image carries and the device's host runs: release, stripped.
mkdir -p "$work/input/bin"
strip -o "$work/input/bin/flywheel" target/release/flywheel
fw=$work/input/bin/flywheel
xz -T0 -6 -c "$fw" > "$dir/flywheel.xz"

# The cache the image names (nix.conf's substituter, FLYWHEEL_CACHE_URL): the device serves this
# data directory on 127.0.0.1:$port; made here so that its key is baked into the image.
"$fw" cache create --data "$dir/cache-data" main >/dev/null
key=$("$fw" cache info --data "$dir/cache-data" --cache main)
{
  echo "CACHE_URL=$cache_url"
  echo "CACHE_LISTEN=127.0.0.1:$port"
  echo "CACHE_PUBLIC_KEY=$key"
  echo "CACHE_WRITE_TOKEN=$("$fw" cache token create --data "$dir/cache-data" --cache main --scope write --description runner-image-h100)"
  echo "CACHE_CANARY_TOKEN=$("$fw" cache token create --data "$dir/cache-data" --cache main --scope canary --description runner-image-h100)"
} > "$dir/cache.env"

# The runner flake, as tests/e2e/runner_image.rs (RunnerFlake::new) and ./quickstart lay it out.
flake=$work/flake
mkdir -p "$flake/lib" "$dir/flake-used"
cp tests/runner-flake/flake.nix tests/fixtures.nix "$flake/"
cp nix/lib/* "$flake/lib/"
cp tests/runner-flake/flake.nix tests/fixtures.nix "$dir/flake-used/"
libz=$(readlink -f /lib/x86_64-linux-gnu/libz.so.1)
cat > "$flake/settings.json" <<EOT
{"system": "$system", "tag": "runner-image-h100", "templateLibrary": "$libz", "cacheUrl": "$cache_url", "cachePublicKey": "$key"}
EOT
override=(--override-input flywheel "path:$work/input")
"${nix[@]}" build "${override[@]}" --out-link "$work/gpu-runner-image" "path:$flake#packages.$system.gpu-runner-image"
image=$(readlink -f "$work/gpu-runner-image")
"${nix[@]}" eval "${override[@]}" --json "path:$flake#specs.$system.gpu-runner-image" > "$work/spec.json"

# The Nix-built image's index, manifest and config: the device compares its layers with these.
mkdir -p "$dir/nix-built"
cp "$image/index.json" "$dir/nix-built/index.json"
python3 - "$image" "$dir/nix-built" <<'PY'
import json, shutil, sys
image, out = sys.argv[1:]
blob = lambda d: f"{image}/blobs/sha256/{d.split(':', 1)[1]}"
digest = json.load(open(f"{image}/index.json"))["manifests"][0]["digest"]
shutil.copy(blob(digest), f"{out}/manifest.json")
manifest = json.load(open(f"{out}/manifest.json"))
shutil.copy(blob(manifest["config"]["digest"]), f"{out}/config.json")
print(f"nix-built image {digest}: {len(manifest['layers'])} layers, "
      f"{sum(l['size'] for l in manifest['layers'])} bytes of layers")
PY

# The spec with the stand-in driver's tree left open, and what it takes from the store.
python3 - "$work/spec.json" "$dir/spec.json" "$work/roots" <<'PY'
import json, sys
src, out, roots = sys.argv[1:]
spec = json.load(open(src))
drivers = [l for l in spec["layers"] if "driver" in l]
assert len(drivers) == 1, "the GPU runner image has one driver layer"
print(f"replacing the stand-in driver layer {drivers[0]['driver']} with @DRIVER_TREE@")
drivers[0]["driver"] = "@DRIVER_TREE@"
json.dump(spec, open(out, "w"), indent=1)
paths = spec["closureRoots"] + [p for l in spec["layers"] for p in l.get("paths", [])]
paths += [l["source"] for l in spec["layers"] if "source" in l]
open(roots, "w").write("\n".join(paths) + "\n")
PY
mapfile -t roots < "$work/roots"
"${nix[@]}" copy --no-check-sigs --to "local?root=$work/store" "${roots[@]}"
tar -C "$work/store" -cf - nix | xz -T0 -6 > "$dir/store.tar.xz"

# glibc's compatibility libraries, from this machine's glibc: the one tests/fixtures.nix's hostLibs
# copied the image's libc.so.6 and loader from.
echo "glibc here: $(ldd --version | head -1)"
mkdir -p "$dir/glibc-compat/lib/x86_64-linux-gnu"
for l in libdl.so.2 libpthread.so.0 librt.so.1; do
  cp -L "/lib/x86_64-linux-gnu/$l" "$dir/glibc-compat/lib/x86_64-linux-gnu/$l"
done

# The device has no container tools: Debian's umoci (libc only) and runc (libc, libseccomp).
xz -T0 -6 -c /usr/bin/umoci > "$dir/umoci.xz"
xz -T0 -6 -c "$(command -v runc)" > "$dir/runc.xz"
cp -L /lib/x86_64-linux-gnu/libseccomp.so.2 "$dir/libseccomp.so.2"

echo "image: $image"
du -sh "$dir"
ls -la "$dir"
