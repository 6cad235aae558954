#!/usr/bin/env bash
# Benchmarks `flywheel image build` against umoci, side by side, on one fixture closure:
#   1. a cold build with flywheel's defaults (zstd) vs the same layers assembled with umoci's
#      defaults (`umoci init`, `umoci new`, one `umoci insert` per layer: Go tar, parallel gzip);
#   2. the same cold build with gzip at umoci's level (6) on both sides; umoci is run twice, on
#      staging trees that keep the store's hard links (which umoci writes as tar hard links) and
#      on copies without them (flywheel writes every hard link as a regular file, by policy, so
#      the second is the like-for-like one);
#   3. a warm rebuild after one package changes (`flywheel-fixture --touch PKG`: that package and
#      what depends on it get new store paths), with the layer cache, against a cold build of the
#      same closure, and the bytes a registry push uploads then (the new blobs);
#   4. tar + sha256 of the whole closure as one layer vs
#      `tar -c --sort=name --hard-dereference ... | openssl dgst -sha256` (the same bytes);
#   5. the layering strategies on package changes (bench/layering.py).
# Each timed command runs --runs times, alternating the tools; medians are reported with ratios.
# Results belong in docs/benchmarks.md with the date and this command.
#
# usage: bench/images.sh [--budget-mb 1200] [--runs 3] [--samples 16]
set -euo pipefail
cd "$(dirname "$0")/.."

budget=1200
runs=3
samples=16
while [ $# -gt 0 ]; do
  case "$1" in
    --budget-mb) budget="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --samples) samples="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "bench/images.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for tool in nix-store umoci openssl tar cargo python3; do
  command -v "$tool" >/dev/null || { echo "bench/images.sh: $tool is missing (tests/run installs what is needed)" >&2; exit 1; }
done

cargo build --quiet --release -p flywheel -p flywheel-fixture
work=$(mktemp -d /var/tmp/flywheel-bench-images.XXXXXX)
trap 'rm -rf "$work"' EXIT
# Copies of the binaries, so a rebuild while this runs changes nothing.
cp target/release/flywheel "$work/flywheel"
fw=$work/flywheel
tar_bench=$(cargo bench --quiet --no-run -p flywheel-oci --bench tar_sha256 --message-format=json 2>/dev/null |
  python3 -c 'import json, sys; print([j["executable"] for j in map(json.loads, sys.stdin) if j.get("executable")][-1])')
cp "$tar_bench" "$work/tar_sha256"
unset SOURCE_DATE_EPOCH

root=$(target/release/flywheel-fixture --budget-mb "$budget" --max-pkg-mb 150 --tag bench --out-link "$work/closure")
mapfile -t paths < <(nix-store --query --requisites "$root")
nar_bytes=$(nix-store --query --size "${paths[@]}" | awk '{s += $1} END {print s}')
files=$(find "${paths[@]}" -type f | wc -l)
# Warm the page cache: every tool reads the same files from memory.
find "${paths[@]}" -type f -exec cat {} + > /dev/null

now() { date +%s%N; }
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
secs() { awk -v ns="$1" 'BEGIN {printf "%.3f", ns / 1e9}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'; }
mb() { awk -v b="$1" 'BEGIN {printf "%.1f MB", b / 1e6}'; }

# The layers flywheel plans; umoci gets the same ones, one `insert` each, from hard-linked
# staging trees made before the clock starts.
"$fw" image build --dry-run --json --closure "$root" > "$work/plan.json"
layers=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["layers"]))' "$work/plan.json")
python3 - "$work/plan.json" "$work/stage" "$work/stage-copies" <<'PY'
import json, os, subprocess, sys
plan = json.load(open(sys.argv[1]))
for i, layer in enumerate(plan["layers"]):
    linked = os.path.join(sys.argv[2], f"{i:03}", "nix", "store")
    copied = os.path.join(sys.argv[3], f"{i:03}", "nix", "store")
    os.makedirs(linked)
    os.makedirs(copied)
    subprocess.run(["cp", "-al", *layer["paths"], linked], check=True)
    # Separate copies of every file: no hard links left for umoci to find.
    subprocess.run(["cp", "-R", "--preserve=mode,timestamps", *layer["paths"], copied], check=True)
PY

flywheel_cold() { rm -rf "$work/fw"; "$fw" image build --no-layer-cache --closure "$root" --out "$work/fw" "$@" > /dev/null 2>&1; }
umoci_cold() {
  rm -rf "$work/umoci"
  umoci init --layout "$work/umoci"
  umoci new --image "$work/umoci:bench"
  for d in "$work/$1"/*; do
    umoci insert --image "$work/umoci:bench" "$d/nix" /nix > /dev/null
  done
}
time_ns() { local t0; t0=$(now); "$@" > /dev/null; echo $(( $(now) - t0 )); }

declare -a t_fw t_um t_um2 t_fwgz
for _ in $(seq "$runs"); do
  t_um+=("$(time_ns umoci_cold stage)")
  t_fw+=("$(time_ns flywheel_cold)")
  t_um2+=("$(time_ns umoci_cold stage-copies)")
  t_fwgz+=("$(time_ns flywheel_cold --compression gzip:6)")
done
m_um2=$(printf '%s\n' "${t_um2[@]}" | median)
um2_bytes=$(du -sb "$work/umoci/blobs" | cut -f1)
umoci_cold stage
m_um=$(printf '%s\n' "${t_um[@]}" | median)
m_fw=$(printf '%s\n' "${t_fw[@]}" | median)
m_fwgz=$(printf '%s\n' "${t_fwgz[@]}" | median)
flywheel_cold
fw_bytes=$(du -sb "$work/fw/blobs" | cut -f1)
flywheel_cold --compression gzip:6
fwgz_bytes=$(du -sb "$work/fw/blobs" | cut -f1)
um_bytes=$(du -sb "$work/umoci/blobs" | cut -f1)

# Warm rebuild: a package only the root depends on (an application), the largest such.
touch_pkg=$(python3 - "${paths[@]}" <<'PY'
import subprocess, sys
closure = set(sys.argv[1:])
best = None
for p in closure:
    if "-pkg-" not in p:
        continue
    referrers = set(subprocess.run(["nix-store", "--query", "--referrers", p], capture_output=True, text=True, check=True).stdout.split())
    if len(referrers & closure) == 1:  # only the root: an application nothing else needs
        size = int(subprocess.run(["nix-store", "--query", "--size", p], capture_output=True, text=True, check=True).stdout)
        best = max(best or (0, ""), (size, p.split("-pkg-", 1)[1]))
print(best[1])
PY
)
root2=$(target/release/flywheel-fixture --budget-mb "$budget" --max-pkg-mb 150 --tag bench --touch "$touch_pkg" --out-link "$work/closure2")
find $(nix-store --query --requisites "$root2") -type f -exec cat {} + > /dev/null
changed=$(comm -13 <(printf '%s\n' "${paths[@]}" | sort) <(nix-store --query --requisites "$root2" | sort))
changed_bytes=$(nix-store --query --size $changed | awk '{s += $1} END {print s}')
declare -a t_warm t_cold2
for _ in $(seq "$runs"); do
  rm -rf "$work/cache" "$work/v1" "$work/v2" "$work/v2cold"
  "$fw" image build --layer-cache "$work/cache" --closure "$root" --out "$work/v1" > /dev/null 2>&1
  t_warm+=("$(time_ns "$fw" image build --layer-cache "$work/cache" --closure "$root2" --out "$work/v2" --json)")
  t_cold2+=("$(time_ns "$fw" image build --no-layer-cache --closure "$root2" --out "$work/v2cold")")
done >/dev/null
m_warm=$(printf '%s\n' "${t_warm[@]}" | median)
m_cold2=$(printf '%s\n' "${t_cold2[@]}" | median)
"$fw" image diff --json "$work/v1" "$work/v2" > "$work/diff.json"
read -r new_layers upload < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(len(d["onlyInB"]), d["downloadBytes"])' "$work/diff.json")
total_blobs=$(du -sb "$work/v2/blobs" | cut -f1)

# tar + sha256 of the whole closure as one layer.
big=("${paths[@]}")
rel=("${big[@]#/}")
declare -a t_gnu
for _ in $(seq "$runs"); do
  t_gnu+=("$(time_ns sh -c 'tar -C / -c --sort=name --hard-dereference "$@" | openssl dgst -sha256 > /dev/null' sh "${rel[@]}")")
done
m_gnu=$(printf '%s\n' "${t_gnu[@]}" | median)
gnu_bytes=$(tar -C / -c --sort=name --hard-dereference "${rel[@]}" | wc -c)
read -r _ fw_tar_bytes _ fw_tar_secs _ _ _ _ < <("$work/tar_sha256" --runs "$runs" "${big[@]}")
tar -C / -c --sort=name --hard-dereference "${rel[@]}" > "$work/layer.tar"
declare -a t_ssl
for _ in $(seq "$runs"); do t_ssl+=("$(time_ns sh -c 'openssl dgst -sha256 "$1" > /dev/null' sh "$work/layer.tar")"); done
m_ssl=$(printf '%s\n' "${t_ssl[@]}" | median)
rm -f "$work/layer.tar"

gnu_mbs=$(awk -v b="$gnu_bytes" -v ns="$m_gnu" 'BEGIN {printf "%.0f", b / (ns / 1e9) / 1e6}')
ssl_mbs=$(awk -v b="$gnu_bytes" -v ns="$m_ssl" 'BEGIN {printf "%.0f", b / (ns / 1e9) / 1e6}')
fw_mbs=$(awk -v b="$fw_tar_bytes" -v s="$fw_tar_secs" 'BEGIN {printf "%.0f", b / s / 1e6}')

cat <<EOT
closure: ${#paths[@]} store paths, $files files, $(mb "$nar_bytes") of NAR, $layers layers; $(nproc) CPUs
flywheel $("$fw" --version | cut -d' ' -f2), $(umoci --version), $(tar --version | head -1), $(openssl version | cut -d' ' -f1-2)

cold build, one image of $layers layers                time      blobs       vs umoci   vs umoci without links
  umoci init/new/insert (gzip:6, parallel), hard links  $(secs "$m_um") s   $(mb "$um_bytes")   1.00x
  umoci, the same trees without hard links              $(secs "$m_um2") s   $(mb "$um2_bytes")              1.00x
  flywheel image build (zstd:3, default)                $(secs "$m_fw") s   $(mb "$fw_bytes")   $(ratio "$m_um" "$m_fw")      $(ratio "$m_um2" "$m_fw")
  flywheel image build --compression gzip:6             $(secs "$m_fwgz") s   $(mb "$fwgz_bytes")   $(ratio "$m_um" "$m_fwgz")      $(ratio "$m_um2" "$m_fwgz")

rebuild after --touch $touch_pkg ($(echo "$changed" | wc -w) paths changed, $(mb "$changed_bytes") of NAR)
  cold build of the new closure               $(secs "$m_cold2") s
  warm rebuild with the layer cache           $(secs "$m_warm") s   $(awk -v a="$m_warm" -v b="$m_cold2" 'BEGIN {printf "%.1f%%", 100 * a / b}') of cold
  a push uploads                              $new_layers new layer(s) and the manifest and config: $(mb "$upload") of $(mb "$total_blobs")

tar + sha256 of the closure as one layer ($(mb "$gnu_bytes"))  MB/s
  openssl dgst -sha256 of the tar file        $ssl_mbs   (the one-core hardware limit)
  tar -c --sort=name --hard-dereference | openssl dgst -sha256   $gnu_mbs   1.00x
  flywheel (tar_sha256 bench)                 $fw_mbs   $(awk -v a="$fw_mbs" -v b="$gnu_mbs" 'BEGIN {printf "%.2fx", a / b}')
EOT

echo
python3 bench/layering.py --budget-mb "$budget" --samples "$samples"
